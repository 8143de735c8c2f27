/* GGUF's block layouts (gguf-py's quants.py, ggml-common.h), unpacked in plain C for
 * the reference kernels (generic.c), the token table (qllama_dequantize_row) and
 * the scales of the SIMD kernels. All little-endian, as GGUF stores them. */
#ifndef QLLAMA_BLOCK_TYPES_H
#define QLLAMA_BLOCK_TYPES_H

#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* Bytes of one block and its values:
 *   q8_0 (34)  d fp16, q[32] int8
 *   q4_0 (18)  d fp16, qs[16]: value l is qs[l] & 15, value 16 + l is qs[l] >> 4
 *   q4_1 (20)  d fp16, m fp16, qs[16] as q4_0
 *   q4_k (144) d, dmin fp16, scales[12] (8 6-bit sc and m), qs[128]: sub-block 2c
 *              is the low nibbles of qs[32c..32c+31], 2c + 1 their high ones
 *   q5_k (176) as q4_k with qh[32] before qs: bit j of qh[l] is bit 4 of value l of
 *              sub-block j
 *   q6_k (210) ql[128], qh[64], scales[16] int8, d fp16: value 128h + 32k + l
 *              (k < 4, l < 32) is nibble k / 2 of ql[64h + 32(k % 2) + l] with bits
 *              2k, 2k + 1 of qh[32h + l] above it, less 32; 16-value sub-block i
 *              has scale i */
#define QLLAMA_Q4K_SCALES 4  /* d, dmin come first */
#define QLLAMA_Q4K_QS 16
#define QLLAMA_Q5K_QH 16
#define QLLAMA_Q5K_QS 48
#define QLLAMA_Q6K_QH 128
#define QLLAMA_Q6K_SCALES 192
#define QLLAMA_Q6K_D 208

static inline uint16_t qllama_le16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline float qllama_f16_at(const uint8_t *p) {
    return qllama_f16_to_f32(qllama_le16(p));
}

static inline float qllama_bf16_at(const uint8_t *p) {
    uint32_t u = (uint32_t)qllama_le16(p) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* The 6-bit scales and mins of a q4_k / q5_k super-block's 8 sub-blocks: sc_j and
 * m_j are the low 6 bits of bytes j and j + 4 for j < 4; above, their low 4 bits are
 * byte j + 4's low and high nibble, their top 2 bits bytes j - 4's and j's top bits. */
static inline void qllama_k_scales(const uint8_t *s, uint8_t sc[8], uint8_t m[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 15) | (s[j] >> 6) << 4);
        m[j + 4] = (uint8_t)((s[j + 8] >> 4) | (s[j + 4] >> 6) << 4);
    }
}

/* The unsigned values of one block: q4_0 / q4_1 (32, 0..15), q4_k (256, 0..15),
 * q5_k (256, 0..31), q6_k (256, 0..63, before the - 32). */
static inline void qllama_unpack_block(int type, const uint8_t *b, uint8_t *q) {
    switch (type) {
    case QLLAMA_Q4_0:
    case QLLAMA_Q4_1: {
        const uint8_t *qs = b + (type == QLLAMA_Q4_0 ? 2 : 4);
        for (int l = 0; l < 16; l++) {
            q[l] = qs[l] & 15;
            q[l + 16] = qs[l] >> 4;
        }
        break;
    }
    case QLLAMA_Q4_K:
    case QLLAMA_Q5_K: {
        const uint8_t *qs = b + (type == QLLAMA_Q4_K ? QLLAMA_Q4K_QS : QLLAMA_Q5K_QS);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                q[64 * c + l] = qs[32 * c + l] & 15;
                q[64 * c + 32 + l] = qs[32 * c + l] >> 4;
            }
        if (type == QLLAMA_Q5_K)
            for (int j = 0; j < 8; j++)
                for (int l = 0; l < 32; l++)
                    q[32 * j + l] |= (uint8_t)(((b[QLLAMA_Q5K_QH + l] >> j) & 1) << 4);
        break;
    }
    case QLLAMA_Q6_K:
        for (int h = 0; h < 2; h++)
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < 32; l++) {
                    uint8_t lo = b[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2)) & 15;
                    uint8_t hi = b[QLLAMA_Q6K_QH + 32 * h + l] >> (2 * k) & 3;
                    q[128 * h + 32 * k + l] = (uint8_t)(lo | hi << 4);
                }
        break;
    }
}

#endif /* QLLAMA_BLOCK_TYPES_H */
