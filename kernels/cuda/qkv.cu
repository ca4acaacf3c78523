/* qkv.cu: the rest of the attention block's first half after its one GEMM (the CUDA
 * backend's fused QKV, NS_CUDA_FUSED_QKV): the fused product (n_tokens, q_dim + 2 kv_dim:
 * each token's q, k and v side by side) plus the biases into q (n_tokens, q_dim), k and v
 * (n_tokens, kv_dim), with RoPE on q and k. Bit for bit ns_cuda_add_bias then ns_cuda_rope
 * on each part (the same fp32 sum, rope.cuh's rotation), in one pass instead of five, and
 * each token's cos/sin computed once for all its heads instead of once per head.
 * One block per token (striding by the grid); each thread writes the elements it owns,
 * reading the other element of a RoPE pair itself. */
#include "common.cuh"
#include "rope.cuh"

#define QKV_THREADS 256
#define QKV_MAX_HALF 256 /* pairs whose cos/sin are kept in shared memory; more: computed per element */

static __global__ void __launch_bounds__(QKV_THREADS)
    qkv_split_rope_kernel(float *q, float *k, float *v, const float *qkv, const float *bq, const float *bk,
                          const float *bv, const int32_t *pos, int n_tokens, int q_dim, int kv_dim, int head_dim,
                          int half, const float *inv_freq, int is_neox) {
    __shared__ float cs[QKV_MAX_HALF], sn[QKV_MAX_HALF];
    const int n_all = q_dim + 2 * kv_dim;
    const bool kept = half <= QKV_MAX_HALF;
    for (int t = blockIdx.x; t < n_tokens; t += gridDim.x) {
        if (kept) {
            __syncthreads(); /* the previous token's cos/sin have been read */
            for (int i = threadIdx.x; i < half; i += blockDim.x) ns_rope_cos_sin(pos[t], inv_freq[i], &cs[i], &sn[i]);
            __syncthreads();
        }
        const float *row = qkv + (int64_t)t * n_all;
        for (int e = threadIdx.x; e < n_all; e += blockDim.x) {
            /* the part (q, k or v) element e is in, its index there, its bias and output */
            const bool in_q = e < q_dim, in_k = !in_q && e < q_dim + kv_dim;
            const int base = in_q ? 0 : in_k ? q_dim : q_dim + kv_dim, j = e - base;
            const float *bias = in_q ? bq : in_k ? bk : bv;
            float *out = in_q ? q + (int64_t)t * q_dim : (in_k ? k : v) + (int64_t)t * kv_dim;
            float val = row[e];
            if (bias) val = val + bias[j];
            const int d = j % head_dim;
            if (!(in_q || in_k) || d >= 2 * half) { /* v, and the dims past n_rot: as they are */
                out[j] = val;
                continue;
            }
            const bool first = is_neox ? d < half : (d & 1) == 0;
            const int i = is_neox ? (first ? d : d - half) : d >> 1;
            const int jo = j - d + (is_neox ? (first ? d + half : d - half) : d ^ 1); /* the pair's other */
            float other = row[base + jo];
            if (bias) other = other + bias[jo];
            float c, s;
            if (kept) c = cs[i], s = sn[i];
            else ns_rope_cos_sin(pos[t], inv_freq[i], &c, &s);
            out[j] = first ? ns_rope_first(val, other, c, s) : ns_rope_second(other, val, c, s);
        }
    }
}

extern "C" cudaError_t ns_cuda_qkv_split_rope(float *q, float *k, float *v, const float *qkv, const float *bq,
                                              const float *bk, const float *bv, const int32_t *pos, int n_tokens,
                                              int n_head, int n_head_kv, int head_dim, int n_rot,
                                              const float *inv_freq, int is_neox, cudaStream_t stream) {
    if (n_tokens < 0 || n_head < 1 || n_head_kv < 1 || head_dim < 1 || n_rot < 0 || n_rot % 2 || n_rot > head_dim ||
        (int64_t)(n_head + 2 * n_head_kv) * head_dim > 0x7fffffff)
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    const unsigned grid = (unsigned)(n_tokens < 65535 ? n_tokens : 65535);
    NS_LAUNCH(grid, QKV_THREADS, 0, stream, qkv_split_rope_kernel)(q, k, v, qkv, bq, bk, bv, pos, n_tokens,
                                                                   n_head * head_dim, n_head_kv * head_dim, head_dim,
                                                                   n_rot / 2, inv_freq, is_neox);
    return cudaGetLastError();
}
