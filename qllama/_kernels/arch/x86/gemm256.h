/* Prefill in ymm, part of x86.c: the GEMM of the 256-bit variants (avx2, avxvnni; and
 * avx512vnni's blocks of fewer than 16 tokens), for blocks of YMM_MIN_T or more tokens;
 * fewer keep decode.h's kernel.
 *
 * The lanes are tokens, as in gemm512.h, 8 to a ymm. The block's activations are
 * packed once per matmul input as [k/4][token][4] bytes (generic.c, tokens padded to
 * 8), so each 4-byte piece of a weight row, broadcast straight from the mapped file,
 * multiplies 8 tokens' 4 bytes into their int32 lanes; no weight is copied. A tile is
 * 4 rows x 1 or 2 token vectors: 8 int32 accumulators, the 2 activation vectors, the
 * broadcast and its temporaries fill the 16 ymm registers; the float sums wait in L1
 * (o) between groups. Per 4-byte piece of a row and token vector:
 * - avx2: vpmaddubsw(|w|, sign(w)x) pairs into int16, vpmaddwd into int32: decode's
 *   products, exact for w = -128 (|w| 128 as u8, activations within +-127, a pair at
 *   most 2*128*127 < 2^15); |w| is taken once per row and piece, for both vectors.
 *   The activations are packed signed.
 * - avxvnni: one vpdpbusd of the activations packed as x + 128 (u8) and w (s8); the
 *   128 * sum(w) this adds, per row and group, is taken off by starting the group's
 *   accumulators at minus it. vpdpbusd wraps, so the sum is exact whenever
 *   w . x fits int32, which the engine's group size limit ensures. With one token
 *   vector, alternate pieces go to two sets of accumulators: four chains of vpdpbusd
 *   waited on its latency (8 tokens 1.11-1.28x faster, tools/matmul_ab.sh, the Intel
 *   host, avxvnni and avx512vnni).
 * avx2 packs a block of at most 8 tokens (a batched decode's) in 8-byte pieces instead,
 * [k/8][x, then |x|][slot][8]: a token's 8 bytes per 64-bit lane, the 8 tokens in two
 * ymm (tokens 0 1 4 5 and 2 3 6 7, so that vphaddd of their sums gives tokens 0..7 in
 * order). Then one broadcast and one |w| serve all 8 tokens, as 4-byte pieces serve 16
 * with two vectors: 1.07-1.27x for 8 tokens (tools/matmul_ab.sh, one thread, the Intel
 * host, whose vector work is bound by its instruction count). Used for more tokens, its
 * 8-token tiles ran 0.94-0.97x as fast as the two-vector tiles for 9 to 16. Beside each
 * piece it packs |x|: rows without -128 take vpmaddubsw(|x|, sign(x)w) and need no |w|
 * (1.03-1.12x, as above), rows with one the |w| form. Which 16-row blocks hold -128 is
 * noted on first sight in the matrix's row_notes (rows_clean). Up to 4 tokens take 4
 * slots (tokens 0 1 | 2 3), one vector a piece: half the 8-token tile's work, where
 * 8 slots made 3 or 4 tokens cost 8.
 * VNNI packs up to 8 tokens in 4 or 8 slots too, [k/8][slot][8] bytes of x as they
 * are (tokens in order), and after the scales each group's 128 * sum(x) per token.
 * One vpdpbusd takes a row's broadcast 8 bytes + 128 (u8, one xor) against 4 tokens,
 * and the offset comes off per token at the group's end. 5 to 8 tokens: two such
 * vectors a piece, 1.20-1.26x the 8-lane tile (one matrix, one thread). A first
 * 4-slot tile that took 128 * sum(w) per row off as the 8-lane tile does, a second
 * pass over the group's weights, spent 40% of its time there (4 tokens, one matrix in
 * L2; minus_offset4 then summed each row in turn).
 * At each group's end every (row, token vector) is converted and scaled in float in
 * kernels.h's order: acc + (float)isum * (w_scale * x_scale).
 *
 * Rows go in blocks of 16 (the row_block) x YMM_T tokens: four 4-row tiles, each
 * transposed in registers into a (token, row) buffer, then each token's 16 results
 * as one 64-byte store (for the L1-set reason rows.h gives). A matrix's last rows
 * (fewer than 16) and groups that are not whole 16-byte pieces take q80_rows, with
 * the same results.
 */
#define LANES8 8      /* tokens per ymm */
#define YMM_NT 2     /* token vectors per tile */
#define YMM_T 32     /* tokens per block of 16 rows: two tiles of 2 vectors */
/* Fewer tokens go through q80_rows (same results). The tiles cost the same for 1 to 4
 * tokens and for 5 to 8. The Intel host, a 7B forward pass at 2 threads
 * (tools/block_cost.py, each threshold's builds alternated), GEMM against q80_rows:
 * avx2 (4 slots) 2 tokens 0.97-1.11x, 3 1.44-1.56x, 4 1.84-1.85x; VNNI (4 slots)
 * 2 tokens, 8 pairs of runs each: avxvnni 1.00-1.42x, avx512vnni 0.89-1.40x. */
#define YMM_MIN_T (!VNNI ? 3 : 2)

#define INLINE static inline __attribute__((always_inline))

static inline ptrdiff_t padded8(ptrdiff_t T) { return (T + LANES8 - 1) / LANES8 * LANES8; }

#define SLOTS4 4  /* pack8's slots for blocks of up to 4 tokens */

/* Token slots of a packed block */
static inline ptrdiff_t ymm_slots(ptrdiff_t T) { return T <= SLOTS4 ? SLOTS4 : padded8(T); }

/* Bytes of a packed block's activations, before their scales: avx2's pack8 holds x
 * and |x| */
static inline ptrdiff_t ymm_x_bytes(ptrdiff_t T, ptrdiff_t n) {
    return n * ymm_slots(T) * (!VNNI && T <= LANES8 ? 2 : 1);
}

/* Whether the GEMM takes a block of T tokens in groups of gs: the one rule for packing
 * and for the kernel */
static inline int ymm_takes(ptrdiff_t T, ptrdiff_t gs) { return T >= YMM_MIN_T && gs % 16 == 0; }

/* Whether a block of T tokens is packed in 8-byte pieces (pack8) */
static inline int ymm_pieces8(ptrdiff_t T) { return T <= LANES8; }

/* 0 where the GEMM does not take the block: the driver then packs nothing. The
 * scales, and VNNI's pack8 the offsets after them, take 4 bytes a group and slot. */
static size_t ymm_packed_bytes(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    if (!ymm_takes(T, gs)) return 0;
    return (size_t)ymm_x_bytes(T, n) + 4 * (size_t)(n / gs * ymm_slots(T)) * (VNNI && ymm_pieces8(T) ? 2 : 1);
}

/* Of avx2's 8 slots, slot s holds token PAIRED[s] (the order is its own inverse); of 4,
 * and of VNNI's, token s */
static const int8_t PAIRED[LANES8] = {0, 1, 4, 5, 2, 3, 6, 7};

/* T <= 8: avx2 [k/8][x, then |x|][slot][8] bytes in S = ymm_slots(T) slots, VNNI
 * [k/8][slot][8] bytes of x. Then the scales [group][token] in token order,
 * S a group; VNNI's then the offsets 128 * sum(x) [group][token], S a group (int32). */
static void pack8(const qllama_acts *x, void *buf) {
    ptrdiff_t T = x->T, n = x->n, S = ymm_slots(T), piece = (VNNI ? 1 : 2) * S * 8;
    ptrdiff_t ng = n / x->gs;
    uint8_t *b = (uint8_t *)buf;
    float *s = (float *)(b + ymm_x_bytes(T, n));
    memset(buf, 0, (size_t)ymm_x_bytes(T, n));
    for (ptrdiff_t t = 0; t < T; t++)
        for (ptrdiff_t k8 = 0; k8 < n / 8; k8++) {
            uint8_t *p = b + k8 * piece + (!VNNI && S == LANES8 ? PAIRED[t] : t) * 8;
            const int8_t *q = x->q + t * n + 8 * k8;
            memcpy(p, q, 8);
            if (!VNNI)
                for (int i = 0; i < 8; i++) p[S * 8 + i] = (uint8_t)(q[i] < 0 ? -q[i] : q[i]);
        }
    qllama_pack_scales(x, S, s);
    if (VNNI) {  /* padding slots 0 */
        int32_t *c = (int32_t *)(s + ng * S);
        memset(c, 0, sizeof(int32_t) * (size_t)(ng * S));
        for (ptrdiff_t t = 0; t < T; t++) q80_offsets(x->q + t * n, ng, x->gs, c + t, S);
    }
}

/* VNNI's unsigned side is the activations' (x + 128) in 8 token lanes, the weights'
 * (w + 128) for pack8's blocks; avx2 takes them as they are */
static void ymm_pack(const qllama_acts *x, void *buf) {
    if (ymm_pieces8(x->T))
        pack8(x, buf);
    else
        qllama_pack_tokens(x, LANES8, VNNI ? 0x80808080u : 0, buf);
}

INLINE __m256i bcast4_8(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

#if VNNI
/* -128 * sum(w) of one group of each of the 4 rows at w (row stride n), exact. The
 * four rows side by side: one row's loop after another's ran the 8-lane tile 0.59x
 * as fast (avxvnni, 8 tokens, one matrix) */
INLINE __m128i minus_offset4(const int8_t *w, ptrdiff_t n, ptrdiff_t gs) {
    const __m256i ones = _mm256_set1_epi8(1);
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
    ptrdiff_t k = 0;
    for (; k + 32 <= gs; k += 32) {
        DPBUSD_IN(c0, ones, _mm256_loadu_si256((const __m256i *)(w + k)));
        DPBUSD_IN(c1, ones, _mm256_loadu_si256((const __m256i *)(w + n + k)));
        DPBUSD_IN(c2, ones, _mm256_loadu_si256((const __m256i *)(w + 2 * n + k)));
        DPBUSD_IN(c3, ones, _mm256_loadu_si256((const __m256i *)(w + 3 * n + k)));
    }
    if (k < gs) {  /* 16 bytes left (gs 16, 48, ...) */
#define HALF(r) _mm256_inserti128_si256(_mm256_setzero_si256(),                    \
                                       _mm_loadu_si128((const __m128i *)(w + (r) * n + k)), 0)
        DPBUSD_IN(c0, ones, HALF(0));
        DPBUSD_IN(c1, ones, HALF(1));
        DPBUSD_IN(c2, ones, HALF(2));
        DPBUSD_IN(c3, ones, HALF(3));
#undef HALF
    }
    return _mm_sub_epi32(_mm_setzero_si128(), _mm_slli_epi32(sum4(c0, c1, c2, c3), 7));
}
#endif

/* kernels.h's step at a group's end, lane by lane: f + (float)isum * (ws * xs) */
INLINE __m256 scale_add(__m256 f, __m256i isum, __m256 ws, __m256 xs) {
    return _mm256_add_ps(f, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(ws, xs)));
}

/* A group's 8 int32 sums of one row (scale ws) into f */
INLINE void scale_add8(float *f, __m256i isum, float ws, __m256 xs) {
    _mm256_storeu_ps(f, scale_add(_mm256_loadu_ps(f), isum, _mm256_set1_ps(ws), xs));
}

/* 4 rows at w (row stride n) x NT token vectors starting at the packed bytes px and
 * scales psx (row stride Tp) into o, (row, vector, lane). */
INLINE void ymm_gemm4(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                  const uint8_t *px, const float *psx, ptrdiff_t Tp, float *o, const int NT) {
    ptrdiff_t ng = n / gs, g4 = gs / 4;
    memset(o, 0, sizeof(float) * 4 * NT * LANES8);
#if !VNNI
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    for (ptrdiff_t g = 0; g < ng; g++) {
        const uint8_t *xg = px + g * g4 * Tp * 4;
        const int8_t *wg = w + g * gs;
        __m256i a[4][YMM_NT];
#if VNNI
        int32_t start[4];
        _mm_storeu_si128((__m128i *)start, minus_offset4(wg, n, gs));
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < NT; j++) a[r][j] = _mm256_set1_epi32(start[r]);
#else
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < NT; j++) a[r][j] = _mm256_setzero_si256();
#endif
#if VNNI
        if (NT == 1) {  /* two sets of accumulators; g4 is even (gs a multiple of 16) */
            __m256i b[4];
            for (int r = 0; r < 4; r++) b[r] = _mm256_setzero_si256();
            for (ptrdiff_t k4 = 0; k4 < g4; k4 += 2) {
                __m256i x0 = _mm256_loadu_si256((const __m256i *)(xg + k4 * Tp * 4));
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(xg + (k4 + 1) * Tp * 4));
                for (int r = 0; r < 4; r++) {
                    DPBUSD_IN(a[r][0], x0, bcast4_8(wg + r * n + 4 * k4));
                    DPBUSD_IN(b[r], x1, bcast4_8(wg + r * n + 4 * k4 + 4));
                }
            }
            for (int r = 0; r < 4; r++) a[r][0] = _mm256_add_epi32(a[r][0], b[r]);
        } else
#endif
        for (ptrdiff_t k4 = 0; k4 < g4; k4++) {
            __m256i xv[YMM_NT];
            for (int j = 0; j < NT; j++)
                xv[j] = _mm256_loadu_si256((const __m256i *)(xg + (k4 * Tp + LANES8 * j) * 4));
            for (int r = 0; r < 4; r++) {
                __m256i wb = bcast4_8(wg + r * n + 4 * k4);
#if VNNI
                for (int j = 0; j < NT; j++) DPBUSD_IN(a[r][j], xv[j], wb);
#else
                __m256i aw = _mm256_abs_epi8(wb);
                for (int j = 0; j < NT; j++) {
                    __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv[j], wb));
                    a[r][j] = _mm256_add_epi32(a[r][j], _mm256_madd_epi16(p, ones));
                }
                /* no broadcast moves above this: gcc would start all four rows at once
                 * and spill accumulators to the stack */
                __asm__ volatile("" ::: "memory");
#endif
            }
        }
        for (int j = 0; j < NT; j++) {
            __m256 xs = _mm256_loadu_ps(psx + g * Tp + LANES8 * j);
            for (int r = 0; r < 4; r++)
                scale_add8(o + (r * NT + j) * LANES8, a[r][j], ws[r * ng + g], xs);
        }
    }
}

static void ymm_gemm4x1(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                    const uint8_t *px, const float *psx, ptrdiff_t Tp, float *o) {
    ymm_gemm4(w, ws, n, gs, px, psx, Tp, o, 1);
}
static void ymm_gemm4x2(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                    const uint8_t *px, const float *psx, ptrdiff_t Tp, float *o) {
    ymm_gemm4(w, ws, n, gs, px, psx, Tp, o, 2);
}

INLINE __m256i bcast8_8(const int8_t *p) {
    int64_t v;
    memcpy(&v, p, 8);
    return _mm256_set1_epi64x(v);
}

#if !VNNI
/* One row's 8 bytes against both token vectors: |w| . sign(w)x, or where the rows hold
 * no -128, |x| . sign(x)w, which spares the |w| (sign(x)w of -128 would be 128). The
 * adds are written in place because gcc, left to itself, kept copies of the
 * accumulators and spilled some. */
#define ROW8(clean, r, A0, A1)                                                         \
    do {                                                                               \
        __m256i wb = bcast8_8(wg + (r) * n + 8 * k8), p0, p1;                          \
        if (clean) {                                                                   \
            p0 = _mm256_maddubs_epi16(ax0, _mm256_sign_epi8(wb, x0));                  \
            p1 = _mm256_maddubs_epi16(ax1, _mm256_sign_epi8(wb, x1));                  \
        } else {                                                                       \
            __m256i aw = _mm256_abs_epi8(wb);                                          \
            p0 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x0, wb));                   \
            p1 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x1, wb));                   \
        }                                                                              \
        __asm__("vpaddd %1, %0, %0" : "+x"(A0) : "x"(_mm256_madd_epi16(p0, ones)));    \
        __asm__("vpaddd %1, %0, %0" : "+x"(A1) : "x"(_mm256_madd_epi16(p1, ones)));    \
    } while (0)

/* The 8 token rows' 8 bytes from k8 on: x0, x1, and with `clean` their |x| */
#define K8_BODY(clean)                                                                 \
    for (ptrdiff_t k8 = 0; k8 < g8; k8++) {                                            \
        const uint8_t *xk = xg + k8 * 2 * LANES8 * 8;                                  \
        __m256i x0 = _mm256_loadu_si256((const __m256i *)xk);                          \
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xk + 32)), ax0 = x0, ax1 = x1; \
        if (clean) {                                                                   \
            ax0 = _mm256_loadu_si256((const __m256i *)(xk + 64));                      \
            ax1 = _mm256_loadu_si256((const __m256i *)(xk + 96));                      \
        }                                                                              \
        ROW8(clean, 0, a00, a01);                                                      \
        ROW8(clean, 1, a10, a11);                                                      \
        ROW8(clean, 2, a20, a21);                                                      \
        ROW8(clean, 3, a30, a31);                                                      \
    }

/* 4 rows at w (row stride n) x the 8 tokens packed by pack8 at px (scales psx) into
 * o, (row, token); rows_clean says whether the rows hold no -128. */
static void ymm_gemm4x8(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                        const uint8_t *px, const float *psx, float *o, int rows_clean) {
    ptrdiff_t ng = n / gs, g8 = gs / 8;
    const __m256i ones = _mm256_set1_epi16(1);
    memset(o, 0, sizeof(float) * 4 * LANES8);
    for (ptrdiff_t g = 0; g < ng; g++) {
        const uint8_t *xg = px + g * g8 * 2 * LANES8 * 8;
        const int8_t *wg = w + g * gs;
        __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00;
        __m256i a20 = a00, a21 = a00, a30 = a00, a31 = a00;
        if (rows_clean)  /* two loops, each with its `clean` a constant */
            K8_BODY(1)
        else
            K8_BODY(0)
        __m256i isum[4] = {_mm256_hadd_epi32(a00, a01), _mm256_hadd_epi32(a10, a11),
                           _mm256_hadd_epi32(a20, a21), _mm256_hadd_epi32(a30, a31)};
        __m256 xs = _mm256_loadu_ps(psx + g * LANES8);
        for (int r = 0; r < 4; r++) scale_add8(o + r * LANES8, isum[r], ws[r * ng + g], xs);
    }
}

#undef K8_BODY
#undef ROW8
#endif

/* The same for up to 4 tokens, packed in 4 slots: one vector (x0, tokens 0 1 | 2 3)
 * per 8-byte piece, half the 8-token tile's work. VNNI's: one vpdpbusd a row and
 * piece, of w + 128 (u8) and x, alternate pieces to two sets of accumulators (a, b)
 * as in ymm_gemm4. */
#if VNNI
/* a row's 8 bytes at p, broadcast, + 128 (u8) */
#define W128(p) _mm256_xor_si256(bcast8_8(p), flip)
#define K4_BODY(clean)                                                                 \
    for (ptrdiff_t k8 = 0; k8 < g8; k8 += 2) {                                         \
        const uint8_t *xk = xg + k8 * SLOTS4 * 8;                                      \
        __m256i x0 = _mm256_loadu_si256((const __m256i *)xk);                          \
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xk + SLOTS4 * 8));           \
        DPBUSD_IN(a0, W128(wg + 8 * k8), x0);                                          \
        DPBUSD_IN(b0, W128(wg + 8 * k8 + 8), x1);                                      \
        DPBUSD_IN(a1, W128(wg + n + 8 * k8), x0);                                      \
        DPBUSD_IN(b1, W128(wg + n + 8 * k8 + 8), x1);                                  \
        DPBUSD_IN(a2, W128(wg + 2 * n + 8 * k8), x0);                                  \
        DPBUSD_IN(b2, W128(wg + 2 * n + 8 * k8 + 8), x1);                              \
        DPBUSD_IN(a3, W128(wg + 3 * n + 8 * k8), x0);                                  \
        DPBUSD_IN(b3, W128(wg + 3 * n + 8 * k8 + 8), x1);                              \
    }
#else
#define ROW4(clean, r, A)                                                              \
    do {                                                                               \
        __m256i wb = bcast8_8(wg + (r) * n + 8 * k8);                                  \
        __m256i p = clean ? _mm256_maddubs_epi16(ax0, _mm256_sign_epi8(wb, x0))        \
                          : _mm256_maddubs_epi16(_mm256_abs_epi8(wb), _mm256_sign_epi8(x0, wb)); \
        __asm__("vpaddd %1, %0, %0" : "+x"(A) : "x"(_mm256_madd_epi16(p, ones)));      \
    } while (0)

#define K4_BODY(clean)                                                                 \
    for (ptrdiff_t k8 = 0; k8 < g8; k8++) {                                            \
        const uint8_t *xk = xg + k8 * 2 * SLOTS4 * 8;                                  \
        __m256i x0 = _mm256_loadu_si256((const __m256i *)xk), ax0 = x0;                \
        if (clean) ax0 = _mm256_loadu_si256((const __m256i *)(xk + 32));               \
        ROW4(clean, 0, a0);                                                            \
        ROW4(clean, 1, a1);                                                            \
        ROW4(clean, 2, a2);                                                            \
        ROW4(clean, 3, a3);                                                            \
    }
#endif

/* The 4-slot tiles' group-end layout: vphaddd of rows (0, 1) and of (2, 3) gives
 * [r0t0 r0t1 r1t0 r1t1 | r0t2 r0t3 r1t2 r1t3]. 4 tokens' values at p in that order: */
#define PAIRS4 _mm256_setr_epi32(0, 1, 0, 1, 2, 3, 2, 3)
INLINE __m256 pairs4_ps(const float *p) {
    return _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)), PAIRS4);
}
#if VNNI
INLINE __m256i pairs4_epi32(const int32_t *p) {
    return _mm256_permutevar8x32_epi32(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)p)), PAIRS4);
}
#endif
/* ... rows 0..3's scales of group g (row stride ng), for rows (0, 1) and (2, 3) */
INLINE void row_scales4(const float *ws, ptrdiff_t ng, ptrdiff_t g, __m256 *s01, __m256 *s23) {
    __m256 wv = _mm256_castps128_ps256(_mm_setr_ps(ws[g], ws[ng + g], ws[2 * ng + g], ws[3 * ng + g]));
    *s01 = _mm256_permutevar8x32_ps(wv, _mm256_setr_epi32(0, 0, 1, 1, 0, 0, 1, 1));
    *s23 = _mm256_permutevar8x32_ps(wv, _mm256_setr_epi32(2, 2, 3, 3, 2, 2, 3, 3));
}
/* ... and the sums f01, f23 so laid out to rows 0..3 of 4 tokens at o (row stride 8) */
INLINE void store_rows4(float *o, __m256 f01, __m256 f23) {
    const __m256i rows = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    f01 = _mm256_permutevar8x32_ps(f01, rows);
    f23 = _mm256_permutevar8x32_ps(f23, rows);
    _mm_storeu_ps(o + 0 * LANES8, _mm256_castps256_ps128(f01));
    _mm_storeu_ps(o + 1 * LANES8, _mm256_extractf128_ps(f01, 1));
    _mm_storeu_ps(o + 2 * LANES8, _mm256_castps256_ps128(f23));
    _mm_storeu_ps(o + 3 * LANES8, _mm256_extractf128_ps(f23, 1));
}

/* 4 rows at w x the up to 4 tokens pack8 packed in 4 slots, into o (row, token; 8
 * floats a row, tokens 4..7 zero). Each group's sums of rows (0, 1) and (2, 3) come
 * out of vphaddd in pairs4's order (VNNI's less the tokens' 128 * sum(x)), and are
 * scaled and added (scale_add) in that order. rows_clean is avx2's, as in
 * ymm_gemm4x8. */
static void ymm_gemm4x4(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                        const uint8_t *px, const float *psx, float *o, int rows_clean) {
    ptrdiff_t ng = n / gs, g8 = gs / 8;
#if VNNI
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    const int32_t *pcx = (const int32_t *)(psx + ng * SLOTS4);
#else
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    __m256 f01 = _mm256_setzero_ps(), f23 = f01;
    for (ptrdiff_t g = 0; g < ng; g++) {
        const uint8_t *xg = px + g * g8 * (VNNI ? 1 : 2) * SLOTS4 * 8;
        const int8_t *wg = w + g * gs;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
#if VNNI
        (void)rows_clean;
        __m256i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        K4_BODY(1)
        a0 = _mm256_add_epi32(a0, b0), a1 = _mm256_add_epi32(a1, b1);
        a2 = _mm256_add_epi32(a2, b2), a3 = _mm256_add_epi32(a3, b3);
        __m256i off = pairs4_epi32(pcx + g * SLOTS4);
        __m256i i01 = _mm256_sub_epi32(_mm256_hadd_epi32(a0, a1), off);
        __m256i i23 = _mm256_sub_epi32(_mm256_hadd_epi32(a2, a3), off);
#else
        if (rows_clean)
            K4_BODY(1)
        else
            K4_BODY(0)
        __m256i i01 = _mm256_hadd_epi32(a0, a1), i23 = _mm256_hadd_epi32(a2, a3);
#endif
        __m256 xs = pairs4_ps(psx + g * SLOTS4), s01, s23;
        row_scales4(ws, ng, g, &s01, &s23);
        f01 = scale_add(f01, i01, s01, xs);
        f23 = scale_add(f23, i23, s23, xs);
    }
    store_rows4(o, f01, f23);
    for (int r = 0; r < 4; r++) _mm_storeu_ps(o + r * LANES8 + 4, _mm_setzero_ps());
}
#undef K4_BODY
#undef ROW4

#if VNNI
/* VNNI's 5 to 8 tokens, in 8 slots (tokens in order): two vectors of 4 tokens a piece,
 * each as in ymm_gemm4x4, one broadcast and xor for both; into o (row, token). */
static void ymm_gemm4x8v(const int8_t *w, const float *ws, ptrdiff_t n, ptrdiff_t gs,
                         const uint8_t *px, const float *psx, float *o) {
    ptrdiff_t ng = n / gs, g8 = gs / 8;
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    const int32_t *pcx = (const int32_t *)(psx + ng * LANES8);
    __m256 f[2][2];  /* [token vector][rows 0 1, rows 2 3] */
    for (int j = 0; j < 2; j++) f[j][0] = f[j][1] = _mm256_setzero_ps();
    for (ptrdiff_t g = 0; g < ng; g++) {
        const uint8_t *xg = px + g * g8 * LANES8 * 8;
        const int8_t *wg = w + g * gs;
        __m256i a[4][2];
        for (int r = 0; r < 4; r++) a[r][0] = a[r][1] = _mm256_setzero_si256();
        for (ptrdiff_t k8 = 0; k8 < g8; k8++) {
            const uint8_t *xk = xg + k8 * LANES8 * 8;
            __m256i x0 = _mm256_loadu_si256((const __m256i *)xk);
            __m256i x1 = _mm256_loadu_si256((const __m256i *)(xk + SLOTS4 * 8));
            for (int r = 0; r < 4; r++) {
                __m256i wb = W128(wg + r * n + 8 * k8);
                DPBUSD_IN(a[r][0], wb, x0);
                DPBUSD_IN(a[r][1], wb, x1);
            }
        }
        __m256 s01, s23;
        row_scales4(ws, ng, g, &s01, &s23);
        for (int j = 0; j < 2; j++) {
            __m256i off = pairs4_epi32(pcx + g * LANES8 + SLOTS4 * j);
            __m256 xs = pairs4_ps(psx + g * LANES8 + SLOTS4 * j);
            f[j][0] = scale_add(f[j][0], _mm256_sub_epi32(_mm256_hadd_epi32(a[0][j], a[1][j]), off), s01, xs);
            f[j][1] = scale_add(f[j][1], _mm256_sub_epi32(_mm256_hadd_epi32(a[2][j], a[3][j]), off), s23, xs);
        }
    }
    for (int j = 0; j < 2; j++) store_rows4(o + SLOTS4 * j, f[j][0], f[j][1]);
}
#endif
#undef W128
#undef PAIRS4

#if !VNNI

/* Whether rows r..r+15 of m hold no -128 (weights quantized with scale max|w| / 127
 * never do), noted in m->row_notes (0 not yet known, 1 none, 2 some) on first sight,
 * or looked at each time without notes: a look before each tile ran 0.69-0.84x as
 * fast as none (tools/matmul_ab.sh). */
static int rows_clean(const qllama_matrix *m, ptrdiff_t r) {
    uint8_t *note = m->row_notes ? m->row_notes + r / 16 : NULL;
    int v = note ? __atomic_load_n(note, __ATOMIC_RELAXED) : 0;
    if (v == 0) {
        const int8_t *q = m->q + r * m->cols;
        __m256i lo = _mm256_set1_epi8(127);
        for (ptrdiff_t k = 0; k < 16 * m->cols; k += 32)  /* cols is a multiple of 16 */
            lo = _mm256_min_epi8(lo, _mm256_loadu_si256((const __m256i *)(q + k)));
        v = _mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, _mm256_set1_epi8(-128))) ? 2 : 1;
        if (note) __atomic_store_n(note, (uint8_t)v, __ATOMIC_RELAXED);
    }
    return v == 1;
}
#endif

/* A tile's 4 rows x 8 tokens at o (row stride `stride` floats) into bt (token-major,
 * 16 floats a token): bt[l][0..3] = rows 0..3 of token l, in registers. */
INLINE void transpose4x8(const float *o, ptrdiff_t stride, float *bt) {
    __m256 r0 = _mm256_loadu_ps(o), r1 = _mm256_loadu_ps(o + stride);
    __m256 r2 = _mm256_loadu_ps(o + 2 * stride), r3 = _mm256_loadu_ps(o + 3 * stride);
    __m256 a = _mm256_unpacklo_ps(r0, r1), b = _mm256_unpackhi_ps(r0, r1);  /* tokens 0 1 | 4 5 */
    __m256 c = _mm256_unpacklo_ps(r2, r3), d = _mm256_unpackhi_ps(r2, r3);  /* tokens 2 3 | 6 7 */
    __m256 t0 = _mm256_shuffle_ps(a, c, 0x44), t1 = _mm256_shuffle_ps(a, c, 0xee);
    __m256 t2 = _mm256_shuffle_ps(b, d, 0x44), t3 = _mm256_shuffle_ps(b, d, 0xee);
    _mm_storeu_ps(bt + 0 * 16, _mm256_castps256_ps128(t0));
    _mm_storeu_ps(bt + 1 * 16, _mm256_castps256_ps128(t1));
    _mm_storeu_ps(bt + 2 * 16, _mm256_castps256_ps128(t2));
    _mm_storeu_ps(bt + 3 * 16, _mm256_castps256_ps128(t3));
    _mm_storeu_ps(bt + 4 * 16, _mm256_extractf128_ps(t0, 1));
    _mm_storeu_ps(bt + 5 * 16, _mm256_extractf128_ps(t1, 1));
    _mm_storeu_ps(bt + 6 * 16, _mm256_extractf128_ps(t2, 1));
    _mm_storeu_ps(bt + 7 * 16, _mm256_extractf128_ps(t3, 1));
}

/* Rows r0..r1 (r0 a multiple of 16) in blocks of 16 rows x YMM_T tokens: each tile
 * transposed into a token-major block, then each token's 16 results stored as one
 * 64-byte piece (rows.h says why). */
static void ymm_q80_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                       float *out, ptrdiff_t out_stride) {
    ptrdiff_t T = x->T, Tp = padded8(T), n = m->cols, gs = m->gs, ng = n / gs;
    if (!ymm_takes(T, gs) || x->packed == NULL) {
        q80_rows(m, r0, r1, x, out, out_stride);
        return;
    }
    const uint8_t *px = (const uint8_t *)x->packed;
    const float *psx = (const float *)(px + ymm_x_bytes(T, n));
    float o[4 * YMM_NT * LANES8];  /* one 4-row tile: (row, token vector, lane) */
    float bt[YMM_T][16];           /* YMM_T tokens x 16 rows (padding tokens included) */
    for (ptrdiff_t r = r0; r < r1; r += 16) {
        if (r + 16 > r1) {  /* the matrix's last rows */
            q80_rows(m, r, r1, x, out, out_stride);
            break;
        }
#if VNNI
        int clean = 1;  /* unused: VNNI's products are exact for any row */
#else
        int clean = T <= LANES8 && rows_clean(m, r);
#endif
        for (ptrdiff_t t0 = 0; t0 < T; t0 += YMM_T) {
            ptrdiff_t tn = T - t0 < YMM_T ? T - t0 : YMM_T;
            for (int i = 0; i < 16; i += 4)
                for (ptrdiff_t t1 = 0; t1 < tn; t1 += YMM_NT * LANES8) {
                    int nt = tn - t1 > LANES8 ? 2 : 1;
                    if (T <= SLOTS4)  /* pack8's layout: the block is this one tile */
                        ymm_gemm4x4(m->q + (r + i) * n, m->s + (r + i) * ng, n, gs, px, psx, o, clean);
                    else if (T <= LANES8)
#if VNNI
                        ymm_gemm4x8v(m->q + (r + i) * n, m->s + (r + i) * ng, n, gs, px, psx, o);
#else
                        ymm_gemm4x8(m->q + (r + i) * n, m->s + (r + i) * ng, n, gs, px, psx, o, clean);
#endif
                    else
                    /* a tile's bytes start t0 + t1 tokens in: shift the packed base */
                    (nt == 2 ? ymm_gemm4x2 : ymm_gemm4x1)(m->q + (r + i) * n, m->s + (r + i) * ng, n, gs,
                                                  px + (t0 + t1) * 4, psx + t0 + t1, Tp, o);
                    for (int j = 0; j < nt; j++)
                        transpose4x8(o + j * LANES8, nt * LANES8, bt[t1 + j * LANES8] + i);
                }
            for (ptrdiff_t t = 0; t < tn; t++)
                memcpy(out + (t0 + t) * out_stride + r, bt[t], sizeof bt[t]);
        }
    }
}
