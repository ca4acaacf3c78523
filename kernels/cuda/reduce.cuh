/* reduce.cuh: warp and block reductions shared by the kernels (through common.cuh) and by
 * the kernels that tests/gpu/emu_cuda.h compiles for the host (fp8.cu), which is why it
 * needs nothing but shuffles, barriers and the thread indices. */
#ifndef NS_CUDA_REDUCE_CUH
#define NS_CUDA_REDUCE_CUH

static __device__ __forceinline__ float ns_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over a block of up to 1024 threads; every thread gets the total. shared: 32 floats. */
static __device__ __forceinline__ float ns_block_sum(float v, float *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = ns_warp_sum(v);
    __syncthreads(); /* shared may still be read from a previous call */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int n_warps = (blockDim.x + 31) >> 5;
    v = lane < n_warps ? shared[lane] : 0.0f;
    return ns_warp_sum(v);
}

/* max(m, v) of magnitudes (v >= 0 or NaN), a NaN once seen kept (fmaxf would drop it).
 * Commutative and associative on these values: the reduction order does not matter. */
static __device__ __forceinline__ float ns_amax_join(float m, float v) { return (m != m || v <= m) ? m : v; }

/* The largest magnitude over a block (ns_amax_join); every thread gets it. shared: 32 floats. */
static __device__ __forceinline__ float ns_block_amax(float v, float *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = ns_amax_join(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads(); /* shared may still be read from a previous call */
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int n_warps = (blockDim.x + 31) >> 5;
    v = lane < n_warps ? shared[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = ns_amax_join(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

#endif
