/* fp8.h: FP8 E4M3 ("e4m3fn": no infinities, one NaN code per sign) and the row scaling
 * that the CUDA backend's FP8 GEMMs use (NS_CUDA_FP8=1). Shared, bit for bit, by the CUDA
 * quantizer (kernels/cuda/fp8.cu), its CPU stand-in (tests/cudamock) and the checks:
 * every helper is host+device and uses integer arithmetic or exact float operations only.
 *
 * E4M3: sign bit, 4 exponent bits (bias 7), 3 mantissa bits. Normal values
 * (1 + m/8) * 2^(e-7) for e in 1..15, except code 0x7F (e = 15, m = 7), which is NaN; the
 * largest finite value is 0x7E = 448. Subnormals m/8 * 2^-6 (e = 0). This is the format
 * that CUDA calls __NV_E4M3 and cuBLAS CUDA_R_8F_E4M3.
 *
 * Encoding (ns_fp8_e4m3_from_float): round to nearest, ties to even; magnitudes of 448 and
 * more (infinities too) saturate to +-448 (CUDA's __NV_SATFINITE); NaN gives 0x7F, as CUDA's
 * conversion does.
 *
 * Row scaling (ns_fp8_row_scale): a row x (n) is stored as q = e4m3(x * inv) with
 * inv = 448 / amax and dequantized as q * scale, scale = amax / 448 (amax = max |x|). A row
 * of zeros (or of magnitudes below 2^-100) gets inv = scale = 1; a row holding an infinity
 * or NaN gets inv 0 and scale NaN, so that the products it enters are NaN, as they would be
 * in bf16 (the engine reports rows with no finite logit). */
#ifndef NS_FP8_H
#define NS_FP8_H

#include <stdint.h>

#ifdef __CUDACC__
#define NS_FP8_FN static __host__ __device__ __forceinline__
#else
#define NS_FP8_FN static inline
#endif

#define NS_FP8_E4M3_MAX 448.0f

NS_FP8_FN uint32_t ns_fp8_float_bits(float f) {
#ifdef __CUDA_ARCH__
    return (uint32_t)__float_as_uint(f);
#else
    union { float f; uint32_t u; } v = {.f = f};
    return v.u;
#endif
}

NS_FP8_FN float ns_fp8_bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    union { uint32_t u; float f; } v = {.u = u};
    return v.f;
#endif
}

/* float -> e4m3, round to nearest even, saturating (see the file comment). */
NS_FP8_FN uint8_t ns_fp8_e4m3_from_float(float x) {
    uint32_t bits = ns_fp8_float_bits(x);
    uint8_t sign = (uint8_t)((bits >> 24) & 0x80u);
    uint32_t mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u) return 0x7f; /* NaN (as CUDA: positive) */
    if (mag >= 0x43e00000u) return (uint8_t)(sign | 0x7e); /* >= 448 (and inf): saturate */
    if (mag < 0x3c800000u) {
        /* below 2^-6: subnormal e4m3, m = round(|x| * 2^9) in 0..8 (8 is the smallest normal,
         * code 0x08). |x| * 2^9 < 8 is exact in float, so the rounding is done on its bits:
         * the integer part and the remainder in units of the last place. */
        if (mag < 0x3a000000u) { /* below 2^-11 (a quarter of the smallest subnormal step): 0 */
            return sign;
        }
        /* |x| = 1.f * 2^E with E in [-11, -7]; |x| * 2^9 = 1.f * 2^(E+9), E + 9 in [-2, 2] */
        int e = (int)(mag >> 23) - 127 + 9;
        uint32_t sig = (mag & 0x7fffffu) | 0x800000u; /* 1.f as a 24-bit integer (2^23 = 1) */
        int shift = 23 - e;                           /* bits below the integer part: 21..25 */
        uint32_t q = sig >> shift;
        uint32_t rem = sig & ((1u << shift) - 1u), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1u))) q++;
        return (uint8_t)(sign | q);
    }
    /* normal: keep 3 of float's 23 mantissa bits, rounding the 20 dropped ones to nearest
     * even; a carry moves into the exponent, as it should. Re-bias 127 -> 7. */
    uint32_t r = (mag + 0x7ffffu + ((mag >> 20) & 1u)) >> 20;
    return (uint8_t)(sign | (r - (120u << 3)));
}

/* e4m3 -> float (exact). */
NS_FP8_FN float ns_fp8_e4m3_to_float(uint8_t q) {
    uint32_t sign = (uint32_t)(q & 0x80u) << 24;
    uint32_t e = (q >> 3) & 0xfu, m = q & 7u;
    if (e == 15 && m == 7) return ns_fp8_bits_float(sign | 0x7fc00000u);
    if (e == 0) {
        /* m/8 * 2^-6 = m * 2^-9, exact */
        float v = (float)m * 0.001953125f;
        return (q & 0x80u) ? -v : v;
    }
    return ns_fp8_bits_float(sign | ((e + 120u) << 23) | (m << 20));
}

/* A row's scales from its amax (max |x|, or NaN/inf when the row holds one): *inv
 * multiplies values before encoding, the returned scale multiplies decoded values. */
NS_FP8_FN float ns_fp8_row_scale(float amax, float *inv) {
    if (!(amax <= 0x1.fffffep127f)) { /* inf or NaN in the row */
        *inv = 0.0f;
        return ns_fp8_bits_float(0x7fc00000u);
    }
    if (amax < 0x1p-100f) { /* zeros, or values that encode to 0 anyway (448 / amax would overflow) */
        *inv = 1.0f;
        return 1.0f;
    }
    *inv = NS_FP8_E4M3_MAX / amax;
    return amax / NS_FP8_E4M3_MAX;
}

#endif
