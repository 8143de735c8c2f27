"""qllama quantize: golden bytes, the Q8_0 kernel's arithmetic, group sizes, bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qllama._kernels.quantize_weights import quantize_weights as q80
from qllama.cli import main
from qllama.conversion.llama2c import quantize_file
from qllama.errors import UsageError
from qllama.formats import llama2c as formats
from qllama.formats.llama2c import Config, ModelFile
from qllama.quant.groups import choose_group_size
from qllama.synth import random_weights, write_weights

from conftest import data, golden

# A small model whose hidden_dim (48) makes the default group size back off to 16.
SMALL = Config(1, dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2,
               vocab_size=40, seq_len=16, shared_classifier=False)


@pytest.fixture
def small(tmp_path):
    """(path, weights) of SMALL written as version 1."""
    weights = random_weights(SMALL, seed=1)
    path = tmp_path / "small.v1.bin"
    write_weights(path, SMALL, weights)
    return path, weights


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".qllama-"))


# ---------------------------------------------------------------------------
# Golden files: byte equality with llama2.c's export.py


@pytest.mark.parametrize("src,want,note", [
    ("gqa512.v1.bin", "gqa512.q80.bin", False),
    ("gqa512.v0.bin", "gqa512.q80.bin", False),
    ("unshared32k.v1.bin", "unshared32k.q80.gs4.bin", True),
    ("unshared32k.v0.bin", "unshared32k.q80.gs4.bin", True),
])
def test_golden_bytes_via_cli(src, want, note, tmp_path, capsys):
    out = tmp_path / "out.bin"
    assert main(["quantize", str(golden(src)), str(out)]) == 0
    assert out.read_bytes() == golden(want).read_bytes()
    err = capsys.readouterr().err
    assert ("using 4" in err) == note  # the default 64 backs off to 4 and says so


def test_golden_real_model_v0(tmp_path):
    out = tmp_path / "stories260K.q80"
    report = quantize_file(data("stories260K.bin"), out)
    assert report.config.group_size == 4 and report.note
    assert out.read_bytes() == golden("stories260K.q80.gs4.bin").read_bytes()


def test_explicit_group_size_golden(tmp_path):
    out = tmp_path / "out.bin"
    assert main(["quantize", "-q", "--group-size", "4", str(golden("unshared32k.v1.bin")),
                 str(out)]) == 0
    assert out.read_bytes() == golden("unshared32k.q80.gs4.bin").read_bytes()


# ---------------------------------------------------------------------------
# Streaming: chunking, threads and input version do not change a byte


def test_chunks_threads_versions_agree(small, tmp_path):
    path, weights = small
    v0 = tmp_path / "small.v0.bin"
    write_weights(v0, SMALL, weights, version=0)
    ref = tmp_path / "ref.q80"
    quantize_file(path, ref, threads=1)
    want = ref.read_bytes()
    for i, (src, kw) in enumerate([(path, dict(chunk_bytes=16 * 4 * 3, threads=2)),
                                   (v0, dict(chunk_bytes=64, threads=1)),
                                   (v0, dict(threads=2))]):
        out = tmp_path / f"o{i}.q80"
        quantize_file(src, out, **kw)
        assert out.read_bytes() == want


def test_output_matches_numpy_reference(small, tmp_path):
    path, weights = small
    out = tmp_path / "small.q80"
    report = quantize_file(path, out)
    gs = report.config.group_size
    assert gs == 16 and "using 16" in report.note
    with ModelFile(out) as m:
        assert m.config == SMALL.as_version(2, 16)
        for (name, layer), w in weights.items():
            t = m.tensor(name, layer)
            if name not in formats.QUANTIZED:
                np.testing.assert_array_equal(t, w)
                continue
            q_ref, s_ref = reference_q80(w.reshape(-1), gs)
            np.testing.assert_array_equal(t.q, q_ref)
            np.testing.assert_array_equal(t.s, s_ref)
            err = np.abs(t.dequantize().astype(np.float64) - w).max()
            assert err <= report.kinds[name].max_err * (1 + 1e-5)
    assert report.in_bytes == os.path.getsize(path)
    assert report.out_bytes == os.path.getsize(out)


def test_interrupt_leaves_no_file(small, tmp_path):
    path, _ = small
    out = tmp_path / "out.q80"

    def progress(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_file(path, out, progress=progress, chunk_bytes=64)
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# Group size rule


@pytest.mark.parametrize("dim,hidden,requested,want", [
    (288, 768, None, 32), (768, 2048, None, 64), (4096, 11008, None, 64),
    (32, 172, None, 4), (64, 192, None, 64), (64, 172, None, 4), (6, 9, None, 1),
    (288, 768, 32, 32), (288, 768, 96, 96), (288, 768, 3, 3), (4096, 11008, 128, 128),
])
def test_choose_group_size(dim, hidden, requested, want):
    c = Config(1, dim, hidden, 1, 1, 1, 10, 4, True)
    gs, note = choose_group_size(c, requested)
    assert gs == want
    assert (note is not None) == (requested is None and want != 64)


@pytest.mark.parametrize("requested", [64, 8, 0, -4])
def test_explicit_group_size_must_divide(requested):
    c = Config(1, 32, 172, 1, 4, 4, 10, 4, True)
    with pytest.raises(UsageError, match="group-size"):
        choose_group_size(c, requested)


def test_explicit_bad_group_size_cli(small, tmp_path, capsys):
    path, _ = small
    out = tmp_path / "out.q80"
    assert main(["quantize", "--group-size", "32", str(path), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not divide hidden_dim 48" in err and "16" in err
    assert not out.exists()


# ---------------------------------------------------------------------------
# Special values


def test_all_zero_groups(tmp_path):
    weights = random_weights(SMALL, seed=2)
    weights[("wq", 1)][3, :] = 0.0  # two whole groups of 16
    weights[("w2", 0)][:] = -0.0
    src, out = tmp_path / "z.bin", tmp_path / "z.q80"
    write_weights(src, SMALL, weights)
    quantize_file(src, out)
    with ModelFile(out) as m:
        wq = m.tensor("wq", 1)
        assert not np.isnan(wq.s).any()
        np.testing.assert_array_equal(wq.s.reshape(SMALL.dim, -1)[3], 0.0)
        np.testing.assert_array_equal(wq.q.reshape(SMALL.dim, -1)[3], 0)
        w2 = m.tensor("w2", 0)
        assert (w2.s == 0).all() and (w2.q == 0).all()


@pytest.mark.parametrize("name,layer,index,value", [
    ("wv", 1, (5, 7), np.nan), ("tok_embeddings", None, (39, 31), np.inf),
    ("output", None, (0, 0), -np.inf), ("ffn_norm", 1, (3,), np.nan),
    ("w2", 0, (31, 47), np.nan),
])
def test_non_finite_weight_is_an_error(name, layer, index, value, tmp_path, capsys):
    weights = random_weights(SMALL, seed=3)
    weights[(name, layer)][index] = value
    src, out = tmp_path / "bad.bin", tmp_path / "bad.q80"
    write_weights(src, SMALL, weights)
    assert main(["quantize", str(src), str(out)]) == 1
    err = capsys.readouterr().err
    flat = int(np.ravel_multi_index(index, weights[(name, layer)].shape))
    assert err.startswith("qllama: error: ") and err.count("\n") == 1
    assert name in err and f"element {flat}" in err
    assert (f"layer {layer}" in err) == (layer is not None)
    assert not out.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------
# The kernel against a float64 numpy reference of the same formula


def reference_q80(w, gs):
    """llama2.c's quantize_q80 in float64, rounded where float32 rounds.

    Rounding an exact float64 quotient of two float32 values to float32 gives the
    correctly rounded float32 quotient (53 >= 2 * 24 + 2), so this is bit-exact.
    """
    w64 = w.astype(np.float64).reshape(-1, gs)
    wmax = np.abs(w64).max(axis=1)
    s = (wmax / 127.0).astype(np.float32)
    with np.errstate(all="ignore"):  # 0 / 0 in all-zero groups, replaced by 0
        r = (w64 / s.astype(np.float64)[:, None]).astype(np.float32)
        q = np.where(s[:, None] == 0, 0, np.clip(np.rint(r), -127, 127)).astype(np.int8)
    return q.reshape(-1), s


def run_kernel(w, gs, threads=1):
    n = w.size
    q = np.empty(n, np.int8)
    s = np.empty(n // gs, np.float32)
    err = np.empty(n // gs, np.float32)
    q80(w, gs, q, s, err, threads)
    return q, s, err


TINY = float(np.finfo(np.float32).smallest_subnormal)
finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
magnitude = st.sampled_from([1.0, 0.02, 1e-3, 1e30, 3e38, 1e-38, 1e-40, 1e-44, TINY])


@st.composite
def weight_groups(draw):
    gs = draw(st.sampled_from([1, 2, 3, 4, 8, 16, 32, 48, 64, 128, 256]))
    n_groups = draw(st.integers(1, 12))
    scale = draw(magnitude)
    base = draw(hnp.arrays(np.float32, gs * n_groups,
                           elements=st.floats(-1, 1, width=32)))
    w = (base.astype(np.float64) * scale).astype(np.float32)
    # sprinkle arbitrary finite values: outliers, subnormals, -0.0, exact zeros
    extras = draw(st.lists(st.tuples(st.integers(0, w.size - 1),
                                     st.one_of(finite32, st.sampled_from([0.0, -0.0, TINY])))))
    for i, v in extras:
        w[i] = v
    if draw(st.booleans()):
        w[: gs * draw(st.integers(0, n_groups))] = 0.0  # whole zero groups
    return w, gs


U = 2.0 ** -24  # float32 unit roundoff


def tolerance(s):
    """Bound on |q*s - w| for a group with float32 scale s (derivation in test docstring)."""
    return s.astype(np.float64) * (0.5 + 128 * U) + 127 * 2.0 ** -150


@settings(max_examples=200, deadline=None)
@given(weight_groups())
@example((np.array([np.finfo(np.float32).max], np.float32), 1))  # q*s overflows in float32
def test_kernel_matches_reference(case):
    """Q8_0 of each group of GS float32 values w, with wmax = max|w|:

    * s = fl(wmax / 127): the float32 division, so s == np.float32(wmax) / 127.
    * q = clamp(rint(fl(w / s)), -127, 127), rint rounding half to even.

    Error bound. Let t = wmax / 127 exactly; s = fl(t) has |s - t| <= max(U t, 2^-150)
    (U = 2^-24; 2^-150 is half the subnormal spacing). r = fl(w / s) has
    |r - w/s| <= U |w/s|, and |w/s| <= wmax/s, which is <= 127 (1 + 2U) for a normal s.
    So without clamping |q - w/s| <= 1/2 + 127 U (1 + 2U) <= 1/2 + 128 U, i.e.
    |q s - w| <= s (1/2 + 128 U). When s is subnormal, wmax / s can exceed 127.5 (s
    has lost relative precision) and q is clamped: then |q s - w| <= 127 |s - t| <=
    127 * 2^-150. The test uses the sum of both bounds. A group whose t underflows
    to s = 0 is written as zeros; its error is wmax (< 127 * 2^-150).
    """
    w, gs = case
    q, s, err = run_kernel(w, gs)
    q_ref, s_ref = reference_q80(w, gs)
    np.testing.assert_array_equal(s, s_ref)
    groups = w.reshape(-1, gs)
    np.testing.assert_array_equal(
        s, (np.abs(groups).max(axis=1) / np.float32(127)).astype(np.float32))
    np.testing.assert_array_equal(q, q_ref)
    assert q.min() >= -127 and q.max() <= 127
    dq = q.reshape(-1, gs).astype(np.float64) * s.astype(np.float64)[:, None]
    e = np.abs(dq - groups.astype(np.float64))
    assert (e.max(axis=1) <= tolerance(s)).all()
    # err reports each group's max error, computed in float32: q*s rounds by up to
    # U * 127 s, so compare within that
    slack = s.astype(np.float64) * 128 * U + 2 * TINY
    assert (np.abs(err.astype(np.float64) - e.max(axis=1)) <= slack).all()
    zero = s == 0
    assert (q.reshape(-1, gs)[zero] == 0).all()


@settings(max_examples=25, deadline=None)
@given(weight_groups())
def test_kernel_threads_give_identical_bytes(case):
    w, gs = case
    big = np.tile(w, max(1, (1 << 19) // w.size + 1))  # big enough to run in parallel
    big = big[: big.size // gs * gs]
    a, b = run_kernel(big, gs, 1), run_kernel(big, gs, 2)
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()


def test_kernel_extremes():
    w = np.array([3.4e38, -3.4e38, 1.0, 0.0,  # near FLT_MAX
                  TINY, -TINY, 0.0, -0.0,  # scale underflows to 0
                  190 * TINY, -190 * TINY, TINY, 0.0,  # subnormal scale: clamped
                  -0.0, -0.0, -0.0, -0.0], np.float32)
    q, s, err = run_kernel(w, 4)
    assert s[0] == np.float32(3.4e38) / np.float32(127) and list(q[:4]) == [127, -127, 0, 0]
    assert s[1] == 0 and (q[4:8] == 0).all() and err[1] == TINY
    assert list(q[8:10]) == [127, -127]
    assert s[3] == 0 and not np.signbit(s[3]) and (q[12:] == 0).all() and err[3] == 0


def test_kernel_non_finite_and_bad_arguments():
    w = np.ones(8, np.float32)
    w[5] = np.nan
    q, s, err = run_kernel(w, 4)
    assert err[0] < 1e-6 and np.isnan(err[1]) and s[1] == 0 and (q[4:] == 0).all()
    with pytest.raises(ValueError):
        q80(w, 3, np.empty(8, np.int8), np.empty(2, np.float32), np.empty(2, np.float32))
    with pytest.raises(ValueError):
        q80(w, 4, np.empty(8, np.int8), np.empty(3, np.float32), np.empty(2, np.float32))


# ---------------------------------------------------------------------------
# Paths and bad input


def test_path_errors(small, tmp_path, capsys):
    path, _ = small
    out = tmp_path / "out.q80"
    cases = [
        (["quantize", str(tmp_path / "missing.bin"), str(out)], "No such file"),
        (["quantize", str(path), str(path)], "same file"),
        (["quantize", str(path), str(tmp_path / "nodir" / "o.bin")], "does not exist"),
        (["quantize", str(path), str(tmp_path)], "is a directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert not out.exists()
    out.write_bytes(b"old")
    assert main(["quantize", str(path), str(out)]) == 1
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"old"
    assert main(["quantize", "-q", "--force", str(path), str(out)]) == 0
    assert formats.read_config(out).version == 2
    assert main(["quantize", str(out), str(tmp_path / "again.q80")]) == 1
    assert "already quantized" in capsys.readouterr().err
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only directories")
def test_unwritable_directory(small, tmp_path, capsys):
    path, _ = small
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["quantize", str(path), str(ro / "o.q80")]) == 1
        assert "not writable" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_summary(small, tmp_path, capsys):
    path, _ = small
    assert main(["quantize", str(path), str(tmp_path / "o.q80")]) == 0
    out = capsys.readouterr().out
    for word in ("group size 16", "tok_embeddings", "w2", "output", "MB/s", "smaller"):
        assert word in out


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qllama", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_subprocess_errors_have_no_traceback(small, tmp_path):
    path, weights = small
    raw = path.read_bytes()
    truncated = tmp_path / "trunc.bin"
    truncated.write_bytes(raw[:1000])
    nan = tmp_path / "nan.bin"
    weights[("w1", 1)][2, 3] = np.nan
    write_weights(nan, SMALL, weights)
    bad_magic = tmp_path / "magic.bin"
    bad_magic.write_bytes(b"XXXX" + raw[4:])
    for src in (truncated, nan, bad_magic, tmp_path / "missing.bin"):
        out = tmp_path / "out.q80"
        p = run_cli("quantize", src, out)
        assert p.returncode == 1, p.stderr
        assert p.stderr.startswith("qllama: error: ") and p.stderr.count("\n") == 1, p.stderr
        assert "Traceback" not in p.stderr and not out.exists()
    assert leftovers(tmp_path) == []


def test_output_mode_follows_umask(small, tmp_path):
    path, _ = small
    out = tmp_path / "o.q80"
    quantize_file(path, out)
    mask = os.umask(0o022)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def has_unnamed_files(directory):
    """Whether outputs in `directory` are written unnamed (O_TMPFILE) until complete."""
    from qllama.io import atomic
    fd = atomic._open_unnamed(str(directory))
    if fd is None:
        return False
    os.close(fd)
    return True


def writing_into(pid, directory):
    """Whether process `pid` has a file open in `directory` (named or not)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(directory) + "/"):
                return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
@pytest.mark.parametrize("signame", ["SIGINT", "SIGKILL"])
def test_signal_leaves_no_partial_file(tmp_path, signame):
    """Ctrl-C (cleaned up by the handler) or a kill outright (the OOM killer: nothing
    runs, so the output must never have had a name) mid-write leaves no file."""
    import signal
    import time

    from qllama.synth import write_random_model

    src = tmp_path / "s15.bin"
    write_random_model(src, "stories15M", version=1)
    outdir = tmp_path / "out"
    outdir.mkdir()
    if signame == "SIGKILL" and not has_unnamed_files(outdir):
        pytest.skip("this file system has no O_TMPFILE: a killed writer leaves its "
                    "named .part file")
    p = subprocess.Popen([sys.executable, "-m", "qllama", "quantize", str(src),
                          str(outdir / "o.q80"), "--threads", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not writing_into(p.pid, outdir) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    p.send_signal(getattr(signal, signame))
    out, err = p.communicate(timeout=60)
    if p.returncode == 0:
        pytest.skip("quantize finished before the signal arrived")
    if signame == "SIGINT":
        assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
    else:
        assert p.returncode == -signal.SIGKILL
    assert list(outdir.iterdir()) == []


def test_named_temporary_file_fallback(small, tmp_path, monkeypatch):
    """Without O_TMPFILE the output goes through a named file, gone on success and failure."""
    from qllama.io import atomic
    monkeypatch.setattr(atomic, "_open_unnamed", lambda parent: None)
    path, _ = small
    out = tmp_path / "o.q80"
    quantize_file(path, out)
    assert out.is_file() and leftovers(tmp_path) == []

    def progress(done):
        assert leftovers(tmp_path) != []  # the named file exists while writing
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_file(path, tmp_path / "o2.q80", progress=progress, chunk_bytes=64)
    assert not (tmp_path / "o2.q80").exists() and leftovers(tmp_path) == []


def test_output_on_a_file_system_without_modes(small, tmp_path, monkeypatch):
    """vfat and exfat refuse chmod with EPERM: the output is still written."""
    from qllama.io import atomic

    def refuse(fd, mode):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "fchmod", refuse)
    path, _ = small
    for unnamed in (True, False):
        if not unnamed:
            monkeypatch.setattr(atomic, "_open_unnamed", lambda parent: None)
        out = tmp_path / f"o{unnamed}.q80"
        quantize_file(path, out)
        assert out.is_file() and leftovers(tmp_path) == []


def test_output_that_cannot_be_named(small, tmp_path, monkeypatch, capsys):
    """If the complete unnamed file cannot be linked into place: one line naming the
    output, and nothing left behind."""
    if not has_unnamed_files(tmp_path):
        pytest.skip("this file system has no O_TMPFILE: outputs are named from the start")

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", refuse)
    path, _ = small
    out = tmp_path / "o.q80"
    assert main(["quantize", str(path), str(out), "-q"]) == 1
    assert capsys.readouterr().err == (f"qllama: error: {out}: cannot name the output: "
                                       "Operation not permitted\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.v1.bin"]


def test_force_never_replaces_a_fifo_or_device(small, tmp_path, capsys):
    src, _ = small
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in (fifo, "/dev/null"):
        assert main(["quantize", str(src), str(target), "--force", "-q"]) == 1
        assert "not a regular file" in capsys.readouterr().err
    assert not os.path.isfile(fifo) and not os.path.isfile("/dev/null")


def test_bf16_quantizer_equals_float32_of_the_same_values():
    """quantize_weights_bf16 (bits widened in its own pass) makes the bytes
    quantize_weights makes of the widened float32, with the same error marks: Inf,
    NaN, all-zero, subnormal and largest-finite groups, any group size."""
    from qllama._kernels.quantize_weights import quantize_weights_bf16
    rng = np.random.default_rng(7)
    n = 64 * 24 * 50
    bits = ((rng.standard_normal(n, dtype=np.float32) * 0.02).view(np.uint32) >> 16)
    bits = bits.astype(np.uint16)
    bits[5], bits[700] = 0x7F80, 0x7FC1  # Inf, NaN
    bits[2048:2112] = 0  # an all-zero group
    bits[3072:3136] = rng.integers(0, 4, 64)  # subnormal and zero values
    bits[4096:4160] = 0x7F7F  # the largest finite bf16
    bits[4200] = 0xFF7F
    w = (bits.astype(np.uint32) << 16).view(np.float32)
    for gs in (24, 32, 64):
        outs = []
        for f, x in ((q80, w), (quantize_weights_bf16, bits)):
            q = np.empty(n, np.int8)
            s, e = np.empty(n // gs, np.float32), np.empty(n // gs, np.float32)
            f(x, gs, q, s, e, 2)
            outs.append((q.tobytes(), s.tobytes(), e.tobytes()))
        assert outs[0] == outs[1]
        assert np.isnan(np.frombuffer(outs[0][2], np.float32)[[5 // gs, 700 // gs]]).all()
