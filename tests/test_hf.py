"""qllama import (Hugging Face → llama2.c) and export --to hf: the reference folders
made by transformers (../shared/hf), folders made here with safetensors + numpy,
the rotary permutation against a forward pass in transformers' conventions,
refusals, atomic outputs, round trips."""
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

import qllama
from qllama.cli import main
from qllama.conversion.llama2c import quantize_file
from qllama.formats import hf
from qllama.formats.llama2c import Config, ModelFile
from qllama.interop.hf_export import export_hf
from qllama.interop.hf_import import import_hf
from qllama.tokenizer import find_tokenizer

from conftest import data
from conftest import hf as shared_hf
from makers import SMALL, config_dict, random_tensors, small_folder, with_value, write_folder

IDS = [1, 37, 200, 5, 511, 88, 300, 42, 7, 99, 150, 3, 250, 410, 61, 19]
# fp32 logits to compare with transformers': run.c's fp32 KV cache (the default fp16
# cache moves hfa's logits by 1.3e-3)
FP32_CACHE = "f32"
REFERENCE = ("hfa", "hfb", "hfc")


# ---------------------------------------------------------------------------
# Folders of our own, and transformers' forward pass in numpy

def hf_forward(t: dict, cfg: dict, ids) -> np.ndarray:
    """Logits (T, vocab) in float64 as transformers' LlamaForCausalLM computes them:
    RoPE on (x[i], x[i + hs/2]) pairs, kv head h // (heads / kv heads) for head h."""
    t = {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}
    dim, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv, hs = cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]
    eps = cfg["rms_norm_eps"]
    n = len(ids)
    inv = 1.0 / 10000.0 ** (np.arange(0, hs, 2) / hs)
    angle = np.arange(n)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(angle)] * 2, axis=1)[:, None, :]  # (T, 1, hs)
    sin = np.concatenate([np.sin(angle)] * 2, axis=1)[:, None, :]

    def rope(v):
        rotated = np.concatenate([-v[..., hs // 2:], v[..., :hs // 2]], axis=-1)
        return v * cos + rotated * sin

    def rms(x, w):
        return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)

    x = t["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q = rope((h @ t[p + "self_attn.q_proj.weight"].T).reshape(n, heads, hs))
        k = rope((h @ t[p + "self_attn.k_proj.weight"].T).reshape(n, kv, hs))
        v = (h @ t[p + "self_attn.v_proj.weight"].T).reshape(n, kv, hs)
        k, v = np.repeat(k, heads // kv, axis=1), np.repeat(v, heads // kv, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(hs) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        x = x + np.einsum("hts,shd->thd", scores, v).reshape(n, dim) @ \
            t[p + "self_attn.o_proj.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        gate = h @ t[p + "mlp.gate_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ t[p + "mlp.up_proj.weight"].T)) @ \
            t[p + "mlp.down_proj.weight"].T
    head = t["lm_head.weight"] if "lm_head.weight" in t else t["model.embed_tokens.weight"]
    return rms(x, t["model.norm.weight"]) @ head.T


def leftovers(directory) -> list:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".qllama-"))


def read_folder(folder) -> dict:
    tensors = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            tensors.update(load_file(os.path.join(folder, name)))
    return tensors


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.itemsize == 4 else np.uint16)


# ---------------------------------------------------------------------------
# The reference folders made by transformers


@pytest.mark.parametrize("name", REFERENCE)
def test_reference_logits_and_greedy(name, tmp_path):
    out = tmp_path / f"{name}.bin"
    import_hf(str(shared_hf(name)), str(out), version=1)
    want = np.load(shared_hf(f"{name}.logits.npy"))
    greedy = json.loads(shared_hf("greedy.json").read_text())
    with qllama.load(out, threads=1, kv=FP32_CACHE) as model:
        assert np.abs(model.logits(IDS) - want).max() <= 1e-4
        ids = list(greedy["prompt"])
        for _ in range(greedy["steps"]):
            ids.append(int(np.argmax(model.logits(ids)[-1])))
    assert ids == greedy["ids"][name]


def test_reference_bytes_equal_llama2c_export(tmp_path):
    """Where llama2.c's export.py is right (hfa: no grouped-query attention)."""
    import_hf(str(shared_hf("hfa")), str(tmp_path / "a.bin"), version=1)
    import_hf(str(shared_hf("hfa")), str(tmp_path / "a.q80.bin"), version=2)
    assert (tmp_path / "a.bin").read_bytes() == shared_hf("hfa.v1.bin").read_bytes()
    assert (tmp_path / "a.q80.bin").read_bytes() == shared_hf("hfa.v2.bin").read_bytes()


@pytest.mark.parametrize("name", REFERENCE)
def test_v2_equals_quantize_of_v1(name, tmp_path):
    import_hf(str(shared_hf(name)), str(tmp_path / "m.bin"), version=1)
    quantize_file(str(tmp_path / "m.bin"), str(tmp_path / "q.bin"))
    # Small chunks: rows and whole heads per chunk must not change a byte.
    report = import_hf(str(shared_hf(name)), str(tmp_path / "m.q80.bin"), version=2,
                       chunk_bytes=4096)
    assert (tmp_path / "m.q80.bin").read_bytes() == (tmp_path / "q.bin").read_bytes()
    if name == "hfb":  # intermediate size 352: 64 does not divide it
        assert report.config.group_size == 32 and "using 32" in report.note


def test_tokenizer_written_beside_output(tmp_path):
    out = tmp_path / "model.q80.bin"
    assert main(["import", str(shared_hf("hfb")), str(out), "-q"]) == 0
    assert ModelFile(out).config.version == 2  # from the name
    assert (tmp_path / "tokenizer.model").read_bytes() == \
        (shared_hf("hfb") / "tokenizer.model").read_bytes()
    assert (tmp_path / "tokenizer.bin").read_bytes() == data("tok512.bin").read_bytes()
    assert find_tokenizer(str(out)) == str(tmp_path / "tokenizer.model")
    # Again into the same folder: identical tokenizer files are not in the way.
    assert main(["import", str(shared_hf("hfb")), str(tmp_path / "m.bin"), "-q"]) == 0
    assert ModelFile(tmp_path / "m.bin").config.version == 1


def test_unusable_tokenizer_is_left_behind_with_a_warning(tmp_path, capsys):
    """A tokenizer.model whose <s> is a plain piece: the weights import, the tokenizer
    stays behind (said once), as one of the wrong size does."""
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    folder = tmp_path / "hf"
    shutil.copytree(shared_hf("hfa"), folder)
    m = pb.ModelProto()
    m.ParseFromString((folder / "tokenizer.model").read_bytes())
    m.pieces[1].type = pb.ModelProto.SentencePiece.NORMAL
    (folder / "tokenizer.model").write_bytes(m.SerializeToString())
    out = tmp_path / "out" / "m.bin"
    out.parent.mkdir()
    assert main(["import", str(folder), str(out), "-q"]) == 0
    assert "without a BOS piece" in capsys.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.bin"]


def test_import_says_when_the_tokenizer_bin_encodes_otherwise(tmp_path, capsys):
    """The tokenizer.bin import writes beside the model is read with Llama 2's normaliser;
    a tokenizer.model that removes extra whitespace (as tok512.model does) was copied and
    converted without a word."""
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    folder = tmp_path / "hf"
    shutil.copytree(shared_hf("hfa"), folder)
    m = pb.ModelProto()
    m.ParseFromString((folder / "tokenizer.model").read_bytes())
    m.normalizer_spec.remove_extra_whitespaces = True
    (folder / "tokenizer.model").write_bytes(m.SerializeToString())
    out = tmp_path / "out" / "m.bin"
    out.parent.mkdir()
    assert main(["import", str(folder), str(out)]) == 0
    err = capsys.readouterr().err
    assert "normalises with remove_extra_whitespaces True" in err and err.count("\n") == 1
    assert (out.parent / "tokenizer.bin").exists()


# ---------------------------------------------------------------------------
# The rotary permutation: imported files compute what transformers computes


@st.composite
def shapes(draw):
    head_size = draw(st.sampled_from([2, 4, 6, 8, 16]))
    n_kv = draw(st.integers(1, 3))
    n_heads = n_kv * draw(st.integers(1, 3))
    return Config(1, dim=n_heads * head_size, hidden_dim=draw(st.integers(1, 50)),
                  n_layers=draw(st.integers(1, 2)), n_heads=n_heads, n_kv_heads=n_kv,
                  vocab_size=draw(st.integers(3, 40)), seq_len=16,
                  shared_classifier=draw(st.booleans()))


@settings(max_examples=40, deadline=None)
@given(config=shapes(), dtype=st.sampled_from(["F32", "F16", "BF16"]),
       shards=st.integers(1, 3), seed=st.integers(0, 2**16), data=st.data())
def test_import_computes_what_transformers_computes(tmp_path_factory, config, dtype, shards,
                                                    seed, data):
    folder = tmp_path_factory.mktemp("hf")
    cfg = config_dict(config, style=data.draw(st.sampled_from([4, 5])))
    tensors = random_tensors(config, seed, dtype)
    write_folder(folder / "m", cfg, tensors, shards)
    import_hf(str(folder / "m"), str(folder / "m.bin"), version=1)
    ids = data.draw(st.lists(st.integers(0, config.vocab_size - 1), min_size=1, max_size=8))
    want = hf_forward(tensors, cfg, ids)
    with qllama.load(folder / "m.bin", threads=1, kv=FP32_CACHE) as model:
        got = model.logits(ids)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # and back: the exported folder holds the very tensors (bf16/fp16 values fit fp32)
    export_hf(str(folder / "m.bin"), str(folder / "back"), dtype.lower(), chunk_bytes=256)
    back = read_folder(folder / "back")
    assert sorted(back) == sorted(tensors)
    for name, w in tensors.items():
        assert np.array_equal(bits(back[name]), bits(w)), name


def test_permutations_are_inverse_per_head_count():
    w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(24, 5)
    for heads in (1, 3):
        assert np.array_equal(hf.to_meta(hf.to_hf(w, heads), heads), w)
    # one head of size 8: HF rows 0..3 are Meta's even rows, 4..7 the odd ones
    head = w[:8]
    assert np.array_equal(hf.to_hf(head, 1), head[[0, 2, 4, 6, 1, 3, 5, 7]])


# ---------------------------------------------------------------------------
# Round trips through export --to hf


@pytest.mark.parametrize("name", ("hfa", "hfb"))  # fp32; hfb sharded and tied
def test_hf_v1_hf_round_trip_is_bit_exact(name, tmp_path):
    import_hf(str(shared_hf(name)), str(tmp_path / "m.bin"), version=1)
    report = export_hf(str(tmp_path / "m.bin"), str(tmp_path / "out"), shard_bytes=10**6)
    original = read_folder(shared_hf(name))
    back = read_folder(tmp_path / "out")
    assert sorted(back) == sorted(original)
    for k, w in original.items():
        assert back[k].dtype == w.dtype and np.array_equal(bits(back[k]), bits(w)), k
    assert ("model.safetensors.index.json" in report.files) == (name == "hfb")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert hf.parse_config(cfg) == ModelFile(tmp_path / "m.bin").config
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == \
        (shared_hf(name) / "tokenizer.model").read_bytes()
    # and imported again: the same llama2.c file
    import_hf(str(tmp_path / "out"), str(tmp_path / "again.bin"), version=1)
    assert (tmp_path / "again.bin").read_bytes() == (tmp_path / "m.bin").read_bytes()


def test_export_f16_values_and_tokenizer_bin(tmp_path):
    """fp16 is numpy's round-to-nearest of the permuted fp32 values; a tokenizer.bin is
    not carried (transformers reads tokenizer.model) and says so."""
    import_hf(str(shared_hf("hfc")), str(tmp_path / "m.bin"), version=1)
    (tmp_path / "tokenizer.model").unlink()  # leave the .bin beside the model
    with pytest.warns(qllama.errors.QllamaWarning, match="tokenizer.bin is not carried"):
        report = export_hf(str(tmp_path / "m.bin"), str(tmp_path / "out"), "f16")
    assert "tokenizer.model" not in report.files
    back = read_folder(tmp_path / "out")
    f = ModelFile(tmp_path / "m.bin")
    wk = hf.to_hf(np.asarray(f.tensor("wk", 1)), f.config.n_kv_heads)
    assert np.array_equal(bits(back["model.layers.1.self_attn.k_proj.weight"]),
                          bits(wk.astype(np.float16)))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float16"


def test_export_hf_says_when_the_folder_has_no_tokenizer(tmp_path, capsys):
    import_hf(str(shared_hf("hfa")), str(tmp_path / "m.bin"), version=1)
    for name in ("tokenizer.model", "tokenizer.bin"):
        (tmp_path / name).unlink(missing_ok=True)
    assert main(["export", str(tmp_path / "m.bin"), str(tmp_path / "out"), "--to", "hf"]) == 0
    assert "qllama: note: no tokenizer.model beside the model" in capsys.readouterr().err


def test_export_hf_from_v2_dequantizes(tmp_path):
    import_hf(str(shared_hf("hfb")), str(tmp_path / "m.q80.bin"), version=2)
    export_hf(str(tmp_path / "m.q80.bin"), str(tmp_path / "out"))
    back = read_folder(tmp_path / "out")
    f = ModelFile(tmp_path / "m.q80.bin")
    w1 = f.tensor("w1", 2).dequantize()
    assert np.array_equal(back["model.layers.2.mlp.gate_proj.weight"], w1)
    wq = hf.to_hf(f.tensor("wq", 0).dequantize(), f.config.n_heads)
    assert np.array_equal(back["model.layers.0.self_attn.q_proj.weight"], wq)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_export_hf_refuses_a_non_finite_weight_as_every_output_does(tmp_path, capsys, bad):
    """An Inf scale in a Q8_0 file (its 0 values dequantize to NaN, with no numpy
    warning): one line, and no folder."""
    quantize_file(data("stories260K.bin"), tmp_path / "m.q80.bin")
    bad = with_value(tmp_path / "m.q80.bin", tmp_path / "bad.q80.bin", "w2", 1, bad, scale=True)
    assert main(["export", str(bad), str(tmp_path / "out"), "--to", "hf"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "w2 of layer 1 holds" in err, err
    assert "refusing to export a non-finite weight" in err
    assert not (tmp_path / "out").exists()


def test_export_hf_folder_rules(tmp_path):
    import_hf(str(shared_hf("hfa")), str(tmp_path / "m.bin"), version=1)
    out = tmp_path / "out"
    export_hf(str(tmp_path / "m.bin"), str(out))
    before = (out / "model.safetensors").read_bytes()
    assert main(["export", str(tmp_path / "m.bin"), str(out), "--to", "hf", "-q"]) == 1
    assert main(["export", str(tmp_path / "m.bin"), str(out), "--to", "hf", "--type", "f16",
                 "--force", "-q"]) == 0
    assert len((out / "model.safetensors").read_bytes()) < len(before)
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(tmp_path / "m.bin"), str(out), "--to", "hf", "--force",
                 "-q"]) == 1
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["export", str(tmp_path / "m.bin"), str(tmp_path / "q"), "--to", "hf",
                 "--type", "q8_0"]) == 1
    assert main(["export", str(tmp_path / "m.bin"), str(tmp_path / "q"), "--to", "hf",
                 "--threads", "2"]) == 1
    assert leftovers(tmp_path) == []


TRANSFORMERS_REASON = ("transformers (with torch) is not installed: it is not a dependency; "
                       "install both to check the exported folder loads")


def test_transformers_loads_export(tmp_path):
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        pytest.skip(TRANSFORMERS_REASON)
    import_hf(str(shared_hf("hfb")), str(tmp_path / "m.bin"), version=1)
    export_hf(str(tmp_path / "m.bin"), str(tmp_path / "out"), shard_bytes=10**6)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32)
    with torch.no_grad():
        got = model(torch.tensor([IDS])).logits[0].numpy()
    with qllama.load(tmp_path / "m.bin", threads=1, kv=FP32_CACHE) as ours:
        assert np.abs(got - ours.logits(IDS)).max() <= 1e-4
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    with qllama.load(tmp_path / "m.bin", tokenizer=data("tok512.model")) as ours:
        assert tok("Once upon a time").input_ids == ours.encode("Once upon a time")


# ---------------------------------------------------------------------------
# What cannot be imported: one line naming the field, nothing left behind


def run_import(src, out, *flags):
    r = subprocess.run([sys.executable, "-m", "qllama", "import", str(src), str(out), *flags],
                       capture_output=True, text=True)
    return r.returncode, r.stderr


@pytest.mark.parametrize("changes,field", [
    ({"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}}, "rope_theta is 500000"),
    ({"rope_parameters": None, "rope_theta": 500000.0}, "rope_theta is 500000"),
    ({"rope_parameters": {"rope_theta": 10000.0, "rope_type": "llama3", "factor": 8.0}},
     "rope_parameters.rope_type is 'llama3'"),
    ({"rope_parameters": {"rope_theta": 10000.0, "factor": 2.0}}, "rope_parameters.factor"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling is"),
    ({"rms_norm_eps": 1e-6}, "rms_norm_eps is 1e-06"),
    ({"rms_norm_eps": None}, "rms_norm_eps is missing"),
    ({"attention_bias": True}, "attention_bias is True"),
    ({"mlp_bias": True}, "mlp_bias is True"),
    ({"head_dim": 16}, "head_dim is 16"),
    ({"model_type": "mistral"}, "model_type is 'mistral'"),
    ({"hidden_act": "gelu"}, "hidden_act is 'gelu'"),
    ({"hidden_size": None}, "hidden_size is missing"),
    ({"num_attention_heads": 3, "head_dim": None}, "dim 32 is not a multiple of n_heads 3"),
    ({"vocab_size": 49}, "model.embed_tokens.weight has shape [48, 32], config.json implies [49, 32]"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization_config is set"),
    # a small folder claiming 2**31 - 1 layers: refused before any table per layer
    ({"num_hidden_layers": 2**31 - 1}, "num_hidden_layers is 2147483647, 9 tensors a layer"),
])
def test_refusals_name_the_field(tmp_path, changes, field):
    small_folder(tmp_path / "m", **changes)
    code, err = run_import(tmp_path / "m", tmp_path / "out" / "m.bin")
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("qllama: error: ") and field in err, err


def test_both_config_styles_give_the_same_file(tmp_path):
    small_folder(tmp_path / "a", style=4)
    small_folder(tmp_path / "b", style=5)
    import_hf(str(tmp_path / "a"), str(tmp_path / "a.bin"))
    import_hf(str(tmp_path / "b"), str(tmp_path / "b.bin"))
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()


def test_bf16_is_widened_exactly(tmp_path):
    tensors = random_tensors(SMALL, 2, "BF16")
    write_folder(tmp_path / "m", config_dict(SMALL, dtype="bfloat16"), tensors)
    import_hf(str(tmp_path / "m"), str(tmp_path / "m.bin"))
    raw = tensors["model.layers.1.mlp.down_proj.weight"].view(np.uint16)
    widened = (raw.astype(np.uint32) << 16).view(np.float32)  # bf16 is fp32's top half
    assert np.array_equal(ModelFile(tmp_path / "m.bin").tensor("w2", 1), widened)


def mutate_tensors(folder, fn) -> None:
    tensors = random_tensors(SMALL, 1)
    fn(tensors)
    write_folder(folder, config_dict(SMALL), tensors)


@pytest.mark.parametrize("fn,field", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
     "tensor model.layers.1.mlp.up_proj.weight is missing"),
    (lambda t: t.pop("lm_head.weight"), "tensor lm_head.weight is missing"),
    (lambda t: t.update({"model.layers.0.self_attn.q_proj.weight": np.zeros((32, 30), np.float32)}),
     "q_proj.weight has shape [32, 30], config.json implies [32, 32]"),
    (lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(32, np.float32)}),
     "q_proj.bias: llama2.c files have no biases"),
    (lambda t: t.update({"model.layers.2.input_layernorm.weight": np.ones(32, np.float32)}),
     "unexpected tensor model.layers.2.input_layernorm.weight"),
    (lambda t: t.update({"model.norm.weight": np.ones(32, np.int8)}), "model.norm.weight is I8"),
])
def test_tensor_refusals(tmp_path, fn, field):
    mutate_tensors(tmp_path / "m", fn)
    code, err = run_import(tmp_path / "m", tmp_path / "m.bin")
    assert code == 1 and len(err.splitlines()) == 1 and field in err, err
    assert not (tmp_path / "m.bin").exists() and leftovers(tmp_path) == []


def test_damaged_safetensors_and_index(tmp_path):
    small_folder(tmp_path / "m")
    st = tmp_path / "m" / hf.SINGLE
    whole = st.read_bytes()
    st.write_bytes(whole[:-100])
    code, err = run_import(tmp_path / "m", tmp_path / "m.bin")
    assert code == 1 and "not a valid safetensors file" in err and "past the file's end" in err
    st.write_bytes(b"\xff" * 64)
    code, err = run_import(tmp_path / "m", tmp_path / "m.bin")
    assert code == 1 and "not a valid safetensors file" in err
    write_folder(tmp_path / "s", config_dict(SMALL), random_tensors(SMALL), shards=3)
    (tmp_path / "s" / "model-00002-of-00003.safetensors").unlink()
    code, err = run_import(tmp_path / "s", tmp_path / "m.bin")
    assert code == 1 and "names shard model-00002-of-00003.safetensors, which is not in" in err
    index = json.loads((tmp_path / "s" / hf.INDEX).read_text())
    index["weight_map"]["model.norm.weight"] = "../model.safetensors"
    (tmp_path / "s" / hf.INDEX).write_text(json.dumps(index))
    code, err = run_import(tmp_path / "s", tmp_path / "m.bin")
    assert code == 1 and "not a file in the folder" in err
    (tmp_path / "e").mkdir()
    code, err = run_import(tmp_path / "e", tmp_path / "m.bin")
    assert code == 1 and "config.json: missing" in err
    assert not (tmp_path / "m.bin").exists() and leftovers(tmp_path) == []


def test_nothing_left_behind_on_a_late_error(tmp_path):
    """NaN in the last tensor: the model and the tokenizer files beside it all vanish."""
    config = replace(SMALL, vocab_size=512)  # tok512's vocabulary, so it is copied
    tensors = random_tensors(config, 1)
    tensors["lm_head.weight"][5, 7] = np.nan
    write_folder(tmp_path / "m", config_dict(config), tensors)
    (tmp_path / "m" / "tokenizer.model").write_bytes(data("tok512.model").read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    code, err = run_import(tmp_path / "m", out / "m.bin")
    assert code == 1 and "lm_head.weight holds nan at element 167" in err, err
    assert sorted(os.listdir(out)) == []
    tensors["lm_head.weight"][5, 7] = 0  # and once it is repaired, all three appear
    write_folder(tmp_path / "m", config_dict(config), tensors)
    assert run_import(tmp_path / "m", out / "m.bin")[0] == 0
    assert sorted(os.listdir(out)) == ["m.bin", "tokenizer.bin", "tokenizer.model"]


def test_published_tinyllama_config_is_accepted():
    """TinyLlama-1.1B-Chat-v1.0's config.json as published (transformers 4.x style)."""
    cfg = {"architectures": ["LlamaForCausalLM"], "attention_bias": False,
           "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
           "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632,
           "max_position_embeddings": 2048, "model_type": "llama", "num_attention_heads": 32,
           "num_hidden_layers": 22, "num_key_value_heads": 4, "pad_token_id": 0,
           "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
           "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
           "transformers_version": "4.35.0", "use_cache": True, "vocab_size": 32000}
    config = hf.parse_config(cfg)
    assert config == Config(1, dim=2048, hidden_dim=5632, n_layers=22, n_heads=32, n_kv_heads=4,
                            vocab_size=32000, seq_len=2048, shared_classifier=False)
    assert config.kv_dim == 256


def test_summary_lines_are_whole_on_a_pipe(tmp_path):
    folder = tmp_path / ("a-long-folder-name-" * 8)
    small_folder(folder / "m")
    out = folder / "m.q80.bin"
    r = subprocess.run([sys.executable, "-m", "qllama", "import", str(folder / "m"), str(out)],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert f"{out}: Q8_0, group size 8" in r.stdout  # 64, 32 and 16 do not divide hidden_dim 40
    assert f"{folder / 'm'} (Hugging Face, F32, " in r.stdout
    assert f") → {out} (version 2, " in r.stdout
    assert "qllama: note: group size 64 does not divide both dim 32 and hidden_dim 40; using 8" \
        in r.stderr


def test_import_and_quantize_point_to_each_other(tmp_path, capsys):
    """A GGUF name given to import, a folder to quantize's llama2.c output: each says
    which command writes that (import wrote a llama2.c file under the GGUF name)."""
    folder = tmp_path / "hf"
    folder.mkdir()
    assert main(["import", str(folder), str(tmp_path / "m.gguf")]) == 1
    assert f"use `qllama quantize {folder} {tmp_path / 'm.gguf'} --type" in capsys.readouterr().err
    assert main(["quantize", str(folder), str(tmp_path / "m.q80.bin")]) == 1
    assert "a folder; `qllama import` writes" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
