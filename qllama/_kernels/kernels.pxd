# Cython's view of kernels.h, driver.h and cpu.h: the kernel table, the driver that
# runs a matrix through it, and the CPU's features.
from libc.stdint cimport int8_t, uint8_t, uint16_t, uint64_t


cdef extern from "kernels.h" nogil:
    enum:  # enum qllama_type
        QLLAMA_F32
        QLLAMA_Q80
        QLLAMA_F16
        QLLAMA_BF16
        QLLAMA_N_TYPES

    ctypedef struct qllama_matrix:
        const float* w
        const int8_t* q
        const float* s
        Py_ssize_t rows, cols, gs
        int type
        const uint8_t* blocks
        int decode_rows
        uint8_t* row_notes

    ctypedef struct qllama_acts:
        const float* x
        Py_ssize_t x_stride
        const int8_t* q
        const float* s
        const void* packed
        Py_ssize_t T, n, gs
        int type

    ctypedef void (*qllama_matmul_fn)(const qllama_matrix* m, Py_ssize_t r0, Py_ssize_t r1,
                                      const qllama_acts* x, float* out,
                                      Py_ssize_t out_stride) noexcept nogil

    ctypedef struct qllama_kernels:
        const char* name
        Py_ssize_t row_block
        qllama_matmul_fn f32_matmul
        qllama_matmul_fn q80_matmul
        # block_matmul: reached only through the driver's plan
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

    const Py_ssize_t qllama_block_values[]
    const Py_ssize_t qllama_block_bytes[]
    void qllama_dequantize_row(const qllama_matrix* m, Py_ssize_t r, float* out)
    uint16_t qllama_f32_to_f16(float f)
    float qllama_f16_to_f32(uint16_t h)


cdef extern from "driver.h" nogil:
    ctypedef struct qllama_plan:
        qllama_matrix m
        qllama_matmul_fn fn
        bint q8_input

    void qllama_plan_matrix(qllama_plan* p, const qllama_matrix* m, const qllama_kernels* k)
    size_t qllama_packed_bytes(const qllama_kernels* k, Py_ssize_t T, Py_ssize_t n,
                               Py_ssize_t gs)
    void qllama_acts_init(qllama_acts* a, const qllama_plan* p, const float* x, Py_ssize_t T,
                          int8_t* q, float* s)
    void qllama_acts_quantize(const qllama_kernels* k, const qllama_acts* a, Py_ssize_t t0,
                              Py_ssize_t t1)
    void qllama_acts_pack(const qllama_kernels* k, qllama_acts* a, void* buf)
    void qllama_prepare(const qllama_kernels* k, const qllama_plan* p, qllama_acts* a,
                        const float* x, Py_ssize_t T, int8_t* q, float* s, void* buf)
    void qllama_run_rows(const qllama_plan* p, Py_ssize_t r0, Py_ssize_t rb,
                         const qllama_acts* a, float* out, Py_ssize_t out_stride)


cdef extern from "cpu.h" nogil:
    ctypedef struct qllama_variant:
        const char* name
        const qllama_kernels* table
        uint64_t needs

    const char* const qllama_feature_names[]
    const int qllama_n_features
    uint64_t qllama_cpu_features()
    int qllama_amx_permit()
    void qllama_cpu_vendor(char* out)
    const qllama_variant* qllama_variants(int* n)
