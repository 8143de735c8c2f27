"""qllama tokenizer train: Llama 2's trainer and normaliser settings, field by field."""
import os
import random
import struct

import pytest

from qllama import cli
from qllama.errors import TokenizerError, UsageError
from qllama.tokenizer import load_tokenizer
from qllama.tokenizer.train import LLAMA2_NORMALIZER_SPEC, LLAMA2_TRAINER_SPEC, train

from conftest import SHARED, data

pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")

# Llama 2's tokenizer.model, as dumped in the seed notes (unk_surface repaired:
# the dump shows " ⁇ " mis-decoded as " ‚Åá ").
SEED_TRAINER = dict(
    model_type="BPE", self_test_sample_size=0, input_format="text",
    character_coverage=0.99995, shrinking_factor=0.75, num_sub_iterations=2,
    max_sentence_length=4192, shuffle_input_sentence=True, max_sentencepiece_length=16,
    split_by_unicode_script=True, split_by_whitespace=True, split_by_number=True,
    treat_whitespace_as_suffix=False, split_digits=True, allow_whitespace_only_pieces=True,
    vocabulary_output_piece_score=True, hard_vocab_limit=True, use_all_vocab=False,
    byte_fallback=True, required_chars="", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
    unk_surface=" \u2047 ", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
    pad_piece="<pad>", train_extremely_large_corpus=False, enable_differential_privacy=False,
    differential_privacy_noise_level=0.0, differential_privacy_clipping_threshold=0,
)
# Fields of the run, free to differ: input, model_prefix, vocab_size, num_threads and
# the sample sizes input_sentence_size / seed_sentencepiece_size.
SEED_RUN = dict(input=["/large_experiments/theorem/datasets/MERGED/all.test1.merged"],
                model_prefix="spm_model_32k_200M_charcov099995_allowWSO__v2", vocab_size=32000,
                num_threads=80, input_sentence_size=200000000, seed_sentencepiece_size=1000000)
SEED_NORMALIZER = dict(name="identity", precompiled_charsmap=b"", add_dummy_prefix=True,
                       remove_extra_whitespaces=False, normalization_rule_tsv="")


def check_llama2_spec(proto):
    ts, ns = proto.trainer_spec, proto.normalizer_spec
    for field, want in SEED_TRAINER.items():
        assert ts.HasField(field), field
        have = getattr(ts, field)
        if field == "model_type":
            have = pb.TrainerSpec.ModelType.Name(have)
        if isinstance(want, float):
            have, want = struct.pack("<f", have), struct.pack("<f", want)
        assert have == want, field
    for field, want in SEED_NORMALIZER.items():
        assert getattr(ns, field) == want, field
    assert [p.piece for p in proto.pieces[:3]] == ["<unk>", "<s>", "</s>"]
    piece = pb.ModelProto.SentencePiece
    assert [p.type for p in proto.pieces[:3]] == [piece.UNKNOWN, piece.CONTROL, piece.CONTROL]
    assert [p.piece for p in proto.pieces[3:259]] == [f"<0x{b:02X}>" for b in range(256)]
    assert all(p.type == piece.BYTE for p in proto.pieces[3:259])


def parse(path):
    m = pb.ModelProto()
    m.ParseFromString(path.read_bytes())
    return m


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(7)
    words = ("once upon a time there was little girl named Lily she loved to play outside in "
             "the park with her friend Tom they saw big red ball and happy dog café naïve "
             "Zürich 東京 日本語 данные").split()
    lines = []
    for _ in range(1500):
        n = rng.randint(3, 14)
        line = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.3:
            line += f" {rng.randint(0, 99999)}."
        if rng.random() < 0.1:
            line = "  " + line + "\t🙂"
        lines.append(line)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("trained") / "tok400"
    assert cli.main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "400",
                     "--out", str(prefix)]) == 0
    return prefix


def test_trained_model_has_llama2_spec(trained, corpus):
    proto = parse(trained.with_suffix(".model"))
    check_llama2_spec(proto)
    ts = proto.trainer_spec
    assert (ts.vocab_size, len(proto.pieces)) == (400, 400)
    assert list(ts.input) == [str(corpus)] and ts.model_prefix == "tok400"


def test_real_llama2_model_passes_the_same_check():
    proto = parse(data("tokenizer.model"))
    check_llama2_spec(proto)
    for field, want in SEED_RUN.items():
        have = getattr(proto.trainer_spec, field)
        assert (list(have) if field == "input" else have) == want


def test_module_spec_is_the_seed():
    assert {k: v for k, v in LLAMA2_TRAINER_SPEC.items() if k not in SEED_RUN} == SEED_TRAINER
    assert {k: v for k, v in LLAMA2_TRAINER_SPEC.items() if k in SEED_RUN} == SEED_RUN
    assert LLAMA2_NORMALIZER_SPEC == SEED_NORMALIZER


def test_seed_dump_matches_when_present():
    """Parse the trainer_spec dump in ../shared/seed/LLAMA.md itself."""
    from google.protobuf import text_format
    path = SHARED / "seed" / "LLAMA.md"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    text = path.read_text(encoding="utf-8")
    block = text.split(">>> print(mp.trainer_spec)\n", 1)[1].split("\n>>>", 1)[0]
    ts = text_format.Parse(block, pb.TrainerSpec())
    assert ts.unk_surface != " \u2047 "             # the garbled dump ...
    ts.unk_surface = " \u2047 "                      # ... repaired
    norm = text.split(">>> print(mp.normalizer_spec)\n", 1)[1].split("```", 1)[0]
    ns = text_format.Parse(norm, pb.NormalizerSpec())
    proto = pb.ModelProto()
    proto.trainer_spec.CopyFrom(ts)
    proto.normalizer_spec.CopyFrom(ns)
    proto.pieces.extend(parse(data("tokenizer.model")).pieces)
    check_llama2_spec(proto)
    assert {f.name for f, _ in ts.ListFields()} == set(SEED_TRAINER) | set(SEED_RUN)


def test_trained_bin_matches_model(trained):
    model = load_tokenizer(trained.with_suffix(".model"))
    binary = load_tokenizer(trained.with_suffix(".bin"), vocab_size=400)
    for text in ["Once upon a time, Lily saw 12345 dogs.", "  Zürich 東京  🙂\n", "", "xyzzy ∑"]:
        ids = model.encode(text)
        assert binary.encode(text) == ids
        assert binary.decode(ids) == model.decode(ids)


def test_small_corpus_adapts_vocab_size(corpus, tmp_path, capsys):
    out = tmp_path / "big"
    assert cli.main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "5000",
                     "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "supports at most" in err
    n = parse(out.with_suffix(".model")).trainer_spec.vocab_size
    assert 400 < n < 5000 and load_tokenizer(out.with_suffix(".bin")).vocab_size == n
    with pytest.raises(TokenizerError, match="too large for this corpus"):
        train([corpus], 5000, tmp_path / "exact", exact_vocab=True)
    with pytest.raises(TokenizerError, match="too small: this corpus needs at least"):
        train([corpus], 260, tmp_path / "tiny")
    assert not list(tmp_path.glob("exact*")) and not list(tmp_path.glob("tiny*"))


def test_train_refuses_to_overwrite(trained, corpus, capsys):
    assert cli.main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "400",
                     "--out", str(trained)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["tokenizer", "train", "--input", str(corpus) + ".missing",
                     "--vocab-size", "400", "--out", str(trained) + "x"]) == 1
    assert "cannot read: No such file or directory" in capsys.readouterr().err
    assert cli.main(["tokenizer", "train", "--input", os.devnull, "--vocab-size", "400",
                     "--out", str(trained) + "x"]) == 1
    assert "is a character device, not a regular file" in capsys.readouterr().err
    assert cli.main(["tokenizer", "train", "--input", str(corpus.parent), "--vocab-size", "400",
                     "--out", str(trained) + "y"]) == 1
    assert "a folder, not a text file" in capsys.readouterr().err
    for out in ("", str(corpus.parent) + os.sep):  # would write hidden '.model' and '.bin'
        assert cli.main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "400",
                         "--out", out]) == 1
        assert "names no file" in capsys.readouterr().err
    assert not os.path.exists(".model") and not (corpus.parent / ".model").exists()


@pytest.mark.parametrize("flags, message", [
    (["--vocab-size", "99999999999"], "--vocab-size must be in 259..2147483647"),
    (["--vocab-size", "0"], "--vocab-size must be in 259..2147483647"),
    # below 3 special + 256 byte pieces SentencePiece stopped on an INTERNAL check
    (["--vocab-size", "1"], "--vocab-size must be in 259..2147483647"),
    (["--vocab-size", "2"], "--vocab-size must be in 259..2147483647"),
    (["--vocab-size", "400", "--input-sentence-size", "99999999999999999999999"],
     "--input-sentence-size must be 0 (all sentences) or in 101..18446744073709551615"),
    # SentencePiece refuses samples of 1..100 sentences (an INTERNAL error before)
    (["--vocab-size", "400", "--input-sentence-size", "1"], "or in 101.."),
    (["--vocab-size", "400", "--input-sentence-size", "100"], "or in 101.."),
    (["--vocab-size", "400", "--threads", "99999999999999"], "thread count must be in 1..1024"),
])
def test_out_of_range_numbers_are_one_line(corpus, tmp_path, capsys, flags, message):
    assert cli.main(["tokenizer", "train", "--input", str(corpus), "--out", str(tmp_path / "t"),
                     *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_trainer_exceptions_become_tokenizer_errors(corpus, tmp_path, monkeypatch):
    spm = pytest.importorskip("sentencepiece")

    def refuse(**kwargs):
        raise ValueError("INVALID_ARGUMENT: cannot parse \"x\" as int.")

    monkeypatch.setattr(spm.SentencePieceTrainer, "train", refuse)
    with pytest.raises(TokenizerError, match="sentencepiece training failed: INVALID_ARGUMENT"):
        train([corpus], 400, tmp_path / "t")
    with pytest.raises(UsageError, match="--vocab-size must be in 259..2147483647"):
        train([corpus], 2**31, tmp_path / "t")


def test_corpus_must_be_utf8_with_lines_sentencepiece_keeps(corpus, tmp_path, capsys):
    """A corpus that is not UTF-8 trained without a word (its bad bytes became pieces no
    text can produce); one whose every line is empty or over max_sentence_length stopped
    SentencePiece on an INTERNAL check. Both are one line naming the problem, before
    training, and write nothing; a usable file beside an unusable one trains."""
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("good line\n".encode() + "caf\u00e9 na\u00efve\n".encode("latin-1") * 40)
    long = tmp_path / "long.txt"
    long.write_bytes(b"\n\n" + (b"x" * 4193 + b"\n") * 5)
    out = tmp_path / "t"
    for inputs, message in (([bad], "latin1.txt: line 2 is not UTF-8 text (byte 0xe9 at 3)"),
                            ([long], "long.txt has 1 to 4192 bytes")):
        assert cli.main(["tokenizer", "train", "--input", *map(str, inputs), "--vocab-size", "300",
                         "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert not list(tmp_path.glob("t.*"))
    assert cli.main(["tokenizer", "train", "--input", str(long), str(corpus), "--vocab-size",
                     "400", "--out", str(out)]) == 0
    assert load_tokenizer(out.with_suffix(".bin")).vocab_size == 400


def test_threads_follow_qllama_threads(corpus, tmp_path, monkeypatch):
    import qllama.tokenizer.train as tt
    seen = []
    real = tt._run_trainer
    monkeypatch.setattr(tt, "_run_trainer", lambda kw, verbose: seen.append(kw["num_threads"])
                        or real(kw, verbose))
    monkeypatch.setenv("QLLAMA_THREADS", "1")
    train([corpus], 400, tmp_path / "t")
    assert seen == [1]
    monkeypatch.setenv("QLLAMA_THREADS", "many")
    with pytest.raises(UsageError, match="QLLAMA_THREADS"):
        train([corpus], 400, tmp_path / "u")


@pytest.mark.parametrize("field, effect", [
    ("remove_extra_whitespaces", "repeated, leading and trailing spaces"),
    ("add_dummy_prefix", "a text's first word"),
])
def test_export_says_when_a_bin_cannot_keep_the_normaliser(trained, tmp_path, capsys, field,
                                                           effect):
    """A .bin has no normaliser field and is read with Llama 2's; a .model trained
    otherwise (llama2.c's tok512.model removes extra whitespace) exported silently to a
    .bin that encodes such text differently."""
    proto = parse(trained.with_suffix(".model"))
    assert cli.main(["tokenizer", "export", str(trained.with_suffix(".model")), "-o",
                     str(tmp_path / "same.bin")]) == 0
    assert "warning" not in capsys.readouterr().err
    setattr(proto.normalizer_spec, field, not getattr(proto.normalizer_spec, field))
    model = tmp_path / "other.model"
    model.write_bytes(proto.SerializeToString())
    assert cli.main(["tokenizer", "export", str(model), "-o", str(tmp_path / "other.bin")]) == 0
    err = capsys.readouterr().err
    assert f"normalises with {field} " in err and effect in err and err.count("\n") == 1
    text = "  two  spaces " if field.startswith("remove") else "word"
    assert (load_tokenizer(model).encode(text)
            != load_tokenizer(tmp_path / "other.bin").encode(text))


def test_export_says_so_of_a_normaliser_with_rules(corpus, tmp_path, capsys):
    """A model trained with SentencePiece's default nmt_nfkc normaliser (a character map)
    rewrites full-width letters and ligatures; its .bin cannot, and export said nothing."""
    spm = pytest.importorskip("sentencepiece")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "nfkc"),
                                   vocab_size=400, model_type="bpe", byte_fallback=True,
                                   normalization_rule_name="nmt_nfkc", minloglevel=2)
    model = tmp_path / "nfkc.model"
    assert cli.main(["tokenizer", "export", str(model), "-o", str(tmp_path / "nfkc.bin")]) == 0
    err = capsys.readouterr().err
    assert "normalizer nmt_nfkc" in err and "the characters that normaliser rewrites" in err
    text = "\uff43\uff41\uff54 \ufb01"  # full-width "cat", the "fi" ligature
    assert load_tokenizer(model).encode(text) != load_tokenizer(tmp_path / "nfkc.bin").encode(text)


def test_refused_export_is_one_line(tmp_path, capsys):
    """The warning came before the output was checked: a refused export printed it and
    then its error."""
    model = data("tok512.model")
    (tmp_path / "t.bin").write_bytes(b"x")
    assert cli.main(["tokenizer", "export", str(model), "-o", str(tmp_path / "t.bin")]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1, err
