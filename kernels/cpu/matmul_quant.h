/* matmul_quant.h: y = x . W^T with W read in its GGUF storage type (Q4_0, Q4_1, Q8_0,
 * F32, F16, BF16), for small batches of activation rows (M about 1..16), where a
 * dequantize-then-sgemm path is memory-bound and repacks the whole weight matrix each call.
 * The kernel reads each weight block once from memory, dequantizes it in registers with
 * the same arithmetic as ns_cpu_dequant_row (d*q; d*q + m fused where the target has FMA)
 * and multiplies it against the activation rows in fp32.
 *
 * Shapes (row-major, last dim contiguous):
 *   x (M, K) fp32; W (N, K) in `type`, N rows of ns_ggml_row_bytes(type, K) bytes
 *   (F32 4*K, F16/BF16 2*K, Q8_0 34*K/32, Q4_0 18*K/32, Q4_1 20*K/32; K a multiple of 32
 *   for the block types, any K >= 0 for the float types); y (M, ldy) fp32, ldy >= N.
 * Only y[m*ldy + n] for m < M, n < N is written; other columns of y are left untouched.
 * Weight rows need no alignment (GGUF blocks of 18, 20 or 34 bytes are not aligned).
 */
#ifndef NS_CPU_MATMUL_QUANT_H
#define NS_CPU_MATMUL_QUANT_H

/* y[m*ldy + n] = sum_k x[m*K + k] * W[n][k] for m < M, n < N. W is N rows of K weights in
 * ggml type `type` (NS_GGML_Q4_0=2, Q4_1=3, Q8_0=8, F32=0, F16=1, BF16=30), row-major, rows
 * of ns_ggml_row_bytes bytes (K multiple of 32 for quantized types). Single-threaded and
 * allocation-free: the caller splits N across threads by passing w advanced to row n0 and
 * y advanced to column n0 (with the same ldy). M, N <= 0 write nothing; K == 0 writes
 * zeros. An unknown type or a block type with K % 32 != 0 is a bug (NS_ASSERT).
 *
 * _ref dequantizes each W row with ns_cpu_dequant_row_ref and sums each dot product in
 * double (32 weights at a time, so it needs no allocation either): the yardstick for the
 * tests. The fast version sums in fp32 in a different order: expect it within about
 * 1e-6 * K * max|x| * max|w| of the reference. */
void ns_cpu_matmul_quant_ref(float *y /*(M, ldy)*/, int ldy, const float *x /*(M, K)*/,
                             const void *w /*(N, K) in type*/, int type, int M, int N, int K);
void ns_cpu_matmul_quant(float *y /*(M, ldy)*/, int ldy, const float *x /*(M, K)*/,
                         const void *w /*(N, K) in type*/, int type, int M, int N, int K);

/* Same, but each row's result is bit-identical whatever M and the row's place in x
 * (batch-invariant mode): one fixed accumulation order, a little slower for small M. */
void ns_cpu_matmul_quant_invariant(float *y /*(M, ldy)*/, int ldy, const float *x /*(M, K)*/,
                                   const void *w, int type, int M, int N, int K);

#endif
