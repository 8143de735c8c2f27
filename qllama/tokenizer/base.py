"""What every tokenizer shares: piece kinds, SentencePiece's UTF-8 and
normalisation rules, the `Tokenizer` interface and the incremental decoder."""
from __future__ import annotations

from ..errors import TokenizerError, whole_number

SPACE = "▁"                    # U+2581, SentencePiece's escaped space
SPACE_BYTES = SPACE.encode()
UNK_SURFACE = " \u2047 "       # how SentencePiece decodes <unk> (Llama 2's unk_surface)
REPLACEMENT = "\ufffd"

# Piece kinds, as SentencePiece's ModelProto.SentencePiece.Type names them.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE, UNUSED = 1, 2, 3, 4, 6, 5



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


def _normalize(text, prefix: bool = True) -> bytes:
    """SentencePiece's identity normaliser with Llama 2's settings, as UTF-8:
    "" stays empty; otherwise "▁" (add_dummy_prefix: a GGUF file may turn it off) +
    text with every " " replaced by "▁"."""
    if isinstance(text, (bytes, bytearray)):
        text = utf8_decode(bytes(text))[0]
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: invalid UTF-8, one U+FFFD per byte
        raw = utf8_decode(text.encode("utf-8", "surrogatepass"))[0].encode("utf-8")
    if not raw:
        return b""
    return (SPACE_BYTES if prefix else b"") + raw.replace(b" ", SPACE_BYTES)


# ---------------------------------------------------------------------------
# The common interface.

class Tokenizer:
    """What `load_tokenizer` returns. Subclasses fill in `kinds` (piece kind per
    id), `surfaces` (bytes each id contributes to text, spaces unescaped),
    the special ids and `encode`."""

    path: str
    format: str                  # "sentencepiece", "llama2.c" or "gguf"
    vocab_size: int
    bos_id: int
    eos_id: int
    unk_id: int
    kinds: list                  # (vocab_size,) piece kind
    surfaces: list               # (vocab_size,) bytes of each piece in text
    add_dummy_prefix = True
    remove_extra_whitespaces = False
    normalizer = "identity"  # a SentencePiece model's normalizer_spec.name; a .bin's is Llama 2's

    def encode(self, text, bos: bool = True, eos: bool = False) -> list[int]:
        raise NotImplementedError

    def encode_special(self, text, bos: bool = True, eos: bool = False) -> list[int]:
        """encode, but the control and unknown pieces written in `text` (`<s>`, `</s>`,
        `<unk>`) are their ids too, as llama.cpp reads a prompt (user-defined pieces
        always are: a GGUF vocabulary's)."""
        return self._split_encode(text, self._pieces_of((CONTROL, UNKNOWN, USER_DEFINED)),
                                  bos, eos)

    def _split_encode(self, text, pieces: list, bos: bool, eos: bool) -> list[int]:
        """`text` with each of `pieces` [(piece, id)] written in it taken as its id, as
        llama.cpp does: each piece, the longest first, splits the text that no longer
        one took, and the text left between them is encoded part by part (each with the
        dummy prefix, as llama.cpp prefixes text after a special token)."""
        self._check_text(text)
        if isinstance(text, (bytes, bytearray)):
            text = utf8_decode(bytes(text))[0]
        parts = [text]  # text (str) and special pieces' ids (int), in order
        for piece, token in pieces:
            split = []
            for part in parts:
                if isinstance(part, str) and piece in part:
                    for j, between in enumerate(part.split(piece)):
                        split += [token, between] if j else [between]
                else:
                    split.append(part)
            parts = split
        ids = [self.bos_id] if bos else []
        for part in parts:
            ids += [part] if isinstance(part, int) else self._encode_text(part)
        return ids + [self.eos_id] if eos else ids

    def _encode_text(self, text) -> list[int]:
        """The ids of `text` alone: no BOS, no piece taken out first."""
        return self.encode(text, bos=False)

    def _pieces_of(self, kinds: tuple) -> list:
        """[(piece, id)] of the pieces of `kinds`, the longest in UTF-8 bytes first, as
        llama.cpp orders them (the lower id of a piece written twice), made once per kinds."""
        made = getattr(self, "_split_pieces", None)
        if made is None:
            made = self._split_pieces = {}
        found = made.get(kinds)
        if found is None:
            pieces = {}
            for i, kind in enumerate(self.kinds):
                if kind in kinds and self.piece(i):
                    pieces.setdefault(self.piece(i), i)
            found = made[kinds] = sorted(
                pieces.items(), key=lambda p: -len(p[0].encode("utf-8", "surrogatepass")))
        return found

    def piece(self, token_id: int) -> str:
        raise NotImplementedError

    @staticmethod
    def _check_text(text) -> None:
        if not isinstance(text, (str, bytes, bytearray)):
            raise TokenizerError(f"text to encode is a str or bytes, got {type(text).__name__}")

    def _check_id(self, token_id) -> int:
        """An int (or numpy integer) within the vocabulary, as an int: int() would take
        1.5 as 1 and '15043' as 15043."""
        if not whole_number(token_id):
            raise TokenizerError(f"token id {token_id!r} is not an integer")
        token_id = int(token_id)
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
        # bytes not yet decodable (an incomplete character); a bytearray, as a run of a
        # million byte pieces grows it piece by piece (bytes += was quadratic: 11 s)
        self.pending = bytearray()
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
            token_id = tok._check_id(token_id)
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
            text, used = utf8_decode(bytes(self.pending), final=False)
            del self.pending[:used]
            out.append(text)
        return "".join(out)

    def flush(self) -> str:
        """Text of a trailing incomplete byte sequence (U+FFFD per byte)."""
        text, _ = utf8_decode(bytes(self.pending))
        self.pending.clear()
        return text


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__
