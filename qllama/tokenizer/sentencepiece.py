"""tokenizer.model, a SentencePiece ModelProto, encoded and decoded by the
sentencepiece library."""
from __future__ import annotations

import math

from ..errors import TokenizerError
from .base import (
    _BYTE_PIECES,
    BYTE,
    CONTROL,
    NORMAL,
    SPACE,
    UNK_SURFACE,
    UNKNOWN,
    UNUSED,
    Tokenizer,
    _one_line,
    utf8_decode,
)


class UnusableModel(TokenizerError):
    """A SentencePiece model that parses but that a Llama model cannot use."""


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
        # sentencepiece loads a model whose <unk>, <s> or </s> is typed as a plain piece,
        # gives that id as -1 and fails later (encoding with BOS; GGUF's unsigned ids)
        missing = [role for role, i in (("an unknown", self.unk_id), ("a BOS", self.bos_id),
                                        ("an EOS", self.eos_id)) if i < 0]
        if missing:
            raise UnusableModel(f"{path}: a SentencePiece model without {' or '.join(missing)} "
                                "piece; a Llama tokenizer has all three (<unk>, <s>, </s>)")

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
            # sentencepiece applies a character map whatever the name says
            ns = proto.normalizer_spec
            self.normalizer = (f"{ns.name} (with a character map)"
                               if ns.name == "identity" and ns.precompiled_charsmap else ns.name)
            if proto.trainer_spec.HasField("unk_surface"):
                unk_surface = proto.trainer_spec.unk_surface
        for i in range(self.vocab_size):
            p = sp.id_to_piece(i)
            if not math.isfinite(sp.get_score(i)):  # what .bin and GGUF files cannot hold
                raise TokenizerError(f"{self.path}: piece {i} has a score of "
                                     f"{sp.get_score(i)} (corrupt file)")
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
        self._check_text(text)
        if isinstance(text, (bytes, bytearray)):
            text = utf8_decode(bytes(text))[0]
        elif not _encodable(text):
            text = utf8_decode(text.encode("utf-8", "surrogatepass"))[0]
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def decode(self, ids) -> str:
        ids = [self._check_id(i) for i in ids]
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
