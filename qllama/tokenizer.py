"""Tokenizers: text ↔ token ids for Llama 2 models, from either of two files.

- `tokenizer.model`, a SentencePiece ModelProto: encoded and decoded by the
  sentencepiece library (`SentencePieceTokenizer`).
- `tokenizer.bin`, llama2.c's export of it: int32 max_token_length, then per
  token a float32 score, an int32 byte length and the bytes; BOS stored as
  "\\n<s>\\n", EOS as "\\n</s>\\n", "▁" as a space (`BinTokenizer`). Encoded by our
  own BPE (Cython kernel `qllama._kernels.bpe`, pure-Python twin
  `_bpe_reference`), with SentencePiece's rules so that its ids equal
  SentencePiece's on the same text: identity normaliser, dummy-prefix "▁",
  every " " → "▁" (no whitespace collapsing), one symbol per character,
  merges of the best-scored neighbouring pair first (leftmost on ties), byte
  fallback `<0xNN>` for symbols outside the vocabulary.

A .bin file stores neither piece types nor settings; we infer them:
- "<unk>" is the unknown piece (else id 0), "\\n<s>\\n" BOS and "\\n</s>\\n" EOS
  (else ids 1 and 2, as llama2.c assumes); those and "<pad>" are control pieces;
- "<0x00>"…"<0xFF>" are byte pieces; byte fallback is on when all 256 exist;
- every other piece is normal (mergeable): user-defined and unused pieces
  cannot be told apart from normal ones (Llama 2 and the 512-token
  tokenizers have none); if a piece occurs twice the lower id wins;
- normaliser: Llama 2's (identity, add_dummy_prefix true,
  remove_extra_whitespaces false) and <unk> decodes to Llama 2's unk_surface
  " ⁇ ". tok512.model was trained with remove_extra_whitespaces true, so
  tok512.bin encodes text with repeated, leading or trailing spaces as
  Llama 2 would, not as tok512.model does.

Data flow: file → validated vocabulary → (encode) normalized UTF-8 → BPE
merges → ids, (decode) ids → bytes per token → UTF-8 text with SentencePiece's
replacement of invalid bytes.
"""
from __future__ import annotations

import io
import math
import os
import struct

import numpy as np

from .atomic import atomic_output, require_regular_file
from .errors import TokenizerError, UsageError

SPACE = "▁"                    # U+2581, SentencePiece's escaped space
SPACE_BYTES = SPACE.encode()
UNK_SURFACE = " \u2047 "       # how SentencePiece decodes <unk> (Llama 2's unk_surface)
REPLACEMENT = "\ufffd"

# Piece kinds, as SentencePiece's ModelProto.SentencePiece.Type names them.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, UNUSED = 1, 2, 3, 4, 6, 5

BIN_BOS, BIN_EOS = b"\n<s>\n", b"\n</s>\n"


def byte_piece(b: int) -> str:
    return f"<0x{b:02X}>"


_BYTE_PIECES = {byte_piece(b).encode(): b for b in range(256)}


# ---------------------------------------------------------------------------
# UTF-8 as SentencePiece decodes it: a byte that does not start a valid,
# complete, shortest-form, non-surrogate character becomes one U+FFFD.

def _char_len(lead: int) -> int:
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def utf8_decode(data: bytes, final: bool = True) -> tuple[str, int]:
    """Decode `data` replacing each invalid byte by U+FFFD (SentencePiece's rule,
    which differs from Python's errors="replace" on truncated sequences).

    Returns (text, consumed). With final=False a trailing incomplete sequence
    that could still become valid is left unconsumed for the next call."""
    try:
        return data.decode("utf-8"), len(data)
    except UnicodeDecodeError:
        pass
    out = []
    i, n = 0, len(data)
    while i < n:
        lead = data[i]
        if lead < 0x80:
            j = i + 1
            while j < n and data[j] < 0x80:
                j += 1
            out.append(data[i:j].decode("ascii"))
            i = j
            continue
        length = _char_len(lead)
        if i + length <= n:
            try:
                out.append(data[i:i + length].decode("utf-8"))
                i += length
                continue
            except UnicodeDecodeError:
                pass
        elif not final and _valid_prefix(data[i:]):
            break
        out.append(REPLACEMENT)
        i += 1
    return "".join(out), i


def _valid_prefix(tail: bytes) -> bool:
    """Whether `tail`, shorter than its lead byte asks for, can still complete."""
    for pad in (b"\x80", b"\x80\x80", b"\x80\x80\x80", b"\xbf", b"\xbf\xbf", b"\xbf\xbf\xbf"):
        probe = tail + pad
        if len(probe) == _char_len(tail[0]):
            try:
                probe.decode("utf-8")
                return True
            except UnicodeDecodeError:
                pass
    return False


def _normalize(text) -> bytes:
    """SentencePiece's identity normaliser with Llama 2's settings, as UTF-8:
    "" stays empty; otherwise "▁" + text with every " " replaced by "▁"."""
    if isinstance(text, (bytes, bytearray)):
        text = utf8_decode(bytes(text))[0]
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: invalid UTF-8, one U+FFFD per byte
        raw = utf8_decode(text.encode("utf-8", "surrogatepass"))[0].encode("utf-8")
    if not raw:
        return b""
    return SPACE_BYTES + raw.replace(b" ", SPACE_BYTES)


# ---------------------------------------------------------------------------
# The common interface.

class Tokenizer:
    """What `load_tokenizer` returns. Subclasses fill in `kinds` (piece kind per
    id), `surfaces` (bytes each id contributes to text, spaces unescaped),
    the special ids and `encode`."""

    path: str
    format: str                  # "sentencepiece" or "llama2.c"
    vocab_size: int
    bos_id: int
    eos_id: int
    unk_id: int
    kinds: list                  # (vocab_size,) piece kind
    surfaces: list               # (vocab_size,) bytes of each piece in text
    add_dummy_prefix = True
    remove_extra_whitespaces = False

    def encode(self, text, bos: bool = True, eos: bool = False) -> list[int]:
        raise NotImplementedError

    def piece(self, token_id: int) -> str:
        raise NotImplementedError

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is out of range "
                                 f"(vocabulary of {self.vocab_size}: 0..{self.vocab_size - 1})")
        return token_id

    def token_bytes(self, token_id: int, prev_id: int | None = None) -> bytes:
        """Raw bytes a token contributes to the text: a byte piece its one byte,
        "▁" a space, control pieces nothing, <unk> " ⁇ ". With prev_id == bos_id
        a leading space of a non-byte piece is dropped (llama2.c's rule)."""
        surface = self.surfaces[self._check_id(token_id)]
        if (prev_id is not None and prev_id == self.bos_id
                and self.kinds[token_id] != BYTE and surface[:1] == b" "):
            return surface[1:]
        return surface

    def decode(self, ids) -> str:
        """Text of `ids`, as SentencePiece's decode_ids gives it: control ids
        vanish, the first piece loses its dummy-prefix space, consecutive byte
        pieces join into UTF-8 with invalid bytes replaced by U+FFFD."""
        stream = self.decoder()
        return stream.feed_all(ids) + stream.flush()

    def decoder(self) -> "StreamDecoder":
        """An incremental decoder: the concatenation of its outputs equals decode()."""
        return StreamDecoder(self)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.path!r}: {self.vocab_size} pieces, "
                f"bos {self.bos_id}, eos {self.eos_id}>")


class StreamDecoder:
    """Feed ids one at a time, get text as soon as it is complete UTF-8.

    Follows SentencePiece's decoder: before each non-byte piece, the
    "beginning of sentence" state ends if text was produced or the previous
    piece consumed the dummy-prefix space; while it lasts, a piece's leading
    space is dropped."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self.pending = b""           # bytes not yet decodable (an incomplete character)
        self.produced = False        # any text (or byte) produced so far
        self.is_bos_ws = True
        self.bos_ws_seen = False

    def _piece_bytes(self, token_id: int, kind: int) -> bytes:
        """Bytes of a non-byte piece, updating the beginning-of-sentence state."""
        tok = self.tok
        surface = tok.surfaces[token_id]
        if self.bos_ws_seen or self.produced:
            self.is_bos_ws = False
        self.bos_ws_seen = False
        if kind == CONTROL or kind == UNKNOWN:
            return surface
        if self.is_bos_ws and (tok.add_dummy_prefix or tok.remove_extra_whitespaces):
            if surface[:1] == b" ":
                surface = surface[1:]
                self.bos_ws_seen = not tok.remove_extra_whitespaces
        return surface

    def feed(self, token_id: int) -> str:
        return self.feed_all((token_id,))

    def feed_all(self, ids) -> str:
        """Text completed by `ids`. A run of byte pieces is decoded as one UTF-8
        sequence; any other piece (even an invisible BOS) ends the run."""
        tok = self.tok
        out = []
        for token_id in ids:
            token_id = tok._check_id(int(token_id))
            kind = tok.kinds[token_id]
            if kind == BYTE:
                self.pending += tok.surfaces[token_id]
                self.produced = True
                continue
            if self.pending:
                out.append(self.flush())
            piece = self._piece_bytes(token_id, kind)
            if piece:
                self.produced = True
                out.append(utf8_decode(piece)[0])
        if self.pending:
            text, used = utf8_decode(self.pending, final=False)
            self.pending = self.pending[used:]
            out.append(text)
        return "".join(out)

    def flush(self) -> str:
        """Text of a trailing incomplete byte sequence (U+FFFD per byte)."""
        text, _ = utf8_decode(self.pending)
        self.pending = b""
        return text


# ---------------------------------------------------------------------------
# tokenizer.model through the sentencepiece library.

class SentencePieceTokenizer(Tokenizer):
    format = "sentencepiece"

    def __init__(self, path: str, data: bytes):
        import sentencepiece as spm
        self.path = path
        try:
            self._read(spm, data)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError with its status,
            # UnicodeDecodeError for a piece that is not UTF-8, protobuf its DecodeError
            raise TokenizerError(f"{path}: not a valid SentencePiece model ({_one_line(e)})") from None

    def _read(self, spm, data: bytes) -> None:
        fields = _proto_fields(self.path, data)
        # A ModelProto cut between two fields still parses; every trained model has
        # its pieces (1), trainer_spec (2) and normalizer_spec (3), the last one last.
        missing = [name for number, name in ((1, "pieces"), (2, "trainer_spec"),
                                             (3, "normalizer_spec")) if number not in fields]
        if missing:
            raise TokenizerError(f"{self.path}: truncated or incomplete SentencePiece model "
                                 f"(no {', '.join(missing)})")
        sp = self.sp = spm.SentencePieceProcessor(model_proto=data)
        self.vocab_size = sp.get_piece_size()
        self.bos_id, self.eos_id, self.unk_id = sp.bos_id(), sp.eos_id(), sp.unk_id()
        self.kinds, self.surfaces = [], []
        unk_surface = UNK_SURFACE
        try:
            from sentencepiece import sentencepiece_model_pb2 as pb
        except Exception:  # no (or an incompatible) protobuf module: keep SentencePiece's defaults
            pb = None
        if pb is not None:
            proto = pb.ModelProto()
            proto.ParseFromString(data)
            self.add_dummy_prefix = proto.normalizer_spec.add_dummy_prefix
            self.remove_extra_whitespaces = proto.normalizer_spec.remove_extra_whitespaces
            if proto.trainer_spec.HasField("unk_surface"):
                unk_surface = proto.trainer_spec.unk_surface
        for i in range(self.vocab_size):
            p = sp.id_to_piece(i)
            if sp.is_byte(i):
                kind, surface = BYTE, bytes([_BYTE_PIECES[p.encode()]])
            elif sp.is_control(i):
                kind, surface = CONTROL, b""
            elif sp.is_unknown(i):
                kind, surface = UNKNOWN, unk_surface.encode()
            else:
                kind = UNUSED if sp.is_unused(i) else NORMAL
                surface = p.replace(SPACE, " ").encode()
            self.kinds.append(kind)
            self.surfaces.append(surface)

    def encode(self, text, bos: bool = True, eos: bool = False) -> list[int]:
        if isinstance(text, (bytes, bytearray)):
            text = utf8_decode(bytes(text))[0]
        elif not _encodable(text):
            text = utf8_decode(text.encode("utf-8", "surrogatepass"))[0]
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def decode(self, ids) -> str:
        ids = [self._check_id(int(i)) for i in ids]
        return self.sp.decode(ids)

    def piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(self._check_id(token_id))

    def score(self, token_id: int) -> float:
        return self.sp.get_score(self._check_id(token_id))


def _proto_fields(path: str, data: bytes) -> set:
    """Field numbers at the top level of a protobuf message, checking that every
    field's length stays within the data (wire format: varint tag, then a varint,
    8 bytes, a varint length and that many bytes, or 4 bytes)."""

    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if i >= len(data) or shift > 63:
                raise TokenizerError(f"{path}: truncated or corrupt SentencePiece model "
                                     f"(a field at byte {i} runs past the end)")
            b = data[i]
            value |= (b & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if b < 0x80:
                return value, i

    fields, i = set(), 0
    while i < len(data):
        tag, i = varint(i)
        wire = tag & 7
        if wire == 0:
            _, i = varint(i)
        elif wire == 2:
            n, i = varint(i)
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise TokenizerError(f"{path}: not a SentencePiece model (wire type {wire} at "
                                 "the top level)")
        if i > len(data):
            raise TokenizerError(f"{path}: truncated: field {tag >> 3} runs past the end of "
                                 f"the file ({len(data)} bytes)")
        fields.add(tag >> 3)
    return fields


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# ---------------------------------------------------------------------------
# tokenizer.bin (llama2.c) with our own encoder.

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
        if math.isnan(score):
            raise TokenizerError(f"{path}: token {i} has a NaN score (corrupt file)")
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


class BinTokenizer(Tokenizer):
    format = "llama2.c"

    def __init__(self, path: str, data: bytes, use_kernel: bool = True):
        self.path = path
        self.max_token_length, stored, self.scores = read_bin(path, data)
        n = self.vocab_size = len(stored)
        self.kinds, self.surfaces, self._pieces = [], [], []
        byte_ids = [-1] * 256
        self.unk_id = self.bos_id = self.eos_id = -1
        for i, raw in enumerate(stored):
            if raw == BIN_BOS or raw == BIN_EOS or raw == b"<pad>":
                kind, surface = CONTROL, b""
                name = raw.strip(b"\n")
                if raw == BIN_BOS and self.bos_id < 0:
                    self.bos_id = i
                if raw == BIN_EOS and self.eos_id < 0:
                    self.eos_id = i
            elif raw == b"<unk>" and self.unk_id < 0:
                kind, surface, name = UNKNOWN, UNK_SURFACE.encode(), raw
            elif raw in _BYTE_PIECES and byte_ids[_BYTE_PIECES[raw]] < 0:
                kind, surface, name = BYTE, bytes([_BYTE_PIECES[raw]]), raw
                byte_ids[_BYTE_PIECES[raw]] = i
            else:
                kind, surface, name = NORMAL, raw, raw.replace(b" ", SPACE_BYTES)
            self.kinds.append(kind)
            self.surfaces.append(surface)
            self._pieces.append(name)
        # llama2.c hard-codes BOS 1 and EOS 2; SentencePiece's defaults are unk 0, bos 1, eos 2.
        if self.bos_id < 0:
            self.bos_id = 1 if n > 1 else 0
        if self.eos_id < 0:
            self.eos_id = 2 if n > 2 else 0
        if self.unk_id < 0:
            self.unk_id = 0
        self.byte_fallback = min(byte_ids) >= 0
        self.byte_ids = byte_ids
        mergeable = [k == NORMAL for k in self.kinds]
        self._merges = None
        if use_kernel:
            try:
                from ._kernels.bpe import MergeTable
            except ImportError:   # not built: the pure-Python encoder gives the same ids
                MergeTable = None
            if MergeTable is not None:
                self._merges = MergeTable(self._pieces, self.scores, mergeable, byte_ids,
                                          self.unk_id, self.byte_fallback)
        if self._merges is None:
            self._ref = _ReferenceTable(self._pieces, self.scores, mergeable, byte_ids,
                                        self.unk_id, self.byte_fallback)

    def encode(self, text, bos: bool = True, eos: bool = False) -> list[int]:
        normalized = _normalize(text)
        if self._merges is not None:
            ids = self._merges.encode(normalized)
        else:
            ids = self._ref.encode(normalized)
        if bos:
            ids.insert(0, self.bos_id)
        if eos:
            ids.append(self.eos_id)
        return ids

    def piece(self, token_id: int) -> str:
        """The piece as SentencePiece names it ("<s>", "▁the", "<0x0A>")."""
        return self._pieces[self._check_id(token_id)].decode("utf-8", "replace")

    def score(self, token_id: int) -> float:
        return float(self.scores[self._check_id(token_id)])


class _ReferenceTable:
    """Pure-Python twin of `qllama._kernels.bpe.MergeTable` (same algorithm,
    same ids): SentencePiece's bpe::Model::Encode over a dict of pieces."""

    def __init__(self, pieces, scores, mergeable, byte_ids, unk_id, byte_fallback):
        self.table = {}
        for i, p in enumerate(pieces):
            if mergeable[i] and p and p not in self.table:
                self.table[p] = (i, float(scores[i]))
        self.byte_ids, self.unk_id, self.byte_fallback = byte_ids, unk_id, byte_fallback

    def encode(self, text: bytes) -> list[int]:
        return _bpe_reference(text, self.table, self.byte_ids, self.unk_id, self.byte_fallback)


def _bpe_reference(text: bytes, table: dict, byte_ids, unk_id: int, byte_fallback: bool) -> list[int]:
    import heapq
    starts, sizes = [], []
    i = 0
    while i < len(text):                      # one symbol per UTF-8 character
        length = min(_char_len(text[i]), len(text) - i)
        starts.append(i)
        sizes.append(length)
        i += length
    m = len(starts)
    if m == 0:
        return []
    prev = list(range(-1, m - 1))
    nxt = list(range(1, m + 1))
    nxt[-1] = -1
    heap = []

    def push(left, right):
        if left < 0 or right < 0:
            return
        size = sizes[left] + sizes[right]
        hit = table.get(text[starts[left]:starts[left] + size])
        if hit is not None:                   # max score first, then leftmost
            heapq.heappush(heap, (-hit[1], left, right, size))

    for k in range(1, m):
        push(k - 1, k)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        if sizes[left] == 0 or sizes[right] == 0 or sizes[left] + sizes[right] != size:
            continue
        sizes[left] = size
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        sizes[right] = 0
        push(prev[left], left)
        push(left, nxt[left])
    ids, k, prev_unk = [], 0, False
    while k >= 0:
        sym = text[starts[k]:starts[k] + sizes[k]]
        hit = table.get(sym)
        if hit is not None:
            ids.append(hit[0])
            prev_unk = False
        elif byte_fallback:
            ids.extend(byte_ids[b] for b in sym)
        else:
            if not prev_unk:
                ids.append(unk_id)
            prev_unk = True
        k = nxt[k]
    return ids


# ---------------------------------------------------------------------------
# Loading: the format is detected from the file's first bytes.

def load_tokenizer(path, vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer from a SentencePiece `tokenizer.model` or a llama2.c
    `tokenizer.bin`. With `vocab_size`, the file must have exactly that many
    pieces (the model's vocabulary)."""
    path = os.fspath(path)
    require_regular_file(path, TokenizerError)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read tokenizer ({e.strerror or e})") from None
    tok = _from_bytes(path, data)
    if vocab_size is not None and tok.vocab_size != vocab_size:
        raise TokenizerError(f"tokenizer {path} has {tok.vocab_size} tokens, model has {vocab_size}")
    return tok


def _from_bytes(path: str, data: bytes) -> Tokenizer:
    # A tokenizer.bin starts with a small int32 (max_token_length, < 64 KiB); a
    # ModelProto starts with tag 0x0A and a piece message, so its first four
    # bytes read as a large number.
    if len(data) < 4 or struct.unpack_from("<i", data, 0)[0] < 65536:
        return BinTokenizer(path, data)
    try:
        return SentencePieceTokenizer(path, data)
    except TokenizerError as e:
        first = struct.unpack_from("<i", data, 0)[0]
        raise TokenizerError(f"{e}; nor a llama2.c tokenizer.bin (its max_token_length would be "
                             f"{first})") from None


# ---------------------------------------------------------------------------
# tokenizer.model → tokenizer.bin, byte for byte as llama2.c's tokenizer.py writes it.

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


def export_bin(model_path: str, out_path: str, force: bool = False) -> int:
    """Write `model_path` (SentencePiece) as a llama2.c tokenizer.bin; returns its size."""
    tok = load_tokenizer(model_path)
    if not isinstance(tok, SentencePieceTokenizer):
        raise UsageError(f"{model_path}: is already a llama2.c tokenizer.bin; export needs a "
                         "SentencePiece tokenizer.model")
    data = bin_bytes(tok)
    with atomic_output(out_path, force=force, inputs=(model_path,)) as f:
        f.write(data)
    return len(data)


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
