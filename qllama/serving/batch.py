"""The engine for many sequences: one forward pass per step over rows of different
sequences, each at its own position over its own KV pages (engine.Workspace).

KV memory is one pool (`kv_memory` bytes) of pages of PAGE positions. A sequence
takes the pages its positions can need when it starts (so it never runs out midway)
and gives them back when it ends; pages are faulted in as they are first written, so
the resident set follows the tokens actually cached. No split of the context per
slot: any sequence may grow to the model's seq_len while the pool has pages. Whole
pages a sequence leaves behind stay named by their tokens until the pool needs them,
so a later prompt that starts with the same tokens (a chat's next turn, a shared
system prompt) runs only what follows them.
"""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

import numpy as np

from .._kernels.engine import KVCache, Workspace
from ..errors import UsageError

PAGE = 16  # positions per KV page: a short sequence wastes at most 15 positions of cache


def page_bytes(config, kv: str) -> int:
    """Bytes of one KV page: keys and values of PAGE positions in every layer."""
    return 2 * (2 if kv == "f16" else 4) * config.n_layers * config.kv_dim * PAGE


def prefix_keys(ids, n: int) -> list:
    """Names of the first n whole pages of a sequence's KV cache: page j's KV depends
    on tokens 0..(j+1)·PAGE-1, so its key is a digest chained over them."""
    a = np.asarray(ids[:n * PAGE], "<i4")
    keys, key = [], b""
    for j in range(n):
        key = hashlib.blake2b(key + a[j * PAGE:(j + 1) * PAGE].tobytes(), digest_size=16).digest()
        keys.append(key)
    return keys


class KVPool:
    """`pages` pages of KV cache to hand out (page ids into one KVCache).

    A page may have several holders (`share`): the choices of one prompt read the
    prompt's pages, written once. A page whose last holder gives it back is free, or,
    if `keep` named it by the tokens its KV holds (`prefix_keys`), idle: `lookup`
    finds it for a later sequence that starts with those tokens, until the pool needs
    it. Pages are handed out in this order: free pages used before; pages never used,
    while fewer than `cache_pages` are idle (default a quarter of the pool), so that
    conversations that take turns do not evict each other; the idle page let go of
    longest ago; pages never used. So the cache takes at most `cache_pages` pages of
    memory that no session needed, and a quiet pool stays small."""

    def __init__(self, weights, kv: str, pages: int, cache_pages: int | None = None):
        self.pages = pages
        self.cache_pages = pages // 4 if cache_pages is None else cache_pages
        self.cache = KVCache(weights, PAGE, pages, kv, fault=False)
        self.page_bytes = self.cache.page_bytes
        self._free = []  # a stack of pages given back
        self._unused = list(range(pages - 1, -1, -1))  # never handed out: not resident
        self._holders = [0] * pages
        self._page = {}  # a kept page's key -> the page
        self._key = {}  # and back
        self._idle = OrderedDict()  # kept pages no one holds, least recently let go first

    @property
    def used(self) -> int:
        """Pages held by sequences."""
        return self.pages - len(self._free) - len(self._unused) - len(self._idle)

    @property
    def kept(self) -> int:
        """Pages named by their tokens (held or idle)."""
        return len(self._key)

    @staticmethod
    def pages_for(positions: int) -> int:
        return -(-positions // PAGE)

    def could_hold(self, positions: int) -> bool:
        return self.pages_for(positions) <= self.pages

    def lookup(self, keys: list) -> list:
        """The kept pages of keys[0], keys[1], ... as far as all are kept."""
        pages = []
        for key in keys:
            page = self._page.get(key)
            if page is None:
                break
            pages.append(page)
        return pages

    def take(self, positions: int, kept: list = ()) -> list | None:
        """Page ids for `positions`: first `kept` (from lookup, held now by one more),
        then pages of no one's; None while the pool has too few."""
        n = self.pages_for(positions) - len(kept)
        spare = len(self._free) + len(self._unused) + len(self._idle)
        if n > spare - sum(p in self._idle for p in kept):
            return None
        for p in kept:
            self._idle.pop(p, None)
        return self.share(list(kept) + [self._spare() for _ in range(n)])

    def _spare(self) -> int:
        if self._free:
            return self._free.pop()
        if self._unused and len(self._idle) < self.cache_pages:
            return self._unused.pop()
        if self._idle:
            page, _ = self._idle.popitem(last=False)
            del self._page[self._key.pop(page)]
            return page
        return self._unused.pop()

    def share(self, pages: list) -> list:
        """`pages`, held by one more holder."""
        for p in pages:
            self._holders[p] += 1
        return list(pages)

    def keep(self, pages: list, keys: list) -> None:
        """Name held pages by their keys (pages[j]'s KV is keys[j]'s tokens') to be
        found by `lookup`; a page or key named already stays as it is."""
        for page, key in zip(pages, keys):
            if key not in self._page and page not in self._key:
                self._page[key] = page
                self._key[page] = key

    def give(self, pages: list) -> None:
        for p in reversed(pages):  # a sequence's first pages are let go of last
            self._holders[p] -= 1
            if not self._holders[p]:
                if p in self._key:
                    self._idle[p] = None
                else:
                    self._free.append(p)


class BatchEngine:
    """Forward passes over batches of sequences for `model` (a qllama.Model)."""

    def __init__(self, model, max_rows: int, kv_memory: int | None = None,
                 max_sessions: int = 8, cache_memory: int | None = None):
        c = model.spec
        self.model = model
        self.vocab = c.vocab_size
        if kv_memory is None:  # every session may reach seq_len
            pages = max_sessions * KVPool.pages_for(c.seq_len)
        else:
            pages = max(1, kv_memory // page_bytes(c, model.kv))
        self.pool = KVPool(model.weights, model.kv, pages, None if cache_memory is None
                           else cache_memory // page_bytes(c, model.kv))
        self.workspace = Workspace(model.weights, max_rows, c.seq_len, model.threads)

    @property
    def max_rows(self) -> int:
        return self.workspace.max_rows

    def forward(self, batch: list) -> list:
        """batch: (pages, first position, int32 tokens, want logits) per sequence, each
        sequence once; returns for each the logits (vocab,) of its last token (want
        True), of every token ((tokens, vocab); want "all") or None (want False)."""
        tokens = np.concatenate([t for _, _, t, _ in batch]).astype(np.int32, copy=False)
        if len(tokens) > self.max_rows:
            raise UsageError(f"a batch of {len(tokens)} rows; the engine takes {self.max_rows}")
        width = max(len(p) for p, _, _, _ in batch)
        tables = np.zeros((len(batch), width), np.int32)
        positions = np.empty(len(tokens), np.int32)
        seq = np.empty(len(tokens), np.int32)
        logit_rows, wanted = [], []  # wanted: (sequence, its first and end logits rows)
        row = 0
        for i, (pages, pos, toks, want) in enumerate(batch):
            tables[i, :len(pages)] = pages
            positions[row:row + len(toks)] = np.arange(pos, pos + len(toks))
            seq[row:row + len(toks)] = i
            if want == "all":
                wanted.append((i, len(logit_rows), len(logit_rows) + len(toks)))
                logit_rows += range(row, row + len(toks))
            elif want:
                wanted.append((i, len(logit_rows), None))
                logit_rows.append(row + len(toks) - 1)
            row += len(toks)
        out = [None] * len(batch)
        if not logit_rows:  # the classifier needs a row; take the last and drop it
            logit_rows = [row - 1]
        logits = np.empty((len(logit_rows), self.vocab), np.float32)
        governor = self.model.governor
        self.workspace.threads = threads = governor.threads(len(tokens))
        t0, c0 = time.perf_counter(), time.thread_time()
        self.workspace.forward(self.pool.cache, tokens, positions, seq, tables,
                               np.asarray(logit_rows, np.int32), logits)
        governor.record(threads, time.perf_counter() - t0, time.thread_time() - c0, len(tokens))
        for i, first, end in wanted:
            out[i] = logits[first] if end is None else logits[first:end]
        return out
