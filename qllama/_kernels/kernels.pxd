# Cython's view of kernels.h and cpu.h: the kernel table and the CPU's features.
from libc.stdint cimport int8_t, uint16_t, uint64_t


cdef extern from "kernels.h" nogil:
    ctypedef struct qllama_matrix:
        const float* w
        const int8_t* q
        const float* s
        Py_ssize_t rows, cols, gs

    ctypedef struct qllama_acts:
        const float* x
        Py_ssize_t x_stride
        const int8_t* q
        const float* s
        const void* packed
        Py_ssize_t T, n, gs

    ctypedef void (*qllama_matmul_fn)(const qllama_matrix* m, Py_ssize_t r0, Py_ssize_t r1,
                                      const qllama_acts* x, float* out,
                                      Py_ssize_t out_stride) noexcept nogil

    ctypedef struct qllama_kernels:
        const char* name
        Py_ssize_t row_block
        qllama_matmul_fn f32_matmul
        qllama_matmul_fn q80_matmul
        size_t (*q80_packed_bytes)(Py_ssize_t T, Py_ssize_t n, Py_ssize_t gs) noexcept nogil
        void (*q80_pack)(const qllama_acts* x, void* buf) noexcept nogil
        void (*quantize_row)(const float* x, Py_ssize_t n, Py_ssize_t gs, int8_t* q,
                             float* s) noexcept nogil
        float (*f32_dot)(const float* a, const float* b, Py_ssize_t n) noexcept nogil
        void (*f16_store)(const float* x, uint16_t* h, Py_ssize_t n) noexcept nogil
        void (*attn_scores_f16)(const float* q, const uint16_t* k, Py_ssize_t n_pos,
                                Py_ssize_t hs, float scale, float* att) noexcept nogil
        void (*attn_values_f16)(const float* att, const uint16_t* v, Py_ssize_t n_pos,
                                Py_ssize_t hs, float* out) noexcept nogil
        void (*attn_scores_f32)(const float* q, const float* k, Py_ssize_t n_pos,
                                Py_ssize_t hs, float scale, float* att) noexcept nogil
        void (*attn_values_f32)(const float* att, const float* v, Py_ssize_t n_pos,
                                Py_ssize_t hs, float* out) noexcept nogil

    void qllama_q80_flat_matmul(const qllama_matrix* m, Py_ssize_t r0, Py_ssize_t r1,
                                const qllama_acts* x, float* out, Py_ssize_t out_stride)
    uint16_t qllama_f32_to_f16(float f)
    float qllama_f16_to_f32(uint16_t h)


cdef extern from "cpu.h" nogil:
    ctypedef struct qllama_variant:
        const char* name
        const qllama_kernels* table
        uint64_t needs

    const char* const qllama_feature_names[]
    const int qllama_n_features
    uint64_t qllama_cpu_features()
    int qllama_amx_permit()
    const qllama_variant* qllama_variants(int* n)
