"""GGUF quantization: the block quantizers (quant.blocks, the numpy reference, and
_kernels.quantize_blocks, the C) against gguf.quants where it quantizes and against
each other everywhere; dequantize against gguf.quants.dequantize; and `qllama quantize
IN OUT.gguf --type`: llama.cpp's type mixture, shapes, metadata, bytes, the error
quantizing costs, and failures that leave nothing behind. (Equality with llama.cpp's
own k-quant bytes is checked by tools/check_quants.py, where llama.cpp is at hand.)"""
import os

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from hypothesis import given, settings
from hypothesis import strategies as st

from qllama._kernels.quantize_blocks import quantize_rows
from qllama.cli import main
from qllama.conversion.llama2c import quantize_file
from qllama.formats import gguf as gguf_format
from qllama.formats.llama2c import Config, ModelFile, layout
from qllama.quant import blocks
from qllama.quant.types import TYPES
from qllama.synth import write_random_model

from conftest import data, hf

ALL = ("q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "f16", "bf16")
IN_GGUF_PY = ("q8_0", "q4_0", "q4_1", "bf16")  # types gguf.quants can quantize


def rows_of(seed: int, n: int, cols: int, style: str) -> np.ndarray:
    """Finite float32 rows of a given style: gaussian at a random scale (1e-30 .. 1e3:
    tiny values, not subnormal ones, where the C's float-to-int casts are undefined),
    all zeros, mostly zeros, one sign, small integers (ties), a constant."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, cols)) * 10.0 ** rng.integers(-30, 4, (n, 1))
    if style == "zeros":
        x[:] = 0
    elif style == "sparse":
        x[rng.random(x.shape) < 0.8] = 0
    elif style == "positive":
        x = np.abs(x)
    elif style == "ints":
        x = np.round(rng.standard_normal((n, cols)) * 3)
    elif style == "constant":
        x[:] = x[:, :1]
    return x.astype(np.float32)


STYLES = st.sampled_from(["gauss", "zeros", "sparse", "positive", "ints", "constant"])


def c_quantize(name: str, x: np.ndarray) -> np.ndarray:
    return TYPES[name].quantize(x, threads=2)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL), st.integers(0, 2**32 - 1), st.integers(1, 5), st.integers(1, 3),
       STYLES, st.booleans())
def test_c_quantizers_are_the_numpy_reference(name, seed, n, n_blocks, style, weighted):
    """With and without an importance row (the k-quants use it, q8_0/f16/bf16 ignore it)."""
    cols = n_blocks * max(TYPES[name].block, 256 if "k" in name else 32)
    x = rows_of(seed, n, cols, style)
    imp = None
    if weighted and name not in ("q4_0", "q4_1"):
        imp = np.random.default_rng(seed).random(cols).astype(np.float32) ** 4 + 1e-3
    want = blocks.quantize(name, x, imp).tobytes()
    assert TYPES[name].quantize(x, threads=2, importance=imp).tobytes() == want


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(IN_GGUF_PY), st.integers(0, 2**32 - 1), st.integers(1, 4),
       st.integers(1, 4), STYLES)
def test_bytes_are_gguf_py_quantizers(name, seed, n, n_blocks, style):
    x = rows_of(seed, n, 32 * n_blocks, style)
    if name == "q4_0" and style == "zeros":
        x = np.abs(x)  # gguf.quants gives -0.0 blocks a +0 scale; llama.cpp (and qllama) -0
    want = gguf.quants.quantize(x, TYPES[name].gguf)
    assert blocks.quantize(name, x).tobytes() == want.tobytes()
    assert c_quantize(name, x).tobytes() == want.tobytes()


def test_q4_0_zero_block_sign_is_llama_cpps():
    """An all -0.0 block: llama.cpp's largest value starts at +0, so d = 0 / -8 = -0."""
    x = np.full((1, 32), -0.0, np.float32)
    assert blocks.quantize("q4_0", x)[0, :2].view(np.uint16)[0] == 0x8000


@pytest.mark.parametrize("name", ALL)
def test_dequantize_is_gguf_py(name):
    x = np.concatenate([rows_of(s, 2, 512, style) for s, style in
                        enumerate(["gauss", "sparse", "ints", "zeros", "positive"])])
    q = c_quantize(name, x)
    want = gguf.quants.dequantize(q, TYPES[name].gguf).reshape(x.shape)
    got = TYPES[name].dequantize(q, x.shape)
    assert got.dtype == np.float32 and np.array_equal(got, want)


# RMS error / RMS weight on gaussian weights: each type's, with room (measured: q8_0
# 0.54%, q6_k 1.8%, q5_k 3.6%, q4_k 7.2%, q4_1 7.8%, q4_0 8.6%, f16 0.021%, bf16 0.17%)
REL_RMS = {"q8_0": 0.007, "q6_k": 0.025, "q5_k": 0.05, "q4_k": 0.1, "q4_1": 0.11,
           "q4_0": 0.12, "f16": 0.0005, "bf16": 0.003}


@pytest.mark.parametrize("name", ALL)
def test_error_is_bounded(name):
    x = (np.random.default_rng(1).standard_normal((64, 1024)) * 0.02).astype(np.float32)
    back = blocks.dequantize(name, c_quantize(name, x), x.shape)
    rel = np.sqrt(np.mean((back - x) ** 2) / np.mean(x**2))
    assert rel < REL_RMS[name]


def test_quantize_rows_refuses_partial_blocks_and_wrong_outputs():
    x = np.zeros((2, 300), np.float32)
    with pytest.raises(ValueError, match="not whole blocks of 256"):
        quantize_rows("q4_k", x, np.empty((2, 144), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        quantize_rows("q8_0", np.zeros((2, 64), np.float32), np.empty((2, 34), np.uint8))
    x = np.zeros((2, 256), np.float32)
    with pytest.raises(ValueError, match="importance of 64 columns"):
        quantize_rows("q6_k", x, np.empty((2, 210), np.uint8), 1, np.ones(64, np.float32))
    with pytest.raises(ValueError, match="not implemented"):
        quantize_rows("q4_0", x, np.empty((2, 144), np.uint8), 1, np.ones(256, np.float32))


# ---------------------------------------------------------------------------
# qllama quantize IN OUT.gguf --type

# every matrix a whole number of 256-blocks; 8 layers: use_more_bits picks 0, 3, 6, 7
MIX = Config(1, dim=256, hidden_dim=512, n_layers=8, n_heads=4, n_kv_heads=2,
             vocab_size=512, seq_len=64, shared_classifier=False)
MORE_BITS = {0, 3, 6, 7}


def expected_type(kind: str, name: str, layer, ndim: int) -> T:
    """llama.cpp's llama_tensor_get_type for these shapes, written out plainly."""
    if ndim == 1:
        return T.F32
    base = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_k_m": T.Q4_K, "q5_k_m": T.Q5_K,
            "q6_k": T.Q6_K}[kind]
    if name == "output":
        return T.Q8_0 if kind == "q8_0" else T.Q6_K
    if kind in ("q4_k_m", "q5_k_m") and name in ("wv", "w2") and layer in MORE_BITS:
        return T.Q6_K
    return base


@pytest.fixture(scope="module")
def mix_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mix")
    write_random_model(folder / "m.bin", MIX, seed=3)
    (folder / "tokenizer.model").write_bytes(data("tok512.model").read_bytes())
    return folder / "m.bin"


@pytest.mark.parametrize("kind", ["q4_k_m", "q5_k_m", "q6_k", "q4_0", "q8_0"])
def test_cli_writes_llama_cpps_mixture(kind, mix_model, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert main(["quantize", str(mix_model), str(out), "--type", kind]) == 0
    report = capsys.readouterr().out
    assert f"GGUF, {kind}" in report and "bits / weight" in report
    r = gguf.GGUFReader(out)
    assert r.fields["general.file_type"].contents() == gguf_format.TYPES[kind][1]
    assert r.fields["general.quantization_version"].contents() == 2
    assert r.fields["llama.block_count"].contents() == MIX.n_layers
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == MIX.vocab_size
    got = {t.name: t for t in r.tensors}
    f = ModelFile(mix_model)
    names = set()
    for e in f.entries.values():
        t = got[gguf_format.tensor_name(e.name, e.layer)]
        names.add(t.name)
        w = np.ascontiguousarray(f.tensor(e.name, e.layer), np.float32)
        assert t.tensor_type == expected_type(kind, e.name, e.layer, w.ndim), t.name
        assert list(t.shape) == list(reversed(e.shape))
        if w.ndim == 1:
            assert np.array_equal(np.asarray(t.data), w)
            continue
        qname = {T.Q8_0: "q8_0", T.Q4_0: "q4_0", T.Q4_K: "q4_k", T.Q5_K: "q5_k",
                 T.Q6_K: "q6_k"}[t.tensor_type]
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        assert raw.tobytes() == c_quantize(qname, w).tobytes(), t.name
        if e.layer in (None, 0):  # the numpy reference too, once per kind
            assert raw.tobytes() == blocks.quantize(qname, w).tobytes(), t.name
        back = blocks.dequantize(qname, raw, w.shape)
        rel = np.sqrt(np.mean((back - w) ** 2) / np.mean(w**2))
        assert rel < REL_RMS[qname], t.name
    assert names == set(got)


def test_shared_classifier_embedding_is_the_output(tmp_path):
    """No output.weight: llama.cpp gives token_embd the output's Q6_K."""
    shared = Config(1, dim=256, hidden_dim=256, n_layers=1, n_heads=4, n_kv_heads=4,
                    vocab_size=512, seq_len=32, shared_classifier=True)
    write_random_model(tmp_path / "s.bin", shared, seed=1)
    assert main(["quantize", str(tmp_path / "s.bin"), str(tmp_path / "s.gguf"), "-q",
                 "--type", "q4_k_m", "-z", str(data("tok512.bin"))]) == 0
    got = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "s.gguf").tensors}
    assert "output.weight" not in got
    assert got["token_embd.weight"] == T.Q6_K
    assert got["blk.0.attn_q.weight"] == T.Q4_K


def test_stories260k_falls_back_where_rows_are_not_whole_blocks(tmp_path, capsys):
    """dim 64, hidden_dim 172: no matrix has whole 256-blocks. llama.cpp's Q5_0 becomes
    Q8_0 (rows of 64), its F16 stays F16 (rows of 172); the embedding (shared
    classifier) is Q8_0 as llama.cpp makes it."""
    out = tmp_path / "s.gguf"
    assert main(["quantize", str(data("stories260K.bin")), str(out), "--type", "q4_k_m",
                 "-z", str(data("tok512.model"))]) == 0
    err = capsys.readouterr().err
    assert "are Q8_0, not Q4_K: their rows of 64 values are not whole Q4_K blocks" in err
    assert "blk.N.ffn_down.weight is F16, not Q4_K" in err
    got = {t.name: t.tensor_type for t in gguf.GGUFReader(out).tensors}
    assert got["token_embd.weight"] == T.Q8_0
    assert got["blk.0.ffn_down.weight"] == T.F16
    assert got["blk.2.attn_q.weight"] == T.Q8_0
    assert got["blk.0.attn_norm.weight"] == T.F32


@pytest.mark.parametrize("name", ["hfa", "hfb"])
def test_hugging_face_folder_is_its_import(name, tmp_path):
    """A folder in, through import's reading and checks: the tensors of the GGUF written
    from its imported version 1 file (GQA, tied embeddings, shards); the tokenizer is
    the folder's."""
    folder = hf(name)
    assert main(["import", str(folder), str(tmp_path / "m.bin"), "-q"]) == 0
    assert main(["quantize", str(folder), str(tmp_path / "a.gguf"), "--type", "q4_0", "-q"]) == 0
    assert main(["quantize", str(tmp_path / "m.bin"), str(tmp_path / "b.gguf"), "--type", "q4_0",
                 "-q"]) == 0  # tokenizer.model beside m.bin, written by import
    a, b = (gguf.GGUFReader(tmp_path / f) for f in ("a.gguf", "b.gguf"))
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors):
        assert ta.tensor_type == tb.tensor_type
        assert np.asarray(ta.data).tobytes() == np.asarray(tb.data).tobytes(), ta.name
    assert a.fields["tokenizer.ggml.tokens"].contents() == b.fields["tokenizer.ggml.tokens"].contents()


def _left(folder) -> set:
    return set(os.listdir(folder))


@pytest.mark.parametrize("case", ["bad type", "v2 input", "output is input", "bin output",
                                  "group size", "nan"])
def test_failures_leave_nothing_behind(case, tmp_path, capsys):
    src = tmp_path / "m.bin"
    cfg = write_random_model(src, Config(1, 64, 96, 1, 4, 4, 512, 32, False), seed=2)
    (tmp_path / "tokenizer.bin").write_bytes(data("tok512.bin").read_bytes())
    out = tmp_path / "m.gguf"
    args = ["quantize", str(src), str(out), "--type", "q4_k_m"]
    if case == "bad type":
        args[-1] = "q3_k"
    elif case == "v2 input":
        quantize_file(str(src), str(tmp_path / "m.q80.bin"))
        args[1] = str(tmp_path / "m.q80.bin")
    elif case == "output is input":
        os.symlink(src, out)
        args.append("--force")
    elif case == "bin output":
        args[2] = str(tmp_path / "m2.bin")
    elif case == "group size":
        args += ["--group-size", "32"]
    elif case == "nan":
        e = next(e for e in layout(cfg) if e.name == "wk")
        with open(src, "r+b") as fh:
            fh.seek(e.offset + 4 * 70)
            fh.write(np.float32(np.nan).tobytes())
    before = _left(tmp_path)
    snapshot = src.read_bytes()
    if case == "bad type":
        with pytest.raises(SystemExit):
            main(args)
    else:
        assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 or case == "bad type", err
    assert {"v2 input": "already quantized", "output is input": "m.gguf",
            "bin output": "does not end in .gguf", "group size": "--group-size",
            "nan": "wk of layer 0 holds nan at element 70", "bad type": "invalid choice"}[case] in err
    assert _left(tmp_path) == before
    assert src.read_bytes() == snapshot


# ---------------------------------------------------------------------------
# --calibrate: an importance matrix (equality with llama-quantize --imatrix given the
# same matrix: tools/check_quants.py --calibrate)

def reference_importance(path, ids, output=False) -> dict:
    """tests/reference.py's float64 forward over quant.imatrix's windows: {key: mean
    square input}, the classifier's under ("output", None) with `output`."""
    from reference import forward
    m = ModelFile(path)
    step, seen, rows = m.spec.seq_len - 1, {}, 0
    for start in range(0, len(ids), step):
        window = [m.spec.bos_id] + list(ids[start:start + step])
        forward(m, window, seen)
        rows += len(window)
    m.close()
    cls = ("tok_embeddings", None) if m.config.shared_classifier else ("output", None)
    out = {k: v / rows for k, v in seen.items() if k[1] is not None}
    if output:
        out[("output", None)] = seen[cls] / rows
    return out


@pytest.mark.parametrize("model", ["random", "stories260K"])
def test_engine_importance_is_the_reference_forward(model, tmp_path):
    """The engine's statistics (Workspace.stats: fp32 activations summed in float64)
    are the float64 reference's mean squares, over windows of seq_len tokens each
    run in blocks (stories260K: seq_len 512, eight blocks of 64)."""
    from qllama.quant.imatrix import collect
    if model == "random":
        path = tmp_path / "m.bin"
        write_random_model(path, Config(1, dim=64, hidden_dim=96, n_layers=2, n_heads=8,
                                        n_kv_heads=2, vocab_size=512, seq_len=32,
                                        shared_classifier=False), seed=5)
        n = 70  # three windows, the last of 9 tokens
    else:
        path, n = data("stories260K.bin"), 530
    ids = np.random.default_rng(1).integers(3, 512, n).tolist()
    got, rows = collect(str(path), ids, threads=2, output=True)
    want = reference_importance(path, ids, output=True)
    assert rows == n + -(-n // (ModelFile(path).spec.seq_len - 1))
    assert set(got) == set(want)
    for key, v in want.items():
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], v, rtol=2e-5, err_msg=str(key))


def test_gguf_from_the_engine_importance_is_the_references(mix_model, tmp_path):
    """q4_k_m with the engine's importance matrix against the float64 reference's:
    the same bytes except where the k-quants' scale search meets a near tie (their
    candidate scales' weighted errors within the ~1e-6 that the engine's fp32
    activations move the matrix): a few percent of rows, of the same weighted error."""
    from qllama.interop.gguf_export import export_gguf
    from qllama.quant.imatrix import collect
    ids = np.random.default_rng(2).integers(3, 512, 300).tolist()
    eng, _ = collect(str(mix_model), ids, threads=2)
    ref = {k: v.astype(np.float32) for k, v in reference_importance(mix_model, ids).items()}
    files = {}
    for name, imp in (("engine", eng), ("reference", ref)):
        export_gguf(str(mix_model), str(tmp_path / f"{name}.gguf"), "q4_k_m", threads=2,
                    importance=imp)
        files[name] = {t.name: t for t in gguf.GGUFReader(tmp_path / f"{name}.gguf").tensors}
    m = ModelFile(mix_model)
    names = {gguf_format.tensor_name(e.name, e.layer): e for e in layout(MIX)}
    for name, a in files["engine"].items():
        b = files["reference"][name]
        da, db = np.asarray(a.data), np.asarray(b.data)
        if a.tensor_type == T.F32 or (names[name].name, names[name].layer) not in ref:
            assert da.tobytes() == db.tobytes(), name
            continue
        rows = (da.reshape(len(da), -1) == db.reshape(len(db), -1)).all(axis=1)
        assert rows.mean() > 0.9, name
        e = names[name]
        w, imp = np.asarray(m.tensor(e.name, e.layer), np.float64), ref[(e.name, e.layer)]
        err = [(imp * (gguf.quants.dequantize(d, a.tensor_type) - w) ** 2).sum() for d in (da, db)]
        assert err[0] == pytest.approx(err[1], rel=1e-3), name
    m.close()


def test_workspace_stats_off_and_checked():
    """Without a buffer the forward adds nothing anywhere; a buffer of the wrong
    length is refused."""
    from qllama._kernels.engine import State, Weights
    from qllama.kernels import select
    m = ModelFile(data("stories260K.bin"))
    state = State(Weights(m, select(None)), 16, 16, 1, "f32")
    ws = state.workspace
    assert ws.stats is None
    with pytest.raises(ValueError, match="needs"):
        ws.stats = np.zeros(ws.stats_size - 1)
    sums = np.zeros(ws.stats_size)
    ws.stats = sums
    logits = np.empty((1, 512), np.float32)
    state.forward(np.array([1, 5, 9], np.int32), 0, logits)
    assert sums[-2:].tolist() == [3, 1] and (sums[:-2] > 0).all()
    ws.stats = None
    state.forward(np.array([7], np.int32), 3, logits)
    assert sums[-2:].tolist() == [3, 1]
    del state, ws
    m.close()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(blocks.WEIGHTED), st.integers(0, 2**32 - 1), STYLES)
def test_weighted_quantizers_fit_where_the_importance_is(name, seed, style):
    """Any rows and importance give blocks, finite where the rows are not tiny (below
    ~1e-20 llama.cpp's weighted sums underflow to 0 / 0 and its scales are NaN: the
    same bytes here, tools/check_quants.py); on weights of a real scale, the
    importance-weighted error is lower with the importance than without."""
    x = rows_of(seed, 8, 512, style)
    imp = np.random.default_rng(seed).random(512).astype(np.float32) ** 4 + 1e-3
    back = blocks.dequantize(name, blocks.quantize(name, x, imp), x.shape)
    assert np.isfinite(back[np.abs(x).max(axis=1) > 1e-12]).all()
    x = (np.random.default_rng(seed).standard_normal((8, 512)) * 0.02).astype(np.float32)
    back = blocks.dequantize(name, blocks.quantize(name, x, imp), x.shape)
    plain = blocks.dequantize(name, blocks.quantize(name, x), x.shape)
    assert (imp * (back - x) ** 2).sum() < (imp * (plain - x) ** 2).sum()


def test_cli_calibrate_changes_the_k_quants_only(mix_model, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("Once upon a time, there was a little girl named Lily. " * 20)
    out, plain = tmp_path / "c.gguf", tmp_path / "p.gguf"
    assert main(["quantize", str(mix_model), str(out), "--type", "q4_k_m", "--calibrate",
                 str(text)]) == 0
    err = capsys.readouterr().err
    assert "importance of each matrix's inputs from" in err and "changed nothing" not in err
    assert main(["quantize", str(mix_model), str(plain), "--type", "q4_k_m", "-q"]) == 0
    a = {t.name: t for t in gguf.GGUFReader(out).tensors}
    b = {t.name: t for t in gguf.GGUFReader(plain).tensors}
    for name, t in a.items():
        same = np.asarray(t.data).tobytes() == np.asarray(b[name].data).tobytes()
        # the classifier and the norms get no importance (llama-imatrix's default)
        assert same == (t.tensor_type == T.F32 or name in ("output.weight", "token_embd.weight")), name


def test_calibrate_says_when_no_tensor_is_a_k_quant(tmp_path, capsys):
    """stories260K's rows (64 and 172 values) take no 256-value k-quant block."""
    text = tmp_path / "text.txt"
    text.write_text("Once upon a time, there was a little girl named Lily. " * 20)
    assert main(["quantize", str(data("stories260K.bin")), str(tmp_path / "s.gguf"), "--type",
                 "q4_k_m", "--calibrate", str(text), "-z", str(data("tok512.model"))]) == 0
    assert "qllama: note: --calibrate changed nothing" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["q8_0", "bin output"])
def test_calibrate_refusals_leave_nothing(case, mix_model, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("Once upon a time")
    src, out, kind = str(mix_model), str(tmp_path / "m.gguf"), "q4_k_m"
    if case == "q8_0":
        kind = "q8_0"
    else:
        out = str(tmp_path / "m.bin")
    before = _left(tmp_path)
    assert main(["quantize", src, out, "--type", kind, "--calibrate", str(text)]) == 1
    err = capsys.readouterr().err
    assert {"q8_0": "--calibrate weights the k-quants' fit",
            "bin output": "does not end in .gguf"}[case] in err
    assert _left(tmp_path) == before


def test_calibrate_a_hugging_face_folder(tmp_path, capsys):
    """A folder's importance is its fp32 import's, made in a temporary folder that
    goes after; the CLI calibrates from one."""
    from qllama.quant.imatrix import importance
    from qllama.tokenizer import load_tokenizer
    tok = load_tokenizer(hf("hfa") / "tokenizer.model")
    text = "Once upon a time, there was a little girl named Lily. " * 8
    got, n = importance(str(hf("hfa")), text, tok, threads=2, scratch=str(tmp_path))
    want, m = importance(str(hf("hfa.v1.bin")), text, tok, threads=2)
    assert n == m and set(got) == set(want)
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "t.txt").write_text(text)
    assert main(["quantize", str(hf("hfa")), str(tmp_path / "m.gguf"), "--type", "q6_k",
                 "--calibrate", str(tmp_path / "t.txt")]) == 0
    assert "importance of each matrix's inputs from" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "t.txt"]


def test_collect_refuses_no_tokens(tmp_path, capsys):
    from qllama.errors import UsageError
    from qllama.quant.imatrix import collect
    with pytest.raises(UsageError, match="no tokens"):
        collect(str(data("stories260K.bin")), [])
    # a calibration text with no tokens ended in a traceback (ValueError)
    (tmp_path / "empty.txt").write_bytes(b"")
    assert main(["quantize", str(data("stories260K.bin")), str(tmp_path / "c.gguf"), "--type",
                 "q4_k_m", "-z", str(data("tok512.model")), "--calibrate",
                 str(tmp_path / "empty.txt")]) == 1
    err = capsys.readouterr().err
    assert err == "qllama: error: the calibration text has no tokens\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]
