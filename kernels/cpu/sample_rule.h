/* sample_rule.h: the row sampling rule shared, bit for bit, by the CPU reference
 * (ns_cpu_sample_rows_ref, kernels/cpu/sample_rows.c) and the CUDA kernel
 * (ns_cuda_sample_rows, kernels/cuda/sample_rows.cu). Included from C and from CUDA: every
 * helper is host+device, and every float operation that must round the same way on both
 * sides is written with an explicit operation (no fused multiply-add on the device; the
 * C side is ISO C11, where GCC does not contract).
 *
 * The rule for one row of logits l (n_vocab), with the request's temperature T, top_k,
 * top_p, min_p and one uniform draw u in [0, 1) from the request's own random stream:
 *  1. T == 0, or 1/T overflows: greedy, the argmax, lowest id on ties, NaN never
 *     chosen; -1 when no logit is above -inf.
 *  2. m = the largest non-NaN logit; -1 when m is -inf.
 *  3. Eligible: l > -inf (NaN never). top_k (0 < k < n_vocab) keeps the k eligible tokens
 *     with the largest (l, -id): logit descending, lowest id first on ties.
 *  4. Candidates: kept by top_k and l >= m - 80 T (relative probability below e^-80
 *     dropped, as the host sampler does); when m is +inf, the +inf tokens only.
 *  5. e = exp((l - m) / T) by ns_sample_exp (the host sampler's polynomial), 1 for +inf
 *     tokens; the weight of a candidate is w = trunc(e * 2^44), an integer. All sums
 *     are sums of these integers: exact, so the result does not depend on the order of
 *     summation (the CUDA kernel sums in parallel).
 *  6. top_p < 1: W = sum of w, target = max(1, trunc(top_p * W)) in double; keep the
 *     smallest prefix of the candidates in (e descending, id ascending) order whose w
 *     sum reaches target.
 *  7. min_p > 0: keep e >= min_p (the best token has e = 1 exactly).
 *  8. Draw: S = sum of kept w, r = min(trunc(u * S), S - 1) in double; the pick is the
 *     kept token, in id order, at which the running sum of w first exceeds r.
 * The kept set and the probabilities (w / S) are those of the host sampler
 * (engine/sampler.c) up to the rounding of e to multiples of 2^-44 and its double sums;
 * the host sampler walks its candidates in another order, so the same u can pick a
 * different token: same distribution, not the same stream.
 */
#ifndef NS_SAMPLE_RULE_H
#define NS_SAMPLE_RULE_H

#include <stdint.h>

#ifdef __CUDACC__
#define NS_SR_FN static __host__ __device__ __forceinline__
#else
#define NS_SR_FN static inline
#endif

/* One row's parameters, as the host fills them. 24 bytes, the same in C and CUDA. */
typedef struct ns_row_sampling {
    float temperature; /* >= 0; 0 = greedy */
    int32_t top_k;     /* 0 = off */
    float top_p;       /* (0, 1]; 1 = off */
    float min_p;       /* [0, 1); 0 = off */
    double u;          /* [0, 1): the request's draw for this step (unused when greedy) */
} ns_row_sampling;

#define NS_SAMPLE_EXP_SPAN 80.0f
#define NS_SAMPLE_W_SCALE 0x1p44f
/* Ids take 19 bits of the ordering keys below, and n_vocab weights of at most 2^44 sum
 * below 2^63. */
#define NS_SAMPLE_ID_BITS 19
#define NS_SAMPLE_MAX_VOCAB (1 << NS_SAMPLE_ID_BITS)
#define NS_SAMPLE_ID_MASK ((uint64_t)NS_SAMPLE_MAX_VOCAB - 1)

#ifdef __CUDA_ARCH__
#define NS_SR_MUL(a, b) __fmul_rn((a), (b))
#define NS_SR_ADD(a, b) __fadd_rn((a), (b))
#define NS_SR_SUB(a, b) __fsub_rn((a), (b))
#define NS_SR_INT_AS_FLOAT(i) __int_as_float(i)
#define NS_SR_FLOAT_BITS(f) ((uint32_t)__float_as_uint(f))
#else
#define NS_SR_MUL(a, b) ((a) * (b))
#define NS_SR_ADD(a, b) ((a) + (b))
#define NS_SR_SUB(a, b) ((a) - (b))
NS_SR_FN float ns_sr_int_as_float(int32_t i) {
    union { int32_t i; float f; } v = {.i = i};
    return v.f;
}
NS_SR_FN uint32_t ns_sr_float_bits(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    return v.u;
}
#define NS_SR_INT_AS_FLOAT(i) ns_sr_int_as_float(i)
#define NS_SR_FLOAT_BITS(f) ns_sr_float_bits(f)
#endif

/* exp(x) for x in [-NS_SAMPLE_EXP_SPAN - 1, 0], relative error below 1e-7 (Cephes expf
 * polynomial); exp(0) = 1 exactly. Branch-free, so that host loops using it vectorise. */
NS_SR_FN float ns_sample_exp(float x) {
    const float n = (float)(int32_t)NS_SR_SUB(NS_SR_MUL(x, 1.44269504088896341f), 0.5f); /* round(x/ln2), x <= 0 */
    const float r = NS_SR_ADD(NS_SR_SUB(x, NS_SR_MUL(n, 0.693359375f)), NS_SR_MUL(n, 2.12194440e-4f));
    float y = 1.9875691500e-4f;
    y = NS_SR_ADD(NS_SR_MUL(y, r), 1.3981999507e-3f);
    y = NS_SR_ADD(NS_SR_MUL(y, r), 8.3334519073e-3f);
    y = NS_SR_ADD(NS_SR_MUL(y, r), 4.1665795894e-2f);
    y = NS_SR_ADD(NS_SR_MUL(y, r), 1.6666665459e-1f);
    y = NS_SR_ADD(NS_SR_MUL(y, r), 5.0000001201e-1f);
    y = NS_SR_ADD(NS_SR_ADD(NS_SR_MUL(y, NS_SR_MUL(r, r)), r), 1.0f);
    return NS_SR_MUL(y, NS_SR_INT_AS_FLOAT(((int32_t)n + 127) << 23)); /* y * 2^n */
}

/* The temperature as the rule uses it: above 1e30 it is 1e30. *inv_t = 1/t; returns 0
 * when the row is greedy (T == 0, or 1/t overflows). */
NS_SR_FN int ns_sample_temperature(float temperature, float *t, float *inv_t) {
    *t = temperature < 1e30f ? temperature : 1e30f;
    *inv_t = 1.0f / *t;
    return *t > 0.0f && *inv_t <= 3.402823466e38f; /* 1/t finite */
}

/* Lowest threshold a candidate's logit may have: m - 80 t. */
NS_SR_FN float ns_sample_floor(float m, float t) { return NS_SR_SUB(m, NS_SR_MUL(NS_SAMPLE_EXP_SPAN, t)); }

/* e of a candidate logit l (finite m; l >= ns_sample_floor). */
NS_SR_FN float ns_sample_e(float l, float m, float inv_t) { return ns_sample_exp(NS_SR_MUL(NS_SR_SUB(l, m), inv_t)); }

/* w = trunc(e * 2^44); e in [0, 1]. */
NS_SR_FN uint64_t ns_sample_w(float e) { return (uint64_t)NS_SR_MUL(e, NS_SAMPLE_W_SCALE); }

/* A 32-bit key whose unsigned order is the order of the (non-NaN) float values. */
NS_SR_FN uint32_t ns_sample_fkey(float v) {
    const uint32_t b = NS_SR_FLOAT_BITS(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* Ordering keys, larger = earlier, unique per token: top_k orders by (logit desc, id
 * asc), top_p by (e desc, id asc), the draw by id asc. */
NS_SR_FN uint64_t ns_sample_key_logit(float l, int32_t id) {
    return ((uint64_t)ns_sample_fkey(l) << NS_SAMPLE_ID_BITS) | (NS_SAMPLE_ID_MASK - (uint64_t)id);
}
NS_SR_FN uint64_t ns_sample_key_e(float e, int32_t id) {
    return ((uint64_t)NS_SR_FLOAT_BITS(e) << NS_SAMPLE_ID_BITS) | (NS_SAMPLE_ID_MASK - (uint64_t)id);
}
NS_SR_FN uint64_t ns_sample_key_id(int32_t id) { return NS_SAMPLE_ID_MASK - (uint64_t)id; }
#define NS_SAMPLE_KEY_LOGIT_BITS (32 + NS_SAMPLE_ID_BITS)
#define NS_SAMPLE_KEY_E_BITS (30 + NS_SAMPLE_ID_BITS) /* e in [0, 1]: its bits are below 2^30 */
#define NS_SAMPLE_KEY_ID_BITS NS_SAMPLE_ID_BITS

/* top_p's target mass of W, and the draw's r of S (both in double, truncated). */
NS_SR_FN uint64_t ns_sample_top_p_target(float top_p, uint64_t W) {
    const uint64_t t = (uint64_t)((double)top_p * (double)W);
    return t < 1 ? 1 : (t > W ? W : t);
}
NS_SR_FN uint64_t ns_sample_draw_r(double u, uint64_t S) {
    const uint64_t r = (uint64_t)(u * (double)S);
    return r >= S ? S - 1 : r;
}

#endif
