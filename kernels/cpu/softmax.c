/* softmax.c: in-place softmax of one row, x[i] = exp(x[i] - max) / sum. Subtracting the
 * row max keeps every exp in (0, 1], so the sum is in [1, n] and never overflows. The
 * reference works in double; the fast version in fp32 with the 8-lane exp of simd.h
 * (elements more than ~87 below the max become exactly 0); only the running sum is kept
 * in double so that the scalar path stays accurate over a whole vocabulary.
 */
#include "ops.h"
#include "simd.h"

#include <math.h>

void ns_cpu_softmax_ref(float *x, int n) {
    if (n <= 0) return;
    double mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += exp(x[i] - mx);
    for (int i = 0; i < n; i++) x[i] = (float)(exp(x[i] - mx) / sum);
}

void ns_cpu_softmax(float *x, int n) {
    if (n <= 0) return;
    int i = 0;
    float mx = x[0];
#if NS_CPU_AVX2
    if (n >= 8) {
        __m256 m = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        mx = ns_simd_hmax(m);
    }
#endif
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;

    double sum = 0.0; /* the scalar path adds up to n_vocab terms one by one */
    i = 0;
#if NS_CPU_AVX2
    __m256 vmx = _mm256_set1_ps(mx), vsum = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 e = ns_simd_exp(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
        _mm256_storeu_ps(x + i, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    sum = ns_simd_hsum(vsum);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }

    float inv = (float)(1.0 / sum);
    i = 0;
#if NS_CPU_AVX2
    __m256 vinv = _mm256_set1_ps(inv);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vinv));
#endif
    for (; i < n; i++) x[i] *= inv;
}
