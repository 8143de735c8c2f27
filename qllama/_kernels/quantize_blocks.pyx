# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""GGUF block quantizers, fast: the bytes of quant/blocks.py (llama.cpp's reference
quantizers) for q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, f16 and bf16, nogil, a prange
over rows.

The k-quants' search for a group's scale (up to 21 trial scales, each a few float32
sums over the group) is a chain of dependent adds: one group at a time, it waits on
latency (llama.cpp's reference: 56-140 MB/s here). Here 8 groups go side by side,
value i of each in one vector (`x[i]`, GCC vector types), so each sum is 8
independent lanes (370-460 MB/s); every lane does the C's operations in the C's
order (no FMA: -ffp-contract=off), so the bytes are the reference's.
"""
from cython.parallel cimport prange

cdef extern from * nogil:
    """
    #pragma GCC diagnostic ignored "-Wpsabi"  /* vector returns: always inlined, no ABI */
    #include <math.h>
    #include <stdint.h>
    #include <string.h>

    #include "clones.h"
    #define QB_INLINE static inline __attribute__((always_inline))

    /* ggml's nearest_int: round half to even by adding 1.5 * 2^23. */
    QB_INLINE int32_t qb_nearest(float f) {
        float v = f + 12582912.0f;
        int32_t i;
        memcpy(&i, &v, 4);
        return (i & 0x007fffff) - 0x00400000;
    }

    QB_INLINE int32_t qb_clamp(int32_t v, int32_t lo, int32_t hi) {
        return v < lo ? lo : (v > hi ? hi : v);
    }

    /* float32 -> IEEE half, round to nearest even; NaN -> quiet NaN (a weighted fit of
     * values below ~1e-20 divides 0 by 0 in llama.cpp too: the same bytes). */
    QB_INLINE uint16_t qb_fp16(float f) {
        uint32_t x;
        memcpy(&x, &f, 4);
        uint16_t sign = (x >> 16) & 0x8000;
        x &= 0x7fffffff;
        if (x > 0x7f800000u)
            return sign | 0x7e00;
        if (x >= 0x477ff000u)            /* >= 65520: rounds to infinity */
            return sign | 0x7c00;
        if (x < 0x38800000u) {           /* below 2^-14: a half subnormal, m * 2^-24 */
            float a;
            memcpy(&a, &x, 4);
            float m = (a * 16777216.0f + 12582912.0f) - 12582912.0f;  /* exact scaling */
            return sign | (uint16_t)m;
        }
        x -= 0x38000000u;                /* rebias the exponent, 127 -> 15 */
        x += 0xfff + ((x >> 13) & 1);    /* round the 13 dropped bits to even */
        return sign | (uint16_t)(x >> 13);
    }

    QB_INLINE float qb_from_fp16(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 0x3ff, x;
        float f;
        if (e == 0) {
            f = (float)m * 5.9604644775390625e-8f;  /* m * 2^-24, exact */
            return sign ? -f : f;
        }
        x = e == 31 ? 0x7f800000u | (m << 13) : ((e + 112) << 23) | (m << 13);
        x |= sign;
        memcpy(&f, &x, 4);
        return f;
    }

    QB_INLINE void qb_put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

    /* ---- 32-value blocks ---- */

    QB_INLINE void qb_q8_0(const float *x, uint8_t *y) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        qb_put16(y, qb_fp16(d));
        for (int j = 0; j < 32; j++) {
            /* roundf (half away from zero) without a call: |v| <= 127, so truncation
             * to int is exact and the fraction after it too */
            float v = x[j] * id, a = fabsf(v);
            int32_t i = (int32_t)a;
            i += a - (float)i >= 0.5f;
            y[2 + j] = (uint8_t)(int8_t)(v < 0.0f ? -i : i);
        }
    }

    QB_INLINE void qb_q4_0(const float *x, uint8_t *y) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++)
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        qb_put16(y, qb_fp16(d));
        for (int j = 0; j < 16; j++) {
            int8_t a = (int8_t)(x[j] * id + 8.5f), b = (int8_t)(x[16 + j] * id + 8.5f);
            uint8_t qa = a < 15 ? (uint8_t)a : 15, qb = b < 15 ? (uint8_t)b : 15;
            y[2 + j] = qa | (uint8_t)(qb << 4);
        }
    }

    QB_INLINE void qb_q4_1(const float *x, uint8_t *y) {
        float lo = x[0], hi = x[0];
        for (int j = 1; j < 32; j++) { lo = x[j] < lo ? x[j] : lo; hi = x[j] > hi ? x[j] : hi; }
        float d = (hi - lo) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        qb_put16(y, qb_fp16(d));
        qb_put16(y + 2, qb_fp16(lo));
        for (int j = 0; j < 16; j++) {
            int8_t a = (int8_t)((x[j] - lo) * id + 0.5f), b = (int8_t)((x[16 + j] - lo) * id + 0.5f);
            uint8_t qa = a < 15 ? (uint8_t)a : 15, qb = b < 15 ? (uint8_t)b : 15;
            y[4 + j] = qa | (uint8_t)(qb << 4);
        }
    }

    /* ---- k-quants: super-blocks of 256 ---- */

    /* Lanes: GCC vector types, one AVX2 register of 8 floats in the x86-64-v3 clone,
     * two SSE2 ones in the baseline. Element-wise IEEE operations, so each lane rounds
     * as the scalar C. Selects are bit masks (C has no ?: on vectors). */
    typedef float qb_v8f __attribute__((vector_size(32)));
    typedef int32_t qb_v8i __attribute__((vector_size(32)));

    QB_INLINE qb_v8f qb_sel8(qb_v8i m, qb_v8f a, qb_v8f b) {
        return (qb_v8f)(((qb_v8i)a & m) | ((qb_v8i)b & ~m));
    }
    QB_INLINE qb_v8i qb_seli8(qb_v8i m, qb_v8i a, qb_v8i b) { return (a & m) | (b & ~m); }
    QB_INLINE qb_v8f qb_abs8(qb_v8f v) { return (qb_v8f)((qb_v8i)v & 0x7fffffff); }
    QB_INLINE qb_v8i qb_nearest8(qb_v8f f) {
        qb_v8i i = (qb_v8i)(f + 12582912.0f);
        return (i & 0x007fffff) - 0x00400000;
    }
    QB_INLINE qb_v8i qb_clamp8(qb_v8i v, int32_t lo, int32_t hi) {
        qb_v8i vlo = (qb_v8i){0} + lo, vhi = (qb_v8i){0} + hi;
        v = qb_seli8(v < vlo, vlo, v);
        return qb_seli8(v > vhi, vhi, v);
    }

    /* make_qkx2_quants over the 8 groups of 32 of a super-block side by side: x[i] is
     * value i of every group, w[i] its weights. Levels L[i] in 0..nmax, scale and min
     * per lane, x ~ scale * L - min. */
    QB_INLINE void qb_qkx2(const qb_v8f x[32], const qb_v8f w[32], int nmax, float rmin,
                           float rdelta, int nstep, qb_v8i L[32], qb_v8f *scale_out,
                           qb_v8f *min_out) {
        const qb_v8f zero = {0};
        qb_v8f mn = x[0], mx = x[0], sw = w[0], sx = w[0] * x[0];
        for (int i = 1; i < 32; i++) {
            mn = qb_sel8(x[i] < mn, x[i], mn);
            mx = qb_sel8(x[i] > mx, x[i], mx);
            sw += w[i];
            sx += w[i] * x[i];
        }
        mn = qb_sel8(mn > zero, zero, mn);
        qb_v8i flat = mx == mn;
        qb_v8f is = (float)nmax / (mx - mn), scale = 1.0f / is, best = zero;
        for (int i = 0; i < 32; i++) {
            L[i] = qb_clamp8(qb_nearest8(is * (x[i] - mn)), 0, nmax);
            qb_v8f diff = scale * __builtin_convertvector(L[i], qb_v8f) + mn - x[i];
            best += w[i] * (diff * diff);
        }
        for (int step = 0; step <= nstep; step++) {
            qb_v8i La[32];
            qb_v8f sl = zero, sl2 = zero, sxl = zero, mad = zero;
            /* min is the best trial's so far: the C updates it inside this loop */
            is = (rmin + rdelta * (float)step + (float)nmax) / (mx - mn);
            for (int i = 0; i < 32; i++) {
                La[i] = qb_clamp8(qb_nearest8(is * (x[i] - mn)), 0, nmax);
                qb_v8f lf = __builtin_convertvector(La[i], qb_v8f), wl = w[i] * lf;
                sl += wl;
                sl2 += wl * lf;
                sxl += wl * x[i];
            }
            qb_v8f det = sw * sl2 - sl * sl;
            qb_v8f ts = (sw * sxl - sx * sl) / det, tm = (sl2 * sx - sl * sxl) / det;
            qb_v8i pos = tm > zero;
            ts = qb_sel8(pos, sxl / sl2, ts);
            tm = qb_sel8(pos, zero, tm);
            for (int i = 0; i < 32; i++) {
                qb_v8f diff = ts * __builtin_convertvector(La[i], qb_v8f) + tm - x[i];
                mad += w[i] * (diff * diff);
            }
            qb_v8i take = ~flat & (det > zero) & (mad < best);
            best = qb_sel8(take, mad, best);
            scale = qb_sel8(take, ts, scale);
            mn = qb_sel8(take, tm, mn);
            for (int i = 0; i < 32; i++) L[i] = qb_seli8(take, La[i], L[i]);
        }
        for (int i = 0; i < 32; i++) L[i] = qb_seli8(flat, (qb_v8i){0}, L[i]);
        *scale_out = qb_sel8(flat, zero, scale);
        *min_out = -mn;
    }

    /* make_qp_quants of 8 values v with weights w: levels L in 0..nmax and the scale,
     * v ~ scale * L (the 6-bit scales and mins of an importance-weighted super-block). */
    QB_INLINE float qb_qp(const float v[8], const float w[8], int nmax, uint8_t L[8]) {
        float max = 0.0f;
        for (int i = 0; i < 8; i++) max = max > v[i] ? max : v[i];
        if (max == 0.0f) {
            memset(L, 0, 8);
            return 0.0f;
        }
        float iscale = (float)nmax / max, scale = 1.0f / iscale, best = 0.0f;
        for (int i = 0; i < 8; i++) {
            L[i] = (uint8_t)qb_nearest(iscale * v[i]);
            float diff = v[i] - scale * (float)L[i];
            best += w[i] * diff * diff;
        }
        for (int step = -4; step <= 4; step++) {
            if (step == 0) continue;
            float is = (0.1f * (float)step + (float)nmax) / max, s = 1.0f / is, mse = 0.0f;
            for (int i = 0; i < 8; i++) {
                int32_t l = qb_nearest(is * v[i]);
                l = l < nmax ? l : nmax;
                float diff = v[i] - s * (float)l;
                mse += w[i] * diff * diff;
            }
            if (mse < best) { best = mse; iscale = is; }
        }
        float sumlx = 0.0f, suml2 = 0.0f;
        for (int i = 0; i < 8; i++) {
            int32_t l = qb_nearest(iscale * v[i]);
            l = l < nmax ? l : nmax;
            L[i] = (uint8_t)l;
            sumlx += w[i] * v[i] * (float)l;
            suml2 += w[i] * (float)l * (float)l;
        }
        for (int pass = 0; pass < 5; pass++) {
            int changed = 0;
            for (int i = 0; i < 8; i++) {
                float slx = sumlx - w[i] * v[i] * (float)L[i];
                float sl2 = suml2 - w[i] * (float)L[i] * (float)L[i];
                if (slx > 0.0f && sl2 > 0.0f) {
                    int32_t l = qb_nearest(v[i] * sl2 / slx);
                    l = l < nmax ? l : nmax;
                    if (l != L[i]) {
                        slx += w[i] * v[i] * (float)l;
                        sl2 += w[i] * (float)l * (float)l;
                        if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                            L[i] = (uint8_t)l; sumlx = slx; suml2 = sl2; changed++;
                        }
                    }
                }
            }
            if (!changed) break;
        }
        return sumlx / suml2;
    }

    /* q4_K (nmax 15) and q5_K (nmax 31): levels of one super-block in value order,
     * and its header (d, dmin, 12 bytes of 6-bit scales and mins) written to y. With
     * importance qw (256 values, else NULL), llama.cpp's quantize_row_q*_K_impl:
     * weights qw * sqrt(sigma2 + x^2), a longer search (its make_qkx3_quants is this
     * algorithm), the scales and mins fitted by make_qp_quants. */
    QB_INLINE void qb_qk_levels(const float *x, const float *qw, int nmax, float rmin, int nstep,
                                uint8_t Lout[256], uint8_t *y) {
        union { qb_v8f v[32]; float f[32][8]; } xt, wt;
        union { qb_v8i v[32]; int32_t i[32][8]; } L;
        union { qb_v8f v; float f[8]; } scales, mins, av, sw;
        qb_v8f s2 = {0};
        uint8_t ls[8], lm[8];
        uint16_t d16, dm16;
        for (int i = 0; i < 32; i++)
            for (int k = 0; k < 8; k++) xt.f[i][k] = x[32 * k + i];
        if (qw) {
            float sum_x2 = 0.0f;
            for (int l = 0; l < 256; l++) sum_x2 += x[l] * x[l];
            float sigma2 = 2.0f * sum_x2 / 256.0f;
            for (int i = 0; i < 32; i++)
                for (int k = 0; k < 8; k++)
                    wt.f[i][k] = qw[32 * k + i] * sqrtf(sigma2 + xt.f[i][k] * xt.f[i][k]);
            sw.v = (qb_v8f){0};
            for (int i = 0; i < 32; i++) sw.v += wt.v[i];
            qb_qkx2(xt.v, wt.v, nmax, -0.9f, 0.05f, 36, L.v, &scales.v, &mins.v);
            float d_block = qb_qp(scales.f, sw.f, 63, ls), m_block = qb_qp(mins.f, sw.f, 63, lm);
            if (nmax == 31)  /* only q5_K's clamps them (a no-op unless a level wrapped) */
                for (int k = 0; k < 8; k++) {
                    ls[k] = ls[k] < 63 ? ls[k] : 63;
                    lm[k] = lm[k] < 63 ? lm[k] : 63;
                }
            d16 = qb_fp16(d_block);
            dm16 = qb_fp16(m_block);
        } else {
            for (int i = 0; i < 32; i++) s2 += xt.v[i] * xt.v[i];
            for (int k = 0; k < 8; k++) av.f[k] = sqrtf(s2[k] / 32.0f);
            for (int i = 0; i < 32; i++) wt.v[i] = av.v + qb_abs8(xt.v[i]);
            qb_qkx2(xt.v, wt.v, nmax, rmin, 0.1f, nstep, L.v, &scales.v, &mins.v);
            float max_scale = 0.0f, max_min = 0.0f;
            for (int k = 0; k < 8; k++) {
                if (scales.f[k] > max_scale) max_scale = scales.f[k];
                if (mins.f[k] > max_min) max_min = mins.f[k];
            }
            float inv_s = max_scale > 0 ? 63.0f / max_scale : 0.0f;
            float inv_m = max_min > 0 ? 63.0f / max_min : 0.0f;
            for (int k = 0; k < 8; k++) {
                uint8_t a = (uint8_t)qb_nearest(inv_s * scales.f[k]);
                uint8_t b = (uint8_t)qb_nearest(inv_m * mins.f[k]);
                ls[k] = a < 63 ? a : 63;
                lm[k] = b < 63 ? b : 63;
            }
            d16 = qb_fp16(max_scale / 63.0f);
            dm16 = qb_fp16(max_min / 63.0f);
        }
        uint8_t *sc = y + 4;
        for (int k = 0; k < 4; k++) {
            sc[k] = ls[k] | (uint8_t)((ls[k + 4] >> 4) << 6);
            sc[k + 4] = lm[k] | (uint8_t)((lm[k + 4] >> 4) << 6);
            sc[k + 8] = (ls[k + 4] & 0xf) | (uint8_t)((lm[k + 4] & 0xf) << 4);
        }
        qb_put16(y, d16);
        qb_put16(y + 2, dm16);
        float d0 = qb_from_fp16(d16), dm0 = qb_from_fp16(dm16);
        for (int k = 0; k < 8; k++) {
            float d = d0 * (float)ls[k], dm = dm0 * (float)lm[k];
            for (int i = 0; i < 32; i++)
                Lout[32 * k + i] = d != 0.0f
                    ? (uint8_t)qb_clamp(qb_nearest((xt.f[i][k] + dm) / d), 0, nmax)
                    : (uint8_t)L.i[i][k];
        }
    }

    QB_INLINE void qb_q4_k(const float *x, const float *qw, uint8_t *y) {
        uint8_t L[256];
        qb_qk_levels(x, qw, 15, -1.0f, 20, L, y);
        uint8_t *q = y + 16;
        for (int j = 0; j < 256; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = L[j + l] | (uint8_t)(L[j + l + 32] << 4);
    }

    QB_INLINE void qb_q5_k(const float *x, const float *qw, uint8_t *y) {
        uint8_t L[256];
        qb_qk_levels(x, qw, 31, -0.5f, 15, L, y);
        uint8_t *qh = y + 16, *ql = y + 48;
        memset(qh, 0, 32);
        for (int b = 0; b < 4; b++, ql += 32)
            for (int j = 0; j < 32; j++) {
                uint8_t l1 = L[64 * b + j], l2 = L[64 * b + j + 32];
                qh[j] |= (uint8_t)(((l1 >> 4) << (2 * b)) | ((l2 >> 4) << (2 * b + 1)));
                ql[j] = (l1 & 0xf) | (uint8_t)((l2 & 0xf) << 4);
            }
    }

    /* make_qx_quants(rmse_type 1) over 8 groups of 16 side by side (half a super-block),
     * weights w (x^2 without importance): levels L[i] in 0..2 nmax - 1 and scale,
     * x ~ scale * (L - nmax). */
    QB_INLINE void qb_qx(const qb_v8f x[16], const qb_v8f w[16], int nmax, qb_v8i L[16],
                         qb_v8f *scale_out) {
        const qb_v8f zero = {0};
        qb_v8f amax = zero, mx = zero, slx = zero, sl2 = zero;
        for (int i = 0; i < 16; i++) {
            qb_v8f a = qb_abs8(x[i]);
            qb_v8i bigger = a > amax;
            amax = qb_sel8(bigger, a, amax);
            mx = qb_sel8(bigger, x[i], mx);
        }
        qb_v8f is = (float)-nmax / mx;
        for (int i = 0; i < 16; i++) {
            qb_v8i l = qb_clamp8(qb_nearest8(is * x[i]), -nmax, nmax - 1);
            qb_v8f lf = __builtin_convertvector(l, qb_v8f);
            L[i] = l + nmax;
            slx += w[i] * x[i] * lf;
            sl2 += w[i] * lf * lf;
        }
        qb_v8f scale = qb_sel8(sl2 != zero, slx / sl2, zero), best = scale * slx;
        for (int step = -9; step <= 9; step++) {
            if (step == 0) continue;
            qb_v8i La[16];
            is = -((float)nmax + 0.1f * (float)step) / mx;
            slx = sl2 = zero;
            for (int i = 0; i < 16; i++) {
                La[i] = qb_clamp8(qb_nearest8(is * x[i]), -nmax, nmax - 1);
                qb_v8f lf = __builtin_convertvector(La[i], qb_v8f);
                slx += w[i] * x[i] * lf;
                sl2 += w[i] * lf * lf;
            }
            qb_v8i take = (sl2 > zero) & (slx * slx > best * sl2);
            scale = qb_sel8(take, slx / sl2, scale);
            best = qb_sel8(take, scale * slx, best);
            for (int i = 0; i < 16; i++) L[i] = qb_seli8(take, La[i] + nmax, L[i]);
        }
        qb_v8i zeros = amax < 1e-15f;  /* all-zero groups */
        for (int i = 0; i < 16; i++) L[i] = qb_seli8(zeros, (qb_v8i){0}, L[i]);
        *scale_out = qb_sel8(zeros, zero, scale);
    }

    QB_INLINE void qb_q6_k(const float *x, const float *qw, uint8_t *y) {
        union { qb_v8f v[2][16]; float f[2][16][8]; } xt, wt;  /* [half][i][group] */
        union { qb_v8i v[2][16]; int32_t i[2][16][8]; } Lt;
        union { qb_v8f v[2]; float f[16]; } scales;
        uint8_t L[256];
        for (int i = 0; i < 16; i++)
            for (int k = 0; k < 16; k++) {
                float v = x[16 * k + i];
                xt.f[k / 8][i][k % 8] = v;
                wt.f[k / 8][i][k % 8] = qw ? qw[16 * k + i] : v * v;  /* qw: as q6_K_impl */
            }
        qb_qx(xt.v[0], wt.v[0], 32, Lt.v[0], &scales.v[0]);
        qb_qx(xt.v[1], wt.v[1], 32, Lt.v[1], &scales.v[1]);
        float max_scale = 0.0f, max_abs = 0.0f;
        for (int k = 0; k < 16; k++)
            if (fabsf(scales.f[k]) > max_abs) { max_abs = fabsf(scales.f[k]); max_scale = scales.f[k]; }
        if (max_abs < 1e-15f) {
            memset(y, 0, 210);
            return;
        }
        int8_t *sc = (int8_t *)(y + 192);
        float iscale = -128.0f / max_scale;
        uint16_t d16 = qb_fp16(1.0f / iscale);
        qb_put16(y + 208, d16);
        float d0 = qb_from_fp16(d16);
        for (int k = 0; k < 16; k++) {
            int32_t s = qb_nearest(iscale * scales.f[k]);
            sc[k] = (int8_t)(s < 127 ? s : 127);
            float d = d0 * (float)sc[k];
            for (int i = 0; i < 16; i++)
                L[16 * k + i] = d != 0.0f
                    ? (uint8_t)(qb_clamp(qb_nearest(xt.f[k / 8][i][k % 8] / d), -32, 31) + 32)
                    : (uint8_t)Lt.i[k / 8][i][k % 8];
        }
        uint8_t *ql = y, *qh = y + 128;
        for (int j = 0; j < 256; j += 128, ql += 64, qh += 32)
            for (int l = 0; l < 32; l++) {
                uint8_t a = L[j + l], b = L[j + l + 32], c = L[j + l + 64], e = L[j + l + 96];
                ql[l] = (a & 0xf) | (uint8_t)((c & 0xf) << 4);
                ql[l + 32] = (b & 0xf) | (uint8_t)((e & 0xf) << 4);
                qh[l] = (a >> 4) | (uint8_t)((b >> 4) << 2) | (uint8_t)((c >> 4) << 4)
                        | (uint8_t)((e >> 4) << 6);
            }
    }

    /* ---- one row of any type ---- */

    enum { QB_F16, QB_BF16, QB_Q8_0, QB_Q4_0, QB_Q4_1, QB_Q4_K, QB_Q5_K, QB_Q6_K };

    QLLAMA_CLONES
    static void qb_row(int kind, const float *x, const float *qw, uint8_t *y, Py_ssize_t n) {
        #define QB_QW(b) (qw ? qw + 256 * (b) : NULL)
        Py_ssize_t b;
        switch (kind) {
        case QB_F16:
            for (b = 0; b < n; b++) qb_put16(y + 2 * b, qb_fp16(x[b]));
            break;
        case QB_BF16: {
            uint16_t *h = (uint16_t *)y;  /* rows of 2-byte values: 2-byte aligned */
            for (b = 0; b < n; b++) {
                uint32_t u;
                memcpy(&u, x + b, 4);
                h[b] = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
            }
            break;
        }
        case QB_Q8_0: for (b = 0; b < n / 32; b++) qb_q8_0(x + 32 * b, y + 34 * b); break;
        case QB_Q4_0: for (b = 0; b < n / 32; b++) qb_q4_0(x + 32 * b, y + 18 * b); break;
        case QB_Q4_1: for (b = 0; b < n / 32; b++) qb_q4_1(x + 32 * b, y + 20 * b); break;
        case QB_Q4_K: for (b = 0; b < n / 256; b++) qb_q4_k(x + 256 * b, QB_QW(b), y + 144 * b); break;
        case QB_Q5_K: for (b = 0; b < n / 256; b++) qb_q5_k(x + 256 * b, QB_QW(b), y + 176 * b); break;
        case QB_Q6_K: for (b = 0; b < n / 256; b++) qb_q6_k(x + 256 * b, QB_QW(b), y + 210 * b); break;
        }
    }
    """
    void quantize_row "qb_row"(int kind, const float* x, const float* qw, unsigned char* y,
                               Py_ssize_t n)

# type name -> the C's kind, in qb_row's enum order
KINDS = {name: i for i, name in enumerate(
    ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k"))}
MIN_VALUES_PER_THREAD = 1 << 16


def quantize_rows(str name, const float[:, ::1] x, unsigned char[:, ::1] out, int threads=1,
                  const float[::1] importance=None):
    """Quantize rows `x` (n, cols), finite, cols whole blocks of `name`'s type, into
    `out` (n, row bytes): the bytes of quant.blocks.quantize(name, x, importance)
    (`importance`: (cols,), used by quant.blocks.WEIGHTED types, ignored by q8_0,
    f16 and bf16, refused for q4_0 and q4_1)."""
    from ..quant.blocks import WEIGHTED
    from ..quant.types import TYPES
    cdef int kind = KINDS[name]
    cdef Py_ssize_t n = x.shape[0], cols = x.shape[1], r
    cdef const float* qw = NULL
    t = TYPES[name]
    if cols <= 0 or cols % t.block:
        raise ValueError(f"{name}: rows of {cols} values are not whole blocks of {t.block}")
    if out.shape[0] != n or out.shape[1] != t.row_bytes(cols):
        raise ValueError(f"{name}: output of shape {tuple(out.shape)[:2]}, expected "
                         f"{(n, t.row_bytes(cols))}")
    if importance is not None and name in WEIGHTED:
        if importance.shape[0] != cols:
            raise ValueError(f"importance of {importance.shape[0]} columns for rows of {cols}")
        qw = &importance[0]
    elif importance is not None and name in ("q4_0", "q4_1"):
        raise ValueError(f"{name} with an importance matrix is not implemented")
    threads = max(1, min(threads, n * cols // MIN_VALUES_PER_THREAD, n))
    with nogil:
        for r in prange(n, schedule="static", num_threads=threads):
            quantize_row(kind, &x[r, 0], qw, &out[r, 0], cols)
