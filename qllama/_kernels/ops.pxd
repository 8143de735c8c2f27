# Small neural-net ops, in float32 exactly as llama2.c's run.c computes them: inline,
# so each module that cimports them (the engine, the sampler) compiles its own copy
# from this one definition. Every CPU variant shares them.
from libc.math cimport expf, sqrtf, powf, cosf, sinf


cdef inline void softmax(float* x, Py_ssize_t n) noexcept nogil:
    """In place: max, expf, running sum, divide."""
    cdef float max_val = x[0], total = 0.0
    cdef Py_ssize_t i
    for i in range(1, n):
        if x[i] > max_val:
            max_val = x[i]
    for i in range(n):
        x[i] = expf(x[i] - max_val)
        total += x[i]
    for i in range(n):
        x[i] = x[i] / total


cdef inline void rmsnorm(float* o, const float* x, const float* weight, Py_ssize_t n,
                         double eps) noexcept nogil:
    """eps in double: run.c's `ss / n + 1e-5` adds a double literal."""
    cdef float ss = 0.0
    cdef Py_ssize_t j
    for j in range(n):
        ss += x[j] * x[j]
    ss = ss / n + eps
    ss = 1.0 / sqrtf(ss)
    for j in range(n):
        o[j] = weight[j] * (ss * x[j])


cdef inline void rope_table(float* fcos, float* fsin, Py_ssize_t head_size, Py_ssize_t pos,
                            float theta) noexcept nogil:
    """cos and sin of pos * theta^(-2i/head_size) for the head_size/2 pairs, computed
    in float32 as run.c does (theta 10000); shared by every head and layer of the
    position."""
    cdef Py_ssize_t i
    cdef float freq, val
    for i in range(head_size // 2):
        freq = 1.0 / powf(theta, <float>(2 * i) / <float>head_size)
        val = pos * freq
        fcos[i] = cosf(val)
        fsin[i] = sinf(val)


cdef inline void rope(float* vec, Py_ssize_t n, Py_ssize_t head_size, const float* fcos,
                      const float* fsin) noexcept nogil:
    """Rotate pairs (2i, 2i+1) within each head by the position's angles."""
    cdef Py_ssize_t h, j
    cdef float v0, v1
    cdef float* v
    for h in range(n // head_size):
        v = vec + h * head_size
        for j in range(head_size // 2):
            v0 = v[2 * j]
            v1 = v[2 * j + 1]
            v[2 * j] = v0 * fcos[j] - v1 * fsin[j]
            v[2 * j + 1] = v0 * fsin[j] + v1 * fcos[j]
