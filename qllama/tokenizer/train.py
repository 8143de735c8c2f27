"""Train a SentencePiece BPE tokenizer with Llama 2's settings.

LLAMA2_TRAINER_SPEC and LLAMA2_NORMALIZER_SPEC are the trainer_spec and
normalizer_spec stored in Llama 2's tokenizer.model (dumped in the project's
seed notes; unk_surface is " ⁇ ", U+2047 between two spaces, which the dump
shows garbled by a wrong text encoding). `train` keeps every field except the
ones that describe the run rather than the tokenizer (TRAINER_RUN_FIELDS):
the input files, the output prefix, the vocabulary size, the thread count
and the sentence sample sizes.

What adapts on a small corpus, and why:
- num_threads: Llama 2's 80 were the machine it ran on; we use the cores this
  process may run on (or --threads, or QLLAMA_THREADS).
- input_sentence_size stays 200M, an upper bound: SentencePiece loads every
  sentence of a smaller corpus. seed_sentencepiece_size only matters to the
  unigram trainer and stays 1M.
- vocab_size: with hard_vocab_limit (kept true) SentencePiece refuses a size
  the corpus cannot fill with merges. Then we train again with the largest
  size it reports possible and say so, unless exact_vocab is set. A size
  below the 3 meta pieces + 256 byte pieces + the corpus's characters cannot
  work at all and is an error that names the minimum.
- max_sentence_length stays 4192 bytes: longer lines are skipped by
  SentencePiece, as they were for Llama 2, so a corpus must have lines below it.

The corpus is read once before training: it must be UTF-8 (SentencePiece trains on
what it makes of other bytes, pieces no text we encode can produce) and have a line
SentencePiece keeps. Out-of-range numbers are refused first too; SentencePiece would
stop on them with an INTERNAL error naming its own source lines.
"""
from __future__ import annotations

import io
import os
import re
import struct
import sys

from ..errors import TokenizerError, UsageError
from ..io.atomic import atomic_output, check_output_path
from ..io.inputs import require_regular_file
from ..threads import resolve_threads
from .base import _one_line
from .llama2c import bin_bytes
from .sentencepiece import SentencePieceTokenizer

LLAMA2_TRAINER_SPEC = {
    "input": ["/large_experiments/theorem/datasets/MERGED/all.test1.merged"],
    "model_prefix": "spm_model_32k_200M_charcov099995_allowWSO__v2",
    "model_type": "BPE",
    "vocab_size": 32000,
    "self_test_sample_size": 0,
    "input_format": "text",
    "character_coverage": 0.99995,
    "input_sentence_size": 200000000,
    "seed_sentencepiece_size": 1000000,
    "shrinking_factor": 0.75,
    "num_threads": 80,
    "num_sub_iterations": 2,
    "max_sentence_length": 4192,
    "shuffle_input_sentence": True,
    "max_sentencepiece_length": 16,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
    "treat_whitespace_as_suffix": False,
    "split_digits": True,
    "allow_whitespace_only_pieces": True,
    "vocabulary_output_piece_score": True,
    "hard_vocab_limit": True,
    "use_all_vocab": False,
    "byte_fallback": True,
    "required_chars": "",
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "unk_surface": " \u2047 ",
    "unk_piece": "<unk>",
    "bos_piece": "<s>",
    "eos_piece": "</s>",
    "pad_piece": "<pad>",
    "train_extremely_large_corpus": False,
    "enable_differential_privacy": False,
    "differential_privacy_noise_level": 0.0,
    "differential_privacy_clipping_threshold": 0,
}

LLAMA2_NORMALIZER_SPEC = {
    "name": "identity",
    "precompiled_charsmap": b"",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "normalization_rule_tsv": "",
}

# Fields that describe the training run, not the tokenizer: free to differ.
TRAINER_RUN_FIELDS = ("input", "model_prefix", "vocab_size", "num_threads",
                      "input_sentence_size", "seed_sentencepiece_size")

# The ranges of the trainer_spec fields we set: vocab_size an int32 with room for the 3
# special and 256 byte pieces; input_sentence_size a uint64, 0 (all) or a sample SentencePiece
# takes (it refuses 1..100).
VOCAB_SIZE_MIN, VOCAB_SIZE_MAX = 3 + 256, 2**31 - 1
INPUT_SENTENCE_SIZE_MIN, INPUT_SENTENCE_SIZE_MAX = 101, 2**64 - 1

_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def spec_mismatches(proto) -> list[str]:
    """Fields of a ModelProto's trainer_spec / normalizer_spec that differ from
    Llama 2's, other than TRAINER_RUN_FIELDS ("field: have X, Llama 2 has Y")."""
    wrong = []
    for prefix, specs, msg in (("trainer_spec", LLAMA2_TRAINER_SPEC, proto.trainer_spec),
                               ("normalizer_spec", LLAMA2_NORMALIZER_SPEC, proto.normalizer_spec)):
        for field, want in specs.items():
            if field in TRAINER_RUN_FIELDS:
                continue
            have = getattr(msg, field)
            if field == "model_type":
                have = type(msg).ModelType.Name(have)
            if isinstance(want, float):   # float fields are float32 in the proto
                same = struct.pack("<f", have) == struct.pack("<f", want)
            else:
                same = have == want
            if not same:
                wrong.append(f"{prefix}.{field}: have {have!r}, Llama 2 has {want!r}")
    return wrong


def check_corpus(paths) -> None:
    """Refuse a corpus SentencePiece cannot train on as Llama 2's was: bytes that are
    not UTF-8 (named by file, line and byte), or no line it keeps in any file (1 to
    max_sentence_length bytes; it skips empty and longer ones)."""
    longest = LLAMA2_TRAINER_SPEC["max_sentence_length"]
    kept = False
    for path in paths:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise TokenizerError(f"{path}: line {number} is not UTF-8 text (byte "
                                         f"0x{line[e.start]:02x} at {e.start}); the corpus must "
                                         "be UTF-8 (iconv can convert it)") from None
                kept = kept or 0 < len(line.rstrip(b"\n")) <= longest
    if not kept:
        raise TokenizerError(f"no line of {', '.join(paths)} has 1 to {longest} bytes; "
                             "SentencePiece skips empty lines and longer ones (Llama 2's "
                             "max_sentence_length)")


def _trainer_kwargs(inputs, vocab_size, threads, input_sentence_size) -> dict:
    kw = {k: v for k, v in LLAMA2_TRAINER_SPEC.items() if k not in ("input", "model_prefix")}
    kw.update(input=list(inputs), vocab_size=vocab_size, num_threads=threads,
              input_sentence_size=input_sentence_size)
    kw.update(normalization_rule_name=LLAMA2_NORMALIZER_SPEC["name"],
              add_dummy_prefix=LLAMA2_NORMALIZER_SPEC["add_dummy_prefix"],
              remove_extra_whitespaces=LLAMA2_NORMALIZER_SPEC["remove_extra_whitespaces"])
    return kw


def _run_trainer(kwargs: dict, verbose: bool) -> bytes:
    import sentencepiece as spm
    out = io.BytesIO()
    if verbose:
        spm.SentencePieceTrainer.train(model_writer=out, **kwargs)
        return out.getvalue()
    # SentencePiece logs from C++ to file descriptor 2: point it at /dev/null meanwhile.
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        spm.SentencePieceTrainer.train(model_writer=out, **kwargs)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return out.getvalue()


def train(inputs, vocab_size: int, prefix: str, threads: int | None = None,
          input_sentence_size: int = LLAMA2_TRAINER_SPEC["input_sentence_size"],
          exact_vocab: bool = False, force: bool = False, verbose: bool = False,
          warn=None) -> dict:
    """Train on `inputs` and write PREFIX.model and PREFIX.bin.

    Returns {"model": path, "bin": path, "vocab_size": n}. `warn(message)` is
    called when the vocabulary size had to shrink to what the corpus allows."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise UsageError("train needs at least one --input file")
    for p in inputs:
        if os.path.isdir(p):
            raise UsageError(f"{p}: a folder, not a text file")
        if require_regular_file(p, UsageError) == 0:  # no FIFO, no device
            raise UsageError(f"{p}: input file is empty")
    if not VOCAB_SIZE_MIN <= vocab_size <= VOCAB_SIZE_MAX:
        raise UsageError(f"--vocab-size must be in {VOCAB_SIZE_MIN}..{VOCAB_SIZE_MAX} (3 special "
                         "and 256 byte pieces at least; SentencePiece stores it as int32), "
                         f"got {vocab_size}")
    if not (input_sentence_size == 0
            or INPUT_SENTENCE_SIZE_MIN <= input_sentence_size <= INPUT_SENTENCE_SIZE_MAX):
        raise UsageError(f"--input-sentence-size must be 0 (all sentences) or in "
                         f"{INPUT_SENTENCE_SIZE_MIN}..{INPUT_SENTENCE_SIZE_MAX} (SentencePiece "
                         f"samples no fewer), got {input_sentence_size}")
    threads = resolve_threads(threads)
    prefix = os.fspath(prefix)
    if not os.path.basename(prefix):  # '' or 'folder/': the outputs would be hidden '.model'
        raise UsageError(f"--out {prefix!r} names no file: give a prefix such as "
                         f"{os.path.join(prefix, 'tokenizer')!r}")
    model_path, bin_path = f"{prefix}.model", f"{prefix}.bin"
    for path in (model_path, bin_path):   # refuse before spending time on training
        check_output_path(path, force, inputs=tuple(inputs))
    check_corpus(inputs)

    size = vocab_size
    while True:
        try:
            data = _run_trainer(_trainer_kwargs(inputs, size, threads, input_sentence_size),
                                verbose)
            break
        except RuntimeError as e:
            msg = _one_line(e)
            high, low = _TOO_HIGH.search(msg), _TOO_LOW.search(msg)
            if high and not exact_vocab and int(high.group(2)) < size:
                size = int(high.group(2))
                if warn:
                    warn(f"the corpus supports at most {size} pieces with Llama 2's settings "
                         f"(hard_vocab_limit); training {size} instead of {vocab_size}")
                continue
            if high:
                raise TokenizerError(f"--vocab-size {vocab_size} is too large for this corpus: "
                                     f"it supports at most {high.group(2)} pieces with Llama 2's "
                                     "settings") from None
            if low:
                raise TokenizerError(f"--vocab-size {vocab_size} is too small: this corpus needs at "
                                     f"least {low.group(2)} (3 special + 256 byte pieces + its "
                                     "characters)") from None
            raise TokenizerError(f"sentencepiece training failed: {msg}") from None
        except Exception as e:  # ValueError for a setting it cannot parse, OSError, ...
            raise TokenizerError(f"sentencepiece training failed: {_one_line(e)}") from None

    proto = pb.ModelProto()
    proto.ParseFromString(data)
    proto.trainer_spec.model_prefix = os.path.basename(prefix)
    wrong = spec_mismatches(proto)
    if wrong:
        raise TokenizerError("sentencepiece did not train with Llama 2's settings: " + "; ".join(wrong))
    # The trainer leaves some fields unset (reading as their defaults); store
    # them explicitly, as Llama 2's file does (the values were checked above).
    for specs, msg in ((LLAMA2_TRAINER_SPEC, proto.trainer_spec),
                       (LLAMA2_NORMALIZER_SPEC, proto.normalizer_spec)):
        for field, want in specs.items():
            if field not in TRAINER_RUN_FIELDS and field != "model_type" and not msg.HasField(field):
                setattr(msg, field, want)
    data = proto.SerializeToString()
    tok = SentencePieceTokenizer(model_path, data)
    with atomic_output(model_path, force=force, inputs=tuple(inputs)) as f:
        f.write(data)
    with atomic_output(bin_path, force=force, inputs=tuple(inputs)) as f:
        f.write(bin_bytes(tok))
    return {"model": model_path, "bin": bin_path, "vocab_size": tok.vocab_size}
