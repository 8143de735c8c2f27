"""qllama export --to gguf: read back with gguf.GGUFReader (tensors, types, metadata,
vocabulary), gguf's own quantizer's bytes, the F16 fall-back, the error a v2 input's
requantization adds, and llama.cpp's greedy tokens when a build is at hand."""
import os
import re
import subprocess
import sys

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import qllama
from qllama.cli import main
from qllama.conversion.llama2c import quantize_file
from qllama.formats import gguf as gguf_format
from qllama.formats.llama2c import Config, ModelFile
from qllama.interop.gguf_export import export_gguf
from qllama.synth import write_random_model
from qllama.tokenizer import load_tokenizer

from conftest import data, golden, llama_cpp_tool
from makers import gguf_metadata, write_gguf

# hidden_dim 96 is 3 blocks of 32, dim 64 two: every matrix can be Q8_0.
TINY = Config(1, dim=64, hidden_dim=96, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=512,
              seq_len=128, shared_classifier=False)


def tensors(reader: gguf.GGUFReader) -> dict:
    return {t.name: t for t in reader.tensors}


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.bin"
    write_random_model(path, TINY, seed=4)
    (tmp_path / "tokenizer.model").write_bytes(data("tok512.model").read_bytes())
    return path


def test_f32_reads_back_exactly(tiny, tmp_path):
    out = tmp_path / "t.gguf"
    report = export_gguf(str(tiny), str(out), "f32", chunk_bytes=4096)
    assert report.out_bytes == out.stat().st_size
    r = gguf.GGUFReader(out)
    got = tensors(r)
    f = ModelFile(tiny)
    names = set()
    for e in f.entries.values():
        t = got[gguf_format.tensor_name(e.name, e.layer)]
        names.add(t.name)
        assert t.tensor_type == T.F32
        assert list(t.shape) == list(reversed(e.shape))  # GGUF lists ne0 (columns) first
        assert np.array_equal(np.asarray(t.data).reshape(e.shape), f.tensor(e.name, e.layer))
    assert names == set(got) and "output.weight" in names
    c = TINY
    expect = {"general.architecture": "llama", "general.file_type": 0,
              "llama.context_length": c.seq_len, "llama.embedding_length": c.dim,
              "llama.block_count": c.n_layers, "llama.feed_forward_length": c.hidden_dim,
              "llama.attention.head_count": c.n_heads, "llama.attention.head_count_kv":
              c.n_kv_heads, "llama.rope.dimension_count": c.dim // c.n_heads,
              "llama.rope.freq_base": 10000.0, "tokenizer.ggml.model": "llama",
              "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
              "tokenizer.ggml.unknown_token_id": 0}
    for key, value in expect.items():
        assert field(r, key) == value, key
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5)


def test_f16_exact_model_runs_as_its_f16_gguf(tmp_path):
    """tools/quality.py's 7B path: weights of fp16 values (make_model --f16-exact) go
    into an F16 GGUF exactly, and the engine's logits on it are the fp32 file's, bit
    for bit (f16 widens exactly, then the same fp32 dot contract)."""
    src, out = tmp_path / "h.bin", tmp_path / "h.gguf"
    write_random_model(src, TINY, seed=6, f16_exact=True)
    report = export_gguf(str(src), str(out), "f16", data("tok512.model"))
    assert all(k.max_err == 0 for k in report.kinds.values())
    f = ModelFile(src)
    w = f.tensor("wq", 0)
    assert np.array_equal(w, w.astype(np.float16).astype(np.float32))
    ids = [1, 7, 300, 42, 511, 9]
    with qllama.load(src, threads=2) as a, qllama.load(out, threads=2) as b:
        assert np.array_equal(a.logits(ids), b.logits(ids))
    assert tensors(gguf.GGUFReader(out))["blk.0.attn_q.weight"].tensor_type == T.F16


def test_vocabulary_from_model_and_bin_agree(tiny, tmp_path):
    """Pieces, scores and types of tok512.model; its tokenizer.bin (types inferred) gives
    the same vocabulary."""
    export_gguf(str(tiny), str(tmp_path / "a.gguf"), "f16", tokenizer=str(data("tok512.model")))
    export_gguf(str(tiny), str(tmp_path / "b.gguf"), "f16", tokenizer=str(data("tok512.bin")))
    a, b = gguf.GGUFReader(tmp_path / "a.gguf"), gguf.GGUFReader(tmp_path / "b.gguf")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(data("tok512.model")))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    types = [6 if sp.is_byte(i) else 3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 1
             for i in range(len(pieces))]
    for r in (a, b):
        assert field(r, "tokenizer.ggml.tokens") == pieces
        assert field(r, "tokenizer.ggml.token_type") == types
        assert np.allclose(field(r, "tokenizer.ggml.scores"),
                           [sp.get_score(i) for i in range(len(pieces))], rtol=0, atol=0)
    assert types.count(6) == 256 and types[:3] == [2, 3, 3]


def test_q8_0_is_ggufs_quantizer_and_f16_fallback(tmp_path):
    """stories260K (v0, shared classifier): matrices are gguf.quants' Q8_0 bytes, except
    w2 whose rows of 172 values are not whole blocks of 32: F16, with a note."""
    src = data("stories260K.bin")
    out = tmp_path / "s.gguf"
    report = export_gguf(str(src), str(out), "q8_0", tokenizer=str(data("tok512.model")),
                         chunk_bytes=4096)
    assert report.notes[0] == ("blk.N.ffn_down.weight stays F16: its rows of 172 values are not "
                               "whole Q8_0 blocks of 32 (as llama.cpp's converters fall back)")
    assert len(report.notes) == 2 and "remove_extra_whitespaces True" in report.notes[1]
    r = gguf.GGUFReader(out)
    got = tensors(r)
    assert "output.weight" not in got  # shared: llama.cpp uses token_embd
    assert field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    f = ModelFile(src)
    for e in f.entries.values():
        if e.name in ("freqs_cos", "freqs_sin"):
            continue
        t = got[gguf_format.tensor_name(e.name, e.layer)]
        w = np.asarray(f.tensor(e.name, e.layer))
        want_type = T.F32 if w.ndim == 1 else T.F16 if e.name == "w2" else T.Q8_0
        assert t.tensor_type == want_type, t.name
        want = gguf.quants.quantize(w, want_type)
        assert np.asarray(t.data).tobytes() == want.tobytes(), t.name
        err = np.abs(gguf.quants.dequantize(want, want_type).reshape(w.shape) - w).max()
        assert report.kinds[e.name].max_err >= err


def test_v2_is_requantized_and_the_error_reported(tmp_path):
    src = golden("gqa512.v1.bin")
    quantize_file(str(src), str(tmp_path / "m.q80.bin"))
    out = tmp_path / "m.gguf"
    report = export_gguf(str(tmp_path / "m.q80.bin"), str(out), tokenizer=str(data("tok512.bin")))
    assert report.kind == "q8_0"  # the default for a Q8_0 input
    got = tensors(gguf.GGUFReader(out))
    f = ModelFile(tmp_path / "m.q80.bin")
    worst = {}
    for e in f.entries.values():
        t = got[gguf_format.tensor_name(e.name, e.layer)]
        if e.encoding == "f32":
            assert np.array_equal(np.asarray(t.data).reshape(e.shape), f.tensor(e.name, e.layer))
            continue
        v2 = f.tensor(e.name, e.layer).dequantize()
        back = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(e.shape)
        worst[e.name] = max(worst.get(e.name, 0.0), float(np.abs(back - v2).max()))
    for name, err in worst.items():
        assert report.kinds[name].max_err == pytest.approx(err, rel=1e-6), name
        assert 0 < err < 1e-3  # the fp16 scale's rounding, not a wrong block


def test_export_refusals(tiny, tmp_path, capsys):
    os.unlink(tmp_path / "tokenizer.model")
    assert main(["export", str(tiny), str(tmp_path / "t.gguf"), "--to", "gguf"]) == 1
    assert "a GGUF file carries its vocabulary" in capsys.readouterr().err
    assert main(["export", str(tiny), str(tmp_path / "t.gguf"), "--to", "gguf", "-z",
                 str(data("tokenizer.model"))]) == 1
    assert "has 32000 tokens, model has 512" in capsys.readouterr().err
    assert main(["export", str(tiny), str(tmp_path / "t.gguf"), "--to", "gguf", "--type",
                 "bf16", "-z", str(data("tok512.bin"))]) == 1
    assert not (tmp_path / "t.gguf").exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".qllama-")] == []


def test_summary_lines_are_whole_on_a_pipe(tmp_path):
    folder = tmp_path / ("a-long-folder-name-" * 8)
    folder.mkdir()
    write_random_model(folder / "m.bin", TINY, seed=1)
    r = subprocess.run([sys.executable, "-m", "qllama", "export", str(folder / "m.bin"),
                        str(folder / "m.gguf"), "--to", "gguf", "--type", "q8_0", "-z",
                        str(data("tok512.model"))], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert f"{folder / 'm.bin'} (version 1) → {folder / 'm.gguf'} (" in r.stdout


# ---------------------------------------------------------------------------
# llama.cpp itself


def llama_cli() -> str:
    return llama_cpp_tool("llama-cli", "check that llama.cpp runs the exported GGUF")


def llama_cpp_greedy(cli: str, model, prompt: str, n: int, amx_check: bool = False) -> list[int]:
    """Token ids llama.cpp evaluates at temperature 0: the prompt's, then each
    generated one (its verbose log prints every batch as 'eval: [ 'piece':id, ... ]').
    amx_check: skip when llama.cpp runs the file's Q8_0 matrices through its AMX backend,
    which at c392e50 generates '####...' for stories260K's 64-wide ones (seen on an Intel
    Xeon with AMX; its non-AMX kernels agree with qllama)."""
    r = subprocess.run([cli, "-m", str(model), "-p", prompt, "-n", str(n), "--temp", "0",
                        "-no-cnv", "--no-warmup", "--simple-io", "-s", "1", "-t", "1", "-v"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    if amx_check and "amx repack tensor" in r.stdout + r.stderr:
        pytest.skip("llama.cpp's AMX backend runs this Q8_0 file, and generates '####...' "
                    "for its 64-wide matrices (llama.cpp's own fault, c392e50)")
    ids = []
    for batch in re.findall(r"eval: \[(.*?)\]", r.stdout + r.stderr):
        ids += [int(i) for i in re.findall(r":(\d+)\s*(?:,|$)", batch.strip())]
    return ids


def test_llama_cpp_reads_the_dummy_prefix_we_write(tmp_path):
    """A tokenizer.model without SentencePiece's dummy prefix: llama.cpp encodes the
    prompt of our export as qllama and the .model do (tokenizer.ggml.add_space_prefix)."""
    cli = llama_cli()
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    proto = pb.ModelProto()
    proto.ParseFromString(data("tok512.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    tok_path = tmp_path / "noprefix.model"
    tok_path.write_bytes(proto.SerializeToString())
    out = tmp_path / "s.gguf"
    export_gguf(str(data("stories260K.bin")), str(out), "f32", tokenizer=str(tok_path))
    prompt = "Once upon a time"
    want = load_tokenizer(tok_path).encode(prompt)
    assert want != load_tokenizer(data("tok512.model")).encode(prompt)
    with qllama.load(out) as ours:
        assert ours.encode(prompt) == want
    assert llama_cpp_greedy(cli, out, prompt, 1)[:len(want)] == want


def test_llama_cpp_reads_special_pieces_in_a_prompt_as_encode_special(tmp_path):
    """`qllama run --special` takes a prompt as llama-cli does: </s> written in it is the
    end-of-sequence id, and the text after it starts with the dummy prefix again."""
    cli = llama_cli()
    out = tmp_path / "s.gguf"
    export_gguf(str(data("stories260K.bin")), str(out), "f32", tokenizer=str(data("tok512.model")))
    prompt = "Once upon a time</s> there was<unk> a cat"
    with qllama.load(out) as ours:
        want = ours.encode(prompt, special=True)
    assert want.count(2) == 1 and want.count(0) == 1
    assert llama_cpp_greedy(cli, out, prompt, 1)[:len(want)] == want


def user_defined_gguf(path):
    """A GGUF vocabulary with a user-defined piece <|u|> (type 4, id 261) and control
    pieces abcd (262) and xab (263); random weights."""
    tokens = (["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
              + ["a", "\u2581a", "<|u|>", "abcd", "xab", "x", "c", "d"])
    types = [2, 3, 3] + [6] * 256 + [1, 1, 4, 3, 3, 1, 1, 1]
    c = Config(1, dim=64, hidden_dim=128, n_layers=1, n_heads=2, n_kv_heads=2,
               vocab_size=len(tokens), seq_len=32, shared_classifier=True)
    write_gguf(path, c, meta=gguf_metadata(c, tokens, tokenizer__ggml__token_type=types))


PROMPT = "<|u|>a xabcd</s>a<|u|>"


def test_user_defined_pieces_are_taken_out_of_any_text(tmp_path):
    """llama.cpp takes a GGUF vocabulary's user-defined pieces out of any text, and the
    text after one starts with the dummy prefix again; qllama merged them as normal
    pieces. Control pieces are left in the text unless asked (--special)."""
    user_defined_gguf(tmp_path / "m.gguf")
    with qllama.load(tmp_path / "m.gguf") as ours:
        tok = ours.tokenizer
        plain = lambda text: tok.encode(text, bos=False)  # noqa: E731
        assert ours.encode(PROMPT) == [1, 261] + plain("a xabcd</s>a") + [261]
        # abcd before xab: the longest piece first
        assert ours.encode(PROMPT, special=True) == ([1, 261] + plain("a x") + [262, 2]
                                                     + plain("a") + [261])


def test_llama_cpp_reads_a_prompt_as_qllama(tmp_path):
    """User-defined and (llama-cli parses them) control pieces, the longest first."""
    cli = llama_cli()
    user_defined_gguf(tmp_path / "m.gguf")
    with qllama.load(tmp_path / "m.gguf") as ours:
        want = ours.encode(PROMPT, special=True)
    assert llama_cpp_greedy(cli, tmp_path / "m.gguf", PROMPT, 1)[:len(want)] == want


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_llama_cpp_greedy_equals_qllama(kind, tmp_path):
    cli = llama_cli()
    src = data("stories260K.bin")
    out = tmp_path / "s.gguf"
    export_gguf(str(src), str(out), kind, tokenizer=str(data("tok512.model")))
    theirs = llama_cpp_greedy(cli, out, "Once upon a time", 80, amx_check=kind == "q8_0")
    with qllama.load(src, tokenizer=str(data("tok512.model"))) as ours:
        prompt = ours.encode("Once upon a time")
        mine = prompt + list(ours.generate_ids(prompt, len(theirs) - 1, temperature=0.0))
    assert len(theirs) >= 60
    if kind == "f32":
        assert theirs == mine
    else:  # llama.cpp quantizes activations for Q8_0 dot products: the first words agree
        assert theirs[:40] == mine[:40]
    assert load_tokenizer(data("tok512.model")).decode(theirs).startswith("Once upon a time")
