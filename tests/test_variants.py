"""Same numbers from every kernel variant (kernels.h): bit for bit equal to the scalar
reference, on random shapes (hypothesis) that no tile divides, 1 to 64 tokens per
block, group sizes 16 to 128 (16: the fallback of the 32-byte x86 decode kernels, and
the 16-byte pieces of the ymm and dotprod GEMMs; 48 and 96: AMX's 32-byte tiles over
several steps a group), weights of -128 and all-zero groups; and fixed cases at the
GEMMs' edges (every group size, token counts around their vectors and thresholds).

- Variants this CPU runs are checked in the engine itself (`Kernels`, whole models).
- Variants it cannot run are built from the same source by tests/harness.py:
  AVX-512 VNNI through SIMDe, AVX-VNNI with vpdpbusd in its AVX-512 form, AMX with
  its tiles modelled in C, NEON and dotprod
  cross-compiled and run under qemu-user; each skips, saying why, where its tools
  are missing.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qllama import kernels
from qllama._kernels.engine import Kernels
from qllama.conversion.llama2c import quantize_file
from qllama.errors import UsageError
from qllama.formats.llama2c import Q80, Config, QTensor, layout, read_config
from qllama.model import PREFILL_BLOCK, Model
from qllama.synth import write_random_model

import harness

RUNNABLE = kernels.runnable()
SIMD = [v for v in RUNNABLE if v != "scalar"]
SCALAR = Kernels("scalar")
GROUP_SIZES = [16, 32, 48, 64, 96, 128]


def q80_matrices(draw, rows, cols, gs):
    """int8 values over the whole range (-128 included, as a file may hold), some
    groups all zero, and scales of a wide range (0 for the zero groups)."""
    q = draw(hnp.arrays(np.int8, (rows, cols), elements=st.integers(-128, 127)))
    flat = q.reshape(-1, gs)
    zero = draw(hnp.arrays(np.bool_, len(flat)))
    flat[zero] = 0
    s = draw(hnp.arrays(np.float32, len(flat), elements=st.floats(2.0 ** -14, 4.0, width=32)))
    s[zero] = 0.0
    return q, s


@st.composite
def q80_cases(draw, max_rows=40):
    gs = draw(st.sampled_from(GROUP_SIZES))
    cols = gs * draw(st.integers(1, 4))
    rows = draw(st.integers(1, max_rows))
    T = draw(st.just(1) | st.integers(1, 64))  # one token often: decode's two read orders
    q, s = q80_matrices(draw, rows, cols, gs)
    x = draw(hnp.arrays(np.float32, (T, cols), elements=st.floats(-8, 8, width=32)))
    if draw(st.booleans()):
        x[:, :gs] = 0.0  # an all-zero activation group: scale 0
    return harness.Q80Case(q, s, x, gs, draw(st.sampled_from(kernels.DECODE_ROWS)))


@st.composite
def f32_cases(draw):
    cols = draw(st.integers(1, 100))
    rows = draw(st.integers(1, 13))
    T = draw(st.integers(1, 5))
    w = draw(hnp.arrays(np.float32, (rows, cols), elements=st.floats(-2, 2, width=32)))
    x = draw(hnp.arrays(np.float32, (T, cols), elements=st.floats(-2, 2, width=32)))
    return harness.F32Case(w, x)


@st.composite
def attention_cases(draw):
    hs = draw(st.sampled_from([8, 16, 24, 64, 72, 128]))
    n_pos = draw(st.integers(1, 40))
    vals = st.floats(-70000, 70000, width=32) | st.floats(-2, 2, width=32)
    q = draw(hnp.arrays(np.float32, hs, elements=st.floats(-2, 2, width=32)))
    k = draw(hnp.arrays(np.float32, (n_pos, hs), elements=vals))
    v = draw(hnp.arrays(np.float32, (n_pos, hs), elements=vals))
    return harness.AttentionCase(q, k / np.float32(1000), v)


# ---- variants this CPU runs, in the engine ------------------------------------------


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=q80_cases(), threads=st.sampled_from([1, 2]))
def test_q80_matmul_every_variant_equals_scalar(case, threads):
    t = QTensor(case.q.reshape(-1), case.s, case.q.shape, case.gs)
    ref = SCALAR.matmul(t, case.x)
    for v in SIMD:
        got = Kernels(v).matmul(t, case.x, threads, decode_rows=case.decode_rows)
        assert np.array_equal(got, ref), (v, case.decode_rows)


def gemm_cases():
    """Every group size x token counts around the GEMMs' vectors (8 and 16 tokens) and
    thresholds, and past AMX's 64 tokens a pass (a server's batch holds up to 72 rows),
    on 37 rows (two 16-row blocks and a tail of 5) and on long rows, at the products'
    edges:
    weights of -128 against activations of +-127 (the quantized max of each group)."""
    rng = np.random.default_rng(18)
    cases = []
    for gs in GROUP_SIZES:
        cols = gs * (3 if gs < 64 else 2)
        q = rng.integers(-128, 128, (37, cols), dtype=np.int8)
        q[3] = -128
        q[20, : cols // 2] = -128
        s = rng.uniform(0.01, 2, 37 * cols // gs).astype(np.float32)
        for T in (2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 33, 64, 65, 81, 129):
            x = rng.normal(size=(T, cols)).astype(np.float32)
            x[0] = np.where(np.arange(cols) % 3 == 0, -4.0, 4.0)  # all +-127 once quantized
            x[-1] = 4.0
            cases.append(harness.Q80Case(q, s, x, gs))
        # a first block of 16 rows without -128, where avx2 takes |x| . sign(x)w for
        # blocks of up to 8 tokens (gemm256.h; 4 slots up to 4), and a second with one
        q = np.clip(q, -127, 127)
        q[20, 5] = -128
        for T in (3, 4, 5, 8):
            x = rng.normal(size=(T, cols)).astype(np.float32)
            x[0] = np.where(np.arange(cols) % 3 == 0, -4.0, 4.0)
            cases.append(harness.Q80Case(q, s, x, gs))
    # rows of 2048 values or more: avx512vnni takes blocks of 2-15 tokens through the
    # ymm GEMM there (gemm512.h's YMM_MIN_COLS), shorter rows through q80_rows
    for gs in GROUP_SIZES:
        cols = gs * -(-2048 // gs)
        q = rng.integers(-128, 128, (21, cols), dtype=np.int8)
        q[2] = -128
        s = rng.uniform(0.01, 2, 21 * cols // gs).astype(np.float32)
        for T in (2, 3, 4, 5, 6, 8, 15, 16):
            x = rng.normal(size=(T, cols)).astype(np.float32)
            x[0] = np.where(np.arange(cols) % 3 == 0, -4.0, 4.0)
            cases.append(harness.Q80Case(q, s, x, gs))
    return cases


GEMM_CASES = gemm_cases()


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@pytest.mark.parametrize("threads", [1, 2])
def test_q80_gemm_edges_every_variant_equals_scalar(threads):
    for case in GEMM_CASES:
        t = QTensor(case.q.reshape(-1), case.s, case.q.shape, case.gs)
        ref = SCALAR.matmul(t, case.x)
        for v in SIMD:
            got = Kernels(v).matmul(t, case.x, threads)
            assert np.array_equal(got, ref), (v, case.gs, len(case.x))


def few_token_cases():
    """One token through rows of every kind decode.h's q80_rows1 tells apart: groups in
    fours with a tail of none to three, the group sizes it unrolls and others, and rows
    of more groups than it computes VNNI's offsets for itself (1,025 of 32, prepared
    without the shared buffer: q80_dot4 then), one row after another and eight side
    by side; and the same rows for 2 and 5 tokens (four rows a pass where a GEMM does
    not take them: avx2's 2 tokens, short rows on avx512vnni, and every variant
    unpacked). 29 rows, a block of 16 and 13 (8 side by side and 5). Weights of -128
    against activations of +-127."""
    rng = np.random.default_rng(19)
    cases = []
    for gs, groups in ((32, (1, 5, 7, 1025)), (64, (3, 4, 9, 64)), (96, (2, 6)),
                       (128, (5,)), (256, (4, 7))):
        for ng in groups:
            cols = gs * ng
            q = rng.integers(-128, 128, (29, cols), dtype=np.int8)
            q[2] = q[20] = -128
            s = rng.uniform(0.01, 2, 29 * ng).astype(np.float32)
            for T, edge in ((1, False), (1, True), (2, True), (5, True)):
                x = rng.normal(size=(T, cols))
                if edge:  # all +-127 once quantized
                    x[0] = np.where(np.arange(cols) % 3 == 0, -4.0, 4.0)
                cases.append(harness.Q80Case(q, s, x.astype(np.float32), gs))
    return cases


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@pytest.mark.parametrize("threads", [1, 2])
def test_q80_few_tokens_every_variant_equals_scalar(threads):
    for case in few_token_cases():
        t = QTensor(case.q.reshape(-1), case.s, case.q.shape, case.gs)
        ref = SCALAR.matmul(t, case.x)
        for v in SIMD:
            for packed in (True, False):  # rows' shared part from prepare, or their own
                for rows in kernels.DECODE_ROWS:
                    got = Kernels(v).matmul(t, case.x, threads, packed=packed, decode_rows=rows)
                    assert np.array_equal(got, ref), (v, case.gs, case.q.shape, len(case.x),
                                                      packed, rows)


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@settings(max_examples=40, deadline=None)
@given(case=f32_cases())
def test_f32_matmul_every_variant_equals_scalar(case):
    ref = SCALAR.matmul(case.w, case.x)
    for v in SIMD:
        assert np.array_equal(Kernels(v).matmul(case.w, case.x), ref), v


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@settings(max_examples=40, deadline=None)
@given(case=attention_cases(), kv=st.sampled_from(["f16", "f32"]))
def test_attention_every_variant_equals_scalar(case, kv):
    ref = SCALAR.attention(case.q, case.k, case.v, len(case.q), 0, kv)
    for v in SIMD:  # bit patterns: a cache of +-inf makes NaN (inf - inf), never equal as floats
        got = Kernels(v).attention(case.q, case.k, case.v, len(case.q), 0, kv)
        assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), v


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 60),
                  elements=st.floats(width=32, allow_nan=False)))
def test_f16_rounding_is_ieee_nearest_even(x):
    """The cache's fp16 is numpy's float16 conversion (round to nearest even, overflow
    to infinity, subnormals kept) in every variant."""
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    for v in RUNNABLE:
        bits, back = Kernels(v).to_f16(x)
        assert np.array_equal(bits, want.view(np.uint16)), v
        assert np.array_equal(back, want.astype(np.float32)), v


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Small random models, fp32 and int8, with GQA and row counts no tile divides."""
    d = tmp_path_factory.mktemp("variants")
    out = {}
    for name, c in {
        "gs64": Config(1, dim=128, hidden_dim=320, n_layers=2, n_heads=8, n_kv_heads=2,
                       vocab_size=300, seq_len=96, shared_classifier=False),
        "gs32": Config(1, dim=96, hidden_dim=224, n_layers=2, n_heads=3, n_kv_heads=3,
                       vocab_size=260, seq_len=96, shared_classifier=True),
    }.items():
        write_random_model(d / f"{name}.bin", c, seed=5)
        quantize_file(d / f"{name}.bin", d / f"{name}.q80.bin")
        out[name] = d / f"{name}.bin"
        out[name + ".q80"] = d / f"{name}.q80.bin"
    return out


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@pytest.mark.parametrize("key", ["gs64", "gs64.q80", "gs32", "gs32.q80"])
@pytest.mark.parametrize("kv", ["f16", "f32"])
def test_whole_model_logits_equal_across_variants(models, key, kv):
    """Prefill blocks of 64 and 26 tokens (the GEMM path; the second block attends to
    the first's cache) and decode tokens: every variant's logits, at 1 and 2 threads,
    equal the scalar variant's."""
    ids = [1] + [int(i) for i in np.random.default_rng(3).integers(3, 250, 89)]
    assert PREFILL_BLOCK < len(ids) <= 2 * PREFILL_BLOCK
    ref = Model(models[key], variant="scalar", threads=1, kv=kv).logits(ids)
    for v in SIMD:
        for threads in (1, 2):
            m = Model(models[key], variant=v, threads=threads, kv=kv)
            assert np.array_equal(m.logits(ids), ref), (v, threads)
            s = m.session(8)
            last = [s.feed([i]) for i in ids[:8]][-1]
            assert np.array_equal(last, ref[7]), (v, "decode")


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@pytest.mark.parametrize("key", ["gs64.q80", "gs32.q80"])
def test_blocks_of_8_tokens_equal_across_variants(models, key, tmp_path):
    """Blocks of 8, 5, 4, 3 and 2 tokens after 8 cached positions (a batched decode's
    shapes), on the model as quantized (no weight is -128) and with -128 in a few 16-row
    blocks, which avx2's GEMM for up to 8 tokens notes on first sight and computes
    otherwise (gemm256.h): each session's logits equal the scalar variant's, the
    notes' second use too."""
    spec = read_config(models[key])
    poked = tmp_path / "poked.q80.bin"
    data = bytearray(models[key].read_bytes())
    for e in layout(spec):
        if e.encoding == Q80 and e.layer in (0, 1):
            row = 20 if e.name in ("w1", "wq") else 3
            data[e.offset + row * e.shape[1] + 7] = 0x80  # -128
    poked.write_bytes(bytes(data))
    rng = np.random.default_rng(6)
    for path in (models[key], poked):
        ids = [int(i) for i in rng.integers(3, 250, 29)]
        blocks = [[1] + ids[:7], ids[7:15], ids[15:20], ids[20:24], ids[24:27], ids[27:]]
        s = Model(path, variant="scalar", threads=1).session(32)
        want = [s.feed(b) for b in blocks]
        for v in SIMD:
            m = Model(path, variant=v, threads=2)
            for _ in range(2):
                s = m.session(32)
                got = [s.feed(b) for b in blocks]
                assert all(np.array_equal(g, w) for g, w in zip(got, want)), (v, str(path))


@pytest.mark.skipif(not SIMD, reason="this CPU runs no SIMD variant (scalar only)")
@pytest.mark.parametrize("key", ["gs64.q80", "gs32.q80"])
def test_decode_read_orders_give_the_same_logits(models, key, monkeypatch):
    """Decode through the engine, rows one after another or eight side by side
    (QLLAMA_DECODE_ROWS), gives the same logits in every variant."""
    ids = [1] + [int(i) for i in np.random.default_rng(4).integers(3, 250, 11)]
    got = {}
    for rows in kernels.DECODE_ROWS:
        monkeypatch.setenv("QLLAMA_DECODE_ROWS", str(rows))
        for v in SIMD:
            m = Model(models[key], variant=v, threads=2)
            assert m.decode_rows == rows
            s = m.session(len(ids))
            got[rows, v] = np.stack([s.feed([i]) for i in ids])
    ref = got[1, SIMD[0]]
    assert all(np.array_equal(g, ref) for g in got.values()), [k for k, g in got.items()
                                                              if not np.array_equal(g, ref)]


# ---- choosing a variant -------------------------------------------------------------


def test_decode_rows_choice(monkeypatch):
    """Eight rows side by side on Intel CPUs, one after another elsewhere, unless
    QLLAMA_DECODE_ROWS says (a bad value is a UsageError)."""
    monkeypatch.delenv("QLLAMA_DECODE_ROWS", raising=False)
    for vendor, rows in (("GenuineIntel", 8), ("AuthenticAMD", 1), ("", 1)):
        monkeypatch.setattr(kernels, "cpu_vendor", lambda vendor=vendor: vendor)
        assert kernels.decode_rows() == rows, vendor
    for value in ("1", "8", " 8 "):
        monkeypatch.setenv("QLLAMA_DECODE_ROWS", value)
        assert kernels.decode_rows() == int(value)
    monkeypatch.setenv("QLLAMA_DECODE_ROWS", "4")
    with pytest.raises(UsageError, match="QLLAMA_DECODE_ROWS='4': one of 1, 8"):
        kernels.decode_rows()


def test_cpu_vendor_is_cpuid_s():
    vendor = kernels.cpu_vendor()
    if "avx2" in kernels.compiled():  # an x86 build
        assert vendor in ("GenuineIntel", "AuthenticAMD") or (len(vendor) == 12
                                                              and vendor.isprintable())
    else:
        assert vendor == ""


def test_isa_names_are_checked(monkeypatch):
    monkeypatch.setenv("QLLAMA_ISA", "avx9000")
    with pytest.raises(UsageError, match="unknown kernel variant 'avx9000'"):
        kernels.select()
    monkeypatch.setenv("QLLAMA_ISA", "scalar")
    assert kernels.select() == "scalar"
    monkeypatch.delenv("QLLAMA_ISA")
    assert kernels.select() == RUNNABLE[0]
    foreign = "neon" if "avx2" in kernels.compiled() else "avx2"
    with pytest.raises(UsageError, match=f"'{foreign}' is not in this build"):
        kernels.select(foreign)


def test_variant_the_cpu_lacks_is_refused(monkeypatch):
    """A compiled variant needing a feature the CPU lacks is a UsageError, never SIGILL."""
    built = kernels.compiled()
    needy = max(built, key=lambda v: len(built[v]))
    if not built[needy]:
        pytest.skip("this build has only the scalar variant")
    have = [f for f in kernels.cpu_features() if f != built[needy][-1]]
    monkeypatch.setattr(kernels, "cpu_features", lambda: have)
    with pytest.raises(UsageError, match=f"'{needy}' cannot run on this CPU \\(needs "):
        kernels.select(needy)
    assert needy not in kernels.runnable()


def test_cli_bad_isa_is_one_line(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "qllama", "info", "--cpu"], capture_output=True,
                       text=True, env={**os.environ, "QLLAMA_ISA": "sse9"})
    assert r.returncode == 1
    assert r.stderr.startswith("qllama: error: unknown kernel variant 'sse9'")
    assert r.stderr.count("\n") == 1
    r = subprocess.run([sys.executable, "-m", "qllama", "info", "--cpu"], capture_output=True,
                       text=True, env={**os.environ, "QLLAMA_DECODE_ROWS": "3"})
    assert r.returncode == 1
    assert r.stderr == "qllama: error: QLLAMA_DECODE_ROWS='3': one of 1, 8\n"
    r = subprocess.run([sys.executable, "-m", "qllama", "info", "--cpu"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and f"chosen: {RUNNABLE[0]}" in r.stdout
    assert f"decode rows side by side: {kernels.decode_rows()}" in r.stdout


# ---- variants built by the harness: emulated or under qemu ---------------------------

BUILDS = harness.host_builds()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("harness")


def check_harness(name, workdir, cases):
    reference = BUILDS[name].reference
    harness.check_against_reference(
        BUILDS, name, workdir, cases,
        lambda case: f"{name} differs from {reference} on {type(case).__name__} {case}")


HARNESS_VARIANTS = [n for n, b in BUILDS.items() if b.reference]


@pytest.mark.parametrize("name", HARNESS_VARIANTS)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(q80=st.lists(q80_cases(max_rows=48), min_size=1, max_size=6),
       f32=st.lists(f32_cases(), min_size=1, max_size=3),
       att=st.lists(attention_cases(), min_size=1, max_size=3))
def test_harness_variant_equals_scalar(name, workdir, q80, f32, att):
    check_harness(name, workdir, [*q80, *f32, *att])


@pytest.mark.parametrize("name", [n for n in HARNESS_VARIANTS if not n.endswith("-qemu")])
def test_harness_gemm_edges_equal_scalar(name, workdir):
    check_harness(name, workdir, GEMM_CASES)


@pytest.mark.parametrize("name", [n for n in HARNESS_VARIANTS if not n.endswith("-qemu")])
def test_harness_decode_read_orders_equal_scalar(name, workdir):
    """One token, rows one after another and eight side by side (decode.h), on the
    rows of every kind few_token_cases makes."""
    cases = [c for c in few_token_cases() if len(c.x) == 1]
    check_harness(name, workdir, [harness.Q80Case(c.q, c.s, c.x, c.gs, rows)
                                  for c in cases for rows in kernels.DECODE_ROWS])


def test_harness_scalar_equals_engine(workdir):
    """The harness's own scalar build computes what the engine's scalar variant does
    (so agreeing with it means agreeing with the engine)."""
    rng = np.random.default_rng(7)
    q = rng.integers(-128, 128, (20, 128), dtype=np.int8)
    s = rng.uniform(0.01, 1, 20 * 128 // 64).astype(np.float32)
    x = rng.normal(size=(9, 128)).astype(np.float32)
    case = harness.Q80Case(q, s, x, 64)
    out = BUILDS["scalar"].run(workdir, [case])[0]
    got = np.frombuffer(out[-4 * 9 * 20:], np.float32).reshape(9, 20)
    assert np.array_equal(got, SCALAR.matmul(QTensor(q.reshape(-1), s, q.shape, 64), x))


@pytest.mark.parametrize("name", list(BUILDS))
def test_harness_runs_the_engines_kernel_choice(name, workdir):
    """Every harness build goes through the engine's driver: groups that straddle rows
    (or span several) take the fp32 path there too, with no quantized rows (zeros),
    and each build gives the engine's numbers, GEMM blocks included."""
    build = harness.require_build(BUILDS, name)
    rng = np.random.default_rng(5)
    cases = []
    for rows, cols, gs, T in ((4, 40, 32, 3), (6, 48, 96, 9), (37, 64, 64, 17)):
        q = rng.integers(-128, 128, (rows, cols), dtype=np.int8)
        s = rng.uniform(0.01, 1, rows * cols // gs).astype(np.float32)
        cases.append(harness.Q80Case(q, s, rng.normal(size=(T, cols)).astype(np.float32), gs))
    for case, out in zip(cases, build.run(workdir, cases)):
        (rows, cols), T = case.q.shape, len(case.x)
        want = SCALAR.matmul(QTensor(case.q.reshape(-1), case.s, case.q.shape, case.gs), case.x)
        got = np.frombuffer(out[-4 * T * rows:], np.float32).reshape(T, rows)
        assert np.array_equal(got, want), (name, case.q.shape, case.gs)
        assert any(out[:-4 * T * rows]) == (cols % case.gs == 0), (name, case.q.shape, case.gs)


def test_harness_aarch64_scalar_equals_host_scalar(workdir):
    """generic.c under qemu (the aarch64 builds' reference) computes what it does on
    the host, on cases that make no NaN (whose bits are the one thing that differs)."""
    build = BUILDS["scalar-qemu"]
    if build.missing:
        pytest.skip(f"scalar-qemu: {build.missing}")
    rng = np.random.default_rng(11)
    q = rng.integers(-128, 128, (13, 192), dtype=np.int8)
    s = rng.uniform(0.01, 1, 13 * 192 // 64).astype(np.float32)
    cases = [harness.Q80Case(q, s, rng.normal(size=(T, 192)).astype(np.float32), 64)
             for T in (1, 7)]
    cases.append(harness.F32Case(rng.normal(size=(6, 37)).astype(np.float32),
                                 rng.normal(size=(3, 37)).astype(np.float32)))
    cases.append(harness.AttentionCase(*(rng.normal(size=shape).astype(np.float32)
                                         for shape in ((72,), (9, 72), (9, 72)))))
    assert build.run(workdir, cases) == BUILDS["scalar"].run(workdir, cases)


def test_groups_too_long_for_int32_take_the_fp32_path():
    """A file may declare a group size whose int8 sums overflow int32 (2^18 values of
    -128 x 127): such matrices take the format's fp32 definition, not a wrapped sum."""
    gs = cols = 1 << 18
    q = np.full((4, cols), -128, np.int8)
    t = QTensor(q.reshape(-1), np.ones(4, np.float32), q.shape, gs)
    x = np.ones((1, cols), np.float32)
    for v in RUNNABLE:
        assert np.array_equal(Kernels(v).matmul(t, x), np.full((1, 4), -128.0 * cols, np.float32)), v


def test_engine_refuses_a_variant_the_cpu_lacks():
    """The engine's own entry points check too (a direct Kernels("amx") would SIGILL)."""
    for v in set(kernels.compiled()) - set(RUNNABLE):
        with pytest.raises(ValueError, match=f"'{v}'"):
            Kernels(v)
