/* The kernel driver (driver.h): the one rule for a matrix's kernel and the one way of
 * preparing its activations, for the engine, Kernels.matmul and the tests' harness. */
#include "driver.h"

int qllama_q8_input(ptrdiff_t n, ptrdiff_t gs) {
    return gs > 0 && gs <= QLLAMA_Q80_MAX_GROUP && n % gs == 0;
}

void qllama_plan_matrix(qllama_plan *p, const qllama_matrix *m, const qllama_kernels *k) {
    p->m = *m;
    if (m->w) {
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

size_t qllama_packed_bytes(const qllama_kernels *k, ptrdiff_t T, ptrdiff_t n, ptrdiff_t gs) {
    if (T < 2 || !k->q80_packed_bytes || !qllama_q8_input(n, gs)) return 0;
    return k->q80_packed_bytes(T, n, gs);
}

void qllama_acts_init(qllama_acts *a, const qllama_plan *p, const float *x, ptrdiff_t T,
                      int8_t *q, float *s) {
    a->x = x;
    a->x_stride = a->n = p->m.cols;
    a->T = T;
    a->gs = p->m.gs;
    a->q = p->q8_input ? q : NULL;
    a->s = p->q8_input ? s : NULL;
    a->packed = NULL;
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
    if (!a->q || !buf || !qllama_packed_bytes(k, a->T, a->n, a->gs)) return;
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
