# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The weight quantizer: per group of GS values, scale = max|w| / 127 and
q = round-half-to-even(w / scale), in float32 exactly as llama2.c's export.py.
(Activations are quantized differently, as runq.c does: kernels.h quantize_row.)"""
from cython.parallel cimport prange
from libc.math cimport rintf, NAN
from libc.stdint cimport uint32_t

from qllama._kernels.bits cimport abs_bits, from_bits  # |f| as bits: integer max vectorizes

cdef uint32_t INF_BITS = 0x7f800000  # |w| bits >= this: Inf or NaN
MIN_VALUES_PER_THREAD = 1 << 18


cdef inline void quantize_group(const float* w, int gs, signed char* q, float* s,
                                float* err) noexcept nogil:
    cdef uint32_t wmax_bits = 0, b, emax_bits = 0
    cdef float scale, x
    cdef int i
    for i in range(gs):  # max |w|, as bits
        b = abs_bits(w[i])
        wmax_bits = b if b > wmax_bits else wmax_bits
    if wmax_bits >= INF_BITS:
        s[0] = 0.0
        err[0] = NAN  # marks the group for the caller to report
        for i in range(gs):
            q[i] = 0
        return
    scale = from_bits(wmax_bits) / 127.0
    s[0] = scale
    if scale == 0.0:
        # All-zero group (or one so tiny its scale underflows): zeros, not 0/0.
        for i in range(gs):
            q[i] = 0
        err[0] = from_bits(wmax_bits)
        return
    for i in range(gs):
        x = rintf(w[i] / scale)
        # |x| <= 127 whenever scale is a normal float; a subnormal scale loses
        # precision and can push wmax / scale past 127.5, so clamp (int8 would wrap).
        x = 127.0 if x > 127.0 else (-127.0 if x < -127.0 else x)
        q[i] = <signed char>x
        b = abs_bits(x * scale - w[i])
        emax_bits = b if b > emax_bits else emax_bits
    if emax_bits >= INF_BITS:
        # Without an FMA, 127 * fl(wmax / 127) can round past FLT_MAX for wmax near it:
        # redo this group in double, where the product is exact (rare; the loop above
        # stays vectorized).
        emax_bits = 0
        for i in range(gs):
            b = abs_bits(<float>(<double>q[i] * <double>scale - <double>w[i]))
            emax_bits = b if b > emax_bits else emax_bits
    err[0] = from_bits(emax_bits)


def quantize_weights(const float[::1] w, int group_size, signed char[::1] q, float[::1] s,
             float[::1] err, int threads=1):
    """Quantize `w` (length a multiple of group_size) into `q` and `s`.

    `err[g]` receives group g's max |q*s - w|; it is NaN where the group
    holds a non-finite weight (then q and s of that group are zeros).
    """
    cdef Py_ssize_t n = w.shape[0], n_groups, g
    if group_size <= 0 or n % group_size:
        raise ValueError(f"group size {group_size} does not divide {n} values")
    n_groups = n // group_size
    if q.shape[0] != n or s.shape[0] != n_groups or err.shape[0] != n_groups:
        raise ValueError("output buffers do not match the input size")
    # A thread per 256K values at most: smaller parallel regions cost more to
    # start (and, on a busy machine, to join) than they save.
    threads = max(1, min(threads, n // MIN_VALUES_PER_THREAD))
    if n == 0:
        return
    with nogil:
        for g in prange(n_groups, schedule="static", num_threads=threads):
            quantize_group(&w[g * group_size], group_size, &q[g * group_size], &s[g], &err[g])
