/* swiglu.cu: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (ns_silu_mul, common.cuh),
 * elementwise (out may alias gate or up), from fp32 or from bf16 inputs (8 at a time where
 * aligned). */
#include "common.cuh"

static __global__ void swiglu_f32_kernel(float *out, __nv_bfloat16 *out_bf16, const float *gate, const float *up,
                                         int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float v = ns_silu_mul(gate[i], up[i]);
        out[i] = v;
        if (out_bf16) out_bf16[i] = __float2bfloat16_rn(v);
    }
}

/* bf16 in, bf16 out (the feed-forward's fused path: GEMMs that write bf16, then this) */
static __global__ void swiglu_bf16_kernel(__nv_bfloat16 *out, const __nv_bfloat16 *gate, const __nv_bfloat16 *up,
                                          int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        out[i] = __float2bfloat16_rn(ns_silu_mul(__bfloat162float(gate[i]), __bfloat162float(up[i])));
    }
}

/* The same, 8 elements a thread: 16-byte loads and stores (n_groups = n / 8; every
 * pointer 16-byte aligned). Each element's expression is the one above. */
static __device__ __forceinline__ uint32_t swiglu_pair(uint32_t g, uint32_t u) {
    const uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(ns_silu_mul(ns_bf16_lo(g), ns_bf16_lo(u))));
    const uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(ns_silu_mul(ns_bf16_hi(g), ns_bf16_hi(u))));
    return lo | hi << 16;
}
static __global__ void swiglu_bf16_vec8_kernel(uint4 *out, const uint4 *gate, const uint4 *up, int64_t n_groups) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n_groups;
         i += (int64_t)gridDim.x * blockDim.x) {
        const uint4 g = __ldg(gate + i), u = __ldg(up + i);
        out[i] = make_uint4(swiglu_pair(g.x, u.x), swiglu_pair(g.y, u.y), swiglu_pair(g.z, u.z), swiglu_pair(g.w, u.w));
    }
}

extern "C" cudaError_t ns_cuda_swiglu_bf16(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n,
                                           cudaStream_t stream) {
    if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    if (n % 8 == 0 && (uintptr_t)out % 16 == 0 && (uintptr_t)gate % 16 == 0 && (uintptr_t)up % 16 == 0) {
        NS_LAUNCH(ns_grid_for(n / 8, 256), 256, 0, stream, swiglu_bf16_vec8_kernel)(
            (uint4 *)out, (const uint4 *)gate, (const uint4 *)up, n / 8);
        return cudaGetLastError();
    }
    NS_LAUNCH(ns_grid_for(n, 256), 256, 0, stream, swiglu_bf16_kernel)(
        (__nv_bfloat16 *)out, (const __nv_bfloat16 *)gate, (const __nv_bfloat16 *)up, n);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_swiglu(float *out, uint16_t *out_bf16, const float *gate, const float *up, int64_t n,
                                      cudaStream_t stream) {
    if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    NS_LAUNCH(ns_grid_for(n, 256), 256, 0, stream, swiglu_f32_kernel)(out, (__nv_bfloat16 *)out_bf16, gate, up, n);
    return cudaGetLastError();
}
