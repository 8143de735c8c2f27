"""GGUF block types (kernels.h): the token table's rows equal gguf-py's dequantize;
the generic matmul equals a numpy model of kernels.h's contract bit for bit and is
close to float64 arithmetic on the dequantized values; every variant, the ones this
CPU runs (in the engine) and the emulated ones (tests/harness.py), equals generic
bit for bit, on random shapes (hypothesis, 1 to 20 tokens) and at the edges: rows no
row block or 4 divides, one block per row, weights at their extremes, 1 token
(decode), 5 (a few tokens) and 17 and 33 (x86's tokens-in-lanes path from 8, in
vectors of 8 and passes of 16, with partial ones).
"""

import numpy as np
import pytest
from gguf import quants
from gguf.quants import Q4_K
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qllama import kernels
from qllama._kernels.engine import Kernels
from qllama.quant.types import TYPES, BlockTensor

import harness

RUNNABLE = kernels.runnable()
SIMD = [v for v in RUNNABLE if v != "scalar"]
SCALAR = Kernels("scalar")
NAMES = list(TYPES)
QUANTIZED = [n for n in NAMES if n not in ("f16", "bf16")]
F16_FIELDS = {"q8_0": [0], "q4_0": [0], "q4_1": [0, 2], "q4_k": [0, 2], "q5_k": [0, 2],
              "q6_k": [208]}  # byte offsets of each block's fp16 scales


def make_blocks(name, rows, cols, rng, extreme=False):
    """A BlockTensor: gguf-py's quantizer where it has one, else random bytes (any
    bytes are a legal k-quant block) with finite fp16 scales; `extreme` puts weights
    at their ends (q8_0 -128, nibbles 15, q6_k scales -128)."""
    qt = TYPES[name]
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    if name == "f16":
        data = w.astype(np.float16).view(np.uint8)
    elif name in ("bf16", "q8_0", "q4_0", "q4_1"):
        data = quants.quantize(w, qt.gguf)
    else:
        data = rng.integers(0, 256, (rows, qt.row_bytes(cols)), dtype=np.uint8)
    data = np.ascontiguousarray(data.reshape(rows, -1, qt.nbytes))
    if name in F16_FIELDS and name not in ("q8_0", "q4_0", "q4_1"):
        for at in F16_FIELDS[name]:
            sign = rng.choice([-1, 1], data.shape[:2]) if name == "q6_k" else 1
            d = (sign * rng.uniform(1e-4, 0.05, data.shape[:2])).astype(np.float16)
            data[:, :, at:at + 2] = d.view(np.uint8).reshape(*data.shape[:2], 2)
    if extreme:
        if name == "q8_0":
            data[0, :, 2:] = 0x80
        elif name in ("q4_0", "q4_1"):
            data[0, :, F16_FIELDS[name][-1] + 2:] = 0xFF
        elif name in ("q4_k", "q5_k"):
            data[0, :, 4:] = 0xFF  # scales and mins 63, values 15 (31)
        elif name == "q6_k":
            data[0, :, 192:208] = 0x80
            data[0, :, :192] = 0
    return BlockTensor(qt, (rows, cols), data.reshape(-1))


def acts(rows, cols, rng):
    x = rng.normal(size=(rows, cols)).astype(np.float32)
    if cols >= 64:
        x[0, :32] = 0.0  # an all-zero group: scale 0
    return x


# ---- numpy model of kernels.h's contract --------------------------------------------

def f16(a):
    return np.ascontiguousarray(a).view(np.float16).astype(np.float32)[..., 0]


def unpack(name, blocks):
    """Per block (nb, bytes): integer values (nb, block) as the contract uses them (q8_0
    and q4_0 signed, the k-quants unsigned), and the block's scales."""
    nb = len(blocks)
    if name == "q8_0":
        return blocks[:, 2:].view(np.int8).astype(np.int64), f16(blocks[:, 0:2])
    if name in ("q4_0", "q4_1"):
        qs = blocks[:, -16:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int64)
        return (q - 8, f16(blocks[:, 0:2])) if name == "q4_0" else (q, f16(blocks[:, 0:2]))
    if name in ("q4_k", "q5_k"):
        qs = blocks[:, -128:].reshape(nb, 4, 32)
        q = np.stack([qs & 15, qs >> 4], axis=2).reshape(nb, 256).astype(np.int64)
        if name == "q5_k":
            qh = blocks[:, 16:48]
            q += (((qh[:, None, :] >> np.arange(8)[None, :, None].astype(np.uint8)) & 1)
                  .reshape(nb, 256).astype(np.int64) << 4)
        return q, f16(blocks[:, 0:2])
    ql = blocks[:, :128].reshape(nb, 2, 2, 32)  # [half][which 32][l]
    qh = blocks[:, 128:192].reshape(nb, 2, 32)
    q = np.empty((nb, 2, 4, 32), np.int64)
    for k in range(4):
        lo = (ql[:, :, k % 2] >> (4 * (k // 2))) & 15
        hi = (qh >> (2 * k)) & 3
        q[:, :, k] = lo | (hi << 4)
    return q.reshape(nb, 256) - 32, f16(blocks[:, 208:210])


def model_matmul(t, x):
    """The contract in numpy float32, integer sums exact; x (T, cols)."""
    name, (rows, cols) = t.qtype.name, t.shape
    blocks = t.data.reshape(rows * cols // t.qtype.block, t.qtype.nbytes)
    q, d = unpack(name, blocks)
    ng = cols // 32
    q = q.reshape(rows, ng, 32)
    d = d.reshape(rows, -1)  # per block: group g's is d[:, g], a super-block's d[:, g // 8]
    if name in ("q4_k", "q5_k"):
        sc, mn = Q4_K.get_scale_min(blocks[:, 4:16])
        sc = sc.reshape(rows, ng).astype(np.int64)
        mn = mn.reshape(rows, ng).astype(np.int64)
        dmin = f16(blocks[:, 2:4]).reshape(rows, -1)
    if name == "q6_k":
        sc6 = blocks[:, 192:208].view(np.int8).astype(np.int64).reshape(rows, ng, 2)
    if name == "q4_1":
        m = f16(blocks[:, 2:4]).reshape(rows, ng)
    out = np.empty((len(x), rows), np.float32)
    for i, row in enumerate(x):
        xq, xs = SCALAR.quantize(np.ascontiguousarray(row), 32)
        xq = xq.astype(np.int64).reshape(ng, 32)
        acc = np.zeros((rows, 8), np.float32)
        for g in range(ng):
            lane, sb = g % 8, g // 8
            dot = (q[:, g] * xq[g]).sum(axis=1)
            if name in ("q8_0", "q4_0", "q4_1"):
                acc[:, lane] = acc[:, lane] + dot.astype(np.float32) * (d[:, g] * xs[g])
                if name == "q4_1":
                    acc[:, lane] = acc[:, lane] + np.float32(xq[g].sum()) * (m[:, g] * xs[g])
            elif name in ("q4_k", "q5_k"):
                acc[:, lane] = acc[:, lane] + (sc[:, g] * dot).astype(np.float32) * (d[:, sb] * xs[g])
                acc[:, lane] = acc[:, lane] - (mn[:, g] * xq[g].sum()).astype(np.float32) * (
                    dmin[:, sb] * xs[g])
            else:
                s = (sc6[:, g, 0] * (q[:, g, :16] * xq[g, :16]).sum(axis=1)
                     + sc6[:, g, 1] * (q[:, g, 16:] * xq[g, 16:]).sum(axis=1))
                acc[:, lane] = acc[:, lane] + s.astype(np.float32) * (d[:, sb] * xs[g])
        a = acc.T
        out[i] = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
    return out


def dequantized(t):
    rows, cols = t.shape
    return quants.dequantize(t.data.reshape(rows, -1), t.qtype.gguf).reshape(rows, cols)


# ---- the token table -----------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("extreme", [False, True])
def test_dequantize_row_equals_gguf(name, extreme):
    rng = np.random.default_rng(1)
    t = make_blocks(name, 5, 512, rng, extreme)
    want = dequantized(t)
    for r in range(5):
        got = SCALAR.dequantize_row(t, r)
        assert np.array_equal(got.view(np.uint32), want[r].view(np.uint32)), (name, r)


def test_block_tensor_checked_against_kernels_sizes():
    t = make_blocks("q4_k", 2, 256, np.random.default_rng(0))
    short = BlockTensor.__new__(BlockTensor)
    object.__setattr__(short, "qtype", t.qtype)
    object.__setattr__(short, "shape", (3, 256))  # more rows than bytes
    object.__setattr__(short, "data", t.data)
    with pytest.raises(ValueError, match="does not match"):
        SCALAR.matmul(short, np.zeros((1, 256), np.float32))


# ---- generic: the contract, and close to float64 -------------------------------------

@pytest.mark.parametrize("name", QUANTIZED)
@pytest.mark.parametrize("extreme", [False, True])
def test_generic_equals_numpy_model(name, extreme):
    rng = np.random.default_rng(2)
    cols = 768 if TYPES[name].block == 256 else 352  # 11 groups: lanes wrap
    t = make_blocks(name, 7, cols, rng, extreme)
    x = acts(5, cols, rng)
    got = SCALAR.matmul(t, x)
    assert np.array_equal(got, model_matmul(t, x)), name


@pytest.mark.parametrize("name", NAMES)
def test_generic_close_to_float64(name):
    rng = np.random.default_rng(3)
    cols = 512
    t = make_blocks(name, 9, cols, rng)
    x = acts(3, cols, rng)
    w = dequantized(t).astype(np.float64)
    if name in QUANTIZED:  # the activations the kernel sees
        xd = np.array([(lambda q, s: q.astype(np.float64).reshape(-1, 32) * s[:, None])(
            *SCALAR.quantize(r, 32)).reshape(-1) for r in x])
    else:
        xd = x.astype(np.float64)
    want = xd @ w.T
    tol = 1e-5 * (np.abs(xd) @ np.abs(w).T) + 1e-30
    got = SCALAR.matmul(t, x)
    assert np.all(np.abs(got - want) <= tol), name


# ---- every variant equals generic ----------------------------------------------------

def edge_cases():
    rng = np.random.default_rng(4)
    cases = []
    for name in NAMES:
        block = max(TYPES[name].block, 32)
        for rows, nblocks in ((1, 1), (3, 1), (7, 2), (37, 3), (21, 16 if block == 32 else 5)):
            t = make_blocks(name, rows, block * nblocks, rng, extreme=rows == 7)
            for T in (1, 5) if rows < 37 else (1, 5, 17, 33):  # k-quants: 16 tokens a pass
                cases.append(harness.BlockCase(t, acts(T, t.shape[1], rng)))
        if TYPES[name].block == 1:  # fp32's 16-lane order: tails of 1..15 values
            for rows, cols in ((5, 37), (9, 1), (4, 15), (6, 16)):
                cases.append(harness.BlockCase(make_blocks(name, rows, cols, rng),
                                               acts(3, cols, rng)))
    return cases


EDGE_CASES = edge_cases()


@st.composite
def block_cases(draw, max_rows=40):
    name = draw(st.sampled_from(NAMES))
    block = max(TYPES[name].block, 32)
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    rows = draw(st.integers(1, max_rows))
    cols = (draw(st.integers(1, 200)) if TYPES[name].block == 1
            else block * draw(st.integers(1, 4 if block == 256 else 20)))
    T = draw(st.just(1) | st.integers(1, 20))  # one token often: decode's two read orders
    return harness.BlockCase(make_blocks(name, rows, cols, rng, draw(st.booleans())),
                             acts(T, cols, rng), draw(st.sampled_from(kernels.DECODE_ROWS)))


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@pytest.mark.parametrize("threads", [1, 2])
def test_edges_every_variant_equals_generic(threads):
    for case in EDGE_CASES:
        ref = SCALAR.matmul(case.t, case.x)
        for v in SIMD:
            for rows in kernels.DECODE_ROWS:  # one token's two read orders (q8_0: decode.h's)
                got = Kernels(v).matmul(case.t, case.x, threads, decode_rows=rows)
                assert np.array_equal(got, ref), (v, case.t.qtype.name, case.t.shape,
                                                  len(case.x), rows)


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=block_cases(), threads=st.sampled_from([1, 2]))
def test_every_variant_equals_generic(case, threads):
    ref = SCALAR.matmul(case.t, case.x)
    for v in SIMD:
        got = Kernels(v).matmul(case.t, case.x, threads, decode_rows=case.decode_rows)
        assert np.array_equal(got, ref), (v, case.decode_rows)


BUILDS = harness.host_builds()
HARNESS_VARIANTS = [n for n, b in BUILDS.items() if b.reference]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("harness")


def check_harness(name, workdir, cases):
    harness.check_against_reference(
        BUILDS, name, workdir, cases,
        lambda case: (name, case.t.qtype.name, case.t.shape, len(case.x), case.decode_rows))


@pytest.mark.parametrize("name", HARNESS_VARIANTS)
def test_harness_edges_equal_generic(name, workdir):
    check_harness(name, workdir, EDGE_CASES + [harness.BlockCase(c.t, c.x, 8)
                                               for c in EDGE_CASES if len(c.x) == 1])


@pytest.mark.parametrize("name", HARNESS_VARIANTS)
@settings(max_examples=6, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(cases=st.lists(block_cases(max_rows=24), min_size=1, max_size=8))
def test_harness_variant_equals_generic(name, workdir, cases):
    check_harness(name, workdir, cases)


def test_harness_generic_equals_engine(workdir):
    """The harness's scalar build computes what the engine's does, token table too."""
    cases = EDGE_CASES[::7]
    for case, out in zip(cases, BUILDS["scalar"].run(workdir, cases)):
        rows, cols = case.t.shape
        T = len(case.x)
        got = np.frombuffer(out[:4 * T * rows], np.float32).reshape(T, rows)
        assert np.array_equal(got, SCALAR.matmul(case.t, case.x))
        row = np.frombuffer(out[4 * T * rows:], np.float32)
        assert np.array_equal(row, SCALAR.dequantize_row(case.t, rows - 1))
