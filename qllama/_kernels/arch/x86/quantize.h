/* Activations to Q8_0, part of x86.c (every variant): 8 lanes of the division and
 * rounding, then two packs to bytes; gcc leaves the plain loop scalar. The max over
 * |x| and the zero groups are generic.c's (qllama_quantize_row_with). */

static void round_group(const float *x, ptrdiff_t n, float scale, int8_t *q) {
    ptrdiff_t i = 0;
    const __m256 s = _mm256_set1_ps(scale), one = _mm256_set1_ps(1.0f);
    const __m256 half = _mm256_set1_ps(0.5f), mhalf = _mm256_set1_ps(-0.5f);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (; i + 32 <= n; i += 32) {
        __m256i r[4];
        for (int j = 0; j < 4; j++) {
            __m256 v = _mm256_div_ps(_mm256_loadu_ps(x + i + 8 * j), s);
            __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            __m256 d = _mm256_sub_ps(v, t);
            t = _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(d, half, _CMP_GE_OQ), one));
            t = _mm256_sub_ps(t, _mm256_and_ps(_mm256_cmp_ps(d, mhalf, _CMP_LE_OQ), one));
            t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);  /* max(NaN, lo) is lo */
            r[j] = _mm256_cvttps_epi32(t);
        }
        /* packs work per 128-bit lane: reorder the 4-byte runs afterwards */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]),
                                       _mm256_packs_epi32(r[2], r[3]));
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(p, order));
    }
    for (; i < n; i++) q[i] = qllama_quantize_value(x[i] / scale);
}

static void quantize_row(const float *x, ptrdiff_t n, ptrdiff_t gs, int8_t *q, float *s) {
    qllama_quantize_row_with(x, n, gs, q, s, round_group);
}
