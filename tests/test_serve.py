"""`qllama serve` as a client sees it: real server processes on 127.0.0.1 (ephemeral
ports), driven by the official `openai` client (raw HTTP where the client cannot send
the fault). stories260K + tok512.model where text matters (compared with `qllama run`),
a tiny random model where it does not. Every client call has a timeout, every load
loop a bound, and every server is killed in teardown."""
import asyncio
import itertools
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import types

import httpx
import numpy as np
import openai
import pytest

import qllama
from qllama.chat import conversation_ids, reply_text, turn_ids
from qllama.cli.serve import parse_size
from qllama.generation import Usage
from qllama.serving.scheduler import Event
from qllama.serving.server import create_app
from qllama.synth import write_random_model

from conftest import ROOT, data
from makers import with_value, write_tokenizer_bin

ENV = dict(os.environ, PYTHONPATH=str(ROOT))
TIMEOUT = 30  # seconds, any one client call
KEY = "sk-qllama-test-4f9c"


class Server:
    """`qllama serve MODEL ...` on 127.0.0.1 port 0; the port from its ready line."""

    def __init__(self, model, tokenizer, *args, key=None, tmp=None):
        self.key = key
        self.log = open(tmp / f"serve-{time.monotonic_ns()}.err", "w+")
        tok = ["-z", str(tokenizer)] if tokenizer else []  # a GGUF file carries its own
        cmd = [sys.executable, "-m", "qllama", "serve", str(model), *tok,
               "--port", "0", "--threads", "1", *map(str, args)]
        env = dict(ENV, QLLAMA_API_KEY=key or "")  # the key from the environment
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env)
        line = b""
        deadline = time.monotonic() + 60
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.kill()
                pytest.fail(f"no ready line within 60 s: {self.stderr()}")
            chunk = os.read(self.proc.stdout.fileno(), 1)
            if not chunk:
                self.kill()
                pytest.fail(f"the server exited before it was ready: {self.stderr()}")
            line += chunk
        self.ready = line.decode()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", self.ready)
        assert m, self.ready
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.key or "unused",
                             timeout=TIMEOUT, max_retries=0, **kw)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.key or "unused",
                                  timeout=TIMEOUT, max_retries=0)

    def post(self, path, content, headers=None) -> httpx.Response:
        h = {"content-type": "application/json"}
        if self.key:
            h["authorization"] = f"Bearer {self.key}"
        return httpx.post(self.url + path, content=content, headers={**h, **(headers or {})},
                          timeout=TIMEOUT)

    def metrics(self) -> dict:
        text = httpx.get(self.url + "/metrics", timeout=TIMEOUT).text
        return {name: float(v) for name, v in re.findall(r"^qllama_(\w+) (\S+)$", text, re.M)}

    def wait_metrics(self, pred, seconds=10.0) -> dict:
        deadline = time.monotonic() + seconds
        while True:
            m = self.metrics()
            if pred(m) or time.monotonic() > deadline:
                return m
            time.sleep(0.02)

    def stderr(self, tail: int | None = 2000) -> str:
        self.log.seek(0)
        return self.log.read()[-tail if tail else 0:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.log.close()


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    model, tok = data("stories260K.bin"), data("tok512.model")
    server = Server(model, tok, tmp=tmp_path_factory.mktemp("s"))
    server.model = qllama.load(model, tokenizer=tok, threads=1)
    server.paths = (model, tok)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model (seq_len 128) with an API key and a KV pool of 4 pages."""
    d = tmp_path_factory.mktemp("tiny")
    write_random_model(d / "tiny.bin", "tiny")
    write_tokenizer_bin(d / "tok.bin", 512)
    server = Server(d / "tiny.bin", d / "tok.bin", "--kv-memory", "16K", key=KEY, tmp=d)
    server.tokenizer = d / "tok.bin"
    assert "tiny" in server.ready
    yield server
    server.kill()


def run_cli(*args, stdin=None) -> str:
    r = subprocess.run([sys.executable, "-m", "qllama", "run", *map(str, args)], input=stdin,
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def complete(client, prompt, **kw):
    return client.completions.create(model="stories260K", prompt=prompt, **kw)


def stream_text(chunks) -> tuple[str, str]:
    """(text, finish_reason) of a completions or chat stream."""
    text, reason = [], None
    for c in chunks:
        for choice in c.choices:
            text.append(getattr(choice, "text", None) or getattr(getattr(choice, "delta", None),
                                                                  "content", None) or "")
            reason = choice.finish_reason or reason
    return "".join(text), reason


# -- endpoints -------------------------------------------------------------------------
def test_ready_line_models_health_metrics(stories):
    assert "stories260K" in stories.ready
    client = stories.client()
    assert [m.id for m in client.models.list().data] == ["stories260K"]
    assert client.models.retrieve("stories260K").owned_by == "qllama"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    assert httpx.get(stories.url + "/health", timeout=TIMEOUT).json()["status"] == "ok"
    r = httpx.get(stories.url + "/metrics", timeout=TIMEOUT)
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE qllama_kv_pages_used gauge" in r.text
    m = stories.metrics()
    assert m["kv_pages_total"] > 0 and m["running_sessions"] == 0
    for name in ("queued_sessions", "tokens_generated_total", "engine_step_seconds_total",
                 "engine_last_step_seconds"):
        assert name in m


def test_greedy_completion_equals_qllama_run(stories):
    prompt, steps = "Once upon a time", 60
    n_prompt = len(stories.model.encode(prompt))
    expected = run_cli(stories.paths[0], "-z", stories.paths[1], "-t", "0", "-n", steps,
                       "-i", prompt, "--threads", "1")
    assert expected.startswith(prompt) and expected.endswith("\n")
    expected = expected[len(prompt):-1]
    client = stories.client()
    r = complete(client, prompt, max_tokens=steps - n_prompt + 1, temperature=0)
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "length"
    assert r.object == "text_completion" and r.model == "stories260K"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, steps - n_prompt + 1)
    chunks = complete(client, prompt, max_tokens=steps - n_prompt + 1, temperature=0,
                      stream=True, stream_options={"include_usage": True})
    chunks = list(chunks)
    assert stream_text(chunks) == (expected, "length")
    assert chunks[-1].usage.total_tokens == steps + 1 and len(chunks) > 10
    # the default max_tokens is OpenAI's 16
    assert complete(client, prompt, temperature=0).usage.completion_tokens == 16


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def test_logprobs_are_the_models_and_streams_carry_the_same(stories):
    """A completion's token_logprobs and top_logprobs are log-softmax of the logits its
    tokens were sampled from (Model.logits over prompt + answer), and a stream's chunks
    carry the same entries, in order, as the whole answer; a chat's likewise."""
    model = stories.model
    prompt = "The cat"
    ids = model.encode(prompt)
    client = stories.client()
    kw = dict(max_tokens=24, temperature=1.0, top_p=1, seed=77, logprobs=3)
    whole = complete(client, prompt, **kw).choices[0]
    lp = whole.logprobs
    n = len(lp.tokens)
    assert n == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 24
    # the same seed samples the same tokens in the Python API (as `qllama run`)
    gen = list(model.generate_ids(ids, len(ids) + n - 1, temperature=1.0, top_p=1, seed=77))
    surfaces = model.tokenizer.surfaces
    assert lp.tokens == [surfaces[t].decode() for t in gen]
    assert "".join(lp.tokens) == whole.text
    want = _log_softmax(model.logits(ids + gen)[len(ids) - 1:-1])
    assert np.allclose(lp.token_logprobs, want[np.arange(n), gen], rtol=1e-4, atol=1e-4)
    for row, top, token, t in zip(want, lp.top_logprobs, lp.tokens, gen):
        best = np.argsort(-row, kind="stable")[:3]
        # the likeliest 3, then the sampled token's when it is not one (OpenAI's k + 1)
        assert list(top) == [surfaces[i].decode() for i in best] + (
            [] if t in best else [token])
        assert np.allclose([top[surfaces[i].decode()] for i in best], row[best],
                           rtol=1e-4, atol=1e-4)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(n)]
    streamed = [c.choices[0].logprobs for c in complete(client, prompt, stream=True, **kw)
                if c.choices and c.choices[0].logprobs]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert sum((getattr(s, key) for s in streamed), []) == getattr(lp, key)
    # a chat: logprobs true, top_logprobs 2
    messages = [{"role": "user", "content": "Tell me a story."}]
    ckw = dict(model="stories260K", messages=messages, max_tokens=12, seed=5, logprobs=True,
               top_logprobs=2)
    chat = client.chat.completions.create(**ckw).choices[0]
    content = chat.logprobs.content
    assert len(content) == 12 and bytes(sum((c.bytes for c in content), [])).decode() == \
        chat.message.content  # the first word without its space, as the content has it
    for c in content:
        assert bytes(c.bytes) == c.token.encode() and len(c.top_logprobs) == 2
        assert c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob >= -1e30
        assert c.logprob <= c.top_logprobs[0].logprob + 1e-9
    chunks = client.chat.completions.create(stream=True, **ckw)
    streamed = sum((c.choices[0].logprobs.content for c in chunks
                    if c.choices and c.choices[0].logprobs), [])
    assert [c.model_dump() for c in streamed] == [c.model_dump() for c in content]
    # without logprobs, none; top_logprobs alone is refused
    assert complete(client, prompt, max_tokens=2).choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="stories260K", messages=messages,
                                       top_logprobs=2)
    assert e.value.body["param"] == "top_logprobs"


def test_echo_returns_the_prompt_with_its_tokens_logprobs(stories):
    """As lm-evaluation-harness scores a text: token ids, echo, logprobs, max_tokens 1.
    The prompt's tokens (the first with none) then the answer's, text_offset into the
    text as returned."""
    model = stories.model
    text = "Once upon a time, there was a cat"
    ids = model.encode(text)
    client = stories.client()
    r = complete(client, ids, max_tokens=1, temperature=0, logprobs=2, echo=True).choices[0]
    lp = r.logprobs
    assert r.text.startswith(text) and len(r.text) > len(text)
    assert len(lp.tokens) == len(ids) + 1 and lp.tokens[0] == "<s>"
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = _log_softmax(model.logits(ids))
    assert np.allclose(lp.token_logprobs[1:len(ids)], want[np.arange(len(ids) - 1), ids[1:]],
                       rtol=1e-4, atol=1e-4)
    for token, top in zip(lp.tokens[1:], lp.top_logprobs[1:]):
        assert len(top) in (2, 3) and token in top
    assert lp.text_offset[:2] == [0, 0]  # BOS has no text; " Once" loses its space
    for token, offset in zip(lp.tokens[2:], lp.text_offset[2:]):
        assert r.text[offset:offset + len(token)] == token
    # the same from a string prompt, and in a stream
    assert complete(client, text, max_tokens=1, temperature=0, logprobs=2,
                    echo=True).choices[0].logprobs == lp
    chunks = list(complete(client, text, max_tokens=3, temperature=0, echo=True, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).startswith(text + r.text[
        len(text):])
    plain = complete(client, text, max_tokens=3, temperature=0, echo=True).choices[0]
    assert plain.logprobs is None and plain.text == "".join(
        c.choices[0].text for c in chunks if c.choices)
    empty = complete(client, "", max_tokens=2, logprobs=1, echo=True).choices[0].logprobs
    assert empty.tokens[0] == "<s>" and empty.text_offset[:2] == [0, 0]  # BOS alone, echoed
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="stories260K", extra_body={"echo": True},
                                       messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "echo"


def test_lm_eval_scores_a_text_whose_next_token_ends_it(stories):
    """lm-evaluation-harness's local-completions payload, on a text the model would end
    there: the answer's one token is a stop id, and its entry is still the last, so that
    token_logprobs[ctxlen:-1] are the continuation's (they had lost the last one)."""
    model = stories.model
    ids = model.encode("Once upon a time")
    full = ids + list(model.generate_ids(ids, model.config.seq_len, temperature=0))
    r = stories.client().completions.create(model="stories260K", prompt=[full], temperature=0,
                                            max_tokens=1, logprobs=1, seed=1234, echo=True)
    lp = r.choices[0].logprobs
    assert r.choices[0].finish_reason == "stop" and len(lp.token_logprobs) == len(full) + 1
    assert lp.tokens[-1] in ("<s>", "</s>")  # run.c stops at either; this story at BOS
    want = _log_softmax(model.logits(full))
    ctxlen = len(full) - 3
    got = sum(lp.token_logprobs[ctxlen:-1])
    assert np.isclose(got, sum(want[k - 1, full[k]] for k in range(ctxlen, len(full))),
                      rtol=1e-5, atol=1e-5)
    assert all(t == max(top.values())  # the greedy text: lm-eval's check holds
               for t, top in zip(lp.token_logprobs[ctxlen:-1], lp.top_logprobs[ctxlen:-1]))


def test_an_echo_with_max_tokens_0_scores_a_prompt_that_fills_the_context(stories):
    """echo, logprobs, max_tokens 0 (the other scorers' idiom): the prompt's logprobs and
    nothing generated, even for a prompt as long as the context; without echo, 0 is
    refused as before."""
    model = stories.model
    ids = model.encode("Once upon a time")
    full = (ids + list(model.generate_ids(ids, model.config.seq_len, temperature=0.8,
                                          seed=3)) * 3)[:model.config.seq_len]
    client = stories.client()
    for prompt in (full, full[:40]):
        r = complete(client, prompt, max_tokens=0, logprobs=0, echo=True)
        lp = r.choices[0].logprobs
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 0
        assert len(lp.token_logprobs) == len(prompt) and lp.token_logprobs[0] is None
        want = _log_softmax(model.logits(prompt))
        assert np.allclose(lp.token_logprobs[1:], want[np.arange(len(prompt) - 1), prompt[1:]],
                           rtol=1e-4, atol=1e-4)
    r = complete(client, "Once upon a time", max_tokens=0, echo=True)
    assert r.choices[0].text == "Once upon a time" and r.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, "Once upon a time", max_tokens=0)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:  # an answer needs a position more
        complete(client, full, max_tokens=1, echo=True)
    assert e.value.body["code"] == "context_length_exceeded"


def test_an_echo_of_ids_that_end_inside_a_character_is_the_texts_decode(stories):
    """Token ids cut after the first byte piece of a character: echo and answer are
    decode(prompt + answer), the dangling bytes once (they had come out twice)."""
    model = stories.model
    ids = model.encode("Once upon a time \u65e5")[:-1]
    gen = list(model.generate_ids(ids, len(ids) + 2, temperature=0))
    r = complete(stories.client(), ids, max_tokens=3, temperature=0, echo=True)
    assert r.choices[0].text == model.decode(ids + gen)


def test_scoring_a_prompt_of_a_model_holding_nan_is_one_error(stories, tmp_path):
    """echo, logprobs, max_tokens 0 samples nothing, so the sampler's check of the
    logits never runs: the echo's own check says what the file holds."""
    nan = with_value(data("stories260K.bin"), tmp_path / "nan.bin", "attention_norm", 0,
                     np.nan)
    server = Server(nan, stories.paths[1], tmp=tmp_path)
    try:
        for stream in (False, True):
            r = httpx.post(server.url + "/v1/completions", timeout=TIMEOUT, json={
                "prompt": "Once upon", "echo": True, "logprobs": 1, "max_tokens": 0,
                "stream": stream})
            body = r.text
            assert "computed NaN or infinite logits after 1 tokens" in body, body
            assert "NaN," not in body and "Traceback" not in server.stderr()
    finally:
        server.kill()


def test_tokens_a_stop_string_cut_away_have_no_logprobs(stories):
    client = stories.client()
    for stop in (" little", "ir"):
        kw = dict(max_tokens=30, temperature=0, logprobs=2, stop=stop)
        whole = complete(client, "Once upon a time", **kw).choices[0]
        assert whole.finish_reason == "stop" and stop not in whole.text
        tokens = whole.logprobs.tokens
        # each token's text begins within the text; the last may run past the cut
        assert "".join(tokens).startswith(whole.text) and \
            len("".join(tokens[:-1])) < len(whole.text)
        assert whole.logprobs.text_offset == [len("".join(tokens[:i]))
                                              for i in range(len(tokens))]
        streamed = sum((c.choices[0].logprobs.tokens for c in complete(
            client, "Once upon a time", stream=True, **kw)
            if c.choices and c.choices[0].logprobs), [])
        assert streamed == tokens


def test_a_prompt_of_token_ids_is_run_as_given(stories):
    text = "Once upon a time"
    ids = stories.model.encode(text)  # BOS first: ids are taken as they are
    client = stories.client()
    want = complete(client, text, max_tokens=20, temperature=0)
    for prompt in (ids, [ids]):
        r = complete(client, prompt, max_tokens=20, temperature=0)
        assert r.choices[0].text == want.choices[0].text
        assert r.usage.prompt_tokens == len(ids)
    without_bos = complete(client, ids[1:], max_tokens=20, temperature=0)
    assert without_bos.usage.prompt_tokens == len(ids) - 1


def _choices(chunks) -> dict:
    """{index: (text, finish_reason)} of a completions stream's chunks."""
    got = {}
    for c in chunks:
        for choice in c.choices:
            text, reason = got.get(choice.index, ("", None))
            got[choice.index] = (text + choice.text, choice.finish_reason or reason)
    return got


def test_several_prompts_and_n_choices_are_each_a_solo_request(stories):
    """prompt [a, b], n 2, seed s: choice 2i + j is prompt i alone with seed s + j, whole
    and streamed; usage counts each prompt once and every choice's tokens, and each
    prompt runs once."""
    client = stories.client()
    prompts = ["Once upon a time", "The dog"]
    kw = dict(max_tokens=24, temperature=1.0, top_p=0.9)
    solo = [complete(client, p, seed=77 + j, **kw) for p in prompts for j in range(2)]
    want = [(s.choices[0].text, s.choices[0].finish_reason) for s in solo]
    assert want[0] != want[1] and want[2] != want[3]  # a prompt's choices differ
    before = stories.metrics()["prompt_tokens_total"]
    r = complete(client, prompts, n=2, seed=77, **kw)
    assert stories.metrics()["prompt_tokens_total"] - before == r.usage.prompt_tokens
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [(c.text, c.finish_reason) for c in r.choices] == want
    assert r.usage.prompt_tokens == sum(len(stories.model.encode(p)) for p in prompts)
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in solo)
    chunks = list(complete(client, prompts, n=2, seed=77, stream=True,
                           stream_options={"include_usage": True}, **kw))
    assert _choices(chunks) == dict(enumerate(want))
    assert chunks[-1].choices == [] and chunks[-1].usage == r.usage
    # greedy choices of one prompt are alike
    r = complete(client, "Lily", n=3, best_of=3, max_tokens=10, temperature=0)
    assert len({c.text for c in r.choices}) == 1 and len(r.choices) == 3


def test_chat_with_n_choices(stories):
    """Each choice of a streamed chat starts with its role and loses its reply's
    word-start space, as a chat of one choice does; choice j is the seed + j chat."""
    client = stories.client()
    messages = [{"role": "user", "content": "Tell me a story"}]
    kw = dict(model="stories260K", messages=messages, max_tokens=20, temperature=0.9)
    solo = [client.chat.completions.create(seed=5 + j, **kw).choices[0].message.content
            for j in range(2)]
    r = client.chat.completions.create(seed=5, n=2, **kw)
    assert [c.message.content for c in r.choices] == solo and solo[0] != solo[1]
    chunks = list(client.chat.completions.create(seed=5, n=2, stream=True, **kw))
    assert [(c.choices[0].index, c.choices[0].delta.role) for c in chunks[:2]] == \
        [(0, "assistant"), (1, "assistant")]
    texts = ["", ""]
    for c in chunks[2:]:
        texts[c.choices[0].index] += c.choices[0].delta.content or ""
    assert texts == solo


def test_lm_eval_scores_a_batch_of_token_id_prompts(stories):
    """lm-eval's local-completions with a batch size above 1 sends its texts as one list
    of token-id lists: each choice scores its own prompt as the model does."""
    model = stories.model
    ids = [model.encode(t) for t in ("Once upon a time, there was", "The cat sat on the mat")]
    r = stories.client().completions.create(model="stories260K", prompt=ids, temperature=0,
                                            max_tokens=1, logprobs=1, echo=True)
    assert len(r.choices) == 2
    for choice, p in zip(r.choices, ids):
        assert choice.text.startswith(model.decode(p))
        lp = choice.logprobs.token_logprobs
        assert lp[0] is None and len(lp) == len(p) + 1
        want = _log_softmax(model.logits(p))
        assert np.allclose(lp[1:len(p)], [want[k - 1, p[k]] for k in range(1, len(p))],
                           rtol=1e-5, atol=1e-5)


def test_a_client_that_leaves_cancels_every_choice(stories):
    before = stories.metrics()

    async def scene():
        async with stories.async_client() as aclient:
            stream = await aclient.completions.create(
                model="stories260K", prompt="Once upon a time", n=4, max_tokens=300,
                temperature=0, stream=True)
            await stream.__anext__()
            full = await asyncio.to_thread(stories.wait_metrics,
                                           lambda m: m["running_sessions"] == 4, 10)
            await stream.close()
            return full

    full = asyncio.run(scene())
    assert full["running_sessions"] == 4
    m = stories.wait_metrics(lambda m: m["running_sessions"] == 0 and m["kv_pages_used"] == 0, 10)
    assert (m["running_sessions"], m["kv_pages_used"]) == (0, 0)
    assert m["requests_cancelled_total"] == before["requests_cancelled_total"] + 4
    assert m["tokens_generated_total"] - before["tokens_generated_total"] < 4 * 300


def test_special_reads_control_pieces_in_a_completion_prompt_as_run_does(stories, tmp_path):
    prompt, steps = "Once</s> upon<s> a time", 40
    model, tok = stories.paths
    special = stories.model.encode(prompt, special=True)
    assert len(special) < len(stories.model.encode(prompt))
    expected = run_cli(model, "-z", tok, "-t", "0", "-n", steps, "-i", prompt, "--special",
                       "--threads", "1")
    server = Server(model, tok, "--special", tmp=tmp_path)
    try:
        r = complete(server.client(), prompt, max_tokens=steps - len(special) + 1, temperature=0)
    finally:
        server.kill()
    assert r.usage.prompt_tokens == len(special)
    assert expected == prompt + r.choices[0].text + "\n"
    # without it the pieces are text, as `qllama run` reads them
    plain = complete(stories.client(), prompt, max_tokens=1, temperature=0)
    assert plain.usage.prompt_tokens == len(stories.model.encode(prompt))


def test_a_gguf_file_is_served_as_qllama_run_runs_it(tmp_path):
    """stories260K quantized to a GGUF q4_0 file (its vocabulary inside): the server's
    greedy completion is `qllama run`'s."""
    path = tmp_path / "s.gguf"
    subprocess.run([sys.executable, "-m", "qllama", "quantize", str(data("stories260K.bin")),
                    str(path), "--type", "q4_0", "-z", str(data("tok512.model")), "-q"],
                   check=True, env=ENV, timeout=60)
    prompt, steps = "Once upon a time", 40
    expected = run_cli(path, "-t", "0", "-n", steps, "-i", prompt, "--threads", "1")
    server = Server(path, None, tmp=tmp_path)
    try:
        n_prompt = len(qllama.load(path).encode(prompt))
        r = server.client().completions.create(model="s", prompt=prompt, temperature=0,
                                               max_tokens=steps - n_prompt + 1)
        assert prompt + r.choices[0].text + "\n" == expected
    finally:
        server.kill()


def test_seeded_sampling_is_reproducible_and_equals_qllama_run(stories):
    prompt, steps, seed = "The cat", 50, 4242
    n_prompt = len(stories.model.encode(prompt))
    expected = run_cli(stories.paths[0], "-z", stories.paths[1], "-t", "0.8", "-p", "0.9",
                       "-s", seed, "-n", steps, "-i", prompt, "--threads", "1")
    client = stories.client()
    texts = [complete(client, prompt, max_tokens=steps - n_prompt + 1, temperature=0.8,
                      top_p=0.9, seed=seed).choices[0].text for _ in range(2)]
    assert texts[0] == texts[1] == expected[len(prompt):-1]
    other = complete(client, prompt, max_tokens=steps - n_prompt + 1, temperature=0.8,
                     top_p=0.9, seed=seed + 1).choices[0].text
    assert other != texts[0]


def test_any_64_bit_seed_and_top_p_0_read_as_openai_means_them(stories):
    """OpenAI's seed is any int64: a negative one is run.c's generator at its two's
    complement (-1 is random, as llama-server), 0 is reproducible too; top_p 0 keeps
    the likeliest token (run.c's sampler would read 0 as no nucleus at all)."""
    prompt, n = "The cat", 30
    client = stories.client()

    def text(**kw):
        return complete(client, prompt, max_tokens=n, **kw).choices[0].text

    two = 2**64
    assert text(seed=-5, temperature=1.0, top_p=1) == text(seed=two - 5, temperature=1.0,
                                                             top_p=1)
    assert text(seed=0, temperature=1.0, top_p=1) == text(seed=0, temperature=1.0, top_p=1)
    assert complete(client, prompt, max_tokens=n, seed=-1).choices[0].finish_reason
    greedy = text(temperature=0)
    assert text(temperature=1.5, top_p=0, seed=3) == greedy
    assert text(temperature=1.5, top_p=1e-46, seed=3) == greedy  # 0 as a float
    assert text(temperature=1.5, top_p=1, seed=3) != greedy


def test_stream_lines_hold_no_line_ends_besides_their_own():
    from qllama.serving.server import _data
    obj = {"text": "a\u2028b\u2029c\u0085d\u00e9"}
    line = _data(obj)
    assert line.endswith(b"\n\n") and line.count(b"\n") == 2
    assert not any(c in line.decode() for c in "\u2028\u2029\u0085\r")
    assert json.loads(line[6:]) == obj and "\u00e9".encode() in line  # the rest as it is


def test_chat_equals_qllama_run_chat(stories):
    user, system, steps = "Tell me a story", "be brief", 80
    n_prompt = len(turn_ids(stories.model, user, system))
    out = run_cli(stories.paths[0], "-z", stories.paths[1], "-m", "chat", "-t", "0",
                  "-y", system, "-n", steps, "--threads", "1", stdin=user + "\n")
    assert out.startswith("Assistant: ")
    expected = reply_text(out[len("Assistant: "):-1])
    client = stories.client()
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    r = client.chat.completions.create(model="stories260K", messages=messages, temperature=0,
                                       max_tokens=steps - n_prompt + 1)
    assert r.choices[0].message.content == expected and r.choices[0].message.role == "assistant"
    assert r.object == "chat.completion" and r.usage.prompt_tokens == n_prompt
    chunks = list(client.chat.completions.create(
        model="stories260K", messages=messages, temperature=0, max_tokens=steps - n_prompt + 1,
        stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert stream_text(chunks) == (expected, "length")


def test_chat_conversation_is_laid_out_as_run_chat_keeps_it(stories):
    """A second turn's context is run -m chat's cache: turn 1 (BOS, template), the reply's
    tokens, turn 2 (BOS, template); its greedy answer equals the library's from there,
    and it runs from the first turn's KV pages, which the server kept."""
    model, client = stories.model, stories.client()
    system, u1, u2 = "be brief", "Hello", "More"
    first = client.chat.completions.create(
        model="stories260K", temperature=0.8, top_p=0.9, seed=2, max_tokens=30,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": u1}])
    t1 = turn_ids(model, u1, system)
    reply = list(itertools.islice(model.generate_ids(t1, 0, 0.8, 0.9, 2), 30))
    a1 = first.choices[0].message.content
    assert a1 == reply_text(_text_after(model, t1, reply)) and not a1.startswith(" ")
    ids = t1 + reply + turn_ids(model, u2)
    assert conversation_ids(model, [("system", system), ("user", u1), ("assistant", a1),
                                    ("user", u2)]) == ids
    before = stories.metrics()
    second = client.chat.completions.create(
        model="stories260K", temperature=0, max_tokens=20,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": u1},
                  {"role": "assistant", "content": a1}, {"role": "user", "content": u2}])
    assert second.usage.prompt_tokens == len(ids)
    # the first turn ran its prompt and its reply but the last token (or, ended, all)
    fed, page = len(t1) + len(reply) - (first.choices[0].finish_reason == "length"), 16
    cached = stories.metrics()["prompt_tokens_cached_total"] - before["prompt_tokens_cached_total"]
    assert cached == min(fed // page, (len(ids) - 1) // page) * page >= 2 * page
    assert second.usage.prompt_tokens_details.cached_tokens == cached
    expected = list(itertools.islice(model.generate_ids(ids, 0, 0.0), 20))
    assert second.choices[0].message.content == reply_text(_text_after(model, ids, expected))


def _text_after(model, context, tokens) -> str:
    stream = model.text_stream(context)
    return "".join(stream.feed(t) for t in tokens) + stream.flush()


def test_stop_strings(stories):
    client = stories.client()
    full = complete(client, "Once upon a time", max_tokens=40, temperature=0).choices[0].text
    cut = full.index("girl")
    r = complete(client, "Once upon a time", max_tokens=40, temperature=0, stop=["girl", "zzz"])
    assert r.choices[0].text == full[:cut] and r.choices[0].finish_reason == "stop"
    chunks = complete(client, "Once upon a time", max_tokens=40, temperature=0, stop="girl",
                      stream=True)
    assert stream_text(chunks) == (full[:cut], "stop")


def test_concurrent_streams_each_equal_their_solo_run(stories):
    client = stories.client()
    cases = [("Once upon a time", dict(temperature=0)),
             ("The dog", dict(temperature=0)),
             ("Lily", dict(temperature=1.0, top_p=0.9, seed=7)),
             ("Tom and", dict(temperature=0.7, top_p=0.5, seed=99)),
             ("A big", dict(temperature=0)),
             ("One day", dict(temperature=1.0, top_p=1.0, seed=3))]
    solo = [complete(client, p, max_tokens=48, **kw).choices[0].text for p, kw in cases]

    async def all_at_once():
        async with stories.async_client() as aclient:
            async def one(prompt, kw):
                pieces = []
                async for c in await aclient.completions.create(
                        model="stories260K", prompt=prompt, max_tokens=48, stream=True, **kw):
                    pieces.append(c.choices[0].text)
                return "".join(pieces), len(pieces)
            return await asyncio.wait_for(
                asyncio.gather(*(one(p, kw) for p, kw in cases)), 60)

    results = asyncio.run(all_at_once())
    assert [text for text, _ in results] == solo
    assert all(n > 5 for _, n in results)  # streamed, not one lump


def test_sixty_four_clients_get_full_answers_or_a_clean_503(stories):
    """--max-sessions 8 --queue 16 (the defaults): the first 24 always get places."""
    client = stories.client()
    expected = complete(client, "Once upon a time", max_tokens=100, temperature=0).choices[0].text

    async def crowd():
        async with stories.async_client() as aclient:
            async def one():
                try:
                    pieces = []
                    async for c in await aclient.completions.create(
                            model="stories260K", prompt="Once upon a time", max_tokens=100,
                            temperature=0, stream=True):
                        pieces.append(c.choices[0].text)
                    return "".join(pieces)
                except openai.APIStatusError as e:
                    return e
            return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(64))), 90)

    results = asyncio.run(crowd())
    done = [r for r in results if isinstance(r, str)]
    busy = [r for r in results if not isinstance(r, str)]
    assert all(r == expected for r in done)
    assert all(e.status_code == 503 and e.response.headers["retry-after"] == "1"
               and e.body["code"] == "server_busy" for e in busy)
    assert len(done) >= 24 and busy, (len(done), len(busy))
    m = stories.wait_metrics(lambda m: m["running_sessions"] == 0, 10)
    assert (m["running_sessions"], m["queued_sessions"], m["kv_pages_used"]) == (0, 0, 0)
    assert m["requests_rejected_total"] >= len(busy)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_mid_answer_frees_its_pages(stories, stream):
    """Eight long requests share the engine; one client leaves while its answer is made
    (streamed: after its first chunk; whole: while it waits): its session ends at once
    (the others' pages stay), and it never runs to the end."""
    page_positions = 16
    prompt = "Once upon a time"
    n_prompt = len(stories.model.encode(prompt))
    max_tokens = 300  # greedy, this prompt's story ends (EOS) after 341 tokens
    pages = -(-(n_prompt + max_tokens - 1) // page_positions)
    before = stories.metrics()

    async def scene():
        async with stories.async_client() as aclient:
            async def stay():
                r = await aclient.completions.create(model="stories260K", prompt=prompt,
                                                     max_tokens=max_tokens, temperature=0)
                return r.usage.completion_tokens
            stayers = [asyncio.ensure_future(stay()) for _ in range(7)]
            leaver = aclient.completions.create(model="stories260K", prompt=prompt,
                                                max_tokens=max_tokens, temperature=0,
                                                stream=stream)
            if stream:
                leaver = await leaver
                await leaver.__anext__()
            else:
                leaver = asyncio.ensure_future(leaver)
            full = await asyncio.to_thread(stories.wait_metrics,
                                           lambda m: m["running_sessions"] == 8, 10)
            if stream:
                await leaver.close()
            else:
                leaver.cancel()  # the client gives up: its connection closes
            after = await asyncio.to_thread(stories.wait_metrics,
                                            lambda m: m["running_sessions"] <= 7, 5)
            return full, after, await asyncio.wait_for(asyncio.gather(*stayers), 60)

    full, after, stayed = asyncio.run(scene())
    assert full["running_sessions"] == 8 and full["kv_pages_used"] == 8 * pages
    assert after["running_sessions"] == 7, after
    assert after["kv_pages_used"] <= 7 * pages  # the leaver's pages are back
    assert stayed == [max_tokens] * 7
    m = stories.wait_metrics(lambda m: m["running_sessions"] == 0, 10)
    assert m["kv_pages_used"] == 0
    assert m["requests_cancelled_total"] == before["requests_cancelled_total"] + 1
    made = m["tokens_generated_total"] - before["tokens_generated_total"]
    assert 7 * max_tokens <= made < 8 * max_tokens


def test_serve_command_line_errors(tmp_path):
    assert [parse_size(t) for t in ("512M", "2G", "1.5g", "64KiB", "4096")] == \
        [512 << 20, 2 << 30, 3 << 29, 64 << 10, 4096]
    with pytest.raises(ValueError):
        parse_size("12X")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = subprocess.run([sys.executable, "-m", "qllama", "serve", str(data("stories260K.bin")),
                            "-z", str(data("tok512.model")), "--port",
                            str(taken.getsockname()[1])],
                           capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 1 and r.stderr.startswith("qllama: error: cannot listen on"), r.stderr
    r = subprocess.run([sys.executable, "-m", "qllama", "serve", "m.bin", "--kv-memory", "lots"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "not a size" in r.stderr
    r = subprocess.run([sys.executable, "-m", "qllama", "serve", "m.bin", "--prefix-cache=-1G"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 2 and "not a size" in r.stderr
    r = subprocess.run([sys.executable, "-m", "qllama", "serve", str(data("stories260K.bin")),
                        "-z", str(data("tok512.model")), "--max-sessions", "0"],
                       capture_output=True, text=True, env=ENV, timeout=60)
    assert r.returncode == 1 and r.stderr == "qllama: error: max sessions is 0, must be at least 1\n"
    r = subprocess.run([sys.executable, "-m", "qllama", "serve", "m.bin", "--cors",
                        "http://localhost:3000/"], capture_output=True, text=True, env=ENV,
                       timeout=60)
    assert r.returncode == 2 and "an origin is scheme://host[:port] with no path" in r.stderr


class FailingScheduler:
    """A scheduler whose engine makes one piece of text and then fails."""

    max_positions, places = 128, 24
    alive, failure = True, None

    def __init__(self):
        self.cancelled = []

    def request(self, ids, max_tokens, on_event, *args):
        return ids, on_event

    def submit_all(self, reqs):
        for ids, on_event in reqs:
            on_event(Event(" Hel"))  # as the engine thread would; here from the loop's own
            on_event(Event(error="engine error: boom", usage=Usage(len(ids))))
        return reqs

    def cancel(self, req):
        self.cancelled.append(req)


def test_an_engine_error_reaches_the_client_as_an_error_object(tmp_path):
    from starlette.testclient import TestClient
    model = types.SimpleNamespace(config=types.SimpleNamespace(seq_len=128), path=__file__,
                                  spec=types.SimpleNamespace(vocab_size=32000),
                                  encode=lambda text, bos=True, special=False: [1] + [5] * len(text))
    app = create_app(FailingScheduler(), model, "fake")
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={"prompt": "hi"})
        assert r.status_code == 500 and r.json()["error"]["message"] == "engine error: boom"
        assert r.json()["error"]["type"] == "server_error"
        with client.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "stream": True}) as r:
            lines = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
        assert lines[1]["choices"][0]["delta"] == {"content": "Hel"}  # word-start space cut
        assert lines[-1] == {"error": {"message": "engine error: boom", "type": "server_error",
                                       "param": None, "code": None}}
        # the openai client raises on it
        oc = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=client,
                           max_retries=0)
        with pytest.raises(openai.APIError, match="boom"):
            list(oc.completions.create(model="fake", prompt="hi", stream=True))
        assert client.get("/health").status_code == 200
        app.state.api.scheduler.alive, app.state.api.scheduler.failure = False, "RuntimeError: x"
        r = client.get("/health")
        assert r.status_code == 503 and r.json()["error"] == "RuntimeError: x"


def test_a_body_that_stops_coming_or_is_abandoned(caplog):
    """A client that stops mid-body gets 408 after body_seconds (it held its handler, and
    a SIGTERM's graceful shutdown, for ever); one that hangs up mid-body is dropped
    without an error logged (a traceback was)."""
    model = types.SimpleNamespace(config=types.SimpleNamespace(seq_len=128), path=__file__,
                                  spec=types.SimpleNamespace(vocab_size=32000),
                                  encode=lambda text, bos=True: [1])
    app = create_app(FailingScheduler(), model, "fake", body_seconds=0.3)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/completions",
             "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}

    async def call(then):
        sent, first = [], [{"type": "http.request", "body": b'{"prompt":', "more_body": True}]

        async def receive():
            return first.pop() if first else await then()

        async def send(message):
            sent.append(message)

        await asyncio.wait_for(app(scope, receive, send), 10)
        return sent

    async def silence():
        await asyncio.sleep(60)

    async def hang_up():
        return {"type": "http.disconnect"}

    sent = asyncio.run(call(silence))
    assert sent[0]["status"] == 408 and b"within 0.3 s" in sent[1]["body"]
    sent = asyncio.run(call(hang_up))
    assert sent[0]["status"] == 499 and not caplog.records


# -- faults ------------------------------------------------------------------------------
def assert_error(r: httpx.Response, status: int, message: str, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert message in err["message"], err
    if param:
        assert err["param"] == param


def test_api_key_is_required_and_compared(tiny):
    bad = openai.OpenAI(base_url=tiny.url + "/v1", api_key="sk-wrong", timeout=TIMEOUT,
                        max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model="tiny", prompt="a", max_tokens=2)
    assert e.value.body["code"] == "invalid_api_key"
    r = httpx.post(tiny.url + "/v1/completions", json={"prompt": "a"}, timeout=TIMEOUT)
    assert_error(r, 401, "API key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(tiny.url + "/v1/models", timeout=TIMEOUT).status_code == 401
    assert tiny.client().models.list().data[0].id == "tiny"
    # health and metrics stay open for probes
    assert httpx.get(tiny.url + "/health", timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("body, status, message, param", [
    (b'{"prompt": "a", ', 400, "not valid JSON", None),
    (b'["prompt"]', 400, "must be a JSON object", None),
    (b'{"prompt": "a", "temperature": NaN}', 400, "not valid JSON", None),
    (b'{"prompt": "a", "max_tokens": "5"}', 400, "max_tokens must be an integer", "max_tokens"),
    (b'{"prompt": "a", "max_tokens": true}', 400, "max_tokens must be an integer", "max_tokens"),
    (b'{"prompt": "a", "max_tokens": 2.5}', 400, "max_tokens must be an integer", "max_tokens"),
    (b'{"prompt": "a", "max_tokens": 0}', 400, "max_tokens must be in 1..", "max_tokens"),
    (b'{"prompt": "a", "max_tokens": -5}', 400, "max_tokens must be in 1..", "max_tokens"),
    (b'{"prompt": "a", "temperature": "hot"}', 400, "temperature must be a number",
     "temperature"),
    (b'{"prompt": "a", "temperature": -0.5}', 400, "temperature must be in", "temperature"),
    (b'{"prompt": "a", "top_p": 1.5}', 400, "top_p must be in", "top_p"),
    (b'{"prompt": "a", "seed": -9223372036854775809}', 400, "seed must be in", "seed"),
    (b'{"prompt": "a", "n": 0}', 400, "n must be in 1..128", "n"),
    (b'{"prompt": "a", "n": 129}', 400, "n must be in 1..128", "n"),
    (b'{"prompt": "a", "best_of": 2}', 400, "best_of must equal n (1)", "best_of"),
    (b'{"prompt": "a", "n": 3, "best_of": 1}', 400, "best_of must equal n (3)", "best_of"),
    (b'{"prompt": "a", "n": 25}', 400, "n 25 ask for 25 choices; this server holds 24 at once",
     "n"),
    (b'{"prompt": ["a", "b", "c"], "n": 9}', 400, "3 prompts, n 9 each, ask for 27 choices",
     "n"),
    (b'{"prompt": [' + b'"a", ' * 24 + b'"a"]}', 400, "25 prompts, n 1 each, ask for 25",
     "prompt"),
    (b'{"prompt": "a", "stream": "yes"}', 400, "stream must be true or false", "stream"),
    (b'{"prompt": "a", "stream_options": {"include_usage": 1}}', 400,
     "include_usage must be true or false", "stream_options.include_usage"),
    (b'{"prompt": "a", "temperature": 1e400}', 400, "temperature must be a finite number",
     "temperature"),
    (b'{"prompt": "a", "top_p": 1' + b"0" * 400 + b'}', 400, "top_p must be a finite number",
     "top_p"),  # an integer past float's range (a 500: OverflowError)
    (b'{"prompt": "a", "seed": 1' + b"0" * 400 + b'}', 400,
     "seed must be in -9223372036854775808..18446744073709551615, got 1" + "0" * 36 + "...",
     "seed"),  # cut
    (b'{"prompt": "a", "response_format": {"type": "json_object"}}', 400,
     "response_format is not supported", "response_format"),
    (b'[' * 100000 + b']' * 100000, 400, "not valid JSON", None),
    (b'{"prompt": "a", "stop": [1]}', 400, "stop must be a string", "stop"),
    (b'{"prompt": "a", "logprobs": 6}', 400, "logprobs must be in 0..5", "logprobs"),
    (b'{"prompt": "a", "echo": 1}', 400, "echo must be true or false", "echo"),
    (b'{"prompt": 7}', 400, "prompt must be a string, a list of strings, a list of token ids "
                            "or a list of lists of token ids", "prompt"),
    (b'{"prompt": []}', 400, "lists of token ids, and not empty", "prompt"),
    (b'{"prompt": [[1, 2], []]}', 400, "prompt[1] must be a non-empty list of token ids",
     "prompt"),
    (b'{"prompt": [[1, 2], 3]}', 400, "prompt[1] must be a non-empty list of token ids, got 3",
     "prompt"),
    (b'{"prompt": [[1, 2], [3, 512]]}', 400, "prompt[1][1] must be a token id in 0..511",
     "prompt"),
    (b'{"prompt": ["a", 1]}', 400, "prompt[1] must be a string, as prompt[0] is, got 1",
     "prompt"),
    (b'{"prompt": ["a", "' + b"hello " * 200 + b'"]}', 400,
     "prompt[1] is 602 tokens; this model's context is 128", "prompt"),
    (b'{"prompt": [1, "a"]}', 400, 'prompt[1] must be a token id in 0..511, got "a"',
     "prompt"),
    (b'{"prompt": [1, 512]}', 400, "prompt[1] must be a token id in 0..511, got 512", "prompt"),
    (b'{"prompt": [true]}', 400, "prompt[0] must be a token id", "prompt"),
    (b'{"prompt": "a", "model": "gpt-4"}', 404, "does not exist", "model"),
    (b'{"prompt": "a\xff\xfe"}', 400, "not valid UTF-8", None),
    (b'{"prompt": "' + b"hello " * 200 + b'"}', 400, "context is 128 tokens", "prompt"),
])
def test_bad_requests_get_openai_errors_and_the_server_goes_on(tiny, body, status, message,
                                                               param):
    assert_error(tiny.post("/v1/completions", body), status, message, param)
    r = tiny.client().completions.create(model="tiny", prompt="a", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("messages, message", [
    ([], "messages must be a non-empty list"),
    ([{"role": "robot", "content": "hi"}], "role must be system, user or assistant"),
    ([{"role": "user", "content": 5}], "must be a string or a list of text parts"),
    ([{"role": "assistant", "content": "hi"}], "expected 'user'"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
     "must end with a user turn"),
])
def test_bad_chat_messages(tiny, messages, message):
    with pytest.raises(openai.BadRequestError) as e:
        tiny.client().chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert message in e.value.body["message"] and e.value.body["param"].startswith("messages")


def test_chat_replies_by_default_to_the_end_of_what_the_pool_holds(tiny):
    """tiny's pool is 4 pages of 16 positions, half its context: a chat without
    max_tokens runs until its sequence holds them all (or EOS), not into an error."""
    client = tiny.client()
    for seed in (1, 2, 3):
        r = client.chat.completions.create(model="tiny", temperature=1.0, seed=seed,
                                           messages=[{"role": "user", "content": "hi"}])
        assert r.usage.total_tokens <= 64 + 1
        assert r.choices[0].finish_reason == "stop" or r.usage.total_tokens == 64 + 1
    # asked for more: held to the pool, as a request is to the model's context
    for r in (client.chat.completions.create(model="tiny", max_tokens=100, seed=1,
                                             messages=[{"role": "user", "content": "hi"}]),
              client.completions.create(model="tiny", prompt="hi", max_tokens=100, seed=1)):
        assert r.usage.total_tokens <= 64 + 1
        assert r.choices[0].finish_reason == "stop" or r.usage.total_tokens == 64 + 1
    # a prompt the pool cannot hold (though the context could): refused, as one too long
    tok = qllama.load_tokenizer(tiny.tokenizer)
    prompt = next(p for p in ("hello " * k for k in range(1, 200))
                  if 64 <= len(tok.encode(p)) < 128)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=prompt)
    body = e.value.body
    assert "the KV pool (--kv-memory) holds 64 positions" in body["message"]
    assert (body["param"], body["code"]) == ("prompt", "context_length_exceeded")
    assert ("qllama: warning: the KV pool holds 64 positions, fewer than the model's seq_len "
            "128") in tiny.stderr(tail=None)  # said when it started


def test_chat_accepts_text_parts_and_max_completion_tokens(tiny):
    r = tiny.client().chat.completions.create(
        model="tiny", max_completion_tokens=3, temperature=0,
        messages=[{"role": "developer", "content": "sys"},
                  {"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert r.usage.completion_tokens <= 3


def raw(port, request: bytes, then: bytes = b"", seconds: float = 10) -> bytes:
    """Send a raw HTTP request, keep sending `then` while the server reads, return the
    answer (what arrived before the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as s:
        s.sendall(request)
        try:
            for i in range(0, len(then), 1 << 16):
                s.sendall(then[i:i + (1 << 16)])
        except OSError:  # the server answered and closed before reading it all
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out


def test_a_100_mb_body_is_refused_by_content_length_and_while_reading(tiny):
    auth = f"Authorization: Bearer {KEY}\r\n".encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + auth)
    answer = raw(tiny.port, head + b"Content-Length: 100000000\r\n\r\n", b"{" + b" " * 65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"request_too_large" in answer and b"connection: close" in answer.lower()
    # no Content-Length: chunked, 2 MB in 64 KB chunks, refused past 1 MB
    chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
    answer = raw(tiny.port, head + b"Transfer-Encoding: chunked\r\n\r\n", chunk * 32)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert tiny.client().completions.create(model="tiny", prompt="a", max_tokens=2).choices


def test_unknown_routes_and_methods_get_error_objects(tiny):
    assert_error(httpx.get(tiny.url + "/v2/nothing", timeout=TIMEOUT), 404, "Not Found")
    assert_error(httpx.get(tiny.url + "/v1/completions", timeout=TIMEOUT), 405, "Not Allowed")
    # no --cors: a browser's preflight learns nothing, so its page may not call
    r = httpx.options(tiny.url + "/v1/completions", timeout=TIMEOUT, headers={
        "Origin": "http://a.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_lets_the_named_origins_pages_call_from_a_browser(tmp_path):
    model, tok = data("stories260K.bin"), data("tok512.model")
    server = Server(model, tok, "--cors", "http://a.example", "--cors", "http://b.example:3000",
                    key=KEY, tmp=tmp_path)
    try:
        url = server.url + "/v1/completions"
        for origin in ("http://a.example", "http://b.example:3000"):
            pre = httpx.options(url, timeout=TIMEOUT, headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"})
            assert pre.status_code == 200
            assert pre.headers["access-control-allow-origin"] == origin
            assert "POST" in pre.headers["access-control-allow-methods"]
            assert "authorization" in pre.headers["access-control-allow-headers"].lower()
            r = httpx.post(url, timeout=TIMEOUT, json={"prompt": "Once", "max_tokens": 2},
                           headers={"Origin": origin, "Authorization": f"Bearer {KEY}"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        pre = httpx.options(url, timeout=TIMEOUT, headers={
            "Origin": "http://c.example", "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers
        # the key is still needed, whatever the origin
        r = httpx.post(url, timeout=TIMEOUT, json={"prompt": "Once"},
                       headers={"Origin": "http://a.example"})
        assert r.status_code == 401
    finally:
        server.kill()
    server = Server(model, tok, "--cors", "*", tmp=tmp_path)
    try:
        assert "--cors '*' without --api-key" in server.stderr()
        r = httpx.get(server.url + "/v1/models", timeout=TIMEOUT,
                      headers={"Origin": "http://any.example"})
        assert r.headers["access-control-allow-origin"] == "*"
    finally:
        server.kill()


def test_sigterm_ends_running_streams_then_exits_0(tmp_path):
    model, tok = data("stories260K.bin"), data("tok512.model")
    server = Server(model, tok, tmp=tmp_path)
    try:
        async def streams():
            async with server.async_client() as aclient:
                async def one(first: asyncio.Event):
                    pieces, usage = [], None
                    async for c in await aclient.completions.create(
                            model="stories260K", prompt="Once upon a time", max_tokens=300,
                            temperature=0, stream=True, stream_options={"include_usage": True}):
                        if c.choices:
                            pieces.append(c.choices[0].finish_reason)
                        first.set()
                        usage = c.usage or usage
                    return pieces[-1], usage.completion_tokens
                events = [asyncio.Event() for _ in range(4)]
                tasks = [asyncio.ensure_future(one(e)) for e in events]
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
                server.proc.send_signal(signal.SIGTERM)
                return await asyncio.wait_for(asyncio.gather(*tasks), 60)

        results = asyncio.run(streams())
        assert results == [("length", 300)] * 4
        assert server.proc.wait(30) == 0, server.stderr()
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health", timeout=5)
    finally:
        server.kill()


def test_a_stream_sees_a_lost_connection_before_writing_again():
    """Events already queued were sent without returning to the loop, so after a write
    found the client gone (the transport only marks itself lost; uvicorn learns it from
    a callback the loop runs next) the rest went to a dead socket, and asyncio logged
    "socket.send() raised exception." from the fifth. Modelled here: the third chunk's
    write loses the connection and schedules what the transport schedules."""
    from qllama.serving.api import Choice, Reply
    from qllama.serving.server import _Events, _EventStream

    async def scenario():
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue()
        for _ in range(20):
            queue.put_nowait((0, Event(text="a")))
        queue.put_nowait((0, Event(finish_reason="stop", usage=Usage(1, 20))))
        api = types.SimpleNamespace(cancelled=0, scheduler=types.SimpleNamespace(
            cancel=lambda req: None))
        never = asyncio.Event()

        async def receive():
            await never.wait()

        events = _Events(api, [object()], queue, receive, chat=False)
        state = {"bodies": 0, "lost": False, "gone": False, "dead_writes": 0}

        async def send(message):
            if state["gone"] or message["type"] != "http.response.body":
                return  # uvicorn drops what is sent after connection_lost
            if state["lost"]:
                state["dead_writes"] += 1
                return
            state["bodies"] += 1
            if state["bodies"] == 3:
                state["lost"] = True
                loop.call_soon(state.update, {"gone": True})

        await _EventStream(events, Reply(False, "m", [Choice()]), False, 1)({}, receive, send)
        return state

    state = asyncio.run(scenario())
    assert state["bodies"] == 3 and state["dead_writes"] == 0, state
