"""Cut, corrupted and crafted GGUF files: the reader (and the tokenizer from what it
read) raises FormatError or TokenizerError, never another exception, and fast; `qllama
info` on a crafted file exits 1 with one line on stderr, under 10 s and 1 GB."""
import os
import struct
import time

import numpy as np
import pytest
from test_hostile_inputs import MAX_RSS, MAX_SECONDS, run_cli

from qllama.errors import FormatError, TokenizerError
from qllama.formats.gguf_reader import GGUFModel
from qllama.formats.llama2c import Config
from qllama.tokenizer import from_gguf

from makers import gguf_metadata, write_gguf

TINY = Config(1, dim=32, hidden_dim=64, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=270,
              seq_len=8, shared_classifier=False)
TOKENS = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + list("abcdefghijk")
KINDS = [2, 3, 3] + [6] * 256 + [1] * 11
CASE_SECONDS = 2.0


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple:
    """(bytes of a small valid GGUF file with a vocabulary, where its last tensor ends,
    the byte ranges of its structure: all but the token strings and the tensor data)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    meta = gguf_metadata(TINY, TOKENS, tokenizer__ggml__token_type=KINDS)
    write_gguf(path, TINY, "Q8_0", meta=meta, types={"w2": "F16"})
    with GGUFModel(path) as g:
        end = g.data_start + max(t.offset + t.nbytes for t in g.infos.values())
        from_gguf(g)
        raw = path.read_bytes()
        structure = np.r_[0:raw.index(b"tokenizer.ggml.tokens") + 40,
                          raw.index(b"tokenizer.ggml.scores") - 8:g.data_start]
    return raw, end, structure


def read_back(path) -> bool:
    """True when the file reads (model and tokenizer); False on one of qllama's errors.
    Anything else propagates and fails the test; so does a slow case."""
    t0 = time.perf_counter()
    try:
        with GGUFModel(path) as g:
            from_gguf(g)
        return True
    except (FormatError, TokenizerError) as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))
        return False
    finally:
        assert time.perf_counter() - t0 < CASE_SECONDS


def test_every_truncation(valid, tmp_path):
    raw, end, _ = valid
    path = tmp_path / "cut.gguf"
    cuts = list(range(0, 2048, 3)) + list(range(2048, len(raw), 97))
    for cut in cuts:
        path.write_bytes(raw[:cut])
        assert read_back(path) == (cut >= end), cut


def test_random_byte_flips(valid, tmp_path):
    """Mostly in the structure (counts, lengths, types, dims, offsets), a quarter anywhere."""
    raw, _, structure = valid
    rng = np.random.default_rng(20)
    path = tmp_path / "flip.gguf"
    for i in range(600):
        data = bytearray(raw)
        places = structure if i % 4 else np.arange(len(raw))
        for pos in rng.choice(places, rng.integers(1, 5)):
            data[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        read_back(path)


# Raw GGUF, byte by byte: a crafted file is its header, key/values, tensor table and data.

def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def s(text):
    b = text.encode() if isinstance(text, str) else text
    return u64(len(b)) + b


def kv(key, vtype, payload):
    return s(key) + u32(vtype) + payload


ARCH = kv("general.architecture", 8, s("llama"))


def tensor(name, dims, ttype=0, offset=0):
    return s(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ttype) + u64(offset)


def gguf_file(kvs=(ARCH,), tensors=(), data=b"", version=3, n_kv=None, n_tensors=None):
    head = (b"GGUF" + u32(version) + u64(len(tensors) if n_tensors is None else n_tensors)
            + u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(tensors))
    return head + bytes(-len(head) % 32) + data


CRAFTED = {
    "empty": (b"", "not a GGUF file"),
    "magic only": (b"GGUF", "truncated: version at byte 4"),
    "big-endian": (b"GGUF" + struct.pack(">I", 3) + bytes(16), "a big-endian GGUF file"),
    "version 1": (gguf_file(version=1), "GGUF version 1; qllama reads versions 2 and 3"),
    "2**63 tensors": (gguf_file(n_tensors=2**63), "9,223,372,036,854,775,808 tensors"),
    "2**63 key/values": (gguf_file(n_kv=2**63), "9,223,372,036,854,775,808 key/values"),
    "key of 2**63 bytes": (gguf_file(kvs=[u64(2**63) + b"k"], n_kv=1),
                           "metadata key at byte 24 is 9,223,372,036,854,775,808 bytes long, at most 65535"),
    "string of 2**63 bytes": (gguf_file(kvs=[ARCH, s("a.b") + u32(8) + u64(2**63)]),
                              "value of a.b at byte"),
    "array of 2**62 uint8": (gguf_file(kvs=[ARCH, kv("a.b", 9, u32(0) + u64(2**62))]),
                             "an array of 4,611,686,018,427,387,904"),
    "array of 2**62 strings": (gguf_file(kvs=[ARCH, kv("a.b", 9, u32(8) + u64(2**62))]),
                               "an array of 4,611,686,018,427,387,904"),
    "arrays nested 9 deep": (gguf_file(kvs=[ARCH, kv("a.b", 9, (u32(9) + u64(1)) * 9
                                                     + u32(0) + u64(0))]),
                             "arrays nested deeper than 8 levels"),
    "unknown value type": (gguf_file(kvs=[ARCH, kv("a.b", 13, u32(0))]),
                           "value of a.b at byte 80 has unknown value type 13"),
    "array of unknown type": (gguf_file(kvs=[ARCH, kv("a.b", 9, u32(77) + u64(1))]),
                              "is an array of unknown value type 77"),
    "array string not UTF-8": (gguf_file(kvs=[ARCH, kv("a.b", 9, u32(8) + u64(2) + s("x")
                                                     + s(b"\xc3"))]), "the string at byte 105 is not UTF-8"),
    "array string past EOF": (gguf_file(kvs=[ARCH, kv("a.b", 9, u32(8) + u64(2) + s("x")
                                                    + u64(40))]), "at byte 105 needs 48 bytes"),
    "bool 2": (gguf_file(kvs=[ARCH, kv("a.b", 7, b"\x02")]), "neither 0 nor 1"),
    "key not UTF-8": (gguf_file(kvs=[ARCH, kv(b"a\xff", 4, u32(1))]), "is not UTF-8"),
    "duplicate key": (gguf_file(kvs=[ARCH, ARCH]), "metadata key general.architecture appears "
                      "twice"),
    "alignment 12": (gguf_file(kvs=[ARCH, kv("general.alignment", 4, u32(12))]),
                     "general.alignment is 12"),
    "alignment 0": (gguf_file(kvs=[ARCH, kv("general.alignment", 4, u32(0))]),
                    "general.alignment is 0"),
    "5 dimensions": (gguf_file(tensors=[tensor("t", [1] * 5)]), "tensor t has 5 dimensions"),
    "dimension 0": (gguf_file(tensors=[tensor("t", [4, 0])]), "tensor t has dimensions [4, 0]"),
    "dims overflow": (gguf_file(tensors=[tensor("t", [2**32, 2**32])]), "their product at most"),
    "name of 64 bytes": (gguf_file(tensors=[tensor("t" * 64, [4])]), "at most 63 allowed"),
    "unknown tensor type": (gguf_file(tensors=[tensor("t", [256], 99)]),
                            "tensor t has type unknown type 99; qllama reads F32, F16"),
    "IQ2_XXS tensor": (gguf_file(tensors=[tensor("blk.0.attn_q.weight", [256, 4], 16)]),
                       "tensor blk.0.attn_q.weight has type IQ2_XXS; qllama reads F32, F16, "
                       "BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K"),
    "partial Q8_0 block": (gguf_file(tensors=[tensor("t", [48, 2], 8)]),
                           "rows of 48 values, not whole Q8_0 blocks of 32"),
    "duplicate tensor": (gguf_file(tensors=[tensor("t", [8]), tensor("t", [8], 0, 32)],
                                   data=bytes(64)), "tensor t appears twice"),
    "offset past EOF": (gguf_file(tensors=[tensor("t", [8], 0, 2**62)], data=bytes(32)),
                        "truncated: tensor t (32 bytes at data offset 4,611,686,018,427,387,904)"),
    "data past EOF": (gguf_file(tensors=[tensor("t", [16])], data=bytes(32)),
                      "truncated: tensor t (64 bytes at data offset 0)"),
    "overlapping tensors": (gguf_file(tensors=[tensor("a", [16]), tensor("b", [8], 0, 32)],
                                      data=bytes(64)), "tensors a and b overlap"),
    "misaligned tensor": (gguf_file(tensors=[tensor("t", [8], 0, 4)], data=bytes(64)),
                          "tensor t starts at data offset 4, not a multiple of the alignment"),
    "no architecture": (gguf_file(kvs=[]), "general.architecture is missing"),
    "architecture an array": (gguf_file(kvs=[kv("general.architecture", 9, u32(4) + u64(10**5)
                                                + bytes(4 * 10**5))]),
                              "general.architecture is an array of 100,000, must be a string"),
}


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_file_is_one_error(name, tmp_path):
    raw, message = CRAFTED[name]
    path = tmp_path / "crafted.gguf"
    path.write_bytes(raw)
    with pytest.raises(FormatError) as e:
        t0 = time.perf_counter()
        try:
            GGUFModel(path)
        finally:
            assert time.perf_counter() - t0 < CASE_SECONDS
    assert message in str(e.value), str(e.value)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["2**63 tensors", "array of 2**62 strings",
                                  "arrays nested 9 deep", "offset past EOF", "IQ2_XXS tensor",
                                  "magic only"])
def test_info_on_a_crafted_file_exits_1_with_one_line(name, tmp_path):
    raw, message = CRAFTED[name]
    (tmp_path / "crafted.gguf").write_bytes(raw)
    r = run_cli(["info", "crafted.gguf"], tmp_path)
    assert r.code == 1 and r.err.count("\n") == 1 and "Traceback" not in r.err
    assert r.err.startswith("qllama: error: crafted.gguf: ") and message in r.err
    assert r.seconds < MAX_SECONDS and r.max_rss < MAX_RSS


def test_a_layer_count_past_the_files_tensors_is_refused_first(valid, tmp_path):
    """A small file claiming 2**31 - 1 layers: refused before anything is made per layer
    (a table of them took minutes and gigabytes)."""
    raw = bytearray(valid[0])
    at = raw.index(b"llama.block_count") + len(b"llama.block_count")
    assert struct.unpack_from("<I", raw, at)[0] == 4  # a uint32
    struct.pack_into("<I", raw, at + 4, 2**31 - 1)
    (tmp_path / "layers.gguf").write_bytes(raw)
    r = run_cli(["info", "layers.gguf"], tmp_path)
    assert r.code == 1 and r.err.count("\n") == 1, r.err
    assert "llama.block_count is 2147483647, 9 tensors a layer, but the file holds" in r.err
    assert r.seconds < MAX_SECONDS and r.max_rss < MAX_RSS


@pytest.mark.parametrize("n, element, message", [
    (3 << 20, u64(1) + b"x", "more than 2,097,152 strings"),
    ((2 << 20) - 8, u64(1) + b"x", "llama.embedding_length is missing"),  # just within
    (1 << 20, u32(0) + u64(0), "more than 65,536 arrays")])
def test_many_values_are_bounded(n, element, message, tmp_path):
    """Arrays of millions of one-byte strings or of empty arrays (megabytes, within the
    metadata window): refused at MAX_STRINGS or MAX_ARRAYS, in bounded time and memory."""
    etype = 8 if len(element) == 9 else 9
    (tmp_path / "many.gguf").write_bytes(gguf_file(kvs=[ARCH, kv("a.b", 9, u32(etype) + u64(n)
                                                                 + element * n)]))
    r = run_cli(["info", "many.gguf"], tmp_path)
    assert r.code == 1 and message in r.err, r.err
    assert r.seconds < MAX_SECONDS and r.max_rss < MAX_RSS
    os.unlink(tmp_path / "many.gguf")


def test_fifo_and_directory_are_refused_unopened(tmp_path):
    os.mkfifo(tmp_path / "fifo.gguf")
    (tmp_path / "dir.gguf").mkdir()
    for name, kind in (("fifo.gguf", "a FIFO"), ("dir.gguf", "a directory")):
        r = run_cli(["info", name], tmp_path)
        assert r.code == 1 and r.err == f"qllama: error: {name}: is {kind}, not a regular file\n"
        with pytest.raises(FormatError, match=f"is {kind}"):
            GGUFModel(tmp_path / name)
