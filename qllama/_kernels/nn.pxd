# Small neural-net kernels shared by the engine and the sampler (inline, so each
# module compiles its own copy from this one definition).
from libc.math cimport expf


cdef inline void softmax(float* x, Py_ssize_t n) noexcept nogil:
    """In place, in float32 exactly as llama2.c's run.c: max, expf, running sum, divide."""
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
