"""Each engine kernel against a float64 numpy reference, on random shapes (hypothesis)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qllama import kernels
from qllama._kernels.engine import Kernels
from qllama._kernels.quantize_weights import quantize_weights as quantize
from qllama.formats.llama2c import QTensor

import reference

_kernels = Kernels(kernels.select())  # the variant the engine runs here
kernel_rmsnorm, kernel_softmax, kernel_rope = Kernels.rmsnorm, Kernels.softmax, Kernels.rope
kernel_swiglu, kernel_attention_softmax = Kernels.swiglu, Kernels.attention_softmax
kernel_attention, kernel_quantize, kernel_matmul = (_kernels.attention, _kernels.quantize,
                                                    _kernels.matmul)

floats = st.floats(-4, 4, width=32, allow_subnormal=False)


def vectors(n):
    return hnp.arrays(np.float32, n, elements=floats)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(vectors(n), vectors(n))))
def test_rmsnorm(xw):
    x, w = xw
    ref = reference.rmsnorm(x.astype(np.float64), w.astype(np.float64))
    got = kernel_rmsnorm(x, w)
    scale = np.abs(w).max() / np.sqrt(1e-5) * 1e-6 + 1e-6  # eps dominates near-zero x
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=scale)


@pytest.mark.parametrize("softmax,tol_of", [
    # the sampler's, run.c's: a float32 running sum of n terms, relative error ~n * 2^-24
    (kernel_softmax, lambda n: 2e-6 + n * 2 ** -23),
    # attention's (activations.h): its exp, and 8 lanes of n / 8 terms each, then 3 adds
    (kernel_attention_softmax, lambda n: 1e-6 + n / 8 * 2 ** -23),
], ids=["sampler", "attention"])
@settings(max_examples=80, deadline=None)
@given(x=st.integers(1, 700).flatmap(lambda n: hnp.arrays(np.float32, n, elements=st.floats(
    -100, 100, width=32))))
def test_softmax(softmax, tol_of, x):
    ref = reference.softmax(x.astype(np.float64))
    got = x.copy()
    softmax(got)
    tol = tol_of(len(x))
    np.testing.assert_allclose(got, ref, rtol=tol, atol=1e-7)
    assert abs(got.astype(np.float64).sum() - 1) < tol


def silu_times(h, g):
    """float64 silu(h) * g, without overflow warnings (e^-h is inf below -709)."""
    h = h.astype(np.float64)
    with np.errstate(over="ignore"):
        return h / (1 + np.exp(-h)) * g.astype(np.float64)


# A few roundings past e^x's 1.5 ulp (1 + e, the division, two products): 8 ulp at most.
SWIGLU_RTOL = 8 * 2 ** -24


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(
    hnp.arrays(np.float32, n, elements=st.floats(-200, 200, width=32)), vectors(n))))
def test_swiglu(hg):
    h, g = hg
    np.testing.assert_allclose(kernel_swiglu(h, g), silu_times(h, g), rtol=SWIGLU_RTOL,
                               atol=1e-36)


def test_swiglu_over_the_float_range():
    """Every 401st float from -120 to 120 (5.6 million values: every binade, e^x's
    clamps and its overflow)."""
    top = int(np.float32(120).view(np.uint32))  # -120's bits are top | sign
    bits = np.concatenate([np.arange(0, top, 401), np.arange(0, top, 401) | 0x80000000])
    h = bits.astype(np.uint32).view(np.float32)
    g = np.ones(len(h), np.float32)
    np.testing.assert_allclose(kernel_swiglu(h, g), silu_times(h, g), rtol=SWIGLU_RTOL, atol=1e-36)


def test_swiglu_special_values():
    h = np.array([np.nan, np.inf, 0.0, -0.0, 89.0, -89.0, 1e30, -1e30], np.float32)
    got = kernel_swiglu(h, np.full(len(h), 2, np.float32))
    assert np.isnan(got[0]) and got[1] == np.inf
    assert got[2] == 0 and got[3] == 0
    np.testing.assert_allclose(got[4:], silu_times(h[4:], np.full(4, 2)), rtol=SWIGLU_RTOL,
                               atol=1e-36)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([2, 4, 8, 64, 128]), st.integers(1, 4), st.integers(0, 4095),
       st.data())
def test_rope(head_size, heads, pos, data):
    v = data.draw(vectors(head_size * heads))
    ref = reference.rope(v.astype(np.float64), head_size, pos)
    got = v.copy()
    kernel_rope(got, head_size, pos)
    # run.c's float32 angle pos * freq: error grows with pos (ulp of ~4096 is 5e-4)
    tol = 2e-3 * np.abs(v).max() + 1e-6
    np.testing.assert_allclose(got, ref, atol=tol)
    np.testing.assert_allclose(np.linalg.norm(got), np.linalg.norm(ref), rtol=1e-5, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.sampled_from([2, 4, 8, 16]), st.integers(1, 4), st.data())
def test_attention(n_pos, head_size, n_kv, data):
    kv_dim = head_size * n_kv
    k = data.draw(hnp.arrays(np.float32, (n_pos, kv_dim), elements=floats))
    v = data.draw(hnp.arrays(np.float32, (n_pos, kv_dim), elements=floats))
    q = data.draw(vectors(head_size))
    off = data.draw(st.integers(0, n_kv - 1)) * head_size
    k64, v64 = k.astype(np.float64)[:, off:off + head_size], v.astype(np.float64)[:, off:off + head_size]
    a = reference.softmax(k64 @ q.astype(np.float64) / np.sqrt(head_size))
    ref = a @ v64
    got = kernel_attention(q, k, v, head_size, off)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([1, 4, 8, 32, 40, 64, 72, 96]), st.integers(1, 4), st.booleans(),
       st.data())
def test_activation_quantization_exact(gs, groups, ties, data):
    """runq.c's activation Q8_0 exactly: scale = max|x| / 127 in float32 (NaN left out
    of the max, as runq.c's `val > wmax` leaves it out), q = the float32 quotient
    rounded half away from zero; a NaN value itself becomes -127. But a group holding
    NaN stores a NaN scale, so that NaN weights reach the logits' check. `ties` builds
    groups whose scale is a power of two and whose values sit exactly on .5 quotients."""
    n = gs * groups
    if ties:
        c = np.float32(2.0) ** data.draw(st.integers(-3, 3))
        k = data.draw(hnp.arrays(np.int32, n, elements=st.integers(-127, 126)))
        x = ((k + np.float32(0.5)) * c).astype(np.float32)
        x[::gs] = np.float32(127) * c * np.where(k[::gs] < 0, -1, 1)  # each group's max
    else:
        x = data.draw(hnp.arrays(np.float32, n, elements=floats | st.just(np.float32("nan"))))
    q, s = kernel_quantize(x, gs)
    g = x.reshape(-1, gs)
    scale = np.where(np.isnan(g), 0, np.abs(g)).max(axis=1) / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(scale[:, None] == 0, np.float32(0), g / scale[:, None]).astype(np.float64)
    want = np.where(np.isnan(v), -127, np.sign(v) * np.floor(np.abs(v) + 0.5))
    np.testing.assert_array_equal(s, np.where(np.isnan(g).any(axis=1), np.nan, scale))
    np.testing.assert_array_equal(q, want.ravel())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70), st.data())
def test_fp32_row_same_in_any_block(cols, data):
    """A row's fp32 dot product is bitwise the same whether the 4-row kernel computes
    it or the single-row one (the rows after the last full block of four)."""
    w = data.draw(hnp.arrays(np.float32, (5, cols), elements=floats))
    x = data.draw(hnp.arrays(np.float32, (2, cols), elements=floats))
    tail = kernel_matmul(w, x)[:, 4]  # row 4: the single-row kernel
    in_block = kernel_matmul(np.ascontiguousarray(w[[4, 1, 2, 3]]), x)[:, 0]
    np.testing.assert_array_equal(tail, in_block)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.sampled_from([1, 2, 4, 8, 16, 32, 64]), st.integers(1, 6),
       st.integers(1, 5), st.integers(1, 2), st.data())
def test_int8_matmul(rows, gs, groups_per_row, T, threads, data):
    """Aligned groups: int32 per group times both scales, activations quantized as
    runq.c; the float64 reference does the same arithmetic on exact integers."""
    cols = gs * groups_per_row
    w = data.draw(hnp.arrays(np.float32, rows * cols, elements=floats))
    x = data.draw(hnp.arrays(np.float32, (T, cols), elements=floats))
    q = np.empty(rows * cols, np.int8)
    s = np.empty(rows * cols // gs, np.float32)
    quantize(w, gs, q, s, np.empty_like(s), 1)
    got = kernel_matmul(QTensor(q, s, (rows, cols), gs), x, threads)
    wd = (q.astype(np.float64).reshape(-1, gs) * s[:, None]).reshape(rows, cols)
    xd = np.array([reference.quantize_acts(r.astype(np.float64), gs) for r in x])
    ref = xd @ wd.T
    bound = 1e-5 * (np.abs(xd) @ np.abs(wd).T) + 1e-6
    assert np.all(np.abs(got - ref) <= bound)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 70), st.integers(1, 4), st.data())
def test_fp32_and_straddling_matmul(rows, cols, T, data):
    w = data.draw(hnp.arrays(np.float32, (rows, cols), elements=floats))
    x = data.draw(hnp.arrays(np.float32, (T, cols), elements=floats))
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    bound = 1e-5 * (np.abs(x).astype(np.float64) @ np.abs(w).T) + 1e-6
    assert np.all(np.abs(kernel_matmul(w, x) - ref) <= bound)
    # Q8_0 with a group size that need not divide the row: groups over the flat tensor
    gs = data.draw(st.sampled_from([g for g in range(1, 65) if (rows * cols) % g == 0]))
    q = np.empty(rows * cols, np.int8)
    s = np.empty(rows * cols // gs, np.float32)
    quantize(w.ravel(), gs, q, s, np.empty_like(s), 1)
    wd = (q.astype(np.float64).reshape(-1, gs) * s[:, None]).reshape(rows, cols)
    got = kernel_matmul(QTensor(q, s, (rows, cols), gs), x)
    xd = x.astype(np.float64)
    if cols % gs == 0:  # aligned: activations quantized like runq.c
        xd = np.array([reference.quantize_acts(r, gs) for r in xd])
    ref = xd @ wd.T
    bound = 1e-5 * (np.abs(xd) @ np.abs(wd).T) + 1e-6
    assert np.all(np.abs(got - ref) <= bound)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.sampled_from([32, 64]), st.integers(1, 3), st.integers(1, 3),
       st.data())
def test_int8_matmul_exact_for_any_int8_weight(rows, gs, groups_per_row, T, data):
    """A file written elsewhere may hold -128 (our quantizer never does): the
    AVX2 kernel must still give the exact integer dot product per group."""
    cols = gs * groups_per_row
    q = data.draw(hnp.arrays(np.int8, rows * cols, elements=st.sampled_from([-128, -127, 0, 127])))
    s = data.draw(hnp.arrays(np.float32, rows * cols // gs, elements=st.floats(0.0625, 2, width=32)))
    x = data.draw(hnp.arrays(np.float32, (T, cols), elements=floats))
    got = kernel_matmul(QTensor(q, s, (rows, cols), gs), x)
    wd = (q.astype(np.float64).reshape(-1, gs) * s[:, None]).reshape(rows, cols)
    xd = np.array([reference.quantize_acts(r, gs) for r in x])
    ref = xd @ wd.T
    assert np.all(np.abs(got - ref) <= 1e-5 * (np.abs(xd) @ np.abs(wd).T) + 1e-6)
