/* x86-64 variants, one source compiled four times (setup.py):
 *
 *   avx2        -mavx2 -mfma -mf16c                       int8 dots: vpmaddubsw + vpmaddwd
 *   avxvnni     the same + -mavxvnni                      int8 dots: vpdpbusd (VEX, 256-bit)
 *   avx512vnni  + -mavx512f/bw/vl/vnni                    vpdpbusd (EVEX); prefill GEMM in zmm
 *   amx         + -mamx-tile -mamx-int8                   prefill on AMX tiles (amx.h)
 *
 * The tests build it twice more: with SIMDe (QLLAMA_SIMDE: avx512vnni's code on a CPU
 * without AVX-512) and with QLLAMA_AMX_EMULATE (amx's, tiles modelled in C).
 *
 * QLLAMA_VARIANT names the table this compilation defines. The arithmetic is
 * kernels.h's, so all four give the generic variant's results bit for bit.
 *
 * Decode (one token) takes four weight rows per pass, so each activation block is
 * loaded once for four rows, straight from the mapped file. Per 32 values of a row:
 * - avx2: |w| (u8) * sign(w)x (s8) -> vpmaddubsw pairs into int16 -> vpmaddwd into
 *   int32 lanes. The unsigned side is the weight's because a file may hold -128 (|w|
 *   128 as u8) while activations stay within +-127: a pair sums to at most
 *   2*128*127 < 2^15, so vpmaddubsw never saturates.
 * - VNNI: (w + 128) (u8, one xor) * x (s8) -> vpdpbusd into int32 lanes; the 128 * sum(x)
 *   this adds is the same for every row, computed once per group and taken off.
 * At each group's end the four rows' lanes are summed exactly (a transposed
 * reduction) and scaled in float, four rows at a time.
 *
 * Prefill (avx512vnni, 4 or more tokens): a GEMM whose zmm lanes are 16 tokens. The
 * block's activations are packed once per matmul input as [group][k/4][token][4]
 * bytes, offset by 128 (u8); each 4-byte piece of a weight row is broadcast straight
 * from the map ({1to16}), so one vpdpbusd does 64 multiply-adds for 16 tokens and
 * no weight is copied. 4 rows x 32 tokens of int32 and float accumulators live in
 * registers; 128 * sum(w) per row and group is taken off at the group's end.
 *
 * Each decode pass also prefetches the next four rows, as the one contiguous stream
 * they are (four lines per 64 values, so it reaches the next block's end as this
 * block ends): a block of rows is too short a stream for the hardware prefetcher to
 * get ahead of (768 bytes for dim 768). Streaming 1 GB from DRAM at 2 threads on a
 * Zen 5 EPYC, that beat prefetching long rows line by line at the same place in
 * each of the next four rows by 5-14% (4096- and 11008-byte rows; on Zen 3 the
 * per-row order had been 0-20% faster for those).
 */
#include <math.h>
#include <string.h>

#ifdef QLLAMA_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>
#else
#include <immintrin.h>
#endif

#include "../../bits.h"
#include "../../generic.h"
#include "../../kernels.h"

#if defined(QLLAMA_SIMDE) || (defined(__AVX512VNNI__) && defined(__AVX512VL__) && \
                              defined(__AVX512BW__))
#define AVX512 1
#else
#define AVX512 0
#endif
#if AVX512
#define VNNI 1
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#elif defined(__AVXVNNI__)
#define VNNI 1
#define DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#else
#define VNNI 0
#endif
#if AVX512 && (defined(__AMX_INT8__) || defined(QLLAMA_AMX_EMULATE))
#define AMX 1
#else
#define AMX 0
#endif
#define GEMM (AVX512 && !AMX)

#ifdef QLLAMA_SIMDE  /* SIMDe 0.7 has no _mm512_cvtepi32_ps; (float)i rounds the same way */
static inline __m512 cvt16(__m512i a) {
    int32_t i[16];
    float f[16];
    _mm512_storeu_si512((void *)i, a);
    for (int k = 0; k < 16; k++) f[k] = (float)i[k];
    return _mm512_loadu_ps(f);
}
#else
#define cvt16 _mm512_cvtepi32_ps
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define STR_(a) #a
#define STR(a) STR_(a)
#define TABLE CAT(qllama_, QLLAMA_VARIANT)

static inline float hsum(__m256 v) {  /* ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)) */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The exact sums of four rows' int32 lanes: [sum(a0), sum(a1), sum(a2), sum(a3)]. */
static inline __m128i sum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    __m256i t0 = _mm256_add_epi32(_mm256_unpacklo_epi32(a0, a1), _mm256_unpackhi_epi32(a0, a1));
    __m256i t1 = _mm256_add_epi32(_mm256_unpacklo_epi32(a2, a3), _mm256_unpackhi_epi32(a2, a3));
    __m256i t = _mm256_add_epi32(_mm256_unpacklo_epi64(t0, t1), _mm256_unpackhi_epi64(t0, t1));
    return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
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

/* ---- Q8_0 decode: four rows, one token ------------------------------------------- */

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
            if ((k & 63) == 0) {  /* the next block, 4 lines per 64 values */
                const char *p = (const char *)w + 4 * n + 4 * k;
                _mm_prefetch(p, _MM_HINT_T0);
                _mm_prefetch(p + 64, _MM_HINT_T0);
                _mm_prefetch(p + 128, _MM_HINT_T0);
                _mm_prefetch(p + 192, _MM_HINT_T0);
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

/* ---- Q8_0 prefill: GEMM in zmm (avx512vnni) or on tiles (amx) --------------------- */

#if AVX512
#define LANES 16  /* tokens per zmm, and per AMX B tile */

static inline ptrdiff_t padded(ptrdiff_t T) { return (T + LANES - 1) / LANES * LANES; }

static size_t packed_bytes(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    return qllama_pack_tokens_bytes(T, n, gs, LANES);
}

/* A block's activations for the GEMMs (generic.c): bytes [g][k/4][t][4], each 4-byte
 * piece xor `flip`, then float scales [g][t]; padding tokens 0 (xor flip). */
static void pack_tokens(const qllama_acts *x, void *buf, uint32_t flip) {
    qllama_pack_tokens(x, LANES, flip, buf);
}
#endif

#if AMX
#include "amx.h"
#define Q80_MATMUL amx_q80_matmul
#define Q80_PACKED_BYTES packed_bytes
#define Q80_PACK amx_pack
#define ROW_BLOCK AMX_ROWS
#elif GEMM
#define GEMM_MIN_T 4    /* fewer tokens go through q80_rows (same results) */

/* the GEMM's unsigned side: x + 128 */
static void q80_pack(const qllama_acts *x, void *buf) { pack_tokens(x, buf, 0x80808080u); }

static inline __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* 4 rows at w (row stride n) x NT token vectors (16 tokens each) of one token block */
#define GEMM_KERNEL(NT)                                                                     \
static void gemm4x##NT(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,         \
                       const uint8_t *px, const float *psx, ptrdiff_t Tp, float *o) {       \
    ptrdiff_t ng = n / gs, g4 = gs / 4;                                                     \
    __m512 f[4][NT];                                                                        \
    for (int r = 0; r < 4; r++)                                                             \
        for (int j = 0; j < NT; j++) f[r][j] = _mm512_setzero_ps();                         \
    const __m256i ones = _mm256_set1_epi8(1);                                               \
    for (ptrdiff_t g = 0; g < ng; g++) {                                                    \
        __m512i a[4][NT];                                                                   \
        for (int r = 0; r < 4; r++)                                                         \
            for (int j = 0; j < NT; j++) a[r][j] = _mm512_setzero_si512();                  \
        const uint8_t *xg = px + g * g4 * Tp * 4;                                           \
        const int8_t *wg = w + g * gs;                                                      \
        for (ptrdiff_t k4 = 0; k4 < g4; k4++) {                                             \
            __m512i xv[NT];                                                                 \
            for (int j = 0; j < NT; j++)                                                    \
                xv[j] = _mm512_loadu_si512((const void *)(xg + (k4 * Tp + 16 * j) * 4));   \
            for (int r = 0; r < 4; r++) {                                                   \
                __m512i wb = bcast4(wg + r * n + 4 * k4);                                   \
                for (int j = 0; j < NT; j++) a[r][j] = _mm512_dpbusd_epi32(a[r][j], xv[j], wb); \
            }                                                                               \
        }                                                                                   \
        /* 128 * sum(w) of each row's group, exact: the offset the u8 side added */        \
        __m256i c[4];                                                                       \
        for (int r = 0; r < 4; r++) {                                                       \
            c[r] = _mm256_setzero_si256();                                                  \
            for (ptrdiff_t k = 0; k < gs; k += 32)                                          \
                c[r] = _mm256_dpbusd_epi32(c[r], ones,                                      \
                                           _mm256_loadu_si256((const __m256i *)(wg + r * n + k))); \
        }                                                                                   \
        __m128i sw = _mm_slli_epi32(sum4(c[0], c[1], c[2], c[3]), 7);                       \
        int32_t swr[4];                                                                     \
        _mm_storeu_si128((__m128i *)swr, sw);                                               \
        for (int r = 0; r < 4; r++) {                                                       \
            __m512i corr = _mm512_set1_epi32(swr[r]);                                       \
            __m512 wsr = _mm512_set1_ps(ws[r * ng + g]);                                    \
            for (int j = 0; j < NT; j++) {                                                  \
                __m512 isum = cvt16(_mm512_sub_epi32(a[r][j], corr));                    \
                __m512 sc = _mm512_mul_ps(wsr, _mm512_loadu_ps(psx + g * Tp + 16 * j));    \
                f[r][j] = _mm512_add_ps(f[r][j], _mm512_mul_ps(isum, sc));                  \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    for (int r = 0; r < 4; r++)                                                             \
        for (int j = 0; j < NT; j++) _mm512_storeu_ps(o + (r * NT + j) * 16, f[r][j]);      \
}
GEMM_KERNEL(1)
GEMM_KERNEL(2)

/* Rows r0..r1 (r0 a multiple of 16) in blocks of 16 rows x 32 tokens: four 4-row
 * tiles into a (row, token) buffer, then each token's 16 results as one 64-byte
 * store. (Storing each tile's 4 x 32 results straight into the token-major output
 * wrote 16 bytes into 32 lines a power-of-two stride apart: one L1 set, and half
 * the kernel's speed gone.) */
static void q80_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                       float *out, ptrdiff_t out_stride) {
    ptrdiff_t T = x->T, Tp = padded(T), n = m->cols, gs = m->gs, ng = n / gs;
    if (T < GEMM_MIN_T || x->packed == NULL || gs % 32) {
        q80_rows(m, r0, r1, x, out, out_stride);
        return;
    }
    const uint8_t *px = (const uint8_t *)x->packed;
    const float *psx = (const float *)(px + n * Tp);
    float o[4 * 2 * 16];         /* one 4-row tile: (row, token vector, lane) */
    float block[16][2 * 16];     /* 16 rows x 32 tokens */
    for (ptrdiff_t r = r0; r < r1; r += 16) {
        if (r + 16 > r1) {  /* the matrix's last rows */
            q80_rows(m, r, r1, x, out, out_stride);
            break;
        }
        for (ptrdiff_t t0 = 0; t0 < T; t0 += 32) {
            int nt = T - t0 > 16 ? 2 : 1;
            for (int i = 0; i < 16; i += 4) {
                const int8_t *w = m->q + (r + i) * n;
                const float *ws = m->s + (r + i) * ng;
                if (nt == 2)
                    gemm4x2(w, ws, n, gs, px + t0 * 4, psx + t0, Tp, o);
                else
                    gemm4x1(w, ws, n, gs, px + t0 * 4, psx + t0, Tp, o);
                for (int k = 0; k < 4; k++) memcpy(block[i + k], o + k * nt * 16, 4 * 16 * nt);
            }
            for (ptrdiff_t t = t0; t < T && t < t0 + 32; t++) {
                float row[16];
                for (int i = 0; i < 16; i++) row[i] = block[i][t - t0];
                _mm512_storeu_ps(out + t * out_stride + r, _mm512_loadu_ps(row));
            }
        }
    }
}
#define Q80_MATMUL q80_matmul
#define Q80_PACKED_BYTES packed_bytes
#define Q80_PACK q80_pack
#define ROW_BLOCK 16
#else  /* 256-bit variants: tokens go through the decode kernel one by one */
#define Q80_MATMUL q80_rows
#define Q80_PACKED_BYTES NULL
#define Q80_PACK NULL
#define ROW_BLOCK 16
#endif

/* ---- attention over fp16 (F16C) or fp32 cache rows ---------------------------------- */

static inline __m256 load8(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8h(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

#define ATTENTION(SUFFIX, T, LOAD, SCALAR)                                                   \
static void attn_scores_##SUFFIX(const float *q, const T *k, ptrdiff_t n_pos, ptrdiff_t hs,  \
                                 float scale, float *att) {                                 \
    for (ptrdiff_t p = 0; p < n_pos; p++) {                                                 \
        const T *kp = k + p * hs;                                                           \
        __m256 a = _mm256_setzero_ps(), b = a;                                              \
        ptrdiff_t j = 0;                                                                    \
        for (; j + 16 <= hs; j += 16) {                                                     \
            a = _mm256_fmadd_ps(load8(q + j), LOAD(kp + j), a);                             \
            b = _mm256_fmadd_ps(load8(q + j + 8), LOAD(kp + j + 8), b);                     \
        }                                                                                   \
        float s = hsum(_mm256_add_ps(a, b));                                                \
        for (; j < hs; j++) s = fmaf(q[j], SCALAR(kp[j]), s);                               \
        att[p] = s * scale;                                                                 \
    }                                                                                       \
}                                                                                           \
static void attn_values_##SUFFIX(const float *att, const T *v, ptrdiff_t n_pos, ptrdiff_t hs, \
                                 float *out) {                                              \
    ptrdiff_t i = 0;                                                                        \
    for (; i + 32 <= hs; i += 32) { /* four accumulators in registers across positions */   \
        __m256 o0 = _mm256_loadu_ps(out + i), o1 = _mm256_loadu_ps(out + i + 8);            \
        __m256 o2 = _mm256_loadu_ps(out + i + 16), o3 = _mm256_loadu_ps(out + i + 24);      \
        for (ptrdiff_t p = 0; p < n_pos; p++) {                                             \
            __m256 a = _mm256_set1_ps(att[p]);                                              \
            const T *vp = v + p * hs + i;                                                   \
            o0 = _mm256_fmadd_ps(a, LOAD(vp), o0);                                          \
            o1 = _mm256_fmadd_ps(a, LOAD(vp + 8), o1);                                      \
            o2 = _mm256_fmadd_ps(a, LOAD(vp + 16), o2);                                     \
            o3 = _mm256_fmadd_ps(a, LOAD(vp + 24), o3);                                     \
        }                                                                                   \
        _mm256_storeu_ps(out + i, o0);                                                      \
        _mm256_storeu_ps(out + i + 8, o1);                                                  \
        _mm256_storeu_ps(out + i + 16, o2);                                                 \
        _mm256_storeu_ps(out + i + 24, o3);                                                 \
    }                                                                                       \
    for (; i + 8 <= hs; i += 8) {                                                           \
        __m256 o0 = _mm256_loadu_ps(out + i);                                               \
        for (ptrdiff_t p = 0; p < n_pos; p++)                                               \
            o0 = _mm256_fmadd_ps(_mm256_set1_ps(att[p]), LOAD(v + p * hs + i), o0);         \
        _mm256_storeu_ps(out + i, o0);                                                      \
    }                                                                                       \
    for (; i < hs; i++) {                                                                   \
        float o = out[i];                                                                   \
        for (ptrdiff_t p = 0; p < n_pos; p++) o = fmaf(att[p], SCALAR(v[p * hs + i]), o);    \
        out[i] = o;                                                                         \
    }                                                                                       \
}
#define SAME(x) (x)
ATTENTION(f16, uint16_t, load8h, qllama_f16_to_f32)
ATTENTION(f32, float, load8, SAME)

static void f16_store(const float *x, uint16_t *h, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = qllama_f32_to_f16(x[i]);
}

const qllama_kernels TABLE = {
    .name = STR(QLLAMA_VARIANT),
    .row_block = ROW_BLOCK,
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
