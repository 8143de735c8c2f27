/* One kernel variant's Q8_0 matmul on one thread, outside Python: a block of T tokens
 * through its GEMM (activations packed) and token by token (the same table with no
 * packed activations, which every GEMM hands to the decode kernel), alternating,
 * best of 7 runs each.
 *
 *   K=qllama/_kernels
 *   cc -O3 -fno-math-errno -ffp-contract=off -I$K -DQLLAMA_VARIANT=avx2 \
 *      -DQLLAMA_TABLE=qllama_avx2 -mavx2 -mfma -mf16c \
 *      tools/matmul_bench.c $K/driver.c $K/generic.c $K/arch/x86/x86.c -lm -o /tmp/mmb
 *   /tmp/mmb ROWS COLS GS T...          e.g. /tmp/mmb 2048 768 32 1 8 64
 *
 * QLLAMA_DECODE_ROWS=8 reads one token's rows eight side by side (decode.h), as the
 * engine does on Intel CPUs; unset, one after another.
 *
 * avxvnni on a CPU without AVX-VNNI (AMD before Zen 5): add -DQLLAMA_VNNI_EVEX
 * -mavx512f -mavx512bw -mavx512vl -mavx512vnni (vpdpbusd in its AVX-512 encoding, as
 * tests/harness.py builds it) and -ffixed-xmm16 ... -ffixed-xmm31, so that gcc
 * allocates the 16 registers a real AVX-VNNI build has.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "driver.h"
#include "kernels.h"

extern const qllama_kernels QLLAMA_TABLE;
static const qllama_kernels *K = &QLLAMA_TABLE;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* seconds per matmul, through the engine's driver (rows in row_block pieces) */
static double once(const qllama_plan *p, const qllama_acts *x, float *out, long reps) {
    double t0 = now();
    for (long i = 0; i < reps; i++) qllama_run(K, p, x, out, p->m.rows);
    return (now() - t0) / (double)reps;
}

int main(int argc, char **argv) {
    if (argc < 5 || !K->q80_pack) {
        fprintf(stderr, "usage: matmul_bench ROWS COLS GS T... (a variant with a GEMM)\n");
        return 2;
    }
    ptrdiff_t rows = atol(argv[1]), cols = atol(argv[2]), gs = atol(argv[3]);
    int8_t *q = malloc((size_t)(rows * cols));
    float *s = malloc(sizeof(float) * (size_t)(rows * cols / gs));
    srand(1);
    for (ptrdiff_t i = 0; i < rows * cols; i++) q[i] = (int8_t)(rand() & 255);
    for (ptrdiff_t i = 0; i < rows * cols / gs; i++) s[i] = 0.01f * (float)(1 + rand() % 100);
    qllama_matrix m = {NULL, q, s, rows, cols, gs};
    const char *rows_env = getenv("QLLAMA_DECODE_ROWS");
    m.decode_rows = rows_env ? atoi(rows_env) : 1;
    m.row_notes = calloc((size_t)(rows / 16 + 1), 1);  /* as the engine keeps them */
    qllama_plan p;
    qllama_plan_matrix(&p, &m, K);
    printf("%s, %ld x %ld, gs %ld, one thread, decode rows %d: ms per matmul (GMAC/s)\n",
           K->name, (long)rows, (long)cols, (long)gs, m.decode_rows);
    for (int a = 4; a < argc; a++) {
        ptrdiff_t T = atol(argv[a]);
        float *x = malloc(sizeof(float) * (size_t)(T * cols)), *out = malloc(sizeof(float) * (size_t)(T * rows));
        int8_t *xq = malloc((size_t)(T * cols));
        float *xs = malloc(sizeof(float) * (size_t)(T * cols / gs));
        for (ptrdiff_t i = 0; i < T * cols; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
        /* 0 bytes where the GEMM does not take T tokens: both columns run token by token */
        size_t nb = K->q80_packed_bytes(T, cols, gs);
        void *packed = nb ? malloc(nb) : NULL;
        qllama_acts acts;
        qllama_prepare(K, &p, &acts, x, T, xq, xs, NULL);
        if (packed) K->q80_pack(&acts, packed);
        /* the two alternate, so that both see the same machine; best of 7 each */
        long reps = (long)(2e8 / ((double)rows * (double)cols * (double)T)) + 1;
        double one = 1e30, gemm = 1e30;
        for (int k = 0; k < 7; k++) {
            acts.packed = NULL;
            double t = once(&p, &acts, out, reps);
            one = t < one ? t : one;
            acts.packed = packed;
            t = once(&p, &acts, out, reps);
            gemm = t < gemm ? t : gemm;
        }
        double macs = (double)rows * (double)cols * (double)T;
        printf("  T=%-4ld token by token %8.4f (%5.1f)  GEMM %8.4f (%5.1f)  %.2fx\n", (long)T,
               1e3 * one, macs / one / 1e9, 1e3 * gemm, macs / gemm / 1e9, one / gemm);
        free(x), free(out), free(xq), free(xs), free(packed);
    }
    return 0;
}
