"""qllama.tokenizer: the llama2.c tokenizer.bin encoder against SentencePiece,
decoding, streaming, export byte-identity and bad files."""
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qllama import cli
from qllama.errors import TokenizerError
from qllama.tokenizer import BinTokenizer, SentencePieceTokenizer, load_tokenizer
from qllama.tokenizer.base import BYTE, CONTROL, UNKNOWN, utf8_decode
from qllama.tokenizer.llama2c import bin_bytes

from bpe_reference import ReferenceTable, bpe_reference
from conftest import data, models

spm = pytest.importorskip("sentencepiece")

# QLLAMA_TEST_SCALE=20 runs 20x the hypothesis examples (a longer hunt for mismatches).
SCALE = int(os.environ.get("QLLAMA_TEST_SCALE", "1"))


# ---------------------------------------------------------------------------
# fixtures: the reference tokenizers, loaded once

@pytest.fixture(scope="module")
def llama():
    """(our tokenizer.bin encoder, its pure-Python twin, SentencePiece on tokenizer.model)"""
    raw = data("tokenizer.bin").read_bytes()
    return (load_tokenizer(data("tokenizer.bin")), BinTokenizer("ref", raw, merge_table=ReferenceTable),
            spm.SentencePieceProcessor(model_file=str(data("tokenizer.model"))))


def _proto(path):
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    m = pb.ModelProto()
    m.ParseFromString(path.read_bytes())
    return m


@pytest.fixture(scope="module")
def tok512():
    """(ours on tok512.bin, SentencePiece on tok512.model as Llama 2 normalises:
    the stories260K model was trained with remove_extra_whitespaces true, which
    a .bin cannot record)"""
    m = _proto(data("tok512.model"))
    m.normalizer_spec.remove_extra_whitespaces = False
    m.trainer_spec.unk_surface = " \u2047 "   # its own is " \\342\\201\\207 ", escaped text
    return (load_tokenizer(data("tok512.bin")),
            spm.SentencePieceProcessor(model_proto=m.SerializeToString()),
            spm.SentencePieceProcessor(model_file=str(data("tok512.model"))))


# ---------------------------------------------------------------------------
# arbitrary text: all planes, whitespace runs, digits, controls, emoji, CJK, combining marks

any_char = st.characters(blacklist_categories=("Cs",))
chunks = st.one_of(
    st.text(any_char, max_size=12),
    st.text(" \t\n\r\u3000\u00a0", min_size=1, max_size=6),
    st.text("0123456789", min_size=1, max_size=8),
    st.text(st.characters(max_codepoint=0x1F) | st.characters(min_codepoint=0x7F, max_codepoint=0x9F),
            min_size=1, max_size=4),
    st.sampled_from(["🙂", "👩‍👩‍👧", "🇫🇷", "❤️", "𝕳𝖊𝖑𝖑𝖔", "\U0010FFFD", "\uFFFF", "▁"]),
    st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=6),
    st.text(st.characters(min_codepoint=0x0300, max_codepoint=0x036F), min_size=1, max_size=3),
    st.sampled_from(["Once upon a time", " the", "ing", "Hello, world!", "<s>", "<0x41>", "<unk>"]),
)
texts = st.lists(chunks, max_size=8).map("".join)


@settings(max_examples=400 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts)
def test_bin_encoder_matches_sentencepiece(llama, text):
    ours, ref, sp = llama
    want = sp.encode(text)
    assert ours.encode(text, bos=False) == want
    assert ref.encode(text, bos=False) == want
    assert ours.decode(want) == sp.decode(want)
    if sp.decode(want) == text:            # wherever SentencePiece round-trips it
        assert ours.decode(ours.encode(text)) == text


@settings(max_examples=300 * SCALE, deadline=None)
@given(ids=st.lists(st.integers(259, 31999), max_size=12), seps=st.lists(st.sampled_from(
    ["", "", "", " ", "  ", "\n", "1", "é"]), min_size=12, max_size=12))
def test_vocabulary_soup_matches_sentencepiece(llama, ids, seps):
    """Text glued from real pieces: many competing merges, ties and long pieces."""
    ours, ref, sp = llama
    text = "".join(ours.token_bytes(i).decode() + sep for i, sep in zip(ids, seps))
    want = sp.encode(text)
    assert ours.encode(text, bos=False) == want
    assert ref.encode(text, bos=False) == want


@pytest.mark.parametrize("text", [
    "", " ", "  ", "\n", "a", " a", "a ", "hello world", "  two  spaces  ", "\t tab", "123456789",
    "3.14159", "\x00", "\x00a\x7f", "日本語のテキスト", "e\u0301", "👩‍👩‍👧 family", "\U00010348",
    "x" * 2000, "<s>hi</s>", "▁▁a▁", "I'm 😀 écrire",
])
def test_examples_match_sentencepiece(llama, text):
    ours, ref, sp = llama
    assert ours.encode(text, bos=True, eos=True) == [1] + sp.encode(text) + [2]
    assert ref.encode(text, bos=False) == sp.encode(text)


def test_empty_text_has_no_dummy_prefix(llama):
    ours, _, sp = llama
    assert ours.encode("") == [1]          # llama2.c's run.c would give [1, 29871]
    assert ours.encode("", bos=False) == sp.encode("") == []


def test_input_forms(llama):
    ours, _, sp = llama
    assert ours.encode(b"caf\xc3\xa9", bos=False) == sp.encode("café")
    # invalid UTF-8 / lone surrogates: one U+FFFD per invalid byte, as SentencePiece's normaliser
    assert ours.encode(b"a\xffb", bos=False) == sp.encode("a\ufffdb")
    assert ours.encode("a\ud800b", bos=False) == sp.encode("a\ufffd\ufffd\ufffdb")


@settings(max_examples=150 * SCALE, deadline=None)
@given(text=texts)
def test_tok512_bin_matches_its_model(tok512, text):
    ours, sp_identity, sp_as_trained = tok512
    assert ours.encode(text, bos=False) == sp_identity.encode(text)
    # the unmodified model agrees wherever its whitespace collapsing changes nothing
    squeezed = " ".join(text.split(" "))
    if squeezed and " " not in (squeezed[0], squeezed[-1]) and "  " not in squeezed \
            and "▁" not in squeezed:
        assert ours.encode(squeezed, bos=False) == sp_as_trained.encode(squeezed)


def test_aidreams_tokenizer():
    tok = load_tokenizer(models("aidreams260K.tok512.bin"), vocab_size=512)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id) == (512, 1, 2, 0)
    assert tok.byte_fallback
    for text in ["hello there", "Zürich ∑ 日本 🙂", "  x\n\ny  "]:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("in the")
    assert ids[0] == 1 and all(0 <= i < 512 for i in ids)


def test_unknown_without_byte_fallback(tmp_path):
    """A vocabulary without byte pieces: unknown characters become <unk>, one per run."""
    m = _proto(data("tok512.model"))
    keep = [p for p in m.pieces if p.type != p.BYTE]
    del m.pieces[:]
    m.pieces.extend(keep)
    m.trainer_spec.byte_fallback = False
    m.normalizer_spec.remove_extra_whitespaces = False
    m.trainer_spec.unk_surface = " \u2047 "     # a .bin cannot store it: Llama 2's is assumed
    sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    path = tmp_path / "nobytes.model"
    path.write_bytes(m.SerializeToString())
    binary = bin_bytes(load_tokenizer(path))
    (tmp_path / "nobytes.bin").write_bytes(binary)
    ours = load_tokenizer(tmp_path / "nobytes.bin")
    assert not ours.byte_fallback
    for text in ["日本語 and ∑∑ more 🙂🙂", "∑", "a∑b∑∑c", "", "ü the ü"]:
        assert ours.encode(text, bos=False) == sp.encode(text), text
        assert ours.decode(sp.encode(text)) == sp.decode(sp.encode(text))


# ---------------------------------------------------------------------------
# decoding

@settings(max_examples=300 * SCALE, deadline=None)
@given(ids=st.lists(st.one_of(st.integers(0, 31999), st.integers(0, 300), st.integers(3, 258),
                              st.sampled_from([0, 1, 2, 259, 29871, 13])), max_size=20))
def test_decode_matches_sentencepiece(llama, ids):
    ours, _, sp = llama
    want = sp.decode(ids)
    assert ours.decode(ids) == want
    stream = ours.decoder()
    assert "".join(stream.feed(i) for i in ids) + stream.flush() == want


@settings(max_examples=150 * SCALE, deadline=None)
@given(ids=st.lists(st.integers(0, 511), max_size=16))
def test_generic_decoder_follows_each_normaliser(tok512, ids):
    """The .model source's own stream decoder follows tok512.model's
    remove_extra_whitespaces=true decoding rule; the .bin follows Llama 2's."""
    ours, sp_identity, sp_as_trained = tok512
    model = load_tokenizer(data("tok512.model"))
    stream = model.decoder()
    assert "".join(stream.feed(i) for i in ids) + stream.flush() == sp_as_trained.decode(ids)
    assert model.decode(ids) == sp_as_trained.decode(ids)
    assert ours.decode(ids) == sp_identity.decode(ids)


@settings(max_examples=200 * SCALE, deadline=None)
@given(raw=st.binary(max_size=24))
def test_byte_pieces_decode_like_sentencepiece(llama, raw):
    ours, _, sp = llama
    ids = [3 + b for b in raw]                 # <0xNN> byte pieces
    assert ours.decode(ids) == sp.decode(ids) == utf8_decode(raw)[0]


def test_token_bytes_and_pieces(llama):
    ours, _, sp = llama
    model = load_tokenizer(data("tokenizer.model"))
    for tok in (ours, model):
        assert tok.token_bytes(1) == tok.token_bytes(2) == b""             # BOS, EOS
        assert tok.token_bytes(3 + 0xE4) == b"\xe4"                         # <0xE4>
        assert tok.token_bytes(29871) == b" "                               # "▁"
        assert tok.token_bytes(15043) == b" Hello"
        assert tok.token_bytes(15043, prev_id=1) == b"Hello"                # after BOS
        assert tok.token_bytes(3 + 0x20, prev_id=1) == b" "                 # byte pieces keep it
        assert tok.token_bytes(0) == " \u2047 ".encode()                    # <unk>
        assert [tok.piece(i) for i in (0, 1, 2, 3, 29871, 15043)] == \
            ["<unk>", "<s>", "</s>", "<0x00>", "▁", "▁Hello"]
        assert tok.kinds[0] == UNKNOWN and tok.kinds[1] == CONTROL and tok.kinds[3] == BYTE
        assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (32000, 1, 2)
        with pytest.raises(TokenizerError, match="out of range"):
            tok.decode([32000])
    assert all(ours.piece(i) == sp.id_to_piece(i) for i in range(32000))
    assert all(ours.score(i) == sp.get_score(i) for i in range(0, 32000, 7))


def test_stream_decoder_waits_for_complete_characters(llama):
    ours = llama[0]
    stream = ours.decoder()
    # "€" = E2 82 AC as three byte pieces, after "▁Hello"
    assert stream.feed(1) == ""
    assert stream.feed(15043) == "Hello"
    assert stream.feed(3 + 0xE2) == ""
    assert stream.feed(3 + 0x82) == ""
    assert stream.feed(3 + 0xAC) == "€"
    assert stream.feed(3 + 0xE2) == ""
    assert stream.flush() == "\ufffd"


# ---------------------------------------------------------------------------
# export and loading

@pytest.mark.parametrize("name", ["tokenizer", "tok512"])
def test_export_is_byte_identical(tmp_path, name):
    out = tmp_path / f"{name}.bin"
    assert cli.main(["tokenizer", "export", str(data(f"{name}.model")), "-o", str(out)]) == 0
    assert out.read_bytes() == data(f"{name}.bin").read_bytes()
    assert cli.main(["tokenizer", "export", str(data(f"{name}.model")), "-o", str(out)]) == 1


def test_load_detects_format_and_checks_vocab_size():
    assert isinstance(load_tokenizer(data("tokenizer.model")), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(str(data("tokenizer.bin")), vocab_size=32000), BinTokenizer)
    with pytest.raises(TokenizerError, match=r"has 512 tokens, model has 32000"):
        load_tokenizer(data("tok512.bin"), vocab_size=32000)
    with pytest.raises(TokenizerError, match=r"has 32000 tokens, model has 512"):
        load_tokenizer(data("tokenizer.model"), vocab_size=512)


def _bin(tokens, max_len=None):
    out = struct.pack("<i", max_len if max_len is not None else max(len(t) for _, t in tokens))
    for score, t in tokens:
        out += struct.pack("<fi", score, len(t)) + t
    return out


GOOD = [(0.0, b"<unk>"), (0.0, b"\n<s>\n"), (0.0, b"\n</s>\n"), (-1.0, b" a"), (-2.0, b"a")]


@pytest.mark.parametrize("blob, message", [
    (b"", "too short"),
    (b"\x05\x00", "too short"),
    (struct.pack("<i", 0), "max_token_length is 0"),
    (struct.pack("<i", -3) + _bin(GOOD)[4:], "max_token_length is -3"),
    (struct.pack("<i", 8), "holds no tokens"),
    (_bin(GOOD)[:-1], "truncated: token 4 length 1 runs past the end"),
    (_bin(GOOD)[:-4], "truncated: token 4 header"),
    (_bin(GOOD)[:4] + struct.pack("<fi", 0.0, -5) + b"xxxx", "negative length -5"),
    (_bin(GOOD)[:4] + struct.pack("<fi", 0.0, 1 << 30), "runs past the end"),
    (_bin(GOOD, max_len=2), "longer than the file's max_token_length 2"),
    (_bin([(float("nan"), b"x")]), "token 0 has a score of nan"),
    (_bin(GOOD + [(float("-inf"), b"b")]), "token 5 has a score of -inf"),
    (b"\x0a\x09\x0a\x05garbage-that-is-not-a-proto", "not a valid SentencePiece model"),
])
def test_bad_files_raise_clear_errors(tmp_path, blob, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(blob)
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(path)


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_a_sentencepiece_model_with_a_score_no_bin_or_gguf_holds_is_refused(tmp_path, score):
    """One rule for the three formats: a .model that loaded had been exported to files
    qllama then refused."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    proto = pb.ModelProto()
    proto.ParseFromString(data("tok512.model").read_bytes())
    proto.pieces[300].score = score
    (tmp_path / "bad.model").write_bytes(proto.SerializeToString())
    with pytest.raises(TokenizerError, match=f"piece 300 has a score of {score}"):
        load_tokenizer(tmp_path / "bad.model")


def test_truncated_real_file_never_crashes(tmp_path):
    raw = data("tokenizer.bin").read_bytes()
    path = tmp_path / "cut.bin"
    for cut in (1, 3, 4, 7, 11, 12, 13, 1000, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        try:
            tok = load_tokenizer(path, vocab_size=32000)
        except TokenizerError as e:
            assert str(path) in str(e)
        else:  # even a cut between tokens leaves fewer than the model's 32000
            pytest.fail(f"cut at {cut} loaded {tok}")


@pytest.mark.parametrize("index,name", [(0, "an unknown"), (1, "a BOS"), (2, "an EOS")])
def test_model_whose_special_piece_is_plain_is_refused(index, name, tmp_path, capsys):
    """sentencepiece loads tok512.model with <unk>, <s> or </s> retyped NORMAL and gives
    its id as -1; encoding with BOS then raised from sentencepiece, and a GGUF export
    failed packing -1 as unsigned: both tracebacks. Refused on loading, in one line."""
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    m = pb.ModelProto()
    m.ParseFromString(data("tok512.model").read_bytes())
    m.pieces[index].type = pb.ModelProto.SentencePiece.NORMAL
    path = tmp_path / "tokenizer.model"
    path.write_bytes(m.SerializeToString())
    assert cli.main(["tokenizer", "encode", str(path), "hello"]) == 1
    err = capsys.readouterr().err
    assert err == (f"qllama: error: {path}: a SentencePiece model without {name} piece; a "
                   "Llama tokenizer has all three (<unk>, <s>, </s>)\n")


def test_bin_cut_at_a_record_boundary(tmp_path, capsys):
    """tok512.bin cut at 100 bytes holds 7 whole records: every record parses, but the
    header's max_token_length (7) is longer than any piece left, so the file is
    known to be cut; the same for a cut inside the 256 byte-fallback pieces."""
    raw = data("tok512.bin").read_bytes()
    path = tmp_path / "cut.bin"
    path.write_bytes(raw[:100])
    with pytest.raises(TokenizerError, match="truncated or corrupt: its header says the "
                                             "longest token is 7 bytes"):
        load_tokenizer(path)
    assert cli.main(["tokenizer", "encode", str(path), "hello"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"qllama: error: {path}: truncated") and err.count("\n") == 1
    pieces = [(0.0, b"<unk>"), (0.0, b"\n<s>\n"), (0.0, b"\n</s>\n")]
    pieces += [(0.0, f"<0x{b:02X}>".encode()) for b in range(40)]
    path.write_bytes(_bin(pieces))
    with pytest.raises(TokenizerError, match="holds 40 of the 256 byte-fallback tokens"):
        load_tokenizer(path)


def test_bin_cut_anywhere_before_its_longest_piece_is_refused(tmp_path):
    raw = data("tok512.bin").read_bytes()
    path = tmp_path / "cut.bin"
    longest_end = 4
    off = 4
    while off < len(raw):  # the end of the first record holding a 7-byte piece
        length = struct.unpack_from("<i", raw, off + 4)[0]
        off += 8 + length
        if length == 7:
            longest_end = off
            break
    for cut in range(1, longest_end):
        path.write_bytes(raw[:cut])
        with pytest.raises(TokenizerError, match=str(path)):
            load_tokenizer(path)


def test_sentencepiece_model_cut_anywhere_is_refused(tmp_path):
    """A ModelProto cut between two fields still parses (sentencepiece loads tok512.model
    without its last 20 bytes, the normalizer spec, and then normalises differently)."""
    raw = data("tok512.model").read_bytes()
    path = tmp_path / "cut.model"
    for cut in range(1, len(raw)):
        path.write_bytes(raw[:cut])
        refused = f"{path}: (truncated|not a valid|\\d bytes is too short)"
        with pytest.raises(TokenizerError, match=refused):
            load_tokenizer(path)
    path.write_bytes(raw[:-20])
    with pytest.raises(TokenizerError, match="no normalizer_spec"):
        load_tokenizer(path)


def test_corrupt_model_piece_is_a_tokenizer_error(tmp_path, capsys):
    """A piece that is not UTF-8 parses as a proto but breaks id_to_piece."""
    raw = bytearray(data("tok512.model").read_bytes())
    raw[6119] = 0xC2
    path = tmp_path / "bad.model"
    path.write_bytes(raw)
    with pytest.raises(TokenizerError, match=f"{path}: not a valid SentencePiece model"):
        load_tokenizer(path)
    assert cli.main(["tokenizer", "encode", str(path), "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qllama: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("name, loader", [("tok512.model", load_tokenizer),
                                          ("tok512.bin", BinTokenizer)])
def test_single_byte_mutations_load_or_raise_tokenizer_error(tmp_path, name, loader):
    import random
    raw = data(name).read_bytes()
    path = tmp_path / name
    rng = random.Random(1234)
    for _ in range(100):
        mutated = bytearray(raw)
        offset = rng.randrange(len(raw))
        mutated[offset] = rng.choice([b for b in range(256) if b != raw[offset]])
        path.write_bytes(mutated)
        try:
            tok = loader(path) if loader is load_tokenizer else loader(str(path), bytes(mutated))
        except TokenizerError as e:
            assert str(path) in str(e)
        else:
            tok.decode(tok.encode("Once upon a time"))


def test_missing_and_unreadable(tmp_path, capsys):
    with pytest.raises(TokenizerError, match="cannot read"):
        load_tokenizer(tmp_path / "nope.bin")
    with pytest.raises(TokenizerError, match="not a regular file"):
        load_tokenizer(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TokenizerError, match="not a regular file"):  # and no hang in open()
        load_tokenizer(fifo)
    assert cli.main(["tokenizer", "encode", str(tmp_path / "nope.bin"), "hi"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qllama: error: ") and err.count("\n") == 1


def test_minimal_bin_without_model(tmp_path):
    path = tmp_path / "tiny.bin"
    path.write_bytes(_bin(GOOD))
    tok = load_tokenizer(path)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id, tok.byte_fallback) == (5, 1, 2, 0, False)
    assert tok.encode("a a", bos=False) == [3, 3]
    assert tok.encode("b", bos=False) == [0]          # no byte pieces: unknown
    assert tok.decode([1, 3, 3, 0]) == "a a \u2047 "


# ---------------------------------------------------------------------------
# CLI

def test_cli_encode_decode_json(capsys, monkeypatch):
    import io
    import json
    tok = str(data("tokenizer.bin"))
    assert cli.main(["tokenizer", "encode", "--json", tok, "Hello world"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ids"] == [1, 15043, 3186] and out["pieces"] == ["<s>", "▁Hello", "▁world"]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("héllo".encode())))
    assert cli.main(["tokenizer", "encode", "--json", "--no-bos", "--eos", tok]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["text"] == "héllo" and out["ids"][-1] == 2 and out["ids"][0] != 1
    assert cli.main(["tokenizer", "decode", "--json", tok, "1", "15043,3186"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "Hello world"
    assert cli.main(["tokenizer", "decode", tok, "1", "x"]) == 1
    assert "not a token id" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# the Cython kernel against its pure-Python twin (no reference files needed)

@settings(max_examples=300 * SCALE, deadline=None)
@given(vocab=st.lists(st.tuples(st.text("ab▁cé", min_size=1, max_size=4),
                                st.sampled_from([0.0, -1.0, -2.0, -2.5, -7.0])), max_size=30),
       text=st.text("ab▁cédz", max_size=40), byte_fallback=st.booleans())
def test_kernel_matches_python_twin(vocab, text, byte_fallback):
    from qllama._kernels.bpe import MergeTable
    nbytes = 256 if byte_fallback else 0
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(nbytes)]
    pieces += [p.encode() for p, _ in vocab]
    scores = [0.0] * (3 + nbytes) + [s for _, s in vocab]   # many ties: leftmost must win
    mergeable = [False] * (3 + nbytes) + [True] * len(vocab)
    byte_ids = list(range(3, 259)) if byte_fallback else [-1] * 256
    kernel = MergeTable(pieces, scores, mergeable, byte_ids, 0, byte_fallback)
    table = {}
    for i, p in enumerate(pieces):
        if mergeable[i] and p not in table:
            table[p] = (i, scores[i])
    raw = text.encode()
    ids = kernel.encode(raw)
    assert ids == bpe_reference(raw, table, byte_ids, 0, byte_fallback)
    # and SentencePiece itself on the same vocabulary, when the pieces are distinct
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    if len(set(pieces)) == len(pieces):
        m = pb.ModelProto()
        types = [2, 3, 3] + [6] * nbytes + [1] * len(vocab)
        for p, sc, t in zip(pieces, scores, types):
            m.pieces.add(piece=p.decode(), score=sc, type=t)
        m.trainer_spec.model_type = pb.TrainerSpec.BPE
        m.trainer_spec.byte_fallback = byte_fallback
        m.normalizer_spec.name = "identity"
        m.normalizer_spec.add_dummy_prefix = False
        m.normalizer_spec.remove_extra_whitespaces = False
        sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
        assert ids == sp.encode(text)


def test_cli_encode_reads_argument_bytes_as_stdin_and_prints_on_any_terminal():
    """An invalid byte in the argument is one U+FFFD, as on stdin and in SentencePiece
    (Python's argv holds it as a surrogate: three); a stdout that cannot show '▁' gets an
    escape, not a UnicodeEncodeError."""
    tok = str(data("tokenizer.bin"))
    cmd = [sys.executable, "-m", "qllama", "tokenizer", "encode", tok]
    arg = subprocess.run(cmd + [b"a\xffb"], capture_output=True)
    piped = subprocess.run(cmd, input=b"a\xffb", capture_output=True)
    assert arg.returncode == 0 and arg.stdout.splitlines()[0] == b"1 263 30140 29890"
    assert arg.stdout == piped.stdout
    r = subprocess.run(cmd + ["hello world"], capture_output=True,
                       env={**os.environ, "PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0 and b"'\\u2581hello'" in r.stdout, r.stderr


@pytest.mark.parametrize("name", ["tokenizer.bin", "tokenizer.model"])
def test_ids_and_text_of_the_wrong_type_are_refused(name):
    """int() took 1.5 as 1 and '15043' as 15043; sentencepiece raises on both."""
    tok = load_tokenizer(data(name))
    assert tok.decode([1, 15043]) == "Hello" == tok.decode([1, np.int64(15043)])
    for ids in ([1.5], [1, "15043"], [True]):
        with pytest.raises(TokenizerError, match="is not an integer"):
            tok.decode(ids)
    with pytest.raises(TokenizerError, match="a str or bytes"):
        tok.encode(None)


def test_a_model_file_given_as_the_tokenizer_is_named_so(tmp_path, capsys):
    """A v0 checkpoint read as a damaged tokenizer.bin ('token 2 length 265839806 runs
    past the end'); a GGUF file given to export was 'already a tokenizer.bin'."""
    model = str(data("stories260K.bin"))
    with pytest.raises(TokenizerError, match=r"a llama2.c model \(version 0\), not a tokenizer"):
        load_tokenizer(model)
    gguf = tmp_path / "m.gguf"
    assert cli.main(["export", model, str(gguf), "--to", "gguf", "-z",
                     str(data("tok512.model")), "-q"]) == 0
    assert cli.main(["tokenizer", "export", str(gguf), "-o", str(tmp_path / "t.bin")]) == 1
    assert "a GGUF file, whose vocabulary is no SentencePiece model" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# control pieces written in text (`qllama run --special`, as llama.cpp reads a prompt)

@settings(max_examples=200 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(texts, st.sampled_from(["<s>", "</s>", "<unk>", "</s></s>"])),
                      max_size=6))
def test_encode_special_is_the_parts_encoded_between_control_ids(llama, parts):
    """Each control or unknown piece written in the text is its id; the text between two
    is encoded alone (with the dummy prefix, as llama.cpp prefixes text after a special
    token); the same ids from tokenizer.model and tokenizer.bin; no special piece, encode."""
    ours, _, sp = llama
    model = load_tokenizer(data("tokenizer.model"))
    text = "".join(parts)
    got = ours.encode_special(text)
    assert got == model.encode_special(text)
    want = [1]
    for i, part in enumerate(re.split("(<s>|</s>|<unk>)", text)):
        want += [{"<s>": 1, "</s>": 2, "<unk>": 0}[part]] if i % 2 else sp.encode(part)
    assert got == want
    if not any(s in text for s in ("<s>", "</s>", "<unk>")):
        assert got == ours.encode(text)
    assert ours.encode_special(text, bos=False, eos=True) == got[1:] + [2]


def test_run_special_reads_the_prompts_control_pieces(capsys):
    """The prompt's token count shows in --steps' refusal: with --special, "</s>" is one."""
    base = ["run", str(data("stories260K.bin")), "-z", str(data("tok512.bin")), "-n", "2",
            "-i", "a</s>b"]
    counts = []
    for extra in ([], ["--special"]):
        assert cli.main(base + extra) == 1
        err = capsys.readouterr().err
        counts.append(int(err.split("the prompt's ")[1].split()[0]))
    tok = load_tokenizer(data("tok512.bin"))
    assert counts == [len(tok.encode("a</s>b")), len(tok.encode("a")) + 1 + len(tok.encode("b")) - 1]
    assert cli.main(base[:-4] + ["-m", "chat", "--special"]) == 1
    assert "--special reads generate mode's prompt" in capsys.readouterr().err


def test_run_reads_a_prompts_bytes_as_the_tokenizer_does(capsys):
    """A byte of argv that is not UTF-8 reaches Python as a lone surrogate, which encoded
    as three U+FFFD (9 byte pieces): one, as the tokenizer reads bytes, and printed as it."""
    base = ["run", str(data("stories260K.bin")), "-z", str(data("tok512.bin"))]
    assert cli.main(base + ["-n", "2", "-i", "\udcffab"]) == 1
    n = int(capsys.readouterr().err.split("the prompt's ")[1].split()[0])
    assert n == len(load_tokenizer(data("tok512.bin")).encode(b"\xffab"))
    assert cli.main(base + ["-n", "12", "-t", "0", "-i", "\udcffab"]) == 0
    assert capsys.readouterr().out.startswith("\ufffdab")


def test_run_takes_a_prompt_of_any_str(capsys):
    """A lone surrogate no byte of argv made (a Python caller of cli.main) is one line of
    output, not a UnicodeEncodeError from os.fsencode."""
    assert cli.main(["run", str(data("stories260K.bin")), "-z", str(data("tok512.bin")), "-n",
                     "24", "-t", "0", "-i", "\ud800ab"]) == 0
    assert capsys.readouterr().out.startswith("\ufffd\ufffd\ufffdab")


def test_chat_reads_turns_and_system_as_the_tokenizer_does(capsys, monkeypatch):
    """Chat turns from stdin and -y met Python's lone surrogates as three U+FFFD each."""
    import io

    from qllama.chat import turn_ids
    seen = []
    real = turn_ids
    monkeypatch.setattr("qllama.cli.run.turn_ids",
                        lambda model, user, system: seen.append((user, system))
                        or real(model, user, system))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\xffhi\n"),
                                                       errors="surrogateescape"))
    assert cli.main(["run", str(data("stories260K.bin")), "-z", str(data("tok512.bin")), "-m",
                     "chat", "-n", "64", "-y", "\udcfeok"]) == 0
    assert seen == [("\ufffdhi", "\ufffdok")]
