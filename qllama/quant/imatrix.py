"""An importance matrix (llama.cpp's imatrix) from a calibration text: for each
matrix, the mean square of each input column's activations over the text's tokens,
from a numpy forward pass of the fp32 model (llama2.c's arithmetic: RMSNorm, RoPE on
adjacent pairs, grouped-query attention, SwiGLU). The weighted quantizers
(quant.blocks) then fit each block where the model's inputs are large.

As llama-imatrix without --process-output, the classifier gets none. The text is
cut into windows of at most seq_len tokens, each starting with BOS.
"""
from __future__ import annotations

import numpy as np

from ..formats.llama2c import ModelFile

# the matrices each activation is the input of
_READS = {"attn_in": ("wq", "wk", "wv"), "attn_out": ("wo",), "ffn_in": ("w1", "w3"),
          "ffn_hidden": ("w2",)}


def _rmsnorm(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * w


def _rope(v: np.ndarray, head_size: int) -> np.ndarray:
    """(T, heads * head_size) rotated per position: pairs (2i, 2i + 1) of each head
    by pos * 10000^(-2i / head_size), as llama2.c's run.c."""
    t = np.arange(len(v))[:, None]
    freq = 10000.0 ** (-np.arange(0, head_size, 2) / head_size)
    angle = np.tile(t * freq, v.shape[1] // head_size)          # (T, pairs)
    cos, sin = np.cos(angle), np.sin(angle)
    a, b = v[:, 0::2], v[:, 1::2]
    out = np.empty_like(v)
    out[:, 0::2], out[:, 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def window(m: ModelFile, tokens: list, acc: dict) -> np.ndarray:
    """Add one window's squared activations to `acc`; its last hidden state (T, dim)."""
    c = m.config
    hs, rep = c.head_size, c.n_heads // c.n_kv_heads
    w = lambda name, layer=None: np.asarray(m.tensor(name, layer), np.float64)  # noqa: E731

    def seen(kind: str, layer: int, a: np.ndarray) -> None:
        sq = (a * a).sum(axis=0)
        for name in _READS[kind]:
            acc.setdefault((name, layer), np.zeros(a.shape[1]))[:] += sq

    x = w("tok_embeddings")[tokens]                               # (T, dim)
    n = len(tokens)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(c.n_layers):
        h = _rmsnorm(x, w("attention_norm", layer))
        seen("attn_in", layer, h)
        q = _rope(h @ w("wq", layer).T, hs).reshape(n, c.n_heads, hs)
        k = _rope(h @ w("wk", layer).T, hs).reshape(n, c.n_kv_heads, hs)
        v = (h @ w("wv", layer).T).reshape(n, c.n_kv_heads, hs)
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,uhd->htu", q, k) / np.sqrt(hs) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        o = np.einsum("htu,uhd->thd", s / s.sum(axis=-1, keepdims=True), v).reshape(n, -1)
        seen("attn_out", layer, o)
        x = x + o @ w("wo", layer).T
        h = _rmsnorm(x, w("ffn_norm", layer))
        seen("ffn_in", layer, h)
        g = h @ w("w1", layer).T
        a = g / (1 + np.exp(-g)) * (h @ w("w3", layer).T)
        seen("ffn_hidden", layer, a)
        x = x + a @ w("w2", layer).T
    return x


def importance(model: str, text: str, tok, max_tokens: int = 4096) -> tuple[dict, int]:
    """{(llama2.c name, layer): (cols,) float32 mean square activation} of the fp32
    llama2.c file `model` over `text` (at most `max_tokens` of it, tokenized by
    `tok`), and the tokens used."""
    m = ModelFile(model)
    try:
        ids = tok.encode(text, bos=False)[:max_tokens]
        if not ids:
            raise ValueError("the calibration text has no tokens")
        step = m.config.seq_len - 1
        acc: dict = {}
        for start in range(0, len(ids), step):
            window(m, [tok.bos_id] + ids[start:start + step], acc)
        count = len(ids) + -(-len(ids) // step)  # the windows' BOS tokens too
        return {key: (s / count).astype(np.float32) for key, s in acc.items()}, count
    finally:
        m.close()
