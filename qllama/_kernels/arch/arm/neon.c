/* aarch64 variants, one source compiled twice (setup.py):
 *
 *   neon      -march=armv8-a              int8 dots: smull + smlal2 into int16, sadalp
 *   dotprod   -march=armv8.2-a+dotprod    int8 dots: sdot; prefill GEMM with sdot by lane
 *
 * QLLAMA_VARIANT names the table this compilation defines. The arithmetic is
 * kernels.h's, so both give the generic variant's results bit for bit. (gcc's
 * arm_neon.h writes vmulq_f32 and vaddq_f32 as C operators: -ffp-contract=off, set
 * for every file by setup.py and tests/harness.py, is what keeps them two roundings.)
 *
 * Decode (one token) takes four weight rows per pass, so each activation block is
 * loaded once for four rows, straight from the mapped file. Per 16 values of a row:
 * - neon: smull (low 8) + smlal2 (high 8) into int16 lanes, then sadalp into int32.
 *   A lane holds two products: a file may hold -128 weights but activations stay
 *   within +-127 (quantize_row clamps), so |sum| <= 2*128*127 < 2^15, no overflow.
 * - dotprod: sdot, signed x signed into int32 lanes; -128 needs no care.
 * At each group's end the four rows' lanes are summed exactly (pairwise adds, a
 * transposed reduction) and scaled in float, four rows at a time. A block of tokens
 * goes 16 rows at a time (the row_block), each token's 16 results stored together.
 *
 * Prefill (dotprod, 4 or more tokens): a GEMM whose int32x4 lanes are 4 tokens. The
 * block's activations are packed once per matmul input as [k/4][token][4] bytes
 * (groups in order, tokens padded to a multiple of 4, signed: sdot takes s8 x s8),
 * so that one sdot by lane multiplies 4 consecutive bytes of a 16-byte weight load
 * by 4 tokens' 4 bytes. A tile is 4 rows x 12 tokens: its 12 int32 accumulators, 4
 * weight and 12 activation vectors fit the 32 registers through a group (the float
 * sums wait in L1 between groups); no weight is copied. Plain neon multiplies by lane
 * only 16-bit elements (smlal, 4 products an instruction against decode's 16 in
 * three), so its tokens go through the decode kernel one by one (x86's avx2 has no
 * such limit: vpmaddubsw takes a broadcast weight piece, 32 products an instruction).
 *
 * Each decode pass also prefetches the next four rows, for x86.c's reason (a block
 * of rows is too short a stream for the hardware prefetcher): as one linear stream
 * below 4096-byte rows and row by row above, the order x86.c had until it measured
 * the linear stream faster at every length on Zen 5. Neither was measured on an ARM
 * core.
 *
 * tests/harness.py cross-compiles both variants and runs them under qemu-user against
 * generic.c built the same way, bit for bit.
 */
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "../../bits.h"
#include "../../generic.h"
#include "../../kernels.h"

#if defined(__ARM_FEATURE_DOTPROD)
#define DOTPROD 1
#else
#define DOTPROD 0
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define STR_(a) #a
#define STR(a) STR_(a)
#define TABLE CAT(qllama_, QLLAMA_VARIANT)
#define INLINE static inline __attribute__((always_inline))

/* The exact sums of four rows' int32 lanes: [sum(a0), sum(a1), sum(a2), sum(a3)]. */
INLINE int32x4_t sum4(int32x4_t a0, int32x4_t a1, int32x4_t a2, int32x4_t a3) {
    return vpaddq_s32(vpaddq_s32(a0, a1), vpaddq_s32(a2, a3));
}

/* ---- activations to Q8_0: 16 lanes, rounded with fcvtas ---------------------------- */

/* fcvtas rounds half away from zero but takes NaN to 0, so clamp first: fmaxnm takes
 * NaN (always quiet here: x / scale quiets a signalling one) to -127, as generic.c's
 * `v >= -127 ? v : -127` does; rounding a value within +-127 stays within it. */
static void round_group(const float *x, ptrdiff_t n, float scale, int8_t *q) {
    ptrdiff_t i = 0;
    const float32x4_t s = vdupq_n_f32(scale);
    const float32x4_t lo = vdupq_n_f32(-127.0f), hi = vdupq_n_f32(127.0f);
    for (; i + 16 <= n; i += 16) {
        int32x4_t r[4];
        for (int j = 0; j < 4; j++) {
            float32x4_t v = vdivq_f32(vld1q_f32(x + i + 4 * j), s);
            r[j] = vcvtaq_s32_f32(vminq_f32(vmaxnmq_f32(v, lo), hi));
        }
        int16x8_t h0 = vmovn_high_s32(vmovn_s32(r[0]), r[1]);
        int16x8_t h1 = vmovn_high_s32(vmovn_s32(r[2]), r[3]);
        vst1q_s8(q + i, vmovn_high_s16(vmovn_s16(h0), h1));
    }
    for (; i < n; i++) q[i] = qllama_quantize_value(x[i] / scale);
}

static void quantize_row(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s) {
    qllama_quantize_row_with(x, n, gs, q, s, round_group);
}

/* ---- fp32 dot products, in kernels.h's order -------------------------------------- */

/* Values j..j + 3 of b, fp16 (half) or fp32; half is a literal at every call, so the
 * test folds away. */
INLINE float32x4_t load4(const void *b, ptrdiff_t j, const int half) {
    return half ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)b + j)))
                : vld1q_f32((const float *)b + j);
}

INLINE float load1(const void *b, ptrdiff_t j, const int half) {
    return half ? qllama_f16_to_f32(((const uint16_t *)b)[j]) : ((const float *)b)[j];
}

/* Lanes 0-3 (a0) + 8-11 (a2) and 4-7 (a1) + 12-15 (a3) of the 16 partial sums, then
 * ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)). */
INLINE float fold16(float32x4_t a0, float32x4_t a1, float32x4_t a2, float32x4_t a3) {
    float32x4_t u = vaddq_f32(vaddq_f32(a0, a2), vaddq_f32(a1, a3));  /* s_l + s_(l+4) */
    return vpadds_f32(vadd_f32(vget_low_f32(u), vget_high_f32(u)));
}

/* a . b for one row: 16 lanes in four accumulators, folded, the tail by fmaf. */
INLINE float dot16(const float *a, const void *b, ptrdiff_t n, const int half) {
    ptrdiff_t j = 0;
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (; j + 16 <= n; j += 16) {
        a0 = vfmaq_f32(a0, vld1q_f32(a + j), load4(b, j, half));
        a1 = vfmaq_f32(a1, vld1q_f32(a + j + 4), load4(b, j + 4, half));
        a2 = vfmaq_f32(a2, vld1q_f32(a + j + 8), load4(b, j + 8, half));
        a3 = vfmaq_f32(a3, vld1q_f32(a + j + 12), load4(b, j + 12, half));
    }
    float s = fold16(a0, a1, a2, a3);
    for (; j < n; j++) s = fmaf(a[j], load1(b, j, half), s);
    return s;
}

static float f32_dot(const float *a, const float *b, ptrdiff_t n) { return dot16(a, b, n, 0); }

/* out[r] = w_r . x for the 4 fp32 rows starting at w (row r at w + r * n), each in
 * f32_dot's order: 16 accumulators, x loaded once for four rows. */
static inline void f32_dot4(const float *w, const float *x, ptrdiff_t n, float *out) {
    ptrdiff_t j = 0;
    float32x4_t a[4][4];
    for (int r = 0; r < 4; r++)
        for (int l = 0; l < 4; l++) a[r][l] = vdupq_n_f32(0.0f);
    const int linear = n < 1024;
    for (; j + 16 <= n; j += 16) {
        const char *p = linear ? (const char *)(w + 4 * n) + 16 * j : (const char *)(w + 4 * n + j);
        ptrdiff_t step = linear ? 64 : 4 * n;
        __builtin_prefetch(p);
        __builtin_prefetch(p + step);
        __builtin_prefetch(p + 2 * step);
        __builtin_prefetch(p + 3 * step);
        for (int l = 0; l < 4; l++) {
            float32x4_t xv = vld1q_f32(x + j + 4 * l);
            for (int r = 0; r < 4; r++)
                a[r][l] = vfmaq_f32(a[r][l], vld1q_f32(w + r * n + j + 4 * l), xv);
            /* no load moves above this: gcc's generic schedule would hoist all 16
             * weight loads over the FMAs and spill accumulators to the stack */
            __asm__ volatile("" ::: "memory");
        }
    }
    for (int r = 0; r < 4; r++) out[r] = fold16(a[r][0], a[r][1], a[r][2], a[r][3]);
    for (; j < n; j++)
        for (int r = 0; r < 4; r++) out[r] = fmaf(w[r * n + j], x[j], out[r]);
}

/* ---- Q8_0 decode: four rows, one token ------------------------------------------- */

/* The exact int32 lanes of one row's 16 bytes times the activations' 16, added to acc. */
INLINE int32x4_t dot16_s8(int32x4_t acc, int8x16_t w, int8x16_t x) {
#if DOTPROD
    return vdotq_s32(acc, w, x);
#else
    int16x8_t p = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    return vpadalq_s16(acc, vmlal_high_s8(p, w, x));
#endif
}

/* out[r] for the 4 rows at w (row r at w + r * n), n % gs == 0, gs % 16 == 0. */
static inline void q80_dot4(const int8_t *w, const float *ws, ptrdiff_t ng, const int8_t *xq,
                            const float *xs, ptrdiff_t n, ptrdiff_t gs, float *out) {
    const int linear = n < 4096;
    const int8_t *w0 = w, *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (ptrdiff_t g = 0; g < ng; g++) {
        int32x4_t i0 = vdupq_n_s32(0), i1 = i0, i2 = i0, i3 = i0;
        for (ptrdiff_t k = g * gs, end = k + gs; k < end;) {
            if ((k & 63) == 0) {
                const char *p = linear ? (const char *)w + 4 * n + 4 * k
                                       : (const char *)w + 4 * n + k;
                ptrdiff_t step = linear ? 64 : n;
                __builtin_prefetch(p);
                __builtin_prefetch(p + step);
                __builtin_prefetch(p + 2 * step);
                __builtin_prefetch(p + 3 * step);
            }
            /* to the next 64-byte mark or the group's end: the prefetch test stays
             * out of the inner loop (gcc had moved one prefetch into every step) */
            ptrdiff_t stop = (k | 63) + 1 < end ? (k | 63) + 1 : end;
            do {
                int8x16_t x = vld1q_s8(xq + k);
                i0 = dot16_s8(i0, vld1q_s8(w0 + k), x);
                i1 = dot16_s8(i1, vld1q_s8(w1 + k), x);
                i2 = dot16_s8(i2, vld1q_s8(w2 + k), x);
                i3 = dot16_s8(i3, vld1q_s8(w3 + k), x);
                k += 16;
            } while (k < stop);
        }
        float32x4_t isum = vcvtq_f32_s32(sum4(i0, i1, i2, i3));
        float32x4_t wsg = vld1q_dup_f32(ws + g);  /* the four rows' scales, lane by lane */
        wsg = vld1q_lane_f32(ws + ng + g, wsg, 1);
        wsg = vld1q_lane_f32(ws + 2 * ng + g, wsg, 2);
        wsg = vld1q_lane_f32(ws + 3 * ng + g, wsg, 3);
        float32x4_t sc = vmulq_n_f32(wsg, xs[g]);
        acc = vaddq_f32(acc, vmulq_f32(isum, sc));
    }
    vst1q_f32(out, acc);
}

#define Q80_DOT4_GS 16  /* q80_dot4's groups: whole 16-byte vectors */
#include "../rows.h"  /* store16, q80_rows4, q80_rows, f32_matmul */

/* ---- Q8_0 prefill: GEMM with sdot by lane (dotprod) ------------------------------- */

#if DOTPROD
#define LANES 4       /* tokens per int32x4 */
#define GEMM_NT 3     /* token vectors per tile: 4 * 3 accumulators + 4 + 4 * 3 = 28 */
#define GEMM_MIN_T 4  /* fewer tokens go through q80_rows (same results, fewer sdots) */
#define GEMM_T 48     /* tokens per block of 16 rows: four token tiles */

static inline ptrdiff_t padded(ptrdiff_t T) { return (T + LANES - 1) / LANES * LANES; }

static size_t q80_packed_bytes(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    return qllama_pack_tokens_bytes(T, n, gs, LANES);
}

/* bytes [k/4][t][4] as s8, then float scales [g][t]; padding tokens 0 (generic.c) */
static void q80_pack(const qllama_acts *x, void *buf) { qllama_pack_tokens(x, LANES, 0, buf); }

/* 4 rows at w (row stride n) x NT token vectors (4 tokens each) starting at the
 * packed bytes px and scales psx (row stride Tp) into o, (row, vector, lane). The
 * int32 accumulators, the 4 weight vectors and the activations stay in registers
 * through a group; the float sums live in o (L1), updated once per group. */
INLINE void gemm4(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                  const int8_t *px, const float *psx, ptrdiff_t Tp, float *o, const int NT) {
    ptrdiff_t ng = n / gs;
    memset(o, 0, sizeof(float) * 4 * NT * LANES);
    for (ptrdiff_t g = 0; g < ng; g++) {
        int32x4_t a[4][GEMM_NT];
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < NT; j++) a[r][j] = vdupq_n_s32(0);
        const int8_t *wg = w + g * gs;
        for (ptrdiff_t k = 0; k < gs; k += 16) {
            int8x16_t wv[4];
            for (int r = 0; r < 4; r++) wv[r] = vld1q_s8(wg + r * n + k);
            /* piece l of each weight load is bytes k + 4l.. of the group: packed row
             * (g * gs + k) / 4 + l (the lane must be a literal, hence the macro) */
            const int8_t *xk = px + (g * gs + k) * Tp;
#define PIECE(l)                                                                     \
            {                                                                        \
                int8x16_t xv[GEMM_NT];                                               \
                for (int j = 0; j < NT; j++) xv[j] = vld1q_s8(xk + (l * Tp + 4 * j) * 4); \
                for (int r = 0; r < 4; r++)                                          \
                    for (int j = 0; j < NT; j++)                                     \
                        a[r][j] = vdotq_laneq_s32(a[r][j], xv[j], wv[r], l);         \
            }
            PIECE(0) PIECE(1) PIECE(2) PIECE(3)
#undef PIECE
        }
        for (int j = 0; j < NT; j++) {
            float32x4_t xs = vld1q_f32(psx + g * Tp + 4 * j);
            for (int r = 0; r < 4; r++) {
                float *f = o + (r * NT + j) * LANES;
                float32x4_t sc = vmulq_n_f32(xs, ws[r * ng + g]);
                vst1q_f32(f, vaddq_f32(vld1q_f32(f), vmulq_f32(vcvtq_f32_s32(a[r][j]), sc)));
            }
        }
    }
}

static void gemm4x1(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                    const int8_t *px, const float *psx, ptrdiff_t Tp, float *o) {
    gemm4(w, ws, n, gs, px, psx, Tp, o, 1);
}
static void gemm4x2(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                    const int8_t *px, const float *psx, ptrdiff_t Tp, float *o) {
    gemm4(w, ws, n, gs, px, psx, Tp, o, 2);
}
static void gemm4x3(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                    const int8_t *px, const float *psx, ptrdiff_t Tp, float *o) {
    gemm4(w, ws, n, gs, px, psx, Tp, o, 3);
}

/* Rows r0..r1 (r0 a multiple of 16) in blocks of 16 rows x GEMM_T tokens: each
 * 4-row tile over the chunk's token tiles (its rows stay in L1), into a (row, token)
 * buffer; then each token's 16 results as one store (store16). */
static void q80_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                       float *out, ptrdiff_t out_stride) {
    ptrdiff_t T = x->T, Tp = padded(T), n = m->cols, gs = m->gs, ng = n / gs;
    if (T < GEMM_MIN_T || x->packed == NULL || gs % 16) {
        q80_rows(m, r0, r1, x, out, out_stride);
        return;
    }
    const int8_t *px = (const int8_t *)x->packed;
    const float *psx = (const float *)(px + n * Tp);
    static void (*const kernel[GEMM_NT + 1])(const int8_t *, const float *, ptrdiff_t, ptrdiff_t,
                                             const int8_t *, const float *, ptrdiff_t,
                                             float *) = {NULL, gemm4x1, gemm4x2, gemm4x3};
    float o[4 * GEMM_NT * LANES];  /* one 4-row tile: (row, token vector, lane) */
    float block[16][GEMM_T];       /* 16 rows x GEMM_T tokens (padding tokens included) */
    for (ptrdiff_t r = r0; r < r1; r += 16) {
        if (r + 16 > r1) {  /* the matrix's last rows */
            q80_rows(m, r, r1, x, out, out_stride);
            break;
        }
        for (ptrdiff_t t0 = 0; t0 < T; t0 += GEMM_T) {
            ptrdiff_t tn = T - t0 < GEMM_T ? T - t0 : GEMM_T;
            for (int i = 0; i < 16; i += 4)
                for (ptrdiff_t t1 = 0; t1 < tn; t1 += GEMM_NT * LANES) {
                    ptrdiff_t nt = (tn - t1 + LANES - 1) / LANES;
                    if (nt > GEMM_NT) nt = GEMM_NT;
                    /* a token tile's bytes start t0 + t1 tokens in: shift the packed base */
                    kernel[nt](m->q + (r + i) * n, m->s + (r + i) * ng, n, gs,
                               px + (t0 + t1) * 4, psx + t0 + t1, Tp, o);
                    for (int k = 0; k < 4; k++)
                        memcpy(block[i + k] + t1, o + k * nt * LANES, sizeof(float) * LANES * nt);
                }
            for (ptrdiff_t t = 0; t < tn; t++)
                store16(out + (t0 + t) * out_stride + r, block[0], GEMM_T, t);
        }
    }
}
#define Q80_MATMUL q80_matmul
#define Q80_PACKED_BYTES q80_packed_bytes
#define Q80_PACK q80_pack
#else  /* plain NEON: tokens go through the decode kernel one by one */
#define Q80_MATMUL q80_rows
#define Q80_PACKED_BYTES NULL
#define Q80_PACK NULL
#endif

/* ---- attention over fp16 (fcvtl) or fp32 cache rows -------------------------------- */

static void attn_scores_f16(const float *q, const uint16_t *k, ptrdiff_t n_pos, ptrdiff_t hs,
                            float scale, float *att) {
    for (ptrdiff_t p = 0; p < n_pos; p++) att[p] = dot16(q, k + p * hs, hs, 1) * scale;
}

static void attn_scores_f32(const float *q, const float *k, ptrdiff_t n_pos, ptrdiff_t hs,
                            float scale, float *att) {
    for (ptrdiff_t p = 0; p < n_pos; p++) att[p] = dot16(q, k + p * hs, hs, 0) * scale;
}

/* out[i..i + 4 NV) += sum over p of att[p] * v_p, NV accumulators in registers across
 * positions, each step a fused multiply-add in p's order. */
INLINE void values_block(const float *att, const void *v, ptrdiff_t n_pos, ptrdiff_t hs,
                         ptrdiff_t i, float *out, const int NV, const int half) {
    float32x4_t o[8];
    for (int l = 0; l < NV; l++) o[l] = vld1q_f32(out + i + 4 * l);
    for (ptrdiff_t p = 0; p < n_pos; p++) {
        float32x4_t a = vdupq_n_f32(att[p]);
        for (int l = 0; l < NV; l++)
            o[l] = vfmaq_f32(o[l], a, load4(v, p * hs + i + 4 * l, half));
    }
    for (int l = 0; l < NV; l++) vst1q_f32(out + i + 4 * l, o[l]);
}

INLINE void values(const float *att, const void *v, ptrdiff_t n_pos, ptrdiff_t hs, float *out,
                   const int half) {
    ptrdiff_t i = 0;
    for (; i + 32 <= hs; i += 32) values_block(att, v, n_pos, hs, i, out, 8, half);
    for (; i + 16 <= hs; i += 16) values_block(att, v, n_pos, hs, i, out, 4, half);
    for (; i + 4 <= hs; i += 4) values_block(att, v, n_pos, hs, i, out, 1, half);
    for (; i < hs; i++) {
        float o = out[i];
        for (ptrdiff_t p = 0; p < n_pos; p++) o = fmaf(att[p], load1(v, p * hs + i, half), o);
        out[i] = o;
    }
}

static void attn_values_f16(const float *att, const uint16_t *v, ptrdiff_t n_pos, ptrdiff_t hs,
                            float *out) {
    values(att, v, n_pos, hs, out, 1);
}

static void attn_values_f32(const float *att, const float *v, ptrdiff_t n_pos, ptrdiff_t hs,
                            float *out) {
    values(att, v, n_pos, hs, out, 0);
}

/* fcvtn rounds to nearest even under the default FPCR (Linux starts processes with
 * it), overflows to infinity and keeps subnormals and a NaN's top payload bits, as
 * qllama_f32_to_f16 does. */
static void f16_store(const float *x, uint16_t *h, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float16x8_t v = vcvt_high_f16_f32(vcvt_f16_f32(vld1q_f32(x + i)), vld1q_f32(x + i + 4));
        vst1q_u16(h + i, vreinterpretq_u16_f16(v));
    }
    for (; i < n; i++) h[i] = qllama_f32_to_f16(x[i]);
}

const qllama_kernels TABLE = {
    .name = STR(QLLAMA_VARIANT),
    .row_block = 16,
    .f32_matmul = f32_matmul,
    .q80_matmul = Q80_MATMUL,
    .q80_packed_bytes = Q80_PACKED_BYTES,
    .q80_pack = Q80_PACK,
    .quantize_row = quantize_row,
    .f32_dot = f32_dot,
    .f16_store = f16_store,
    .attn_scores_f16 = attn_scores_f16,
    .attn_values_f16 = attn_values_f16,
    .attn_scores_f32 = attn_scores_f32,
    .attn_values_f32 = attn_values_f32,
};
