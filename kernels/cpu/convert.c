/* convert.c: scalar fp16 <-> fp32 and bf16 <-> fp32 conversions, bit-exact and portable
 * (no F16C needed). fp32 -> 16 bits rounds to nearest even; values past the fp16 range
 * become inf; fp16 subnormals are produced and read exactly; NaN stays NaN (quieted).
 * fp16 -> fp32 quiets signalling NaNs the way the F16C instruction does, so the vector
 * dequantisers in quant.c give the same bits as these functions.
 */
#include "ops.h"

#include <string.h>

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float ns_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) /* zero or subnormal: mant * 2^-24, exact in fp32 */
        return f32_from_bits(sign | f32_bits((float)mant * 0x1p-24f));
    if (exp == 31) /* inf, or NaN with its payload kept and the quiet bit set */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0u));
    return f32_from_bits(sign | ((exp + 112u) << 23) | (mant << 13)); /* rebias 15 -> 127 */
}

uint16_t ns_fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, keep the top of the payload */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* >= 65520 (the tie above 65504, which rounds to even: inf) */
        return (uint16_t)(sign | 0x7c00u);
    if (ax < 0x38800000u) {
        /* below 2^-14: an fp16 subnormal or zero. In |f| + 0.5 the fp32 ulp is 2^-24,
         * the fp16 subnormal step, so the hardware addition rounds to nearest even for us;
         * a result of 0x400 is correctly the smallest normal. */
        float a = f32_from_bits(ax) + 0.5f;
        return (uint16_t)(sign | (f32_bits(a) - 0x3f000000u));
    }
    /* normal: rebias the exponent (127 -> 15, i.e. subtract 112 << 23) and round the 13
     * dropped bits to nearest even (add half - 1, plus 1 when the kept lsb is odd). */
    uint32_t odd = (ax >> 13) & 1u;
    ax += 0xc8000fffu + odd;
    return (uint16_t)(sign | (ax >> 13));
}

float ns_bf16_to_fp32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

uint16_t ns_fp32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncation could give inf, so force quiet */
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u); /* round to nearest even; overflow carries into inf */
    return (uint16_t)(x >> 16);
}
