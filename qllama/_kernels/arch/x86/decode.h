/* Decode, part of x86.c (every variant): one token through a matmul, straight from the
 * mapped file; the fp32 dot products (f32_dot, f32_dot4). Per 32 Q8_0 values of a row:
 * - avx2: |w| (u8) * sign(w)x (s8) -> vpmaddubsw pairs into int16 -> vpmaddwd into
 *   int32 lanes. The unsigned side is the weight's because a file may hold -128 (|w|
 *   128 as u8) while activations stay within +-127: a pair sums to at most
 *   2*128*127 < 2^15, so vpmaddubsw never saturates.
 * - VNNI: (w + 128) (u8, one xor) * x (s8) -> vpdpbusd into int32 lanes; the 128 * sum(x)
 *   this adds is the same for every row: each group's is computed once per matmul
 *   input (q80_share) and taken off.
 *
 * One token (q80_rows1): rows one after another, each front to back, so a thread reads
 * its rows as one stream. Four groups at a time have their int32 lanes summed exactly
 * in one transposed reduction (sum4) and scaled in float; the groups' products are
 * then added to the row's sum in order (kernels.h) as they come, a chain of one float
 * add per group that out-of-order execution runs beside the next groups' products.
 * (Products held in a buffer to be added up while the next row's were computed, as
 * this kernel first did, bought nothing: one thread from L2 (tools/matmul_bench.c),
 * avx2 -2% to +8%, avx512vnni 0% to +15% without it, the most on short rows; decode
 * of stories15M 1.05x avx2, 1.14x avx512vnni.) Four rows read at once, as blocks of
 * tokens do below, are four streams a row apart (4 KiB for the 7B's 4096-byte rows),
 * which DRAM serves slower than one: the 7B file's matrices read in each order with
 * trivial sums (tools/roofline.py --patterns, Zen 4 guest, 2 threads) ran at
 * 0.91-1.01 of a stream of the same bytes one row at a time and 0.72-0.96 four at a
 * time; software prefetch ahead of the one stream made it slower. 7B decode,
 * alternated with the four-row kernel (tools/ab.py): 1.05x avx512vnni, 1.22x avx2.
 * Intel's cores want the opposite: more lines in flight than one stream gives, so
 * there (m->decode_rows) eight rows are read side by side, each prefetched (below).
 *
 * Blocks of tokens (q80_dot4: the variants' GEMMs hand them the tokens of a block too
 * small for a tile, and a matrix's last rows): four weight rows per pass, each
 * activation block loaded once for the four rows, which stay in L1 for every token; at
 * each group's end the four rows' lanes are summed in one sum4 and scaled four rows at
 * a time. Each pass also prefetches the next four rows, as the one contiguous stream
 * they are (four lines per 64 values, so it reaches the next block's end as this block
 * ends), and the same bytes of the pass PF_FAR ahead into L2 (blocks.h too): a block
 * of rows is too short a stream for the hardware prefetcher to get ahead of, and
 * DRAM's latency wants more bytes in flight than one pass holds. 7B Q4_K_M decode on a
 * Zen 4 guest, 2 threads, against llama.cpp on the same file (medians of 4-6
 * alternated runs): the next pass alone 1.05x; also the pass 4, 6, 8 or 12 ahead to L2
 * 1.15x, 1.20x, 1.20x, 1.10x; 6 ahead to L1 0.89x; no prefetch at all about half the
 * next pass's speed. Beyond a thread's rows or the matrix a prefetch is wasted but
 * harmless (prefetches do not fault).
 *
 * Below it, arch/rows.h deals rows and tokens out to these kernels (q80_rows: a
 * block of tokens one token at a time, and every GEMM's fallback for few tokens and a
 * matrix's last rows).
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

/* ---- Q8_0 ------------------------------------------------------------------------ */

/* acc + 32 values of a row (w) . of the token (x), into int32 lanes, as the header says:
 * VNNI offsets the weights by 128 (the caller takes 128 * sum(x) off), avx2 multiplies
 * |w| by sign(w) x. */
static inline __attribute__((always_inline)) __m256i q80_step(__m256i acc, __m256i w, __m256i x) {
#if VNNI
    return dot_us_acc(acc, _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80)), x);
#else
    return dot_us_acc(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
#endif
}

#if VNNI
/* VNNI's offset of the gs values at xg: 128 * their sum, in int32 lanes */
static inline __attribute__((always_inline)) __m256i q80_offset_lanes(const int8_t *xg,
                                                                      ptrdiff_t gs) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    __m256i a = _mm256_setzero_si256();
    for (ptrdiff_t k = 0; k < gs; k += 32) a = DPBUSD(a, flip, load32(xg + k));
    return a;
}
#endif

/* ---- Q8_0: four rows at a time, for blocks of tokens --------------------------------- */

/* out[r] for the 4 rows at w (row r at w + r * n), n % gs == 0, gs % 32 == 0. */
static inline void q80_dot4(const int8_t *w, const float *ws, ptrdiff_t ng, const int8_t *xq,
                            const float *xs, ptrdiff_t n, ptrdiff_t gs, float *out) {
    const int8_t *w0 = w, *w1 = w + n, *w2 = w + 2 * n, *w3 = w + 3 * n;
    __m128 acc = _mm_setzero_ps();
    for (ptrdiff_t g = 0; g < ng; g++) {
        __m256i i0 = _mm256_setzero_si256(), i1 = i0, i2 = i0, i3 = i0;
#if VNNI
        /* each row's lanes start at -128 * x: (w + 128) . x - 128 * sum(x) = w . x */
        i0 = i1 = i2 = i3 = _mm256_sub_epi32(i0, q80_offset_lanes(xq + g * gs, gs));
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
            __m256i x = load32(xq + k);
            i0 = q80_step(i0, load32(w0 + k), x);
            i1 = q80_step(i1, load32(w1 + k), x);
            i2 = q80_step(i2, load32(w2 + k), x);
            i3 = q80_step(i3, load32(w3 + k), x);
        }
        __m128 isum = _mm_cvtepi32_ps(sum4(i0, i1, i2, i3));
        __m128 sc = _mm_mul_ps(_mm_setr_ps(ws[g], ws[ng + g], ws[2 * ng + g], ws[3 * ng + g]),
                               _mm_set1_ps(xs[g]));
        acc = _mm_add_ps(acc, _mm_mul_ps(isum, sc));
    }
    _mm_storeu_ps(out, acc);
}

/* ---- Q8_0: one token, one row at a time ---------------------------------------------- */

/* Groups g .. g+3 of row w (scales ws): (float)isum * (ws * xs) each. gs is a
 * constant where the caller can make it one, so the steps unroll. cx: each group's
 * 128 * sum(x) (VNNI; unused elsewhere). */
static inline __attribute__((always_inline)) __m128 q80_prod4(
        const int8_t *w, const float *ws, const int8_t *xq, const float *xs, const int32_t *cx,
        ptrdiff_t g, const ptrdiff_t gs) {
    __m256i i0 = _mm256_setzero_si256(), i1 = i0, i2 = i0, i3 = i0;
    const int8_t *wg = w + g * gs, *xg = xq + g * gs;
#pragma GCC unroll 8
    for (ptrdiff_t k = 0; k < gs; k += 32) {
        i0 = q80_step(i0, load32(wg + k), load32(xg + k));
        i1 = q80_step(i1, load32(wg + gs + k), load32(xg + gs + k));
        i2 = q80_step(i2, load32(wg + 2 * gs + k), load32(xg + 2 * gs + k));
        i3 = q80_step(i3, load32(wg + 3 * gs + k), load32(xg + 3 * gs + k));
    }
    __m128i is = sum4(i0, i1, i2, i3);
#if VNNI
    is = _mm_sub_epi32(is, _mm_loadu_si128((const __m128i *)(cx + g)));
#else
    (void)cx;
#endif
    return _mm_mul_ps(_mm_cvtepi32_ps(is), _mm_mul_ps(_mm_loadu_ps(ws + g), _mm_loadu_ps(xs + g)));
}

/* Group g alone (a row's last ng % 4). */
static inline float q80_prod1(const int8_t *w, const float *ws, const int8_t *xq,
                              const float *xs, const int32_t *cx, ptrdiff_t g, ptrdiff_t gs) {
    __m256i a = _mm256_setzero_si256(), z = a;
    for (ptrdiff_t k = g * gs; k < (g + 1) * gs; k += 32) a = q80_step(a, load32(w + k), load32(xq + k));
    int32_t is = _mm_cvtsi128_si32(sum4(a, z, z, z));
#if VNNI
    is -= cx[g];
#else
    (void)cx;
#endif
    return (float)is * (ws[g] * xs[g]);
}

/* acc + p0 + p1 + p2 + p3, in that order */
static inline float add4(float acc, __m128 p) {
    acc += _mm_cvtss_f32(p);
    acc += _mm_cvtss_f32(_mm_shuffle_ps(p, p, 1));
    acc += _mm_cvtss_f32(_mm_movehl_ps(p, p));
    return acc + _mm_cvtss_f32(_mm_shuffle_ps(p, p, 3));
}

/* out[r] for rows r0 <= r < r1, one token, each row's products added up as they come. */
static inline __attribute__((always_inline)) void q80_rows1_gs(
        const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
        const int32_t *cx, float *out, const ptrdiff_t gs) {
    const ptrdiff_t n = m->cols, ng = n / gs, ng4 = ng & ~(ptrdiff_t)3;
    for (ptrdiff_t r = r0; r < r1; r++) {
        const int8_t *w = m->q + r * n;
        const float *ws = m->s + r * ng;
        float acc = 0.0f;
        ptrdiff_t g = 0;
        for (; g < ng4; g += 4) acc = add4(acc, q80_prod4(w, ws, x->q, x->s, cx, g, gs));
        for (; g < ng; g++) acc += q80_prod1(w, ws, x->q, x->s, cx, g, gs);
        out[r] = acc;
    }
}

/* ---- Q8_0: one token, eight rows side by side (m->decode_rows == 8) -----------------
 * On the Intel Xeon hosts (KVM guest, family 6 model 207, 2 vCPUs) one core streams
 * 12-15 GB/s from DRAM however many streams it reads, and rows one after another
 * left 7B decode at 0.66 of a two-core stream. Eight rows read side by side, each
 * prefetched PF_ROWS8 bytes ahead, keep more lines in flight: 7B decode 1.49x of one
 * row at a time (avx2, tools/ab.py, alternated), 0.98 of tools/roofline.py's stream;
 * stories110M 2.12x, stories15M 1.28x. The prefetch is what pays: without it eight
 * streams read the 7B 0.88x as fast and stories110M 0.62x. Sixteen rows in zmm
 * (the amx variant's earlier kernel) were no faster than these eight in ymm (1.02x,
 * 1.06x the other way), so every x86 variant shares this one. The AMD hosts read
 * several streams slower than one (above), so where this runs is the caller's choice
 * (qllama/kernels.py: Intel). Near a row's end the prefetch goes to the same place in
 * the next block's row, where the rows continue (stories110M's rows of 768 bytes had
 * otherwise prefetched only rows already being read: 1.58x slower). Each row's group
 * sums end in one lane of a vector (hsum8), so the 8 rows' products are scaled and
 * added in float as 8 lanes, each in kernels.h's order. */
#define PF_ROWS8 512

/* lane r: the sum of v[r]'s 8 lanes (two transposing steps, then one) */
static inline __attribute__((always_inline)) __m256i hsum8(const __m256i *v) {
    __m256i a[4], b[2];
    for (int i = 0; i < 4; i++)  /* per 128 bits: rows 2i, 2i+1, 2i, 2i+1 */
        a[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                                _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 2; i++)  /* per 128 bits: rows 4i .. 4i+3 */
        b[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(a[2 * i], a[2 * i + 1]),
                                _mm256_unpackhi_epi64(a[2 * i], a[2 * i + 1]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(b[0], b[1], 0x20),
                            _mm256_permute2x128_si256(b[0], b[1], 0x31));
}

/* out[r0 .. r0+7], one token, gs % 32 == 0 */
static inline __attribute__((always_inline)) void q80_rows8_gs(
        const qllama_matrix *m, ptrdiff_t r0, const qllama_acts *x, const int32_t *cx,
        float *out, const ptrdiff_t gs) {
    const ptrdiff_t n = m->cols, ng = n / gs;
    const int8_t *w = m->q + r0 * n;
    const float *ws = m->s + r0 * ng;
    const __m256i rows = _mm256_mullo_epi32(  /* each row's first scale, from ws */
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)ng));
    __m256 acc = _mm256_setzero_ps();
    for (ptrdiff_t g = 0; g < ng; g++) {
        __m256i v[8];
        const int8_t *wg = w + g * gs;
        for (int r = 0; r < 8; r++) v[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (ptrdiff_t k = 0; k < gs; k += 32) {
            const ptrdiff_t at = g * gs + k;  /* in the row */
            __m256i xv = load32(x->q + at);
            /* a line per row once every 64 bytes: PF_ROWS8 on in the row, or past its
             * end in the next block's row */
            ptrdiff_t pf = (at & 63) ? -1 : at + PF_ROWS8 < n ? PF_ROWS8 : PF_ROWS8 + 7 * n;
            for (int r = 0; r < 8; r++) {
                if (pf >= 0) _mm_prefetch((const char *)(wg + r * n + k + pf), _MM_HINT_T0);
                v[r] = q80_step(v[r], load32(wg + r * n + k), xv);
            }
        }
        __m256i is = hsum8(v);
#if VNNI
        is = _mm256_sub_epi32(is, _mm256_set1_epi32(cx[g]));
#endif
        __m256 sc = _mm256_mul_ps(_mm256_i32gather_ps(ws + g, rows, 4), _mm256_set1_ps(x->s[g]));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(is), sc));
    }
    _mm256_storeu_ps(out + r0, acc);
}

/* Each group's 128 * sum(x) (VNNI's offset) into cx[g * stride]. */
static void q80_offsets(const int8_t *xq, ptrdiff_t ng, ptrdiff_t gs, int32_t *cx,
                        ptrdiff_t stride) {
#if VNNI
    const __m256i z = _mm256_setzero_si256();
    if (gs % 32) {  /* groups that are not whole vectors: summed here, not read past */
        for (ptrdiff_t g = 0; g < ng; g++) {
            int32_t sum = 0;
            for (ptrdiff_t k = 0; k < gs; k++) sum += xq[g * gs + k];
            cx[g * stride] = 128 * sum;
        }
        return;
    }
    for (ptrdiff_t g = 0; g < ng; g++)
        cx[g * stride] = _mm_cvtsi128_si32(sum4(q80_offset_lanes(xq + g * gs, gs), z, z, z));
#else
    (void)xq, (void)ng, (void)gs, (void)cx, (void)stride;
#endif
}

#if VNNI
/* What a Q8_0 matrix's rows share of one token: its groups' offsets, once per matmul
 * input (kernels.h's q80_share). */
static const void *q80_share(const qllama_acts *x, void *buf) {
    q80_offsets(x->q, x->n / x->gs, x->gs, (int32_t *)buf, 1);
    return buf;
}
#define Q80_SHARE q80_share
#else
#define Q80_SHARE NULL
#endif

#define Q1_OWN_GROUPS 1024  /* VNNI offsets computed here at most; more take q80_dot4 */

/* Rows r0 <= r < r1 of one token; 0 (nothing done) for a VNNI variant's rows of more
 * than Q1_OWN_GROUPS groups prepared without the shared buffer. */
static int q80_rows1(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                     float *out) {
    const ptrdiff_t gs = m->gs, ng = m->cols / gs;
    int32_t own[VNNI ? Q1_OWN_GROUPS : 1];
    const int32_t *cx = x->shared;
    if (VNNI && !cx) {  /* prepared without a buffer (qllama_prepare's caller gave none) */
        if (ng > Q1_OWN_GROUPS) return 0;
        q80_offsets(x->q, ng, gs, own, 1);
        cx = own;
    }
    if (m->decode_rows == 8 && gs % 32 == 0)
        for (; r0 + 8 <= r1; r0 += 8) {
            if (gs == 32) q80_rows8_gs(m, r0, x, cx, out, 32);
            else if (gs == 64) q80_rows8_gs(m, r0, x, cx, out, 64);
            else q80_rows8_gs(m, r0, x, cx, out, gs);
        }
    switch (gs) {  /* the usual group sizes unrolled */
    case 32: q80_rows1_gs(m, r0, r1, x, cx, out, 32); break;
    case 64: q80_rows1_gs(m, r0, r1, x, cx, out, 64); break;
    case 128: q80_rows1_gs(m, r0, r1, x, cx, out, 128); break;
    default: q80_rows1_gs(m, r0, r1, x, cx, out, gs);
    }
    return 1;
}
#define Q80_ROWS1 q80_rows1

#define Q80_DOT4_GS 32  /* q80_dot4's groups: whole 32-byte vectors */
#include "../rows.h"  /* q80_rows4, q80_rows, f32_matmul */

