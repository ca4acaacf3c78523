/* embed.cu: the token embedding gather (rows of a table in any storage type, to fp32), the
 * gather of batch rows for the output head (one thread per output element), and the batch
 * tokens that name a pick's ids. */
#include "common.cuh"

static __global__ void embed_kernel(float *out, const uint8_t *table, size_t row_bytes, int type,
                                    const int32_t *ids, int n_tokens, int n_embd) {
    int64_t total = (int64_t)n_tokens * n_embd;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int t = (int)(idx / n_embd), i = (int)(idx % n_embd);
        out[idx] = ns_dequant_elem(type, table + (size_t)ids[t] * row_bytes, i);
    }
}

static __global__ void gather_rows_kernel(float *out, const float *x, const int32_t *rows, int n_rows, int width) {
    int64_t total = (int64_t)n_rows * width;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
         idx += (int64_t)gridDim.x * blockDim.x) {
        int r = (int)(idx / width), i = (int)(idx % width);
        out[idx] = x[(size_t)rows[r] * width + i];
    }
}

static __global__ void tokens_from_ids_kernel(int32_t *tokens, int n_tokens, const int32_t *ids, int n_ids) {
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < n_tokens; t += gridDim.x * blockDim.x) {
        const int32_t v = tokens[t];
        if (v >= 0) continue;
        const int32_t id = -1 - v < n_ids ? ids[-1 - v] : 0;
        tokens[t] = id < 0 ? 0 : id;
    }
}

extern "C" cudaError_t ns_cuda_embed(float *out, const void *table, int type, const int32_t *ids, int n_tokens,
                                     int n_embd, cudaStream_t stream) {
    size_t row_bytes = ns_cuda_row_bytes(type, n_embd);
    if (row_bytes == 0 || n_tokens < 0) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    NS_LAUNCH(ns_grid_for((int64_t)n_tokens * n_embd, 256), 256, 0, stream, embed_kernel)(
        out, (const uint8_t *)table, row_bytes, type, ids, n_tokens, n_embd);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_gather_rows(float *out, const float *x, const int32_t *rows, int n_rows, int width,
                                           cudaStream_t stream) {
    if (n_rows < 0 || width < 1) return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    NS_LAUNCH(ns_grid_for((int64_t)n_rows * width, 256), 256, 0, stream, gather_rows_kernel)(out, x, rows, n_rows, width);
    return cudaGetLastError();
}

extern "C" cudaError_t ns_cuda_tokens_from_ids(int32_t *tokens, int n_tokens, const int32_t *ids, int n_ids,
                                               cudaStream_t stream) {
    if (n_tokens < 0 || n_ids < 0) return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    NS_LAUNCH(ns_grid_for(n_tokens, 256), 256, 0, stream, tokens_from_ids_kernel)(tokens, n_tokens, ids, n_ids);
    return cudaGetLastError();
}
