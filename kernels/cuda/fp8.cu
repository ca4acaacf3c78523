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

static __device__ __forceinline__ float load_x(const float *x, int64_t i) { return x[i]; }
static __device__ __forceinline__ float load_x(const __nv_bfloat16 *x, int64_t i) { return __bfloat162float(x[i]); }

/* VEC: each thread takes 4 consecutive elements and stores them as one 32-bit word, which
 * needs n % 4 == 0 and out 4-byte aligned. */
static inline bool quant_rows_vec(const uint8_t *out, int64_t n) { return n % 4 == 0 && (uintptr_t)out % 4 == 0; }

/* The block's row amax m (each thread's share) to the row's scale, stored by thread 0 at
 * *scale; returns what each value is multiplied by before its encoding (ns_fp8_row_scale). */
static __device__ __forceinline__ float block_row_scale(float m, float *shared, float *scale) {
    m = ns_block_amax(m, shared);
    float inv;
    const float s = ns_fp8_row_scale(m, &inv);
    if (threadIdx.x == 0) *scale = s;
    return inv;
}

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
    const float inv = block_row_scale(m, shared, scales + blockIdx.x);
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
        return ns_silu_mul(__bfloat162float(g[i]), __bfloat162float(u[i]));
    }
};

/* Rows longer than a kept row (below): each value is computed twice, once for the amax and
 * once for the encoding, into q (n) e4m3 and *scale; each value also into out (n) when out
 * is not NULL (fp32; out may be where f reads from: every thread writes only the elements
 * it has read). */
template <typename F>
static __device__ __forceinline__ void row_to_fp8_twice(const F &f, int64_t n, float *out, uint8_t *q, float *scale,
                                                        float *shared) {
    float m = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        float v = f(i);
        if (out) out[i] = v;
        m = ns_amax_join(m, fabsf(v));
    }
    const float inv = block_row_scale(m, shared, scale);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        q[i] = ns_fp8_e4m3_from_float(__fmul_rn(out ? out[i] : f(i), inv));
}

/* ---- RMSNorm to FP8 rows ----
 * A kept row: thread t holds elements t + j * FP8_THREADS, j < PER, in registers from the
 * first read to the encoding (one read of x, as rmsnorm.cu's kernels do), PER the least of
 * 4, 8, 16, 32 that covers the row, so that a short row does not pay for the registers of
 * a long one (occupancy). PER 0: the row is longer than 32 * FP8_THREADS and is read
 * again. The sum of squares runs in rmsnorm.cu's order, thread for thread (the same
 * expression, elements ascending, then ns_block_sum), so the values are its bits. */
template <bool ADD, int PER>
static __global__ void __launch_bounds__(FP8_THREADS)
    rmsnorm_fp8_kernel(float *x, const float *delta, float *out, uint8_t *q, float *scales, const float *w, int n,
                       float eps) {
    __shared__ float shared[32];
    float *xr = x + (size_t)blockIdx.x * n;
    const float *dr = ADD ? delta + (size_t)blockIdx.x * n : NULL;
    float *o = out ? out + (size_t)blockIdx.x * n : NULL;
    uint8_t *qr = q + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    if constexpr (PER == 0) {
        if (ADD) {
            for (int i = threadIdx.x; i < n; i += FP8_THREADS) {
                float v = xr[i] + dr[i];
                xr[i] = v;
                ss += v * v;
            }
        } else {
            for (int i = threadIdx.x; i < n; i += FP8_THREADS) ss += xr[i] * xr[i];
        }
        ss = ns_block_sum(ss, shared);
        norm_row f = {xr, w, 1.0f / sqrtf(ss / (float)n + eps)};
        row_to_fp8_twice(f, n, o, qr, scales + blockIdx.x, shared);
    } else {
        float v[PER > 0 ? PER : 1];
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int i = threadIdx.x + j * FP8_THREADS;
            v[j] = 0.0f;
            if (i < n) {
                float a = ADD ? xr[i] + dr[i] : xr[i];
                if (ADD) xr[i] = a;
                v[j] = a;
                ss += a * a;
            }
        }
        ss = ns_block_sum(ss, shared);
        const float s = 1.0f / sqrtf(ss / (float)n + eps);
        float m = 0.0f;
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int i = threadIdx.x + j * FP8_THREADS;
            if (i < n) {
                v[j] = v[j] * s * w[i];
                if (o) o[i] = v[j];
                m = ns_amax_join(m, fabsf(v[j]));
            }
        }
        const float inv = block_row_scale(m, shared, scales + blockIdx.x);
#pragma unroll
        for (int j = 0; j < PER; j++) {
            const int i = threadIdx.x + j * FP8_THREADS;
            if (i < n) qr[i] = ns_fp8_e4m3_from_float(__fmul_rn(v[j], inv));
        }
    }
}

/* The PER of a row of n (see rmsnorm_fp8_kernel): 0 past 32 * FP8_THREADS (at 64, ptxas
 * gives the kernel 128 registers: two blocks an SM). */
static inline int fp8_norm_per(int64_t n) {
    for (int per = 4; per <= 32; per *= 2)
        if (n <= (int64_t)per * FP8_THREADS) return per;
    return 0;
}

/* ---- the fused feed-forward's SwiGLU to FP8 rows ----
 * One block of SWIGLU_THREADS per row; thread t holds groups t + j * SWIGLU_THREADS,
 * j < G, of VEC consecutive elements. VEC 8: gate and up read 16 bytes at a time and the
 * codes stored 8 at a time (n % 8 == 0, gate and up 16-byte and q 8-byte aligned); VEC 1
 * otherwise. G the least of 1, 2, 4, 8 that covers the row; G 0: a longer row, computed
 * twice. The values are swiglu.cu's expression, the amax does not depend on the order, so
 * the codes are those of swiglu then quant_rows_fp8 whatever the grouping. */
#define SWIGLU_THREADS 512

template <int VEC, int G>
static __global__ void __launch_bounds__(SWIGLU_THREADS)
    swiglu_bf16_fp8_kernel(uint8_t *q, float *scales, const __nv_bfloat16 *gate, const __nv_bfloat16 *up, int64_t n) {
    __shared__ float shared[32];
    const __nv_bfloat16 *gr = gate + (int64_t)blockIdx.x * n, *ur = up + (int64_t)blockIdx.x * n;
    uint8_t *qr = q + (int64_t)blockIdx.x * n;
    if constexpr (G == 0) {
        swiglu_row f = {gr, ur};
        row_to_fp8_twice(f, n, (float *)NULL, qr, scales + blockIdx.x, shared);
    } else {
        float v[G > 0 ? G * VEC : 1];
        float m = 0.0f;
#pragma unroll
        for (int j = 0; j < G; j++) {
            const int64_t i = ((int64_t)threadIdx.x + (int64_t)j * SWIGLU_THREADS) * VEC;
#pragma unroll
            for (int k = 0; k < VEC; k++) v[j * VEC + k] = 0.0f;
            if (i < n) {
                if (VEC == 8) {
                    const uint4 g8 = __ldg((const uint4 *)(gr + i)), u8 = __ldg((const uint4 *)(ur + i));
                    const uint32_t gw[4] = {g8.x, g8.y, g8.z, g8.w}, uw[4] = {u8.x, u8.y, u8.z, u8.w};
#pragma unroll
                    for (int k = 0; k < 4; k++) {
                        v[j * VEC + 2 * k] = ns_silu_mul(ns_bf16_lo(gw[k]), ns_bf16_lo(uw[k]));
                        v[j * VEC + 2 * k + 1] = ns_silu_mul(ns_bf16_hi(gw[k]), ns_bf16_hi(uw[k]));
                    }
                } else {
                    v[j * VEC] = ns_silu_mul(__bfloat162float(gr[i]), __bfloat162float(ur[i]));
                }
#pragma unroll
                for (int k = 0; k < VEC; k++) m = ns_amax_join(m, fabsf(v[j * VEC + k]));
            }
        }
        const float inv = block_row_scale(m, shared, scales + blockIdx.x);
#pragma unroll
        for (int j = 0; j < G; j++) {
            const int64_t i = ((int64_t)threadIdx.x + (int64_t)j * SWIGLU_THREADS) * VEC;
            if (i < n) {
                if (VEC == 8) {
                    uint32_t word[2] = {0, 0};
#pragma unroll
                    for (int k = 0; k < 8; k++)
                        word[k / 4] |= (uint32_t)ns_fp8_e4m3_from_float(__fmul_rn(v[j * VEC + k], inv)) << (8 * (k % 4));
                    uint2 pair;
                    pair.x = word[0];
                    pair.y = word[1];
                    *(uint2 *)(qr + i) = pair;
                } else {
                    qr[i] = ns_fp8_e4m3_from_float(__fmul_rn(v[j * VEC], inv));
                }
            }
        }
    }
}

/* Whether the 8-wide path may run (see swiglu_bf16_fp8_kernel), and the G of a row. */
static inline bool swiglu_fp8_vec(const uint8_t *q, const void *gate, const void *up, int64_t n) {
    return n % 8 == 0 && (uintptr_t)q % 8 == 0 && (uintptr_t)gate % 16 == 0 && (uintptr_t)up % 16 == 0;
}
static inline int swiglu_fp8_groups(int64_t n, int vec) {
    for (int g = 1; g <= 8; g *= 2)
        if (n <= (int64_t)g * SWIGLU_THREADS * vec) return g;
    return 0;
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
#define NS_NORM_FP8(PER) \
    NS_LAUNCH((unsigned)n_rows, FP8_THREADS, 0, stream, rmsnorm_fp8_kernel<ADD, PER>)(x, delta, out, q, scales, w, n, eps)
    switch (fp8_norm_per(n)) {
    case 4: NS_NORM_FP8(4); break;
    case 8: NS_NORM_FP8(8); break;
    case 16: NS_NORM_FP8(16); break;
    case 32: NS_NORM_FP8(32); break;
    default: NS_NORM_FP8(0); break;
    }
#undef NS_NORM_FP8
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
    const bool vec = swiglu_fp8_vec(q, gate, up, n);
#define NS_SWIGLU_FP8(VEC, G) \
    NS_LAUNCH((unsigned)n_rows, SWIGLU_THREADS, 0, stream, swiglu_bf16_fp8_kernel<VEC, G>)(q, scales, g, u, n)
    switch (vec ? swiglu_fp8_groups(n, 8) : -swiglu_fp8_groups(n, 1)) {
    case 1: NS_SWIGLU_FP8(8, 1); break;
    case 2: NS_SWIGLU_FP8(8, 2); break;
    case 4: NS_SWIGLU_FP8(8, 4); break;
    case 8: NS_SWIGLU_FP8(8, 8); break;
    case -1: NS_SWIGLU_FP8(1, 1); break;
    case -2: NS_SWIGLU_FP8(1, 2); break;
    case -4: NS_SWIGLU_FP8(1, 4); break;
    case -8: NS_SWIGLU_FP8(1, 8); break;
    default: NS_SWIGLU_FP8(1, 0); break;
    }
#undef NS_SWIGLU_FP8
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

/* A 2D grid: blocks along y take rows (striding by gridDim.y), threads along x take VEC
 * consecutive columns (striding by the block row), so no element's row is found by a
 * division. VEC 4: N % 4 == 0, raw and a_scale 16-byte aligned, y 16-byte (fp32) or
 * 8-byte (bf16) aligned. */
template <bool BF16, int VEC>
static __global__ void scale_outer_kernel(void *y, const float *raw, const float *a_scale, const float *b_scale,
                                          int M, int N) {
    for (int m = blockIdx.y; m < M; m += gridDim.y) {
        const float sb = b_scale[m];
        const float *rr = raw + (int64_t)m * N;
        for (int n = (blockIdx.x * blockDim.x + threadIdx.x) * VEC; n < N; n += gridDim.x * blockDim.x * VEC) {
            float v[VEC], r[VEC], sa[VEC];
            if (VEC == 4) {
                const float4 r4 = __ldg((const float4 *)(rr + n)), a4 = __ldg((const float4 *)(a_scale + n));
                r[0] = r4.x, r[1] = r4.y, r[2] = r4.z, r[3] = r4.w;
                sa[0] = a4.x, sa[1] = a4.y, sa[2] = a4.z, sa[3] = a4.w;
            } else {
                r[0] = rr[n], sa[0] = a_scale[n];
            }
#pragma unroll
            for (int k = 0; k < VEC; k++) v[k] = r[k] * (sa[k] * sb);
            const int64_t i = (int64_t)m * N + n;
            if (BF16) {
                __nv_bfloat16 *yb = (__nv_bfloat16 *)y + i;
                if (VEC == 4) {
                    uint2 pair;
                    pair.x = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[0])) |
                             (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[1])) << 16;
                    pair.y = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2])) |
                             (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[3])) << 16;
                    *(uint2 *)yb = pair;
                } else {
                    yb[0] = __float2bfloat16_rn(v[0]);
                }
            } else {
                float *yf = (float *)y + i;
                if (VEC == 4) *(float4 *)yf = make_float4(v[0], v[1], v[2], v[3]);
                else yf[0] = v[0];
            }
        }
    }
}

extern "C" cudaError_t ns_cuda_scale_outer(void *y, int y_type, const float *raw, const float *a_scale,
                                           const float *b_scale, int M, int N, cudaStream_t stream) {
    if (M < 0 || N < 1 || (y_type != NS_CUDA_TYPE_F32 && y_type != NS_CUDA_TYPE_BF16)) return cudaErrorInvalidValue;
    if (M == 0) return cudaSuccess;
    const bool bf16 = y_type == NS_CUDA_TYPE_BF16;
    const bool vec = N % 4 == 0 && (uintptr_t)raw % 16 == 0 && (uintptr_t)a_scale % 16 == 0 &&
                     (uintptr_t)y % (bf16 ? 8 : 16) == 0;
    const int per_block = 256 * (vec ? 4 : 1);
    const int bx = (N + per_block - 1) / per_block;
    const dim3 grid((unsigned)(bx < 16 ? bx : 16), (unsigned)(M < 2048 ? M : 2048));
    if (bf16 && vec) NS_LAUNCH(grid, 256, 0, stream, scale_outer_kernel<true, 4>)(y, raw, a_scale, b_scale, M, N);
    else if (bf16) NS_LAUNCH(grid, 256, 0, stream, scale_outer_kernel<true, 1>)(y, raw, a_scale, b_scale, M, N);
    else if (vec) NS_LAUNCH(grid, 256, 0, stream, scale_outer_kernel<false, 4>)(y, raw, a_scale, b_scale, M, N);
    else NS_LAUNCH(grid, 256, 0, stream, scale_outer_kernel<false, 1>)(y, raw, a_scale, b_scale, M, N);
    return cudaGetLastError();
}
