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
 * GGUF block types (decode and, token by token, prefill) take four rows a pass over
 * 256 values, as x86.c's blocks.h: see their section below.
 *
 * tests/harness.py cross-compiles both variants and runs them under qemu-user against
 * generic.c built the same way, bit for bit.
 */
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "../../bits.h"
#include "../../block_types.h"
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

/* ---- GGUF block types: one token, four rows a pass ------------------------------- */

/* As x86.c's blocks.h, in kernels.h's order: a pass takes 256 values (eight groups
 * of 32, float lanes 0-3 and 4-7 in two vectors) and shares the activation sums and
 * scales among its four rows. Weights go in as signed bytes, offsets taken off
 * before the dot product (q6_k's q - 32, q4_0's q - 8 fit int8), so each group is
 * the Q8_0 kernel's dot16_s8 twice; sum4 reduces four groups' lanes exactly. */

INLINE int32x4_t dot32(int8x16_t w0, int8x16_t w1, const int8_t *x) {
    return dot16_s8(dot16_s8(vdupq_n_s32(0), w0, vld1q_s8(x)), w1, vld1q_s8(x + 16));
}

/* sum(x) of 32 activations, exact */
INLINE int32_t xsum32(const int8_t *x) {
    return vaddlvq_s8(vld1q_s8(x)) + vaddlvq_s8(vld1q_s8(x + 16));
}

INLINE float32x4_t f16x4(uint16_t a, uint16_t b, uint16_t c, uint16_t d) {
    uint16x4_t h = vset_lane_u16(d, vset_lane_u16(c, vset_lane_u16(b, vdup_n_u16(a), 1), 2), 3);
    return vcvt_f32_f16(vreinterpret_f16_u16(h));
}

INLINE float f16_1(const uint8_t *p) {
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(qllama_le16(p)))), 0);
}

INLINE void prefetch_stream(const uint8_t *next, ptrdiff_t at, ptrdiff_t len) {
    for (ptrdiff_t o = at; o < at + len; o += 64) __builtin_prefetch(next + o);
}

/* ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) of lanes lo = 0-3, hi = 4-7 */
INLINE float fold8(float32x4_t lo, float32x4_t hi) {
    float32x4_t s = vaddq_f32(lo, hi);
    return vpadds_f32(vadd_f32(vget_low_f32(s), vget_high_f32(s)));
}

INLINE int32x4_t widen_u8(uint8x8_t v, const int high) {
    uint16x8_t w = vmovl_u8(v);
    return vreinterpretq_s32_u32(high ? vmovl_high_u16(w) : vmovl_u16(vget_low_u16(w)));
}

INLINE int32x4_t widen_s8(int8x8_t v, const int high) {
    int16x8_t w = vmovl_s8(v);
    return high ? vmovl_high_s16(w) : vmovl_s16(vget_low_s16(w));
}

/* q4_k (q5 0) and q5_k (q5 1) */
INLINE void qk_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq, const float *xs,
                    float *out, const int q5) {
    const ptrdiff_t bb = q5 ? 176 : 144, qs = q5 ? QLLAMA_Q5K_QS : QLLAMA_Q4K_QS;
    const uint8x16_t low = vdupq_n_u8(15), bit4 = vdupq_n_u8(16);
    float32x4_t acc[4][2];
    for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = vdupq_n_f32(0.0f);
    for (ptrdiff_t b = 0; b < n / 256; b++) {
        prefetch_stream(w + 4 * rb, 4 * bb * b, 4 * bb);
        const int8_t *x = xq + 256 * b;
        int32_t xs_i[8];
        for (int j = 0; j < 8; j++) xs_i[j] = xsum32(x + 32 * j);
        const int32x4_t xsum[2] = {vld1q_s32(xs_i), vld1q_s32(xs_i + 4)};
        const float32x4_t xsv[2] = {vld1q_f32(xs + 8 * b), vld1q_f32(xs + 8 * b + 4)};
        for (int r = 0; r < 4; r++) {
            const uint8_t *blk = w + r * rb + b * bb;
            int32x4_t v[8];
            uint8x16_t qh[2] = {vdupq_n_u8(0), vdupq_n_u8(0)};
            if (q5) qh[0] = vld1q_u8(blk + QLLAMA_Q5K_QH), qh[1] = vld1q_u8(blk + QLLAMA_Q5K_QH + 16);
            for (int c = 0; c < 4; c++) {
                uint8x16_t lo[2], hi[2];
                for (int h = 0; h < 2; h++) {
                    uint8x16_t q = vld1q_u8(blk + qs + 32 * c + 16 * h);
                    lo[h] = vandq_u8(q, low);
                    hi[h] = vshrq_n_u8(q, 4);
                    if (q5) {  /* bit j of qh to bit 4 of sub-block j, j = 2c, 2c + 1 */
                        lo[h] = vorrq_u8(lo[h], vandq_u8(vshlq_u8(qh[h], vdupq_n_s8((int8_t)(4 - 2 * c))), bit4));
                        hi[h] = vorrq_u8(hi[h], vandq_u8(vshlq_u8(qh[h], vdupq_n_s8((int8_t)(3 - 2 * c))), bit4));
                    }
                }
                v[2 * c] = dot32(vreinterpretq_s8_u8(lo[0]), vreinterpretq_s8_u8(lo[1]), x + 64 * c);
                v[2 * c + 1] = dot32(vreinterpretq_s8_u8(hi[0]), vreinterpretq_s8_u8(hi[1]), x + 64 * c + 32);
            }
            uint8_t sc[8], mn[8];
            qllama_k_scales(blk + QLLAMA_Q4K_SCALES, sc, mn);
            float32x4_t dm = f16x4(qllama_le16(blk), qllama_le16(blk + 2), 0, 0);
            for (int h = 0; h < 2; h++) {
                int32x4_t isum = sum4(v[4 * h], v[4 * h + 1], v[4 * h + 2], v[4 * h + 3]);
                int32x4_t s = vmulq_s32(isum, widen_u8(vld1_u8(sc), h));
                int32x4_t m = vmulq_s32(xsum[h], widen_u8(vld1_u8(mn), h));
                float32x4_t d = vmulq_n_f32(xsv[h], vgetq_lane_f32(dm, 0));
                float32x4_t dmin = vmulq_n_f32(xsv[h], vgetq_lane_f32(dm, 1));
                acc[r][h] = vaddq_f32(acc[r][h], vmulq_f32(vcvtq_f32_s32(s), d));
                acc[r][h] = vsubq_f32(acc[r][h], vmulq_f32(vcvtq_f32_s32(m), dmin));
            }
        }
    }
    for (int r = 0; r < 4; r++) out[r] = fold8(acc[r][0], acc[r][1]);
}

static void q4k_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq,
                     const float *xs, float *out) {
    qk_dot4(w, rb, n, xq, xs, out, 0);
}

static void q5k_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq,
                     const float *xs, float *out) {
    qk_dot4(w, rb, n, xq, xs, out, 1);
}

/* q6_k: each group's 16-value halves apart, then their scales in int32 */
static void q6k_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq,
                     const float *xs, float *out) {
    const uint8x16_t low = vdupq_n_u8(15), k32 = vdupq_n_u8(32);
    float32x4_t acc[4][2];
    for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = vdupq_n_f32(0.0f);
    for (ptrdiff_t b = 0; b < n / 256; b++) {
        prefetch_stream(w + 4 * rb, 4 * 210 * b, 4 * 210);
        const int8_t *x = xq + 256 * b;
        const float32x4_t xsv[2] = {vld1q_f32(xs + 8 * b), vld1q_f32(xs + 8 * b + 4)};
        for (int r = 0; r < 4; r++) {
            const uint8_t *blk = w + r * rb + b * 210;
            int32x4_t first[8], last[8];  /* per group j: its 16-value halves */
            for (int h = 0; h < 2; h++)
                for (int k = 0; k < 4; k++) {
                    int j = 4 * h + k;
                    int8x16_t q[2];
                    for (int i = 0; i < 2; i++) {
                        uint8x16_t l = vld1q_u8(blk + 64 * h + 32 * (k % 2) + 16 * i);
                        uint8x16_t hb = vld1q_u8(blk + QLLAMA_Q6K_QH + 32 * h + 16 * i);
                        l = k < 2 ? vandq_u8(l, low) : vshrq_n_u8(l, 4);
                        hb = vandq_u8(vshlq_u8(hb, vdupq_n_s8((int8_t)(4 - 2 * k))), vdupq_n_u8(0x30));
                        q[i] = vreinterpretq_s8_u8(vsubq_u8(vorrq_u8(l, hb), k32));  /* q - 32 */
                    }
                    first[j] = dot16_s8(vdupq_n_s32(0), q[0], vld1q_s8(x + 32 * j));
                    last[j] = dot16_s8(vdupq_n_s32(0), q[1], vld1q_s8(x + 32 * j + 16));
                }
            int8x8x2_t sc = vld2_s8((const int8_t *)(blk + QLLAMA_Q6K_SCALES));  /* even, odd */
            float d = f16_1(blk + QLLAMA_Q6K_D);
            for (int h = 0; h < 2; h++) {
                int32x4_t a = sum4(first[4 * h], first[4 * h + 1], first[4 * h + 2], first[4 * h + 3]);
                int32x4_t e = sum4(last[4 * h], last[4 * h + 1], last[4 * h + 2], last[4 * h + 3]);
                int32x4_t isum = vmlaq_s32(vmulq_s32(a, widen_s8(sc.val[0], h)), e, widen_s8(sc.val[1], h));
                acc[r][h] = vaddq_f32(acc[r][h], vmulq_f32(vcvtq_f32_s32(isum), vmulq_n_f32(xsv[h], d)));
            }
        }
    }
    for (int r = 0; r < 4; r++) out[r] = fold8(acc[r][0], acc[r][1]);
}

/* q8_0, q4_0, q4_1: passes of eight blocks; a row's last pass of k < 8 reads its k
 * blocks only and keeps lanes k..7 */
INLINE void q32_pass(const uint8_t *w, ptrdiff_t rb, ptrdiff_t g0, const int8_t *xq,
                     const float *xs, float32x4_t acc[4][2], const int type, const int k) {
    const ptrdiff_t bb = type == QLLAMA_GQ8_0 ? 34 : type == QLLAMA_Q4_0 ? 18 : 20;
    const ptrdiff_t off = type == QLLAMA_Q4_1 ? 4 : 2;
    prefetch_stream(w + 4 * rb, 4 * bb * g0, 4 * bb * k);
    const int8_t *x = xq + 32 * g0;
    float xsk[8] = {0};
    int32_t xs_i[8] = {0};
    for (int j = 0; j < k; j++) {
        xsk[j] = xs[g0 + j];
        if (type == QLLAMA_Q4_1) xs_i[j] = xsum32(x + 32 * j);
    }
    const float32x4_t xsv[2] = {vld1q_f32(xsk), vld1q_f32(xsk + 4)};
    const int32x4_t lanes = {0, 1, 2, 3};
    for (int r = 0; r < 4; r++) {
        const uint8_t *blk = w + r * rb + g0 * bb;
        int32x4_t v[8];
        uint16_t dh[8] = {0}, mh[8] = {0};
        for (int j = 0; j < 8; j++) {
            const uint8_t *p = blk + j * bb;
            if (j >= k) {
                v[j] = vdupq_n_s32(0);
                continue;
            }
            dh[j] = qllama_le16(p);
            if (type == QLLAMA_GQ8_0) {
                v[j] = dot32(vld1q_s8((const int8_t *)p + 2), vld1q_s8((const int8_t *)p + 18), x + 32 * j);
            } else {
                uint8x16_t q = vld1q_u8(p + off);
                int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(15)));
                int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
                if (type == QLLAMA_Q4_0) {
                    lo = vsubq_s8(lo, vdupq_n_s8(8));
                    hi = vsubq_s8(hi, vdupq_n_s8(8));
                } else {
                    mh[j] = qllama_le16(p + 2);
                }
                v[j] = dot32(lo, hi, x + 32 * j);
            }
        }
        for (int h = 0; h < 2; h++) {
            int32x4_t isum = sum4(v[4 * h], v[4 * h + 1], v[4 * h + 2], v[4 * h + 3]);
            float32x4_t d = vmulq_f32(f16x4(dh[4 * h], dh[4 * h + 1], dh[4 * h + 2], dh[4 * h + 3]), xsv[h]);
            float32x4_t a = vaddq_f32(acc[r][h], vmulq_f32(vcvtq_f32_s32(isum), d));
            if (type == QLLAMA_Q4_1) {
                float32x4_t m = vmulq_f32(f16x4(mh[4 * h], mh[4 * h + 1], mh[4 * h + 2], mh[4 * h + 3]), xsv[h]);
                a = vaddq_f32(a, vmulq_f32(vcvtq_f32_s32(vld1q_s32(xs_i + 4 * h)), m));
            }
            if (k < 8)
                a = vbslq_f32(vcltq_s32(vaddq_s32(lanes, vdupq_n_s32(4 * h)), vdupq_n_s32(k)), a, acc[r][h]);
            acc[r][h] = a;
        }
    }
}

INLINE void q32_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq,
                     const float *xs, float *out, const int type) {
    const ptrdiff_t ng = n / 32;
    float32x4_t acc[4][2];
    for (int r = 0; r < 4; r++) acc[r][0] = acc[r][1] = vdupq_n_f32(0.0f);
    ptrdiff_t g0 = 0;
    for (; g0 + 8 <= ng; g0 += 8) q32_pass(w, rb, g0, xq, xs, acc, type, 8);
    if (g0 < ng) q32_pass(w, rb, g0, xq, xs, acc, type, (int)(ng - g0));
    for (int r = 0; r < 4; r++) out[r] = fold8(acc[r][0], acc[r][1]);
}

static void gq80_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq,
                      const float *xs, float *out) {
    q32_dot4(w, rb, n, xq, xs, out, QLLAMA_GQ8_0);
}

static void q40_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq,
                     const float *xs, float *out) {
    q32_dot4(w, rb, n, xq, xs, out, QLLAMA_Q4_0);
}

static void q41_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq,
                     const float *xs, float *out) {
    q32_dot4(w, rb, n, xq, xs, out, QLLAMA_Q4_1);
}

BLOCK_MATMUL(gq80_matmul, gq80_dot4)
BLOCK_MATMUL(q40_matmul, q40_dot4)
BLOCK_MATMUL(q41_matmul, q41_dot4)
BLOCK_MATMUL(q4k_matmul, q4k_dot4)
BLOCK_MATMUL(q5k_matmul, q5k_dot4)
BLOCK_MATMUL(q6k_matmul, q6k_dot4)

/* f16 and bf16 rows widened exactly, then dot16's order (fp32 activations) */
INLINE float32x4_t widen4(const uint8_t *p, const int bf) {
    uint16x4_t h = vreinterpret_u16_u8(vld1_u8(p));
    return bf ? vreinterpretq_f32_u32(vshll_n_u16(h, 16)) : vcvt_f32_f16(vreinterpret_f16_u16(h));
}

INLINE float half_dot(const uint8_t *w, const float *x, ptrdiff_t n, const int bf) {
    ptrdiff_t j = 0;
    float32x4_t a[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
    for (; j + 16 <= n; j += 16)
        for (int l = 0; l < 4; l++)
            a[l] = vfmaq_f32(a[l], vld1q_f32(x + j + 4 * l), widen4(w + 2 * (j + 4 * l), bf));
    float s = fold16(a[0], a[1], a[2], a[3]);
    for (; j < n; j++) s = fmaf(x[j], bf ? qllama_bf16_at(w + 2 * j) : qllama_f16_at(w + 2 * j), s);
    return s;
}

INLINE void half_rows(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                      float *out, ptrdiff_t out_stride, const int bf) {
    for (ptrdiff_t t = 0; t < x->T; t++)
        for (ptrdiff_t r = r0; r < r1; r++)
            out[t * out_stride + r] = half_dot(m->blocks + 2 * r * m->cols, x->x + t * x->x_stride,
                                               m->cols, bf);
}

static void f16_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                       float *out, ptrdiff_t out_stride) {
    half_rows(m, r0, r1, x, out, out_stride, 0);
}

static void bf16_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                        float *out, ptrdiff_t out_stride) {
    half_rows(m, r0, r1, x, out, out_stride, 1);
}

/* ---- Q8_0 prefill: GEMM with sdot by lane (dotprod) ------------------------------- */

#if DOTPROD
#define LANES 4       /* tokens per int32x4 */
#define GEMM_NT 3     /* token vectors per tile: 4 * 3 accumulators + 4 + 4 * 3 = 28 */
#define GEMM_MIN_T 4  /* fewer tokens go through q80_rows (same results, fewer sdots) */
#define GEMM_T 48     /* tokens per block of 16 rows: four token tiles */

static inline ptrdiff_t padded(ptrdiff_t T) { return (T + LANES - 1) / LANES * LANES; }

/* Whether the GEMM takes a block: the one rule for packing and for q80_matmul */
static inline int gemm_takes(ptrdiff_t T, ptrdiff_t gs) { return T >= GEMM_MIN_T && gs % 16 == 0; }

/* 0 where the GEMM does not take the block: the driver then packs nothing */
static size_t q80_packed_bytes(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    return gemm_takes(T, gs) ? qllama_pack_tokens_bytes(T, n, gs, LANES) : 0;
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
    if (!gemm_takes(T, gs) || x->packed == NULL) {
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
    .block_matmul = {[QLLAMA_F16] = f16_matmul, [QLLAMA_BF16] = bf16_matmul,
                     [QLLAMA_GQ8_0] = gq80_matmul, [QLLAMA_Q4_0] = q40_matmul,
                     [QLLAMA_Q4_1] = q41_matmul, [QLLAMA_Q4_K] = q4k_matmul,
                     [QLLAMA_Q5_K] = q5k_matmul, [QLLAMA_Q6_K] = q6k_matmul},
    .quantize_row = quantize_row,
    .f32_dot = f32_dot,
    .f16_store = f16_store,
    .attn_scores_f16 = attn_scores_f16,
    .attn_values_f16 = attn_values_f16,
    .attn_scores_f32 = attn_scores_f32,
    .attn_values_f32 = attn_values_f32,
};
