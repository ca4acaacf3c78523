/* add.cu: the residual add y += x and the bias add y (M, N) += bias (N), elementwise;
 * bit-equal to ns_cpu_add (one fp32 add per element). */
#include "common.cuh"

static __global__ void add_f32_kernel(float *y, const float *x, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += x[i];
}

static __global__ void add_bias_f32_kernel(float *y, const float *bias, int64_t total, int N) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] += bias[i % N];
}

extern "C" cudaError_t ns_cuda_add(float *y, const float *x, int64_t n, cudaStream_t stream) {
    if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
    NS_LAUNCH(ns_grid_for(n, 256), 256, 0, stream, add_f32_kernel)(y, x, n);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_add_bias(float *y, const float *bias, int M, int N, cudaStream_t stream) {
    if (M < 0 || N < 1) return cudaErrorInvalidValue;
    int64_t total = (int64_t)M * N;
    if (total == 0) return cudaSuccess;
    NS_LAUNCH(ns_grid_for(total, 256), 256, 0, stream, add_bias_f32_kernel)(y, bias, total, N);
    return cudaGetLastError();
}
