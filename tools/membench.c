/* Memory read-bandwidth probe for tools/bench.py (built by tools/membench.py).
 *
 * qllama_read_sum streams once through a buffer (much larger than the caches) and
 * sums it as 64-bit integers, one contiguous part per thread, each with 8
 * independent accumulators (gcc -O3 turns them into vector loads and adds); the
 * sum is returned so the compiler cannot drop the reads. */
#include <stddef.h>
#include <stdint.h>

static uint64_t sum_range(const uint64_t *p, ptrdiff_t n) {
    uint64_t acc[8] = {0}, total = 0;
    ptrdiff_t i, n8 = n - n % 8;
    for (i = 0; i < n8; i += 8)
        for (int l = 0; l < 8; l++) acc[l] += p[i + l];
    for (i = n8; i < n; i++) total += p[i];
    for (int l = 0; l < 8; l++) total += acc[l];
    return total;
}

uint64_t qllama_read_sum(const uint64_t *p, ptrdiff_t n, int threads) {
    ptrdiff_t part = (n + threads - 1) / threads;
    uint64_t total = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : total)
    for (int t = 0; t < threads; t++) {
        ptrdiff_t start = t * part, stop = start + part < n ? start + part : n;
        if (start < stop) total += sum_range(p + start, stop - start);
    }
    return total;
}

/* qllama_read_rows reads a Q8_0 matrix's int8 rows and their scales as a decode kernel
 * deals them out: blocks of 16 rows shared by a guided schedule (the engine's), and in a
 * block either each row front to back, one after another (four == 0: decode.h's
 * q80_rows1), or four rows at a time, 32 bytes of each in turn (four == 1: q80_dot4).
 * The sums are trivial, so only the order of the reads differs. */
static uint64_t rows_one(const int8_t *q, const float *s, ptrdiff_t r0, ptrdiff_t r1,
                         ptrdiff_t cols, ptrdiff_t gs) {
    uint64_t acc[4] = {0};
    const uint32_t *sw = (const uint32_t *)s;
    for (ptrdiff_t r = r0; r < r1; r++) {
        const uint64_t *w = (const uint64_t *)(q + r * cols);
        for (ptrdiff_t i = 0; i < cols / 8; i += 4)
            for (int l = 0; l < 4; l++) acc[l] += w[i + l];
        for (ptrdiff_t g = r * (cols / gs); g < (r + 1) * (cols / gs); g++) acc[0] += sw[g];
    }
    return acc[0] + acc[1] + acc[2] + acc[3];
}

static uint64_t rows_four(const int8_t *q, const float *s, ptrdiff_t r0, ptrdiff_t r1,
                          ptrdiff_t cols, ptrdiff_t gs) {
    uint64_t acc[4] = {0};
    const uint32_t *sw = (const uint32_t *)s;
    ptrdiff_t r = r0;
    for (; r + 4 <= r1; r += 4) {
        const uint64_t *w = (const uint64_t *)(q + r * cols);
        ptrdiff_t n = cols / 8;
        for (ptrdiff_t i = 0; i < n; i += 4)
            for (int l = 0; l < 4; l++)
                acc[l] += w[i + l] + w[n + i + l] + w[2 * n + i + l] + w[3 * n + i + l];
        for (ptrdiff_t g = r * (cols / gs); g < (r + 4) * (cols / gs); g++) acc[0] += sw[g];
    }
    return acc[0] + acc[1] + acc[2] + acc[3] + rows_one(q, s, r, r1, cols, gs);
}

uint64_t qllama_read_rows(const int8_t *q, const float *s, ptrdiff_t rows, ptrdiff_t cols,
                          ptrdiff_t gs, int four, int threads) {
    uint64_t total = 0;
#pragma omp parallel for num_threads(threads) schedule(guided) reduction(+ : total)
    for (ptrdiff_t b = 0; b < (rows + 15) / 16; b++) {
        ptrdiff_t r1 = 16 * b + 16 < rows ? 16 * b + 16 : rows;
        total += (four ? rows_four : rows_one)(q, s, 16 * b, r1, cols, gs);
    }
    return total;
}
