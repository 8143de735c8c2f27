"""qllama demo: end to end on the tiny shape (the default shape is stories15M)."""
import os

import pytest

from qllama.cli import demo, main

ARGS = ["demo", "--shape", "tiny", "--threads", "1", "--steps", "40", "--sample", "64"]


def test_demo_in_chosen_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to the working directory would show up here
    out_dir = tmp_path / "demo"
    assert main(ARGS + ["--dir", str(out_dir), "--no-real"]) == 0
    out = capsys.readouterr().out
    names = sorted(os.listdir(out_dir))
    assert names == ["corpus.txt", "random.q80.bin", "random.v0.bin", "random.v1.bin",
                     "tokenizer.bin", "tokenizer.model"]
    assert sorted(os.listdir(tmp_path)) == ["demo"]
    from qllama.formats.llama2c import read_config
    from qllama.tokenizer import load_tokenizer
    vocab = load_tokenizer(str(out_dir / "tokenizer.model")).vocab_size
    configs = [read_config(out_dir / n) for n in ("random.v0.bin", "random.v1.bin",
                                                   "random.q80.bin")]
    assert [c.version for c in configs] == [0, 1, 2]
    assert all(c.vocab_size == vocab and c.dim == 64 for c in configs)
    flat = " ".join(out.split())
    for words in ("Llama 2's settings", "bit-identical logits", "tok/s", "peak memory",
                  "KL mean", "top-1 agreement", "weights are random", "text is noise",
                  "README.md", "Real checkpoints"):
        assert words in flat, words


def test_demo_temporary_dir_is_removed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    shared = tmp_path / "no-shared-here"
    monkeypatch.setenv("QLLAMA_SHARED", str(shared))
    assert main(ARGS) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "temporary folder" in out and "QLLAMA_SHARED" in out
    assert os.listdir(tmp_path) == []


def test_demo_runs_real_model_when_shared_present(tmp_path, capsys, monkeypatch):
    from conftest import SHARED, data
    data("stories260K.bin"), data("tok512.bin")  # skip with the reason when absent
    monkeypatch.setenv("QLLAMA_SHARED", str(SHARED))
    assert main(ARGS + ["--dir", str(tmp_path), "--real-prompt", "Lily and Tom"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "stories260K" in out and "Lily and Tom" in out
    assert (tmp_path / "stories260K.q80.bin").exists()


def test_corpus_from_docs_and_docstrings(tmp_path):
    texts = demo.corpus_texts()
    sources = [s for s, _ in texts]
    assert "qllama/*.py docstrings" in sources
    n = demo.write_corpus(tmp_path / "c.txt", texts + [("long", "word " * 3000)])
    lines = (tmp_path / "c.txt").read_text().splitlines()
    assert n > 10000 and all(len(line.encode()) <= 4192 for line in lines)


@pytest.mark.parametrize("flag,value", [("--steps", "1"), ("--sample", "0"), ("--seed", "0"),
                                        ("--seed", "99999999999999999999999"),
                                        ("--temperature", "-1"), ("--temperature", "inf")])
def test_demo_bad_arguments(flag, value, tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path), "--shape", "tiny", "--no-real", flag, value]) == 1
    err = capsys.readouterr().err
    assert flag.lstrip("-") in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_demo_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    assert main(["demo", "--dir", str(tmp_path / "f"), "--shape", "tiny", "--no-real"]) == 1
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "mine"
