/* rope.cuh: one RoPE pair's rotation, shared by rope.cu and qkv.cu so that the two give
 * the same bits: theta = pos * inv_freq in double, its cos/sin in double rounded to fp32,
 * then the rotation in fp32 with each product rounded on its own (no fused multiply-add,
 * which the compiler could otherwise choose differently in each kernel). */
#ifndef NS_CUDA_ROPE_CUH
#define NS_CUDA_ROPE_CUH

static __device__ __forceinline__ void ns_rope_cos_sin(int32_t pos, float inv_freq, float *c, float *s) {
    const double theta = (double)pos * (double)inv_freq;
    *c = (float)cos(theta);
    *s = (float)sin(theta);
}

/* The pair (a, b) rotated by the angle whose cosine and sine are c, s: the new a ... */
static __device__ __forceinline__ float ns_rope_first(float a, float b, float c, float s) {
    return __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
}
/* ... and the new b. */
static __device__ __forceinline__ float ns_rope_second(float a, float b, float c, float s) {
    return __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
}

#endif
