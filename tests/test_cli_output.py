"""Every command's output to a pipe: whole lines, whatever the length of the paths.

Written to a pipe or a file, rich used to hard-wrap at 80 columns, so a long path
cut the summary sentences in two (`quantize ... | tee log`, CI logs, grep). Each
command here runs as a user runs it (a subprocess, stdout and stderr pipes) on files
under a folder whose path is over 120 characters, and every sentence we know it
prints must be found within one line.
"""
import os
import subprocess
import sys

import pytest

from qllama.synth import write_random_model

from makers import write_tokenizer_bin

LONG = "a-folder-with-a-long-name-" * 3


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A folder whose path is over 120 characters, holding a tiny model (v1 and v2) and
    a 512-piece tokenizer.bin of our own."""
    folder = tmp_path_factory.mktemp("out") / LONG / LONG
    folder.mkdir(parents=True)
    assert len(str(folder)) > 120
    write_random_model(folder / "tiny.bin", "tiny", seed=3)
    write_tokenizer_bin(folder / "tokenizer.bin", 512)
    run("quantize", folder / "tiny.bin", folder / "tiny.q80.bin", "-q")
    return folder


def run(*args, stdin=None):
    r = subprocess.run([sys.executable, "-m", "qllama", *map(str, args)], input=stdin,
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    return r


def assert_whole(text: str, *phrases: str) -> None:
    """Each phrase occurs in `text`, and every occurrence lies within one line."""
    for phrase in phrases:
        assert phrase in text, phrase
        assert text.count(phrase) == text.replace("\n", "").count(phrase), \
            f"{phrase!r} is split across lines in:\n{text}"


def test_quantize_summary(deep):
    out = run("quantize", deep / "tiny.bin", deep / "q.bin", "--group-size", "16").stdout
    assert_whole(out, f"{deep / 'q.bin'}: Q8_0, group size 16",
                 f"{deep / 'tiny.bin'} (version 1, ", f"→ {deep / 'q.bin'} (version 2, ")
    assert len(out.splitlines()[-1]) > 240  # the summary sentence, on one line


def test_convert_summary(deep):
    out = run("convert", deep / "tiny.bin", deep / "tiny.v0.bin", "--to", "v0").stdout
    assert_whole(out, f"{deep / 'tiny.bin'} (version 1) → {deep / 'tiny.v0.bin'} (version 0, ")


def test_info(deep):
    out = run("info", deep / "tiny.q80.bin").stdout
    assert_whole(out, str(deep / "tiny.q80.bin"), "version 2 (int8 Q8_0)",
                 "32 (grouped-query attention)")


def test_eval(deep):
    out = run("eval", deep / "tiny.bin", deep / "tiny.q80.bin", "--sample", "40").stdout
    assert_whole(out, f"reference  {deep / 'tiny.bin'} (v1 fp32)",
                 f"candidate  {deep / 'tiny.q80.bin'} (v2 int8 Q8_0)",
                 "40 tokens sampled from the reference (seed 1)")


def test_run_stats_line(deep):
    r = run("run", deep / "tiny.q80.bin", "-n", "20", "-s", "5", "-i", "the")
    assert r.stdout.startswith("the")
    assert_whole(r.stderr, "seed 5: prompt ", " tok/s, generated ", "peak RSS")


def test_tokenizer_commands(deep):
    tok = deep / "tokenizer.bin"
    out = run("tokenizer", "encode", tok, "the tea").stdout
    ids = out.splitlines()[0]
    assert run("tokenizer", "decode", tok, *ids.split()).stdout == "the tea\n"
    js = run("tokenizer", "encode", tok, "the tea", "--json").stdout
    assert_whole(js, str(tok))


def test_demo(deep):
    workdir = deep / "demo"
    out = run("demo", "--shape", "tiny", "--dir", workdir, "-n", "12", "--sample", "24",
              "--no-real", "--vocab-size", "400").stdout
    assert_whole(out, f"{workdir / 'random.v0.bin'}: version 0 (fp32), ",
                 "quantizing the random model: random.v1.bin → random.q80.bin",
                 "What matters is how closely int8 follows fp32",
                 "For real checkpoints see README.md, section")
    widest = max(len(line) for line in out.splitlines())
    assert widest < 2000  # tables take their content's width, not the unwrapped width
