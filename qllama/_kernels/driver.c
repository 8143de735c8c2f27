/* The kernel driver (driver.h): the one rule for a matrix's kernel and the one way of
 * preparing its activations, for the engine, Kernels.matmul and the tests' harness. */
#include "driver.h"

#include <string.h>

#include "block_types.h"

int qllama_q8_input(ptrdiff_t n, ptrdiff_t gs) {
    return gs > 0 && gs <= QLLAMA_Q80_MAX_GROUP && n % gs == 0;
}

void qllama_plan_matrix(qllama_plan *p, const qllama_matrix *m, const qllama_kernels *k) {
    p->m = *m;
    if (m->type > QLLAMA_Q80) {  /* GGUF blocks: the variant's kernel, else generic's */
        p->fn = k->block_matmul[m->type] ? k->block_matmul[m->type]
                                          : qllama_generic.block_matmul[m->type];
        p->q8_input = m->type > QLLAMA_BF16;
        p->m.gs = p->q8_input ? 32 : 0;
    } else if (m->w) {
        p->fn = k->f32_matmul;
        p->q8_input = 0;
    } else if (qllama_q8_input(m->cols, m->gs)) {  /* int8 dot products */
        p->fn = k->q80_matmul;
        p->q8_input = 1;
    } else {  /* groups straddle rows (or overflow int32): one kernel for every variant */
        p->fn = qllama_q80_flat_matmul;
        p->q8_input = 0;
    }
}

/* Bytes k packs a block of T rows of n values (groups of gs) in for its Q8_0 GEMM; 0
 * where it packs none (its GEMM leaves the block to the one-token kernel). */
static size_t gemm_bytes(const qllama_kernels *k, ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    return T >= 2 && k->q80_packed_bytes && qllama_q8_input(n, gs) ? k->q80_packed_bytes(T, n, gs)
                                                                   : 0;
}

size_t qllama_packed_bytes(const qllama_kernels *k, ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    size_t shared = k->block_shared_bytes ? k->block_shared_bytes(n) : 0;
    if (k->q80_share && qllama_q8_input(n, gs) && (size_t)(n / gs) * 4 > shared)
        shared = (size_t)(n / gs) * 4;
    /* every block size up to T: a variant's GEMMs start at different sizes and rules */
    for (ptrdiff_t t = 2; t <= T; t++) {
        size_t packed = gemm_bytes(k, t, n, gs);
        if (packed > shared) shared = packed;
    }
    return shared;
}

void qllama_acts_init(qllama_acts *a, const qllama_plan *p, const float *x, ptrdiff_t T,
                      int8_t *q, float *s) {
    a->x = x;
    a->x_stride = a->n = p->m.cols;
    a->T = T;
    a->gs = p->m.gs;
    a->q = p->q8_input ? q : NULL;
    a->s = p->q8_input ? s : NULL;
    a->packed = a->shared = NULL;
    a->type = p->m.type;
}

void qllama_acts_quantize(const qllama_kernels *k, const qllama_acts *a, ptrdiff_t t0,
                          ptrdiff_t t1) {
    if (!a->q) return;
    /* a->q and a->s are the caller's writable buffers (qllama_acts_init), const to kernels */
    ptrdiff_t n = a->n, ng = n / a->gs;
    for (ptrdiff_t t = t0; t < t1; t++)
        k->quantize_row(a->x + t * a->x_stride, n, a->gs, (int8_t *)a->q + t * n,
                        (float *)a->s + t * ng);
}

void qllama_acts_pack(const qllama_kernels *k, qllama_acts *a, void *buf) {
    if (!a->q || !buf) return;
    if (a->T == 1) {  /* what every row takes of one token alike, once per matmul input */
        const void *(*share)(const qllama_acts *, void *) =
            a->type > QLLAMA_Q80 ? k->block_share : k->q80_share;
        if (share) a->shared = share(a, buf);
        return;
    }
    if (a->type > QLLAMA_Q80 || gemm_bytes(k, a->T, a->n, a->gs) == 0) return;
    k->q80_pack(a, buf);
    a->packed = buf;
}

void qllama_prepare(const qllama_kernels *k, const qllama_plan *p, qllama_acts *a,
                    const float *x, ptrdiff_t T, int8_t *q, float *s, void *buf) {
    qllama_acts_init(a, p, x, T, q, s);
    qllama_acts_quantize(k, a, 0, T);
    qllama_acts_pack(k, a, buf);
}

void qllama_run(const qllama_kernels *k, const qllama_plan *p, const qllama_acts *a, float *out,
                ptrdiff_t out_stride) {
    for (ptrdiff_t r0 = 0; r0 < p->m.rows; r0 += k->row_block)
        qllama_run_rows(p, r0, k->row_block, a, out, out_stride);
}

void qllama_dequantize_row(const qllama_matrix *m, ptrdiff_t r, float *out) {
    ptrdiff_t n = m->cols;
    if (m->type <= QLLAMA_Q80) {
        if (m->w) {
            memcpy(out, m->w + r * n, (size_t)n * sizeof(float));
        } else {
            for (ptrdiff_t j = 0; j < n; j++) out[j] = m->q[r * n + j] * m->s[(r * n + j) / m->gs];
        }
        return;
    }
    const ptrdiff_t bv = qllama_block_values[m->type], bb = qllama_block_bytes[m->type];
    const uint8_t *row = m->blocks + r * (n / bv * bb);
    uint8_t q[256];
    for (ptrdiff_t b = 0; b < n / bv; b++, out += bv) {
        const uint8_t *blk = row + b * bb;
        qllama_unpack_block(m->type, blk, q);
        float d = qllama_f16_at(blk);
        switch (m->type) {  /* gguf-py's formulas, rounding for rounding */
        case QLLAMA_F16:
            out[0] = d;
            break;
        case QLLAMA_BF16:
            out[0] = qllama_bf16_at(blk);
            break;
        case QLLAMA_GQ8_0:
            for (int l = 0; l < 32; l++) out[l] = (float)(int8_t)blk[2 + l] * d;
            break;
        case QLLAMA_Q4_0:
            for (int l = 0; l < 32; l++) out[l] = d * (float)(q[l] - 8);
            break;
        case QLLAMA_Q4_1: {
            float mn = qllama_f16_at(blk + 2);
            for (int l = 0; l < 32; l++) out[l] = d * (float)q[l] + mn;
            break;
        }
        case QLLAMA_Q4_K:
        case QLLAMA_Q5_K: {
            uint8_t sc[8], mn[8];
            qllama_k_scales(blk + QLLAMA_Q4K_SCALES, sc, mn);
            float dmin = qllama_f16_at(blk + 2);
            for (int j = 0; j < 8; j++) {
                float dj = d * (float)sc[j], mj = dmin * (float)mn[j];
                for (int l = 0; l < 32; l++) out[32 * j + l] = dj * (float)q[32 * j + l] - mj;
            }
            break;
        }
        case QLLAMA_Q6_K: {
            const int8_t *sc = (const int8_t *)(blk + QLLAMA_Q6K_SCALES);
            d = qllama_f16_at(blk + QLLAMA_Q6K_D);
            for (int i = 0; i < 16; i++)
                for (int l = 0; l < 16; l++)
                    out[16 * i + l] = (d * (float)sc[i]) * (float)(q[16 * i + l] - 32);
            break;
        }
        }
    }
}
