/* test_kernels.c: the CPU kernels of kernels/cpu/ops.h.
 *
 * Every fast kernel is checked against its naive reference (the production entry points,
 * both) on shapes 1, odd sizes, non-multiples of 8/16/32 and a large one, with 16-float
 * canaries on each side of every output. Checks run in the STYLE.md order: all elements
 * finite, NMSE, then per element |got - ref| <= atol + rtol*|ref| (NaN fails); the
 * tolerance of each check is stated beside it. Independent hand checks pin the meaning:
 * fp16/bf16 special values and rounding ties, hand-built quant blocks, RoPE rotations and
 * Llama-3 frequencies computed in the test, attention with known softmax weights, and
 * paged attention with every block outside the sequence's table poisoned with NaN.
 */
#include "../test.h"
#include "gguf.h"
#include "ops.h"

#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

/* ---- helpers ---- */

#define CANARY 16
static const float SENTINEL = -1234.5f;

/* n floats with CANARY sentinel floats on each side (all sentinels to start). */
static float *canary_alloc(size_t n) {
    float *b = malloc((n + 2 * CANARY) * sizeof(float));
    if (!b) abort();
    for (size_t i = 0; i < n + 2 * CANARY; i++) b[i] = SENTINEL;
    return b + CANARY;
}

static int canary_intact(const float *p, size_t n) {
    for (size_t i = 1; i <= CANARY; i++)
        if (memcmp(p - i, &SENTINEL, sizeof(float)) != 0) return 0;
    for (size_t i = 0; i < CANARY; i++)
        if (memcmp(p + n + i, &SENTINEL, sizeof(float)) != 0) return 0;
    return 1;
}

static void canary_free(float *p) {
    if (p) free(p - CANARY);
}

static void *xmalloc(size_t nbytes) {
    void *p = malloc(nbytes ? nbytes : 1);
    if (!p) abort();
    return p;
}

/* Uniform in [-scale, scale). */
static void fill_rand(ns_test_rng *r, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * ns_test_rng_f32(r);
}

static float *rand_alloc(ns_test_rng *r, size_t n, float scale) {
    float *x = xmalloc(n * sizeof(float));
    fill_rand(r, x, n, scale);
    return x;
}

static int all_finite(const float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

static float bits_to_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static const int ALL_TYPES[] = {NS_GGML_F32, NS_GGML_F16, NS_GGML_BF16,
                                NS_GGML_Q8_0, NS_GGML_Q4_0, NS_GGML_Q4_1};
#define N_ALL_TYPES ((int)(sizeof ALL_TYPES / sizeof ALL_TYPES[0]))

static int is_block_type(int type) {
    return type == NS_GGML_Q8_0 || type == NS_GGML_Q4_0 || type == NS_GGML_Q4_1;
}

/* Bytes of a row of n elements (the test's own table, from the ggml layouts). */
static size_t test_row_bytes(int type, int64_t n) {
    switch (type) {
    case NS_GGML_F32: return (size_t)n * 4;
    case NS_GGML_F16:
    case NS_GGML_BF16: return (size_t)n * 2;
    case NS_GGML_Q8_0: return (size_t)(n / 32) * 34;
    case NS_GGML_Q4_0: return (size_t)(n / 32) * 18;
    case NS_GGML_Q4_1: return (size_t)(n / 32) * 20;
    default: return 0;
    }
}

static void put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

/* ---- fp16 / bf16 conversions ---- */

NS_TEST(test_kernels_convert_fp16_specials) {
    /* fp16 -> fp32 */
    CHECK(ns_fp16_to_fp32(0x0000) == 0.0f && !signbit(ns_fp16_to_fp32(0x0000)));
    CHECK(ns_fp16_to_fp32(0x8000) == 0.0f && signbit(ns_fp16_to_fp32(0x8000)));
    CHECK(isinf(ns_fp16_to_fp32(0x7c00)) && ns_fp16_to_fp32(0x7c00) > 0);
    CHECK(isinf(ns_fp16_to_fp32(0xfc00)) && ns_fp16_to_fp32(0xfc00) < 0);
    CHECK(isnan(ns_fp16_to_fp32(0x7e00)));
    CHECK(isnan(ns_fp16_to_fp32(0x7c01))); /* signalling NaN stays NaN */
    CHECK(isnan(ns_fp16_to_fp32(0xfe00)));
    CHECK(ns_fp16_to_fp32(0x0001) == 0x1p-24f); /* smallest subnormal */
    CHECK(ns_fp16_to_fp32(0x03ff) == 1023.0f * 0x1p-24f);
    CHECK(ns_fp16_to_fp32(0x8001) == -0x1p-24f);
    CHECK(ns_fp16_to_fp32(0x0400) == 0x1p-14f); /* smallest normal */
    CHECK(ns_fp16_to_fp32(0x7bff) == 65504.0f);
    CHECK(ns_fp16_to_fp32(0xfbff) == -65504.0f);
    CHECK(ns_fp16_to_fp32(0x3c00) == 1.0f);
    CHECK(ns_fp16_to_fp32(0xc000) == -2.0f);
    CHECK(ns_fp16_to_fp32(0x3555) == 0.333251953125f);

    /* fp32 -> fp16 */
    CHECK_EQ_INT(ns_fp32_to_fp16(0.0f), 0x0000);
    CHECK_EQ_INT(ns_fp32_to_fp16(-0.0f), 0x8000);
    CHECK_EQ_INT(ns_fp32_to_fp16(INFINITY), 0x7c00);
    CHECK_EQ_INT(ns_fp32_to_fp16(-INFINITY), 0xfc00);
    uint16_t h = ns_fp32_to_fp16(NAN);
    CHECK((h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0);
    h = ns_fp32_to_fp16(bits_to_f32(0x7f800001u)); /* sNaN whose payload is all dropped */
    CHECK((h & 0x7c00) == 0x7c00 && (h & 0x03ff) != 0);
    h = ns_fp32_to_fp16(bits_to_f32(0xffc00000u));
    CHECK((h & 0xfc00) == 0xfc00 && (h & 0x03ff) != 0);
    CHECK_EQ_INT(ns_fp32_to_fp16(1.0f), 0x3c00);
    CHECK_EQ_INT(ns_fp32_to_fp16(-2.0f), 0xc000);
    CHECK_EQ_INT(ns_fp32_to_fp16(65504.0f), 0x7bff);
    CHECK_EQ_INT(ns_fp32_to_fp16(65519.0f), 0x7bff);  /* below the tie: max finite */
    CHECK_EQ_INT(ns_fp32_to_fp16(65520.0f), 0x7c00);  /* the tie rounds to even: inf */
    CHECK_EQ_INT(ns_fp32_to_fp16(1e10f), 0x7c00);
    CHECK_EQ_INT(ns_fp32_to_fp16(-1e10f), 0xfc00);
    CHECK_EQ_INT(ns_fp32_to_fp16(1.0f / 3.0f), 0x3555);
    /* ties to even among normals: 1 + 2^-11 lies halfway between 0x3c00 and 0x3c01 */
    CHECK_EQ_INT(ns_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00);
    CHECK_EQ_INT(ns_fp32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3c02);
    CHECK_EQ_INT(ns_fp32_to_fp16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    /* subnormals and their ties */
    CHECK_EQ_INT(ns_fp32_to_fp16(0x1p-24f), 0x0001);
    CHECK_EQ_INT(ns_fp32_to_fp16(-0x1p-24f), 0x8001);
    CHECK_EQ_INT(ns_fp32_to_fp16(0x1p-25f), 0x0000);           /* tie -> even (0) */
    CHECK_EQ_INT(ns_fp32_to_fp16(0x1p-25f + 0x1p-40f), 0x0001); /* just above the tie */
    CHECK_EQ_INT(ns_fp32_to_fp16(3 * 0x1p-25f), 0x0002);       /* tie -> even (2) */
    CHECK_EQ_INT(ns_fp32_to_fp16(0x1p-26f), 0x0000);
    CHECK_EQ_INT(ns_fp32_to_fp16(1023.0f * 0x1p-24f), 0x03ff);
    CHECK_EQ_INT(ns_fp32_to_fp16(0x1p-14f - 0x1p-25f), 0x0400); /* tie at the normal edge */
    CHECK_EQ_INT(ns_fp32_to_fp16(0x1p-14f), 0x0400);
    CHECK_EQ_INT(ns_fp32_to_fp16(FLT_MIN), 0x0000);
}

NS_TEST(test_kernels_convert_fp16_exhaustive) {
    /* every fp16 value survives fp16 -> fp32 -> fp16; NaNs stay NaN */
    int n_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = ns_fp16_to_fp32((uint16_t)h);
        if (isnan(f)) {
            if (!isnan(ns_fp16_to_fp32(ns_fp32_to_fp16(f)))) n_bad++;
        } else if (ns_fp32_to_fp16(f) != h) {
            n_bad++;
        }
    }
    CHECK_EQ_INT(n_bad, 0);
#if defined(__F16C__)
    /* against the F16C instructions, an independent implementation: all fp16 values one
     * way, 2M random fp32 values the other (half of them inside the fp16 range) */
    n_bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = ns_fp16_to_fp32((uint16_t)h), b = _cvtsh_ss((unsigned short)h);
        if (memcmp(&a, &b, 4) != 0) n_bad++;
    }
    CHECK_EQ_INT(n_bad, 0);
    ns_test_rng r = {11};
    n_bad = 0;
    for (int i = 0; i < (1 << 21); i++) {
        uint32_t u = (uint32_t)ns_test_rng_u64(&r);
        if (i & 1) u = (u & 0x807fffffu) | ((uint32_t)(100 + (u >> 8) % 46) << 23);
        float f = bits_to_f32(u);
        uint16_t got = ns_fp32_to_fp16(f), want = (uint16_t)_cvtss_sh(f, 0);
        int got_nan = (got & 0x7c00) == 0x7c00 && (got & 0x3ff);
        int want_nan = (want & 0x7c00) == 0x7c00 && (want & 0x3ff);
        if (got_nan != want_nan || (!got_nan && got != want)) n_bad++;
    }
    CHECK_EQ_INT(n_bad, 0);
#endif
}

NS_TEST(test_kernels_convert_bf16_specials) {
    CHECK(ns_bf16_to_fp32(0x3f80) == 1.0f);
    CHECK(ns_bf16_to_fp32(0xc040) == -3.0f);
    CHECK(ns_bf16_to_fp32(0x4049) == 3.140625f);
    CHECK(ns_bf16_to_fp32(0x8000) == 0.0f && signbit(ns_bf16_to_fp32(0x8000)));
    CHECK(isinf(ns_bf16_to_fp32(0x7f80)) && ns_bf16_to_fp32(0xff80) < 0);
    CHECK(isnan(ns_bf16_to_fp32(0x7fc0)));
    CHECK(ns_bf16_to_fp32(0x0001) == 0x1p-133f); /* subnormal */

    CHECK_EQ_INT(ns_fp32_to_bf16(1.0f), 0x3f80);
    CHECK_EQ_INT(ns_fp32_to_bf16(0.0f), 0x0000);
    CHECK_EQ_INT(ns_fp32_to_bf16(-0.0f), 0x8000);
    CHECK_EQ_INT(ns_fp32_to_bf16(INFINITY), 0x7f80);
    CHECK_EQ_INT(ns_fp32_to_bf16(-INFINITY), 0xff80);
    uint16_t h = ns_fp32_to_bf16(NAN);
    CHECK((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0);
    h = ns_fp32_to_bf16(bits_to_f32(0x7f800001u)); /* truncation would make this inf */
    CHECK((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0);
    h = ns_fp32_to_bf16(bits_to_f32(0xff800001u));
    CHECK((h & 0xff80) == 0xff80 && (h & 0x7f) != 0);
    CHECK_EQ_INT(ns_fp32_to_bf16(1.0f + 0x1p-8f), 0x3f80);  /* tie -> even */
    CHECK_EQ_INT(ns_fp32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie -> even */
    CHECK_EQ_INT(ns_fp32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    CHECK_EQ_INT(ns_fp32_to_bf16(FLT_MAX), 0x7f80); /* rounds past the largest bf16 */
    CHECK_EQ_INT(ns_fp32_to_bf16(0x1p-133f), 0x0001);
    CHECK_EQ_INT(ns_fp32_to_bf16(3.14159265f), 0x4049);

    int n_bad = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        float f = ns_bf16_to_fp32((uint16_t)b);
        if (isnan(f)) {
            if (!isnan(ns_bf16_to_fp32(ns_fp32_to_bf16(f)))) n_bad++;
        } else if (ns_fp32_to_bf16(f) != b) {
            n_bad++;
        }
    }
    CHECK_EQ_INT(n_bad, 0);
}

/* ---- quantisation ---- */

static const int64_t DQ_BLOCK_SIZES[] = {32, 64, 224, 1056, 3040, 18464, 576 * 32};
static const int64_t DQ_ELEM_SIZES[] = {1, 7, 8, 33, 95, 577, 1536 * 3 + 5};

NS_TEST(test_kernels_quant_dequant_fast_matches_ref_bitwise) {
    ns_test_rng r = {21};
    for (int t = 0; t < N_ALL_TYPES; t++) {
        int type = ALL_TYPES[t];
        const int64_t *sizes = is_block_type(type) ? DQ_BLOCK_SIZES : DQ_ELEM_SIZES;
        for (int s = 0; s < 7; s++) {
            int64_t n = sizes[s];
            size_t nbytes = test_row_bytes(type, n);
            uint8_t *raw = xmalloc(nbytes);
            for (size_t i = 0; i < nbytes; i++) raw[i] = (uint8_t)ns_test_rng_u64(&r);
            /* raw bits, NaNs and infs included, except the block scales: finite, as a
             * quantiser writes them (inf*0 would make NaNs whose payloads may differ) */
            size_t bb = type == NS_GGML_Q8_0 ? 34 : type == NS_GGML_Q4_0 ? 18 : 20;
            if (is_block_type(type)) {
                for (size_t o = 0; o < nbytes; o += bb) {
                    put_u16(raw + o, ns_fp32_to_fp16(ns_test_rng_f32(&r) * 4.0f));
                    if (type == NS_GGML_Q4_1) put_u16(raw + o + 2, ns_fp32_to_fp16(ns_test_rng_f32(&r)));
                }
            }
            if (type == NS_GGML_F32) { /* keep F32 free of NaN so memcmp means equality */
                for (size_t i = 0; i < (size_t)n; i++) ((float *)(void *)raw)[i] = ns_test_rng_f32(&r);
            }
            float *ref = xmalloc((size_t)n * sizeof(float));
            float *got = canary_alloc((size_t)n);
            ns_cpu_dequant_row_ref(type, raw, ref, n);
            ns_cpu_dequant_row(type, raw, got, n);
            CHECK_MSG(memcmp(got, ref, (size_t)n * sizeof(float)) == 0, "type %d n %lld: fast != ref",
                      type, (long long)n);
            CHECK_MSG(canary_intact(got, (size_t)n), "type %d n %lld: canary", type, (long long)n);
            canary_free(got);
            free(ref);
            free(raw);
        }
    }
}

/* Quantise x (n, with per-block magnitudes from 1e-3 to 1e3, a zero block, a constant
 * block, an outlier block) and check each element of the round trip against the type's
 * error bound. fp16 scale error: |fp16(d) - d| <= max(|d| 2^-11, 2^-25). */
NS_TEST(test_kernels_quant_roundtrip_bounds) {
    ns_test_rng r = {31};
    const int64_t n = 32 * 95;
    float *x = rand_alloc(&r, (size_t)n, 1.0f);
    for (int64_t b = 0; b < n / 32; b++) {
        float mag = powf(10.0f, (float)(b % 7) - 3.0f);
        for (int j = 0; j < 32; j++) {
            float *v = &x[b * 32 + j];
            if (b == 0) *v = 0.0f;
            else if (b == 1) *v = 0.3f;
            else if (b == 2) *v = j == 5 ? 50.0f : *v;
            else if (b == 3) *v = j == 9 ? -50.0f : *v;
            else *v *= mag;
        }
    }
    for (int t = 0; t < N_ALL_TYPES; t++) {
        int type = ALL_TYPES[t];
        uint8_t *qbuf = xmalloc(test_row_bytes(type, n));
        float *y = canary_alloc((size_t)n);
        ns_cpu_quantize_row(type, x, qbuf, n);
        ns_cpu_dequant_row(type, qbuf, y, n);
        CHECK_MSG(canary_intact(y, (size_t)n), "type %d: canary", type);
        CHECK_MSG(all_finite(y, (size_t)n), "type %d: non-finite", type);
        int n_bad = 0;
        double worst = 0;
        for (int64_t b = 0; b < n / 32; b++) {
            const float *xb = x + b * 32, *yb = y + b * 32;
            float amax = 0, smax = 0, mn = FLT_MAX, mx = -FLT_MAX;
            for (int j = 0; j < 32; j++) {
                if (fabsf(xb[j]) > amax) {
                    amax = fabsf(xb[j]);
                    smax = xb[j];
                }
                mn = fminf(mn, xb[j]);
                mx = fmaxf(mx, xb[j]);
            }
            for (int j = 0; j < 32; j++) {
                double err = fabs((double)yb[j] - xb[j]), bound = 0;
                double ax = fabs(xb[j]);
                if (type == NS_GGML_F32) {
                    bound = 0; /* exact */
                } else if (type == NS_GGML_F16) {
                    bound = ax * 0x1p-11 + 0x1p-25; /* half an ulp, or half the subnormal step */
                } else if (type == NS_GGML_BF16) {
                    bound = ax * 0x1p-8 + 1e-38;
                } else if (type == NS_GGML_Q8_0) {
                    double d = amax / 127.0, derr = fmax(d * 0x1p-11, 0x1p-25);
                    bound = 0.5 * d + 127 * derr + 1e-6 * amax; /* half a step + scale rounding */
                } else if (type == NS_GGML_Q4_0) {
                    double d = fabs(smax) / 8.0, derr = fmax(d * 0x1p-11, 0x1p-25);
                    int q = (qbuf[b * 18 + 2 + (j & 15)] >> (j < 16 ? 0 : 4)) & 15;
                    /* half a step; code 15 may be the clipped extreme (x/d in [7.5, 8]): a step */
                    bound = (q == 15 ? 1.0 : 0.5) * d + 8 * derr + 1e-6 * amax;
                } else if (type == NS_GGML_Q4_1) {
                    double d = ((double)mx - mn) / 15.0, derr = fmax(d * 0x1p-11, 0x1p-25);
                    double merr = fmax(fabs(mn) * 0x1p-11, 0x1p-25);
                    bound = 0.5 * d + 15 * derr + merr + 1e-6 * (fabs(mn) + fabs(mx));
                }
                if (!(err <= bound)) {
                    if (n_bad++ == 0)
                        ns_test_fail_at(__FILE__, __LINE__, "type %d block %lld elem %d: x %g y %g err %g > %g",
                                        type, (long long)b, j, (double)xb[j], (double)yb[j], err, bound);
                }
                if (bound > 0 && err / bound > worst) worst = err / bound;
            }
        }
        CHECK_EQ_INT(n_bad, 0);
        /* the all-zero block decodes to exact zeros for every type */
        for (int j = 0; j < 32; j++) CHECK(y[j] == 0.0f);
        if (getenv("NS_TEST_VERBOSE")) fprintf(stderr, "  type %d: worst err/bound %.3f\n", type, worst);
        canary_free(y);
        free(qbuf);
    }
    free(x);
}

NS_TEST(test_kernels_quant_hand_blocks_decode) {
    /* Q4_1: d = 0.5, m = -1, low nibble of byte j = j, high nibble = 15 - j */
    uint8_t q41[20];
    put_u16(q41, 0x3800); /* 0.5 */
    put_u16(q41 + 2, 0xbc00); /* -1.0 */
    for (int j = 0; j < 16; j++) q41[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    static const float want41[32] = {
        -1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 2.5f, 3.0f, 3.5f, 4.0f, 4.5f, 5.0f, 5.5f, 6.0f, 6.5f,
        6.5f, 6.0f, 5.5f, 5.0f, 4.5f, 4.0f, 3.5f, 3.0f, 2.5f, 2.0f, 1.5f, 1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
    /* Q4_0: d = 0.25, low nibble j, high nibble (j + 3) & 15; x = d (q - 8) */
    uint8_t q40[18];
    put_u16(q40, 0x3400); /* 0.25 */
    for (int j = 0; j < 16; j++) q40[2 + j] = (uint8_t)(j | (((j + 3) & 15) << 4));
    static const float want40[32] = {
        -2.0f, -1.75f, -1.5f, -1.25f, -1.0f, -0.75f, -0.5f, -0.25f,
        0.0f, 0.25f, 0.5f, 0.75f, 1.0f, 1.25f, 1.5f, 1.75f,
        -1.25f, -1.0f, -0.75f, -0.5f, -0.25f, 0.0f, 0.25f, 0.5f,
        0.75f, 1.0f, 1.25f, 1.5f, 1.75f, -2.0f, -1.75f, -1.5f};
    /* Q8_0: d = 0.5, q = -128, -120, ..., 112, 127 */
    uint8_t q80[34];
    put_u16(q80, 0x3800);
    float want80[32];
    for (int j = 0; j < 32; j++) {
        int q = j == 31 ? 127 : j * 8 - 128;
        q80[2 + j] = (uint8_t)(int8_t)q;
        want80[j] = 0.5f * (float)q;
    }
    CHECK(want80[0] == -64.0f && want80[30] == 56.0f && want80[31] == 63.5f);
    /* F16 and BF16 rows */
    uint8_t f16[8], bf16[8];
    put_u16(f16, 0x3c00), put_u16(f16 + 2, 0xc000), put_u16(f16 + 4, 0x7bff), put_u16(f16 + 6, 0x0001);
    static const float want_f16[4] = {1.0f, -2.0f, 65504.0f, 0x1p-24f};
    put_u16(bf16, 0x3f80), put_u16(bf16 + 2, 0xc040), put_u16(bf16 + 4, 0x4049), put_u16(bf16 + 6, 0x0000);
    static const float want_bf16[4] = {1.0f, -3.0f, 3.140625f, 0.0f};

    struct { int type; const void *src; const float *want; int n; } cases[] = {
        {NS_GGML_Q4_1, q41, want41, 32}, {NS_GGML_Q4_0, q40, want40, 32}, {NS_GGML_Q8_0, q80, want80, 32},
        {NS_GGML_F16, f16, want_f16, 4}, {NS_GGML_BF16, bf16, want_bf16, 4}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        float a[32], b[32];
        ns_cpu_dequant_row_ref(cases[c].type, cases[c].src, a, cases[c].n);
        ns_cpu_dequant_row(cases[c].type, cases[c].src, b, cases[c].n);
        for (int j = 0; j < cases[c].n; j++) {
            CHECK_MSG(a[j] == cases[c].want[j], "type %d elem %d: ref %g want %g", cases[c].type, j,
                      (double)a[j], (double)cases[c].want[j]);
            CHECK_MSG(b[j] == cases[c].want[j], "type %d elem %d: fast %g want %g", cases[c].type, j,
                      (double)b[j], (double)cases[c].want[j]);
        }
    }

    /* quantising want41 reproduces the hand-built Q4_1 block byte for byte
     * (min -1, max 6.5: d = 7.5/15 = 0.5, every value on the grid) */
    uint8_t back[20];
    ns_cpu_quantize_row(NS_GGML_Q4_1, want41, back, 32);
    CHECK(memcmp(back, q41, 20) == 0);
}

NS_TEST(test_kernels_quant_hand_blocks_encode) {
    /* Q8_0: amax 127 -> d = 1; q = round half away from zero */
    float x8[32] = {127.0f, -3.5f, 2.5f, 0.49f, -0.5f, -127.0f, 0.51f};
    static const int8_t want8[7] = {127, -4, 3, 0, -1, -127, 1};
    uint8_t q8[34];
    ns_cpu_quantize_row(NS_GGML_Q8_0, x8, q8, 32);
    CHECK(q8[0] == 0x00 && q8[1] == 0x3c); /* d = 1.0 (fp16 0x3c00, little-endian) */
    for (int j = 0; j < 7; j++) CHECK_EQ_INT((int8_t)q8[2 + j], want8[j]);
    for (int j = 7; j < 32; j++) CHECK_EQ_INT((int8_t)q8[2 + j], 0);

    /* Q4_0, block 1: the largest magnitude is -8, so d = -8/-8 = 1 and q = x + 8 (+0.5, truncated);
     * block 2: the largest magnitude is +16, so d = 16/-8 = -2 */
    float x4[64] = {0};
    for (int j = 0; j < 16; j++) x4[j] = (float)(j - 8);
    static const float hi[6] = {7.0f, 7.4f, 7.6f, -7.6f, 0.5f, -0.5f};
    static const int want_hi[6] = {15, 15, 15, 0, 9, 8}; /* 7.6 -> 16.1 clips to 15 */
    for (int j = 0; j < 6; j++) x4[16 + j] = hi[j];
    x4[32] = 16.0f;
    x4[33] = -16.0f; /* -16/-2 + 8.5 = 16.5 -> clipped to 15, decodes to -14 */
    x4[34] = 3.0f;   /* 3/-2 + 8.5 = 7 */
    uint8_t q4[36];
    ns_cpu_quantize_row(NS_GGML_Q4_0, x4, q4, 64);
    CHECK(q4[0] == 0x00 && q4[1] == 0x3c);
    for (int j = 0; j < 16; j++) CHECK_EQ_INT(q4[2 + j] & 15, j);
    for (int j = 0; j < 6; j++) CHECK_EQ_INT(q4[2 + j] >> 4, want_hi[j]);
    for (int j = 6; j < 16; j++) CHECK_EQ_INT(q4[2 + j] >> 4, 8);
    CHECK(q4[18] == 0x00 && q4[19] == 0xc0); /* d = -2.0 */
    CHECK_EQ_INT(q4[20] & 15, 0);
    CHECK_EQ_INT(q4[21] & 15, 15);
    CHECK_EQ_INT(q4[22] & 15, 7);
    float y4[64];
    ns_cpu_dequant_row(NS_GGML_Q4_0, q4, y4, 64);
    CHECK(y4[32] == 16.0f && y4[33] == -14.0f && y4[34] == 2.0f && y4[35] == 0.0f);

    /* Q4_1 of a constant block: d = 0, every code 0, decodes to fp16(m) */
    float c[32];
    for (int j = 0; j < 32; j++) c[j] = 0.3f;
    uint8_t q1[20];
    float yc[32];
    ns_cpu_quantize_row(NS_GGML_Q4_1, c, q1, 32);
    ns_cpu_dequant_row(NS_GGML_Q4_1, q1, yc, 32);
    for (int j = 0; j < 32; j++) CHECK(yc[j] == ns_fp16_to_fp32(ns_fp32_to_fp16(0.3f)));
}

/* ---- matmul ---- */

NS_TEST(test_kernels_matmul_vs_ref) {
    ns_test_rng r = {41};
    static const int Ms[] = {1, 3, 8, 33};
    static const int NKs[][2] = {{1, 1}, {7, 33}, {95, 7}, {33, 577}, {577, 95}, {1537, 577}};
    for (int a = 0; a < 4; a++) {
        for (int b = 0; b < 6; b++) {
            int M = Ms[a], N = NKs[b][0], K = NKs[b][1];
            float *x = rand_alloc(&r, (size_t)M * K, 1.0f), *w = rand_alloc(&r, (size_t)N * K, 1.0f);
            float *ref = xmalloc((size_t)M * N * sizeof(float)), *y = canary_alloc((size_t)M * N);
            ns_cpu_matmul_ref(ref, x, w, M, N, K);
            ns_cpu_matmul(y, x, w, M, N, K);
            /* fp32 sums of K products of magnitude <= 1 vs double: atol 1e-6 * K */
            if (!CHECK_ALLCLOSE(y, ref, (size_t)M * N, 1e-6 * K, 1e-5, 1e-10))
                fprintf(stderr, "    at M %d N %d K %d\n", M, N, K);
            CHECK_MSG(canary_intact(y, (size_t)M * N), "M %d N %d K %d: canary", M, N, K);
            canary_free(y);
            free(ref);
            free(w);
            free(x);
        }
    }
    /* a hand check: x = (1, 2), W = ((3, 4), (5, 6), (-1, 0.5)) -> (11, 17, 0) */
    float x[2] = {1, 2}, w[6] = {3, 4, 5, 6, -1, 0.5f}, y[3];
    ns_cpu_matmul(y, x, w, 1, 3, 2);
    CHECK(y[0] == 11.0f && y[1] == 17.0f && y[2] == 0.0f);
}

/* ---- rmsnorm, swiglu, add, softmax ---- */

static const int64_t ROW_SIZES[] = {1, 7, 33, 95, 577, 4096 + 5};
#define N_ROW_SIZES 6

NS_TEST(test_kernels_rmsnorm_vs_ref) {
    ns_test_rng r = {51};
    for (int s = 0; s < N_ROW_SIZES; s++) {
        for (int n_rows = 1; n_rows <= 3; n_rows += 2) {
            int n = (int)ROW_SIZES[s];
            size_t total = (size_t)n_rows * n;
            float *x = rand_alloc(&r, total, 3.0f), *w = rand_alloc(&r, (size_t)n, 1.5f);
            float *ref = xmalloc(total * sizeof(float)), *y = canary_alloc(total);
            ns_cpu_rmsnorm_ref(ref, x, w, n_rows, n, 1e-5f);
            ns_cpu_rmsnorm(y, x, w, n_rows, n, 1e-5f);
            /* outputs are O(1): fp32 sum of squares and scaling, atol 1e-5, rtol 1e-5 */
            if (!CHECK_ALLCLOSE(y, ref, total, 1e-5, 1e-5, 1e-11)) fprintf(stderr, "    n %d rows %d\n", n, n_rows);
            CHECK(canary_intact(y, total));
            /* out may alias x: the in-place result equals the out-of-place one */
            float *inplace = canary_alloc(total);
            memcpy(inplace, x, total * sizeof(float));
            ns_cpu_rmsnorm(inplace, inplace, w, n_rows, n, 1e-5f);
            CHECK(memcmp(inplace, y, total * sizeof(float)) == 0);
            CHECK(canary_intact(inplace, total));
            canary_free(inplace);
            canary_free(y);
            free(ref);
            free(w);
            free(x);
        }
    }
    /* hand check: x = (3, 4), w = 1, eps 0: rms = sqrt(12.5) */
    float x[2] = {3, 4}, w[2] = {1, 1}, y[2];
    ns_cpu_rmsnorm(y, x, w, 1, 2, 0.0f);
    CHECK_NEAR(y[0], 3.0 / sqrt(12.5), 1e-6);
    CHECK_NEAR(y[1], 4.0 / sqrt(12.5), 1e-6);
}

NS_TEST(test_kernels_swiglu_vs_ref) {
    ns_test_rng r = {61};
    static const int64_t sizes[] = {1, 7, 33, 95, 577, (1 << 16) + 3};
    for (int s = 0; s < 6; s++) {
        size_t n = (size_t)sizes[s];
        float *g = rand_alloc(&r, n, 8.0f), *u = rand_alloc(&r, n, 2.0f);
        float *ref = xmalloc(n * sizeof(float)), *y = canary_alloc(n);
        ns_cpu_swiglu_ref(ref, g, u, (int64_t)n);
        ns_cpu_swiglu(y, g, u, (int64_t)n);
        /* |out| <= 16: a few ulp of exp and one division, atol 1e-6, rtol 1e-5 */
        if (!CHECK_ALLCLOSE(y, ref, n, 1e-6, 1e-5, 1e-11)) fprintf(stderr, "    n %zu\n", n);
        CHECK(canary_intact(y, n));
        ns_cpu_swiglu(g, g, u, (int64_t)n); /* out aliasing gate */
        CHECK(memcmp(g, y, n * sizeof(float)) == 0);
        canary_free(y);
        free(ref);
        free(u);
        free(g);
    }
    /* extremes stay finite: silu(+-100), silu(+-1000), and silu(0) = 0 */
    float g[9] = {100, -100, 1000, -1000, 88.5f, -88.5f, 0, 20, -20}, u[9], y[9], ref[9];
    for (int i = 0; i < 9; i++) u[i] = 1.0f;
    ns_cpu_swiglu(y, g, u, 9);
    ns_cpu_swiglu_ref(ref, g, u, 9);
    CHECK(all_finite(y, 9));
    CHECK_ALLCLOSE(y, ref, 9, 1e-6, 1e-6, 1e-12);
    CHECK(y[6] == 0.0f);
}

NS_TEST(test_kernels_add_vs_ref) {
    ns_test_rng r = {71};
    static const int64_t sizes[] = {1, 7, 15, 33, 95, 577, (1 << 20) + 3};
    for (int s = 0; s < 7; s++) {
        size_t n = (size_t)sizes[s];
        float *x = rand_alloc(&r, n, 1.0f), *ref = rand_alloc(&r, n, 1.0f);
        float *y = canary_alloc(n);
        memcpy(y, ref, n * sizeof(float));
        ns_cpu_add_ref(ref, x, (int64_t)n);
        ns_cpu_add(y, x, (int64_t)n);
        CHECK(memcmp(y, ref, n * sizeof(float)) == 0); /* one fp32 add each: exact */
        CHECK(canary_intact(y, n));
        canary_free(y);
        free(ref);
        free(x);
    }
}

NS_TEST(test_kernels_softmax_vs_ref) {
    ns_test_rng r = {81};
    static const int sizes[] = {1, 7, 33, 95, 577, 49152 + 5};
    static const float spreads[] = {1.0f, 10.0f, 200.0f};
    for (int s = 0; s < 6; s++) {
        for (int k = 0; k < 3; k++) {
            int n = sizes[s];
            float *ref = rand_alloc(&r, (size_t)n, spreads[k]);
            float *y = canary_alloc((size_t)n);
            memcpy(y, ref, (size_t)n * sizeof(float));
            ns_cpu_softmax_ref(ref, n);
            ns_cpu_softmax(y, n);
            /* probabilities: a few ulp per exp, the fp32 sum over n: rtol 1e-4, atol 1e-9
             * (the fast exp flushes values below ~1e-38 to 0) */
            if (!CHECK_ALLCLOSE(y, ref, (size_t)n, 1e-9, 1e-4, 1e-9))
                fprintf(stderr, "    n %d spread %g\n", n, (double)spreads[k]);
            CHECK(canary_intact(y, (size_t)n));
            double sum = 0;
            for (int i = 0; i < n; i++) sum += y[i];
            CHECK_NEAR(sum, 1.0, 1e-4);
            if (n == 1) CHECK(y[0] == 1.0f);
            canary_free(y);
            free(ref);
        }
    }
    /* hand check: (0, ln 3) -> (1/4, 3/4) */
    float x[2] = {0.0f, logf(3.0f)};
    ns_cpu_softmax(x, 2);
    CHECK_NEAR(x[0], 0.25, 1e-6);
    CHECK_NEAR(x[1], 0.75, 1e-6);
}

/* ---- embedding ---- */

NS_TEST(test_kernels_embed_rows) {
    ns_test_rng r = {91};
    const int n_vocab = 40;
    static const int32_t ids[6] = {3, 0, 39, 3, 17, 38};
    for (int t = 0; t < N_ALL_TYPES; t++) {
        int type = ALL_TYPES[t];
        int dims[2] = {is_block_type(type) ? 64 : 7, is_block_type(type) ? 96 : 577};
        for (int e = 0; e < 2; e++) {
            int n_embd = dims[e];
            size_t rb = test_row_bytes(type, n_embd);
            uint8_t *table = xmalloc(rb * n_vocab);
            float *row = xmalloc((size_t)n_embd * sizeof(float));
            for (int v = 0; v < n_vocab; v++) {
                fill_rand(&r, row, (size_t)n_embd, 1.0f);
                ns_cpu_quantize_row(type, row, table + (size_t)v * rb, n_embd);
            }
            float *out = canary_alloc((size_t)6 * n_embd);
            ns_cpu_embed(out, table, type, ids, 6, n_embd);
            for (int i = 0; i < 6; i++) {
                ns_cpu_dequant_row_ref(type, table + (size_t)ids[i] * rb, row, n_embd);
                CHECK_MSG(memcmp(out + (size_t)i * n_embd, row, (size_t)n_embd * sizeof(float)) == 0,
                          "type %d n_embd %d token %d", type, n_embd, i);
            }
            CHECK(canary_intact(out, (size_t)6 * n_embd));
            CHECK(all_finite(out, (size_t)6 * n_embd));
            canary_free(out);
            free(row);
            free(table);
        }
    }
    /* hand check on an F32 table: row k is (k, -k) */
    float tab[8] = {0, 0, 1, -1, 2, -2, 3, -3}, out[4];
    int32_t two[2] = {2, 3};
    ns_cpu_embed(out, tab, NS_GGML_F32, two, 2, 2);
    CHECK(out[0] == 2 && out[1] == -2 && out[2] == 3 && out[3] == -3);
}

/* ---- RoPE ---- */

NS_TEST(test_kernels_rope_vs_ref) {
    ns_test_rng r = {101};
    static const int shapes[][4] = {/* n_tokens, n_head, head_dim, n_rot */
                                    {1, 1, 2, 2},   {3, 9, 64, 64}, {5, 3, 64, 32},  {2, 2, 34, 18},
                                    {7, 4, 6, 6},   {4, 2, 256, 256}, {17, 9, 64, 64}, {1, 1, 130, 130}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        for (int is_neox = 0; is_neox <= 1; is_neox++) {
            int n_tokens = shapes[s][0], n_head = shapes[s][1], head_dim = shapes[s][2], n_rot = shapes[s][3];
            size_t total = (size_t)n_tokens * n_head * head_dim;
            float inv_freq[128];
            ns_rope_inv_freq(inv_freq, n_rot, 10000.0f, 1.0f, 0, 0, 0, NULL);
            int32_t pos[17];
            for (int t = 0; t < n_tokens; t++) pos[t] = (int32_t)(ns_test_rng_u64(&r) % 131072);
            float *x = rand_alloc(&r, total, 1.0f);
            float *ref = xmalloc(total * sizeof(float)), *y = canary_alloc(total);
            memcpy(ref, x, total * sizeof(float));
            memcpy(y, x, total * sizeof(float));
            ns_cpu_rope_ref(ref, pos, n_tokens, n_head, head_dim, n_rot, inv_freq, is_neox);
            ns_cpu_rope(y, pos, n_tokens, n_head, head_dim, n_rot, inv_freq, is_neox);
            /* |x| <= 1; cos/sin rounded to fp32 and an fp32 rotation: atol 1e-6, rtol 1e-6 */
            if (!CHECK_ALLCLOSE(y, ref, total, 1e-6, 1e-6, 1e-12))
                fprintf(stderr, "    shape %zu neox %d\n", s, is_neox);
            CHECK(canary_intact(y, total));
            /* dims past n_rot are untouched, bit for bit, by both */
            for (size_t row = 0; row < (size_t)n_tokens * n_head; row++)
                for (int d = n_rot; d < head_dim; d++) {
                    size_t k = row * head_dim + d;
                    CHECK(memcmp(&y[k], &x[k], 4) == 0 && memcmp(&ref[k], &x[k], 4) == 0);
                }
            canary_free(y);
            free(ref);
            free(x);
        }
    }
}

NS_TEST(test_kernels_rope_hand_checks) {
    ns_test_rng r = {111};
    const int n_tokens = 3, n_head = 9, head_dim = 64, n_rot = 64;
    size_t total = (size_t)n_tokens * n_head * head_dim;
    float inv_freq[32];
    ns_rope_inv_freq(inv_freq, n_rot, 10000.0f, 1.0f, 0, 0, 0, NULL);
    float *x = rand_alloc(&r, total, 1.0f), *y = xmalloc(total * sizeof(float));
    for (int is_neox = 0; is_neox <= 1; is_neox++) {
        /* position 0 is the identity, bit for bit, in both versions */
        int32_t zeros[3] = {0, 0, 0};
        memcpy(y, x, total * sizeof(float));
        ns_cpu_rope(y, zeros, n_tokens, n_head, head_dim, n_rot, inv_freq, is_neox);
        CHECK(memcmp(y, x, total * sizeof(float)) == 0);
        memcpy(y, x, total * sizeof(float));
        ns_cpu_rope_ref(y, zeros, n_tokens, n_head, head_dim, n_rot, inv_freq, is_neox);
        CHECK(memcmp(y, x, total * sizeof(float)) == 0);

        /* a rotation keeps each pair's norm (rel 1e-6) */
        int32_t pos[3] = {1, 4095, 100000};
        memcpy(y, x, total * sizeof(float));
        ns_cpu_rope(y, pos, n_tokens, n_head, head_dim, n_rot, inv_freq, is_neox);
        for (size_t row = 0; row < (size_t)n_tokens * n_head; row++) {
            const float *a = x + row * head_dim, *b = y + row * head_dim;
            for (int i = 0; i < n_rot / 2; i++) {
                int i0 = is_neox ? i : 2 * i, i1 = is_neox ? i + n_rot / 2 : 2 * i + 1;
                double na = hypot(a[i0], a[i1]), nb = hypot(b[i0], b[i1]);
                CHECK_NEAR(nb, na, 1e-6 * na + 1e-7);
            }
        }
    }
    /* one quarter turn: inv_freq pi/2 at position 1 takes (1, 0) to (0, 1), and at
     * position 2 to (-1, 0); the pairing decides which dims move */
    float quarter[2] = {(float)(3.14159265358979 / 2), (float)(3.14159265358979 / 2)};
    for (int is_neox = 0; is_neox <= 1; is_neox++) {
        float v[4] = {1, 0, 0, 0}; /* pairs: llama (0,1),(2,3); neox (0,2),(1,3) */
        int32_t p1 = 1;
        ns_cpu_rope(v, &p1, 1, 1, 4, 4, quarter, is_neox);
        int other = is_neox ? 2 : 1;
        CHECK_NEAR(v[0], 0.0, 1e-6);
        CHECK_NEAR(v[other], 1.0, 1e-6);
        float w[4] = {1, 0, 0, 0};
        int32_t p2 = 2;
        ns_cpu_rope_ref(w, &p2, 1, 1, 4, 4, quarter, is_neox);
        CHECK_NEAR(w[0], -1.0, 1e-6);
        CHECK_NEAR(w[other], 0.0, 1e-6);
    }
    free(y);
    free(x);
}

NS_TEST(test_kernels_rope_inv_freq) {
    const double pi = 3.14159265358979323846;
    /* plain: base^(-2i/n_rot) */
    float f4[2];
    ns_rope_inv_freq(f4, 4, 10000.0f, 1.0f, 1.0f, 4.0f, 8192, NULL);
    CHECK_NEAR(f4[0], 1.0, 1e-7);
    CHECK_NEAR(f4[1], 0.01, 1e-9);

    /* Llama 3.1: base 500000, n_rot 128, factor 8, low 1, high 4, orig 8192.
     * Wavelengths below 8192/4 = 2048 keep their frequency, above 8192/1 are divided by 8,
     * between them blend. */
    float f[64], plain[64];
    ns_rope_inv_freq(f, 128, 500000.0f, 8.0f, 1.0f, 4.0f, 8192, NULL);
    ns_rope_inv_freq(plain, 128, 500000.0f, 1.0f, 1.0f, 4.0f, 8192, NULL); /* factor 1: off */
    /* i = 0: freq 1, wavelength 2 pi: unchanged */
    CHECK_NEAR(f[0], 1.0, 1e-7);
    /* i = 10: freq 500000^(-20/128) = 0.1287, wavelength 48.8: unchanged */
    double f10 = pow(500000.0, -20.0 / 128.0);
    CHECK(2 * pi / f10 < 2048.0);
    CHECK_NEAR(f[10], f10, 1e-7 * f10);
    /* i = 40: freq 2.74e-4, wavelength ~22900 > 8192: divided by 8 */
    double f40 = pow(500000.0, -80.0 / 128.0);
    CHECK(2 * pi / f40 > 8192.0);
    CHECK_NEAR(f[40], f40 / 8.0, 1e-7 * f40);
    /* i = 63, the lowest frequency: divided by 8 */
    double f63 = pow(500000.0, -126.0 / 128.0);
    CHECK_NEAR(f[63], f63 / 8.0, 1e-7 * f63);
    /* i = 30: freq 2.13e-3, wavelength ~2948, in the blend band:
     * smooth = (8192/wavelength - 1) / (4 - 1) ~ 0.593, f = (1 - smooth) f/8 + smooth f */
    double f30 = pow(500000.0, -60.0 / 128.0), wl30 = 2 * pi / f30;
    double smooth = (8192.0 / wl30 - 1.0) / 3.0;
    CHECK(wl30 > 2048.0 && wl30 < 8192.0 && smooth > 0.5 && smooth < 0.7);
    CHECK_NEAR(f[30], (1.0 - smooth) * f30 / 8.0 + smooth * f30, 1e-6 * f30);
    CHECK(f[30] > f30 / 8.0 && f[30] < f30);
    /* factor 1 applies no scaling at all */
    for (int i = 0; i < 64; i++) CHECK_NEAR(plain[i], pow(500000.0, -2.0 * i / 128.0), 1e-7 * plain[i]);

    /* freq_factors divide (GGUF rope_freqs.weight) */
    float ff[4] = {1.0f, 2.0f, 4.0f, 0.5f}, g[4];
    ns_rope_inv_freq(g, 8, 10000.0f, 1.0f, 0, 0, 0, ff);
    for (int i = 0; i < 4; i++) CHECK_NEAR(g[i], pow(10000.0, -2.0 * i / 8.0) / ff[i], 1e-7);
}

/* ---- paged attention ---- */

typedef struct attn_case {
    int n_head, n_head_kv, head_dim, block_size, n_kv, n_q;
    int n_blocks_total, n_blk;          /* pool blocks; blocks in the table */
    float *k_pool, *v_pool;             /* (n_blocks_total, block_size, n_head_kv, head_dim) */
    int32_t *table;                     /* (n_blk), its own heap block: ASan sees over-reads */
    float *q;                           /* (n_q, n_head, head_dim) */
    int32_t *q_pos;                     /* (n_q): the last n_q positions */
    float scale;
} attn_case;

static void attn_case_init(attn_case *c, ns_test_rng *r, int n_head, int n_head_kv, int head_dim,
                           int block_size, int n_kv, int n_q) {
    c->n_head = n_head, c->n_head_kv = n_head_kv, c->head_dim = head_dim;
    c->block_size = block_size, c->n_kv = n_kv, c->n_q = n_q;
    c->n_blk = (n_kv + block_size - 1) / block_size;
    c->n_blocks_total = 2 * c->n_blk + 3;
    size_t pool = (size_t)c->n_blocks_total * block_size * n_head_kv * head_dim;
    c->k_pool = rand_alloc(r, pool, 1.0f);
    c->v_pool = rand_alloc(r, pool, 1.0f);
    /* a random permutation of the pool's blocks: scattered, unsorted */
    int32_t *perm = xmalloc((size_t)c->n_blocks_total * sizeof(int32_t));
    for (int i = 0; i < c->n_blocks_total; i++) perm[i] = i;
    for (int i = c->n_blocks_total - 1; i > 0; i--) {
        int j = (int)(ns_test_rng_u64(r) % (unsigned)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    c->table = xmalloc((size_t)c->n_blk * sizeof(int32_t));
    for (int i = 0; i < c->n_blk; i++) c->table[i] = perm[i];
    free(perm);
    c->q = rand_alloc(r, (size_t)n_q * n_head * head_dim, 2.0f);
    c->q_pos = xmalloc((size_t)n_q * sizeof(int32_t));
    for (int i = 0; i < n_q; i++) c->q_pos[i] = n_kv - n_q + i;
    c->scale = 1.0f / sqrtf((float)head_dim);
}

static void attn_case_free(attn_case *c) {
    free(c->k_pool), free(c->v_pool), free(c->table), free(c->q), free(c->q_pos);
}

static void attn_run(const attn_case *c, float *out, int h0, int h1, int is_ref, float *scratch) {
    (is_ref ? ns_cpu_attention_paged_ref : ns_cpu_attention_paged)(
        out, c->q, c->q_pos, c->n_q, c->k_pool, c->v_pool, c->table, c->n_kv, c->block_size,
        c->n_head, c->n_head_kv, c->head_dim, c->scale, h0, h1, scratch);
}

/* Poison with NaN every pool block outside table[0, n_blk) and every slot of the last
 * used block at or past n_kv: none of them may reach the result. */
static void attn_case_poison(attn_case *c) {
    size_t blk = (size_t)c->block_size * c->n_head_kv * c->head_dim;
    size_t row = (size_t)c->n_head_kv * c->head_dim;
    for (int b = 0; b < c->n_blocks_total; b++) {
        int used = 0;
        for (int i = 0; i < c->n_blk; i++) used |= c->table[i] == b;
        if (used) continue;
        for (size_t k = 0; k < blk; k++) c->k_pool[b * blk + k] = c->v_pool[b * blk + k] = NAN;
    }
    int last = c->table[c->n_blk - 1];
    for (int s = c->n_kv - (c->n_blk - 1) * c->block_size; s < c->block_size; s++)
        for (size_t k = 0; k < row; k++)
            c->k_pool[last * blk + s * row + k] = c->v_pool[last * blk + s * row + k] = NAN;
}

NS_TEST(test_kernels_attention_paged_vs_ref) {
    ns_test_rng r = {121};
    static const int heads[][3] = {/* n_head, n_head_kv, head_dim */
                                   {9, 3, 64}, {4, 4, 32}, {6, 2, 40}, {3, 1, 7}, {2, 2, 128}};
    static const int n_kvs[] = {1, 2, 7, 16, 17, 33, 95, 160, 301};
    static const int block_sizes[] = {16, 7};
    int n_cases = 0;
    for (int bs = 0; bs < 2; bs++) {
        for (int hc = 0; hc < 5; hc++) {
            for (int k = 0; k < 9; k++) {
                for (int qc = 0; qc < 2; qc++) {
                    int n_kv = n_kvs[k], n_q = qc == 0 ? 1 : (n_kv < 5 ? n_kv : 5);
                    if (qc == 1 && n_q == 1) continue;
                    attn_case c;
                    attn_case_init(&c, &r, heads[hc][0], heads[hc][1], heads[hc][2], block_sizes[bs], n_kv, n_q);
                    size_t n_out = (size_t)n_q * c.n_head * c.head_dim;
                    float *scratch = canary_alloc((size_t)n_kv);
                    float *ref = xmalloc(n_out * sizeof(float)), *out = canary_alloc(n_out);
                    attn_run(&c, ref, 0, c.n_head, 1, scratch);
                    CHECK(canary_intact(scratch, (size_t)n_kv));
                    attn_run(&c, out, 0, c.n_head, 0, scratch);
                    CHECK(canary_intact(scratch, (size_t)n_kv));
                    /* outputs are convex mixes of V rows in [-1, 1]: fp32 dots, exp and sums
                     * over up to 301 keys: atol 1e-5, rtol 1e-4 */
                    if (!CHECK_ALLCLOSE(out, ref, n_out, 1e-5, 1e-4, 1e-10))
                        fprintf(stderr, "    heads %d/%d hd %d bs %d n_kv %d n_q %d\n", c.n_head,
                                c.n_head_kv, c.head_dim, c.block_size, n_kv, n_q);
                    CHECK(canary_intact(out, n_out));

                    /* head ranges that cover all heads give the full result, bit for bit */
                    float *split = canary_alloc(n_out);
                    int cut1 = c.n_head / 3, cut2 = (2 * c.n_head) / 3 + (c.n_head > 1);
                    attn_run(&c, split, 0, cut1, 0, scratch);
                    attn_run(&c, split, cut1, cut2, 0, scratch);
                    attn_run(&c, split, cut2, c.n_head, 0, scratch);
                    CHECK(memcmp(split, out, n_out * sizeof(float)) == 0);
                    CHECK(canary_intact(split, n_out));

                    /* heads outside [h0, h1) are not written */
                    if (c.n_head >= 3) {
                        float *part = canary_alloc(n_out);
                        attn_run(&c, part, 1, c.n_head - 1, 0, scratch);
                        for (int i = 0; i < n_q; i++)
                            for (int d = 0; d < c.head_dim; d++) {
                                size_t first = ((size_t)i * c.n_head) * c.head_dim + d;
                                size_t lastk = ((size_t)i * c.n_head + c.n_head - 1) * c.head_dim + d;
                                CHECK(part[first] == SENTINEL && part[lastk] == SENTINEL);
                            }
                        canary_free(part);
                    }

                    /* NaN in every block outside the table (and in unused slots) changes nothing */
                    attn_case_poison(&c);
                    float *poisoned = canary_alloc(n_out), *poisoned_ref = canary_alloc(n_out);
                    attn_run(&c, poisoned, 0, c.n_head, 0, scratch);
                    attn_run(&c, poisoned_ref, 0, c.n_head, 1, scratch);
                    CHECK_MSG(memcmp(poisoned, out, n_out * sizeof(float)) == 0,
                              "fast read outside the table: bs %d n_kv %d", c.block_size, n_kv);
                    CHECK_MSG(memcmp(poisoned_ref, ref, n_out * sizeof(float)) == 0,
                              "ref read outside the table: bs %d n_kv %d", c.block_size, n_kv);
                    canary_free(poisoned_ref);
                    canary_free(poisoned);
                    canary_free(split);
                    canary_free(out);
                    free(ref);
                    canary_free(scratch);
                    attn_case_free(&c);
                    n_cases++;
                }
            }
        }
    }
    CHECK(n_cases > 100);
}

NS_TEST(test_kernels_attention_paged_hand_checks) {
    /* one head, head_dim 2, scale 1, keys (0, 0) and (ln 3, 0), query (1, 0): scores 0 and
     * ln 3, weights 1/4 and 3/4; values (1, 0) and (0, 1) -> out (0.25, 0.75). The two
     * keys sit in pool blocks 2 and 0 with block_size 1. */
    float k_pool[3 * 2] = {logf(3.0f), 0, 9, 9, 0, 0};
    float v_pool[3 * 2] = {0, 1, 9, 9, 1, 0};
    int32_t table[2] = {2, 0};
    float q[2] = {1, 0}, out[2], scratch[2];
    int32_t pos1 = 1;
    for (int is_ref = 0; is_ref <= 1; is_ref++) {
        (is_ref ? ns_cpu_attention_paged_ref : ns_cpu_attention_paged)(
            out, q, &pos1, 1, k_pool, v_pool, table, 2, 1, 1, 1, 2, 1.0f, 0, 1, scratch);
        CHECK_NEAR(out[0], 0.25, 1e-6);
        CHECK_NEAR(out[1], 0.75, 1e-6);
        /* causal: the query at position 0 sees key 0 only, so it returns v_0 exactly */
        int32_t pos0 = 0;
        (is_ref ? ns_cpu_attention_paged_ref : ns_cpu_attention_paged)(
            out, q, &pos0, 1, k_pool, v_pool, table, 2, 1, 1, 1, 2, 1.0f, 0, 1, scratch);
        CHECK(out[0] == 1.0f && out[1] == 0.0f);
    }

    /* prefill causality on the demo model's shape: query i of n_q at position i equals a
     * decode step that only has keys 0..i */
    ns_test_rng r = {131};
    attn_case c;
    attn_case_init(&c, &r, 9, 3, 64, 7, 40, 40);
    for (int i = 0; i < 40; i++) c.q_pos[i] = i;
    size_t n_out = (size_t)40 * 9 * 64;
    float *all = xmalloc(n_out * sizeof(float)), *one = xmalloc(9 * 64 * sizeof(float));
    float *sc = xmalloc(40 * sizeof(float));
    attn_run(&c, all, 0, 9, 0, sc);
    for (int i = 0; i < 40; i += 13) {
        ns_cpu_attention_paged(one, c.q + (size_t)i * 9 * 64, &c.q_pos[i], 1, c.k_pool, c.v_pool,
                               c.table, i + 1, 7, 9, 3, 64, c.scale, 0, 9, sc);
        CHECK(memcmp(one, all + (size_t)i * 9 * 64, 9 * 64 * sizeof(float)) == 0);
    }
    free(sc), free(one), free(all);
    attn_case_free(&c);
}
