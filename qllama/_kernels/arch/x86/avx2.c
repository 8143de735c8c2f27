/* AVX2 + FMA variant (compiled with -mavx2 -mfma).
 *
 * Matmuls take four weight rows per pass, so each activation block is loaded once
 * for four rows: the reuse llama.cpp gets from repacking weights, here straight
 * from the mapped file.
 *
 * Q8_0 (gs a multiple of 32): per 32 values, |w| (u8) * sign(w)x (s8) ->
 * vpmaddubsw pairs into int16 -> vpmaddwd into int32 lanes; at the end of each
 * group the int32 lanes are exact, and are scaled by w_scale * x_scale into float
 * lanes. The unsigned side is the weight's because a file may hold -128 (whose |w|
 * is 128 as u8), while activations, quantized here, stay within +-127: sign(w)x
 * cannot overflow and a pair sums to at most 2*128*127 < 2^15, so vpmaddubsw never
 * saturates.
 *
 * Each pass also prefetches the next four rows: a block of rows is too short a
 * stream for the hardware prefetcher to get ahead of (768 bytes for dim 768), so
 * decode, which reads every weight once per token, would wait on DRAM. Rows
 * shorter than 4 KB are prefetched as the one contiguous stream the next block is
 * (four adjacent lines per step, reaching its end as this block ends); longer rows
 * line by line at the same place in each of the next four rows. Measured on Zen 3
 * from DRAM: linear is 1.4-1.6x faster for 768- and 2048-byte rows, per-row 0-20%
 * faster for 4096- and 11008-byte rows.
 */
#include <immintrin.h>
#include <math.h>

#include "../../bits.h"
#include "../../kernels.h"

void qllama_quantize_row_with(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s,
                              void (*round)(const float *, ptrdiff_t, float, int8_t *));

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- activations to Q8_0: 8 lanes + two packs (gcc leaves the plain loop scalar) ---- */

static void round_group(const float *x, ptrdiff_t n, float scale, int8_t *q) {
    ptrdiff_t i = 0;
    const __m256 s = _mm256_set1_ps(scale), one = _mm256_set1_ps(1.0f);
    const __m256 half = _mm256_set1_ps(0.5f), mhalf = _mm256_set1_ps(-0.5f);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 32 <= n; i += 32) {
        __m256i r[4];
        for (int j = 0; j < 4; j++) {
            __m256 v = _mm256_div_ps(_mm256_loadu_ps(x + i + 8 * j), s);
            __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 d = _mm256_sub_ps(v, t);
            t = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(d, half, _CMP_GE_OQ), one));
            t = _mm256_sub_ps(t, _mm256_and_ps(_mm256_cmp_ps(d, mhalf, _CMP_LE_OQ), one));
            t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);  /* max(NaN, lo) is lo */
            r[j] = _mm256_cvttps_epi32(t);
        }
        /* packs work per 128-bit lane: reorder the 4-byte runs afterwards */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]),
                                       _mm256_packs_epi32(r[2], r[3]));
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(p, order));
    }
    for (; i < n; i++) {
        float v = qllama_round_away(x[i] / scale);
        v = v >= -127.0f ? v : -127.0f;
        q[i] = (int8_t)(v > 127.0f ? 127.0f : v);
    }
}

static void quantize_row(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s) {
    qllama_quantize_row_with(x, n, gs, q, s, round_group);
}

/* ---- Q8_0 ------------------------------------------------------------------------ */

/* out[r] = sum over groups g of (w_r . x)_g * ws[r * s_stride + g] * xs[g], r < 4.
 * Row r of the weights starts at w + r * n (n values, n % gs == 0, gs % 32 == 0). */
static inline void q80_dot4(const int8_t *w, const float *ws, ptrdiff_t s_stride,
                            const int8_t *xq, const float *xs, ptrdiff_t n, ptrdiff_t gs,
                            float *out) {
    ptrdiff_t ng = n / gs;
    const __m256i ones = _mm256_set1_epi16(1);
    const int linear = n < 4096;
    const int8_t *w0 = w, *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (ptrdiff_t g = 0; g < ng; g++) {
        __m256i i0 = _mm256_setzero_si256(), i1 = i0, i2 = i0, i3 = i0;
        for (ptrdiff_t k = g * gs; k < (g + 1) * gs; k += 32) {
            if ((k & 63) == 0) {
                const char *p = linear ? (const char *)w + 4 * n + 4 * k
                                       : (const char *)w + 4 * n + k;
                ptrdiff_t step = linear ? 64 : n;
                _mm_prefetch(p, _MM_HINT_T0);
                _mm_prefetch(p + step, _MM_HINT_T0);
                _mm_prefetch(p + 2 * step, _MM_HINT_T0);
                _mm_prefetch(p + 3 * step, _MM_HINT_T0);
            }
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + k));
#define QLLAMA_ROW(wr, ir)                                                              \
            {                                                                           \
                __m256i v = _mm256_loadu_si256((const __m256i *)((wr) + k));            \
                __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(v), _mm256_sign_epi8(x, v)); \
                ir = _mm256_add_epi32(ir, _mm256_madd_epi16(p, ones));                  \
            }
            QLLAMA_ROW(w0, i0) QLLAMA_ROW(w1, i1) QLLAMA_ROW(w2, i2) QLLAMA_ROW(w3, i3)
#undef QLLAMA_ROW
        }
        __m256 sx = _mm256_set1_ps(xs[g]);
        a0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(_mm256_set1_ps(ws[g]), sx), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(_mm256_set1_ps(ws[s_stride + g]), sx), a1);
        a2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i2), _mm256_mul_ps(_mm256_set1_ps(ws[2 * s_stride + g]), sx), a2);
        a3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i3), _mm256_mul_ps(_mm256_set1_ps(ws[3 * s_stride + g]), sx), a3);
    }
    out[0] = hsum(a0);
    out[1] = hsum(a1);
    out[2] = hsum(a2);
    out[3] = hsum(a3);
}

static void q80_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                       const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    ptrdiff_t n = m->cols, gs = m->gs, ng = n / gs;
    if (gs % 32) {
        qllama_generic.q80_matmul(m, r0, r1, x, out, out_stride);
        return;
    }
    for (ptrdiff_t r = r0; r < r1; r += 4) {
        if (r + 4 > r1) {  /* the matrix's last rows */
            qllama_generic.q80_matmul(m, r, r1, x, out, out_stride);
            break;
        }
        for (ptrdiff_t t = 0; t < x->T; t++)
            q80_dot4(m->q + r * n, m->s + r * ng, ng, x->q + t * n, x->s + t * ng, n, gs,
                     out + t * out_stride + r);
    }
}

/* ---- fp32 ------------------------------------------------------------------------ */

/* w . x for one fp32 row: the same accumulators and summation order as each row of
 * f32_dot4, so a row gives the same value whichever kernel computes it. Attention
 * scores (64-value heads) use it too: one horizontal sum per dot product. */
static float f32_dot(const float *w, const float *x, ptrdiff_t n) {
    ptrdiff_t j = 0;
    __m256 a = _mm256_setzero_ps(), b = a;
    for (; j + 16 <= n; j += 16) {
        a = _mm256_fmadd_ps(_mm256_loadu_ps(w + j), _mm256_loadu_ps(x + j), a);
        b = _mm256_fmadd_ps(_mm256_loadu_ps(w + j + 8), _mm256_loadu_ps(x + j + 8), b);
    }
    float s = hsum(_mm256_add_ps(a, b));
    for (; j < n; j++) s = fmaf(w[j], x[j], s);
    return s;
}

/* out[r] = w_r . x for the 4 fp32 rows starting at w (row r at w + r * n). */
static inline void f32_dot4(const float *w, const float *x, ptrdiff_t n, float *out) {
    ptrdiff_t j = 0;
    const float *w0 = w, *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    const int linear = n < 1024;
    for (; j + 16 <= n; j += 16) {
        const char *p = linear ? (const char *)(w + 4 * n) + 16 * j : (const char *)(w0 + 4 * n + j);
        ptrdiff_t step = linear ? 64 : 4 * n;
        _mm_prefetch(p, _MM_HINT_T0);
        _mm_prefetch(p + step, _MM_HINT_T0);
        _mm_prefetch(p + 2 * step, _MM_HINT_T0);
        _mm_prefetch(p + 3 * step, _MM_HINT_T0);
        __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + j), x0, a0);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + j + 8), x1, b0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + j), x0, a1);
        b1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + j + 8), x1, b1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + j), x0, a2);
        b2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + j + 8), x1, b2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + j), x0, a3);
        b3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + j + 8), x1, b3);
    }
    out[0] = hsum(_mm256_add_ps(a0, b0));
    out[1] = hsum(_mm256_add_ps(a1, b1));
    out[2] = hsum(_mm256_add_ps(a2, b2));
    out[3] = hsum(_mm256_add_ps(a3, b3));
    for (; j < n; j++)
        for (int r = 0; r < 4; r++) out[r] = fmaf(w[r * n + j], x[j], out[r]);
}

static void f32_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                       const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    ptrdiff_t n = m->cols;
    for (ptrdiff_t r = r0; r < r1; r += 4) {
        for (ptrdiff_t t = 0; t < x->T; t++) {
            const float *xt = x->x + t * x->x_stride;
            float *o = out + t * out_stride + r;
            if (r + 4 <= r1)
                f32_dot4(m->w + r * n, xt, n, o);
            else
                for (ptrdiff_t i = 0; i < r1 - r; i++) o[i] = f32_dot(m->w + (r + i) * n, xt, n);
        }
    }
}

const qllama_kernels qllama_avx2 = {
    .name = "avx2",
    .f32_matmul = f32_matmul,
    .q80_matmul = q80_matmul,
    .quantize_row = quantize_row,
    .f32_dot = f32_dot,
};
