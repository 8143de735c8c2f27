/* The feed-forward's gate, h[i] = silu(h[i]) * g[i] with silu(v) = v / (1 + e^-v), and
 * attention's softmax, in float32 with an exp of their own. libm's expf is a call per
 * value (a tenth of a small model's prefill in each); this one is a few float
 * operations that gcc vectorizes, so the x86-64-v3 clones run 8 lanes of it. Every
 * operation is one IEEE float32 one (no FMA: -ffp-contract=off) and none depends on
 * the lane count (the softmax's sum runs in 8 fixed lanes whatever the clone), so each
 * clone, each variant and decode and prefill give the same bits. Accuracy: within a few
 * ulp of e^x (tests/test_kernels.py); the logits stay within the golden tests'
 * tolerance of llama2.c's. The sampler keeps ops.pxd's softmax, libm's expf as run.c:
 * its probabilities pick tokens. Included by engine.pyx. */
#ifndef QLLAMA_ACTIVATIONS_H
#define QLLAMA_ACTIVATIONS_H

#include <stddef.h>
#include <stdint.h>

#include "bits.h"
#include "clones.h"

/* e^x as 2^n * e^r, n = round(x / ln 2), |r| <= ln(2) / 2, e^r by its Taylor series to
 * r^7 (the rest is below 0.05 ulp). 2^n is built from bits as 2^(n-1) * 2, so that n
 * may be 128 (e^x up to FLT_MAX); above ln(FLT_MAX) the result is +Inf, as expf's.
 * Below -86.9 (n -125) x is taken as -86.9: e^x under 3e-38, which silu's
 * 1 / (1 + e^x) takes as 0 either way. NaN gives +Inf or e^-86.9; silu's v times it
 * is NaN still. */
static inline __attribute__((always_inline)) float qllama_exp(float x) {
    const float shift = 12582912.0f;  /* 1.5 * 2^23: adding it rounds to an integer */
    const float top = 88.72283f;      /* the largest float whose e^x is finite */
    const float bottom = -86.9f;
    /* The clamps and the Inf are selected with integer masks: gcc keeps a float compare
     * (it may raise a flag) and the float operations after it as branches, which do not
     * vectorize. */
    int32_t o = qllama_order_bits(x);
    uint32_t above = -(uint32_t)(o > qllama_order_bits(top));
    uint32_t below = -(uint32_t)(o < qllama_order_bits(bottom));
    uint32_t xb = qllama_bits(x);
    float c = qllama_from_bits((xb & ~above & ~below) | (qllama_bits(top) & above)
                               | (qllama_bits(bottom) & below));
    float k = c * 1.44269504f + shift;
    float n = k - shift;
    /* Cody and Waite: ln 2 in two pieces, the first with few bits so n * it is exact */
    float r = (c - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* k's low bits are n + 2^22; 2^(n-1)'s exponent field is n + 126 */
    float e = p * qllama_from_bits((qllama_bits(k) - 0x4b400000u + 126u) << 23) * 2.0f;
    return qllama_from_bits((qllama_bits(e) & ~above) | (0x7f800000u & above));
}

QLLAMA_CLONES
static void qllama_swiglu(float *h, const float *g, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float v = h[i];
        h[i] = v * (1.0f / (1.0f + qllama_exp(-v))) * g[i];
    }
}

/* In place: x[i] = e^(x[i] - max) / sum, as ops.pxd's softmax but with qllama_exp and
 * the sum in 8 lanes (element i into lane i % 8, the lanes then added in a fixed
 * order). The max is taken over order_bits, an integer max that vectorizes. */
QLLAMA_CLONES
static void qllama_softmax(float *x, ptrdiff_t n) {
    int32_t top = qllama_order_bits(x[0]);
    for (ptrdiff_t i = 1; i < n; i++) {
        int32_t o = qllama_order_bits(x[i]);
        top = o > top ? o : top;
    }
    /* back from order bits to the float */
    float max = qllama_from_bits((uint32_t)(top ^ ((top >> 31) & 0x7fffffff)));
    float lanes[8] = {0};
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) {
            x[i + j] = qllama_exp(x[i + j] - max);
            lanes[j] += x[i + j];
        }
    for (int j = 0; i < n; i++, j++) {
        x[i] = qllama_exp(x[i] - max);
        lanes[j] += x[i];
    }
    float total = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5]))
                  + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (i = 0; i < n; i++) x[i] = x[i] / total;
}

#endif /* QLLAMA_ACTIVATIONS_H */
