"""Tokenizers: text ↔ token ids for Llama 2 models, from either of two files.

Modules: base (what both share), sentencepiece, llama2c (tokenizer.bin: reading,
encoding, export), gguf (a GGUF file's vocabulary, encoded as a tokenizer.bin's),
train (SentencePiece training with Llama 2's settings).

- `tokenizer.model`, a SentencePiece ModelProto: encoded and decoded by the
  sentencepiece library (`SentencePieceTokenizer`).
- `tokenizer.bin`, llama2.c's export of it: int32 max_token_length, then per
  token a float32 score, an int32 byte length and the bytes; BOS stored as
  "\\n<s>\\n", EOS as "\\n</s>\\n", "▁" as a space (`BinTokenizer`). Encoded by our
  own BPE (Cython kernel `qllama._kernels.bpe`), with SentencePiece's rules
  so that its ids equal SentencePiece's on the same text: identity normaliser, dummy-prefix "▁",
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

A GGUF vocabulary stores the piece types (SentencePiece's numbers) and one setting,
`tokenizer.ggml.add_space_prefix`; as llama.cpp does, its user-defined pieces are
taken out of any text before the merges, the longest first, and each text part
left is encoded with the dummy prefix. `encode_special` (`qllama run --special`)
takes the control and unknown pieces written in a text out the same way.

Data flow: file → validated vocabulary → (encode) normalized UTF-8 → BPE
merges → ids, (decode) ids → bytes per token → UTF-8 text with SentencePiece's
replacement of invalid bytes.
"""
from __future__ import annotations

import os
import struct

from ..errors import TokenizerError
from ..io.inputs import TOKENIZER_LIMIT, read_bounded
from .base import StreamDecoder, Tokenizer
from .gguf import GGUFTokenizer, from_gguf
from .llama2c import BinTokenizer, export_bin
from .sentencepiece import SentencePieceTokenizer, UnusableModel

__all__ = ["load_tokenizer", "find_tokenizer", "from_gguf", "export_bin", "Tokenizer",
           "StreamDecoder", "BinTokenizer", "GGUFTokenizer", "SentencePieceTokenizer",
           "UnusableModel"]


def load_tokenizer(path, vocab_size: int | None = None) -> Tokenizer:
    """A tokenizer from a SentencePiece `tokenizer.model`, a llama2.c `tokenizer.bin`
    or the vocabulary in a GGUF model file. With `vocab_size`, the file must have
    exactly that many pieces (the model's vocabulary)."""
    from ..formats import is_gguf

    path = os.fspath(path)
    if is_gguf(path, TokenizerError):
        from ..formats.gguf_reader import GGUFModel
        with GGUFModel(path) as model:
            tok = from_gguf(model)
    else:
        tok = _from_bytes(path, read_bounded(path, TOKENIZER_LIMIT, "a tokenizer",
                                             TokenizerError))
    if vocab_size is not None and tok.vocab_size != vocab_size:
        raise TokenizerError(f"tokenizer {path} has {tok.vocab_size} tokens, model has {vocab_size}")
    return tok


def _from_bytes(path: str, data: bytes) -> Tokenizer:
    from ..errors import FormatError
    from ..formats import llama2c
    try:  # a model checkpoint given as the tokenizer would read as a damaged tokenizer.bin
        config = llama2c.parse_header(data[:llama2c.HEADER_SIZE], len(data), path)
    except FormatError:
        pass
    else:
        raise TokenizerError(f"{path}: a llama2.c model (version {config.version}), not a "
                             "tokenizer (tokenizer.model or tokenizer.bin)")
    # A tokenizer.bin starts with a small int32 (max_token_length, < 64 KiB); a
    # ModelProto starts with tag 0x0A and a piece message, so its first four
    # bytes read as a large number.
    if len(data) < 4 or struct.unpack_from("<i", data, 0)[0] < 65536:
        return BinTokenizer(path, data)
    try:
        return SentencePieceTokenizer(path, data)
    except UnusableModel:
        raise
    except TokenizerError as e:
        first = struct.unpack_from("<i", data, 0)[0]
        raise TokenizerError(f"{e}; nor a llama2.c tokenizer.bin (its max_token_length would be "
                             f"{first})") from None


def find_tokenizer(model_path: str, working_directory: bool = True) -> str:
    """tokenizer.model or tokenizer.bin beside the model (in it, for a Hugging Face
    folder), then in the working directory (as run.c's default) unless told not to."""
    model_path = os.path.abspath(model_path)
    places = [model_path if os.path.isdir(model_path) else os.path.dirname(model_path)]
    places += [os.getcwd()] if working_directory else []
    tried = []
    for folder in dict.fromkeys(places):
        for name in ("tokenizer.model", "tokenizer.bin"):
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate):
                return candidate
            tried.append(candidate)
    raise TokenizerError("no tokenizer found (looked for " + ", ".join(tried)
                         + "); pass one with -z/--tokenizer (tokenizer= to qllama.load)")
