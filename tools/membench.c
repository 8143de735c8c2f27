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
