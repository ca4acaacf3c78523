/* quant.c: rows of weights in ggml storage types to fp32 and back: F32, F16, BF16 and
 * the 32-element block types Q8_0, Q4_0, Q4_1 (layouts in ops.h, quantisation rules as
 * ggml's quantize_row_*_ref). Block fields are read with memcpy: GGUF rows of 34- or
 * 18-byte blocks are not aligned for fp16 loads.
 *
 * The fast dequantiser gives the same bits as the reference for every input: both compute
 * d*q (Q8_0, Q4_0) as one fp32 multiply, and d*q + m (Q4_1) as one fused multiply-add
 * where the target has FMA (the vector path needs it), as a multiply and an add where it
 * has not (a compiler cannot contract them there, and a software fmaf would be ~5x slower).
 */
#include "ops.h"
#include "gguf.h"
#include "simd.h"

#include <float.h>
#include <math.h>
#include <string.h>

#define QK 32           /* elements per block */
#define Q8_0_BYTES 34   /* fp16 d; int8 q[32] */
#define Q4_0_BYTES 18   /* fp16 d; uint8 qs[16] */
#define Q4_1_BYTES 20   /* fp16 d; fp16 m; uint8 qs[16] */

#if defined(__FMA__)
#define Q4_1_MAD(d, q, m) fmaf((d), (q), (m))
#else
#define Q4_1_MAD(d, q, m) ((d) * (q) + (m))
#endif

static inline float load_fp16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return ns_fp16_to_fp32(h);
}

static inline void store_fp16(uint8_t *p, float f) {
    uint16_t h = ns_fp32_to_fp16(f);
    memcpy(p, &h, sizeof h);
}

/* ---- reference dequantisation ---- */

void ns_cpu_dequant_row_ref(int type, const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    switch (type) {
    case NS_GGML_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case NS_GGML_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = load_fp16(p + 2 * i);
        return;
    case NS_GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, sizeof h);
            dst[i] = ns_bf16_to_fp32(h);
        }
        return;
    case NS_GGML_Q8_0:
        NS_ASSERT(n % QK == 0);
        for (int64_t b = 0; b < n / QK; b++, p += Q8_0_BYTES, dst += QK) {
            float d = load_fp16(p);
            const int8_t *q = (const int8_t *)(p + 2);
            for (int j = 0; j < QK; j++) dst[j] = d * (float)q[j];
        }
        return;
    case NS_GGML_Q4_0:
        NS_ASSERT(n % QK == 0);
        for (int64_t b = 0; b < n / QK; b++, p += Q4_0_BYTES, dst += QK) {
            float d = load_fp16(p);
            const uint8_t *qs = p + 2;
            for (int j = 0; j < QK / 2; j++) {
                dst[j] = d * (float)((qs[j] & 0x0f) - 8);
                dst[j + QK / 2] = d * (float)((qs[j] >> 4) - 8);
            }
        }
        return;
    case NS_GGML_Q4_1:
        NS_ASSERT(n % QK == 0);
        for (int64_t b = 0; b < n / QK; b++, p += Q4_1_BYTES, dst += QK) {
            float d = load_fp16(p), m = load_fp16(p + 2);
            const uint8_t *qs = p + 4;
            for (int j = 0; j < QK / 2; j++) {
                dst[j] = Q4_1_MAD(d, (float)(qs[j] & 0x0f), m);
                dst[j + QK / 2] = Q4_1_MAD(d, (float)(qs[j] >> 4), m);
            }
        }
        return;
    default:
        NS_ASSERT(!"ns_cpu_dequant_row_ref: unknown type");
    }
}

/* ---- fast dequantisation ---- */

#if NS_CPU_AVX2
/* 8 bytes -> 8 floats, signed or unsigned. */
static inline __m256 i8x8_to_ps(const void *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadu_si64(p)));
}
static inline __m256 u8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }

static void dequant_q8_0_avx2(const uint8_t *p, float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, p += Q8_0_BYTES, dst += QK) {
        __m256 d = _mm256_set1_ps(load_fp16(p));
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(d, i8x8_to_ps(p + 2 + 8 * k)));
    }
}

static void dequant_q4_avx2(const uint8_t *p, float *dst, int64_t nb, int has_min) {
    const __m128i mask = _mm_set1_epi8(0x0f);
    const size_t nbytes = has_min ? Q4_1_BYTES : Q4_0_BYTES;
    for (int64_t b = 0; b < nb; b++, p += nbytes, dst += QK) {
        __m256 d = _mm256_set1_ps(load_fp16(p));
        __m128i raw = _mm_loadu_si128((const __m128i *)(p + (has_min ? 4 : 2)));
        __m128i lo = _mm_and_si128(raw, mask);                    /* elements 0..15 */
        __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask); /* elements 16..31 */
        __m256 q[4] = {u8x8_to_ps(lo), u8x8_to_ps(_mm_srli_si128(lo, 8)), u8x8_to_ps(hi),
                       u8x8_to_ps(_mm_srli_si128(hi, 8))};
        if (has_min) {
            __m256 m = _mm256_set1_ps(load_fp16(p + 2));
            for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 8 * k, _mm256_fmadd_ps(d, q[k], m));
        } else {
            const __m256 eight = _mm256_set1_ps(8.0f); /* q - 8 is exact in fp32 */
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(dst + 8 * k, _mm256_mul_ps(d, _mm256_sub_ps(q[k], eight)));
        }
    }
}
#endif

void ns_cpu_dequant_row(int type, const void *src, float *dst, int64_t n) {
#if NS_CPU_AVX2
    const uint8_t *p = src;
    int64_t i = 0;
    switch (type) {
    case NS_GGML_F16:
#if defined(__F16C__)
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
#endif
        ns_cpu_dequant_row_ref(type, p + 2 * i, dst + i, n - i);
        return;
    case NS_GGML_BF16:
        for (; i + 8 <= n; i += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p + 2 * i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
        ns_cpu_dequant_row_ref(type, p + 2 * i, dst + i, n - i);
        return;
    case NS_GGML_Q8_0:
        NS_ASSERT(n % QK == 0);
        dequant_q8_0_avx2(p, dst, n / QK);
        return;
    case NS_GGML_Q4_0:
    case NS_GGML_Q4_1:
        NS_ASSERT(n % QK == 0);
        dequant_q4_avx2(p, dst, n / QK, type == NS_GGML_Q4_1);
        return;
    default: /* F32 (a memcpy) and the unknown-type assertion */
        break;
    }
#endif
    ns_cpu_dequant_row_ref(type, src, dst, n);
}

/* ---- quantisation (ggml's reference rules) ---- */

/* Q8_0: d = amax/127, q = round(x/d) (half away from zero). */
static void quantize_q8_0(const float *x, uint8_t *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += QK, y += Q8_0_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_fp16(y, d);
        int8_t *q = (int8_t *)(y + 2);
        for (int j = 0; j < QK; j++) q[j] = (int8_t)roundf(x[j] * id);
    }
}

/* Q4_0: d = (the value of largest magnitude, with its sign) / -8, so that value maps to
 * q = 0; q = min(15, trunc(x/d + 8.5)). The opposite extreme clips at 15. */
static void quantize_q4_0(const float *x, uint8_t *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += QK, y += Q4_0_BYTES) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_fp16(y, d);
        uint8_t *qs = y + 2;
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (int8_t)(x[j] * id + 8.5f), q1 = (int8_t)(x[j + QK / 2] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* Q4_1: d = (max - min)/15, m = min, q = min(15, trunc((x - min)/d + 0.5)). */
static void quantize_q4_1(const float *x, uint8_t *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += QK, y += Q4_1_BYTES) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK; j++) {
            min = x[j] < min ? x[j] : min;
            max = x[j] > max ? x[j] : max;
        }
        float d = (max - min) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        store_fp16(y, d);
        store_fp16(y + 2, min);
        uint8_t *qs = y + 4;
        for (int j = 0; j < QK / 2; j++) {
            int q0 = (int8_t)((x[j] - min) * id + 0.5f);
            int q1 = (int8_t)((x[j + QK / 2] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void ns_cpu_quantize_row(int type, const float *src, void *dst, int64_t n) {
    uint8_t *y = dst;
    switch (type) {
    case NS_GGML_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case NS_GGML_F16:
        for (int64_t i = 0; i < n; i++) store_fp16(y + 2 * i, src[i]);
        return;
    case NS_GGML_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = ns_fp32_to_bf16(src[i]);
            memcpy(y + 2 * i, &h, sizeof h);
        }
        return;
    case NS_GGML_Q8_0:
        NS_ASSERT(n % QK == 0);
        quantize_q8_0(src, y, n / QK);
        return;
    case NS_GGML_Q4_0:
        NS_ASSERT(n % QK == 0);
        quantize_q4_0(src, y, n / QK);
        return;
    case NS_GGML_Q4_1:
        NS_ASSERT(n % QK == 0);
        quantize_q4_1(src, y, n / QK);
        return;
    default:
        NS_ASSERT(!"ns_cpu_quantize_row: unknown type");
    }
}
