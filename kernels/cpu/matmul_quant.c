/* matmul_quant.c: y = x . W^T with W in its GGUF storage type, for small batches
 * (contract in matmul_quant.h). The reference dequantizes W 32 weights at a time with
 * ns_cpu_dequant_row_ref and sums in double.
 *
 * The fast version walks W in tiles of TILE_N = 2 rows. For each group of up to GMAX
 * activation rows it streams the tile's blocks: each 32-weight block is dequantized into
 * registers (d*q, or d*q + m fused: the same bits as ns_cpu_dequant_row) and multiplied
 * into G x TILE_N fp32 vector accumulators, reduced horizontally at the end. The tile stays
 * in L1/L2 while later groups re-read it, so W comes from memory once per call; x (M, K)
 * is re-read from cache per tile. The group size G is a compile-time constant in each
 * specialised copy (1..GMAX), so the accumulators live in registers; a tile past N repeats
 * its last row in the spare slot and does not store it. AVX-512 (16 lanes, 32 registers,
 * GMAX 8) where the compiler targets it, else AVX2+FMA (8 lanes, 16 registers, GMAX 4),
 * else a portable scalar loop. Measured on a Zen 4 core (one thread), Q4_1/Q8_0 beat
 * dequantized-fp32 OpenBLAS sgemm up to M ~ 8-16; past that sgemm's blocking wins, and
 * above M = 16 the caller should use sgemm.
 */
#include "matmul_quant.h"
#include "common.h"
#include "gguf.h" /* ns_ggml_type values only */
#include "ops.h"
#include "simd.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define QK 32 /* weights per block; also the unit the kernels step K in */

/* Bytes per W row of K weights (the same values as ns_ggml_row_bytes, kept here so that
 * the kernels need nothing from engine/gguf.c). */
static size_t row_bytes(int type, int K) {
    switch (type) {
    case NS_GGML_F32: return (size_t)K * 4;
    case NS_GGML_F16:
    case NS_GGML_BF16: return (size_t)K * 2;
    case NS_GGML_Q8_0: return (size_t)K / QK * 34;
    case NS_GGML_Q4_0: return (size_t)K / QK * 18;
    case NS_GGML_Q4_1: return (size_t)K / QK * 20;
    default: NS_ASSERT(!"ns_cpu_matmul_quant: unknown type"); return 0;
    }
}

static int is_block_type(int type) {
    return type == NS_GGML_Q8_0 || type == NS_GGML_Q4_0 || type == NS_GGML_Q4_1;
}

/* Bytes holding weights [k, k + 32) of a row (k a multiple of 32). */
static inline size_t chunk_offset(int type, int k) {
    return row_bytes(type, k);
}

/* Checks the arguments both versions share; returns 0 when there is nothing to write. */
static int check_args(float *y, int ldy, int type, int M, int N, int K) {
    (void)row_bytes(type, 0); /* asserts the type is known */
    if (M <= 0 || N <= 0) return 0;
    NS_ASSERT(ldy >= N && K >= 0);
    NS_ASSERT(!is_block_type(type) || K % QK == 0);
    if (K == 0) {
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) y[(size_t)m * ldy + n] = 0.0f;
        return 0;
    }
    return 1;
}

void ns_cpu_matmul_quant_ref(float *y, int ldy, const float *x, const void *w, int type, int M,
                             int N, int K) {
    if (!check_args(y, ldy, type, M, N, K)) return;
    const size_t rb = row_bytes(type, K);
    for (int n = 0; n < N; n++) {
        const uint8_t *wr = (const uint8_t *)w + (size_t)n * rb;
        for (int m = 0; m < M; m++) {
            const float *xr = x + (size_t)m * K;
            double acc = 0.0;
            for (int k = 0; k < K; k += QK) {
                float wf[QK];
                int len = K - k < QK ? K - k : QK; /* < 32 only for the float types' tail */
                ns_cpu_dequant_row_ref(type, wr + chunk_offset(type, k), wf, len);
                for (int j = 0; j < len; j++) acc += (double)xr[k + j] * (double)wf[j];
            }
            y[(size_t)m * ldy + n] = (float)acc;
        }
    }
}

/* ---- scalar fallback (no AVX2+FMA): one W row and up to 16 activation rows at a time ---- */

static void matmul_quant_scalar(float *y, int ldy, const float *x, const uint8_t *w, int type,
                                int M, int N, int K) {
    const size_t rb = row_bytes(type, K);
    for (int n = 0; n < N; n++) {
        const uint8_t *wr = w + (size_t)n * rb;
        for (int m0 = 0; m0 < M; m0 += 16) {
            int gm = M - m0 < 16 ? M - m0 : 16;
            float acc[16] = {0};
            for (int k = 0; k < K; k += QK) {
                float wf[QK];
                int len = K - k < QK ? K - k : QK;
                ns_cpu_dequant_row(type, wr + chunk_offset(type, k), wf, len);
                for (int g = 0; g < gm; g++) {
                    const float *xr = x + (size_t)(m0 + g) * K + k;
                    float s = 0.0f;
                    for (int j = 0; j < len; j++) s += xr[j] * wf[j];
                    acc[g] += s;
                }
            }
            for (int g = 0; g < gm; g++) y[(size_t)(m0 + g) * ldy + n] = acc[g];
        }
    }
}

#if NS_CPU_AVX2

#define ALWAYS_INLINE inline __attribute__((always_inline))

static ALWAYS_INLINE float load_fp16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return ns_fp16_to_fp32(h);
#endif
}

#if defined(__AVX512F__)
/* ---- 16-lane vectors: a block is 2 vectors ---- */
#define VL 16
#define TILE_N 2 /* W rows per tile */
#define GMAX 8   /* activation rows per group: 16 accumulators + 2 weight vectors of 32 */
#define vadd _mm512_add_ps
typedef __m512 vf;
#define vzero() _mm512_setzero_ps()
#define vload(p) _mm512_loadu_ps(p)
#define vfma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
static ALWAYS_INLINE float vhsum(vf v) { return _mm512_reduce_add_ps(v); }

/* The 32 weights of row p starting at block b (weights [32b, 32b + 32)) as 2 vectors. */
static ALWAYS_INLINE void load_block(int type, const uint8_t *p, int b, vf out[QK / VL]) {
    switch (type) {
    case NS_GGML_F32: {
        const float *f = (const float *)(const void *)p + (size_t)b * QK;
        out[0] = _mm512_loadu_ps(f);
        out[1] = _mm512_loadu_ps(f + 16);
        return;
    }
    case NS_GGML_F16: {
        const uint8_t *h = p + (size_t)b * 64;
        out[0] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
        out[1] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + 32)));
        return;
    }
    case NS_GGML_BF16: {
        const uint8_t *h = p + (size_t)b * 64;
        for (int j = 0; j < 2; j++) {
            __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(h + 32 * j)));
            out[j] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        }
        return;
    }
    case NS_GGML_Q8_0: {
        const uint8_t *blk = p + (size_t)b * 34;
        vf d = _mm512_set1_ps(load_fp16(blk));
        for (int j = 0; j < 2; j++) {
            __m512i q = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2 + 16 * j)));
            out[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(q));
        }
        return;
    }
    case NS_GGML_Q4_0:
    case NS_GGML_Q4_1: {
        const int has_min = type == NS_GGML_Q4_1;
        const uint8_t *blk = p + (size_t)b * (has_min ? 20 : 18);
        vf d = _mm512_set1_ps(load_fp16(blk));
        const __m128i mask = _mm_set1_epi8(0x0f);
        __m128i raw = _mm_loadu_si128((const __m128i *)(blk + (has_min ? 4 : 2)));
        __m128i lo = _mm_and_si128(raw, mask);                    /* elements 0..15 */
        __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask); /* elements 16..31 */
        vf q0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo));
        vf q1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi));
        if (has_min) {
            vf m = _mm512_set1_ps(load_fp16(blk + 2));
            out[0] = _mm512_fmadd_ps(d, q0, m);
            out[1] = _mm512_fmadd_ps(d, q1, m);
        } else {
            const vf eight = _mm512_set1_ps(8.0f); /* q - 8 is exact in fp32 */
            out[0] = _mm512_mul_ps(d, _mm512_sub_ps(q0, eight));
            out[1] = _mm512_mul_ps(d, _mm512_sub_ps(q1, eight));
        }
        return;
    }
    default: NS_ASSERT(!"unreachable");
    }
}

#else
/* ---- 8-lane AVX2 vectors: a block is 4 vectors ---- */
#define VL 8
#define TILE_N 2 /* W rows per tile */
#define GMAX 4   /* activation rows per group: 8 accumulators + 4 weight vectors of 16 */
#define vadd _mm256_add_ps
typedef __m256 vf;
#define vzero() _mm256_setzero_ps()
#define vload(p) _mm256_loadu_ps(p)
#define vfma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
static ALWAYS_INLINE float vhsum(vf v) { return ns_simd_hsum(v); }

static ALWAYS_INLINE __m256 u8x8_to_ps(__m128i v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v));
}

static ALWAYS_INLINE void load_block(int type, const uint8_t *p, int b, vf out[QK / VL]) {
    switch (type) {
    case NS_GGML_F32: {
        const float *f = (const float *)(const void *)p + (size_t)b * QK;
        for (int j = 0; j < 4; j++) out[j] = _mm256_loadu_ps(f + 8 * j);
        return;
    }
    case NS_GGML_F16: {
        const uint8_t *h = p + (size_t)b * 64;
#if defined(__F16C__)
        for (int j = 0; j < 4; j++) out[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + 16 * j)));
#else
        float f[QK];
        ns_cpu_dequant_row(NS_GGML_F16, h, f, QK);
        for (int j = 0; j < 4; j++) out[j] = _mm256_loadu_ps(f + 8 * j);
#endif
        return;
    }
    case NS_GGML_BF16: {
        const uint8_t *h = p + (size_t)b * 64;
        for (int j = 0; j < 4; j++) {
            __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + 16 * j)));
            out[j] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
        }
        return;
    }
    case NS_GGML_Q8_0: {
        const uint8_t *blk = p + (size_t)b * 34;
        vf d = _mm256_set1_ps(load_fp16(blk));
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_cvtepi8_epi32(_mm_loadu_si64(blk + 2 + 8 * j));
            out[j] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(q));
        }
        return;
    }
    case NS_GGML_Q4_0:
    case NS_GGML_Q4_1: {
        const int has_min = type == NS_GGML_Q4_1;
        const uint8_t *blk = p + (size_t)b * (has_min ? 20 : 18);
        vf d = _mm256_set1_ps(load_fp16(blk));
        const __m128i mask = _mm_set1_epi8(0x0f);
        __m128i raw = _mm_loadu_si128((const __m128i *)(blk + (has_min ? 4 : 2)));
        __m128i lo = _mm_and_si128(raw, mask);                    /* elements 0..15 */
        __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask); /* elements 16..31 */
        vf q[4] = {u8x8_to_ps(lo), u8x8_to_ps(_mm_srli_si128(lo, 8)), u8x8_to_ps(hi),
                   u8x8_to_ps(_mm_srli_si128(hi, 8))};
        if (has_min) {
            vf m = _mm256_set1_ps(load_fp16(blk + 2));
            for (int j = 0; j < 4; j++) out[j] = _mm256_fmadd_ps(d, q[j], m);
        } else {
            const vf eight = _mm256_set1_ps(8.0f); /* q - 8 is exact in fp32 */
            for (int j = 0; j < 4; j++) out[j] = _mm256_mul_ps(d, _mm256_sub_ps(q[j], eight));
        }
        return;
    }
    default: NS_ASSERT(!"unreachable");
    }
}
#endif

#define NV (QK / VL) /* vectors per block */

/* Weight k of a float-type row (the K % 32 tail of F32/F16/BF16). */
static float load_weight(int type, const uint8_t *p, int k) {
    uint16_t h;
    switch (type) {
    case NS_GGML_F32: {
        float f;
        memcpy(&f, p + 4 * (size_t)k, sizeof f);
        return f;
    }
    case NS_GGML_F16: memcpy(&h, p + 2 * (size_t)k, sizeof h); return ns_fp16_to_fp32(h);
    default: memcpy(&h, p + 2 * (size_t)k, sizeof h); return ns_bf16_to_fp32(h);
    }
}

/* One tile of W rows w[0 .. n_rows) (n_rows <= TILE_N; spare rows repeat the last one
 * and are not stored) against activation rows x[0 .. G). type and G are compile-time
 * constants at every call site (one copy per pair). When G * TILE_N accumulators are too
 * few to hide the FMA latency, each is split in S partial sums over the block's vectors. */
static ALWAYS_INLINE void group(int type, int G, int invariant, float *y, int ldy, const float *x, int K,
                                const uint8_t *w, size_t rb, int n_rows) {
    enum { S_MAX = NV < 4 ? NV : 4 };
    /* invariant: one partial sum whatever G, so a row's arithmetic does not depend on M */
    const int S = invariant ? 1 : G * TILE_N >= 8 ? 1 : G * TILE_N >= 4 ? (S_MAX < 2 ? S_MAX : 2) : S_MAX;
    const uint8_t *wr[TILE_N];
    for (int r = 0; r < TILE_N; r++) wr[r] = w + (size_t)(r < n_rows ? r : n_rows - 1) * rb;
    const int nb = K / QK;
    vf acc[GMAX][TILE_N][S_MAX];
#pragma GCC unroll 8
    for (int g = 0; g < G; g++)
#pragma GCC unroll 8
        for (int r = 0; r < TILE_N; r++)
#pragma GCC unroll 4
            for (int s = 0; s < S; s++) acc[g][r][s] = vzero();
    for (int b = 0; b < nb; b++) {
#pragma GCC unroll 8
        for (int r = 0; r < TILE_N; r++) {
            vf wv[NV];
            load_block(type, wr[r], b, wv);
#pragma GCC unroll 8
            for (int g = 0; g < G; g++) {
                const float *xb = x + (size_t)g * K + (size_t)b * QK;
#pragma GCC unroll 8
                for (int j = 0; j < NV; j++)
                    acc[g][r][j % S] = vfma(wv[j], vload(xb + VL * j), acc[g][r][j % S]);
            }
        }
    }
    for (int g = 0; g < G; g++) {
        for (int r = 0; r < n_rows; r++) {
            vf a = acc[g][r][0];
#pragma GCC unroll 4
            for (int s = 1; s < S; s++) a = vadd(a, acc[g][r][s]);
            float sum = vhsum(a);
            for (int k = nb * QK; k < K; k++) sum += x[(size_t)g * K + k] * load_weight(type, wr[r], k);
            y[(size_t)g * ldy + r] = sum;
        }
    }
}

/* All N rows, tile by tile; within a tile (which stays in L1/L2) the activation rows in
 * groups of GMAX and a last group of M % GMAX. */
#define GROUP_CASE(T, g)                                                                     \
    case g: group(T, (g) <= GMAX ? (g) : 1, INV, y + (size_t)m0 * ldy + n0, ldy, x + (size_t)m0 * K, \
                  K, wt, rb, n_rows); break;
#define DEFINE_TYPE(name, T)                                                                 \
    static void name(float *y, int ldy, const float *x, int M, int N, int K, const uint8_t *w) { \
        const size_t rb = row_bytes(T, K);                                                   \
        for (int n0 = 0; n0 < N; n0 += TILE_N) {                                             \
            const int n_rows = N - n0 < TILE_N ? N - n0 : TILE_N;                            \
            const uint8_t *wt = w + (size_t)n0 * rb;                                         \
            for (int m0 = 0; m0 < M; m0 += GMAX) {                                           \
                switch (M - m0 < GMAX ? M - m0 : GMAX) {                                     \
                GROUP_CASE(T, 1) GROUP_CASE(T, 2) GROUP_CASE(T, 3) GROUP_CASE(T, 4)          \
                GROUP_CASE(T, 5) GROUP_CASE(T, 6) GROUP_CASE(T, 7) GROUP_CASE(T, 8)          \
                default: NS_ASSERT(!"unreachable");                                          \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }
#define INV 0
DEFINE_TYPE(mq_f32, NS_GGML_F32)
DEFINE_TYPE(mq_f16, NS_GGML_F16)
DEFINE_TYPE(mq_bf16, NS_GGML_BF16)
DEFINE_TYPE(mq_q8_0, NS_GGML_Q8_0)
DEFINE_TYPE(mq_q4_0, NS_GGML_Q4_0)
DEFINE_TYPE(mq_q4_1, NS_GGML_Q4_1)
#undef INV
#define INV 1
DEFINE_TYPE(mqi_f32, NS_GGML_F32)
DEFINE_TYPE(mqi_f16, NS_GGML_F16)
DEFINE_TYPE(mqi_bf16, NS_GGML_BF16)
DEFINE_TYPE(mqi_q8_0, NS_GGML_Q8_0)
DEFINE_TYPE(mqi_q4_0, NS_GGML_Q4_0)
DEFINE_TYPE(mqi_q4_1, NS_GGML_Q4_1)
#undef INV

#endif /* NS_CPU_AVX2 */

void ns_cpu_matmul_quant(float *y, int ldy, const float *x, const void *w, int type, int M, int N,
                         int K) {
    if (!check_args(y, ldy, type, M, N, K)) return;
#if NS_CPU_AVX2
    switch (type) {
    case NS_GGML_F32: mq_f32(y, ldy, x, M, N, K, w); return;
    case NS_GGML_F16: mq_f16(y, ldy, x, M, N, K, w); return;
    case NS_GGML_BF16: mq_bf16(y, ldy, x, M, N, K, w); return;
    case NS_GGML_Q8_0: mq_q8_0(y, ldy, x, M, N, K, w); return;
    case NS_GGML_Q4_0: mq_q4_0(y, ldy, x, M, N, K, w); return;
    case NS_GGML_Q4_1: mq_q4_1(y, ldy, x, M, N, K, w); return;
    default: break;
    }
#endif
    matmul_quant_scalar(y, ldy, x, w, type, M, N, K);
}

void ns_cpu_matmul_quant_invariant(float *y, int ldy, const float *x, const void *w, int type, int M, int N,
                                   int K) {
    if (!check_args(y, ldy, type, M, N, K)) return;
#if NS_CPU_AVX2
    switch (type) {
    case NS_GGML_F32: mqi_f32(y, ldy, x, M, N, K, w); return;
    case NS_GGML_F16: mqi_f16(y, ldy, x, M, N, K, w); return;
    case NS_GGML_BF16: mqi_bf16(y, ldy, x, M, N, K, w); return;
    case NS_GGML_Q8_0: mqi_q8_0(y, ldy, x, M, N, K, w); return;
    case NS_GGML_Q4_0: mqi_q4_0(y, ldy, x, M, N, K, w); return;
    case NS_GGML_Q4_1: mqi_q4_1(y, ldy, x, M, N, K, w); return;
    default: break;
    }
#endif
    matmul_quant_scalar(y, ldy, x, w, type, M, N, K); /* per element, invariant already */
}
