"""One sequence's generation after each logits vector: sample (run.c's sampler), stop
at EOS/BOS, at a stop string or at max_tokens, and turn tokens into text.

Used alike by the scheduler (many sequences) and by anything that drives a single
Session. Text comes out as the tokenizer's incremental decoder makes it (whole UTF-8
characters); text that might be the start of a stop string is held back until it is
known not to be one, so a stop string never reaches the client, even split across
tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FormatError
from ..model import BOS, EOS


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class StopText:
    """Streamed text with stop strings cut out: feed() returns what may be shown now."""

    def __init__(self, stops=()):
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text to show, whether a stop string was met: nothing after it is shown)."""
        text = self.held + piece
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.held = ""
            return text[:cut], True
        keep = 0  # the longest tail of text that begins some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), keep, -1):
                if text.endswith(s[:n]):
                    keep = n
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


class Generation:
    """What a sequence does with each prediction; `step` returns (text, finish_reason),
    finish_reason None while it goes on, "stop" or "length" at its end."""

    def __init__(self, model, prompt_ids, max_tokens: int, temperature: float, top_p: float,
                 seed: int, stop=()):
        self.model = model
        self.prompt_ids = list(prompt_ids)
        self.max_tokens = max_tokens
        self.sampler = model.sampler(temperature, top_p, seed)
        self.decoder = model.text_stream(self.prompt_ids)
        self.stop = StopText(stop)
        self.usage = Usage(len(self.prompt_ids))
        self.tokens: list[int] = []
        self.finish_reason: str | None = None

    def step(self, logits: np.ndarray) -> tuple[str, str | None]:
        token = self.sampler.sample(logits)
        if token < 0:
            raise FormatError(f"{self.model.path}: the model computed NaN or infinite logits: "
                              "its weights hold NaN or Inf")
        if token in (BOS, EOS):
            return self._finish("stop")
        self.tokens.append(token)
        self.usage.completion_tokens += 1
        text, stopped = self.stop.feed(self.decoder.feed(token))
        if stopped:
            self.finish_reason = "stop"
            return text, "stop"
        if len(self.tokens) >= self.max_tokens:
            more, reason = self._finish("length")
            return text + more, reason
        return text, None

    def _finish(self, reason: str) -> tuple[str, str]:
        text, stopped = self.stop.feed(self.decoder.flush())
        self.finish_reason = "stop" if stopped else reason
        return text + ("" if stopped else self.stop.flush()), self.finish_reason
