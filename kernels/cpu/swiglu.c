/* swiglu.c: the gated MLP activation out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
 * Elementwise, so out may alias gate (or up). The fast version uses the 8-lane exp of
 * simd.h; for g below about -88 it returns a tiny value (|out| < 1e-36) instead of the
 * exact underflow, and never inf or NaN for finite input.
 */
#include "ops.h"
#include "simd.h"

#include <math.h>

void ns_cpu_swiglu_ref(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        double g = gate[i];
        out[i] = (float)(g / (1.0 + exp(-g)) * up[i]);
    }
}

void ns_cpu_swiglu(float *out, const float *gate, const float *up, int64_t n) {
    int64_t i = 0;
#if NS_CPU_AVX2
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = ns_simd_exp(_mm256_xor_ps(g, sign));
        __m256 s = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}
