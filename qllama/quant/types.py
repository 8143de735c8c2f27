"""The quantization types a matrix may have, one registry for every reader, writer
and kernel choice.

A type's layout is formats.gguf_types' (its GGUF id, values and bytes per block, and
BlockTensor: a matrix of rows of whole blocks, read in place from a map); here it gets
its number in the kernel table (`kernel_id`, kernels.h's `qllama_type`) and its
arithmetic: quantizing float32 rows to its blocks with llama.cpp's bytes and
dequantizing them (`QType.quantize`, `QType.dequantize`, `dequantize_rows`).

llama2.c's version-2 Q8_0 (int8 values of the whole tensor, then fp32 scales per
group of any size) is not a block type: it keeps its own reader (formats.llama2c).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats.gguf_types import BY_GGUF as _LAYOUTS
from ..formats.gguf_types import BlockTensor, BlockType

__all__ = ["QType", "TYPES", "BY_GGUF", "BlockTensor", "dequantize_rows"]


@dataclass(frozen=True)
class QType(BlockType):
    kernel_id: int   # kernels.h qllama_type

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


# kernel_id 0 and 1 are kernels.h's fp32 and llama2.c Q8_0 matrices
KERNEL_IDS = {"f16": 2, "bf16": 3, "q8_0": 4, "q4_0": 5, "q4_1": 6, "q4_k": 7, "q5_k": 8,
              "q6_k": 9}
TYPES = {t.name: QType(t.name, t.gguf, t.block, t.nbytes, KERNEL_IDS[t.name])
         for t in _LAYOUTS.values()}
BY_GGUF = {t.gguf: t for t in TYPES.values()}


def dequantize_rows(tensor: BlockTensor, start: int, stop: int) -> np.ndarray:
    """Rows start:stop of a BlockTensor as float32 (stop - start, cols), by its type's
    dequantizer."""
    t = TYPES[tensor.qtype.name]
    cols = tensor.shape[1]
    row = t.row_bytes(cols)
    return t.dequantize(tensor.data[start * row:stop * row], (stop - start, cols))
