/* x86-64 variants, one source compiled four times (setup.py):
 *
 *   avx2        -mavx2 -mfma -mf16c                       int8 dots: vpmaddubsw + vpmaddwd;
 *                                                         prefill GEMM in ymm
 *   avxvnni     the same + -mavxvnni                      int8 dots: vpdpbusd (VEX, 256-bit);
 *                                                         prefill GEMM in ymm
 *   avx512vnni  + -mavx512f/bw/vl/vnni                    vpdpbusd (EVEX); GEMM in zmm from
 *                                                         16 tokens, in ymm below
 *   amx         + -mamx-tile -mamx-int8                   prefill on AMX tiles (amx.h)
 *
 * The tests build it three times more: with SIMDe (QLLAMA_SIMDE: avx512vnni's code on
 * a CPU without AVX-512), with QLLAMA_VNNI_EVEX (avxvnni's, vpdpbusd in its AVX-512
 * encoding, on CPUs without AVX-VNNI) and with QLLAMA_AMX_EMULATE (amx's, tiles
 * modelled in C).
 *
 * QLLAMA_VARIANT names the table this compilation defines. The arithmetic is
 * kernels.h's, so all four give the generic variant's results bit for bit.
 *
 * This file only decides what each variant has and assembles its table; the kernels
 * live in headers by job, each saying how it works:
 *   quantize.h    activations to Q8_0                                   every variant
 *   decode.h      one token: Q8_0 one row at a time or eight side by    every variant
 *                 side; blocks of a few tokens four rows at a time; fp32
 *                 dots; with ../rows.h, the row drivers shared with neon.c
 *   blocks.h      GGUF block types, one token at a time, four rows      every variant
 *   gemm256.h     the ymm GEMM (prefill), 8 tokens a vector             avx2, avxvnni,
 *                 (blocks of 2-15 tokens: batched decode)               avx512vnni
 *   gemm512.h     the 16-token layout; the zmm GEMM (prefill)           avx512vnni (+ amx)
 *   amx.h         prefill on AMX tiles                                  amx
 *   attention.h   scores and values over the fp16 / fp32 KV cache       every variant
 */
#include <math.h>
#include <string.h>

#ifdef QLLAMA_SIMDE
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>
#else
#include <immintrin.h>
#endif

#include "../../bits.h"
#include "../../block_types.h"
#include "../../generic.h"
#include "../../kernels.h"

#if defined(QLLAMA_VNNI_EVEX)
#define AVX512 0  /* the tests' avxvnni on a CPU without AVX-VNNI: below */
#elif defined(QLLAMA_SIMDE) || (defined(__AVX512VNNI__) && defined(__AVX512VL__) && \
                                defined(__AVX512BW__))
#define AVX512 1
#else
#define AVX512 0
#endif
#if AVX512 || defined(QLLAMA_VNNI_EVEX)
/* QLLAMA_VNNI_EVEX (tests/harness.py): avxvnni's code with vpdpbusd in its AVX-512
 * VL encoding (native, or SIMDe's), the same operation, on CPUs without AVX-VNNI */
#define VNNI 1
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
#elif defined(__AVXVNNI__)
#define VNNI 1
#define DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32((acc), (u), (s))
#else
#define VNNI 0
#endif
#if VNNI
/* acc = DPBUSD(acc, u, s) in place, for the GEMMs' tiles. Given the intrinsic in a
 * loop of several accumulators, gcc 12 copied each one to another register and back
 * on every pass (a move per vpdpbusd); the asm keeps acc where it is. One matrix
 * (11008 x 4096, gs 64, one thread, tools/matmul_ab.sh, the Intel host), 8 to 64
 * tokens: avxvnni 1.14-1.40x, avx512vnni 1.05-1.30x, the same bits. */
#if defined(QLLAMA_SIMDE)
#define DPBUSD_IN(acc, u, s) ((acc) = DPBUSD((acc), (u), (s)))
#define DPBUSD512_IN(acc, u, s) ((acc) = _mm512_dpbusd_epi32((acc), (u), (s)))
#elif AVX512 || defined(QLLAMA_VNNI_EVEX)
#define DPBUSD_IN(acc, u, s) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s))
#define DPBUSD512_IN DPBUSD_IN  /* the registers give the width */
#else
#define DPBUSD_IN(acc, u, s) __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(u), "x"(s))
#endif
#endif
#if AVX512 && (defined(__AMX_INT8__) || defined(QLLAMA_AMX_EMULATE))
#define AMX 1
#else
#define AMX 0
#endif
#define GEMM (AVX512 && !AMX)

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define STR_(a) #a
#define STR(a) STR_(a)
#define TABLE CAT(qllama_, QLLAMA_VARIANT)

static inline float hsum(__m256 v) {  /* ((s0 + s4) + (s2 + s6)) + ((s1 + s5) + (s3 + s7)) */
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* [sum of v[0]'s lanes 0-3, v[1]'s, v[2]'s, v[3]'s | the same of lanes 4-7], exact
 * (unpacks and adds: 10% faster than vphaddd on Zen 4) */
static inline __attribute__((always_inline)) __m256i sum4x2(const __m256i v[4]) {
    __m256i p0 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[0], v[1]), _mm256_unpackhi_epi32(v[0], v[1]));
    __m256i p1 = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2], v[3]), _mm256_unpackhi_epi32(v[2], v[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(p0, p1), _mm256_unpackhi_epi64(p0, p1));
}

/* The exact sums of four rows' int32 lanes: [sum(a0), sum(a1), sum(a2), sum(a3)]. */
static inline __m128i sum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    const __m256i v[4] = {a0, a1, a2, a3};
    __m256i t = sum4x2(v);
    return _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

static inline __m256i load32(const void *p) {
    return _mm256_loadu_si256((const __m256i *)p);
}

/* acc + unsigned bytes u . signed bytes s per int32 lane */
static inline __attribute__((always_inline)) __m256i dot_us_acc(__m256i acc, __m256i u, __m256i s) {
#if VNNI
    return DPBUSD(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* unsigned bytes u . signed bytes s, four products an int32 lane */
static inline __attribute__((always_inline)) __m256i dot_us(__m256i u, __m256i s) {
    return dot_us_acc(_mm256_setzero_si256(), u, s);
}

#include "quantize.h"
#include "decode.h"
#include "blocks.h"

/* ---- Q8_0 prefill: GEMM in ymm (avx2, avxvnni), zmm (avx512vnni), AMX tiles (amx) -- */

#if !AMX
#include "gemm256.h"
#endif
#if AVX512
#include "gemm512.h"
#endif
#if AMX
#include "amx.h"
#define Q80_MATMUL amx_q80_matmul
#define Q80_PACKED_BYTES amx_packed_bytes
#define Q80_PACK amx_pack
#define ROW_BLOCK AMX_ROWS
#elif GEMM  /* zmm for 16 tokens or more, ymm below */
#define Q80_MATMUL q80_matmul
#define Q80_PACKED_BYTES q80_packed_bytes
#define Q80_PACK q80_pack
#define ROW_BLOCK 16
#else  /* 256-bit variants */
#define Q80_MATMUL ymm_q80_matmul
#define Q80_PACKED_BYTES ymm_packed_bytes
#define Q80_PACK ymm_pack
#define ROW_BLOCK 16
#endif

#include "attention.h"

const qllama_kernels TABLE = {
    .name = STR(QLLAMA_VARIANT),
    .row_block = ROW_BLOCK,
    .f32_matmul = f32_matmul,
    .q80_matmul = Q80_MATMUL,
    .q80_packed_bytes = Q80_PACKED_BYTES,
    .q80_pack = Q80_PACK,
    .block_matmul = {BLOCK_MATMULS},
    .block_shared_bytes = block_shared_bytes,
    .block_share = block_share,
    .q80_share = Q80_SHARE,
    .quantize_row = quantize_row,
    .f32_dot = f32_dot,
    .f16_store = f16_store,
    .attn_scores_f16 = attn_scores_f16,
    .attn_values_f16 = attn_values_f16,
    .attn_scores_f32 = attn_scores_f32,
    .attn_values_f32 = attn_values_f32,
};
