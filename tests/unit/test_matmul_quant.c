/* test_matmul_quant.c: the small-batch quantized matmul of kernels/cpu/matmul_quant.h.
 *
 * The fast kernel is checked against its reference (both production entry points) for every
 * weight type, M in {1,2,3,5,8,13,16} (and 33, past every register group), N in
 * {1,7,33,100} (tiles of 4 rows with remainders), K in {32,64,576,1536} (and 7, 33 for the
 * float types' tails), with random data quantized by ns_cpu_quantize_row. y has 16 sentinel
 * floats on each side and, in half the cases, a wider ldy whose columns [N, ldy) must stay
 * untouched. The reference itself is pinned by a hand-built Q8_0/Q4_1 check and by
 * ns_cpu_matmul_ref on the dequantized weights.
 */
#include "../test.h"
#include "gguf.h"
#include "matmul_quant.h"
#include "ops.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CANARY 16
static const float SENTINEL = -1234.5f;

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

static size_t test_row_bytes(int type, int K) {
    switch (type) {
    case NS_GGML_F32: return (size_t)K * 4;
    case NS_GGML_F16:
    case NS_GGML_BF16: return (size_t)K * 2;
    case NS_GGML_Q8_0: return (size_t)K / 32 * 34;
    case NS_GGML_Q4_0: return (size_t)K / 32 * 18;
    default: return (size_t)K / 32 * 20;
    }
}

/* N rows of K random weights in [-1, 1) stored in type; wf gets the dequantized values. */
static void *make_weights(ns_test_rng *r, int type, int N, int K, float *wf /*(N, K)*/) {
    size_t rb = test_row_bytes(type, K);
    uint8_t *w = xmalloc(rb * (size_t)N);
    float *row = xmalloc((size_t)K * sizeof(float));
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < K; k++) row[k] = ns_test_rng_f32(r);
        ns_cpu_quantize_row(type, row, w + (size_t)n * rb, K);
        ns_cpu_dequant_row_ref(type, w + (size_t)n * rb, wf + (size_t)n * K, K);
    }
    free(row);
    return w;
}

/* Runs fast and ref for one shape; returns 1 when everything held. */
static int check_shape(ns_test_rng *r, int type, int M, int N, int K, int ldy) {
    int ok = 1;
    float *wf = xmalloc((size_t)N * K * sizeof(float) + 1);
    void *w = make_weights(r, type, N, K, wf);
    float *x = xmalloc((size_t)M * K * sizeof(float) + 1);
    for (size_t i = 0; i < (size_t)M * K; i++) x[i] = ns_test_rng_f32(r);
    size_t ny = (size_t)M * ldy;
    float *y = canary_alloc(ny), *yref = canary_alloc(ny);
    ns_cpu_matmul_quant(y, ldy, x, w, type, M, N, K);
    ns_cpu_matmul_quant_ref(yref, ldy, x, w, type, M, N, K);
    /* compact (M, N) copies for the comparison; columns [N, ldy) must be untouched */
    float *got = xmalloc(ny * sizeof(float)), *ref = xmalloc(ny * sizeof(float));
    int outside_ok = 1;
    for (int m = 0; m < M; m++) {
        memcpy(got + (size_t)m * N, y + (size_t)m * ldy, (size_t)N * sizeof(float));
        memcpy(ref + (size_t)m * N, yref + (size_t)m * ldy, (size_t)N * sizeof(float));
        for (int n = N; n < ldy; n++)
            if (memcmp(y + (size_t)m * ldy + n, &SENTINEL, sizeof(float)) != 0) outside_ok = 0;
    }
    /* |x|, |w| <= ~1: fp32 sums of K products vs double. Error grows like eps * sqrt(K) *
     * row magnitude for random signs; the bound is 1e-6 * K absolute (the per-row magnitude
     * sum |x||w| is <= K), 1e-5 relative, NMSE <= 1e-10. */
    if (!CHECK_ALLCLOSE(got, ref, (size_t)M * N, 1e-6 * K, 1e-5, 1e-10)) ok = 0;
    CHECK_MSG(outside_ok, "columns past N written");
    CHECK_MSG(canary_intact(y, ny), "canary");
    ok = ok && outside_ok && canary_intact(y, ny);
    /* the reference itself: the same as the fp32 matmul reference on dequantized weights */
    if (M <= 3) {
        float *y2 = xmalloc((size_t)M * N * sizeof(float));
        ns_cpu_matmul_ref(y2, x, wf, M, N, K);
        if (!CHECK_ALLCLOSE(ref, y2, (size_t)M * N, 1e-6, 1e-6, 1e-12)) ok = 0;
        free(y2);
    }
    if (!ok) fprintf(stderr, "    at type %d M %d N %d K %d ldy %d\n", type, M, N, K, ldy);
    free(ref);
    free(got);
    canary_free(yref);
    canary_free(y);
    free(x);
    free(w);
    free(wf);
    return ok;
}

static void sweep(int type, int seed) {
    ns_test_rng r = {(unsigned long long)seed};
    static const int Ms[] = {1, 2, 3, 5, 8, 13, 16, 33};
    static const int Ns[] = {1, 7, 33, 100};
    static const int Ks_block[] = {32, 64, 576, 1536};
    static const int Ks_float[] = {7, 33, 32, 64, 576, 1536};
    int is_float = type == NS_GGML_F32 || type == NS_GGML_F16 || type == NS_GGML_BF16;
    const int *Ks = is_float ? Ks_float : Ks_block;
    int n_k = is_float ? 6 : 4, n_fail = 0;
    for (int a = 0; a < 8; a++)
        for (int b = 0; b < 4; b++)
            for (int c = 0; c < n_k; c++) {
                int M = Ms[a], N = Ns[b], K = Ks[c];
                if (M == 33 && K == 1536 && N == 100) continue; /* keep the run short */
                int ldy = ((a + b + c) & 1) ? N + 5 : N;
                if (!check_shape(&r, type, M, N, K, ldy) && ++n_fail >= 3) return;
            }
}

NS_TEST(test_matmul_quant_q4_0) { sweep(NS_GGML_Q4_0, 101); }
NS_TEST(test_matmul_quant_q4_1) { sweep(NS_GGML_Q4_1, 102); }
NS_TEST(test_matmul_quant_q8_0) { sweep(NS_GGML_Q8_0, 103); }
NS_TEST(test_matmul_quant_f32) { sweep(NS_GGML_F32, 104); }
NS_TEST(test_matmul_quant_f16) { sweep(NS_GGML_F16, 105); }
NS_TEST(test_matmul_quant_bf16) { sweep(NS_GGML_BF16, 106); }

static void put_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, sizeof v); }

/* Hand-built blocks with exact results: Q8_0 d = 0.5, q[j] = j - 16; Q4_1 d = 0.25, m = -1,
 * nibble q = j % 16 (both halves); x = 1 everywhere and, as a second row, x[j] = j. */
NS_TEST(test_matmul_quant_hand_blocks) {
    float x[2][32];
    for (int j = 0; j < 32; j++) x[0][j] = 1.0f, x[1][j] = (float)j;
    uint8_t q8[34], q41[20];
    put_u16(q8, ns_fp32_to_fp16(0.5f));
    for (int j = 0; j < 32; j++) q8[2 + j] = (uint8_t)(int8_t)(j - 16);
    put_u16(q41, ns_fp32_to_fp16(0.25f));
    put_u16(q41 + 2, ns_fp32_to_fp16(-1.0f));
    for (int j = 0; j < 16; j++) q41[4 + j] = (uint8_t)(j | (j << 4));
    double e8[2] = {0, 0}, e41[2] = {0, 0};
    for (int j = 0; j < 32; j++) {
        double w8 = 0.5 * (j - 16), w41 = 0.25 * (j % 16) - 1.0;
        e8[0] += w8, e8[1] += j * w8;
        e41[0] += w41, e41[1] += j * w41;
    }
    float y[2];
    for (int v = 0; v < 2; v++) {
        void (*fn)(float *, int, const float *, const void *, int, int, int, int) =
            v ? ns_cpu_matmul_quant_ref : ns_cpu_matmul_quant;
        fn(y, 1, &x[0][0], q8, NS_GGML_Q8_0, 2, 1, 32);
        CHECK(y[0] == (float)e8[0] && y[1] == (float)e8[1]);
        fn(y, 1, &x[0][0], q41, NS_GGML_Q4_1, 2, 1, 32);
        CHECK(y[0] == (float)e41[0] && y[1] == (float)e41[1]);
    }
    /* K = 0: an empty sum writes zeros (float types only) */
    float yz[3] = {5, 5, 5};
    ns_cpu_matmul_quant(yz, 1, x[0], q8, NS_GGML_F32, 3, 1, 0);
    CHECK(yz[0] == 0.0f && yz[1] == 0.0f && yz[2] == 0.0f);
}

/* A column slice (w advanced to row n0, y to column n0) gives the same bits as the full
 * call: how the backend splits N across threads. */
NS_TEST(test_matmul_quant_column_slices) {
    ns_test_rng r = {107};
    const int M = 5, N = 37, K = 576, n0 = 13;
    float *wf = xmalloc((size_t)N * K * sizeof(float));
    void *w = make_weights(&r, NS_GGML_Q4_1, N, K, wf);
    float *x = xmalloc((size_t)M * K * sizeof(float));
    for (int i = 0; i < M * K; i++) x[i] = ns_test_rng_f32(&r);
    float *full = canary_alloc((size_t)M * N), *split = canary_alloc((size_t)M * N);
    ns_cpu_matmul_quant(full, N, x, w, NS_GGML_Q4_1, M, N, K);
    ns_cpu_matmul_quant(split, N, x, w, NS_GGML_Q4_1, M, n0, K);
    ns_cpu_matmul_quant(split + n0, N, x, (const uint8_t *)w + (size_t)n0 * (K / 32 * 20),
                        NS_GGML_Q4_1, M, N - n0, K);
    CHECK(memcmp(full, split, (size_t)M * N * sizeof(float)) == 0);
    CHECK(canary_intact(full, (size_t)M * N) && canary_intact(split, (size_t)M * N));
    canary_free(split);
    canary_free(full);
    free(x);
    free(w);
    free(wf);
}

/* The batch-invariant variant: a row's result is bit-identical alone and at every
 * position of every M (the property the engine's batch-invariant mode rests on), and
 * close to the reference. */
NS_TEST(test_matmul_quant_invariant_rows) {
    const int types[] = {NS_GGML_F32, NS_GGML_F16, NS_GGML_BF16, NS_GGML_Q8_0, NS_GGML_Q4_0, NS_GGML_Q4_1};
    enum { N = 37, K = 96, MMAX = 21 };
    ns_test_rng rng = {77};
    float wf[N * K], x[MMAX * K], y1[N], yM[MMAX * N], yref[MMAX * N];
    for (int i = 0; i < N * K; i++) wf[i] = ns_test_rng_f32(&rng);
    for (int i = 0; i < MMAX * K; i++) x[i] = ns_test_rng_f32(&rng);
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        size_t row = ns_ggml_row_bytes(types[t], K);
        unsigned char *w = malloc(row * N);
        for (int n = 0; n < N; n++) ns_cpu_quantize_row(types[t], wf + n * K, w + (size_t)n * row, K);
        for (int M = 1; M <= MMAX; M += 4) {
            ns_cpu_matmul_quant_invariant(yM, N, x, w, types[t], M, N, K);
            ns_cpu_matmul_quant_ref(yref, N, x, w, types[t], M, N, K);
            CHECK_ALLCLOSE(yM, yref, (size_t)M * N, 1e-4, 1e-4, 1e-10);
            for (int r = 0; r < M; r++) {
                ns_cpu_matmul_quant_invariant(y1, N, x + (size_t)r * K, w, types[t], 1, N, K);
                CHECK_MSG(memcmp(y1, yM + (size_t)r * N, sizeof y1) == 0, "type %d: row %d of M=%d differs from alone",
                          types[t], r, M);
            }
        }
        free(w);
    }
}
