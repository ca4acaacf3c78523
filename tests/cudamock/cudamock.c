/* cudamock.c: a CPU stand-in for the CUDA device under the CUDA backend's host code. It
 * defines the CUDA runtime and cuBLAS functions that engine/backend_cuda.c calls, and the
 * ns_cuda_* kernels (kernels/cuda/ops_cuda.h) as their CPU references, so that the
 * backend's own logic (batch layout, padded decode batches, CUDA graph recording and
 * replay, sampling plumbing, out-of-memory mapping) runs in `make test` on machines
 * without a GPU. It is linked instead of libcudart, libcublas and libnightshift_cuda.a
 * into build/unit-cudamock only; it says nothing about the kernels themselves (those are
 * checked on a GPU by tests/gpu/run.sh).
 *
 * What it models:
 * - Device memory is host memory, one mapping per cudaMalloc. New memory holds garbage
 *   (real device memory is not zeroed); past NS_CUDAMOCK_MEM bytes (default 64 GiB)
 *   cudaMalloc fails with cudaErrorMemoryAllocation. cudaFree makes the pages
 *   inaccessible and never maps them again, so that anything still pointing into freed
 *   memory (a recording, say) crashes the test instead of passing by luck.
 * - One stream, and work on it is late: kernels, GEMMs, copies and memsets are queued and
 *   run, in order, only when the host synchronizes: cudaStreamSynchronize (everything),
 *   cudaEventSynchronize (up to where the event was recorded), cudaFree and cudaFreeHost
 *   (everything, as the real ones do). So the host reads a pinned buffer before the copy
 *   into it has run, or rewrites one before the copy out of it has run, only if it skipped
 *   the wait it needs, and then it reads or sends stale data. A copy from pageable host
 *   memory to the device takes its source at once (as CUDA stages it); a copy to
 *   pageable host memory synchronizes first (as in CUDA). Pinned memory is what
 *   cudaMallocHost returned.
 * - Stream capture: between cudaStreamBeginCapture and cudaStreamEndCapture every
 *   kernel, GEMM, copy and memset is recorded, not run; cudaGraphLaunch runs the record
 *   with the pointers and scalars it was recorded with, reading memory as it is then.
 *   Calls a real capture refuses (cudaMalloc, cudaFree, synchronization) return
 *   cudaErrorStreamCaptureUnsupported and invalidate the capture; a GEMM recorded before
 *   cublasSetWorkspace is refused the same way (cuBLAS would allocate). With
 *   NS_CUDAMOCK_CAPTURE_FAIL=1 the first GEMM of every capture is refused.
 * - cuBLASLt: the FP8 form backend_cuda.c uses (e4m3 A transposed and B, fp32
 *   accumulation, D of fp32 or bf16) with its three kinds of scales: outer-vector (a
 *   scale per row of A and of B), 128-block (VEC128_32F: a scale per row and 128-wide
 *   block of K; K a multiple of 128 here), and none (the scalar mode with no scale
 *   pointers: scale 1). Computed as e4m3 -> float, sgemm (one per K block for 128-block
 *   scales), then the scales; anything else is CUBLAS_STATUS_NOT_SUPPORTED, at the
 *   heuristic query and at the call. A scaled form queried with no scale pointers set is
 *   CUBLAS_STATUS_INVALID_VALUE: what an H100 (CUDA 13.1) answered for both scaled forms
 *   when the backend queried them so. NS_CUDAMOCK_LT_MODES (a list of outer, block, raw;
 *   default all three) says which kinds this cuBLASLt has, so that each way the backend
 *   can take runs here. A 128-block scale tensor is read as [row][block] (cuBLAS's
 *   documented layout), or [block][row] with NS_CUDAMOCK_LT_KB_MAJOR=1, so that the
 *   backend's probe of the layout is tested both ways. NS_CUDAMOCK_LT_NO_F32=1: no fp32 D
 *   either, as a cuBLAS without that form would.
 *   Compute capability 9.0 (NS_CUDAMOCK_CC=86 says 8.6, say).
 * - Counters for the tests: ns_cudamock_stats.
 */
#include <cblas.h>
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fp8.h"
#include "ops.h"
#include "ops_cuda.h"
#include "sample_rule.h"
#include "cudamock.h"
#ifdef NS_CUDAMOCK_EMU_KERNELS
#include "emu_device.h"
#endif

/* ---- state ---------------------------------------------------------------------- */

typedef struct tape_entry {
    void (*run)(const void *args);
    _Alignas(16) unsigned char args[192];
} tape_entry;

typedef struct mock_graph {
    tape_entry *e;
    int n, cap;
} mock_graph;

/* The stream's queue: entries [done, n) not run yet; base: how many ran before e[0]
 * (positions are absolute, so events stay valid when the queue empties). */
static struct {
    tape_entry *e;
    size_t n, cap, done, base;
} Q;

/* Pinned host blocks (cudaMallocHost). */
static struct {
    struct { const char *p; size_t n; } *b;
    int n, cap;
} PIN;

static struct {
    int capturing, invalidated, gemms_in_capture;
    mock_graph *cur;
    int workspace_set;
    size_t allocated, limit;
    cudaError_t last_error;
    ns_cudamock_counters n;
} M;

int ns_cudamock_active(void) { return 1; }

void ns_cudamock_stats(ns_cudamock_counters *out) { *out = M.n; }
size_t ns_cudamock_allocated(void) { return M.allocated; }
void ns_cudamock_set_mem_limit(size_t bytes) { M.limit = bytes; }

static size_t mem_limit(void) {
    if (!M.limit) {
        const char *s = getenv("NS_CUDAMOCK_MEM");
        char *end = NULL;
        unsigned long long v = s && *s ? strtoull(s, &end, 10) : 0;
        M.limit = end && *end == '\0' && v > 0 ? (size_t)v : (size_t)64 << 30;
    }
    return M.limit;
}

static cudaError_t refuse_in_capture(void) {
    if (!M.capturing) return cudaSuccess;
    M.invalidated = 1;
    return cudaErrorStreamCaptureUnsupported;
}

static void q_push(const tape_entry *t) {
    if (Q.n == Q.cap) {
        size_t cap = Q.cap ? 2 * Q.cap : 1024;
        tape_entry *e = realloc(Q.e, cap * sizeof *e);
        if (!e) abort();
        Q.e = e, Q.cap = cap;
    }
    Q.e[Q.n++] = *t;
}

/* Runs the queued work up to absolute position upto (everything: SIZE_MAX). */
static void q_run_to(size_t upto) {
    while (Q.done < Q.n && Q.base + Q.done < upto) {
        const tape_entry *t = &Q.e[Q.done++];
        t->run(t->args);
    }
    if (Q.done == Q.n) Q.base += Q.n, Q.n = Q.done = 0;
}
static void q_run_all(void) { q_run_to((size_t)-1); }

/* Queues run(args) on the stream, or records it while capturing. */
static cudaError_t launch(void (*run)(const void *), const void *args, size_t n) {
    if (n > sizeof(((tape_entry *)0)->args)) {
        fprintf(stderr, "cudamock: launch arguments of %zu bytes\n", n);
        abort();
    }
    tape_entry t = {.run = run};
    memcpy(t.args, args, n);
    if (!M.capturing) {
        q_push(&t);
        return cudaSuccess;
    }
    mock_graph *g = M.cur;
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 256;
        tape_entry *e = realloc(g->e, (size_t)cap * sizeof *e);
        if (!e) abort();
        g->e = e, g->cap = cap;
    }
    g->e[g->n++] = t;
    return cudaSuccess;
}
#define LAUNCH(fn, a) launch(fn, &(a), sizeof(a))

#ifdef NS_CUDAMOCK_EMU_KERNELS
/* The emulated kernels' launches (tests/cudamock/emu_device.cpp) join the stream here. */
void ns_cudamock_enqueue(void (*run)(const void *), const void *args, size_t n) {
    if (launch(run, args, n) != cudaSuccess) abort();
}
#endif

/* ---- runtime: memory ------------------------------------------------------------ */

/* Each block: a mapping of its own, its size in the first 64 bytes. */
typedef struct { size_t n, map; size_t pad[6]; } mem_head;

cudaError_t cudaMalloc(void **p, size_t n) {
    *p = NULL;
    if (refuse_in_capture()) return cudaErrorStreamCaptureUnsupported;
    if (M.allocated + n > mem_limit()) {
        M.n.alloc_failures++;
        return M.last_error = cudaErrorMemoryAllocation;
    }
    const size_t map = (sizeof(mem_head) + n + 4095) & ~(size_t)4095;
    mem_head *h = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (h == MAP_FAILED) return M.last_error = cudaErrorMemoryAllocation;
    h->n = n, h->map = map;
    memset(h + 1, 0xa5, n); /* not zeroed, as on a device */
    M.allocated += n;
    *p = h + 1;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    if (refuse_in_capture()) return cudaErrorStreamCaptureUnsupported;
    q_run_all(); /* cudaFree synchronizes */
    mem_head *h = (mem_head *)p - 1;
    M.allocated -= h->n;
    /* kept mapped, inaccessible: the addresses are never handed out again */
    if (mprotect(h, h->map, PROT_NONE) != 0) return cudaErrorInvalidValue;
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t n) {
    *p = malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    if (PIN.n == PIN.cap) {
        int cap = PIN.cap ? 2 * PIN.cap : 16;
        void *b = realloc(PIN.b, (size_t)cap * sizeof *PIN.b);
        if (!b) abort();
        PIN.b = b, PIN.cap = cap;
    }
    PIN.b[PIN.n].p = *p, PIN.b[PIN.n].n = n;
    PIN.n++;
    return cudaSuccess;
}

static bool pinned(const void *p, size_t n) {
    for (int i = 0; i < PIN.n; i++)
        if ((const char *)p >= PIN.b[i].p && (const char *)p + n <= PIN.b[i].p + PIN.b[i].n) return true;
    return false;
}

cudaError_t cudaFreeHost(void *p) {
    q_run_all(); /* synchronizes */
    for (int i = 0; i < PIN.n; i++)
        if (PIN.b[i].p == p) PIN.b[i] = PIN.b[--PIN.n];
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
    *total = mem_limit();
    *free_b = mem_limit() - M.allocated;
    return cudaSuccess;
}

typedef struct { void *dst; const void *src; size_t n; void *staged; } copy_args;
static void run_copy(const void *a) {
    const copy_args *c = a;
    memmove(c->dst, c->src, c->n);
    free(c->staged);
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind, cudaStream_t s) {
    (void)s;
    copy_args a = {dst, src, n, NULL};
    if (!M.capturing && kind == cudaMemcpyDeviceToHost && !pinned(dst, n)) { /* synchronous, as in CUDA */
        q_run_all();
        memmove(dst, src, n);
        return cudaSuccess;
    }
    if (!M.capturing && kind == cudaMemcpyHostToDevice && !pinned(src, n)) { /* staged now, as in CUDA */
        if (!(a.staged = malloc(n ? n : 1))) return cudaErrorMemoryAllocation;
        memcpy(a.staged, src, n);
        a.src = a.staged;
    }
    return LAUNCH(run_copy, a);
}

/* The synchronous forms (gpu-bench): after everything queued before them, as on CUDA's
 * legacy default stream. */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind kind) {
    (void)kind;
    if (refuse_in_capture()) return cudaErrorStreamCaptureUnsupported;
    q_run_all();
    memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *dst, int v, size_t n) {
    if (refuse_in_capture()) return cudaErrorStreamCaptureUnsupported;
    q_run_all();
    memset(dst, v, n);
    return cudaSuccess;
}

typedef struct { void *dst; int v; size_t n; } set_args;
static void run_set(const void *a) {
    const set_args *c = a;
    memset(c->dst, c->v, c->n);
}

cudaError_t cudaMemsetAsync(void *dst, int v, size_t n, cudaStream_t s) {
    (void)s;
    set_args a = {dst, v, n};
    return LAUNCH(run_set, a);
}

/* ---- runtime: devices, streams, events, errors ---------------------------------- */

static int n_devices(void) {
    const char *s = getenv("NS_CUDAMOCK_DEVICES");
    char *end = NULL;
    long n = s && *s ? strtol(s, &end, 10) : 1;
    return end && *end ? 1 : (int)n;
}

cudaError_t cudaGetDeviceCount(int *n) {
    *n = n_devices();
    return *n > 0 ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device) {
    if (device < 0 || device >= n_devices()) return cudaErrorInvalidDevice;
    const char *cc = getenv("NS_CUDAMOCK_CC");
    int v = cc ? (int)strtol(cc, NULL, 10) : 90;
    if (attr == cudaDevAttrComputeCapabilityMajor) *value = v / 10;
    else if (attr == cudaDevAttrComputeCapabilityMinor) *value = v % 10;
    else return cudaErrorInvalidValue;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int d) { return d >= 0 && d < n_devices() ? cudaSuccess : cudaErrorInvalidDevice; }

static int dummy_object;

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    (void)flags;
    *s = (cudaStream_t)&dummy_object;
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    (void)s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    (void)s;
    if (refuse_in_capture()) return cudaErrorStreamCaptureUnsupported;
    q_run_all();
    return cudaSuccess;
}
/* An event: the queue position it was recorded at. */
typedef struct { size_t pos; } mock_event;
cudaError_t cudaEventCreate(cudaEvent_t *e) {
    mock_event *m = calloc(1, sizeof *m);
    *e = (cudaEvent_t)m;
    return m ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    (void)flags;
    return cudaEventCreate(e);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    free(e);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    (void)s;
    ((mock_event *)e)->pos = Q.base + Q.n;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (refuse_in_capture()) return cudaErrorStreamCaptureUnsupported;
    q_run_to(((mock_event *)e)->pos);
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    (void)a, (void)b;
    *ms = 0.0f;
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = M.last_error;
    M.last_error = cudaSuccess;
    return e;
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return "cudamock: some error";
    }
}
const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    default: return "cudaErrorUnknown";
    }
}

/* ---- runtime: capture and graphs ------------------------------------------------- */

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    (void)s, (void)mode;
    if (M.capturing) return cudaErrorIllegalState;
    M.cur = calloc(1, sizeof *M.cur);
    if (!M.cur) return cudaErrorMemoryAllocation;
    M.capturing = 1, M.invalidated = 0, M.gemms_in_capture = 0;
    M.n.captures++;
    return cudaSuccess;
}

static void graph_free(mock_graph *g) {
    if (!g) return;
    free(g->e);
    free(g);
}

cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph) {
    (void)s;
    *graph = NULL;
    if (!M.capturing) return cudaErrorIllegalState;
    M.capturing = 0;
    if (M.invalidated) {
        graph_free(M.cur);
        M.cur = NULL;
        M.n.captures_failed++;
        return cudaErrorStreamCaptureInvalidated;
    }
    *graph = (cudaGraph_t)M.cur;
    M.cur = NULL;
    return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    (void)flags;
    const mock_graph *g = (const mock_graph *)graph;
    mock_graph *x = calloc(1, sizeof *x);
    if (!x || !g) return cudaErrorInvalidValue;
    x->e = malloc((size_t)(g->n ? g->n : 1) * sizeof *x->e);
    if (!x->e) return cudaErrorMemoryAllocation;
    memcpy(x->e, g->e, (size_t)g->n * sizeof *x->e);
    x->n = x->cap = g->n;
    *exec = (cudaGraphExec_t)x;
    return cudaSuccess;
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    (void)s;
    if (M.capturing) return refuse_in_capture();
    const mock_graph *x = (const mock_graph *)exec;
    for (int i = 0; i < x->n; i++) q_push(&x->e[i]);
    M.n.graph_launches++;
    return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    graph_free((mock_graph *)g);
    return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x) {
    graph_free((mock_graph *)x);
    return cudaSuccess;
}

/* ---- cuBLAS --------------------------------------------------------------------- */

cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
    *h = (cublasHandle_t)&dummy_object;
    M.workspace_set = 0;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
    (void)h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
    (void)h, (void)s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t h, void *ws, size_t n) {
    (void)h;
    M.workspace_set = ws != NULL && n > 0;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "cudamock: cuBLAS error";
}

/* C (m, n; column-major, ldc) = alpha A^T B + beta C with A (k, m; lda) and B (k, n; ldb)
 * in bf16, C fp32: the one form backend_cuda.c uses (row-major y = x W^T). */
typedef struct {
    int m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const uint16_t *A, *B;
    void *C;
    bool c_bf16; /* C of CUDA_R_16BF (rounded once, from the fp32 sum) */
} gemm_args;

static void run_gemm(const void *p) {
    const gemm_args *g = p;
    for (int j = 0; j < g->n; j++)
        for (int i = 0; i < g->m; i++) {
            double acc = 0.0;
            for (int l = 0; l < g->k; l++)
                acc += (double)ns_bf16_to_fp32(g->A[l + (size_t)i * g->lda]) * ns_bf16_to_fp32(g->B[l + (size_t)j * g->ldb]);
            const size_t at = i + (size_t)j * g->ldc;
            if (g->c_bf16) {
                uint16_t *c = (uint16_t *)g->C + at;
                *c = ns_fp32_to_bf16(g->alpha * (float)acc + (g->beta != 0.0f ? g->beta * ns_bf16_to_fp32(*c) : 0.0f));
            } else {
                float *c = (float *)g->C + at;
                *c = g->alpha * (float)acc + (g->beta != 0.0f ? g->beta * *c : 0.0f);
            }
        }
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType Atype, int lda, const void *B,
                            cudaDataType Btype, int ldb, const void *beta, void *C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    (void)h, (void)algo;
    if (ta != CUBLAS_OP_T || tb != CUBLAS_OP_N || Atype != CUDA_R_16BF || Btype != CUDA_R_16BF ||
        (Ctype != CUDA_R_32F && Ctype != CUDA_R_16BF) || compute != CUBLAS_COMPUTE_32F || m < 0 || n < 0 || k < 0 || lda < k || ldb < k || ldc < m)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (M.capturing) {
        const char *f = getenv("NS_CUDAMOCK_CAPTURE_FAIL");
        if (!M.workspace_set || (f && !strcmp(f, "1") && M.gemms_in_capture == 0)) {
            M.invalidated = 1;
            return CUBLAS_STATUS_NOT_SUPPORTED;
        }
        M.gemms_in_capture++;
    }
    gemm_args a = {m, n, k, lda, ldb, ldc, *(const float *)alpha, *(const float *)beta, A, B, C, Ctype == CUDA_R_16BF};
    M.n.gemms_bf16_out += Ctype == CUDA_R_16BF;
    return LAUNCH(run_gemm, a) == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

/* ---- cuBLASLt: the FP8 GEMM ------------------------------------------------------
 * Descriptors live inside the opaque structs cuBLASLt's header gives their handles. */

typedef struct {
    cublasComputeType_t compute;
    cudaDataType scale_type;
    int32_t transa, transb, a_mode, b_mode;
    const float *a_scale, *b_scale;
} lt_desc;
typedef struct { cudaDataType type; uint64_t rows, cols; int64_t ld; } lt_layout;
typedef struct { uint64_t ws; } lt_pref;
_Static_assert(sizeof(lt_desc) <= sizeof(cublasLtMatmulDescOpaque_t), "lt_desc fits");
_Static_assert(sizeof(lt_layout) <= sizeof(cublasLtMatrixLayoutOpaque_t), "lt_layout fits");
_Static_assert(sizeof(lt_pref) <= sizeof(cublasLtMatmulPreferenceOpaque_t), "lt_pref fits");

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    *h = (cublasLtHandle_t)&dummy_object;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    (void)h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute, cudaDataType scale) {
    *d = calloc(1, sizeof **d);
    if (!*d) return CUBLAS_STATUS_ALLOC_FAILED;
    lt_desc *x = (lt_desc *)(*d)->data;
    x->compute = compute;
    x->scale_type = scale;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    free(d);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t n) {
    lt_desc *x = (lt_desc *)d->data;
    switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: if (n != 4) break; memcpy(&x->transa, buf, 4); return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_TRANSB: if (n != 4) break; memcpy(&x->transb, buf, 4); return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_A_SCALE_MODE: if (n != 4) break; memcpy(&x->a_mode, buf, 4); return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_B_SCALE_MODE: if (n != 4) break; memcpy(&x->b_mode, buf, 4); return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER:
        if (n != sizeof(void *)) break;
        memcpy(&x->a_scale, buf, n);
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER:
        if (n != sizeof(void *)) break;
        memcpy(&x->b_scale, buf, n);
        return CUBLAS_STATUS_SUCCESS;
    default: break;
    }
    return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    *l = calloc(1, sizeof **l);
    if (!*l) return CUBLAS_STATUS_ALLOC_FAILED;
    *(lt_layout *)(*l)->data = (lt_layout){type, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    free(l);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    *p = calloc(1, sizeof **p);
    return *p ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_ALLOC_FAILED;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    free(p);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t n) {
    if (attr != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES || n != sizeof(uint64_t)) return CUBLAS_STATUS_INVALID_VALUE;
    memcpy(&((lt_pref *)p->data)->ws, buf, n);
    return CUBLAS_STATUS_SUCCESS;
}

/* Whether NS_CUDAMOCK_LT_MODES (default: every kind) names this kind of scales. */
static bool lt_mode_on(const char *name) {
    const char *m = getenv("NS_CUDAMOCK_LT_MODES");
    if (!m) return true;
    const size_t n = strlen(name);
    for (const char *p = m; (p = strstr(p, name)); p += n)
        if ((p == m || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return true;
    return false;
}

enum { LT_OUTER, LT_BLOCK, LT_RAW, LT_BF16, LT_NONE };

/* The kind of scales of a supported form, else LT_NONE. The form: D (m, n) = sum_k A(k, i)
 * B(k, j) scaled, A (k, m) and B (k, n) e4m3 with ld k (A transposed), k and m multiples
 * of 16 (of 128 for k with 128-block scales), D (m, n) fp32 or bf16 with ld m. LT_BF16:
 * the same with A and B bf16 and no scales (gpu-bench gemm-shapes). */
static int lt_kind(const lt_desc *x, const lt_layout *a, const lt_layout *b, const lt_layout *c, const lt_layout *d) {
    int kind = LT_NONE;
    const bool bf16 = a->type == CUDA_R_16BF && b->type == CUDA_R_16BF;
    if (x->a_mode == CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F && x->b_mode == x->a_mode && lt_mode_on("outer"))
        kind = LT_OUTER;
    else if (x->a_mode == CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F && x->b_mode == x->a_mode && lt_mode_on("block") &&
             a->rows % 128 == 0)
        kind = LT_BLOCK;
    else if (x->a_mode == CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F && x->b_mode == x->a_mode && bf16 && !x->a_scale &&
             !x->b_scale)
        kind = LT_BF16;
    else if (x->a_mode == CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F && x->b_mode == x->a_mode && lt_mode_on("raw"))
        kind = LT_RAW;
    const bool ok = x->compute == CUBLAS_COMPUTE_32F && x->scale_type == CUDA_R_32F && x->transa == CUBLAS_OP_T &&
                    x->transb == CUBLAS_OP_N &&
                    (kind == LT_BF16 || (a->type == CUDA_R_8F_E4M3 && b->type == CUDA_R_8F_E4M3)) &&
                    (d->type == CUDA_R_32F || d->type == CUDA_R_16BF) &&
                    !(d->type == CUDA_R_32F && getenv("NS_CUDAMOCK_LT_NO_F32")) && !memcmp(c, d, sizeof *c) &&
                    a->rows == b->rows && a->rows % 16 == 0 && a->cols % 16 == 0 && (int64_t)a->rows == a->ld &&
                    (int64_t)b->rows == b->ld && d->rows == a->cols && d->cols == b->cols &&
                    (int64_t)d->rows == d->ld;
    return ok ? kind : LT_NONE;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t desc,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                              cublasLtMatmulPreference_t pref, int n_req,
                                              cublasLtMatmulHeuristicResult_t *res, int *n_found) {
    (void)h, (void)pref;
    *n_found = 0;
    if (n_req < 1) return CUBLAS_STATUS_INVALID_VALUE;
    const lt_desc *x = (const lt_desc *)desc->data;
    const int kind = lt_kind(x, (const lt_layout *)a->data, (const lt_layout *)b->data, (const lt_layout *)c->data,
                             (const lt_layout *)d->data);
    if (kind == LT_NONE) return CUBLAS_STATUS_NOT_SUPPORTED;
    /* a scaled form queried without its scale pointers: what an H100 answered (CUDA 13.1) */
    if (kind != LT_RAW && kind != LT_BF16 && (!x->a_scale || !x->b_scale)) return CUBLAS_STATUS_INVALID_VALUE;
    memset(res, 0, sizeof *res);
    res->algo.data[0] = 0x46503851u; /* "FP8Q": checked at the call */
    res->state = CUBLAS_STATUS_SUCCESS;
    res->wavesCount = 1.0f;
    *n_found = 1;
    return CUBLAS_STATUS_SUCCESS;
}

typedef struct {
    int m, n, k, kind;
    bool kb_major;                  /* 128-block scales read as [block][row] */
    const uint8_t *A, *B;
    const float *a_scale, *b_scale; /* read when the GEMM runs, as on the device; NULL: 1 */
    void *D;
    bool d_bf16;
} lt_args;

static void run_lt(const void *p) {
    const lt_args *g = p;
    float lut[256];
    for (int q = 0; q < 256; q++) lut[q] = ns_fp8_e4m3_to_float((uint8_t)q);
    float *a = malloc((size_t)g->m * g->k * sizeof *a), *b = malloc((size_t)g->n * g->k * sizeof *b);
    float *d = malloc((size_t)g->m * g->n * sizeof *d), *part = malloc((size_t)g->m * g->n * sizeof *part);
    if (!a || !b || !d || !part) abort();
    const uint16_t *A16 = (const uint16_t *)g->A, *B16 = (const uint16_t *)g->B;
    for (size_t i = 0; i < (size_t)g->m * g->k; i++) a[i] = g->kind == LT_BF16 ? ns_bf16_to_fp32(A16[i]) : lut[g->A[i]];
    for (size_t i = 0; i < (size_t)g->n * g->k; i++) b[i] = g->kind == LT_BF16 ? ns_bf16_to_fp32(B16[i]) : lut[g->B[i]];
    if (g->kind == LT_BLOCK) { /* each 128-wide block of K: its sums times its two scales */
        const int kb = g->k / 128;
        memset(d, 0, (size_t)g->m * g->n * sizeof *d);
        for (int t = 0; t < kb; t++) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->n, g->m, 128, 1.0f, b + t * 128, g->k,
                        a + t * 128, g->k, 0.0f, part, g->m);
            for (int j = 0; j < g->n; j++)
                for (int i = 0; i < g->m; i++) {
                    const float sa = g->a_scale[g->kb_major ? (size_t)t * g->m + i : (size_t)i * kb + t];
                    const float sb = g->b_scale[g->kb_major ? (size_t)t * g->n + j : (size_t)j * kb + t];
                    d[i + (size_t)j * g->m] += part[i + (size_t)j * g->m] * (sa * sb);
                }
        }
    } else { /* column-major D (m, n) = A^T B: as row-major, D^T (n, m) = B^T (n, k) . A (m, k)^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->n, g->m, g->k, 1.0f, b, g->k, a, g->k, 0.0f, d, g->m);
        for (int j = 0; j < g->n; j++)
            for (int i = 0; i < g->m; i++)
                d[i + (size_t)j * g->m] *= (g->a_scale ? g->a_scale[i] : 1.0f) * (g->b_scale ? g->b_scale[j] : 1.0f);
    }
    for (size_t i = 0; i < (size_t)g->m * g->n; i++) {
        if (g->d_bf16) ((uint16_t *)g->D)[i] = ns_fp32_to_bf16(d[i]);
        else ((float *)g->D)[i] = d[i];
    }
    free(a);
    free(b);
    free(d);
    free(part);
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t adesc, const void *B, cublasLtMatrixLayout_t bdesc,
                              const void *beta, const void *C, cublasLtMatrixLayout_t cdesc, void *D,
                              cublasLtMatrixLayout_t ddesc, const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_n,
                              cudaStream_t s) {
    (void)h, (void)s;
    const lt_desc *x = (const lt_desc *)desc->data;
    const lt_layout *a = (const lt_layout *)adesc->data, *b = (const lt_layout *)bdesc->data,
                    *d = (const lt_layout *)ddesc->data;
    const int kind = lt_kind(x, a, b, (const lt_layout *)cdesc->data, d);
    if (kind == LT_NONE || !algo || algo->data[0] != 0x46503851u || *(const float *)alpha != 1.0f ||
        *(const float *)beta != 0.0f || C != D || (kind != LT_RAW && kind != LT_BF16 && (!x->a_scale || !x->b_scale)))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (M.capturing) {
        const char *f = getenv("NS_CUDAMOCK_CAPTURE_FAIL");
        if (!ws || !ws_n || (f && !strcmp(f, "1") && M.gemms_in_capture == 0)) {
            M.invalidated = 1;
            return CUBLAS_STATUS_NOT_SUPPORTED;
        }
        M.gemms_in_capture++;
    }
    const char *kbm = getenv("NS_CUDAMOCK_LT_KB_MAJOR");
    lt_args g = {(int)a->cols, (int)b->cols, (int)a->rows, kind, kbm && !strcmp(kbm, "1"), A, B,
                 x->a_scale, x->b_scale, D, d->type == CUDA_R_16BF};
    M.n.gemms_lt_bf16 += kind == LT_BF16;
    M.n.gemms_fp8 += kind != LT_BF16;
    M.n.gemms_fp8_block += kind == LT_BLOCK;
    M.n.gemms_fp8_raw += kind == LT_RAW;
    M.n.gemms_bf16_out += d->type == CUDA_R_16BF;
    return LAUNCH(run_lt, g) == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

/* ---- kernels: the CPU references behind the ns_cuda_* launchers ------------------ */

typedef struct { uint8_t *out; float *scales; const void *x; int x_type; int64_t n_rows, n; } q8_args;
static void run_quant_fp8(const void *p) {
    const q8_args *a = p;
    if (a->x_type == NS_CUDA_TYPE_F32) {
        ns_cpu_quant_rows_fp8(a->out, a->scales, a->x, a->n_rows, a->n);
        return;
    }
    float *row = malloc((size_t)a->n * sizeof *row);
    if (!row) abort();
    for (int64_t r = 0; r < a->n_rows; r++) {
        for (int64_t i = 0; i < a->n; i++) row[i] = ns_bf16_to_fp32(((const uint16_t *)a->x)[r * a->n + i]);
        ns_cpu_quant_rows_fp8(a->out + r * a->n, a->scales + r, row, 1, a->n);
    }
    free(row);
}
cudaError_t ns_cuda_quant_rows_fp8(uint8_t *out, float *scales, const void *x, int x_type, int64_t n_rows, int64_t n,
                                   cudaStream_t s) {
    (void)s;
    if (n_rows < 0 || n < 1 || (x_type != NS_CUDA_TYPE_F32 && x_type != NS_CUDA_TYPE_BF16)) return cudaErrorInvalidValue;
    M.n.quant_fp8_calls++;
    q8_args a = {out, scales, x, x_type, n_rows, n};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_quant_rows_fp8(out, scales, x, x_type, n_rows, n, s);
#else
    return LAUNCH(run_quant_fp8, a);
#endif
}

/* The 128-block scales of a row-scaled FP8 matrix, and the unscaled GEMM's scaling pass
 * (kernels/cuda/fp8.cu): the same arithmetic as the kernels. */
typedef struct { float *dst; const float *src; int64_t rows; int kb, kb_major; } xs_args;
static void run_expand_scales(const void *p) {
    const xs_args *a = p;
    for (int64_t i = 0; i < a->rows * a->kb; i++) a->dst[i] = a->src[a->kb_major ? i % a->rows : i / a->kb];
}
cudaError_t ns_cuda_expand_scales(float *dst, const float *src, int64_t rows, int kb, int kb_major, cudaStream_t s) {
    (void)s;
    if (rows < 0 || kb < 1) return cudaErrorInvalidValue;
    xs_args a = {dst, src, rows, kb, kb_major};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_expand_scales(dst, src, rows, kb, kb_major, s);
#else
    return LAUNCH(run_expand_scales, a);
#endif
}
typedef struct { void *y; int y_type; const float *raw, *a_scale, *b_scale; int m, n; } so_args;
static void run_scale_outer(const void *p) {
    const so_args *a = p;
    for (int64_t i = 0; i < (int64_t)a->m * a->n; i++) {
        const int64_t r = i / a->n, c = i - r * a->n;
        const float v = a->raw[i] * (a->a_scale[c] * a->b_scale[r]);
        if (a->y_type == NS_CUDA_TYPE_BF16) ((uint16_t *)a->y)[i] = ns_fp32_to_bf16(v);
        else ((float *)a->y)[i] = v;
    }
}
cudaError_t ns_cuda_scale_outer(void *y, int y_type, const float *raw, const float *a_scale, const float *b_scale,
                                int Mr, int N, cudaStream_t s) {
    (void)s;
    if (Mr < 0 || N < 1 || (y_type != NS_CUDA_TYPE_F32 && y_type != NS_CUDA_TYPE_BF16)) return cudaErrorInvalidValue;
    so_args a = {y, y_type, raw, a_scale, b_scale, Mr, N};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_scale_outer(y, y_type, raw, a_scale, b_scale, Mr, N, s);
#else
    return LAUNCH(run_scale_outer, a);
#endif
}

static void store_row(void *dst, int dst_type, size_t i, float v) {
    if (dst_type == NS_CUDA_TYPE_BF16) ((uint16_t *)dst)[i] = ns_fp32_to_bf16(v);
    else ((float *)dst)[i] = v;
}

static void shadow(uint16_t *out_bf16, const float *out, size_t n) {
    if (out_bf16)
        for (size_t i = 0; i < n; i++) out_bf16[i] = ns_fp32_to_bf16(out[i]);
}

typedef struct { int type, dst_type; const uint8_t *src; size_t rb; void *dst; int64_t n_rows, n; } dq_args;
static void run_dequant(const void *p) {
    const dq_args *a = p;
    float *tmp = malloc((size_t)a->n * sizeof *tmp);
    for (int64_t r = 0; r < a->n_rows && tmp; r++) {
        ns_cpu_dequant_row_ref(a->type, a->src + (size_t)r * a->rb, tmp, a->n);
        for (int64_t i = 0; i < a->n; i++) store_row(a->dst, a->dst_type, (size_t)(r * a->n + i), tmp[i]);
    }
    free(tmp);
}
cudaError_t ns_cuda_dequant_row(int type, const void *src, size_t src_row_bytes, void *dst, int dst_type,
                                int64_t n_rows, int64_t n, cudaStream_t s) {
    (void)s;
    if (dst_type != NS_CUDA_TYPE_F32 && dst_type != NS_CUDA_TYPE_BF16) return cudaErrorInvalidValue;
    dq_args a = {type, dst_type, src, src_row_bytes, dst, n_rows, n};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_dequant_row(type, src, src_row_bytes, dst, dst_type, n_rows, n, s);
#else
    return LAUNCH(run_dequant, a);
#endif
}

typedef struct { uint16_t *hi, *lo; const float *src; int64_t n; } cvt_args;
static void run_cvt(const void *p) {
    const cvt_args *a = p;
    for (int64_t i = 0; i < a->n; i++) {
        a->hi[i] = ns_fp32_to_bf16(a->src[i]);
        if (a->lo) a->lo[i] = ns_fp32_to_bf16(a->src[i] - ns_bf16_to_fp32(a->hi[i]));
    }
}
cudaError_t ns_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n, cudaStream_t s) {
    (void)s;
    cvt_args a = {dst, NULL, src, n};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_f32_to_bf16(dst, src, n, s);
#else
    return LAUNCH(run_cvt, a);
#endif
}
cudaError_t ns_cuda_f32_to_bf16_split(uint16_t *hi, uint16_t *lo, const float *src, int64_t n, cudaStream_t s) {
    (void)s;
    cvt_args a = {hi, lo, src, n};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_f32_to_bf16_split(hi, lo, src, n, s);
#else
    return LAUNCH(run_cvt, a);
#endif
}

typedef struct { float *out; uint16_t *out_bf16; const float *x, *w; int n_rows, n; float eps; } rms_args;
static void run_rms(const void *p) {
    const rms_args *a = p;
    ns_cpu_rmsnorm_ref(a->out, a->x, a->w, a->n_rows, a->n, a->eps);
    shadow(a->out_bf16, a->out, (size_t)a->n_rows * a->n);
}
cudaError_t ns_cuda_rmsnorm(float *out, uint16_t *out_bf16, const float *x, const float *w, int n_rows, int n,
                            float eps, cudaStream_t s) {
    (void)s;
    rms_args a = {out, out_bf16, x, w, n_rows, n, eps};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_rmsnorm(out, out_bf16, x, w, n_rows, n, eps, s);
#else
    return LAUNCH(run_rms, a);
#endif
}

typedef struct { float *x; const int32_t *pos; int n_tokens, n_head, head_dim, n_rot, is_neox; const float *inv; } rope_args;
static void run_rope(const void *p) {
    const rope_args *a = p;
    ns_cpu_rope_ref(a->x, a->pos, a->n_tokens, a->n_head, a->head_dim, a->n_rot, a->inv, a->is_neox);
}
cudaError_t ns_cuda_rope(float *x, const int32_t *pos, int n_tokens, int n_head, int head_dim, int n_rot,
                         const float *inv_freq, int is_neox, cudaStream_t s) {
    (void)s;
    rope_args a = {x, pos, n_tokens, n_head, head_dim, n_rot, is_neox, inv_freq};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_rope(x, pos, n_tokens, n_head, head_dim, n_rot, inv_freq, is_neox, s);
#else
    return LAUNCH(run_rope, a);
#endif
}

typedef struct {
    float *q, *k, *v;
    const float *qkv, *bias[3], *inv;
    const int32_t *pos;
    int n_tokens, n_head, n_head_kv, head_dim, n_rot, is_neox;
} qkv_args;
/* The fused QKV's epilogue as the unfused ops: split, each part plus its bias, then rope
 * (the CPU reference, as the stand-in's ns_cuda_rope). */
static void run_qkv(const void *p) {
    const qkv_args *a = p;
    const int q_dim = a->n_head * a->head_dim, kv_dim = a->n_head_kv * a->head_dim, n_all = q_dim + 2 * kv_dim;
    float *outs[3] = {a->q, a->k, a->v};
    const int widths[3] = {q_dim, kv_dim, kv_dim}, offs[3] = {0, q_dim, q_dim + kv_dim};
    for (int t = 0; t < a->n_tokens; t++)
        for (int part = 0; part < 3; part++)
            for (int j = 0; j < widths[part]; j++) {
                float x = a->qkv[(size_t)t * n_all + offs[part] + j];
                if (a->bias[part]) x = x + a->bias[part][j];
                outs[part][(size_t)t * widths[part] + j] = x;
            }
    ns_cpu_rope_ref(a->q, a->pos, a->n_tokens, a->n_head, a->head_dim, a->n_rot, a->inv, a->is_neox);
    ns_cpu_rope_ref(a->k, a->pos, a->n_tokens, a->n_head_kv, a->head_dim, a->n_rot, a->inv, a->is_neox);
}
cudaError_t ns_cuda_qkv_split_rope(float *q, float *k, float *v, const float *qkv, const float *bq, const float *bk,
                                   const float *bv, const int32_t *pos, int n_tokens, int n_head, int n_head_kv,
                                   int head_dim, int n_rot, const float *inv_freq, int is_neox, cudaStream_t s) {
    (void)s;
    if (n_tokens < 0 || n_head < 1 || n_head_kv < 1 || head_dim < 1 || n_rot < 0 || n_rot % 2 || n_rot > head_dim)
        return M.last_error = cudaErrorInvalidValue;
    M.n.qkv_split_rope++;
    qkv_args a = {q, k, v, qkv, {bq, bk, bv}, inv_freq, pos, n_tokens, n_head, n_head_kv, head_dim, n_rot, is_neox};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_qkv_split_rope(q, k, v, qkv, bq, bk, bv, pos, n_tokens, n_head, n_head_kv, head_dim, n_rot,
                                      inv_freq, is_neox, s);
#else
    return LAUNCH(run_qkv, a);
#endif
}

typedef struct { float *out; uint16_t *out_bf16; const float *a, *b; int64_t n; int kind; int M, N; } ew_args;
static void run_ew(const void *p) {
    const ew_args *a = p;
    if (a->kind == 0) {
        ns_cpu_swiglu_ref(a->out, a->a, a->b, a->n);
        shadow(a->out_bf16, a->out, (size_t)a->n);
    } else if (a->kind == 1) {
        ns_cpu_add_ref(a->out, a->a, a->n);
    } else {
        for (int r = 0; r < a->M; r++) ns_cpu_add_ref(a->out + (size_t)r * a->N, a->a, a->N);
    }
}
cudaError_t ns_cuda_swiglu(float *out, uint16_t *out_bf16, const float *gate, const float *up, int64_t n,
                           cudaStream_t s) {
    (void)s;
    ew_args a = {out, out_bf16, gate, up, n, 0, 0, 0};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_swiglu(out, out_bf16, gate, up, n, s);
#else
    return LAUNCH(run_ew, a);
#endif
}
typedef struct { float *x; const float *delta; float *out; uint16_t *out_bf16; const float *w; int n_rows, n; float eps; } addnorm_args;
static void run_add_rmsnorm(const void *p) {
    const addnorm_args *a = p;
    const size_t N = (size_t)a->n_rows * (size_t)a->n;
    float *tmp = malloc((N ? N : 1) * sizeof *tmp);
    if (!tmp) abort();
    ns_cpu_add_ref(a->x, a->delta, (int64_t)N);
    ns_cpu_rmsnorm_ref(tmp, a->x, a->w, a->n_rows, a->n, a->eps);
    if (a->out) memcpy(a->out, tmp, N * sizeof *tmp);
    shadow(a->out_bf16, tmp, N);
    free(tmp);
}
cudaError_t ns_cuda_add_rmsnorm(float *x, const float *delta, float *out, uint16_t *out_bf16, const float *w,
                                int n_rows, int n, float eps, cudaStream_t s) {
    (void)s;
    if (n_rows < 0 || n < 1 || (!out && !out_bf16)) return cudaErrorInvalidValue;
    addnorm_args a = {x, delta, out, out_bf16, w, n_rows, n, eps};
    M.n.add_rmsnorm_calls++;
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_add_rmsnorm(x, delta, out, out_bf16, w, n_rows, n, eps, s);
#else
    return LAUNCH(run_add_rmsnorm, a);
#endif
}

typedef struct { uint16_t *out; const uint16_t *gate, *up; int64_t n; } swiglu16_args;
static void run_swiglu_bf16(const void *p) {
    const swiglu16_args *a = p;
    for (int64_t i = 0; i < a->n; i++) {
        float g = ns_bf16_to_fp32(a->gate[i]), v;
        ns_cpu_swiglu_ref(&v, &g, &(float){ns_bf16_to_fp32(a->up[i])}, 1);
        a->out[i] = ns_fp32_to_bf16(v);
    }
}
cudaError_t ns_cuda_swiglu_bf16(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n, cudaStream_t s) {
    (void)s;
    if (n < 0) return cudaErrorInvalidValue;
    swiglu16_args a = {out, gate, up, n};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_swiglu_bf16(out, gate, up, n, s);
#else
    return LAUNCH(run_swiglu_bf16, a);
#endif
}
/* The ops writing FP8 rows (NS_CUDA_FP8=1): the fp32 values as the ops above compute them,
 * then ns_cpu_quant_rows_fp8. */
typedef struct { float *x; const float *delta; float *out; uint8_t *q; float *scales; const float *w; int n_rows, n; float eps; } normq_args;
static void run_rmsnorm_fp8(const void *p) {
    const normq_args *a = p;
    const size_t N = (size_t)a->n_rows * (size_t)a->n;
    float *tmp = malloc((N ? N : 1) * sizeof *tmp);
    if (!tmp) abort();
    if (a->delta) ns_cpu_add_ref(a->x, a->delta, (int64_t)N);
    ns_cpu_rmsnorm_ref(tmp, a->x, a->w, a->n_rows, a->n, a->eps);
    if (a->out) memcpy(a->out, tmp, N * sizeof *tmp);
    ns_cpu_quant_rows_fp8(a->q, a->scales, tmp, a->n_rows, a->n);
    free(tmp);
}
cudaError_t ns_cuda_rmsnorm_fp8(float *out, uint8_t *q, float *scales, const float *x, const float *w, int n_rows,
                                int n, float eps, cudaStream_t s) {
    (void)s;
    if (n_rows < 0 || n < 1) return cudaErrorInvalidValue;
    normq_args a = {(float *)x, NULL, out, q, scales, w, n_rows, n, eps};
    M.n.fused_fp8_calls++;
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_rmsnorm_fp8(out, q, scales, x, w, n_rows, n, eps, s);
#else
    return LAUNCH(run_rmsnorm_fp8, a);
#endif
}
cudaError_t ns_cuda_add_rmsnorm_fp8(float *x, const float *delta, float *out, uint8_t *q, float *scales,
                                    const float *w, int n_rows, int n, float eps, cudaStream_t s) {
    (void)s;
    if (n_rows < 0 || n < 1) return cudaErrorInvalidValue;
    normq_args a = {x, delta, out, q, scales, w, n_rows, n, eps};
    M.n.fused_fp8_calls++;
    M.n.add_rmsnorm_calls++;
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_add_rmsnorm_fp8(x, delta, out, q, scales, w, n_rows, n, eps, s);
#else
    return LAUNCH(run_rmsnorm_fp8, a);
#endif
}
typedef struct { uint8_t *q; float *scales; const uint16_t *gate, *up; int64_t n_rows, n; } swigluq_args;
static void run_swiglu_bf16_fp8(const void *p) {
    const swigluq_args *a = p;
    const size_t N = (size_t)(a->n_rows * a->n);
    float *tmp = malloc((N ? N : 1) * sizeof *tmp);
    if (!tmp) abort();
    for (size_t i = 0; i < N; i++) {
        float g = ns_bf16_to_fp32(a->gate[i]);
        ns_cpu_swiglu_ref(&tmp[i], &g, &(float){ns_bf16_to_fp32(a->up[i])}, 1);
    }
    ns_cpu_quant_rows_fp8(a->q, a->scales, tmp, a->n_rows, a->n);
    free(tmp);
}
cudaError_t ns_cuda_swiglu_bf16_fp8(uint8_t *q, float *scales, const uint16_t *gate, const uint16_t *up,
                                    int64_t n_rows, int64_t n, cudaStream_t s) {
    (void)s;
    if (n_rows < 0 || n < 1) return cudaErrorInvalidValue;
    swigluq_args a = {q, scales, gate, up, n_rows, n};
    M.n.fused_fp8_calls++;
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_swiglu_bf16_fp8(q, scales, gate, up, n_rows, n, s);
#else
    return LAUNCH(run_swiglu_bf16_fp8, a);
#endif
}
cudaError_t ns_cuda_add(float *y, const float *x, int64_t n, cudaStream_t s) {
    (void)s;
    ew_args a = {y, NULL, x, NULL, n, 1, 0, 0};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_add(y, x, n, s);
#else
    return LAUNCH(run_ew, a);
#endif
}
cudaError_t ns_cuda_add_bias(float *y, const float *bias, int Mr, int N, cudaStream_t s) {
    (void)s;
    ew_args a = {y, NULL, bias, NULL, 0, 2, Mr, N};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_add_bias(y, bias, Mr, N, s);
#else
    return LAUNCH(run_ew, a);
#endif
}

typedef struct { float *out; const void *table; int type; const int32_t *ids; int n_tokens, n_embd; } embed_args;
static void run_embed(const void *p) {
    const embed_args *a = p;
    ns_cpu_embed(a->out, a->table, a->type, a->ids, a->n_tokens, a->n_embd);
}
cudaError_t ns_cuda_embed(float *out, const void *table, int type, const int32_t *ids, int n_tokens, int n_embd,
                          cudaStream_t s) {
    (void)s;
    embed_args a = {out, table, type, ids, n_tokens, n_embd};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_embed(out, table, type, ids, n_tokens, n_embd, s);
#else
    return LAUNCH(run_embed, a);
#endif
}

typedef struct { int32_t *tokens; int n_tokens; const int32_t *ids; int n_ids; } from_ids_args;
static void run_tokens_from_ids(const void *p) {
    const from_ids_args *a = p;
    for (int t = 0; t < a->n_tokens; t++)
        if (a->tokens[t] < 0) {
            const int32_t id = -1 - a->tokens[t] < a->n_ids ? a->ids[-1 - a->tokens[t]] : 0;
            a->tokens[t] = id < 0 ? 0 : id;
        }
}
cudaError_t ns_cuda_tokens_from_ids(int32_t *tokens, int n_tokens, const int32_t *ids, int n_ids, cudaStream_t s) {
    (void)s;
    if (n_tokens < 0 || n_ids < 0) return cudaErrorInvalidValue;
    from_ids_args a = {tokens, n_tokens, ids, n_ids};
    M.n.tokens_from_ids_calls++;
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_tokens_from_ids(tokens, n_tokens, ids, n_ids, s);
#else
    return LAUNCH(run_tokens_from_ids, a);
#endif
}

typedef struct { float *out; const float *x; const int32_t *rows; int n_rows, width; } gather_args;
static void run_gather(const void *p) {
    const gather_args *a = p;
    for (int i = 0; i < a->n_rows; i++)
        memcpy(a->out + (size_t)i * a->width, a->x + (size_t)a->rows[i] * a->width, (size_t)a->width * sizeof(float));
}
cudaError_t ns_cuda_gather_rows(float *out, const float *x, const int32_t *rows, int n_rows, int width,
                                cudaStream_t s) {
    (void)s;
    gather_args a = {out, x, rows, n_rows, width};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_gather_rows(out, x, rows, n_rows, width, s);
#else
    return LAUNCH(run_gather, a);
#endif
}

typedef struct { void *k_pool, *v_pool; int kv_type; const float *k, *v; const int32_t *slot; int n_tokens, row; } kvs_args;
static void run_kv_store(const void *p) {
    const kvs_args *a = p;
    for (int t = 0; t < a->n_tokens; t++)
        for (int i = 0; i < a->row; i++) {
            const size_t dst = (size_t)a->slot[t] * a->row + i, src = (size_t)t * a->row + i;
            store_row(a->k_pool, a->kv_type, dst, a->k[src]);
            store_row(a->v_pool, a->kv_type, dst, a->v[src]);
        }
}
cudaError_t ns_cuda_kv_store(void *k_pool, void *v_pool, int kv_type, const float *k, const float *v,
                             const int32_t *slot, int n_tokens, int row, cudaStream_t s) {
    (void)s;
    kvs_args a = {k_pool, v_pool, kv_type, k, v, slot, n_tokens, row};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_kv_store(k_pool, v_pool, kv_type, k, v, slot, n_tokens, row, s);
#else
    return LAUNCH(run_kv_store, a);
#endif
}

/* The FP8 KV store: each (token, KV head) row through ns_cpu_quant_rows_fp8, to its slot. */
typedef struct {
    uint8_t *k_pool, *v_pool;
    float *k_scale, *v_scale;
    const float *k, *v;
    const int32_t *slot;
    int n_tokens, n_head_kv, head_dim;
} kvs8_args;
static void run_kv_store_fp8(const void *p) {
    const kvs8_args *a = p;
    for (int t = 0; t < a->n_tokens; t++)
        for (int h = 0; h < a->n_head_kv; h++) {
            const size_t dst = (size_t)a->slot[t] * a->n_head_kv + h, src = ((size_t)t * a->n_head_kv + h) * a->head_dim;
            ns_cpu_quant_rows_fp8(a->k_pool + dst * a->head_dim, a->k_scale + dst, a->k + src, 1, a->head_dim);
            ns_cpu_quant_rows_fp8(a->v_pool + dst * a->head_dim, a->v_scale + dst, a->v + src, 1, a->head_dim);
        }
}
cudaError_t ns_cuda_kv_store_fp8(void *k_pool, void *v_pool, float *k_scale, float *v_scale, const float *k,
                                 const float *v, const int32_t *slot, int n_tokens, int n_head_kv, int head_dim,
                                 cudaStream_t s) {
    (void)s;
    if (n_tokens < 0 || n_head_kv < 1 || head_dim < 1 || head_dim > NS_CUDA_ATTN_MAX_HEAD_DIM)
        return cudaErrorInvalidValue;
    kvs8_args a = {k_pool, v_pool, k_scale, v_scale, k, v, slot, n_tokens, n_head_kv, head_dim};
    M.n.kv_fp8_stores++;
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_kv_store_fp8(k_pool, v_pool, k_scale, v_scale, k, v, slot, n_tokens, n_head_kv, head_dim, s);
#else
    return LAUNCH(run_kv_store_fp8, a);
#endif
}

typedef struct {
    float *out;
    uint16_t *out_bf16;
    const float *q;
    const int32_t *q_pos, *tok_seq, *groups, *block_table;
    int n_groups, max_blocks_per_seq, kv_type, block_size, n_head, n_head_kv, head_dim;
    const void *k_pool, *v_pool;
    float scale;
    const float *k_scale, *v_scale; /* NS_CUDA_TYPE_E4M3: per (slot, KV head) row */
} attn_args;

/* Element i of a pool as fp32 (e4m3: the code times its row's scale). */
static float pool_at(const void *pool, const float *scales, int kv_type, int head_dim, size_t i) {
    if (kv_type == NS_CUDA_TYPE_E4M3) return ns_fp8_e4m3_to_float(((const uint8_t *)pool)[i]) * scales[i / head_dim];
    return kv_type == NS_CUDA_TYPE_BF16 ? ns_bf16_to_fp32(((const uint16_t *)pool)[i]) : ((const float *)pool)[i];
}

/* Each token of each group over its sequence's blocks, copied to fp32 in table order. */
static void run_attention(const void *p) {
    const attn_args *a = p;
    const size_t row = (size_t)a->n_head_kv * a->head_dim, q_row = (size_t)a->n_head * a->head_dim;
    for (int g = 0; g < a->n_groups; g++)
        for (int j = 0; j < a->groups[2 * g + 1]; j++) {
            const int t = a->groups[2 * g] + j, n_kv = a->q_pos[t] + 1;
            const int nb = (n_kv + a->block_size - 1) / a->block_size;
            const int32_t *tab = a->block_table + (size_t)a->tok_seq[t] * a->max_blocks_per_seq;
            const size_t blk = (size_t)a->block_size * row;
            float *k = malloc((size_t)nb * blk * sizeof *k), *v = malloc((size_t)nb * blk * sizeof *v);
            int32_t *local = malloc((size_t)nb * sizeof *local);
            float *scratch = malloc((size_t)(n_kv + 16) * sizeof *scratch);
            if (!k || !v || !local || !scratch) abort();
            for (int b = 0; b < nb; b++) {
                local[b] = b;
                for (size_t i = 0; i < blk; i++) {
                    k[(size_t)b * blk + i] = pool_at(a->k_pool, a->k_scale, a->kv_type, a->head_dim, (size_t)tab[b] * blk + i);
                    v[(size_t)b * blk + i] = pool_at(a->v_pool, a->v_scale, a->kv_type, a->head_dim, (size_t)tab[b] * blk + i);
                }
            }
            const int32_t pos = a->q_pos[t];
            ns_cpu_attention_paged_ref(a->out + (size_t)t * q_row, a->q + (size_t)t * q_row, &pos, 1, k, v, local, n_kv,
                                       a->block_size, a->n_head, a->n_head_kv, a->head_dim, a->scale, 0, a->n_head,
                                       scratch);
            shadow(a->out_bf16 ? a->out_bf16 + (size_t)t * q_row : NULL, a->out + (size_t)t * q_row, q_row);
            free(scratch), free(local), free(v), free(k);
        }
}
cudaError_t ns_cuda_attention_paged(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                    const int32_t *tok_seq, const int32_t *groups, int n_groups, int single,
                                    const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                                    const void *v_pool, int kv_type, int block_size, int n_head, int n_head_kv,
                                    int head_dim, float scale, cudaStream_t s) {
    (void)s, (void)single;
    if (head_dim > NS_CUDA_ATTN_MAX_HEAD_DIM || n_head % n_head_kv) return cudaErrorInvalidValue;
    attn_args a = {out,      out_bf16, q,        q_pos,      tok_seq,   groups,    block_table, n_groups,
                   max_blocks_per_seq, kv_type, block_size, n_head, n_head_kv, head_dim, k_pool, v_pool, scale,
                   NULL, NULL};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_attention_paged(out, out_bf16, q, q_pos, tok_seq, groups, n_groups, single, block_table, max_blocks_per_seq, k_pool, v_pool, kv_type, block_size, n_head, n_head_kv, head_dim, scale, s);
#else
    return LAUNCH(run_attention, a);
#endif
}
cudaError_t ns_cuda_attention_paged_fp8(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                        const int32_t *tok_seq, const int32_t *groups, int n_groups, int single,
                                        const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                                        const void *v_pool, const float *k_scale, const float *v_scale,
                                        int block_size, int n_head, int n_head_kv, int head_dim, float scale,
                                        cudaStream_t s) {
    (void)s, (void)single;
    if (!ns_cuda_kv_fp8_fits(n_head, n_head_kv, head_dim) || (uintptr_t)k_pool % 16 || (uintptr_t)v_pool % 16)
        return cudaErrorInvalidValue;
    attn_args a = {out,      out_bf16, q,        q_pos,      tok_seq,   groups,    block_table, n_groups,
                   max_blocks_per_seq, NS_CUDA_TYPE_E4M3, block_size, n_head, n_head_kv, head_dim, k_pool, v_pool,
                   scale, k_scale, v_scale};
    M.n.attention_fp8_calls++;
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_attention_paged_fp8(out, out_bf16, q, q_pos, tok_seq, groups, n_groups, single, block_table, max_blocks_per_seq, k_pool, v_pool, k_scale, v_scale, block_size, n_head, n_head_kv, head_dim, scale, s);
#else
    return LAUNCH(run_attention, a);
#endif
}

/* The tensor-core kernel's launcher (called directly by gpu-bench ops; the backend reaches
 * it through the two above): the same attention, by the same stand-in, bf16 pools or FP8
 * ones with their scales. With the emulated kernels, attention_tc.cu's own launcher. */
#ifndef NS_CUDAMOCK_EMU_KERNELS
cudaError_t ns_cuda_attention_tc(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                 const int32_t *tok_seq, const int32_t *groups, int n_groups, int qt,
                                 const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                                 const void *v_pool, const float *k_scale, const float *v_scale, int block_size,
                                 int n_head, int n_head_kv, int head_dim, float scale, cudaStream_t s) {
    if (!ns_cuda_attention_tc_fits(q, k_pool, v_pool, n_head, n_head_kv, head_dim) || qt < 1 ||
        (k_scale == NULL) != (v_scale == NULL))
        return M.last_error = cudaErrorInvalidValue;
    if (k_scale)
        return ns_cuda_attention_paged_fp8(out, out_bf16, q, q_pos, tok_seq, groups, n_groups, qt == 1, block_table,
                                           max_blocks_per_seq, k_pool, v_pool, k_scale, v_scale, block_size, n_head,
                                           n_head_kv, head_dim, scale, s);
    return ns_cuda_attention_paged(out, out_bf16, q, q_pos, tok_seq, groups, n_groups, qt == 1, block_table,
                                   max_blocks_per_seq, k_pool, v_pool, NS_CUDA_TYPE_BF16, block_size, n_head,
                                   n_head_kv, head_dim, scale, s);
}
#endif

typedef struct { int32_t *ids; const float *logits; int n_rows, n_vocab; const ns_row_sampling *params; } samp_args;
static void run_greedy(const void *p) {
    const samp_args *a = p;
    for (int r = 0; r < a->n_rows; r++) {
        const float *l = a->logits + (size_t)r * a->n_vocab;
        int best = -1;
        for (int i = 0; i < a->n_vocab; i++)
            if (l[i] > -INFINITY && (best < 0 || l[i] > l[best])) best = i;
        a->ids[r] = best;
    }
}
cudaError_t ns_cuda_sample_greedy(int32_t *out_ids, const float *logits, int n_rows, int n_vocab, cudaStream_t s) {
    (void)s;
    if (n_rows < 0 || n_vocab < 1) return cudaErrorInvalidValue;
    samp_args a = {out_ids, logits, n_rows, n_vocab, NULL};
#ifdef NS_CUDAMOCK_EMU_KERNELS
    (void)a;
    return emu_ns_cuda_sample_greedy(out_ids, logits, n_rows, n_vocab, s);
#else
    return LAUNCH(run_greedy, a);
#endif
}
static void run_rows(const void *p) {
    const samp_args *a = p;
    uint64_t *scratch = malloc(2 * (size_t)a->n_vocab * sizeof *scratch);
    if (!scratch) abort();
    ns_cpu_sample_rows_ref(a->ids, a->logits, a->n_rows, a->n_vocab, a->params, scratch);
    free(scratch);
}
cudaError_t ns_cuda_sample_rows(int32_t *out_ids, const float *logits, int n_rows, int n_vocab,
                                const struct ns_row_sampling *params, cudaStream_t s) {
    (void)s;
    if (n_rows < 0 || n_vocab < 1 || n_vocab > NS_SAMPLE_MAX_VOCAB) return cudaErrorInvalidValue;
    samp_args a = {out_ids, logits, n_rows, n_vocab, params};
    M.n.sample_rows_calls++;
    return LAUNCH(run_rows, a);
}
