/* CPU features (cpu.c) and the table of compiled kernel variants. */
#ifndef QLLAMA_CPU_H
#define QLLAMA_CPU_H

#include <stdint.h>

#include "kernels.h"

enum {
    QLLAMA_CPU_AVX = 1 << 0,
    QLLAMA_CPU_AVX2 = 1 << 1,
    QLLAMA_CPU_FMA = 1 << 2,
    QLLAMA_CPU_F16C = 1 << 3,
    QLLAMA_CPU_AVX512F = 1 << 4,
    QLLAMA_CPU_AVX512DQ = 1 << 5,
    QLLAMA_CPU_AVX512BW = 1 << 6,
    QLLAMA_CPU_AVX512VL = 1 << 7,
    QLLAMA_CPU_AVX512VNNI = 1 << 8,
    QLLAMA_CPU_AVXVNNI = 1 << 9,
    QLLAMA_CPU_AMX_TILE = 1 << 10,
    QLLAMA_CPU_AMX_INT8 = 1 << 11,
    QLLAMA_CPU_NEON = 1 << 12,
    QLLAMA_CPU_DOTPROD = 1 << 13,
};

/* Bit i's name (cpu.c, in the order above): what Python lists and tests name. */
extern const char *const qllama_feature_names[];
extern const int qllama_n_features;

typedef struct {
    const char *name;
    const qllama_kernels *table;
    uint64_t needs;  /* QLLAMA_CPU_* bits the variant's instructions need */
} qllama_variant;

/* The variants' tables (setup.py defines QLLAMA_HAVE_<NAME> for those it built). */
extern const qllama_kernels qllama_avx2, qllama_avxvnni, qllama_avx512vnni, qllama_amx;
extern const qllama_kernels qllama_neon, qllama_dotprod;

uint64_t qllama_cpu_features(void);
int qllama_amx_permit(void);  /* 1 when the process may use AMX tiles */
void qllama_cpu_vendor(char out[13]);  /* x86 cpuid's vendor string ("GenuineIntel"), else "" */
const qllama_variant *qllama_variants(int *n);

#endif /* QLLAMA_CPU_H */
