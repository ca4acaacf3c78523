/* attention.cu: the paged KV cache on the device: storing a batch's K/V rows into their
 * slots, and causal grouped-query attention of a whole mixed batch (prompt chunks and
 * decode tokens of many sequences) over each sequence's blocks.
 *
 * The pools hold bf16 (the default: half the bytes of fp32, and attention at decode is
 * bound by reading them), fp32 (the backend's precise mode, for exact comparisons), or
 * FP8 E4M3 codes with a scale per (slot, KV head) row (the FP8 KV cache: half bf16's bytes
 * again; head_dim 64 or 128, through the fast kernel or the tensor-core one).
 * NS_CUDA_EMU: tests/gpu/emu_attention.cpp compiles this file for the host through
 * tests/gpu/emu_cuda.h, and runs the kernels directly and through their launchers.
 *
 * Attention: one thread block per (query token, KV head); its G = n_head / n_head_kv
 * warps are the query heads that share that KV head, so each K/V row is read from device
 * memory once for the whole group. The keys the token may see (0 .. q_pos) are visited in
 * tiles of 32: the block copies a tile of K and V rows (found through the block table)
 * into shared memory; then each warp scores the tile with lane j taking key j (a full dot
 * product against q, which sits in shared memory), updates its online softmax (running
 * max m, sum l, accumulator rescaled by exp(m_old - m_new)) with one max and one sum
 * over the warp, and accumulates p_j * V_j with lane l owning dims 2l, 2l+1, 2l+64, ...
 * All arithmetic in fp32. The score matrix is never formed; nothing is written but out.
 * K rows in shared memory are padded to an odd number of 4-byte words, so the 32 lanes
 * reading 32 different rows at the same column hit 32 different banks.
 * Tensor cores: attention_tc.cu (NS_CUDA_ATTN_TC). Not yet: split-K over very long
 * contexts.
 */
#include <stdlib.h>

#include "common.cuh"
#include "fp8.h"
#include "fp8_decode.cuh"

#define ATTN_TILE 32
#define ATTN_MAX_GROUP 16
/* query tokens per block (ops_cuda.h: NS_CUDA_ATTN_QT) */
#define ATTN_QT NS_CUDA_ATTN_QT

template <typename T> static __device__ __forceinline__ T to_kv(float v);
template <> __device__ __forceinline__ float to_kv<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 to_kv<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
/* two consecutive elements as floats (p 4-byte aligned for bf16) */
static __device__ __forceinline__ float2 ld2(const float *p) { return make_float2(p[0], p[1]); }
static __device__ __forceinline__ float2 ld2(const __nv_bfloat16 *p) {
    return __bfloat1622float2(*(const __nv_bfloat162 *)p);
}

template <typename T>
static __global__ void kv_store_kernel(T *k_pool, T *v_pool, const float *k, const float *v, const int32_t *slot,
                                       int n_tokens, int row) {
    int64_t total = (int64_t)n_tokens * row;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int t = (int)(idx / row), e = (int)(idx % row);
        size_t dst = (size_t)slot[t] * row + e;
        k_pool[dst] = to_kv<T>(k[idx]);
        v_pool[dst] = to_kv<T>(v[idx]);
    }
}

/* Shared memory: K tile (ATTN_TILE rows of `ks` elements), V tile (ATTN_TILE x hd2), and the
 * pool row of each key of the tile. hd2 = head_dim rounded up to even; K padding is zero.
 * A block serves up to QT consecutive query tokens of one sequence (a "group"), so a
 * prompt chunk loads each K/V tile once per QT tokens instead of once per token; each
 * warp keeps an online-softmax state per token of the group. QT = 1 for decode-only
 * batches (fewer registers, more blocks resident), ATTN_QT otherwise. */
template <typename T, int QT>
static __global__ void __launch_bounds__(32 * ATTN_MAX_GROUP)
    attention_gqa_kernel(float *out, __nv_bfloat16 *out_bf16, const float *q, const int32_t *q_pos, const int32_t *tok_seq,
                         const int32_t *groups, const int32_t *block_table, int max_blocks_per_seq, const T *k_pool,
                         const T *v_pool, int block_size, int n_head, int n_head_kv, int head_dim, float scale) {
    NS_DYNAMIC_SMEM(smem);
    __shared__ size_t s_row[ATTN_TILE];
    const int G = n_head / n_head_kv;
    const int hd2 = (head_dim + 1) & ~1;
    /* K row stride in elements: an odd number of 4-byte words */
    const int kwords = (hd2 * (int)sizeof(T) / 4) | 1;
    const int ks = kwords * 4 / (int)sizeof(T);
    T *sk = (T *)smem;
    T *sv = sk + (size_t)ATTN_TILE * ks;

    const int t0 = groups[2 * blockIdx.x], nq = groups[2 * blockIdx.x + 1], kvh = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nthr = blockDim.x;
    const int h = kvh * G + warp; /* this warp's query head */
    const int32_t *table = block_table + (size_t)tok_seq[t0] * max_blocks_per_seq;
    const int n_seen_max = q_pos[t0 + nq - 1] + 1;
    const size_t row_stride = (size_t)n_head_kv * head_dim;
    const size_t kv_off = (size_t)kvh * head_dim;

    /* per token of the group: running max, sum, and accumulator dims 2*lane + 64*u (+1) */
    constexpr int NU = NS_CUDA_ATTN_MAX_HEAD_DIM / 64;
    float m[QT], l[QT], acc[QT][NU][2];
#pragma unroll
    for (int i = 0; i < QT; i++) {
        m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
        for (int u = 0; u < NU; u++) acc[i][u][0] = acc[i][u][1] = 0.0f;
    }

    for (int k0 = 0; k0 < n_seen_max; k0 += ATTN_TILE) {
        const int n_keys = min(ATTN_TILE, n_seen_max - k0);
        __syncthreads(); /* the previous tile is no longer read */
        if (threadIdx.x < n_keys) {
            int key = k0 + threadIdx.x;
            s_row[threadIdx.x] = (size_t)table[key / block_size] * block_size + (size_t)(key % block_size);
        }
        __syncthreads();
        constexpr int VE = 16 / (int)sizeof(T); /* elements per 16-byte load */
        if (head_dim % VE == 0 && row_stride % VE == 0) {
            /* 16-byte loads; rows past n_keys are left as they are (their scores are masked) */
            const int nv = head_dim / VE;
            for (int i = threadIdx.x; i < n_keys * nv; i += nthr) {
                int j = i / nv, c = i % nv;
                size_t src = s_row[j] * row_stride + kv_off + (size_t)c * VE;
                uint4 kq = *(const uint4 *)(k_pool + src), vq = *(const uint4 *)(v_pool + src);
                uint32_t *kd = (uint32_t *)(sk + j * ks) + c * 4; /* K rows: 4-byte aligned only */
                kd[0] = kq.x, kd[1] = kq.y, kd[2] = kq.z, kd[3] = kq.w;
                *(uint4 *)(sv + j * hd2 + c * VE) = vq;
            }
        } else {
            for (int i = threadIdx.x; i < ATTN_TILE * hd2; i += nthr) {
                int j = i / hd2, d = i % hd2;
                T kv_k = to_kv<T>(0.0f), kv_v = to_kv<T>(0.0f);
                if (j < n_keys && d < head_dim) {
                    kv_k = k_pool[s_row[j] * row_stride + kv_off + d];
                    kv_v = v_pool[s_row[j] * row_stride + kv_off + d];
                }
                sk[j * ks + d] = kv_k;
                sv[j * hd2 + d] = kv_v;
            }
        }
        __syncthreads();
        if (warp >= G) continue;
        const T *kr = sk + lane * ks;
#pragma unroll
        for (int qi = 0; qi < QT; qi++) {
            if (qi >= nq) break;
            const int t = t0 + qi;
            const int nk = min(n_keys, q_pos[t] + 1 - k0); /* keys this token sees in the tile */
            if (nk <= 0) continue;
            /* lane j scores key k0 + j */
            const float *qh = q + ((size_t)t * n_head + h) * head_dim;
            float s0 = 0.0f, s1 = 0.0f;
            if (head_dim % 2 == 0) {
#pragma unroll 8
                for (int d = 0; d < hd2; d += 2) {
                    float2 kk = ld2(kr + d), qq = __ldg((const float2 *)(qh + d));
                    s0 = fmaf(qq.x, kk.x, s0);
                    s1 = fmaf(qq.y, kk.y, s1);
                }
            } else {
                for (int d = 0; d < hd2; d += 2) {
                    float2 kk = ld2(kr + d);
                    s0 = fmaf(__ldg(qh + d), kk.x, s0);
                    if (d + 1 < head_dim) s1 = fmaf(__ldg(qh + d + 1), kk.y, s1);
                }
            }
            float sc = lane < nk ? (s0 + s1) * scale : -INFINITY;
            float m_tile = sc;
            for (int o = 16; o > 0; o >>= 1) m_tile = fmaxf(m_tile, __shfl_xor_sync(0xffffffffu, m_tile, o));
            float m_new = fmaxf(m[qi], m_tile);
            float alpha = expf(m[qi] - m_new); /* 0 on the first tile (m = -inf) */
            float p = lane < nk ? expf(sc - m_new) : 0.0f;
            l[qi] = l[qi] * alpha + ns_warp_sum(p);
            m[qi] = m_new;
            float a[NU][2];
#pragma unroll
            for (int u = 0; u < NU; u++) a[u][0] = 0.0f, a[u][1] = 0.0f;
#pragma unroll 8
            for (int j = 0; j < ATTN_TILE; j++) {
                if (j >= nk) break;
                float pj = __shfl_sync(0xffffffffu, p, j);
                const T *vr = sv + j * hd2;
#pragma unroll
                for (int u = 0; u < NU; u++) {
                    int d = 2 * lane + 64 * u;
                    if (d < hd2) {
                        float2 vv = ld2(vr + d);
                        a[u][0] = fmaf(pj, vv.x, a[u][0]);
                        a[u][1] = fmaf(pj, vv.y, a[u][1]);
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < NU; u++) {
                acc[qi][u][0] = fmaf(acc[qi][u][0], alpha, a[u][0]);
                acc[qi][u][1] = fmaf(acc[qi][u][1], alpha, a[u][1]);
            }
        }
    }
    if (warp >= G) return;
#pragma unroll
    for (int qi = 0; qi < QT; qi++) {
        if (qi >= nq) break;
        float inv = 1.0f / l[qi];
        size_t o_off = ((size_t)(t0 + qi) * n_head + h) * head_dim;
        float *o = out + o_off;
#pragma unroll
        for (int u = 0; u < NU; u++) {
            int d = 2 * lane + 64 * u;
            float v0 = acc[qi][u][0] * inv, v1 = acc[qi][u][1] * inv;
            if (d < head_dim) o[d] = v0;
            if (d + 1 < head_dim) o[d + 1] = v1;
            if (out_bf16 && d < head_dim) out_bf16[o_off + d] = __float2bfloat16_rn(v0);
            if (out_bf16 && d + 1 < head_dim) out_bf16[o_off + d + 1] = __float2bfloat16_rn(v1);
        }
    }
}

/* Dynamic shared memory of attention_gqa_kernel: the K tile (rows of an odd number of
 * 4-byte words) and the V tile. */
static size_t attn_smem_bytes(int kv_type, int head_dim) {
    size_t el = kv_type == NS_CUDA_TYPE_BF16 ? 2 : 4;
    size_t hd2 = (size_t)(head_dim + 1) & ~(size_t)1;
    size_t kwords = (hd2 * el / 4) | 1;
    return ATTN_TILE * kwords * 4 + ATTN_TILE * hd2 * el;
}


template <typename T, int QT>
static cudaError_t launch_attention(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos, const int32_t *tok_seq,
                                    const int32_t *groups, int n_groups, const int32_t *block_table,
                                    int max_blocks_per_seq, const void *k_pool, const void *v_pool, int block_size,
                                    int n_head, int n_head_kv, int head_dim, float scale, size_t smem,
                                    cudaStream_t stream) {
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attention_gqa_kernel<T, QT>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    dim3 grid((unsigned)n_groups, (unsigned)n_head_kv);
    NS_LAUNCH(grid, 32 * (n_head / n_head_kv), smem, stream, attention_gqa_kernel<T, QT>)(
        out, (__nv_bfloat16 *)out_bf16, q, q_pos, tok_seq, groups, block_table, max_blocks_per_seq, (const T *)k_pool,
        (const T *)v_pool, block_size, n_head, n_head_kv, head_dim, scale);
    return cudaGetLastError();
}

template <typename T>
static cudaError_t launch_attention_qt(bool single, float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                       const int32_t *tok_seq, const int32_t *groups, int n_groups,
                                       const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                                       const void *v_pool, int block_size, int n_head, int n_head_kv, int head_dim,
                                       float scale, size_t smem, cudaStream_t stream) {
    return single ? launch_attention<T, 1>(out, out_bf16, q, q_pos, tok_seq, groups, n_groups, block_table,
                                                max_blocks_per_seq, k_pool, v_pool, block_size, n_head, n_head_kv,
                                                head_dim, scale, smem, stream)
                  : launch_attention<T, ATTN_QT>(out, out_bf16, q, q_pos, tok_seq, groups, n_groups, block_table,
                                                      max_blocks_per_seq, k_pool, v_pool, block_size, n_head,
                                                      n_head_kv, head_dim, scale, smem, stream);
}

/* ---- the fast path: bf16 or e4m3 pools, head_dim 64 or 128, 16-byte aligned rows ----
 * The same algorithm, with the K/V tiles copied by cp.async into two shared-memory stages,
 * so that tile i+1 is in flight while tile i is computed. K rows are stored as 16-byte
 * chunks at a swizzled position (kv_swz): lane j reading row j, chunk c as one 16-byte
 * load then touches 8 different chunk positions per quarter-warp, all 32 banks. Each lane
 * owns HD/32 consecutive dims of the output.
 * F8 (the FP8 KV cache, NS_CUDA_TYPE_E4M3): the rows are e4m3 codes, one byte per element,
 * and each key's K and V scale comes with its tile (4-byte copies); a score is
 * q . codes * k_scale, a value's weight p * v_scale. */

/* Element bytes, 16-byte chunks per row, and the chunk swizzle of row j (rows of 4 chunks,
 * 64 bytes, pair up in a quarter-warp: (j >> 1) & 3; rows of 8 or more: j & 7). */
template <int HD, bool F8> struct kv_tile {
    static constexpr int EB = F8 ? 1 : 2;
    static constexpr int CH = HD * EB / 16;
    static constexpr int ROW = HD * EB; /* bytes */
    static __device__ __forceinline__ int swz(int j) { return CH >= 8 ? (j & 7) : ((j >> 1) & 3); }
};

/* Issues the copies of the K/V rows of keys k0 .. k0 + ATTN_TILE - 1 (those < n_seen) into
 * stage `stage` of the shared tiles (and with F8 their scales), and commits them as one
 * group. */
template <int HD, bool F8>
static __device__ __forceinline__ void fast_load_tile(unsigned char *sk, unsigned char *sv, float *s_scale, int stage,
                                                      int k0, int n_seen, const int32_t *table, int block_size,
                                                      const unsigned char *k_pool, const unsigned char *v_pool,
                                                      const float *k_scale, const float *v_scale, int n_head_kv,
                                                      int kvh, size_t row_stride, size_t kv_off) {
    typedef kv_tile<HD, F8> L;
    unsigned char *dk = sk + stage * ATTN_TILE * L::ROW, *dv = sv + stage * ATTN_TILE * L::ROW;
    for (int i = threadIdx.x; i < ATTN_TILE * L::CH; i += blockDim.x) {
        int j = i / L::CH, c = i % L::CH, key = k0 + j;
        if (key >= n_seen) break; /* i grows with j: this thread's later rows are past the end too */
        size_t r = (size_t)table[key / block_size] * block_size + (size_t)(key % block_size);
        size_t src = (r * row_stride + kv_off) * L::EB + (size_t)c * 16;
        ns_cp_async16(dk + j * L::ROW + ((c ^ L::swz(j)) * 16), k_pool + src);
        ns_cp_async16(dv + j * L::ROW + c * 16, v_pool + src);
    }
    if (F8 && (int)threadIdx.x < ATTN_TILE && k0 + (int)threadIdx.x < n_seen) {
        int key = k0 + threadIdx.x;
        size_t r = (size_t)table[key / block_size] * block_size + (size_t)(key % block_size);
        float *st = s_scale + stage * 2 * ATTN_TILE; /* [K scales][V scales] */
        ns_cp_async4(st + threadIdx.x, k_scale + r * n_head_kv + kvh);
        ns_cp_async4(st + ATTN_TILE + threadIdx.x, v_scale + r * n_head_kv + kvh);
    }
    ns_cp_async_commit();
}

/* Shared memory of the fast kernel: two stages of K and V tiles, and with F8 two stages of
 * the tile's K and V scales. */
template <int HD, bool F8> static constexpr size_t fast_smem_bytes() {
    return 4 * ATTN_TILE * kv_tile<HD, F8>::ROW + (F8 ? 4 * ATTN_TILE * sizeof(float) : 0);
}

template <int HD, int QT, bool F8>
static __global__ void __launch_bounds__(32 * ATTN_MAX_GROUP)
    attention_fast_kernel(float *out, __nv_bfloat16 *out_bf16, const float *q, const int32_t *q_pos,
                          const int32_t *tok_seq, const int32_t *groups, const int32_t *block_table,
                          int max_blocks_per_seq, const unsigned char *k_pool, const unsigned char *v_pool,
                          const float *k_scale, const float *v_scale, int block_size, int n_head, int n_head_kv,
                          float scale) {
    typedef kv_tile<HD, F8> L;
    constexpr int DPL = HD / 32; /* output dims per lane */
    NS_DYNAMIC_SMEM(smem);
    unsigned char *sk = smem;                            /* [2][ATTN_TILE rows], swizzled */
    unsigned char *sv = sk + 2 * ATTN_TILE * L::ROW;     /* [2][ATTN_TILE rows] */
    float *s_scale = (float *)(sv + 2 * ATTN_TILE * L::ROW); /* F8: [2][K, V][ATTN_TILE] */
    const int G = n_head / n_head_kv;
    const int t0 = groups[2 * blockIdx.x], nq = groups[2 * blockIdx.x + 1], kvh = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h = kvh * G + warp;
    const int32_t *table = block_table + (size_t)tok_seq[t0] * max_blocks_per_seq;
    const int n_seen_max = q_pos[t0 + nq - 1] + 1;
    const size_t row_stride = (size_t)n_head_kv * HD; /* elements */
    const size_t kv_off = (size_t)kvh * HD;
    const int n_tiles = (n_seen_max + ATTN_TILE - 1) / ATTN_TILE;

    float m[QT], l[QT], acc[QT][DPL];
#pragma unroll
    for (int i = 0; i < QT; i++) {
        m[i] = -INFINITY, l[i] = 0.0f;
#pragma unroll
        for (int u = 0; u < DPL; u++) acc[i][u] = 0.0f;
    }

    fast_load_tile<HD, F8>(sk, sv, s_scale, 0, 0, n_seen_max, table, block_size, k_pool, v_pool, k_scale, v_scale,
                           n_head_kv, kvh, row_stride, kv_off);
    for (int it = 0; it < n_tiles; it++) {
        const int k0 = it * ATTN_TILE, n_keys = min(ATTN_TILE, n_seen_max - k0);
        if (it + 1 < n_tiles) {
            fast_load_tile<HD, F8>(sk, sv, s_scale, (it + 1) & 1, k0 + ATTN_TILE, n_seen_max, table, block_size,
                                   k_pool, v_pool, k_scale, v_scale, n_head_kv, kvh, row_stride, kv_off);
            ns_cp_async_wait<1>(); /* this tile's copies are done, the next may still fly */
        } else {
            ns_cp_async_wait<0>();
        }
        __syncthreads();
        const unsigned char *ck = sk + (it & 1) * ATTN_TILE * L::ROW, *cv = sv + (it & 1) * ATTN_TILE * L::ROW;
        const unsigned char *kr = ck + lane * L::ROW;
        const float *ks = s_scale + (it & 1) * 2 * ATTN_TILE, *vs = ks + ATTN_TILE;
#pragma unroll
        for (int qi = 0; qi < QT; qi++) {
            if (qi >= nq) break;
            const int t = t0 + qi;
            const int nk = min(n_keys, q_pos[t] + 1 - k0);
            if (nk <= 0) continue;
            const float4 *qh = (const float4 *)(q + ((size_t)t * n_head + h) * HD);
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma unroll(F8 ? 2 : 4) /* F8: 16 codes per chunk; 4 chunks at a time spill at head_dim 64 */
            for (int c = 0; c < L::CH; c++) {
                uint4 kk = *(const uint4 *)(kr + ((c ^ L::swz(lane)) * 16));
                if constexpr (F8) { /* 16 codes: dims 16c .. 16c + 15 */
                    const uint32_t w[4] = {kk.x, kk.y, kk.z, kk.w};
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float4 qa = __ldg(qh + 4 * c + e);
                        float2 k01 = fp8x2_to_float2(w[e]), k23 = fp8x2_to_float2(w[e] >> 16);
                        s0 = fmaf(qa.x, k01.x, s0), s1 = fmaf(qa.y, k01.y, s1);
                        s2 = fmaf(qa.z, k23.x, s2), s3 = fmaf(qa.w, k23.y, s3);
                    }
                } else { /* 8 bf16: dims 8c .. 8c + 7 */
                    float4 qa = __ldg(qh + 2 * c), qb = __ldg(qh + 2 * c + 1);
                    float2 k01 = __bfloat1622float2(*(const __nv_bfloat162 *)&kk.x);
                    float2 k23 = __bfloat1622float2(*(const __nv_bfloat162 *)&kk.y);
                    float2 k45 = __bfloat1622float2(*(const __nv_bfloat162 *)&kk.z);
                    float2 k67 = __bfloat1622float2(*(const __nv_bfloat162 *)&kk.w);
                    s0 = fmaf(qa.x, k01.x, s0), s1 = fmaf(qa.y, k01.y, s1);
                    s2 = fmaf(qa.z, k23.x, s2), s3 = fmaf(qa.w, k23.y, s3);
                    s0 = fmaf(qb.x, k45.x, s0), s1 = fmaf(qb.y, k45.y, s1);
                    s2 = fmaf(qb.z, k67.x, s2), s3 = fmaf(qb.w, k67.y, s3);
                }
            }
            float dot = (s0 + s1) + (s2 + s3);
            if constexpr (F8) dot *= ks[lane]; /* rows past n_keys: masked below */
            float sc = lane < nk ? dot * scale : -INFINITY;
            float m_tile = sc;
            for (int o = 16; o > 0; o >>= 1) m_tile = fmaxf(m_tile, __shfl_xor_sync(0xffffffffu, m_tile, o));
            float m_new = fmaxf(m[qi], m_tile);
            float alpha = expf(m[qi] - m_new);
            float p = lane < nk ? expf(sc - m_new) : 0.0f;
            l[qi] = l[qi] * alpha + ns_warp_sum(p);
            m[qi] = m_new;
            float a[DPL];
#pragma unroll
            for (int u = 0; u < DPL; u++) a[u] = 0.0f;
#pragma unroll 4
            for (int j = 0; j < ATTN_TILE; j++) {
                if (j >= nk) break;
                float pj = __shfl_sync(0xffffffffu, p, j);
                const unsigned char *vr = cv + j * L::ROW + lane * DPL * L::EB;
                if constexpr (F8) {
                    pj *= vs[j];
                    if (DPL == 4) {
                        uint32_t vv = *(const uint32_t *)vr;
                        float2 v01 = fp8x2_to_float2(vv), v23 = fp8x2_to_float2(vv >> 16);
                        a[0] = fmaf(pj, v01.x, a[0]), a[1] = fmaf(pj, v01.y, a[1]);
                        a[DPL > 2 ? 2 : 0] = fmaf(pj, v23.x, a[DPL > 2 ? 2 : 0]);
                        a[DPL > 3 ? 3 : 0] = fmaf(pj, v23.y, a[DPL > 3 ? 3 : 0]);
                    } else {
                        float2 v01 = fp8x2_to_float2(*(const uint16_t *)vr);
                        a[0] = fmaf(pj, v01.x, a[0]), a[1] = fmaf(pj, v01.y, a[1]);
                    }
                } else if (DPL == 4) {
                    uint2 vv = *(const uint2 *)vr;
                    float2 v01 = __bfloat1622float2(*(const __nv_bfloat162 *)&vv.x);
                    float2 v23 = __bfloat1622float2(*(const __nv_bfloat162 *)&vv.y);
                    a[0] = fmaf(pj, v01.x, a[0]), a[1] = fmaf(pj, v01.y, a[1]);
                    a[DPL > 2 ? 2 : 0] = fmaf(pj, v23.x, a[DPL > 2 ? 2 : 0]);
                    a[DPL > 3 ? 3 : 0] = fmaf(pj, v23.y, a[DPL > 3 ? 3 : 0]);
                } else {
                    float2 v01 = __bfloat1622float2(*(const __nv_bfloat162 *)vr);
                    a[0] = fmaf(pj, v01.x, a[0]), a[1] = fmaf(pj, v01.y, a[1]);
                }
            }
#pragma unroll
            for (int u = 0; u < DPL; u++) acc[qi][u] = fmaf(acc[qi][u], alpha, a[u]);
        }
        __syncthreads(); /* the next load_tile writes the stage just read */
    }
#pragma unroll
    for (int qi = 0; qi < QT; qi++) {
        if (qi >= nq) break;
        float inv = 1.0f / l[qi];
        size_t o_off = ((size_t)(t0 + qi) * n_head + h) * HD + (size_t)lane * DPL;
#pragma unroll
        for (int u = 0; u < DPL; u++) {
            float v = acc[qi][u] * inv;
            out[o_off + u] = v;
            if (out_bf16) out_bf16[o_off + u] = __float2bfloat16_rn(v);
        }
    }
}

/* The FP8 KV store: one warp per (token, KV head) row of head_dim values (kept in
 * registers, head_dim <= NS_CUDA_ATTN_MAX_HEAD_DIM), K then V: the row's amax over the
 * warp, its scale, its codes (kernels/cpu/fp8.h), as ns_cpu_quant_rows_fp8. */
static __device__ __forceinline__ void kv_row_fp8(uint8_t *codes, float *scale, const float *x, int head_dim,
                                                  int lane) {
    constexpr int NV = NS_CUDA_ATTN_MAX_HEAD_DIM / 32;
    float v[NV], m = 0.0f;
#pragma unroll
    for (int u = 0; u < NV; u++) {
        int i = lane + 32 * u;
        v[u] = i < head_dim ? x[i] : 0.0f;
        m = ns_amax_join(m, fabsf(v[u]));
    }
    for (int o = 16; o > 0; o >>= 1) m = ns_amax_join(m, __shfl_xor_sync(0xffffffffu, m, o));
    float inv, s = ns_fp8_row_scale(m, &inv);
#pragma unroll
    for (int u = 0; u < NV; u++) {
        int i = lane + 32 * u;
        if (i < head_dim) codes[i] = ns_fp8_e4m3_from_float(v[u] * inv);
    }
    if (lane == 0) *scale = s;
}

static __global__ void kv_store_fp8_kernel(uint8_t *k_pool, uint8_t *v_pool, float *k_scale, float *v_scale,
                                           const float *k, const float *v, const int32_t *slot, int n_tokens,
                                           int n_head_kv, int head_dim) {
    const int lane = threadIdx.x & 31;
    const int64_t n_rows = (int64_t)n_tokens * n_head_kv;
    for (int64_t r = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5; r < n_rows;
         r += ((int64_t)gridDim.x * blockDim.x) >> 5) {
        const int t = (int)(r / n_head_kv), h = (int)(r % n_head_kv);
        const size_t dst_row = (size_t)slot[t] * n_head_kv + h, src = (size_t)r * head_dim;
        kv_row_fp8(k_pool + dst_row * head_dim, k_scale + dst_row, k + src, head_dim, lane);
        kv_row_fp8(v_pool + dst_row * head_dim, v_scale + dst_row, v + src, head_dim, lane);
    }
}

#include "switches.h"

/* Whether a batch's groups go to the tensor-core kernel (attention_tc.cu):
 * NS_CUDA_ATTN_TC (engine/switches.h) 1 for prompt groups, 2 for every group. */
static int attn_tc = -1;

extern "C" int ns_cuda_attention_tc_level(int level) {
    if (attn_tc < 0) attn_tc = ns_switch("NS_CUDA_ATTN_TC", NS_DEFAULT_CUDA_ATTN_TC, 2);
    const int was = attn_tc;
    if (level >= 0) attn_tc = level < 2 ? level : 2;
    return was;
}

static bool attn_use_tc(int single) {
    const int tc = ns_cuda_attention_tc_level(-1);
    return tc == 2 || (tc == 1 && !single);
}

template <int HD, int QT, bool F8>
static cudaError_t launch_fast(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                               const int32_t *tok_seq, const int32_t *groups, int n_groups,
                               const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                               const void *v_pool, const float *k_scale, const float *v_scale, int block_size,
                               int n_head, int n_head_kv, float scale, cudaStream_t stream) {
    constexpr size_t smem = fast_smem_bytes<HD, F8>();
    if (smem > 48 * 1024) {
        cudaError_t e = cudaFuncSetAttribute(attention_fast_kernel<HD, QT, F8>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e != cudaSuccess) return e;
    }
    dim3 grid((unsigned)n_groups, (unsigned)n_head_kv);
    NS_LAUNCH(grid, 32 * (n_head / n_head_kv), smem, stream, attention_fast_kernel<HD, QT, F8>)(
        out, (__nv_bfloat16 *)out_bf16, q, q_pos, tok_seq, groups, block_table, max_blocks_per_seq,
        (const unsigned char *)k_pool, (const unsigned char *)v_pool, k_scale, v_scale, block_size, n_head, n_head_kv,
        scale);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_kv_store_fp8(void *k_pool, void *v_pool, float *k_scale, float *v_scale,
                                            const float *k, const float *v, const int32_t *slot, int n_tokens,
                                            int n_head_kv, int head_dim, cudaStream_t stream) {
    if (n_tokens < 0 || n_head_kv < 1 || head_dim < 1 || head_dim > NS_CUDA_ATTN_MAX_HEAD_DIM)
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    NS_LAUNCH(ns_grid_for((int64_t)n_tokens * n_head_kv * 32, 256), 256, 0, stream, kv_store_fp8_kernel)(
        (uint8_t *)k_pool, (uint8_t *)v_pool, k_scale, v_scale, k, v, slot, n_tokens, n_head_kv, head_dim);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_attention_paged_fp8(float *out, uint16_t *out_bf16, const float *q,
                                                   const int32_t *q_pos, const int32_t *tok_seq, const int32_t *groups,
                                                   int n_groups, int single, const int32_t *block_table,
                                                   int max_blocks_per_seq, const void *k_pool, const void *v_pool,
                                                   const float *k_scale, const float *v_scale, int block_size,
                                                   int n_head, int n_head_kv, int head_dim, float scale,
                                                   cudaStream_t stream) {
    if (n_groups < 0 || block_size < 1 || max_blocks_per_seq < 1 || !ns_cuda_kv_fp8_fits(n_head, n_head_kv, head_dim) ||
        (uintptr_t)k_pool % 16 || (uintptr_t)v_pool % 16 || (uintptr_t)k_scale % 4 || (uintptr_t)v_scale % 4)
        return cudaErrorInvalidValue;
    if (n_groups == 0) return cudaSuccess;
    if (attn_use_tc(single) && ns_cuda_attention_tc_fits(q, k_pool, v_pool, n_head, n_head_kv, head_dim))
        return ns_cuda_attention_tc(out, out_bf16, q, q_pos, tok_seq, groups, n_groups, single ? 1 : ATTN_QT,
                                    block_table, max_blocks_per_seq, k_pool, v_pool, k_scale, v_scale, block_size,
                                    n_head, n_head_kv, head_dim, scale, stream);
#define NS_FAST8_ARGS                                                                                          \
    out, out_bf16, q, q_pos, tok_seq, groups, n_groups, block_table, max_blocks_per_seq, k_pool, v_pool, k_scale, \
        v_scale, block_size, n_head, n_head_kv, scale, stream
    if (head_dim == 64)
        return single ? launch_fast<64, 1, true>(NS_FAST8_ARGS) : launch_fast<64, ATTN_QT, true>(NS_FAST8_ARGS);
    return single ? launch_fast<128, 1, true>(NS_FAST8_ARGS) : launch_fast<128, ATTN_QT, true>(NS_FAST8_ARGS);
#undef NS_FAST8_ARGS
}

extern "C" cudaError_t ns_cuda_kv_store(void *k_pool, void *v_pool, int kv_type, const float *k, const float *v,
                                        const int32_t *slot, int n_tokens, int row, cudaStream_t stream) {
    if (n_tokens < 0 || row < 1 || (kv_type != NS_CUDA_TYPE_F32 && kv_type != NS_CUDA_TYPE_BF16))
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    unsigned grid = ns_grid_for((int64_t)n_tokens * row, 256);
    if (kv_type == NS_CUDA_TYPE_BF16)
        NS_LAUNCH(grid, 256, 0, stream, kv_store_kernel<__nv_bfloat16>)((__nv_bfloat16 *)k_pool, (__nv_bfloat16 *)v_pool, k, v,
                                                                 slot, n_tokens, row);
    else
        NS_LAUNCH(grid, 256, 0, stream, kv_store_kernel<float>)((float *)k_pool, (float *)v_pool, k, v, slot, n_tokens, row);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_attention_paged(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                               const int32_t *tok_seq, const int32_t *groups, int n_groups,
                                               int single,
                                               const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                                               const void *v_pool, int kv_type, int block_size, int n_head,
                                               int n_head_kv, int head_dim, float scale, cudaStream_t stream) {
    if (n_groups < 0 || block_size < 1 || n_head < 1 || n_head_kv < 1 || n_head % n_head_kv || head_dim < 1 ||
        head_dim > NS_CUDA_ATTN_MAX_HEAD_DIM || max_blocks_per_seq < 1 || n_head / n_head_kv > ATTN_MAX_GROUP ||
        (kv_type != NS_CUDA_TYPE_F32 && kv_type != NS_CUDA_TYPE_BF16))
        return cudaErrorInvalidValue;
    if (n_groups == 0) return cudaSuccess;
    size_t smem = attn_smem_bytes(kv_type, head_dim);
#define NS_ATTN_ARGS                                                                                              \
    single, out, out_bf16, q, q_pos, tok_seq, groups, n_groups, block_table, max_blocks_per_seq, k_pool, v_pool, block_size, \
        n_head, n_head_kv, head_dim, scale, smem, stream
    if (kv_type == NS_CUDA_TYPE_BF16) {
        /* the fast path needs 16-byte aligned rows; NS_CUDA_ATTN_SLOW=1 picks the plain kernel
         * (for comparisons) */
        static int slow = -1;
        if (slow < 0) {
            const char *e = getenv("NS_CUDA_ATTN_SLOW");
            slow = e && e[0] == '1';
        }
        if (!slow && attn_use_tc(single) && ns_cuda_attention_tc_fits(q, k_pool, v_pool, n_head, n_head_kv, head_dim))
            return ns_cuda_attention_tc(out, out_bf16, q, q_pos, tok_seq, groups, n_groups, single ? 1 : ATTN_QT,
                                        block_table, max_blocks_per_seq, k_pool, v_pool, NULL, NULL, block_size,
                                        n_head, n_head_kv, head_dim, scale, stream);
        bool aligned = ((uintptr_t)k_pool % 16 == 0) && ((uintptr_t)v_pool % 16 == 0) && n_head_kv * head_dim % 8 == 0;
#define NS_FAST_ARGS                                                                                           \
    out, out_bf16, q, q_pos, tok_seq, groups, n_groups, block_table, max_blocks_per_seq, k_pool, v_pool, NULL, NULL, \
        block_size, n_head, n_head_kv, scale, stream
        if (!slow && aligned && head_dim == 64)
            return single ? launch_fast<64, 1, false>(NS_FAST_ARGS) : launch_fast<64, ATTN_QT, false>(NS_FAST_ARGS);
        if (!slow && aligned && head_dim == 128)
            return single ? launch_fast<128, 1, false>(NS_FAST_ARGS) : launch_fast<128, ATTN_QT, false>(NS_FAST_ARGS);
#undef NS_FAST_ARGS
        return launch_attention_qt<__nv_bfloat16>(NS_ATTN_ARGS);
    }
    return launch_attention_qt<float>(NS_ATTN_ARGS);
#undef NS_ATTN_ARGS
}
