/* sample_rows.cu: sampling on the device by the rule of kernels/cpu/sample_rule.h:
 * greedy, or temperature with top_k, top_p and min_p, per row, token for token the same as
 * ns_cpu_sample_rows_ref (kernels/cpu/sample_rows.c), so that a sampled decode step
 * returns n_rows ints instead of n_rows * n_vocab floats.
 * It includes nothing of CUDA's but the runtime API for its launcher, which
 * NS_CUDA_EMU leaves out: tests/gpu/emu_sample_rows.cpp compiles the kernel for the host
 * with one thread per CUDA thread, so that its logic is checked on machines without a
 * GPU. */
#ifndef NS_CUDA_EMU
#include <cuda_runtime_api.h>
#endif
#include <math.h>
#include <stdint.h>

#include "sample_rule.h"

/* One block per row. Every cut is a selection by cumulative weight in the order of a
 * unique key (top_k: count in (logit desc, id asc) order; top_p: weight in (e desc, id
 * asc) order; the draw: weight in id order), found by a radix select over the key's
 * bits, 8 at a time from the top: each pass histograms the weights of the tokens whose
 * higher bits match the prefix found so far (integer atomics in shared memory: exact, so
 * the result does not depend on the order threads add in), and one thread walks the 256
 * bins; the first pass's bins also give the total weight that top_p's target and the
 * draw are taken from. Each pass recomputes e from the logits rather than storing it. */

#define SR_THREADS 512

/* (v, i) ranks above (bv, bi): higher value, then lower id; NaN never ranks above. */
static __device__ __forceinline__ bool sr_better(float v, int i, float bv, int bi) {
    return v > bv || (v == bv && i < bi);
}

/* The row's state, the same in every thread. */
struct sr_row {
    const float *l;
    int n;
    float m, lo, inv_t, min_p;
    uint64_t k_min, p_min;
};

static __device__ __forceinline__ bool sr_candidate(const sr_row &r, int i, float &e) {
    const float v = r.l[i];
    if (!(v > -INFINITY) || !(v >= r.lo)) return false;
    if (ns_sample_key_logit(v, i) < r.k_min) return false;
    e = r.m == INFINITY ? 1.0f : ns_sample_e(v, r.m, r.inv_t);
    return true;
}

static __device__ __forceinline__ bool sr_kept(const sr_row &r, int i, float &e) {
    return sr_candidate(r, i, e) && ns_sample_key_e(e, i) >= r.p_min && (r.min_p <= 0.0f || e >= r.min_p);
}

/* Key and weight of token i for each selection; false: not part of it. */
struct sr_by_logit { /* top_k: eligible tokens, weight 1 */
    __device__ bool operator()(const sr_row &r, int i, uint64_t &key, uint64_t &w) const {
        const float v = r.l[i];
        if (!(v > -INFINITY)) return false;
        key = ns_sample_key_logit(v, i);
        w = 1;
        return true;
    }
};
struct sr_by_e { /* top_p: candidates */
    __device__ bool operator()(const sr_row &r, int i, uint64_t &key, uint64_t &w) const {
        float e;
        if (!sr_candidate(r, i, e)) return false;
        key = ns_sample_key_e(e, i);
        w = ns_sample_w(e);
        return true;
    }
};
struct sr_by_id { /* the draw: kept tokens */
    __device__ bool operator()(const sr_row &r, int i, uint64_t &key, uint64_t &w) const {
        float e;
        if (!sr_kept(r, i, e)) return false;
        key = ns_sample_key_id(i);
        w = ns_sample_w(e);
        return true;
    }
};

struct sr_shared {
    float val[SR_THREADS]; /* the argmax reduction */
    int idx[SR_THREADS];
    unsigned long long hist[256];
    uint64_t prefix, rem;
    int found;
};

/* What a selection's target is: given, or made from the total weight T that the first
 * pass's histogram sums (so that no separate pass sums it): top_p's mass of T, or the
 * draw's r + 1 of T. */
enum { SR_TARGET_GIVEN, SR_TARGET_TOP_P, SR_TARGET_DRAW };
struct sr_target {
    int kind;
    uint64_t given;
    float top_p;
    double u;
};

/* The key of the token at which the cumulative weight, in descending key order, first
 * reaches the target (>= 1); false when the total is below it (or is 0). Keys below
 * 2^nbits. */
template <class F>
static __device__ bool sr_select(const sr_row &r, F f, int nbits, sr_target tg, uint64_t *out, sr_shared &sh) {
    uint64_t prefix = 0, rem = tg.given;
    bool first = true;
    for (int shift = (nbits + 7) / 8 * 8 - 8; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += blockDim.x) sh.hist[d] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < r.n; i += blockDim.x) {
            uint64_t key, w;
            if (!f(r, i, key, w) || w == 0) continue;
            if ((key >> (shift + 8)) != (prefix >> (shift + 8))) continue;
            atomicAdd(&sh.hist[(key >> shift) & 255], (unsigned long long)w);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            if (first && tg.kind != SR_TARGET_GIVEN) {
                uint64_t total = 0;
                for (int d = 0; d < 256; d++) total += sh.hist[d];
                rem = total == 0                     ? 1 /* nothing to select: not found below */
                      : tg.kind == SR_TARGET_TOP_P ? ns_sample_top_p_target(tg.top_p, total)
                                                   : ns_sample_draw_r(tg.u, total) + 1;
            }
            int d = 255;
            for (; d >= 0 && sh.hist[d] < rem; d--) rem -= sh.hist[d];
            sh.found = d >= 0;
            sh.prefix = prefix | ((uint64_t)(d < 0 ? 0 : d) << shift);
            sh.rem = rem;
        }
        __syncthreads();
        const bool found = sh.found;
        prefix = sh.prefix;
        rem = sh.rem;
        first = false;
        __syncthreads(); /* everyone has read sh before the next pass writes it */
        if (!found) return false;
    }
    *out = prefix;
    return true;
}

static __global__ void sample_rows_kernel(int32_t *out_ids, const float *logits, int n_vocab,
                                          const ns_row_sampling *params) {
    __shared__ sr_shared sh;
    const ns_row_sampling p = params[blockIdx.x];
    sr_row r;
    r.l = logits + (size_t)blockIdx.x * n_vocab;
    r.n = n_vocab;

    /* the maximum and its lowest id (the greedy pick) */
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n_vocab; i += blockDim.x)
        if (sr_better(r.l[i], i, bv, bi)) bv = r.l[i], bi = i;
    sh.val[threadIdx.x] = bv;
    sh.idx[threadIdx.x] = bi;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride &&
            sr_better(sh.val[threadIdx.x + stride], sh.idx[threadIdx.x + stride], sh.val[threadIdx.x], sh.idx[threadIdx.x])) {
            sh.val[threadIdx.x] = sh.val[threadIdx.x + stride];
            sh.idx[threadIdx.x] = sh.idx[threadIdx.x + stride];
        }
        __syncthreads();
    }
    r.m = sh.val[0];
    const int best = sh.idx[0];
    __syncthreads(); /* read before sh is reused */
    float t, inv_t;
    const bool dist = ns_sample_temperature(p.temperature, &t, &inv_t);
    if (!(r.m > -INFINITY) || !dist) {
        if (threadIdx.x == 0) out_ids[blockIdx.x] = r.m > -INFINITY ? best : -1;
        return;
    }
    r.inv_t = inv_t;
    r.lo = r.m == INFINITY ? INFINITY : ns_sample_floor(r.m, t);
    r.min_p = p.min_p;
    r.k_min = 0;
    r.p_min = 0;

    uint64_t key;
    if (p.top_k > 0 && p.top_k < n_vocab &&
        sr_select(r, sr_by_logit(), NS_SAMPLE_KEY_LOGIT_BITS, sr_target{SR_TARGET_GIVEN, (uint64_t)p.top_k, 0.0f, 0.0},
                  &key, sh))
        r.k_min = key;
    if (p.top_p < 1.0f &&
        sr_select(r, sr_by_e(), NS_SAMPLE_KEY_E_BITS, sr_target{SR_TARGET_TOP_P, 0, p.top_p, 0.0}, &key, sh))
        r.p_min = key;
    int32_t pick = -1; /* none when nothing has weight (not reached: the best token is kept) */
    if (sr_select(r, sr_by_id(), NS_SAMPLE_KEY_ID_BITS, sr_target{SR_TARGET_DRAW, 0, 0.0f, p.u}, &key, sh))
        pick = (int32_t)(NS_SAMPLE_ID_MASK - key);
    if (threadIdx.x == 0) out_ids[blockIdx.x] = pick;
}

#ifndef NS_CUDA_EMU
extern "C" cudaError_t ns_cuda_sample_rows(int32_t *out_ids, const float *logits, int n_rows, int n_vocab,
                                           const ns_row_sampling *params, cudaStream_t stream) {
    if (n_rows < 0 || n_vocab < 1 || n_vocab > NS_SAMPLE_MAX_VOCAB) return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    sample_rows_kernel<<<(unsigned)n_rows, SR_THREADS, 0, stream>>>(out_ids, logits, n_vocab, params);
    return cudaGetLastError();
}
#endif
