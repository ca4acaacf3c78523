/* fp8.cu: rows to FP8 E4M3 with one fp32 scale per row (the rule in kernels/cpu/fp8.h),
 * the input of the FP8 GEMMs (a job's precision: fp8):
 *   ns_cuda_quant_rows_fp8: a row of fp32 or bf16 (the activations when nothing below
 *     wrote them, and each weight matrix once at load);
 *   ns_cuda_rmsnorm_fp8, ns_cuda_add_rmsnorm_fp8, ns_cuda_swiglu_bf16_fp8: RMSNorm (after
 *     the residual add) and the fused feed-forward's SwiGLU writing their output as FP8
 *     rows directly, so that no bf16 copy is written and read again.
 * One block per row: the row's values, their amax (a max reduction that keeps NaN), then
 * each value times 448 / amax encoded by ns_fp8_e4m3_from_float. The quantizer gives the
 * bits of the CPU reference ns_cpu_quant_rows_fp8 (every step is exact or one IEEE
 * multiply); the fused ops give the bits of ns_cuda_rmsnorm / ns_cuda_add_rmsnorm (the same
 * block sums in the same order) followed by the quantizer, and SwiGLU those of its fp32
 * value. Checked by tests/gpu/emu_fp8.cpp on the CPU and tests/gpu/parity.c on a GPU.
 * NS_CUDA_EMU: tests/gpu/emu_fp8.cpp compiles the kernels for the host (tests/gpu/emu_cuda.h). */
#include "common.cuh"
#include "fp8.h"

#define FP8_THREADS 256
/* Rows up to this many elements keep their values in registers between the amax and the
 * encoding (FP8_KEEP per thread); longer rows compute them again. */
#define FP8_KEEP 64
#define FP8_KEEP_N (FP8_KEEP * FP8_THREADS)

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
            for (int j = 0; j < 4; j++) m = ns_amax_join(m, fabsf(load_x(xr, i + j)));
    } else {
        for (int64_t i = threadIdx.x; i < n; i += FP8_THREADS) m = ns_amax_join(m, fabsf(load_x(xr, i)));
    }
    m = ns_block_amax(m, shared);
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

/* The value of element i of the block's row, for each fused op. */
struct norm_row { /* RMSNorm: x * s * w (the expression of rmsnorm.cu's kernels) */
    const float *x, *w;
    float s;
    __device__ __forceinline__ float operator()(int64_t i) const { return x[i] * s * w[i]; }
};
struct swiglu_row { /* SwiGLU of bf16 gate and up (the expression of swiglu.cu's kernels) */
    const __nv_bfloat16 *g, *u;
    __device__ __forceinline__ float operator()(int64_t i) const {
        float g_ = __bfloat162float(g[i]);
        return g_ / (1.0f + expf(-g_)) * __bfloat162float(u[i]);
    }
};

/* Row of n values f(i) into q (n) e4m3 and *scale; each value also into out (n) when
 * out is not NULL (fp32; out may be where f reads from: every thread writes only the
 * elements it has read). KEEP: n <= FP8_KEEP_N, the values stay in registers. */
template <bool KEEP, typename F>
static __device__ __forceinline__ void row_to_fp8(const F &f, int64_t n, float *out, uint8_t *q, float *scale,
                                                  float *shared) {
    float keep[KEEP ? FP8_KEEP : 1];
    float m = 0.0f;
    if (KEEP) {
#pragma unroll
        for (int j = 0; j < FP8_KEEP; j++) {
            int64_t i = threadIdx.x + (int64_t)j * FP8_THREADS;
            keep[j] = i < n ? f(i) : 0.0f;
            if (i < n && out) out[i] = keep[j];
            m = ns_amax_join(m, fabsf(keep[j]));
        }
    } else {
        for (int64_t i = threadIdx.x; i < n; i += FP8_THREADS) {
            float v = f(i);
            if (out) out[i] = v;
            m = ns_amax_join(m, fabsf(v));
        }
    }
    m = ns_block_amax(m, shared);
    float inv;
    float s = ns_fp8_row_scale(m, &inv);
    if (threadIdx.x == 0) *scale = s;
    if (KEEP) {
#pragma unroll
        for (int j = 0; j < FP8_KEEP; j++) {
            int64_t i = threadIdx.x + (int64_t)j * FP8_THREADS;
            if (i < n) q[i] = ns_fp8_e4m3_from_float(__fmul_rn(keep[j], inv));
        }
    } else {
        for (int64_t i = threadIdx.x; i < n; i += FP8_THREADS)
            q[i] = ns_fp8_e4m3_from_float(__fmul_rn(out ? out[i] : f(i), inv));
    }
}

/* ADD: x += delta first (x, delta (n_rows, n)); then out (may be NULL) = rmsnorm(x) * w and
 * q, scales its FP8 rows. The sums are those of rmsnorm.cu's kernels, thread for thread. */
template <bool ADD, bool KEEP>
static __global__ void __launch_bounds__(FP8_THREADS)
    rmsnorm_fp8_kernel(float *x, const float *delta, float *out, uint8_t *q, float *scales, const float *w, int n,
                       float eps) {
    __shared__ float shared[32];
    float *xr = x + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    if (ADD) {
        const float *dr = delta + (size_t)blockIdx.x * n;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float v = xr[i] + dr[i];
            xr[i] = v;
            ss += v * v;
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    }
    ss = ns_block_sum(ss, shared);
    norm_row f = {xr, w, 1.0f / sqrtf(ss / (float)n + eps)};
    row_to_fp8<KEEP>(f, n, out ? out + (size_t)blockIdx.x * n : NULL, q + (size_t)blockIdx.x * n,
                     scales + blockIdx.x, shared);
}

template <bool KEEP>
static __global__ void __launch_bounds__(FP8_THREADS)
    swiglu_bf16_fp8_kernel(uint8_t *q, float *scales, const __nv_bfloat16 *gate, const __nv_bfloat16 *up, int64_t n) {
    __shared__ float shared[32];
    swiglu_row f = {gate + (int64_t)blockIdx.x * n, up + (int64_t)blockIdx.x * n};
    row_to_fp8<KEEP>(f, n, (float *)NULL, q + (int64_t)blockIdx.x * n, scales + blockIdx.x, shared);
}

template <typename T>
static void launch_quant(uint8_t *out, float *scales, const T *x, int64_t n_rows, int64_t n, cudaStream_t stream) {
    if (quant_rows_vec(out, n))
        NS_LAUNCH((unsigned)n_rows, FP8_THREADS, 0, stream, quant_rows_fp8_kernel<T, true>)(out, scales, x, n);
    else
        NS_LAUNCH((unsigned)n_rows, FP8_THREADS, 0, stream, quant_rows_fp8_kernel<T, false>)(out, scales, x, n);
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

template <bool ADD>
static cudaError_t launch_rmsnorm_fp8(float *x, const float *delta, float *out, uint8_t *q, float *scales,
                                      const float *w, int n_rows, int n, float eps, cudaStream_t stream) {
    if (n_rows < 0 || n < 1) return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    if (n <= FP8_KEEP_N)
        NS_LAUNCH((unsigned)n_rows, FP8_THREADS, 0, stream, rmsnorm_fp8_kernel<ADD, true>)(x, delta, out, q, scales, w, n, eps);
    else
        NS_LAUNCH((unsigned)n_rows, FP8_THREADS, 0, stream, rmsnorm_fp8_kernel<ADD, false>)(x, delta, out, q, scales, w, n, eps);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_rmsnorm_fp8(float *out, uint8_t *q, float *scales, const float *x, const float *w,
                                           int n_rows, int n, float eps, cudaStream_t stream) {
    return launch_rmsnorm_fp8<false>((float *)x, NULL, out, q, scales, w, n_rows, n, eps, stream);
}

extern "C" cudaError_t ns_cuda_add_rmsnorm_fp8(float *x, const float *delta, float *out, uint8_t *q, float *scales,
                                               const float *w, int n_rows, int n, float eps, cudaStream_t stream) {
    return launch_rmsnorm_fp8<true>(x, delta, out, q, scales, w, n_rows, n, eps, stream);
}

extern "C" cudaError_t ns_cuda_swiglu_bf16_fp8(uint8_t *q, float *scales, const uint16_t *gate, const uint16_t *up,
                                               int64_t n_rows, int64_t n, cudaStream_t stream) {
    if (n_rows < 0 || n_rows > 0x7fffffff || n < 1) return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    const __nv_bfloat16 *g = (const __nv_bfloat16 *)gate, *u = (const __nv_bfloat16 *)up;
    if (n <= FP8_KEEP_N)
        NS_LAUNCH((unsigned)n_rows, FP8_THREADS, 0, stream, swiglu_bf16_fp8_kernel<true>)(q, scales, g, u, n);
    else
        NS_LAUNCH((unsigned)n_rows, FP8_THREADS, 0, stream, swiglu_bf16_fp8_kernel<false>)(q, scales, g, u, n);
    return cudaGetLastError();
}

/* ---- FP8 GEMMs where cuBLASLt has no outer-vector scales (Hopper) ----
 * expand_scales: one scale per row to one per (row, 128-wide block of K), for cuBLASLt's
 * 128-block scaling (VEC128_32F), where a row's K blocks all take the row's scale: the
 * product is then the outer-vector one. kb_major says which of the two layouts the device
 * read in the backend's setup probe: dst[r * kb + j] (false) or dst[j * rows + r] (true).
 * scale_outer: the unscaled GEMM's fp32 sums times both scales, y (M, N) of y_type
 * (NS_CUDA_TYPE_F32 or BF16) = raw * (a_scale[n] * b_scale[m]): the operation order of
 * the CPU stand-in's cuBLASLt (tests/cudamock), so that the two give the same bits. */
static __global__ void expand_scales_kernel(float *dst, const float *src, int64_t rows, int kb, bool kb_major) {
    const int64_t n = rows * kb;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = kb_major ? i % rows : i / kb;
        dst[i] = src[r];
    }
}

extern "C" cudaError_t ns_cuda_expand_scales(float *dst, const float *src, int64_t rows, int kb, int kb_major,
                                             cudaStream_t stream) {
    if (rows < 0 || kb < 1) return cudaErrorInvalidValue;
    if (rows == 0) return cudaSuccess;
    const int64_t n = rows * kb, blocks = (n + 255) / 256;
    NS_LAUNCH((unsigned)(blocks < 4096 ? blocks : 4096), 256, 0, stream, expand_scales_kernel)(dst, src, rows, kb,
                                                                                                kb_major != 0);
    return cudaGetLastError();
}

template <bool BF16>
static __global__ void scale_outer_kernel(void *y, const float *raw, const float *a_scale, const float *b_scale,
                                          int M, int N) {
    const int64_t n_all = (int64_t)M * N;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_all; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t m = i / N, n = i - m * N;
        const float v = raw[i] * (a_scale[n] * b_scale[m]);
        if (BF16) ((__nv_bfloat16 *)y)[i] = __float2bfloat16_rn(v);
        else ((float *)y)[i] = v;
    }
}

extern "C" cudaError_t ns_cuda_scale_outer(void *y, int y_type, const float *raw, const float *a_scale,
                                           const float *b_scale, int M, int N, cudaStream_t stream) {
    if (M < 0 || N < 1 || (y_type != NS_CUDA_TYPE_F32 && y_type != NS_CUDA_TYPE_BF16)) return cudaErrorInvalidValue;
    if (M == 0) return cudaSuccess;
    const int64_t blocks = ((int64_t)M * N + 255) / 256;
    const unsigned grid = (unsigned)(blocks < 8192 ? blocks : 8192);
    if (y_type == NS_CUDA_TYPE_BF16)
        NS_LAUNCH(grid, 256, 0, stream, scale_outer_kernel<true>)(y, raw, a_scale, b_scale, M, N);
    else
        NS_LAUNCH(grid, 256, 0, stream, scale_outer_kernel<false>)(y, raw, a_scale, b_scale, M, N);
    return cudaGetLastError();
}
