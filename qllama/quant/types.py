"""The quantization types a matrix may have, one registry for every reader, writer
and kernel choice.

A type is described once: its GGUF id (`gguf.GGMLQuantizationType`), the values per
block and the bytes per block (GGUF's block layouts, `gguf.constants.GGML_QUANT_SIZES`),
and its number in the kernel table (`kernel_id`, kernels.h's `qllama_type`). A
matrix of a block type is rows of whole blocks, row-major, read in place from a map
(`BlockTensor`). A type quantizes float32 rows to its blocks with llama.cpp's bytes
and dequantizes them (`QType.quantize`, `QType.dequantize`).

llama2.c's version-2 Q8_0 (int8 values of the whole tensor, then fp32 scales per
group of any size) is not a block type: it keeps its own reader (formats.llama2c).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as _G
from gguf.constants import GGML_QUANT_SIZES as _SIZES


@dataclass(frozen=True)
class QType:
    name: str        # as users write it: "q4_k"
    gguf: _G         # GGUF's type id
    block: int       # values per block
    nbytes: int      # bytes per block
    kernel_id: int   # kernels.h qllama_type

    def row_bytes(self, cols: int) -> int:
        """Bytes of a row of `cols` values (cols a multiple of the block)."""
        return cols // self.block * self.nbytes

    def quantize(self, rows: np.ndarray, threads: int = 1,
                 importance: np.ndarray | None = None) -> np.ndarray:
        """Finite float32 rows (n, cols) → (n, row_bytes(cols)) uint8 blocks: llama.cpp's
        reference bytes (with `importance`, (cols,): llama-quantize --imatrix's), by
        the C quantizers (_kernels.quantize_blocks; their numpy specification is
        quant.blocks)."""
        from .._kernels.quantize_blocks import quantize_rows
        rows = np.ascontiguousarray(rows, np.float32)
        out = np.empty((rows.shape[0], self.row_bytes(rows.shape[1])), np.uint8)
        if importance is not None:
            importance = np.ascontiguousarray(importance, np.float32)
        quantize_rows(self.name, rows, out, threads, importance)
        return out

    def dequantize(self, data: np.ndarray, shape: tuple) -> np.ndarray:
        """Blocks → float32 of `shape` (quant.blocks: gguf.quants' values)."""
        from .blocks import dequantize
        return dequantize(self.name, data, shape)


def _t(name: str, kernel_id: int) -> QType:
    g = _G[name.upper()]
    block, nbytes = _SIZES[g]
    return QType(name, g, block, nbytes, kernel_id)


# kernel_id 0 and 1 are kernels.h's fp32 and llama2.c Q8_0 matrices
TYPES = {t.name: t for t in (
    _t("f16", 2), _t("bf16", 3), _t("q8_0", 4), _t("q4_0", 5), _t("q4_1", 6),
    _t("q4_k", 7), _t("q5_k", 8), _t("q6_k", 9))}
BY_GGUF = {t.gguf: t for t in TYPES.values()}


@dataclass(frozen=True)
class BlockTensor:
    """A (rows, cols) matrix of a block type, in place: `data` is its rows *
    qtype.row_bytes(cols) bytes (uint8), checked against the shape when made."""

    qtype: QType
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

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows start:stop as float32 (stop - start, cols), by the type's dequantizer."""
        cols = self.shape[1]
        row = self.qtype.row_bytes(cols)
        return self.qtype.dequantize(self.data[start * row:stop * row], (stop - start, cols))
