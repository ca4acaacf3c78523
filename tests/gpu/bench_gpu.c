/* bench_gpu.c: CUDA throughput at real model shapes, models built in memory with random
 * bf16 weights (ns_model_random: no file), and the bf16 GEMM rate of the same card
 * through cuBLAS for the MFU. Run by tests/gpu/run.sh on a GPU machine.
 *
 * usage: gpu-bench gemm
 *          cuBLAS bf16 GEMM (fp32 accumulate), 8192^3, on random data: median TFLOP/s
 *        gpu-bench gen SHAPE N_PROMPTS N_IN N_OUT MAX_SEQS [PEAK_TFLOPS]
 *          SHAPE: 1b (Llama-3.2-1B), 8b (Llama-3.1-8B), 135m (SmolLM2-135M)
 *          N_PROMPTS requests of N_IN random prompt tokens, N_OUT generated each
 *          (greedy, ignore_eos), at most MAX_SEQS in one batch. Prints output tok/s,
 *          total tok/s, and the MFU against PEAK_TFLOPS when given.
 *        gpu-bench ops [small]
 *          the row kernels at a 1B prompt batch's shapes (4096 rows of 2048 and of 8192),
 *          each one that writes FP8 rows (precision fp8) beside the one it replaces:
 *          median ms of 20 after 3 warm-ups, and GB/s of the bytes each must move (every
 *          input read once, every output written once), for finding where FP8's element-wise
 *          time goes (tests/gpu/RESULTS.md, run 9); the fused QKV's epilogue beside the
 *          two RoPE passes it replaces (1B heads: 32 + 8 of 64); decode attention at the
 *          1B's decode shape, each kernel over bf16 and FP8 pools, in GB/s of K and V read
 *        gpu-bench gemm-shapes SHAPE [M] [fp8]
 *          each GEMM of one decode step at M rows (default 1000) as the backend runs it
 *          (bf16: cublasGemmEx's default; fp8: cuBLASLt's first algorithm) and through each
 *          of up to 16 algorithms that cuBLASLt's heuristic offers: how much a per-shape
 *          choice could save
 * Lines starting "result:" are machine-readable (key=value).
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "model.h"
#include "ops.h"
#include "ops_cuda.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define CU(call)                                                                                  \
    do {                                                                                          \
        cudaError_t e_ = (call);                                                                  \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

/* Milliseconds from e0 (recorded on stream 0 before the work) to now, the work done. */
static float elapsed_ms(cudaEvent_t e0, cudaEvent_t e1) {
    CU(cudaEventRecord(e1, 0));
    CU(cudaEventSynchronize(e1));
    float ms;
    CU(cudaEventElapsedTime(&ms, e0, e1));
    return ms;
}

static void fill_bf16(uint16_t *h, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        h[i] = ns_fp32_to_bf16((float)((seed >> 40) & 0xffff) / 65536.0f - 0.5f); /* uniform [-0.5, 0.5) */
    }
}

static int run_gemm(void) {
    const int n = 8192, reps = 20;
    size_t elems = (size_t)n * n;
    uint16_t *h = malloc(elems * 2);
    void *a, *b;
    float *c;
    fill_bf16(h, elems, 1);
    CU(cudaMalloc(&a, elems * 2));
    CU(cudaMalloc(&b, elems * 2));
    CU(cudaMalloc((void **)&c, elems * 4));
    CU(cudaMemcpy(a, h, elems * 2, cudaMemcpyHostToDevice));
    fill_bf16(h, elems, 2);
    CU(cudaMemcpy(b, h, elems * 2, cudaMemcpyHostToDevice));
    free(h);
    cublasHandle_t hd;
    if (cublasCreate(&hd) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cublasCreate failed\n");
        return 1;
    }
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    const float alpha = 1.0f, beta = 0.0f;
    double t[20];
    /* the backend's GEMM: bf16 x bf16 -> fp32 out, fp32 accumulate; 3 warm-ups */
    for (int i = -3; i < reps; i++) {
        CU(cudaEventRecord(e0, 0));
        cublasStatus_t s = cublasGemmEx(hd, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b,
                                        CUDA_R_16BF, n, &beta, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (s != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "cublasGemmEx: %s\n", cublasGetStatusString(s));
            return 1;
        }
        const float ms = elapsed_ms(e0, e1);
        if (i >= 0) t[i] = ms;
    }
    qsort(t, reps, sizeof t[0], cmp_double);
    double med = t[reps / 2], tflops = 2.0 * n * n * (double)n / (med * 1e-3) / 1e12;
    printf("gemm bf16 %dx%dx%d (fp32 out, fp32 accumulate): median %.3f ms over %d, %.0f TFLOP/s\n", n, n, n, med,
           reps, tflops);
    printf("result: gemm_tflops=%.1f\n", tflops);
    cublasDestroy(hd);
    return 0;
}

static void shape_of(const char *name, ns_hparams *hp) {
    memset(hp, 0, sizeof *hp);
    strcpy(hp->arch, "llama");
    hp->norm_eps = 1e-5f;
    hp->n_ctx_train = 8192;
    hp->rope_base = 500000.0f;
    hp->n_vocab = 128256;
    hp->n_head = 32, hp->n_head_kv = 8;
    if (!strcmp(name, "8b")) {
        hp->n_layer = 32, hp->n_embd = 4096, hp->n_ff = 14336, hp->head_dim = 128;
    } else if (!strcmp(name, "135m")) {
        hp->n_layer = 30, hp->n_embd = 576, hp->n_ff = 1536, hp->n_head = 9, hp->n_head_kv = 3, hp->head_dim = 64;
        hp->n_vocab = 49152, hp->rope_base = 100000.0f;
    } else {
        hp->n_layer = 16, hp->n_embd = 2048, hp->n_ff = 8192, hp->head_dim = 64;
    }
}

static int run_gen(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: gpu-bench gen SHAPE N_PROMPTS N_IN N_OUT MAX_SEQS [PEAK_TFLOPS]\n");
        return 2;
    }
    ns_hparams hp;
    shape_of(argv[2], &hp);
    int n = atoi(argv[3]), n_in = atoi(argv[4]), n_out = atoi(argv[5]), max_seqs = atoi(argv[6]);
    double peak = argc > 7 ? atof(argv[7]) : 0.0;
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.backend = "cuda";
    cfg.synthetic = &hp;
    cfg.synthetic_seed = 42;
    cfg.max_seqs = max_seqs;
    cfg.max_batch_tokens = NS_MAX(max_seqs, 8192);
    cfg.n_ctx = n_in + n_out;
    cfg.kv_bytes = 0;
    /* the benchmark's own switch for precision fp8 (a job says precision: fp8) */
    const char *fp8 = getenv("NS_CUDA_FP8"), *kv8 = getenv("NS_CUDA_KV_FP8");
    cfg.fp8 = fp8 && !strcmp(fp8, "1");
    cfg.kv_fp8 = kv8 && !strcmp(kv8, "1"); /* the FP8 KV cache (a job's precision: fp8 has both) */
    ns_engine *e;
    ns_error err;
    double t_open = ns_time_now();
    if (ns_engine_open(&cfg, &e, NULL, &err)) {
        printf("FAIL open %s: %s\n", argv[2], err.msg);
        return 1;
    }
    t_open = ns_time_now() - t_open;
    int32_t *prompt = malloc(sizeof(int32_t) * n_in);
    uint64_t r = 7;
    /* warm-up, untimed: the same shapes (full prompt chunks, decode batches of every size
     * up to the largest) so that kernel loading and cuBLAS's first calls stay out */
    int n_warm = n < max_seqs ? n : max_seqs;
    double t_w0 = ns_time_now();
    for (int i = 0; i < n_warm; i++) {
        for (int j = 0; j < n_in; j++) prompt[j] = (int32_t)((i * 7919 + j * 31) % hp.n_vocab);
        ns_request req = {0};
        req.id = (uint64_t)i;
        req.prompt = prompt;
        req.n_prompt = n_in;
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = 2 + i % 8;
        req.sampling.ignore_eos = true;
        if (ns_engine_submit(e, &req, &err)) {
            printf("FAIL warm-up submit: %s\n", err.msg);
            return 1;
        }
    }
    while (!ns_engine_idle(e)) {
        if (ns_engine_step(e, NULL, &err)) {
            printf("FAIL warm-up step: %s\n", err.msg);
            return 1;
        }
        ns_completion *c[256];
        int k;
        while ((k = ns_engine_collect(e, c, 256)) > 0)
            for (int i = 0; i < k; i++) ns_completion_free(c[i]);
    }
    double t_warm = ns_time_now() - t_w0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n_in; j++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            prompt[j] = (int32_t)((r >> 33) % (uint64_t)hp.n_vocab);
        }
        ns_request req = {0};
        req.id = (uint64_t)i;
        req.prompt = prompt;
        req.n_prompt = n_in;
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = n_out;
        req.sampling.ignore_eos = true;
        if (ns_engine_submit(e, &req, &err)) {
            printf("FAIL submit: %s\n", err.msg);
            return 1;
        }
    }
    free(prompt);
    double t0 = ns_time_now(), t_report = t0;
    int64_t steps = 0, gen = 0, max_batch = 0, processed = 0, decoded = 0, n_prefill = 0, n_decode_steps = 0;
    double t_prefill = 0, t_decode = 0;
    ns_step_stats st;
    while (!ns_engine_idle(e)) {
        double ts = ns_time_now();
        if (ns_engine_step(e, &st, &err)) {
            printf("FAIL step %lld: %s\n", (long long)steps, err.msg);
            return 1;
        }
        steps++;
        if (st.n_seqs > max_batch) max_batch = st.n_seqs;
        if (st.n_prompt_tokens > 0) t_prefill += ns_time_now() - ts, n_prefill++;
        else t_decode += ns_time_now() - ts, n_decode_steps++;
        processed += st.n_tokens;
        decoded += st.n_decode;
        double now = ns_time_now();
        if (now - t_report >= 5.0) { /* progress, so that a run cut off by its timeout still says something */
            t_report = now;
            printf("  progress: %.0f s, %lld steps, %lld tokens through the model (%.0f tok/s), %lld decode tokens "
                   "(%.0f tok/s), %d running, %d waiting\n",
                   now - t0, (long long)steps, (long long)processed, processed / (now - t0), (long long)decoded,
                   decoded / (now - t0), st.n_running, st.n_waiting);
            fflush(stdout);
        }
        ns_completion *c[256];
        int k;
        while ((k = ns_engine_collect(e, c, 256)) > 0)
            for (int i = 0; i < k; i++) {
                gen += c[i]->n_tokens;
                if (c[i]->finish == NS_FINISH_ERROR) printf("error: %s\n", c[i]->error);
                ns_completion_free(c[i]);
            }
    }
    double dt = ns_time_now() - t0;
    const ns_hparams *h = ns_engine_hparams(e);
    /* FLOPs: 2 per weight per token (all matrices incl. the output head, which runs on the
     * last prompt token and every generated one), plus attention QK^T and PV: 4 * q_dim per
     * cached key per layer, averaged over the positions. */
    double w_layer = (double)h->n_embd * (h->n_head * h->head_dim) * 2 + (double)h->n_embd * (h->n_head_kv * h->head_dim) * 2 +
                     3.0 * h->n_embd * h->n_ff;
    double tok_total = (double)n * (n_in + n_out);
    double flops = 2.0 * w_layer * h->n_layer * tok_total + 2.0 * h->n_embd * (double)h->n_vocab * n * n_out;
    double avg_ctx = (n_in + n_out) / 2.0;
    flops += 4.0 * h->n_layer * (double)(h->n_head * h->head_dim) * avg_ctx * tok_total;
    double tflops = flops / dt / 1e12;
    printf("gen %s: %d prompts x (%d in + %d out), max_seqs %d: %.2f s (load %.1f s, warm-up %.1f s, untimed), %lld "
           "steps, largest batch %lld seqs\n",
           argv[2], n, n_in, n_out, max_seqs, dt, t_open, t_warm, (long long)steps, (long long)max_batch);
    printf("  steps with prompt tokens: %lld in %.2f s; decode-only steps: %lld in %.2f s (%.2f ms each)\n",
           (long long)n_prefill, t_prefill, (long long)n_decode_steps, t_decode,
           n_decode_steps ? 1e3 * t_decode / n_decode_steps : 0.0);
    printf("  output %.0f tok/s, total %.0f tok/s, %.1f TFLOP/s", gen / dt, tok_total / dt, tflops);
    if (peak > 0) printf(", MFU %.1f%% of %.0f", 100.0 * tflops / peak, peak);
    printf("\n");
    if (gen != (int64_t)n * n_out) printf("FAIL generated %lld tokens, expected %lld\n", (long long)gen, (long long)n * n_out);
    printf("result: shape=%s out_tok_s=%.0f total_tok_s=%.0f tflops=%.1f mfu_pct=%.1f seconds=%.2f\n", argv[2],
           gen / dt, tok_total / dt, tflops, peak > 0 ? 100.0 * tflops / peak : 0.0, dt);
    ns_engine_close(e);
    return gen == (int64_t)n * n_out ? 0 : 1;
}

/* ---- gpu-bench ops ---- */

enum { OP_RMSNORM, OP_RMSNORM_FP8, OP_ADD_RMSNORM, OP_ADD_RMSNORM_FP8, OP_SWIGLU_BF16, OP_SWIGLU_BF16_FP8,
       OP_QUANT_BF16, OP_TO_BF16, OP_SCALE_OUTER_F32, OP_SCALE_OUTER_BF16, OP_ROPE_QK, OP_QKV_SPLIT_ROPE, OP_N };

typedef struct {
    float *x, *x2, *delta, *w, *out, *raw, *sa, *sb, *scales, *inv;
    uint16_t *g, *u, *bf16;
    uint8_t *q;
    int32_t *pos;
} ops_bufs;

/* Launches op once on stream 0; its name, shape and bytes moved in *name, *rows, *n, *bytes. */
static cudaError_t ops_launch(int op, const ops_bufs *b, int R, int E, int F, const char **name, int *rows, int *n,
                              double *bytes) {
    const float eps = 1e-5f;
    *rows = R;
    switch (op) {
    case OP_RMSNORM: /* the bf16 path: fp32 out and the GEMM's bf16 input */
        *name = "rmsnorm", *n = E, *bytes = (double)R * E * (4 + 4 + 2);
        return ns_cuda_rmsnorm(b->out, b->bf16, b->x, b->w, R, E, eps, 0);
    case OP_RMSNORM_FP8: /* fp32 out and the GEMM's fp8 rows */
        *name = "rmsnorm_fp8", *n = E, *bytes = (double)R * E * (4 + 4 + 1);
        return ns_cuda_rmsnorm_fp8(b->out, b->q, b->scales, b->x, b->w, R, E, eps, 0);
    case OP_ADD_RMSNORM: /* x += delta, the GEMM's bf16 input */
        *name = "add_rmsnorm", *n = E, *bytes = (double)R * E * (4 + 4 + 4 + 2);
        return ns_cuda_add_rmsnorm(b->x2, b->delta, NULL, b->bf16, b->w, R, E, eps, 0);
    case OP_ADD_RMSNORM_FP8:
        *name = "add_rmsnorm_fp8", *n = E, *bytes = (double)R * E * (4 + 4 + 4 + 1);
        return ns_cuda_add_rmsnorm_fp8(b->x2, b->delta, NULL, b->q, b->scales, b->w, R, E, eps, 0);
    case OP_SWIGLU_BF16: /* the fused feed-forward's SwiGLU: bf16 gate, up -> bf16 */
        *name = "swiglu_bf16", *n = F, *bytes = (double)R * F * (2 + 2 + 2);
        return ns_cuda_swiglu_bf16(b->bf16, b->g, b->u, (int64_t)R * F, 0);
    case OP_SWIGLU_BF16_FP8:
        *name = "swiglu_bf16_fp8", *n = F, *bytes = (double)R * F * (2 + 2 + 1);
        return ns_cuda_swiglu_bf16_fp8(b->q, b->scales, b->g, b->u, R, F, 0);
    case OP_QUANT_BF16: /* the quantizer pass (attention output, plain SwiGLU), from bf16 */
        *name = "quant_rows_fp8_bf16", *n = F, *bytes = (double)R * F * (2 + 1);
        return ns_cuda_quant_rows_fp8(b->q, b->scales, b->bf16, NS_CUDA_TYPE_BF16, R, F, 0);
    case OP_TO_BF16: /* the bf16 path's conversion of a GEMM input */
        *name = "f32_to_bf16", *n = F, *bytes = (double)R * F * (4 + 2);
        return ns_cuda_f32_to_bf16(b->bf16, b->x, (int64_t)R * F, 0);
    case OP_SCALE_OUTER_F32: /* the unscaled FP8 GEMM's pass, fp32 out */
        *name = "scale_outer_f32", *n = F, *bytes = (double)R * F * (4 + 4);
        return ns_cuda_scale_outer(b->out, NS_CUDA_TYPE_F32, b->raw, b->sa, b->sb, R, F, 0);
    case OP_SCALE_OUTER_BF16: /* and bf16 out */
        *name = "scale_outer_bf16", *n = F, *bytes = (double)R * F * (4 + 2);
        return ns_cuda_scale_outer(b->bf16, NS_CUDA_TYPE_BF16, b->raw, b->sa, b->sb, R, F, 0);
    case OP_ROPE_QK: { /* the unfused attention inputs (1B: 32 heads, 8 KV heads of 64): rope on q, then on k */
        *name = "rope_q_k", *n = 40 * 64, *bytes = (double)R * 40 * 64 * (4 + 4);
        cudaError_t e = ns_cuda_rope(b->out, b->pos, R, 32, 64, 64, b->inv, 0, 0);
        return e != cudaSuccess ? e : ns_cuda_rope(b->out + (size_t)R * 32 * 64, b->pos, R, 8, 64, 64, b->inv, 0, 0);
    }
    default: /* the fused QKV's epilogue in their place: the product split into q, k, v, RoPE on q and k */
        *name = "qkv_split_rope", *n = 48 * 64, *bytes = (double)R * 48 * 64 * (4 + 4);
        return ns_cuda_qkv_split_rope(b->out, b->out + (size_t)R * 32 * 64, b->out + (size_t)R * 40 * 64, b->raw, NULL,
                                      NULL, NULL, b->pos, R, 32, 8, 64, 64, b->inv, 0, 0);
    }
}

/* Decode attention at the 1B's decode shape (1,000 sequences, 32 heads over 8 KV heads of
 * 64, blocks of 16), one layer, each sequence with ctx cached tokens: the fast kernel and
 * the tensor-core one over bf16 pools, and with fp8 also over FP8 pools. GB/s of the K and
 * V bytes each must read (every cached row once): at 192 tokens (the benchmark's mean)
 * and at 1,024 (per-block costs spread over more tiles) the two say whether the kernels
 * are bound by bytes or by something per block. The pools hold constants (speed does not
 * depend on the values). Appends " NAME_gbps=V" to result. */
static int run_attn(int S, int ctx, bool fp8, char *result, size_t cap, cudaEvent_t e0, cudaEvent_t e1) {
    enum { H = 32, HK = 8, HD = 64, BS = 16, REPS = 20 };
    const int nb = (ctx + BS - 1) / BS;
    const size_t rows = (size_t)S * nb * BS, row = (size_t)HK * HD;
    int32_t *hpos = malloc(S * 4), *hseq = malloc(S * 4), *hgrp = malloc(2 * S * 4), *htab = malloc((size_t)S * nb * 4);
    float *hq = malloc((size_t)S * H * HD * 4);
    if (!hpos || !hseq || !hgrp || !htab || !hq) return 1;
    for (int t = 0; t < S; t++) hpos[t] = ctx - 1, hseq[t] = t, hgrp[2 * t] = t, hgrp[2 * t + 1] = 1;
    for (int i = 0; i < S * nb; i++) htab[i] = i; /* sequence s: blocks s * nb .. */
    uint64_t r = 91;
    for (size_t i = 0; i < (size_t)S * H * HD; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        hq[i] = ((float)(r >> 40) / (float)(1u << 24) - 0.5f);
    }
    int32_t *pos, *seq, *grp, *tab;
    float *q, *out, *ks = NULL, *vs = NULL;
    void *k16, *v16, *k8 = NULL, *v8 = NULL;
    CU(cudaMalloc((void **)&pos, S * 4));
    CU(cudaMalloc((void **)&seq, S * 4));
    CU(cudaMalloc((void **)&grp, 2 * S * 4));
    CU(cudaMalloc((void **)&tab, (size_t)S * nb * 4));
    CU(cudaMalloc((void **)&q, (size_t)S * H * HD * 4));
    CU(cudaMalloc((void **)&out, (size_t)S * H * HD * 4));
    CU(cudaMalloc(&k16, rows * row * 2));
    CU(cudaMalloc(&v16, rows * row * 2));
    CU(cudaMemset(k16, 0x3c, rows * row * 2)); /* bf16 0x3c3c, about 0.0115 */
    CU(cudaMemset(v16, 0x3d, rows * row * 2));
    if (fp8) {
        CU(cudaMalloc((void **)&ks, rows * HK * 4));
        CU(cudaMalloc((void **)&vs, rows * HK * 4));
        CU(cudaMalloc(&k8, rows * row));
        CU(cudaMalloc(&v8, rows * row));
        CU(cudaMemset(ks, 0x3c, rows * HK * 4)); /* fp32 0x3c3c3c3c, about 0.0115 */
        CU(cudaMemset(vs, 0x3c, rows * HK * 4));
        CU(cudaMemset(k8, 0x30, rows * row)); /* e4m3 0.5 */
        CU(cudaMemset(v8, 0x38, rows * row)); /* e4m3 1.0 */
    }
    CU(cudaMemcpy(pos, hpos, S * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(seq, hseq, S * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(grp, hgrp, 2 * S * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(tab, htab, (size_t)S * nb * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(q, hq, (size_t)S * H * HD * 4, cudaMemcpyHostToDevice));
    free(hpos), free(hseq), free(hgrp), free(htab), free(hq);
    const float scale = 0.125f;
    for (int v = 0; v < (fp8 ? 4 : 2); v++) {
        const bool tc = v % 2, f8 = v >= 2;
        char name[48];
        snprintf(name, sizeof name, "attn_decode%s%s_%d", tc ? "_tc" : "", f8 ? "_fp8" : "", ctx);
        const double kv_rows = (double)S * ctx * HK; /* (token, KV head) rows read, K and V each */
        const double bytes = 2.0 * kv_rows * HD * (f8 ? 1 : 2) + (f8 ? 2.0 * kv_rows * 4 : 0.0);
        double t[REPS];
        for (int i = -3; i < REPS; i++) {
            CU(cudaEventRecord(e0, 0));
            if (tc)
                CU(ns_cuda_attention_tc(out, NULL, q, pos, seq, grp, S, 1, tab, nb, f8 ? k8 : k16, f8 ? v8 : v16, ks, vs,
                                        BS, H, HK, HD, scale, 0));
            else if (f8)
                CU(ns_cuda_attention_paged_fp8(out, NULL, q, pos, seq, grp, S, 1, tab, nb, k8, v8, ks, vs, BS, H, HK, HD,
                                               scale, 0));
            else
                CU(ns_cuda_attention_paged(out, NULL, q, pos, seq, grp, S, 1, tab, nb, k16, v16, NS_CUDA_TYPE_BF16, BS,
                                           H, HK, HD, scale, 0));
            const float ms = elapsed_ms(e0, e1);
            if (i >= 0) t[i] = ms;
        }
        qsort(t, REPS, sizeof t[0], cmp_double);
        const double med = t[REPS / 2], gbps = bytes / (med * 1e-3) / 1e9;
        printf("op %-26s %d seqs x %d keys: median %.3f ms over %d, %.0f GB/s of K and V\n", name, S, ctx, med, REPS,
               gbps);
        const size_t used = strlen(result);
        snprintf(result + used, cap - used, " %s_gbps=%.0f", name, gbps);
    }
    CU(cudaFree(pos)); CU(cudaFree(seq)); CU(cudaFree(grp)); CU(cudaFree(tab)); CU(cudaFree(q)); CU(cudaFree(out));
    CU(cudaFree(k16)); CU(cudaFree(v16));
    if (fp8) {
        CU(cudaFree(ks)); CU(cudaFree(vs)); CU(cudaFree(k8)); CU(cudaFree(v8));
    }
    return 0;
}

/* small: shapes a CPU stand-in for the device runs in a moment (make test runs the bench's
 * host code that way, tests/gpu/bench_smoke.sh); the numbers then mean nothing. */
static int run_ops(bool small) {
    const int R = small ? 64 : 4096, E = small ? 256 : 2048, F = small ? 4096 : 8192; /* F >= 48 * 64: the QKV ops */
    enum { REPS = 20 };
    const size_t big = (size_t)R * F;
    ops_bufs b;
    CU(cudaMalloc((void **)&b.x, big * 4));
    CU(cudaMalloc((void **)&b.x2, (size_t)R * E * 4));
    CU(cudaMalloc((void **)&b.delta, (size_t)R * E * 4));
    CU(cudaMalloc((void **)&b.w, F * 4));
    CU(cudaMalloc((void **)&b.out, big * 4));
    CU(cudaMalloc((void **)&b.raw, big * 4));
    CU(cudaMalloc((void **)&b.sa, F * 4));
    CU(cudaMalloc((void **)&b.sb, R * 4));
    CU(cudaMalloc((void **)&b.scales, R * 4));
    CU(cudaMalloc((void **)&b.g, big * 2));
    CU(cudaMalloc((void **)&b.u, big * 2));
    CU(cudaMalloc((void **)&b.bf16, big * 2));
    CU(cudaMalloc((void **)&b.q, big));
    CU(cudaMalloc((void **)&b.inv, 32 * 4));
    CU(cudaMalloc((void **)&b.pos, R * 4));
    /* random data, never zeros (they can run faster than real data) */
    float *hf = malloc(big * 4);
    uint16_t *hb = malloc(big * 2);
    if (!hf || !hb) return 1;
    uint64_t r = 77;
    for (size_t i = 0; i < big; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        hf[i] = ((float)(r >> 40) / (float)(1u << 24) - 0.5f) * 4.0f;
    }
    CU(cudaMemcpy(b.x, hf, big * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(b.raw, hf, big * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(b.x2, hf, (size_t)R * E * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(b.delta, hf + (size_t)R * E, (size_t)R * E * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(b.w, hf + 17, F * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(b.sa, hf + 99, F * 4, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(b.sb, hf + 999, R * 4, cudaMemcpyHostToDevice));
    { /* RoPE: positions 0 .. 255 (a 1B batch's), Llama 3's base */
        int32_t *hp = malloc((size_t)R * 4);
        float hi[32];
        if (!hp) return 1;
        for (int i = 0; i < R; i++) hp[i] = i % 256;
        for (int i = 0; i < 32; i++) hi[i] = powf(500000.0f, -2.0f * i / 64.0f);
        CU(cudaMemcpy(b.pos, hp, (size_t)R * 4, cudaMemcpyHostToDevice));
        free(hp);
        CU(cudaMemcpy(b.inv, hi, sizeof hi, cudaMemcpyHostToDevice));
    }
    fill_bf16(hb, big, 3);
    CU(cudaMemcpy(b.g, hb, big * 2, cudaMemcpyHostToDevice));
    CU(cudaMemcpy(b.bf16, hb, big * 2, cudaMemcpyHostToDevice));
    fill_bf16(hb, big, 4);
    CU(cudaMemcpy(b.u, hb, big * 2, cudaMemcpyHostToDevice));
    free(hf);
    free(hb);
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    char result[1024] = "result:";
    for (int op = 0; op < OP_N; op++) {
        const char *name = "";
        int rows = 0, n = 0;
        double bytes = 0, t[REPS];
        for (int i = -3; i < REPS; i++) {
            CU(cudaEventRecord(e0, 0));
            CU(ops_launch(op, &b, R, E, F, &name, &rows, &n, &bytes));
            const float ms = elapsed_ms(e0, e1);
            if (i >= 0) t[i] = ms;
        }
        qsort(t, REPS, sizeof t[0], cmp_double);
        const double med = t[REPS / 2], gbps = bytes / (med * 1e-3) / 1e9;
        printf("op %-20s %d x %d: median %.3f ms over %d, %.0f GB/s\n", name, rows, n, med, REPS, gbps);
        const size_t used = strlen(result);
        snprintf(result + used, sizeof result - used, " %s_gbps=%.0f", name, gbps);
    }
    printf("%s\n", result);
    char attn[512] = "result:";
    const int n_seqs = small ? 8 : 1000;
    if (run_attn(n_seqs, small ? 40 : 192, true, attn, sizeof attn, e0, e1) ||
        run_attn(n_seqs, small ? 72 : 1024, false, attn, sizeof attn, e0, e1))
        return 1;
    printf("%s\n", attn);
    return 0;
}

/* One GEMM of gemm-shapes: y (M, N) = x (M, K) . W^T, as the backend's gemm() lays it out
 * (column-major y^T = W x^T), in bf16, or in FP8 (e4m3 codes, outer-vector scales, as
 * gemm_fp8 with the scaled form the H100 takes). */
typedef struct {
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulPreference_t pref;
    cublasLtMatrixLayout_t a, b, d;
    void *w, *x, *y, *ws;
    float *sa, *sb; /* FP8: W's scale per row (N), x's per row (M) */
    size_t ws_n;
    int M, N, K;
    bool f8;
    cudaDataType out;
} gemm_case;

/* Median ms of 10 runs after 2 warm-ups; algo NULL: cublasGemmEx's default (bf16), else
 * that cuBLASLt algorithm; inf when the call fails. */
static double gemm_case_ms(const gemm_case *g, const cublasLtMatmulAlgo_t *algo, cudaEvent_t e0, cudaEvent_t e1) {
    const float alpha = 1.0f, beta = 0.0f;
    enum { REPS = 10 };
    double t[REPS];
    for (int i = -2; i < REPS; i++) {
        CU(cudaEventRecord(e0, 0));
        cublasStatus_t s;
        if (!algo)
            s = cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, g->N, g->M, g->K, &alpha, g->w, CUDA_R_16BF, g->K,
                             g->x, CUDA_R_16BF, g->K, &beta, g->y, g->out, g->N, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
        else
            s = cublasLtMatmul(g->lt, g->desc, &alpha, g->w, g->a, g->x, g->b, &beta, g->y, g->d, g->y, g->d, algo,
                               g->ws, g->ws_n, 0);
        const float ms = elapsed_ms(e0, e1);
        if (s != CUBLAS_STATUS_SUCCESS) return INFINITY;
        if (i >= 0) t[i] = ms;
    }
    qsort(t, REPS, sizeof t[0], cmp_double);
    return t[REPS / 2];
}

/* y as floats (out: CUDA_R_32F or CUDA_R_16BF), n elements, into h. */
static void fetch_y(float *h, const void *y, cudaDataType out, size_t n) {
    if (out == CUDA_R_32F) {
        CU(cudaMemcpy(h, y, n * 4, cudaMemcpyDeviceToHost));
        return;
    }
    uint16_t *b = (uint16_t *)h + n; /* the upper half of h, read before it is overwritten */
    CU(cudaMemcpy(b, y, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; i++) h[i] = ns_bf16_to_fp32(b[i]);
}

/* Random operands on the device: bf16 in [-0.5, 0.5), or e4m3 codes (never NaN) with
 * scales near 1/64; a cuBLAS workspace the size of the backend's (NS_CUDA_CUBLAS_WS). */
static int gemm_case_setup(gemm_case *g, bool f8, size_t w_n, size_t x_n, size_t y_n, int n_max, int m) {
    const size_t eb = f8 ? 1 : 2;
    g->f8 = f8;
    g->ws_n = 32u << 20;
    uint16_t *h = malloc((w_n > x_n ? w_n : x_n) * 2);
    if (!h) return 1;
    CU(cudaMalloc(&g->w, w_n * eb));
    CU(cudaMalloc(&g->x, x_n * eb));
    CU(cudaMalloc(&g->y, y_n * 4));
    CU(cudaMalloc(&g->ws, g->ws_n));
    for (int pass = 0; pass < 2; pass++) {
        const size_t n = pass ? x_n : w_n;
        fill_bf16(h, n, 3 + pass);
        if (f8) /* the bf16 bits' low byte as a code, with the lowest exponent bit cleared: no NaN */
            for (size_t i = 0; i < n; i++) ((uint8_t *)h)[i] = (uint8_t)(h[i] & 0xf7u);
        CU(cudaMemcpy(pass ? g->x : g->w, h, n * eb, cudaMemcpyHostToDevice));
    }
    free(h);
    if (f8) {
        float *sc = malloc((size_t)(n_max > m ? n_max : m) * sizeof *sc);
        if (!sc) return 1;
        for (int i = 0; i < (n_max > m ? n_max : m); i++) sc[i] = (1.0f + (float)(i % 7) / 8.0f) / 64.0f;
        CU(cudaMalloc((void **)&g->sa, (size_t)n_max * 4));
        CU(cudaMalloc((void **)&g->sb, (size_t)m * 4));
        CU(cudaMemcpy(g->sa, sc, (size_t)n_max * 4, cudaMemcpyHostToDevice));
        CU(cudaMemcpy(g->sb, sc, (size_t)m * 4, cudaMemcpyHostToDevice));
        free(sc);
    }
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    const cublasLtMatmulMatrixScale_t outer = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    const uint64_t ws_n = g->ws_n;
    if (cublasCreate(&g->blas) || cublasSetWorkspace(g->blas, g->ws, g->ws_n) || cublasLtCreate(&g->lt) ||
        cublasLtMatmulDescCreate(&g->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t) ||
        cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n) ||
        (f8 && (cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &outer, sizeof outer) ||
                cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &outer, sizeof outer) ||
                cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &g->sa, sizeof g->sa) ||
                cublasLtMatmulDescSetAttribute(g->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &g->sb,
                                               sizeof g->sb))) ||
        cublasLtMatmulPreferenceCreate(&g->pref) ||
        cublasLtMatmulPreferenceSetAttribute(g->pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_n, sizeof ws_n)) {
        fprintf(stderr, "gpu-bench gemm-shapes: cuBLAS / cuBLASLt setup failed\n");
        return 1;
    }
    return 0;
}

static void gemm_case_free(gemm_case *g) {
    cublasLtMatmulPreferenceDestroy(g->pref);
    cublasLtMatmulDescDestroy(g->desc);
    cublasLtDestroy(g->lt);
    cublasDestroy(g->blas);
    CU(cudaFree(g->w)); CU(cudaFree(g->x)); CU(cudaFree(g->y)); CU(cudaFree(g->ws));
    if (g->f8) {
        CU(cudaFree(g->sa));
        CU(cudaFree(g->sb));
    }
}

/* Whether algo computes the same product as ref (NULL: cublasGemmEx's default): within
 * 1e-2 of the largest |y|, the two summing in different orders. host: 2 x M x N floats. */
static bool gemm_case_same(const gemm_case *g, const cublasLtMatmulAlgo_t *ref, const cublasLtMatmulAlgo_t *algo,
                           float *host, cudaEvent_t e0, cudaEvent_t e1, double *diff, double *top) {
    const size_t n = (size_t)g->M * g->N;
    float *r = host, *got = host + n;
    gemm_case_ms(g, ref, e0, e1);
    fetch_y(r, g->y, g->out, n);
    gemm_case_ms(g, algo, e0, e1);
    fetch_y(got, g->y, g->out, n);
    *diff = *top = 0;
    for (size_t e = 0; e < n; e++) {
        *diff = fmax(*diff, fabs((double)got[e] - r[e]));
        *top = fmax(*top, fabs((double)r[e]));
    }
    return *diff <= 1e-2 * *top;
}

/* gpu-bench gemm-shapes SHAPE [M] [fp8]: each GEMM of one decode step at M rows (the
 * defaults' layout: q, k and v joined, gate and up writing bf16, the output head), timed
 * as the backend runs it (bf16: cublasGemmEx's default; fp8: cuBLASLt's first algorithm,
 * gemm_fp8's choice) and through each other algorithm cuBLASLt's heuristic offers for the
 * same product (up to 16). Says how much of the step's GEMM time a per-shape choice of
 * algorithm could save, before anyone builds one. The best one's product is checked
 * against the default's. */
static int run_gemm_shapes(int argc, char **argv) {
    const char *shape = argc >= 3 ? argv[2] : "1b";
    const int M = argc >= 4 ? atoi(argv[3]) : 1000;
    const bool f8 = argc >= 5 && !strcmp(argv[4], "fp8");
    if (M < 1) {
        fprintf(stderr, "gpu-bench gemm-shapes: M must be at least 1\n");
        return 2;
    }
    ns_hparams hp;
    shape_of(shape, &hp);
    const int E = hp.n_embd, QD = hp.n_head * hp.head_dim, KVD = hp.n_head_kv * hp.head_dim;
    const struct { const char *name; int n, k, per_step; cudaDataType out; } op[] = {
        {"qkv", QD + 2 * KVD, E, hp.n_layer, CUDA_R_32F}, {"wo", E, QD, hp.n_layer, CUDA_R_32F},
        {"gate/up", hp.n_ff, E, 2 * hp.n_layer, CUDA_R_16BF}, {"down", E, hp.n_ff, hp.n_layer, CUDA_R_32F},
        {"head", hp.n_vocab, E, 1, CUDA_R_32F}};
    const int n_op = (int)(sizeof op / sizeof op[0]);
    size_t w_max = 0, x_max = 0, y_max = 0;
    int n_max = 0;
    for (int i = 0; i < n_op; i++) {
        w_max = (size_t)op[i].n * op[i].k > w_max ? (size_t)op[i].n * op[i].k : w_max;
        x_max = (size_t)M * op[i].k > x_max ? (size_t)M * op[i].k : x_max;
        y_max = (size_t)M * op[i].n > y_max ? (size_t)M * op[i].n : y_max;
        n_max = op[i].n > n_max ? op[i].n : n_max;
    }
    gemm_case g = {0};
    if (gemm_case_setup(&g, f8, w_max, x_max, y_max, n_max, M)) return 1;
    cudaEvent_t e0, e1;
    CU(cudaEventCreate(&e0));
    CU(cudaEventCreate(&e1));
    float *host = malloc(y_max * 8);
    if (!host) return 1;
    int bad = 0;
    double step_dflt = 0, step_best = 0;
    printf("gemm-shapes %s, M = %d (%s in, fp32 accumulate; median of 10 after 2 warm-ups; the default: %s)\n", shape,
           M, f8 ? "e4m3 with outer-vector scales" : "bf16", f8 ? "cuBLASLt's first algorithm" : "cublasGemmEx");
    for (int i = 0; i < n_op; i++) {
        g.M = M, g.N = op[i].n, g.K = op[i].k, g.out = op[i].out;
        const cudaDataType in = f8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
        cublasLtMatmulHeuristicResult_t res[16];
        int n_found = 0;
        if (cublasLtMatrixLayoutCreate(&g.a, in, (uint64_t)g.K, (uint64_t)g.N, g.K) ||
            cublasLtMatrixLayoutCreate(&g.b, in, (uint64_t)g.K, (uint64_t)M, g.K) ||
            cublasLtMatrixLayoutCreate(&g.d, g.out, (uint64_t)g.N, (uint64_t)M, g.N) ||
            cublasLtMatmulAlgoGetHeuristic(g.lt, g.desc, g.a, g.b, g.d, g.d, g.pref, 16, res, &n_found))
            n_found = 0;
        const cublasLtMatmulAlgo_t *dflt = f8 ? (n_found > 0 ? &res[0].algo : NULL) : NULL;
        const double t_dflt = f8 && !dflt ? INFINITY : gemm_case_ms(&g, dflt, e0, e1);
        double t_best = t_dflt;
        int best = -1;
        for (int j = f8 ? 1 : 0; j < n_found; j++) {
            if (res[j].state != CUBLAS_STATUS_SUCCESS) continue;
            const double t = gemm_case_ms(&g, &res[j].algo, e0, e1);
            if (t < t_best) t_best = t, best = j;
        }
        /* the best algorithm (else cuBLASLt's first, for bf16) must compute the default's
         * product, or its time means nothing */
        const int chk = best >= 0 ? best : !f8 && n_found > 0 ? 0 : -1;
        double diff, top;
        if (chk >= 0 && !gemm_case_same(&g, dflt, &res[chk].algo, host, e0, e1, &diff, &top)) {
            printf("FAIL %s: cuBLASLt algorithm %d's product differs from the default's by %g (largest |y| %g)\n",
                   op[i].name, chk, diff, top);
            bad = 1;
        }
        cublasLtMatrixLayoutDestroy(g.a), cublasLtMatrixLayoutDestroy(g.b), cublasLtMatrixLayoutDestroy(g.d);
        g.a = g.b = g.d = NULL;
        if (f8 && !dflt) {
            printf("FAIL %s: cuBLASLt has no algorithm for it\n", op[i].name);
            bad = 1;
            continue;
        }
        char who[32] = "the default";
        if (best >= 0) snprintf(who, sizeof who, "algorithm %d", best);
        const double flop = 2.0 * M * (double)g.N * g.K;
        printf("  %-8s N %6d K %6d x%-3d default %8.4f ms (%4.0f TFLOP/s); cuBLASLt: %d algorithms; best %s, "
               "x%.3f\n",
               op[i].name, g.N, g.K, op[i].per_step, t_dflt, t_dflt > 0 ? flop / (t_dflt * 1e-3) / 1e12 : 0.0, n_found,
               who, t_best > 0 ? t_dflt / t_best : 1.0);
        step_dflt += t_dflt * op[i].per_step, step_best += t_best * op[i].per_step;
    }
    const double gain = step_best > 0 ? step_dflt / step_best : 1.0;
    printf("one step's GEMMs: default %.3f ms, best of each %.3f ms (x%.3f)\n", step_dflt, step_best, gain);
    printf("result: shape=%s m=%d%s step_ms_default=%.3f step_ms_best=%.3f gain=%.3f\n", shape, M, f8 ? " fp8=1" : "",
           step_dflt, step_best, gain);
    free(host);
    gemm_case_free(&g);
    return bad;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "gemm")) return run_gemm();
    if (argc >= 2 && !strcmp(argv[1], "gen")) return run_gen(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "ops")) return run_ops(argc >= 3 && !strcmp(argv[2], "small"));
    if (argc >= 2 && !strcmp(argv[1], "gemm-shapes")) return run_gemm_shapes(argc, argv);
    fprintf(stderr, "usage: gpu-bench gemm | gen SHAPE N_PROMPTS N_IN N_OUT MAX_SEQS [PEAK_TFLOPS] | ops [small] | "
                    "gemm-shapes SHAPE [M] [fp8]\n");
    return 2;
}
