/* Row drivers shared by the SIMD variants (x86.c, neon.c), included after the file's
 * own kernels: q80_dot4 (four Q8_0 rows x one token, groups a multiple of
 * Q80_DOT4_GS), f32_dot4 and f32_dot; block_rows takes a GGUF block type's dot4. They deal a matmul's rows out four at a time,
 * the matrix's last rows going to the reference (generic.c), and for a block of
 * tokens 16 rows x 32 tokens at a time, each token's 16 results as one 64-byte
 * store: 4 results per token went to lines a power-of-two stride apart, all in one
 * L1 set. */

/* 16 results of token t from a (row, token) block as one 64-byte store. */
static inline void store16(float *out, const float *block, ptrdiff_t width, ptrdiff_t t) {
    float row[16];
    for (int i = 0; i < 16; i++) row[i] = block[i * width + t];
    memcpy(out, row, sizeof row);
}

/* Rows r0..r1, tokens 0..T-1, one token at a time (four rows stay in L1 meanwhile); one
 * token alone through the variant's Q80_ROWS1 where it has one. */
static void q80_rows4(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                      float *out, ptrdiff_t out_stride) {
    ptrdiff_t n = m->cols, gs = m->gs, ng = n / gs;
#ifdef Q80_ROWS1
    if (x->T == 1 && Q80_ROWS1(m, r0, r1, x, out)) return;
#endif
    for (ptrdiff_t r = r0; r < r1; r += 4) {
        if (r + 4 > r1) {  /* the matrix's last rows */
            qllama_q80_matmul_ref(m, r, r1, x, out, out_stride);
            break;
        }
        float o[4];
        for (ptrdiff_t t = 0; t < x->T; t++) {
            q80_dot4(m->q + r * n, m->s + r * ng, ng, x->q + t * n, x->s + t * ng, n, gs, o);
            for (int i = 0; i < 4; i++) out[t * out_stride + r + i] = o[i];
        }
    }
}

/* The same for a block of tokens, 16 rows x 32 tokens at a time. */
static void q80_rows(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x,
                     float *out, ptrdiff_t out_stride) {
    ptrdiff_t n = m->cols, gs = m->gs, ng = n / gs, T = x->T, r = r0;
    if (gs % Q80_DOT4_GS) {  /* groups shorter than a vector: the reference, same results */
        qllama_q80_matmul_ref(m, r0, r1, x, out, out_stride);
        return;
    }
    for (; T > 1 && r + 16 <= r1; r += 16)
        for (ptrdiff_t t0 = 0; t0 < T; t0 += 32) {
            ptrdiff_t tn = T - t0 < 32 ? T - t0 : 32;
            float block[16][32];
            for (int i = 0; i < 16; i += 4)
                for (ptrdiff_t t = 0; t < tn; t++) {
                    float o[4];
                    q80_dot4(m->q + (r + i) * n, m->s + (r + i) * ng, ng, x->q + (t0 + t) * n,
                             x->s + (t0 + t) * ng, n, gs, o);
                    for (int k = 0; k < 4; k++) block[i + k][t] = o[k];
                }
            for (ptrdiff_t t = 0; t < tn; t++)
                store16(out + (t0 + t) * out_stride + r, block[0], 32, t);
        }
    q80_rows4(m, r, r1, x, out, out_stride);
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

/* A GGUF block type's four rows at w (rb bytes apart) . one token's quantized
 * activations (groups of 32): out[0..3]. */
typedef void (*dot4_fn)(const uint8_t *w, ptrdiff_t rb, ptrdiff_t n, const int8_t *xq,
                        const float *xs, float *out);

/* Rows r0..r1 four at a time, each token in turn (the rows stay in L1); the matrix's
 * last rows to the reference. */
static inline __attribute__((always_inline)) void block_rows(
        const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x, float *out,
        ptrdiff_t out_stride, dot4_fn dot4) {
    ptrdiff_t n = m->cols, rb = n / qllama_block_values[m->type] * qllama_block_bytes[m->type];
    ptrdiff_t r = r0;
    for (; r + 4 <= r1; r += 4)
        for (ptrdiff_t t = 0; t < x->T; t++) {
            float o[4];
            dot4(m->blocks + r * rb, rb, n, x->q + t * n, x->s + t * (n / 32), o);
            memcpy(out + t * out_stride + r, o, sizeof o);
        }
    if (r < r1) qllama_block_matmul_ref(m, r, r1, x, out, out_stride);
}

#define BLOCK_MATMUL(name, dot4)                                                              \
    static void name(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1, const qllama_acts *x, \
                     float *out, ptrdiff_t out_stride) {                                      \
        block_rows(m, r0, r1, x, out, out_stride, dot4);                                      \
    }
