/* rmsnorm.cu: RMSNorm per row, one block per row: the sum of squares in fp32 (tree order,
 * so not bit-equal to the CPU), then out = x * (1/sqrt(mean + eps)) * w. The whole row is
 * read before any of it is written, so out may alias x. Reference: ns_cpu_rmsnorm_ref.
 * add_rmsnorm: the residual add before it in the same pass, bit for bit what
 * ns_cuda_add then ns_cuda_rmsnorm give (the same sums in the same order). */
#include "common.cuh"

static __global__ void rmsnorm_f32_kernel(float *out, __nv_bfloat16 *out_bf16, const float *x, const float *w, int n,
                                          float eps) {
    __shared__ float shared[32];
    const float *xr = x + (size_t)blockIdx.x * n;
    float *o = out + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = ns_block_sum(ss, shared);
    float s = 1.0f / sqrtf(ss / (float)n + eps);
    __nv_bfloat16 *ob = out_bf16 ? out_bf16 + (size_t)blockIdx.x * n : NULL;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i] * s * w[i];
        o[i] = v;
        if (ob) ob[i] = __float2bfloat16_rn(v);
    }
}

/* x += delta, then out / out_bf16 (either may be NULL) = rmsnorm(x) * w. delta is read in
 * full (before the block's reduction) before out is written, so out may alias delta; each
 * thread reads back only the x it wrote. */
static __global__ void add_rmsnorm_kernel(float *x, const float *delta, float *out, __nv_bfloat16 *out_bf16,
                                          const float *w, int n, float eps) {
    __shared__ float shared[32];
    float *xr = x + (size_t)blockIdx.x * n;
    const float *dr = delta + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i] + dr[i];
        xr[i] = v;
        ss += v * v;
    }
    ss = ns_block_sum(ss, shared);
    float s = 1.0f / sqrtf(ss / (float)n + eps);
    float *o = out ? out + (size_t)blockIdx.x * n : NULL;
    __nv_bfloat16 *ob = out_bf16 ? out_bf16 + (size_t)blockIdx.x * n : NULL;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i] * s * w[i];
        if (o) o[i] = v;
        if (ob) ob[i] = __float2bfloat16_rn(v);
    }
}

extern "C" cudaError_t ns_cuda_add_rmsnorm(float *x, const float *delta, float *out, uint16_t *out_bf16, const float *w,
                                           int n_rows, int n, float eps, cudaStream_t stream) {
    if (n_rows < 0 || n < 1 || n_rows > 0x7fffffff || (!out && !out_bf16)) return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    NS_LAUNCH((unsigned)n_rows, 256, 0, stream, add_rmsnorm_kernel)(x, delta, out, (__nv_bfloat16 *)out_bf16, w, n, eps);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_rmsnorm(float *out, uint16_t *out_bf16, const float *x, const float *w, int n_rows,
                                       int n, float eps, cudaStream_t stream) {
    if (n_rows < 0 || n < 1 || n_rows > 0x7fffffff) return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    NS_LAUNCH((unsigned)n_rows, 256, 0, stream, rmsnorm_f32_kernel)(out, (__nv_bfloat16 *)out_bf16, x, w, n, eps);
    return cudaGetLastError();
}
