/* emu_device.h: the CUDA launchers of kernels/cuda (ops_cuda.h) compiled for the CPU
 * through tests/gpu/emu_cuda.h (tests/cudamock/emu_device.cpp), under their names with
 * emu_ in front. build/unit-cudamock-emu links them under the stand-in (cudamock.c built
 * with NS_CUDAMOCK_EMU_KERNELS), which then runs the real kernels' code, emulated, where
 * it otherwise runs CPU references. emu_device.cpp includes this header after
 * ops_cuda.h's renamed declarations, so a signature here that differs from ops_cuda.h's
 * does not compile. */
#ifndef NS_EMU_DEVICE_H
#define NS_EMU_DEVICE_H

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t emu_ns_cuda_quant_rows_fp8(uint8_t *out, float *scales, const void *x, int x_type, int64_t n_rows,
    int64_t n, cudaStream_t stream);
cudaError_t emu_ns_cuda_dequant_row(int type, const void *src, size_t src_row_bytes, void *dst, int dst_type,
    int64_t n_rows, int64_t n, cudaStream_t stream);
cudaError_t emu_ns_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n, cudaStream_t stream);
cudaError_t emu_ns_cuda_f32_to_bf16_split(uint16_t *hi, uint16_t *lo, const float *src, int64_t n, cudaStream_t
    stream);
cudaError_t emu_ns_cuda_rmsnorm(float *out, uint16_t *out_bf16, const float *x, const float *w, int n_rows, int n,
    float eps, cudaStream_t stream);
cudaError_t emu_ns_cuda_rope(float *x, const int32_t *pos, int n_tokens, int n_head, int head_dim, int n_rot, const
    float *inv_freq, int is_neox, cudaStream_t stream);
cudaError_t emu_ns_cuda_qkv_split_rope(float *q, float *k, float *v, const float *qkv, const float *bq, const float *bk,
                                       const float *bv, const int32_t *pos, int n_tokens, int n_head, int n_head_kv,
                                       int head_dim, int n_rot, const float *inv_freq, int is_neox, cudaStream_t stream);
cudaError_t emu_ns_cuda_swiglu(float *out, uint16_t *out_bf16, const float *gate, const float *up, int64_t n,
    cudaStream_t stream);
cudaError_t emu_ns_cuda_add_rmsnorm(float *x, const float *delta, float *out, uint16_t *out_bf16, const float *w,
    int n_rows, int n, float eps, cudaStream_t stream);
cudaError_t emu_ns_cuda_swiglu_bf16(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n, cudaStream_t
    stream);
cudaError_t emu_ns_cuda_rmsnorm_fp8(float *out, uint8_t *q, float *scales, const float *x, const float *w, int
    n_rows, int n, float eps, cudaStream_t stream);
cudaError_t emu_ns_cuda_add_rmsnorm_fp8(float *x, const float *delta, float *out, uint8_t *q, float *scales, const
    float *w, int n_rows, int n, float eps, cudaStream_t stream);
cudaError_t emu_ns_cuda_swiglu_bf16_fp8(uint8_t *q, float *scales, const uint16_t *gate, const uint16_t *up, int64_t
    n_rows, int64_t n, cudaStream_t stream);
cudaError_t emu_ns_cuda_add(float *y, const float *x, int64_t n, cudaStream_t stream);
cudaError_t emu_ns_cuda_add_bias(float *y, const float *bias, int M, int N, cudaStream_t stream);
cudaError_t emu_ns_cuda_embed(float *out, const void *table, int type, const int32_t *ids, int n_tokens, int n_embd,
    cudaStream_t stream);
cudaError_t emu_ns_cuda_tokens_from_ids(int32_t *tokens, int n_tokens, const int32_t *ids, int n_ids, cudaStream_t
    stream);
cudaError_t emu_ns_cuda_gather_rows(float *out, const float *x, const int32_t *rows, int n_rows, int width,
    cudaStream_t stream);
cudaError_t emu_ns_cuda_kv_store(void *k_pool, void *v_pool, int kv_type, const float *k, const float *v, const
    int32_t *slot, int n_tokens, int row, cudaStream_t stream);
cudaError_t emu_ns_cuda_kv_store_fp8(void *k_pool, void *v_pool, float *k_scale, float *v_scale, const float *k,
    const float *v, const int32_t *slot, int n_tokens, int n_head_kv, int head_dim, cudaStream_t stream);
cudaError_t emu_ns_cuda_attention_paged(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos, const
    int32_t *tok_seq, const int32_t *groups, int n_groups, int single, const int32_t *block_table, int
    max_blocks_per_seq, const void *k_pool, const void *v_pool, int kv_type, int block_size, int n_head, int
    n_head_kv, int head_dim, float scale, cudaStream_t stream);
cudaError_t emu_ns_cuda_attention_paged_fp8(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
    const int32_t *tok_seq, const int32_t *groups, int n_groups, int single, const int32_t *block_table, int
    max_blocks_per_seq, const void *k_pool, const void *v_pool, const float *k_scale, const float *v_scale, int
    block_size, int n_head, int n_head_kv, int head_dim, float scale, cudaStream_t stream);
cudaError_t emu_ns_cuda_sample_greedy(int32_t *out_ids, const float *logits, int n_rows, int n_vocab, cudaStream_t
    stream);

cudaError_t emu_ns_cuda_expand_scales(float *dst, const float *src, int64_t rows, int kb, int kb_major, cudaStream_t
    stream);
cudaError_t emu_ns_cuda_scale_outer(void *y, int y_type, const float *raw, const float *a_scale, const float *b_scale,
    int M, int N, cudaStream_t stream);

/* Queues run(args) (n bytes, copied) on the stand-in's stream, or records it while
 * capturing (cudamock.c); emu_cuda.h's launches call it with NS_EMU_DEFERRED. */
void ns_cudamock_enqueue(void (*run)(const void *args), const void *args, size_t n);

#ifdef __cplusplus
}
#endif

#endif
