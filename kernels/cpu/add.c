/* add.c: the residual add y += x. Each element is one fp32 addition in both versions, so
 * the fast version gives exactly the reference's bits.
 */
#include "ops.h"
#include "simd.h"

void ns_cpu_add_ref(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void ns_cpu_add(float *y, const float *x, int64_t n) {
    int64_t i = 0;
#if NS_CPU_AVX2
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
        _mm256_storeu_ps(y + i + 8, _mm256_add_ps(_mm256_loadu_ps(y + i + 8), _mm256_loadu_ps(x + i + 8)));
    }
#endif
    for (; i < n; i++) y[i] += x[i];
}
