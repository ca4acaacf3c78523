/* parity.c: the CUDA kernels and backend against the CPU references, on a GPU. Built and
 * run by tests/gpu/run.sh (it compiles anywhere nvcc exists, but only runs where a CUDA
 * device is present; tests/gpu/RESULTS.md has the runs).
 *
 * usage: gpu-parity kernels | greedy | synthetic | fp8 | throughput
 *   kernels     every ns_cuda_* op against its ns_cpu_*_ref on odd shapes (1, odd sizes,
 *               non-multiples of the block size, GQA groups, head_dim 40/80/256), each
 *               output checked in this order: every element finite, NMSE, per element
 *               !(err <= atol + rtol |ref|) so that NaN fails; 64 canary floats either side
 *               of every device output must come back untouched. ns_cuda_sample_rows
 *               must give ns_cpu_sample_rows_ref's token in every row, exactly, and
 *               its time for 1,000 rows of 128,256 logits is printed. The fused QKV's
 *               epilogue (ns_cuda_qkv_split_rope) bit-equal to add_bias then rope.
 *               FP8 (precision fp8): ns_cuda_quant_rows_fp8 equal to ns_cpu_quant_rows_fp8
 *               byte for byte (scales bit for bit), fp32 and bf16 inputs, special rows;
 *               the ops writing FP8 rows (rmsnorm, add_rmsnorm, the bf16 SwiGLU) bit-equal
 *               to the unfused ops followed by the quantizer;
 *               the backend's FP8 matmul (cuBLASLt, outer-vector scales) against
 *               ns_cpu_matmul_fp8_ref on odd shapes (NMSE <= 1e-5, every element within
 *               1e-2 |ref| + 2e-3 max |ref|: the tensor cores' fp8 sums are not fp32
 *               exact), then its time at 8192^3 beside the bf16 matmul's.
 *               The FP8 KV cache: kv_store_fp8's codes and scales equal to
 *               ns_cpu_quant_rows_fp8's, attention_paged_fp8 and the tensor-core kernel
 *               (groups, one token per group) against the CPU attention over what the
 *               codes decode to.
 *   greedy      tiny random models (Q8_0, Q4_1): 6 requests of greedy decoding, 48 tokens
 *               each, on the CPU and on CUDA; tokens compared. bf16 GEMM inputs can flip a
 *               near-tie late in a sequence, so the check is: no sequence diverges in its
 *               first 16 tokens, and at least 4 of 6 agree on all 48 (printed either way).
 *   synthetic   models built in memory at real shapes (a small llama, a small qwen2, and
 *               SmolLM2-135M's exact shapes) with random bf16 weights: the logits of a
 *               200-token prompt and 16 requests x 32 greedy tokens on the CPU, on CUDA
 *               with NS_CUDA_PRECISE=1 (identical tokens required) and on plain CUDA
 *               (logits NMSE under 1e-3; its tokens are reported, not judged: bf16 inputs
 *               flip near-ties of flat random-weight logits). Then the same 16 requests
 *               sampled (temperature, top_k, top_p, min_p, seeds): the CPU picking by the
 *               row rule vs CUDA precise picking on the device (identical, or differing
 *               only where the draw fell within 1e-3 of a boundary, on the CPU's logits
 *               or a near-tie at a cut away from them), and plain CUDA twice (identical).
 *   fp8         precision fp8 on the synthetic shapes: prompt logits against the CPU's (NMSE
 *               <= 0.4: random weights, see run_fp8), two FP8 greedy runs identical, token
 *               agreement reported.
 *   throughput  a random 8-layer model (n_embd 512, Q8_0) on CUDA: 256 requests, 64 prompt
 *               + 64 generated tokens, max_seqs 128; prints tokens/s. No pass bound yet.
 * Ends with "N passed, N failed, N skipped"; exit 1 on any failure.
 */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "../unit/tiny_model.h"
#include "backend.h"
#include "backend_cuda.h"
#include "engine.h"
#include "fp8.h"
#include "gguf.h"
#include "ops.h"
#include "ops_cuda.h"
#include "sample_cases.h"
#include "sample_rule.h"

static int g_pass, g_fail, g_skip;

#define CANARY 64
#define CU(call)                                                                            \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess) {                                                            \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(2);                                                                        \
        }                                                                                   \
    } while (0)

/* A fresh temporary directory for the models this run writes (left for inspection). */
static const char *tmpdir(void) {
    static char dir[256];
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/nsgpu.XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return dir;
}

/* test.h's check order: every element finite, NMSE, then per element with NaN failing. */
static int allclose(const char *what, const float *got, const float *ref, size_t n, double atol, double rtol,
                    double max_nmse) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            printf("FAIL %s: element %zu not finite (%g)\n", what, i, (double)got[i]);
            return 0;
        }
        double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    double nmse = den > 0 ? num / den : num;
    if (!(nmse <= max_nmse)) {
        printf("FAIL %s: NMSE %.3g > %.3g over %zu elements\n", what, nmse, max_nmse, n);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= atol + rtol * fabs((double)ref[i]))) {
            printf("FAIL %s: element %zu: %.9g vs ref %.9g\n", what, i, (double)got[i], (double)ref[i]);
            return 0;
        }
    }
    printf("ok   %s (n %zu, NMSE %.3g)\n", what, n, nmse);
    return 1;
}

static void result(int ok) { ok ? g_pass++ : g_fail++; }

/* Device buffer of n floats between two canary zones of 0xff bytes. */
static float *dev_canary(size_t n) {
    float *p;
    CU(cudaMalloc((void **)&p, (n + 2 * CANARY) * sizeof(float)));
    CU(cudaMemset(p, 0xff, (n + 2 * CANARY) * sizeof(float)));
    return p + CANARY;
}
static void *dev_copy(const void *src, size_t nbytes) {
    void *p;
    CU(cudaMalloc(&p, nbytes ? nbytes : 16));
    if (nbytes) CU(cudaMemcpy(p, src, nbytes, cudaMemcpyHostToDevice));
    return p;
}
/* Downloads n floats of d into host, checks both canaries; frees d. Returns 0 on a hit. */
static int fetch(const char *what, float *host, float *d, size_t n) {
    unsigned char *all = malloc((n + 2 * CANARY) * sizeof(float));
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(all, d - CANARY, (n + 2 * CANARY) * sizeof(float), cudaMemcpyDeviceToHost));
    memcpy(host, all + CANARY * sizeof(float), n * sizeof(float));
    int ok = 1;
    for (size_t i = 0; i < CANARY * sizeof(float); i++)
        if (all[i] != 0xff || all[(n + CANARY) * sizeof(float) + i] != 0xff) ok = 0;
    if (!ok) printf("FAIL %s: canary overwritten (out-of-bounds write)\n", what);
    free(all);
    CU(cudaFree(d - CANARY));
    return ok;
}

static void fill(ns_test_rng *r, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * ns_test_rng_f32(r);
}

/* ---- kernels ---- */

static void check_dequant(ns_test_rng *r) {
    const int types[] = {NS_GGML_F32, NS_GGML_F16, NS_GGML_BF16, NS_GGML_Q8_0, NS_GGML_Q4_0, NS_GGML_Q4_1};
    const char *names[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"};
    int n_rows = 7, n = 32 * 5;
    for (int ti = 0; ti < 6; ti++) {
        size_t rb = ns_ggml_row_bytes(types[ti], n);
        float *src = malloc(sizeof(float) * n_rows * n), *ref = malloc(sizeof(float) * n_rows * n);
        float *got = malloc(sizeof(float) * n_rows * n);
        char *q = malloc(rb * n_rows);
        fill(r, src, (size_t)n_rows * n, 2.0f);
        for (int i = 0; i < n_rows; i++) {
            ns_cpu_quantize_row(types[ti], src + (size_t)i * n, q + rb * i, n);
            ns_cpu_dequant_row_ref(types[ti], q + rb * i, ref + (size_t)i * n, n);
        }
        void *dq = dev_copy(q, rb * n_rows);
        /* to f32: the same products as the CPU, so bit-equal */
        float *d = dev_canary((size_t)n_rows * n);
        CU(ns_cuda_dequant_row(types[ti], dq, rb, d, NS_CUDA_TYPE_F32, n_rows, n, 0));
        char what[64];
        snprintf(what, sizeof what, "dequant_row %s -> f32", names[ti]);
        int ok = fetch(what, got, d, (size_t)n_rows * n);
        result(ok && allclose(what, got, ref, (size_t)n_rows * n, 0, 0, 0));
        /* to bf16: ref rounded the CPU's way */
        uint16_t *hb = malloc(2 * (size_t)n_rows * n);
        float *db = dev_canary((size_t)n_rows * n); /* bf16 data in the first half */
        CU(ns_cuda_dequant_row(types[ti], dq, rb, db, NS_CUDA_TYPE_BF16, n_rows, n, 0));
        ok = fetch("dequant bf16", got, db, (size_t)n_rows * n);
        memcpy(hb, got, 2 * (size_t)n_rows * n);
        for (int i = 0; i < n_rows * n; i++) got[i] = ns_bf16_to_fp32(hb[i]);
        for (int i = 0; i < n_rows * n; i++) ref[i] = ns_bf16_to_fp32(ns_fp32_to_bf16(ref[i]));
        snprintf(what, sizeof what, "dequant_row %s -> bf16", names[ti]);
        result(ok && allclose(what, got, ref, (size_t)n_rows * n, 0, 0, 0));
        /* embed from the same table: rows in a shuffled order, with repeats */
        int32_t ids[5] = {6, 0, 3, 3, 1};
        float *de = dev_canary(5 * (size_t)n), *eref = malloc(sizeof(float) * 5 * n);
        int32_t *dids = dev_copy(ids, sizeof ids);
        CU(ns_cuda_embed(de, dq, types[ti], dids, 5, n, 0));
        ns_cpu_embed(eref, q, types[ti], ids, 5, n);
        snprintf(what, sizeof what, "embed %s", names[ti]);
        ok = fetch(what, got, de, 5 * (size_t)n);
        result(ok && allclose(what, got, eref, 5 * (size_t)n, 0, 0, 0));
        CU(cudaFree(dids));
        CU(cudaFree(dq));
        free(src), free(ref), free(got), free(q), free(hb), free(eref);
    }
}

static void check_rows(ns_test_rng *r) {
    const int shapes[][2] = {{1, 1}, {3, 77}, {17, 576}, {2, 4097}};
    for (int si = 0; si < 4; si++) {
        int rows = shapes[si][0], n = shapes[si][1];
        size_t N = (size_t)rows * n;
        float *x = malloc(N * 4), *w = malloc(n * 4), *up = malloc(N * 4), *ref = malloc(N * 4), *got = malloc(N * 4);
        fill(r, x, N, 4.0f), fill(r, w, n, 1.0f), fill(r, up, N, 1.0f);
        float *dx = dev_copy(x, N * 4), *dw = dev_copy(w, n * 4), *dup = dev_copy(up, N * 4);
        char what[64];
        /* rmsnorm */
        float *d = dev_canary(N);
        CU(ns_cuda_rmsnorm(d, NULL, dx, dw, rows, n, 1e-5f, 0));
        ns_cpu_rmsnorm_ref(ref, x, w, rows, n, 1e-5f);
        snprintf(what, sizeof what, "rmsnorm %dx%d", rows, n);
        int ok = fetch(what, got, d, N);
        result(ok && allclose(what, got, ref, N, 1e-5, 1e-5, 1e-10));
        /* add_rmsnorm: bit for bit ns_cuda_add then ns_cuda_rmsnorm, the sum x + up and the
         * fp32 and bf16 outputs; out aliasing delta as the forward pass uses it */
        {
            float *xa = dev_copy(x, N * 4), *xb = dev_copy(x, N * 4), *da = dev_copy(up, N * 4);
            float *oa = dev_canary(N), *ob = dev_canary(N);
            uint16_t *ha, *hb;
            CU(cudaMalloc((void **)&ha, N * 2));
            CU(cudaMalloc((void **)&hb, N * 2));
            CU(ns_cuda_add(xa, dup, (int64_t)N, 0));
            CU(ns_cuda_rmsnorm(oa, ha, xa, dw, rows, n, 1e-5f, 0));
            CU(ns_cuda_add_rmsnorm(xb, da, ob, hb, dw, rows, n, 1e-5f, 0));
            float *x1 = malloc(N * 4), *x2 = malloc(N * 4), *o1 = malloc(N * 4);
            uint16_t *h1 = malloc(N * 2), *h2 = malloc(N * 2);
            CU(cudaDeviceSynchronize());
            CU(cudaMemcpy(x1, xa, N * 4, cudaMemcpyDeviceToHost));
            CU(cudaMemcpy(x2, xb, N * 4, cudaMemcpyDeviceToHost));
            CU(cudaMemcpy(h1, ha, N * 2, cudaMemcpyDeviceToHost));
            CU(cudaMemcpy(h2, hb, N * 2, cudaMemcpyDeviceToHost));
            snprintf(what, sizeof what, "add_rmsnorm %dx%d", rows, n);
            ok = fetch(what, o1, oa, N) & fetch(what, got, ob, N);
            ok = ok && memcmp(x1, x2, N * 4) == 0 && memcmp(o1, got, N * 4) == 0 && memcmp(h1, h2, N * 2) == 0;
            printf("%s %s: bit-equal to add then rmsnorm (x, fp32 and bf16 outputs)\n", ok ? "ok  " : "FAIL", what);
            result(ok);
            /* out aliasing delta */
            CU(cudaMemcpy(xb, x, N * 4, cudaMemcpyHostToDevice));
            CU(ns_cuda_add_rmsnorm(xb, da, da, NULL, dw, rows, n, 1e-5f, 0));
            CU(cudaDeviceSynchronize());
            CU(cudaMemcpy(x2, da, N * 4, cudaMemcpyDeviceToHost));
            ok = memcmp(o1, x2, N * 4) == 0;
            printf("%s %s, out = delta: bit-equal\n", ok ? "ok  " : "FAIL", what);
            result(ok);
            CU(cudaFree(xa)); CU(cudaFree(xb)); CU(cudaFree(da)); CU(cudaFree(ha)); CU(cudaFree(hb));
            free(x1), free(x2), free(o1), free(h1), free(h2);
        }
        /* swiglu */
        d = dev_canary(N);
        CU(ns_cuda_swiglu(d, NULL, dx, dup, (int64_t)N, 0));
        ns_cpu_swiglu_ref(ref, x, up, (int64_t)N);
        snprintf(what, sizeof what, "swiglu %zu", N);
        ok = fetch(what, got, d, N);
        result(ok && allclose(what, got, ref, N, 1e-6, 1e-5, 1e-10));
        /* swiglu from and to bf16 (the fused feed-forward): the reference on the rounded
         * inputs, rounded; one bf16 step apart at most (expf on either side) */
        {
            uint16_t *x16 = malloc(N * 2), *up16 = malloc(N * 2), *got16 = malloc(N * 2 + 4);
            float *xr = malloc(N * 4), *upr = malloc(N * 4), *gotf = malloc(N * 4);
            for (size_t i = 0; i < N; i++) {
                x16[i] = ns_fp32_to_bf16(x[i]), up16[i] = ns_fp32_to_bf16(up[i]);
                xr[i] = ns_bf16_to_fp32(x16[i]), upr[i] = ns_bf16_to_fp32(up16[i]);
            }
            ns_cpu_swiglu_ref(ref, xr, upr, (int64_t)N);
            for (size_t i = 0; i < N; i++) ref[i] = ns_bf16_to_fp32(ns_fp32_to_bf16(ref[i]));
            uint16_t *dx16 = dev_copy(x16, N * 2), *dup16 = dev_copy(up16, N * 2);
            const size_t nf = (N * 2 + 3) / 4; /* the bf16 output in a canary-guarded float buffer */
            d = dev_canary(nf);
            CU(ns_cuda_swiglu_bf16((uint16_t *)d, dx16, dup16, (int64_t)N, 0));
            snprintf(what, sizeof what, "swiglu bf16 %zu", N);
            ok = fetch(what, (float *)got16, d, nf);
            for (size_t i = 0; i < N; i++) gotf[i] = ns_bf16_to_fp32(got16[i]);
            result(ok && allclose(what, gotf, ref, N, 1e-6, 8e-3, 1e-5));
            CU(cudaFree(dx16)); CU(cudaFree(dup16));
            free(x16), free(up16), free(got16), free(xr), free(upr), free(gotf);
        }
        /* add, add_bias (in place on a copy of up) */
        d = dev_canary(N);
        CU(cudaMemcpy(d, up, N * 4, cudaMemcpyHostToDevice));
        CU(ns_cuda_add(d, dx, (int64_t)N, 0));
        CU(ns_cuda_add_bias(d, dw, rows, n, 0));
        memcpy(ref, up, N * 4);
        ns_cpu_add_ref(ref, x, (int64_t)N);
        for (int i = 0; i < rows; i++) ns_cpu_add_ref(ref + (size_t)i * n, w, n);
        snprintf(what, sizeof what, "add + add_bias %dx%d", rows, n);
        ok = fetch(what, got, d, N);
        result(ok && allclose(what, got, ref, N, 0, 0, 0));
        /* gather_rows: last row, first row */
        int32_t rws[2] = {rows - 1, 0};
        int32_t *drws = dev_copy(rws, sizeof rws);
        d = dev_canary(2 * (size_t)n);
        CU(ns_cuda_gather_rows(d, dx, drws, 2, n, 0));
        memcpy(ref, x + (size_t)(rows - 1) * n, n * 4);
        memcpy(ref + n, x, n * 4);
        snprintf(what, sizeof what, "gather_rows %d", n);
        ok = fetch(what, got, d, 2 * (size_t)n);
        result(ok && allclose(what, got, ref, 2 * (size_t)n, 0, 0, 0));
        /* greedy argmax per row, with a tie (lowest id wins) and a NaN */
        if (n > 4) {
            x[n - 1] = 100.0f, x[3] = 100.0f, x[1] = NAN; /* row 0: ids 3 and n-1 tie; NaN never wins */
            CU(cudaMemcpy(dx, x, N * 4, cudaMemcpyHostToDevice));
        }
        int32_t *dids, *ids = malloc(rows * 4);
        CU(cudaMalloc((void **)&dids, rows * 4));
        CU(ns_cuda_sample_greedy(dids, dx, rows, n, 0));
        CU(cudaMemcpy(ids, dids, rows * 4, cudaMemcpyDeviceToHost));
        ok = 1;
        for (int i = 0; i < rows; i++) {
            int best = -1;
            for (int j = 0; j < n; j++)
                if (!isnan(x[(size_t)i * n + j]) && (best < 0 || x[(size_t)i * n + j] > x[(size_t)i * n + best])) best = j;
            if (ids[i] != best) ok = 0, printf("FAIL sample_greedy row %d: %d vs %d\n", i, ids[i], best);
        }
        if (ok) printf("ok   sample_greedy %dx%d\n", rows, n);
        result(ok);
        CU(cudaFree(dids)); CU(cudaFree(drws)); CU(cudaFree(dx)); CU(cudaFree(dw)); CU(cudaFree(dup));
        free(x), free(w), free(up), free(ref), free(got), free(ids);
    }
}

static void check_rope(ns_test_rng *r) {
    const int cfg[][4] = {{1, 1, 2, 2}, {5, 3, 64, 64}, {7, 9, 80, 32}, {3, 2, 128, 128}}; /* tokens heads hd n_rot */
    for (int ci = 0; ci < 4; ci++)
        for (int neox = 0; neox < 2; neox++) {
            int T = cfg[ci][0], H = cfg[ci][1], hd = cfg[ci][2], nr = cfg[ci][3];
            size_t N = (size_t)T * H * hd;
            float *x = malloc(N * 4), *ref = malloc(N * 4), *got = malloc(N * 4), inv[64];
            int32_t pos[8];
            for (int t = 0; t < T; t++) pos[t] = t * 4099 + 3; /* large positions: theta in double */
            ns_rope_inv_freq(inv, nr, 10000.0f, 1.0f, 1.0f, 4.0f, 8192, NULL);
            fill(r, x, N, 1.0f);
            memcpy(ref, x, N * 4);
            ns_cpu_rope_ref(ref, pos, T, H, hd, nr, inv, neox);
            float *d = dev_canary(N);
            CU(cudaMemcpy(d, x, N * 4, cudaMemcpyHostToDevice));
            int32_t *dpos = dev_copy(pos, T * 4);
            float *dinv = dev_copy(inv, nr / 2 * 4);
            CU(ns_cuda_rope(d, dpos, T, H, hd, nr, dinv, neox, 0));
            char what[64];
            snprintf(what, sizeof what, "rope %s T%d H%d hd%d rot%d", neox ? "neox" : "interleaved", T, H, hd, nr);
            int ok = fetch(what, got, d, N);
            result(ok && allclose(what, got, ref, N, 1e-5, 1e-5, 1e-10));
            CU(cudaFree(dpos)); CU(cudaFree(dinv));
            free(x), free(ref), free(got);
        }
}

/* The fused QKV's epilogue (NS_CUDA_FUSED_QKV) on the device against the unfused device
 * ops it replaces, bit for bit: the product (T, q_dim + 2 kv_dim) split, each part plus
 * its bias (ns_cuda_add_bias), then ns_cuda_rope on q and k. Canaries around q, k, v. */
static void fetch_bytes(void *host, const void *d, size_t n);
static void check_qkv_split_rope(ns_test_rng *r) {
    const int cfg[][6] = {{1, 1, 1, 2, 2, 1}, {5, 4, 2, 64, 64, 0}, {7, 6, 3, 80, 32, 1}, {33, 32, 8, 64, 64, 1},
                          {3, 4, 1, 128, 128, 0}}; /* tokens heads kv_heads hd n_rot biases */
    for (int ci = 0; ci < 5; ci++)
        for (int neox = 0; neox < 2; neox++) {
            const int T = cfg[ci][0], H = cfg[ci][1], Hk = cfg[ci][2], hd = cfg[ci][3], nr = cfg[ci][4];
            const bool bias = cfg[ci][5];
            const size_t qd = (size_t)H * hd, kd = (size_t)Hk * hd, na = qd + 2 * kd;
            float *x = malloc((size_t)T * na * 4), *b = malloc(na * 4), *got = malloc((size_t)T * qd * 4),
                  *ref = malloc((size_t)T * qd * 4), inv[64];
            int32_t pos[40];
            for (int t = 0; t < T; t++) pos[t] = t * 4099 + 3;
            ns_rope_inv_freq(inv, nr, 10000.0f, 1.0f, 1.0f, 4.0f, 8192, NULL);
            fill(r, x, (size_t)T * na, 1.0f);
            fill(r, b, na, 0.5f);
            float *dx = dev_copy(x, (size_t)T * na * 4), *db = dev_copy(b, na * 4), *dinv = dev_copy(inv, nr / 2 * 4);
            int32_t *dpos = dev_copy(pos, (size_t)T * 4);
            float *dq = dev_canary((size_t)T * qd), *dk = dev_canary((size_t)T * kd), *dv = dev_canary((size_t)T * kd);
            CU(ns_cuda_qkv_split_rope(dq, dk, dv, dx, bias ? db : NULL, bias ? db + qd : NULL, bias ? db + qd + kd : NULL,
                                      dpos, T, H, Hk, hd, nr, dinv, neox, 0));
            /* the unfused ops, each part from the host's split */
            float *parts[3];
            const size_t width[3] = {qd, kd, kd}, off[3] = {0, qd, qd + kd};
            for (int p = 0; p < 3; p++) {
                for (int t = 0; t < T; t++) memcpy(ref + (size_t)t * width[p], x + (size_t)t * na + off[p], width[p] * 4);
                parts[p] = dev_copy(ref, (size_t)T * width[p] * 4);
                if (bias) CU(ns_cuda_add_bias(parts[p], db + off[p], T, (int)width[p], 0));
            }
            CU(ns_cuda_rope(parts[0], dpos, T, H, hd, nr, dinv, neox, 0));
            CU(ns_cuda_rope(parts[1], dpos, T, Hk, hd, nr, dinv, neox, 0));
            char what[96];
            snprintf(what, sizeof what, "qkv_split_rope %s T%d H%d/%d hd%d rot%d%s", neox ? "neox" : "interleaved", T,
                     H, Hk, hd, nr, bias ? " biases" : "");
            float *outs[3] = {dq, dk, dv};
            int ok = 1;
            for (int p = 0; p < 3; p++) {
                fetch_bytes(ref, parts[p], (size_t)T * width[p] * 4);
                ok = fetch(what, got, outs[p], (size_t)T * width[p]) && ok;
                ok = ok && memcmp(got, ref, (size_t)T * width[p] * 4) == 0;
                CU(cudaFree(parts[p]));
            }
            printf("%s %s: add_bias then rope's bits on q, k, v%s\n", ok ? "ok  " : "FAIL", what, ok ? "" : " NOT");
            result(ok);
            CU(cudaFree(dx)); CU(cudaFree(db)); CU(cudaFree(dinv)); CU(cudaFree(dpos));
            free(x), free(b), free(got), free(ref);
        }
}

/* Rounds x (n) to the values a bf16 pool holds. */
static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = ns_bf16_to_fp32(ns_fp32_to_bf16(x[i]));
}

/* A pool of n elements of kv_type in device memory between canaries, filled from x. */
static float *pool_upload(const float *x, size_t n, int kv_type, size_t *n_floats) {
    size_t bytes = n * (kv_type == NS_CUDA_TYPE_BF16 ? 2 : 4);
    *n_floats = (bytes + 3) / 4;
    float *d = dev_canary(*n_floats);
    if (kv_type == NS_CUDA_TYPE_BF16) {
        uint16_t *h = malloc(bytes);
        for (size_t i = 0; i < n; i++) h[i] = ns_fp32_to_bf16(x[i]);
        CU(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
        free(h);
    } else {
        CU(cudaMemcpy(d, x, bytes, cudaMemcpyHostToDevice));
    }
    return d;
}

/* Downloads a pool (canaries checked, freed) as floats into out (n). */
static int pool_fetch(const char *what, float *out, float *d, size_t n, size_t n_floats, int kv_type) {
    float *raw = malloc(n_floats * 4);
    int ok = fetch(what, raw, d, n_floats);
    if (kv_type == NS_CUDA_TYPE_BF16)
        for (size_t i = 0; i < n; i++) out[i] = ns_bf16_to_fp32(((const uint16_t *)raw)[i]);
    else
        memcpy(out, raw, n * 4);
    free(raw);
    return ok;
}

/* The attention checks' mixed batch: sequence 0 a prompt chunk over cached blocks, 1 a
 * decode step, 2 a fresh prompt; every table entry a distinct block of the pool
 * (AB_BLOCKS), shuffled; each new token's position, sequence and slot; groups of up to
 * NS_CUDA_ATTN_QT tokens per sequence, as the backend makes them. */
enum { AB_S = 3, AB_MB = 128, AB_BLOCKS = 3 * 128 };
static const int ab_past[AB_S] = {37, 100, 0}, ab_new[AB_S] = {9, 1, 23};
typedef struct {
    int T, tok_start[AB_S], n_groups;
    int32_t table[AB_S * AB_MB], pos[64], tok_seq[64], slot[64], groups[2 * 64];
} attn_batch;
static void attn_batch_make(ns_test_rng *r, int bs, attn_batch *b) {
    b->T = 0;
    for (int s = 0; s < AB_S; s++) b->tok_start[s] = b->T, b->T += ab_new[s];
    int perm[AB_BLOCKS];
    for (int i = 0; i < AB_BLOCKS; i++) perm[i] = i;
    for (int i = AB_BLOCKS - 1; i > 0; i--) {
        int j = (int)(ns_test_rng_u64(r) % (unsigned)(i + 1)), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int i = 0; i < AB_S * AB_MB; i++) b->table[i] = perm[i % AB_BLOCKS];
    for (int s = 0; s < AB_S; s++)
        for (int i = 0; i < ab_new[s]; i++) {
            int t = b->tok_start[s] + i, p = ab_past[s] + i;
            b->pos[t] = p, b->tok_seq[t] = s;
            b->slot[t] = b->table[s * AB_MB + p / bs] * bs + p % bs;
        }
    b->n_groups = 0;
    for (int s = 0; s < AB_S; s++)
        for (int i = 0; i < ab_new[s]; i += NS_CUDA_ATTN_QT, b->n_groups++) {
            b->groups[2 * b->n_groups] = b->tok_start[s] + i;
            b->groups[2 * b->n_groups + 1] = ab_new[s] - i < NS_CUDA_ATTN_QT ? ab_new[s] - i : NS_CUDA_ATTN_QT;
        }
}

/* attn_batch's mixed batch, block size not a power of two. With a bf16 pool the
 * reference attends over the same bf16-rounded keys and values. */
static void check_attention(ns_test_rng *r, int n_head, int n_head_kv, int hd, int bs, int kv_type) {
    const int S = AB_S, MB = AB_MB, *n_past = ab_past, *n_new = ab_new, n_blocks = AB_BLOCKS;
    const bool bf16 = kv_type == NS_CUDA_TYPE_BF16;
    size_t row = (size_t)n_head_kv * hd, pool_n = (size_t)n_blocks * bs * row;
    float *kp = malloc(pool_n * 4), *vp = malloc(pool_n * 4);
    fill(r, kp, pool_n, 1.0f), fill(r, vp, pool_n, 1.0f);
    if (bf16) round_bf16(kp, pool_n), round_bf16(vp, pool_n);
    attn_batch bt;
    attn_batch_make(r, bs, &bt);
    const int T = bt.T, *tok_start = bt.tok_start, n_groups = bt.n_groups;
    const int32_t *table = bt.table, *pos = bt.pos, *tok_seq = bt.tok_seq, *slot = bt.slot, *groups = bt.groups;
    size_t qn = (size_t)T * n_head * hd;
    float *q = malloc(qn * 4), *k = malloc((size_t)T * row * 4), *v = malloc((size_t)T * row * 4);
    float *ref = malloc(qn * 4), *got = malloc(qn * 4), *scratch = malloc(4096 * 4);
    fill(r, q, qn, 1.0f), fill(r, k, (size_t)T * row, 1.0f), fill(r, v, (size_t)T * row, 1.0f);
    size_t pool_f;
    float *dk = pool_upload(kp, pool_n, kv_type, &pool_f), *dv = pool_upload(vp, pool_n, kv_type, &pool_f);
    /* the CPU side: the same stores, rounded as the pool rounds them */
    for (int t = 0; t < T; t++) {
        memcpy(kp + (size_t)slot[t] * row, k + (size_t)t * row, row * 4);
        memcpy(vp + (size_t)slot[t] * row, v + (size_t)t * row, row * 4);
        if (bf16) round_bf16(kp + (size_t)slot[t] * row, row), round_bf16(vp + (size_t)slot[t] * row, row);
    }
    for (int s = 0; s < S; s++) {
        int t0 = tok_start[s];
        ns_cpu_attention_paged_ref(ref + (size_t)t0 * n_head * hd, q + (size_t)t0 * n_head * hd, pos + t0, n_new[s], kp,
                                   vp, table + s * MB, n_past[s] + n_new[s], bs, n_head, n_head_kv, hd,
                                   1.0f / sqrtf((float)hd), 0, n_head, scratch);
    }
    float *dq = dev_copy(q, qn * 4), *dkk = dev_copy(k, (size_t)T * row * 4), *dvv = dev_copy(v, (size_t)T * row * 4);
    int32_t *dpos = dev_copy(pos, T * 4), *dseq = dev_copy(tok_seq, T * 4), *dslot = dev_copy(slot, T * 4);
    int32_t *dtab = dev_copy(table, sizeof bt.table);
    float *dout = dev_canary(qn);
    CU(ns_cuda_kv_store(dk, dv, kv_type, dkk, dvv, dslot, T, (int)row, 0));
    int32_t *dgroups = dev_copy(groups, sizeof(int32_t) * 2 * n_groups);
    /* the plain kernels, to this bound, whatever NS_CUDA_ATTN_TC's default; the tensor-core
     * kernel has its own checks below */
    const int tc_level = ns_cuda_attention_tc_level(0);
    CU(ns_cuda_attention_paged(dout, NULL, dq, dpos, dseq, dgroups, n_groups, 0, dtab, MB, dk, dv, kv_type, bs, n_head,
                               n_head_kv, hd, 1.0f / sqrtf((float)hd), 0));
    char what[96];
    snprintf(what, sizeof what, "attention_paged %s H%d/%d hd%d bs%d T%d", bf16 ? "bf16" : "f32", n_head, n_head_kv,
             hd, bs, T);
    int ok = fetch(what, got, dout, qn);
    result(ok && allclose(what, got, ref, qn, 1e-4, 1e-3, 1e-8));
    /* the decode kernel (one token per group) on the decode sequence alone */
    {
        int32_t one[2] = {tok_start[1], 1};
        int32_t *done = dev_copy(one, sizeof one);
        float *dout1 = dev_canary(qn);
        CU(cudaMemset(dout1, 0, qn * 4));
        CU(ns_cuda_attention_paged(dout1, NULL, dq, dpos, dseq, done, 1, 1, dtab, MB, dk, dv, kv_type, bs, n_head, n_head_kv,
                                   hd, 1.0f / sqrtf((float)hd), 0));
        size_t off = (size_t)tok_start[1] * n_head * hd, n1 = (size_t)n_head * hd;
        float *all1 = malloc(qn * 4);
        ok = fetch("attention decode kernel", all1, dout1, qn);
        char w1[112];
        snprintf(w1, sizeof w1, "%s, decode kernel", what);
        result(ok && allclose(w1, all1 + off, ref + off, n1, 1e-4, 1e-3, 1e-8));
        free(all1);
        CU(cudaFree(done));
    }
    ns_cuda_attention_tc_level(tc_level);
    /* the tensor-core kernel (bf16 pools, head_dim 64 or 128): the backend's groups, then
     * one token per group. Q and the softmax weights are rounded to bf16 there: an output
     * moves by at most 2^-8 max |v| (|v| <= 1 here) from P, less from Q */
    if (bf16 && ns_cuda_attention_tc_fits(dq, dk, dv, n_head, n_head_kv, hd)) {
        int32_t singles[2 * 64];
        for (int t = 0; t < T; t++) singles[2 * t] = t, singles[2 * t + 1] = 1;
        int32_t *dsingles = dev_copy(singles, sizeof(int32_t) * 2 * T);
        float *all2 = malloc(qn * 4);
        for (int pass = 0; pass < 2; pass++) {
            float *dout2 = dev_canary(qn);
            CU(ns_cuda_attention_tc(dout2, NULL, dq, dpos, dseq, pass ? dsingles : dgroups, pass ? T : n_groups,
                                    pass ? 1 : NS_CUDA_ATTN_QT, dtab, MB, dk, dv, NULL, NULL, bs, n_head, n_head_kv,
                                    hd, 1.0f / sqrtf((float)hd), 0));
            char w2[144];
            snprintf(w2, sizeof w2, "%s, tensor cores, %s", what, pass ? "one token per group" : "the backend's groups");
            ok = fetch(w2, all2, dout2, qn);
            result(ok && allclose(w2, all2, ref, qn, 6e-3, 0, 1e-4));
        }
        free(all2);
        CU(cudaFree(dsingles));
    }
    CU(cudaFree(dgroups));
    /* the pools after kv_store: equal to the CPU's stores, canaries intact */
    float *pool_got = malloc(pool_n * 4);
    ok = pool_fetch("kv_store k", pool_got, dk, pool_n, pool_f, kv_type);
    result(ok && allclose("kv_store k pool", pool_got, kp, pool_n, 0, 0, 0));
    ok = pool_fetch("kv_store v", pool_got, dv, pool_n, pool_f, kv_type);
    result(ok && allclose("kv_store v pool", pool_got, vp, pool_n, 0, 0, 0));
    CU(cudaFree(dq)); CU(cudaFree(dkk)); CU(cudaFree(dvv)); CU(cudaFree(dpos)); CU(cudaFree(dseq));
    CU(cudaFree(dslot)); CU(cudaFree(dtab));
    free(kp), free(vp), free(q), free(k), free(v), free(ref), free(got), free(scratch), free(pool_got);
}

/* The FP8 KV cache: the same mixed batch as check_attention over e4m3 pools with a scale
 * per (slot, KV head) row. kv_store_fp8 must write exactly ns_cpu_quant_rows_fp8's codes
 * and scales at each token's slot (and nothing elsewhere); attention (the backend's groups,
 * then one token per group) must match the CPU reference over fp32 pools holding what the
 * codes decode to, with check_attention's bounds (only the order of fp32 sums differs). */
static void check_attention_fp8(ns_test_rng *r, int n_head, int n_head_kv, int hd, int bs) {
    const int S = AB_S, MB = AB_MB, *n_past = ab_past, *n_new = ab_new, n_blocks = AB_BLOCKS;
    const size_t row = (size_t)n_head_kv * hd, n_slot = (size_t)n_blocks * bs, pool_n = n_slot * row;
    const size_t n_rows = n_slot * (size_t)n_head_kv;
    float *kp = malloc(pool_n * 4), *vp = malloc(pool_n * 4), *ks = malloc(n_rows * 4), *vs = malloc(n_rows * 4);
    uint8_t *k8 = malloc(pool_n), *v8 = malloc(pool_n), *k8_got = malloc(pool_n), *v8_got = malloc(pool_n);
    float *ks_got = malloc(n_rows * 4), *vs_got = malloc(n_rows * 4);
    fill(r, kp, pool_n, 2.0f), fill(r, vp, pool_n, 0.5f);
    ns_cpu_quant_rows_fp8(k8, ks, kp, (int64_t)n_rows, hd);
    ns_cpu_quant_rows_fp8(v8, vs, vp, (int64_t)n_rows, hd);
    attn_batch bt;
    attn_batch_make(r, bs, &bt);
    const int T = bt.T, *tok_start = bt.tok_start, n_groups = bt.n_groups;
    const int32_t *table = bt.table, *pos = bt.pos, *tok_seq = bt.tok_seq, *slot = bt.slot, *groups = bt.groups;
    size_t qn = (size_t)T * n_head * hd;
    float *q = malloc(qn * 4), *k = malloc((size_t)T * row * 4), *v = malloc((size_t)T * row * 4);
    float *ref = malloc(qn * 4), *got = malloc(qn * 4), *scratch = malloc(4096 * 4);
    fill(r, q, qn, 1.0f), fill(r, k, (size_t)T * row, 3.0f), fill(r, v, (size_t)T * row, 1.0f);
    uint8_t *dk = dev_copy(k8, pool_n), *dv = dev_copy(v8, pool_n);
    float *dks = dev_copy(ks, n_rows * 4), *dvs = dev_copy(vs, n_rows * 4);
    /* the CPU side: the same stores as codes and scales, then the pools as fp32 */
    for (int t = 0; t < T; t++) {
        const size_t r0 = (size_t)slot[t] * n_head_kv;
        ns_cpu_quant_rows_fp8(k8 + r0 * hd, ks + r0, k + (size_t)t * row, n_head_kv, hd);
        ns_cpu_quant_rows_fp8(v8 + r0 * hd, vs + r0, v + (size_t)t * row, n_head_kv, hd);
    }
    for (size_t i = 0; i < pool_n; i++)
        kp[i] = ns_fp8_e4m3_to_float(k8[i]) * ks[i / hd], vp[i] = ns_fp8_e4m3_to_float(v8[i]) * vs[i / hd];
    const float scale = 1.0f / sqrtf((float)hd);
    for (int s = 0; s < S; s++) {
        int t0 = tok_start[s];
        ns_cpu_attention_paged_ref(ref + (size_t)t0 * n_head * hd, q + (size_t)t0 * n_head * hd, pos + t0, n_new[s], kp,
                                   vp, table + s * MB, n_past[s] + n_new[s], bs, n_head, n_head_kv, hd, scale, 0,
                                   n_head, scratch);
    }
    float *dq = dev_copy(q, qn * 4), *dkk = dev_copy(k, (size_t)T * row * 4), *dvv = dev_copy(v, (size_t)T * row * 4);
    int32_t *dpos = dev_copy(pos, T * 4), *dseq = dev_copy(tok_seq, T * 4), *dslot = dev_copy(slot, T * 4);
    int32_t *dtab = dev_copy(table, sizeof bt.table);
    CU(ns_cuda_kv_store_fp8(dk, dv, dks, dvs, dkk, dvv, dslot, T, n_head_kv, hd, 0));
    char what[96];
    snprintf(what, sizeof what, "fp8 KV H%d/%d hd%d bs%d T%d", n_head, n_head_kv, hd, bs, T);
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(k8_got, dk, pool_n, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(v8_got, dv, pool_n, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(ks_got, dks, n_rows * 4, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(vs_got, dvs, n_rows * 4, cudaMemcpyDeviceToHost));
    int same = !memcmp(k8_got, k8, pool_n) && !memcmp(v8_got, v8, pool_n) && !memcmp(ks_got, ks, n_rows * 4) &&
               !memcmp(vs_got, vs, n_rows * 4);
    printf("%s %s: kv_store_fp8 codes and scales %s ns_cpu_quant_rows_fp8's, the rest of the pools untouched\n",
           same ? "ok  " : "FAIL", what, same ? "equal to" : "NOT equal to");
    result(same);
    int32_t singles[2 * 64];
    for (int t = 0; t < T; t++) singles[2 * t] = t, singles[2 * t + 1] = 1;
    int32_t *dgroups = dev_copy(groups, sizeof(int32_t) * 2 * n_groups);
    int32_t *dsingles = dev_copy(singles, sizeof(int32_t) * 2 * T);
    const int tc_level = ns_cuda_attention_tc_level(0); /* the plain kernel, as in check_attention */
    for (int pass = 0; pass < 2; pass++) {
        float *dout = dev_canary(qn);
        CU(ns_cuda_attention_paged_fp8(dout, NULL, dq, dpos, dseq, pass ? dsingles : dgroups, pass ? T : n_groups, pass,
                                       dtab, MB, dk, dv, dks, dvs, bs, n_head, n_head_kv, hd, scale, 0));
        char w[144];
        snprintf(w, sizeof w, "attention_paged_fp8 %s, %s", what, pass ? "one token per group" : "the backend's groups");
        int ok = fetch(w, got, dout, qn);
        result(ok && allclose(w, got, ref, qn, 1e-4, 1e-3, 1e-8));
    }
    ns_cuda_attention_tc_level(tc_level);
    /* the tensor-core kernel over the same pools, with check_attention's tensor-core bounds
     * (Q and p * v_scale rounded to bf16; |v| <= 1 here) */
    if (ns_cuda_attention_tc_fits(dq, dk, dv, n_head, n_head_kv, hd))
        for (int pass = 0; pass < 2; pass++) {
            float *dout = dev_canary(qn);
            CU(ns_cuda_attention_tc(dout, NULL, dq, dpos, dseq, pass ? dsingles : dgroups, pass ? T : n_groups,
                                    pass ? 1 : NS_CUDA_ATTN_QT, dtab, MB, dk, dv, dks, dvs, bs, n_head, n_head_kv, hd,
                                    scale, 0));
            char w[144];
            snprintf(w, sizeof w, "attention_tc fp8 %s, %s", what, pass ? "one token per group" : "the backend's groups");
            int ok = fetch(w, got, dout, qn);
            result(ok && allclose(w, got, ref, qn, 6e-3, 0, 1e-4));
        }
    CU(cudaFree(dgroups)); CU(cudaFree(dsingles));
    CU(cudaFree(dq)); CU(cudaFree(dkk)); CU(cudaFree(dvv)); CU(cudaFree(dpos)); CU(cudaFree(dseq));
    CU(cudaFree(dslot)); CU(cudaFree(dtab)); CU(cudaFree(dk)); CU(cudaFree(dv)); CU(cudaFree(dks)); CU(cudaFree(dvs));
    free(kp), free(vp), free(ks), free(vs), free(k8), free(v8), free(k8_got), free(v8_got), free(ks_got), free(vs_got);
    free(q), free(k), free(v), free(ref), free(got), free(scratch);
}

/* ns_cuda_sample_rows against ns_cpu_sample_rows_ref: the same token in every row (the
 * rule is integer arithmetic after one float exp written op for op on both sides, so
 * there is no tolerance). Rows mix greedy and sampled ones, every cut, ties, NaN, -inf,
 * +inf, rows with nothing finite, and extreme temperatures; vocabularies up to 2^18. */
static void check_sample_rows(ns_test_rng *r) { /* r: the speed run's logits */
    const int vocabs[] = {1, 7, 8, 1000, 32000, 49152, 128256, 151936, 262144};
    enum { ROWS = NS_SAMPLE_CASE_ROWS };
    uint64_t rng = 777;
    for (size_t vi = 0; vi < sizeof vocabs / sizeof vocabs[0]; vi++) {
        const int n = vocabs[vi];
        const size_t N = (size_t)ROWS * n;
        float *x = malloc(N * 4);
        ns_row_sampling ps[ROWS];
        uint64_t *scratch = malloc(2 * (size_t)n * sizeof *scratch);
        int32_t ref[ROWS], got[ROWS];
        ns_sample_cases(&rng, n, x, ps);
        ns_cpu_sample_rows_ref(ref, x, ROWS, n, ps, scratch);
        float *dx = dev_copy(x, N * 4);
        ns_row_sampling *dp = dev_copy(ps, sizeof ps);
        int32_t *dids;
        CU(cudaMalloc((void **)&dids, sizeof got));
        CU(ns_cuda_sample_rows(dids, dx, ROWS, n, dp, 0));
        CU(cudaMemcpy(got, dids, sizeof got, cudaMemcpyDeviceToHost));
        int ok = 1;
        for (int i = 0; i < ROWS; i++) {
            const int32_t want = ns_sample_case_expect(i, n);
            if (got[i] == ref[i] && (want == -2 || want == ref[i])) continue;
            ok = 0;
            printf("FAIL sample_rows n_vocab %d row %d (T %g top_k %d top_p %g min_p %g u %.17g): %d, reference %d, "
                   "expected %d\n",
                   n, i, (double)ps[i].temperature, ps[i].top_k, (double)ps[i].top_p, (double)ps[i].min_p, ps[i].u,
                   got[i], ref[i], want);
        }
        if (ok) printf("ok   sample_rows %d rows, n_vocab %d\n", ROWS, n);
        result(ok);
        CU(cudaFree(dids)); CU(cudaFree(dp)); CU(cudaFree(dx));
        free(scratch), free(x);
    }
    /* speed: a decode step of 1,000 rows at n_vocab 128256 (Llama 3), T 0.8, top_p 0.9 */
    enum { R = 1000, V = 128256 };
    float *x = malloc((size_t)R * V * 4);
    ns_row_sampling *ps = malloc(R * sizeof *ps);
    for (size_t j = 0; j < (size_t)R * V; j++) x[j] = 3.0f * ns_test_rng_f32(r);
    for (int i = 0; i < R; i++) ps[i] = (ns_row_sampling){0.8f, 0, 0.9f, 0.0f, (double)i / R};
    float *dx = dev_copy(x, (size_t)R * V * 4);
    ns_row_sampling *dp = dev_copy(ps, R * sizeof *ps);
    int32_t *dids;
    CU(cudaMalloc((void **)&dids, R * 4));
    const struct { const char *name; float t; int top_k; float top_p; } cfg[] = {
        {"greedy", 0.0f, 0, 1.0f}, {"T 0.8", 0.8f, 0, 1.0f}, {"T 0.8 top_p 0.9", 0.8f, 0, 0.9f},
        {"T 0.8 top_k 40", 0.8f, 40, 1.0f}, {"T 0.8 top_k 40 top_p 0.9", 0.8f, 40, 0.9f}};
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0)); CU(cudaEventCreate(&e1));
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        for (int i = 0; i < R; i++) ps[i].temperature = cfg[c].t, ps[i].top_k = cfg[c].top_k, ps[i].top_p = cfg[c].top_p;
        CU(cudaMemcpy(dp, ps, R * sizeof *ps, cudaMemcpyHostToDevice));
        CU(ns_cuda_sample_rows(dids, dx, R, V, dp, 0)); /* warm-up */
        float best = 1e30f;
        for (int rep = 0; rep < 5; rep++) {
            CU(cudaEventRecord(e0, 0));
            CU(ns_cuda_sample_rows(dids, dx, R, V, dp, 0));
            CU(cudaEventRecord(e1, 0));
            CU(cudaEventSynchronize(e1));
            float ms;
            CU(cudaEventElapsedTime(&ms, e0, e1));
            best = ms < best ? ms : best;
        }
        printf("info sample_rows %d x %d, %s: %.3f ms (best of 5)\n", R, V, cfg[c].name, (double)best);
    }
    CU(cudaEventDestroy(e0)); CU(cudaEventDestroy(e1));
    CU(cudaFree(dids)); CU(cudaFree(dp)); CU(cudaFree(dx));
    free(ps), free(x);
}

/* ---- FP8 ---- */

/* Row r of an fp8 case: random at one of a few amplitudes, or special (zeros, an inf, a
 * NaN at the end, values near the top code). */
static void fp8_row(ns_test_rng *r, float *x, int64_t n, int row) {
    const float amps[] = {1.0f, 3e-3f, 250.0f, 1e-30f, 7.0f};
    fill(r, x, (size_t)n, amps[row % 5]);
    if (row % 9 == 5) memset(x, 0, (size_t)n * sizeof *x);
    if (row % 9 == 6) x[n / 2] = INFINITY;
    if (row % 9 == 7) x[n - 1] = NAN;
    if (row % 9 == 8) x[0] = -1000.0f;
}

static void check_quant_fp8(ns_test_rng *r) {
    const int64_t shapes[][2] = {{9, 1}, {9, 3}, {18, 7}, {9, 576}, {10, 1000}, {9, 4099}, {3, 14336}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int bf16 = 0; bf16 < 2; bf16++) {
            const int64_t R = shapes[si][0], n = shapes[si][1];
            const size_t N = (size_t)(R * n);
            float *x = malloc(N * sizeof *x), *ref_s = malloc((size_t)R * sizeof *ref_s);
            float *got_s = malloc((size_t)R * sizeof *got_s);
            uint16_t *xb = malloc(N * sizeof *xb);
            uint8_t *ref = malloc(N), *all = malloc(N + 2 * CANARY);
            for (int64_t row = 0; row < R; row++) fp8_row(r, x + row * n, n, (int)row);
            for (size_t i = 0; i < N; i++) {
                xb[i] = ns_fp32_to_bf16(x[i]);
                if (bf16) x[i] = ns_bf16_to_fp32(xb[i]); /* what the kernel reads */
            }
            ns_cpu_quant_rows_fp8(ref, ref_s, x, R, n);
            void *dx = bf16 ? dev_copy(xb, N * 2) : dev_copy(x, N * 4);
            uint8_t *dout;
            float *dscale = dev_canary((size_t)R);
            CU(cudaMalloc((void **)&dout, N + 2 * CANARY));
            CU(cudaMemset(dout, 0xa5, N + 2 * CANARY));
            CU(ns_cuda_quant_rows_fp8(dout + CANARY, dscale, dx, bf16 ? NS_CUDA_TYPE_BF16 : NS_CUDA_TYPE_F32, R, n, 0));
            int ok = fetch("quant_rows_fp8 scales", got_s, dscale, (size_t)R);
            CU(cudaMemcpy(all, dout, N + 2 * CANARY, cudaMemcpyDeviceToHost));
            for (int i = 0; i < CANARY; i++)
                if (all[i] != 0xa5 || all[N + CANARY + (size_t)i] != 0xa5) ok = 0;
            size_t bad = 0;
            for (size_t i = 0; i < N; i++) bad += all[CANARY + i] != ref[i];
            for (int64_t row = 0; row < R; row++) {
                uint32_t a, b;
                memcpy(&a, &got_s[row], 4);
                memcpy(&b, &ref_s[row], 4);
                bad += a != b && !(isnan(got_s[row]) && isnan(ref_s[row]));
            }
            printf("%s quant_rows_fp8 %lld x %lld, %s input: %zu codes or scales differ%s\n",
                   ok && !bad ? "ok  " : "FAIL", (long long)R, (long long)n, bf16 ? "bf16" : "fp32", bad,
                   ok ? "" : ", canary overwritten");
            result(ok && !bad);
            CU(cudaFree(dout));
            CU(cudaFree(dx));
            free(x), free(ref_s), free(got_s), free(xb), free(ref), free(all);
        }
}

/* n bytes of device memory into host (synchronizing). */
static void fetch_bytes(void *host, const void *d, size_t n) {
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(host, d, n, cudaMemcpyDeviceToHost));
}

/* The ops that write FP8 rows directly against the unfused ops on the device, bit for
 * bit: rmsnorm_fp8 = rmsnorm (fp32 out) then quant_rows_fp8; add_rmsnorm_fp8 = add_rmsnorm
 * then quant_rows_fp8 (and x the same); swiglu_bf16_fp8 = swiglu (fp32, from the bf16
 * inputs widened) then quant_rows_fp8. Rows kept in registers at each width, and rows computed twice. */
static void check_fused_fp8(ns_test_rng *r) {
    const int shapes[][2] = {{1, 1}, {7, 576}, {33, 2048}, {5, 14336}, {3, 20000}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int R = shapes[si][0], n = shapes[si][1];
        const size_t N = (size_t)R * n;
        float *x = malloc(N * 4), *d = malloc(N * 4), *w = malloc((size_t)n * 4), *f_a = malloc(N * 4),
              *f_b = malloc(N * 4), *s_a = malloc((size_t)R * 4), *s_b = malloc((size_t)R * 4);
        uint8_t *q_a = malloc(N), *q_b = malloc(N);
        uint16_t *g16 = malloc(N * 2), *u16 = malloc(N * 2);
        fill(r, x, N, 2.0f);
        fill(r, d, N, 0.5f);
        fill(r, w, (size_t)n, 1.0f);
        for (size_t i = 0; i < N; i++) g16[i] = ns_fp32_to_bf16(6.0f * ns_test_rng_f32(r)), u16[i] = ns_fp32_to_bf16(x[i]);
        float *dw = dev_copy(w, (size_t)n * 4), *dd = dev_copy(d, N * 4), *dout;
        float *dscale_a, *dscale_b;
        uint8_t *dq_a, *dq_b;
        CU(cudaMalloc((void **)&dout, N * 4));
        CU(cudaMalloc((void **)&dq_a, N));
        CU(cudaMalloc((void **)&dq_b, N));
        CU(cudaMalloc((void **)&dscale_a, (size_t)R * 4));
        CU(cudaMalloc((void **)&dscale_b, (size_t)R * 4));
        for (int op = 0; op < 3; op++) {
            const char *name = op == 0 ? "rmsnorm_fp8" : op == 1 ? "add_rmsnorm_fp8" : "swiglu_bf16_fp8";
            float *dx_a = dev_copy(x, N * 4), *dx_b = dev_copy(x, N * 4);
            if (op == 0) {
                CU(ns_cuda_rmsnorm_fp8(dout, dq_a, dscale_a, dx_a, dw, R, n, 1e-5f, 0));
                CU(ns_cuda_rmsnorm(dx_b, NULL, dx_b, dw, R, n, 1e-5f, 0)); /* in place: out aliases x */
                CU(ns_cuda_quant_rows_fp8(dq_b, dscale_b, dx_b, NS_CUDA_TYPE_F32, R, n, 0));
                fetch_bytes(f_a, dout, N * 4);
            } else if (op == 1) {
                CU(ns_cuda_add_rmsnorm_fp8(dx_a, dd, NULL, dq_a, dscale_a, dw, R, n, 1e-5f, 0));
                CU(ns_cuda_add_rmsnorm(dx_b, dd, dout, NULL, dw, R, n, 1e-5f, 0));
                CU(ns_cuda_quant_rows_fp8(dq_b, dscale_b, dout, NS_CUDA_TYPE_F32, R, n, 0));
                fetch_bytes(f_a, dx_a, N * 4);
            } else {
                uint16_t *dg = dev_copy(g16, N * 2), *du = dev_copy(u16, N * 2);
                for (size_t i = 0; i < N; i++) f_b[i] = ns_bf16_to_fp32(g16[i]), f_a[i] = ns_bf16_to_fp32(u16[i]);
                float *dgf = dev_copy(f_b, N * 4), *duf = dev_copy(f_a, N * 4);
                CU(ns_cuda_swiglu_bf16_fp8(dq_a, dscale_a, dg, du, R, n, 0));
                CU(ns_cuda_swiglu(dout, NULL, dgf, duf, (int64_t)N, 0));
                CU(ns_cuda_quant_rows_fp8(dq_b, dscale_b, dout, NS_CUDA_TYPE_F32, R, n, 0));
                CU(cudaDeviceSynchronize());
                CU(cudaFree(dg)); CU(cudaFree(du)); CU(cudaFree(dgf)); CU(cudaFree(duf));
            }
            fetch_bytes(q_a, dq_a, N);
            fetch_bytes(q_b, dq_b, N);
            fetch_bytes(s_a, dscale_a, (size_t)R * 4);
            fetch_bytes(s_b, dscale_b, (size_t)R * 4);
            size_t bad = 0;
            for (size_t i = 0; i < N; i++) bad += q_a[i] != q_b[i];
            bad += memcmp(s_a, s_b, (size_t)R * 4) != 0;
            if (op == 0) { /* the fp32 out too */
                fetch_bytes(f_b, dx_b, N * 4);
                bad += memcmp(f_a, f_b, N * 4) != 0;
            } else if (op == 1) { /* x after the add */
                fetch_bytes(f_b, dx_b, N * 4);
                bad += memcmp(f_a, f_b, N * 4) != 0;
            }
            printf("%s %s %d x %d: bit-equal to the unfused ops%s\n", bad ? "FAIL" : "ok  ", name, R, n,
                   bad ? " NOT" : "");
            result(bad == 0);
            CU(cudaFree(dx_a));
            CU(cudaFree(dx_b));
        }
        CU(cudaFree(dw)); CU(cudaFree(dd)); CU(cudaFree(dout)); CU(cudaFree(dq_a)); CU(cudaFree(dq_b));
        CU(cudaFree(dscale_a)); CU(cudaFree(dscale_b));
        free(x), free(d), free(w), free(f_a), free(f_b), free(s_a), free(s_b), free(q_a), free(q_b), free(g16), free(u16);
    }
}

/* A weight tensor of the CUDA backend from host floats (F32 rows), named so that
 * a backend with use_fp8 stores it as fp8. */
static ns_bweight *fp8_weight(ns_backend *b, const float *w, int N, int K) {
    ns_gguf_tensor t;
    memset(&t, 0, sizeof t);
    t.name.ptr = "blk.0.parity.weight";
    t.name.len = strlen(t.name.ptr);
    t.n_dims = 2;
    t.ne[0] = K, t.ne[1] = N, t.ne[2] = t.ne[3] = 1;
    t.type = NS_GGML_F32;
    t.nbytes = (uint64_t)N * K * 4;
    t.data = w;
    ns_bweight *bw = NULL;
    ns_error err;
    if (b->ops->weight_load(b, &t, &bw, &err)) {
        printf("FAIL fp8 weight_load %d x %d: %s\n", N, K, err.msg);
        return NULL;
    }
    return bw;
}

/* A CUDA backend, with precision fp8 or not; NULL (and FAIL printed, unless quiet: then
 * the reason is in *err) when it cannot be made. */
static ns_backend *backend_with_err(bool fp8, bool quiet, ns_error *err) {
    ns_backend *b = NULL;
    ns_status st = ns_backend_cuda_create(0, &b, err);
    if (!st && fp8) st = b->ops->use_fp8(b, err);
    if (st && !quiet) printf("FAIL cuda backend%s: %s\n", fp8 ? " with fp8" : "", err->msg);
    if (st && b) ns_backend_destroy(b);
    return st ? NULL : b;
}

static ns_backend *backend_with(bool fp8) {
    ns_error err;
    return backend_with_err(fp8, false, &err);
}

/* backend_matmul's failure, kept instead of printed while set (a forced way of FP8 scaling
 * that lacks a shape) */
static bool matmul_quiet;
static char matmul_err[sizeof(((ns_error *)0)->msg) + 1];

/* y = x . W^T through the backend's matmul op (fp8 weights: cuBLASLt FP8). */
static int backend_matmul(ns_backend *b, const ns_bweight *w, const float *x, float *y, int M, int N, int K,
                          int reps, double *ms) {
    ns_error err;
    void *dx = NULL, *dy = NULL;
    if (b->ops->buf_alloc(b, (size_t)M * K * 4, &dx, &err) || b->ops->buf_alloc(b, (size_t)M * N * 4, &dy, &err) ||
        b->ops->upload(b, dx, x, (size_t)M * K * 4, &err)) {
        printf("FAIL fp8 matmul buffers: %s\n", err.msg);
        return 0;
    }
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int i = 0; i < reps; i++) {
        CU(cudaEventRecord(e0, ns_backend_cuda_stream(b)));
        b->ops->matmul(b, dy, dx, w, M, N, K);
        CU(cudaEventRecord(e1, ns_backend_cuda_stream(b)));
        CU(cudaEventSynchronize(e1));
        float t = 0;
        CU(cudaEventElapsedTime(&t, e0, e1));
        if (i > 0 || reps == 1) best = t < best ? t : best; /* the first includes the heuristic query */
    }
    *ms = best;
    int ok = b->ops->download(b, y, dy, (size_t)M * N * 4, &err) == NS_OK;
    if (!ok && matmul_quiet) snprintf(matmul_err, sizeof matmul_err, "%s", err.msg);
    else if (!ok) printf("FAIL fp8 matmul %d x %d x %d: %s\n", M, N, K, err.msg);
    CU(cudaEventDestroy(e0));
    CU(cudaEventDestroy(e1));
    b->ops->buf_free(b, dx);
    b->ops->buf_free(b, dy);
    return ok;
}

/* The backend's FP8 matmul against ns_cpu_matmul_fp8_ref, in the way of scaling the
 * backend picks per shape (auto: every shape must pass) and in each way alone
 * (NS_CUDA_FP8_GEMM: outer-vector scales, 128-block scales, unscaled then a scaling pass;
 * a way this device's cuBLASLt lacks, or a shape it lacks in that way, is reported, not
 * failed: auto takes another). Then 8192^3 in each way the device has, and in bf16. */
static void check_matmul_fp8(ns_test_rng *r) {
    static const char *const ways[] = {"auto", "outer", "block", "raw"};
    /* N and K multiples of 16, as the backend's fp8 weights are (M any) */
    const int shapes[][3] = {{1, 64, 16}, {7, 48, 576}, {33, 1008, 64}, {1000, 256, 2048}, {517, 2048, 4096},
                             {64, 512, 14336}};
    const int S = 8192;
    float *big = malloc((size_t)S * S * 4), *ybig = malloc((size_t)S * S * 4);
    fill(r, big, (size_t)S * S, 1.0f);
    for (int wi = 0; wi < 4; wi++) {
        setenv("NS_CUDA_FP8_GEMM", ways[wi], 1);
        matmul_quiet = wi > 0;
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
            ns_error err;
            ns_backend *b = backend_with_err(true, wi > 0, &err); /* a failed shape leaves its backend failed */
            if (!b) {
                if (wi == 0) result(0);
                else printf("info fp8 GEMMs with NS_CUDA_FP8_GEMM=%s: not on this device: %s\n", ways[wi], err.msg);
                break;
            }
            float *x = malloc((size_t)M * K * 4), *w = malloc((size_t)N * K * 4);
            float *y = malloc((size_t)M * N * 4), *ref = malloc((size_t)M * N * 4);
            float *xs = malloc((size_t)M * 4), *ws = malloc((size_t)N * 4);
            uint8_t *xq = malloc((size_t)M * K), *wq = malloc((size_t)N * K);
            for (int m = 0; m < M; m++) /* rows of two scales */
                fill(r, x + (size_t)m * K, (size_t)K, m % 3 ? 1.0f : 40.0f);
            fill(r, w, (size_t)N * K, 0.05f);
            ns_cpu_quant_rows_fp8(xq, xs, x, M, K);
            ns_cpu_quant_rows_fp8(wq, ws, w, N, K);
            ns_cpu_matmul_fp8_ref(ref, xq, xs, wq, ws, M, N, K);
            double amax = 0, ms = 0;
            for (size_t i = 0; i < (size_t)M * N; i++) amax = fabs(ref[i]) > amax ? fabs(ref[i]) : amax;
            ns_bweight *bw = fp8_weight(b, w, N, K);
            char what[128];
            snprintf(what, sizeof what, "matmul fp8 (cuBLASLt, NS_CUDA_FP8_GEMM=%s) %d x %d x %d", ways[wi], M, N, K);
            matmul_err[0] = 0;
            const int ran = bw && backend_matmul(b, bw, x, y, M, N, K, 1, &ms);
            if (!ran && wi > 0 && strstr(matmul_err, "no cuBLASLt algorithm"))
                printf("info %s: not in this way here (%s)\n", what, matmul_err);
            else
                result(ran && allclose(what, y, ref, (size_t)M * N, 2e-3 * amax, 1e-2, 1e-5));
            if (bw) b->ops->weight_free(b, bw);
            b->ops->destroy(b);
            free(x), free(w), free(y), free(ref), free(xs), free(ws), free(xq), free(wq);
        }
        /* speed: 8192^3 through the same op (GEMM only: the converted input is kept between calls) */
        ns_error err;
        ns_backend *b = backend_with_err(true, true, &err);
        if (!b) continue;
        double ms8 = 0;
        matmul_err[0] = 0;
        ns_bweight *w8 = fp8_weight(b, big, S, S);
        if (w8 && backend_matmul(b, w8, big, ybig, S, S, S, 6, &ms8))
            printf("info matmul %d^3 fp8, NS_CUDA_FP8_GEMM=%s: best of 5 %.3f ms (%.0f TFLOP/s)\n", S, ways[wi], ms8,
                   2.0 * S * S * S / (ms8 * 1e9));
        else
            printf("%s matmul %d^3 fp8, NS_CUDA_FP8_GEMM=%s: %s\n", wi ? "info" : "FAIL", S, ways[wi],
                   matmul_err[0] ? matmul_err : "did not run");
        if (!wi) result(w8 && ms8 > 0);
        if (w8) b->ops->weight_free(b, w8);
        b->ops->destroy(b);
    }
    unsetenv("NS_CUDA_FP8_GEMM");
    matmul_quiet = false;
    ns_backend *b16 = backend_with(false);
    double ms16 = 0;
    ns_bweight *w16 = b16 ? fp8_weight(b16, big, S, S) : NULL;
    const int ok = w16 && backend_matmul(b16, w16, big, ybig, S, S, S, 6, &ms16);
    if (ok) printf("info matmul %d^3 bf16: best of 5 %.3f ms (%.0f TFLOP/s)\n", S, ms16, 2.0 * S * S * S / (ms16 * 1e9));
    result(ok);
    if (w16) b16->ops->weight_free(b16, w16);
    if (b16) b16->ops->destroy(b16);
    free(big), free(ybig);
}

static void run_kernels(void) {
    ns_test_rng r = {12345};
    check_dequant(&r);
    check_rows(&r);
    check_rope(&r);
    check_qkv_split_rope(&r);
    check_sample_rows(&r);
    check_quant_fp8(&r);
    check_fused_fp8(&r);
    check_matmul_fp8(&r);
    const int cfg[][4] = {{6, 2, 80, 7}, {4, 4, 40, 16}, {9, 3, 256, 5}, {1, 1, 1, 1},
                          {32, 8, 128, 16}, {14, 2, 64, 16}, {6, 3, 18, 3}, {16, 1, 64, 16}};
    for (int i = 0; i < 8; i++)
        for (int t = 0; t < 2; t++)
            check_attention(&r, cfg[i][0], cfg[i][1], cfg[i][2], cfg[i][3], t ? NS_CUDA_TYPE_F32 : NS_CUDA_TYPE_BF16);
    const int cfg8[][4] = {{32, 8, 128, 16}, {14, 2, 64, 16}, {9, 3, 64, 7}, {16, 1, 64, 16}, {8, 8, 128, 5}};
    for (int i = 0; i < 5; i++) check_attention_fp8(&r, cfg8[i][0], cfg8[i][1], cfg8[i][2], cfg8[i][3]);
}

/* ---- engine: greedy tokens, throughput ---- */

static ns_engine *open_engine(const char *path, const char *backend, int max_seqs) {
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = path;
    cfg.backend = backend;
    cfg.max_seqs = max_seqs;
    cfg.max_batch_tokens = max_seqs * 8 > 512 ? max_seqs * 8 : 512;
    ns_engine *e = NULL;
    ns_error err;
    if (ns_engine_open(&cfg, &e, NULL, &err)) {
        printf("FAIL engine open %s on %s: %s\n", path, backend, err.msg);
        return NULL;
    }
    return e;
}

/* Runs n requests of prompt length n_prompt, max_tokens each; tokens into out (n, max_tokens). */
static double generate(ns_engine *e, int n, int n_prompt, int max_tokens, int32_t *out) {
    ns_error err;
    int32_t *prompt = malloc(sizeof(int32_t) * n_prompt);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n_prompt; j++) prompt[j] = (int32_t)((i * 131 + j * 17 + 5) % NS_TINY_N_VOCAB);
        ns_request req = {0};
        req.id = (uint64_t)i;
        req.prompt = prompt;
        req.n_prompt = n_prompt;
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = max_tokens;
        req.sampling.ignore_eos = true;
        if (ns_engine_submit(e, &req, &err)) {
            printf("FAIL submit: %s\n", err.msg);
            free(prompt);
            return -1;
        }
    }
    free(prompt);
    double t0 = ns_time_now();
    while (!ns_engine_idle(e))
        if (ns_engine_step(e, NULL, &err)) {
            printf("FAIL step: %s\n", err.msg);
            return -1;
        }
    double dt = ns_time_now() - t0;
    ns_completion *c[64];
    int got;
    while ((got = ns_engine_collect(e, c, 64)) > 0)
        for (int i = 0; i < got; i++) {
            if (out && c[i]->id < (uint64_t)n)
                for (int j = 0; j < max_tokens; j++) out[c[i]->id * max_tokens + j] = j < c[i]->n_tokens ? c[i]->tokens[j] : -1;
            ns_completion_free(c[i]);
        }
    return dt;
}

static void run_greedy(void) {
    const int types[] = {NS_GGML_Q8_0, NS_GGML_Q4_1};
    const int n_req = 6, n_tok = 48;
    for (int ti = 0; ti < 2; ti++) {
        char path[256];
        snprintf(path, sizeof path, "%s/gpu_tiny_%d.gguf", tmpdir(), types[ti]);
        ns_tiny_cfg c;
        ns_tiny_cfg_default(&c);
        c.wtype = types[ti];
        c.n_ctx = 256;
        ns_error err;
        if (ns_tiny_model_write(path, &c, &err)) {
            printf("FAIL tiny model: %s\n", err.msg);
            result(0);
            continue;
        }
        int32_t *tok[2] = {malloc(sizeof(int32_t) * n_req * n_tok), malloc(sizeof(int32_t) * n_req * n_tok)};
        const char *names[2] = {"cpu", "cuda"};
        int ok = 1;
        for (int k = 0; k < 2; k++) {
            ns_engine *e = open_engine(path, names[k], 4);
            if (!e || generate(e, n_req, 13, n_tok, tok[k]) < 0) ok = 0;
            ns_engine_close(e);
        }
        int n_full = 0, first_div_min = n_tok;
        for (int i = 0; ok && i < n_req; i++) {
            int j = 0;
            while (j < n_tok && tok[0][i * n_tok + j] == tok[1][i * n_tok + j]) j++;
            if (j == n_tok) n_full++;
            if (j < first_div_min) first_div_min = j;
            printf("     greedy type %d request %d: %s (first difference at token %d)\n", types[ti], i,
                   j == n_tok ? "same" : "differs", j);
        }
        ok = ok && first_div_min >= 16 && n_full >= 4;
        printf("%s greedy cpu vs cuda, type %d: %d of %d requests identical over %d tokens\n", ok ? "ok  " : "FAIL",
               types[ti], n_full, n_req, n_tok);
        result(ok);
        free(tok[0]), free(tok[1]);
    }
}

/* ---- synthetic models at real shapes: CPU vs CUDA ---- */

static bool synth_fp8; /* open_synth's engines with precision fp8 (FP8 GEMMs and KV cache) */
static ns_engine *open_synth(const ns_hparams *hp, const char *backend, int max_seqs, bool precise) {
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.fp8 = cfg.kv_fp8 = synth_fp8;
    cfg.backend = backend;
    cfg.synthetic = hp;
    cfg.synthetic_seed = 1234;
    cfg.max_seqs = max_seqs;
    cfg.max_batch_tokens = 512;
    cfg.n_ctx = 512;
    if (precise) setenv("NS_CUDA_PRECISE", "1", 1);
    ns_engine *e = NULL;
    ns_error err;
    ns_status st = ns_engine_open(&cfg, &e, NULL, &err);
    unsetenv("NS_CUDA_PRECISE");
    if (st) {
        printf("FAIL engine open (synthetic %s) on %s: %s\n", hp->arch, backend, err.msg);
        return NULL;
    }
    return e;
}

/* Prompt i of the 16 (length 1 + i*i: 1, 2, 5, ..., 226) into prompt; returns its length. */
static int synth_prompt(int i, int n_vocab, int32_t *prompt) {
    uint64_t r = 99 + (uint64_t)i * 7777;
    int len = 1 + i * i;
    for (int j = 0; j < len; j++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        prompt[j] = (int32_t)((r >> 33) % (uint64_t)n_vocab);
    }
    return len;
}

/* Request i's sampling in the sampled runs: temperature with every cut, its own seed. */
static void synth_sampling(int i, int n_tok, ns_sampling *s) {
    ns_sampling_default(s);
    s->max_tokens = n_tok;
    s->ignore_eos = true;
    s->temperature = 0.7f + 0.05f * (float)i;
    s->top_k = i % 3 == 0 ? 0 : 20 + 10 * i;
    s->top_p = i % 2 ? 0.9f : 1.0f;
    s->min_p = i % 4 == 2 ? 0.05f : 0.0f;
    s->seed = 500 + (uint64_t)i;
}

/* The 16 requests, n_tok tokens each (greedy, or synth_sampling when sampled), into out
 * (16, n_tok). */
static int synth_generate_ex(ns_engine *e, int n_vocab, int n_tok, int sampled, int32_t *out) {
    ns_error err;
    int32_t prompt[256];
    for (int i = 0; i < 16; i++) {
        int len = synth_prompt(i, n_vocab, prompt);
        ns_request req = {0};
        req.id = (uint64_t)i;
        req.prompt = prompt;
        req.n_prompt = len;
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = n_tok;
        req.sampling.ignore_eos = true;
        if (sampled) synth_sampling(i, n_tok, &req.sampling);
        if (ns_engine_submit(e, &req, &err)) {
            printf("FAIL submit: %s\n", err.msg);
            return -1;
        }
    }
    while (!ns_engine_idle(e))
        if (ns_engine_step(e, NULL, &err)) {
            printf("FAIL step: %s\n", err.msg);
            return -1;
        }
    ns_completion *c[16];
    int got, n_done = 0;
    while ((got = ns_engine_collect(e, c, 16)) > 0)
        for (int i = 0; i < got; i++, n_done++) {
            for (int j = 0; j < n_tok; j++) out[c[i]->id * n_tok + j] = j < c[i]->n_tokens ? c[i]->tokens[j] : -1;
            ns_completion_free(c[i]);
        }
    return n_done == 16 ? 0 : -1;
}

static int synth_generate(ns_engine *e, int n_vocab, int n_tok, int32_t *out) {
    return synth_generate_ex(e, n_vocab, n_tok, 0, out);
}

/* Sampled requests picked on the device (ns_cuda_sample_rows) against the CPU engine
 * picking by the same rule (ns_backend_cpu_set_row_sampling): with NS_CUDA_PRECISE=1 the
 * logits agree to ~1e-5, so the tokens must agree, except where the request's draw fell
 * within 1e-3 of the total weight from the part of the device's token, on the CPU's
 * logits at the first difference or on logits a near-tie at a cut away from them
 * (ns_sample_near_distance, logits within 1e-4: two tokens that nearly tie at top_k's
 * or top_p's cut, or one at min_p's threshold, go either way, and the boundaries between
 * them move by a token's weight). Plain bf16: two runs must be identical (determinism);
 * their tokens against the CPU are reported. */
static void synth_sampled(const char *shape, const ns_hparams *hp) {
    const int n_tok = 32;
    int32_t *tok[4];
    for (int k = 0; k < 4; k++) tok[k] = malloc(sizeof(int32_t) * 16 * n_tok);
    ns_engine *cpu = open_synth(hp, "cpu", 8, false);
    int ok = cpu != NULL;
    if (cpu) {
        ns_backend_cpu_set_row_sampling(ns_engine_backend(cpu), true);
        ok = synth_generate_ex(cpu, hp->n_vocab, n_tok, 1, tok[0]) == 0;
    }
    for (int k = 1; k < 4 && ok; k++) { /* 1: precise, 2 and 3: plain bf16 */
        ns_engine *e = open_synth(hp, "cuda", 8, k == 1);
        ok = e && synth_generate_ex(e, hp->n_vocab, n_tok, 1, tok[k]) == 0;
        ns_engine_close(e);
    }
    if (!ok) {
        printf("FAIL %s sampled runs\n", shape);
        result(0);
    } else {
        float *logits = malloc(sizeof(float) * hp->n_vocab);
        uint64_t *w = malloc(sizeof(uint64_t) * 2 * hp->n_vocab);
        int n_same = 0, n_near = 0, n_bad = 0, n_same_bf16 = 0;
        for (int i = 0; i < 16; i++) {
            n_same_bf16 += memcmp(tok[0] + i * n_tok, tok[2] + i * n_tok, sizeof(int32_t) * n_tok) == 0;
            int j = 0;
            while (j < n_tok && tok[0][i * n_tok + j] == tok[1][i * n_tok + j]) j++;
            if (j == n_tok) {
                n_same++;
                continue;
            }
            /* the CPU's logits and the request's j-th draw at the first difference */
            int32_t pre[256 + 32];
            int len = synth_prompt(i, hp->n_vocab, pre);
            memcpy(pre + len, tok[0] + i * n_tok, sizeof(int32_t) * j);
            ns_error err;
            double dist = INFINITY, near = INFINITY;
            const char *kind = "none";
            ns_sampling sp;
            synth_sampling(i, n_tok, &sp);
            ns_sampler *s = ns_sampler_create(&sp, hp->n_vocab);
            ns_row_sampling rp;
            for (int d = 0; d <= j && s; d++) ns_sampler_row_params(s, &rp);
            if (s && !ns_engine_prompt_logits(cpu, pre, len + j, logits, &err)) {
                const uint64_t S = ns_cpu_sample_weights_ref(logits, hp->n_vocab, &rp, w, w + hp->n_vocab);
                dist = ns_sample_draw_distance(w, hp->n_vocab, S, rp.u, tok[1][i * n_tok + j]);
                near = ns_sample_near_distance(logits, hp->n_vocab, &rp, tok[1][i * n_tok + j], 1e-4f, &kind);
            }
            ns_sampler_free(s);
            printf("     %s sampled request %d: cuda precise differs at token %d (%d vs cpu %d), the draw is %.3g of "
                   "the weight from that token, %.3g allowing near-ties at the cuts (least by: %s)\n",
                   shape, i, j, tok[1][i * n_tok + j], tok[0][i * n_tok + j], dist, near, kind);
            if (near <= 1e-3) n_near++; else n_bad++;
        }
        const int pass = n_bad == 0 && n_same + n_near == 16;
        printf("%s %s sampled (T, top_k, top_p, min_p), cpu row rule vs cuda precise: %d of 16 requests identical over "
               "%d tokens%s\n",
               pass ? "ok  " : "FAIL", shape, n_same, n_tok,
               n_near ? ", the others at draw boundaries or near-ties at cuts" : "");
        result(pass);
        const int det = memcmp(tok[2], tok[3], sizeof(int32_t) * 16 * n_tok) == 0;
        printf("%s %s sampled, cuda bf16 twice: %s\n", det ? "ok  " : "FAIL", shape, det ? "identical" : "different");
        result(det);
        printf("info %s sampled, cuda bf16 vs cpu: %d of 16 requests identical over %d tokens\n", shape, n_same_bf16,
               n_tok);
        free(w);
        free(logits);
    }
    ns_engine_close(cpu);
    for (int k = 0; k < 4; k++) free(tok[k]);
}

static void synth_shape(const char *name, ns_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    strcpy(hp->arch, "llama");
    hp->norm_eps = 1e-5f;
    hp->n_ctx_train = 8192;
    hp->rope_base = 10000.0f;
    if (!strcmp(name, "smollm2-135m")) { /* the demo model's exact shapes */
        hp->n_layer = 30, hp->n_embd = 576, hp->n_ff = 1536, hp->n_head = 9, hp->n_head_kv = 3, hp->head_dim = 64;
        hp->n_vocab = 49152, hp->rope_base = 100000.0f;
    } else if (!strcmp(name, "qwen2-small")) { /* NeoX RoPE, QKV biases, head_dim 128 */
        strcpy(hp->arch, "qwen2");
        hp->n_layer = 4, hp->n_embd = 512, hp->n_ff = 1376, hp->n_head = 4, hp->n_head_kv = 2, hp->head_dim = 128;
        hp->n_vocab = 5000, hp->rope_base = 1000000.0f;
    } else { /* llama-small */
        hp->n_layer = 6, hp->n_embd = 384, hp->n_ff = 1024, hp->n_head = 6, hp->n_head_kv = 2, hp->head_dim = 64;
        hp->n_vocab = 3001;
    }
}

static void run_synthetic(void) {
    const char *shapes[] = {"llama-small", "qwen2-small", "smollm2-135m"};
    const int n_tok = 32;
    for (int si = 0; si < 3; si++) {
        ns_hparams hp;
        synth_shape(shapes[si], &hp);
        int32_t *tok[3];
        for (int k = 0; k < 3; k++) tok[k] = malloc(sizeof(int32_t) * 16 * n_tok);
        /* 0: cpu, 1: cuda precise (hi/lo bf16 inputs), 2: cuda (plain bf16 inputs) */
        const char *be[3] = {"cpu", "cuda", "cuda"};
        int ok = 1;
        float *logits[3] = {NULL, NULL, NULL};
        int32_t probe[200];
        for (int j = 0; j < 200; j++) probe[j] = (int32_t)((j * 7919 + 13) % hp.n_vocab);
        ns_engine *cpu = NULL; /* kept open: near-tie checks below */
        for (int k = 0; k < 3 && ok; k++) {
            ns_engine *e = open_synth(&hp, be[k], 8, k == 1);
            ns_error err;
            logits[k] = malloc(sizeof(float) * hp.n_vocab);
            if (!e || ns_engine_prompt_logits(e, probe, 200, logits[k], &err) ||
                synth_generate(e, hp.n_vocab, n_tok, tok[k]) < 0) {
                if (e) printf("FAIL %s on %s\n", shapes[si], be[k]);
                ok = 0;
            }
            if (k == 0)
                cpu = e;
            else
                ns_engine_close(e);
        }
        if (!ok) {
            result(0);
        } else {
            char what[96];
            snprintf(what, sizeof what, "%s logits of a 200-token prompt, cuda precise vs cpu", shapes[si]);
            result(allclose(what, logits[1], logits[0], (size_t)hp.n_vocab, 1e-3, 1e-3, 1e-8));
            snprintf(what, sizeof what, "%s logits of a 200-token prompt, cuda bf16 vs cpu", shapes[si]);
            result(allclose(what, logits[2], logits[0], (size_t)hp.n_vocab, 1e9, 1e9, 1e-3));
            for (int k = 1; k < 3; k++) {
                int n_same = 0, first_min = n_tok, n_tie = 0, n_bad = 0;
                for (int i = 0; i < 16; i++) {
                    int j = 0;
                    while (j < n_tok && tok[0][i * n_tok + j] == tok[k][i * n_tok + j]) j++;
                    n_same += j == n_tok;
                    if (j < first_min) first_min = j;
                    if (j == n_tok || k != 1) continue;
                    /* precise mode differs from the CPU by ~1e-5: a different token is only
                     * allowed where the CPU's own logits had the two within 1e-3 (a near-tie) */
                    int32_t pre[256 + 32];
                    int len = synth_prompt(i, hp.n_vocab, pre);
                    memcpy(pre + len, tok[0] + i * n_tok, sizeof(int32_t) * j);
                    ns_error err;
                    float gap = INFINITY;
                    if (!ns_engine_prompt_logits(cpu, pre, len + j, logits[0], &err))
                        gap = logits[0][tok[0][i * n_tok + j]] - logits[0][tok[k][i * n_tok + j]];
                    printf("     %s request %d: cuda precise differs at token %d (%d vs cpu %d), cpu logit gap %.3g\n",
                           shapes[si], i, j, tok[k][i * n_tok + j], tok[0][i * n_tok + j], (double)gap);
                    if (gap <= 1e-3f) n_tie++; else n_bad++;
                }
                /* precise: every token of every request agrees, or differs only at a
                 * near-tie. Plain bf16 inputs flip near-ties of these flat random-weight
                 * logits: reported, not judged. */
                int pass = n_bad == 0 && n_same + n_tie == 16;
                printf("%s %s greedy, cpu vs cuda%s: %d of 16 requests identical over %d tokens (earliest "
                       "difference at token %d)%s\n",
                       k == 2 ? "info" : pass ? "ok  " : "FAIL", shapes[si], k == 1 ? " precise" : " bf16", n_same,
                       n_tok, first_min, n_tie ? ", the others at near-ties" : "");
                if (k == 1) result(pass);
            }
        }
        ns_engine_close(cpu);
        for (int k = 0; k < 3; k++) free(tok[k]), free(logits[k]);
        synth_sampled(shapes[si], &hp);
    }
}

/* precision fp8 (FP8 GEMMs and the FP8 KV cache) on the synthetic shapes: the logits of a
 * 200-token prompt against the CPU's fp32 ones (NMSE <= 0.4; the bf16 path's NMSE printed
 * beside it), the 16 greedy requests completing, the same tokens in two FP8 runs
 * (determinism), and how many requests keep the CPU's tokens (reported). Random weights
 * give flat logits, so FP8's rounding weighs more than on a trained model. On the CPU
 * stand-in (tests/cudamock, which computes what the device computes up to the order of
 * the sums) the prompt logits' NMSE was: llama-small 0.071 (GEMMs alone 0.060, the KV
 * cache alone 0.0067), qwen2-small 0.0053 (0.0050, 0.00028), smollm2-135m 0.189 (0.165,
 * 0.021). The bound, about twice the largest, separates that from a broken path (wrong
 * scales or layout: logits unrelated to the CPU's, NMSE about 1 or more); the GEMM, the KV
 * store and the attention are checked tightly in `kernels`. */
static void run_fp8(void) {
    const char *shapes[] = {"llama-small", "qwen2-small", "smollm2-135m"};
    const int n_tok = 32;
    for (int si = 0; si < 3; si++) {
        ns_hparams hp;
        synth_shape(shapes[si], &hp);
        int32_t *tok[4];
        float *logits[4];
        int32_t probe[200];
        for (int j = 0; j < 200; j++) probe[j] = (int32_t)((j * 7919 + 13) % hp.n_vocab);
        int ok = 1;
        for (int k = 0; k < 4; k++) { /* 0: cpu, 1: cuda bf16, 2 and 3: cuda fp8 */
            tok[k] = malloc(sizeof(int32_t) * 16 * n_tok);
            logits[k] = malloc(sizeof(float) * hp.n_vocab);
            if (!ok) continue;
            synth_fp8 = k >= 2;
            ns_engine *e = open_synth(&hp, k ? "cuda" : "cpu", 8, false);
            synth_fp8 = false;
            ns_error err;
            if (!e || ns_engine_prompt_logits(e, probe, 200, logits[k], &err) ||
                synth_generate(e, hp.n_vocab, n_tok, tok[k]) < 0) {
                printf("FAIL %s fp8: run %d did not complete\n", shapes[si], k);
                ok = 0;
            }
            ns_engine_close(e);
        }
        if (ok) {
            char what[96];
            snprintf(what, sizeof what, "%s logits of a 200-token prompt, cuda bf16 vs cpu", shapes[si]);
            allclose(what, logits[1], logits[0], (size_t)hp.n_vocab, 1e9, 1e9, 1.0); /* printed, not judged here */
            snprintf(what, sizeof what, "%s logits of a 200-token prompt, cuda fp8 vs cpu", shapes[si]);
            result(allclose(what, logits[2], logits[0], (size_t)hp.n_vocab, 1e9, 1e9, 0.4));
            const int det = memcmp(tok[2], tok[3], sizeof(int32_t) * 16 * n_tok) == 0;
            printf("%s %s fp8 greedy, twice: %s\n", det ? "ok  " : "FAIL", shapes[si], det ? "identical" : "different");
            result(det);
            int same[2] = {0, 0};
            for (int i = 0; i < 16; i++)
                for (int k = 1; k < 3; k++)
                    same[k - 1] += memcmp(tok[0] + i * n_tok, tok[k] + i * n_tok, sizeof(int32_t) * n_tok) == 0;
            printf("info %s greedy, 16 requests x %d tokens identical to the cpu's: bf16 %d, fp8 %d\n", shapes[si],
                   n_tok, same[0], same[1]);
        } else {
            result(0);
        }
        for (int k = 0; k < 4; k++) free(tok[k]), free(logits[k]);
    }
}

static void run_throughput(void) {
    char path[256];
    snprintf(path, sizeof path, "%s/gpu_bench.gguf", tmpdir());
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    c.wtype = NS_GGML_Q8_0;
    c.n_layer = 8, c.n_embd = 512, c.n_ff = 1536, c.n_head = 8, c.n_head_kv = 4, c.n_ctx = 512;
    ns_error err;
    if (ns_tiny_model_write(path, &c, &err)) {
        printf("FAIL bench model: %s\n", err.msg);
        result(0);
        return;
    }
    ns_engine *e = open_engine(path, "cuda", 128);
    if (!e) {
        result(0);
        return;
    }
    const int n = 256, pp = 64, tg = 64;
    double dt = generate(e, n, pp, tg, NULL);
    ns_engine_close(e);
    if (dt < 0) {
        result(0);
        return;
    }
    printf("ok   throughput cuda: %d requests x (%d prompt + %d generated) in %.2f s: %.0f tok/s total, %.0f generated "
           "tok/s\n",
           n, pp, tg, dt, n * (pp + tg) / dt, n * tg / dt);
    result(1);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "kernels";
    int n_dev = 0;
    ns_error err;
    if (ns_backend_cuda_device_count(&n_dev, &err) != NS_OK) {
        printf("SKIP gpu-parity %s: %s\n", mode, err.msg);
        printf("0 passed, 0 failed, 1 skipped\n");
        return 0;
    }
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, 0));
    printf("gpu-parity %s on %s (sm_%d%d)\n", mode, prop.name, prop.major, prop.minor);
    if (!strcmp(mode, "kernels"))
        run_kernels();
    else if (!strcmp(mode, "greedy"))
        run_greedy();
    else if (!strcmp(mode, "throughput"))
        run_throughput();
    else if (!strcmp(mode, "synthetic"))
        run_synthetic();
    else if (!strcmp(mode, "fp8"))
        run_fp8();
    else {
        fprintf(stderr, "usage: gpu-parity kernels|greedy|synthetic|fp8|throughput\n");
        return 2;
    }
    printf("%d passed, %d failed, %d skipped\n", g_pass, g_fail, g_skip);
    return g_fail ? 1 : 0;
}
