/* Attention over one head's cached positions, part of x86.c (every variant): fp16
 * cache rows widened by F16C, or fp32 rows; 8 lanes, in kernels.h's order. */

static inline __m256 load8(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8h(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

#define ATTENTION(SUFFIX, T, LOAD, SCALAR)                                                   \
static void attn_scores_##SUFFIX(const float *q, const T *k, ptrdiff_t n_pos, ptrdiff_t hs,  \
                                 float scale, float *att) {                                 \
    for (ptrdiff_t p = 0; p < n_pos; p++) {                                                 \
        const T *kp = k + p * hs;                                                           \
        __m256 a = _mm256_setzero_ps(), b = a;                                              \
        ptrdiff_t j = 0;                                                                    \
        for (; j + 16 <= hs; j += 16) {                                                     \
            a = _mm256_fmadd_ps(load8(q + j), LOAD(kp + j), a);                             \
            b = _mm256_fmadd_ps(load8(q + j + 8), LOAD(kp + j + 8), b);                     \
        }                                                                                   \
        float s = hsum(_mm256_add_ps(a, b));                                                \
        for (; j < hs; j++) s = fmaf(q[j], SCALAR(kp[j]), s);                               \
        att[p] = s * scale;                                                                 \
    }                                                                                       \
}                                                                                           \
static void attn_values_##SUFFIX(const float *att, const T *v, ptrdiff_t n_pos, ptrdiff_t hs, \
                                 float *out) {                                              \
    ptrdiff_t i = 0;                                                                        \
    for (; i + 32 <= hs; i += 32) { /* four accumulators in registers across positions */   \
        __m256 o0 = _mm256_loadu_ps(out + i), o1 = _mm256_loadu_ps(out + i + 8);            \
        __m256 o2 = _mm256_loadu_ps(out + i + 16), o3 = _mm256_loadu_ps(out + i + 24);      \
        for (ptrdiff_t p = 0; p < n_pos; p++) {                                             \
            __m256 a = _mm256_set1_ps(att[p]);                                              \
            const T *vp = v + p * hs + i;                                                   \
            o0 = _mm256_fmadd_ps(a, LOAD(vp), o0);                                          \
            o1 = _mm256_fmadd_ps(a, LOAD(vp + 8), o1);                                      \
            o2 = _mm256_fmadd_ps(a, LOAD(vp + 16), o2);                                     \
            o3 = _mm256_fmadd_ps(a, LOAD(vp + 24), o3);                                     \
        }                                                                                   \
        _mm256_storeu_ps(out + i, o0);                                                      \
        _mm256_storeu_ps(out + i + 8, o1);                                                  \
        _mm256_storeu_ps(out + i + 16, o2);                                                 \
        _mm256_storeu_ps(out + i + 24, o3);                                                 \
    }                                                                                       \
    for (; i + 8 <= hs; i += 8) {                                                           \
        __m256 o0 = _mm256_loadu_ps(out + i);                                               \
        for (ptrdiff_t p = 0; p < n_pos; p++)                                               \
            o0 = _mm256_fmadd_ps(_mm256_set1_ps(att[p]), LOAD(v + p * hs + i), o0);         \
        _mm256_storeu_ps(out + i, o0);                                                      \
    }                                                                                       \
    for (; i < hs; i++) {                                                                   \
        float o = out[i];                                                                   \
        for (ptrdiff_t p = 0; p < n_pos; p++) o = fmaf(att[p], SCALAR(v[p * hs + i]), o);    \
        out[i] = o;                                                                         \
    }                                                                                       \
}
#define SAME(x) (x)
ATTENTION(f16, uint16_t, load8h, qllama_f16_to_f32)
ATTENTION(f32, float, load8, SAME)

static void f16_store(const float *x, uint16_t *h, ptrdiff_t n) {
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(h + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) h[i] = qllama_f32_to_f16(x[i]);
}

