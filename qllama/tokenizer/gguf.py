"""The vocabulary a GGUF file carries, as a tokenizer: for `tokenizer.ggml.model`
"llama" (SentencePiece BPE: pieces, scores and SentencePiece's piece types), the same
encoder and decoder as a tokenizer.bin with that vocabulary and those scores
(llama2c.ScoredTokenizer); byte pieces <0x00>..<0xFF> are the byte fallback."""
from __future__ import annotations

import numpy as np

from ..errors import TokenizerError
from ..formats.gguf_file import show
from .base import _BYTE_PIECES, BYTE, CONTROL, SPACE_BYTES, UNK_SURFACE, UNKNOWN
from .llama2c import ScoredTokenizer

MODEL = "llama"
ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"  # SentencePiece's add_dummy_prefix
KINDS = range(1, 7)  # GGUF's token types are SentencePiece's: normal 1 .. byte 6


class GGUFTokenizer(ScoredTokenizer):
    format = "gguf"


def from_gguf(model, merge_table=None) -> GGUFTokenizer:
    """The tokenizer of a formats.gguf_reader.GGUFModel (its metadata and spec)."""
    path, m = model.path, model.metadata

    def fail(key: str, why: str):
        raise TokenizerError(f"{path}: {key} {why}")

    kind = m.get("tokenizer.ggml.model")
    if kind != MODEL:
        fail("tokenizer.ggml.model", "is missing" if kind is None else
             f"is {show(kind)}; qllama reads SentencePiece vocabularies ({MODEL!r})")
    tokens = m.get("tokenizer.ggml.tokens")
    n = model.spec.vocab_size
    if not isinstance(tokens, list) or not all(type(t) is str for t in tokens):
        fail("tokenizer.ggml.tokens", "is not an array of strings")
    arrays = {}
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        a = m.get(key)
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf" or a.shape != (n,):
            fail(key, f"must be an array of {n} numbers, one per token")
        arrays[key] = a
    scores = arrays["tokenizer.ggml.scores"].astype(np.float32)
    if not np.isfinite(scores).all():
        fail("tokenizer.ggml.scores", "holds a value that is not finite")
    types = arrays["tokenizer.ggml.token_type"]
    if not np.isin(types, KINDS).all():
        fail("tokenizer.ggml.token_type", f"holds {types[~np.isin(types, KINDS)][0]}; token "
             "types are 1 to 6")
    pieces, surfaces, kinds = [], [], [int(k) for k in types]
    for i, (text, k) in enumerate(zip(tokens, kinds)):
        piece = text.encode("utf-8")
        if k == BYTE:
            if piece not in _BYTE_PIECES:
                fail("tokenizer.ggml.tokens", f"names byte token {i} {show(text)}, not <0xNN>")
            surface = bytes([_BYTE_PIECES[piece]])
        elif k == CONTROL:
            surface = b""
        elif k == UNKNOWN:
            surface = UNK_SURFACE.encode()
        else:
            surface = piece.replace(SPACE_BYTES, b" ")
        pieces.append(piece)
        surfaces.append(surface)
    unk = m.get("tokenizer.ggml.unknown_token_id",
                kinds.index(UNKNOWN) if UNKNOWN in kinds else 0)
    if type(unk) is not int or not 0 <= unk < n:
        fail("tokenizer.ggml.unknown_token_id", f"is {show(unk)}, outside the vocabulary of {n}")
    tok = GGUFTokenizer(path, pieces, surfaces, kinds, scores,
                        (unk, model.spec.bos_id, model.spec.eos_id), merge_table)
    # llama.cpp's SentencePiece tokenizer reads this one normaliser setting (default true)
    prefix = m.get(ADD_SPACE_PREFIX, True)
    if type(prefix) is not bool:
        fail(ADD_SPACE_PREFIX, f"is {show(prefix)}, not true or false")
    tok.add_dummy_prefix = prefix
    return tok

