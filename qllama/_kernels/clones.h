/* QLLAMA_CLONES: a function compiled twice, for x86-64-v3 (AVX2, FMA) and for the
 * baseline, the one the CPU runs picked at load time (gcc's target_clones). The
 * portable build's way to vectorize code outside the kernel variants (kernels.h):
 * the weight and block quantizers and activations.h. A native build (QLLAMA_NATIVE=1,
 * -march=native) compiles them for its CPU alone: gcc 12 stops with an internal
 * compiler error on target_clones under -march=native for AVX-512 CPUs. */
#ifndef QLLAMA_CLONES_H
#define QLLAMA_CLONES_H

#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__) && !defined(QLLAMA_NATIVE)
#define QLLAMA_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define QLLAMA_CLONES
#endif

#endif /* QLLAMA_CLONES_H */
