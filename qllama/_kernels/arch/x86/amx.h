/* AMX-INT8 prefill, part of x86.c's "amx" compilation (-mamx-tile -mamx-int8 on top
 * of avx512vnni's flags); decode is avx512vnni's (decode.h).
 *
 * The product is transposed so that the weights need no copy: an A tile is 16
 * weight rows x K bytes loaded straight from the mapped file at the row stride
 * (K = 64, or 32 when the group size is an odd multiple of 32); a B tile is K/4
 * rows of 16 tokens x 4 bytes, the block's activations packed once per matmul
 * input as [group][k/4][token][4] (signed: tdpbssd takes s8 x s8, -128 included);
 * each C tile is 16 rows x 16 tokens of exact int32 sums. After each group the
 * C tiles are stored and scaled into float accumulators with AVX-512, in kernels.h's
 * order, so the results equal every other variant's.
 *
 * Built with QLLAMA_AMX_EMULATE, the tile instructions below are a scalar model of
 * their definitions (Intel SDM: LDTILECFG, TILELOADD, TDPBSSD, TILESTORED,
 * TILEZERO), so that the packing, the tile shapes and the scale bookkeeping are
 * tested on CPUs without AMX (tests/harness).
 */
#define AMX_ROWS 16   /* weight rows per A tile: the variant's row_block */
/* An A tile's load is 16 lines a row apart, which no hardware prefetcher follows: a
 * third of this GEMM's samples waited on it (perf, stories110M prefill, the Intel AMX
 * host). Each group prefetches its rows' lines this far on. With amx_store16, 256-token
 * prefill of stories110M ran 1.32x of neither (the store alone 1.16x); 7B, 64 tokens
 * (compute-bound), 1.03x. */
#define AMX_PF 128

typedef struct {  /* the 64-byte tile configuration of palette 1 */
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

#ifdef QLLAMA_AMX_EMULATE
static __thread struct {
    uint8_t rows[8];
    uint16_t colsb[8];
    uint8_t data[8][16][64];
} emu;

static void tile_config(const amx_config *c) {
    for (int t = 0; t < 8; t++) {
        emu.rows[t] = c->rows[t];
        emu.colsb[t] = c->colsb[t];
    }
}
static void tile_release(void) { memset(&emu, 0, sizeof emu); }
static void tile_zero(int t) { memset(emu.data[t], 0, sizeof emu.data[t]); }
static void tile_load(int t, const void *base, ptrdiff_t stride) {
    for (int r = 0; r < emu.rows[t]; r++)
        memcpy(emu.data[t][r], (const uint8_t *)base + r * stride, emu.colsb[t]);
}
static void tile_store(int t, void *base, ptrdiff_t stride) {
    for (int r = 0; r < emu.rows[t]; r++)
        memcpy((uint8_t *)base + r * stride, emu.data[t][r], emu.colsb[t]);
}
/* C[m][n] += sum over k < colsb(A) / 4, j < 4 of A[m][4k + j] * B[k][4n + j], signed */
static void tile_dpbssd(int c, int a, int b) {
    for (int m = 0; m < emu.rows[c]; m++)
        for (int n = 0; n < emu.colsb[c] / 4; n++) {
            int32_t acc;
            memcpy(&acc, &emu.data[c][m][4 * n], 4);
            for (int k = 0; k < emu.colsb[a] / 4; k++)
                for (int j = 0; j < 4; j++)
                    acc += (int32_t)(int8_t)emu.data[a][m][4 * k + j] *
                           (int32_t)(int8_t)emu.data[b][k][4 * n + j];
            memcpy(&emu.data[c][m][4 * n], &acc, 4);
        }
}
#define TILE_LOAD(t, base, stride) tile_load(t, base, stride)
#define TILE_STORE(t, base, stride) tile_store(t, base, stride)
#define TILE_DPBSSD(c, a, b) tile_dpbssd(c, a, b)
#define TILE_ZERO(t) tile_zero(t)
#else
static void tile_config(const amx_config *c) { _tile_loadconfig(c); }
static void tile_release(void) { _tile_release(); }
#define TILE_LOAD(t, base, stride) _tile_loadd(t, base, stride)
#define TILE_STORE(t, base, stride) _tile_stored(t, base, stride)
#define TILE_DPBSSD(c, a, b) _tile_dpbssd(c, a, b)
#define TILE_ZERO(t) _tile_zero(t)
#endif

/* The GEMM takes groups of 32 or 64 bytes; other blocks go through q80_rows unpacked */
static inline int amx_takes(ptrdiff_t gs) { return gs % 32 == 0; }
static size_t amx_packed_bytes(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    return amx_takes(gs) ? packed_bytes(T, n, gs) : 0;
}

/* tdpbssd's sides are both signed: the activations as they are */
static void amx_pack(const qllama_acts *x, void *buf) { pack_tokens(x, buf, 0); }

/* Tiles: 0 = A (16 rows x K bytes), 1 and 2 = B of token blocks in turn (K/4 rows x 64
 * bytes), 3 .. 6 = C of up to AMX_BLOCKS token blocks (16 x 16 int32). Configured at
 * the start of each matmul call and released at its end: tile state left configured
 * would be saved at every context switch, and other code on the thread (a library of
 * the caller's) may release it under us. */
/* Token blocks of 16 per A tile load: 4 against 2, prefill on the Intel AMX host
 * (tools/ab.py) 1.19x on the 7B (256 tokens; 1.22x at 64), 1.02-1.03x on the stories
 * shapes, whose rows stay in L1 between loads. */
#define AMX_BLOCKS 4
static void amx_configure(ptrdiff_t K) {
    amx_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    c.rows[0] = AMX_ROWS, c.colsb[0] = (uint16_t)K;
    for (int t = 1; t <= 2; t++) c.rows[t] = (uint8_t)(K / 4), c.colsb[t] = 64;
    for (int t = 3; t < 3 + AMX_BLOCKS; t++) c.rows[t] = AMX_ROWS, c.colsb[t] = 64;
    tile_config(&c);
}

/* 16 rows at w (row stride n) x nb token blocks (1 .. AMX_BLOCKS) of the packed
 * activations, each A tile loaded once for all of them. */
static void amx_tile16(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                       const uint8_t *px, const float *psx, ptrdiff_t Tp, int nb,
                       float acc[AMX_ROWS][AMX_BLOCKS * LANES]) {
    ptrdiff_t ng = n / gs, K = gs % 64 ? 32 : 64;
    int32_t c[AMX_BLOCKS][AMX_ROWS][LANES];
    for (int i = 0; i < AMX_ROWS; i++)
        for (int t = 0; t < AMX_BLOCKS * LANES; t++) acc[i][t] = 0.0f;
    for (ptrdiff_t g = 0; g < ng; g++) {
        TILE_ZERO(3);
        if (nb > 1) TILE_ZERO(4);
        if (nb > 2) TILE_ZERO(5);
        if (nb > 3) TILE_ZERO(6);
        for (int i = 0; i < AMX_ROWS; i++)  /* the A tile's rows 128 bytes on */
            _mm_prefetch((const char *)(w + i * n + g * gs + AMX_PF), _MM_HINT_T0);
        for (ptrdiff_t k = g * gs; k < (g + 1) * gs; k += K) {
            TILE_LOAD(0, w + k, n);
            const uint8_t *b = px + (k / 4) * Tp * 4;  /* k/4 is the packed row */
            TILE_LOAD(1, b, Tp * 4);
            TILE_DPBSSD(3, 0, 1);
            if (nb > 1) {
                TILE_LOAD(2, b + LANES * 4, Tp * 4);
                TILE_DPBSSD(4, 0, 2);
            }
            if (nb > 2) {
                TILE_LOAD(1, b + 2 * LANES * 4, Tp * 4);
                TILE_DPBSSD(5, 0, 1);
            }
            if (nb > 3) {
                TILE_LOAD(2, b + 3 * LANES * 4, Tp * 4);
                TILE_DPBSSD(6, 0, 2);
            }
        }
        TILE_STORE(3, c[0], LANES * 4);
        if (nb > 1) TILE_STORE(4, c[1], LANES * 4);
        if (nb > 2) TILE_STORE(5, c[2], LANES * 4);
        if (nb > 3) TILE_STORE(6, c[3], LANES * 4);
        for (int j = 0; j < nb; j++) {
            __m512 sx = _mm512_loadu_ps(psx + g * Tp + LANES * j);
            for (int i = 0; i < AMX_ROWS; i++) {
                __m512 isum = cvt16(_mm512_loadu_si512((const void *)c[j][i]));
                __m512 sc = _mm512_mul_ps(_mm512_set1_ps(ws[i * ng + g]), sx);
                float *a = acc[i] + LANES * j;
                _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), _mm512_mul_ps(isum, sc)));
            }
        }
    }
}

/* out[t * os + i] = a[i * as + t] for rows i < 16 and tokens t < nt (<= 16): one 16 x 16
 * transpose (lanes within 128 bits, then 64-bit pairs, then 128-bit blocks twice) and
 * a store per token. A scalar loop had written each value to a line of its own: 28%
 * of this GEMM's samples in stories110M prefill (perf, the Intel AMX host); without
 * it prefill of 256 tokens ran 1.16x (stories110M), 1.05x (stories15M). */
static inline void amx_store16(const float *a, ptrdiff_t as, float *out, ptrdiff_t os, int nt) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(a + i * as);
    for (int i = 0; i < 16; i += 2) {  /* per 128 bits: rows i, i+1 at 4b, 4b+1 | 4b+2, 4b+3 */
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  /* r[i + m], per 128 bits b: rows i..i+3 at column 4b+m */
        __m512d t0 = _mm512_castps_pd(t[i]), t1 = _mm512_castps_pd(t[i + 1]);
        __m512d t2 = _mm512_castps_pd(t[i + 2]), t3 = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    for (int mm = 0; mm < 4; mm++) {  /* columns mm, 4+mm, 8+mm, 12+mm */
        __m512 v = _mm512_shuffle_f32x4(r[mm], r[4 + mm], 0x88);
        __m512 w = _mm512_shuffle_f32x4(r[mm], r[4 + mm], 0xdd);
        __m512 v2 = _mm512_shuffle_f32x4(r[8 + mm], r[12 + mm], 0x88);
        __m512 w2 = _mm512_shuffle_f32x4(r[8 + mm], r[12 + mm], 0xdd);
        t[mm] = _mm512_shuffle_f32x4(v, v2, 0x88);
        t[4 + mm] = _mm512_shuffle_f32x4(w, w2, 0x88);
        t[8 + mm] = _mm512_shuffle_f32x4(v, v2, 0xdd);
        t[12 + mm] = _mm512_shuffle_f32x4(w, w2, 0xdd);
    }
    for (int c = 0; c < nt; c++) _mm512_storeu_ps(out + c * os, t[c]);
}

static void amx_q80_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                           const qllama_acts *x, float *out, ptrdiff_t out_stride) {
    ptrdiff_t T = x->T, Tp = padded(T), n = m->cols, gs = m->gs, ng = n / gs;
    if (T < 2 || x->packed == NULL || !amx_takes(gs)) {
        q80_rows(m, r0, r1, x, out, out_stride);
        return;
    }
    const uint8_t *px = (const uint8_t *)x->packed;
    const float *psx = (const float *)(px + n * Tp);
    float acc[AMX_ROWS][AMX_BLOCKS * LANES];
    ptrdiff_t whole = r0 + (r1 - r0) / AMX_ROWS * AMX_ROWS;
    if (whole > r0) amx_configure(gs % 64 ? 32 : 64);
    for (ptrdiff_t r = r0; r < whole; r += AMX_ROWS) {
        for (ptrdiff_t t0 = 0; t0 < T; t0 += AMX_BLOCKS * LANES) {
            ptrdiff_t left = T - t0;
            int nb = left >= AMX_BLOCKS * LANES ? AMX_BLOCKS : (int)((left + LANES - 1) / LANES);
            amx_tile16(m->q + r * n, m->s + r * ng, n, gs, px + t0 * 4, psx + t0, Tp, nb, acc);
            for (int j = 0; j < nb; j++) {
                ptrdiff_t nt = T - t0 - LANES * j;
                amx_store16(acc[0] + LANES * j, AMX_BLOCKS * LANES,
                            out + (t0 + LANES * j) * out_stride + r, out_stride,
                            nt < LANES ? (int)nt : LANES);
            }
        }
    }
    if (whole > r0) tile_release();
    if (whole < r1)  /* the matrix's last rows: a tile would read past them */
        q80_rows(m, whole, r1, x, out, out_stride);
}
