"""llama2.c's tokenizer.bin: reading and validating it, encoding with our own BPE
(the Cython kernel `qllama._kernels.bpe`), and writing one from a tokenizer.model
byte for byte as llama2.c's tokenizer.py does."""
from __future__ import annotations

import io
import math
import struct

import numpy as np

from ..errors import TokenizerError, UsageError
from ..io.atomic import atomic_output
from .base import (
    _BYTE_PIECES,
    BYTE,
    CONTROL,
    NORMAL,
    SPACE,
    SPACE_BYTES,
    UNK_SURFACE,
    UNKNOWN,
    USER_DEFINED,
    Tokenizer,
    _normalize,
)
from .sentencepiece import SentencePieceTokenizer

BIN_BOS, BIN_EOS = b"\n<s>\n", b"\n</s>\n"


def read_bin(path: str, data: bytes) -> tuple[int, list, np.ndarray]:
    """Parse and validate a llama2.c tokenizer file.

    Returns (max_token_length, pieces as stored (bytes), scores (float32))."""
    size = len(data)
    if size < 4:
        raise TokenizerError(f"{path}: {size} bytes is too short for a tokenizer.bin "
                             "(needs an int32 max_token_length header)")
    (max_len,) = struct.unpack_from("<i", data, 0)
    if max_len <= 0:
        raise TokenizerError(f"{path}: max_token_length is {max_len}; a tokenizer.bin needs a "
                             "positive value (corrupt file?)")
    pieces, scores = [], []
    off = 4
    while off < size:
        i = len(pieces)
        if off + 8 > size:
            raise TokenizerError(f"{path}: truncated: token {i} header at byte {off} needs 8 bytes, "
                                 f"{size - off} left")
        score, length = struct.unpack_from("<fi", data, off)
        off += 8
        if length < 0:
            raise TokenizerError(f"{path}: token {i} has negative length {length} (corrupt file)")
        if off + length > size:
            raise TokenizerError(f"{path}: truncated: token {i} length {length} runs past the end "
                                 f"of the file ({size - off} bytes left)")
        if length > max_len:
            raise TokenizerError(f"{path}: token {i} is {length} bytes, longer than the file's "
                                 f"max_token_length {max_len} (corrupt file)")
        if not math.isfinite(score):  # one rule for the three formats: GGUF's, the .model's
            raise TokenizerError(f"{path}: token {i} has a score of {score} (corrupt file)")
        pieces.append(data[off:off + length])
        scores.append(score)
        off += length
    if not pieces:
        raise TokenizerError(f"{path}: holds no tokens")
    # llama2.c's exporter writes the longest piece's length: a file whose pieces stop
    # short of it was cut at a record boundary (every record parses, some are missing).
    longest = max(len(p) for p in pieces)
    if longest != max_len:
        raise TokenizerError(f"{path}: truncated or corrupt: its header says the longest token "
                             f"is {max_len} bytes, but the longest of its {len(pieces)} tokens "
                             f"is {longest}")
    present = [p for p in pieces if p in _BYTE_PIECES]
    if present and len(set(present)) < 256:
        raise TokenizerError(f"{path}: truncated or corrupt: holds {len(set(present))} of the 256 "
                             "byte-fallback tokens <0x00>..<0xFF>")
    return max_len, pieces, np.asarray(scores, dtype=np.float32)


class ScoredTokenizer(Tokenizer):
    """SentencePiece BPE over a vocabulary with scores, encoded by our own merges: the
    pieces as SentencePiece names them (bytes, "▁" for a space), what each adds to text
    (`surfaces`), their kinds and the special ids. Every piece that is not control,
    unknown or byte is mergeable, as in a tokenizer.bin (which cannot tell user-defined
    or unused pieces from normal ones); a GGUF vocabulary's user-defined pieces are also
    taken out of the text first, as llama.cpp does."""

    def __init__(self, path: str, pieces: list, surfaces: list, kinds: list, scores,
                 special: tuple, merge_table=None):
        """`special`: (unk, bos, eos) ids. `merge_table`: the BPE encoder's class (default
        the Cython MergeTable; the tests pass a pure-Python twin with the same
        constructor and `encode`)."""
        self.path = path
        self._pieces, self.surfaces, self.kinds = pieces, surfaces, kinds
        self.scores = np.asarray(scores, dtype=np.float32)
        self.vocab_size = len(pieces)
        self.unk_id, self.bos_id, self.eos_id = special
        byte_ids = [-1] * 256
        for i, kind in enumerate(kinds):
            if kind == BYTE and byte_ids[surfaces[i][0]] < 0:
                byte_ids[surfaces[i][0]] = i
        self.byte_fallback = min(byte_ids) >= 0
        self.byte_ids = byte_ids
        mergeable = [k not in (CONTROL, UNKNOWN, BYTE) for k in kinds]
        if merge_table is None:
            from .._kernels.bpe import MergeTable as merge_table
        self._merges = merge_table(self._pieces, self.scores, mergeable, byte_ids,
                                   self.unk_id, self.byte_fallback)

    def encode(self, text, bos: bool = True, eos: bool = False) -> list[int]:
        users = self._pieces_of((USER_DEFINED,))  # a GGUF vocabulary's; llama.cpp takes
        if users:                                  # them out of any text first
            return self._split_encode(text, users, bos, eos)
        self._check_text(text)
        ids = self._encode_text(text)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def _encode_text(self, text) -> list[int]:
        return self._merges.encode(_normalize(text, self.add_dummy_prefix))

    def piece(self, token_id: int) -> str:
        """The piece as SentencePiece names it ("<s>", "▁the", "<0x0A>")."""
        return self._pieces[self._check_id(token_id)].decode("utf-8", "replace")

    def score(self, token_id: int) -> float:
        return float(self.scores[self._check_id(token_id)])


class BinTokenizer(ScoredTokenizer):
    format = "llama2.c"

    def __init__(self, path: str, data: bytes, merge_table=None):
        _, stored, scores = read_bin(path, data)
        n = len(stored)
        kinds, surfaces, pieces = [], [], []
        seen_bytes = set()
        unk_id = bos_id = eos_id = -1
        for i, raw in enumerate(stored):
            if raw == BIN_BOS or raw == BIN_EOS or raw == b"<pad>":
                kind, surface = CONTROL, b""
                name = raw.strip(b"\n")
                if raw == BIN_BOS and bos_id < 0:
                    bos_id = i
                if raw == BIN_EOS and eos_id < 0:
                    eos_id = i
            elif raw == b"<unk>" and unk_id < 0:
                kind, surface, name = UNKNOWN, UNK_SURFACE.encode(), raw
            elif raw in _BYTE_PIECES and raw not in seen_bytes:
                kind, surface, name = BYTE, bytes([_BYTE_PIECES[raw]]), raw
                seen_bytes.add(raw)
            else:
                kind, surface, name = NORMAL, raw, raw.replace(b" ", SPACE_BYTES)
            kinds.append(kind)
            surfaces.append(surface)
            pieces.append(name)
        # llama2.c hard-codes BOS 1 and EOS 2; SentencePiece's defaults are unk 0, bos 1, eos 2.
        if bos_id < 0:
            bos_id = 1 if n > 1 else 0
        if eos_id < 0:
            eos_id = 2 if n > 2 else 0
        if unk_id < 0:
            unk_id = 0
        super().__init__(path, pieces, surfaces, kinds, scores, (unk_id, bos_id, eos_id),
                         merge_table)


def bin_bytes(model: SentencePieceTokenizer) -> bytes:
    sp = model.sp
    tokens = []
    for i in range(model.vocab_size):
        if i == model.bos_id:
            t = BIN_BOS
        elif i == model.eos_id:
            t = BIN_EOS
        else:
            t = sp.id_to_piece(i).replace(SPACE, " ").encode("utf-8")
        tokens.append((sp.get_score(i), t))
    out = io.BytesIO()
    out.write(struct.pack("<i", max(len(t) for _, t in tokens)))
    for score, t in tokens:
        out.write(struct.pack("<fi", score, len(t)))
        out.write(t)
    return out.getvalue()


def export_bin(model_path: str, out_path: str, force: bool = False, warn=None) -> int:
    """Write `model_path` (SentencePiece) as a llama2.c tokenizer.bin; returns its size.
    `warn(message)` is told when the model's normaliser is not Llama 2's: a .bin has no
    field for it, so the .bin encodes some text differently (repeated spaces, say)."""
    from . import load_tokenizer

    tok = load_tokenizer(model_path)
    if not isinstance(tok, SentencePieceTokenizer):
        what = ("a GGUF file, whose vocabulary is no SentencePiece model" if tok.format == "gguf"
                else "already a llama2.c tokenizer.bin")
        raise UsageError(f"{model_path}: {what}; export needs a SentencePiece tokenizer.model")
    data = bin_bytes(tok)
    with atomic_output(out_path, force=force, inputs=(model_path,)) as f:
        f.write(data)
    differ = normaliser_lost(tok, BIN_NORMALISER)
    if differ and warn:
        warn(f"{model_path} {differ}")
    return len(data)


BIN_NORMALISER = "a tokenizer.bin cannot say so and is read with Llama 2's settings"


def normaliser_lost(tok, why: str, kept: tuple = ()) -> str | None:
    """How a file made of SentencePiece model `tok` that is read with Llama 2's normaliser
    but for the settings `kept` (`why`: a tokenizer.bin keeps none, a GGUF vocabulary
    add_dummy_prefix) encodes otherwise than `tok` (tok512.model removes extra
    whitespace); None when `tok`'s settings are Llama 2's or kept."""
    differ = [(f"{name} {have}", effect) for name, have, effect in (
        ("normalizer", tok.normalizer, "the characters that normaliser rewrites"),
        ("add_dummy_prefix", tok.add_dummy_prefix, "a text's first word"),
        ("remove_extra_whitespaces", tok.remove_extra_whitespaces,
         "repeated, leading and trailing spaces"))
        if have != getattr(Tokenizer, name) and name not in kept]
    if not differ:
        return None
    return (f"normalises with {' and '.join(d for d, _ in differ)}; {why}, so it encodes "
            f"{' and '.join(e for _, e in differ)} differently from the .model")


