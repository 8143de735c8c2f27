/* Pieces of the generic variant that SIMD variants build on (not part of the table). */
#ifndef QLLAMA_GENERIC_H
#define QLLAMA_GENERIC_H

#include "kernels.h"

/* Rounds one group of activations: q[i] = round_away(x[i] / scale), clamped. */
typedef void (*qllama_round_fn)(const float *x, ptrdiff_t n, float scale, int8_t *q);

/* Activations to Q8_0 (max over |x| bits, scale, zero groups) with a variant's `round`. */
void qllama_quantize_row_with(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s,
                              qllama_round_fn round);

/* The reference fp32 dot product and Q8_0 matmul (kernels.h's arithmetic). */
float qllama_f32_dot_ref(const float *a, const float *b, ptrdiff_t n);
void qllama_q80_matmul_ref(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                           const qllama_acts *x, float *out, ptrdiff_t out_stride);
/* The reference kernel of every GGUF block type (m->type), for a variant's last rows. */
void qllama_block_matmul_ref(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                             const qllama_acts *x, float *out, ptrdiff_t out_stride);

/* A block of T quantized activation rows for a GEMM whose vector lanes are tokens
 * (avx512vnni, amx, dotprod): bytes [k/4][t][4] (k/4 runs over the groups in order),
 * each 4-byte piece xor `flip`, then float scales [g][t]; the tokens padded to a
 * multiple of `lanes` (bytes 0 xor flip, scales 0). */
size_t qllama_pack_tokens_bytes(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs, ptrdiff_t lanes);
void qllama_pack_tokens(const qllama_acts *x, ptrdiff_t lanes, uint32_t flip, void *buf);
/* Their scales alone, as [g][t] with Tp tokens a group (those past T zero). */
void qllama_pack_scales(const qllama_acts *x, ptrdiff_t Tp, float *s);

#endif /* QLLAMA_GENERIC_H */
