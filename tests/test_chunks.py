"""io.chunks.read_ahead: the bytes of every job, whether a fill is read with pread or
(one read of DIRECT_FROM bytes or more) O_DIRECT from the aligned blocks around it."""
import contextlib
import os

import numpy as np
import pytest

from qllama.errors import FormatError
from qllama.io import chunks


def read_all(path, spans_of, size):
    fd = open(path, "rb")
    try:
        jobs = list(range(len(spans_of)))
        spans = lambda j: [(fd.fileno(), off, n, str(path)) for off, n in spans_of[j]]
        with contextlib.closing(chunks.read_ahead(jobs, spans, size)) as reads:
            return [bytes(b) for _, b in reads]
    finally:
        fd.close()


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = chunks._read_direct

    def spy(*args):
        calls.append(args[2:4])
        return real(*args)

    monkeypatch.setattr(chunks, "_read_direct", spy)
    return calls


def test_large_unaligned_spans_read_direct(tmp_path, counted):
    data = np.random.default_rng(0).integers(0, 256, 3 * chunks.DIRECT_FROM + 12345,
                                             dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    big = chunks.DIRECT_FROM + 777
    spans_of = [[(13, big)],                                   # O_DIRECT, unaligned start
                [(5, 100), (105, 300)],                        # small: pread
                [(len(data) - big, big)],                      # O_DIRECT up to EOF
                [(4096 * 3, chunks.DIRECT_FROM)]]              # O_DIRECT, aligned
    got = read_all(path, spans_of, big + 100)  # no two of the large jobs share a fill
    assert got == [b"".join(data[o:o + n] for o, n in s) for s in spans_of]
    with open(path, "rb") as f:
        d = chunks._open_direct(f.fileno())
    if d is not None:  # else every read was a pread
        os.close(d)
        assert [c[0] for c in counted] == [13, len(data) - big, 4096 * 3]


def test_a_span_past_the_end_is_a_format_error(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(chunks.DIRECT_FROM + 100))
    with pytest.raises(FormatError, match="file ended"):
        read_all(path, [[(200, chunks.DIRECT_FROM)]], 2 * chunks.DIRECT_FROM)
    with pytest.raises(FormatError, match="file ended"):
        read_all(path, [[(200, 1000)], [(chunks.DIRECT_FROM, 200)]], 4096)


def test_o_direct_refused_at_read_falls_back_to_pread(tmp_path, monkeypatch):
    """A file system may open a file O_DIRECT and then refuse its reads (EINVAL)."""
    import errno

    def refuse(*args):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(chunks, "_read_direct", refuse)
    data = np.random.default_rng(1).integers(0, 256, 2 * chunks.DIRECT_FROM,
                                             dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    spans_of = [[(7, chunks.DIRECT_FROM)], [(chunks.DIRECT_FROM + 9, chunks.DIRECT_FROM - 9)]]
    got = read_all(path, spans_of, chunks.DIRECT_FROM + 100)
    assert got == [data[7:7 + chunks.DIRECT_FROM], data[chunks.DIRECT_FROM + 9:]]



def test_prefetch_stops_with_its_lock_left_held():
    """A Ctrl-C between a `with` taking the queue's lock and the block that releases
    it leaves the lock held by the consumer, which then closes the generator: the
    reader, blocked on a full queue, must still be let go and waited for."""
    import itertools
    import threading

    gen = chunks.prefetch(itertools.count(), depth=2)
    assert next(gen) == 0

    def interrupted_then_closed():
        gen.gi_frame.f_locals["cond"].acquire()  # as the interrupt leaves it
        gen.close()

    closer = threading.Thread(target=interrupted_then_closed, daemon=True)
    closer.start()
    closer.join(20)
    assert not closer.is_alive()
    assert not any(t.name == "qllama-prefetch" for t in threading.enumerate())
