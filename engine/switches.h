/* switches.h: the speed switches (ways of computing the same thing faster that wait for a
 * GPU measurement before they are trusted) and their defaults, in one place.
 *
 * Each is read once, when a backend or engine opens, from its environment variable:
 *   unset or empty   the default below
 *   "0"              off
 *   "1" .. "max"     on (NS_CUDA_ATTN_TC has two levels: 1 prompt groups, 2 every group)
 *   anything else    the default, with a line on stderr naming the variable and its values
 * So a switch that is on by default is turned off with NAME=0, and the other way round.
 * tests/gpu/run.sh measures each against a run with every switch at 0 and says, at the end
 * of its summary, which to turn on here. What changes results (precision fp8, precise mode)
 * is not a speed switch and is not here. The defaults can be set when building
 * (-DNS_DEFAULT_CUDA_GRAPHS=1), which is how the tests are checked against either.
 * On since 2026-11-26, after tests/gpu/run.sh on an H100 (tests/gpu/RESULTS.md, run 8):
 * each switch's checks passed, and against every switch off its 1B output tok/s was
 * graphs x1.024 (x1.124 at 64 sequences), tensor-core attention for prompt groups x1.087
 * (8B x1.035), fused feed-forward x1.043, fused norm x1.056, overlap x1.051; all five
 * x1.161 (8B x1.102). NS_CUDA_ATTN_TC=2 (every group, x1.108 on the 1B) is not the
 * default: it was not measured on the 8B, and its lead over level 1 is within the spread
 * of two runs.
 * The fused QKV on since runs 10 and 11 (H100, 2026-11-26): its checks passed (kernel parity
 * bit for bit, synthetic models, the job, FP8); with the other five on, 1B x1.080, x1.005,
 * x0.990, x1.043 in four side-by-side pairs (medians 73,017 against 70,733 tok/s), 8B x1.000.
 * Level 2 of the tensor-core attention measured on the 8B in run 11: x1.019 against every
 * switch off, below level 1's x1.035 (run 8), so level 1 stays.
 */
#ifndef NS_SWITCHES_H
#define NS_SWITCHES_H

#include <stdio.h>
#include <stdlib.h>

#ifndef NS_DEFAULT_CUDA_GRAPHS     /* decode steps replayed as CUDA graphs (backend_cuda.c) */
#define NS_DEFAULT_CUDA_GRAPHS 1
#endif
#ifndef NS_DEFAULT_CUDA_ATTN_TC    /* attention on the tensor cores (attention_tc.cu) */
#define NS_DEFAULT_CUDA_ATTN_TC 1
#endif
#ifndef NS_DEFAULT_CUDA_FUSED_FFN  /* gate/up GEMMs writing bf16 for a bf16 SwiGLU */
#define NS_DEFAULT_CUDA_FUSED_FFN 1
#endif
#ifndef NS_DEFAULT_CUDA_FUSED_NORM /* residual add + RMSNorm in one pass */
#define NS_DEFAULT_CUDA_FUSED_NORM 1
#endif
#ifndef NS_DEFAULT_CUDA_FUSED_QKV  /* q, k, v from one GEMM over the joined weights, then one pass for
                                    * the biases and RoPE (qkv.cu); on since runs 10 and 11 (below) */
#define NS_DEFAULT_CUDA_FUSED_QKV 1
#endif
#ifndef NS_DEFAULT_ENGINE_OVERLAP  /* the host takes in step k's tokens while step k + 1 runs */
#define NS_DEFAULT_ENGINE_OVERLAP 1
#endif

/* The switch `name`'s level in 0 .. max (see above). */
static inline int ns_switch(const char *name, int dflt, int max) {
    const char *v = getenv(name);
    if (!v || !v[0]) return dflt;
    if (v[0] >= '0' && v[0] - '0' <= max && !v[1]) return v[0] - '0';
    fprintf(stderr, "nightshift: %s='%s' is not one of 0..%d; using the default, %d\n", name, v, max, dflt);
    return dflt;
}

#endif
