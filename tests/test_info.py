"""qllama info: facts from the validated header, for humans and as JSON."""
import json
import subprocess
import sys

from qllama.cli import main
from qllama.cli.info import describe
from qllama.synth import write_random_model

from conftest import golden, models


def info_json(path, capsys):
    assert main(["info", "--json", str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_golden_v2(capsys):
    d = info_json(golden("unshared32k.q80.gs4.bin"), capsys)
    assert d["version"] == 2 and d["group_size"] == 4 and d["groups_straddle_rows"] is False
    assert (d["dim"], d["hidden_dim"], d["n_layers"], d["vocab_size"]) == (32, 172, 2, 32000)
    assert d["shared_classifier"] is False and d["head_size"] == 8 and d["kv_dim"] == 32
    assert d["file_size"] == d["expected_size"] == golden("unshared32k.q80.gs4.bin").stat().st_size
    assert 2.0 < d["bytes_per_param"] < 2.001  # 1 + 4/4 per weight, norms 4


def test_golden_v0_v1(capsys):
    v0 = info_json(golden("gqa512.v0.bin"), capsys)
    v1 = info_json(golden("gqa512.v1.bin"), capsys)
    assert v0["version"] == 0 and v1["version"] == 1
    assert v0["n_params"] == v1["n_params"]
    assert v0["kv_dim"] == 32 and v0["n_kv_heads"] == 4 and v0["shared_classifier"] is True
    assert v0["rope_tables_bytes"] == 2 * 4 * 256 * 4
    assert v0["group_size"] is None and "bytes_per_param" not in v0


def test_straddling_file_is_flagged(capsys):
    path = models("stories260K.q80-gs8-external.bin")
    assert describe(path)["groups_straddle_rows"] is True
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "runq.c" in out and "straddle" in out
    # 8 divides dim 64: only hidden_dim is named (both were, whichever failed)
    assert "group size 8 does not divide hidden_dim 172;" in out


def test_human_table(tmp_path, capsys):
    path = tmp_path / "m.bin"
    config = write_random_model(path, "tiny", version=1)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "version 1" in out and f"{config.n_params():,}" in out and "grouped-query" in out


def test_llama2_7b_shape_params(tmp_path):
    from qllama.synth import PRESETS
    assert PRESETS["llama2-7b"].n_params() == 6_738_415_616  # Meta's Llama 2 7B count
    assert PRESETS["stories15M"].n_params() == 15_191_712
    assert PRESETS["stories110M"].n_params() == 109_529_856  # tinyllamas' 110M (without freqs)


def test_bad_files(tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 100)
    for path in (bad, tmp_path / "missing.bin"):
        p = subprocess.run([sys.executable, "-m", "qllama", "info", str(path)],
                           capture_output=True, text=True)
        assert p.returncode == 1 and p.stdout == ""
        assert p.stderr.startswith("qllama: error: ") and p.stderr.count("\n") == 1
        assert "Traceback" not in p.stderr


def test_text_file_is_named_as_no_checkpoint(tmp_path, capsys):
    """Without a magic any file reads as a version 0 header: the error says so, whichever
    field fails first (a story's bytes make dim and n_heads huge, not zero)."""
    story = tmp_path / "story.txt"
    story.write_bytes(b"Once upon a time there was a story about a dog, long enough." * 2)
    assert main(["info", str(story)]) == 1
    err = capsys.readouterr().err
    assert "dim 1701015119 is not a multiple" in err and "not a llama2.c checkpoint" in err


def test_cpu_with_a_file_is_refused(capsys):
    """--cpu printed the CPU alone and ignored FILE (even a missing one), exit 0."""
    assert main(["info", "--cpu", "missing.bin"]) == 1
    assert "--cpu describes this machine" in capsys.readouterr().err
