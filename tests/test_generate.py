"""`qllama run` and the Python API on the real stories260K model, run.c's outputs as
the reference; bad input gives one line on stderr and exit 1."""
import gc
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import qllama
import qllama.model
from qllama.cli import main
from qllama.conversion.llama2c import quantize_file
from qllama.formats.llama2c import Config
from qllama.generation import token_logprob

from conftest import ROOT, data, golden
from makers import with_value
from reference import write_model

STORY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
SAMPLED = "Once upon a time, there was a little boy named Timmy."


def run_cli(*args, stdin=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "qllama", "run", *map(str, args)],
                          capture_output=True, text=True, input=stdin, env=env, timeout=120)


@pytest.fixture(scope="module")
def our_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "stories260K.q80.bin"
    quantize_file(str(data("stories260K.bin")), str(out))
    return out


def test_run_prints_run_c_story_fp32_and_our_int8(our_int8):
    tok = data("tok512.bin")
    for model in (data("stories260K.bin"), our_int8):
        r = run_cli(model, "-z", tok, "-t", "0", "-n", "128")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(STORY)
        assert "tok/s" in r.stderr and "peak RSS" in r.stderr


def test_run_sampled_story_and_prompt():
    tok = data("tok512.bin")
    r = run_cli(data("stories260K.bin"), "-z", tok, "-t", "1", "-p", "0.9", "-s", "133742")
    assert r.returncode == 0 and r.stdout.startswith(SAMPLED)
    r = run_cli(data("stories260K.bin"), "-z", tok, "-t", "0", "-n", "64", "-i", "Lily and Tom")
    assert r.returncode == 0 and r.stdout.startswith("Lily and Tom were playing in the park.")


def test_api_token_ids_match_run_c_with_text_prompt(our_int8):
    d = json.loads(golden("tokens.json").read_text())["stories260K"]
    for path, key in ((data("stories260K.bin"), "fp32_v0_greedy_prompt2"),
                      (our_int8, "q80_gs4_greedy_prompt2")):
        model = qllama.load(path, tokenizer=data("tok512.bin"))
        ids = model.encode(d["prompt2"])
        out = ids + list(model.generate_ids(ids, steps=64, temperature=0))
        assert out == d[key]


def test_api_generate_and_logits():
    model = qllama.load(data("stories260K.bin"), tokenizer=data("tok512.bin"), threads=1)
    text = "".join(model.generate("Once upon a time", steps=40, temperature=0))
    assert text.startswith(", there was a little girl named Lily")
    ids = model.encode("Once upon a time")
    logits = model.logits(ids)
    assert logits.shape == (len(ids), 512)
    assert model.decode(ids) == "Once upon a time"


def test_api_steps_bound_a_session_too():
    """steps counts this call's positions, prompt included, with a session as without
    (it was ignored with one, and generation ran until the session was full)."""
    model = qllama.load(data("stories260K.bin"), tokenizer=data("tok512.bin"), threads=1)
    s = model.session(100)
    assert len(list(model.generate_ids([1, 403], steps=10, temperature=0, session=s))) == 9
    assert s.pos == 10  # the last one is sampled, not run
    rest = list(model.generate_ids([403], temperature=0, session=s))
    assert len(rest) == 100 - 11 + 1 and s.pos == 100  # stories260K never says EOS
    assert list(model.generate_ids([1, 403, 404], steps=2, temperature=0)) == []


def test_api_refusals_are_usage_errors():
    model = qllama.load(data("stories260K.bin"), tokenizer=data("tok512.bin"), threads=1)
    for call in (lambda: model.session(-1), lambda: model.session(2.5),
                 lambda: model.generate_ids([1], steps=8.0), lambda: model.generate_ids([1], steps="8"),
                 lambda: model.generate_ids([1], temperature="0"),
                 lambda: model.generate("x", steps=-1),  # checked before the first piece
                 lambda: model.decode("ab"), lambda: model.decode([1.5]),
                 lambda: qllama.load(data("stories260K.bin"), threads=1.5)):
        with pytest.raises(qllama.UsageError):
            call()
    with pytest.raises(qllama.TokenizerError, match="a str or bytes, got NoneType"):
        model.encode(None)
    s = model.session(8)
    s._running.acquire()  # as while another thread feeds it
    with pytest.raises(qllama.UsageError, match="being fed on another thread"):
        s.feed([1])
    s._running.release()
    assert s.feed([1]).shape == (512,)
    assert model.decode([]) == "" and model.decode(np.array([403, 404])) == model.decode([403, 404])
    as_bytes = qllama.load(data("stories260K.bin"), tokenizer=bytes(data("tok512.bin")), threads=1)
    assert as_bytes.encode("Once") == model.encode("Once")
    assert repr(model).endswith("dim 64, 5 layers, vocab 512, seq_len 512; kernels "
                                f"{model.variant}, 1 thread(s)>")
    model.close()
    assert "closed" in repr(model)
    for call in (lambda: model.session(), lambda: model.logits([1]),
                 lambda: model.generate_ids([1], steps=4)):
        with pytest.raises(qllama.UsageError, match="the model is closed"):
            call()


def test_close_with_a_session_alive_unmaps_when_it_goes(tmp_path):
    """close() cannot unmap under a live session; the map then goes with the session
    (the model kept it until it was closed again or deleted)."""
    path = tmp_path / "m.bin"
    path.write_bytes(data("stories260K.bin").read_bytes())

    def mapped():
        with open("/proc/self/maps") as f:
            return sum(str(path) in line for line in f)

    model = qllama.load(path, tokenizer=data("tok512.bin"), threads=1)
    s = model.session(8)
    s.feed([1])
    model.close()
    assert mapped() == 1 and s.feed([403]).shape == (512,)  # the session still works
    del s
    gc.collect()
    assert mapped() == 0


def test_chat_reads_turns_from_a_pipe():
    # stories260K never says EOS, so its first answer runs until the context is full
    r = run_cli(data("stories260K.bin"), "-z", data("tok512.bin"), "-m", "chat", "-t", "0",
                "-y", "be brief", "-n", "120", stdin="Hello\nTell me a story\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Assistant: ") and "context full" in r.stderr


def test_chat_turns_keep_the_kv_cache():
    """A second turn continues the cache: its logits equal one pass over both turns."""
    from qllama.chat import chat_prompt
    model = qllama.load(data("stories260K.bin"), tokenizer=data("tok512.bin"), threads=1)
    session = model.session(200)
    sampler = model.sampler(0.0, 0.9, 1)
    turn1 = model.encode(chat_prompt("Hello", "be brief"))
    reply = list(itertools.islice(model.generate_ids(turn1, session=session, sampler=sampler,
                                                     temperature=0, top_p=0.9), 20))
    assert session.pos == len(turn1) + 19  # the 20th token is not fed yet
    turn2 = model.encode(chat_prompt("Again"))
    session2 = model.session(200)
    session2.feed(turn1 + reply[:19])
    np.testing.assert_allclose(session.feed(turn2[:5]), session2.feed(turn2[:5]), rtol=1e-6)


def test_streamed_text_joins_byte_tokens_into_whole_characters():
    """Llama 2 spells an emoji as four byte tokens: the stream prints it once, whole."""
    from qllama.tokenizer import load_tokenizer

    class Echo:  # a model stand-in: only the tokenizer matters here
        tokenizer = load_tokenizer(data("tokenizer.model"))
        text_stream = qllama.model.Model.text_stream

    ids = Echo.tokenizer.encode("Tom said é😀 and 𝄞!")
    stream = Echo().text_stream(ids[:1])
    pieces = [stream.feed(i) for i in ids[1:]] + [stream.flush()]
    assert "".join(pieces) == "Tom said é😀 and 𝄞!"
    assert "😀" in pieces and "\ufffd" not in "".join(pieces)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "tiny.bin"
    write_model(path, Config(1, 32, 64, 1, 4, 4, 512, 16, True))
    return path


@pytest.mark.parametrize("args,message", [
    (["-t", "-1"], "temperature"),
    (["-p", "1.5"], "top-p"),
    (["-p", "-0.1"], "top-p"),
    (["-n", "-3"], "steps"),
    (["-i", "Once upon a time there was a little girl who loved to play in the park"],
     "seq_len"),
    (["-n", "2", "-i", "Once upon a time"], "fewer than the prompt's"),
])
def test_bad_arguments(tiny, args, message):
    r = run_cli(tiny, "-z", data("tok512.bin"), *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_tokenizer_vocab_mismatch_and_missing(tiny, tmp_path, monkeypatch):
    r = run_cli(tiny, "-z", data("tokenizer.bin"))
    assert r.returncode == 1 and "32000" in r.stderr and "512" in r.stderr
    assert "Traceback" not in r.stderr
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "alone.bin"
    copy.write_bytes(tiny.read_bytes())
    r = run_cli(copy)
    assert r.returncode == 1 and "tokenizer" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_run_in_process_reports_errors(tiny, capsys):
    assert main(["run", str(tiny), "-z", str(data("tok512.bin")), "-t", "-2"]) == 1
    assert "temperature" in capsys.readouterr().err


# --- hostile input: one line on stderr, exit 1, no traceback, no hang -------------

def nan_model(tmp_path):
    """A valid file whose weights hold NaN: the engine computes NaN logits."""
    path = tmp_path / "nan.bin"
    write_model(path, Config(1, 32, 64, 1, 4, 4, 512, 16, True))
    raw = bytearray(path.read_bytes())
    raw[256 + 4 * 40:256 + 4 * 41] = np.float32(np.nan).tobytes()  # a norm weight
    path.write_bytes(bytes(raw))
    return path


def nan_scales(tmp_path):
    """A Q8_0 file with one NaN scale in a matrix: int8 activations would hide it
    (runq.c's max leaves NaN out) but for the NaN scale their groups keep."""
    quantize_file(str(data("stories260K.bin")), str(tmp_path / "m.q80.bin"))
    return with_value(tmp_path / "m.q80.bin", tmp_path / "nan.q80.bin", "wq", 0, np.nan,
                      scale=True)


@pytest.mark.parametrize("case", ["nan weights", "nan scales", "huge seed", "huge threads",
                                  "fifo"])
def test_hostile_run_inputs(tiny, tmp_path, case):
    tok = data("tok512.bin")
    args = {
        "nan weights": [nan_model(tmp_path), "-z", tok, "-n", "5"],
        "nan scales": [nan_scales(tmp_path), "-z", tok, "-n", "5", "-t", "0"],
        "huge seed": [tiny, "-z", tok, "-s", str(2**64)],
        "huge threads": [tiny, "-z", tok, "--threads", "3000000000"],
        "fifo": [tmp_path / "fifo", "-z", tok],
    }[case]
    if case == "fifo":
        os.mkfifo(tmp_path / "fifo")
    r = run_cli(*args)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    if case.startswith("nan"):
        assert "computed NaN or infinite logits after 1 tokens" in r.stderr, r.stderr


def test_tiny_temperature_is_the_greedy_limit():
    """logits / 1e-45 overflow to inf: the sampler takes the argmax instead of NaN."""
    r = run_cli(data("stories260K.bin"), "-z", data("tok512.bin"), "-t", "1e-45", "-n", "40")
    assert r.returncode == 0 and r.stdout.startswith(STORY[:40])


def test_api_rejects_bad_token_ids(tiny):
    model = qllama.load(tiny)
    for bad in ([], [512], [-1], [1.5], [2**32 + 1], [[1, 2]]):
        with pytest.raises(qllama.UsageError):
            model.logits(bad)
    assert np.array_equal(model.logits([1.0, 7.0]), model.logits([1, 7]))


def test_closed_pipe_ends_quietly():
    """`qllama run ... | head`: the reader goes away, and run stops without a word
    (here it is gone before the first write, so the write surely fails)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "qllama", "run", str(data("stories260K.bin")),
                            "-z", str(data("tok512.bin")), "-n", "16"],
                           stdout=w, stderr=subprocess.PIPE, env=env, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 128 + 13 and p.stderr == b""


def test_closed_pipe_under_rich_ends_quietly_too():
    """info prints through rich, which would exit 1 on its own."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "qllama", "info", str(data("stories260K.bin"))],
                           stdout=w, stderr=subprocess.PIPE, env=env, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 128 + 13 and p.stderr == b""


def test_unknown_option_shows_the_commands_usage(tiny, capsys):
    r = run_cli(tiny, "--no-such-flag")
    assert r.returncode == 2 and "qllama run: error: unrecognized arguments: --no-such-flag" \
        in r.stderr and "usage: qllama run" in r.stderr
    for argv, usage in ((["tokenizer", "encode", str(data("tok512.bin")), "hi", "--x"],
                         "usage: qllama tokenizer encode"),  # a command's own action
                        (["--x", "info", "--cpu"], "usage: qllama [-h]")):  # before the command
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert err.startswith(usage) and "unrecognized arguments: --x" in err, err


def test_options_between_positionals(capsys):
    """`tokenizer encode FILE --json TEXT` called TEXT unrecognized (argparse had given
    the optional TEXT its empty value before --json); decode's ids around an option too."""
    tok = str(data("tok512.bin"))
    assert main(["tokenizer", "encode", tok, "--json", "Hello there"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Hello there"
    assert main(["tokenizer", "decode", tok, "1", "--json", "346", "306"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == [1, 346, 306]
    with pytest.raises(SystemExit):  # still one positional too many
        main(["tokenizer", "encode", tok, "--json", "Hello", "there"])
    err = capsys.readouterr().err
    assert err.startswith("usage: qllama tokenizer encode") and "arguments: there" in err
    # an option among the command's words stays an error (it was dropped once)
    for argv in (["tokenizer", "--json", "encode", tok, "hi"],
                 ["tokenizer", "-x", "export", str(data("tok512.model")), "-o",
                  os.devnull + ".x"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr()
        assert out.out == "" and f"unrecognized arguments: {argv[1]}" in out.err


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 40), elements=st.integers(-20, 20).map(float)),
       st.integers(0, 45), st.data())
def test_token_logprob_is_log_softmax_and_its_top_in_order(logits, top, data):
    token = data.draw(st.integers(0, len(logits) - 1))
    e = token_logprob(logits, token, top)
    x = logits.astype(np.float64)
    want = x - x.max() - np.log(np.exp(x - x.max()).sum())
    assert e.token == token and np.isclose(e.logprob, want[token], rtol=1e-6, atol=1e-6)
    # the likeliest first, the lower id first among equals (integer logits: many ties)
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))[:top]
    assert [i for i, _ in e.top] == order
    assert np.allclose([lp for _, lp in e.top], want[order], rtol=1e-6, atol=1e-6)
