"""GGUF's block types as a file defines them: per type id, its name, values per block
and bytes per block (from the `gguf` package, maintained with llama.cpp), and a matrix
of one read in place. What the blocks mean (quantizing, dequantizing, which kernel
runs them) is quant.types', which builds on this table."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as _G
from gguf.constants import GGML_QUANT_SIZES as _SIZES


@dataclass(frozen=True)
class BlockType:
    name: str        # as users write it: "q4_k"
    gguf: _G         # GGUF's type id
    block: int       # values per block
    nbytes: int      # bytes per block

    def row_bytes(self, cols: int) -> int:
        """Bytes of a row of `cols` values (cols a multiple of the block)."""
        return cols // self.block * self.nbytes


def block_type(name: str) -> BlockType:
    g = _G[name.upper()]
    return BlockType(name, g, *_SIZES[g])


# the block types qllama reads and writes (F32 is not one: plain float32 values)
NAMES = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k")
BY_GGUF = {t.gguf: t for t in map(block_type, NAMES)}


@dataclass(frozen=True)
class BlockTensor:
    """A (rows, cols) matrix of a block type, in place: `data` is its rows *
    qtype.row_bytes(cols) bytes (uint8), checked against the shape when made. `qtype`
    is a BlockType (quant.types' QType for one that is computed with)."""

    qtype: BlockType
    shape: tuple
    data: np.ndarray

    def __post_init__(self):
        rows, cols = self.shape
        if rows <= 0 or cols <= 0 or cols % self.qtype.block:
            raise ValueError(f"{self.qtype.name} matrix of shape {self.shape}: rows must be "
                             f"whole blocks of {self.qtype.block}")
        if self.data.dtype != np.uint8 or self.data.ndim != 1 or (
                self.data.size != rows * self.qtype.row_bytes(cols)):
            raise ValueError(f"{self.qtype.name} matrix of shape {self.shape}: "
                             f"{self.data.size} bytes, expected {rows * self.qtype.row_bytes(cols)}")
