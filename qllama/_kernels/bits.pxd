# Cython's view of bits.h: float bit patterns for vectorizable max reductions.
from libc.stdint cimport uint32_t


cdef extern from "bits.h" nogil:
    uint32_t abs_bits "qllama_abs_bits"(float f)
