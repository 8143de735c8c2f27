"""Which kernel variant runs, and how it reads a matrix for one token: the one place
the choices are made.

The engine extension carries every variant this build compiled (kernels.h), each
needing some CPU features. The best one the CPU and OS support runs, in the order
of PREFERENCE, unless QLLAMA_ISA (or a caller) names one; a name that is unknown,
not compiled in, or needs features this CPU lacks is a UsageError, never an
illegal instruction.

decode_rows: the x86 variants read a Q8_0 matrix for one token either one row after
another (1) or eight rows side by side, each prefetched (8; decode.h). Which is faster
is the memory system's doing, not the instruction set's: on the Intel Xeon hosts
eight rows decoded a 7B 1.49x faster (one core keeps too few lines in flight with one
stream), on the AMD EPYC hosts several streams read slower than one. So Intel CPUs
take 8 and the rest 1, unless QLLAMA_DECODE_ROWS says; the results are the same bits.
"""
from __future__ import annotations

import os

from ._kernels import engine
from .errors import UsageError

# Fastest first. "scalar" is the plain-C reference every build has.
PREFERENCE = ("amx", "avx512vnni", "avxvnni", "avx2", "dotprod", "neon", "scalar")


def cpu_features() -> list[str]:
    return engine.cpu_features()


def cpu_vendor() -> str:
    """x86's cpuid vendor ("GenuineIntel", "AuthenticAMD"); "" elsewhere."""
    return engine.cpu_vendor()


def compiled() -> dict[str, list[str]]:
    """{variant: the CPU features it needs} for every variant in this build."""
    return dict(engine.compiled_variants())


def runnable() -> list[str]:
    """The compiled variants this CPU can run, best first."""
    have = set(cpu_features())
    built = compiled()
    return [v for v in PREFERENCE if v in built and set(built[v]) <= have and _permitted(v)]


def _permitted(variant: str) -> bool:
    return variant != "amx" or engine.amx_permit()  # Linux grants tile state per process


def select(name: str | None = None) -> str:
    """The variant to run: `name`, else $QLLAMA_ISA, else the best runnable one."""
    if name is None:
        name = os.environ.get("QLLAMA_ISA", "").strip() or None
    if name is None:
        return runnable()[0]
    if name not in PREFERENCE:
        raise UsageError(f"unknown kernel variant {name!r} (QLLAMA_ISA); known: "
                         + ", ".join(PREFERENCE))
    built = compiled()
    if name not in built:
        raise UsageError(f"kernel variant {name!r} is not in this build (it has "
                         + ", ".join(v for v in PREFERENCE if v in built) + ")")
    missing = sorted(set(built[name]) - set(cpu_features()))
    if missing or not _permitted(name):
        why = ", ".join(missing) if missing else "the OS refused the AMX tile state"
        raise UsageError(f"kernel variant {name!r} cannot run on this CPU (needs {why}); "
                         "runnable here: " + ", ".join(runnable()))
    return name


DECODE_ROWS = (1, 8)


def decode_rows() -> int:
    """Rows one token's Q8_0 kernel reads side by side: $QLLAMA_DECODE_ROWS, else 8 on
    an Intel CPU and 1 elsewhere (ARM's kernels read four a pass either way)."""
    value = os.environ.get("QLLAMA_DECODE_ROWS", "").strip()
    if not value:
        return 8 if cpu_vendor() == "GenuineIntel" else 1
    if value not in {str(n) for n in DECODE_ROWS}:
        raise UsageError(f"QLLAMA_DECODE_ROWS={value!r}: one of "
                         + ", ".join(str(n) for n in DECODE_ROWS))
    return int(value)
