"""A GGUF file as the input of `quantize` and `export` (conversion.sources.GGUFSource):
an F32 GGUF quantizes to the bytes its llama2.c original does, an F16 one to those of
the f16-rounded original; a GGUF input's vocabulary and spec (GQA, RoPE base) are
carried over; bad input is one line, exit 1 and no file left."""
import os

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qllama.cli import main
from qllama.formats.gguf_reader import GGUFModel
from qllama.formats.llama2c import Config, layout
from qllama.quant.types import dequantize_rows
from qllama.synth import write_random_model
from qllama.tokenizer import from_gguf

from conftest import data
from makers import gguf_metadata, write_gguf

CFG = Config(1, dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=2,
             vocab_size=512, seq_len=32, shared_classifier=False)
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list("abcdefghijk")
KINDS = [2, 3, 3] + [6] * 256 + [1] * 11
GQA = Config(1, dim=256, hidden_dim=512, n_layers=2, n_heads=8, n_kv_heads=2,
             vocab_size=len(TOKENS), seq_len=48, shared_classifier=True)


def quantize(*args) -> None:
    assert main(["quantize", *map(str, args), "-q"]) == 0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """m.bin (fp32, v1) with its tokenizer, and its F32 and F16 GGUF exports."""
    folder = tmp_path_factory.mktemp("src")
    write_random_model(folder / "m.bin", CFG, seed=5)
    (folder / "tokenizer.model").write_bytes(data("tok512.model").read_bytes())
    for kind in ("f32", "f16"):
        assert main(["export", str(folder / "m.bin"), str(folder / f"m.{kind}.gguf"),
                     "--to", "gguf", "--type", kind, "-q"]) == 0
    return folder


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"])
def test_f32_gguf_quantizes_as_its_llama2c_file(kind, model, tmp_path):
    quantize(model / "m.f32.gguf", tmp_path / "a.gguf", "--type", kind)
    quantize(model / "m.bin", tmp_path / "b.gguf", "--type", kind)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_f32_gguf_quantizes_to_llama2c_v2_as_its_llama2c_file(model, tmp_path):
    quantize(model / "m.f32.gguf", tmp_path / "a.bin")
    quantize(model / "m.bin", tmp_path / "b.bin")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_summary_names_a_gguf_input(kind, model, tmp_path, capsys):
    assert main(["quantize", str(model / f"m.{kind}.gguf"), str(tmp_path / "a.bin")]) == 0
    out = capsys.readouterr().out
    assert f"m.{kind}.gguf (GGUF, {kind.upper()}" in out and "(version 1" not in out


def test_convert_refuses_a_gguf_file(model, tmp_path, capsys):
    assert main(["convert", str(model / "m.f32.gguf"), str(tmp_path / "x.bin"), "--to",
                 "v1"]) == 1
    assert "a GGUF file; convert rewrites llama2.c" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", ["q8_0.gguf", "q4_k_m.gguf", "v2.bin"])
def test_f16_gguf_quantizes_as_the_f16_rounded_llama2c_file(out, model, tmp_path):
    rounded = tmp_path / "r" / "m.bin"  # the same name: general.name is the file's
    rounded.parent.mkdir()
    raw = bytearray((model / "m.bin").read_bytes())
    for e in layout(CFG):
        if len(e.shape) == 2:  # the export keeps norms F32
            w = np.frombuffer(raw, np.float32, e.numel, e.offset)
            raw[e.offset:e.offset + 4 * e.numel] = w.astype(np.float16).astype(np.float32).tobytes()
    rounded.write_bytes(bytes(raw))
    (rounded.parent / "tokenizer.model").write_bytes(data("tok512.model").read_bytes())
    kind = out.split(".")[0]
    extra = [] if kind == "v2" else ["--type", kind]
    quantize(model / "m.f16.gguf", tmp_path / f"a.{out}", *extra)
    quantize(rounded, tmp_path / f"b.{out}", *extra)
    assert (tmp_path / f"a.{out}").read_bytes() == (tmp_path / f"b.{out}").read_bytes()


@pytest.fixture(scope="module")
def gqa(tmp_path_factory):
    """An F16 GGUF with GQA (8 heads, 2 kv heads), RoPE base 500000, its own vocabulary
    and BOS/EOS ids, as llama.cpp's converters write one."""
    path = tmp_path_factory.mktemp("gqa") / "g.gguf"
    meta = gguf_metadata(GQA, TOKENS, tokenizer__ggml__token_type=KINDS,
                         llama__rope__freq_base=500000.0,
                         llama__attention__layer_norm_rms_epsilon=1e-6,
                         tokenizer__ggml__bos_token_id=2, tokenizer__ggml__eos_token_id=1,
                         general__name="tiny gqa")
    written = write_gguf(path, GQA, "F16", seed=9, meta=meta)
    return path, written


def test_gqa_and_rope_base_are_carried_over(gqa, tmp_path):
    src, written = gqa
    out = tmp_path / "g.q4_k_m.gguf"
    quantize(src, out, "--type", "q4_k_m")
    with GGUFModel(src) as a, GGUFModel(out) as b:
        assert b.spec == a.spec
        assert (b.spec.rope_theta, b.spec.norm_eps, b.spec.n_kv_heads) == (500000.0, 1e-6, 2)
        assert b.metadata["general.name"] == "tiny gqa"
        assert b.metadata["llama.rope.freq_base"] == np.float32(500000.0)
        ta, tb = from_gguf(a), from_gguf(b)
        assert [tb.piece(i) for i in range(len(TOKENS))] == [ta.piece(i)
                                                            for i in range(len(TOKENS))]
        assert (tb.bos_id, tb.eos_id) == (2, 1)
        assert b.info("wq", 0).type == T.Q4_K and b.info("wv", 1).type == T.Q6_K  # use_more_bits
        # rows as stored (no q/k reordering), each within its type's error
        for name, layer, gname in (("wq", 1, "blk.1.attn_q.weight"),
                                   ("wk", 0, "blk.0.attn_k.weight"),
                                   ("tok_embeddings", None, "token_embd.weight")):
            x = dequantize_rows(a.tensor(name, layer), 0, 16)
            y = dequantize_rows(b.tensor(name, layer), 0, 16)
            assert np.sqrt(np.mean((y - x) ** 2) / np.mean(x ** 2)) < 0.1, gname
        assert np.array_equal(b.tensor("norm"), written["output_norm.weight"][1])


def test_gguf_input_runs_after_quantizing(gqa, tmp_path):
    """The quantized file computes what its input does, within q8_0's error."""
    from qllama.model import Model
    src, _ = gqa
    out = tmp_path / "g.q8_0.gguf"
    quantize(src, out, "--type", "q8_0")
    ids = [2, 40, 200, 7]
    logits = []
    for path in (src, out):
        with Model(str(path)) as m:
            logits.append(m.logits(ids))
    assert np.abs(logits[0] - logits[1]).max() < 0.05 * np.abs(logits[0]).max()


def _left(folder) -> set:
    return set(os.listdir(folder))


@pytest.mark.parametrize("case", ["quantized input", "tokenizer given", "rope base to bin",
                                  "truncated", "nan", "calibrate q8_0"])
def test_bad_gguf_input_is_one_line_and_leaves_nothing(case, gqa, model, tmp_path, capsys):
    src = tmp_path / "in.gguf"
    src.write_bytes((model / "m.f16.gguf").read_bytes())
    out = tmp_path / "out.gguf"
    args = ["quantize", src, out, "--type", "q4_k_m"]
    if case == "quantized input":
        quantize(model / "m.f32.gguf", src, "--type", "q8_0", "--force")
    elif case == "tokenizer given":
        args += ["-z", data("tok512.model")]
    elif case == "rope base to bin":
        src.write_bytes(gqa[0].read_bytes())
        args = ["quantize", src, tmp_path / "out.bin"]
    elif case == "truncated":
        src.write_bytes(src.read_bytes()[:-100])
    elif case == "nan":
        with GGUFModel(src) as g:
            at = g.data_start + g.info("wk", 1).offset + 2 * 70
        with open(src, "r+b") as f:
            f.seek(at)
            f.write(np.float16(np.nan).tobytes())
    elif case == "calibrate q8_0":
        text = tmp_path / "t.txt"
        text.write_text("Once upon a time")
        args = ["quantize", src, out, "--type", "q8_0", "--calibrate", text]
    before = _left(tmp_path)
    snapshot = src.read_bytes()
    assert main(list(map(str, args))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("qllama: error: "), err
    assert {"quantized input": "already quantized (Q8_0)", "tokenizer given": "carries its",
            "rope base to bin": "rope theta 500000", "truncated": "in.gguf",
            "nan": "wk of layer 1 holds nan at element 70",
            "calibrate q8_0": "--calibrate weights"}[case] in err
    assert _left(tmp_path) == before
    assert src.read_bytes() == snapshot


def test_truncations_exit_1_with_one_line(model, tmp_path, capsys):
    raw = (model / "m.f32.gguf").read_bytes()
    src = tmp_path / "cut.gguf"
    for cut in (0, 3, 4, 24, 100, 1000, 5000, len(raw) // 2, len(raw) - 1):
        src.write_bytes(raw[:cut])
        for out in (["o.gguf", "--type", "q8_0"], ["o.bin"]):
            assert main(["quantize", str(src), str(tmp_path / out[0]), *out[1:]]) == 1, cut
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "cut.gguf" in err, (cut, err)
        assert _left(tmp_path) == {"cut.gguf"}


def test_calibrate_a_gguf_file(model, tmp_path):
    """--calibrate runs a GGUF input through the engine: its importance is its llama2.c
    original's (up to the kernels' summation order), and it changes the k-quants."""
    from qllama.quant.imatrix import collect
    ids = list(range(3, 200, 7))
    a, n = collect(str(model / "m.f32.gguf"), ids)
    b, m = collect(str(model / "m.bin"), ids)
    assert n == m and a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, err_msg=str(key))
    text = tmp_path / "text.txt"
    text.write_text("Once upon a time, there was a little girl named Lily. " * 8)
    quantize(model / "m.f32.gguf", tmp_path / "a.gguf", "--type", "q4_k_m",
             "--calibrate", text)
    quantize(model / "m.f32.gguf", tmp_path / "p.gguf", "--type", "q4_k_m")
    assert (tmp_path / "a.gguf").read_bytes() != (tmp_path / "p.gguf").read_bytes()


def test_export_gguf_to_f16_and_back(model, tmp_path):
    """`qllama export x.gguf --to gguf`: F32 → F16 is the F16 export of the original."""
    assert main(["export", str(model / "m.f32.gguf"), str(tmp_path / "a.gguf"), "--to", "gguf",
                 "--type", "f16", "-q"]) == 0
    assert (tmp_path / "a.gguf").read_bytes() == (model / "m.f16.gguf").read_bytes()


def test_export_summary_names_the_types_read(model, tmp_path, capsys):
    """export --to gguf called a GGUF input just "GGUF" (and a folder "Hugging Face
    folder") where quantize and import name the types they read."""
    assert main(["export", str(model / "m.f16.gguf"), str(tmp_path / "a.gguf"), "--to", "gguf",
                 "--type", "q8_0"]) == 0
    assert f"{model / 'm.f16.gguf'} (GGUF, F16/F32) → " in capsys.readouterr().out


def test_export_notes_a_normaliser_the_gguf_vocabulary_loses(model, tmp_path, capsys):
    """tok512.model removes extra whitespace; llama.cpp reads a llama GGUF vocabulary
    with Llama 2's settings, so the file encodes such text otherwise: said, as for a .bin."""
    assert main(["export", str(model / "m.bin"), str(tmp_path / "a.gguf"), "--to", "gguf"]) == 0
    err = capsys.readouterr().err
    assert "tokenizer.model normalises with remove_extra_whitespaces True" in err
    assert "read a llama GGUF vocabulary with Llama 2's settings" in err


def test_add_space_prefix_goes_through_gguf(model, tmp_path, capsys):
    """A tokenizer.model without SentencePiece's dummy prefix: export writes llama.cpp's
    tokenizer.ggml.add_space_prefix false (the one normaliser setting llama.cpp reads),
    qllama reads it back, and both encode as the .model; it was written as Llama 2's."""
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    from qllama.tokenizer import load_tokenizer
    proto = pb.ModelProto()
    proto.ParseFromString(data("tok512.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False  # only the prefix differs
    tok_path = tmp_path / "noprefix.model"
    tok_path.write_bytes(proto.SerializeToString())
    out = tmp_path / "a.gguf"
    assert main(["export", str(model / "m.bin"), str(out), "--to", "gguf", "-z",
                 str(tok_path)]) == 0
    assert "normalises" not in capsys.readouterr().err  # the GGUF file keeps it
    with GGUFModel(out) as g:
        assert g.metadata["tokenizer.ggml.add_space_prefix"] is False
        tok = from_gguf(g)
    text = "hello world. once upon a time"
    want = load_tokenizer(tok_path).encode(text)
    assert tok.encode(text) == want != load_tokenizer(data("tok512.model")).encode(text)
    for t in (text, " leading space"):
        ids = load_tokenizer(tok_path).encode(t)
        assert tok.encode(t) == ids and tok.decode(ids) == load_tokenizer(tok_path).decode(ids)
    with GGUFModel(model / "m.f32.gguf") as g:  # Llama 2's setting: the key left out
        assert "tokenizer.ggml.add_space_prefix" not in g.metadata
        assert from_gguf(g).add_dummy_prefix is True


def test_encode_special_takes_the_longest_piece_first_across_the_text(tmp_path):
    """Control pieces "abcd" and "xab" in "xabcd": llama.cpp splits the whole text at the
    longest piece first (x, then abcd); a leftmost match had taken xab, then c and d."""
    tokens = (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
              + ["abcd", "xab", "x", "c", "d"])
    types = [2, 3, 3] + [6] * 256 + [3, 3, 1, 1, 1]
    c = Config(1, dim=64, hidden_dim=128, n_layers=1, n_heads=2, n_kv_heads=2,
               vocab_size=len(tokens), seq_len=16, shared_classifier=True)
    meta = gguf_metadata(c, tokens, tokenizer__ggml__token_type=types)
    write_gguf(tmp_path / "m.gguf", c, meta=meta)
    with GGUFModel(tmp_path / "m.gguf") as g:
        tok = from_gguf(g)
    assert tok.encode_special("xabcd") == [1] + tok.encode("x", bos=False) + [259]
    assert tok.encode_special("xab-abcd") == [1, 260] + tok.encode("-", bos=False) + [259]


def test_longest_piece_means_most_bytes(tmp_path):
    """llama.cpp orders special pieces by their UTF-8 bytes: "ééx" (5 bytes, 3 characters)
    before "xabc" (4 and 4) in "ééxabc"; counted in characters, xabc went first."""
    tokens = (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
              + ["\u00e9\u00e9x", "xabc", "a", "b", "c"])
    types = [2, 3, 3] + [6] * 256 + [4, 4, 1, 1, 1]
    c = Config(1, dim=64, hidden_dim=128, n_layers=1, n_heads=2, n_kv_heads=2,
               vocab_size=len(tokens), seq_len=16, shared_classifier=True)
    write_gguf(tmp_path / "m.gguf", c, meta=gguf_metadata(c, tokens,
                                                          tokenizer__ggml__token_type=types))
    with GGUFModel(tmp_path / "m.gguf") as g:
        tok = from_gguf(g)
    assert tok.encode("\u00e9\u00e9xabc") == [1, 259] + tok.encode("abc", bos=False)


def test_add_space_prefix_must_be_a_bool(tmp_path):
    from qllama.errors import TokenizerError
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list("ab")
    c = Config(1, dim=64, hidden_dim=128, n_layers=1, n_heads=2, n_kv_heads=2,
               vocab_size=len(tokens), seq_len=16, shared_classifier=True)
    meta = gguf_metadata(c, tokens, tokenizer__ggml__add_space_prefix="yes")
    write_gguf(tmp_path / "m.gguf", c, meta=meta)
    with GGUFModel(tmp_path / "m.gguf") as g, pytest.raises(
            TokenizerError, match="add_space_prefix is 'yes', not true or false"):
        from_gguf(g)


def test_random_byte_flips_quantize_or_fail_in_one_line(model, tmp_path, capsys):
    """Flipped bytes in the header, metadata and tensor table: quantize either writes
    a file or exits 1 with one line, leaving nothing."""
    raw = (model / "m.f16.gguf").read_bytes()
    with GGUFModel(model / "m.f16.gguf") as g:
        end = g.data_start
    rng = np.random.default_rng(4)
    src, out = tmp_path / "f.gguf", tmp_path / "o.gguf"
    for i in range(60):
        b = bytearray(raw)
        for at in rng.integers(0, end, 1 + i % 3):
            b[at] ^= 1 << int(rng.integers(0, 8))
        src.write_bytes(bytes(b))
        code = main(["quantize", str(src), str(out), "--type", "q4_0", "-q", "--force"])
        err = capsys.readouterr().err
        if code == 0:
            out.unlink()
        else:
            assert code == 1 and err.count("\n") == 1 and err.startswith("qllama: error: "), err
        assert _left(tmp_path) == {"f.gguf"}


def test_bf16_gguf_quantizes_its_values(tmp_path):
    """BF16 matrices are widened exactly: each output tensor is the quantizer's blocks
    of the input's values."""
    from qllama.quant.types import TYPES
    src, out = tmp_path / "b.gguf", tmp_path / "b.q8_0.gguf"
    write_gguf(src, GQA, "BF16", seed=2,
               meta=gguf_metadata(GQA, TOKENS, tokenizer__ggml__token_type=KINDS))
    quantize(src, out, "--type", "q8_0")
    with GGUFModel(src) as a, GGUFModel(out) as b:
        for e in layout(GQA):
            x, y = a.tensor(e.name, e.layer), b.tensor(e.name, e.layer)
            if len(e.shape) == 1:
                assert np.array_equal(x, y), e
                continue
            assert x.qtype.name == "bf16"
            want = TYPES["q8_0"].quantize(dequantize_rows(x, 0, e.shape[0]))
            assert np.array_equal(y.data, want.reshape(-1)), e
