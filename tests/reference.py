"""A float64 numpy reference of the Llama 2 forward pass, by the formats' definitions,
and a writer of small random checkpoints of any version and group size."""
from __future__ import annotations

import gguf.quants
import numpy as np

from qllama._kernels.quantize_weights import quantize_weights as quantize
from qllama.formats import llama2c as formats
from qllama.formats.llama2c import Config, QTensor
from qllama.quant.types import BlockTensor


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


def weights64(model, name: str, layer=None) -> np.ndarray:
    t = model.tensor(name, layer)
    if isinstance(t, QTensor):  # groups over the flattened tensor
        w = t.q.astype(np.float64).reshape(-1, t.group_size) * t.s.astype(np.float64)[:, None]
        return w.reshape(t.shape)
    if isinstance(t, BlockTensor):  # GGUF blocks, by gguf-py's dequantizer
        return gguf.quants.dequantize(t.data.reshape(t.shape[0], -1), t.qtype.gguf).astype(
            np.float64)
    return np.asarray(t, dtype=np.float64)


def act_group(model, name: str, layer=None) -> int:
    """The group size activations entering a matrix are quantized in: a llama2.c Q8_0
    matrix's own (when its groups lie in rows), 32 for GGUF's integer block types,
    0 (fp32) otherwise."""
    t = model.tensor(name, layer)
    if isinstance(t, QTensor):
        return t.group_size if t.shape[1] % t.group_size == 0 else 0
    if isinstance(t, BlockTensor):
        return 0 if t.qtype.name in ("f16", "bf16") else 32
    return 0


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


def rmsnorm(x, w, eps=1e-5):
    return w * (x / np.sqrt(np.mean(x * x) + eps))


def rope(v: np.ndarray, head_size: int, pos: int, theta=10000.0) -> np.ndarray:
    v = v.copy()
    i = np.arange(0, len(v), 2)
    freq = theta ** (-(i % head_size) / head_size)
    c, s = np.cos(pos * freq), np.sin(pos * freq)
    v0, v1 = v[i].copy(), v[i + 1].copy()
    v[i] = v0 * c - v1 * s
    v[i + 1] = v0 * s + v1 * c
    return v


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def forward(model, tokens, seen: dict | None = None) -> np.ndarray:
    """Logits (T, vocab) in float64 of a llama2.c ModelFile or a GGUFModel, with the
    RoPE theta and norm epsilon of its spec. Activations entering a quantized matrix
    are quantized as the kernels take them (act_group), as runq.c does. `seen` gets
    the sum of squares of each matrix's input columns, {(name, layer): (cols,)}: an
    importance matrix's statistics."""
    c = model.spec
    hs, kv_mul = c.head_size, c.n_heads // c.n_kv_heads
    eps, theta = c.norm_eps, c.rope_theta
    W, G = {}, {}
    for name, (per_layer, _) in formats.SHAPES.items():
        if name in ("freqs_cos", "freqs_sin") or not model.has(name):
            continue
        for layer in (range(c.n_layers) if per_layer else (None,)):
            W[name, layer] = weights64(model, name, layer)
            G[name, layer] = act_group(model, name, layer) if W[name, layer].ndim == 2 else 0
    cls_key = ("tok_embeddings", None) if c.shared_classifier else ("output", None)

    def mm(key, x):
        if seen is not None:
            seen[key] = seen.get(key, 0) + x * x
        if G[key]:
            x = quantize_acts(x, G[key])
        return W[key] @ x

    keys = [[] for _ in range(c.n_layers)]
    values = [[] for _ in range(c.n_layers)]
    out = []
    for pos, tok in enumerate(tokens):
        x = W[("tok_embeddings", None)][tok].copy()
        for l in range(c.n_layers):  # noqa: E741 (run.c's name)
            xb = rmsnorm(x, W[("attention_norm", l)], eps)
            q = rope(mm(("wq", l), xb), hs, pos, theta)
            keys[l].append(rope(mm(("wk", l), xb), hs, pos, theta))
            values[l].append(mm(("wv", l), xb))
            K, V = np.array(keys[l]), np.array(values[l])
            att_out = np.empty(c.dim)
            for h in range(c.n_heads):
                kh = (h // kv_mul) * hs
                a = softmax(K[:, kh:kh + hs] @ q[h * hs:(h + 1) * hs] / np.sqrt(hs))
                att_out[h * hs:(h + 1) * hs] = a @ V[:, kh:kh + hs]
            x = x + mm(("wo", l), att_out)
            xb = rmsnorm(x, W[("ffn_norm", l)], eps)
            h1, h3 = mm(("w1", l), xb), mm(("w3", l), xb)
            x = x + mm(("w2", l), h1 / (1 + np.exp(-h1)) * h3)
        out.append(mm(cls_key, rmsnorm(x, W[("norm", None)], eps)))
    return np.array(out)
