/* fp8.cu: rows to FP8 E4M3 with one fp32 scale per row (the rule in kernels/cpu/fp8.h):
 * the activations going into the FP8 GEMMs (NS_CUDA_FP8=1), and each weight matrix once at
 * load. One block per row: the row's amax (a max reduction that keeps NaN), then every
 * element times 448 / amax, encoded with ns_fp8_e4m3_from_float. The same bits as the CPU
 * reference ns_cpu_quant_rows_fp8 (every step is exact or one IEEE multiply); checked by
 * tests/gpu/emu_fp8.cpp on the CPU and tests/gpu/parity.c on a GPU.
 * NS_CUDA_EMU: tests/gpu/emu_fp8.cpp compiles the kernel for the host (tests/gpu/emu_cuda.h). */
#ifndef NS_CUDA_EMU
#include "common.cuh"
#endif
#include "fp8.h"

#define FP8_THREADS 256

/* max(m, v) of magnitudes, NaN once seen kept (fmaxf would drop it). Commutative and
 * associative on these values, so the reduction order does not change the result. */
static __device__ __forceinline__ float amax_join(float m, float v) { return (m != m || v <= m) ? m : v; }

static __device__ __forceinline__ float block_amax(float v, float *shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = amax_join(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int n_warps = (blockDim.x + 31) >> 5;
    v = lane < n_warps ? shared[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v = amax_join(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

static __device__ __forceinline__ float load_x(const float *x, int64_t i) { return x[i]; }
static __device__ __forceinline__ float load_x(const __nv_bfloat16 *x, int64_t i) { return __bfloat162float(x[i]); }

/* VEC: each thread takes 4 consecutive elements and stores them as one 32-bit word, which
 * needs n % 4 == 0 and out 4-byte aligned. */
static inline bool quant_rows_vec(const uint8_t *out, int64_t n) { return n % 4 == 0 && (uintptr_t)out % 4 == 0; }

/* out (n_rows, n) e4m3, scales (n_rows); x (n_rows, n) of T. */
template <typename T, bool VEC>
static __global__ void __launch_bounds__(FP8_THREADS)
    quant_rows_fp8_kernel(uint8_t *out, float *scales, const T *x, int64_t n) {
    __shared__ float shared[32];
    const T *xr = x + (int64_t)blockIdx.x * n;
    uint8_t *o = out + (int64_t)blockIdx.x * n;
    float m = 0.0f;
    if (VEC) {
        for (int64_t i = 4 * (int64_t)threadIdx.x; i < n; i += 4 * FP8_THREADS)
            for (int j = 0; j < 4; j++) m = amax_join(m, fabsf(load_x(xr, i + j)));
    } else {
        for (int64_t i = threadIdx.x; i < n; i += FP8_THREADS) m = amax_join(m, fabsf(load_x(xr, i)));
    }
    m = block_amax(m, shared);
    float inv;
    float scale = ns_fp8_row_scale(m, &inv);
    if (threadIdx.x == 0) scales[blockIdx.x] = scale;
    if (VEC) {
        for (int64_t i = 4 * (int64_t)threadIdx.x; i < n; i += 4 * FP8_THREADS) {
            uint32_t word = 0;
            for (int j = 0; j < 4; j++)
                word |= (uint32_t)ns_fp8_e4m3_from_float(__fmul_rn(load_x(xr, i + j), inv)) << (8 * j);
            *(uint32_t *)(o + i) = word;
        }
    } else {
        for (int64_t i = threadIdx.x; i < n; i += FP8_THREADS)
            o[i] = ns_fp8_e4m3_from_float(__fmul_rn(load_x(xr, i), inv));
    }
}

#ifndef NS_CUDA_EMU
template <typename T>
static void launch_quant(uint8_t *out, float *scales, const T *x, int64_t n_rows, int64_t n, cudaStream_t stream) {
    if (quant_rows_vec(out, n))
        quant_rows_fp8_kernel<T, true><<<(unsigned)n_rows, FP8_THREADS, 0, stream>>>(out, scales, x, n);
    else
        quant_rows_fp8_kernel<T, false><<<(unsigned)n_rows, FP8_THREADS, 0, stream>>>(out, scales, x, n);
}

extern "C" cudaError_t ns_cuda_quant_rows_fp8(uint8_t *out, float *scales, const void *x, int x_type, int64_t n_rows,
                                              int64_t n, cudaStream_t stream) {
    if (n_rows < 0 || n_rows > 0x7fffffff || n < 1 || (x_type != NS_CUDA_TYPE_F32 && x_type != NS_CUDA_TYPE_BF16))
        return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    if (x_type == NS_CUDA_TYPE_F32)
        launch_quant(out, scales, (const float *)x, n_rows, n, stream);
    else
        launch_quant(out, scales, (const __nv_bfloat16 *)x, n_rows, n, stream);
    return cudaGetLastError();
}
#endif
