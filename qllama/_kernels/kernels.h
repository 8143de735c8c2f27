/* The kernel table: every hot loop of the forward pass, one implementation per CPU
 * variant, the variant chosen once per process (qllama/kernels.py) and the kernel
 * once per matrix (driver.h, which runs the matmuls of the engine, of its checks and
 * of the tests' harness).
 *
 *   generic.c               the reference: plain C, every kernel, any CPU
 *   arch/x86/x86.c          AVX2 + FMA with a ymm GEMM for prefill; the same source
 *                           with VNNI dot products as "avxvnni" (256-bit, client
 *                           chips) and, with an AVX-512 VNNI GEMM, as "avx512vnni";
 *                           it assembles the tables from headers by job beside it
 *                           (quantize.h, decode.h, blocks.h, gemm256.h, gemm512.h,
 *                           attention.h)
 *   arch/x86/amx.h          "amx" (x86.c with AMX flags): AMX-INT8 tiles for prefill,
 *                           avx512vnni otherwise
 *   arch/rows.h             row drivers x86.c and neon.c share
 *   block_types.h           GGUF's block layouts unpacked in plain C
 *   arch/arm/neon.c         NEON; with sdot (dotprod) as "dotprod"
 *
 * Each variant is its own translation unit compiled with its own target flags
 * (setup.py), so a portable build carries all of them and none leaks instructions
 * into code that runs before the CPU has been checked.
 *
 * Same numbers from every variant. Integer parts are exact, and every float
 * operation is specified, so all variants give bitwise-equal results:
 * - Q8_0 row . activations: per group g the exact int32 sum isum_g of q_w * q_x,
 *   then acc = acc + (float)isum_g * (w_scale_g * x_scale_g), groups in order,
 *   acc from 0 (three roundings per group: two products and the sum).
 * - fp32 dot products (f32 matmuls, attention scores): 16 partial sums, lane l
 *   holding elements j with j % 16 == l of each whole 16-block, each step a fused
 *   multiply-add; then lanes l and l + 8 added, those eight summed as
 *   ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)); then the n % 16 tail
 *   elements in order, each a fused multiply-add.
 * - attention values: out[i] = fma(att[p], v_p[i], out[i]) for p in order, from the
 *   out the caller passes (zeroed before the first call): a cache held in pages is
 *   one call per page, the same operations as one call over all positions.
 * - fp16 KV entries: fp32 rounded to nearest even (IEEE binary16).
 * - activations to Q8_0 as runq.c: scale = max|x| / 127, q = x / scale rounded
 *   half away from zero, clamped to +-127.
 * - GGUF block types (enum qllama_type; layouts: gguf-py's quants.py): f16 and bf16
 *   weights are converted exactly to fp32, then the fp32 dot contract above. The
 *   others take activations quantized as above with gs = 32 (xq, xs_g for group g)
 *   and keep eight float lanes acc[0..7] from 0, group g going to lane g % 8 in
 *   order (a k-quant's sub-block j of 32 is lane j), summed at the end as
 *   ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)). Per group, with fp16 scales
 *   d, m, dmin as float, sums exact in int32 and each product rounded as written
 *   (no fused multiply-adds):
 *     q8_0  acc += (float)(sum q * xq) * (d * xs_g)
 *     q4_0  acc += (float)(sum (q - 8) * xq) * (d * xs_g)
 *     q4_1  acc += (float)(sum q * xq) * (d * xs_g); acc += (float)(sum xq) * (m * xs_g)
 *     q4_k, q5_k (6-bit sc_j, m_j of sub-block j)
 *           acc += (float)(sc_j * sum q * xq) * (d * xs_g);
 *           acc -= (float)(m_j * sum xq) * (dmin * xs_g)
 *     q6_k (int8 sc_i of the 16-value sub-blocks 2j, 2j + 1)
 *           acc += (float)(sc_2j * sum_first16 (q - 32) * xq
 *                          + sc_2j+1 * sum_last16 (q - 32) * xq) * (d * xs_g)
 *   Bounds: |xq| <= 127 and 32 values a group, so |sum| <= 32 * 128 * 127 (q8_0),
 *   63 * 32 * 15 * 127 (q4_k; q5_k 31), 2 * 128 * 16 * 32 * 127 (q6_k): below 2^24.
 * Everything else (rmsnorm, RoPE, softmax, SwiGLU) is shared code (ops.pxd).
 *
 * Shapes: a matrix is (rows, cols) row-major; Q8_0 values are those of the
 * flattened tensor, with scale s[f / gs] for value f; a block type's row r is
 * cols / block whole blocks at blocks + r * row_bytes. Activations are a block of
 * T rows of n values, fp32 and, for Q8_0 and quantized block matrices, quantized
 * per group of gs.
 */
#ifndef QLLAMA_KERNELS_H
#define QLLAMA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* A matrix's type; the numbers are qllama/quant/types.py's kernel_id. */
enum qllama_type {
    QLLAMA_F32 = 0,
    QLLAMA_Q80 = 1,  /* llama2.c version 2: int8 values, then fp32 scales per gs */
    QLLAMA_F16 = 2,  /* GGUF's from here: rows of whole blocks */
    QLLAMA_BF16 = 3,
    QLLAMA_GQ8_0 = 4,
    QLLAMA_Q4_0 = 5,
    QLLAMA_Q4_1 = 6,
    QLLAMA_Q4_K = 7,
    QLLAMA_Q5_K = 8,
    QLLAMA_Q6_K = 9,
    QLLAMA_N_TYPES
};

typedef struct {
    const float *w;   /* fp32 weights (rows, cols), or NULL for Q8_0 */
    const int8_t *q;  /* Q8_0 values (rows * cols) */
    const float *s;   /* Q8_0 scales (rows * cols / gs) */
    ptrdiff_t rows, cols, gs;
    int type;               /* enum qllama_type; F32 and Q80 are told apart by w */
    const uint8_t *blocks;  /* a block type's rows, row r at blocks + r * row_bytes */
    int decode_rows;        /* one token, x86: 8 reads Q8_0 rows eight side by side
                               (decode.h) and GGUF q8_0 four a pass (blocks.h); any
                               other value one row after another. The same results */
    uint8_t *row_notes;     /* Q8_0: rows / 16 + 1 bytes, zeroed by the matrix's owner,
                               that kernels keep about rows 16i..16i+15 (gemm256.h: 1
                               none is -128, 2 some is), valid while q is unchanged;
                               or NULL: kernels look each time */
} qllama_matrix;

typedef struct {
    const float *x;      /* (T, n) fp32, row t at x + t * x_stride */
    ptrdiff_t x_stride;
    const int8_t *q;     /* (T, n) quantized (for Q8_0 matrices whose groups lie in rows) */
    const float *s;      /* (T, n / gs) their scales */
    const void *packed;  /* the variant's layout of q and s for its GEMM, or NULL */
    const void *shared;  /* one token's (T == 1): what every row shares of it, the
                            variant's block_share or q80_share, or NULL */
    ptrdiff_t T, n, gs;
    int type;            /* of the matrix they are for: block types take no packing */
} qllama_acts;

/* out[t * out_stride + r] = row r of m . activation row t, for r0 <= r < r1, t < T.
 * r0 is a multiple of the variant's row_block. */
typedef void (*qllama_matmul_fn)(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                                 const qllama_acts *x, float *out, ptrdiff_t out_stride);

typedef struct {
    const char *name;
    ptrdiff_t row_block;  /* rows a matmul kernel call should get (a multiple of 4) */
    qllama_matmul_fn f32_matmul;   /* fp32 weights, fp32 activations */
    qllama_matmul_fn q80_matmul;   /* Q8_0 with gs dividing cols, quantized activations */
    /* GGUF block types (index: enum qllama_type, F16 and up); they take no packed
     * layout (a block's activations as quantize_row leaves them); NULL where the
     * variant keeps generic's kernel */
    qllama_matmul_fn block_matmul[QLLAMA_N_TYPES];
    /* Bytes of the packed layout of T quantized rows of n values (0 where the GEMM
     * would not take them), and the packing itself (q, s of x into buf; x->packed is
     * set by the caller); both NULL in a variant that does not pack. Packing happens
     * once per matmul input, before the rows are dealt out to threads. */
    size_t (*q80_packed_bytes)(ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs);
    void (*q80_pack)(const qllama_acts *x, void *buf);
    /* For one token of n quantized activations (T == 1), what every row of a block
     * type takes from them alike (group sums, reordered copies), computed once per
     * matmul input rather than once per kernel call: bytes needed, and the layout put
     * in buf (returned: where it starts, aligned as the variant needs). Both NULL in
     * a variant that does not. */
    size_t (*block_shared_bytes)(ptrdiff_t n);
    const void *(*block_share)(const qllama_acts *x, void *buf);
    /* The same for a Q8_0 matrix's one token: an int32 per group (n / gs of them, at
     * buf) that its one-token kernel takes; NULL in a variant that needs none. */
    const void *(*q80_share)(const qllama_acts *x, void *buf);
    /* activations to Q8_0 as runq.c (one row of n values, groups of gs) */
    void (*quantize_row)(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s);
    float (*f32_dot)(const float *a, const float *b, ptrdiff_t n);
    /* KV cache entries: fp16 (default) or fp32. n_pos cached positions of one head,
     * hs values each, contiguous. scores: att[p] = (q . k_p) * scale. values:
     * out (hs) += sum over p of att[p] * v_p. */
    void (*f16_store)(const float *x, uint16_t *h, ptrdiff_t n);
    void (*attn_scores_f16)(const float *q, const uint16_t *k, ptrdiff_t n_pos, ptrdiff_t hs,
                            float scale, float *att);
    void (*attn_values_f16)(const float *att, const uint16_t *v, ptrdiff_t n_pos, ptrdiff_t hs,
                            float *out);
    void (*attn_scores_f32)(const float *q, const float *k, ptrdiff_t n_pos, ptrdiff_t hs,
                            float scale, float *att);
    void (*attn_values_f32)(const float *att, const float *v, ptrdiff_t n_pos, ptrdiff_t hs,
                            float *out);
} qllama_kernels;

/* Q8_0 whose groups straddle rows (gs does not divide cols), fp32 activations: the
 * format's definition on a slower path; one implementation for every variant. */
void qllama_q80_flat_matmul(const qllama_matrix *m, ptrdiff_t r0, ptrdiff_t r1,
                            const qllama_acts *x, float *out, ptrdiff_t out_stride);

/* Values per block and bytes per block of a block type (GGUF's). */
extern const ptrdiff_t qllama_block_values[QLLAMA_N_TYPES], qllama_block_bytes[QLLAMA_N_TYPES];

/* Row r of any matrix as fp32 (a token's embedding): gguf-py's dequantize for the
 * block types, q * s for Q8_0. */
void qllama_dequantize_row(const qllama_matrix *m, ptrdiff_t r, float *out);

/* fp16 <-> fp32 in plain C (round to nearest even), for the generic variant and the
 * tests' view of the cache. */
uint16_t qllama_f32_to_f16(float f);
float qllama_f16_to_f32(uint16_t h);

/* The generic variant's kernels, for variants that keep some of them. */
extern const qllama_kernels qllama_generic;

#endif /* QLLAMA_KERNELS_H */
