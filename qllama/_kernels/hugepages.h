/* Transparent huge pages for the KV cache, faulted in when it is allocated.
 *
 * Attention reads a session's whole KV cache once per token; in 4 KiB pages that is a
 * TLB miss every 4 KiB of it (at long contexts the cache is as large as the weights).
 * madvise(MADV_HUGEPAGE) over the 2 MiB-aligned interior of a fresh calloc'd block
 * makes Linux fault it in as 2 MiB pages where it can, also when THP is in "madvise"
 * mode. Elsewhere it is a no-op. */
#ifndef QLLAMA_HUGEPAGES_H
#define QLLAMA_HUGEPAGES_H

#include <stddef.h>
#include <stdint.h>
#ifdef __linux__
#include <sys/mman.h>
#endif

static inline void qllama_advise_huge(void *p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t hi = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (hi > lo)
        (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);  /* a hint: failure is harmless */
#else
    (void)p;
    (void)bytes;
#endif
}

/* Fault in every page of a zeroed block now (a write of the zero already there per
 * 4 KiB): a page fault in the middle of a forward pass (zeroing 2 MiB for a huge
 * page) stalls every thread waiting at the next join. */
static inline void qllama_prefault(void *p, size_t bytes) {
    volatile char *c = (volatile char *)p;
    for (size_t i = 0; i < bytes; i += 4096) c[i] = 0;
}

#endif /* QLLAMA_HUGEPAGES_H */
