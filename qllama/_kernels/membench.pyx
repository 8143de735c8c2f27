# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Memory read-bandwidth probe for tools/bench.py.

`read_sum(buf, threads)` streams once through a buffer (much larger than the
caches) and sums it as 64-bit integers. The buffer is cut into one contiguous
part per thread (prange, static schedule) so each core streams its own range.
The inner loop keeps 8 independent accumulators, which gcc -O3 -march=native
turns into 256-bit loads and vpaddq on two ymm registers (AVX2); the sum is
returned so the compiler cannot drop the reads.
"""
from cython.parallel cimport prange
from libc.stdint cimport uint64_t

import time


cdef uint64_t sum_range(const uint64_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t acc[8]
    cdef uint64_t total = 0
    cdef Py_ssize_t i, l, n8 = n - n % 8
    for l in range(8):
        acc[l] = 0
    for i in range(0, n8, 8):
        for l in range(8):
            acc[l] += p[i + l]
    for i in range(n8, n):
        total += p[i]
    for l in range(8):
        total += acc[l]
    return total


cdef uint64_t parallel_sum(const uint64_t* p, Py_ssize_t n, int threads) noexcept nogil:
    cdef Py_ssize_t part = (n + threads - 1) // threads
    cdef Py_ssize_t t, start, stop
    cdef uint64_t total = 0
    for t in prange(threads, schedule="static", num_threads=threads):
        start = t * part
        stop = start + part
        if stop > n:
            stop = n
        if start < stop:
            total += sum_range(p + start, stop - start)
    return total


def read_sum(const uint64_t[::1] buf, int threads=1):
    """Sum every word of `buf` with `threads` threads; returns (sum, seconds)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cdef Py_ssize_t n = buf.shape[0]
    cdef uint64_t total
    if n == 0:
        return 0, 0.0
    t0 = time.perf_counter()
    with nogil:
        total = parallel_sum(&buf[0], n, threads)
    return total, time.perf_counter() - t0
