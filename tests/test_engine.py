"""The forward pass against llama2.c's outputs (golden files), a float64 numpy
reference on random models, and its own invariants (blocking, threads)."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qllama.formats.llama2c import Config, ModelFile
from qllama.model import PREFILL_BLOCK, Model

from conftest import data, golden, models
from reference import forward as reference_forward
from reference import write_model


def tokens_json():
    return json.loads(golden("tokens.json").read_text())


def rel_error(a, ref):
    """Per position, max |a - ref| relative to that position's largest |ref|; the worst."""
    return float((np.abs(a - ref).max(axis=1) / np.abs(ref).max(axis=1)).max())


# Q8_0 files against the float64 reference: the reference's activations differ from the
# kernel's float32 ones in the last bits, so now and then one lands on the other side of a
# rounding boundary and its int8 value moves by one quantum (1/127 of its group's max).
# That moves logits by up to about 1% of their largest value; a wrong scale, index or
# group boundary moves them by the order of the logits themselves.
Q80_VS_REFERENCE = 1e-2


def q80_logit_bound(config: Config) -> float:
    """Expected worst deviation of Q8_0 logits, relative to the largest |logit|.

    Rounding to the nearest of 255 levels leaves each weight and each activation an
    error uniform in +-s/2 (s = group max / 127): RMS 1/(254*sqrt 3) = 0.23% of the
    group maximum. Rounding errors are independent, so they add in quadrature over
    the operands on a logit's path: 2 per matmul (weights, activations) and 7
    matmuls per layer plus the classifier. Three standard deviations of that sum
    bound what we accept.
    """
    n_roundings = 2 * (7 * config.n_layers + 1)
    return 3 * math.sqrt(n_roundings) / (254 * math.sqrt(3))


# --- fp32 against llama2.c's PyTorch model ---------------------------------------

@pytest.mark.parametrize("name,files", [
    ("gqa512", ["gqa512.v0.bin", "gqa512.v1.bin"]),
    ("unshared32k", ["unshared32k.v0.bin", "unshared32k.v1.bin"]),
])
def test_fp32_logits_match_pytorch(name, files):
    ref = np.load(golden(f"{name}.logits.npy"))
    ids = tokens_json()[name]["logits_tokens"]
    for f in files:
        assert rel_error(Model(golden(f), threads=2, kv="f32").logits(ids), ref) <= 1e-4


def test_fp32_logits_real_model_match_pytorch():
    ref = np.load(golden("stories260K.logits.npy"))
    ids = tokens_json()["stories260K"]["logits_tokens"]
    assert rel_error(Model(data("stories260K.bin"), kv="f32").logits(ids), ref) <= 1e-4


# --- int8 against the fp32 reference -----------------------------------------------

@pytest.mark.parametrize("name,file", [
    ("gqa512", "gqa512.q80.bin"),
    ("unshared32k", "unshared32k.q80.gs4.bin"),
    ("stories260K", "stories260K.q80.gs4.bin"),
])
def test_int8_logits_within_quantization_bound(name, file):
    ref = np.load(golden(f"{name}.logits.npy"))
    ids = tokens_json()[name]["logits_tokens"]
    model = Model(golden(file))
    out = model.logits(ids)
    assert rel_error(out, ref) <= q80_logit_bound(model.config)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95


# --- greedy and sampled token streams against run.c / runq.c ------------------------

def run_ids(path, prompt_ids, steps, temperature=0.0, top_p=0.9, seed=1, threads=2, kv="f32"):
    """Tokens as run.c / runq.c compute them: with their fp32 KV cache."""
    model = Model(path, threads=threads, kv=kv)
    return prompt_ids + list(model.generate_ids(prompt_ids, steps, temperature, top_p, seed))


@pytest.mark.parametrize("name,file,key", [
    ("gqa512", "gqa512.v0.bin", "fp32_v0_greedy"),
    ("gqa512", "gqa512.v1.bin", "fp32_v0_greedy"),
    ("gqa512", "gqa512.q80.bin", "q80_greedy"),
    ("unshared32k", "unshared32k.v0.bin", "fp32_v0_greedy"),
    ("unshared32k", "unshared32k.q80.gs4.bin", "q80_gs4_greedy"),
    ("stories260K", "stories260K.q80.gs4.bin", "q80_gs4_greedy"),
])
def test_greedy_tokens_match_llama2c(name, file, key):
    d = tokens_json()[name]
    ref = d[key]
    prompt = ref[:5] if d["prompt"] else ref[:1]  # unshared32k: BOS + "Once upon a time"
    assert run_ids(golden(file), prompt, d["steps"]) == ref


def test_real_model_greedy_and_sampled_match_run_c():
    d = tokens_json()["stories260K"]
    path = data("stories260K.bin")
    assert run_ids(path, [1], d["steps"]) == d["fp32_v0_greedy"]
    sampled = d["fp32_v0_sampled_t1_p0.9_s133742"]
    assert run_ids(path, [1], d["steps"], 1.0, 0.9, 133742) == sampled


def test_straddling_groups_read_by_definition():
    """A Q8_0 file whose groups cross rows: our logits equal the numpy reference that
    dequantizes groups over the flattened tensor (runq.c gets this wrong)."""
    path = models("stories260K.q80-gs8-external.bin")
    ids = tokens_json()["stories260K"]["logits_tokens"][:12]
    model = Model(path, kv="f32")
    assert model.config.straddles
    ref = reference_forward(model.file, ids)
    # dim 64 is a multiple of 8, so activations entering those matrices are quantized
    assert rel_error(model.logits(ids), ref) <= Q80_VS_REFERENCE


def test_groups_straddling_every_row(tmp_path):
    """Group size 32 divides no row length (48, 80): every matrix takes the general
    path with fp32 activations, which must equal dequantize-then-multiply."""
    path = tmp_path / "straddle.bin"
    write_model(path, Config(2, 48, 80, 2, 6, 3, 96, 16, True, 32), seed=5)
    ids = [1, 5, 7, 90, 3, 3, 0]
    model = Model(path, kv="f32")
    assert rel_error(model.logits(ids), reference_forward(model.file, ids)) <= 1e-5


# --- invariants ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    c = Config(1, 48, 80, 2, 6, 3, 97, 64, False)
    paths = {}
    for version, gs in ((1, 0), (2, 16), (2, 8)):  # 8 divides 48 and 80; 16 straddles 80
        p = d / f"m{version}_{gs}.bin"
        write_model(p, c.as_version(version, gs), seed=3)
        paths[(version, gs)] = p
    return paths


@pytest.mark.parametrize("key", [(1, 0), (2, 16), (2, 8)])
def test_block_prefill_equals_token_by_token(small_models, key):
    model = Model(small_models[key], threads=2)
    ids = np.random.default_rng(0).integers(0, 97, 50)
    block = model.logits(ids)
    session = model.session(len(ids))
    stepwise = np.array([session.feed([t]).copy() for t in ids])
    np.testing.assert_allclose(block, stepwise, rtol=1e-5, atol=1e-6)


def test_file_truncated_while_mapped_is_one_line(tmp_path):
    """A model file cut short while `qllama run` has it mapped (another process rewrote
    it between two chat turns): one line on stderr and exit status 1, not a bus error
    and a core dump; and the handler is gone once main() returns."""
    import resource
    import signal
    path = tmp_path / "m.bin"
    shutil.copyfile(data("stories260K.bin"), path)
    p = subprocess.Popen([sys.executable, "-m", "qllama", "run", str(path), "-z",
                          str(data("tok512.bin")), "-m", "chat", "-n", "300", "-s", "1",
                          "--threads", "2"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        p.stdin.write("Once upon a time\n")
        p.stdin.flush()
        reply = p.stdout.readline()  # the first answer: every weight page has been read
        assert reply.startswith("Assistant: ")
        os.truncate(path, 256)
        out, err = p.communicate("and then?\n", timeout=60)
    finally:
        p.kill()
    assert p.returncode == 1, err
    assert err.splitlines() == [
        "qllama: error: bus error reading a memory-mapped file: was the model file "
        "truncated or rewritten while in use?"]

    # after main() returns, SIGBUS is the default again (the process dies of it)
    shutil.copyfile(data("stories260K.bin"), path)
    script = ("import os, sys\n"
              "from qllama.cli import main\n"
              "from qllama.model import Model\n"
              "assert main(['info', sys.argv[1]]) == 0\n"
              "m = Model(sys.argv[1], threads=1)\n"
              "os.truncate(sys.argv[1], 256)\n"
              "m.logits([1, 2, 3])\n")
    no_core = lambda: resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # noqa: E731
    p = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                       text=True, timeout=60, preexec_fn=no_core)
    assert p.returncode == -signal.SIGBUS, p.stderr


@pytest.mark.parametrize("key", [(1, 0), (2, 16), (2, 8)])
def test_one_thread_equals_two(small_models, key):
    ids = np.random.default_rng(1).integers(0, 97, 40)
    one = Model(small_models[key], threads=1).logits(ids)
    two = Model(small_models[key], threads=2).logits(ids)
    assert np.array_equal(one, two)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_forward_matches_float64_reference(tmp_path, data):
    """Random shapes (GQA, separate classifier, fp32 and Q8_0 of several group sizes)."""
    n_kv = data.draw(st.sampled_from([1, 2, 4]))
    n_heads = n_kv * data.draw(st.sampled_from([1, 2]))
    head_size = data.draw(st.sampled_from([2, 4, 8, 16, 32]))
    dim = n_heads * head_size
    hidden = data.draw(st.integers(1, 12)) * 4
    version = data.draw(st.sampled_from([1, 2]))
    c = Config(version, dim, hidden, data.draw(st.integers(1, 3)), n_heads, n_kv,
               data.draw(st.integers(3, 70)), 48, data.draw(st.booleans()))
    if version == 2:
        sizes = [g for g in (1, 2, 4, 8, 16, 32, 64) if all(
            n % g == 0 for n in (dim * dim, c.kv_dim * dim, hidden * dim, c.vocab_size * dim))]
        c = c.as_version(2, data.draw(st.sampled_from(sizes)))
    path = tmp_path / f"m{data.draw(st.integers(0, 10**9))}.bin"
    write_model(path, c, seed=data.draw(st.integers(0, 1000)))
    # up to 40 tokens: prompts longer than one 32-token prefill block
    ids = data.draw(st.lists(st.integers(0, c.vocab_size - 1), min_size=1, max_size=40))
    model = Model(path, threads=data.draw(st.sampled_from([1, 2])), kv="f32")
    got = model.logits(ids)
    ref = reference_forward(ModelFile(path), ids)
    tol = 1e-4 if version == 1 else Q80_VS_REFERENCE
    assert rel_error(got, ref) <= tol


@pytest.mark.parametrize("version,gs", [(1, 0), (2, 64), (2, 32)])
def test_default_group_size_over_two_prefill_blocks(tmp_path, version, gs):
    """Group size 64 (the AVX2 kernel's usual case), GQA, a separate classifier with
    rows % 4 != 0, and 80 tokens: two prefill blocks, against float64 numpy."""
    path = tmp_path / "m.bin"
    write_model(path, Config(version, 128, 192, 2, 4, 2, 70, 96, False, gs), seed=11)
    ids = list(np.random.default_rng(2).integers(0, 70, 80))
    assert PREFILL_BLOCK < len(ids) <= 2 * PREFILL_BLOCK
    model = Model(path, threads=2, kv="f32")
    tol = 1e-4 if version == 1 else Q80_VS_REFERENCE
    assert rel_error(model.logits(ids), reference_forward(model.file, ids)) <= tol


def test_long_prompt_runs_the_classifier_once(tmp_path):
    """A prompt of three prefill blocks: the blocks before the last fill the cache
    without the classifier, and the last prediction equals that of the run that takes
    every row's logits, bit for bit; the cache they leave is the same too."""
    path = tmp_path / "m.bin"
    write_model(path, Config(2, 64, 96, 2, 4, 4, 50, 256, True, 32), seed=5)
    ids = [int(i) for i in np.random.default_rng(4).integers(0, 50, 2 * PREFILL_BLOCK + 9)]
    model = Model(path, threads=2)
    every = model.logits(ids)
    s = model.session(len(ids) + 1)
    assert np.array_equal(s.feed(ids), every[-1])
    t = model.session(len(ids) + 1)
    t.feed(ids, all_logits=True)
    assert np.array_equal(s.feed([7]), t.feed([7]))
    with pytest.raises(ValueError, match=r"\(0, vocab\)"):
        model.session(8).engine.forward(np.array([1, 2, 3], np.int32), 0,
                                        np.empty((2, 50), np.float32))


def test_thread_counts_openmp_cannot_make_are_refused(small_models):
    """libgomp aborts on -1 (2^32 - 1 threads) and crashes on 100000: a ValueError."""
    from qllama._kernels.engine import Kernels
    session = Model(small_models[(1, 0)], threads=1).session(8)
    for bad in (0, -1, 100_000):
        with pytest.raises(ValueError, match="outside 1..1024"):
            session.engine.threads = bad
        with pytest.raises(ValueError, match="outside 1..1024"):
            Kernels("scalar").matmul(np.ones((4, 8), np.float32), np.ones((1, 8), np.float32), bad)
    session.engine.threads = 2
    assert session.engine.threads == 2


def test_blocks_longer_than_the_cache_are_cut_to_it(small_models):
    """max_block beyond the capacity could never run; taken as given, 2^62 + 1 made
    every buffer's size wrap to one token's while forward() wrote 16 tokens."""
    from qllama._kernels.engine import State
    model = Model(small_models[(1, 0)], threads=1)
    ids = np.arange(3, 19, dtype=np.int32)
    outs = []
    for max_block in (2 ** 62 + 1, 16):
        state = State(model.weights, 16, max_block)
        assert state.max_block == 16
        out = np.empty((16, 97), np.float32)
        state.forward(ids, 0, out)
        outs.append(out)
    assert np.array_equal(*outs)
