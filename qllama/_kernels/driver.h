/* The kernel driver: a matrix times a block of activation rows on one variant, from
 * the rows' fp32 values to the output. The engine (drivers.pxi), Kernels.matmul and
 * the tests' C harness all go through it, so every variant, the emulated ones
 * included, runs the kernel the engine chooses, on activations prepared as the
 * engine prepares them.
 *
 *   plan      which kernel multiplies by a matrix, and whether it takes quantized
 *             activations (Q8_0 with groups inside rows) or fp32 ones
 *   prepare   the rows for a planned matrix: their Q8_0 copy, row by row, and for a
 *             block of tokens the variant's packed layout of it (once per matmul
 *             input, before the rows are dealt out)
 *   run       output rows r0..r1 through the planned kernel
 *
 * Threads are the caller's: the engine quantizes rows and deals out blocks of
 * row_block output rows with OpenMP (drivers.pxi); qllama_prepare and qllama_run do
 * the same pieces in order, on one thread.
 */
#ifndef QLLAMA_DRIVER_H
#define QLLAMA_DRIVER_H

#include "kernels.h"

/* A group's int32 sum (kernels.h) is exact while gs * 128 * 127 < 2^31; a larger group
 * (a file may declare any group size dividing its tensors) would wrap. */
#define QLLAMA_Q80_MAX_GROUP 131072

typedef struct {
    qllama_matrix m;
    qllama_matmul_fn fn;  /* multiplies by m on the planned variant */
    int q8_input;         /* fn takes quantized activations (else fp32) */
} qllama_plan;

/* Whether rows of n values in groups of gs are quantized for a Q8_0 matrix: groups
 * inside rows and small enough for exact int32 sums; else the matrix takes fp32 rows
 * through qllama_q80_flat_matmul, the format's definition. */
int qllama_q8_input(ptrdiff_t n, ptrdiff_t gs);

/* The plan of m on variant k: a GGUF block type (m->type above QLLAMA_Q80) by the
 * variant's kernel, or generic's where it has none, with activations quantized in
 * groups of 32 (f16, bf16: fp32 ones); else fp32 when m->w, else Q8_0. */
void qllama_plan_matrix(qllama_plan *p, const qllama_matrix *m, const qllama_kernels *k);

/* Bytes of the buffer prepare fills for blocks of up to T rows of n values (groups of
 * gs): k's packed layout of a block of tokens for a Q8_0 GEMM, or what rows share of
 * one token (k->block_share, k->q80_share); 0 when neither: fp32 input, or a variant
 * with neither. */
size_t qllama_packed_bytes(const qllama_kernels *k, ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs);

/* The activations p takes: T rows of p->m.cols values at x (row stride cols) and, when
 * p->q8_input, their Q8_0 copy to come in q (T * cols) and s (T * cols / gs); else q
 * and s are not used. */
void qllama_acts_init(qllama_acts *a, const qllama_plan *p, const float *x, ptrdiff_t T,
                      int8_t *q, float *s);
/* Rows t0 <= t < t1 of a's Q8_0 copy (nothing for fp32 input); rows are independent. */
void qllama_acts_quantize(const qllama_kernels *k, const qllama_acts *a, ptrdiff_t t0,
                          ptrdiff_t t1);
/* After the rows are quantized, into buf (qllama_packed_bytes of them; nothing when buf
 * is NULL): k's packed layout of a block of tokens for a Q8_0 matrix (a->packed), or
 * what its rows share of one token (a->shared). */
void qllama_acts_pack(const qllama_kernels *k, qllama_acts *a, void *buf);
/* All three, in order. */
void qllama_prepare(const qllama_kernels *k, const qllama_plan *p, qllama_acts *a,
                    const float *x, ptrdiff_t T, int8_t *q, float *s, void *buf);

/* Output rows r0 <= r < min(r0 + rb, rows) of every activation row; r0 a multiple of
 * the variant's row_block. Inline: the engine calls it per block. */
static inline void qllama_run_rows(const qllama_plan *p, ptrdiff_t r0, ptrdiff_t rb,
                                   const qllama_acts *a, float *out, ptrdiff_t out_stride) {
    p->fn(&p->m, r0, r0 + rb < p->m.rows ? r0 + rb : p->m.rows, a, out, out_stride);
}

/* Every output row, block by block of k's row_block, in order. */
void qllama_run(const qllama_kernels *k, const qllama_plan *p, const qllama_acts *a, float *out,
                ptrdiff_t out_stride);

#endif /* QLLAMA_DRIVER_H */
