"""What quantizing cost, measured against the original (`qllama eval`).

Both models run over one token stream (a text file's tokens, or tokens sampled
from the reference) in windows of at most seq_len positions, each starting with
BOS, through the batched prefill path (`Model.logits`). Position t of a window
predicts its token t+1; at every such position we compare the two next-token
distributions (KL divergence, top-1 agreement, top-5 overlap) and score the
actual next token (perplexity). Separately, every quantized tensor kind is
compared weight by weight (dequantized candidate vs reference), one layer and
one block of rows at a time so memory stays small.

Data flow: two validated files -> same-architecture check -> windows of token
ids -> logits (positions, vocab) of each model -> float64 log-softmax ->
per-position metrics -> totals -> rich table / JSON.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import UsageError
from .formats.llama2c import QUANTIZED, SHAPES, QTensor
from .generation import non_finite_logits
from .io.inputs import read_bounded
from .model import BOS
from .quant.types import BlockTensor, dequantize_rows
from .sampling import check_sampling
from .spec import SHAPE_FIELDS, ModelSpec

TOP_K = 5
DEFAULT_SAMPLE = 512
ROWS_PER_BLOCK = 64  # positions converted to float64 at once: bounds memory for big vocabularies
WEIGHT_BLOCK = 1 << 20  # weights compared at once (values)
TEXT_LIMIT = 1 << 30  # --text is tokenized whole


# ---------------------------------------------------------------------------
# Metrics on logits: pure functions of numpy arrays, checked against float64 numpy in tests


def log_softmax_probs(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise log-softmax and softmax in float64, one exp per value: (n, vocab) x2."""
    x = np.array(logits, dtype=np.float64)  # a copy, changed in place below
    x -= x.max(axis=-1, keepdims=True)
    e = np.exp(x)  # (n, vocab)
    total = e.sum(axis=-1, keepdims=True)  # (n, 1)
    x -= np.log(total)
    e /= total
    return x, e


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64: (n, vocab) -> (n, vocab)."""
    return log_softmax_probs(logits)[0]


def _kl(lp: np.ndarray, p: np.ndarray, lq: np.ndarray) -> np.ndarray:
    lq -= lp  # lq is scratch from here: log q - log p
    kl = -np.einsum("ij,ij->i", p, lq)  # (n,)
    return np.maximum(kl, 0.0)  # rounding can give -1e-17 for identical rows


def kl_divergence(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """KL(P_ref || P_cand) in nats at each position: (n, vocab) x2 -> (n,), float64, >= 0."""
    lp, p = log_softmax_probs(ref_logits)  # (n, vocab) each
    return _kl(lp, p, log_softmax(cand_logits))


def target_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log P(target) at each position in nats: (n, vocab), (n,) -> (n,), float64."""
    lp = log_softmax(logits)
    return -lp[np.arange(len(lp)), np.asarray(targets)]


def perplexity(nll: np.ndarray) -> float:
    """exp of the mean negative log-likelihood (nats per token)."""
    nll = np.asarray(nll, dtype=np.float64)
    if nll.size == 0:
        raise ValueError("perplexity of no tokens")
    return float(np.exp(nll.mean()))


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits per row (unordered): (n, vocab) -> (n, k)."""
    k = min(k, logits.shape[-1])
    return np.argpartition(logits, -k, axis=-1)[:, -k:]


def top1_agreement(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """1.0 where both models' most likely next token is the same, else 0.0: (n,)."""
    return (np.argmax(ref_logits, axis=-1) == np.argmax(cand_logits, axis=-1)).astype(np.float64)


def topk_overlap(ref_logits: np.ndarray, cand_logits: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Fraction of the reference's top k that is also in the candidate's top k: (n,)."""
    a, b = top_k(ref_logits, k), top_k(cand_logits, k)  # (n, k) each
    k = a.shape[1]
    hits = (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1)  # (n,)
    return hits / k


# ---------------------------------------------------------------------------
# Accumulating over windows


@dataclass
class Totals:
    """Sums over every evaluated position (float64), turned into the report's figures."""

    tokens: int = 0
    windows: int = 0
    kl_sum: float = 0.0
    kl_max: float = 0.0
    top1_sum: float = 0.0
    top5_sum: float = 0.0
    nll_ref: float = 0.0
    nll_cand: float = 0.0

    def add(self, ref_logits: np.ndarray, cand_logits: np.ndarray, targets: np.ndarray) -> None:
        """One window: logits (n, vocab) of each model and the n tokens they predict."""
        for i in range(0, len(targets), ROWS_PER_BLOCK):
            r = ref_logits[i:i + ROWS_PER_BLOCK]
            c = cand_logits[i:i + ROWS_PER_BLOCK]
            t = targets[i:i + ROWS_PER_BLOCK]
            rows = np.arange(len(t))
            lp, p = log_softmax_probs(r)  # (n, vocab) each, float64
            lq = log_softmax(c)  # (n, vocab)
            self.nll_ref -= float(lp[rows, t].sum())
            self.nll_cand -= float(lq[rows, t].sum())
            kl = _kl(lp, p, lq)  # (n,); overwrites lq
            self.kl_sum += float(kl.sum())
            self.kl_max = max(self.kl_max, float(kl.max()))
            self.top1_sum += float(top1_agreement(r, c).sum())
            self.top5_sum += float(topk_overlap(r, c).sum())
        self.tokens += len(targets)
        self.windows += 1


# ---------------------------------------------------------------------------
# Weights: dequantized candidate vs reference, per quantized kind


@dataclass
class WeightError:
    kind: str
    count: int = 0  # values compared
    sq_err: float = 0.0  # sum of squared errors
    sq_ref: float = 0.0  # sum of squared reference values
    max_abs: float = 0.0

    @property
    def rmse(self) -> float:
        return math.sqrt(self.sq_err / self.count) if self.count else 0.0

    @property
    def rel_rmse(self) -> float:
        """RMSE over the reference weights' RMS."""
        return math.sqrt(self.sq_err / self.sq_ref) if self.sq_ref else 0.0


def _rows(tensor, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a tensor as float32 (dequantized if Q8_0 or GGUF blocks)."""
    if isinstance(tensor, BlockTensor):
        return dequantize_rows(tensor, start, stop)
    if isinstance(tensor, QTensor):
        return tensor.rows(start, stop)
    return np.asarray(tensor[start:stop], dtype=np.float32).reshape(stop - start, -1)


def _classifier(file):
    return file.tensor("output") if file.has("output") else file.tensor("tok_embeddings")


def weight_errors(ref_file, cand_file) -> dict[str, WeightError]:
    """Per kind in QUANTIZED: errors of the candidate's weights against the reference's.

    Streams one layer and at most WEIGHT_BLOCK values at a time. A shared classifier
    is the token embedding table, so "output" compares whichever matrix each file uses;
    it is left out when both files share it (it is then tok_embeddings itself).
    """
    out = {}
    for kind in QUANTIZED:
        if kind == "output" and not (ref_file.has("output") or cand_file.has("output")):
            continue
        err = WeightError(kind)
        layers = range(ref_file.spec.n_layers) if SHAPES[kind][0] else (None,)
        for layer in layers:
            if kind == "output":
                a, b = _classifier(ref_file), _classifier(cand_file)
            else:
                a, b = ref_file.tensor(kind, layer), cand_file.tensor(kind, layer)
            shape = a.shape
            n_rows = shape[0]
            cols = int(np.prod(shape[1:]))
            step = max(1, WEIGHT_BLOCK // cols)
            for r in range(0, n_rows, step):
                s = min(n_rows, r + step)
                wa = _rows(a, r, s).astype(np.float64)
                d = _rows(b, r, s).astype(np.float64) - wa
                err.count += d.size
                err.sq_err += float(np.einsum("ij,ij->", d, d))
                err.sq_ref += float(np.einsum("ij,ij->", wa, wa))
                err.max_abs = max(err.max_abs, float(np.abs(d).max()))
        out[kind] = err
    return out


# ---------------------------------------------------------------------------
# Token streams


def check_same_architecture(ref: ModelSpec, cand: ModelSpec, ref_name: str, cand_name: str) -> None:
    """Raise UsageError naming every hyperparameter on which the two files differ."""
    diffs = [f"{f} {getattr(ref, f)} vs {getattr(cand, f)}" for f in SHAPE_FIELDS
             if getattr(ref, f) != getattr(cand, f)]
    if diffs:
        raise UsageError(f"{ref_name} and {cand_name} are not the same architecture: "
                         + ", ".join(diffs))


@dataclass
class Window:
    """Inputs [BOS, t1, .., t(n-1)] and the n tokens they predict [t1, .., tn]."""

    inputs: np.ndarray  # (n,) int32
    targets: np.ndarray  # (n,) int32


def window_of(tokens, bos: int = BOS) -> Window:
    """Window predicting `tokens` (each one) from BOS and the tokens before it."""
    tokens = np.asarray(tokens, dtype=np.int32)
    return Window(np.concatenate([[bos], tokens[:-1]]).astype(np.int32), tokens)


def text_windows(ids, seq_len: int, bos: int = BOS) -> list[Window]:
    """A text's token ids (no BOS) cut into windows of at most seq_len positions."""
    ids = [int(i) for i in ids]
    if ids and ids[0] == bos:
        ids = ids[1:]
    return [window_of(ids[i:i + seq_len], bos) for i in range(0, len(ids), seq_len)]


def sample_windows(model, n_tokens: int, seed: int = 1, temperature: float = 1.0) -> list[Window]:
    """n_tokens sampled from `model` (full distribution, run.c's sampler) from BOS.

    A window ends at seq_len positions or at a sampled BOS/EOS (kept as its last
    target, since the model did predict it); the next window starts again from BOS.
    """
    return list(sampled_windows(model, n_tokens, seed, temperature))


def sampled_windows(model, n_tokens: int, seed: int = 1, temperature: float = 1.0):
    """sample_windows' windows one at a time, each sampled when asked for, so that
    `evaluate` holds one window at a time however many tokens are asked for. The
    arguments are checked here, before the first window."""
    if n_tokens < 1:
        raise UsageError(f"--sample must be at least 1 token, got {n_tokens}")
    check_sampling(temperature, 1.0, n_tokens, seed)
    return _sampled(model, n_tokens, seed, temperature)


def _sampled(model, n_tokens: int, seed: int, temperature: float):
    seq_len, bos = model.spec.seq_len, model.spec.bos_id
    sampler = model.sampler(temperature, 1.0, seed)
    left = n_tokens
    while left > 0:
        n = min(left, seq_len)
        session = model.session(n)
        tokens = []
        logits = session.feed([bos])
        while True:
            token = sampler.sample(logits)
            if token < 0:
                raise non_finite_logits(model, len(tokens) + 1)
            tokens.append(token)
            if len(tokens) == n or token in model.stop_ids:
                break
            logits = session.feed([token])
        left -= len(tokens)
        del session, logits  # its KV cache goes before the window is evaluated
        yield window_of(tokens, bos)


# ---------------------------------------------------------------------------
# The whole evaluation


@dataclass
class Report:
    reference: str
    candidate: str
    reference_version: int | str  # a llama2.c version, or "gguf"
    candidate_version: int | str
    source: str  # "text FILE" or "N tokens sampled from REFERENCE (seed S)"
    tokens: int
    windows: int
    kl_mean: float
    kl_max: float
    top1_agreement: float  # fraction in [0, 1]
    top5_overlap: float  # fraction in [0, 1]
    perplexity_reference: float
    perplexity_candidate: float
    seconds: float
    weights: dict = field(default_factory=dict)  # kind -> {"rmse", "max_abs", "rel_rmse", ...}

    @property
    def perplexity_diff(self) -> float:
        return self.perplexity_candidate - self.perplexity_reference

    def as_dict(self) -> dict:
        d = asdict(self)
        d["perplexity_diff"] = self.perplexity_diff
        return d

    def summary(self) -> str:
        """One line of the main figures."""
        return (f"{self.tokens} tokens: KL mean {self.kl_mean:.3g} max {self.kl_max:.3g} nats, "
                f"top-1 agreement {100 * self.top1_agreement:.2f}%, top-5 overlap "
                f"{100 * self.top5_overlap:.2f}%, perplexity {self.perplexity_reference:.4g} → "
                f"{self.perplexity_candidate:.4g} ({self.perplexity_diff:+.3g})")


def evaluate(reference, candidate, windows, source: str = "",
             weights: bool = True, progress=None) -> Report:
    """Compare two loaded models (qllama.Model) over `windows` (any iterable of them,
    taken one at a time: sampled_windows'); see the module doc.

    `progress(tokens_done)` is called before the first window and after each. The
    report's seconds are the evaluation's, not the time the windows took to make.
    """
    check_same_architecture(reference.spec, candidate.spec, reference.path, candidate.path)
    t0 = time.perf_counter()
    totals = Totals()
    if progress is not None:
        progress(0)
    making, windows = 0.0, iter(windows)
    while True:
        t = time.perf_counter()
        w = next(windows, None)
        making += time.perf_counter() - t
        if w is None:
            break
        if not len(w.targets):
            continue
        r = reference.logits(w.inputs)  # (n, vocab)
        c = candidate.logits(w.inputs)  # (n, vocab)
        totals.add(r, c, w.targets)
        if progress is not None:
            progress(totals.tokens)
    n = totals.tokens
    if not n:
        raise UsageError("no tokens to evaluate")
    report = Report(
        reference=reference.path, candidate=candidate.path,
        reference_version=_version(reference), candidate_version=_version(candidate),
        source=source, tokens=n, windows=totals.windows,
        kl_mean=totals.kl_sum / n, kl_max=totals.kl_max,
        top1_agreement=totals.top1_sum / n, top5_overlap=totals.top5_sum / n,
        perplexity_reference=math.exp(totals.nll_ref / n),
        perplexity_candidate=math.exp(totals.nll_cand / n),
        seconds=0.0)
    if weights:
        for kind, e in weight_errors(reference.file, candidate.file).items():
            report.weights[kind] = {"rmse": e.rmse, "max_abs": e.max_abs,
                                    "rel_rmse": e.rel_rmse, "values": e.count}
    report.seconds = time.perf_counter() - t0 - making
    return report


def _version(model) -> int | str:
    return getattr(model.config, "version", "gguf")


def read_text(path: str) -> str:
    """The UTF-8 text of a file, or of standard input for '-'."""
    if path == "-":
        data, path = sys.stdin.buffer.read(TEXT_LIMIT + 1), "standard input"
        if len(data) > TEXT_LIMIT:
            raise UsageError(f"{path}: more than {TEXT_LIMIT:,} bytes of text to evaluate on")
    else:
        data = read_bounded(path, TEXT_LIMIT, "a text to evaluate on", UsageError)
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def windows_from_text(model, text: str, name: str = "text") -> list[Window]:
    if not text.strip():
        raise UsageError(f"{name} is empty: nothing to evaluate")
    ids = model.encode(text, bos=False)
    if not ids:
        raise UsageError(f"{name} gives no tokens: nothing to evaluate")
    return text_windows(ids, model.spec.seq_len, model.spec.bos_id)
