"""The engine for many sequences: one forward pass per step over rows of different
sequences, each at its own position over its own KV pages (engine.Workspace).

KV memory is one pool (`kv_memory` bytes) of pages of PAGE positions. A sequence
takes the pages its positions can need when it starts (so it never runs out midway)
and gives them back when it ends; pages are faulted in as they are first written, so
the resident set follows the tokens actually cached. No split of the context per
slot: any sequence may grow to the model's seq_len while the pool has pages.
"""
from __future__ import annotations

import time

import numpy as np

from .._kernels.engine import KVCache, Workspace
from ..errors import UsageError

PAGE = 16  # positions per KV page: a short sequence wastes at most 15 positions of cache


def page_bytes(config, kv: str) -> int:
    """Bytes of one KV page: keys and values of PAGE positions in every layer."""
    return 2 * (2 if kv == "f16" else 4) * config.n_layers * config.kv_dim * PAGE


class KVPool:
    """`pages` pages of KV cache to hand out (page ids into one KVCache). A page may
    have several holders (`share`): the choices of one prompt read its prompt's pages,
    written once; it is free when the last holder gives it back."""

    def __init__(self, weights, kv: str, pages: int):
        self.pages = pages
        self.cache = KVCache(weights, PAGE, pages, kv, fault=False)
        self.page_bytes = self.cache.page_bytes
        self._free = list(range(pages - 1, -1, -1))  # a stack: reuse resident pages
        self._holders = [0] * pages

    @property
    def used(self) -> int:
        return self.pages - len(self._free)

    @staticmethod
    def pages_for(positions: int) -> int:
        return -(-positions // PAGE)

    def could_hold(self, positions: int) -> bool:
        return self.pages_for(positions) <= self.pages

    def take(self, positions: int) -> list | None:
        """Page ids for `positions`, or None while the pool has too few free."""
        n = self.pages_for(positions)
        if n > len(self._free):
            return None
        return self.share([self._free.pop() for _ in range(n)])

    def share(self, pages: list) -> list:
        """`pages`, held by one more holder."""
        for p in pages:
            self._holders[p] += 1
        return list(pages)

    def give(self, pages: list) -> None:
        for p in reversed(pages):
            self._holders[p] -= 1
            if not self._holders[p]:
                self._free.append(p)


class BatchEngine:
    """Forward passes over batches of sequences for `model` (a qllama.Model)."""

    def __init__(self, model, max_rows: int, kv_memory: int | None = None,
                 max_sessions: int = 8):
        c = model.spec
        self.model = model
        self.vocab = c.vocab_size
        if kv_memory is None:  # every session may reach seq_len
            pages = max_sessions * KVPool.pages_for(c.seq_len)
        else:
            pages = max(1, kv_memory // page_bytes(c, model.kv))
        self.pool = KVPool(model.weights, model.kv, pages)
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
