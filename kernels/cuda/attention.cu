/* attention.cu: the paged KV cache on the device: storing a batch's K/V rows into their
 * slots, and causal grouped-query attention of a whole mixed batch (prompt chunks and
 * decode tokens of many sequences) over each sequence's blocks.
 *
 * The attention kernel is the simple correct one: one warp per (token, head); lane l
 * holds dims l, l+32, ... of q and of the output accumulator (head_dim <= 256: 8 per
 * lane). Keys are visited in order, one at a time: a warp-reduced dot product, then the
 * online softmax update (running max m, running sum l, accumulator rescaled by
 * exp(m_old - m_new)), all in fp32. The score matrix is never formed; only blocks
 * block_table[0 .. q_pos / block_size] of the token's own sequence are read, and of the
 * last one only slots up to q_pos. Faster versions (keys tiled in shared memory, the
 * query heads of a group sharing K/V loads, split-K for long decode) come later and are
 * checked against this one and ns_cpu_attention_paged_ref.
 */
#include "common.cuh"

#define ATTN_WARPS 4
#define ATTN_PER_LANE (NS_CUDA_ATTN_MAX_HEAD_DIM / 32)

static __global__ void kv_store_kernel(float *k_pool, float *v_pool, const float *k, const float *v,
                                       const int32_t *slot, int n_tokens, int row) {
    int64_t total = (int64_t)n_tokens * row;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int t = (int)(idx / row), e = (int)(idx % row);
        size_t dst = (size_t)slot[t] * row + e;
        k_pool[dst] = k[idx];
        v_pool[dst] = v[idx];
    }
}

static __global__ void attention_paged_f32_kernel(float *out, const float *q, const int32_t *q_pos,
                                                  const int32_t *tok_seq, const int32_t *block_table,
                                                  int max_blocks_per_seq, const float *k_pool,
                                                  const float *v_pool, int block_size, int n_head,
                                                  int n_head_kv, int head_dim, float scale) {
    int lane = threadIdx.x & 31;
    int t = blockIdx.x;
    int h = blockIdx.y * ATTN_WARPS + (threadIdx.x >> 5);
    if (h >= n_head) return; /* whole warp leaves together */
    const int32_t *table = block_table + (size_t)tok_seq[t] * max_blocks_per_seq;
    int n_seen = q_pos[t] + 1;
    int group = n_head / n_head_kv;
    size_t row_stride = (size_t)n_head_kv * head_dim;
    size_t kv_off = (size_t)(h / group) * head_dim;
    const float *qh = q + ((size_t)t * n_head + h) * head_dim;

    float qr[ATTN_PER_LANE], acc[ATTN_PER_LANE];
#pragma unroll
    for (int u = 0; u < ATTN_PER_LANE; u++) {
        int d = lane + 32 * u;
        qr[u] = d < head_dim ? qh[d] : 0.0f;
        acc[u] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j < n_seen; j++) {
        size_t r = (size_t)table[j / block_size] * block_size + (size_t)(j % block_size);
        const float *kr = k_pool + r * row_stride + kv_off;
        const float *vr = v_pool + r * row_stride + kv_off;
        float part = 0.0f;
#pragma unroll
        for (int u = 0; u < ATTN_PER_LANE; u++) {
            int d = lane + 32 * u;
            if (d < head_dim) part += qr[u] * kr[d];
        }
        float sc = ns_warp_sum(part) * scale;
        float m_new = fmaxf(m, sc);
        float alpha = expf(m - m_new); /* 0 on the first key (m = -inf) */
        float p = expf(sc - m_new);
        l = l * alpha + p;
#pragma unroll
        for (int u = 0; u < ATTN_PER_LANE; u++) {
            int d = lane + 32 * u;
            if (d < head_dim) acc[u] = acc[u] * alpha + p * vr[d];
        }
        m = m_new;
    }
    float inv = 1.0f / l;
    float *o = out + ((size_t)t * n_head + h) * head_dim;
#pragma unroll
    for (int u = 0; u < ATTN_PER_LANE; u++) {
        int d = lane + 32 * u;
        if (d < head_dim) o[d] = acc[u] * inv;
    }
}

extern "C" cudaError_t ns_cuda_kv_store(float *k_pool, float *v_pool, const float *k, const float *v,
                                        const int32_t *slot, int n_tokens, int row, cudaStream_t stream) {
    if (n_tokens < 0 || row < 1) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    kv_store_kernel<<<ns_grid_for((int64_t)n_tokens * row, 256), 256, 0, stream>>>(k_pool, v_pool, k, v, slot,
                                                                                     n_tokens, row);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_attention_paged(float *out, const float *q, const int32_t *q_pos,
                                               const int32_t *tok_seq, const int32_t *block_table,
                                               int max_blocks_per_seq, const float *k_pool, const float *v_pool,
                                               int n_tokens, int block_size, int n_head, int n_head_kv,
                                               int head_dim, float scale, cudaStream_t stream) {
    if (n_tokens < 0 || block_size < 1 || n_head < 1 || n_head_kv < 1 || n_head % n_head_kv || head_dim < 1 ||
        head_dim > NS_CUDA_ATTN_MAX_HEAD_DIM || max_blocks_per_seq < 1)
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    dim3 grid((unsigned)n_tokens, (unsigned)((n_head + ATTN_WARPS - 1) / ATTN_WARPS));
    attention_paged_f32_kernel<<<grid, 32 * ATTN_WARPS, 0, stream>>>(out, q, q_pos, tok_seq, block_table,
                                                                      max_blocks_per_seq, k_pool, v_pool,
                                                                      block_size, n_head, n_head_kv, head_dim,
                                                                      scale);
    return cudaGetLastError();
}
