/* The reference variant: every kernel of kernels.h in plain C. It runs on any CPU,
 * fills the table slots a SIMD variant leaves empty, and is what the tests compare
 * every other variant with. */
#include <string.h>

#include "bits.h"
#include "kernels.h"

/* ---- activations to Q8_0 ------------------------------------------------------- */

/* q[i] = round_away(x[i] / scale) clamped to +-127 (NaN to -127): runq.c's
 * roundf(x / scale) for one group. */
static void round_group(const float *x, ptrdiff_t n, float scale, int8_t *q) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = qllama_round_away(x[i] / scale);
        v = v >= -127.0f ? v : -127.0f;
        q[i] = (int8_t)(v > 127.0f ? 127.0f : v);
    }
}

/* Shared by every variant: the max runs over the bit patterns of |x|, which
 * vectorizes; NaN is left out of it, as runq.c leaves it out. */
void qllama_quantize_row_with(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s,
                              void (*round)(const float *, ptrdiff_t, float, int8_t *)) {
    for (ptrdiff_t g = 0; g < n / gs; g++) {
        uint32_t wmax = 0;
        for (ptrdiff_t i = g * gs; i < (g + 1) * gs; i++) {
            uint32_t b = qllama_abs_bits_no_nan(x[i]);
            wmax = b > wmax ? b : wmax;
        }
        float scale = qllama_from_bits(wmax) / 127.0f;
        s[g] = scale;
        if (scale == 0.0f)
            memset(q + g * gs, 0, (size_t)gs);
        else
            round(x + g * gs, gs, scale, q + g * gs);
    }
}

static void quantize_row(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s) {
    qllama_quantize_row_with(x, n, gs, q, s, round_group);
}

/* ---- dot products ---------------------------------------------------------------- */

/* Eight lanes (element j in lane j % 8), folded pairwise; the tail in order. */
static float f32_dot(const float *w, const float *x, ptrdiff_t n) {
    float acc[8] = {0};
    ptrdiff_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int l = 0; l < 8; l++) acc[l] += w[j + l] * x[j + l];
    float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
    for (; j < n; j++) s += w[j] * x[j];
    return s;
}

static void f32_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                       const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    for (ptrdiff_t t = 0; t < x->T; t++)
        for (ptrdiff_t r = r0; r < r1; r++)
            out[t * out_stride + r] = f32_dot(m->w + r * m->cols, x->x + t * x->x_stride, m->cols);
}

/* One row with groups aligned to it: exact int32 per group, then both scales, as runq.c. */
static float q80_dot(const int8_t *w, const float *ws, const int8_t *xq, const float *xs,
                     ptrdiff_t n, ptrdiff_t gs) {
    float val = 0.0f;
    for (ptrdiff_t g = 0; g < n / gs; g++) {
        int32_t ival = 0;
        for (ptrdiff_t k = g * gs; k < (g + 1) * gs; k++) ival += (int32_t)xq[k] * (int32_t)w[k];
        val += (float)ival * ws[g] * xs[g];
    }
    return val;
}

static void q80_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                       const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    ptrdiff_t n = m->cols, gs = m->gs, ng = n / gs;
    for (ptrdiff_t t = 0; t < x->T; t++)
        for (ptrdiff_t r = r0; r < r1; r++)
            out[t * out_stride + r] = q80_dot(m->q + r * n, m->s + r * ng, x->q + t * n,
                                              x->s + t * ng, n, gs);
}

/* Elements start..start+n-1 of a flattened Q8_0 tensor whose groups may cross rows:
 * element f has scale s[f / gs]. fp32 activations. */
static float q80_flat_dot(const int8_t *q, const float *s, ptrdiff_t start, const float *x,
                          ptrdiff_t n, ptrdiff_t gs) {
    float val = 0.0f;
    ptrdiff_t j = 0;
    while (j < n) {
        ptrdiff_t g = (start + j) / gs, end = (g + 1) * gs - start;
        if (end > n) end = n;
        float part = 0.0f;
        for (ptrdiff_t k = j; k < end; k++) part += (float)q[start + k] * x[k];
        val += part * s[g];
        j = end;
    }
    return val;
}

void qllama_q80_flat_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                            const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    for (ptrdiff_t t = 0; t < x->T; t++)
        for (ptrdiff_t r = r0; r < r1; r++)
            out[t * out_stride + r] = q80_flat_dot(m->q, m->s, r * m->cols,
                                                   x->x + t * x->x_stride, m->cols, m->gs);
}

const qllama_kernels qllama_generic = {
    .name = "scalar",
    .f32_matmul = f32_matmul,
    .q80_matmul = q80_matmul,
    .quantize_row = quantize_row,
    .f32_dot = f32_dot,
};
