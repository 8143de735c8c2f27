"""`qllama convert`: fp32 checkpoints between llama2.c version 0 and version 1.

Both hold the same fp32 weights in a different order (formats.ORDER); version 0
also stores the rotary tables freqs_cos / freqs_sin (seq_len, head_size / 2),
which version 1 drops and run.c recomputes. v0 → v1 and same-version copies are
byte-identical to llama2.c's exporters. v1 → v0 recomputes the tables: see
`rope_tables` for how close they come to PyTorch's.
"""
from __future__ import annotations

import os
import time

import numpy as np

from . import formats
from .atomic import atomic_output, check_output_path
from .blockwriter import BlockWriter
from .errors import UsageError
from .quantize import CHUNK_BYTES, ChunkReader, check_free_space, open_input


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


def rope_chunks(head_size: int, seq_len: int, chunk_bytes: int = CHUNK_BYTES):
    """(first position, freqs_cos rows, freqs_sin rows) over all positions in chunks
    of rope_chunk_rows(head_size, chunk_bytes): memory stays bounded whatever
    seq_len a header claims."""
    rows = rope_chunk_rows(head_size, chunk_bytes)
    for start in range(0, seq_len, rows):
        yield (start, *rope_tables(head_size, min(seq_len, start + rows), start))


def convert_file(src: str, dst: str, to_version: int, force: bool = False) -> dict:
    """Write checkpoint `src` (v0/v1) as fp32 version `to_version` (0 or 1) to `dst`."""
    src, dst = os.fspath(src), os.fspath(dst)
    if to_version not in (0, 1):
        raise UsageError(f"convert writes versions 0 and 1, not {to_version} "
                         "(use `qllama quantize` for version 2)")
    fd, cin = open_input(src)
    try:
        if cin.version == 2:
            raise UsageError(f"{src}: is version 2 (Q8_0); convert handles fp32 files "
                             "(versions 0 and 1)")
        cout = cin.as_version(to_version)
        out_size = formats.expected_size(cout)
        check_output_path(dst, force, (src,))
        check_free_space(dst, out_size)
        where = {(e.name, e.layer): e for e in formats.layout(cin)}
        out_entries = formats.layout(cout)
        tables = [e for e in out_entries if (e.name, e.layer) not in where]  # v0's freqs
        recomputed = bool(tables)
        step = CHUNK_BYTES // 4
        jobs = []  # (input offset, n_floats, output entry, first value index)
        for e in out_entries:
            if (e.name, e.layer) not in where:
                continue  # freqs tables written from rope_chunks
            ein = where[(e.name, e.layer)]
            for start in range(0, e.numel, step):
                jobs.append((ein.offset + 4 * start, min(step, e.numel - start), e, start))
        t0 = time.perf_counter()
        with atomic_output(dst, force, (src,)) as f:
            out = BlockWriter(f.fileno())
            out.pwrite(formats.header_bytes(cout), 0)

            def write_tables(tables):  # in their place: the file is written front to back
                row_bytes = 4 * (cout.head_size // 2)
                for i, t in enumerate(tables):  # freqs_cos, then freqs_sin
                    for start, *cos_sin in rope_chunks(cout.head_size, cout.seq_len,
                                                       CHUNK_BYTES):
                        out.pwrite(cos_sin[i], t.offset + start * row_bytes)

            reader = ChunkReader(fd, src, jobs, step)
            try:
                for (_, n, e, start), w in reader:
                    if tables and e.offset > tables[0].offset:
                        write_tables(tables)
                        tables = []
                    out.pwrite(w, e.offset + 4 * start)
            finally:
                reader.close()
            if tables:
                write_tables(tables)
            out.flush()
        seconds = time.perf_counter() - t0
        return {"src_version": cin.version, "version": to_version, "in_bytes": os.fstat(fd).st_size,
                "out_bytes": out_size, "seconds": seconds,
                "recomputed_freqs": recomputed}
    finally:
        os.close(fd)


def run(args) -> int:
    r = convert_file(args.input, args.output, int(args.to[1:]), args.force)
    if not args.quiet:
        extra = " (freqs_cos/freqs_sin recomputed)" if r["recomputed_freqs"] else ""
        print(f"{args.input} (version {r['src_version']}) → {args.output} "
              f"(version {r['version']}, {r['out_bytes']:,} bytes) in {r['seconds']:.2f} s{extra}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="fp32 checkpoint → llama2.c version 0 or 1",
        description="Rewrite an fp32 llama2.c checkpoint (version 0 or 1, detected from the "
                    "file) as version 0 (legacy, with rotary tables) or version 1.")
    p.add_argument("input", metavar="IN", help="fp32 checkpoint (version 0 or 1)")
    p.add_argument("output", metavar="OUT", help="file to write")
    p.add_argument("--to", required=True, choices=("v0", "v1"), help="output version")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=run)
