/* sample.cu: greedy sampling on the device: the argmax of each logit row, lowest id on
 * ties (the rule of the CPU sampler in engine/sampler.c), so that a greedy decode step
 * can return n_rows ints instead of n_rows * n_vocab floats. NaN never compares greater,
 * so it never wins; a row whose best value is -inf (or NaN throughout) gives -1, as the
 * host sampler does. One block per row. Sampling with temperature: sample_rows.cu. */
#include "common.cuh"

#define SAMPLE_THREADS 256

static __device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

static __global__ void sample_greedy_kernel(int32_t *out_ids, const float *logits, int n_vocab) {
    __shared__ float s_val[SAMPLE_THREADS];
    __shared__ int s_idx[SAMPLE_THREADS];
    const float *row = logits + (size_t)blockIdx.x * n_vocab;
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n_vocab; i += blockDim.x)
        if (better(row[i], i, bv, bi)) bv = row[i], bi = i;
    s_val[threadIdx.x] = bv;
    s_idx[threadIdx.x] = bi;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) {
            float v = s_val[threadIdx.x + stride];
            int i = s_idx[threadIdx.x + stride];
            if (better(v, i, s_val[threadIdx.x], s_idx[threadIdx.x])) {
                s_val[threadIdx.x] = v;
                s_idx[threadIdx.x] = i;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out_ids[blockIdx.x] = s_val[0] > -INFINITY ? s_idx[0] : -1;
}

extern "C" cudaError_t ns_cuda_sample_greedy(int32_t *out_ids, const float *logits, int n_rows, int n_vocab,
                                             cudaStream_t stream) {
    if (n_rows < 0 || n_vocab < 1) return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    NS_LAUNCH((unsigned)n_rows, SAMPLE_THREADS, 0, stream, sample_greedy_kernel)(out_ids, logits, n_vocab);
    return cudaGetLastError();
}
