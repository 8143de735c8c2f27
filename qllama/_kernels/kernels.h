/* The kernel table: every hot loop of the forward pass, one implementation per CPU
 * variant, chosen once at load (cpu.c) and once per matrix (engine.pyx).
 *
 *   generic.c            the reference: plain C, every kernel, any CPU
 *   arch/x86/avx2.c      AVX2 + FMA
 *
 * Each variant is its own translation unit compiled with its own target flags
 * (setup.py), so a portable build carries all of them and none leaks instructions
 * into code that runs before the CPU has been checked. A variant without its own
 * version of a kernel points at the generic one.
 *
 * Shapes: a matrix is (rows, cols) row-major; Q8_0 values are those of the
 * flattened tensor, with scale s[f / gs] for value f. Activations are a block of
 * T rows of n values, fp32 and, for Q8_0 matrices, quantized per group of gs.
 */
#ifndef QLLAMA_KERNELS_H
#define QLLAMA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const float *w;   /* fp32 weights (rows, cols), or NULL for Q8_0 */
    const int8_t *q;  /* Q8_0 values (rows * cols) */
    const float *s;   /* Q8_0 scales (rows * cols / gs) */
    ptrdiff_t rows, cols, gs;
} qllama_matrix;

typedef struct {
    const float *x;   /* (T, n) fp32, row t at x + t * x_stride */
    ptrdiff_t x_stride;
    const int8_t *q;  /* (T, n) quantized (Q8_0 matrices whose groups lie in rows) */
    const float *s;   /* (T, n / gs) their scales */
    ptrdiff_t T, n, gs;
} qllama_acts;

/* out[t * out_stride + r] = row r of m . activation row t, for r0 <= r < r1, t < T. */
typedef void (*qllama_matmul_fn)(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                                 const qllama_acts *x, float *out, ptrdiff_t out_stride);

typedef struct {
    const char *name;
    qllama_matmul_fn f32_matmul;   /* fp32 weights, fp32 activations */
    qllama_matmul_fn q80_matmul;   /* Q8_0 with gs dividing cols, quantized activations */
    /* activations to Q8_0 as runq.c: scale max|x| / 127, round half away from zero */
    void (*quantize_row)(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s);
    /* a . b, in the same order as one row of f32_matmul (attention scores use it) */
    float (*f32_dot)(const float *a, const float *b, ptrdiff_t n);
} qllama_kernels;

/* Q8_0 whose groups straddle rows (gs does not divide cols), fp32 activations: the
 * format's definition on a slower path; one implementation for every variant. */
void qllama_q80_flat_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                            const qllama_acts *x, float *out, ptrdiff_t out_stride);

extern const qllama_kernels qllama_generic;
#ifdef QLLAMA_HAVE_AVX2
extern const qllama_kernels qllama_avx2;
#endif

#endif /* QLLAMA_KERNELS_H */
