"""`qllama info`: what a checkpoint file is, from its validated header and size (a
llama2.c file) or its validated metadata and tensor table (a GGUF file, told by its
magic)."""
from __future__ import annotations

import json
import os
import platform

from ..errors import UsageError
from ..formats import is_gguf, llama2c
from ..spec import SHAPE_FIELDS

VERSION_NAMES = {0: "version 0 (legacy fp32)", 1: "version 1 (fp32)", 2: "version 2 (int8 Q8_0)"}


def describe(path: str) -> dict:
    """Every fact `info` reports about a file; raises FormatError if it fails validation."""
    path = os.fspath(path)
    if is_gguf(path):
        return describe_gguf(path)
    c = llama2c.read_config(path)  # header + exact size check
    size = os.path.getsize(path)
    expected = llama2c.expected_size(c)
    n_params = c.n_params()
    d = {
        "path": path,
        "version": c.version,
        "format": VERSION_NAMES[c.version],
        "dim": c.dim,
        "hidden_dim": c.hidden_dim,
        "n_layers": c.n_layers,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "vocab_size": c.vocab_size,
        "seq_len": c.seq_len,
        "shared_classifier": c.shared_classifier,
        "group_size": c.group_size if c.version == 2 else None,
        "head_size": c.head_size,
        "kv_dim": c.kv_dim,
        "n_params": n_params,
        "file_size": size,
        "expected_size": expected,
        "header_bytes": llama2c.DATA_START[c.version],
    }
    if c.version == 0:
        d["rope_tables_bytes"] = 2 * 4 * c.seq_len * (c.head_size // 2)
    if c.version == 2:
        d["bytes_per_param"] = (expected - llama2c.DATA_START[2]) / n_params
        d["groups_straddle_rows"] = c.straddles
    return d


def describe_gguf(path: str) -> dict:
    from dataclasses import asdict

    from ..formats.gguf_reader import GGUFModel
    with GGUFModel(path) as m:
        s = m.spec
        n_params = m.n_params()
        return {
            "path": path, "format": f"GGUF version {m.version} ({m.metadata['general.architecture']})",
            "gguf_version": m.version, **asdict(s), "head_size": s.head_size,
            "kv_dim": s.kv_dim, "n_params": n_params, "file_size": m.file_size,
            "tensor_types": m.tensor_types(), "alignment": m.alignment,
            "tokenizer_model": m.metadata.get("tokenizer.ggml.model"),
            "name": m.metadata.get("general.name"),
            "bits_per_weight": 8 * m.data_bytes() / n_params,
        }


def cpu() -> dict:
    """The CPU, the features qllama found, the kernel variants built and the one chosen,
    and how one token reads a Q8_0 matrix (kernels.decode_rows)."""
    from .. import kernels
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    runnable = kernels.runnable()
    return {"cpu": name, "vendor": kernels.cpu_vendor(), "features": kernels.cpu_features(),
            "variants": {v: {"needs": needs, "runnable": v in runnable}
                         for v, needs in kernels.compiled().items()},
            "QLLAMA_ISA": os.environ.get("QLLAMA_ISA") or None,
            "chosen": kernels.select(),
            "QLLAMA_DECODE_ROWS": os.environ.get("QLLAMA_DECODE_ROWS") or None,
            "decode_rows": kernels.decode_rows()}


def run_cpu(args) -> int:
    d = cpu()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"cpu: {d['cpu']}")
    print(f"features: {' '.join(d['features']) or '(none qllama uses)'}")
    for v, info in d["variants"].items():
        state = "runnable" if info["runnable"] else "not on this CPU"
        print(f"variant {v}: {state} (needs {' '.join(info['needs']) or 'nothing'})")
    forced = f" (QLLAMA_ISA={d['QLLAMA_ISA']})" if d["QLLAMA_ISA"] else ""
    print(f"chosen: {d['chosen']}{forced}")
    forced = (f" (QLLAMA_DECODE_ROWS={d['QLLAMA_DECODE_ROWS']})" if d["QLLAMA_DECODE_ROWS"]
              else f" ({d['vendor'] or 'no x86 vendor'})")
    print(f"decode rows side by side: {d['decode_rows']}{forced}")
    return 0


def run(args) -> int:
    if args.cpu:
        if args.file is not None:  # it would be ignored
            raise UsageError("--cpu describes this machine; describe FILE without it")
        return run_cpu(args)
    if args.file is None:
        raise UsageError("info needs a FILE (or --cpu)")
    d = describe(args.file)
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    from rich.table import Table

    from .console import console

    t = Table(title=f"{d['path']}", title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("format", d["format"])
    if d.get("name"):
        t.add_row("name", str(d["name"]))
    for key in SHAPE_FIELDS:
        t.add_row(key, str(d[key]))
    t.add_row("shared classifier", "yes" if d["shared_classifier"] else
              "no (separate output matrix)")
    t.add_row("head_size", str(d["head_size"]))
    t.add_row("kv_dim", f"{d['kv_dim']}" + (" (grouped-query attention)"
                                           if d["n_kv_heads"] < d["n_heads"] else ""))
    t.add_row("parameters", f"{d['n_params']:,}")
    if "gguf_version" in d:
        _gguf_rows(t, d)
    elif d["version"] == 2:
        t.add_row("group size", str(d["group_size"]))
        t.add_row("bytes per parameter", f"{d['bytes_per_param']:.4f}")
        if d["groups_straddle_rows"]:
            sizes = " and ".join(f"{name} {d[name]}" for name in ("dim", "hidden_dim")
                                 if d[name] % d["group_size"])
            t.add_row("groups straddle rows",
                      f"[yellow]yes[/]: group size {d['group_size']} does not divide {sizes}; "
                      "llama2.c's runq.c computes such files wrongly (qllama reads them "
                      "correctly, on a slower path)")
        else:
            t.add_row("groups straddle rows", "no")
    if d.get("version") == 0:
        t.add_row("rope tables", f"{d['rope_tables_bytes']:,} bytes (freqs_cos, freqs_sin)")
    if "expected_size" in d:
        t.add_row("file size", f"{d['file_size']:,} bytes (expected {d['expected_size']:,}: ok)")
    console().print(t)
    return 0


def _gguf_rows(t, d: dict) -> None:
    t.add_row("rope theta", f"{d['rope_theta']:g}")
    t.add_row("norm eps", f"{d['norm_eps']:g}")
    t.add_row("bos / eos", f"{d['bos_id']} / {d['eos_id']}")
    t.add_row("chat template", "yes" if d["chat_template"] else "none")
    t.add_row("tokenizer", str(d["tokenizer_model"] or "none"))
    t.add_row("tensor types", ", ".join(f"{k} × {n}" for k, n in d["tensor_types"].items()))
    t.add_row("bits per weight", f"{d['bits_per_weight']:.2f}")
    t.add_row("file size", f"{d['file_size']:,} bytes (tensor data aligned to "
                           f"{d['alignment']}: ok)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="describe a checkpoint file (version, shapes, sizes), or the CPU",
        description="Validate a llama2.c checkpoint (version 0, 1 or 2) or a llama GGUF "
                    "file and describe it; "
                    "with --cpu, show the CPU features and kernel variant qllama uses.")
    p.add_argument("file", metavar="FILE", nargs="?")
    p.add_argument("--cpu", action="store_true",
                   help="the CPU's features and the kernel variant qllama runs on it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


