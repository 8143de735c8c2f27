/* GGUF block types, part of x86.c (every variant): one token through four weight rows
 * per pass, in kernels.h's order, straight from the mapped file. A pass takes 256
 * values (eight groups of 32: float lane j of the accumulator is group j) and shares
 * what depends on the token alone among its four rows: the activation sums a type's
 * offset or minimum needs (computed once per matmul input: block_share), and the
 * group scales xs.
 * Per group of a row:
 * - weights as unsigned bytes against signed activations, into int32 lanes:
 *   vpmaddubsw + vpmaddwd (avx2), vpdpbusd (VNNI). Nibbles and 6-bit values are
 *   unsigned already: a vpmaddubsw pair is at most 2 * 63 * 127, no saturation.
 *   q8_0 has signed weights: |w| against sign(w) x as decode.h does (avx2; a pair is
 *   at most 2 * 128 * 127 < 2^15), or (w + 128) . x less 128 * sum(x) (VNNI).
 * - offsets inside int16 pairs where they fit: q6_k's (q - 32) x as q x - 32 x
 *   (at most 16002 + 8128 per pair; VNNI: 32 x off the halves' int32 sums), q4_0's
 *   (q - 8) x likewise.
 * - the eight groups' int32 lanes summed exactly by one transposed reduction (sum8),
 *   then the integer scale products and the float ones, eight groups a vector.
 * Each pass prefetches the next four rows' bytes for its 256 values, as decode.h
 * does (the four rows are one contiguous stream here too), a quarter before each
 * row's step: all at the pass's start (where the compiler hoists them unless kept
 * apart), q8_0 from DRAM streamed 1.4x slower (4096 x 4096, Zen 4).
 * q8_0 alone goes one row at a time instead (q32_dotr with R = 1, no prefetch), each
 * row front to back, for decode.h's reason (four rows a pass are four DRAM streams):
 * 7B q8_0 decode 1.09x (avx2) and 1.03-1.18x (avx512vnni) of four rows, stories110M
 * 1.04x and 1.09x (Zen 4). Where one token reads rows side by side (m->decode_rows:
 * Intel, decode.h) q8_0 keeps the four rows a pass and their prefetch: on the Intel
 * Xeon host, 7B 1.54x and stories110M 1.72x of one row at a time (avx2, tools/ab.py).
 * q4_0 was no faster one row at a time (1.01x, 0.96x) and the k-quants slower
 * (0.85-0.93x): they load and unpack more per row, which four rows share.
 * A matrix's last rows (fewer than 4) go to generic.c's kernel; 32-value block types
 * whose rows end inside a pass take the pass with the missing groups' lanes kept.
 * A block of 2-7 tokens goes through the same steps with four rows' passes unpacked
 * once for all of them (kq_rows, q32_rows); 8 tokens and more put the tokens in the
 * vector lanes (blk_gemm: no reductions; 2.0-2.3x token by token on 64 tokens from
 * L3, about half the Q8_0 GEMMs' speed: kernels.h's per-group float steps remain).
 * f16 and bf16 rows are widened (F16C; bf16 a shift) into f32_dot4's order.
 */

#define BI static inline __attribute__((always_inline))

/* lane j = the exact sum of v[j]'s eight int32 lanes */
BI __m256i sum8(const __m256i v[8]) {
    __m256i u0 = sum4x2(v), u1 = sum4x2(v + 4);
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20),
                            _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* 32 values from 16 bytes of nibbles: low nibbles first (q4_0, q4_1) */
BI __m256i nibbles16(const uint8_t *p) {
    __m128i q = _mm_loadu_si128((const __m128i *)p), low = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), low), _mm_and_si128(q, low));
}

/* Bytes [at, at + len) of the four-row stream of the next pass (rows w + 4 rb on) into
 * L1, and of the pass PF_FAR ahead into L2 (decode.h) */
BI void prefetch_stream(const uint8_t *w, ptrdiff_t rb, ptrdiff_t at, ptrdiff_t len) {
    const char *p = (const char *)w + 4 * rb + at, *far = (const char *)w + 4 * rb * PF_FAR + at;
    for (ptrdiff_t o = 0; o < len; o += 64) {
        _mm_prefetch(p + o, _MM_HINT_T0);
        _mm_prefetch(far + o, _MM_HINT_T2);
    }
    __asm__ volatile("" ::: "memory");  /* not hoisted above the previous row's loads */
}

/* the fp16 at p widened (exactly) and broadcast */
BI __m256 f16_set1(const uint8_t *p) {
    return _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(qllama_le16(p))));
}

/* ---- k-quants: 256 values a block ---------------------------------------------- */

/* q4_k / q5_k 6-bit scales and mins (block_types.h's layout) as int32 lanes j */
BI void k_scales8(const uint8_t *s, __m256i *sc, __m256i *mn, const int paired) {
    uint32_t u0, u1, u2;
    memcpy(&u0, s, 4);
    memcpy(&u1, s + 4, 4);
    memcpy(&u2, s + 8, 4);
    uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | ((u0 >> 6) & 0x03030303u) << 4;
    uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | ((u1 >> 6) & 0x03030303u) << 4;
    __m128i s8 = _mm_set_epi32(0, 0, (int)sc_hi, (int)(u0 & 0x3f3f3f3fu));
    __m128i m8 = _mm_set_epi32(0, 0, (int)mn_hi, (int)(u1 & 0x3f3f3f3fu));
    if (paired) {  /* lanes 0, 2, 4, 6, 1, 3, 5, 7 as q4k_step1 leaves its sums */
        const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        s8 = _mm_shuffle_epi8(s8, order);
        m8 = _mm_shuffle_epi8(m8, order);
    }
    *sc = _mm256_cvtepu8_epi32(s8);
    *mn = _mm256_cvtepu8_epi32(m8);
}

/* A k-quant row's super-block unpacked (once for every token of a block): values as
 * unsigned bytes, group j in q[j]; q4_k / q5_k scales and mins of group j as int32
 * lanes (s[0], s[1]); q6_k's scales of the first halves of groups 0-3 then their
 * second halves (s[0]), the same for groups 4-7 (s[1]), as q6k_step reduces them. */
typedef struct {
    __m256i q[8], s[2];
    __m256 d, dmin;  /* broadcast */
} kq_block;

/* One token's 256 activations and what every row shares of them (sh): the group
 * sums (q4_k, q5_k: the mins' part) or q6_k's offset part, 32 times the sums of the
 * halves as kq_step reduces them (VNNI; groups 0-3, 4-7), or 32 x in int16 pairs
 * (avx2's q6_k, x32). */
typedef struct {
    __m256i x[8], x32[8], sh[2];
    __m256 xs;
} kq_acts;

BI void kq_unpack(const uint8_t *blk, kq_block *u, const int type) {
    const __m256i low = _mm256_set1_epi8(15);
    if (type == QLLAMA_Q6_K) {
        const __m256i top = _mm256_set1_epi8(0x30);
        for (int h = 0; h < 2; h++) {
            __m256i l0 = load32(blk + 64 * h), l1 = load32(blk + 64 * h + 32);
            __m256i qh = load32(blk + QLLAMA_Q6K_QH + 32 * h);
            u->q[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, low),
                                          _mm256_and_si256(_mm256_slli_epi16(qh, 4), top));
            u->q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, low),
                                              _mm256_and_si256(_mm256_slli_epi16(qh, 2), top));
            u->q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low),
                                              _mm256_and_si256(qh, top));
            u->q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low),
                                              _mm256_and_si256(_mm256_srli_epi16(qh, 2), top));
        }
        /* scales 0, 2, 4, 6, 1, 3, 5, 7 (then + 8): the halves as the reduction leaves them */
        const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
        __m128i sc = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(blk + QLLAMA_Q6K_SCALES)), order);
        u->s[0] = _mm256_cvtepi8_epi32(sc);
        u->s[1] = _mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8));
        u->d = f16_set1(blk + QLLAMA_Q6K_D);
        return;
    }
    const int q5 = type == QLLAMA_Q5_K;
    const ptrdiff_t qs = q5 ? QLLAMA_Q5K_QS : QLLAMA_Q4K_QS;
    const __m256i bit4 = _mm256_set1_epi8(16);
    __m256i qh = q5 ? load32(blk + QLLAMA_Q5K_QH) : _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        __m256i q = load32(blk + qs + 32 * c);
        __m256i lo = _mm256_and_si256(q, low), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
        if (q5) {  /* bit j of qh to bit 4 of sub-block j's values, j = 2c, 2c + 1 */
            lo = _mm256_or_si256(lo, _mm256_and_si256(
                2 * c <= 4 ? _mm256_slli_epi16(qh, 4 - 2 * c) : _mm256_srli_epi16(qh, 2 * c - 4), bit4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(
                2 * c + 1 <= 4 ? _mm256_slli_epi16(qh, 3 - 2 * c) : _mm256_srli_epi16(qh, 2 * c - 3), bit4));
        }
        u->q[2 * c] = lo;
        u->q[2 * c + 1] = hi;
    }
    k_scales8(blk + QLLAMA_Q4K_SCALES, &u->s[0], &u->s[1], 0);
    __m256 dm = _mm256_cvtph_ps(_mm_set1_epi32((int)(qllama_le16(blk) | qllama_le16(blk + 2) << 16)));
    u->d = _mm256_moveldup_ps(dm);
    u->dmin = _mm256_movehdup_ps(dm);
}

/* kq_acts's sh of the token's 256 activations at x */
BI void kq_shared(const int8_t *x, __m256i sh[2], const int type) {
    __m256i v[8];
    for (int j = 0; j < 8; j++) v[j] = dot_us(_mm256_set1_epi8(1), load32(x + 32 * j));
    if (type == QLLAMA_Q6_K)
        for (int g = 0; g < 2; g++) sh[g] = _mm256_slli_epi32(sum4x2(v + 4 * g), 5);
    else
        sh[0] = sum8(v);
}

/* q4_k's decode pairs groups 2c and 2c + 1 in one vector (q4k_step1): of one token's
 * super-block at x, [first 16 of x_2c | first 16 of x_2c+1] in pre[c], the last 16 in
 * pre[4 + c], then the group sums and the scales xs in the order that leaves them:
 * groups 0, 2, 4, 6, 1, 3, 5, 7 (pre[8], pre[9]) */
#define Q4K_PRE 10
BI void q4k_shared(const int8_t *x, const float *xs, __m256i *pre) {
    const __m256i order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    __m256i v[8];
    for (int c = 0; c < 4; c++) {
        __m256i lo = load32(x + 64 * c), hi = load32(x + 64 * c + 32);
        pre[c] = _mm256_permute2x128_si256(lo, hi, 0x20);
        pre[4 + c] = _mm256_permute2x128_si256(lo, hi, 0x31);
    }
    for (int j = 0; j < 8; j++) v[j] = dot_us(_mm256_set1_epi8(1), load32(x + 32 * j));
    pre[8] = _mm256_permutevar8x32_epi32(sum8(v), order);
    pre[9] = _mm256_castps_si256(_mm256_permutevar8x32_ps(_mm256_loadu_ps(xs), order));
}

/* acc (lanes: groups 0, 2, 4, 6, 1, 3, 5, 7) after one q4_k row's super-block at blk
 * against one token's (pre: q4k_shared). The nibbles of 16 bytes become both groups'
 * halves at once (a broadcast load, a shift of the upper 128 bits, a mask), so eight
 * groups leave four vectors to reduce, not eight: fewer shuffles than kq_step. */
BI __m256 q4k_step1(__m256 acc, const uint8_t *blk, const __m256i *pre) {
    const __m256i low = _mm256_set1_epi8(15), shift = _mm256_setr_epi64x(0, 0, 4, 4);
    __m256i v[4], sc, mn;
    for (int c = 0; c < 4; c++) {
        const uint8_t *q = blk + QLLAMA_Q4K_QS + 32 * c;
        __m256i a = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q));
        __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(q + 16)));
        a = _mm256_and_si256(_mm256_srlv_epi64(a, shift), low);
        b = _mm256_and_si256(_mm256_srlv_epi64(b, shift), low);
        v[c] = dot_us_acc(dot_us(a, pre[c]), b, pre[4 + c]);
    }
    k_scales8(blk + QLLAMA_Q4K_SCALES, &sc, &mn, 1);
    __m256 dm = _mm256_cvtph_ps(_mm_set1_epi32((int)(qllama_le16(blk) | qllama_le16(blk + 2) << 16)));
    __m256 xs = _mm256_castsi256_ps(pre[9]);
    __m256i isum = _mm256_mullo_epi32(sum4x2(v), sc), msum = _mm256_mullo_epi32(pre[8], mn);
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(_mm256_moveldup_ps(dm), xs)));
    return _mm256_sub_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(_mm256_movehdup_ps(dm), xs)));
}

/* What every row of a block type shares of one token, computed once per matmul input
 * (driver.h's prepare) instead of once per kernel call: per 256 activations c, at
 * SHARE * c, q4k_shared's vectors (SH_Q4K), the group sums (SH_XSUM: q4_1, q5_k, VNNI's
 * q8_0; a last c of k < 8 groups has lanes k..7 zero) and q6_k's (SH_Q6K: kq_shared).
 * The k-quant parts only where c is a whole super-block. */
enum { SH_Q4K = 0, SH_XSUM = Q4K_PRE, SH_Q6K = Q4K_PRE + 1, SHARE = Q4K_PRE + 3 };

static size_t block_shared_bytes(ptrdiff_t n) {
    return (size_t)((n + 255) / 256 * SHARE + 1) * sizeof(__m256i);  /* + 1: alignment */
}

static const void *block_share(const qllama_acts *x, void *buf) {
    __m256i *sh = (__m256i *)(((uintptr_t)buf + 31) & ~(uintptr_t)31);
    for (ptrdiff_t c = 0; 256 * c < x->n; c++) {
        const int8_t *q = x->q + 256 * c;
        const int k = x->n - 256 * c >= 256 ? 8 : (int)((x->n - 256 * c) / 32);
        __m256i v[8];
        for (int j = 0; j < 8; j++)
            v[j] = j < k ? dot_us(_mm256_set1_epi8(1), load32(q + 32 * j)) : _mm256_setzero_si256();
        sh[SHARE * c + SH_XSUM] = sum8(v);
        if (k == 8) {
            q4k_shared(q, x->s + 8 * c, sh + SHARE * c + SH_Q4K);
            kq_shared(q, sh + SHARE * c + SH_Q6K, QLLAMA_Q6_K);
        }
    }
    return sh;
}

/* sh from pre (block_share's, for one token) if not NULL */
BI void kq_acts_load(const int8_t *x, const float *xs, const __m256i *pre, kq_acts *a,
                     const int type) {
    for (int j = 0; j < 8; j++) a->x[j] = load32(x + 32 * j);
    a->xs = _mm256_loadu_ps(xs);
    if (type == QLLAMA_Q6_K && !VNNI)
        for (int j = 0; j < 8; j++) a->x32[j] = _mm256_maddubs_epi16(_mm256_set1_epi8(32), a->x[j]);
    else if (pre)
        a->sh[0] = pre[0], a->sh[1] = pre[1];
    else
        kq_shared(x, a->sh, type);
}

/* acc (lane j: group j) after one row's super-block against one token's */
BI __m256 kq_step(__m256 acc, const kq_block *u, const kq_acts *a, const int type) {
    __m256i v[8];
    if (type == QLLAMA_Q6_K) {  /* (q - 32) x; halves to lanes 0-3, 4-7 */
        __m256i t[2];
#if VNNI  /* q x by vpdpbusd, 32 x taken off the halves' sums: 1 instruction a group, not 3 */
        for (int j = 0; j < 8; j++) v[j] = dot_us(u->q[j], a->x[j]);
        for (int g = 0; g < 2; g++)  /* [first halves | second halves] of groups 4g..4g+3 */
            t[g] = _mm256_mullo_epi32(_mm256_sub_epi32(sum4x2(v + 4 * g), a->sh[g]), u->s[g]);
#else  /* in int16 pairs */
        for (int j = 0; j < 8; j++)
            v[j] = _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(u->q[j], a->x[j]), a->x32[j]),
                                     _mm256_set1_epi16(1));
        for (int g = 0; g < 2; g++)
            t[g] = _mm256_mullo_epi32(sum4x2(v + 4 * g), u->s[g]);
#endif
        __m256i isum = _mm256_add_epi32(_mm256_permute2x128_si256(t[0], t[1], 0x20),
                                        _mm256_permute2x128_si256(t[0], t[1], 0x31));
        return _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(u->d, a->xs)));
    }
    for (int j = 0; j < 8; j++) v[j] = dot_us(u->q[j], a->x[j]);
    __m256i isum = _mm256_mullo_epi32(sum8(v), u->s[0]), msum = _mm256_mullo_epi32(a->sh[0], u->s[1]);
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(u->d, a->xs)));
    return _mm256_sub_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(u->dmin, a->xs)));
}

BI ptrdiff_t kq_bytes(const int type) {
    return type == QLLAMA_Q4_K ? 144 : type == QLLAMA_Q5_K ? 176 : 210;
}

/* out[r] for the 4 k-quant rows at w, rb bytes apart: one token (pre: its block_share
 * layout, or NULL) */
BI void kq_dot4(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq, const float *xs,
                const __m256i *pre, float *out, const int type) {
    const ptrdiff_t bb = kq_bytes(type);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    if (type == QLLAMA_Q4_K && pre) {
        for (ptrdiff_t b = 0; b < n / 256; b++) {
            #pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                prefetch_stream(w, rb, (4 * b + r) * bb, bb);
                acc[r] = q4k_step1(acc[r], w + r * rb + b * bb, pre + SHARE * b + SH_Q4K);
            }
        }
        const __m256i group = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  /* lane j: group j */
        for (int r = 0; r < 4; r++) out[r] = hsum(_mm256_permutevar8x32_ps(acc[r], group));
        return;
    }
    for (ptrdiff_t b = 0; b < n / 256; b++) {
        kq_acts a;
        kq_acts_load(xq + 256 * b, xs + 8 * b,
                     pre ? pre + SHARE * b + (type == QLLAMA_Q6_K ? SH_Q6K : SH_XSUM) : NULL, &a, type);
        #pragma GCC unroll 4  /* acc[r] in registers */
        for (int r = 0; r < 4; r++) {
            prefetch_stream(w, rb, (4 * b + r) * bb, bb);
            kq_block u;
            kq_unpack(w + r * rb + b * bb, &u, type);
            acc[r] = kq_step(acc[r], &u, &a, type);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = hsum(acc[r]);
}

/* A few tokens (batched decode; blk_gemm takes 8 and more): four rows' super-blocks
 * unpacked once for up to KQ_T tokens, their accumulators in L1 meanwhile; the same
 * steps as kq_dot4's. One token: kq_dot4 with what rows share from block_share. */
#define KQ_T 8

/* Four rows' results for tn tokens: out[t * out_stride + i] = the lanes of acc[t][i]
 * summed (kernels.h's tree), for the token-block paths of kq_rows and q32_rows. */
BI void store_tokens4(__m256 acc[][4], ptrdiff_t tn, float *out, ptrdiff_t out_stride) {
    for (ptrdiff_t t = 0; t < tn; t++) {
        float o[4];
        for (int i = 0; i < 4; i++) o[i] = hsum(acc[t][i]);
        memcpy(out + t * out_stride, o, sizeof o);
    }
}

BI void kq_rows(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                float *out, ptrdiff_t out_stride, const int type) {
    const ptrdiff_t n = m->cols, bb = kq_bytes(type), rb = n / 256 * bb;
    ptrdiff_t r = r0;
    if (x->T == 1) {  /* what rows share of the token: block_share's, once a matmul input */
        const __m256i *sh = x->shared;
        for (; r + 4 <= r1; r += 4) {
            float o[4];
            kq_dot4(m->blocks + r * rb, rb, n, x->q, x->s, sh, o, type);
            memcpy(out + r, o, sizeof o);
        }
        if (r < r1) qllama_block_matmul_ref(m, r, r1, x, out, out_stride);
        return;
    }
    for (; r + 4 <= r1; r += 4)
        for (ptrdiff_t t0 = 0; t0 < x->T; t0 += KQ_T) {
            const ptrdiff_t tn = x->T - t0 < KQ_T ? x->T - t0 : KQ_T;
            const uint8_t *w = m->blocks + r * rb;
            __m256 acc[KQ_T][4];
            for (ptrdiff_t t = 0; t < tn; t++)
                for (int i = 0; i < 4; i++) acc[t][i] = _mm256_setzero_ps();
            for (ptrdiff_t b = 0; b < n / 256; b++) {
                if (t0 == 0) prefetch_stream(w, rb, 4 * bb * b, 4 * bb);
                kq_block u[4];
                for (int i = 0; i < 4; i++) kq_unpack(w + i * rb + b * bb, &u[i], type);
                for (ptrdiff_t t = 0; t < tn; t++) {
                    kq_acts a;
                    kq_acts_load(x->q + (t0 + t) * n + 256 * b, x->s + (t0 + t) * (n / 32) + 8 * b, NULL,
                                 &a, type);
                    for (int i = 0; i < 4; i++) acc[t][i] = kq_step(acc[t][i], &u[i], &a, type);
                }
            }
            store_tokens4(acc, tn, out + t0 * out_stride + r, out_stride);
        }
    if (r < r1) qllama_block_matmul_ref(m, r, r1, x, out, out_stride);
}

/* ---- 32-value blocks: eight a pass ------------------------------------------------- */

/* the fp16 at p + 0, bb, ..., (k - 1) bb widened, lanes k..7 zero */
BI __m256 f16_gather8(const uint8_t *p, ptrdiff_t bb, const int k) {
    __m128i h = _mm_setzero_si128();
#define LANE(j) if (j < k) h = _mm_insert_epi16(h, qllama_le16(p + (j) * bb), j);
    LANE(0) LANE(1) LANE(2) LANE(3) LANE(4) LANE(5) LANE(6) LANE(7)
#undef LANE
    return _mm256_cvtph_ps(h);
}

/* Eight blocks (a pass) of a q8_0, q4_0 or q4_1 row unpacked: values (q8_0: VNNI's
 * w + 128, else |w| and w for the sign) and fp16 scales widened, lanes k..7 zero. */
typedef struct {
    __m256i q[8], w[8];
    __m256 d, m;
} q32_block;

/* One token's activations of a pass and what rows share of them: group sums (q4_1;
 * q8_0 with VNNI: the + 128's part), 8 x in int16 pairs (q4_0: the offset's part). */
typedef struct {
    __m256i x[8], x8[8], xsum;
    __m256 xs;
} q32_acts;

BI ptrdiff_t q32_bytes(const int type) {
    return type == QLLAMA_GQ8_0 ? 34 : type == QLLAMA_Q4_0 ? 18 : 20;
}

BI void q32_unpack(const uint8_t *blk, q32_block *u, const int type, const int k) {
    const ptrdiff_t bb = q32_bytes(type);
    for (int j = 0; j < 8; j++) {
        const uint8_t *p = blk + j * bb;
        if (j >= k) {
            u->q[j] = u->w[j] = _mm256_setzero_si256();
        } else if (type == QLLAMA_GQ8_0) {
            u->w[j] = load32(p + 2);
            u->q[j] = VNNI ? _mm256_xor_si256(u->w[j], _mm256_set1_epi8((char)0x80))
                           : _mm256_abs_epi8(u->w[j]);
        } else {
            u->q[j] = nibbles16(p + (type == QLLAMA_Q4_0 ? 2 : 4));
        }
    }
    u->d = f16_gather8(blk, bb, k);
    if (type == QLLAMA_Q4_1) u->m = f16_gather8(blk + 2, bb, k);
}

/* xsum from pre (block_share's, for one token) if not NULL */
BI void q32_acts_load(const int8_t *x, const float *xs, const __m256i *pre, q32_acts *a,
                      const int type, const int k) {
    for (int j = 0; j < 8; j++) a->x[j] = j < k ? load32(x + 32 * j) : _mm256_setzero_si256();
    if (k == 8) {
        a->xs = _mm256_loadu_ps(xs);
    } else {
        float xsk[8] = {0};
        for (int j = 0; j < k; j++) xsk[j] = xs[j];
        a->xs = _mm256_loadu_ps(xsk);
    }
    if (type == QLLAMA_Q4_1 || (type == QLLAMA_GQ8_0 && VNNI)) {  /* the types that take it */
        if (pre) {
            a->xsum = *pre;
        } else {
            __m256i v[8];
            for (int j = 0; j < 8; j++) v[j] = dot_us(_mm256_set1_epi8(1), a->x[j]);
            a->xsum = sum8(v);
        }
    }
    if (type == QLLAMA_Q4_0)
        for (int j = 0; j < 8; j++) a->x8[j] = _mm256_maddubs_epi16(_mm256_set1_epi8(8), a->x[j]);
}

/* acc after one row's pass against one token's; lanes k..7 kept */
BI __m256 q32_step(__m256 acc, const q32_block *u, const q32_acts *a, const int type, const int k) {
    const __m256i one16 = _mm256_set1_epi16(1);
    __m256i v[8];
    for (int j = 0; j < 8; j++) {
        if (type == QLLAMA_GQ8_0 && !VNNI)  /* |w| . sign(w) x */
            v[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(u->q[j], _mm256_sign_epi8(a->x[j], u->w[j])), one16);
        else if (type == QLLAMA_Q4_0)
            v[j] = _mm256_madd_epi16(_mm256_sub_epi16(_mm256_maddubs_epi16(u->q[j], a->x[j]), a->x8[j]), one16);
        else
            v[j] = dot_us(u->q[j], a->x[j]);
    }
    __m256i isum = sum8(v);
    if (type == QLLAMA_GQ8_0 && VNNI)  /* (w + 128) . x - 128 sum(x) */
        isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(a->xsum, 7));
    __m256 r = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(u->d, a->xs)));
    if (type == QLLAMA_Q4_1)
        r = _mm256_add_ps(r, _mm256_mul_ps(_mm256_cvtepi32_ps(a->xsum), _mm256_mul_ps(u->m, a->xs)));
    if (k < 8)
        r = _mm256_blendv_ps(acc, r, _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))));
    return r;
}

/* One pass of k <= 8 groups (g0 on) of the 4 rows at w into acc, one token; a pass
 * of k < 8 (a row's end) reads only its k blocks. */
BI void q32_pass(const uint8_t *w, ptrdiff_t rb, ptrdiff_t g0, const int8_t *xq, const float *xs,
                 const __m256i *pre, __m256 acc[4], const int type, const int k, const int R) {
    const ptrdiff_t bb = q32_bytes(type);
    q32_acts a;
    q32_acts_load(xq + 32 * g0, xs + g0, pre ? pre + SHARE * (g0 / 8) + SH_XSUM : NULL, &a, type, k);
    #pragma GCC unroll 4  /* acc[r] in registers */
    for (int r = 0; r < R; r++) {
        if (R == 4) prefetch_stream(w, rb, 4 * bb * g0 + r * bb * k, bb * k);
        q32_block u;
        q32_unpack(w + r * rb + g0 * bb, &u, type, k);
        acc[r] = q32_step(acc[r], &u, &a, type, k);
    }
}

/* out[r] for the R (1 or 4) rows at w of q8_0, q4_0 or q4_1 (type); pre: block_share's
 * or NULL */
BI void q32_dotr(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq, const float *xs,
                 const __m256i *pre, float *out, const int type, const int R) {
    const ptrdiff_t ng = n / 32;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    ptrdiff_t g0 = 0;
    for (; g0 + 8 <= ng; g0 += 8) q32_pass(w, rb, g0, xq, xs, pre, acc, type, 8, R);
    if (g0 < ng) q32_pass(w, rb, g0, xq, xs, pre, acc, type, (int)(ng - g0), R);
    for (int r = 0; r < R; r++) out[r] = hsum(acc[r]);
}

/* A few tokens: as kq_rows, four rows' passes unpacked once for up to KQ_T tokens. */
BI void q32_tokens_pass(const uint8_t *w, ptrdiff_t rb, ptrdiff_t g0, const qllama_acts *x,
                        ptrdiff_t t0, ptrdiff_t tn, __m256 acc[][4], const int type, const int k) {
    const ptrdiff_t bb = q32_bytes(type), n = x->n;
    if (t0 == 0) prefetch_stream(w, rb, 4 * bb * g0, 4 * bb * k);
    q32_block u[4];
    for (int i = 0; i < 4; i++) q32_unpack(w + i * rb + g0 * bb, &u[i], type, k);
    for (ptrdiff_t t = 0; t < tn; t++) {
        q32_acts a;
        q32_acts_load(x->q + (t0 + t) * n + 32 * g0, x->s + (t0 + t) * (n / 32) + g0, NULL, &a, type,
                      k);
        for (int i = 0; i < 4; i++) acc[t][i] = q32_step(acc[t][i], &u[i], &a, type, k);
    }
}

BI void q32_rows(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                 float *out, ptrdiff_t out_stride, const int type) {
    const ptrdiff_t n = m->cols, ng = n / 32, rb = ng * q32_bytes(type);
    ptrdiff_t r = r0;
    if (x->T == 1) {  /* the group sums rows share: block_share's (as kq_rows) */
        if (type == QLLAMA_GQ8_0 && m->decode_rows != 8) {  /* one stream, as decode.h's */
            for (; r < r1; r++)
                q32_dotr(m->blocks + r * rb, rb, n, x->q, x->s, x->shared, out + r, type, 1);
            return;
        }
        for (; r + 4 <= r1; r += 4)
            q32_dotr(m->blocks + r * rb, rb, n, x->q, x->s, x->shared, out + r, type, 4);
        if (r < r1) qllama_block_matmul_ref(m, r, r1, x, out, out_stride);
        return;
    }
    for (; r + 4 <= r1; r += 4)
        for (ptrdiff_t t0 = 0; t0 < x->T; t0 += KQ_T) {
            const ptrdiff_t tn = x->T - t0 < KQ_T ? x->T - t0 : KQ_T;
            const uint8_t *w = m->blocks + r * rb;
            __m256 acc[KQ_T][4];
            for (ptrdiff_t t = 0; t < tn; t++)
                for (int i = 0; i < 4; i++) acc[t][i] = _mm256_setzero_ps();
            ptrdiff_t g0 = 0;
            for (; g0 + 8 <= ng; g0 += 8) q32_tokens_pass(w, rb, g0, x, t0, tn, acc, type, 8);
            if (g0 < ng) q32_tokens_pass(w, rb, g0, x, t0, tn, acc, type, (int)(ng - g0));
            store_tokens4(acc, tn, out + t0 * out_stride + r, out_stride);
        }
    if (r < r1) qllama_block_matmul_ref(m, r, r1, x, out, out_stride);
}

/* ---- f16, bf16: widened exactly, then f32_dot4's order ------------------------------ */

BI __m256 widen8(const uint8_t *p, const int bf) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return bf ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
              : _mm256_cvtph_ps(h);
}

/* out[r] = w_r . x for the 4 rows of n halves at w (bf: bf16, else f16) */
BI void half_dot4(const uint8_t *w, ptrdiff_t n, const float *x, float *out, const int bf) {
    const ptrdiff_t rb = 2 * n;
    __m256 a[4], b[4];
    for (int r = 0; r < 4; r++) a[r] = b[r] = _mm256_setzero_ps();
    ptrdiff_t j = 0;
    for (; j + 16 <= n; j += 16) {
        prefetch_stream(w, rb, 8 * j, 128);
        __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
        for (int r = 0; r < 4; r++) {
            a[r] = _mm256_fmadd_ps(widen8(w + r * rb + 2 * j, bf), x0, a[r]);
            b[r] = _mm256_fmadd_ps(widen8(w + r * rb + 2 * j + 16, bf), x1, b[r]);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = hsum(_mm256_add_ps(a[r], b[r]));
    for (; j < n; j++)
        for (int r = 0; r < 4; r++)
            out[r] = fmaf(bf ? qllama_bf16_at(w + r * rb + 2 * j) : qllama_f16_at(w + r * rb + 2 * j),
                          x[j], out[r]);
}

BI void half_rows(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                  float *out, ptrdiff_t out_stride, const int bf) {
    ptrdiff_t n = m->cols, r = r0;
    for (; r + 4 <= r1; r += 4)
        for (ptrdiff_t t = 0; t < x->T; t++) {
            float o[4];
            half_dot4(m->blocks + r * 2 * n, n, x->x + t * x->x_stride, o, bf);
            memcpy(out + t * out_stride + r, o, sizeof o);
        }
    if (r < r1) qllama_block_matmul_ref(m, r, r1, x, out, out_stride);
}

static void f16_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                       float *out, ptrdiff_t out_stride) {
    half_rows(m, r0, r1, x, out, out_stride, 0);
}

static void bf16_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                        float *out, ptrdiff_t out_stride) {
    half_rows(m, r0, r1, x, out, out_stride, 1);
}

/* ---- a block of 8 tokens or more: tokens in the lanes ----------------------------- */

/* 8 x 8 int32: out[c] lane t = in[t] lane c */
BI void transpose8(const __m256i in[8], __m256i out[8]) {
    __m256i t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_epi32(in[2 * i], in[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(in[2 * i], in[2 * i + 1]);
    }
    for (int h = 0; h < 2; h++)
        for (int i = 0; i < 2; i++) {
            u[4 * h + 2 * i] = _mm256_unpacklo_epi64(t[4 * h + i], t[4 * h + i + 2]);
            u[4 * h + 2 * i + 1] = _mm256_unpackhi_epi64(t[4 * h + i], t[4 * h + i + 2]);
        }
    for (int c = 0; c < 4; c++) {
        out[c] = _mm256_permute2x128_si256(u[c], u[4 + c], 0x20);
        out[c + 4] = _mm256_permute2x128_si256(u[c], u[4 + c], 0x31);
    }
}

/* Every quantized type for a block of 8 tokens or more: tokens in the lanes (8 a
 * vector, nv <= KG_V vectors a pass), so a group's sum needs no reduction. Per 256 values
 * (a k-quant super-block, eight 32-value blocks) the tokens' activations are
 * transposed once for up to KG_ROWS rows ([group][4-byte piece] x 8 tokens, with
 * their group sums and scales); a row's pieces of 4 values are broadcast against
 * them (vpdpbusd, or vpmaddubsw + vpmaddwd). Accumulators: (row, lane j) x tokens,
 * folded in kernels.h's order at the end: the numbers of the decode kernels. */
#define KG_ROWS 16
#define KG_V 2  /* at most, token vectors a pass: a broadcast weight piece meets 16 tokens */

BI void blk_gemm(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                 float *out, ptrdiff_t out_stride, const int type, const int nv) {
    const int kq = type >= QLLAMA_Q4_K, q6 = type == QLLAMA_Q6_K;
    const ptrdiff_t n = m->cols, ng = n / 32, bb = kq ? kq_bytes(type) : q32_bytes(type);
    const ptrdiff_t rb = n / qllama_block_values[type] * bb, pass_bytes = kq ? bb : 8 * bb;
    const __m256i zero = _mm256_setzero_si256(), ones = _mm256_set1_epi8(1);
    for (ptrdiff_t rg = r0; rg < r1; rg += KG_ROWS) {
        const int nr = (int)(r1 - rg < KG_ROWS ? r1 - rg : KG_ROWS);
        for (ptrdiff_t t0 = 0; t0 < x->T; t0 += 8 * nv) {
            const int tn = (int)(x->T - t0 < 8 * nv ? x->T - t0 : 8 * nv);
            __m256 acc[KG_ROWS][8][KG_V];
            for (int i = 0; i < nr; i++)
                for (int j = 0; j < 8; j++)
                    for (int k = 0; k < nv; k++) acc[i][j][k] = _mm256_setzero_ps();
            for (ptrdiff_t g0 = 0; g0 < ng; g0 += 8) {
                const int kg = kq || ng - g0 >= 8 ? 8 : (int)(ng - g0);  /* groups this pass */
                /* X[k][j][c] lane t: bytes 4c..4c+3 of group g0 + j of token 8k + t; xsum
                 * the group sums (q6_k: of the first 16 values, xsum2 the last 16) */
                __m256i X[KG_V][8][8], xsum[KG_V][8], xsum2[KG_V][8], xsi[KG_V][8], v[8];
                for (int k = 0; k < nv; k++) {
                    for (int j = 0; j < kg; j++) {  /* missing tokens: x 0 and scale 0 */
                        for (int t = 0; t < 8; t++)
                            v[t] = 8 * k + t < tn ? load32(x->q + (t0 + 8 * k + t) * n + 32 * (g0 + j)) : zero;
                        transpose8(v, X[k][j]);
                        xsum[k][j] = xsum2[k][j] = zero;
                        for (int c = 0; c < 8; c++) {
                            __m256i *sum = q6 && c >= 4 ? &xsum2[k][j] : &xsum[k][j];
                            *sum = dot_us_acc(*sum, ones, X[k][j][c]);
                        }
                    }
                    for (int t = 0; t < 8; t++) {
                        float f[8] = {0};
                        if (8 * k + t < tn) memcpy(f, x->s + (t0 + 8 * k + t) * ng + g0, 4 * (size_t)kg);
                        v[t] = _mm256_castps_si256(_mm256_loadu_ps(f));
                    }
                    transpose8(v, xsi[k]);  /* xsi[k][j] lane t: that token's scale of group j */
                }
                for (int i = 0; i < nr; i++) {
                    const uint8_t *blk = m->blocks + (rg + i) * rb + g0 / 8 * pass_bytes;
                    /* q[j][c]: group j's values 4c..4c+3 as bytes the dot product takes
                     * unsigned (q8_0: + 128 with VNNI, else |w|; w: the signs) */
                    int32_t q[8][8], w[8][8], s0[8], s1[8];
                    float d[8], mn[8];
                    __m256 dk = _mm256_setzero_ps(), dmin = dk;
                    if (kq) {
                        kq_block u;
                        kq_unpack(blk, &u, type);
                        for (int j = 0; j < 8; j++) _mm256_storeu_si256((__m256i *)q[j], u.q[j]);
                        _mm256_storeu_si256((__m256i *)s0, u.s[0]);
                        _mm256_storeu_si256((__m256i *)s1, u.s[1]);
                        dk = u.d;
                        dmin = u.dmin;
                    } else {
                        q32_block u;
                        q32_unpack(blk, &u, type, kg);
                        for (int j = 0; j < 8; j++) {
                            _mm256_storeu_si256((__m256i *)q[j], u.q[j]);
                            if (type == QLLAMA_GQ8_0 && !VNNI) _mm256_storeu_si256((__m256i *)w[j], u.w[j]);
                        }
                        _mm256_storeu_ps(d, u.d);
                        if (type == QLLAMA_Q4_1) _mm256_storeu_ps(mn, u.m);
                    }
                    for (int j = 0; j < kg; j++) {
                        __m256i p[KG_V][2];  /* short chains; q6_k: the halves apart */
                        for (int k = 0; k < nv; k++) p[k][0] = p[k][1] = zero;
                        for (int c = 0; c < 8; c++) {
                            const __m256i wc = _mm256_set1_epi32(q[j][c]);
                            const int h = q6 ? c / 4 : c % 2;
                            for (int k = 0; k < nv; k++) {
                                __m256i xv = X[k][j][c];
                                if (type == QLLAMA_GQ8_0 && !VNNI)  /* |w| . sign(w) x */
                                    xv = _mm256_sign_epi8(xv, _mm256_set1_epi32(w[j][c]));
                                p[k][h] = dot_us_acc(p[k][h], wc, xv);
                            }
                        }
                        for (int k = 0; k < nv; k++) {
                            const __m256 xs = _mm256_castsi256_ps(xsi[k][j]);
                            __m256 a = acc[i][j][k];
                            __m256i isum = _mm256_add_epi32(p[k][0], p[k][1]);
                            if (q6) {  /* sc_2j, sc_2j+1 as kq_unpack orders them */
                                __m256i h0 = _mm256_sub_epi32(p[k][0], _mm256_slli_epi32(xsum[k][j], 5));
                                __m256i h1 = _mm256_sub_epi32(p[k][1], _mm256_slli_epi32(xsum2[k][j], 5));
                                isum = _mm256_add_epi32(
                                    _mm256_mullo_epi32(h0, _mm256_set1_epi32(j < 4 ? s0[j] : s1[j - 4])),
                                    _mm256_mullo_epi32(h1, _mm256_set1_epi32(j < 4 ? s0[4 + j] : s1[j])));
                                a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dk, xs)));
                            } else if (kq) {
                                isum = _mm256_mullo_epi32(isum, _mm256_set1_epi32(s0[j]));
                                __m256i msum = _mm256_mullo_epi32(xsum[k][j], _mm256_set1_epi32(s1[j]));
                                a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dk, xs)));
                                a = _mm256_sub_ps(a, _mm256_mul_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, xs)));
                            } else {
                                if (type == QLLAMA_GQ8_0 && VNNI)  /* (w + 128) . x - 128 sum(x) */
                                    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(xsum[k][j], 7));
                                if (type == QLLAMA_Q4_0)  /* (q - 8) . x */
                                    isum = _mm256_sub_epi32(isum, _mm256_slli_epi32(xsum[k][j], 3));
                                a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_cvtepi32_ps(isum),
                                                                   _mm256_mul_ps(_mm256_set1_ps(d[j]), xs)));
                                if (type == QLLAMA_Q4_1)
                                    a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_cvtepi32_ps(xsum[k][j]),
                                                                       _mm256_mul_ps(_mm256_set1_ps(mn[j]), xs)));
                            }
                            acc[i][j][k] = a;
                        }
                    }
                }
            }
            for (int i = 0; i < nr; i++)
                for (int k = 0; k < nv; k++) {
                    float o[8];
                    __m256 a[8];
                    for (int j = 0; j < 8; j++) a[j] = acc[i][j][k];
                    _mm256_storeu_ps(o, _mm256_add_ps(
                        _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6])),
                        _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]))));
                    for (int t = 0; t < 8 && 8 * k + t < tn; t++)
                        out[(t0 + 8 * k + t) * out_stride + rg + i] = o[t];
                }
        }
    }
}

/* Tokens t0..t0+T-1 of x. */
BI qllama_acts some_tokens(const qllama_acts *x, ptrdiff_t t0, ptrdiff_t T) {
    qllama_acts a = *x;
    a.x += t0 * x->x_stride;
    a.q += t0 * x->n;
    a.s += t0 * (x->n / 32);
    a.T = T;
    a.shared = t0 == 0 ? x->shared : NULL;
    return a;
}

/* One token: four rows a pass (kq_rows, q32_rows); a few: passes unpacked once (the
 * same); 8 and more: tokens in the lanes (blk_gemm), 16 a pass while 12 or more
 * are left (fewer would be mostly padding), then 8, then the few. */
BI void quant_rows(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                   float *out, ptrdiff_t out_stride, const int type) {
    const int kq = type >= QLLAMA_Q4_K;
    ptrdiff_t t = x->T / 16 * 16 + (x->T % 16 >= 12 ? x->T % 16 : 0);
    qllama_acts a;
    if (t) {
        a = some_tokens(x, 0, t);
        blk_gemm(m, r0, r1, &a, out, out_stride, type, 2);
    }
    if (x->T - t >= 8) {
        a = some_tokens(x, t, 8);
        blk_gemm(m, r0, r1, &a, out + t * out_stride, out_stride, type, 1);
        t += 8;
    }
    if (t < x->T) {
        a = some_tokens(x, t, x->T - t);
        if (kq)
            kq_rows(m, r0, r1, &a, out + t * out_stride, out_stride, type);
        else
            q32_rows(m, r0, r1, &a, out + t * out_stride, out_stride, type);
    }
}

#define QUANT_MATMUL(name, type)                                                              \
    static void name(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x, \
                     float *out, ptrdiff_t out_stride) {                                      \
        quant_rows(m, r0, r1, x, out, out_stride, type);                                      \
    }
QUANT_MATMUL(q4k_matmul, QLLAMA_Q4_K)
QUANT_MATMUL(q5k_matmul, QLLAMA_Q5_K)
QUANT_MATMUL(q6k_matmul, QLLAMA_Q6_K)
QUANT_MATMUL(gq80_matmul, QLLAMA_GQ8_0)
QUANT_MATMUL(q40_matmul, QLLAMA_Q4_0)
QUANT_MATMUL(q41_matmul, QLLAMA_Q4_1)
#undef QUANT_MATMUL

#define BLOCK_MATMULS                                                                   \
    [QLLAMA_F16] = f16_matmul, [QLLAMA_BF16] = bf16_matmul,                               \
    [QLLAMA_GQ8_0] = gq80_matmul, [QLLAMA_Q4_0] = q40_matmul, [QLLAMA_Q4_1] = q41_matmul, \
    [QLLAMA_Q4_K] = q4k_matmul, [QLLAMA_Q5_K] = q5k_matmul, [QLLAMA_Q6_K] = q6k_matmul
