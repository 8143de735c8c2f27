/* Prefill in zmm, part of x86.c: the token layout of the AVX-512 variants (avx512vnni's
 * GEMM below and amx.h's tiles), and avx512vnni's GEMM (GEMM set: 4 or more tokens).
 *
 * A GEMM whose zmm lanes are 16 tokens. The block's activations are packed once per
 * matmul input as [group][k/4][token][4] bytes, offset by 128 (u8); each 4-byte piece
 * of a weight row is broadcast straight from the map ({1to16}), so one vpdpbusd does
 * 64 multiply-adds for 16 tokens and no weight is copied. 4 rows x 32 tokens of int32
 * and float accumulators live in registers; 128 * sum(w) per row and group is taken
 * off at the group's end.
 */
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

#if GEMM
/* Fewer tokens go through gemm256.h's GEMM (and fewer than its YMM_MIN_T
 * through q80_rows; the same results): this GEMM computes 16 token lanes whatever T.
 * A whole stories110M forward pass at 2 threads on a Zen 4 (ms, q80_rows / this
 * GEMM): T=4 6.9 / 17.8, T=8 11.7 / 19.5, T=16 22.1 / 20.8, T=32 37.1 / 29.6.
 * Batched decode of a few sequences is such a block. */
#define GEMM_MIN_T 16
/* ... and then only rows of 2048 values or more: shorter ones spend more of each group
 * on the ymm GEMM's offset and scaling than on products. One matrix, 8 tokens, 2
 * threads, this Zen 4 (ms, q80_rows / ymm GEMM): 32000 x 768 2.28 / 3.82, 4096 x 4096
 * 1.64 / 1.48, 11008 x 4096 4.68 / 4.31, 4096 x 11008 4.77 / 4.01; a Llama-2-7B-shape
 * forward pass of 8 tokens 665 / 498. */
#define YMM_MIN_COLS 2048

/* The GEMM that takes a block: this one (zmm), gemm256.h's (ymm) or neither (q80_rows);
 * the one rule for packing and for q80_matmul */
enum { NO_GEMM, YMM_GEMM, ZMM_GEMM };
static inline int gemm_for(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    if (T >= GEMM_MIN_T) return gs % 32 ? NO_GEMM : ZMM_GEMM;
    return n >= YMM_MIN_COLS && ymm_takes(T, gs) ? YMM_GEMM : NO_GEMM;
}

/* The layout of that GEMM: 16 lanes here, 8 in gemm256.h; 0 for neither */
static size_t q80_packed_bytes(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    int gemm = gemm_for(T, n, gs);
    return gemm == ZMM_GEMM ? packed_bytes(T, n, gs)
           : gemm == YMM_GEMM ? ymm_packed_bytes(T, n, gs) : 0;
}

/* the GEMM's unsigned side: x + 128 */
static void q80_pack(const qllama_acts *x, void *buf) {
    if (x->T >= GEMM_MIN_T)
        pack_tokens(x, buf, 0x80808080u);
    else
        ymm_pack(x, buf);
}

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
                for (int j = 0; j < NT; j++) DPBUSD512_IN(a[r][j], xv[j], wb);                 \
            }                                                                               \
        }                                                                                   \
        /* -128 * sum(w) of each row's group, exact: the offset the u8 side added */       \
        int32_t off[4];                                                                     \
        _mm_storeu_si128((__m128i *)off, minus_offset4(wg, n, gs));                         \
        for (int r = 0; r < 4; r++) {                                                       \
            __m512i corr = _mm512_set1_epi32(off[r]);                                       \
            __m512 wsr = _mm512_set1_ps(ws[r * ng + g]);                                    \
            for (int j = 0; j < NT; j++) {                                                  \
                __m512 isum = cvt16(_mm512_add_epi32(a[r][j], corr));                       \
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
 * tiles, transposed in registers (gemm256.h) into a (token, row) buffer, then each
 * token's 16 results as one 64-byte store. (Storing each tile's 4 x 32 results straight into the token-major output
 * wrote 16 bytes into 32 lines a power-of-two stride apart: one L1 set, and half
 * the kernel's speed gone.) */
static void q80_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                       float *out, ptrdiff_t out_stride) {
    ptrdiff_t T = x->T, Tp = padded(T), n = m->cols, gs = m->gs, ng = n / gs;
    int gemm = gemm_for(T, n, gs);
    if (gemm == YMM_GEMM) {  /* packed for it by q80_pack */
        ymm_q80_matmul(m, r0, r1, x, out, out_stride);
        return;
    }
    if (gemm == NO_GEMM || x->packed == NULL) {
        q80_rows(m, r0, r1, x, out, out_stride);
        return;
    }
    const uint8_t *px = (const uint8_t *)x->packed;
    const float *psx = (const float *)(px + n * Tp);
    float o[4 * 2 * 16];         /* one 4-row tile: (row, token vector, lane) */
    float bt[2 * 16][16];        /* 32 tokens x 16 rows (padding tokens included) */
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
                for (int h = 0; h < 2 * nt; h++)  /* 8 tokens at a time */
                    transpose4x8(o + h * 8, nt * 16, bt[h * 8] + i);
            }
            for (ptrdiff_t t = t0; t < T && t < t0 + 32; t++)
                memcpy(out + t * out_stride + r, bt[t - t0], sizeof bt[0]);
        }
    }
}
#endif
