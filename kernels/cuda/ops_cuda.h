/* ops_cuda.h: the CUDA kernels, a C API (includable from C and CUDA). The op names and
 * semantics are those of kernels/cpu/ops.h (ns_cpu_rmsnorm <-> ns_cuda_rmsnorm, ...);
 * differences are stated at each op. Every pointer is device memory unless it says host.
 * Each launcher enqueues on `stream`, never synchronizes and never allocates, and returns
 * the launch status (cudaGetLastError after the launch; cudaErrorInvalidValue for a
 * shape it does not support). Errors that happen while the kernel runs show later, at
 * the next synchronizing call: the backend (engine/backend_cuda.c) checks both.
 * bf16 buffers are uint16_t (the bits of __nv_bfloat16) so that C code can hold them.
 */
#ifndef NS_CUDA_OPS_H
#define NS_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifndef NS_CUDA_EMU /* else tests/gpu/emu_cuda.h defines the runtime's types these use */
#include <cuda_runtime_api.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Storage types: the values of ns_ggml_type (engine/gguf.h); the backend checks that they
 * agree at compile time (the kernels do not include the engine's C11 headers). */
enum {
    NS_CUDA_TYPE_F32 = 0,
    NS_CUDA_TYPE_F16 = 1,
    NS_CUDA_TYPE_Q4_0 = 2,
    NS_CUDA_TYPE_Q4_1 = 3,
    NS_CUDA_TYPE_Q8_0 = 8,
    NS_CUDA_TYPE_BF16 = 30,
    NS_CUDA_TYPE_E4M3 = 200, /* not a ggml type: the FP8 KV cache's codes (kernels/cpu/fp8.h) */
};

/* Largest head_dim ns_cuda_attention_paged supports (8 dims per lane of one warp). */
#define NS_CUDA_ATTN_MAX_HEAD_DIM 256

/* ---- conversions, dequantization ----
 * n_rows rows of n elements in `type` (block layouts as in ops.h; src rows src_row_bytes
 * apart, n a multiple of 32 for the block types) into dst (n_rows, n) of dst_type
 * NS_CUDA_TYPE_F32 or NS_CUDA_TYPE_BF16 (round to nearest even). Same products as the
 * CPU dequantiser (d*q one fp32 multiply; Q4_1 d*q + m one fma). */
cudaError_t ns_cuda_dequant_row(int type, const void *src, size_t src_row_bytes, void *dst,
                                int dst_type, int64_t n_rows, int64_t n, cudaStream_t stream);
/* dst (n) bf16 = src (n) f32, round to nearest even. */
cudaError_t ns_cuda_f32_to_bf16(uint16_t *dst, const float *src, int64_t n, cudaStream_t stream);
/* hi (n) = bf16(src), lo (n) = bf16(src - hi): src = hi + lo to about 2^-16 relative, so
 * two bf16 GEMMs (W.hi + W.lo) give an fp32-accurate product (the backend's precise mode). */
cudaError_t ns_cuda_f32_to_bf16_split(uint16_t *hi, uint16_t *lo, const float *src, int64_t n,
                                      cudaStream_t stream);

/* ---- row and elementwise ops (ops.h) ---- */
/* Ops whose output feeds a matmul (rmsnorm, swiglu, attention) also write it rounded to
 * bf16 into out_bf16 when that is not NULL (the GEMM input, saving a conversion pass). */
/* out (n_rows, n) = x / sqrt(mean(x^2) + eps) * w (n); out may alias x. One block per row. */
cudaError_t ns_cuda_rmsnorm(float *out, uint16_t *out_bf16, const float *x, const float *w, int n_rows, int n,
                            float eps, cudaStream_t stream);
/* The residual add and the next RMSNorm in one pass: x (n_rows, n) += delta, then out =
 * rmsnorm(x) * w in fp32 and/or bf16 (either may be NULL, not both); out may alias delta.
 * Bit-equal to ns_cuda_add then ns_cuda_rmsnorm. */
cudaError_t ns_cuda_add_rmsnorm(float *x, const float *delta, float *out, uint16_t *out_bf16, const float *w,
                                int n_rows, int n, float eps, cudaStream_t stream);
/* In place on x (n_tokens, n_head, head_dim) at positions pos (n_tokens); inv_freq (n_rot/2).
 * theta and its cos/sin in double, the rotation in fp32, as ns_cpu_rope. */
cudaError_t ns_cuda_rope(float *x, const int32_t *pos, int n_tokens, int n_head, int head_dim,
                         int n_rot, const float *inv_freq, int is_neox, cudaStream_t stream);
/* The fused QKV GEMM's epilogue: qkv (n_tokens, q_dim + 2 kv_dim), each row q | k | v
 * (q_dim = n_head * head_dim, kv_dim = n_head_kv * head_dim), plus the biases (each may be
 * NULL) into q (n_tokens, q_dim), k and v (n_tokens, kv_dim), then RoPE on q and k at
 * positions pos: bit for bit ns_cuda_add_bias then ns_cuda_rope on each. */
cudaError_t ns_cuda_qkv_split_rope(float *q, float *k, float *v, const float *qkv, const float *bq, const float *bk,
                                   const float *bv, const int32_t *pos, int n_tokens, int n_head, int n_head_kv,
                                   int head_dim, int n_rot, const float *inv_freq, int is_neox, cudaStream_t stream);
/* out (n) = silu(gate) * up; out may alias gate or up. */
cudaError_t ns_cuda_swiglu(float *out, uint16_t *out_bf16, const float *gate, const float *up, int64_t n,
                           cudaStream_t stream);
/* out (n) = bf16(silu(gate) * up) from bf16 gate and up (n): the feed-forward's fused
 * path, where the GEMMs write bf16 and the result is the next GEMM's input. */
cudaError_t ns_cuda_swiglu_bf16(uint16_t *out, const uint16_t *gate, const uint16_t *up, int64_t n,
                                cudaStream_t stream);
/* FP8 E4M3 rows with a scale per row (kernels/cpu/fp8.h): out (n_rows, n) = e4m3(x * 448 /
 * amax), scales (n_rows) = amax / 448, amax = max |x| of the row; x (n_rows, n) of x_type
 * NS_CUDA_TYPE_F32 or NS_CUDA_TYPE_BF16. The same bits as ns_cpu_quant_rows_fp8. */
cudaError_t ns_cuda_quant_rows_fp8(uint8_t *out, float *scales, const void *x, int x_type, int64_t n_rows,
                                   int64_t n, cudaStream_t stream);
/* The ops whose output feeds an FP8 GEMM, writing it as FP8 rows q (n_rows, n) and scales
 * (n_rows) directly (precision fp8). rmsnorm_fp8: out (may be NULL, may alias x) =
 * rmsnorm(x) * w as ns_cuda_rmsnorm, q and scales its bits through ns_cuda_quant_rows_fp8.
 * add_rmsnorm_fp8: x += delta first, as ns_cuda_add_rmsnorm. swiglu_bf16_fp8: the rows
 * of silu(gate) * up from bf16 gate and up (n_rows, n), quantized from fp32. */
cudaError_t ns_cuda_rmsnorm_fp8(float *out, uint8_t *q, float *scales, const float *x, const float *w, int n_rows,
                                int n, float eps, cudaStream_t stream);
cudaError_t ns_cuda_add_rmsnorm_fp8(float *x, const float *delta, float *out, uint8_t *q, float *scales,
                                    const float *w, int n_rows, int n, float eps, cudaStream_t stream);
cudaError_t ns_cuda_swiglu_bf16_fp8(uint8_t *q, float *scales, const uint16_t *gate, const uint16_t *up,
                                    int64_t n_rows, int64_t n, cudaStream_t stream);
/* FP8 GEMMs where cuBLASLt lacks outer-vector scales (kernels/cuda/fp8.cu).
 * expand_scales: dst (rows * kb) = src[r] for each of row r's kb blocks, laid out as
 * dst[r * kb + j] or, kb_major, dst[j * rows + r]. scale_outer: y (M, N) of y_type (F32 or
 * BF16) = raw (M, N, fp32) * (a_scale[n] * b_scale[m]). */
cudaError_t ns_cuda_expand_scales(float *dst, const float *src, int64_t rows, int kb, int kb_major,
                                  cudaStream_t stream);
cudaError_t ns_cuda_scale_outer(void *y, int y_type, const float *raw, const float *a_scale, const float *b_scale,
                                int M, int N, cudaStream_t stream);
/* y (n) += x (n). */
cudaError_t ns_cuda_add(float *y, const float *x, int64_t n, cudaStream_t stream);
/* y (M, N) += bias (N) on every row. */
cudaError_t ns_cuda_add_bias(float *y, const float *bias, int M, int N, cudaStream_t stream);
/* out (n_tokens, n_embd) = rows ids (n_tokens) of table (n_vocab, n_embd) in `type` (any type
 * above), as fp32. ids are checked < n_vocab by the caller. */
cudaError_t ns_cuda_embed(float *out, const void *table, int type, const int32_t *ids, int n_tokens,
                          int n_embd, cudaStream_t stream);
/* out (n_rows, width) = rows `rows` (n_rows) of x. */
cudaError_t ns_cuda_gather_rows(float *out, const float *x, const int32_t *rows, int n_rows, int width,
                                cudaStream_t stream);

/* ---- paged KV cache and attention ----
 * Pools: (n_blocks_total, block_size, n_head_kv, head_dim) of kv_type, NS_CUDA_TYPE_BF16
 * (the default) or NS_CUDA_TYPE_F32; the CPU's are fp32 (ops.h).
 * kv_store: row t of k, v (n_tokens, row = n_head_kv * head_dim, fp32) goes to pool row
 * slot[t] (= block * block_size + position % block_size, computed and checked by the
 * host), rounded to nearest even for bf16. */
cudaError_t ns_cuda_kv_store(void *k_pool, void *v_pool, int kv_type, const float *k, const float *v,
                             const int32_t *slot, int n_tokens, int row, cudaStream_t stream);
/* Causal grouped-query attention of a whole batch over its sequences' blocks: token t
 * belongs to sequence tok_seq[t], whose block table is row tok_seq[t] of block_table
 * (n_seqs, max_blocks_per_seq), and sees keys 0..q_pos[t] (the host checked every table
 * entry it can reach). groups (n_groups, 2): first token and count (1..NS_CUDA_ATTN_QT) of
 * runs of consecutive tokens of one sequence in position order, covering every token
 * once (single != 0: every group has one token, as in a decode-only batch, which picks
 * a kernel with fewer registers); one thread block per (group, KV head), its warps the group's query heads, keys in
 * tiles of 32 through shared memory, online softmax in fp32: the score matrix is never
 * formed and nothing is written but out.
 * out, q (n_tokens, n_head, head_dim) fp32; head_dim <= NS_CUDA_ATTN_MAX_HEAD_DIM;
 * n_head / n_head_kv <= 16. */
#define NS_CUDA_ATTN_QT 8
/* The FP8 KV cache (NS_CUDA_TYPE_E4M3): each (slot, KV head) row of head_dim values is
 * stored as e4m3 codes in the pools, with one fp32 scale in k_scale / v_scale
 * (n_blocks_total * block_size, n_head_kv): exactly ns_cpu_quant_rows_fp8 of that row.
 * kv_store_fp8: rows t of k, v (n_tokens, n_head_kv * head_dim, fp32) to pool rows slot[t].
 * attention_paged_fp8: ns_cuda_attention_paged over such pools; head_dim 64 or 128,
 * pools 16-byte aligned, n_head_kv * head_dim a multiple of 16 (ns_cuda_kv_fp8_fits).
 * A key's score is q . codes * k_scale * scale, a value's weight p * v_scale; the codes
 * are decoded exactly. */
static inline int ns_cuda_kv_fp8_fits(int n_head, int n_head_kv, int head_dim) {
    return (head_dim == 64 || head_dim == 128) && n_head_kv > 0 && n_head % n_head_kv == 0 &&
           n_head / n_head_kv <= 16 && (n_head_kv * head_dim) % 16 == 0;
}
cudaError_t ns_cuda_kv_store_fp8(void *k_pool, void *v_pool, float *k_scale, float *v_scale, const float *k,
                                 const float *v, const int32_t *slot, int n_tokens, int n_head_kv, int head_dim,
                                 cudaStream_t stream);
cudaError_t ns_cuda_attention_paged_fp8(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                        const int32_t *tok_seq, const int32_t *groups, int n_groups, int single,
                                        const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                                        const void *v_pool, const float *k_scale, const float *v_scale,
                                        int block_size, int n_head, int n_head_kv, int head_dim, float scale,
                                        cudaStream_t stream);
cudaError_t ns_cuda_attention_paged(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                    const int32_t *tok_seq, const int32_t *groups, int n_groups,
                                    int single, const int32_t *block_table, int max_blocks_per_seq,
                                    const void *k_pool, const void *v_pool, int kv_type, int block_size,
                                    int n_head, int n_head_kv, int head_dim, float scale,
                                    cudaStream_t stream);

/* The same attention on the tensor cores (kernels/cuda/attention_tc.cu), for bf16 pools
 * (k_scale = v_scale = NULL) or the FP8 KV cache (e4m3 pools with their scales, shapes as
 * ns_cuda_kv_fp8_fits): per (group, KV head) block the group's tokens x the KV head's
 * query heads are the rows of Q K^T and P V products on wmma fragments (bf16 in, fp32
 * accumulation), with Q and the softmax weights P (FP8: p * v_scale) rounded to bf16.
 * qt: the most tokens of a group (1 .. NS_CUDA_ATTN_QT; it sets the warps per block).
 * Shapes: ns_cuda_attention_tc_fits. ns_cuda_attention_paged and _paged_fp8 take this
 * path for prompt groups when NS_CUDA_ATTN_TC=1, and for decode groups too when
 * NS_CUDA_ATTN_TC=2 (engine/switches.h). */
cudaError_t ns_cuda_attention_tc(float *out, uint16_t *out_bf16, const float *q, const int32_t *q_pos,
                                 const int32_t *tok_seq, const int32_t *groups, int n_groups, int qt,
                                 const int32_t *block_table, int max_blocks_per_seq, const void *k_pool,
                                 const void *v_pool, const float *k_scale, const float *v_scale, int block_size,
                                 int n_head, int n_head_kv, int head_dim, float scale, cudaStream_t stream);
/* The NS_CUDA_ATTN_TC level that ns_cuda_attention_paged and _paged_fp8 follow (0, 1 or
 * 2; read from the environment on first use): returns it, then sets it to level when
 * level >= 0. For tests that check one kernel whatever the default (gpu-parity), not for
 * use while another thread launches attention. */
int ns_cuda_attention_tc_level(int level);
static inline int ns_cuda_attention_tc_fits(const void *q, const void *k_pool, const void *v_pool, int n_head,
                                            int n_head_kv, int head_dim) {
    return (head_dim == 64 || head_dim == 128) && n_head_kv >= 1 && n_head % n_head_kv == 0 &&
           n_head / n_head_kv <= 16 && (uintptr_t)q % 16 == 0 && (uintptr_t)k_pool % 16 == 0 &&
           (uintptr_t)v_pool % 16 == 0;
}

/* In place: every token t (n_tokens) below 0 becomes ids[-1 - t] (a pick's output, rows
 * n_ids), or 0 where that row picked nothing (-1) or is past n_ids. */
cudaError_t ns_cuda_tokens_from_ids(int32_t *tokens, int n_tokens, const int32_t *ids, int n_ids,
                                    cudaStream_t stream);

/* ---- sampling ----
 * out_ids (n_rows) = argmax of each row of logits (n_rows, n_vocab), lowest id on ties
 * (the CPU sampler's greedy rule); NaN never wins; a row whose best value is -inf or
 * that holds only NaN gives -1. */
cudaError_t ns_cuda_sample_greedy(int32_t *out_ids, const float *logits, int n_rows, int n_vocab,
                                  cudaStream_t stream);
/* out_ids (n_rows) = the token of each row of logits (n_rows, n_vocab) by the rule of
 * kernels/cpu/sample_rule.h with that row's params (n_rows, device memory): greedy rows
 * and top_k/top_p/min_p/temperature rows in one launch, the same token as
 * ns_cpu_sample_rows_ref. n_vocab <= NS_SAMPLE_MAX_VOCAB (2^19). */
struct ns_row_sampling;
cudaError_t ns_cuda_sample_rows(int32_t *out_ids, const float *logits, int n_rows, int n_vocab,
                                const struct ns_row_sampling *params, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
