"""The engine for many sequences: one forward call per step over rows of different
sequences, each with its own KV cache and position.

KV memory is one budget (`kv_memory` bytes), counted in pages of PAGE positions;
a sequence takes the pages its positions need when it starts and gives them back
when it ends.
"""
from __future__ import annotations

import time

import numpy as np

from .._kernels.engine import State
from ..errors import UsageError

PAGE = 16  # positions per KV page
DEFAULT_KV_MEMORY = 1 << 30


class KVPool:
    """The pages of KV cache sequences may hold."""

    def __init__(self, page_bytes: int, kv_memory: int, seq_len: int):
        self.page_bytes = page_bytes
        self.pages = max(1, kv_memory // page_bytes)
        self.used = 0
        self.seq_len = seq_len

    def pages_for(self, positions: int) -> int:
        return -(-positions // PAGE)

    def could_hold(self, positions: int) -> bool:
        return self.pages_for(positions) <= self.pages

    def take(self, positions: int):
        n = self.pages_for(positions)
        if self.used + n > self.pages:
            return None
        self.used += n
        return _Pages(n, positions)

    def give(self, pages) -> None:
        self.used -= pages.n
        pages.release()


class _Pages:
    def __init__(self, n: int, positions: int):
        self.n = n
        self.positions = positions
        self.state = None  # the sequence's run state, made on its first forward

    def release(self) -> None:
        self.state = None


class BatchEngine:
    def __init__(self, model, max_rows: int, kv_memory: int | None = None):
        c = model.config
        self.model = model
        self.max_rows = max_rows
        item = 2 if model.kv == "f16" else 4
        page_bytes = 2 * item * c.n_layers * c.kv_dim * PAGE
        self.pool = KVPool(page_bytes, kv_memory or DEFAULT_KV_MEMORY, c.seq_len)
        self.vocab = c.vocab_size

    def forward(self, rows: list) -> list:
        """rows: (pages, first position, int32 tokens, want logits); returns for each
        the logits (vocab,) of its last token, or None."""
        if sum(len(t) for _, _, t, _ in rows) > self.max_rows:
            raise UsageError("batch larger than the engine's rows")
        out = []
        governor = self.model.governor
        for pages, pos, tokens, want in rows:
            if pages.state is None:
                pages.state = State(self.model.weights, pages.positions, 64,
                                    self.model.threads, self.model.kv)
            logits = np.empty((1, self.vocab), np.float32)
            state = pages.state
            for start in range(0, len(tokens), 64):
                block = tokens[start:start + 64]
                state.threads = threads = governor.threads(len(block))
                t0, c0 = time.perf_counter(), time.thread_time()
                state.forward(block, pos + start, logits)
                governor.record(threads, time.perf_counter() - t0, time.thread_time() - c0,
                                len(block))
            out.append(logits[0] if want else None)
        return out
