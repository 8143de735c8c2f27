"""A float64 numpy reference of the Llama 2 forward pass, by the formats' definitions,
and a writer of small random checkpoints of any version and group size."""
from __future__ import annotations

import numpy as np

from qllama._kernels.quantize_weights import quantize_weights as quantize
from qllama.formats import llama2c as formats
from qllama.formats.llama2c import Config, ModelFile, QTensor


def write_model(path, config: Config, seed: int = 0) -> None:
    """Random weights (std 0.02, norms near 1); version 2 quantizes them with any group
    size that divides each tensor, including ones whose groups straddle rows."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(formats.header_bytes(config))
        for e in formats.layout(config):
            if e.name in ("freqs_cos", "freqs_sin"):
                f.write(np.zeros(e.numel, np.float32).tobytes())
                continue
            w = (rng.standard_normal(e.numel) * 0.02).astype(np.float32)
            if e.name in ("attention_norm", "ffn_norm", "norm"):
                w += np.float32(1.0)
            if e.encoding == formats.F32:
                f.write(w.tobytes())
            else:
                gs = config.group_size
                q = np.empty(e.numel, np.int8)
                s = np.empty(e.numel // gs, np.float32)
                err = np.empty(e.numel // gs, np.float32)
                quantize(w, gs, q, s, err, 1)
                f.write(q.tobytes() + s.tobytes())


def weights64(model: ModelFile, name: str, layer=None) -> np.ndarray:
    t = model.tensor(name, layer)
    if isinstance(t, QTensor):  # groups over the flattened tensor
        w = t.q.astype(np.float64).reshape(-1, t.group_size) * t.s.astype(np.float64)[:, None]
        return w.reshape(t.shape)
    return np.asarray(t, dtype=np.float64)


def quantize_acts(x: np.ndarray, gs: int) -> np.ndarray:
    """runq.c's activation Q8_0, returned dequantized in float64. Scale and quotient
    are float32 operations as in the kernel (numpy's are correctly rounded too), so
    both break rounding ties alike; round half away from zero."""
    g = x.astype(np.float32).reshape(-1, gs)
    scale = np.abs(g).max(axis=1, keepdims=True) / np.float32(127.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(scale == 0, np.float32(0), g / scale).astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return (q * scale.astype(np.float64)).reshape(x.shape)


def rmsnorm(x, w):
    return w * (x / np.sqrt(np.mean(x * x) + 1e-5))


def rope(v: np.ndarray, head_size: int, pos: int) -> np.ndarray:
    v = v.copy()
    i = np.arange(0, len(v), 2)
    freq = 10000.0 ** (-(i % head_size) / head_size)
    c, s = np.cos(pos * freq), np.sin(pos * freq)
    v0, v1 = v[i].copy(), v[i + 1].copy()
    v[i] = v0 * c - v1 * s
    v[i + 1] = v0 * s + v1 * c
    return v


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def forward(model: ModelFile, tokens) -> np.ndarray:
    """Logits (T, vocab) in float64. For Q8_0 files, activations entering a matrix
    whose groups align with its rows are quantized as runq.c does."""
    c = model.config
    hs, kv_mul = c.head_size, c.n_heads // c.n_kv_heads
    W = {}
    for e in formats.layout(c):
        W[(e.name, e.layer)] = weights64(model, e.name, e.layer)
    cls = W[("tok_embeddings", None)] if c.shared_classifier else W[("output", None)]

    def mm(w, x):
        if c.version == 2 and w.shape[1] % c.group_size == 0:
            x = quantize_acts(x, c.group_size)
        return w @ x

    keys = [[] for _ in range(c.n_layers)]
    values = [[] for _ in range(c.n_layers)]
    out = []
    for pos, tok in enumerate(tokens):
        x = W[("tok_embeddings", None)][tok].copy()
        for l in range(c.n_layers):  # noqa: E741 (run.c's name)
            xb = rmsnorm(x, W[("attention_norm", l)])
            q = rope(mm(W[("wq", l)], xb), hs, pos)
            keys[l].append(rope(mm(W[("wk", l)], xb), hs, pos))
            values[l].append(mm(W[("wv", l)], xb))
            K, V = np.array(keys[l]), np.array(values[l])
            att_out = np.empty(c.dim)
            for h in range(c.n_heads):
                kh = (h // kv_mul) * hs
                a = softmax(K[:, kh:kh + hs] @ q[h * hs:(h + 1) * hs] / np.sqrt(hs))
                att_out[h * hs:(h + 1) * hs] = a @ V[:, kh:kh + hs]
            x = x + mm(W[("wo", l)], att_out)
            xb = rmsnorm(x, W[("ffn_norm", l)])
            h1, h3 = mm(W[("w1", l)], xb), mm(W[("w3", l)], xb)
            x = x + mm(W[("w2", l)], h1 / (1 + np.exp(-h1)) * h3)
        out.append(mm(cls, rmsnorm(x, W[("norm", None)])))
    return np.array(out)
