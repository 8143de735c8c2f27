/* What this CPU and OS can run, and the kernel variants this build compiled.
 *
 * x86-64: cpuid for the instructions, xgetbv (XCR0) for whether the OS saves the
 * registers they use (AVX: YMM state; AVX-512: opmask and ZMM state; AMX: tile
 * state), and on Linux arch_prctl(ARCH_REQ_XCOMP_PERM) for the permission a
 * process needs before its first tile instruction. aarch64: the kernel's hwcaps.
 * Which variant runs is decided in Python (qllama/kernels.py) from these facts. */
#include <string.h>

#include "kernels.h"
#include "cpu.h"

const char *const qllama_feature_names[] = {
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl",
    "avx512vnni", "avxvnni", "amx_tile", "amx_int8", "neon", "dotprod",
};
const int qllama_n_features = (int)(sizeof qllama_feature_names / sizeof qllama_feature_names[0]);
_Static_assert(1 << sizeof qllama_feature_names / sizeof qllama_feature_names[0]
               == QLLAMA_CPU_DOTPROD << 1, "a name for every QLLAMA_CPU_* bit, in order");

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

static uint64_t xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

uint64_t qllama_cpu_features(void) {
    uint32_t a, b, c, d, max_leaf;
    uint64_t f = 0;
    if (!__get_cpuid(0, &max_leaf, &b, &c, &d)) return 0;
    __cpuid(1, a, b, c, d);
    int osxsave = (c >> 27) & 1;
    uint64_t x = osxsave ? xcr0() : 0;
    int ymm = (x & 0x6) == 0x6, zmm = (x & 0xe6) == 0xe6, tiles = (x & 0x60000) == 0x60000;
    if (ymm && ((c >> 28) & 1)) f |= QLLAMA_CPU_AVX;
    if (ymm && ((c >> 12) & 1)) f |= QLLAMA_CPU_FMA;
    if (ymm && ((c >> 29) & 1)) f |= QLLAMA_CPU_F16C;
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        if (ymm && ((b >> 5) & 1)) f |= QLLAMA_CPU_AVX2;
        if (zmm && ((b >> 16) & 1)) f |= QLLAMA_CPU_AVX512F;
        if (zmm && ((b >> 17) & 1)) f |= QLLAMA_CPU_AVX512DQ;
        if (zmm && ((b >> 30) & 1)) f |= QLLAMA_CPU_AVX512BW;
        if (zmm && ((b >> 31) & 1)) f |= QLLAMA_CPU_AVX512VL;
        if (zmm && ((c >> 11) & 1)) f |= QLLAMA_CPU_AVX512VNNI;
        if (tiles && ((d >> 24) & 1)) f |= QLLAMA_CPU_AMX_TILE;
        if (tiles && ((d >> 25) & 1)) f |= QLLAMA_CPU_AMX_INT8;
        uint32_t subleaves = a;
        if (subleaves >= 1) {
            __cpuid_count(7, 1, a, b, c, d);
            if (ymm && ((a >> 4) & 1)) f |= QLLAMA_CPU_AVXVNNI;
        }
    }
    return f;
}

void qllama_cpu_vendor(char out[13]) {
    uint32_t a, b, c, d;
    memset(out, 0, 13);
    if (!__get_cpuid(0, &a, &b, &c, &d)) return;
    memcpy(out, &b, 4), memcpy(out + 4, &d, 4), memcpy(out + 8, &c, 4);  /* "GenuineIntel" */
}

int qllama_amx_permit(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18): Linux 5.16 and later
     * refuse tile instructions (SIGILL) until the process has asked. */
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return 0;
#endif
}

#elif defined(__aarch64__)
#ifdef __linux__
#include <sys/auxv.h>
#endif

uint64_t qllama_cpu_features(void) {
    uint64_t f = QLLAMA_CPU_NEON;  /* Advanced SIMD is part of every AArch64 CPU */
#if defined(__linux__) && defined(AT_HWCAP)
    unsigned long hw = getauxval(AT_HWCAP);
    if (hw & (1ul << 20)) f |= QLLAMA_CPU_DOTPROD;  /* HWCAP_ASIMDDP */
#elif defined(__APPLE__)
    f |= QLLAMA_CPU_DOTPROD;  /* every Apple arm64 CPU */
#endif
    return f;
}

int qllama_amx_permit(void) { return 0; }
void qllama_cpu_vendor(char out[13]) { memset(out, 0, 13); }

#else
uint64_t qllama_cpu_features(void) { return 0; }
int qllama_amx_permit(void) { return 0; }
void qllama_cpu_vendor(char out[13]) { memset(out, 0, 13); }
#endif

/* Every variant compiled into this build, with the features it needs. */
enum {
    X86_AVX2 = QLLAMA_CPU_AVX | QLLAMA_CPU_AVX2 | QLLAMA_CPU_FMA | QLLAMA_CPU_F16C,
    X86_AVX512 = X86_AVX2 | QLLAMA_CPU_AVX512F | QLLAMA_CPU_AVX512BW | QLLAMA_CPU_AVX512VL
                 | QLLAMA_CPU_AVX512VNNI,
};

static const qllama_variant variants[] = {
    {"scalar", &qllama_generic, 0},
#ifdef QLLAMA_HAVE_AVX2
    {"avx2", &qllama_avx2, X86_AVX2},
#endif
#ifdef QLLAMA_HAVE_AVXVNNI
    {"avxvnni", &qllama_avxvnni, X86_AVX2 | QLLAMA_CPU_AVXVNNI},
#endif
#ifdef QLLAMA_HAVE_AVX512VNNI
    {"avx512vnni", &qllama_avx512vnni, X86_AVX512},
#endif
#ifdef QLLAMA_HAVE_AMX
    {"amx", &qllama_amx, X86_AVX512 | QLLAMA_CPU_AMX_TILE | QLLAMA_CPU_AMX_INT8},
#endif
#ifdef QLLAMA_HAVE_NEON
    {"neon", &qllama_neon, QLLAMA_CPU_NEON},
#endif
#ifdef QLLAMA_HAVE_DOTPROD
    {"dotprod", &qllama_dotprod, QLLAMA_CPU_NEON | QLLAMA_CPU_DOTPROD},
#endif
};

const qllama_variant *qllama_variants(int *n) {
    *n = (int)(sizeof variants / sizeof variants[0]);
    return variants;
}
