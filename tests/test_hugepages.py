"""Huge pages: output files written in 2 MiB-aligned pieces, model maps and KV caches
advised MADV_HUGEPAGE."""
import contextlib
import dataclasses
import errno
import mmap
import os
import subprocess
import sys
import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qllama.conversion.llama2c import convert_file, quantize_file
from qllama.diagnostics import huge_page_bytes, mappings
from qllama.formats import open_model
from qllama.formats.llama2c import Q80, Config, layout
from qllama.io import blockwriter
from qllama.io.blockwriter import BLOCK, BlockWriter, QueuedWriter
from qllama.synth import write_random_model

from makers import write_gguf

REPO = Path(__file__).resolve().parent.parent
writes = st.lists(st.tuples(st.integers(0, 700), st.binary(max_size=300)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(writes)
def test_file_holds_the_writes_in_order(tmp_path_factory, ws):
    """Whatever the offsets (gaps, overlaps, going back), the file is what the same
    writes would make one by one."""
    path = tmp_path_factory.mktemp("bw") / "f"
    expect = bytearray()
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        out = BlockWriter(fd, block=64)
        for offset, data in ws:
            out.pwrite(data, offset)
            if data:
                expect.extend(bytes(max(0, offset + len(data) - len(expect))))
                expect[offset:offset + len(data)] = data
        out.flush()
        assert os.pread(fd, 4096, 0) == bytes(expect)
    finally:
        os.close(fd)


@settings(max_examples=200, deadline=None)
@given(writes, st.integers(1, 400), st.lists(st.booleans(), min_size=30, max_size=30))
def test_queued_writer_holds_the_writes_in_order(tmp_path_factory, ws, max_bytes, handed):
    """The writer thread makes the same file as the writes made one by one, whether
    the caller's buffers are copied or handed over (and each handed one released)."""
    path = tmp_path_factory.mktemp("qw") / "f"
    expect, released, pending = bytearray(), [], []
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        with QueuedWriter(fd, max_bytes=max_bytes, block=64) as out:
            for i, (offset, data) in enumerate(ws):
                buf = bytearray(data)
                if handed[i]:
                    pending.append(i)
                    out.pwrite(buf, offset, release=lambda i=i: released.append(i))
                else:
                    out.pwrite(buf, offset)
                    buf[:] = bytes(len(buf))  # reused at once: the write must have copied
                if data:
                    expect.extend(bytes(max(0, offset + len(data) - len(expect))))
                    expect[offset:offset + len(data)] = data
            out.flush()
            assert os.pread(fd, 4096, 0) == bytes(expect)
            assert released == pending
    finally:
        os.close(fd)


def test_queued_writer_closes_with_its_lock_left_held(tmp_path):
    """A Ctrl-C between a `with w.cond` taking the lock and the block that releases
    it leaves the lock held by the thread that then closes the writer: close() must
    still stop the writer (it waited forever, joining a writer that needed the lock)."""
    fd = os.open(tmp_path / "o.bin", os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        w = QueuedWriter(fd, max_bytes=1 << 20)
        w.pwrite(b"x" * 4096, 0)
        w.flush()  # the writer now waits for work, holding nothing

        def interrupted_then_closed():
            w.cond.acquire()  # as the interrupt leaves it
            w.close()

        closer = threading.Thread(target=interrupted_then_closed, daemon=True)
        closer.start()
        closer.join(20)
        assert not closer.is_alive() and not w.thread.is_alive()
    finally:
        os.close(fd)


def test_queued_writer_raises_a_failed_write_in_the_caller(tmp_path):
    """A write that fails in the thread is raised, as is, by the caller's next call;
    every handed buffer is released all the same (a pool waiting on it goes on)."""
    path = tmp_path / "f"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDONLY)  # writes fail with EBADF
    released = []
    try:
        with QueuedWriter(fd, block=64) as out:
            out.pwrite(b"x" * 100, 0, release=lambda: released.append(0))
            with pytest.raises(OSError) as info:
                for i in range(1, 50):
                    out.pwrite(b"y" * 100, 100 * i, release=lambda i=i: released.append(i))
                out.flush()
            assert info.value.errno == errno.EBADF
            with pytest.raises(OSError):
                out.flush()
        assert released == list(range(len(released)))
        assert released and released[-1] >= 0
    finally:
        os.close(fd)


@contextlib.contextmanager
def kernel_writes():
    """The writes BlockWriter hands the kernel while in the block: (offset, bytes
    written, bytes asked) per pwritev call."""
    calls = []
    real = os.pwritev

    def spy(fd, views, offset):
        n = real(fd, views, offset)
        calls.append((offset, n, sum(len(v) for v in views)))
        return n

    with mock.patch.object(blockwriter.os, "pwritev", spy):
        yield calls


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=40), st.integers(0, 200))
def test_a_run_of_writes_reaches_the_kernel_in_whole_blocks(tmp_path_factory, sizes, first):
    """Consecutive writes: every write the kernel sees ends on a block boundary,
    except the last flush, and none of them is split in two."""
    path = tmp_path_factory.mktemp("bw") / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        with kernel_writes() as calls:
            out = BlockWriter(fd, block=64)
            at = first
            for n in sizes:
                out.pwrite(bytes([n % 251]) * n, at)
                at += n
            out.flush()
    finally:
        os.close(fd)
    for _, n, asked in calls:
        assert n == asked
    ends = [offset + n for offset, n, _ in calls]
    assert all(end % 64 == 0 for end in ends[:-1])
    starts = [offset for offset, _, _ in calls]
    assert starts == sorted(starts) and (not calls or starts[0] == first)
    assert all(s % 64 == 0 for s in starts[1:])
    assert sum(n for _, n, _ in calls) == at - first


def test_an_empty_write_does_not_split_a_block(tmp_path):
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        with kernel_writes() as calls:
            out = BlockWriter(fd, block=64)
            out.pwrite(bytes(10), 0)
            out.pwrite(b"", 500)
            out.pwrite(bytes(60), 10)
            out.flush()
    finally:
        os.close(fd)
    assert [(offset, n) for offset, n, _ in calls] == [(0, 64), (64, 6)]


def test_a_call_writes_at_most_max_call_bytes(tmp_path, monkeypatch):
    """Linux stops a write at 0x7ffff000 bytes; whole blocks a call keep the rest aligned."""
    monkeypatch.setattr(blockwriter, "MAX_CALL", 128)
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR, 0o600)
    data = bytes(range(200)) * 2
    try:
        with kernel_writes() as calls:
            out = BlockWriter(fd, block=64)
            out.pwrite(data[:30], 0)
            out.pwrite(data[30:], 30)
            out.flush()
    finally:
        os.close(fd)
    assert [(offset, n) for offset, n, _ in calls] == [(0, 128), (128, 128), (128 * 2, 128),
                                                       (384, 16)]
    assert (tmp_path / "f").read_bytes() == data


def test_short_writes_are_continued(tmp_path, monkeypatch):
    real = os.pwritev
    monkeypatch.setattr(blockwriter.os, "pwritev",
                        lambda fd, views, offset: real(fd, [views[0][:7]], offset))
    path = tmp_path / "f"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        out = BlockWriter(fd, block=64)
        data = bytes(range(200))
        out.pwrite(data[:50], 0)
        out.pwrite(data[50:], 50)
        out.flush()
    finally:
        os.close(fd)
    assert path.read_bytes() == data


# ---------------------------------------------------------------------------
# On Linux: what the page cache makes of it


def vm_flags(buffer) -> list[str]:
    """The VmFlags of the mapping holding buffer (an ndarray)."""
    address = buffer.ctypes.data
    for start, end, fields in mappings():
        if start <= address < end:
            return fields["VmFlags"].split()
    raise AssertionError("mapping not found")


def huge_mapped(path) -> tuple[int, int]:
    """(bytes of path mapped with 2 MiB pages, file size) once every page is touched."""
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(m, np.uint8)
    int(view[::4096].sum())  # fault every page in
    huge = huge_page_bytes(view)
    del view
    m.close()
    return huge, os.path.getsize(path)


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")
with_thp = pytest.mark.skipif(not os.path.exists("/sys/kernel/mm/transparent_hugepage"),
                              reason="kernel without transparent huge pages")


@pytest.fixture
def huge_folios(tmp_path):
    """Skip unless this kernel and file system map a 2 MiB-aligned 2 MiB write with a
    huge page (THP enabled, large folios in the page cache)."""
    control = tmp_path / "control"
    fd = os.open(control, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        os.pwrite(fd, bytes(range(256)) * (2 * BLOCK // 256), 0)
    finally:
        os.close(fd)
    if huge_mapped(control)[0] == 0:
        pytest.skip("this kernel or file system does not map a file's 2 MiB folios "
                    "with huge pages (transparent huge pages off, or no large folios)")
    control.unlink()


CONFIG = Config(1, dim=512, hidden_dim=1024, n_layers=4, n_heads=8, n_kv_heads=8,
                vocab_size=4096, seq_len=64, shared_classifier=True)


def writes_of(job) -> list[tuple[int, int]]:
    """(offset, bytes) of every BlockWriter.pwrite while job() runs."""
    seen = []
    real = BlockWriter.pwrite

    def spy(self, data, offset):
        seen.append((offset, memoryview(data).nbytes))
        real(self, data, offset)

    with mock.patch.object(BlockWriter, "pwrite", spy):
        job()
    return seen


def assert_front_to_back(seen, path):
    assert seen[0][0] == 0
    for (a, n), (b, _) in zip(seen, seen[1:]):
        assert b == a + n
    assert seen[-1][0] + seen[-1][1] == os.path.getsize(path)


def test_quantize_writes_front_to_back(tmp_path):
    """Every write continues the previous one (a long tensor's scales come after all
    its values), so the writer can hand over every 2 MiB block whole."""
    src, dst = tmp_path / "m.v1.bin", tmp_path / "m.q80.bin"
    write_random_model(src, CONFIG)
    seen = writes_of(lambda: quantize_file(str(src), str(dst), chunk_bytes=1 << 20))
    uncut = 1 + sum(2 if e.encoding == Q80 else 1 for e in layout(CONFIG.as_version(2, 64)))
    assert len(seen) > uncut  # the 1 MiB chunks cut the large tensors
    assert_front_to_back(seen, dst)


def test_convert_writes_front_to_back(tmp_path):
    """v1 -> v0 too: the recomputed RoPE tables go in their place, between the final
    norm and the classifier (a separate one: a shared one would put them last)."""
    config = dataclasses.replace(CONFIG, shared_classifier=False)
    src, dst = tmp_path / "m.v1.bin", tmp_path / "m.v0.bin"
    write_random_model(src, config)
    seen = writes_of(lambda: convert_file(str(src), str(dst), 0))
    assert_front_to_back(seen, dst)


@linux_only
def test_quantized_file_is_mapped_with_huge_pages(tmp_path, huge_folios):
    """A fresh file's page cache is 2 MiB folios: its whole aligned 2 MiB blocks map
    with huge pages. (At least 3/4 of them: a folio the kernel cannot allocate
    whole on a busy machine comes in smaller pieces; written one tensor at a time,
    none of them was.)"""
    src, dst = tmp_path / "m.v1.bin", tmp_path / "m.q80.bin"
    write_random_model(src, CONFIG)
    quantize_file(str(src), str(dst), chunk_bytes=1 << 20)
    huge, size = huge_mapped(dst)
    assert size >= 4 * BLOCK
    assert huge >= 0.75 * (size // BLOCK * BLOCK)


@linux_only
@pytest.mark.parametrize("kind", ["llama2c", "gguf"])
def test_a_model_read_from_disk_is_mapped_in_huge_pages(kind, tmp_path, huge_folios):
    """Opening a model reads its header (a GGUF file its metadata) before mapping it.
    Those reads must leave nothing in the page cache: pages they leave (and the small
    folios readahead adds after them) make the map's own reads come in small folios
    too. Without that, none of this file's six whole 2 MiB spans was mapped in 2 MiB
    pages."""
    path = tmp_path / ("m.gguf" if kind == "gguf" else "m.q80.bin")
    if kind == "gguf":
        write_gguf(path, CONFIG, "Q8_0")
    else:
        write_random_model(tmp_path / "m.v1.bin", CONFIG)
        quantize_file(str(tmp_path / "m.v1.bin"), str(path))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # as if never read
    finally:
        os.close(fd)
    with open_model(path) as mf:
        int(mf.buffer[::4096].sum())  # fault every page in
        huge, whole = huge_page_bytes(mf.buffer), mf.buffer.nbytes // BLOCK * BLOCK
    assert whole >= 6 * BLOCK
    assert huge >= whole - BLOCK  # one span's folio may be refused on a busy machine


@linux_only
@with_thp
@pytest.mark.parametrize("kind", ["llama2c", "gguf"])
def test_model_mapping_asks_for_huge_pages(kind, tmp_path):
    """Pages read from disk later then come in 2 MiB folios (llama2.c and GGUF files)."""
    config = Config(1, dim=64, hidden_dim=128, n_layers=1, n_heads=4, n_kv_heads=4,
                    vocab_size=64, seq_len=16, shared_classifier=True)
    path = tmp_path / ("m.gguf" if kind == "gguf" else "m.bin")
    (write_gguf if kind == "gguf" else write_random_model)(path, config)
    with open_model(path) as mf:
        assert "hg" in vm_flags(mf.buffer)


KV_CHILD = r"""
import sys
import numpy as np
from qllama.diagnostics import mappings
from qllama.model import Model

def hg_sizes():
    return [end - start for start, end, fields in mappings()
            if "hg" in fields["VmFlags"].split() and end - start >= 4 << 20]

model = Model(sys.argv[1], threads=1, kv="f32")
before = hg_sizes()
session = model.session(4096)  # 2 layers x 4096 positions x 256 floats = 8 MiB each
session.feed(np.array([1], np.int32))
print(len(hg_sizes()) - len(before))
"""


@linux_only
@with_thp
def test_kv_cache_asks_for_huge_pages(tmp_path):
    """Each 8 MiB cache (keys, values) gets a mapping advised MADV_HUGEPAGE over at least
    its 2 MiB-aligned interior. In a fresh process: there the caches are new mappings."""
    config = Config(1, dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=4,
                    vocab_size=64, seq_len=4096, shared_classifier=True)
    write_random_model(tmp_path / "m.bin", config)
    out = subprocess.run([sys.executable, "-c", KV_CHILD, str(tmp_path / "m.bin")],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 2
