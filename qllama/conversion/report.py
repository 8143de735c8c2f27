"""What a conversion into a llama2.c file reports, per tensor kind."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError
from ..formats.llama2c import Config, Entry


@dataclass
class KindStats:
    """Summary of one tensor kind (all layers of it)."""

    shape: tuple
    encoding: str
    count: int = 0
    max_err: float = 0.0  # max |q*s - w| over every value (Q80); 0 for F32 copies


@dataclass
class Report:
    src: str
    dst: str
    src_version: int
    config: Config  # the output's (version 2)
    note: str | None
    in_bytes: int
    out_bytes: int
    seconds: float = 0.0
    threads: int = 1
    kinds: dict = field(default_factory=dict)  # name -> KindStats, in file order

    @property
    def mb_per_s(self) -> float:
        return self.in_bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def kind_stats(entries: list[Entry]) -> dict:
    """name -> KindStats of each tensor kind, in file order (errors filled in later)."""
    kinds = {}
    for e in entries:
        kinds.setdefault(e.name, KindStats(e.shape, e.encoding)).count += 1
    return kinds


def tensor_label(e: Entry) -> str:
    return e.name if e.layer is None else f"{e.name} of layer {e.layer}"


def non_finite(path: str, e: Entry, start: int, w: np.ndarray, label=tensor_label) -> FormatError:
    i = int(np.flatnonzero(~np.isfinite(w))[0])
    flat = start + i
    index = np.unravel_index(flat, e.shape)
    return FormatError(f"{path}: {label(e)} holds {w[i]} at element {flat} "
                       f"(index {tuple(int(x) for x in index)}); refusing to quantize "
                       "a non-finite weight")
