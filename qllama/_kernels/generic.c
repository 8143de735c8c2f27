/* The reference variant: every kernel of kernels.h in plain C, with the arithmetic
 * kernels.h specifies written out one operation at a time. It runs on any CPU,
 * and it is what the tests compare every other variant with, bit for bit.
 * (Built with -ffp-contract=off: a product and a sum are two roundings unless the
 * source says fmaf.) */
#include <math.h>
#include <string.h>

#include "bits.h"
#include "block_types.h"
#include "kernels.h"
#include "generic.h"

/* ---- activations to Q8_0 ------------------------------------------------------- */

/* q[i] = round_away(x[i] / scale) clamped to +-127 (NaN to -127): runq.c's
 * roundf(x / scale) for one group. */
static void round_group(const float *x, ptrdiff_t n, float scale, int8_t *q) {
    for (ptrdiff_t i = 0; i < n; i++) q[i] = qllama_quantize_value(x[i] / scale);
}

/* The max runs over the bit patterns of |x|, which vectorizes; NaN is left out of
 * it, as runq.c leaves it out, and q is runq.c's. But a group holding NaN gets a NaN
 * scale: runq.c would turn it into finite values, and weights holding NaN would give
 * finite nonsense where the NaN should reach the logits, whose check says what the
 * file holds. A variant passes its own vector `round`. */
void qllama_quantize_row_with(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s,
                              qllama_round_fn round) {
    for (ptrdiff_t g = 0; g < n / gs; g++) {
        uint32_t wmax = 0, all = 0;
        for (ptrdiff_t i = g * gs; i < (g + 1) * gs; i++) {
            uint32_t b = qllama_abs_bits_no_nan(x[i]), a = qllama_abs_bits(x[i]);
            wmax = b > wmax ? b : wmax;
            all = a > all ? a : all;
        }
        float scale = qllama_from_bits(wmax) / 127.0f;
        s[g] = all > 0x7f800000u ? qllama_from_bits(0x7fc00000u) : scale;
        if (scale == 0.0f)
            memset(q + g * gs, 0, (size_t)gs);
        else
            round(x + g * gs, gs, scale, q + g * gs);
    }
}

static void quantize_row(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s) {
    qllama_quantize_row_with(x, n, gs, q, s, round_group);
}

/* ---- fp16 ------------------------------------------------------------------------- */

uint16_t qllama_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u)  /* NaN: quiet, the payload's top bits kept (as F16C does) */
        return sign | 0x7e00u | (uint16_t)((a >> 13) & 0x3ffu);
    if (a >= 0x477ff000u)  /* 65520 and up round to infinity */
        return sign | 0x7c00u;
    if (a < 0x38800000u) {  /* below 2^-14: a subnormal half, or zero */
        if (a <= 0x33000000u)  /* up to 2^-25, half the smallest subnormal: a tie to 0 */
            return sign;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;  /* value = m * 2^(e - 150) */
        int shift = 126 - (int)(a >> 23);          /* in units of 2^-24: m >> shift */
        uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;  /* may reach 0x400, 2^-14: right */
        return sign | (uint16_t)h;
    }
    uint32_t h = (a >> 13) - (112u << 10);  /* exponent rebiased from 127 to 15 */
    uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;  /* a carry may reach inf: right */
    return sign | (uint16_t)h;
}

float qllama_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    if (e == 0x1f) {
        x = sign | 0x7f800000u | (m << 13);
    } else if (e) {
        x = sign | ((e + 112) << 23) | (m << 13);
    } else if (!m) {
        x = sign;
    } else {  /* subnormal: m * 2^-24, normalized */
        uint32_t s = 0;
        while (!(m & 0x400u)) {
            m <<= 1;
            s++;
        }
        x = sign | ((113 - s) << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

static void f16_store(const float *x, uint16_t *h, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) h[i] = qllama_f32_to_f16(x[i]);
}

/* ---- fp32 dot products, in kernels.h's order --------------------------------------- */

/* 16 lanes, folded; the tail in order. `b` is fp32 (b16 NULL) or fp16 (b16). */
static inline float dot16(const float *a, const float *b, const uint16_t *b16, ptrdiff_t n) {
    float acc[16] = {0};
    ptrdiff_t j = 0;
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++)
            acc[l] = fmaf(a[j + l], b16 ? qllama_f16_to_f32(b16[j + l]) : b[j + l], acc[l]);
    float s[8];
    for (int l = 0; l < 8; l++) s[l] = acc[l] + acc[l + 8];
    float r = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
    for (; j < n; j++) r = fmaf(a[j], b16 ? qllama_f16_to_f32(b16[j]) : b[j], r);
    return r;
}

float qllama_f32_dot_ref(const float *a, const float *b, ptrdiff_t n) {
    return dot16(a, b, NULL, n);
}

static void f32_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                       const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    for (ptrdiff_t t = 0; t < x->T; t++)
        for (ptrdiff_t r = r0; r < r1; r++)
            out[t * out_stride + r] = dot16(m->w + r * m->cols, x->x + t * x->x_stride, NULL,
                                            m->cols);
}

/* ---- Q8_0 ------------------------------------------------------------------------- */

/* One row with groups aligned to it: exact int32 per group, then both scales. */
static float q80_dot(const int8_t *w, const float *ws, const int8_t *xq, const float *xs,
                     ptrdiff_t n, ptrdiff_t gs) {
    float acc = 0.0f;
    for (ptrdiff_t g = 0; g < n / gs; g++) {
        int32_t isum = 0;
        for (ptrdiff_t k = g * gs; k < (g + 1) * gs; k++) isum += (int32_t)xq[k] * (int32_t)w[k];
        acc = acc + (float)isum * (ws[g] * xs[g]);
    }
    return acc;
}

void qllama_q80_matmul_ref(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                           const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    ptrdiff_t n = m->cols, gs = m->gs, ng = n / gs;
    for (ptrdiff_t t = 0; t < x->T; t++)
        for (ptrdiff_t r = r0; r < r1; r++)
            out[t * out_stride + r] = q80_dot(m->q + r * n, m->s + r * ng, x->q + t * n,
                                              x->s + t * ng, n, gs);
}

size_t qllama_pack_tokens_bytes(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs, ptrdiff_t lanes) {
    ptrdiff_t Tp = (T + lanes - 1) / lanes * lanes;
    return (size_t)(n * Tp) + 4 * (size_t)(n / gs * Tp);
}

void qllama_pack_tokens(const qllama_acts *x, ptrdiff_t lanes, uint32_t flip, void *buf) {
    ptrdiff_t T = x->T, Tp = (T + lanes - 1) / lanes * lanes, n = x->n;
    uint8_t *b = (uint8_t *)buf;
    float *s = (float *)(b + n * Tp);
    memset(buf, (int)(flip & 0xff), (size_t)(n * Tp));
    for (ptrdiff_t t = 0; t < T; t++)
        for (ptrdiff_t k4 = 0; k4 < n / 4; k4++) {
            uint32_t v;
            memcpy(&v, x->q + t * n + 4 * k4, 4);
            v ^= flip;
            memcpy(b + (k4 * Tp + t) * 4, &v, 4);
        }
    qllama_pack_scales(x, Tp, s);
}

void qllama_pack_scales(const qllama_acts *x, ptrdiff_t Tp, float *s) {
    ptrdiff_t ng = x->n / x->gs;
    for (ptrdiff_t g = 0; g < ng; g++)
        for (ptrdiff_t t = 0; t < Tp; t++) s[g * Tp + t] = t < x->T ? x->s[t * ng + g] : 0.0f;
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

/* ---- GGUF block types, in kernels.h's order ------------------------------------------ */

const ptrdiff_t qllama_block_values[QLLAMA_N_TYPES] = {1, 0, 1, 1, 32, 32, 32, 256, 256, 256};
const ptrdiff_t qllama_block_bytes[QLLAMA_N_TYPES] = {4, 0, 2, 2, 34, 18, 20, 144, 176, 210};

/* f16 / bf16 row . fp32 x: the weights widened exactly, then dot16's order. */
static float half_dot(int type, const uint8_t *w, const float *x, ptrdiff_t n) {
    float acc[16] = {0};
    ptrdiff_t j = 0;
#define W(j) (type == QLLAMA_F16 ? qllama_f16_at(w + 2 * (j)) : qllama_bf16_at(w + 2 * (j)))
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 16; l++) acc[l] = fmaf(W(j + l), x[j + l], acc[l]);
    float s[8];
    for (int l = 0; l < 8; l++) s[l] = acc[l] + acc[l + 8];
    float r = ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
    for (; j < n; j++) r = fmaf(W(j), x[j], r);
#undef W
    return r;
}

static int32_t isum32(const uint8_t *q, int bias, const int8_t *x, int n) {
    int32_t s = 0;
    for (int l = 0; l < n; l++) s += ((int32_t)q[l] - bias) * x[l];
    return s;
}

static int32_t xsum32(const int8_t *x) {
    int32_t s = 0;
    for (int l = 0; l < 32; l++) s += x[l];
    return s;
}

/* One quantized row . one activation row (xq, xs in groups of 32): 8 lanes. */
static float block_dot(int type, const uint8_t *row, ptrdiff_t n, const int8_t *xq,
                       const float *xs) {
    float acc[8] = {0};
    uint8_t q[256];
    const ptrdiff_t bv = qllama_block_values[type], bb = qllama_block_bytes[type];
    for (ptrdiff_t b = 0; b < n / bv; b++) {
        const uint8_t *blk = row + b * bb;
        const int8_t *x = xq + b * bv;
        const float *s = xs + b * bv / 32;
        float *a = acc + (b * bv / 32) % 8;  /* a 256-value block starts at lane 0 */
        qllama_unpack_block(type, blk, q);
        switch (type) {
        case QLLAMA_GQ8_0: {
            /* int8 through an int8 pointer: gcc 12 with -mavx512vnni vectorizes
             * (int8_t)u8 * s8 as an unsigned x signed dot product (wrong) */
            const int8_t *w = (const int8_t *)(blk + 2);
            int32_t isum = 0;
            for (int l = 0; l < 32; l++) isum += (int32_t)w[l] * (int32_t)x[l];
            a[0] = a[0] + (float)isum * (qllama_f16_at(blk) * s[0]);
            break;
        }
        case QLLAMA_Q4_0:
            a[0] = a[0] + (float)isum32(q, 8, x, 32) * (qllama_f16_at(blk) * s[0]);
            break;
        case QLLAMA_Q4_1:
            a[0] = a[0] + (float)isum32(q, 0, x, 32) * (qllama_f16_at(blk) * s[0]);
            a[0] = a[0] + (float)xsum32(x) * (qllama_f16_at(blk + 2) * s[0]);
            break;
        case QLLAMA_Q4_K:
        case QLLAMA_Q5_K: {
            uint8_t sc[8], m[8];
            qllama_k_scales(blk + QLLAMA_Q4K_SCALES, sc, m);
            float d = qllama_f16_at(blk), dmin = qllama_f16_at(blk + 2);
            for (int j = 0; j < 8; j++) {
                int32_t isum = sc[j] * isum32(q + 32 * j, 0, x + 32 * j, 32);
                int32_t xsum = m[j] * xsum32(x + 32 * j);
                a[j] = a[j] + (float)isum * (d * s[j]);
                a[j] = a[j] - (float)xsum * (dmin * s[j]);
            }
            break;
        }
        case QLLAMA_Q6_K: {
            const int8_t *sc = (const int8_t *)(blk + QLLAMA_Q6K_SCALES);
            float d = qllama_f16_at(blk + QLLAMA_Q6K_D);
            for (int j = 0; j < 8; j++) {
                int32_t isum = sc[2 * j] * isum32(q + 32 * j, 32, x + 32 * j, 16)
                               + sc[2 * j + 1] * isum32(q + 32 * j + 16, 32, x + 32 * j + 16, 16);
                a[j] = a[j] + (float)isum * (d * s[j]);
            }
            break;
        }
        }
    }
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

void qllama_block_matmul_ref(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                             const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    ptrdiff_t n = m->cols, row_bytes = n / qllama_block_values[m->type] * qllama_block_bytes[m->type];
    for (ptrdiff_t t = 0; t < x->T; t++)
        for (ptrdiff_t r = r0; r < r1; r++) {
            const uint8_t *w = m->blocks + r * row_bytes;
            out[t * out_stride + r] =
                m->type <= QLLAMA_BF16
                    ? half_dot(m->type, w, x->x + t * x->x_stride, n)
                    : block_dot(m->type, w, n, x->q + t * n, x->s + t * (n / 32));
        }
}

/* ---- attention over one head's cached positions ------------------------------------ */

static void attn_scores_f16(const float *q, const uint16_t *k, ptrdiff_t n_pos, ptrdiff_t hs,
                            float scale, float *att) {
    for (ptrdiff_t p = 0; p < n_pos; p++) att[p] = dot16(q, NULL, k + p * hs, hs) * scale;
}

static void attn_scores_f32(const float *q, const float *k, ptrdiff_t n_pos, ptrdiff_t hs,
                            float scale, float *att) {
    for (ptrdiff_t p = 0; p < n_pos; p++) att[p] = dot16(q, k + p * hs, NULL, hs) * scale;
}

static void attn_values_f16(const float *att, const uint16_t *v, ptrdiff_t n_pos, ptrdiff_t hs,
                            float *out) {
    for (ptrdiff_t p = 0; p < n_pos; p++)
        for (ptrdiff_t i = 0; i < hs; i++)
            out[i] = fmaf(att[p], qllama_f16_to_f32(v[p * hs + i]), out[i]);
}

static void attn_values_f32(const float *att, const float *v, ptrdiff_t n_pos, ptrdiff_t hs,
                            float *out) {
    for (ptrdiff_t p = 0; p < n_pos; p++)
        for (ptrdiff_t i = 0; i < hs; i++) out[i] = fmaf(att[p], v[p * hs + i], out[i]);
}

const qllama_kernels qllama_generic = {
    .name = "scalar",
    .row_block = 4,
    .f32_matmul = f32_matmul,
    .q80_matmul = qllama_q80_matmul_ref,
    .q80_packed_bytes = NULL,
    .q80_pack = NULL,
    .block_matmul = {[QLLAMA_F16 ... QLLAMA_Q6_K] = qllama_block_matmul_ref},
    .quantize_row = quantize_row,
    .f32_dot = qllama_f32_dot_ref,
    .f16_store = f16_store,
    .attn_scores_f16 = attn_scores_f16,
    .attn_values_f16 = attn_values_f16,
    .attn_scores_f32 = attn_scores_f32,
    .attn_values_f32 = attn_values_f32,
};
