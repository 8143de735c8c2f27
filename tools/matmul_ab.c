/* One kernel variant's Q8_0 matmul from two source trees, A and B, in one process: a
 * block of T tokens through each (activations packed by each tree's own q80_pack),
 * alternating, best of R runs each; the outputs must be the same bits. The activations
 * are prepared as the engine does (qllama_prepare with a buffer: packed for a block, the
 * rows' shared offsets for one token). Built and run by tools/matmul_ab.sh, which
 * compiles each tree's x86.c and renames its table to TA / TB:
 *
 *   tools/matmul_ab.sh A_TREE B_TREE VARIANT ROWS COLS GS T [R]
 *   e.g. tools/matmul_ab.sh ../before . avx2 11008 4096 64 8
 *
 * Weights are uniform in -127..127 (a quantizer never writes -128), one thread, rows
 * read one at a time for one token (QLLAMA_DECODE_ROWS=8 reads eight side by side).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "driver.h"
#include "kernels.h"

extern const qllama_kernels TA, TB;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: matmul_ab ROWS COLS GS T [ROUNDS]\n");
        return 2;
    }
    ptrdiff_t rows = atol(argv[1]), cols = atol(argv[2]), gs = atol(argv[3]), T = atol(argv[4]);
    int rounds = argc > 5 ? atoi(argv[5]) : 15;
    if (rows < 1 || cols < 1 || T < 1 || rounds < 1 || !qllama_q8_input(cols, gs)) {
        fprintf(stderr, "matmul_ab: ROWS, COLS, T and ROUNDS > 0, GS dividing COLS and at "
                        "most %d\n", QLLAMA_Q80_MAX_GROUP);
        return 2;
    }
    int8_t *q = malloc((size_t)(rows * cols));
    float *s = malloc(sizeof(float) * (size_t)(rows * cols / gs));
    float *x = malloc(sizeof(float) * (size_t)(T * cols));
    srand(1);
    for (ptrdiff_t i = 0; i < rows * cols; i++) q[i] = (int8_t)(rand() % 255 - 127);
    for (ptrdiff_t i = 0; i < rows * cols / gs; i++) s[i] = 0.01f * (float)(1 + rand() % 100);
    for (ptrdiff_t i = 0; i < T * cols; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
    qllama_matrix m = {NULL, q, s, rows, cols, gs};
    const char *rows_env = getenv("QLLAMA_DECODE_ROWS");
    m.decode_rows = rows_env ? atoi(rows_env) : 1;
    m.row_notes = calloc((size_t)(rows / 16 + 1), 1);  /* as the engine keeps them */

    const qllama_kernels *K[2] = {&TA, &TB};
    qllama_plan p[2];
    qllama_acts a[2];
    float *out[2];
    for (int k = 0; k < 2; k++) {
        qllama_plan_matrix(&p[k], &m, K[k]);
        int8_t *xq = malloc((size_t)(T * cols));
        float *xs = malloc(sizeof(float) * (size_t)(T * cols / gs));
        size_t nb = qllama_packed_bytes(K[k], T, cols, gs);
        qllama_prepare(K[k], &p[k], &a[k], x, T, xq, xs, nb ? malloc(nb) : NULL);
        out[k] = malloc(sizeof(float) * (size_t)(T * rows));
    }
    long reps = (long)(4e8 / ((double)rows * (double)cols * (double)T)) + 1;
    double best[2] = {1e30, 1e30};
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < 2; k++) {
            double t0 = now();
            for (long i = 0; i < reps; i++) qllama_run(K[k], &p[k], &a[k], out[k], rows);
            double t = (now() - t0) / (double)reps;
            best[k] = t < best[k] ? t : best[k];
        }
    double macs = (double)rows * (double)cols * (double)T;
    int same = !memcmp(out[0], out[1], sizeof(float) * (size_t)(T * rows));
    printf("%s %ld x %ld, gs %ld, T=%ld: A %.4f ms (%.1f GMAC/s)  B %.4f ms (%.1f)  "
           "B is %.3fx as fast  %s\n",
           TA.name, (long)rows, (long)cols, (long)gs, (long)T, 1e3 * best[0], macs / best[0] / 1e9,
           1e3 * best[1], macs / best[1] / 1e9, best[0] / best[1],
           same ? "same bits" : "OUTPUTS DIFFER");
    return same ? 0 : 1;
}
