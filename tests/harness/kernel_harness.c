/* Runs one kernel variant on cases from a file, outside Python: for variants the
 * test machine cannot load into the engine (AVX-512 through SIMDe on an AVX2 CPU,
 * AMX with its tiles modelled in C, aarch64 under qemu-user). tests/harness.py
 * builds it with the variant's source and flags and compares its results with the
 * scalar variant's, bit for bit.
 *
 *   kernel_harness CASES OUT    (the table is QLLAMA_TABLE, set at build time)
 *
 * CASES: int64 count, then per case an int64 kind and its data; OUT: each case's
 * results, in order. All little-endian, as tests/harness.py writes them.
 *   kind 1, matmul: int64 rows, cols, gs, T, decode_rows (kernels.h's qllama_matrix);
 *           int8 q[rows * cols]; float s[rows * cols / gs];
 *           float x[T * cols]  ->  int8 xq[T * cols]; float xs[T * (cols / gs)];
 *           float out[T * rows]  (through the engine's driver, driver.h: the kernel it
 *           plans, activations quantized and packed as in a forward pass, rows in blocks
 *           of row_block; xq and xs are zeros when the plan takes fp32 rows, for groups
 *           that straddle rows or are too long for int32 sums)
 *   kind 2, fp32 matmul: int64 rows, cols, T; float w[rows * cols]; float x[T * cols]
 *           ->  float out[T * rows]
 *   kind 4, GGUF block matmul: int64 type (kernels.h's qllama_type), rows, cols, T,
 *           decode_rows;
 *           uint8 blocks[rows * row bytes]; float x[T * cols]  ->  float out[T * rows];
 *           float row[cols] (the last row dequantized)
 *   kind 3, attention: int64 n_pos, hs; float q[hs], k[n_pos * hs], v[n_pos * hs]
 *           ->  uint16 kh[n_pos * hs], vh[...]; float att16[n_pos], out16[hs],
 *               att32[n_pos], out32[hs]
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "driver.h"
#include "kernels.h"

extern const qllama_kernels QLLAMA_TABLE;
static const qllama_kernels *K = &QLLAMA_TABLE;

static FILE *in, *out;

static void *take(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p || fread(p, 1, n, in) != n) {
        fprintf(stderr, "kernel_harness: short input\n");
        exit(2);
    }
    return p;
}

static int64_t take64(void) {
    int64_t v;
    memcpy(&v, take(8), 8);  /* a small leak per field: the process is short-lived */
    return v;
}

static void give(const void *p, size_t n) {
    if (fwrite(p, 1, n, out) != n) exit(3);
}

/* out (T, rows) = x (T, cols) @ m^T through the driver, as the engine runs it */
static void run_matmul(const qllama_matrix *m, const float *x, int64_t T, int8_t *xq, float *xs,
                       float *out) {
    qllama_plan p;
    qllama_acts a;
    qllama_plan_matrix(&p, m, K);
    size_t nb = qllama_packed_bytes(K, T, m->cols, m->gs);
    void *packed = nb ? malloc(nb) : NULL;
    qllama_prepare(K, &p, &a, x, T, xq, xs, packed);
    qllama_run(K, &p, &a, out, m->rows);
    free(packed);
}

static void case_q80(void) {
    int64_t rows = take64(), cols = take64(), gs = take64(), T = take64(), side = take64();
    qllama_matrix m = {0};
    m.rows = rows, m.cols = cols, m.gs = gs, m.decode_rows = (int)side;
    m.q = take((size_t)(rows * cols));
    m.s = take(4 * (size_t)(rows * cols / gs));
    float *x = take(4 * (size_t)(T * cols));
    int8_t *xq = calloc((size_t)(T * cols), 1);
    float *xs = calloc((size_t)(T * (cols / gs)) + 1, 4);
    float *o = malloc(4 * (size_t)(T * rows));
    run_matmul(&m, x, T, xq, xs, o);
    give(xq, (size_t)(T * cols));
    give(xs, 4 * (size_t)(T * (cols / gs)));
    give(o, 4 * (size_t)(T * rows));
}

static void case_f32(void) {
    int64_t rows = take64(), cols = take64(), T = take64();
    qllama_matrix m = {0};
    m.rows = rows, m.cols = cols;
    m.w = take(4 * (size_t)(rows * cols));
    float *x = take(4 * (size_t)(T * cols));
    float *o = malloc(4 * (size_t)(T * rows));
    run_matmul(&m, x, T, NULL, NULL, o);
    give(o, 4 * (size_t)(T * rows));
}

static void case_blocks(void) {
    int64_t type = take64(), rows = take64(), cols = take64(), T = take64(), side = take64();
    if (type <= QLLAMA_Q80 || type >= QLLAMA_N_TYPES) exit(2);
    qllama_matrix m = {0};
    m.type = (int)type, m.rows = rows, m.cols = cols, m.decode_rows = (int)side;
    m.blocks = take((size_t)(rows * (cols / qllama_block_values[type] * qllama_block_bytes[type])));
    float *x = take(4 * (size_t)(T * cols));
    int8_t *xq = calloc((size_t)(T * cols), 1);
    float *xs = calloc((size_t)(T * cols / 32) + 1, 4);
    float *o = malloc(4 * (size_t)(T * rows)), *row = malloc(4 * (size_t)cols);
    run_matmul(&m, x, T, xq, xs, o);
    give(o, 4 * (size_t)(T * rows));
    qllama_dequantize_row(&m, rows - 1, row);
    give(row, 4 * (size_t)cols);
}

static void case_attention(void) {
    int64_t n_pos = take64(), hs = take64();
    float *q = take(4 * (size_t)hs), *k = take(4 * (size_t)(n_pos * hs)), *v = take(4 * (size_t)(n_pos * hs));
    uint16_t *kh = malloc(2 * (size_t)(n_pos * hs)), *vh = malloc(2 * (size_t)(n_pos * hs));
    float *att = malloc(4 * (size_t)n_pos), *o = malloc(4 * (size_t)hs);
    float scale = 1.0f / sqrtf((float)hs);
    K->f16_store(k, kh, n_pos * hs);
    K->f16_store(v, vh, n_pos * hs);
    give(kh, 2 * (size_t)(n_pos * hs));
    give(vh, 2 * (size_t)(n_pos * hs));
    /* values accumulate into o: in two calls, as over a cache held in two pages */
    int64_t half = n_pos / 2;
    K->attn_scores_f16(q, kh, n_pos, hs, scale, att);
    memset(o, 0, 4 * (size_t)hs);
    K->attn_values_f16(att, vh, half, hs, o);  /* scores as they are: softmax is shared */
    K->attn_values_f16(att + half, vh + half * hs, n_pos - half, hs, o);
    give(att, 4 * (size_t)n_pos);
    give(o, 4 * (size_t)hs);
    K->attn_scores_f32(q, k, n_pos, hs, scale, att);
    memset(o, 0, 4 * (size_t)hs);
    K->attn_values_f32(att, v, half, hs, o);
    K->attn_values_f32(att + half, v + half * hs, n_pos - half, hs, o);
    give(att, 4 * (size_t)n_pos);
    give(o, 4 * (size_t)hs);
}

int main(int argc, char **argv) {
    if (argc != 3 || !(in = fopen(argv[1], "rb")) || !(out = fopen(argv[2], "wb"))) {
        fprintf(stderr, "usage: kernel_harness CASES OUT\n");
        return 2;
    }
    for (int64_t n = take64(), i = 0; i < n; i++) {
        int64_t kind = take64();
        if (kind == 1) case_q80();
        else if (kind == 2) case_f32();
        else if (kind == 3) case_attention();
        else if (kind == 4) case_blocks();
        else return 2;
    }
    return fclose(out) != 0;
}
