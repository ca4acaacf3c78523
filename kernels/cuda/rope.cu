/* rope.cu: rotary position embedding in place, one thread per (token, head, pair). As in
 * ns_cpu_rope: theta = pos * inv_freq in double and its cos/sin in double rounded to fp32
 * (positions of tens of thousands lose ~1e-3 rad in fp32), the rotation in fp32
 * (rope.cuh, which qkv.cu shares). is_neox 0 pairs (2i, 2i+1), 1 pairs (i, i + n_rot/2);
 * dims past n_rot are untouched. */
#include "common.cuh"
#include "rope.cuh"

static __global__ void rope_f32_kernel(float *x, const int32_t *pos, int n_tokens, int n_head, int head_dim,
                                       int half, const float *inv_freq, int is_neox) {
    int64_t total = (int64_t)n_tokens * n_head * half;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % half);
        int64_t th = idx / half; /* token * n_head + head */
        int t = (int)(th / n_head);
        float c, s;
        ns_rope_cos_sin(pos[t], inv_freq[i], &c, &s);
        float *v = x + th * head_dim;
        int i0 = is_neox ? i : 2 * i, i1 = is_neox ? i + half : 2 * i + 1;
        float a = v[i0], b = v[i1];
        v[i0] = ns_rope_first(a, b, c, s);
        v[i1] = ns_rope_second(a, b, c, s);
    }
}

extern "C" cudaError_t ns_cuda_rope(float *x, const int32_t *pos, int n_tokens, int n_head, int head_dim, int n_rot,
                                    const float *inv_freq, int is_neox, cudaStream_t stream) {
    if (n_tokens < 0 || n_head < 1 || n_rot < 0 || n_rot % 2 || n_rot > head_dim) return cudaErrorInvalidValue;
    int half = n_rot / 2;
    int64_t total = (int64_t)n_tokens * n_head * half;
    if (total == 0) return cudaSuccess;
    NS_LAUNCH(ns_grid_for(total, 256), 256, 0, stream, rope_f32_kernel)(x, pos, n_tokens, n_head, head_dim, half, inv_freq,
                                                                   is_neox);
    return cudaGetLastError();
}
