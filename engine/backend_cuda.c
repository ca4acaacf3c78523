/* backend_cuda.c: the CUDA backend (engine/backend.h) over kernels/cuda and cuBLAS.
 * Built only with NS_HAVE_CUDA (make defines it when nvcc is found); otherwise this file
 * is empty and ns_backend_create says there is no CUDA backend.
 *
 * Memory: every buffer is device memory from cudaMalloc, zeroed. Weight matrices are
 * dequantized on the device to bf16 at load (the file's rows are uploaded once, then
 * ns_cuda_dequant_row); vectors (norms, biases) are fp32. Activations are fp32; a matmul
 * converts its input to bf16 into a scratch buffer and calls cublasGemmEx with bf16
 * inputs, fp32 output and fp32 accumulation (CUBLAS_COMPUTE_32F).
 * Batch: batch_set packs the host arrays (tokens, positions, per-token sequence and KV
 * slot, logit rows, block tables) into one pinned buffer, checks every block id the ops
 * can reach, and copies it to the device in one transfer on the backend's stream.
 * Errors: every CUDA and cuBLAS return code is checked. The ops return void, so an op
 * that fails records the first error in the context ("sticky") and the next batch_set or
 * download returns it as NS_ERR_BACKEND naming the op; an out-of-memory at allocation
 * says how much was needed and how much was free (cudaMemGetInfo).
 * Device state (stream, cuBLAS handle, event, buffers) lives in the context, no globals.
 * Sampling runs on the device: argmax_rows for greedy steps, sample_rows (top_k, top_p,
 * min_p, temperature; kernels/cpu/sample_rule.h) for the others: a step returns one int
 * per sequence instead of a row of logits.
 * KV pool in bf16 (attention at decode is bound by reading it).
 * NS_CUDA_PRECISE=1 (tests): each matmul input is split into bf16 hi + lo parts and
 * multiplied twice, and the KV pool is fp32, so results match the CPU's fp32 ones to
 * ~1e-5 and greedy tokens can be compared exactly; twice the GEMM work.
 * NS_CUDA_PROFILE=1: device time per op and host time, printed at destroy (see prof).
 * NS_CUDA_GRAPHS=1: decode batches are padded to a few sizes and each size's forward
 * pass is recorded once as a CUDA graph and replayed (see "CUDA graphs" below). Off by
 * default until a GPU run has checked it (tests/gpu/run.sh).
 * precision fp8 (use_fp8; never in precise mode; compute capability 8.9 or later): the layers'
 * weight matrices (tensors "blk.*", rows a multiple of 16 wide, a multiple of 16 rows)
 * are stored as FP8 E4M3 with a scale per output row, each matmul input is quantized per
 * token the same way (ns_cuda_quant_rows_fp8, kernels/cpu/fp8.h), and cuBLASLt
 * multiplies them (fp32 accumulation, output fp32 or bf16), the two scale vectors applied
 * in the first of three ways the device's cuBLASLt has (LT_OUTER, LT_BLOCK, LT_RAW below;
 * NS_CUDA_FP8_GEMM=outer|block|raw keeps one). The token embedding and the output head
 * stay bf16. Twice the tensor-core rate of bf16 on Hopper, at a cost in accuracy that
 * test_cudamock_fp8_demo_model_accuracy measures against the golden logits. Off by
 * default: it changes results. Where cuBLASLt has the scaled forms with bf16 output only,
 * fp32 results are written as bf16 and widened. On an H100 it ran, unscaled plus the
 * scaling pass, slower than bf16 (tests/gpu/RESULTS.md, run 9).
 * Not yet: batch invariance (cuBLAS picks its algorithm by shape), the quantized-weight
 * GEMV for small batches.
 */
#ifdef NS_HAVE_CUDA

#include "backend_cuda.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp8.h"
#include "ops_cuda.h"
#include "sample_rule.h"
#include "switches.h"

/* Recordings kept (row counts; each holds one forward pass of a few hundred nodes). */
#define NS_CUDA_MAX_GRAPHS 48
/* cuBLAS workspace given at creation (Hopper's recommended size). */
#define NS_CUDA_CUBLAS_WS (32u << 20)
/* cuBLASLt plans (layouts and algorithm) kept for FP8 GEMM shapes (precision fp8). */
#define NS_CUDA_LT_PLANS 256

_Static_assert((int)NS_CUDA_TYPE_F32 == (int)NS_GGML_F32 && (int)NS_CUDA_TYPE_F16 == (int)NS_GGML_F16 &&
                   (int)NS_CUDA_TYPE_BF16 == (int)NS_GGML_BF16 && (int)NS_CUDA_TYPE_Q8_0 == (int)NS_GGML_Q8_0 &&
                   (int)NS_CUDA_TYPE_Q4_0 == (int)NS_GGML_Q4_0 && (int)NS_CUDA_TYPE_Q4_1 == (int)NS_GGML_Q4_1,
               "kernels/cuda/ops_cuda.h type values must match ns_ggml_type");

struct ns_bweight {
    void *data;     /* device: (ne1, ne0) bf16 for matrices, (ne0) fp32 for vectors; NULL when fp8 */
    uint8_t *fp8;   /* precision fp8, layer matrices: (ne1, ne0) e4m3, row r times fp8_scale[r] */
    float *fp8_scale; /* (ne1) */
    float *fp8_scale_blk; /* cuBLASLt's 128-block scales (lt_on[LT_BLOCK]): fp8_scale[r] for each of row r's
                           * ceil(ne0 / 128) blocks, in the layout the setup's probe found */
    int64_t ne0, ne1;
    bool is_bf16;   /* a matrix (bf16, or fp8 when fp8 is set); false: an fp32 vector */
    bool joined;    /* its rows (data, or fp8 and fp8_scale) live in a joined matrix's storage
                     * (weight_join), which frees them; fp8_scale_blk stays its own */
};

/* How an FP8 GEMM applies the two row-scale vectors (precision fp8). cuBLASLt's
 * outer-vector scales do it in the GEMM (sm_90; an H100 refused them when queried without
 * scale pointers, see fp8_setup). Its 128-block scales (one per row and 128-wide block of
 * K) do the same product when each row's blocks all take the row's scale (the vectors
 * expanded, ns_cuda_expand_scales). Last, an unscaled FP8 GEMM with fp32 output and a
 * pass that multiplies each sum by its two scales (ns_cuda_scale_outer), which costs a
 * read and a write of the output. Each GEMM shape takes the first that cuBLASLt has an
 * algorithm for. */
enum { LT_OUTER, LT_BLOCK, LT_RAW, LT_MODES };
static const char *const lt_mode_name[LT_MODES] = {"outer-vector scales", "128-block scales",
                                                    "unscaled, then a scaling pass"};

/* One FP8 GEMM shape's cuBLASLt layouts and the algorithm its heuristic chose. */
typedef struct lt_plan {
    int M, N, K, mode;
    cudaDataType y_type;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
} lt_plan;

/* ---- profile (NS_CUDA_PROFILE=1): device time per op, from events between ops ----
 * Each op records an event before its launch; at the next synchronizing call the time
 * from one event to the next is added to the op's total (so an op also owns any device
 * idle time after it). Host time is split into waiting for the device and the rest.
 * Printed to stderr when the backend is destroyed. */
enum { P_BATCH, P_EMBED, P_RMSNORM, P_CONVERT, P_GEMM, P_BIAS, P_ROPE, P_KV_STORE, P_ATTENTION, P_SWIGLU, P_ADD,
       P_GATHER, P_ARGMAX, P_SAMPLE, P_DOWNLOAD, P_N };
static const char *const prof_names[P_N] = {"batch upload", "embed", "rmsnorm", "to bf16/fp8", "gemm (cuBLAS)",
                                            "add_bias", "rope", "kv_store", "attention", "swiglu", "add",
                                            "gather rows", "argmax", "sample", "download"};
#define PROF_MAX 4096
typedef struct prof {
    bool on;
    int n;
    cudaEvent_t ev[PROF_MAX + 1];
    int op[PROF_MAX];
    bool decode;      /* the current batch is decode tokens only */
    double ms[2][P_N]; /* [0]: batches with prompt tokens, [1]: decode-only batches */
    long calls[2][P_N];
    long batches[2];
    double host_wait_s, host_other_s, t_sync_end, t_created;
    long n_syncs;
} prof;

typedef struct cuda_backend {
    ns_backend base;
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    cudaEvent_t batch_copied; /* the pinned batch buffer may be rewritten once this fired */
    /* KV pool: (n_layer) device pointers, each (n_blocks, block_size, n_head_kv, head_dim)
     * of kv_type (bf16; fp32 in precise mode; e4m3 codes with use_kv_fp8, then with
     * k_scale / v_scale: (n_layer) pointers, each (n_blocks, block_size, n_head_kv) fp32) */
    ns_kv_shape kv;
    int kv_type;
    void **k_pool;
    void **v_pool;
    float **k_scale;
    float **v_scale;
    int kv_n_head; /* use_kv_fp8's n_head (the attention kernel's group size with n_head_kv) */
    /* the current batch: one pinned host buffer and its device copy, int32 each */
    int32_t *h_batch, *d_batch;
    size_t batch_cap; /* int32 elements */
    int n_tokens, n_seqs, n_logits, max_blocks_per_seq;
    const int32_t *d_tokens, *d_pos, *d_tok_seq, *d_slot, *d_logit_rows, *d_block_table, *d_groups;
    int n_groups;
    /* bf16 copy of a matmul input: (max rows, max_k); precise mode: its remainder too */
    uint16_t *x_bf16, *x_lo;
    size_t x_bf16_cap; /* elements */
    bool precise;      /* NS_CUDA_PRECISE=1: each matmul as W.hi + W.lo (tests against the CPU) */
    /* picked ids and per-row sampling parameters on the device (ids_cap rows); picks
     * launched and not yet waited for (pick_launch / pick_wait): a ring of two, each with
     * pinned host copies of its ids and parameters and the event of its copy back */
    int32_t *d_ids;
    ns_row_sampling *d_samp;
    int ids_cap;
    struct {
        int32_t *h_ids;
        ns_row_sampling *h_samp;
        int cap, n;
        cudaEvent_t done;
    } pick[2];
    int pick_head, pick_count; /* the oldest pick not waited for; how many */
    int pick_last_n;           /* rows of the last launched pick, whose ids a batch may name */
    int64_t max_k;     /* widest weight row seen at load */
    /* the matmul input most recently converted to bf16 (reused by the next matmul of the same
     * input, e.g. q/k/v or gate/up; any other op clears it, since it might write there) */
    const float *x_bf16_src;
    size_t x_bf16_n;
    int n_weights; /* loaded so far (use_fp8 comes before the first) */
    /* precision fp8 (use_fp8): the matmul input as e4m3 rows (x_bf16_cap bytes) and their scales
     * (x_bf16_cap / 16 + 1: an fp8 row is at least 16 wide), the input they were made from
     * (as x_bf16_src), and cuBLASLt */
    bool fp8;
    bool all_fp8; /* every layer matrix is fp8: an op whose output feeds one may write fp8 rows only */
    uint8_t *x_fp8;
    float *x_scale;
    const float *x_fp8_src;
    size_t x_fp8_n;
    cublasLtHandle_t lt;
    cublasLtMatmulDesc_t lt_desc[LT_MODES]; /* one per way of scaling (LT_OUTER ...) */
    bool lt_on[LT_MODES];                    /* the ways the setup found here (or NS_CUDA_FP8_GEMM chose) */
    float *lt_scale_stub; /* what the scaled descriptors' scale pointers hold until a GEMM sets them (see fp8_setup) */
    bool blk_kb_major[2];                    /* 128-block scale layouts of A (the weight) and B (the input) */
    /* the input's 128-block scales (x_scale expanded; lt_on[LT_BLOCK]): valid for x_blk_rows
     * rows and x_blk_kb blocks until x_scale is written again */
    float *x_scale_blk;
    bool x_blk_valid;
    int x_blk_rows, x_blk_kb;
    long lt_calls[LT_MODES][2]; /* FP8 GEMMs run per way of scaling, bf16 [0] and fp32 [1] output (profile) */
    /* the unscaled GEMM's fp32 sums (LT_RAW), y_raw_cap floats, sized by batch_set */
    float *y_raw;
    size_t y_raw_cap;
    cublasLtMatmulPreference_t lt_pref;
    lt_plan *lt_plans; /* NS_CUDA_LT_PLANS, n_lt_plans used; replaced round robin */
    int n_lt_plans, lt_next;
    /* when cuBLASLt has no fp32 output for this form (the setup's probe): fp32 results go
     * through bf16, written to y_bf16 (y_bf16_cap elements, sized by batch_set for the
     * widest fp8 weight, max_n_fp8 rows) and widened */
    bool lt_bf16_only;
    int64_t max_n_fp8;
    uint16_t *y_bf16;
    size_t y_bf16_cap;
    prof prof; /* NS_CUDA_PROFILE=1 */
    ns_backend_ops ops; /* cuda_ops, with gate_up_swiglu (NS_CUDA_FUSED_FFN=1), add_rmsnorm (NS_CUDA_FUSED_NORM=1),
                         * weight_join and qkv_rope (NS_CUDA_FUSED_QKV=1) */
    /* CUDA graphs (NS_CUDA_GRAPHS=1): decode batches padded to a row count, one recorded
     * forward pass per count. gen changes whenever a buffer a recording points into is
     * reallocated (the batch layout, the bf16 matmul input, the KV pool): a recording of an
     * older gen is dropped. */
    bool graphs_on;
    int pad_block;    /* the KV block padding rows write to and read: one past the engine's */
    int graph_rows;   /* this batch's padded row count; 0: not a padded decode batch */
    unsigned gen;
    struct {
        int rows;            /* 0: free */
        unsigned gen;
        int n_seen;          /* batches of this size seen (recorded on the second) */
        cudaGraphExec_t exec;
    } graph[NS_CUDA_MAX_GRAPHS];
    int capturing;           /* index into graph while recording, else -1 */
    void *cublas_ws;         /* cuBLAS workspace: no allocation inside a recording */
    /* first error of an op, returned by the next batch_set / download */
    ns_status sticky;
    ns_error sticky_err;
} cuda_backend;

static cuda_backend *cb(ns_backend *b) { return (cuda_backend *)b; }

static void prof_mark(cuda_backend *c, int op) {
    prof *p = &c->prof;
    if (!p->on || p->n >= PROF_MAX) return;
    if (p->n == 0 && p->t_sync_end > 0) p->host_other_s += ns_time_now() - p->t_sync_end;
    if (cudaEventRecord(p->ev[p->n], c->stream) != cudaSuccess) return;
    p->op[p->n++] = op;
}

/* Synchronizes the stream (the caller's sync), attributing the marked intervals. */
static cudaError_t prof_sync(cuda_backend *c) {
    prof *p = &c->prof;
    if (!p->on) return cudaStreamSynchronize(c->stream);
    if (p->n > 0) cudaEventRecord(p->ev[p->n], c->stream);
    double t0 = ns_time_now();
    cudaError_t e = cudaStreamSynchronize(c->stream);
    p->t_sync_end = ns_time_now();
    p->host_wait_s += p->t_sync_end - t0;
    p->n_syncs++;
    for (int i = 0; e == cudaSuccess && i < p->n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]) == cudaSuccess)
            p->ms[p->decode][p->op[i]] += ms, p->calls[p->decode][p->op[i]]++;
    }
    p->n = 0;
    return e;
}

static void prof_report(cuda_backend *c) {
    prof *p = &c->prof;
    if (!p->on) goto destroy;
    fprintf(stderr, "cuda profile (device %d): %ld syncs; host %.2f s waiting for the device, %.2f s between a sync "
                    "and the next op\n",
            c->device, p->n_syncs, p->host_wait_s, p->host_other_s);
    for (int k = 0; k < 2; k++) {
        double total = 0;
        for (int i = 0; i < P_N; i++) total += p->ms[k][i];
        fprintf(stderr, "  %s batches: %ld, %.1f ms of device time (%.2f ms per batch)\n",
                k ? "decode-only" : "with prompt tokens", p->batches[k], total,
                p->batches[k] ? total / p->batches[k] : 0.0);
        for (int i = 0; i < P_N; i++)
            if (p->calls[k][i])
                fprintf(stderr, "    %-14s %8ld calls %10.1f ms %5.1f%% %8.3f ms per batch\n", prof_names[i],
                        p->calls[k][i], p->ms[k][i], total > 0 ? 100.0 * p->ms[k][i] / total : 0.0,
                        p->batches[k] ? p->ms[k][i] / p->batches[k] : 0.0);
    }
    if (c->fp8)
        for (int m = 0; m < LT_MODES; m++)
            if (c->lt_calls[m][0] + c->lt_calls[m][1])
                fprintf(stderr, "  fp8 GEMMs with %s: %ld with bf16 output, %ld with fp32 output\n", lt_mode_name[m],
                        c->lt_calls[m][0], c->lt_calls[m][1]);
destroy:
    for (int i = 0; i <= PROF_MAX; i++)
        if (p->ev[i]) cudaEventDestroy(p->ev[i]);
}

/* Any op other than matmul may write the buffer whose bf16 (or fp8) copy is kept: forget it. */
static void x_forget(cuda_backend *c) { c->x_bf16_src = c->x_fp8_src = NULL; }

/* A matmul wrote y: a kept copy of y is stale. */
static void x_written(cuda_backend *c, const void *y) {
    if ((const void *)c->x_bf16_src == y) c->x_bf16_src = NULL;
    if ((const void *)c->x_fp8_src == y) c->x_fp8_src = NULL;
}

/* For an op whose output (n floats at out) usually feeds a matmul next: where the bf16
 * copy of that output goes (the matmul input buffer), so the matmul skips converting it;
 * NULL (and the copy forgotten) in precise mode or when it does not fit. */
static uint16_t *x_shadow(cuda_backend *c, const float *out, size_t n) {
    if (c->precise || n > c->x_bf16_cap) {
        x_forget(c);
        return NULL;
    }
    c->x_bf16_src = out;
    c->x_bf16_n = n;
    c->x_fp8_src = NULL;
    return c->x_bf16;
}

/* precision fp8 with every layer matrix in fp8: an op whose output (n_rows, n) feeds the
 * next layer matmul writes it as that matmul's input, fp8 rows and their scales (x_fp8,
 * x_scale), and x_to_fp8 then has nothing to do; false when it cannot (the op writes its
 * bf16 copy instead, x_shadow). */
static bool x_shadow_fp8(cuda_backend *c, const float *out, int n_rows, int n) {
    const size_t N = (size_t)n_rows * (size_t)n;
    if (!c->fp8 || !c->all_fp8 || N > c->x_bf16_cap || n % 16) return false; /* n_rows <= cap / 16 */
    c->x_bf16_src = NULL;
    c->x_fp8_src = out;
    c->x_fp8_n = N;
    c->x_blk_valid = false;
    return true;
}

/* ---- errors ---- */

static ns_status cuda_fail(ns_error *err, cudaError_t e, const char *what) {
    return ns_error_set(err, NS_ERR_BACKEND, "cuda backend: %s: %s (%s)", what, cudaGetErrorString(e),
                        cudaGetErrorName(e));
}

static ns_status cublas_fail(ns_error *err, cublasStatus_t s, const char *what) {
    return ns_error_set(err, NS_ERR_BACKEND, "cuda backend: %s: cuBLAS %s", what, cublasGetStatusString(s));
}

#define CUDA_TRY(call, what)                                                             \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess) return cuda_fail(err, e_, (what));                        \
    } while (0)

/* An op's failure: kept (the first one) for the next call that can return a status.
 * Out of memory is kept as NS_ERR_NOMEM, which the engine answers by retrying the step
 * with a smaller batch. */
static void op_check(cuda_backend *c, cudaError_t e, const char *op) {
    if (e == cudaSuccess || c->sticky) return;
    c->sticky = cuda_fail(&c->sticky_err, e, op);
    if (e == cudaErrorMemoryAllocation) c->sticky = c->sticky_err.code = NS_ERR_NOMEM;
}

/* Returns the recorded error. An out-of-memory error is returned once and then cleared:
 * the step it spoiled is discarded and run again smaller; other errors stay. */
static ns_status sticky_status(cuda_backend *c, ns_error *err) {
    if (!c->sticky) return NS_OK;
    if (err) *err = c->sticky_err;
    ns_status st = c->sticky;
    if (st == NS_ERR_NOMEM) {
        (void)cudaStreamSynchronize(c->stream); /* the spoiled step's work is done before the retry */
        c->sticky = NS_OK;
    }
    return st;
}

/* cudaMalloc + zero; out of memory names what, how much was needed and how much was free. */
static ns_status dev_alloc(cuda_backend *c, size_t nbytes, const char *what, void **out, ns_error *err) {
    *out = NULL;
    cudaError_t e = cudaMalloc(out, nbytes ? nbytes : 256);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError(); /* not sticky: clear it */
        size_t n_free = 0, n_total = 0;
        cudaError_t e2 = cudaMemGetInfo(&n_free, &n_total);
        if (e2 != cudaSuccess)
            return ns_error_set(err, NS_ERR_NOMEM,
                                "cuda backend: out of device memory for %s on device %d: needed %zu bytes "
                                "(free memory unknown: %s)",
                                what, c->device, nbytes, cudaGetErrorString(e2));
        return ns_error_set(err, NS_ERR_NOMEM,
                            "cuda backend: out of device memory for %s on device %d: needed %zu bytes (%.1f MiB), "
                            "%zu free of %zu (%.1f of %.1f MiB)",
                            what, c->device, nbytes, nbytes / 1048576.0, n_free, n_total, n_free / 1048576.0,
                            n_total / 1048576.0);
    }
    if (e != cudaSuccess) return cuda_fail(err, e, what);
    e = cudaMemsetAsync(*out, 0, nbytes ? nbytes : 256, c->stream);
    if (e != cudaSuccess) {
        cudaFree(*out);
        *out = NULL;
        return cuda_fail(err, e, "cudaMemsetAsync");
    }
    return NS_OK;
}

/* ---- memory ---- */

static ns_status cuda_buf_alloc(ns_backend *b, size_t nbytes, void **out, ns_error *err) {
    cuda_backend *c = cb(b);
    CUDA_TRY(cudaSetDevice(c->device), "cudaSetDevice");
    return dev_alloc(c, nbytes, "an activation buffer", out, err);
}

static void cuda_buf_free(ns_backend *b, void *p) {
    (void)b;
    if (p) cudaFree(p); /* errors here are sticky ones already reported elsewhere */
}

static ns_status cuda_upload(ns_backend *b, void *dst, const void *src, size_t n, ns_error *err) {
    cuda_backend *c = cb(b);
    x_forget(c);
    /* from pageable memory this returns once src has been staged: the caller may reuse it */
    CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->stream), "upload (cudaMemcpyAsync)");
    return NS_OK;
}

static ns_status cuda_download(ns_backend *b, void *dst, const void *src, size_t n, ns_error *err) {
    cuda_backend *c = cb(b);
    ns_status st = sticky_status(c, err);
    if (st) return st;
    prof_mark(c, P_DOWNLOAD);
    CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c->stream), "download (cudaMemcpyAsync)");
    CUDA_TRY(prof_sync(c), "download (cudaStreamSynchronize)");
    return sticky_status(c, err);
}

/* ---- weights ---- */

static void cuda_weight_free(ns_backend *b, ns_bweight *w) {
    (void)b;
    if (!w) return;
    if (!w->joined) {
        if (w->data) cudaFree(w->data);
        if (w->fp8) cudaFree(w->fp8);
        if (w->fp8_scale) cudaFree(w->fp8_scale);
    }
    if (w->fp8_scale_blk) cudaFree(w->fp8_scale_blk);
    free(w);
}

static ns_status cuda_weight_load(ns_backend *b, const ns_gguf_tensor *t, ns_bweight **out, ns_error *err) {
    cuda_backend *c = cb(b);
    *out = NULL;
    size_t row_bytes = ns_ggml_row_bytes(t->type, t->ne[0]);
    if (row_bytes == 0)
        return ns_error_set(err, NS_ERR_UNSUPPORTED, "cuda backend: tensor '%.*s' type %d is not supported",
                            (int)NS_MIN(t->name.len, 96), t->name.ptr, t->type);
    CUDA_TRY(cudaSetDevice(c->device), "cudaSetDevice");
    int64_t n_rows = t->ne[1] * t->ne[2] * t->ne[3];
    bool is_matrix = t->ne[1] > 1;
    ns_bweight *w = calloc(1, sizeof *w);
    if (!w) return ns_error_set(err, NS_ERR_NOMEM, "cuda backend: out of host memory");
    w->ne0 = t->ne[0];
    w->ne1 = n_rows;
    w->is_bf16 = is_matrix;
    /* precision fp8: the layers' matrices as e4m3 rows (FP8 GEMMs want K and N multiples of
     * 16: rows of 16-byte multiples, aligned tiles) */
    const bool is_layer = is_matrix && t->name.len > 4 && !memcmp(t->name.ptr, "blk.", 4);
    const bool as_fp8 = c->fp8 && is_layer && t->ne[0] % 16 == 0 && n_rows % 16 == 0;
    if (c->fp8 && is_layer && !as_fp8) c->all_fp8 = false;
    if (as_fp8 && n_rows > c->max_n_fp8) c->max_n_fp8 = n_rows;
    char what[160];
    snprintf(what, sizeof what, "tensor '%.*s' (%lld x %lld, %s)", (int)NS_MIN(t->name.len, 96), t->name.ptr,
             (long long)n_rows, (long long)t->ne[0], as_fp8 ? "fp8" : is_matrix ? "bf16" : "f32");
    size_t n_elem = (size_t)w->ne0 * (size_t)n_rows;
    void *raw = NULL, *f32 = NULL;
    ns_status st;
    if (as_fp8) {
        st = dev_alloc(c, n_elem, what, (void **)&w->fp8, err);
        if (!st) st = dev_alloc(c, (size_t)n_rows * sizeof(float), what, (void **)&w->fp8_scale, err);
        if (!st && c->lt_on[LT_BLOCK])
            st = dev_alloc(c, (size_t)n_rows * (size_t)((t->ne[0] + 127) / 128) * sizeof(float), what,
                           (void **)&w->fp8_scale_blk, err);
        if (!st) st = dev_alloc(c, n_elem * sizeof(float), "a weight matrix in fp32 (staging its fp8 rows)", &f32,
                                err);
    } else {
        st = dev_alloc(c, n_elem * (is_matrix ? 2 : 4), what, &w->data, err);
    }
    if (st) goto fail;
    snprintf(what, sizeof what, "the file rows of tensor '%.*s' (staging)", (int)NS_MIN(t->name.len, 96),
             t->name.ptr);
    if ((st = dev_alloc(c, row_bytes * (size_t)n_rows, what, &raw, err))) goto fail;
    cudaError_t e = cudaMemcpyAsync(raw, t->data, row_bytes * (size_t)n_rows, cudaMemcpyHostToDevice, c->stream);
    if (e == cudaSuccess && as_fp8)
        e = ns_cuda_dequant_row(t->type, raw, row_bytes, f32, NS_CUDA_TYPE_F32, n_rows, t->ne[0], c->stream);
    if (e == cudaSuccess && as_fp8)
        e = ns_cuda_quant_rows_fp8(w->fp8, w->fp8_scale, f32, NS_CUDA_TYPE_F32, n_rows, t->ne[0], c->stream);
    if (e == cudaSuccess && w->fp8_scale_blk)
        e = ns_cuda_expand_scales(w->fp8_scale_blk, w->fp8_scale, n_rows, (int)((t->ne[0] + 127) / 128),
                                  c->blk_kb_major[0], c->stream);
    if (e == cudaSuccess && !as_fp8)
        e = ns_cuda_dequant_row(t->type, raw, row_bytes, w->data, is_matrix ? NS_CUDA_TYPE_BF16 : NS_CUDA_TYPE_F32,
                                n_rows, t->ne[0], c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
        st = cuda_fail(err, e, "weight_load (upload and dequantize)");
        goto fail;
    }
    cudaFree(raw);
    if (f32) cudaFree(f32);
    if (is_matrix && w->ne0 > c->max_k) c->max_k = w->ne0;
    c->n_weights++;
    *out = w;
    return NS_OK;
fail:
    if (raw) cudaFree(raw);
    if (f32) cudaFree(f32);
    cuda_weight_free(b, w);
    return st;
}

/* NS_CUDA_FUSED_QKV=1: the parts' rows copied into one matrix, in order; each part then
 * points into it (joined). Matrices of one width and one form (bf16, or fp8 with its row
 * scales) only; others are left apart (*out NULL). */
static ns_status cuda_weight_join(ns_backend *b, ns_bweight *const *parts, int n, ns_bweight **out, ns_error *err) {
    cuda_backend *c = cb(b);
    *out = NULL;
    if (n < 1) return NS_OK;
    const int64_t K = parts[0]->ne0;
    const bool fp8 = parts[0]->fp8 != NULL;
    int64_t N = 0;
    for (int i = 0; i < n; i++) {
        if (!parts[i]->is_bf16 || parts[i]->joined || parts[i]->ne0 != K || (parts[i]->fp8 != NULL) != fp8) return NS_OK;
        N += parts[i]->ne1;
    }
    CUDA_TRY(cudaSetDevice(c->device), "cudaSetDevice");
    ns_bweight *w = calloc(1, sizeof *w);
    if (!w) return ns_error_set(err, NS_ERR_NOMEM, "cuda backend: out of host memory");
    w->ne0 = K;
    w->ne1 = N;
    w->is_bf16 = true;
    char what[96];
    snprintf(what, sizeof what, "a joined matrix (%lld x %lld, %s)", (long long)N, (long long)K, fp8 ? "fp8" : "bf16");
    const size_t elem = fp8 ? 1 : 2;
    ns_status st = dev_alloc(c, (size_t)N * (size_t)K * elem, what, fp8 ? (void **)&w->fp8 : &w->data, err);
    if (!st && fp8) st = dev_alloc(c, (size_t)N * sizeof(float), what, (void **)&w->fp8_scale, err);
    if (!st && fp8 && c->lt_on[LT_BLOCK])
        st = dev_alloc(c, (size_t)N * (size_t)((K + 127) / 128) * sizeof(float), what, (void **)&w->fp8_scale_blk, err);
    if (st) {
        cuda_weight_free(b, w);
        return st;
    }
    cudaError_t e = cudaSuccess;
    int64_t row = 0;
    for (int i = 0; i < n && e == cudaSuccess; i++) {
        const ns_bweight *p = parts[i];
        const size_t off = (size_t)row * (size_t)K * elem, bytes = (size_t)p->ne1 * (size_t)K * elem;
        e = cudaMemcpyAsync((uint8_t *)(fp8 ? (void *)w->fp8 : w->data) + off, fp8 ? (void *)p->fp8 : p->data, bytes,
                            cudaMemcpyDeviceToDevice, c->stream);
        if (e == cudaSuccess && fp8)
            e = cudaMemcpyAsync(w->fp8_scale + row, p->fp8_scale, (size_t)p->ne1 * sizeof(float),
                                cudaMemcpyDeviceToDevice, c->stream);
        row += p->ne1;
    }
    if (e == cudaSuccess && w->fp8_scale_blk)
        e = ns_cuda_expand_scales(w->fp8_scale_blk, w->fp8_scale, N, (int)((K + 127) / 128), c->blk_kb_major[0],
                                  c->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    if (e != cudaSuccess) {
        cuda_weight_free(b, w);
        return cuda_fail(err, e, "weight_join (copying the parts)");
    }
    row = 0;
    for (int i = 0; i < n; i++) { /* each part now a view of its rows */
        ns_bweight *p = parts[i];
        if (fp8) {
            cudaFree(p->fp8);
            cudaFree(p->fp8_scale);
            p->fp8 = w->fp8 + (size_t)row * (size_t)K;
            p->fp8_scale = w->fp8_scale + row;
        } else {
            cudaFree(p->data);
            p->data = (uint8_t *)w->data + (size_t)row * (size_t)K * 2;
        }
        p->joined = true;
        row += p->ne1;
    }
    if (fp8 && N > c->max_n_fp8) c->max_n_fp8 = N;
    *out = w;
    return NS_OK;
}

static const float *cuda_weight_f32(const ns_bweight *w) {
    NS_ASSERT(!w->is_bf16); /* only vectors are kept in fp32 */
    return w->data;
}

/* ---- KV pool and batch ---- */

static void free_kv(cuda_backend *c) {
    for (int i = 0; i < c->kv.n_layer; i++) {
        if (c->k_pool && c->k_pool[i]) cudaFree(c->k_pool[i]);
        if (c->v_pool && c->v_pool[i]) cudaFree(c->v_pool[i]);
        if (c->k_scale && c->k_scale[i]) cudaFree(c->k_scale[i]);
        if (c->v_scale && c->v_scale[i]) cudaFree(c->v_scale[i]);
    }
    free(c->k_pool);
    free(c->v_pool);
    free(c->k_scale);
    free(c->v_scale);
    c->k_pool = c->v_pool = NULL;
    c->k_scale = c->v_scale = NULL;
    memset(&c->kv, 0, sizeof c->kv);
}

static ns_status cuda_kv_alloc(ns_backend *b, const ns_kv_shape *shape, ns_error *err) {
    cuda_backend *c = cb(b);
    CUDA_TRY(cudaSetDevice(c->device), "cudaSetDevice");
    if (shape->head_dim > NS_CUDA_ATTN_MAX_HEAD_DIM)
        return ns_error_set(err, NS_ERR_UNSUPPORTED, "cuda backend: head_dim %d is over the attention kernel's %d",
                            shape->head_dim, NS_CUDA_ATTN_MAX_HEAD_DIM);
    free_kv(c);
    c->gen++;
    /* one block more than the engine's: padding rows of a recorded decode batch use it */
    size_t per_layer = (size_t)(shape->n_blocks + 1) * (size_t)shape->block_size * (size_t)shape->n_head_kv *
                       (size_t)shape->head_dim * (size_t)c->base.kv_elem_bytes;
    const bool f8 = c->kv_type == NS_CUDA_TYPE_E4M3;
    if (f8 && !ns_cuda_kv_fp8_fits(c->kv_n_head, shape->n_head_kv, shape->head_dim))
        return ns_error_set(err, NS_ERR_INVALID, "cuda backend: the FP8 KV cache does not take %d KV heads of %d",
                            shape->n_head_kv, shape->head_dim);
    c->k_pool = ns_calloc_array((size_t)shape->n_layer, sizeof(void *));
    c->v_pool = ns_calloc_array((size_t)shape->n_layer, sizeof(void *));
    c->k_scale = f8 ? ns_calloc_array((size_t)shape->n_layer, sizeof(float *)) : NULL;
    c->v_scale = f8 ? ns_calloc_array((size_t)shape->n_layer, sizeof(float *)) : NULL;
    if (!c->k_pool || !c->v_pool || (f8 && (!c->k_scale || !c->v_scale))) {
        free_kv(c);
        return ns_error_set(err, NS_ERR_NOMEM, "cuda backend: out of host memory");
    }
    c->kv = *shape;
    c->pad_block = shape->n_blocks;
    const size_t scales = (size_t)(shape->n_blocks + 1) * (size_t)shape->block_size * (size_t)shape->n_head_kv *
                          sizeof(float);
    char what[96];
    snprintf(what, sizeof what, "the KV cache (%d layers x 2 x %zu bytes)", shape->n_layer,
             per_layer + (f8 ? scales : 0));
    for (int i = 0; i < shape->n_layer; i++) {
        ns_status st = dev_alloc(c, per_layer, what, (void **)&c->k_pool[i], err);
        if (!st) st = dev_alloc(c, per_layer, what, (void **)&c->v_pool[i], err);
        if (!st && f8) st = dev_alloc(c, scales, what, (void **)&c->k_scale[i], err);
        if (!st && f8) st = dev_alloc(c, scales, what, (void **)&c->v_scale[i], err);
        if (st) {
            free_kv(c);
            return st;
        }
    }
    return NS_OK;
}

/* The bf16 copy of a matmul input (and its remainder in precise mode): grown to n
 * elements. batch_set sizes it for the batch, so the ops of a step do not allocate. */
static ns_status ensure_x_cap(cuda_backend *c, size_t n, ns_error *err) {
    if (n <= c->x_bf16_cap) return NS_OK;
    if (c->x_bf16) cudaFree(c->x_bf16);
    if (c->x_lo) cudaFree(c->x_lo);
    if (c->x_fp8) cudaFree(c->x_fp8);
    if (c->x_scale) cudaFree(c->x_scale);
    if (c->x_scale_blk) cudaFree(c->x_scale_blk);
    c->x_bf16 = c->x_lo = NULL;
    c->x_fp8 = NULL;
    c->x_scale = c->x_scale_blk = NULL;
    c->x_blk_valid = false;
    c->x_bf16_cap = 0;
    x_forget(c);
    c->gen++;
    ns_status st = dev_alloc(c, n * sizeof(uint16_t), "the bf16 matmul input", (void **)&c->x_bf16, err);
    if (!st && c->precise)
        st = dev_alloc(c, n * sizeof(uint16_t), "the bf16 matmul input remainder", (void **)&c->x_lo, err);
    /* fp8: n bytes, and a scale per row; an FP8 GEMM's rows are at least 16 wide */
    if (!st && c->fp8) st = dev_alloc(c, n, "the fp8 matmul input", (void **)&c->x_fp8, err);
    if (!st && c->fp8)
        st = dev_alloc(c, (n / 16 + 1) * sizeof(float), "the fp8 matmul input's scales", (void **)&c->x_scale, err);
    /* M rows of K >= 16 in n: M * ceil(K / 128) <= n / 128 + n / 16 */
    if (!st && c->fp8 && c->lt_on[LT_BLOCK])
        st = dev_alloc(c, (n / 128 + n / 16 + 1) * sizeof(float), "the fp8 matmul input's block scales",
                       (void **)&c->x_scale_blk, err);
    if (!st) c->x_bf16_cap = n;
    return st;
}

/* A device buffer of the step (*buf, *cap elements of elem bytes), grown to n elements;
 * recordings that point at the old one go. */
static ns_status ensure_dev_cap(cuda_backend *c, void **buf, size_t *cap, size_t n, size_t elem, const char *what,
                                ns_error *err) {
    if (n <= *cap) return NS_OK;
    if (*buf) cudaFree(*buf);
    *buf = NULL;
    *cap = 0;
    c->gen++;
    ns_status st = dev_alloc(c, n * elem, what, buf, err);
    if (!st) *cap = n;
    return st;
}

/* The bf16 output of fp32-result fp8 GEMMs (lt_bf16_only), and the unscaled FP8 GEMM's
 * fp32 sums (LT_RAW): grown to n elements by batch_set for the batch, so the ops of a step
 * do not allocate. */
static ns_status ensure_y_cap(cuda_backend *c, size_t n, ns_error *err) {
    return ensure_dev_cap(c, (void **)&c->y_bf16, &c->y_bf16_cap, n, sizeof(uint16_t), "the fp8 matmul's bf16 output",
                          err);
}
static ns_status ensure_y_raw_cap(cuda_backend *c, size_t n, ns_error *err) {
    return ensure_dev_cap(c, (void **)&c->y_raw, &c->y_raw_cap, n, sizeof(float), "the unscaled fp8 matmul's sums",
                          err);
}

static void free_ids(cuda_backend *c) {
    if (c->d_ids) cudaFree(c->d_ids);
    if (c->d_samp) cudaFree(c->d_samp);
    c->d_ids = NULL;
    c->d_samp = NULL;
    c->ids_cap = 0;
    for (int i = 0; i < 2; i++) {
        if (c->pick[i].h_ids) cudaFreeHost(c->pick[i].h_ids);
        if (c->pick[i].h_samp) cudaFreeHost(c->pick[i].h_samp);
        c->pick[i].h_ids = NULL;
        c->pick[i].h_samp = NULL;
        c->pick[i].cap = 0;
    }
}

/* The row count a recording runs this batch at (ns_backend_pad_rows), or 0: graphs off,
 * or profiling, which times ops one by one. */
static int graph_rows_for(const cuda_backend *c, const ns_fwd_batch *bt) {
    return c->graphs_on && !c->prof.on ? ns_backend_pad_rows(bt) : 0;
}

static ns_status cuda_batch_set(ns_backend *b, const ns_fwd_batch *bt, ns_error *err) {
    cuda_backend *c = cb(b);
    ns_status st = sticky_status(c, err);
    if (st) return st;
    CUDA_TRY(cudaSetDevice(c->device), "cudaSetDevice");
    int T = bt->n_tokens, S = bt->n_seqs, L = bt->n_logits, MB = bt->max_blocks_per_seq;
    if (!c->k_pool) return ns_error_set(err, NS_ERR_INVALID, "cuda backend: batch_set before kv_alloc");
    /* check everything a kernel will index with, so that no kernel reads out of bounds */
    for (int s = 0; s < S; s++) {
        int n_kv = bt->n_past[s] + bt->n_seq_tokens[s];
        int n_blk = (n_kv + c->kv.block_size - 1) / c->kv.block_size;
        if (bt->n_past[s] < 0 || bt->n_seq_tokens[s] < 1 || n_blk > MB || bt->tok_start[s] < 0 ||
            bt->tok_start[s] + bt->n_seq_tokens[s] > T)
            return ns_error_set(err, NS_ERR_INVALID,
                                "cuda backend: batch sequence %d (start %d, %d tokens, %d past) does not fit the batch "
                                "(%d tokens, %d blocks per sequence)",
                                s, bt->tok_start[s], bt->n_seq_tokens[s], bt->n_past[s], T, MB);
        for (int i = 0; i < n_blk; i++) {
            int blk = bt->block_table[(size_t)s * MB + i];
            if (blk < 0 || blk >= c->kv.n_blocks)
                return ns_error_set(err, NS_ERR_INVALID, "cuda backend: sequence %d block %d is %d, not in [0, %d)", s,
                                    i, blk, c->kv.n_blocks);
        }
        for (int i = 0; i < bt->n_seq_tokens[s]; i++) {
            int p = bt->pos[bt->tok_start[s] + i];
            if (p != bt->n_past[s] + i)
                return ns_error_set(err, NS_ERR_INVALID,
                                    "cuda backend: token %d of sequence %d has position %d, not %d (positions continue "
                                    "from n_past in order)",
                                    bt->tok_start[s] + i, s, p, bt->n_past[s] + i);
        }
    }
    for (int i = 0; i < L; i++)
        if (bt->logit_rows[i] < 0 || bt->logit_rows[i] >= T)
            return ns_error_set(err, NS_ERR_INVALID, "cuda backend: logit row %d is %d, not in [0, %d)", i,
                                bt->logit_rows[i], T);
    bool refs = false; /* tokens that are ids of the last pick, still on the device */
    for (int t = 0; t < T; t++) {
        if (bt->tokens[t] >= 0) continue;
        if (-1 - bt->tokens[t] >= c->pick_last_n)
            return ns_error_set(err, NS_ERR_INVALID, "cuda backend: batch row %d names row %d of the last pick, which "
                                "has %d rows", t, -1 - bt->tokens[t], c->pick_last_n);
        refs = true;
    }
    /* a decode batch that a recording can run: padded to its row count (P rows: T real) */
    const int P = graph_rows_for(c, bt);
    c->graph_rows = P;
    const int T_real = T, S_real = S;
    if (P) T = S = L = P;
    /* attention groups: runs of up to NS_CUDA_ATTN_QT tokens of one sequence */
    int G = T - T_real; /* a group for each padding row */
    for (int s = 0; s < S_real; s++) G += (bt->n_seq_tokens[s] + NS_CUDA_ATTN_QT - 1) / NS_CUDA_ATTN_QT;
    size_t need = 4 * (size_t)T + (size_t)L + (size_t)S * (size_t)MB + 2 * (size_t)G;
    /* the previous batch's copy must be done before its pinned buffer is rewritten */
    CUDA_TRY(cudaEventSynchronize(c->batch_copied), "batch_set (cudaEventSynchronize)");
    if (need > c->batch_cap) {
        size_t cap = need * 2;
        c->gen++;
        if (c->h_batch) cudaFreeHost(c->h_batch);
        if (c->d_batch) cudaFree(c->d_batch);
        c->h_batch = NULL;
        c->d_batch = NULL;
        c->batch_cap = 0;
        CUDA_TRY(cudaMallocHost((void **)&c->h_batch, cap * sizeof(int32_t)), "batch_set (cudaMallocHost)");
        if ((st = dev_alloc(c, cap * sizeof(int32_t), "the batch layout", (void **)&c->d_batch, err))) return st;
        c->batch_cap = cap;
    }
    if ((st = ensure_x_cap(c, (size_t)NS_MAX(T, L) * (size_t)c->max_k, err))) return st;
    if (c->lt_bf16_only && (st = ensure_y_cap(c, (size_t)T * (size_t)c->max_n_fp8, err))) return st;
    if (c->fp8 && c->lt_on[LT_RAW] && (st = ensure_y_raw_cap(c, (size_t)T * (size_t)c->max_n_fp8, err))) return st;
    if (L > c->ids_cap) {
        /* the last pick's ids move to the larger buffer (this batch may name them) */
        int32_t *ids = NULL;
        ns_row_sampling *samp = NULL;
        if ((st = dev_alloc(c, (size_t)L * sizeof(int32_t), "the sampled ids", (void **)&ids, err))) return st;
        if ((st = dev_alloc(c, (size_t)L * sizeof(ns_row_sampling), "the sampling parameters", (void **)&samp, err))) {
            cudaFree(ids);
            return st;
        }
        cudaError_t e = c->pick_last_n ? cudaMemcpyAsync(ids, c->d_ids, (size_t)c->pick_last_n * sizeof(int32_t),
                                                         cudaMemcpyDeviceToDevice, c->stream)
                                       : cudaSuccess;
        if (c->d_ids) cudaFree(c->d_ids); /* synchronizes: the copy above is done */
        if (c->d_samp) cudaFree(c->d_samp);
        c->d_ids = ids;
        c->d_samp = samp;
        c->ids_cap = L;
        CUDA_TRY(e, "batch_set (cudaMemcpyAsync ids)");
    }
    int32_t *h = c->h_batch;
    int32_t *tokens = h, *pos = h + T, *tok_seq = h + 2 * (size_t)T, *slot = h + 3 * (size_t)T;
    int32_t *logit_rows = h + 4 * (size_t)T, *table = logit_rows + L;
    memcpy(tokens, bt->tokens, (size_t)T_real * sizeof(int32_t));
    memcpy(pos, bt->pos, (size_t)T_real * sizeof(int32_t));
    for (int s = 0; s < S_real; s++) {
        const int32_t *tab = bt->block_table + (size_t)s * MB;
        for (int i = 0; i < bt->n_seq_tokens[s]; i++) {
            int tok = bt->tok_start[s] + i, p = bt->n_past[s] + i;
            tok_seq[tok] = s;
            slot[tok] = tab[p / c->kv.block_size] * c->kv.block_size + p % c->kv.block_size;
        }
    }
    if (L) memcpy(logit_rows, bt->logit_rows, (size_t)NS_MIN(L, bt->n_logits) * sizeof(int32_t));
    memcpy(table, bt->block_table, (size_t)S_real * MB * sizeof(int32_t));
    int32_t *groups = table + (size_t)S * MB;
    int g = 0;
    for (int s = 0; s < S_real; s++)
        for (int i = 0; i < bt->n_seq_tokens[s]; i += NS_CUDA_ATTN_QT, g++) {
            groups[2 * g] = bt->tok_start[s] + i;
            groups[2 * g + 1] = NS_MIN(NS_CUDA_ATTN_QT, bt->n_seq_tokens[s] - i);
        }
    /* padding rows (ns_backend_pad_rows) */
    for (int t = T_real; t < T; t++) {
        tokens[t] = 0;
        pos[t] = 0;
        tok_seq[t] = t;
        slot[t] = c->pad_block * c->kv.block_size;
        logit_rows[t] = t;
        for (int i = 0; i < MB; i++) table[(size_t)t * MB + i] = c->pad_block;
        groups[2 * g] = t;
        groups[2 * g + 1] = 1;
        g++;
    }
    x_forget(c);
    if (c->prof.on) {
        /* the marks of the previous batch (if not synced yet) keep their kind */
        c->prof.decode = T == S;
        c->prof.batches[T == S]++;
    }
    prof_mark(c, P_BATCH);
    CUDA_TRY(cudaMemcpyAsync(c->d_batch, h, need * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream),
             "batch_set (cudaMemcpyAsync)");
    CUDA_TRY(cudaEventRecord(c->batch_copied, c->stream), "batch_set (cudaEventRecord)");
    if (refs)
        CUDA_TRY(ns_cuda_tokens_from_ids(c->d_batch, T_real, c->d_ids, c->pick_last_n, c->stream),
                 "batch_set (tokens_from_ids)");
    const int32_t *d = c->d_batch;
    c->d_tokens = d;
    c->d_pos = d + T;
    c->d_tok_seq = d + 2 * (size_t)T;
    c->d_slot = d + 3 * (size_t)T;
    c->d_logit_rows = d + 4 * (size_t)T;
    c->d_block_table = c->d_logit_rows + L;
    c->d_groups = c->d_block_table + (size_t)S * MB;
    c->n_groups = G;
    c->n_tokens = T;
    c->n_seqs = S;
    c->n_logits = L;
    c->max_blocks_per_seq = MB;
    return NS_OK;
}

/* ---- ops ---- */

static void cuda_embed(ns_backend *b, float *out, const ns_bweight *table, int n_embd) {
    cuda_backend *c = cb(b);
    NS_ASSERT(table->ne0 == n_embd);
    x_forget(c);
    prof_mark(c, P_EMBED);
    op_check(c,
             ns_cuda_embed(out, table->data, table->is_bf16 ? NS_CUDA_TYPE_BF16 : NS_CUDA_TYPE_F32, c->d_tokens,
                           c->n_tokens, n_embd, c->stream),
             "embed");
}

static void cuda_rmsnorm(ns_backend *b, float *out, const float *x, const ns_bweight *w, int n_rows, int n, float eps) {
    cuda_backend *c = cb(b);
    if (x_shadow_fp8(c, out, n_rows, n)) { /* out in fp32 too: the output head (bf16) may read it */
        prof_mark(c, P_RMSNORM);
        op_check(c, ns_cuda_rmsnorm_fp8(out, c->x_fp8, c->x_scale, x, cuda_weight_f32(w), n_rows, n, eps, c->stream),
                 "rmsnorm (fp8 rows)");
        return;
    }
    uint16_t *shadow = x_shadow(c, out, (size_t)n_rows * (size_t)n);
    prof_mark(c, P_RMSNORM);
    op_check(c, ns_cuda_rmsnorm(out, shadow, x, cuda_weight_f32(w), n_rows, n, eps, c->stream), "rmsnorm");
}

/* x (M, K) into the bf16 matmul input (skipped when that already holds it); false after
 * recording a failure. */
static bool x_to_bf16(cuda_backend *c, const float *x, int M, int K) {
    if (c->sticky) return false;
    if ((size_t)M * (size_t)K > c->x_bf16_cap) {
        /* an op called outside a batch_set that sized it (tests do): grow, synchronously */
        ns_error e;
        if (ensure_x_cap(c, (size_t)M * (size_t)K, &e)) {
            c->sticky = e.code ? e.code : NS_ERR_BACKEND;
            c->sticky_err = e;
            return false;
        }
    }
    size_t n_x = (size_t)M * (size_t)K;
    if (x != c->x_bf16_src || n_x != c->x_bf16_n) {
        prof_mark(c, P_CONVERT);
        if (c->precise)
            op_check(c, ns_cuda_f32_to_bf16_split(c->x_bf16, c->x_lo, x, (int64_t)n_x, c->stream),
                     "matmul (f32 to bf16 hi/lo)");
        else
            op_check(c, ns_cuda_f32_to_bf16(c->x_bf16, x, (int64_t)n_x, c->stream), "matmul (f32 to bf16)");
        c->x_bf16_src = x;
        c->x_bf16_n = n_x;
        c->x_fp8_src = NULL;
    }
    return true;
}

/* x (M, K) into the fp8 matmul input, one scale per row (skipped when that already holds
 * it), from the bf16 copy when that holds x (an op wrote it there; x's floats may not be
 * written at all, see cuda_gate_up_swiglu), else from x; false after recording a failure. */
static bool x_to_fp8(cuda_backend *c, const float *x, int M, int K) {
    if (c->sticky) return false;
    size_t n_x = (size_t)M * (size_t)K;
    if (n_x > c->x_bf16_cap) { /* K >= 16, so the M scales fit too */
        ns_error e; /* outside a batch_set that sized it: grow, synchronously */
        if (ensure_x_cap(c, n_x, &e)) {
            c->sticky = e.code ? e.code : NS_ERR_BACKEND;
            c->sticky_err = e;
            return false;
        }
    }
    if (x == c->x_fp8_src && n_x == c->x_fp8_n) return true;
    bool from_bf16 = x == c->x_bf16_src && n_x == c->x_bf16_n;
    prof_mark(c, P_CONVERT);
    op_check(c,
             ns_cuda_quant_rows_fp8(c->x_fp8, c->x_scale, from_bf16 ? (const void *)c->x_bf16 : (const void *)x,
                                    from_bf16 ? NS_CUDA_TYPE_BF16 : NS_CUDA_TYPE_F32, M, K, c->stream),
             "matmul (rows to fp8)");
    c->x_fp8_src = x;
    c->x_fp8_n = n_x;
    c->x_blk_valid = false;
    return true;
}

/* The matmul input in the form w's GEMM reads: fp8 rows for an fp8 weight, else bf16. */
static bool x_for(cuda_backend *c, const ns_bweight *w, const float *x, int M, int K) {
    return w->fp8 ? x_to_fp8(c, x, M, K) : x_to_bf16(c, x, M, K);
}

static void lt_fail(cuda_backend *c, cublasStatus_t s, const char *what, int M, int N, int K) {
    if (c->sticky) return;
    c->sticky = ns_error_set(&c->sticky_err, NS_ERR_BACKEND, "cuda backend: fp8 matmul %d x %d x %d: %s: cuBLAS %s", M,
                             N, K, what, cublasGetStatusString(s));
    if (s == CUBLAS_STATUS_ALLOC_FAILED) c->sticky = c->sticky_err.code = NS_ERR_NOMEM;
}

static void lt_plan_clear(lt_plan *p) {
    if (p->a) cublasLtMatrixLayoutDestroy(p->a);
    if (p->b) cublasLtMatrixLayoutDestroy(p->b);
    if (p->d) cublasLtMatrixLayoutDestroy(p->d);
    memset(p, 0, sizeof *p);
}

/* Whether cuBLASLt has an algorithm for the FP8 GEMM (M, N, K) with mode's scales and
 * output d_type (the unscaled mode's is always fp32); on success the layouts and the
 * algorithm are in p. */
static cublasStatus_t lt_try(cuda_backend *c, lt_plan *p, int mode, int M, int N, int K, cudaDataType d_type) {
    /* column-major, as the bf16 path (gemm): A = W (K, N) read transposed, B = x (K, M), D = y^T (N, M) */
    cublasStatus_t s = cublasLtMatrixLayoutCreate(&p->a, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)N, K);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&p->b, CUDA_R_8F_E4M3, (uint64_t)K, (uint64_t)M, K);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatrixLayoutCreate(&p->d, d_type, (uint64_t)N, (uint64_t)M, N);
    if (s != CUBLAS_STATUS_SUCCESS) return s;
    cublasLtMatmulHeuristicResult_t r;
    int n_found = 0;
    s = cublasLtMatmulAlgoGetHeuristic(c->lt, c->lt_desc[mode], p->a, p->b, p->d, p->d, c->lt_pref, 1, &r, &n_found);
    if (s == CUBLAS_STATUS_SUCCESS && (n_found < 1 || r.state != CUBLAS_STATUS_SUCCESS))
        s = CUBLAS_STATUS_NOT_SUPPORTED;
    if (s == CUBLAS_STATUS_SUCCESS) p->algo = r.algo;
    return s;
}

/* The plan of an FP8 GEMM shape: kept, or made (the first way of scaling that cuBLASLt
 * has an algorithm for, its layouts, and the heuristic's first algorithm within the
 * workspace); NULL after recording a failure. A shape's plan is made once: the heuristic
 * query is a host call of tens of microseconds. */
static lt_plan *lt_plan_for(cuda_backend *c, int M, int N, int K, cudaDataType y_type) {
    for (int i = 0; i < c->n_lt_plans; i++) {
        lt_plan *p = &c->lt_plans[i];
        if (p->M == M && p->N == N && p->K == K && p->y_type == y_type) return p;
    }
    int i = c->n_lt_plans < NS_CUDA_LT_PLANS ? c->n_lt_plans++ : c->lt_next++ % NS_CUDA_LT_PLANS;
    lt_plan *p = &c->lt_plans[i];
    cublasStatus_t s = CUBLAS_STATUS_NOT_SUPPORTED;
    for (int mode = 0; mode < LT_MODES; mode++) {
        if (!c->lt_on[mode]) continue;
        lt_plan_clear(p);
        s = lt_try(c, p, mode, M, N, K, mode == LT_RAW ? CUDA_R_32F : y_type);
        if (s == CUBLAS_STATUS_SUCCESS) {
            p->M = M;
            p->N = N;
            p->K = K;
            p->mode = mode;
            p->y_type = y_type;
            return p;
        }
        if (s == CUBLAS_STATUS_ALLOC_FAILED) break;
    }
    lt_plan_clear(p);
    lt_fail(c, s, y_type == CUDA_R_32F ? "no cuBLASLt algorithm for e4m3 x e4m3 -> fp32 in any way of scaling here"
                                       : "no cuBLASLt algorithm for e4m3 x e4m3 -> bf16 in any way of scaling here",
            M, N, K);
    return NULL;
}

/* y (M, N) = x_fp8 (M, K) . W_fp8^T, each product scaled by the row's scales, A's (N) from
 * the weight, B's (M) from x_to_fp8: cuBLASLt in the plan's way of scaling. */
static void gemm_fp8(cuda_backend *c, void *y, cudaDataType y_type, const ns_bweight *w, int M, int N, int K) {
    void *y_f32 = NULL; /* fp32 results through bf16 (lt_bf16_only) */
    ns_error e;         /* buffers sized by batch_set; outside a batch (tests), grown here */
    if (y_type == CUDA_R_32F && c->lt_bf16_only) {
        if (ensure_y_cap(c, (size_t)M * (size_t)N, &e)) goto fail;
        y_f32 = y;
        y = c->y_bf16;
        y_type = CUDA_R_16BF;
    }
    lt_plan *p = lt_plan_for(c, M, N, K, y_type);
    if (!p) return;
    if (p->mode == LT_RAW && ensure_y_raw_cap(c, (size_t)M * (size_t)N, &e)) goto fail;
    prof_mark(c, P_GEMM);
    c->lt_calls[p->mode][y_type == CUDA_R_32F]++;
    const int kb = (K + 127) / 128;
    if (p->mode == LT_BLOCK && !(c->x_blk_valid && c->x_blk_rows == M && c->x_blk_kb == kb)) {
        op_check(c, ns_cuda_expand_scales(c->x_scale_blk, c->x_scale, M, kb, c->blk_kb_major[1], c->stream),
                 "matmul (fp8 input's block scales)");
        c->x_blk_valid = true;
        c->x_blk_rows = M;
        c->x_blk_kb = kb;
    }
    const float alpha = 1.0f, beta = 0.0f;
    cublasLtMatmulDesc_t desc = c->lt_desc[p->mode];
    const void *a_scale = p->mode == LT_BLOCK ? w->fp8_scale_blk : w->fp8_scale;
    const void *b_scale = p->mode == LT_BLOCK ? c->x_scale_blk : c->x_scale;
    void *d = p->mode == LT_RAW ? (void *)c->y_raw : y;
    cublasStatus_t s = CUBLAS_STATUS_SUCCESS;
    if (p->mode != LT_RAW) {
        s = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof a_scale);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof b_scale);
    }
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmul(c->lt, desc, &alpha, w->fp8, p->a, c->x_fp8, p->b, &beta, d, p->d, d, p->d, &p->algo,
                           c->cublas_ws, NS_CUDA_CUBLAS_WS, c->stream);
    if (s != CUBLAS_STATUS_SUCCESS) lt_fail(c, s, "cublasLtMatmul", M, N, K);
    if (p->mode == LT_RAW)
        op_check(c,
                 ns_cuda_scale_outer(y, y_type == CUDA_R_32F ? NS_CUDA_TYPE_F32 : NS_CUDA_TYPE_BF16, c->y_raw,
                                     w->fp8_scale, c->x_scale, M, N, c->stream),
                 "matmul (fp8 sums times their scales)");
    if (y_f32)
        op_check(c,
                 ns_cuda_dequant_row(NS_CUDA_TYPE_BF16, y, (size_t)N * 2, y_f32, NS_CUDA_TYPE_F32, M, N, c->stream),
                 "matmul (fp8 output bf16 to fp32)");
    return;
fail:
    if (!c->sticky) {
        c->sticky = e.code ? e.code : NS_ERR_BACKEND;
        c->sticky_err = e;
    }
}

/* y (M, N) = x_bf16 (M, K) . W^T, y of y_type (CUDA_R_32F, or CUDA_R_16BF outside precise
 * mode). Row-major y (M, N) is column-major y^T (N, M): y^T = W . x^T, with W row-major
 * (N, K) read as column-major (K, N) transposed, and x row-major (M, K) as column-major
 * (K, M). Precise mode adds W . x_lo. */
static void gemm(cuda_backend *c, void *y, cudaDataType y_type, const ns_bweight *w, int M, int N, int K) {
    if (w->fp8) {
        gemm_fp8(c, y, y_type, w, M, N, K);
        return;
    }
    prof_mark(c, P_GEMM);
    const float alpha = 1.0f, beta = 0.0f, one = 1.0f;
    cublasStatus_t s = cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w->data, CUDA_R_16BF, K,
                                    c->x_bf16, CUDA_R_16BF, K, &beta, y, y_type, N, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (s == CUBLAS_STATUS_SUCCESS && c->precise)
        s = cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &alpha, w->data, CUDA_R_16BF, K, c->x_lo,
                         CUDA_R_16BF, K, &one, y, y_type, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS && !c->sticky) {
        c->sticky = cublas_fail(&c->sticky_err, s, "matmul (cublasGemmEx)");
        if (s == CUBLAS_STATUS_ALLOC_FAILED) c->sticky = c->sticky_err.code = NS_ERR_NOMEM;
    }
}

static void cuda_matmul(ns_backend *b, float *y, const float *x, const ns_bweight *w, int M, int N, int K) {
    cuda_backend *c = cb(b);
    NS_ASSERT(w->is_bf16 && w->ne0 == K && w->ne1 == N);
    if (M == 0 || !x_for(c, w, x, M, K)) return;
    gemm(c, y, CUDA_R_32F, w, M, N, K);
    x_written(c, y);
}

/* NS_CUDA_FUSED_QKV=1: one GEMM over wq, wk and wv joined (weight_join) into tmp, then
 * one pass (ns_cuda_qkv_split_rope) for the split, the biases and RoPE, where the unfused
 * path runs three GEMMs, up to three add_bias and two rope. */
static void cuda_qkv_rope(ns_backend *b, float *q, float *k, float *v, float *tmp, const float *x,
                          const ns_bweight *wqkv, const ns_bweight *bq, const ns_bweight *bk, const ns_bweight *bv,
                          int T, int n_head, int n_head_kv, int head_dim, int n_rot, const float *inv_freq,
                          int is_neox) {
    cuda_backend *c = cb(b);
    const int N = (int)wqkv->ne1, K = (int)wqkv->ne0;
    NS_ASSERT(wqkv->is_bf16 && (int64_t)N == (int64_t)(n_head + 2 * n_head_kv) * head_dim);
    if (T == 0 || !x_for(c, wqkv, x, T, K)) return;
    gemm(c, tmp, CUDA_R_32F, wqkv, T, N, K);
    x_forget(c); /* q, k, v and tmp written */
    prof_mark(c, P_ROPE);
    op_check(c,
             ns_cuda_qkv_split_rope(q, k, v, tmp, bq ? cuda_weight_f32(bq) : NULL, bk ? cuda_weight_f32(bk) : NULL,
                                    bv ? cuda_weight_f32(bv) : NULL, c->d_pos, c->n_tokens, n_head, n_head_kv,
                                    head_dim, n_rot, inv_freq, is_neox, c->stream),
             "qkv_rope");
}

/* NS_CUDA_FUSED_FFN=1 (off by default until measured on a GPU; never in precise mode):
 * the gate and up GEMMs write bf16 (into out and tmp, half their bytes), and the bf16
 * SwiGLU writes the down GEMM's input directly; out's floats are left unwritten, and the
 * matmul that reads out next takes the bf16 copy. */
static void cuda_gate_up_swiglu(ns_backend *b, float *out, float *tmp, const float *x, const ns_bweight *w_gate,
                                const ns_bweight *w_up, int M, int N, int K) {
    cuda_backend *c = cb(b);
    NS_ASSERT(w_gate->is_bf16 && w_gate->ne0 == K && w_gate->ne1 == N && w_up->is_bf16 && w_up->ne0 == K &&
              w_up->ne1 == N && !c->precise);
    uint16_t *g = (uint16_t *)out, *u = (uint16_t *)tmp; /* (M, N) bf16 in buffers of (M, N) floats */
    if (M == 0 || !x_for(c, w_gate, x, M, K)) return;
    gemm(c, g, CUDA_R_16BF, w_gate, M, N, K);
    if (!x_for(c, w_up, x, M, K)) return;
    gemm(c, u, CUDA_R_16BF, w_up, M, N, K);
    x_written(c, tmp);
    prof_mark(c, P_SWIGLU);
    if (x_shadow_fp8(c, out, M, N)) { /* the fp8 GEMMs above read x_fp8 before this writes it */
        op_check(c, ns_cuda_swiglu_bf16_fp8(c->x_fp8, c->x_scale, g, u, M, N, c->stream), "gate_up_swiglu (fp8 rows)");
        return;
    }
    uint16_t *shadow = x_shadow(c, out, (size_t)M * (size_t)N); /* the bf16 GEMMs read x_bf16 before this */
    if (!shadow) { /* no room for the copy (x_bf16 is sized for every weight's K: not expected) */
        if (!c->sticky) {
            c->sticky = ns_error_set(&c->sticky_err, NS_ERR_BACKEND,
                                     "cuda backend: gate_up_swiglu of %d x %d does not fit the matmul input", M, N);
        }
        return;
    }
    op_check(c, ns_cuda_swiglu_bf16(shadow, g, u, (int64_t)M * N, c->stream), "gate_up_swiglu (swiglu)");
}

static void cuda_add_bias(ns_backend *b, float *y, const ns_bweight *bias, int M, int N) {
    cuda_backend *c = cb(b);
    x_forget(c);
    prof_mark(c, P_BIAS);
    op_check(c, ns_cuda_add_bias(y, cuda_weight_f32(bias), M, N, c->stream), "add_bias");
}

static void cuda_rope(ns_backend *b, float *x, int n_head, int head_dim, int n_rot, const float *inv_freq, int is_neox) {
    cuda_backend *c = cb(b);
    x_forget(c);
    prof_mark(c, P_ROPE);
    op_check(c, ns_cuda_rope(x, c->d_pos, c->n_tokens, n_head, head_dim, n_rot, inv_freq, is_neox, c->stream),
             "rope");
}

static void cuda_kv_store(ns_backend *b, int layer, const float *k, const float *v) {
    cuda_backend *c = cb(b);
    NS_ASSERT(layer >= 0 && layer < c->kv.n_layer);
    x_forget(c);
    prof_mark(c, P_KV_STORE);
    if (c->kv_type == NS_CUDA_TYPE_E4M3)
        op_check(c,
                 ns_cuda_kv_store_fp8(c->k_pool[layer], c->v_pool[layer], c->k_scale[layer], c->v_scale[layer], k, v,
                                      c->d_slot, c->n_tokens, c->kv.n_head_kv, c->kv.head_dim, c->stream),
                 "kv_store (fp8)");
    else
        op_check(c,
                 ns_cuda_kv_store(c->k_pool[layer], c->v_pool[layer], c->kv_type, k, v, c->d_slot, c->n_tokens,
                                  c->kv.n_head_kv * c->kv.head_dim, c->stream),
                 "kv_store");
}

static void cuda_attention(ns_backend *b, int layer, float *out, const float *q, int n_head, float scale) {
    cuda_backend *c = cb(b);
    NS_ASSERT(layer >= 0 && layer < c->kv.n_layer);
    uint16_t *shadow = x_shadow(c, out, (size_t)c->n_tokens * (size_t)n_head * (size_t)c->kv.head_dim);
    prof_mark(c, P_ATTENTION);
    if (c->kv_type == NS_CUDA_TYPE_E4M3) {
        op_check(c,
                 ns_cuda_attention_paged_fp8(out, shadow, q, c->d_pos, c->d_tok_seq, c->d_groups, c->n_groups,
                                             c->n_groups == c->n_tokens, c->d_block_table, c->max_blocks_per_seq,
                                             c->k_pool[layer], c->v_pool[layer], c->k_scale[layer], c->v_scale[layer],
                                             c->kv.block_size, n_head, c->kv.n_head_kv, c->kv.head_dim, scale,
                                             c->stream),
                 "attention (fp8 KV)");
        return;
    }
    op_check(c,
             ns_cuda_attention_paged(out, shadow, q, c->d_pos, c->d_tok_seq, c->d_groups, c->n_groups,
                                     c->n_groups == c->n_tokens, c->d_block_table, c->max_blocks_per_seq,
                                     c->k_pool[layer], c->v_pool[layer], c->kv_type, c->kv.block_size, n_head,
                                     c->kv.n_head_kv, c->kv.head_dim, scale, c->stream),
             "attention");
}

static void cuda_swiglu(ns_backend *b, float *out, const float *gate, const float *up, int64_t n) {
    cuda_backend *c = cb(b);
    uint16_t *shadow = x_shadow(c, out, (size_t)n);
    prof_mark(c, P_SWIGLU);
    op_check(c, ns_cuda_swiglu(out, shadow, gate, up, n, c->stream), "swiglu");
}

/* NS_CUDA_FUSED_NORM=1 (off by default until measured on a GPU): the residual add and
 * the next RMSNorm in one pass that writes the matmul input (bf16) and not out's floats;
 * precise mode, which has no bf16 copy, writes out in fp32. */
static void cuda_add_rmsnorm(ns_backend *b, float *x, const float *delta, float *out, const ns_bweight *w, int n_rows,
                             int n, float eps) {
    cuda_backend *c = cb(b);
    prof_mark(c, P_RMSNORM);
    if (x_shadow_fp8(c, out, n_rows, n)) { /* out is read only by the next layer matmuls: fp8 rows only */
        op_check(c,
                 ns_cuda_add_rmsnorm_fp8(x, delta, NULL, c->x_fp8, c->x_scale, cuda_weight_f32(w), n_rows, n, eps,
                                         c->stream),
                 "add_rmsnorm (fp8 rows)");
        return;
    }
    uint16_t *shadow = x_shadow(c, out, (size_t)n_rows * (size_t)n);
    op_check(c,
             ns_cuda_add_rmsnorm(x, delta, shadow ? NULL : out, shadow, cuda_weight_f32(w), n_rows, n, eps, c->stream),
             "add_rmsnorm");
}

static void cuda_add(ns_backend *b, float *y, const float *x, int64_t n) {
    cuda_backend *c = cb(b);
    x_forget(c);
    prof_mark(c, P_ADD);
    op_check(c, ns_cuda_add(y, x, n, c->stream), "add");
}

static void cuda_gather_logit_rows(ns_backend *b, float *out, const float *x, int width) {
    cuda_backend *c = cb(b);
    x_forget(c);
    prof_mark(c, P_GATHER);
    op_check(c, ns_cuda_gather_rows(out, x, c->d_logit_rows, c->n_logits, width, c->stream), "gather_logit_rows");
}

/* pick_launch: the pick into d_ids, its copy back into the next slot of the ring, and
 * the slot's event; nothing waits. */
static ns_status cuda_pick_launch(ns_backend *b, const float *logits, int n_rows, int n_vocab,
                                  const ns_row_sampling *params, ns_error *err) {
    cuda_backend *c = cb(b);
    ns_status st = sticky_status(c, err);
    if (st) return st;
    if (n_rows < 0 || n_rows > c->ids_cap)
        return ns_error_set(err, NS_ERR_INVALID, "cuda backend: a pick of %d rows, batch_set allowed %d", n_rows,
                            c->ids_cap);
    if (params && n_vocab > NS_SAMPLE_MAX_VOCAB)
        return ns_error_set(err, NS_ERR_INVALID, "cuda backend: device sampling supports n_vocab <= %d, not %d",
                            NS_SAMPLE_MAX_VOCAB, n_vocab);
    if (c->pick_count == 2) return ns_error_set(err, NS_ERR_INVALID, "cuda backend: a third pick outstanding");
    const int slot = (c->pick_head + c->pick_count) % 2;
    if (n_rows > c->pick[slot].cap) { /* the slot is free: its last copy was waited for */
        if (c->pick[slot].h_ids) cudaFreeHost(c->pick[slot].h_ids);
        if (c->pick[slot].h_samp) cudaFreeHost(c->pick[slot].h_samp);
        c->pick[slot].h_ids = NULL;
        c->pick[slot].h_samp = NULL;
        c->pick[slot].cap = 0;
        CUDA_TRY(cudaMallocHost((void **)&c->pick[slot].h_ids, (size_t)n_rows * sizeof(int32_t)),
                 "pick_launch (cudaMallocHost ids)");
        CUDA_TRY(cudaMallocHost((void **)&c->pick[slot].h_samp, (size_t)n_rows * sizeof(ns_row_sampling)),
                 "pick_launch (cudaMallocHost sampling)");
        c->pick[slot].cap = n_rows;
    }
    if (n_rows > 0) {
        if (params) {
            prof_mark(c, P_SAMPLE);
            memcpy(c->pick[slot].h_samp, params, (size_t)n_rows * sizeof *params);
            CUDA_TRY(cudaMemcpyAsync(c->d_samp, c->pick[slot].h_samp, (size_t)n_rows * sizeof *params,
                                     cudaMemcpyHostToDevice, c->stream),
                     "pick_launch (cudaMemcpyAsync params)");
            CUDA_TRY(ns_cuda_sample_rows(c->d_ids, logits, n_rows, n_vocab, c->d_samp, c->stream),
                     "pick_launch (sample_rows)");
        } else {
            prof_mark(c, P_ARGMAX);
            CUDA_TRY(ns_cuda_sample_greedy(c->d_ids, logits, n_rows, n_vocab, c->stream), "pick_launch (sample_greedy)");
        }
        CUDA_TRY(cudaMemcpyAsync(c->pick[slot].h_ids, c->d_ids, (size_t)n_rows * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost, c->stream),
                 "pick_launch (cudaMemcpyAsync ids)");
    }
    CUDA_TRY(cudaEventRecord(c->pick[slot].done, c->stream), "pick_launch (cudaEventRecord)");
    c->pick[slot].n = n_rows;
    c->pick_count++;
    c->pick_last_n = n_rows;
    if (c->prof.on) CUDA_TRY(prof_sync(c), "pick_launch (cudaStreamSynchronize)"); /* ops timed one by one */
    return NS_OK;
}

static ns_status cuda_pick_wait(ns_backend *b, int32_t *ids_host, int n_rows, ns_error *err) {
    cuda_backend *c = cb(b);
    if (c->pick_count == 0) return ns_error_set(err, NS_ERR_INVALID, "cuda backend: pick_wait with no pick launched");
    const int slot = c->pick_head;
    if (n_rows != c->pick[slot].n)
        return ns_error_set(err, NS_ERR_INVALID, "cuda backend: pick_wait for %d rows, the pick has %d", n_rows,
                            c->pick[slot].n);
    c->pick_head = (slot + 1) % 2;
    c->pick_count--;
    const double t0 = ns_time_now();
    CUDA_TRY(cudaEventSynchronize(c->pick[slot].done), "pick_wait (cudaEventSynchronize)");
    c->prof.host_wait_s += ns_time_now() - t0;
    if (n_rows > 0) memcpy(ids_host, c->pick[slot].h_ids, (size_t)n_rows * sizeof(int32_t));
    return sticky_status(c, err);
}

/* argmax_rows and sample_rows: a pick waited for at once (none may be outstanding). */
static ns_status pick_now(ns_backend *b, int32_t *ids_host, const float *logits, int n_rows, int n_vocab,
                          const ns_row_sampling *params, ns_error *err) {
    if (cb(b)->pick_count)
        return ns_error_set(err, NS_ERR_INVALID, "cuda backend: a waiting pick with a launched one outstanding");
    ns_status st = cuda_pick_launch(b, logits, n_rows, n_vocab, params, err);
    return st ? st : cuda_pick_wait(b, ids_host, n_rows, err);
}

static ns_status cuda_argmax_rows(ns_backend *b, int32_t *ids_host, const float *logits, int n_rows, int n_vocab,
                                  ns_error *err) {
    return pick_now(b, ids_host, logits, n_rows, n_vocab, NULL, err);
}

static ns_status cuda_sample_rows(ns_backend *b, int32_t *ids_host, const float *logits, int n_rows, int n_vocab,
                                  const ns_row_sampling *params, ns_error *err) {
    return pick_now(b, ids_host, logits, n_rows, n_vocab, params, err);
}

/* ---- CUDA graphs ----
 * A padded decode batch of a size seen before is run by replaying the recording of the
 * whole forward pass made the second time that size came (the first runs eagerly, so
 * that the kernels are loaded and their attributes set before anything is recorded).
 * Every pointer a recording holds is fixed between batches: weights, activations, the KV
 * pool, and the batch layout, whose contents batch_set rewrites in place before each
 * replay. */

static void graph_drop(cuda_backend *c, int i) {
    if (c->graph[i].exec) cudaGraphExecDestroy(c->graph[i].exec);
    memset(&c->graph[i], 0, sizeof c->graph[i]);
}

static ns_status cuda_graph_begin(ns_backend *b, int *n_rows, bool *replayed, ns_error *err) {
    cuda_backend *c = cb(b);
    *n_rows = c->n_tokens;
    *replayed = false;
    c->capturing = -1;
    if (!c->graph_rows) return NS_OK;
    int i = -1;
    for (int k = 0; k < NS_CUDA_MAX_GRAPHS && i < 0; k++)
        if (c->graph[k].rows == c->graph_rows) i = k;
    for (int k = 0; k < NS_CUDA_MAX_GRAPHS && i < 0; k++)
        if (c->graph[k].rows == 0) i = k, c->graph[k].rows = c->graph_rows;
    if (i < 0) return NS_OK; /* every slot taken by other sizes: eager */
    if (c->graph[i].exec && c->graph[i].gen != c->gen) { /* a buffer it points into moved */
        graph_drop(c, i);
        c->graph[i].rows = c->graph_rows;
    }
    if (c->graph[i].exec) {
        CUDA_TRY(cudaGraphLaunch(c->graph[i].exec, c->stream), "graph_begin (cudaGraphLaunch)");
        *replayed = true;
        return NS_OK;
    }
    if (c->graph[i].n_seen < 0 || ++c->graph[i].n_seen < 2) return NS_OK; /* eager: failed before, or first */
    CUDA_TRY(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal), "graph_begin (cudaStreamBeginCapture)");
    c->capturing = i;
    return NS_OK;
}

static ns_status cuda_graph_end(ns_backend *b, bool *rerun, ns_error *err) {
    cuda_backend *c = cb(b);
    *rerun = false;
    const int i = c->capturing;
    if (i < 0) return NS_OK;
    c->capturing = -1;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    if (e == cudaSuccess && !c->sticky) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess || c->sticky) {
        /* An op could not be recorded (its error, if any, is the recording's, not the
         * device's: nothing ran). This size runs eagerly from now on; the caller runs the
         * ops again now. A real fault shows again in that run. */
        if (exec) cudaGraphExecDestroy(exec);
        (void)cudaGetLastError();
        c->sticky = NS_OK;
        c->graph[i].n_seen = -1;
        *rerun = true;
        return NS_OK;
    }
    c->graph[i].exec = exec;
    c->graph[i].gen = c->gen;
    CUDA_TRY(cudaGraphLaunch(exec, c->stream), "graph_end (cudaGraphLaunch)");
    return NS_OK;
}

/* ---- lifetime ---- */

/* Precision fp8 (either half) on this device and in this mode, or why not: precise mode
 * (fp32-accurate, for tests) excludes it; the device needs FP8 (compute capability 8.9). */
static ns_status fp8_allowed(cuda_backend *c, ns_error *err) {
    if (c->precise)
        return ns_error_set(err, NS_ERR_INVALID,
                            "cuda backend: precision fp8 and NS_CUDA_PRECISE=1 (fp32-accurate GEMMs, for tests) "
                            "exclude each other");
    int major = 0, minor = 0;
    CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c->device), "cudaDeviceGetAttribute");
    CUDA_TRY(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, c->device), "cudaDeviceGetAttribute");
    if (major * 10 + minor < 89)
        return ns_error_set(err, NS_ERR_UNSUPPORTED,
                            "cuda backend: precision fp8 needs FP8 tensor cores (compute capability 8.9 or later); "
                            "device %d has %d.%d",
                            c->device, major, minor);
    return NS_OK;
}

/* Whether cuBLASLt's 128-block scales work here, and in which layout (c->blk_kb_major): a
 * GEMM of ones (M = N = 128, K = 256: two blocks) with scales that differ by row, laid out
 * each of the four ways (A's and B's [row][block] or [block][row]), against the product it
 * must give (each sum 256 times its two row scales, exact in bf16). cuBLAS documents
 * [row][block]; the probe takes nothing on trust, since a wrong layout scales silently
 * wrong. false with *why when none gives it. */
static bool probe_block(cuda_backend *c, const char **why) {
    enum { PM = 128, PN = 128, PK = 256, PKB = 2 };
    lt_plan p = {0};
    cublasStatus_t s = lt_try(c, &p, LT_BLOCK, PM, PN, PK, CUDA_R_16BF);
    if (s != CUBLAS_STATUS_SUCCESS) {
        lt_plan_clear(&p);
        *why = cublasGetStatusString(s);
        return false;
    }
    const size_t n_codes = (size_t)PK * (PM + PN), n_sa = (size_t)PN * PKB, n_sb = (size_t)PM * PKB;
    uint8_t *h_codes = malloc(n_codes), *codes = NULL;
    float *h_sa = malloc(n_sa * sizeof(float)), *h_sb = malloc(n_sb * sizeof(float)), *sa = NULL, *sb = NULL;
    uint16_t *h_d = malloc((size_t)PM * PN * sizeof(uint16_t)), *d = NULL;
    bool found = false;
    *why = "no layout of the scales gave the expected product";
    if (!h_codes || !h_sa || !h_sb || !h_d || cudaMalloc((void **)&codes, n_codes) != cudaSuccess ||
        cudaMalloc((void **)&sa, n_sa * sizeof(float)) != cudaSuccess ||
        cudaMalloc((void **)&sb, n_sb * sizeof(float)) != cudaSuccess ||
        cudaMalloc((void **)&d, (size_t)PM * PN * sizeof(uint16_t)) != cudaSuccess) {
        *why = "out of memory for the probe";
        goto done;
    }
    memset(h_codes, 0x38, n_codes); /* e4m3 1.0 */
    if (cudaMemcpyAsync(codes, h_codes, n_codes, cudaMemcpyHostToDevice, c->stream) != cudaSuccess) goto done;
    for (int lay = 0; lay < 4 && !found; lay++) {
        const bool a_kbm = lay & 1, b_kbm = lay & 2;
        for (int r = 0; r < PN; r++)
            for (int t = 0; t < PKB; t++) h_sa[a_kbm ? t * PN + r : r * PKB + t] = (float)(1 + r % 3);
        for (int r = 0; r < PM; r++)
            for (int t = 0; t < PKB; t++) h_sb[b_kbm ? t * PM + r : r * PKB + t] = (float)(1 + r % 5);
        const float one = 1.0f, zero = 0.0f;
        cublasLtMatmulDesc_t desc = c->lt_desc[LT_BLOCK];
        if (cudaMemcpyAsync(sa, h_sa, n_sa * sizeof(float), cudaMemcpyHostToDevice, c->stream) != cudaSuccess ||
            cudaMemcpyAsync(sb, h_sb, n_sb * sizeof(float), cudaMemcpyHostToDevice, c->stream) != cudaSuccess ||
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sa, sizeof sa) ||
            cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sb, sizeof sb) ||
            cublasLtMatmul(c->lt, desc, &one, codes, p.a, codes + (size_t)PK * PN, p.b, &zero, d, p.d, d, p.d, &p.algo,
                           c->cublas_ws, NS_CUDA_CUBLAS_WS, c->stream) ||
            cudaMemcpyAsync(h_d, d, (size_t)PM * PN * sizeof(uint16_t), cudaMemcpyDeviceToHost, c->stream) !=
                cudaSuccess ||
            cudaStreamSynchronize(c->stream) != cudaSuccess) {
            *why = "the probe's GEMM failed";
            break;
        }
        found = true;
        for (int m = 0; m < PM && found; m++) /* D (N, M) column-major: y (M, N) row-major */
            for (int n = 0; n < PN && found; n++) {
                const uint32_t bits = (uint32_t)h_d[(size_t)m * PN + n] << 16; /* bf16 to fp32 */
                float v;
                memcpy(&v, &bits, sizeof v);
                found = v == 256.0f * (float)(1 + n % 3) * (float)(1 + m % 5);
            }
        if (found) c->blk_kb_major[0] = a_kbm, c->blk_kb_major[1] = b_kbm;
    }
done:
    cudaGetLastError(); /* a failed allocation above is reported through *why */
    if (codes) cudaFree(codes);
    if (sa) cudaFree(sa);
    if (sb) cudaFree(sb);
    if (d) cudaFree(d);
    free(h_codes), free(h_sa), free(h_sb), free(h_d);
    lt_plan_clear(&p);
    return found;
}

/* use_fp8: cuBLASLt's handle, a matmul descriptor per way of scaling (e4m3 A transposed
 * and B, fp32 accumulation), which of them this device and cuBLAS have (a heuristic query
 * each; the 128-block one also runs, probe_block), and a first plan, so that a device or
 * cuBLAS without any FP8 GEMM fails here, naming why, rather than at the first step.
 * NS_CUDA_FP8_GEMM=outer|block|raw keeps that one way alone (for checks of each). */
static ns_status fp8_setup(cuda_backend *c, ns_error *err) {
    ns_status st0 = fp8_allowed(c, err);
    if (st0) return st0;
    static const char *const mode_key[LT_MODES] = {"outer", "block", "raw"};
    int only = -1;
    const char *force = getenv("NS_CUDA_FP8_GEMM");
    if (force && *force && strcmp(force, "auto")) {
        for (int m = 0; m < LT_MODES; m++)
            if (!strcmp(force, mode_key[m])) only = m;
        if (only < 0)
            return ns_error_set(err, NS_ERR_INVALID,
                                "cuda backend: NS_CUDA_FP8_GEMM=%.40s: expected outer, block, raw or auto", force);
    }
    c->fp8 = true;
    c->all_fp8 = true; /* until a layer matrix is not */
    cublasStatus_t s;
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    const int32_t scale_mode[LT_MODES] = {CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F,
                                          CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F,
                                          CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F};
    const uint64_t ws = NS_CUDA_CUBLAS_WS;
    if ((s = cublasLtCreate(&c->lt)) != CUBLAS_STATUS_SUCCESS) {
        c->lt = NULL;
        return cublas_fail(err, s, "cublasLtCreate");
    }
    for (int m = 0; m < LT_MODES; m++) {
        if ((s = cublasLtMatmulDescCreate(&c->lt_desc[m], CUBLAS_COMPUTE_32F, CUDA_R_32F)) != CUBLAS_STATUS_SUCCESS) {
            c->lt_desc[m] = NULL;
            return cublas_fail(err, s, "cublasLtMatmulDescCreate");
        }
        if ((s = cublasLtMatmulDescSetAttribute(c->lt_desc[m], CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t)) ||
            (s = cublasLtMatmulDescSetAttribute(c->lt_desc[m], CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n)) ||
            (m != LT_RAW && ((s = cublasLtMatmulDescSetAttribute(c->lt_desc[m], CUBLASLT_MATMUL_DESC_A_SCALE_MODE,
                                                                 &scale_mode[m], sizeof scale_mode[m])) ||
                             (s = cublasLtMatmulDescSetAttribute(c->lt_desc[m], CUBLASLT_MATMUL_DESC_B_SCALE_MODE,
                                                                 &scale_mode[m], sizeof scale_mode[m])))))
            return cublas_fail(err, s, "cublasLtMatmulDescSetAttribute");
    }
    /* The scaled forms' scale pointers, set before any heuristic query: cuBLASLt reads a
     * NULL one as "no scale" only in the scalar mode, and an H100 (CUDA 13.1) answered the
     * query of a scaled form without them with CUBLAS_STATUS_INVALID_VALUE, although both
     * forms exist on sm_90. Each GEMM sets its own before it runs. */
    CUDA_TRY(cudaMalloc((void **)&c->lt_scale_stub, 256), "cudaMalloc (fp8 scale placeholder)");
    CUDA_TRY(cudaMemsetAsync(c->lt_scale_stub, 0, 256, c->stream), "cudaMemsetAsync (fp8 scale placeholder)");
    for (int m = 0; m < LT_MODES; m++) {
        if (m == LT_RAW) continue;
        if ((s = cublasLtMatmulDescSetAttribute(c->lt_desc[m], CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &c->lt_scale_stub,
                                                sizeof c->lt_scale_stub)) ||
            (s = cublasLtMatmulDescSetAttribute(c->lt_desc[m], CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &c->lt_scale_stub,
                                                sizeof c->lt_scale_stub)))
            return cublas_fail(err, s, "cublasLtMatmulDescSetAttribute (scale pointers)");
    }
    if ((s = cublasLtMatmulPreferenceCreate(&c->lt_pref)) != CUBLAS_STATUS_SUCCESS) {
        c->lt_pref = NULL;
        return cublas_fail(err, s, "cublasLtMatmulPreferenceCreate");
    }
    if ((s = cublasLtMatmulPreferenceSetAttribute(c->lt_pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                   sizeof ws)))
        return cublas_fail(err, s, "cublasLtMatmulPreferenceSetAttribute");
    c->lt_plans = ns_calloc_array(NS_CUDA_LT_PLANS, sizeof(lt_plan));
    if (!c->lt_plans) return ns_error_set(err, NS_ERR_NOMEM, "cuda backend: out of host memory");
    /* which ways of scaling this cuBLASLt has, at a shape every way takes (K one block) */
    const char *why[LT_MODES];
    for (int m = 0; m < LT_MODES; m++) {
        why[m] = "not chosen (NS_CUDA_FP8_GEMM)";
        if (only >= 0 && only != m) continue;
        if (m == LT_BLOCK) {
            c->lt_on[m] = probe_block(c, &why[m]);
        } else {
            lt_plan p = {0};
            s = lt_try(c, &p, m, 16, 128, 128, m == LT_RAW ? CUDA_R_32F : CUDA_R_16BF);
            lt_plan_clear(&p);
            c->lt_on[m] = s == CUBLAS_STATUS_SUCCESS;
            why[m] = cublasGetStatusString(s);
        }
    }
    if (!c->lt_on[LT_OUTER] && !c->lt_on[LT_BLOCK] && !c->lt_on[LT_RAW])
        return ns_error_set(err, NS_ERR_UNSUPPORTED,
                            "cuda backend: precision fp8: cuBLASLt on device %d has no FP8 GEMM in a form the "
                            "backend uses (%s: %s; %s: %s; %s: %s)",
                            c->device, lt_mode_name[0], why[0], lt_mode_name[1], why[1], lt_mode_name[2], why[2]);
    if (!lt_plan_for(c, 16, 128, 128, CUDA_R_16BF)) {
        *err = c->sticky_err;
        return c->sticky;
    }
    if (!lt_plan_for(c, 16, 128, 128, CUDA_R_32F)) { /* no fp32 output: through bf16 (see gemm_fp8) */
        c->sticky = NS_OK;
        c->lt_bf16_only = true;
        fprintf(stderr, "cuda backend: device %d: cuBLASLt has no fp8 GEMM with fp32 output here; fp8 GEMMs write "
                        "bf16, widened to fp32\n", c->device);
    }
    /* said once per backend, so that a job's log shows it */
    fprintf(stderr, "cuda backend: device %d: precision fp8: layer matrices and their inputs in FP8 E4M3 (results "
                    "differ from bf16); GEMMs with %s: %s, %s: %s%s, %s: %s\n",
            c->device, lt_mode_name[0], c->lt_on[0] ? "yes" : why[0], lt_mode_name[1], c->lt_on[1] ? "yes" : why[1],
            !c->lt_on[1] ? "" : c->blk_kb_major[0] || c->blk_kb_major[1] ? " (scales [block][row])" : "",
            lt_mode_name[2], c->lt_on[2] ? "yes" : why[2]);
    return NS_OK;
}

/* use_fp8 (the engine's precision fp8): before any weight is loaded or matmul run. */
static ns_status cuda_use_fp8(ns_backend *b, ns_error *err) {
    cuda_backend *c = cb(b);
    if (c->fp8) return NS_OK;
    if (c->n_weights || c->x_bf16_cap)
        return ns_error_set(err, NS_ERR_INVALID, "cuda backend: precision fp8 asked after weights were loaded");
    return fp8_setup(c, err);
}

/* use_kv_fp8 (the engine's precision fp8): the KV cache as e4m3 codes with a scale per
 * (slot, KV head) row, where the fast attention kernel takes the shape
 * (ns_cuda_kv_fp8_fits) on a device with FP8 conversions (compute capability 8.9 or
 * later); *on says whether it will be. Before kv_alloc. */
static ns_status cuda_use_kv_fp8(ns_backend *b, int n_head, int n_head_kv, int head_dim, bool *on, ns_error *err) {
    cuda_backend *c = cb(b);
    *on = false;
    if (c->k_pool) return ns_error_set(err, NS_ERR_INVALID, "cuda backend: FP8 KV cache asked after kv_alloc");
    ns_status st0 = fp8_allowed(c, err);
    if (st0) return st0;
    if (!ns_cuda_kv_fp8_fits(n_head, n_head_kv, head_dim)) return NS_OK;
    c->kv_type = NS_CUDA_TYPE_E4M3;
    c->kv_n_head = n_head;
    c->base.kv_elem_bytes = 1;
    c->base.kv_row_extra_bytes = sizeof(float);
    *on = true;
    fprintf(stderr, "cuda backend: device %d: precision fp8: the KV cache in FP8 E4M3, a scale per token and KV head\n",
            c->device);
    return NS_OK;
}

static void cuda_destroy(ns_backend *b) {
    cuda_backend *c = cb(b);
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->stream) cudaStreamSynchronize(c->stream);
    prof_report(c);
    free_kv(c);
    if (c->h_batch) cudaFreeHost(c->h_batch);
    if (c->d_batch) cudaFree(c->d_batch);
    if (c->x_bf16) cudaFree(c->x_bf16);
    if (c->x_lo) cudaFree(c->x_lo);
    if (c->x_fp8) cudaFree(c->x_fp8);
    if (c->x_scale) cudaFree(c->x_scale);
    if (c->y_bf16) cudaFree(c->y_bf16);
    if (c->y_raw) cudaFree(c->y_raw);
    if (c->x_scale_blk) cudaFree(c->x_scale_blk);
    if (c->lt_scale_stub) cudaFree(c->lt_scale_stub);
    if (c->lt_plans)
        for (int i = 0; i < c->n_lt_plans; i++) lt_plan_clear(&c->lt_plans[i]);
    free(c->lt_plans);
    if (c->lt_pref) cublasLtMatmulPreferenceDestroy(c->lt_pref);
    for (int m = 0; m < LT_MODES; m++)
        if (c->lt_desc[m]) cublasLtMatmulDescDestroy(c->lt_desc[m]);
    if (c->lt) cublasLtDestroy(c->lt);
    free_ids(c);
    for (int i = 0; i < NS_CUDA_MAX_GRAPHS; i++) graph_drop(c, i);
    if (c->cublas_ws) cudaFree(c->cublas_ws);
    if (c->batch_copied) cudaEventDestroy(c->batch_copied);
    for (int i = 0; i < 2; i++)
        if (c->pick[i].done) cudaEventDestroy(c->pick[i].done);
    if (c->cublas) cublasDestroy(c->cublas);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

static const ns_backend_ops cuda_ops = {
    .name = "cuda",
    .destroy = cuda_destroy,
    .buf_alloc = cuda_buf_alloc,
    .buf_free = cuda_buf_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .weight_load = cuda_weight_load,
    .weight_free = cuda_weight_free,
    .weight_f32 = cuda_weight_f32,
    .kv_alloc = cuda_kv_alloc,
    .batch_set = cuda_batch_set,
    .embed = cuda_embed,
    .rmsnorm = cuda_rmsnorm,
    .matmul = cuda_matmul,
    .add_bias = cuda_add_bias,
    .rope = cuda_rope,
    .kv_store = cuda_kv_store,
    .attention = cuda_attention,
    .swiglu = cuda_swiglu,
    .add = cuda_add,
    .gather_logit_rows = cuda_gather_logit_rows,
    .argmax_rows = cuda_argmax_rows,
    .sample_rows = cuda_sample_rows,
    .pick_launch = cuda_pick_launch,
    .pick_wait = cuda_pick_wait,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .use_fp8 = cuda_use_fp8,
    .use_kv_fp8 = cuda_use_kv_fp8,
};

int ns_backend_cuda_device(const ns_backend *b) {
    return b && b->ops->destroy == cuda_destroy ? ((const cuda_backend *)b)->device : -1;
}

void *ns_backend_cuda_stream(ns_backend *b) { return cb(b)->stream; }

bool ns_backend_cuda_failed(const ns_backend *b) { return ((const cuda_backend *)b)->sticky != NS_OK; }

void ns_backend_cuda_fail(ns_backend *b, const char *what) {
    cuda_backend *c = cb(b);
    if (c->sticky) return;
    c->sticky = ns_error_set(&c->sticky_err, NS_ERR_BACKEND, "cuda backend: %s", what);
}

ns_status ns_backend_cuda_device_count(int *n_devices, ns_error *err) {
    int n = 0;
    *n_devices = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return ns_error_set(err, NS_ERR_BACKEND, "no CUDA device: %s", cudaGetErrorString(e));
    }
    if (n <= 0) return ns_error_set(err, NS_ERR_BACKEND, "no CUDA device: the CUDA runtime reports 0 devices");
    *n_devices = n;
    return NS_OK;
}

ns_status ns_backend_cuda_create(int device, ns_backend **out, ns_error *err) {
    *out = NULL;
    int n = 0;
    ns_status st = ns_backend_cuda_device_count(&n, err);
    if (st) return st;
    if (device < 0 || device >= n)
        return ns_error_set(err, NS_ERR_INVALID, "cuda backend: device %d is not in [0, %d)", device, n);
    cuda_backend *c = calloc(1, sizeof *c);
    if (!c) return ns_error_set(err, NS_ERR_NOMEM, "cuda backend: out of host memory");
    c->ops = cuda_ops;
    c->base.ops = &c->ops;
    c->device = device;
    const char *precise = getenv("NS_CUDA_PRECISE");
    c->precise = precise && !strcmp(precise, "1");
    /* the speed switches and their defaults: switches.h */
    c->graphs_on = ns_switch("NS_CUDA_GRAPHS", NS_DEFAULT_CUDA_GRAPHS, 1);
    if (ns_switch("NS_CUDA_FUSED_FFN", NS_DEFAULT_CUDA_FUSED_FFN, 1) && !c->precise)
        c->ops.gate_up_swiglu = cuda_gate_up_swiglu;
    if (ns_switch("NS_CUDA_FUSED_NORM", NS_DEFAULT_CUDA_FUSED_NORM, 1)) c->ops.add_rmsnorm = cuda_add_rmsnorm;
    if (ns_switch("NS_CUDA_FUSED_QKV", NS_DEFAULT_CUDA_FUSED_QKV, 1)) {
        c->ops.weight_join = cuda_weight_join;
        c->ops.qkv_rope = cuda_qkv_rope;
    }
    c->capturing = -1;
    c->kv_type = c->precise ? NS_CUDA_TYPE_F32 : NS_CUDA_TYPE_BF16;
    c->base.kv_elem_bytes = c->precise ? 4 : 2;
    cudaError_t e;
    cublasStatus_t s;
    if ((e = cudaSetDevice(device)) != cudaSuccess) {
        st = cuda_fail(err, e, "cudaSetDevice");
        goto fail;
    }
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        st = cuda_fail(err, e, "cudaStreamCreateWithFlags");
        goto fail;
    }
    if ((e = cudaEventCreateWithFlags(&c->batch_copied, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&c->pick[0].done, cudaEventDisableTiming)) != cudaSuccess ||
        (e = cudaEventCreateWithFlags(&c->pick[1].done, cudaEventDisableTiming)) != cudaSuccess) {
        st = cuda_fail(err, e, "cudaEventCreateWithFlags");
        goto fail;
    }
    const char *profile = getenv("NS_CUDA_PROFILE");
    if (profile && !strcmp(profile, "1")) {
        for (int i = 0; i <= PROF_MAX; i++)
            if ((e = cudaEventCreate(&c->prof.ev[i])) != cudaSuccess) {
                st = cuda_fail(err, e, "cudaEventCreate (profile)");
                goto fail;
            }
        c->prof.on = true;
    }
    if ((s = cublasCreate(&c->cublas)) != CUBLAS_STATUS_SUCCESS) {
        c->cublas = NULL;
        st = cublas_fail(err, s, "cublasCreate");
        goto fail;
    }
    if ((s = cublasSetStream(c->cublas, c->stream)) != CUBLAS_STATUS_SUCCESS) {
        st = cublas_fail(err, s, "cublasSetStream");
        goto fail;
    }
    /* a workspace of our own, so that no GEMM allocates (none may inside a recording) */
    if ((st = dev_alloc(c, NS_CUDA_CUBLAS_WS, "the cuBLAS workspace", &c->cublas_ws, err))) goto fail;
    if ((s = cublasSetWorkspace(c->cublas, c->cublas_ws, NS_CUDA_CUBLAS_WS)) != CUBLAS_STATUS_SUCCESS) {
        st = cublas_fail(err, s, "cublasSetWorkspace");
        goto fail;
    }
    *out = &c->base;
    return NS_OK;
fail:
    cuda_destroy(&c->base);
    return st;
}

#endif /* NS_HAVE_CUDA */
