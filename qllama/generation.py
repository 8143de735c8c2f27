"""One sequence's generation after each logits vector: sample (run.c's sampler), stop
at EOS/BOS, at max_tokens or at a stop string, and turn tokens into text.

The one loop every caller runs: `qllama run` and chat (through Model.generate_ids, ids
only) and the server's scheduler (many sequences, text). Text comes out as the
tokenizer's incremental decoder makes it (whole UTF-8 characters); text that might be
the start of a stop string is held back until it is known not to be one, so a stop
string never reaches the client, even split across tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import FormatError

BOS = 1  # Llama 2's (llama2.c assumes it)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0
    cached_tokens: int = 0  # of the prompt's, whose KV a server found cached

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenLogprob:
    """A token's log-probability under the model (before temperature and top-p), and
    the `top` likeliest tokens' [(id, logprob)], likeliest first; a prompt's first
    token has neither (None). `offset`: where a generated token's text starts in the
    answer's text (None for a prompt's tokens)."""

    token: int
    logprob: float | None
    top: list | None
    offset: int | None = None


def non_finite_logits(model, tokens: int) -> FormatError:
    """What a sampler's -1 means: the logits after `tokens` tokens were not all finite."""
    return FormatError(f"{model.path}: the model computed NaN or infinite logits after "
                       f"{tokens} tokens: its weights hold NaN or Inf")


def token_logprob(logits: np.ndarray, token: int, top: int) -> TokenLogprob:
    """`token`'s TokenLogprob from the (finite) logits it was sampled from."""
    x = np.asarray(logits, np.float32)
    m = float(x.max())
    log_z = m + math.log(np.exp(x - m).sum(dtype=np.float64))
    # a few argmax passes beat a partition for OpenAI's 20 at most, and argmax's first
    # index among equals is the lower id
    rest = x.copy()
    best = []
    for _ in range(min(top, len(x))):
        best.append(int(rest.argmax()))
        rest[best[-1]] = -np.inf
    return TokenLogprob(token, float(x[token]) - log_z,
                        [(i, float(x[i]) - log_z) for i in best])


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
    """What a sequence does with each prediction. `next_token` gives the next token id,
    or None where the sequence ends (a stop id sampled); `step` the text it adds and the
    finish_reason: None while it goes on, "stop" or "length" at its end. `sampler` is
    run.c's (model.sampler); text=False skips decoding (ids only). With `logprobs` (a
    count of top tokens, 0 or more), each generated token's TokenLogprob is kept until
    `take_logprobs`."""

    def __init__(self, model, prompt_ids, max_tokens: int, sampler, stop=(),
                 stop_ids=None, text: bool = True, logprobs: int | None = None):
        self.model = model
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.stop_ids = model.stop_ids if stop_ids is None else stop_ids
        self.decoder = model.text_stream(list(prompt_ids)) if text else None
        self.stop = StopText(stop)
        self.usage = Usage(len(prompt_ids))
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self.logprobs = logprobs
        self._logprobs: list[TokenLogprob] = []  # not yet taken, in order
        # characters given to the stop-string filter, and shown by it: a token's
        # TokenLogprob goes out once its text has begun to, and if a stop string cuts
        # before its text, never
        self._fed = self._shown = 0

    def add_prompt_logprob(self, entry: TokenLogprob) -> None:
        """A prompt token's, to come before the generated tokens' (an echo)."""
        self._logprobs.append(entry)

    def share_prompt_logprobs(self, other: Generation) -> None:
        """The prompt's TokenLogprobs from `other`, a choice of the same prompt whose run
        this one starts from, none of them taken yet (an echo)."""
        self._logprobs = list(other._logprobs)

    def take_logprobs(self, final: bool = False) -> list[TokenLogprob]:
        """The TokenLogprobs of the prompt's tokens and of the generated tokens whose
        text has begun to be shown since the last call; `final`: all that are left
        (a stop id's too)."""
        n = len(self._logprobs)
        if not final:
            n = next((i for i, e in enumerate(self._logprobs)
                      if e.offset is not None and e.offset >= self._shown), n)
        taken, self._logprobs = self._logprobs[:n], self._logprobs[n:]
        return taken

    def next_token(self, logits: np.ndarray) -> int | None:
        raw = None if self.logprobs is None else logits.copy()  # the sampler overwrites them
        token = self.sampler.sample(logits)
        if token < 0:
            raise non_finite_logits(self.model, self.usage.total_tokens)
        if raw is not None:  # a stop id's too: a scorer reads the last entry as the answer's
            entry = token_logprob(raw, token, self.logprobs)
            entry.offset = self._fed
            self._logprobs.append(entry)
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return None
        self.tokens.append(token)
        self.usage.completion_tokens += 1
        if len(self.tokens) >= self.max_tokens:
            self.finish_reason = "length"
        return token

    def step(self, logits: np.ndarray) -> tuple[str, str | None]:
        token = self.next_token(logits)
        if token is None:
            return self._end()
        text, stopped = self._show(self.decoder.feed(token))
        if stopped:
            self.finish_reason = "stop"
            return text, "stop"
        if self.finish_reason is not None:
            more, reason = self._end()
            return text + more, reason
        return text, None

    def _show(self, piece: str) -> tuple[str, bool]:
        """The stop-string filter's (text, stopped) for `piece`, counted; at a stop
        string, the tokens whose text it cut away entirely lose their TokenLogprobs."""
        self._fed += len(piece)
        text, stopped = self.stop.feed(piece)
        self._shown += len(text)
        if stopped:
            self._logprobs = [e for e in self._logprobs
                              if e.offset is None or e.offset < self._shown]
        return text, stopped

    def _end(self) -> tuple[str, str]:
        text, stopped = self._show(self.decoder.flush())
        if stopped:
            self.finish_reason = "stop"
            return text, self.finish_reason
        rest = self.stop.flush()
        self._shown += len(rest)
        return text + rest, self.finish_reason
