/* test_cuda.c: the CUDA backend against the CPU backend, through the production entry
 * points (ns_backend_create, the ops vtable, ns_engine_prompt_logits). Without a CUDA
 * build or without a device the comparisons report SKIPPED, never passed; what is
 * checked on every machine is the way in: "cuda" without a device is an error with a
 * message (never a crash) and "auto" falls back to the CPU and says so.
 * The deeper kernel parity run (every op, odd shapes, canaries) is tests/gpu/parity.c.
 */
#include "../test.h"
#include "backend.h"
#include "backend_cuda.h"
#include "engine.h"
#include "ops.h"
#include "tiny_model.h"
#include "forward.h"
#include "gguf.h"
#include "tp_nccl.h"
#include "tp_run.h"

#include <pthread.h>
#include <string.h>

#include <math.h>
#include <stdlib.h>

static int cuda_devices(void) {
#ifdef NS_HAVE_CUDA
    int n = 0;
    (void)ns_backend_cuda_device_count(&n, NULL);
    return n;
#else
    return 0;
#endif
}

NS_TEST(test_cuda_backend_create_without_device) {
    if (cuda_devices() > 0) SKIP("a CUDA device is present (this checks the GPU-less error path)");
    ns_backend *b = NULL;
    ns_error err;
    ns_error_clear(&err);
    ns_status st = ns_backend_create("cuda", 0, &b, NULL, &err);
    CHECK(st != NS_OK);
    CHECK(b == NULL);
    CHECK_MSG(err.msg[0] != '\0', "no error message");
#ifdef NS_HAVE_CUDA
    CHECK_EQ_INT(st, NS_ERR_BACKEND);
    CHECK_MSG(strncmp(err.msg, "no CUDA device: ", 16) == 0, "message: %s", err.msg);
#else
    CHECK_EQ_INT(st, NS_ERR_UNSUPPORTED);
#endif
    ns_backend_destroy(b);
}

NS_TEST(test_cuda_backend_auto_fallback) {
    ns_backend *b = NULL;
    const char *note = NULL;
    ns_error err;
    CHECK_STATUS_OK(ns_backend_create("auto", 1, &b, &note, &err), &err);
    if (!b) return;
    if (cuda_devices() > 0) {
        CHECK(strcmp(b->ops->name, "cuda") == 0);
        CHECK(note == NULL);
    } else {
        CHECK(strcmp(b->ops->name, "cpu") == 0);
        CHECK(note != NULL);
#ifdef NS_HAVE_CUDA
        CHECK_MSG(note && strcmp(note, "backend auto: no CUDA device found; using the CPU") == 0, "note: %s",
                  note ? note : "(null)");
#endif
    }
    ns_backend_destroy(b);
}

/* A weight tensor as the loader hands it to a backend. */
static ns_gguf_tensor make_tensor(const char *name, int type, int64_t ne0, int64_t ne1, const void *data) {
    ns_gguf_tensor t;
    memset(&t, 0, sizeof t);
    t.name.ptr = name;
    t.name.len = strlen(name);
    t.n_dims = 2;
    t.ne[0] = ne0;
    t.ne[1] = ne1;
    t.ne[2] = t.ne[3] = 1;
    t.type = type;
    t.nbytes = ns_ggml_row_bytes(type, ne0) * (uint64_t)ne1;
    t.data = data;
    return t;
}

/* y = op(x) on backend b: uploads x (n_x floats), runs fn, downloads n_y floats. */
typedef void (*op_fn)(ns_backend *b, float *y, const float *x, const ns_bweight *w, void *arg);

static void run_op(ns_backend *b, const ns_gguf_tensor *wt, const float *x, size_t n_x, float *y, size_t n_y, op_fn fn,
                   void *arg) {
    ns_error err;
    ns_bweight *w = NULL;
    float *dx = NULL, *dy = NULL;
    CHECK_STATUS_OK(b->ops->weight_load(b, wt, &w, &err), &err);
    CHECK_STATUS_OK(b->ops->buf_alloc(b, n_x * sizeof(float), (void **)&dx, &err), &err);
    CHECK_STATUS_OK(b->ops->buf_alloc(b, n_y * sizeof(float), (void **)&dy, &err), &err);
    if (w && dx && dy) {
        CHECK_STATUS_OK(b->ops->upload(b, dx, x, n_x * sizeof(float), &err), &err);
        fn(b, dy, dx, w, arg);
        CHECK_STATUS_OK(b->ops->download(b, y, dy, n_y * sizeof(float), &err), &err);
    }
    if (dx) b->ops->buf_free(b, dx);
    if (dy) b->ops->buf_free(b, dy);
    if (w) b->ops->weight_free(b, w);
}

typedef struct { int M, N, K; } mm_arg;
static void mm_fn(ns_backend *b, float *y, const float *x, const ns_bweight *w, void *arg) {
    mm_arg *a = arg;
    b->ops->matmul(b, y, x, w, a->M, a->N, a->K);
}

typedef struct { int n_rows, n; } rms_arg;
static void rms_fn(ns_backend *b, float *y, const float *x, const ns_bweight *w, void *arg) {
    rms_arg *a = arg;
    b->ops->rmsnorm(b, y, x, w, a->n_rows, a->n, 1e-5f);
}

static bool open_both(ns_backend **cpu, ns_backend **gpu) {
    ns_error err;
    *cpu = *gpu = NULL;
    CHECK_STATUS_OK(ns_backend_create("cpu", 1, cpu, NULL, &err), &err);
    CHECK_STATUS_OK(ns_backend_create("cuda", 0, gpu, NULL, &err), &err);
    return *cpu && *gpu;
}

NS_TEST(test_cuda_matmul_rmsnorm_vs_cpu) {
    if (cuda_devices() == 0) SKIP("no CUDA device (or a build without CUDA)");
    ns_backend *cpu, *gpu;
    if (!open_both(&cpu, &gpu)) goto done;
    ns_test_rng rng = {7};
    /* matmul: odd M and N, Q8_0 weights; bf16 inputs on the GPU: NMSE ~1e-5 */
    const int types[] = {NS_GGML_Q8_0, NS_GGML_Q4_1, NS_GGML_F16};
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        mm_arg a = {37, 75, 96};
        float *wf = malloc(sizeof(float) * a.N * a.K), *x = malloc(sizeof(float) * a.M * a.K);
        char *wq = malloc(ns_ggml_row_bytes(types[ti], a.K) * a.N);
        float *y0 = malloc(sizeof(float) * a.M * a.N), *y1 = malloc(sizeof(float) * a.M * a.N);
        for (int i = 0; i < a.N * a.K; i++) wf[i] = ns_test_rng_f32(&rng);
        for (int i = 0; i < a.M * a.K; i++) x[i] = ns_test_rng_f32(&rng);
        for (int r = 0; r < a.N; r++)
            ns_cpu_quantize_row(types[ti], wf + (size_t)r * a.K, wq + ns_ggml_row_bytes(types[ti], a.K) * r, a.K);
        ns_gguf_tensor t = make_tensor("w", types[ti], a.K, a.N, wq);
        run_op(cpu, &t, x, (size_t)a.M * a.K, y0, (size_t)a.M * a.N, mm_fn, &a);
        run_op(gpu, &t, x, (size_t)a.M * a.K, y1, (size_t)a.M * a.N, mm_fn, &a);
        CHECK_ALLCLOSE(y1, y0, (size_t)a.M * a.N, 0.05, 0.02, 1e-4);
        free(wf), free(x), free(wq), free(y0), free(y1);
    }
    /* rmsnorm: fp32 on both sides */
    rms_arg r = {5, 77};
    float w[77], x[5 * 77], y0[5 * 77], y1[5 * 77];
    for (int i = 0; i < 77; i++) w[i] = ns_test_rng_f32(&rng);
    for (int i = 0; i < 5 * 77; i++) x[i] = 3.0f * ns_test_rng_f32(&rng);
    ns_gguf_tensor t = make_tensor("norm", NS_GGML_F32, 77, 1, w);
    run_op(cpu, &t, x, 5 * 77, y0, 5 * 77, rms_fn, &r);
    run_op(gpu, &t, x, 5 * 77, y1, 5 * 77, rms_fn, &r);
    CHECK_ALLCLOSE(y1, y0, 5 * 77, 1e-5, 1e-5, 1e-10);
done:
    ns_backend_destroy(cpu);
    ns_backend_destroy(gpu);
}

/* weight_join (NS_CUDA_FUSED_QKV=1), bf16 and FP8: three matrices of one width joined
 * into one. Each part's matmul after the join gives what it gave before (its rows now
 * inside the joined storage; FP8: its codes and row scales too), the joined matmul's
 * columns are the parts' side by side, and the joined matrix may be freed before the
 * parts. Matrices of different widths are not joined (NULL, no error). */
NS_TEST(test_cuda_weight_join) {
    if (cuda_devices() == 0) SKIP("no CUDA device (or a build without CUDA)");
    enum { M = 5, K = 64, N0 = 48, N1 = 16, N2 = 16, N = N0 + N1 + N2 };
    const int rows[3] = {N0, N1, N2};
    ns_test_rng rng = {11};
    float *wf = malloc(sizeof(float) * N * K), x[M * K];
    for (int i = 0; i < N * K; i++) wf[i] = ns_test_rng_f32(&rng);
    for (int i = 0; i < M * K; i++) x[i] = ns_test_rng_f32(&rng);
    for (int fp8 = 0; fp8 < 2; fp8++) {
        setenv("NS_CUDA_FUSED_QKV", "1", 1);
        ns_backend *b = NULL;
        ns_error err;
        CHECK_STATUS_OK(ns_backend_create("cuda", 0, &b, NULL, &err), &err);
        unsetenv("NS_CUDA_FUSED_QKV");
        if (!b) break;
        CHECK(b->ops->weight_join != NULL && b->ops->qkv_rope != NULL);
        if (!b->ops->weight_join || (fp8 && (!b->ops->use_fp8 || b->ops->use_fp8(b, &err) != NS_OK))) {
            ns_backend_destroy(b);
            continue;
        }
        ns_bweight *parts[3] = {NULL, NULL, NULL}, *joined = NULL, *odd = NULL;
        float *dx = NULL, *dy = NULL, before[3][M * N0], after[M * N0], all[M * N];
        const char *names[3] = {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"};
        int off = 0;
        for (int i = 0; i < 3; i++) {
            ns_gguf_tensor t = make_tensor(names[i], NS_GGML_F32, K, rows[i], wf + (size_t)off * K);
            CHECK_STATUS_OK(b->ops->weight_load(b, &t, &parts[i], &err), &err);
            off += rows[i];
        }
        ns_gguf_tensor t_odd = make_tensor("blk.0.ffn_down.weight", NS_GGML_F32, K / 2, 16, wf);
        CHECK_STATUS_OK(b->ops->weight_load(b, &t_odd, &odd, &err), &err);
        CHECK_STATUS_OK(b->ops->buf_alloc(b, sizeof x, (void **)&dx, &err), &err);
        CHECK_STATUS_OK(b->ops->buf_alloc(b, sizeof all, (void **)&dy, &err), &err);
        if (!parts[0] || !parts[1] || !parts[2] || !odd || !dx || !dy) goto next;
        CHECK_STATUS_OK(b->ops->upload(b, dx, x, sizeof x, &err), &err);
        for (int i = 0; i < 3; i++) {
            b->ops->matmul(b, dy, dx, parts[i], M, rows[i], K);
            CHECK_STATUS_OK(b->ops->download(b, before[i], dy, sizeof(float) * M * rows[i], &err), &err);
        }
        ns_bweight *mixed[2] = {parts[0], odd};
        ns_bweight *none = (ns_bweight *)1;
        CHECK_STATUS_OK(b->ops->weight_join(b, mixed, 2, &none, &err), &err);
        CHECK_MSG(none == NULL, "%s: matrices of widths %d and %d joined", fp8 ? "fp8" : "bf16", K, K / 2);
        CHECK_STATUS_OK(b->ops->weight_join(b, parts, 3, &joined, &err), &err);
        CHECK_MSG(joined != NULL, "%s: not joined", fp8 ? "fp8" : "bf16");
        if (!joined) goto next;
        for (int i = 0; i < 3; i++) { /* each part as before */
            b->ops->matmul(b, dy, dx, parts[i], M, rows[i], K);
            CHECK_STATUS_OK(b->ops->download(b, after, dy, sizeof(float) * M * rows[i], &err), &err);
            CHECK_ALLCLOSE(after, before[i], (size_t)M * rows[i], 1e-6, 1e-5, 1e-12);
        }
        b->ops->matmul(b, dy, dx, joined, M, N, K); /* the parts side by side */
        CHECK_STATUS_OK(b->ops->download(b, all, dy, sizeof all, &err), &err);
        for (int i = 0, col = 0; i < 3; col += rows[i], i++)
            for (int m = 0; m < M; m++)
                for (int n = 0; n < rows[i]; n++) {
                    const float got = all[m * N + col + n], want = before[i][m * rows[i] + n];
                    if (!(fabsf(got - want) <= 1e-6f + 1e-5f * fabsf(want))) {
                        CHECK_MSG(0, "%s joined: row %d column %d: %g, the part's %g", fp8 ? "fp8" : "bf16", m,
                                  col + n, (double)got, (double)want);
                        m = M, n = rows[i];
                    }
                }
        b->ops->weight_free(b, joined); /* before the parts: they free only what is theirs */
    next:
        if (dx) b->ops->buf_free(b, dx);
        if (dy) b->ops->buf_free(b, dy);
        for (int i = 0; i < 3; i++)
            if (parts[i]) b->ops->weight_free(b, parts[i]);
        if (odd) b->ops->weight_free(b, odd);
        ns_backend_destroy(b);
    }
    free(wf);
}

/* The whole forward pass of a tiny model: prompt logits on the CPU and on CUDA. */
NS_TEST(test_cuda_tiny_model_logits_vs_cpu) {
    if (cuda_devices() == 0) SKIP("no CUDA device (or a build without CUDA)");
    char path[512];
    snprintf(path, sizeof path, "%s/tiny_cuda.gguf", ns_test_tmpdir());
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    c.wtype = NS_GGML_Q8_0;
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    int32_t prompt[45];
    for (int i = 0; i < 45; i++) prompt[i] = (i * 37 + 11) % NS_TINY_N_VOCAB;
    float *logits[2] = {calloc(NS_TINY_N_VOCAB, sizeof(float)), calloc(NS_TINY_N_VOCAB, sizeof(float))};
    const char *names[2] = {"cpu", "cuda"};
    for (int k = 0; k < 2; k++) {
        ns_engine_config cfg;
        ns_engine_config_default(&cfg);
        cfg.model_path = path;
        cfg.backend = names[k];
        cfg.n_threads = 2;
        cfg.max_batch_tokens = 16; /* three prompt chunks: prefill over cached blocks */
        cfg.max_seqs = 4;
        ns_engine *e = NULL;
        CHECK_STATUS_OK(ns_engine_open(&cfg, &e, NULL, &err), &err);
        if (!e) continue;
        CHECK(strcmp(ns_engine_backend_name(e), names[k]) == 0);
        CHECK_STATUS_OK(ns_engine_prompt_logits(e, prompt, 45, logits[k], &err), &err);
        ns_engine_close(e);
    }
    CHECK_ALLCLOSE(logits[1], logits[0], NS_TINY_N_VOCAB, 0.05, 0.05, 1e-3);
    free(logits[0]);
    free(logits[1]);
}

/* ---- tensor parallelism over NCCL ---- */

/* One rank of the tiny model on its CUDA backend: 8 greedy tokens and the first logits. */
typedef struct nccl_rank_run {
    const char *path;
    int rank, n_ranks;
    ns_backend *b; /* created by the caller (NCCL needs the backends first) */
    ns_tp *tp;
    int32_t out[8];
    float logits[NS_TINY_N_VOCAB];
    ns_status st;
    char err[600];
} nccl_rank_run;

static __attribute__((unused)) void *nccl_rank_main(void *arg) {
    nccl_rank_run *t = arg;
    const int32_t prompt[9] = {72, 101, 108, 108, 111, 32, 116, 104, 101};
    ns_error err;
    ns_error_clear(&err);
    t->st = ns_test_tp_greedy(t->path, t->b, t->rank, t->n_ranks, t->tp, prompt, 9, 8, t->out, t->logits, &err);
    if (t->st) snprintf(t->err, sizeof t->err, "rank %d: %s", t->rank, err.msg);
    return NULL;
}

/* Defined only in build/unit-cudamock, whose "device" is the CPU stand-in. */
int ns_cudamock_active(void) __attribute__((weak));

NS_TEST(test_cuda_tp_nccl_equals_tp1) {
    if (cuda_devices() == 0) SKIP("no CUDA device (or a build without CUDA)");
    if (ns_cudamock_active) SKIP("the device is the CPU stand-in (tests/cudamock): NCCL needs a real one");
#ifdef NS_HAVE_CUDA
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    c.wtype = NS_GGML_F32;
    c.tied = 0;
    char path[512];
    snprintf(path, sizeof path, "%s/tiny_nccl.gguf", ns_test_tmpdir());
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    /* TP=1 without a communicator */
    nccl_rank_run one = {.path = path, .n_ranks = 1};
    CHECK_STATUS_OK(ns_backend_cuda_create(0, &one.b, &err), &err);
    if (!one.b) return;
    nccl_rank_main(&one);
    CHECK_MSG(one.st == NS_OK, "%s", one.err);
    ns_backend_destroy(one.b);
    /* the NCCL path with as many ranks as devices (1 on a one-GPU machine: NCCL's
     * all-reduce of one rank, in place, must leave every value as it was) */
    int n = cuda_devices() >= 2 ? 2 : 1;
    nccl_rank_run r[2];
    ns_backend *bs[2] = {NULL, NULL};
    for (int i = 0; i < n; i++) CHECK_STATUS_OK(ns_backend_cuda_create(i, &bs[i], &err), &err);
    ns_tp_nccl *g = NULL;
    ns_status st = ns_tp_nccl_create(bs, n, &g, &err);
    if (st == NS_ERR_UNSUPPORTED) {
        for (int i = 0; i < n; i++) ns_backend_destroy(bs[i]);
        static char why[600];
        snprintf(why, sizeof why, "%s", err.msg);
        SKIP(why);
    }
    CHECK_STATUS_OK(st, &err);
    if (g) {
        printf("  NCCL %s, %d rank(s)\n", ns_tp_nccl_version(g) ? ns_tp_nccl_version(g) : "?", n);
        pthread_t th[2];
        for (int i = 0; i < n; i++) {
            r[i] = (nccl_rank_run){.path = path, .rank = i, .n_ranks = n, .b = bs[i], .tp = ns_tp_nccl_rank(g, i)};
            CHECK(pthread_create(&th[i], NULL, nccl_rank_main, &r[i]) == 0);
        }
        for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < n; i++) {
            CHECK_MSG(r[i].st == NS_OK, "%s", r[i].err);
            if (r[i].st || one.st) continue;
            for (int k = 0; k < 8; k++) CHECK_EQ_INT(r[i].out[k], one.out[k]);
            if (n == 1) /* one rank: bit for bit */
                CHECK(memcmp(r[i].logits, one.logits, sizeof one.logits) == 0);
            else
                CHECK_ALLCLOSE(r[i].logits, one.logits, NS_TINY_N_VOCAB, 0.05, 0.05, 1e-3);
        }
    }
    ns_tp_nccl_destroy(g);
    for (int i = 0; i < n; i++) ns_backend_destroy(bs[i]);
#endif
}
