/* sample_rows.c: the reference of row sampling (the rule in kernels/cpu/sample_rule.h), the
 * CPU twin that the CUDA kernel ns_cuda_sample_rows must match token for token. Written
 * to be read next to the rule: every step is a plain loop or a sort. The engine's own
 * CPU sampler is engine/sampler.c (faster, with penalties and logprobs). */
#include <math.h>
#include <stdlib.h>

#include "ops.h"
#include "sample_rule.h"

static int cmp_key_desc(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* Whether token i is a candidate (rule steps 3-4), and its e. */
static int candidate(const float *l, int32_t i, float m, float lo, float inv_t, uint64_t k_min, float *e) {
    const float v = l[i];
    if (!(v > -INFINITY) || !(v >= lo)) return 0; /* NaN, -inf, or too far below m */
    if (ns_sample_key_logit(v, i) < k_min) return 0; /* cut by top_k */
    *e = m == INFINITY ? 1.0f : ns_sample_e(v, m, inv_t);
    return 1;
}

uint64_t ns_cpu_sample_weights_ref(const float *l, int n, const struct ns_row_sampling *p, uint64_t *w,
                                   uint64_t *keys) {
    for (int i = 0; i < n; i++) w[i] = 0;
    float m = -INFINITY;
    for (int i = 0; i < n; i++)
        if (l[i] > m) m = l[i]; /* NaN never compares greater */
    if (!(m > -INFINITY)) return 0;
    float t, inv_t;
    if (!ns_sample_temperature(p->temperature, &t, &inv_t)) {
        for (int i = 0; i < n; i++)
            if (l[i] == m) return w[i] = 1;
    }

    /* top_k: keys at or above the k-th best eligible key are kept (k_min 0 keeps all) */
    uint64_t k_min = 0;
    if (p->top_k > 0 && p->top_k < n) {
        int n_elig = 0;
        for (int i = 0; i < n; i++)
            if (l[i] > -INFINITY) keys[n_elig++] = ns_sample_key_logit(l[i], i);
        if (n_elig >= p->top_k) {
            qsort(keys, (size_t)n_elig, sizeof *keys, cmp_key_desc);
            k_min = keys[p->top_k - 1];
        }
    }
    const float lo = m == INFINITY ? INFINITY : ns_sample_floor(m, t);

    /* top_p: the prefix of the (e desc, id asc) order whose weight reaches the target */
    uint64_t p_min = 0;
    float e;
    if (p->top_p < 1.0f) {
        uint64_t W = 0;
        int nc = 0;
        for (int i = 0; i < n; i++) {
            if (!candidate(l, i, m, lo, inv_t, k_min, &e)) continue;
            W += ns_sample_w(e);
            keys[nc++] = ns_sample_key_e(e, i);
        }
        qsort(keys, (size_t)nc, sizeof *keys, cmp_key_desc);
        const uint64_t target = ns_sample_top_p_target(p->top_p, W);
        uint64_t cum = 0;
        for (int j = 0; j < nc; j++) {
            cum += ns_sample_w(NS_SR_INT_AS_FLOAT((int32_t)(keys[j] >> NS_SAMPLE_ID_BITS)));
            if (cum >= target) {
                p_min = keys[j];
                break;
            }
        }
    }

    /* min_p */
    uint64_t S = 0;
    for (int i = 0; i < n; i++) {
        if (!candidate(l, i, m, lo, inv_t, k_min, &e) || ns_sample_key_e(e, i) < p_min) continue;
        if (p->min_p > 0.0f && !(e >= p->min_p)) continue;
        S += w[i] = ns_sample_w(e);
    }
    return S;
}

void ns_cpu_sample_rows_ref(int32_t *ids, const float *logits, int n_rows, int n_vocab,
                            const struct ns_row_sampling *params, uint64_t *scratch) {
    for (int r = 0; r < n_rows; r++) {
        ids[r] = -1;
        if (n_vocab > NS_SAMPLE_MAX_VOCAB) continue;
        uint64_t *w = scratch, *keys = scratch + n_vocab;
        const uint64_t S = ns_cpu_sample_weights_ref(logits + (size_t)r * n_vocab, n_vocab, &params[r], w, keys);
        if (S == 0) continue; /* no logit above -inf */
        /* the draw, in id order */
        const uint64_t r_draw = ns_sample_draw_r(params[r].u, S);
        uint64_t cum = 0;
        for (int i = 0; i < n_vocab; i++) {
            cum += w[i];
            if (cum > r_draw) {
                ids[r] = i;
                break;
            }
        }
    }
}
