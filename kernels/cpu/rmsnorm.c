/* rmsnorm.c: RMSNorm per row, out = x / sqrt(mean(x^2) + eps) * w. The sum of squares is
 * finished before any element is written, so out may alias x. The reference accumulates
 * in double; the fast version in fp32 with AVX2 (8 lanes x 4 accumulators).
 */
#include "ops.h"
#include "simd.h"

#include <math.h>

void ns_cpu_rmsnorm_ref(float *out, const float *x, const float *w, int n_rows, int n, float eps) {
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *o = out + (size_t)r * n;
        double ss = 0.0;
        for (int i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        double s = 1.0 / sqrt(ss / n + eps);
        for (int i = 0; i < n; i++) o[i] = (float)(xr[i] * s * w[i]);
    }
}

void ns_cpu_rmsnorm(float *out, const float *x, const float *w, int n_rows, int n, float eps) {
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *o = out + (size_t)r * n;
        int i = 0;
        float ss = 0.0f;
#if NS_CPU_AVX2
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (; i + 32 <= n; i += 32) {
            __m256 v0 = _mm256_loadu_ps(xr + i), v1 = _mm256_loadu_ps(xr + i + 8);
            __m256 v2 = _mm256_loadu_ps(xr + i + 16), v3 = _mm256_loadu_ps(xr + i + 24);
            a0 = _mm256_fmadd_ps(v0, v0, a0);
            a1 = _mm256_fmadd_ps(v1, v1, a1);
            a2 = _mm256_fmadd_ps(v2, v2, a2);
            a3 = _mm256_fmadd_ps(v3, v3, a3);
        }
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(xr + i);
            a0 = _mm256_fmadd_ps(v, v, a0);
        }
        ss = ns_simd_hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
        for (; i < n; i++) ss += xr[i] * xr[i];
        float s = 1.0f / sqrtf(ss / (float)n + eps);
        i = 0;
#if NS_CPU_AVX2
        __m256 vs = _mm256_set1_ps(s);
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vs),
                                                  _mm256_loadu_ps(w + i)));
#endif
        for (; i < n; i++) o[i] = xr[i] * s * w[i];
    }
}
