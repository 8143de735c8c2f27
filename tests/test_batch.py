"""The engine for many sequences (serving.batch, engine.Workspace over a paged KVCache):
a sequence's logits are the same bit for bit whether it runs alone, one token at a
time or in any batch with others, in any order, on any pages, for every kernel
variant this CPU runs; and the scheduler's outputs equal Model.generate_ids'."""
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qllama import kernels
from qllama._kernels.engine import KVCache, Workspace
from qllama.conversion.llama2c import quantize_file
from qllama.formats.llama2c import Config
from qllama.model import Model
from qllama.serving.batch import PAGE, KVPool, page_bytes, prefix_keys
from qllama.serving.scheduler import Busy, Scheduler
from qllama.synth import write_random_model

from conftest import data

# GQA, row counts no tile divides, a vocabulary no tile divides
CONFIG = Config(1, dim=128, hidden_dim=320, n_layers=2, n_heads=8, n_kv_heads=2,
                vocab_size=300, seq_len=96, shared_classifier=False)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    write_random_model(d / "m.bin", CONFIG, seed=11)
    quantize_file(d / "m.bin", d / "m.q80.bin")
    return {"f32": d / "m.bin", "q80": d / "m.q80.bin"}


_solo = {}


def solo_logits(path, variant, kv, ids):
    """Every position's logits of one sequence, alone, as `qllama run` computes them."""
    key = (str(path), variant, kv, tuple(ids))
    if key not in _solo:
        _solo[key] = Model(path, variant=variant, threads=1, kv=kv).logits(ids)
    return _solo[key]


@st.composite
def schedules(draw):
    """Sequences and how their tokens are dealt out over steps: each step takes a
    chunk of every unfinished sequence chosen for it, in a drawn order."""
    n = draw(st.integers(1, 4))
    seqs = [draw(st.lists(st.integers(3, CONFIG.vocab_size - 1), min_size=1, max_size=40))
            for _ in range(n)]
    fed = [0] * n
    steps = []
    while any(f < len(s) for f, s in zip(fed, seqs)):
        live = [i for i in range(n) if fed[i] < len(seqs[i])]
        chosen = draw(st.lists(st.sampled_from(live), min_size=1, unique=True))
        step = []
        for i in chosen:
            take = draw(st.integers(1, len(seqs[i]) - fed[i]))
            step.append((i, fed[i], take))
            fed[i] += take
        steps.append(step)
    pages = draw(st.permutations(range(n * 6)))  # any pages of the pool, in any order
    return seqs, steps, pages


@pytest.mark.parametrize("variant", kernels.runnable())
@pytest.mark.parametrize("kind", ["f32", "q80"])
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=schedules(), kv=st.sampled_from(["f16", "f32"]), threads=st.sampled_from([1, 2]))
def test_batched_logits_equal_solo(files, variant, kind, case, kv, threads):
    seqs, steps, pages = case
    model = Model(files[kind], variant=variant, threads=threads, kv=kv)
    cache = KVCache(model.weights, PAGE, len(pages), kv, fault=False)
    tables = np.array(pages, np.int32).reshape(len(seqs), 6)  # 6 pages: 96 positions
    ws = Workspace(model.weights, sum(len(s) for s in seqs), CONFIG.seq_len, threads)
    got = [np.empty((len(s), CONFIG.vocab_size), np.float32) for s in seqs]
    for step in steps:
        tokens = np.concatenate([seqs[i][p:p + n] for i, p, n in step]).astype(np.int32)
        positions = np.concatenate([np.arange(p, p + n) for _, p, n in step]).astype(np.int32)
        seq = np.concatenate([[i] * n for i, _, n in step]).astype(np.int32)
        logits = np.empty((len(tokens), CONFIG.vocab_size), np.float32)
        ws.forward(cache, tokens, positions, seq, tables, np.arange(len(tokens), dtype=np.int32),
                   logits)
        row = 0
        for i, p, n in step:
            got[i][p:p + n] = logits[row:row + n]
            row += n
    for i, s in enumerate(seqs):
        assert np.array_equal(got[i], solo_logits(files[kind], variant, kv, s)), i


def test_batch_engine_gives_each_sequence_the_logits_it_wants(files):
    """want "all": every row's logits (an echo scores its prompt), True: the last row's,
    False: none; each bit for bit the sequence's solo logits."""
    from qllama.serving.batch import BatchEngine
    model = Model(files["q80"], threads=1)
    engine = BatchEngine(model, 64, max_sessions=3)
    seqs = [[5, 9, 17, 2, 40], [7, 3, 250], [11, 12]]
    pages = [engine.pool.take(len(s)) for s in seqs]
    out = engine.forward([(p, 0, np.array(s, np.int32), want)
                          for p, s, want in zip(pages, seqs, ("all", True, False))])
    solo = [solo_logits(files["q80"], model.variant, "f16", s) for s in seqs]
    assert out[0].shape == (5, CONFIG.vocab_size) and np.array_equal(out[0], solo[0])
    assert np.array_equal(out[1], solo[1][-1]) and out[2] is None


def test_forward_refuses_what_it_cannot_run(files):
    model = Model(files["q80"], threads=1)
    cache = KVCache(model.weights, PAGE, 4, "f16", fault=False)
    ws = Workspace(model.weights, 8, CONFIG.seq_len, 1)
    one = np.ones(1, np.int32)
    zero = np.zeros(1, np.int32)
    out = np.empty((1, CONFIG.vocab_size), np.float32)

    table = np.zeros((1, 6), np.int32)

    def run(tokens=one, positions=zero, seq=zero, tables=table, rows=zero, logits=out):
        ws.forward(cache, tokens, positions, seq, tables, rows, logits)

    run()
    for kwargs, message in [
        ({"tokens": np.array([CONFIG.vocab_size], np.int32)}, "token id"),
        ({"positions": np.array([CONFIG.seq_len], np.int32)}, "position"),
        ({"positions": np.array([-1], np.int32)}, "position"),
        ({"seq": np.array([1], np.int32)}, "no page table"),
        ({"positions": np.array([PAGE * 2], np.int32), "tables": np.zeros((1, 2), np.int32)},
         "past its page table"),
        ({"tables": np.full((1, 6), 4, np.int32)}, "page 4 outside"),
        ({"rows": np.array([1], np.int32)}, "logits row"),
        ({"tokens": np.ones(9, np.int32)}, "block of 9 rows"),
    ]:
        with pytest.raises(ValueError, match=message):
            run(**kwargs)
    other = Model(files["f32"], threads=1)
    with pytest.raises(ValueError, match="other weights"):
        ws.forward(KVCache(other.weights, PAGE, 1), one, zero, zero, np.zeros((1, 1), np.int32),
                   zero, out)


# ---- the scheduler ------------------------------------------------------------------

def run_all(scheduler, requests, timeout=60):
    """Submit (ids, kwargs) requests at once; [(text, final event)] in order."""
    results = [None] * len(requests)
    done = [threading.Event() for _ in requests]
    texts = [[] for _ in requests]

    def on_event(i):
        def f(e):
            texts[i].append(e.text)
            if e.finish_reason or e.error:
                results[i] = ("".join(texts[i]), e)
                done[i].set()
        return f

    for i, (ids, kwargs) in enumerate(requests):
        scheduler.submit(ids, on_event=on_event(i), **kwargs)
    for d in done:
        assert d.wait(timeout)
    return results


@pytest.fixture(scope="module")
def story():
    return Model(data("stories260K.bin"), tokenizer=data("tok512.model"), threads=1)


PROMPTS = ["Once upon a time", "The cat sat", "Lily and Tom went to the", "A big dog", "One day",
           "Tim had a red ball. He", ""]


def solo_ids_text(model, ids, max_tokens, **kwargs):
    # generate_ids' steps count positions; the last token is not run
    out = list(model.generate_ids(ids, len(ids) + max_tokens - 1, **kwargs))
    return model.decode(ids + out)[len(model.decode(ids)):]


def solo_text(model, prompt, max_tokens, **kwargs):
    return solo_ids_text(model, model.encode(prompt), max_tokens, **kwargs)


@pytest.mark.parametrize("seed", [None, 7])
def test_scheduler_equals_solo_runs(story, seed):
    """Seven requests on three sessions (four queue): each answer is its solo run's,
    greedy or seeded, and afterwards every page is free."""
    kwargs = {"temperature": 0.0} if seed is None else {"temperature": 0.9, "top_p": 0.9,
                                                        "seed": seed}
    s = Scheduler(story, max_sessions=3, queue=4, prefill_chunk=8)
    s.start()
    try:
        got = run_all(s, [(story.encode(p), dict(max_tokens=30, **kwargs)) for p in PROMPTS])
    finally:
        s.shutdown(10)
    for p, (text, final) in zip(PROMPTS, got):
        want = solo_text(story, p, 30, **kwargs)
        assert text == want, p
        assert final.finish_reason in ("stop", "length") and final.error is None
        assert final.usage.completion_tokens <= 30
    m = s.snapshot()
    assert m.kv_pages_used == 0 and m.running == 0 and m.queued == 0
    assert m.requests_finished == len(PROMPTS)
    assert m.tokens_generated == sum(final.usage.completion_tokens for _, final in got)
    assert m.prompt_tokens == sum(len(story.encode(p)) for p in PROMPTS)


def test_scheduler_stop_strings_and_limits(story):
    s = Scheduler(story, max_sessions=1, queue=1)
    with pytest.raises(Exception, match="max_tokens"):  # 0 runs the prompt alone
        s.submit([1, 2], -1, lambda e: None)
    with pytest.raises(Exception, match="context"):
        s.submit([1] * story.config.seq_len, 4, lambda e: None)
    # a request's choices get places all together or not at all
    with pytest.raises(Busy, match="3 choices need as many places"):
        s.submit_all([s.request([1, 2], 4, lambda e: None) for _ in range(3)])
    assert s.snapshot().queued == 0
    s.start()
    try:
        full = solo_text(story, "Once upon a time", 40, temperature=0.0)
        stop = full[10:14]
        (text, final), = run_all(s, [(story.encode("Once upon a time"),
                                      dict(max_tokens=40, temperature=0.0, stop=[stop]))])
        assert text == full[:full.index(stop)] and final.finish_reason == "stop"
        # one running and one queued: a third request is turned away
        gate = threading.Event()
        s.submit(story.encode("One day"), 200, lambda e: gate.set() if e.finish_reason else None,
                 temperature=0.0)
        s.submit(story.encode("One day"), 5, lambda e: None, temperature=0.0)
        with pytest.raises(Busy):
            s.submit(story.encode("One day"), 5, lambda e: None, temperature=0.0)
    finally:
        s.shutdown(30)
    assert s.snapshot().kv_pages_used == 0


def test_metrics_count_tokens_made(story):
    """A story that ends at EOS: the EOS prediction is no token (greedy, "The cat sat"
    ends itself after 212)."""
    s = Scheduler(story, max_sessions=1, queue=0)
    s.start()
    try:
        (text, final), = run_all(s, [(story.encode("The cat sat"),
                                      dict(max_tokens=250, temperature=0.0))])
    finally:
        s.shutdown(10)
    assert final.finish_reason == "stop" and final.usage.completion_tokens == 212
    assert s.snapshot().tokens_generated == 212


def run_choices(scheduler, ids, choices, timeout=60, **kwargs):
    """One prompt's choices submitted together, as a request's n: choice i with
    choices[i] = (max_tokens, seed); [(text, [(token, logprob, top)], final event)]."""
    done = [threading.Event() for _ in choices]
    got = [["", [], None] for _ in choices]

    def on_event(i):
        def f(e):
            got[i][0] += e.text
            got[i][1] += [(x.token, x.logprob, x.top) for x in e.logprobs or ()]
            if e.finish_reason or e.error:
                got[i][2] = e
                done[i].set()
        return f

    scheduler.submit_all([scheduler.request(ids, m, on_event(i), seed=seed, **kwargs)
                          for i, (m, seed) in enumerate(choices)])
    for d in done:
        assert d.wait(timeout)
    return [tuple(g) for g in got]


STORY = ("Once upon a time, there was a little girl named Lily. She liked to play outside in "
         "the sun with her big red ball and her dog Max.")


@pytest.mark.parametrize("length", [5, PAGE, PAGE + 5])
@pytest.mark.parametrize("echo", [False, True])
def test_choices_of_one_prompt_run_it_once(story, length, echo):
    """A prompt's choices submitted together run the prompt once: the others start
    from the first's KV pages and last logits. Each choice's text and logprobs equal
    its solo run's; the first ending at its first token leaves the others their pages;
    choices that find no free session at once run the prompt themselves (from the
    pages it left behind, if it has ended)."""
    ids = story.encode(STORY)[:length]
    assert len(ids) == length
    choices = [(1, 3), (30, 4), (30, 5), (30, 6)]
    kw = dict(temperature=0.9, top_p=0.9, logprobs=2 if echo else None, echo=echo)
    solo = Scheduler(story, max_sessions=1, queue=0, prefill_chunk=8)
    solo.start()
    try:
        want = [run_choices(solo, ids, [c], **kw)[0] for c in choices]
    finally:
        solo.shutdown(10)
    assert len({text for text, _, _ in want}) == len(choices)
    for sessions, runs in ((4, 1), (2, 3)):  # with 2 sessions, choices 3 and 4 wait
        s = Scheduler(story, max_sessions=sessions, queue=2, prefill_chunk=8)
        s.start()
        try:
            got = run_choices(s, ids, choices, **kw)
        finally:
            s.shutdown(10)
        for (text, logprobs, final), (wtext, wlogprobs, wfinal) in zip(got, want):
            assert (text, logprobs) == (wtext, wlogprobs)
            assert final.finish_reason == wfinal.finish_reason and final.error is None
            assert (final.usage.prompt_tokens, final.usage.completion_tokens) == \
                (wfinal.usage.prompt_tokens, wfinal.usage.completion_tokens)
        if echo:
            assert len(got[0][1]) == length + 1  # the prompt's tokens, then the answer's
        m = s.snapshot()  # choices 3 and 4 find the first's whole pages, which it left,
        # unless they score every prompt token (echo)
        assert m.prompt_tokens_cached == (runs - 1) * ((length - 1) // PAGE * PAGE) * (not echo)
        assert m.prompt_tokens == runs * length - m.prompt_tokens_cached
        assert m.kv_pages_used == 0 and m.running == 0 and m.requests_finished == 4


def test_pool_hands_out_pages_free_then_idle_then_unused(story):
    """Shared pages are free after their last holder; kept ones go idle instead, found
    by their keys until the pool needs them: it takes free pages first, then the idle
    page let go of longest ago, then pages never used."""
    pool = KVPool(story.weights, "f32", 6)
    keys = prefix_keys(list(range(3 * PAGE)), 3)
    assert len(set(keys)) == 3 and prefix_keys(list(range(2 * PAGE)), 2) == keys[:2]
    assert prefix_keys([7] * PAGE + list(range(PAGE, 2 * PAGE)), 2)[1] != keys[1]  # chained
    a = pool.take(3 * PAGE)
    b = pool.share(a[:1]) + pool.take(PAGE)
    assert pool.used == 4 and pool.take(3 * PAGE) is None
    pool.keep(a, keys)
    pool.keep(b[1:], keys[1:2])  # a key kept already stays with its page
    assert pool.lookup(keys) == a and pool.kept == 3
    assert pool.lookup(prefix_keys([1] + list(range(1, 3 * PAGE)), 3)) == []
    pool.give(a)
    assert pool.used == 2  # a's first page, which b holds too, and b's own
    pool.give(b)
    assert pool.used == 0 and pool.lookup(keys) == a
    c = pool.take(4 * PAGE, pool.lookup(keys[:2]))  # then b's own page, then a's idle one
    assert c == a[:2] + b[1:] + a[2:] and pool.lookup(keys) == a[:2] and pool.kept == 2
    d = pool.take(PAGE)  # none free or idle: one never used
    assert d[0] not in a + b and pool.take(2 * PAGE) is None
    pool.give(c)
    pool.give(d)
    assert pool.used == 0 and len(pool.take(6 * PAGE)) == 6 and pool.kept == 0
    # while fewer than cache_pages are idle, pages never used come before idle ones
    pool = KVPool(story.weights, "f32", 6, cache_pages=2)
    a = pool.take(2 * PAGE)
    pool.keep(a, keys[:2])
    pool.give(a)
    b = pool.take(2 * PAGE)  # 2 idle, the cache is full: a's last page goes, then 1 idle
    assert b[0] == a[1] and b[1] not in a and pool.lookup(keys) == a[:1]
    c = pool.take(PAGE)  # 1 idle: a page never used
    assert c[0] not in a + b and pool.lookup(keys) == a[:1]


def test_a_prompt_that_starts_as_an_ended_sequence_runs_from_its_pages(story):
    """Answers are their solo runs' when a prompt's first whole pages come from
    sequences that ended: a chat's next turn (the last prompt and its answer, then
    more), the same prompt again, a longer one. In a pool of 6 pages, idle pages give
    way to new sequences and are written over."""
    a = story.encode(STORY)
    p = a[:2 * PAGE + 2]
    gen = list(story.generate_ids(p, len(p) + 30 - 1, temperature=0.0))
    turn = p + gen + story.encode("Then")[1:]
    fed = len(p) + len(gen) - (len(gen) == 30)  # a story that ended ran its last token
    asks = [(p, 30, 0.0), (turn, 20, 0.0), (p, 20, 0.9), (a, 20, 0.0)]
    want_cached = [0, min(fed // PAGE, (len(turn) - 1) // PAGE) * PAGE, 2 * PAGE, 2 * PAGE]
    assert want_cached[1] >= 3 * PAGE and len(turn) + 19 <= 6 * PAGE
    for pool in (None, 6):
        s = Scheduler(story, max_sessions=1, queue=0, prefill_chunk=8,
                      kv_memory=pool and pool * page_bytes(story.spec, story.kv))
        s.start()
        try:
            cached = []
            for ids, max_tokens, temperature in asks:
                before = s.snapshot().prompt_tokens_cached
                (text, _, final), = run_choices(s, ids, [(max_tokens, 9)],
                                                temperature=temperature, top_p=0.9)
                cached.append(s.snapshot().prompt_tokens_cached - before)
                assert text == solo_ids_text(story, ids, max_tokens, temperature=temperature,
                                             top_p=0.9, seed=9), (pool, len(cached))
        finally:
            s.shutdown(10)
        assert cached == want_cached, pool
        m = s.snapshot()
        assert m.kv_pages_used == 0 and 0 < m.kv_pages_cached <= m.kv_pages_total
        assert m.prompt_tokens + m.prompt_tokens_cached == sum(len(ids) for ids, _, _ in asks)


def test_conversations_that_take_turns_keep_their_pages(story):
    """Two chats alternate on one session: each next turn finds its own last turn's
    pages, which the other chat's turns did not evict (the cache grows into pages
    never used, up to a quarter of the pool)."""
    s = Scheduler(story, max_sessions=1, queue=0)
    s.start()
    try:
        chats = [story.encode(STORY), story.encode("Tom had a big dog. The dog liked to run in "
                                                   "the park and jump over the logs.")]
        cached = []
        for _ in range(3):
            for i, ids in enumerate(chats):
                before = s.snapshot().prompt_tokens_cached
                (text, _, final), = run_choices(s, ids, [(20, 1)], temperature=0.0)
                assert text == solo_ids_text(story, ids, 20, temperature=0.0)
                cached.append(s.snapshot().prompt_tokens_cached - before)
                answer = list(story.generate_ids(ids, len(ids) + 19, temperature=0.0))
                chats[i] = ids + answer + story.encode("Then")[1:]
    finally:
        s.shutdown(10)
    assert cached[:2] == [0, 0] and all(c >= 2 * PAGE for c in cached[2:]), cached


def test_without_the_prefix_cache_every_prompt_runs_whole(story):
    ids = story.encode(STORY)
    s = Scheduler(story, max_sessions=1, queue=0, prefix_cache=0)
    s.start()
    try:
        texts = [run_choices(s, ids, [(10, 1)], temperature=0.0)[0][0] for _ in range(2)]
    finally:
        s.shutdown(10)
    m = s.snapshot()
    assert texts[0] == texts[1] == solo_ids_text(story, ids, 10, temperature=0.0)
    assert (m.prompt_tokens, m.prompt_tokens_cached, m.kv_pages_cached) == (2 * len(ids), 0, 0)


def test_cancel_frees_pages(story):
    s = Scheduler(story, max_sessions=2, queue=2)
    finals = []
    started = threading.Event()
    req = None

    def on_event(e):
        started.set()
        if e.finish_reason:
            finals.append(e.finish_reason)

    s.start()
    try:
        req = s.submit(story.encode("Once upon a time"), 250, on_event, temperature=1.0, seed=3)
        assert started.wait(10)
        s.cancel(req)
    finally:
        s.shutdown(10)
    assert finals in (["cancelled"], ["stop"], ["length"]) and s.snapshot().kv_pages_used == 0


def test_an_engine_thread_that_fails_fails_its_requests(story, monkeypatch):
    """A bug in the engine thread: every running and waiting request gets an error
    event at once (none waits forever), `alive` says so, and submit refuses."""
    s = Scheduler(story, max_sessions=1, queue=2)
    calls = []

    def broken(running):
        calls.append(len(running))
        raise RuntimeError("boom")

    monkeypatch.setattr(s, "_step", broken)
    errors = []
    done = threading.Event()

    def on_event(e):
        if e.error:
            errors.append(e.error)
            if len(errors) == 3:
                done.set()

    for prompt in ("One day", "The cat", "A dog"):
        s.submit(story.encode(prompt), 5, on_event, temperature=0.0)
    assert s.alive
    s.start()
    assert done.wait(10)
    assert all("the engine stopped (RuntimeError: boom)" in e for e in errors)
    assert not s.alive and s.snapshot().kv_pages_used == 0
    with pytest.raises(Busy, match="engine stopped"):
        s.submit([1, 2], 1, on_event)
