# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The weight quantizer: per group of GS values, scale = max|w| / 127 and
q = round-half-to-even(w / scale), in float32 exactly as llama2.c's export.py.
(Activations are quantized differently, as runq.c does: kernels.h quantize_row.)"""
from cython.parallel cimport prange

cdef extern from * nogil:
    """
    #include "bits.h"

    /* A baseline x86-64 build vectorizes this 4 floats wide with SSE2, spilling: 1.9 ns
     * a value on Zen 4, slower than a disk. An x86-64-v3 (AVX2) clone, chosen at load
     * time where the CPU has it, is several times faster; every float operation is
     * the same IEEE one (no FMA: -ffp-contract=off), so the bytes are too. */
    #include "clones.h"

    #define QLLAMA_INF_BITS 0x7f800000u  /* |w| bits >= this: Inf or NaN */

    /* Value i of the input: float32, or bfloat16's bits (the upper half of a float32,
     * widened here by a shift, so that bf16 weights are read once, not first widened
     * into a float32 buffer). */
    static inline __attribute__((always_inline)) float qllama_qw_load(const void *w, int bf16,
                                                                      Py_ssize_t i) {
        return bf16 ? qllama_from_bits((uint32_t)((const uint16_t *)w)[i] << 16)
                    : ((const float *)w)[i];
    }

    static inline __attribute__((always_inline)) void qllama_qw_groups(
            const void *w, int bf16, int gs, signed char *q, float *s, float *err,
            Py_ssize_t n_groups) {
        for (Py_ssize_t g = 0; g < n_groups; g++, q += gs) {
            Py_ssize_t at = g * gs;
            uint32_t wmax_bits = 0, emax_bits = 0;
            for (int i = 0; i < gs; i++) {  /* max |w|, as bits */
                uint32_t b = qllama_abs_bits(qllama_qw_load(w, bf16, at + i));
                wmax_bits = b > wmax_bits ? b : wmax_bits;
            }
            if (wmax_bits >= QLLAMA_INF_BITS) {
                s[g] = 0.0f;
                err[g] = NAN;  /* marks the group for the caller to report */
                memset(q, 0, gs);
                continue;
            }
            float scale = qllama_from_bits(wmax_bits) / 127.0f;
            s[g] = scale;
            if (scale == 0.0f) {
                /* All-zero group (or one so tiny its scale underflows): zeros, not 0/0. */
                memset(q, 0, gs);
                err[g] = qllama_from_bits(wmax_bits);
                continue;
            }
            for (int i = 0; i < gs; i++) {
                float v = qllama_qw_load(w, bf16, at + i), x = v / scale;
                /* rintf(x), half to even, as the sum's own rounding: exact for
                 * |x| <= 2^22 (here |x| < 255), and no call where SSE2 has no rint. */
                x = (x + 12582912.0f) - 12582912.0f;  /* 1.5 * 2^23 */
                /* |x| <= 127 whenever scale is a normal float; a subnormal scale loses
                 * precision and can push wmax / scale past 127.5, so clamp (int8 would
                 * wrap). */
                x = x > 127.0f ? 127.0f : (x < -127.0f ? -127.0f : x);
                q[i] = (signed char)x;
                uint32_t b = qllama_abs_bits(x * scale - v);
                emax_bits = b > emax_bits ? b : emax_bits;
            }
            if (emax_bits >= QLLAMA_INF_BITS) {
                /* Without an FMA, 127 * fl(wmax / 127) can round past FLT_MAX for wmax
                 * near it: redo this group in double, where the product is exact (rare;
                 * the loop above stays vectorized). */
                emax_bits = 0;
                for (int i = 0; i < gs; i++) {
                    double v = qllama_qw_load(w, bf16, at + i);
                    uint32_t b = qllama_abs_bits((float)((double)q[i] * (double)scale - v));
                    emax_bits = b > emax_bits ? b : emax_bits;
                }
            }
            err[g] = qllama_from_bits(emax_bits);
        }
    }

    QLLAMA_CLONES
    static void qllama_quantize_groups(const void *w, int bf16, int gs, signed char *q,
                                       float *s, float *err, Py_ssize_t n_groups) {
        if (bf16)  /* a loop per input type, each vectorized for it */
            qllama_qw_groups(w, 1, gs, q, s, err, n_groups);
        else
            qllama_qw_groups(w, 0, gs, q, s, err, n_groups);
    }
    """
    void quantize_groups "qllama_quantize_groups"(const void* w, int bf16, int gs,
                                                  signed char* q, float* s, float* err,
                                                  Py_ssize_t n_groups)

MIN_VALUES_PER_THREAD = 1 << 18
cdef Py_ssize_t BLOCK_GROUPS = 256  # groups per call: the loop's entry cost is noise


def quantize_weights(const float[::1] w, int group_size, signed char[::1] q, float[::1] s,
                     float[::1] err, int threads=1):
    """Quantize `w` (length a multiple of group_size) into `q` and `s`.

    `err[g]` receives group g's max |q*s - w|; it is NaN where the group
    holds a non-finite weight (then q and s of that group are zeros).
    """
    _quantize(&w[0] if w.shape[0] else NULL, 0, w.shape[0], group_size, q, s, err, threads)


def quantize_weights_bf16(const unsigned short[::1] w, int group_size, signed char[::1] q,
                          float[::1] s, float[::1] err, int threads=1):
    """quantize_weights of bfloat16 values given as their bits (uint16): the same
    bytes as quantize_weights of the same values widened to float32."""
    _quantize(&w[0] if w.shape[0] else NULL, 1, w.shape[0], group_size, q, s, err, threads)


cdef _quantize(const void* w, int bf16, Py_ssize_t n, int group_size, signed char[::1] q,
               float[::1] s, float[::1] err, int threads):
    cdef Py_ssize_t n_groups, b, g0, n_blocks
    cdef Py_ssize_t item = 2 if bf16 else 4
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
    n_blocks = (n_groups + BLOCK_GROUPS - 1) // BLOCK_GROUPS
    with nogil:
        for b in prange(n_blocks, schedule="static", num_threads=threads):
            g0 = b * BLOCK_GROUPS
            quantize_groups(<const char*>w + g0 * group_size * item, bf16, group_size,
                            &q[g0 * group_size], &s[g0], &err[g0],
                            min(BLOCK_GROUPS, n_groups - g0))
