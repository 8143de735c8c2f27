"""GGUF files through the engine: qllama's F32 export of stories260K runs bit for bit as
the llama2.c file does (and so does `qllama run` on it, with the file's own vocabulary);
random GGUF models of every block type, with grouped-query heads, RoPE theta 500000 and
norm eps 1e-6, match the float64 reference forward pass of the same file; every kernel
variant this CPU runs gives the same logits bit for bit."""
import dataclasses
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

import qllama
from qllama import kernels
from qllama.formats.llama2c import Config
from qllama.interop.gguf_export import export_gguf

from conftest import data
from makers import gguf_metadata, write_gguf
from reference import forward as reference_forward

# columns of 256: every block type fits; 8 query heads of 32, 2 key/value heads
SMALL = Config(1, dim=256, hidden_dim=512, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=40,
               seq_len=64, shared_classifier=False)
BLOCK_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]
def rel_error(a, ref):
    return float((np.abs(a - ref).max(axis=1) / np.abs(ref).max(axis=1)).max())


def small_gguf(path, qtype: str, **meta_overrides):
    c = SMALL
    meta = gguf_metadata(c, llama__rope__freq_base=500000.0,
                         llama__attention__layer_norm_rms_epsilon=1e-6, **meta_overrides)
    write_gguf(path, c, qtype, meta=meta, seed=1)
    return path


def test_stories260K_f32_gguf_runs_as_the_llama2c_file(tmp_path):
    out = tmp_path / "s.gguf"
    export_gguf(str(data("stories260K.bin")), str(out), "f32", tokenizer=str(data("tok512.model")))
    a = qllama.load(data("stories260K.bin"), tokenizer=data("tok512.bin"))
    b = qllama.load(out)  # the vocabulary from the file
    ids = a.encode("Once upon a time, there was a little girl named Lily.")
    assert b.encode("Once upon a time, there was a little girl named Lily.") == ids
    assert np.array_equal(a.logits(ids), b.logits(ids))
    run = [sys.executable, "-m", "qllama", "run", "-i", "Once upon a time", "-n", "40", "-t", "0"]
    got = subprocess.run(run + [str(out)], capture_output=True, text=True, check=True).stdout
    want = subprocess.run(run + [str(data("stories260K.bin")), "-z", str(data("tok512.bin"))],
                          capture_output=True, text=True, check=True).stdout
    assert got == want and len(got) > 40


def test_the_specs_constants_reach_the_engine(tmp_path):
    """Theta 500000 and eps 1e-6 are computed with: the reference with them agrees, the
    same weights with llama2.c's constants do not."""
    m = qllama.load(small_gguf(tmp_path / "m.gguf", "F32"), kv="f32")
    ids = [1, 5, 9, 33, 2, 17, 39, 4]
    got = m.logits(ids)
    assert rel_error(got, reference_forward(m.file, ids)) <= 1e-5
    plain = SimpleNamespace(spec=dataclasses.replace(m.spec, rope_theta=1e4, norm_eps=1e-5),
                            has=m.file.has, tensor=m.file.tensor)
    assert rel_error(got, reference_forward(plain, ids)) > 1e-3


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_block_type_models_match_the_reference(qtype, tmp_path):
    path = small_gguf(tmp_path / "m.gguf", qtype)
    ids = [1, 5, 9, 33, 2, 17, 39, 4, 8, 12]
    logits = {}
    for variant in kernels.runnable():
        with qllama.load(path, variant=variant, kv="f32") as m:
            logits[variant] = m.logits(ids)
            if variant == "scalar":
                # activations are quantized per 32 as in the reference, whose float64
                # values may land on the other side of a rounding boundary now and then
                # (test_engine.Q80_VS_REFERENCE); fp16/bf16 weights take fp32 rows
                tol = 1e-4 if qtype in ("F16", "BF16") else 1e-2
                assert rel_error(logits[variant], reference_forward(m.file, ids)) <= tol
    for variant, got in logits.items():
        assert np.array_equal(got, logits["scalar"]), variant


def test_a_token_table_and_classifier_of_block_types(tmp_path):
    """The token table's rows dequantized per token; a shared q6_k table as classifier."""
    path = tmp_path / "m.gguf"
    meta = gguf_metadata(SMALL)
    write_gguf(path, SMALL, "Q4_K", meta=meta, seed=3, types={"tok_embeddings": "Q6_K"},
               drop=("output.weight",))
    with qllama.load(path, kv="f32") as m:
        assert m.spec.shared_classifier
        assert m.file.tensor("tok_embeddings").qtype.gguf == T.Q6_K
        ids = [1, 3, 7, 11]
        assert rel_error(m.logits(ids), reference_forward(m.file, ids)) <= 1e-2


def test_special_ids_come_from_the_file(tmp_path):
    """A file whose BOS is 5 and EOS 7: windows start with 5, generation stops at 5 or 7."""
    from qllama.evaluate import sample_windows
    from qllama.generation import Generation

    path = small_gguf(tmp_path / "m.gguf", "F32", tokenizer__ggml__bos_token_id=5,
                      tokenizer__ggml__eos_token_id=7)
    with qllama.load(path) as m:
        assert m.stop_ids == (5, 7)
        windows = sample_windows(m, 20, seed=3)
        assert all(w.inputs[0] == 5 for w in windows)
        assert all(t not in (5, 7) for w in windows for t in w.targets[:-1])
        gen = Generation(m, [5], 8, m.sampler(1.0, 0.9, 1), text=False)
        assert gen.stop_ids == (5, 7)


def test_matrices_sharing_an_input_may_differ_in_kind(tmp_path):
    """wq fp16 beside q4_k wk/wv, w1 q8_0 beside an fp16 w3: the shared input is prepared
    for both kinds (fp32 rows and their Q8 copy)."""
    path = tmp_path / "m.gguf"
    write_gguf(path, SMALL, "Q4_K", meta=gguf_metadata(SMALL), seed=5,
               types={"wq": "F16", "w1": "Q8_0", "w3": "F16", "wo": "BF16"})
    ids = [1, 4, 9, 16, 25, 36]
    with qllama.load(path, kv="f32") as m:
        assert rel_error(m.logits(ids), reference_forward(m.file, ids)) <= 1e-2
