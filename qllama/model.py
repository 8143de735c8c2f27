"""A loaded checkpoint: the Python face of the Cython engine.

file -> validated header -> mapped tensors -> Weights (each matrix's kernel
chosen for this CPU) -> State.forward (Cython, nogil) -> logits -> Sampler ->
tokens -> text. Python only orchestrates: one engine call
per block of prompt tokens and one per generated token.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import kernels
from ._kernels.engine import State, Weights
from ._kernels.sampler import Sampler
from .diagnostics import peak_rss_mb
from .errors import QllamaWarning, TokenizerError, UsageError, whole_number
from .formats import open_model
from .generation import BOS, Generation  # noqa: F401 (Llama 2's id, for callers)
from .sampling import check_sampling, default_seed
from .threads import ThreadGovernor, resolve_threads

PREFILL_BLOCK = 64  # prompt tokens per engine call: each weight row is read once per block
KV_TYPES = ("f16", "f32")
DEFAULT_STEPS = 256  # run.c's -n


def token_array(ids, vocab_size: int) -> np.ndarray:
    """ids as int32 after checking they are whole numbers within the vocabulary."""
    a = np.asarray(ids)
    if a.ndim != 1 or a.size == 0:
        raise UsageError("need a non-empty 1-D sequence of token ids")
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise UsageError(f"token ids must be integers, got {a.dtype}")
    if a.min() < 0 or a.max() >= vocab_size:
        raise UsageError(f"token ids must be in 0..{vocab_size - 1}")
    return a.astype(np.int32)


@dataclass
class Stats:
    """What one generation measured."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    prompt_seconds: float = 0.0
    generate_seconds: float = 0.0
    first_token_seconds: float = 0.0
    seed: int = 0
    tokens: list = field(default_factory=list)  # every position's token, BOS first

    def line(self) -> str:
        def rate(n, s):
            return f"{n / s:.1f}" if s > 0 else "-"
        return (f"prompt {self.prompt_tokens} tok at {rate(self.prompt_tokens, self.prompt_seconds)} "
                f"tok/s, generated {self.generated_tokens} tok at "
                f"{rate(self.generated_tokens, self.generate_seconds)} tok/s, first token after "
                f"{self.first_token_seconds * 1000:.1f} ms, peak RSS {peak_rss_mb():.0f} MB")


class Session:
    """One sequence: an engine with its own KV cache, sized to what it can reach."""

    def __init__(self, model: "Model", capacity: int):
        self.model = model
        self.engine = State(model.weights, capacity, PREFILL_BLOCK, model.threads, model.kv)
        self.pos = 0
        self.vocab = model.spec.vocab_size
        self._last = np.empty((1, self.vocab), np.float32)
        self._none = np.empty((0, self.vocab), np.float32)
        self._running = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.engine.capacity

    def feed(self, tokens, all_logits: bool = False) -> np.ndarray:
        """Run tokens at the next positions; the last prediction (vocab,) or all (T, vocab).
        The last prediction is the session's own buffer, overwritten by the next feed (no
        copy per token): copy it to keep it. A session is one sequence: feeding it from
        two threads at once is refused (each thread can have its own session)."""
        if not self._running.acquire(blocking=False):
            raise UsageError("this session is being fed on another thread; a session is one "
                             "sequence, so give each thread its own")
        try:
            return self._feed(tokens, all_logits)
        finally:
            self._running.release()

    def _feed(self, tokens, all_logits: bool) -> np.ndarray:
        tokens = token_array(tokens, self.vocab)
        n = len(tokens)
        if self.pos + n > self.capacity:
            raise UsageError(f"{self.pos + n} positions exceed the context of "
                             f"{self.capacity} tokens")
        out = np.empty((n, self.vocab), np.float32) if all_logits else self._last
        governor = self.model.governor
        for start in range(0, n, PREFILL_BLOCK):
            block = tokens[start:start + PREFILL_BLOCK]
            # a block before the last only fills the cache: no classifier for it
            target = (out[start:start + len(block)] if all_logits else
                      out if start + PREFILL_BLOCK >= n else self._none)
            self.engine.threads = threads = governor.threads(len(block))
            t0, c0 = time.perf_counter(), time.thread_time()
            self.engine.forward(block, self.pos, target)
            governor.record(threads, time.perf_counter() - t0, time.thread_time() - c0,
                            len(block))
            self.pos += len(block)
        return out if all_logits else out[0]


class Model:
    """A checkpoint (llama2.c v0/v1 fp32 or v2 Q8_0, or a llama GGUF file),
    memory-mapped, with its tokenizer (a GGUF file carries its own)."""

    def __init__(self, path, tokenizer=None, threads: int | None = None,
                 variant: str | None = None, kv: str = "f16"):
        self.path = os.fspath(path)
        self.threads = resolve_threads(threads)
        self.governor = ThreadGovernor(self.threads)  # all threads or one, as the load allows
        if kv not in KV_TYPES:
            raise UsageError(f"KV cache type {kv!r}: one of {', '.join(KV_TYPES)}")
        self.kv = kv
        self.variant = kernels.select(variant)  # before the file: a bad QLLAMA_ISA fails first
        self.decode_rows = kernels.decode_rows()
        self.file = open_model(self.path)
        self.spec = self.file.spec  # what the engine computes with
        self.stop_ids = (self.spec.bos_id, self.spec.eos_id)  # run.c stops at either
        # the llama2.c header, or for a GGUF file its spec (the same hyperparameters)
        self.config = getattr(self.file, "config", self.spec)
        self.weights = Weights(self.file, self.variant, self.decode_rows)
        if getattr(self.config, "straddles", False):
            warnings.warn(f"{self.path}: group size {self.config.group_size} does not divide "
                          f"the rows (dim {self.config.dim}, hidden_dim {self.config.hidden_dim}); "
                          "reading it by the format's definition on a slower path (llama2.c's "
                          "runq.c computes such files wrongly)", QllamaWarning, stacklevel=2)
        self._tokenizer = tokenizer  # a path (loaded on first use), a tokenizer, or None

    # -- tokenizer -------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None or isinstance(self._tokenizer, (str, bytes, os.PathLike)):
            from .formats.gguf_reader import GGUFModel
            from .tokenizer import find_tokenizer, from_gguf, load_tokenizer
            if self._tokenizer is None and isinstance(self.file, GGUFModel):
                self._tokenizer = from_gguf(self.file)  # the file's own vocabulary
            else:
                path = os.fsdecode(self._tokenizer or find_tokenizer(self.path))
                self._tokenizer = load_tokenizer(path, vocab_size=self.spec.vocab_size)
        elif self._tokenizer.vocab_size != self.spec.vocab_size:
            raise TokenizerError(f"tokenizer has {self._tokenizer.vocab_size} tokens, model "
                                 f"{self.path} has {self.spec.vocab_size}")
        return self._tokenizer

    def encode(self, text: str, bos: bool = True, eos: bool = False,
               special: bool = False) -> list[int]:
        """Token ids of `text`; with `special`, the control pieces written in it (`</s>`)
        are their ids (Tokenizer.encode_special), as llama.cpp reads a prompt."""
        if special:
            return self.tokenizer.encode_special(text, bos=bos, eos=eos)
        return self.tokenizer.encode(text, bos=bos, eos=eos)

    def decode(self, ids) -> str:
        ids = list(ids)
        return self.tokenizer.decode(token_array(ids, self.spec.vocab_size).tolist()) if ids else ""

    # -- engine ----------------------------------------------------------------
    def session(self, capacity: int | None = None) -> Session:
        """A new sequence of up to `capacity` positions (None or 0: the model's seq_len)."""
        if self.weights is None:
            raise UsageError(f"{self.path}: the model is closed")
        if capacity is not None and (not whole_number(capacity) or capacity < 0):
            raise UsageError(f"a session's capacity is a whole number of positions >= 0, "
                             f"got {capacity!r}")
        seq_len = self.spec.seq_len
        return Session(self, min(seq_len, capacity or seq_len))

    def logits(self, token_ids) -> np.ndarray:
        """Logits (positions, vocab): row t predicts the token after token_ids[..t]."""
        ids = token_array(token_ids, self.spec.vocab_size)
        if len(ids) > self.spec.seq_len:
            raise UsageError(f"{len(ids)} tokens exceed seq_len {self.spec.seq_len}")
        return self.session(len(ids)).feed(ids, all_logits=True)

    def generate_ids(self, prompt_ids: list[int], steps: int | None = None,
                     temperature: float = 1.0, top_p: float = 0.9, seed: int | None = None,
                     stats: Stats | None = None, session: Session | None = None,
                     sampler: Sampler | None = None, stop=None) -> Iterator[int]:
        """Sampled token ids after prompt_ids, as llama2.c's run.c: `steps` counts
        positions including the prompt (0 = seq_len; fewer than the prompt: nothing
        is generated; None: run.c's 256, or with a session all it has left); stop at BOS
        or EOS. A chat passes its `session` (KV cache kept between turns) and `sampler`.
        Arguments are checked now, not at the first token."""
        if steps is None:
            steps = 0 if session is not None else DEFAULT_STEPS
        check_sampling(temperature, top_p, steps, seed)
        seq_len = self.spec.seq_len
        prompt = token_array(prompt_ids, self.spec.vocab_size)
        if steps and steps < len(prompt):
            return iter(())
        if session is None:
            if len(prompt) > seq_len:
                raise UsageError(f"prompt is {len(prompt)} tokens, longer than the "
                                 f"model's seq_len {seq_len}")
            session = self.session(max(len(prompt), min(steps or seq_len, seq_len)))
        if session.pos + len(prompt) > session.capacity:
            raise UsageError(f"prompt of {len(prompt)} tokens does not fit in the "
                             f"{session.capacity - session.pos} positions left")
        stats = stats if stats is not None else Stats()
        stop = self.stop_ids if stop is None else stop
        if sampler is None:
            stats.seed = default_seed() if seed is None else seed
            sampler = self.sampler(temperature, top_p, stats.seed)
        # the last token is sampled, not run: one more than the positions left
        room = session.capacity - session.pos - len(prompt) + 1
        return self._generate(prompt, session, sampler, stats, stop,
                              min(room, steps - len(prompt) + 1) if steps else room)

    def _generate(self, prompt: np.ndarray, session: Session, sampler: Sampler,
                  stats: Stats, stop, most: int) -> Iterator[int]:
        stats.tokens.extend(prompt.tolist())
        t0 = time.perf_counter()
        logits = session.feed(prompt)
        t1 = time.perf_counter()
        stats.prompt_tokens += len(prompt)
        stats.prompt_seconds += t1 - t0
        gen = Generation(self, prompt, most, sampler, stop_ids=stop, text=False)
        first = True
        while True:
            token = gen.next_token(logits)
            if first:
                stats.first_token_seconds = time.perf_counter() - t0
                first = False
            if token is None:
                break
            stats.tokens.append(token)
            stats.generated_tokens += 1
            yield token
            if gen.finish_reason is not None:
                break
            logits = session.feed([token])
        stats.generate_seconds += time.perf_counter() - t1

    def sampler(self, temperature: float, top_p: float, seed: int) -> Sampler:
        return Sampler(self.spec.vocab_size, temperature, top_p, seed)

    def generate(self, prompt: str = "", steps: int = DEFAULT_STEPS, temperature: float = 1.0,
                 top_p: float = 0.9, seed: int | None = None,
                 stats: Stats | None = None) -> Iterator[str]:
        """Yield the text pieces generated after `prompt` (the prompt itself is not repeated).
        Arguments are checked now, as generate_ids checks them."""
        ids = self.encode(prompt, bos=True)
        return self._pieces(self.text_stream(ids),
                            self.generate_ids(ids, steps, temperature, top_p, seed, stats))

    @staticmethod
    def _pieces(stream, tokens) -> Iterator[str]:
        for token in tokens:
            piece = stream.feed(token)
            if piece:
                yield piece
        tail = stream.flush()
        if tail:
            yield tail

    def text_stream(self, context_ids):
        """Incremental decoder positioned after context_ids: byte-fallback tokens are
        joined into whole UTF-8 characters, pieces come out as SentencePiece decodes them."""
        stream = self.tokenizer.decoder()
        stream.feed_all(context_ids)
        return stream

    def close(self) -> None:
        self.weights = None  # its references to the map go first (sessions may keep theirs)
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        s = self.spec
        state = "closed" if self.weights is None else f"kernels {self.variant}"
        return (f"<qllama.Model {self.path}: dim {s.dim}, {s.n_layers} layers, vocab "
                f"{s.vocab_size}, seq_len {s.seq_len}; {state}, {self.threads} thread(s)>")


def load(path, tokenizer=None, threads: int | None = None, variant: str | None = None,
         kv: str = "f16") -> Model:
    """Open a llama2.c checkpoint (version 0, 1 or 2) or a llama GGUF file for generation
    and evaluation.
    `variant` names the kernel variant (default: $QLLAMA_ISA, else the CPU's best);
    `kv` the KV cache's type: "f16" (half the memory) or "f32" (run.c's)."""
    return Model(path, tokenizer=tokenizer, threads=threads, variant=variant, kv=kv)
