/* emu_cuda.h: just enough of CUDA to run a kernel of kernels/cuda on the CPU, for the
 * emulated kernel checks (tests/gpu/emu_*.cpp, built by `make test`). A block runs as
 * blockDim.x std::threads, one per CUDA thread (kept between launches), one block at a
 * time (emu_launch), so
 * __shared__ variables can be statics and the dynamic shared memory one buffer.
 *
 *   __syncthreads     a barrier of the block's threads
 *   __syncwarp        a barrier of the 32 threads of the caller's warp
 *   __shfl_xor_sync   through a per-warp exchange between two __syncwarp (float, full mask);
 *   __shfl_sync       the same, from one source lane
 *   __ldg             a plain load (alignment checked)
 *   atomicAdd         an atomic add
 *   __f*_rn           the plain IEEE operations (build with -ffp-contract=off)
 *   bf16              round to nearest even, as __float2bfloat16_rn; __bfloat16_as_ushort
 *   fp16              __half2float (exact), __ushort_as_half
 *   cp.async          copies (16 or 4 bytes) queued per thread and done at the wait that
 *                     must cover them, so a read before its wait sees stale data; the
 *                     alignment of both ends checked
 *   wmma (m16n16k16)  every thread of a warp holds whole matrices in its fragments
 *                     (num_elements 256, element i at row i / cols, column i % cols, so
 *                     code that maps elements to rows through a loaded fragment works as
 *                     on the device); loads check the 32-byte alignment and the ldm
 *                     multiple that CUDA requires; mma_sync sums in fp32; a store is done
 *                     by lane 0 alone, so another lane reads it only after a __syncwarp
 *
 * Launchers: NS_LAUNCH (kernels/cuda/common.cuh) runs the kernel at once, after checking
 * the block size, the grid and the dynamic shared memory against CUDA's limits (above
 * 48 KiB only after cudaFuncSetAttribute raised it); cudaGetLastError reports a refused
 * launch; emu_launch_count(kernel) says how often a kernel ran. With NS_EMU_DEFERRED the
 * run is queued on the CPU stand-in's stream instead (tests/cudamock/emu_device.cpp).
 *
 * A missing barrier can go unnoticed here (the threads are scheduled differently); a wrong
 * index, a wrong layout, a read past a wait, or a misaligned fragment cannot.
 */
#ifndef NS_EMU_CUDA_H
#define NS_EMU_CUDA_H

#include <algorithm>
#include <barrier>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include <unistd.h>

struct emu_dim { unsigned x = 0, y = 0, z = 0; };
static thread_local emu_dim threadIdx, blockIdx;
static emu_dim blockDim, gridDim;
static std::barrier<> *emu_block_barrier;
static std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;
static std::vector<unsigned char> emu_dyn_smem_buf;
static unsigned char *emu_dyn_smem; /* 128-byte aligned, in emu_dyn_smem_buf */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(n)
#define __CUDACC__ 1
#define __CUDA_ARCH__ 900
#define NS_CUDA_EMU 1
#define NS_DYNAMIC_SMEM(name) unsigned char *name = emu_dyn_smem

static inline void emu_fail(const char *what) {
    std::fprintf(stderr, "emu_cuda: %s (block %u,%u thread %u)\n", what, blockIdx.x, blockIdx.y, threadIdx.x);
    std::abort();
}

static inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) emu_fail("__syncwarp with a partial mask");
    emu_warp_barriers[threadIdx.x / 32]->arrive_and_wait();
}
/* Every lane of the warp writes its value, then reads its partner's. */
static float emu_shfl_slots[32][32];
static inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    if (mask != 0xffffffffu) emu_fail("__shfl_xor_sync with a partial mask");
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
    emu_shfl_slots[w][l] = v;
    __syncwarp();
    const float r = emu_shfl_slots[w][(l ^ (unsigned)lane_mask) % 32];
    __syncwarp();
    return r;
}
/* Every lane of the warp writes its value, then reads lane src's. */
static inline float __shfl_sync(unsigned mask, float v, int src) {
    if (mask != 0xffffffffu) emu_fail("__shfl_sync with a partial mask");
    const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
    emu_shfl_slots[w][l] = v;
    __syncwarp();
    const float r = emu_shfl_slots[w][(unsigned)src % 32];
    __syncwarp();
    return r;
}
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __int_as_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
using std::max;
using std::min;

struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
static inline float2 make_float2(float x, float y) { return {x, y}; }
/* __ldg: a read-only load, here a plain one, with CUDA's natural-alignment requirement */
template <class T> static inline T __ldg(const T *p) {
    if ((uintptr_t)p % alignof(T)) emu_fail("__ldg of a misaligned address");
    return *p;
}
static inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return {x, y, z, w}; }
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

struct __nv_bfloat16 { uint16_t bits; };
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(uint16_t)((u >> 16) | 0x40)}; /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
static inline float __bfloat162float(__nv_bfloat16 b) { return __int_as_float((int32_t)((uint32_t)b.bits << 16)); }
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };

struct __half { uint16_t bits; };
static inline __half __ushort_as_half(unsigned short u) { return {u}; }
static inline float __half2float(__half h) { /* exact: every fp16 value is an fp32 value */
    const uint32_t sign = (uint32_t)(h.bits >> 15) << 31, e = (h.bits >> 10) & 31u, m = h.bits & 0x3ffu;
    if (e == 31) return __uint_as_float(sign | 0x7f800000u | (m << 13)); /* inf, NaN */
    if (e == 0) return (sign ? -1.0f : 1.0f) * std::ldexp((float)m, -24); /* zero, subnormal */
    return __uint_as_float(sign | ((e + 112u) << 23) | (m << 13));
}
static inline float2 __bfloat1622float2(__nv_bfloat162 b) { return {__bfloat162float(b.x), __bfloat162float(b.y)}; }

/* ---- cp.async: queued per thread, done by the wait that must cover them ---- */
struct emu_copy { void *dst; const void *src; size_t n; };
static thread_local std::vector<emu_copy> emu_cp_open;
static thread_local std::deque<std::vector<emu_copy>> emu_cp_groups;
static inline void ns_cp_async16(void *dst, const void *src) {
    if ((uintptr_t)dst % 16 || (uintptr_t)src % 16) emu_fail("cp.async of 16 bytes with an address not 16-byte aligned");
    emu_cp_open.push_back({dst, src, 16});
}
static inline void ns_cp_async4(void *dst, const void *src) {
    if ((uintptr_t)dst % 4 || (uintptr_t)src % 4) emu_fail("cp.async of 4 bytes with an address not 4-byte aligned");
    emu_cp_open.push_back({dst, src, 4});
}
static inline void ns_cp_async_commit() {
    emu_cp_groups.push_back(std::move(emu_cp_open));
    emu_cp_open.clear();
}
template <int N> static inline void ns_cp_async_wait() {
    while (emu_cp_groups.size() > (size_t)N) {
        for (const emu_copy &c : emu_cp_groups.front()) std::memcpy(c.dst, c.src, c.n);
        emu_cp_groups.pop_front();
    }
}

/* ---- wmma, m16n16k16, bf16 or fp32 elements ---- */
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emu_cuda: only m16n16k16");
    static constexpr int rows = 16, cols = 16, num_elements = 256;
    T x[256]; /* x[r * 16 + c] */
};

template <class T> static inline void emu_check_ldm(const void *p, unsigned ldm) {
    if ((uintptr_t)p % 32) emu_fail("wmma pointer not 32-byte aligned");
    if (ldm % (16 / sizeof(T))) emu_fail("wmma ldm not a multiple of 16 bytes");
}
template <class Use, class T, class Layout>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *p, unsigned ldm) {
    emu_check_ldm<T>(p, ldm);
    const bool rm = std::is_same<Layout, row_major>::value;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) f.x[r * 16 + c] = rm ? p[(size_t)r * ldm + c] : p[r + (size_t)c * ldm];
}
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p, unsigned ldm,
                                    layout_t l) {
    emu_check_ldm<float>(p, ldm);
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.x[r * 16 + c] = l == mem_row_major ? p[(size_t)r * ldm + c] : p[r + (size_t)c * ldm];
}
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm,
                                     layout_t l) {
    emu_check_ldm<float>(p, ldm);
    if (threadIdx.x % 32) return;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            (l == mem_row_major ? p[(size_t)r * ldm + c] : p[r + (size_t)c * ldm]) = f.x[r * 16 + c];
}
template <class Use, class T, class Layout>
static inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout> &f, T v) {
    for (int i = 0; i < 256; i++) f.x[i] = v;
}
static inline float emu_f(__nv_bfloat16 b) { return __bfloat162float(b); }
template <class LA, class LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                            const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c) {
    float t[256];
    for (int m = 0; m < 16; m++)
        for (int n = 0; n < 16; n++) {
            float s = c.x[m * 16 + n];
            for (int k = 0; k < 16; k++) s += emu_f(a.x[m * 16 + k]) * emu_f(b.x[k * 16 + n]);
            t[m * 16 + n] = s;
        }
    std::memcpy(d.x, t, sizeof t);
}
} // namespace wmma
} // namespace nvcuda

/* ---- the runtime, for the launchers (NS_LAUNCH) ---- */
#ifdef NS_EMU_DEFERRED
extern "C" void ns_cudamock_enqueue(void (*run)(const void *args), const void *args, size_t n);
#endif
typedef int cudaError_t;
typedef struct CUstream_st *cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9 };
enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
static cudaError_t emu_last_error = cudaSuccess;
static std::map<const void *, int> emu_smem_limit; /* cudaFuncSetAttribute's, per kernel */
static std::map<const void *, long> emu_launches;  /* launches per kernel */
static inline cudaError_t cudaGetLastError() {
    const cudaError_t e = emu_last_error;
    emu_last_error = cudaSuccess;
    return e;
}
/* Dynamic shared memory above 48 KiB needs this attribute first, up to sm_90's 227 KiB. */
template <class K> static inline cudaError_t cudaFuncSetAttribute(K kernel, int attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > 227 * 1024)
        return cudaErrorInvalidValue;
    emu_smem_limit[(const void *)kernel] = value;
    return cudaSuccess;
}
static inline long emu_launch_count(const void *kernel) {
    auto it = emu_launches.find(kernel);
    return it == emu_launches.end() ? 0 : it->second;
}
template <class K> struct emu_launcher {
    K kernel;
    dim3 grid, block;
    size_t smem;
    template <class... A> void operator()(A... args) const;
};
/* NS_LAUNCH(grid, block, smem, stream, kernel)(args...): checks the configuration as CUDA
 * would (a bad one sets the error cudaGetLastError returns and runs nothing), then runs the
 * kernel now, one block at a time (emu_launch, below). */
#define NS_LAUNCH(grid, block, smem, stream, ...) \
    emu_launcher<decltype(&__VA_ARGS__)>{&__VA_ARGS__, dim3(grid), dim3(block), (size_t)(smem)}

/* The CUDA threads of a launch: worker threads kept from launch to launch (starting 1024
 * threads for every launch made the emulated runs slow). emu_pool_run(n, f) runs f(0) ..
 * f(n - 1) on workers 0 .. n - 1 at once and returns when all are done. The pool belongs
 * to the process that made it: a child after fork() makes its own (and leaves the
 * parent's, whose threads it does not have, alone). */
struct emu_pool {
    std::mutex m;
    std::condition_variable go, done;
    std::vector<std::thread> workers;
    unsigned long gen = 0;
    unsigned active = 0, remaining = 0;
    const std::function<void(unsigned)> *job = nullptr;
    void loop(unsigned id) {
        unsigned long seen = 0;
        std::unique_lock<std::mutex> l(m);
        for (;;) {
            go.wait(l, [&] { return gen != seen; });
            seen = gen;
            if (id >= active) continue;
            const std::function<void(unsigned)> *f = job;
            l.unlock();
            (*f)(id);
            l.lock();
            if (--remaining == 0) done.notify_one();
        }
    }
    void run(unsigned n, const std::function<void(unsigned)> &f) {
        std::unique_lock<std::mutex> l(m);
        while (workers.size() < n) {
            const unsigned id = (unsigned)workers.size();
            workers.emplace_back([this, id] { loop(id); });
        }
        job = &f, active = n, remaining = n, gen++;
        go.notify_all();
        done.wait(l, [&] { return remaining == 0; });
        job = nullptr;
    }
};
static inline void emu_pool_run(unsigned n, const std::function<void(unsigned)> &f) {
    static emu_pool *pool = nullptr; /* never deleted: its workers wait until the process ends */
    static pid_t owner = 0;
    if (!pool || owner != getpid()) pool = new emu_pool, owner = getpid();
    pool->run(n, f);
}

/* Runs body() as grid (gx, gy) blocks of `threads` threads, one block at a time, with
 * smem_bytes of dynamic shared memory (filled with NaN bytes before each block: nothing
 * may read it before writing it). */
static inline void emu_launch(unsigned gx, unsigned gy, unsigned threads, size_t smem_bytes,
                              const std::function<void()> &body) {
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, 1};
    emu_dyn_smem_buf.assign(smem_bytes + 128, 0xff);
    emu_dyn_smem = emu_dyn_smem_buf.data() + (128 - (uintptr_t)emu_dyn_smem_buf.data() % 128) % 128;
    std::barrier<> block(threads);
    emu_block_barrier = &block;
    emu_warp_barriers.clear();
    for (unsigned w = 0; w < (threads + 31) / 32; w++)
        emu_warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
    emu_pool_run(threads, [&](unsigned t) {
        threadIdx.x = t;
        for (unsigned by = 0; by < gy; by++)
            for (unsigned bx = 0; bx < gx; bx++) {
                blockIdx.x = bx, blockIdx.y = by;
                if (t == 0) /* each block finds NaN bytes, not the last block's data */
                    std::memset(emu_dyn_smem, 0xff, smem_bytes);
                emu_block_barrier->arrive_and_wait();
                body();
                if (!emu_cp_groups.empty() || !emu_cp_open.empty()) emu_fail("cp.async copies never waited for");
                emu_block_barrier->arrive_and_wait(); /* the block is done */
            }
    });
}

template <class K> template <class... A> void emu_launcher<K>::operator()(A... args) const {
    const auto lim = emu_smem_limit.find((const void *)kernel);
    const size_t smem_max = lim == emu_smem_limit.end() ? 48 * 1024 : (size_t)lim->second;
    if (block.x < 1 || block.x > 1024 || block.y != 1 || block.z != 1 || grid.x < 1 || grid.x > 0x7fffffffu ||
        grid.y < 1 || grid.y > 65535 || grid.z != 1 || smem > smem_max) {
        std::fprintf(stderr, "emu_cuda: launch of grid (%u, %u, %u), block (%u, %u, %u), %zu bytes of shared memory "
                             "(at most %zu) refused\n", grid.x, grid.y, grid.z, block.x, block.y, block.z, smem, smem_max);
        emu_last_error = cudaErrorInvalidConfiguration;
        return;
    }
    emu_launches[(const void *)kernel]++;
#ifdef NS_EMU_DEFERRED /* queued on the CPU stand-in's stream (tests/cudamock): kept for graph replays */
    static std::vector<std::unique_ptr<std::function<void()>>> jobs;
    const K k = kernel;
    const dim3 g = grid, b = block;
    const size_t sm = smem;
    jobs.push_back(std::make_unique<std::function<void()>>([=] { emu_launch(g.x, g.y, b.x, sm, [&] { k(args...); }); }));
    const std::function<void()> *job = jobs.back().get();
    ns_cudamock_enqueue([](const void *a) { (**(const std::function<void()> *const *)a)(); }, &job, sizeof job);
#else
    emu_launch(grid.x, grid.y, block.x, smem, [&] { kernel(args...); });
#endif
}

#endif
