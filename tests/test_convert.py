"""qllama convert: fp32 v0 <-> v1, byte-identical to llama2.c's exporters."""
import numpy as np
import pytest

from qllama.cli import main
from qllama.conversion.llama2c import convert_file
from qllama.errors import UsageError
from qllama.formats import llama2c as formats
from qllama.formats.llama2c import Config, ModelFile
from qllama.formats.rope import rope_tables
from qllama.synth import random_weights, write_random_model, write_weights

from conftest import data, golden

SMALL = Config(1, dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2,
               vocab_size=40, seq_len=16, shared_classifier=False)


def freqs_span(config):
    """(start, end) bytes of the freqs_cos + freqs_sin block of a v0 file."""
    entries = {e.name: e for e in formats.layout(config.as_version(0))}
    return entries["freqs_cos"].offset, entries["freqs_sin"].offset + entries["freqs_sin"].nbytes


@pytest.mark.parametrize("model", ["gqa512", "unshared32k"])
def test_v0_to_v1_is_byte_identical(model, tmp_path):
    out = tmp_path / "out.v1.bin"
    assert main(["convert", "-q", str(golden(f"{model}.v0.bin")), str(out), "--to", "v1"]) == 0
    assert out.read_bytes() == golden(f"{model}.v1.bin").read_bytes()


@pytest.mark.parametrize("model", ["gqa512", "unshared32k"])
def test_v1_to_v0_identical_but_rope_tables_within_one_ulp(model, tmp_path):
    """llama2.c's tables come from torch.cos/sin in float32 (SLEEF, not correctly
    rounded); ours are correctly rounded. Everything else is byte-identical."""
    out = tmp_path / "out.v0.bin"
    assert main(["convert", "-q", str(golden(f"{model}.v1.bin")), str(out), "--to", "v0"]) == 0
    got, want = out.read_bytes(), golden(f"{model}.v0.bin").read_bytes()
    assert len(got) == len(want)
    start, end = freqs_span(formats.read_config(out))
    assert got[:start] == want[:start] and got[end:] == want[end:]
    a = np.frombuffer(got[start:end], np.int32)
    b = np.frombuffer(want[start:end], np.int32)
    assert np.abs(a - b).max() <= 1  # same sign everywhere: ulp distance = int distance
    assert (a != b).mean() < 0.1


@pytest.mark.parametrize("path", [lambda: golden("gqa512.v0.bin"),
                                  lambda: golden("unshared32k.v0.bin"),
                                  lambda: data("stories260K.bin")])
def test_rope_tables_against_pytorch(path):
    with ModelFile(path()) as m:
        cos, sin = rope_tables(m.config.head_size, m.config.seq_len)
        for mine, theirs in ((cos, m.tensor("freqs_cos")), (sin, m.tensor("freqs_sin"))):
            assert mine.shape == theirs.shape
            ulps = np.abs(mine.view(np.int32).astype(np.int64) - theirs.view(np.int32))
            assert ulps.max() <= 1
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1.2e-7)


def test_rope_chunks_are_slices_of_the_whole_table():
    from qllama.formats.rope import rope_chunks
    cos, sin = rope_tables(8, 1000)
    rows = []
    for start, c, s in rope_chunks(8, 1000, chunk_bytes=7 * 4 * 8):   # 7 rows of 4 float64
        assert c.shape == s.shape == (min(7, 1000 - start), 4)
        assert c.tobytes() == cos[start:start + 7].tobytes()
        assert s.tobytes() == sin[start:start + 7].tobytes()
        rows.append(len(c))
    assert sum(rows) == 1000 and max(rows) == 7


# head_size 8, 2^20 positions: each rope table is 16 MB.
LONG = Config(1, dim=16, hidden_dim=16, n_layers=1, n_heads=2, n_kv_heads=2,
              vocab_size=8, seq_len=1 << 20, shared_classifier=True)


def _peak_bytes(fn) -> int:
    import tracemalloc
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_v1_to_v0_rope_tables_in_bounded_memory(tmp_path):
    """A long seq_len (hostile headers claim 2^31-1) must not build whole tables."""
    src, out = tmp_path / "long.v1.bin", tmp_path / "long.v0.bin"
    write_random_model(src, LONG, version=1)
    peak = _peak_bytes(lambda: convert_file(src, out, 0, chunk_bytes=1 << 20))
    assert peak < 16 << 20, peak  # whole tables: over 100 MB
    cos, sin = rope_tables(LONG.head_size, LONG.seq_len)
    with ModelFile(out) as m:
        assert m.tensor("freqs_cos").tobytes() == cos.tobytes()
        assert m.tensor("freqs_sin").tobytes() == sin.tobytes()


def test_random_v0_model_rope_tables_in_bounded_memory(tmp_path, monkeypatch):
    import qllama.synth
    monkeypatch.setattr(qllama.synth, "CHUNK_FLOATS", 1 << 18)
    out = tmp_path / "long.v0.bin"
    peak = _peak_bytes(lambda: write_random_model(out, LONG, version=0, threads=1))
    assert peak < 16 << 20, peak  # whole tables: over 100 MB
    cos, sin = rope_tables(LONG.head_size, LONG.seq_len)
    with ModelFile(out) as m:
        assert m.tensor("freqs_cos").tobytes() == cos.tobytes()
        assert m.tensor("freqs_sin").tobytes() == sin.tobytes()


@pytest.mark.parametrize("name", ["gqa512.v0.bin", "gqa512.v1.bin", "unshared32k.v0.bin"])
def test_same_version_is_a_copy(name, tmp_path):
    src = golden(name)
    out = tmp_path / "copy.bin"
    convert_file(src, out, formats.read_config(src).version)
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("shared", [True, False])
def test_round_trips(shared, tmp_path):
    config = Config(1, 32, 48, 2, 4, 2, 40, 16, shared)
    weights = random_weights(config, seed=7)
    v0, v1 = tmp_path / "m.v0.bin", tmp_path / "m.v1.bin"
    write_weights(v0, config, weights, version=0)
    write_weights(v1, config, weights, version=1)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    convert_file(v0, a, 1)
    convert_file(a, b, 0)
    convert_file(b, c, 1)
    assert a.read_bytes() == v1.read_bytes() == c.read_bytes()
    assert b.read_bytes() == v0.read_bytes()
    with ModelFile(b) as m:
        assert m.config.shared_classifier == shared and m.has("output") != shared


def test_random_model_versions_hold_the_same_weights(tmp_path):
    v0, v1, out = tmp_path / "v0", tmp_path / "v1", tmp_path / "out"
    write_random_model(v0, SMALL, seed=4, version=0)
    write_random_model(v1, SMALL, seed=4, version=1)
    convert_file(v0, out, 1)
    assert out.read_bytes() == v1.read_bytes()


def test_random_model_threads_follow_qllama_threads(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="thread count must be in 1..1024"):
        write_random_model(tmp_path / "a", SMALL, threads=0)
    monkeypatch.setenv("QLLAMA_THREADS", "many")
    with pytest.raises(UsageError, match="QLLAMA_THREADS"):
        write_random_model(tmp_path / "b", SMALL)
    monkeypatch.setenv("QLLAMA_THREADS", "1")
    write_random_model(tmp_path / "c", SMALL)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_convert_refuses(tmp_path, capsys):
    src = tmp_path / "m.bin"
    write_random_model(src, SMALL, version=1)
    q = tmp_path / "m.q80"
    assert main(["quantize", "-q", str(src), str(q)]) == 0
    assert main(["convert", str(q), str(tmp_path / "x"), "--to", "v1"]) == 1
    assert "version 2" in capsys.readouterr().err
    assert main(["convert", str(src), str(src), "--to", "v0"]) == 1
    assert "same file" in capsys.readouterr().err
    with pytest.raises(UsageError):
        convert_file(src, tmp_path / "y", 2)
    with pytest.raises(SystemExit):
        main(["convert", str(src), str(tmp_path / "z"), "--to", "v2"])
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.q80"]
