"""The one report of a conversion (quantize, import, export, convert to GGUF): what
was read and written, how long it took, and a row per tensor kind."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import FormatError
from ..formats.llama2c import Config, Entry


@dataclass
class KindStats:
    """One tensor kind (all layers of it): its layout and what writing it cost."""

    shape: tuple = ()
    encoding: str = ""  # llama2.c's (F32, Q80) for a llama2.c output
    count: int = 0
    max_err: float = 0.0  # max |written - input| over every value; 0 for exact copies
    gguf_name: str = ""  # a GGUF output's: the kind's name there, its types (name -> tensors)
    types: dict = field(default_factory=dict)
    sq_err: float = 0.0  # sums of squares of (written - input) and of the input: RMS error
    sq: float = 0.0

    @property
    def qtype(self) -> str:
        if len(self.types) == 1:
            return next(iter(self.types))
        return ", ".join(f"{t} ×{n}" for t, n in self.types.items())

    @property
    def rms_rel(self) -> float:
        """RMS of (written - input) over RMS of the input."""
        return (self.sq_err / self.sq) ** 0.5 if self.sq else 0.0


@dataclass
class TypeTotal:
    """One GGUF type in the file: its tensors, weights and bytes."""

    tensors: int = 0
    weights: int = 0
    nbytes: int = 0


@dataclass
class Report:
    src: str
    dst: str
    src_version: int = 1  # a Hugging Face folder's: 1 (fp32 rows)
    config: Config | None = None  # a llama2.c output's
    kind: str = ""  # the output's type: hf's dtype, GGUF's --type
    notes: list = field(default_factory=list)
    source: str = ""  # what was read, for the summary: the source's label (conversion.sources)
    tokenizer: str = ""  # the vocabulary a GGUF file carries
    files: list = field(default_factory=list)  # written with dst (hf: into it; import: beside)
    in_bytes: int = 0  # tensor bytes read
    out_bytes: int = 0
    seconds: float = 0.0
    threads: int = 1
    kinds: dict = field(default_factory=dict)  # name -> KindStats, in file order
    types: dict = field(default_factory=dict)  # GGUF type name -> TypeTotal

    @property
    def note(self) -> str | None:
        return "; ".join(self.notes) or None

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


def non_finite(path: str, e: Entry, start: int, w: np.ndarray, label=tensor_label,
               doing: str = "quantize") -> FormatError:
    i = int(np.flatnonzero(~np.isfinite(w))[0])
    flat = start + i
    index = np.unravel_index(flat, e.shape)
    return FormatError(f"{path}: {label(e)} holds {w[i]} at element {flat} "
                       f"(index {tuple(int(x) for x in index)}); refusing to {doing} "
                       "a non-finite weight")
