"""fp32 checkpoints between llama2.c version 0 and version 1 (`qllama convert`).

Both hold the same fp32 weights in a different order (formats.llama2c.ORDER); version 0
also stores the rotary tables freqs_cos / freqs_sin (seq_len, head_size / 2),
which version 1 drops and run.c recomputes. v0 → v1 and same-version copies are
byte-identical to llama2.c's exporters. v1 → v0 recomputes the tables: see
`formats.rope.rope_tables` for how close they come to PyTorch's. The copy is
conversion.llama2c's driver, in chunks of CHUNK_BYTES.
"""
from __future__ import annotations

from .conversion import llama2c
from .io.chunks import CHUNK_BYTES


def convert_file(src: str, dst: str, to_version: int, force: bool = False) -> dict:
    """Write checkpoint `src` (v0/v1) as fp32 version `to_version` (0 or 1) to `dst`."""
    return llama2c.convert_file(src, dst, to_version, force, CHUNK_BYTES)
