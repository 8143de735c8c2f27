/* Decode, part of x86.c (every variant): one token through four weight rows per pass,
 * so each activation block is loaded once for four rows, straight from the mapped
 * file; the fp32 dot products likewise (f32_dot, f32_dot4). Per 32 Q8_0 values of a row:
 * - avx2: |w| (u8) * sign(w)x (s8) -> vpmaddubsw pairs into int16 -> vpmaddwd into
 *   int32 lanes. The unsigned side is the weight's because a file may hold -128 (|w|
 *   128 as u8) while activations stay within +-127: a pair sums to at most
 *   2*128*127 < 2^15, so vpmaddubsw never saturates.
 * - VNNI: (w + 128) (u8, one xor) * x (s8) -> vpdpbusd into int32 lanes; the 128 * sum(x)
 *   this adds is the same for every row, computed once per group and taken off.
 * At each group's end the four rows' lanes are summed exactly (a transposed
 * reduction, sum4) and scaled in float, four rows at a time.
 *
 * Each pass also prefetches the next four rows, as the one contiguous stream they
 * are (four lines per 64 values, so it reaches the next block's end as this block
 * ends): a block of rows is too short a stream for the hardware prefetcher to get
 * ahead of (768 bytes for dim 768). Streaming 1 GB from DRAM at 2 threads on a Zen 5
 * EPYC, that beat prefetching long rows line by line at the same place in each of
 * the next four rows by 5-14% (4096- and 11008-byte rows; on Zen 3 the per-row order
 * had been 0-20% faster for those). The same bytes of the pass PF_FAR ahead go to L2
 * (blocks.h too): DRAM's latency wants more bytes in flight than one pass holds.
 * 7B Q4_K_M decode on a Zen 4 guest, 2 threads, against llama.cpp on the same file
 * (medians of 4-6 alternated runs): the next pass alone 1.05x; also the pass 4, 6, 8
 * or 12 ahead to L2 1.15x, 1.20x, 1.20x, 1.10x; 6 ahead to L1 0.89x; no prefetch at
 * all about half the next pass's speed. Beyond a thread's rows or the matrix a
 * prefetch is wasted but harmless (prefetches do not fault).
 *
 * Below it, arch/rows.h deals rows and tokens out to these kernels (q80_rows: a
 * block of tokens one token at a time, the variants without a GEMM, and every
 * GEMM's fallback for few tokens and a matrix's last rows).
 */

#define PF_FAR 6

/* ---- fp32 ------------------------------------------------------------------------ */

/* w . x for one fp32 row in kernels.h's order: a = lanes 0-7 of each 16-block,
 * b = lanes 8-15, folded and summed by hsum, the tail by fmaf. */
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

/* out[r] = w_r . x for the 4 fp32 rows starting at w (row r at w + r * n), each in
 * f32_dot's order. */
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

/* ---- Q8_0: four rows, one token ---------------------------------------------------- */

/* out[r] for the 4 rows at w (row r at w + r * n), n % gs == 0, gs % 32 == 0. */
static inline void q80_dot4(const int8_t *w, const float *ws, ptrdiff_t ng, const int8_t *xq,
                            const float *xs, ptrdiff_t n, ptrdiff_t gs, float *out) {
    const int8_t *w0 = w, *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
#if VNNI
    const __m256i flip = _mm256_set1_epi8((char)0x80);
#else
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    __m128 acc = _mm_setzero_ps();
    for (ptrdiff_t g = 0; g < ng; g++) {
        __m256i i0 = _mm256_setzero_si256(), i1 = i0, i2 = i0, i3 = i0;
#if VNNI
        /* each row's lanes start at -128 * x: (w + 128) . x - 128 * sum(x) = w . x */
        __m256i cx = _mm256_setzero_si256();
        for (ptrdiff_t k = g * gs; k < (g + 1) * gs; k += 32)
            cx = DPBUSD(cx, flip, _mm256_loadu_si256((const __m256i *)(xq + k)));
        i0 = i1 = i2 = i3 = _mm256_sub_epi32(i0, cx);
#endif
        for (ptrdiff_t k = g * gs; k < (g + 1) * gs; k += 32) {
            if ((k & 63) == 0) {  /* the next block, 4 lines per 64 values; PF_FAR's to L2 */
                const char *p = (const char *)w + 4 * n + 4 * k;
                const char *far = (const char *)w + 4 * n * PF_FAR + 4 * k;
                for (int o = 0; o < 256; o += 64) {
                    _mm_prefetch(p + o, _MM_HINT_T0);
                    _mm_prefetch(far + o, _MM_HINT_T2);
                }
            }
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + k));
#if VNNI
#define ROW(wr, ir) \
            ir = DPBUSD(ir, _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)((wr) + k)), flip), x);
#else
#define ROW(wr, ir)                                                                         \
            {                                                                               \
                __m256i v = _mm256_loadu_si256((const __m256i *)((wr) + k));                \
                __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(v), _mm256_sign_epi8(x, v)); \
                ir = _mm256_add_epi32(ir, _mm256_madd_epi16(p, ones));                      \
            }
#endif
            ROW(w0, i0) ROW(w1, i1) ROW(w2, i2) ROW(w3, i3)
#undef ROW
        }
        __m128 isum = _mm_cvtepi32_ps(sum4(i0, i1, i2, i3));
        __m128 sc = _mm_mul_ps(_mm_setr_ps(ws[g], ws[ng + g], ws[2 * ng + g], ws[3 * ng + g]),
                               _mm_set1_ps(xs[g]));
        acc = _mm_add_ps(acc, _mm_mul_ps(isum, sc));
    }
    _mm_storeu_ps(out, acc);
}

#define Q80_DOT4_GS 32  /* q80_dot4's groups: whole 32-byte vectors */
#include "../rows.h"  /* q80_rows4, q80_rows, f32_matmul */

