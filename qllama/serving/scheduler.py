"""Continuous batching: many sequences over one model, driven by one engine thread.

Callers (the HTTP server's handlers) never touch the engine: they `submit` a request
and get its events through a callback, from the engine thread. Each step, the engine
thread takes the next token of every running sequence and a bounded chunk of waiting
prompt tokens (chunked prefill: a long prompt does not freeze the others' streams),
runs them as one batch, and hands each sequence's prediction to its Generation.
Requests join at the next step and leave the moment they finish or are cancelled;
their KV cache goes back to the pool then. The choices of one prompt (a request's n)
run the prompt once: the first runs it, and the others start from its KV cache and
its last logits, each with its own sampler. A prompt that starts with tokens whose
whole KV pages an ended sequence left in the pool (batch.KVPool) runs from there.

Admission: at most `max_sessions` sequences run, and their KV cache must fit the
pool; the rest wait in a queue of at most `queue` requests, and past that `submit`
raises Busy (an HTTP 503 with Retry-After).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import QllamaError, UsageError
from ..generation import Generation, TokenLogprob, Usage, non_finite_logits, token_logprob
from ..model import token_array
from ..sampling import check_sampling, default_seed
from .batch import PAGE, BatchEngine, prefix_keys

PREFILL_CHUNK = 64  # prompt tokens one step takes, over all sequences


class Busy(QllamaError):
    """Every session and queue place is taken: try again later."""

    retry_after = 1


@dataclass
class Event:
    """What a request gets from the engine thread: text as it is made, then one event
    with finish_reason ("stop", "length", "cancelled") or error, and usage."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None
    logprobs: list | None = None  # TokenLogprobs of the tokens since the last event


@dataclass(eq=False)
class Request:
    prompt_ids: list
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: tuple
    on_event: Callable[[Event], None]
    logprobs: int | None = None  # top tokens to report with each one's logprob
    echo: bool = False  # the prompt tokens' logprobs too
    cancelled: bool = False
    # engine-side state
    generation: Generation | None = None
    fed: int = 0  # positions run so far
    pages: object = None  # the KV cache it holds while running
    # choices of one prompt: the first runs the prompt, its followers start from it
    leader: Request | None = None  # while this one waits for its leader's prompt
    followers: list = field(default_factory=list)
    keys: list = field(default_factory=list)  # of the prompt's pages it may find cached

    @property
    def positions(self) -> int:
        """Positions the sequence can need: the prompt and every generated token but the last."""
        return len(self.prompt_ids) + max(self.max_tokens, 1) - 1


@dataclass
class Metrics:
    running: int = 0
    queued: int = 0
    kv_pages_used: int = 0
    kv_pages_total: int = 0
    kv_pages_cached: int = 0
    tokens_generated: int = 0
    prompt_tokens: int = 0  # run
    prompt_tokens_cached: int = 0  # found in the pool's cached pages instead
    requests_finished: int = 0
    steps: int = 0
    step_seconds: float = 0.0  # all steps together
    last_step_seconds: float = 0.0


class Scheduler:
    """Runs requests on `model` (a qllama.Model) from its own engine thread.
    `prefix_cache`: bytes of KV memory no session needed that ended sequences' whole
    pages may keep, for prompts that start alike (batch.KVPool); None: a quarter of
    the pool; 0: none, and every prompt runs whole."""

    def __init__(self, model, max_sessions: int = 8, queue: int = 16,
                 kv_memory: int | None = None, prefill_chunk: int = PREFILL_CHUNK,
                 prefix_cache: int | None = None):
        for what, value, least in (("max sessions", max_sessions, 1), ("queue", queue, 0),
                                   ("prefill chunk", prefill_chunk, 1)):
            if value < least:
                raise UsageError(f"{what} is {value}, must be at least {least}")
        if prefix_cache is not None and prefix_cache < 0:
            raise UsageError(f"prefix cache memory is {prefix_cache}, must be at least 0")
        self.model = model
        self.max_sessions = max_sessions
        self.queue_limit = queue
        self.prefill_chunk = prefill_chunk
        self.prefix_cache = prefix_cache != 0
        self.engine = BatchEngine(model, max_rows=max_sessions + prefill_chunk,
                                  kv_memory=kv_memory, max_sessions=max_sessions,
                                  cache_memory=prefix_cache)
        self.seq_len = model.spec.seq_len
        # the most positions one request can hold: its context, or the whole KV pool
        self.max_positions = min(self.seq_len, self.engine.pool.pages * PAGE)
        self.metrics = Metrics(kv_pages_total=self.engine.pool.pages)
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._lock = threading.Condition()
        self._stopping = False
        self.failure: str | None = None  # why the engine thread stopped, if it failed
        self._thread = threading.Thread(target=self._loop, name="qllama-engine", daemon=True)

    # -- the callers' side -------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt_ids, max_tokens: int, on_event, temperature: float = 1.0,
               top_p: float = 0.9, seed: int | None = None, stop=(),
               logprobs: int | None = None, echo: bool = False) -> Request:
        """Queue a request; its events go to on_event (called from the engine thread).
        Raises UsageError for what cannot run, Busy when every place is taken."""
        return self.submit_all([self.request(prompt_ids, max_tokens, on_event, temperature,
                                             top_p, seed, stop, logprobs, echo)])[0]

    def request(self, prompt_ids, max_tokens: int, on_event, temperature: float = 1.0,
                top_p: float = 0.9, seed: int | None = None, stop=(),
                logprobs: int | None = None, echo: bool = False) -> Request:
        """A request checked as `submit` checks it, not queued. Raises UsageError."""
        ids = token_array(prompt_ids, self.model.spec.vocab_size).tolist()
        if max_tokens < 0:  # 0: the prompt run (an echo's logprobs), nothing generated
            raise UsageError(f"max_tokens is {max_tokens}, must be at least 0")
        if len(ids) + (max_tokens > 0) > self.seq_len or not ids:
            raise UsageError(f"the prompt is {len(ids)} tokens; this model's context is "
                             f"{self.seq_len}, and the answer needs at least one more")
        seed = default_seed() if seed is None else seed
        check_sampling(temperature, top_p, 0, seed)
        # held to the context, and to what the pool holds, as a chat's default reply is
        max_tokens = min(max_tokens, self.max_positions - len(ids) + 1)
        req = Request(ids, max_tokens, temperature, top_p, seed, tuple(stop), on_event,
                      logprobs, echo and logprobs is not None)
        if self.prefix_cache and not req.echo:  # an echo scores every prompt token
            req.keys = prefix_keys(ids, (len(ids) - 1) // PAGE)
        if not self.engine.pool.could_hold(req.positions):
            raise UsageError(f"the prompt and max_tokens need {req.positions} positions of KV "
                             "cache, more than the whole pool holds (--kv-memory)")
        return req

    @property
    def places(self) -> int:
        """Requests that may run or wait at once."""
        return self.max_sessions + self.queue_limit

    def submit_all(self, reqs: list) -> list:
        """Queue requests (from `request`) all together or none: a client's choices
        either all get places or the client is told Busy once."""
        with self._lock:
            if self.failure is not None:
                raise Busy(f"the engine stopped ({self.failure})")
            if self._stopping:
                raise Busy("the server is shutting down")
            if len(self._running) + len(self._waiting) + len(reqs) > self.places:
                raise Busy(f"all {self.max_sessions} sessions and {self.queue_limit} queue "
                           "places are taken" if len(reqs) == 1 else
                           f"{len(reqs)} choices need as many places; of {self.max_sessions}"
                           f" sessions and {self.queue_limit} queue places, "
                           f"{len(self._running) + len(self._waiting)} are taken")
            first = {}
            for req in reqs:  # the later choices of a prompt follow its first
                key = (tuple(req.prompt_ids), req.echo, req.logprobs)
                if key in first:
                    req.leader = first[key]
                    first[key].followers.append(req)
                else:
                    first[key] = req
            self._waiting.extend(reqs)
            self._lock.notify()
        return reqs

    def cancel(self, req: Request) -> None:
        """Stop a request (its client went away): its KV pages are free after the next step."""
        with self._lock:
            req.cancelled = True
            self._lock.notify()

    def shutdown(self, timeout: float | None = None) -> None:
        """Accept nothing new, finish what runs and waits, then stop the engine thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def snapshot(self) -> Metrics:
        with self._lock:
            m = Metrics(**vars(self.metrics))
            m.running, m.queued = len(self._running), len(self._waiting)
            m.kv_pages_used = self.engine.pool.used
            m.kv_pages_cached = self.engine.pool.kept
            return m

    @property
    def alive(self) -> bool:
        """The engine thread runs (or has not started yet) and has not failed."""
        return self.failure is None and (self._thread.is_alive() or not self._thread.ident)

    # -- the engine thread ---------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._run()
        except BaseException as e:  # a bug: fail every request now, not leave them waiting
            with self._lock:
                self.failure = f"{type(e).__name__}: {e}"
                self._stopping = True
                event = f"the engine stopped ({self.failure})"
                for req in list(self._running):
                    self._release(req, Event(error=event))
                while self._waiting:
                    self._finish(self._waiting.popleft(), Event(error=event))
            print(f"qllama: error: {event}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._drop_cancelled()
                self._admit()
                while not self._running:
                    if self._stopping and not self._waiting:
                        return
                    self._lock.wait()
                    self._drop_cancelled()
                    self._admit()
                running = list(self._running)
            self._step(running)

    def _drop_cancelled(self) -> None:
        for req in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(req)
            self._finish(req, Event(finish_reason="cancelled"))
        for req in [r for r in self._running if r.cancelled]:
            self._release(req, Event(finish_reason="cancelled"))

    def _admit(self) -> None:
        """Waiting requests start, in order, while a session and their KV cache are free."""
        while self._waiting and len(self._running) < self.max_sessions:
            req = self._waiting[0]
            # a follower of a running leader starts from the leader's pages (_fork)
            cached = self.engine.pool.lookup(req.keys) if req.leader is None else []
            pages = self.engine.pool.take(req.positions, cached)
            if pages is None:
                return  # the pool frees pages as sequences end
            self._waiting.popleft()
            req.pages = pages
            req.fed = len(cached) * PAGE
            self.metrics.prompt_tokens_cached += req.fed
            try:
                req.generation = Generation(
                    self.model, req.prompt_ids, req.max_tokens,
                    self.model.sampler(req.temperature, req.top_p, req.seed), req.stop,
                    logprobs=req.logprobs)
                req.generation.usage.cached_tokens = req.fed
                if req.echo:  # the first token has nothing before it to be scored by
                    req.generation.add_prompt_logprob(TokenLogprob(req.prompt_ids[0], None, None))
            except QllamaError as e:
                self._release(req, Event(error=str(e)))
                continue
            self._running.append(req)

    def _step(self, running: list) -> None:
        """One batch: each decoding sequence's last token, then prompt chunks."""
        rows = []  # (request, tokens, whether its last row predicts a token)
        budget = self.prefill_chunk
        prefill = 0
        for req in running:
            if req.leader is not None:
                if req.leader.pages is not None:
                    continue  # its leader runs the prompt for both (_fork)
                req.leader = None  # which ended before its prompt did: run it alone
            n_prompt = len(req.prompt_ids)
            if req.fed >= n_prompt:
                rows.append((req, [req.generation.tokens[-1]], True))
            elif budget > 0:
                take = min(budget, n_prompt - req.fed)
                budget -= take
                prefill += take
                rows.append((req, req.prompt_ids[req.fed:req.fed + take],
                             "all" if req.echo else req.fed + take == n_prompt))
        t0 = time.perf_counter()
        try:
            logits = self.engine.forward([(r.pages, r.fed, np.asarray(toks, np.int32), want)
                                          for r, toks, want in rows])
        except Exception as e:  # the engine refused the batch: fail its requests, go on
            with self._lock:
                for req, _, _ in rows:
                    self._release(req, Event(error=f"engine error: {e}"))
            return
        seconds = time.perf_counter() - t0
        done = []
        generated = 0
        for (req, toks, want), out in zip(rows, logits):
            start = req.fed
            req.fed += len(toks)
            if want == "all":  # an echo: row k scores the prompt token after it
                prompt = req.prompt_ids
                if not np.isfinite(out).all():  # the sampler's check, which it may not reach
                    bad = int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
                    done.append((req, Event(error=str(non_finite_logits(
                        self.model, start + bad + 1)))))
                    continue
                for k, q in enumerate(range(start + 1, min(req.fed + 1, len(prompt)))):
                    req.generation.add_prompt_logprob(token_logprob(out[k], prompt[q],
                                                                    req.logprobs))
                out = out[-1]
                want = req.fed == len(prompt)
            if not want:
                continue
            for f in req.followers:  # before req samples: the sampler overwrites `out`
                generated += self._fork(req, f, out, done)
            req.followers = []
            generated += self._answer(req, out, done)
        with self._lock:
            m = self.metrics
            m.steps += 1
            m.step_seconds += seconds
            m.last_step_seconds = seconds
            m.prompt_tokens += prefill
            m.tokens_generated += generated
            for req, event in done:
                self._release(req, event)

    def _answer(self, req: Request, out, done: list) -> int:
        """req's next token from its logits `out`, sent on; tokens generated (0 or 1).
        Requests that end go to `done`, to be released under the lock."""
        if req.max_tokens == 0:  # the prompt run (and scored): nothing to generate
            done.append((req, Event("", "length", req.generation.usage, logprobs=(
                req.generation.take_logprobs(True) if req.logprobs is not None else None))))
            return 0
        try:
            made = len(req.generation.tokens)
            text, reason = req.generation.step(out)
        except QllamaError as e:
            done.append((req, Event(error=str(e))))
            return 0
        # an event carries the logprobs of the tokens since the last one's
        logprobs = (req.generation.take_logprobs(final=reason is not None)
                    if req.logprobs is not None and (reason or text) else None)
        if reason is not None:
            done.append((req, Event(text, reason, req.generation.usage, logprobs=logprobs)))
        elif text:
            req.on_event(Event(text, logprobs=logprobs))
        return len(req.generation.tokens) - made  # none when EOS ends it

    def _fork(self, leader: Request, f: Request, out, done: list) -> int:
        """f, a follower of leader, whose prompt has just run: f starts from it, sharing
        the prompt's whole pages and copying the page it ends in (f writes its answer
        there), then answers from a copy of its last logits. A follower not running
        yet runs the prompt itself."""
        f.leader = None
        if f.pages is None or f.cancelled:
            return 0
        n = len(f.prompt_ids)
        whole = n // PAGE
        pool = self.engine.pool
        with self._lock:
            pool.give(f.pages[:whole])
            f.pages[:whole] = pool.share(leader.pages[:whole])
        if n % PAGE:
            pool.cache.copy_page(leader.pages[whole], f.pages[whole])
        f.fed = n
        if f.echo:
            f.generation.share_prompt_logprobs(leader.generation)
        return self._answer(f, out.copy(), done)

    def _release(self, req: Request, event: Event) -> None:
        if req in self._running:
            self._running.remove(req)
        if req.pages is not None:
            pool = self.engine.pool
            if self.prefix_cache and event.error is None and req.generation is not None:
                whole = req.fed // PAGE
                pool.keep(req.pages[:whole],
                          prefix_keys(req.prompt_ids + req.generation.tokens, whole))
            pool.give(req.pages)
            req.pages = None
        self._finish(req, event)

    def _finish(self, req: Request, event: Event) -> None:
        if event.usage is None:
            event.usage = req.generation.usage if req.generation else Usage(len(req.prompt_ids))
        self.metrics.requests_finished += 1
        try:
            req.on_event(event)
        except Exception:  # a caller's callback must not stop the engine
            pass
