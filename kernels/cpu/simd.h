/* simd.h: private AVX2/FMA helpers shared by the CPU kernels (horizontal sums and max,
 * an 8-lane expf). Included only by the kernels/cpu sources; not part of the ops.h contract.
 * Everything here exists only when the compiler targets AVX2 and FMA (NS_CPU_AVX2 is
 * then 1); every caller keeps a portable scalar path for other targets.
 */
#ifndef NS_CPU_SIMD_H
#define NS_CPU_SIMD_H

#if defined(__AVX2__) && defined(__FMA__)
#define NS_CPU_AVX2 1
#include <immintrin.h>

static inline float ns_simd_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float ns_simd_hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* exp(x) for 8 lanes: Cephes range reduction (x = n ln2 + r, |r| <= ln2/2) and its
 * degree-5 polynomial; about 2 ulp over the normal range. Inputs below -87.33 give 0
 * (where expf underflows to tiny or subnormal values), inputs above 88.02 give
 * exp(88.02) ~ 1.6e38 (finite, never inf), NaN stays NaN. */
static inline __m256 ns_simd_exp(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.02f);
    __m256 is_under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    /* max/min return their second operand when either is NaN: NaN flows through. */
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
    y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
    /* 2^n built in the exponent field; n is in [-126, 127] after the clamp. */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(is_under, y);
}

#else
#define NS_CPU_AVX2 0
#endif

#endif
