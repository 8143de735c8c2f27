/* Bit patterns of floats. For non-negative floats (Inf and NaN included) they order
 * like the values, and integer max reductions vectorize where float max reductions
 * (NaN semantics) do not. Used by the weight quantizer, the activation quantizer,
 * the sampler's finite test and the exp of activations.h. */
#ifndef QLLAMA_BITS_H
#define QLLAMA_BITS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t qllama_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline uint32_t qllama_abs_bits(float f) {
    return qllama_bits(f) & 0x7fffffffu;
}

/* All floats as int32 that order as the values do (NaNs beyond the Infs): compares
 * of these are integer ones, which gcc vectorizes where it keeps float compares as
 * branches (under -ftrapping-math they may raise a flag). */
static inline int32_t qllama_order_bits(float f) {
    int32_t i = (int32_t)qllama_bits(f);
    return i ^ ((i >> 31) & 0x7fffffff);
}

/* The same with NaN (bits above Inf's) as 0, so that a max leaves NaN out, as runq.c's
 * `if (val > wmax)` does: a subtract, shift and mask rather than a select, which gcc
 * would not vectorize. */
static inline uint32_t qllama_abs_bits_no_nan(float f) {
    int32_t u = (int32_t)qllama_abs_bits(f);
    return (uint32_t)(u & ((u - 0x7f800001) >> 31));
}

static inline float qllama_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* roundf(v) (half away from zero) without a libm call, exact for every float. */
static inline float qllama_round_away(float v) {
    float t = truncf(v), d = v - t;  /* exact: v - trunc(v) is representable */
    return t + ((float)(d >= 0.5f) - (float)(d <= -0.5f));
}

/* One activation to int8 as runq.c does: round_away(v) clamped to +-127 (NaN to -127). */
static inline int8_t qllama_quantize_value(float v) {
    v = qllama_round_away(v);
    v = v >= -127.0f ? v : -127.0f;
    return (int8_t)(v > 127.0f ? 127.0f : v);
}

#endif /* QLLAMA_BITS_H */
