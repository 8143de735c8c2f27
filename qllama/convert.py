"""fp32 checkpoints between llama2.c version 0 and version 1.

Both hold the same fp32 weights in a different order (formats.llama2c.ORDER); version 0
also stores the rotary tables freqs_cos / freqs_sin (seq_len, head_size / 2),
which version 1 drops and run.c recomputes. v0 → v1 and same-version copies are
byte-identical to llama2.c's exporters. v1 → v0 recomputes the tables: see
`formats.rope.rope_tables` for how close they come to PyTorch's.
"""
from __future__ import annotations

import os
import time

from .errors import UsageError
from .formats import llama2c
from .formats.rope import rope_chunks
from .io.atomic import atomic_output, check_output_path
from .io.blockwriter import QUEUED_CHUNKS, QueuedWriter
from .io.chunks import CHUNK_BYTES, ChunkReader, check_free_space, open_input, read_jobs


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
        out_size = llama2c.expected_size(cout)
        check_output_path(dst, force, (src,))
        check_free_space(dst, out_size)
        in_entries = llama2c.layout(cin)
        out_entries = llama2c.layout(cout)
        present = {(e.name, e.layer) for e in in_entries}
        tables = [e for e in out_entries if (e.name, e.layer) not in present]  # v0's freqs
        recomputed = bool(tables)
        step = CHUNK_BYTES // 4
        jobs = read_jobs(out_entries, in_entries, step)  # freqs tables: from rope_chunks
        t0 = time.perf_counter()
        with atomic_output(dst, force, (src,)) as f, QueuedWriter(
                f.fileno(), QUEUED_CHUNKS * CHUNK_BYTES) as out:
            out.pwrite(llama2c.header_bytes(cout), 0)

            def write_tables(tables):  # in their place: the file is written front to back
                row_bytes = 4 * (cout.head_size // 2)
                for i, t in enumerate(tables):  # freqs_cos, then freqs_sin
                    for start, *cos_sin in rope_chunks(cout.head_size, cout.seq_len,
                                                       CHUNK_BYTES):
                        out.pwrite(cos_sin[i], t.offset + start * row_bytes)

            reader = ChunkReader(fd, src, jobs, step)
            try:
                for (_, _, e, start), w in reader:
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
