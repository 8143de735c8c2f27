"""An importance matrix (llama.cpp's imatrix) from a calibration text: for each
matrix, the mean square of each input column's activations over the text's tokens,
from the engine's forward pass of the fp32 model with its statistics on
(Workspace.stats) and an f32 KV cache. The weighted quantizers (quant.blocks) then
fit each block where the model's inputs are large.

As llama-imatrix without --process-output, the classifier gets none unless asked
for. The text is cut into windows of at most seq_len tokens, each starting with BOS.
The engine runs llama2.c and GGUF files: a Hugging Face folder is imported first, to
a temporary fp32 llama2.c file (the model's size on disk, an import's time).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .. import kernels
from .._kernels.engine import State, Weights
from ..errors import UsageError
from ..formats import open_model
from ..threads import resolve_threads

BLOCK = 64  # tokens per engine call: each weight row is read once per block


def collect(model: str, ids, threads: int | None = None,
            output: bool = False) -> tuple[dict, int]:
    """{(llama2.c name, layer): (cols,) float32 mean square input} of the fp32 model
    file `model` (llama2.c or GGUF) over the token ids `ids` (no BOS: each window of
    seq_len - 1 of them gets one), and the rows that made it (the BOS tokens too).
    `output`: the classifier's too, under ("output", None), from every row's logits
    (llama-imatrix --process-output)."""
    if not len(ids):
        raise UsageError("the calibration text has no tokens")
    f = open_model(model)
    try:
        c = f.spec
        # the f32 cache of the longest window (7B's 4096 positions: 4.3 GB)
        state = State(Weights(f, kernels.select(None)), min(c.seq_len, len(ids) + 1), BLOCK,
                      resolve_threads(threads), "f32")
        sums = np.zeros(state.workspace.stats_size)
        state.workspace.stats = sums
        last = np.empty((1, c.vocab_size), np.float32)
        every = np.empty((BLOCK, c.vocab_size), np.float32)
        step = c.seq_len - 1
        for start in range(0, len(ids), step):
            tokens = np.asarray([c.bos_id, *ids[start:start + step]], np.int32)
            for pos in range(0, len(tokens), BLOCK):
                block = tokens[pos:pos + BLOCK]
                state.forward(block, pos, every[:len(block)] if output else last)
        del state  # its references to the map go before the file closes
    finally:
        f.close()
    rows, per = sums[-2], 3 * c.dim + c.hidden_dim
    out = {}
    for layer in range(c.n_layers):
        at = layer * per
        for names, a, n in ((("wq", "wk", "wv"), at, c.dim), (("wo",), at + c.dim, c.dim),
                            (("w1", "w3"), at + 2 * c.dim, c.dim),
                            (("w2",), at + 3 * c.dim, c.hidden_dim)):
            mean = (sums[a:a + n] / rows).astype(np.float32)
            out.update({(name, layer): mean for name in names})
    if output:
        at = c.n_layers * per
        out[("output", None)] = (sums[at:at + c.dim] / sums[-1]).astype(np.float32)
    return out, int(rows)


def importance(model: str, text: str, tok, max_tokens: int = 4096,
               threads: int | None = None, scratch: str | None = None) -> tuple[dict, int]:
    """collect() over `text` (at most `max_tokens` of it, tokenized by `tok`); a
    Hugging Face folder `model` through its fp32 import in a temporary folder in
    `scratch` (default: the system's), removed after."""
    ids = tok.encode(text, bos=False)[:max_tokens]
    if not ids:  # before a folder's import
        raise UsageError("the calibration text has no tokens")
    if not os.path.isdir(model):
        return collect(model, ids, threads)
    from ..interop.hf_import import import_hf
    with tempfile.TemporaryDirectory(prefix=".qllama-calibrate-", dir=scratch) as tmp:
        path = os.path.join(tmp, "model.bin")
        import_hf(model, path, threads=threads)
        return collect(path, ids, threads)
