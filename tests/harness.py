"""Builds and runs tests/harness/kernel_harness.c for kernel variants the engine
cannot load on this machine: the variant's own source with its own flags, emulated
(SIMDe for AVX-512 on a CPU without it, avxvnni's vpdpbusd in its AVX-512 form, a C
model of the AMX tiles) or
cross-compiled and run under qemu-user (aarch64). Matmuls go through the engine's
driver (driver.c): the kernel it plans, the activations prepared as it prepares them.
A `Build` whose tools are missing says why, and the tests skip with that reason.

Each build is compared with the generic variant built for the same architecture:
bits equal everywhere except a NaN an invalid operation makes (inf * 0 in attention
values, say), which is 0xffc00000 on x86-64 and 0x7fc00000 on aarch64 whatever the
source; so the aarch64 builds have a reference of their own, generic.c under qemu.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qllama import kernels

REPO = Path(__file__).resolve().parents[1]
KERNELS = REPO / "qllama" / "_kernels"
HARNESS = REPO / "tests" / "harness" / "kernel_harness.c"
# each variant's source and target flags, as setup.py builds it into the engine
VARIANTS = {v["name"]: v for arch, variants in json.loads((KERNELS / "variants.json").read_text())
            .items() if arch != "about" for v in variants}
X86_AVX2 = VARIANTS["avx2"]["flags"]
X86_AVX512 = VARIANTS["avx512vnni"]["flags"]
SIMDE_DIRS = ["/usr/include", "/usr/local/include"]


def simde_include() -> str | None:
    """A directory holding simde/ (Debian's libsimde-dev, or PyPI's simde-py)."""
    dirs = list(SIMDE_DIRS)
    try:
        import simde_py  # noqa: F401  (PyPI simde-py: headers inside the package)
        dirs.insert(0, str(Path(simde_py.__file__).parent / "include"))
    except ImportError:
        pass
    for d in dirs:
        if (Path(d) / "simde" / "x86" / "avx512.h").exists():
            return d
    return None


@dataclass
class Build:
    """One harness executable: `table` from `source` compiled with `flags`."""

    name: str
    table: str
    source: str | None   # a variant's source under qllama/_kernels (None: generic only)
    flags: list
    cc: str = "cc"
    runner: tuple = ()    # e.g. ("qemu-aarch64",)
    missing: str | None = None  # why it cannot be built here
    reference: str | None = "scalar"  # the build it must equal (None: a reference)

    def path(self, workdir: Path) -> Path:
        exe = workdir / f"harness-{self.name}"
        if exe.exists():
            return exe
        sources = [str(HARNESS), str(KERNELS / "driver.c"), str(KERNELS / "generic.c")]
        if self.source:
            sources.append(str(KERNELS / self.source))
        cmd = [self.cc, "-O2", "-ffp-contract=off", "-fno-math-errno", f"-I{KERNELS}",
               f"-DQLLAMA_TABLE={self.table}", *self.flags, *sources, "-o", str(exe), "-lm"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"building {self.name} failed:\n{' '.join(cmd)}\n{r.stderr[-3000:]}")
        return exe

    def run(self, workdir: Path, cases: list) -> list:
        """Each case's outputs (as bytes), in order."""
        exe = self.path(workdir)
        fd, src = tempfile.mkstemp(dir=workdir)
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<q", len(cases)))
            for case in cases:
                f.write(case.encode())
        dst = src + ".out"
        r = subprocess.run([*self.runner, str(exe), src, dst], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{self.name} harness failed ({r.returncode}): {r.stderr[-2000:]}")
        data = Path(dst).read_bytes()
        os.unlink(src)
        os.unlink(dst)
        outs, at = [], 0
        for case in cases:
            n = case.out_bytes()
            outs.append(data[at:at + n])
            at += n
        assert at == len(data), (at, len(data))
        return outs


def require_build(builds: dict, name: str):
    """Build `name`; a test of one this machine cannot make is skipped, or fails when
    QLLAMA_REQUIRE_EMULATION is set (CI installed the tools: it must run)."""
    import pytest

    build = builds[name]
    if build.missing:
        if os.environ.get("QLLAMA_REQUIRE_EMULATION"):
            pytest.fail(f"{name}: {build.missing} (QLLAMA_REQUIRE_EMULATION is set)")
        pytest.skip(f"{name}: {build.missing}")
    return build


def check_against_reference(builds: dict, name: str, workdir, cases, describe) -> None:
    """Build `name`'s results on `cases` equal its reference build's, bit for bit
    (`describe(case)` names a case that differs); require_build's skip or failure for
    one this machine cannot make."""
    build = require_build(builds, name)
    got = build.run(workdir, cases)
    want = builds[build.reference].run(workdir, cases)
    for case, g, w in zip(cases, got, want):
        assert g == w, describe(case)


def host_builds() -> dict[str, Build]:
    """Every harness build, with `missing` set where this machine cannot make it."""
    x86 = platform.machine() in ("x86_64", "AMD64")
    have = set(kernels.cpu_features())
    simde = simde_include()
    builds = {"scalar": Build("scalar", "qllama_generic", None, [], reference=None)}

    avx512_native = x86 and {"avx512f", "avx512bw", "avx512vl", "avx512vnni"} <= have
    simde_flags = (["-DQLLAMA_SIMDE", f"-I{simde}", *X86_AVX2]
                   if simde and x86 and {"avx2", "fma", "f16c"} <= have else None)
    no_simde = ("SIMDe headers are absent (Debian libsimde-dev or PyPI simde-py)" if not simde
                else "needs an x86-64 CPU with AVX2")
    builds["avx512vnni-simde"] = Build(
        "avx512vnni-simde", "qllama_avx512vnni", VARIANTS["avx512vnni"]["source"],
        ["-DQLLAMA_VARIANT=avx512vnni", *(simde_flags or [])],
        missing=None if simde_flags else no_simde)
    # avxvnni's code with vpdpbusd in its EVEX form (AVX-512 VNNI + VL, native, else
    # SIMDe's): the same operation, for CPUs without AVX-VNNI (AMD before Zen 5)
    vnni_flags = (X86_AVX512 if avx512_native else simde_flags)
    builds["avxvnni-evex"] = Build(
        "avxvnni-evex", "qllama_avxvnni", VARIANTS["avxvnni"]["source"],
        ["-DQLLAMA_VARIANT=avxvnni", "-DQLLAMA_VNNI_EVEX", *(vnni_flags or [])],
        missing=None if vnni_flags else f"no AVX-512 on this CPU and {no_simde}")
    # AMX's tiles modelled in C; its float part in AVX-512 (native, else SIMDe)
    amx_flags = (X86_AVX512 if avx512_native else simde_flags)
    builds["amx-emulated"] = Build(
        "amx-emulated", "qllama_amx", VARIANTS["amx"]["source"],
        ["-DQLLAMA_VARIANT=amx", "-DQLLAMA_AMX_EMULATE", *(amx_flags or [])],
        missing=None if amx_flags else f"no AVX-512 on this CPU and {no_simde}")
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    arm_missing = None if cross and qemu else (
        "needs aarch64-linux-gnu-gcc (Debian gcc-aarch64-linux-gnu) and qemu-aarch64 "
        "(Debian qemu-user)")
    cc, runner = cross or "aarch64-linux-gnu-gcc", (qemu or "qemu-aarch64",)
    builds["scalar-qemu"] = Build("scalar-qemu", "qllama_generic", None, ["-static"], cc=cc,
                                  runner=runner, missing=arm_missing, reference=None)
    for name in ("neon", "dotprod"):
        source = VARIANTS[name]["source"]
        missing = arm_missing or (None if (KERNELS / source).exists()
                                  else f"qllama/_kernels/{source} is not in this checkout")
        builds[f"{name}-qemu"] = Build(
            f"{name}-qemu", f"qllama_{name}", source,
            [*VARIANTS[name]["flags"], f"-DQLLAMA_VARIANT={name}", "-static"],
            cc=cc, runner=runner, missing=missing, reference="scalar-qemu")
    return builds


# ---- cases --------------------------------------------------------------------------


@dataclass
class Q80Case:
    q: np.ndarray   # (rows, cols) int8
    s: np.ndarray   # (rows * cols / gs,) float32
    x: np.ndarray   # (T, cols) float32
    gs: int
    decode_rows: int = 1  # kernels.h's qllama_matrix.decode_rows

    def encode(self) -> bytes:
        rows, cols = self.q.shape
        return (struct.pack("<6q", 1, rows, cols, self.gs, len(self.x), self.decode_rows)
                + self.q.tobytes()
                + self.s.astype("<f4").tobytes() + self.x.astype("<f4").tobytes())

    def out_bytes(self) -> int:
        rows, cols = self.q.shape
        T = len(self.x)
        return T * cols + 4 * T * (cols // self.gs) + 4 * T * rows


@dataclass
class F32Case:
    w: np.ndarray   # (rows, cols) float32
    x: np.ndarray   # (T, cols) float32

    def encode(self) -> bytes:
        rows, cols = self.w.shape
        return (struct.pack("<4q", 2, rows, cols, len(self.x)) + self.w.astype("<f4").tobytes()
                + self.x.astype("<f4").tobytes())

    def out_bytes(self) -> int:
        return 4 * len(self.x) * self.w.shape[0]


@dataclass
class AttentionCase:
    q: np.ndarray   # (hs,)
    k: np.ndarray   # (n_pos, hs)
    v: np.ndarray   # (n_pos, hs)

    def encode(self) -> bytes:
        n_pos, hs = self.k.shape
        return (struct.pack("<3q", 3, n_pos, hs) + self.q.astype("<f4").tobytes()
                + self.k.astype("<f4").tobytes() + self.v.astype("<f4").tobytes())

    def out_bytes(self) -> int:
        n_pos, hs = self.k.shape
        return 2 * 2 * n_pos * hs + 2 * 4 * (n_pos + hs)


@dataclass
class BlockCase:
    t: object       # a qllama.quant.types.BlockTensor
    x: np.ndarray   # (T, cols) float32
    decode_rows: int = 1  # kernels.h's qllama_matrix.decode_rows

    def encode(self) -> bytes:
        rows, cols = self.t.shape
        return (struct.pack("<6q", 4, self.t.qtype.kernel_id, rows, cols, len(self.x),
                            self.decode_rows)
                + self.t.data.tobytes() + self.x.astype("<f4").tobytes())

    def out_bytes(self) -> int:
        rows, cols = self.t.shape
        return 4 * len(self.x) * rows + 4 * cols
