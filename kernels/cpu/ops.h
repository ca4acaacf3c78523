/* ops.h: the CPU kernels. Each op has a naive reference (`_ref`, written for clarity,
 * used by the tests) and the fast version the engine calls; kernels/cuda/ has the same
 * op names. Shapes are written beside every argument, row-major, last dim contiguous.
 * All kernels are single-threaded unless they say otherwise: the backend splits work
 * across its threads by calling them on disjoint slices. No kernel allocates.
 */
#ifndef NS_CPU_OPS_H
#define NS_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

/* ---- scalar conversions ---- */
float ns_fp16_to_fp32(uint16_t h);
uint16_t ns_fp32_to_fp16(float f);  /* round to nearest even */
float ns_bf16_to_fp32(uint16_t h);
uint16_t ns_fp32_to_bf16(float f);  /* round to nearest even, NaN kept NaN */

/* ---- quantization (block layouts as in ggml) ----
 * Q8_0: 32 elems: fp16 d; int8 q[32];            x = d*q
 * Q4_0: 32 elems: fp16 d; uint8 qs[16];          x = d*(q-8), q low nibble = elem j, high = j+16
 * Q4_1: 32 elems: fp16 d; fp16 m; uint8 qs[16];  x = d*q + m, same nibble order
 * type is an ns_ggml_type value (engine/gguf.h). n must be a multiple of the block size. */
void ns_cpu_dequant_row_ref(int type, const void *src, float *dst /*(n)*/, int64_t n);
void ns_cpu_dequant_row(int type, const void *src, float *dst /*(n)*/, int64_t n);
/* Quantizes n floats into type's blocks (for tests and tools writing models). */
void ns_cpu_quantize_row(int type, const float *src /*(n)*/, void *dst, int64_t n);

/* ---- matrix work ----
 * y = x . W^T: x (M, K), w (N, K), y (M, N). The fast version uses BLAS (OpenBLAS
 * sgemm, which threads itself). */
void ns_cpu_matmul_ref(float *y, const float *x, const float *w, int M, int N, int K);
void ns_cpu_matmul(float *y, const float *x, const float *w, int M, int N, int K);

/* FP8 E4M3 (fp8.h), the CUDA backend's FP8 GEMM path. Rows of x (n_rows, n) to out
 * (n_rows, n) e4m3 and scales (n_rows): x ~ e4m3_to_float(out) * scale per row. */
void ns_cpu_quant_rows_fp8(uint8_t *out, float *scales, const float *x, int64_t n_rows, int64_t n);
/* y (M, N) = (xq . wq^T) * x_scales[m] * w_scales[n]: xq (M, K) and wq (N, K) e4m3 rows
 * with their scales, the products summed exactly enough (double) to be the reference for
 * any fp32 accumulation order. */
void ns_cpu_matmul_fp8_ref(float *y, const uint8_t *xq, const float *x_scales, const uint8_t *wq,
                           const float *w_scales, int M, int N, int K);

/* ---- elementwise / row ops ----
 * RMSNorm per row: out = x / sqrt(mean(x^2) + eps) * w. x, out (n_rows, n); w (n).
 * out may alias x. */
void ns_cpu_rmsnorm_ref(float *out, const float *x, const float *w, int n_rows, int n, float eps);
void ns_cpu_rmsnorm(float *out, const float *x, const float *w, int n_rows, int n, float eps);

/* out = silu(gate) * up, (n). out may alias gate. */
void ns_cpu_swiglu_ref(float *out, const float *gate, const float *up, int64_t n);
void ns_cpu_swiglu(float *out, const float *gate, const float *up, int64_t n);

/* y += x, (n). */
void ns_cpu_add_ref(float *y, const float *x, int64_t n);
void ns_cpu_add(float *y, const float *x, int64_t n);

/* In-place softmax of a row (n). */
void ns_cpu_softmax_ref(float *x, int n);
void ns_cpu_softmax(float *x, int n);

/* Embedding gather: out[i] = row ids[i] of table (n_vocab, n_embd), table in `type`
 * (F32, F16, BF16, Q8_0, Q4_0, Q4_1). ids must be checked < n_vocab by the caller. */
void ns_cpu_embed(float *out /*(n_tokens, n_embd)*/, const void *table, int type,
                  const int32_t *ids /*(n_tokens)*/, int n_tokens, int n_embd);

/* ---- RoPE ----
 * inv_freq (n_rot/2): the per-pair inverse frequency, already including any frequency
 * scaling (see ns_rope_inv_freq). Rotates the first n_rot dims of each head in place.
 * is_neox = 0: pairs (2i, 2i+1) (GGUF llama); 1: pairs (i, i + n_rot/2) (qwen2, neox). */
void ns_cpu_rope_ref(float *x /*(n_tokens, n_head, head_dim)*/, const int32_t *pos /*(n_tokens)*/,
                     int n_tokens, int n_head, int head_dim, int n_rot, const float *inv_freq,
                     int is_neox);
void ns_cpu_rope(float *x, const int32_t *pos, int n_tokens, int n_head, int head_dim, int n_rot,
                 const float *inv_freq, int is_neox);

/* Fills inv_freq[i] = base^(-2i/n_rot), i < n_rot/2, then applies Llama-3 scaling when
 * factor > 1 (low_freq_factor, high_freq_factor, orig_ctx as in Llama 3.1's rope_scaling)
 * and divides by freq_factors[i] when freq_factors is not NULL (GGUF rope_freqs.weight). */
void ns_rope_inv_freq(float *inv_freq /*(n_rot/2)*/, int n_rot, float base, float factor,
                      float low_freq_factor, float high_freq_factor, int orig_ctx,
                      const float *freq_factors);

/* ---- attention over a paged KV cache, one sequence ----
 * k_pool, v_pool: (n_blocks_total, block_size, n_head_kv, head_dim).
 * block_table (ceil(n_kv / block_size)): the sequence's blocks in order; key j lives in
 * block block_table[j / block_size], slot j % block_size.
 * Query i sees keys 0..q_pos[i] (causal; q_pos[i] < n_kv). Grouped-query: head h uses
 * kv head h / (n_head / n_head_kv). scale is usually 1/sqrt(head_dim).
 * Computes heads [h0, h1) only, so the backend can split heads across threads.
 * scratch: at least n_kv floats (per calling thread). Never touches other blocks. */
void ns_cpu_attention_paged_ref(float *out /*(n_q, n_head, head_dim)*/,
                                const float *q /*(n_q, n_head, head_dim)*/,
                                const int32_t *q_pos /*(n_q)*/, int n_q, const float *k_pool,
                                const float *v_pool, const int32_t *block_table, int n_kv,
                                int block_size, int n_head, int n_head_kv, int head_dim,
                                float scale, int h0, int h1, float *scratch);
void ns_cpu_attention_paged(float *out, const float *q, const int32_t *q_pos, int n_q,
                            const float *k_pool, const float *v_pool, const int32_t *block_table,
                            int n_kv, int block_size, int n_head, int n_head_kv, int head_dim,
                            float scale, int h0, int h1, float *scratch);

/* ---- sampling ----
 * Row sampling by the rule of kernels/cpu/sample_rule.h (greedy, or top_k, temperature,
 * top_p, min_p and a draw u given per row): ids (n_rows), -1 for a row with no logit above
 * -inf. The reference that ns_cuda_sample_rows must match token for token; written for
 * clarity (it sorts: O(n_vocab log n_vocab) a row), not speed: the engine samples on the
 * CPU with engine/sampler.c. n_vocab <= NS_SAMPLE_MAX_VOCAB (else -1); scratch: at
 * least 2 * n_vocab uint64_t. */
struct ns_row_sampling;
void ns_cpu_sample_rows_ref(int32_t *ids /*(n_rows)*/, const float *logits /*(n_rows, n_vocab)*/, int n_rows,
                            int n_vocab, const struct ns_row_sampling *params /*(n_rows)*/, uint64_t *scratch);
/* The distribution behind it for one row: w (n) = each token's weight after every cut
 * (0 for tokens cut; a greedy row has weight 1 on its pick); returns their sum S, 0 when
 * no logit is above -inf. The pick for draw u is the token at which the running sum of
 * w in id order first exceeds ns_sample_draw_r(u, S). keys: scratch of n uint64_t. */
uint64_t ns_cpu_sample_weights_ref(const float *l /*(n)*/, int n, const struct ns_row_sampling *p, uint64_t *w,
                                   uint64_t *keys);

#endif
