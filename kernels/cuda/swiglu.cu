/* swiglu.cu: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)), elementwise (out may
 * alias gate or up), from fp32 or from bf16 inputs. expf, not __expf: within a few ulp
 * of ns_cpu_swiglu_ref. */
#include "common.cuh"

static __global__ void swiglu_f32_kernel(float *out, __nv_bfloat16 *out_bf16, const float *gate, const float *up,
                                         int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        float v = g / (1.0f + expf(-g)) * up[i];
        out[i] = v;
        if (out_bf16) out_bf16[i] = __float2bfloat16_rn(v);
    }
}

/* bf16 in, bf16 out (the feed-forward's fused path: GEMMs that write bf16, then this) */
static __global__ void swiglu_bf16_kernel(__nv_bfloat16 *out, const __nv_bfloat16 *gate, const __nv_bfloat16 *up,
                                          int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float g = __bfloat162float(gate[i]);
        out[i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * __bfloat162float(up[i]));
    }
}

extern "C" cudaError_t ns_cuda_swiglu_bf16(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n,
                                           cudaStream_t stream) {
    if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
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
