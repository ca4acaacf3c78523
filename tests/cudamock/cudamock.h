/* cudamock.h: what the CPU stand-in for the CUDA device (tests/cudamock/cudamock.c)
 * tells the tests about itself. */
#ifndef NS_CUDAMOCK_H
#define NS_CUDAMOCK_H

typedef struct ns_cudamock_counters {
    long captures;         /* cudaStreamBeginCapture calls */
    long captures_failed;  /* captures that ended invalidated */
    long graph_launches;   /* cudaGraphLaunch calls */
    long alloc_failures;   /* cudaMalloc refused past NS_CUDAMOCK_MEM */
    long sample_rows_calls;
    long tokens_from_ids_calls; /* batches with tokens from a pick still on the device */
    long gemms_bf16_out;        /* GEMMs writing bf16 (the fused feed-forward) */
    long add_rmsnorm_calls;     /* fused residual add + RMSNorm */
    long gemms_fp8;             /* cuBLASLt FP8 GEMMs (precision fp8) */
    long gemms_fp8_block;       /* of which with 128-block scales (VEC128_32F) */
    long gemms_fp8_raw;         /* of which unscaled (scalar scales; the backend scales after) */
    long gemms_lt_bf16;         /* cuBLASLt GEMMs over bf16 (gpu-bench gemm-shapes; the backend has none) */
    long quant_fp8_calls;       /* rows quantized to fp8 by the quantizer (weights at load, matmul inputs) */
    long fused_fp8_calls;       /* ops that wrote their output as fp8 rows (RMSNorm, the fused SwiGLU) */
    long kv_fp8_stores;         /* ns_cuda_kv_store_fp8 calls (the FP8 KV cache) */
    long attention_fp8_calls;   /* ns_cuda_attention_paged_fp8 calls */
    long qkv_split_rope;        /* the fused QKV's epilogue (ns_cuda_qkv_split_rope) calls */
} ns_cudamock_counters; /* longs only: the tests read it as an array */
_Static_assert(sizeof(ns_cudamock_counters) % sizeof(long) == 0, "ns_cudamock_counters holds longs only");

/* 1 in a binary linked with the stand-in (a weak reference elsewhere is NULL). */
#include <stddef.h>

int ns_cudamock_active(void);
void ns_cudamock_stats(ns_cudamock_counters *out);
/* Device bytes allocated now; the limit past which cudaMalloc fails (0: back to
 * NS_CUDAMOCK_MEM, default 64 GiB). */
size_t ns_cudamock_allocated(void);
void ns_cudamock_set_mem_limit(size_t bytes);

#endif
