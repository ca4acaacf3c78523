/* common.cuh: device helpers shared by the kernels in kernels/cuda: fp16/bf16 loads from
 * unaligned bytes, the dequantization of one element of a ggml row, warp reductions.
 * NS_CUDA_EMU (tests/gpu/emu_cuda.h, the kernels compiled for the host): without CUDA's
 * headers, cp.async, the dynamic shared memory and NS_LAUNCH, which the emulator defines. */
#ifndef NS_CUDA_COMMON_CUH
#define NS_CUDA_COMMON_CUH

#ifndef NS_CUDA_EMU /* tests/gpu/emu_cuda.h stands in for CUDA's headers */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif
#include <stdint.h>

#include "ops_cuda.h"

/* GGUF block fields are only 2-byte aligned: read them byte by byte (little endian). */
static __device__ __forceinline__ uint16_t ns_load_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static __device__ __forceinline__ float ns_load_fp16(const uint8_t *p) {
    return __half2float(__ushort_as_half(ns_load_u16(p)));
}
static __device__ __forceinline__ float ns_load_bf16(const uint8_t *p) {
    return __uint_as_float((uint32_t)ns_load_u16(p) << 16);
}

/* The two bf16 values of a 32-bit word (the low half first) as floats, exactly. */
static __device__ __forceinline__ float ns_bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
static __device__ __forceinline__ float ns_bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }

/* SwiGLU's element, silu(g) * u with silu(g) = g / (1 + exp(-g)): the one expression of
 * every SwiGLU kernel (swiglu.cu, and fp8.cu's fused one), so that they give the same bits.
 * expf, not __expf: within a few ulp of ns_cpu_swiglu_ref. */
static __device__ __forceinline__ float ns_silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/* Element i of a row in `type` (layouts in kernels/cpu/ops.h). */
static __device__ __forceinline__ float ns_dequant_elem(int type, const uint8_t *row, int64_t i) {
    int64_t b = i / 32;
    int j = (int)(i % 32);
    switch (type) {
    case NS_CUDA_TYPE_F32: {
        uint32_t u = (uint32_t)row[4 * i] | ((uint32_t)row[4 * i + 1] << 8) |
                     ((uint32_t)row[4 * i + 2] << 16) | ((uint32_t)row[4 * i + 3] << 24);
        return __uint_as_float(u);
    }
    case NS_CUDA_TYPE_F16: return ns_load_fp16(row + 2 * i);
    case NS_CUDA_TYPE_BF16: return ns_load_bf16(row + 2 * i);
    case NS_CUDA_TYPE_Q8_0: {
        const uint8_t *p = row + b * 34;
        return ns_load_fp16(p) * (float)(int8_t)p[2 + j];
    }
    case NS_CUDA_TYPE_Q4_0: {
        const uint8_t *p = row + b * 18;
        uint8_t byte = p[2 + (j & 15)];
        int q = j < 16 ? (byte & 15) : (byte >> 4);
        return ns_load_fp16(p) * (float)(q - 8);
    }
    case NS_CUDA_TYPE_Q4_1: {
        const uint8_t *p = row + b * 20;
        uint8_t byte = p[4 + (j & 15)];
        int q = j < 16 ? (byte & 15) : (byte >> 4);
        return fmaf(ns_load_fp16(p), (float)q, ns_load_fp16(p + 2));
    }
    default: return __int_as_float(0x7fc00000); /* unreachable: the launchers check type */
    }
}

static __host__ __device__ inline bool ns_cuda_type_known(int type) {
    return type == NS_CUDA_TYPE_F32 || type == NS_CUDA_TYPE_F16 || type == NS_CUDA_TYPE_BF16 ||
           type == NS_CUDA_TYPE_Q8_0 || type == NS_CUDA_TYPE_Q4_0 || type == NS_CUDA_TYPE_Q4_1;
}

/* Bytes of one row of n elements in type (0 if unknown or n not a block multiple). */
static inline size_t ns_cuda_row_bytes(int type, int64_t n) {
    switch (type) {
    case NS_CUDA_TYPE_F32: return (size_t)n * 4;
    case NS_CUDA_TYPE_F16:
    case NS_CUDA_TYPE_BF16: return (size_t)n * 2;
    case NS_CUDA_TYPE_Q8_0: return n % 32 ? 0 : (size_t)(n / 32) * 34;
    case NS_CUDA_TYPE_Q4_0: return n % 32 ? 0 : (size_t)(n / 32) * 18;
    case NS_CUDA_TYPE_Q4_1: return n % 32 ? 0 : (size_t)(n / 32) * 20;
    default: return 0;
    }
}

#include "reduce.cuh"

#ifndef NS_CUDA_EMU /* emu_cuda.h has its own */
/* Asynchronous 16-byte copies from global to shared memory (sm_80+): dst and src 16-byte
 * aligned; commit closes a group of copies, wait<N> returns when at most N groups are still
 * in flight. tests/gpu/emu_cuda.h has host versions (NS_CUDA_EMU). */
static __device__ __forceinline__ void ns_cp_async16(void *smem_dst, const void *gmem_src) {
    unsigned d = (unsigned)__cvta_generic_to_shared(smem_dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(gmem_src));
}
/* The same for 4 bytes (dst and src 4-byte aligned; through L1: .ca). */
static __device__ __forceinline__ void ns_cp_async4(void *smem_dst, const void *gmem_src) {
    unsigned d = (unsigned)__cvta_generic_to_shared(smem_dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(gmem_src));
}
static __device__ __forceinline__ void ns_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void ns_cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* The block's dynamic shared memory (the launch's third argument), 128-byte aligned. */
#define NS_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]

/* A kernel launch, NS_LAUNCH(grid, block, smem, stream, kernel)(args...): kernel<<<...>>>
 * here; under NS_CUDA_EMU, emu_cuda.h runs it on the CPU and checks its configuration.
 * The kernel comes last so that a template's commas pass through. */
#define NS_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

/* Grid size for n elements at `threads` per block, capped for grid-stride loops. */
static inline unsigned ns_grid_for(int64_t n, int threads) {
    int64_t g = (n + threads - 1) / threads;
    if (g < 1) g = 1;
    if (g > 65535 * 16) g = 65535 * 16;
    return (unsigned)g;
}

#endif
