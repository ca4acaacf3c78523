/* attention_tc.cu: paged grouped-query attention on the tensor cores (bf16 or FP8 E4M3
 * pools, head_dim 64 or 128), for the same batches and groups as ns_cuda_attention_paged
 * and _paged_fp8 (attention.cu).
 *
 * One thread block per (group of up to QT query tokens of one sequence, KV head). The
 * block's rows are the pairs (token of the group, query head sharing the KV head), token
 * major: row r is token r / G, head r % G (G = n_head / n_head_kv), so that one K/V tile
 * serves every head of the group at once. Each warp owns 16 rows; its queries, rounded to
 * bf16, sit in registers as wmma fragments for the whole pass. Keys come in tiles of 32,
 * copied by cp.async into two shared-memory stages (tile i+1 in flight while tile i is
 * used). Per tile and warp:
 *   scores S (16 x 32) = Q K^T on the tensor cores (fp32 accumulation), to shared memory;
 *   two lanes per row: the causal cut, the online softmax (running max m and sum l, in
 *   the base-2 domain), the probabilities P rounded to bf16, and the row's rescale factor;
 *   the output accumulator (16 x head_dim, fp32 fragments) rescaled row by row, then
 *   O += P V on the tensor cores.
 * Which accumulator element belongs to which row is not specified by CUDA, so the kernel
 * reads it off a fragment loaded from a matrix whose every element is its own row index.
 * Nothing but out is written; the score matrix of a row never exceeds one tile.
 * Rounding: Q and P to bf16 (K and V are bf16 already), products summed in fp32; l sums
 * the rounded P, so the weights of a row still add to 1.
 * F8 (the FP8 KV cache, NS_CUDA_TYPE_E4M3; k_scale / v_scale as in attention.cu): the
 * tile's e4m3 codes and each key's K and V scale are copied by cp.async into two staging
 * stages; the block decodes the codes of the tile in use into the bf16 K and V tiles
 * (exactly: an e4m3 value is a bf16 value), and the scales are applied in fp32 where
 * attention.cu's fast kernel applies them: a score is (q . codes) * k_scale, the weight
 * of a value p * v_scale, rounded to bf16 as P is; l sums the unrounded p.
 *
 * NS_CUDA_EMU: tests/gpu/emu_attention_tc.cpp compiles this file for the host with
 * tests/gpu/emu_cuda.h (one std::thread per CUDA thread, wmma and cp.async emulated) and
 * checks the kernel against ns_cpu_attention_paged_ref without a GPU.
 */
#ifndef NS_CUDA_EMU
#include <mma.h>
#endif

#include "common.cuh"
#include "fp8_decode.cuh"

#define TC_TK 32        /* keys per tile */
#define TC_MAX_WARPS 8  /* NS_CUDA_ATTN_QT tokens x 16 heads = 128 rows */

/* Shared-memory layout for head_dim HD. Row strides are padded (+8 bf16, +4 floats) so
 * that the 16 rows a fragment load touches fall on different banks; every fragment's
 * first element is 32-byte aligned and every stride a multiple of 16 bytes, as wmma and
 * cp.async require. F8: one stage of bf16 K and V tiles (decoded from the staging stage
 * in use), then two staging stages of codes [stage][K, V][TC_TK][HD] and of scales
 * [stage][K, V][TC_TK]. */
template <int HD, bool F8 = false> struct tc_dims {
    static constexpr int LDK = HD + 8;    /* bf16 per K, V and Q row */
    static constexpr int LDS = TC_TK + 4; /* floats per score row */
    static constexpr int LDP = TC_TK + 8; /* bf16 per probability row */
    static constexpr int NF = HD / 16;    /* 16-wide fragments across head_dim */
    static constexpr int Q_BYTES = 16 * LDK * 2;
    static constexpr int SP_BYTES = 16 * LDS * 4 + 16 * LDP * 2;
    /* per warp: its Q rows at the start, the same bytes then reused for S and P; then m, l,
     * and the rows' factors */
    static constexpr int SCRATCH = Q_BYTES > SP_BYTES ? Q_BYTES : SP_BYTES;
    static constexpr int WARP_BYTES = (SCRATCH + 3 * 16 * 4 + 127) / 128 * 128;
    static constexpr int TILES = (F8 ? 1 : 2) * 2 * TC_TK * LDK * 2; /* K and V, per stage */
    static constexpr int CODES = F8 ? 2 * 2 * TC_TK * HD : 0;
    static constexpr int SCALES = F8 ? 2 * 2 * TC_TK * 4 : 0;
    static constexpr int KV_BYTES = (TILES + CODES + SCALES + 127) / 128 * 128;
};

/* Issues the copies of the K/V rows of keys k0 .. k0 + TC_TK - 1 into stage `stage` and
 * commits them as one group; rows of keys past n_seen are zeroed (a zero weight times a
 * stale row could be NaN). */
template <int HD>
static __device__ __forceinline__ void tc_load_tile(__nv_bfloat16 *sk, __nv_bfloat16 *sv, int stage, int k0, int n_seen,
                                                    const int32_t *table, int block_size,
                                                    const __nv_bfloat16 *k_pool, const __nv_bfloat16 *v_pool,
                                                    size_t row_stride, size_t kv_off) {
    constexpr int CH = HD / 8, LDK = tc_dims<HD>::LDK;
    __nv_bfloat16 *dk = sk + stage * TC_TK * LDK, *dv = sv + stage * TC_TK * LDK;
    for (int i = threadIdx.x; i < TC_TK * CH; i += blockDim.x) {
        const int j = i / CH, c = i % CH, key = k0 + j;
        __nv_bfloat16 *pk = dk + j * LDK + c * 8, *pv = dv + j * LDK + c * 8;
        if (key < n_seen) {
            size_t r = (size_t)table[key / block_size] * block_size + (size_t)(key % block_size);
            size_t src = r * row_stride + kv_off + (size_t)c * 8;
            ns_cp_async16(pk, k_pool + src);
            ns_cp_async16(pv, v_pool + src);
        } else {
            *(uint4 *)pk = make_uint4(0, 0, 0, 0);
            *(uint4 *)pv = make_uint4(0, 0, 0, 0);
        }
    }
    ns_cp_async_commit();
}

/* F8: issues the copies of the codes and scales of keys k0 .. k0 + TC_TK - 1 (those below
 * n_seen) into staging stage `stage`, and commits them as one group. Rows past n_seen are
 * not copied: tc_decode_tile writes zeros for them. */
template <int HD>
static __device__ __forceinline__ void tc_load_codes(unsigned char *codes, float *scales, int stage, int k0,
                                                     int n_seen, const int32_t *table, int block_size,
                                                     const unsigned char *k_pool, const unsigned char *v_pool,
                                                     const float *k_scale, const float *v_scale, int n_head_kv,
                                                     int kvh) {
    constexpr int CH = HD / 16; /* 16-byte chunks of codes per row */
    unsigned char *dk = codes + stage * 2 * TC_TK * HD, *dv = dk + TC_TK * HD;
    for (int i = threadIdx.x; i < TC_TK * CH; i += blockDim.x) {
        const int j = i / CH, c = i % CH, key = k0 + j;
        if (key >= n_seen) break; /* i grows with j: this thread's later rows are past the end too */
        const size_t r = (size_t)table[key / block_size] * block_size + (size_t)(key % block_size);
        const size_t src = (r * n_head_kv + kvh) * HD + (size_t)c * 16;
        ns_cp_async16(dk + j * HD + c * 16, k_pool + src);
        ns_cp_async16(dv + j * HD + c * 16, v_pool + src);
    }
    if ((int)threadIdx.x < TC_TK && k0 + (int)threadIdx.x < n_seen) {
        const int key = k0 + threadIdx.x;
        const size_t r = (size_t)table[key / block_size] * block_size + (size_t)(key % block_size);
        float *st = scales + stage * 2 * TC_TK;
        ns_cp_async4(st + threadIdx.x, k_scale + r * n_head_kv + kvh);
        ns_cp_async4(st + TC_TK + threadIdx.x, v_scale + r * n_head_kv + kvh);
    }
    ns_cp_async_commit();
}

/* Two floats as bf16 bits, the first in the low half. */
static __device__ __forceinline__ uint32_t tc_pack_bf16x2(float2 v) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v.x)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v.y)) << 16);
}

/* F8: the codes of staging stage `stage` (keys k0 ..) into the bf16 tiles sk and sv, 16
 * codes per thread and step; rows of keys past n_seen become zeros (a zero weight times a
 * stale row could be NaN). */
template <int HD>
static __device__ __forceinline__ void tc_decode_tile(__nv_bfloat16 *sk, __nv_bfloat16 *sv,
                                                      const unsigned char *codes, int stage, int k0, int n_seen) {
    constexpr int CH = HD / 16, LDK = tc_dims<HD, true>::LDK;
    const unsigned char *src0 = codes + stage * 2 * TC_TK * HD;
    for (int i = threadIdx.x; i < 2 * TC_TK * CH; i += blockDim.x) {
        const int kv = i / (TC_TK * CH), j = (i / CH) % TC_TK, c = i % CH;
        uint4 *dst = (uint4 *)((kv ? sv : sk) + j * LDK + c * 16);
        if (k0 + j >= n_seen) {
            dst[0] = make_uint4(0, 0, 0, 0);
            dst[1] = make_uint4(0, 0, 0, 0);
            continue;
        }
        const uint4 w = *(const uint4 *)(src0 + kv * TC_TK * HD + j * HD + c * 16);
        const uint32_t ws[4] = {w.x, w.y, w.z, w.w};
        uint32_t b[8];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            b[2 * e] = tc_pack_bf16x2(fp8x2_to_float2(ws[e]));
            b[2 * e + 1] = tc_pack_bf16x2(fp8x2_to_float2(ws[e] >> 16));
        }
        dst[0] = make_uint4(b[0], b[1], b[2], b[3]);
        dst[1] = make_uint4(b[4], b[5], b[6], b[7]);
    }
}

template <int HD, bool F8>
static __global__ void __launch_bounds__(32 * TC_MAX_WARPS)
    attention_tc_kernel(float *out, __nv_bfloat16 *out_bf16, const float *q, const int32_t *q_pos,
                        const int32_t *tok_seq, const int32_t *groups, const int32_t *block_table,
                        int max_blocks_per_seq, const void *k_pool, const void *v_pool, const float *k_scale,
                        const float *v_scale, int block_size, int n_head, int n_head_kv, float scale) {
    using namespace nvcuda;
    typedef tc_dims<HD, F8> D;
    typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;
    constexpr int STAGES = F8 ? 1 : 2; /* of bf16 tiles */
    NS_DYNAMIC_SMEM(smem);
    __nv_bfloat16 *sk = (__nv_bfloat16 *)smem;          /* [STAGES][TC_TK][LDK] */
    __nv_bfloat16 *sv = sk + STAGES * TC_TK * D::LDK;   /* [STAGES][TC_TK][LDK] */
    unsigned char *codes = (unsigned char *)(sv + STAGES * TC_TK * D::LDK); /* F8: [2][K, V][TC_TK][HD] */
    float *s_scale = (float *)(codes + D::CODES);                         /* F8: [2][K, V][TC_TK] */
    const __nv_bfloat16 *k16 = (const __nv_bfloat16 *)k_pool, *v16 = (const __nv_bfloat16 *)v_pool;
    const unsigned char *k8 = (const unsigned char *)k_pool, *v8 = (const unsigned char *)v_pool;
    const int G = n_head / n_head_kv;
    const int t0 = groups[2 * blockIdx.x], nq = groups[2 * blockIdx.x + 1], kvh = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    unsigned char *wbase = smem + D::KV_BYTES + warp * D::WARP_BYTES;
    __nv_bfloat16 *wq = (__nv_bfloat16 *)wbase;                 /* [16][LDK], at the start */
    float *ws = (float *)wbase;                                 /* [16][LDS] */
    __nv_bfloat16 *wp = (__nv_bfloat16 *)(wbase + 16 * D::LDS * 4); /* [16][LDP] */
    float *wm = (float *)(wbase + D::SCRATCH), *wl = wm + 16, *wa = wl + 16;
    const int32_t *table = block_table + (size_t)tok_seq[t0] * max_blocks_per_seq;
    const int n_seen = q_pos[t0 + nq - 1] + 1; /* keys the group's last token sees */
    const size_t row_stride = (size_t)n_head_kv * HD, kv_off = (size_t)kvh * HD;
    const int n_tiles = (n_seen + TC_TK - 1) / TC_TK;
    const int n_rows = nq * G, r0 = warp * 16;

    if constexpr (F8)
        tc_load_codes<HD>(codes, s_scale, 0, 0, n_seen, table, block_size, k8, v8, k_scale, v_scale, n_head_kv, kvh);
    else
        tc_load_tile<HD>(sk, sv, 0, 0, n_seen, table, block_size, k16, v16, row_stride, kv_off);

    /* every warp's 16 query rows in bf16, zero past the group's rows */
    for (int i = threadIdx.x; i < n_warps * 16 * (HD / 4); i += blockDim.x) {
        const int r = i / (HD / 4), c = (i % (HD / 4)) * 4;
        __nv_bfloat16 *dst = (__nv_bfloat16 *)(smem + D::KV_BYTES + (r >> 4) * D::WARP_BYTES) + (r & 15) * D::LDK + c;
        float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (r < n_rows) x = *(const float4 *)(q + ((size_t)(t0 + r / G) * n_head + (size_t)kvh * G + r % G) * HD + c);
        dst[0] = __float2bfloat16_rn(x.x), dst[1] = __float2bfloat16_rn(x.y);
        dst[2] = __float2bfloat16_rn(x.z), dst[3] = __float2bfloat16_rn(x.w);
    }
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> qa[D::NF];
#pragma unroll
    for (int f = 0; f < D::NF; f++) wmma::load_matrix_sync(qa[f], wq + f * 16, D::LDK);
    __syncwarp(); /* the Q rows are in registers: the scratch becomes S and P */
    acc_frag rowf; /* rowf.x[i]: the row of element i of any accumulator fragment */
    for (int i = lane; i < 256; i += 32) ws[(i >> 4) * D::LDS + (i & 15)] = (float)(i >> 4);
    if (lane < 16) wm[lane] = -INFINITY, wl[lane] = 0.0f;
    __syncwarp();
    wmma::load_matrix_sync(rowf, ws, D::LDS, wmma::mem_row_major);
    acc_frag acc[D::NF];
#pragma unroll
    for (int f = 0; f < D::NF; f++) wmma::fill_fragment(acc[f], 0.0f);
    __syncwarp(); /* ws is rewritten by the first tile */

    /* a warp with rows works on the tiles its last token reaches */
    const bool w_rows = r0 < n_rows;
    const int w_last = w_rows ? q_pos[t0 + (min(r0 + 16, n_rows) - 1) / G] : -1;
    const float sl2 = scale * 1.4426950408889634f; /* scores in base 2 */

    for (int it = 0; it < n_tiles; it++) {
        const int k0 = it * TC_TK;
        if (it + 1 < n_tiles) {
            if constexpr (F8)
                tc_load_codes<HD>(codes, s_scale, (it + 1) & 1, k0 + TC_TK, n_seen, table, block_size, k8, v8, k_scale,
                                  v_scale, n_head_kv, kvh);
            else
                tc_load_tile<HD>(sk, sv, (it + 1) & 1, k0 + TC_TK, n_seen, table, block_size, k16, v16, row_stride,
                                 kv_off);
            ns_cp_async_wait<1>(); /* this tile's copies are done, the next may still fly */
        } else {
            ns_cp_async_wait<0>();
        }
        __syncthreads();
        if constexpr (F8) { /* the bf16 tiles were last read before the previous barrier */
            tc_decode_tile<HD>(sk, sv, codes, it & 1, k0, n_seen);
            __syncthreads();
        }
        /* F8: each key's K and V scale in this tile */
        const float *ks = s_scale + (it & 1) * 2 * TC_TK, *vs = ks + TC_TK;
        if (w_rows && w_last >= k0) {
            const int cs = F8 ? 0 : (it & 1);
            const __nv_bfloat16 *ck = sk + cs * TC_TK * D::LDK, *cv = sv + cs * TC_TK * D::LDK;
#pragma unroll
            for (int n = 0; n < TC_TK / 16; n++) {
                acc_frag s;
                wmma::fill_fragment(s, 0.0f);
#pragma unroll
                for (int f = 0; f < D::NF; f++) {
                    /* K^T (dims x keys): K's rows read column-major */
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> kb;
                    wmma::load_matrix_sync(kb, ck + n * 16 * D::LDK + f * 16, D::LDK);
                    wmma::mma_sync(s, qa[f], kb, s);
                }
                wmma::store_matrix_sync(ws + n * 16, s, D::LDS, wmma::mem_row_major);
            }
            __syncwarp();
            {
                /* two lanes per row: lane l takes keys 16 * (l / 16) .. + 15 of row l % 16 */
                const int rr = lane & 15, j0 = (lane >> 4) * 16, r = r0 + rr;
                /* keys of this tile the row's token sees (none for rows past the group) */
                const int nk = r < n_rows ? min(TC_TK, q_pos[t0 + r / G] + 1 - k0) : 0;
                const float *srow = ws + rr * D::LDS + j0;
                __nv_bfloat16 *prow = wp + rr * D::LDP + j0;
                float sj[16]; /* the row's scores in base 2 (F8: times each key's K scale) */
                float mx = -INFINITY;
                for (int j = 0; j < 16; j++) {
                    sj[j] = F8 && j0 + j < nk ? srow[j] * ks[j0 + j] * sl2 : srow[j] * sl2;
                    if (j0 + j < nk) mx = fmaxf(mx, sj[j]);
                }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
                const float m_old = wm[rr], m_new = fmaxf(m_old, mx);
                float alpha = 1.0f, sum = 0.0f;
                if (m_new == -INFINITY) { /* nothing seen yet */
                    for (int j = 0; j < 16; j++) prow[j] = __float2bfloat16_rn(0.0f);
                } else {
                    alpha = exp2f(m_old - m_new); /* 0 on the first keys (m_old = -inf) */
                    for (int j = 0; j < 16; j++) {
                        const float pf = j0 + j < nk ? exp2f(sj[j] - m_new) : 0.0f;
                        if constexpr (F8) { /* keys past nk: their scales may be stale bytes */
                            prow[j] = __float2bfloat16_rn(j0 + j < nk ? pf * vs[j0 + j] : 0.0f);
                            sum += pf;
                        } else {
                            const __nv_bfloat16 p = __float2bfloat16_rn(pf);
                            prow[j] = p;
                            sum += __bfloat162float(p);
                        }
                    }
                }
                sum += __shfl_xor_sync(0xffffffffu, sum, 16); /* both lanes have read m_old */
                if (lane < 16) {
                    wm[rr] = m_new;
                    wl[rr] = wl[rr] * alpha + sum;
                    wa[rr] = alpha;
                }
            }
            __syncwarp();
#pragma unroll
            for (int f = 0; f < D::NF; f++)
                for (int i = 0; i < acc[f].num_elements; i++) acc[f].x[i] *= wa[(int)rowf.x[i]];
#pragma unroll
            for (int kk = 0; kk < TC_TK / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> pa;
                wmma::load_matrix_sync(pa, wp + kk * 16, D::LDP);
#pragma unroll
                for (int f = 0; f < D::NF; f++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> vb;
                    wmma::load_matrix_sync(vb, cv + kk * 16 * D::LDK + f * 16, D::LDK);
                    wmma::mma_sync(acc[f], pa, vb, acc[f]);
                }
            }
        }
        __syncthreads(); /* the next load writes the stage just read */
    }
    if (!w_rows) return;
    if (lane < 16) wa[lane] = wl[lane] > 0.0f ? 1.0f / wl[lane] : 0.0f;
    __syncwarp();
#pragma unroll
    for (int f = 0; f < D::NF; f++) {
        for (int i = 0; i < acc[f].num_elements; i++) acc[f].x[i] *= wa[(int)rowf.x[i]];
        wmma::store_matrix_sync(ws, acc[f], D::LDS, wmma::mem_row_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {
            const int rr = e >> 4, c = e & 15, r = r0 + rr;
            if (r >= n_rows) continue;
            const size_t o = ((size_t)(t0 + r / G) * n_head + (size_t)kvh * G + r % G) * HD + f * 16 + c;
            const float v = ws[rr * D::LDS + c];
            out[o] = v;
            if (out_bf16) out_bf16[o] = __float2bfloat16_rn(v);
        }
        __syncwarp(); /* ws is rewritten by the next fragment */
    }
}

/* Warps of a block for groups of up to qt tokens (16 rows each). */
static inline int tc_warps(int qt, int G) { return (qt * G + 15) / 16; }

template <int HD, bool F8> static size_t tc_smem_bytes(int n_warps) {
    return (size_t)tc_dims<HD, F8>::KV_BYTES + (size_t)n_warps * tc_dims<HD, F8>::WARP_BYTES;
}

template <int HD, bool F8>
static cudaError_t launch_tc(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos, const int32_t *tok_seq,
                             const int32_t *groups, int n_groups, int qt, const int32_t *block_table,
                             int max_blocks_per_seq, const void *k_pool, const void *v_pool, const float *k_scale,
                             const float *v_scale, int block_size, int n_head, int n_head_kv, float scale,
                             cudaStream_t stream) {
    const int n_warps = tc_warps(qt, n_head / n_head_kv);
    const size_t smem = tc_smem_bytes<HD, F8>(n_warps);
    if (smem > 48 * 1024) { /* per device, so set at every launch that needs it */
        cudaError_t e = cudaFuncSetAttribute(attention_tc_kernel<HD, F8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)smem);
        if (e != cudaSuccess) return e;
    }
    dim3 grid((unsigned)n_groups, (unsigned)n_head_kv);
    NS_LAUNCH(grid, 32 * n_warps, smem, stream, attention_tc_kernel<HD, F8>)(
        out, (__nv_bfloat16 *)out_bf16, q, q_pos, tok_seq, groups, block_table, max_blocks_per_seq, k_pool, v_pool,
        k_scale, v_scale, block_size, n_head, n_head_kv, scale);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_attention_tc(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                            const int32_t *tok_seq, const int32_t *groups, int n_groups, int qt,
                                            const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                                            const void *v_pool, const float *k_scale, const float *v_scale,
                                            int block_size, int n_head, int n_head_kv, int head_dim, float scale,
                                            cudaStream_t stream) {
    const bool f8 = k_scale != NULL;
    if (!ns_cuda_attention_tc_fits(q, k_pool, v_pool, n_head, n_head_kv, head_dim) || n_groups < 0 || qt < 1 ||
        qt > NS_CUDA_ATTN_QT || block_size < 1 || max_blocks_per_seq < 1 ||
        tc_warps(qt, n_head / n_head_kv) > TC_MAX_WARPS || f8 != (v_scale != NULL) ||
        (f8 && (!ns_cuda_kv_fp8_fits(n_head, n_head_kv, head_dim) || (uintptr_t)k_scale % 4 || (uintptr_t)v_scale % 4)))
        return cudaErrorInvalidValue;
    if (n_groups == 0) return cudaSuccess;
#define NS_TC_ARGS                                                                                                 \
    out, out_bf16, q, q_pos, tok_seq, groups, n_groups, qt, block_table, max_blocks_per_seq, k_pool, v_pool, k_scale, \
        v_scale, block_size, n_head, n_head_kv, scale, stream
    if (head_dim == 64) return f8 ? launch_tc<64, true>(NS_TC_ARGS) : launch_tc<64, false>(NS_TC_ARGS);
    return f8 ? launch_tc<128, true>(NS_TC_ARGS) : launch_tc<128, false>(NS_TC_ARGS);
#undef NS_TC_ARGS
}
