"""Version 0's rotary tables freqs_cos / freqs_sin (seq_len, head_size / 2), as
llama2.c's model.py computes them. Nothing computes with them (the engine rotates
by the position itself); convert and synth write them where a v0 file has them."""
from __future__ import annotations

import numpy as np


def rope_tables(head_size: int, seq_len: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """freqs_cos, freqs_sin rows start..seq_len-1 ((seq_len - start, head_size // 2)
    float32) as llama2.c's model.py computes the whole tables.

    model.py: freqs = 1 / 10000 ** (arange(0, hs, 2) / hs) and t * freqs, all in
    float32 (numpy float32 reproduces these bit for bit; t is the int64 position
    cast to float32, as torch.outer promotes it), then torch.cos/sin in float32.
    PyTorch's CPU cos/sin (SLEEF, 1-ulp) are not correctly rounded; we compute
    cos/sin of the float32 angle in float64 and round once, which is correctly
    rounded and differs from PyTorch's in about 5% of entries by 1 ulp. Each row
    depends on its position only: any slice of rows equals that slice of the whole.
    """
    exponent = np.arange(0, head_size, 2, dtype=np.float32)[: head_size // 2] / np.float32(head_size)
    freqs = np.float32(1.0) / np.power(np.float32(10000.0), exponent)  # (head_size/2,)
    t = np.arange(start, seq_len, dtype=np.int64).astype(np.float32)  # (seq_len - start,)
    a64 = np.outer(t, freqs).astype(np.float64)  # (seq_len - start, head_size/2) float32 angles
    cos = np.cos(a64).astype(np.float32)
    return cos, np.sin(a64, out=a64).astype(np.float32)


def rope_chunk_rows(head_size: int, chunk_bytes: int) -> int:
    """Positions per rope-table chunk whose float64 angles take at most `chunk_bytes`
    (at least one position); rope_tables then peaks near 2.5 * chunk_bytes."""
    return max(1, chunk_bytes // (8 * max(1, head_size // 2)))


def rope_chunks(head_size: int, seq_len: int, chunk_bytes: int):
    """(first position, freqs_cos rows, freqs_sin rows) over all positions in chunks
    of rope_chunk_rows(head_size, chunk_bytes): memory stays bounded whatever
    seq_len a header claims."""
    rows = rope_chunk_rows(head_size, chunk_bytes)
    for start in range(0, seq_len, rows):
        yield (start, *rope_tables(head_size, min(seq_len, start + rows), start))
