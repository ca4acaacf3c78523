/* quant.cu: ggml rows (F32, F16, BF16, Q8_0, Q4_0, Q4_1) to fp32 or bf16 on the device,
 * used by the backend to turn weights into bf16 at load; fp32 -> bf16 for GEMM inputs.
 * One thread per output element, grid-stride; the reference is ns_cpu_dequant_row_ref. */
#include "common.cuh"

static __global__ void dequant_row_kernel(int type, const uint8_t *src, size_t src_row_bytes, void *dst,
                                          int dst_is_bf16, int64_t n_rows, int64_t n) {
    int64_t total = n_rows * n;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = idx / n, i = idx % n;
        float v = ns_dequant_elem(type, src + (size_t)r * src_row_bytes, i);
        if (dst_is_bf16)
            ((__nv_bfloat16 *)dst)[idx] = __float2bfloat16_rn(v);
        else
            ((float *)dst)[idx] = v;
    }
}

static __global__ void f32_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

static __global__ void f32_to_bf16_split_kernel(__nv_bfloat16 *hi, __nv_bfloat16 *lo, const float *src, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        __nv_bfloat16 h = __float2bfloat16_rn(src[i]);
        hi[i] = h;
        lo[i] = __float2bfloat16_rn(src[i] - __bfloat162float(h));
    }
}

extern "C" cudaError_t ns_cuda_dequant_row(int type, const void *src, size_t src_row_bytes, void *dst,
                                           int dst_type, int64_t n_rows, int64_t n, cudaStream_t stream) {
    if (!ns_cuda_type_known(type) || (dst_type != NS_CUDA_TYPE_F32 && dst_type != NS_CUDA_TYPE_BF16) ||
        ns_cuda_row_bytes(type, n) == 0 || src_row_bytes < ns_cuda_row_bytes(type, n) || n_rows < 0)
        return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    NS_LAUNCH(ns_grid_for(n_rows * n, 256), 256, 0, stream, dequant_row_kernel)(
        type, (const uint8_t *)src, src_row_bytes, dst, dst_type == NS_CUDA_TYPE_BF16, n_rows, n);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n, cudaStream_t stream) {
    if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    NS_LAUNCH(ns_grid_for(n, 256), 256, 0, stream, f32_to_bf16_kernel)((__nv_bfloat16 *)dst, src, n);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_f32_to_bf16_split(uint16_t *hi, uint16_t *lo, const float *src, int64_t n,
                                                 cudaStream_t stream) {
    if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    NS_LAUNCH(ns_grid_for(n, 256), 256, 0, stream, f32_to_bf16_split_kernel)((__nv_bfloat16 *)hi, (__nv_bfloat16 *)lo, src,
                                                                      n);
    return cudaGetLastError();
}
