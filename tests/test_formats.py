"""formats/llama2c.py: headers, layouts and validation, on golden files and on damaged ones."""
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qllama.cli import main
from qllama.errors import FormatError
from qllama.formats import llama2c as formats
from qllama.formats.llama2c import Config, ModelFile
from qllama.synth import random_weights, write_weights

from conftest import golden, models

SMALL = Config(1, dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2,
               vocab_size=40, seq_len=16, shared_classifier=True)

GOLDEN = {
    "gqa512.v1.bin": Config(1, 64, 192, 3, 8, 4, 512, 256, True),
    "gqa512.v0.bin": Config(0, 64, 192, 3, 8, 4, 512, 256, True),
    "gqa512.q80.bin": Config(2, 64, 192, 3, 8, 4, 512, 256, True, 64),
    "unshared32k.v1.bin": Config(1, 32, 172, 2, 4, 4, 32000, 128, False),
    "unshared32k.v0.bin": Config(0, 32, 172, 2, 4, 4, 32000, 128, False),
    "unshared32k.q80.gs4.bin": Config(2, 32, 172, 2, 4, 4, 32000, 128, False, 4),
}


@pytest.mark.parametrize("name,config", GOLDEN.items())
def test_golden_headers_and_sizes(name, config):
    path = golden(name)
    assert formats.read_config(path) == config
    assert formats.expected_size(config) == path.stat().st_size
    head = path.read_bytes()[: formats.DATA_START[config.version]]
    assert formats.header_bytes(config) == head


def test_golden_v0_v1_hold_the_same_weights():
    with ModelFile(golden("unshared32k.v0.bin")) as a, ModelFile(golden("unshared32k.v1.bin")) as b:
        for e in formats.layout(b.config):
            np.testing.assert_array_equal(a.tensor(e.name, e.layer), b.tensor(e.name, e.layer))
        assert a.has("freqs_cos") and not b.has("freqs_cos") and a.has("output")


def test_straddling_external_file():
    c = formats.read_config(models("stories260K.q80-gs8-external.bin"))
    assert c.group_size == 8 and c.straddles


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.integers(1, 8), st.integers(1, 4), st.integers(1, 300),
       st.integers(3, 4096), st.integers(1, 2000), st.booleans(), st.sampled_from([0, 1, 2]))
def test_header_round_trip(head_pairs, n_kv, kv_mult, hidden, vocab, seq, shared, version):
    n_heads = n_kv * kv_mult
    dim = 2 * head_pairs * n_heads
    gs = 2 if version == 2 else 0
    hidden = 2 * hidden
    c = Config(version, dim, hidden, 3, n_heads, n_kv, vocab, seq, shared, gs)
    formats.validate(c)
    head = formats.header_bytes(c)
    assert len(head) == formats.DATA_START[version]
    assert formats.parse_header(head, formats.expected_size(c)) == c
    entries = formats.layout(c)
    ends = [e.offset + e.nbytes for e in entries]
    assert [e.offset for e in entries[1:]] == ends[:-1]  # contiguous, in order
    assert entries[0].offset == formats.DATA_START[version]
    assert formats.expected_size(c) == ends[-1]


def test_model_file_reads_what_was_written(tmp_path):
    weights = random_weights(SMALL, seed=5)
    for version in (0, 1):
        path = tmp_path / f"m{version}.bin"
        write_weights(path, SMALL, weights, version=version)
        with ModelFile(path) as m:
            assert m.config == SMALL.as_version(version)
            for (name, layer), w in weights.items():
                np.testing.assert_array_equal(m.tensor(name, layer), w)


# ---------------------------------------------------------------------------
# Damaged files: every command that reads one exits 1 with one line, no output


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean")
    weights = random_weights(SMALL, seed=6)
    v1, v0 = d / "m.v1.bin", d / "m.v0.bin"
    write_weights(v1, SMALL, weights, version=1)
    write_weights(v0, SMALL, weights, version=0)
    return v0.read_bytes(), v1.read_bytes()


def patch(raw, fmt, offset, value):
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def damaged_files(v0, v1):
    """(label, bytes) of files that must fail validation."""
    cases = []
    for n in range(0, 257):  # truncated at every header byte (v1), and v0's
        cases.append((f"v1 cut at {n}", v1[:n]))
    for n in range(0, 29):
        cases.append((f"v0 cut at {n}", v0[:n]))
    for n in (300, len(v1) // 2, len(v1) - 4, len(v1) - 1):  # mid-tensor
        cases.append((f"v1 cut at {n}", v1[:n]))
    cases.append(("v0 cut mid", v0[: len(v0) // 3]))
    cases.append(("trailing byte", v1 + b"\0"))
    cases.append(("v0 trailing", v0 + bytes(4)))
    cases.append(("bad magic", b"ak43" + v1[4:]))
    for version in (0, 3, -1, 0x7FFFFFFF):
        cases.append((f"version {version}", patch(v1, "<i", 4, version)))
    fields = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")
    for i, field in enumerate(fields):
        for value in (0, -3):
            cases.append((f"v1 {field}={value}", patch(v1, "<i", 8 + 4 * i, value)))
            if field != "vocab_size" or value == 0:  # negative v0 vocab = unshared classifier
                cases.append((f"v0 {field}={value}", patch(v0, "<i", 4 * i, value)))
    cases.append(("heads do not divide dim", patch(v1, "<i", 8 + 12, 5)))
    cases.append(("kv heads do not divide heads", patch(v1, "<i", 8 + 16, 3)))
    cases.append(("odd head size", patch(patch(v1, "<i", 8 + 12, 32), "<i", 8 + 16, 32)))
    cases.append(("shared flag 2", patch(v1, "<B", 36, 2)))
    cases.append(("v0 unshared flag (size mismatch)", patch(v0, "<i", 20, -40)))
    cases.append(("huge layers", patch(v1, "<i", 16, 10**9)))
    return cases


def test_damaged_files_are_refused(clean, tmp_path, capsys):
    v0, v1 = clean
    out = tmp_path / "out.bin"
    for label, raw in damaged_files(v0, v1):
        src = tmp_path / "bad.bin"
        src.write_bytes(raw)
        with pytest.raises(FormatError):
            formats.read_config(src)
        for argv in (["info", str(src)], ["quantize", str(src), str(out)],
                     ["convert", str(src), str(out), "--to", "v1"]):
            assert main(argv) == 1, label
            err = capsys.readouterr().err
            assert err.startswith("qllama: error: ") and err.count("\n") == 1, (label, err)
            assert not out.exists(), label
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin"]


def test_v2_header_checks(tmp_path):
    c = Config(2, 32, 48, 1, 4, 2, 40, 16, True, 16)
    head = formats.header_bytes(c)
    size = formats.expected_size(c)
    assert formats.parse_header(head, size) == c
    for gs in (0, -16):
        with pytest.raises(FormatError, match="group size"):
            formats.parse_header(patch(head, "<i", 37, gs), size)
    with pytest.raises(FormatError, match="does not divide"):
        formats.parse_header(patch(head, "<i", 37, 7), size)
