"""Reading GGUF files: qllama's own exports of stories260K read back (spec, every tensor,
the tokenizer), files gguf.GGUFWriter wrote (the spec's every field, each block type),
llama.cpp's llama-quantize outputs (when a build is at hand: the bytes gguf-py reads), and
the llama files qllama refuses, one line each."""
import dataclasses
import json
import os
import subprocess

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from qllama.cli import main
from qllama.errors import FormatError, TokenizerError
from qllama.formats import gguf as names
from qllama.formats import open_model
from qllama.formats.gguf_reader import GGUFModel
from qllama.formats.llama2c import Config, ModelFile
from qllama.interop.gguf_export import export_gguf
from qllama.quant.types import BlockTensor
from qllama.synth import write_random_model
from qllama.tokenizer import GGUFTokenizer, from_gguf, load_tokenizer

from conftest import data, llama_cpp_tool, shared_file
from makers import gguf_metadata, write_gguf

TEXTS = ["Once upon a time, there was a little girl named Lily.", "  two  spaces\nand a line ",
         "日本語 ünïcödé 🙂 {}<>", "", "x"]
# columns of 256: every block type fits; 8 query heads of 32, 2 key/value heads
SMALL = Config(1, dim=256, hidden_dim=512, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=40,
               seq_len=64, shared_classifier=False)


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_stories260K_export_reads_back(kind, tmp_path):
    src = data("stories260K.bin")
    out = tmp_path / "s.gguf"
    export_gguf(str(src), str(out), kind, tokenizer=str(data("tok512.model")))
    ref = ModelFile(src)
    with GGUFModel(out) as g:
        assert g.spec == ref.config.spec
        assert not g.has("output") and g.has("wq")
        for (name, layer), e in ref.entries.items():
            if name.startswith("freqs"):
                continue
            got, want = g.tensor(name, layer), ref.tensor(name, layer)
            if isinstance(got, np.ndarray):
                assert got.dtype == np.float32 and np.array_equal(got, want), (name, layer)
                continue
            assert isinstance(got, BlockTensor) and got.shape == e.shape
            back = gguf.quants.dequantize(got.data.reshape(e.shape[0], -1), got.qtype.gguf)
            again = gguf.quants.quantize(np.asarray(want), got.qtype.gguf)
            assert np.array_equal(back, gguf.quants.dequantize(again, got.qtype.gguf))
        tok = from_gguf(g)
    assert isinstance(tok, GGUFTokenizer) and tok.vocab_size == 512
    bin_tok = load_tokenizer(data("tok512.bin"))
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == bin_tok.encode(text), text
        assert tok.decode(ids) == bin_tok.decode(ids)
    assert [tok.piece(i) for i in range(512)] == [bin_tok.piece(i) for i in range(512)]


def test_spec_of_a_gqa_model_with_llama3_constants(tmp_path):
    path = tmp_path / "m.gguf"
    meta = gguf_metadata(SMALL, llama__rope__freq_base=500000.0,
                         llama__attention__layer_norm_rms_epsilon=1e-6,
                         tokenizer__ggml__bos_token_id=5, tokenizer__ggml__eos_token_id=7,
                         tokenizer__chat_template="{{ messages }}")
    written = write_gguf(path, SMALL, "Q8_0", meta=meta)
    with GGUFModel(path) as g:
        s = g.spec
        assert (s.dim, s.hidden_dim, s.n_layers, s.n_heads, s.n_kv_heads, s.vocab_size,
                s.seq_len) == (256, 512, 2, 8, 2, 40, 64)
        assert s.kv_dim == 64 and not s.shared_classifier
        assert (s.rope_theta, s.norm_eps, s.bos_id, s.eos_id) == (500000.0, 1e-6, 5, 7)
        assert s.chat_template == "{{ messages }}"
        wk = g.tensor("wk", 1)
        assert wk.shape == (64, 256) and wk.qtype.name == "q8_0"
        assert wk.data.tobytes() == written["blk.1.attn_k.weight"][1].tobytes()
        assert g.tensor_types() == {"Q8_0": 16, "F32": 5}  # 7 per layer, token_embd, output


def test_defaults_when_keys_are_absent(tmp_path):
    path = tmp_path / "m.gguf"
    meta = gguf_metadata(SMALL, llama__attention__head_count_kv=None, llama__rope__freq_base=None,
                         llama__attention__layer_norm_rms_epsilon=None,
                         tokenizer__ggml__bos_token_id=None, tokenizer__ggml__eos_token_id=None,
                         llama__rope__dimension_count=None)
    c = dataclasses.replace(SMALL, n_kv_heads=SMALL.n_heads)
    write_gguf(path, c, meta=meta, drop=("output.weight",))
    with GGUFModel(path) as g:
        s = g.spec
        assert (s.n_kv_heads, s.rope_theta, s.norm_eps, s.bos_id, s.eos_id) == (8, 1e4, 1e-5, 1, 2)
        assert s.shared_classifier and not g.has("output")


def test_float64_keys_are_read_when_a_float32_holds_them(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, SMALL, meta=gguf_metadata(SMALL, llama__rope__freq_base=np.float64(5e5)))
    with GGUFModel(path) as g:
        assert g.spec.rope_theta == 5e5


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"])
def test_block_types_are_served_in_place(qtype, tmp_path):
    path = tmp_path / "m.gguf"
    written = write_gguf(path, SMALL, qtype, types={"tok_embeddings": "F32"})
    with open_model(path) as g:
        assert isinstance(g, GGUFModel)
        for layer in range(2):
            for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
                t = g.tensor(name, layer)
                gname = names.tensor_name(name, layer)
                assert t.qtype.gguf == T[qtype] and t.shape == g.infos[gname].shape
                assert t.data.tobytes() == written[gname][1].tobytes()
        emb = g.tensor("tok_embeddings")
        assert emb.shape == (40, 256) and emb.dtype == np.float32
        assert g.tensor("norm").shape == (256,)


def test_custom_alignment(tmp_path):
    path = tmp_path / "m.gguf"
    written = write_gguf(path, SMALL, "Q4_0", meta=gguf_metadata(SMALL, general__alignment=256))
    with GGUFModel(path) as g:
        assert g.alignment == 256 and g.data_start % 256 == 0
        assert all(t.offset % 256 == 0 for t in g.infos.values())
        assert np.array_equal(g.tensor("norm"), written["output_norm.weight"][1])
        assert g.tensor("w2", 1).data.tobytes() == written["blk.1.ffn_down.weight"][1].tobytes()


def test_open_model_reads_llama2c_files_too():
    with open_model(data("stories260K.bin")) as m:
        assert isinstance(m, ModelFile) and m.spec.dim == 64


def test_info_describes_a_gguf_file(tmp_path, capsys):
    path = tmp_path / "m.gguf"
    write_gguf(path, SMALL, "Q4_K", types={"tok_embeddings": "Q6_K", "output": "Q6_K"})
    assert main(["info", "--json", str(path)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"] == "GGUF version 3 (llama)" and d["n_kv_heads"] == 2
    assert d["tensor_types"] == {"Q4_K": 14, "F32": 5, "Q6_K": 2}
    assert d["file_size"] == path.stat().st_size and d["tokenizer_model"] is None
    assert 4.5 < d["bits_per_weight"] < 5.5  # mostly Q4_K's 4.5
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Q4_K × 14" in out and "bits per weight" in out


REFUSALS = [
    (dict(meta=dict(general__architecture="mistral")),
     "general.architecture is 'mistral'; qllama reads 'llama'"),
    (dict(meta=dict(llama__rope__scaling__type="linear")),
     "llama.rope.scaling.type is 'linear'; qllama has no rope scaling"),
    (dict(meta=dict(llama__rope__dimension_count=16)),
     "llama.rope.dimension_count is 16, not the head size 32"),
    (dict(meta=dict(llama__attention__key_length=64)),
     "llama.attention.key_length is 64, not the head size 32"),
    (dict(meta=dict(llama__expert_count=8)), "llama.expert_count is 8; qllama runs dense"),
    (dict(meta=dict(llama__embedding_length=None)), "llama.embedding_length is missing"),
    (dict(meta=dict(llama__vocab_size=41, tokenizer__ggml__tokens=["a"] * 40)),
     "llama.vocab_size is 41, but tokenizer.ggml.tokens has 40 tokens"),
    (dict(meta=dict(llama__attention__head_count_kv=4)),
     "tensor blk.0.attn_k.weight has shape [64, 256] (rows, columns), the metadata implies "
     "[128, 256]"),
    (dict(meta=dict(llama__vocab_size=41)), "token_embd.weight has 40 rows, the vocabulary 41"),
    (dict(meta=dict(llama__context_length=-1)), "llama.context_length is -1, must be an integer"),
    (dict(meta=dict(llama__attention__head_count=3)), "llama.attention.head_count 3 does not"),
    (dict(meta=dict(tokenizer__ggml__eos_token_id=40)),
     "tokenizer.ggml.eos_token_id is 40, outside the vocabulary of 40"),
    (dict(extra={"rope_freqs.weight": np.ones(16, np.float32)}),
     "tensor rope_freqs.weight is not one of the llama model's"),
    (dict(drop=("blk.1.ffn_up.weight",)), "tensor blk.1.ffn_up.weight is missing"),
    (dict(meta=dict(llama__block_count=1)), "tensor blk.1.attn_norm.weight is not one of"),
    (dict(meta=dict(llama__block_count=3)),
     "llama.block_count is 3, 9 tensors a layer, but the file holds 21 tensors in all"),
    # FLOAT64 keys llama.cpp reads as float32 (an export had raised OverflowError)
    (dict(meta=dict(llama__rope__freq_base=np.float64(1e300))),
     "llama.rope.freq_base is 1e+300, must be a positive number a float32 holds"),
    (dict(meta=dict(llama__attention__layer_norm_rms_epsilon=np.float64(1e-50))),
     "llama.attention.layer_norm_rms_epsilon is 1e-50, must be a positive number a float32"),
    (dict(types={"ffn_norm": "F16"}), "tensor blk.0.ffn_norm.weight has type F16; qllama reads "
     "norms as F32 only"),
    (dict(types={"w1": "IQ2_XXS"}), "tensor blk.0.ffn_gate.weight has type IQ2_XXS; qllama reads "
     "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K"),
]


@pytest.mark.parametrize("case, message", REFUSALS, ids=[m[:40] for _, m in REFUSALS])
def test_refusals_name_the_key_or_tensor(case, message, tmp_path):
    path = tmp_path / "m.gguf"
    meta = gguf_metadata(SMALL, **case.pop("meta", {}))
    write_gguf(path, SMALL, meta=meta, **case)
    with pytest.raises(FormatError) as e:
        GGUFModel(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_tokenizer_refusals(tmp_path):
    tokens = ["<unk>", "<s>", "</s>"] + [chr(97 + i) for i in range(37)]
    for changes, message in [
            (dict(tokenizer__ggml__model="gpt2"),
             "tokenizer.ggml.model is 'gpt2'; qllama reads SentencePiece vocabularies"),
            (dict(tokenizer__ggml__token_type=[7] * 40), "tokenizer.ggml.token_type holds 7"),
            (dict(tokenizer__ggml__token_type=[6] * 40), "names byte token 0 '<unk>', not <0xNN>"),
            (dict(tokenizer__ggml__scores=None), "tokenizer.ggml.scores must be an array of 40")]:
        path = tmp_path / "m.gguf"
        write_gguf(path, SMALL, meta=gguf_metadata(SMALL, tokens, **changes))
        with GGUFModel(path) as g, pytest.raises(TokenizerError) as e:
            from_gguf(g)
        assert message in str(e.value) and str(e.value).startswith(str(path))


def test_llama2_vocabulary_from_gguf_gives_sentencepieces_ids(tmp_path):
    """Llama 2's 32,000 pieces (exported from tokenizer.model with a 32k-vocabulary model):
    the GGUF's tokenizer encodes as tokenizer.bin and as SentencePiece itself."""
    src = shared_file("golden", "unshared32k.v1.bin")
    out = tmp_path / "u.gguf"
    export_gguf(str(src), str(out), "f16", tokenizer=str(data("tokenizer.model")))
    with GGUFModel(out) as g:
        assert g.spec == ModelFile(src).spec and g.tensor_types() == {"F16": 16, "F32": 5}
        tok = from_gguf(g)
    sp, bin_tok = load_tokenizer(data("tokenizer.model")), load_tokenizer(data("tokenizer.bin"))
    for text in TEXTS + ["  leading and  double spaces ", "\n\ttabs\n", "I'm 42; café."]:
        ids = tok.encode(text)
        assert ids == bin_tok.encode(text) == sp.encode(text), text
        assert tok.decode(ids) == sp.decode(ids)


# ---------------------------------------------------------------------------
# llama.cpp's own quantizer's files

def llama_quantize() -> str:
    return llama_cpp_tool("llama-quantize", "read the files llama.cpp quantizes")


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    """(llama2.c file, its F32 GGUF export): every matrix's rows whole blocks of 256."""
    folder = tmp_path_factory.mktemp("llama-cpp")
    c = Config(1, dim=256, hidden_dim=768, n_layers=2, n_heads=8, n_kv_heads=4, vocab_size=512,
               seq_len=128, shared_classifier=False)
    write_random_model(folder / "r.bin", c, seed=3)
    export_gguf(str(folder / "r.bin"), str(folder / "r.gguf"), "f32",
                tokenizer=str(data("tok512.model")))
    return folder / "r.bin", folder / "r.gguf"


@pytest.mark.parametrize("ftype", ["Q4_K_M", "Q5_K_M", "Q6_K", "Q4_0", "Q4_1", "Q8_0", "BF16"])
def test_llama_quantize_outputs_read_as_gguf_py_reads_them(ftype, f32_gguf, tmp_path):
    tool = llama_quantize()
    src, f32 = f32_gguf
    out = tmp_path / f"r.{ftype}.gguf"
    r = subprocess.run([tool, str(f32), str(out), ftype, "1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = {t.name: t for t in gguf.GGUFReader(out).tensors}
    ref = ModelFile(src)
    with GGUFModel(out) as g:
        assert g.spec == ref.spec
        for e in ref.entries.values():
            t = theirs[names.tensor_name(e.name, e.layer)]
            got = g.tensor(e.name, e.layer)
            if t.tensor_type == T.F32:
                assert np.array_equal(got, np.asarray(t.data).reshape(e.shape))
            else:
                assert got.qtype.gguf == t.tensor_type and got.shape == e.shape
                assert got.data.tobytes() == np.asarray(t.data).tobytes()
        tok = from_gguf(g)
    bin_tok = load_tokenizer(data("tok512.bin"))
    assert all(tok.encode(text) == bin_tok.encode(text) for text in TEXTS)


def test_llama_quantize_types_qllama_lacks_are_named(f32_gguf, tmp_path):
    tool = llama_quantize()
    out = tmp_path / "r.Q2_K.gguf"
    subprocess.run([tool, str(f32_gguf[1]), str(out), "Q2_K", "1"], capture_output=True,
                   check=True, timeout=120)
    with pytest.raises(FormatError, match="tensor token_embd.weight has type Q2_K; qllama reads"):
        GGUFModel(out)


def test_llama_cpps_llama2c_converter_output_reads(tmp_path):
    """llama.cpp's own llama2.c converter writes context 128 (its default) and an output
    matrix copied from the token table; all else is stories260K's, and its vocabulary
    (from tok512.bin) encodes as tok512.bin does."""
    tool = os.path.join(os.path.dirname(llama_quantize()), "llama-convert-llama2c-to-ggml")
    src, out = data("stories260K.bin"), tmp_path / "conv.gguf"
    subprocess.run([tool, "--copy-vocab-from-model", str(data("tok512.bin")), "--llama2c-model",
                    str(src), "--llama2c-output-model", str(out)], capture_output=True,
                   check=True, timeout=120)
    ref = ModelFile(src)
    with GGUFModel(out) as g:
        assert g.spec == dataclasses.replace(ref.spec, seq_len=128, shared_classifier=False)
        for name, layer in ref.entries:
            if not name.startswith("freqs"):
                assert np.array_equal(g.tensor(name, layer), ref.tensor(name, layer))
        assert np.array_equal(g.tensor("output"), ref.tensor("tok_embeddings"))
        tok = from_gguf(g)
    bin_tok = load_tokenizer(data("tok512.bin"))
    assert all(tok.encode(text) == bin_tok.encode(text) for text in TEXTS)


def test_load_tokenizer_reads_a_gguf_files_vocabulary(tmp_path, capsys):
    """load_tokenizer (so -z and `qllama tokenizer`) takes a GGUF model; exporting with
    that vocabulary writes the same pieces, scores and types as with tok512.model."""
    src = data("stories260K.bin")
    export_gguf(str(src), str(tmp_path / "a.gguf"), "f32", tokenizer=str(data("tok512.model")))
    tok = load_tokenizer(tmp_path / "a.gguf", vocab_size=512)
    assert isinstance(tok, GGUFTokenizer)
    assert tok.encode(TEXTS[0]) == load_tokenizer(data("tok512.bin")).encode(TEXTS[0])
    export_gguf(str(src), str(tmp_path / "b.gguf"), "f32", tokenizer=str(tmp_path / "a.gguf"))
    a, b = (gguf.GGUFReader(tmp_path / n) for n in ("a.gguf", "b.gguf"))
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id"):
        assert a.fields[key].contents() == b.fields[key].contents(), key
    assert main(["tokenizer", "encode", str(tmp_path / "a.gguf"), "Once upon a time"]) == 0
    assert capsys.readouterr().out.startswith("1 403 407 261 378\n")
    with pytest.raises(TokenizerError, match="has 512 tokens, model has 32000"):
        load_tokenizer(tmp_path / "a.gguf", vocab_size=32000)
