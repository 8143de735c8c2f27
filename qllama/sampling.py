"""The sampler's settings, checked before any work: run.c's flags (temperature,
top-p, steps, seed) and its default seed from the clock. The sampler itself is
the Cython kernel `qllama._kernels.sampler`."""
from __future__ import annotations

import time

import numpy as np

from .errors import UsageError, whole_number


def check_sampling(temperature: float, top_p: float, steps: int, seed: int | None = None) -> None:
    for name, value in (("temperature", temperature), ("top-p", top_p)):
        if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
            raise UsageError(f"{name} must be a number, got {value!r}")
    for name, value in (("steps", steps), ("seed", 1 if seed is None else seed)):
        if not whole_number(value):
            raise UsageError(f"{name} must be a whole number, got {value!r}")
    if not 0 <= temperature < float("inf"):
        raise UsageError(f"temperature must be >= 0 and finite, got {temperature}")
    if not 0 <= top_p <= 1:
        raise UsageError(f"top-p must be in [0, 1], got {top_p}")
    if steps < 0:
        raise UsageError(f"steps must be >= 0, got {steps}")
    if seed is not None and not 0 < seed < 2**64:
        raise UsageError(f"seed must be in 1..2^64-1 (run.c's generator is 64-bit), got {seed}")


def default_seed() -> int:
    return time.time_ns() // 1000 & 0x7FFFFFFFFFFFFFFF or 1
