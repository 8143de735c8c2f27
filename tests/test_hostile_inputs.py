"""Cut, corrupted, hostile and aliased inputs and outputs for `import`, `export`,
`quantize` and `convert`, run as a user runs them (a subprocess).

Every case must end in exit status 1 with one line on stderr that names the file and
the problem (or in a clean success), leave every file that was there byte-identical,
leave nothing new behind (not beside the output, not in the working directory's
parent), and stay under 1 GB of peak RSS and 10 s. The tree compared is the whole
case folder, which holds the inputs, the outputs and the working directory.
"""
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from qllama.formats import hf
from qllama.interop.hf_import import import_hf

from makers import SMALL, config_dict, random_tensors, write_folder, write_tokenizer_bin

MAX_RSS = 1 << 30
MAX_SECONDS = 10.0


@dataclass
class Result:
    code: int
    err: str
    seconds: float
    max_rss: int  # bytes


# `python -m qllama ARGS`, then the process's own peak RSS (VmHWM) on a pipe. Neither
# getrusage nor wait4 would do: Linux carries the forking parent's peak (pytest's)
# into the child's across exec.
_RUN = ("import os, sys\n"
        "from qllama.cli import main\n"
        "try:\n"
        "    code = main(sys.argv[2:])\n"
        "finally:\n"
        "    with open('/proc/self/status') as f:\n"
        "        hwm = next(l for l in f if l.startswith('VmHWM:')).split()[1]\n"
        "    os.write(int(sys.argv[1]), hwm.encode())\n"
        "sys.exit(code)\n")


def run_cli(args, cwd, timeout: float = 3 * MAX_SECONDS) -> Result:
    """qllama ARGS in `cwd` (killed after `timeout`): exit status, stderr, time, peak RSS."""
    r_fd, w_fd = os.pipe()
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", _RUN, str(w_fd), *map(str, args)],
                           cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout, pass_fds=(w_fd,))
    finally:
        os.close(w_fd)
        with os.fdopen(r_fd, "rb") as f:
            hwm = f.read()
    seconds = time.perf_counter() - t0
    return Result(p.returncode, p.stderr.decode(errors="replace"), seconds, int(hwm) * 1024)


def snapshot(root) -> dict:
    """{relative path: what it is}: sha256 of regular files, targets of links, kinds
    of the rest (a FIFO or device is never opened)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[rel] = "dir" if os.path.isdir(path) else "special"
    return out


# ---------------------------------------------------------------------------
# Inputs


def folder(tmp, shards: int = 1, config=SMALL):
    m = tmp / "m"
    write_folder(m, config_dict(config), random_tensors(config, 1), shards)
    return m


def llama2c_file(tmp):
    """A version 1 file (a small folder imported) and a tokenizer.bin of its vocabulary."""
    config = replace(SMALL, vocab_size=512)
    import_hf(str(folder(tmp / "hf", config=config)), str(tmp / "model.bin"))
    write_tokenizer_bin(tmp / "tokenizer.bin", config.vocab_size)
    return tmp / "model.bin"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def safetensors_bytes(header, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text)) + text + data


def replace_header(path, fn) -> None:
    """Rewrite a safetensors file's header JSON through fn (the data kept)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    path.write_bytes(safetensors_bytes(fn(header), raw[8 + n:]))


def empty_tensors(count: int) -> bytes:
    """A header of `count` zero-size tensors, as the issue's hostile 100 MB one."""
    entry = '"t%07d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    return ("{" + ",".join(entry % i for i in range(count)) + "}").encode()


# ---------------------------------------------------------------------------
# Cases: (name, build(tmp, work) -> (argv, [phrases the error line holds; "!phrase":
# does not hold]) or (argv, None) for a clean success). `work` is the working directory.


def _link(path, target):
    os.symlink(target, path)
    return path


def _fifo(path):
    os.mkfifo(path)
    return path


def _aliased(rel, force=True):
    def build(tmp, work):
        m = folder(tmp, shards=3 if "of-00003" in rel or "index" in rel else 1)
        return ["import", m, m / rel] + (["--force"] if force else []), \
            ["output is the same file as the input"]
    return build


def _hard_link_out(tmp, work):
    m = folder(tmp)
    out = tmp / "out"
    out.mkdir()
    os.link(m / hf.SINGLE, out / "m.bin")
    return ["import", m, out / "m.bin", "--force"], ["same file as the input", str(m / hf.SINGLE)]


def _symlink_out(tmp, work):
    m = folder(tmp)
    return ["import", m, _link(tmp / "m.bin", m / "config.json"), "--force"], \
        ["same file as the input"]


def _empty_out(tmp, work):
    return ["import", folder(tmp), ""], ["output path is empty"]


def _slash_out(tmp, work):
    return ["import", folder(tmp), "out/x/"], ["out/x/", "names a directory"]


def _dir_out(tmp, work):
    return ["import", folder(tmp), work, "--force"], [str(work), "is a directory"]


def _folder_as_out(tmp, work):
    m = folder(tmp)
    return ["import", m, m, "--force"], [str(m), "is a directory"]


def _config(make):
    def build(tmp, work):
        m = folder(tmp)
        (m / "config.json").unlink()
        phrases = make(m / "config.json")
        return ["import", m, tmp / "m.bin"], [str(m / "config.json"), *phrases]
    return build


def _index(make):
    def build(tmp, work):
        m = folder(tmp, shards=3)
        (m / hf.INDEX).unlink()
        phrases = make(m / hf.INDEX)
        return ["import", m, tmp / "m.bin"], [str(m / hf.INDEX), *phrases]
    return build


def _shard(make):
    def build(tmp, work):
        m = folder(tmp)
        phrases = make(m / hf.SINGLE)
        return ["import", m, tmp / "m.bin"], [hf.SINGLE, *phrases]
    return build


def _replace_with(fn):
    def make(path):
        if path.exists():
            path.unlink()
        return fn(path)
    return make


def _metadata_pairs(count):
    """Many metadata pairs in a real file: a hostile header that is still valid."""
    def build(tmp, work):
        m = folder(tmp)
        pairs = {f"k{i}": "v" for i in range(count)}
        replace_header(m / hf.SINGLE, lambda h: {**h, "__metadata__": pairs})
        expect = ["over qllama's limit"] if count > 1_000_000 else None
        return ["import", m, tmp / "m.bin"], expect
    return build


def _two_shards_hold(tmp, work):
    m = folder(tmp, shards=3)
    norm = "model.norm.weight"
    index = json.loads((m / hf.INDEX).read_text())
    holder = index["weight_map"][norm]
    other = next(f for f in set(index["weight_map"].values()) if f != holder)
    tensors = load_file(str(m / other))
    tensors[norm] = np.ones(SMALL.dim, np.float32)
    save_file(tensors, str(m / other), metadata={"format": "pt"})
    return ["import", m, tmp / "m.bin"], [f"tensor {norm} is in both"]


def _wrong_shard(tmp, work):
    m = folder(tmp, shards=3)
    index = json.loads((m / hf.INDEX).read_text())
    wmap = index["weight_map"]
    norm = "model.norm.weight"
    wmap[norm] = next(f for f in set(wmap.values()) if f != wmap[norm])
    (m / hf.INDEX).write_text(json.dumps(index))
    return ["import", m, tmp / "m.bin"], [str(m / hf.INDEX), f"for {norm}, which is in"]


def _garbage_tokenizer(tmp, work):
    m = folder(tmp)
    (m / "tokenizer.model").write_bytes(struct.pack("<i", 7) + os.urandom(200))
    return ["import", m, tmp / "m.bin"], [str(m / "tokenizer.model"),
                                          "not a valid SentencePiece model", "!tokenizer.bin"]


def _tokenizer_special(make):
    def build(tmp, work):
        m = folder(tmp)
        phrases = make(m / "tokenizer.model")
        return ["import", m, tmp / "m.bin"], [str(m / "tokenizer.model"), *phrases]
    return build


def _llama2c(args_fn, expect):
    def build(tmp, work):
        src = llama2c_file(tmp)
        args, phrases = args_fn(tmp, src)
        return args, [*expect, *phrases]
    return build


def _cut_llama2c(tmp, src):
    src.write_bytes(src.read_bytes()[:1000])
    return ["quantize", src, tmp / "o.bin"], [str(src)]


def _fifo_llama2c(tmp, src):
    src.unlink()
    _fifo(src)
    return ["convert", src, tmp / "o.bin", "--to", "v0"], [str(src)]


def _dev_zero_llama2c(tmp, src):
    src.unlink()
    _link(src, "/dev/zero")
    return ["export", src, tmp / "o.gguf", "--to", "gguf"], [str(src)]


def _huge_dims(tmp, src):
    raw = bytearray(src.read_bytes())
    struct.pack_into("<7i", raw, 8, 2**31 - 1, 2**31 - 1, 2**31 - 1, 1, 1, 2**31 - 1, 2**31 - 1)
    src.write_bytes(bytes(raw))
    return ["export", src, tmp / "o", "--to", "hf"], [str(src)]


CASES = {
    # an output that is an input, however it is named
    "import-out-is-shard": _aliased(hf.SINGLE),
    "import-out-is-config": _aliased("config.json"),
    "import-out-is-one-of-three-shards": _aliased("model-00002-of-00003.safetensors"),
    "import-out-is-index": _aliased(hf.INDEX),
    "import-out-is-shard-no-force": _aliased(hf.SINGLE, force=False),
    "import-out-hard-link-to-shard": _hard_link_out,
    "import-out-symlink-to-config": _symlink_out,
    "quantize-out-is-in": _llama2c(lambda t, s: (["quantize", s, s, "--force"], []),
                                   ["same file as the input"]),
    "quantize-out-hard-link": _llama2c(
        lambda t, s: (["quantize", s, (os.link(s, t / "l.bin"), t / "l.bin")[1], "--force"], []),
        ["same file as the input"]),
    "convert-out-symlink-to-in": _llama2c(
        lambda t, s: (["convert", s, _link(t / "l.bin", s), "--to", "v0", "--force"], []),
        ["same file as the input"]),
    "export-gguf-out-is-tokenizer": _llama2c(
        lambda t, s: (["export", s, t / "tokenizer.bin", "--to", "gguf", "--force"], []),
        ["same file as the input", "tokenizer.bin"]),
    "export-hf-out-holds-input": _llama2c(
        lambda t, s: (["export", s, t, "--to", "hf", "--force"], []),
        ["an input of this command"]),
    # outputs that are not files
    "import-out-empty": _empty_out,
    "import-out-trailing-slash": _slash_out,
    "import-out-directory": _dir_out,
    "import-out-is-the-folder": _folder_as_out,
    "quantize-out-empty": _llama2c(lambda t, s: (["quantize", s, ""], []),
                                   ["output path is empty"]),
    "export-hf-out-empty": _llama2c(lambda t, s: (["export", s, "", "--to", "hf"], []),
                                    ["output path is empty"]),
    # config.json and the index: deep, endless, blocking, huge
    "config-nested": _config(lambda p: (p.write_text(nested(100_000)), ["nested deeper"])[1]),
    "config-fifo": _config(lambda p: (_fifo(p), ["is a FIFO"])[1]),
    "config-dev-zero": _config(lambda p: (_link(p, "/dev/zero"), ["character device"])[1]),
    "config-directory": _config(lambda p: (p.mkdir(), ["is a directory"])[1]),
    "config-20MB": _config(lambda p: (p.write_text("{" + " " * (20 << 20) + "}"),
                                      ["is at most"])[1]),
    "config-not-utf8": _config(lambda p: (p.write_bytes(b'{"a": "\xff"}'), ["not UTF-8"])[1]),
    "index-nested": _index(lambda p: (p.write_text(nested(100_000)), ["nested deeper"])[1]),
    "index-fifo": _index(lambda p: (_fifo(p), ["is a FIFO"])[1]),
    "index-dev-zero": _index(lambda p: (_link(p, "/dev/zero"), ["character device"])[1]),
    # shards
    "shard-fifo": _shard(_replace_with(lambda p: (_fifo(p), ["is a FIFO"])[1])),
    "shard-dev-zero": _shard(_replace_with(lambda p: (_link(p, "/dev/zero"),
                                                      ["character device"])[1])),
    "shard-directory": _shard(_replace_with(lambda p: (p.mkdir(), ["is a directory"])[1])),
    "shard-dangling-link": _shard(_replace_with(lambda p: (_link(p, p.parent / "gone"),
                                                           ["No such file"])[1])),
    "shard-100MB-header-of-empty-tensors": _shard(_replace_with(
        lambda p: (p.write_bytes(safetensors_bytes(empty_tensors(1_400_000))),
                   ["over qllama's limit"])[1])),
    "shard-200k-extra-empty-tensors": _shard(lambda p: (replace_header(p, lambda h: {
        **{f"t{i:07d}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
           for i in range(200_000)}, **h}), ["unexpected tensor t0000000"])[1]),
    "shard-header-length-2^63": _shard(lambda p: (p.write_bytes(struct.pack("<Q", 2**63)),
                                                  ["over qllama's limit"])[1]),
    "shard-cut-in-header": _shard(lambda p: (p.write_bytes(p.read_bytes()[:100]),
                                             ["runs past the file's end"])[1]),
    "shard-cut-in-data": _shard(lambda p: (p.write_bytes(p.read_bytes()[:-100]),
                                           ["past the file's end"])[1]),
    "shard-4-bytes": _shard(lambda p: (p.write_bytes(b"\0" * 4), ["shorter than"])[1]),
    "shard-header-not-json": _shard(lambda p: (p.write_bytes(safetensors_bytes(b"{nope")),
                                               ["not valid JSON"])[1]),
    "shard-header-nested": _shard(lambda p: (p.write_bytes(safetensors_bytes(
        nested(100_000).encode())), ["nested deeper"])[1]),
    "shard-header-a-list": _shard(lambda p: (p.write_bytes(safetensors_bytes([])),
                                             ["not a JSON object"])[1]),
    "shard-unknown-dtype": _shard(lambda p: (replace_header(p, lambda h: {
        **h, "model.norm.weight": {**h["model.norm.weight"], "dtype": "XX" * 200}}),
        ["model.norm.weight has unknown dtype"])[1]),
    "shard-overlapping-tensors": _shard(lambda p: (replace_header(p, lambda h: {
        **h, "model.norm.weight": {**h["model.norm.weight"], "data_offsets": [0, 128]}}),
        ["overlaps"])[1]),
    "shard-size-disagrees": _shard(lambda p: (replace_header(p, lambda h: {
        **h, "model.norm.weight": {**h["model.norm.weight"], "shape": [33]}}),
        ["model.norm.weight", "needs 132"])[1]),
    "shard-negative-offset": _shard(lambda p: (replace_header(p, lambda h: {
        **h, "model.norm.weight": {**h["model.norm.weight"], "data_offsets": [-4, 124]}}),
        ["data_offsets"])[1]),
    "tensor-in-two-shards": _two_shards_hold,
    "index-names-the-wrong-shard": _wrong_shard,
    # tokenizer.model in the folder
    "tokenizer-garbage": _garbage_tokenizer,
    "tokenizer-dev-zero": _tokenizer_special(lambda p: (_link(p, "/dev/zero"),
                                                        ["character device"])[1]),
    "tokenizer-fifo": _tokenizer_special(lambda p: (_fifo(p), ["is a FIFO"])[1]),
    # llama2.c inputs
    "quantize-cut-file": _llama2c(_cut_llama2c, []),
    "convert-fifo-input": _llama2c(_fifo_llama2c, ["is a FIFO"]),
    "export-dev-zero-input": _llama2c(_dev_zero_llama2c, ["character device"]),
    "export-huge-dims": _llama2c(_huge_dims, []),
    "eval-text-fifo": _llama2c(lambda t, s: (["eval", s, s, "--text", _fifo(t / "story.txt")],
                                             [str(t / "story.txt")]), ["is a FIFO"]),
    # hostile but valid: a clean success
    "shard-200k-metadata-pairs": _metadata_pairs(200_000),
    "shard-4.5M-metadata-pairs": _metadata_pairs(4_500_000),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_case(name, tmp_path):
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    argv, expect = CASES[name](tmp_path, work)
    before = snapshot(tmp_path)
    r = run_cli(argv, work)
    after = snapshot(tmp_path)
    assert r.max_rss < MAX_RSS, f"peak RSS {r.max_rss / 1e6:.0f} MB"
    assert r.seconds < MAX_SECONDS, f"{r.seconds:.1f} s"
    assert "Traceback" not in r.err, r.err
    if expect is None:  # a clean success: the output is the one new file
        assert r.code == 0, r.err
        added = set(after) - set(before)
        assert added == {os.path.relpath(str(argv[2]), tmp_path)}, added
        assert all(after[k] == v for k, v in before.items())
        return
    assert r.code == 1, (r.code, r.err)
    lines = r.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("qllama: error: "), r.err
    assert len(lines[0]) < 400, lines[0]
    for phrase in expect:
        if phrase.startswith("!"):
            assert phrase[1:] not in lines[0], (phrase, lines[0])
        else:
            assert phrase in lines[0], (phrase, lines[0])
    assert after == before, (set(after) ^ set(before)) or "a file changed"


@pytest.mark.parametrize("hard_links", [True, False])
def test_outputs_appear_together_or_not_at_all(tmp_path, monkeypatch, hard_links):
    """A rename that fails after others succeeded: every target gets its old file back
    (or none, if it had none), and nothing else is left; also where the file system
    has no hard links (old files are moved aside instead)."""
    from qllama.errors import UsageError
    from qllama.io import atomic
    if not hard_links:
        link = os.link

        def no_link(src, dst, *a, **k):  # naming an unnamed output is a link too
            if str(dst).endswith(".old"):
                raise OSError(1, "Operation not permitted")
            return link(src, dst, *a, **k)
        monkeypatch.setattr(atomic.os, "link", no_link)
    paths = [tmp_path / n for n in ("m.bin", "tokenizer.model", "tokenizer.bin")]
    paths[0].write_bytes(b"old model")
    paths[2].write_bytes(b"old bin")
    real = os.replace

    def failing(src, dst, *a, **k):
        if str(dst) == str(paths[2]) and ".part" in str(src):
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(atomic.os, "replace", failing)
    with pytest.raises(UsageError, match="tokenizer.bin: cannot write: No space left"):
        with atomic.atomic_outputs([str(p) for p in paths], force=True) as files:
            for f, p in zip(files, paths):
                f.write(b"new " + p.name.encode())
    assert sorted(os.listdir(tmp_path)) == ["m.bin", "tokenizer.bin"]
    assert paths[0].read_bytes() == b"old model" and paths[2].read_bytes() == b"old bin"
    monkeypatch.setattr(atomic.os, "replace", real)
    with atomic.atomic_outputs([str(p) for p in paths], force=True) as files:
        for f, p in zip(files, paths):
            f.write(b"new " + p.name.encode())
    assert [p.read_bytes() for p in paths] == [b"new " + p.name.encode() for p in paths]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths)
