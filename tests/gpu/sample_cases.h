/* sample_cases.h: the rows that the CUDA row sampler is checked on, shared by the GPU
 * check (tests/gpu/parity.c) and its CPU emulation (tests/gpu/emu_sample_rows.cpp), and
 * the judges of a token sampled on logits a little off the reference's
 * (ns_sample_draw_distance, ns_sample_near_distance; parity.c and tests/cudamock). C and
 * C++. Rows of n logits mixing greedy and sampled ones, every cut, ties, NaN, -inf, +inf,
 * rows with nothing finite, extreme temperatures, and draws that land exactly on the
 * boundary between two tokens (the rule picks the token whose running sum first exceeds
 * r, so r equal to a running sum belongs to the next token). */
#ifndef NS_TEST_SAMPLE_CASES_H
#define NS_TEST_SAMPLE_CASES_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sample_rule.h"
#ifdef __cplusplus
extern "C" {
#endif
#include "ops.h"
#ifdef __cplusplus
}
#endif

#define NS_SAMPLE_CASE_ROWS 48

/* Fills x (NS_SAMPLE_CASE_ROWS, n) and p (NS_SAMPLE_CASE_ROWS); *rng is any 64-bit state. */
static inline void ns_sample_cases(uint64_t *rng, int n, float *x, ns_row_sampling *p) {
    static const float temps[] = {0.0f, 0.6f, 1.0f, 1.7f, 1e-30f, 1e35f};
    static const float topp[] = {1.0f, 0.9f, 1.0f, 0.5f, 0.01f, 0.999f};
    const int topk[] = {0, 0, 1, 40, n - 1, n + 5, 0, 2};
    for (int i = 0; i < NS_SAMPLE_CASE_ROWS; i++) {
        float *row = x + (size_t)i * (size_t)n;
        const float scale = 1.0f + (float)(i % 5) * 2.0f;
        for (int j = 0; j < n; j++) {
            *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
            row[j] = scale * (float)((double)(*rng >> 11) * 0x1.0p-53 * 2.0 - 1.0);
        }
        if (i % 7 == 3) /* coarse levels: ties everywhere */
            for (int j = 0; j < n; j++) row[j] = roundf(row[j] * 2.0f) * 0.5f;
        if (i % 9 == 4 && n > 3) row[n / 2] = NAN, row[1] = -INFINITY, row[n - 1] = NAN;
        if (i == 10 && n > 2) row[0] = INFINITY, row[n - 2] = INFINITY;
        if (i == 11)
            for (int j = 0; j < n; j++) row[j] = (j & 1) ? NAN : -INFINITY; /* nothing finite */
        *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (ns_row_sampling){temps[i % 6], topk[(i / 2) % 8], topp[(i / 3) % 6], i % 4 == 1 ? 0.05f : 0.0f,
                                 (double)(*rng >> 11) * 0x1.0p-53};
        if (i == 12) p[i].u = 0.0;
        if (i == 13) p[i].u = 0x1.fffffffffffffp-1; /* the largest double below 1 */
        if (i >= 32 && n >= 8) {
            /* exact boundaries: 8 equal tokens first (the rest far below, cut by min_p), so
             * that every weight is 2^44 and u = k/8 gives r = k * 2^44, which is token k's */
            for (int j = 0; j < n; j++) row[j] = j < 8 ? 1.0f : -30.0f;
            p[i] = (ns_row_sampling){1.0f, 0, 1.0f, 0.5f, (double)(i - 32) / 8.0};
            if (i >= 40) { /* u = 0 where token 0 is cut: the first kept token */
                row[i - 40] = 2.0f;
                p[i] = (ns_row_sampling){1.0f, 1, 1.0f, 0.0f, 0.0};
            }
        }
    }
}

/* The token each row must give where the answer is known without the reference (-2:
 * only the reference knows). */
static inline int32_t ns_sample_case_expect(int i, int n) {
    if (i >= 32 && n >= 8) return i < 40 ? i - 32 : i - 40;
    if (i == 11) return -1;
    return -2;
}

/* How far, as a fraction of the total weight S, the draw u fell from the part of the
 * id-ordered weights w (n) that token c owns (0 inside it); INFINITY when c has no
 * weight (it was cut) or S is 0. For judging a token that differs from the rule's pick
 * on slightly different logits: a draw near a boundary may fall either side. */
static inline double ns_sample_draw_distance(const uint64_t *w, int n, uint64_t S, double u, int32_t c) {
    if (S == 0 || c < 0 || c >= n || w[c] == 0) return INFINITY;
    const uint64_t r = ns_sample_draw_r(u, S);
    uint64_t lo = 0;
    for (int v = 0; v < c; v++) lo += w[v];
    const uint64_t hi = lo + w[c]; /* c owns [lo, hi) */
    return r < lo ? (double)(lo - r) / (double)S : r >= hi ? (double)(r - hi + 1) / (double)S : 0.0;
}

/* ns_sample_near_distance's scratch, and the least distance so far with what gave it. */
typedef struct ns_sample_near {
    int n;
    int32_t c;
    float *lp;      /* (n) the row an alternative is made in */
    uint64_t *w;    /* (n) */
    uint64_t *keys; /* (n) the rule's scratch */
    uint64_t *ord;  /* (n) a cut's order */
    double best;
    const char *kind;
} ns_sample_near;

static inline int ns_sample_near_cmp_desc(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static inline int32_t ns_sample_near_key_id(uint64_t key) {
    return (int32_t)(NS_SAMPLE_ID_MASK - (key & NS_SAMPLE_ID_MASK));
}

/* c's distance on row l by the rule, kept in s when it is the least so far. */
static inline void ns_sample_near_try(ns_sample_near *s, const float *l, const ns_row_sampling *p, const char *kind) {
    const uint64_t S = ns_cpu_sample_weights_ref(l, s->n, p, s->w, s->keys);
    const double d = ns_sample_draw_distance(s->w, s->n, S, p->u, s->c);
    if (d < s->best) s->best = d, s->kind = kind;
}

/* s->lp = l with the logits of a (before b in a cut's order) and b exchanged, so that b
 * takes a's place. Where that leaves a first (equal logits, or e equal after rounding,
 * and a has the lower id), b goes up by ulps until it is first. by_e: top_p's order (e
 * desc, id asc) with the row's m and 1/T; else top_k's (logit desc, id asc). */
static inline void ns_sample_near_exchange(ns_sample_near *s, const float *l, int32_t a, int32_t b, int by_e, float m,
                                           float inv_t) {
    memcpy(s->lp, l, sizeof(float) * (size_t)s->n);
    s->lp[a] = l[b];
    s->lp[b] = l[a];
    for (int step = 0; step < 64; step++) {
        const float ma = s->lp[b] > m ? s->lp[b] : m; /* b raised past the largest logit is the largest */
        const uint64_t ka = by_e ? ns_sample_key_e(ns_sample_e(s->lp[a], ma, inv_t), a)
                                 : ns_sample_key_logit(s->lp[a], a);
        const uint64_t kb = by_e ? ns_sample_key_e(ns_sample_e(s->lp[b], ma, inv_t), b)
                                 : ns_sample_key_logit(s->lp[b], b);
        if (kb > ka) break;
        s->lp[b] = nextafterf(s->lp[b], INFINITY);
    }
}

/* s->lp = l with token i moved from its side of min_p's threshold (e = min_p, near the
 * logit l_th) just across it: ulp by ulp from l_th. Returns 0 where it did not cross.
 * The row's largest logit m stays where it is. */
static inline int ns_sample_near_cross_min_p(ns_sample_near *s, const float *l, int32_t i, float l_th, float min_p,
                                             float m, float inv_t) {
    if (!(l[i] < m)) return 0; /* the largest logit has e = 1: min_p never cuts it */
    const int is_kept = ns_sample_e(l[i], m, inv_t) >= min_p;
    float v = is_kept ? fminf(l[i], l_th) : fmaxf(l[i], l_th);
    for (int step = 0; step < 1024 && (ns_sample_e(v, m, inv_t) >= min_p) == is_kept; step++)
        v = nextafterf(v, is_kept ? -INFINITY : INFINITY);
    if ((ns_sample_e(v, m, inv_t) >= min_p) == is_kept || !(v < m)) return 0;
    memcpy(s->lp, l, sizeof(float) * (size_t)s->n);
    s->lp[i] = v;
    return 1;
}

/* The least of ns_sample_draw_distance for token c and draw p->u, by the rule
 * (ns_cpu_sample_weights_ref) on the logits l (n), and on logits a near-tie at a cut away
 * from l; *kind (when not NULL) names what gave it: "draw" (l itself), "top_k tie",
 * "top_p tie", "top_p target" or "min_p edge". INFINITY as ns_sample_draw_distance, and
 * when out of memory (test code: it mallocs its scratch).
 *
 * Why: a token sampled on logits that differ from l by a little (the CUDA sampler in
 * precise mode: within ~1e-5 of the CPU's) may differ from the rule's pick on l for two
 * reasons. The draw fell near a boundary (what ns_sample_draw_distance measures); or two
 * tokens nearly tie at a cut, and the other one was kept: every boundary between them in
 * id order then moves by about one token's weight, which may be far more than 1e-3 of S.
 * The second is accepted here, for one cut at a time, on these alternatives, each
 * moving one or two logits by at most about delta (how far a logit of the sampled row may
 * be from l, with a margin: parity.c gives 1e-4 for logits within ~1e-5):
 *  - top_k: the k-th and (k+1)-th eligible tokens in top_k's order (logit desc, id asc),
 *    when their logits are within delta, exchanged;
 *  - top_p: the last kept and the first cut candidate in top_p's order (e desc, id asc),
 *    when within delta, exchanged; and top_p's target moved by a relative 2e-5 either
 *    way, since W, a sum over every candidate, is only as exact as the logits (1e-5 in
 *    each moves W by about 1e-5 / T);
 *  - min_p: the kept token with the least e and the cut one with the largest e, when
 *    within delta of the threshold's logit m + T ln(min_p), each moved just across it.
 * Not the floor m - 80 T: weights there are 0 (e^-80 2^44 < 1), so moving a token across
 * it changes no weight. Greedy rows, and rows whose largest logit is +inf: l only. At most
 * 9 runs of the rule on the row (it sorts), none where the plain distance is 0. */
static inline double ns_sample_near_distance(const float *l, int n, const ns_row_sampling *p, int32_t c, float delta,
                                             const char **kind) {
    const size_t nbytes = sizeof(uint64_t) * (size_t)n;
    ns_sample_near s = {n, c, (float *)malloc(sizeof(float) * (size_t)n), (uint64_t *)malloc(nbytes),
                        (uint64_t *)malloc(nbytes), (uint64_t *)malloc(nbytes), INFINITY, "draw"};
    if (s.lp && s.w && s.keys && s.ord) ns_sample_near_try(&s, l, p, "draw");
    float m = -INFINITY, t, inv_t;
    for (int i = 0; i < n; i++)
        if (l[i] > m) m = l[i];
    const int is_sampled = ns_sample_temperature(p->temperature, &t, &inv_t) && isfinite(m);
    ns_row_sampling q;

    if (s.best > 0.0 && s.lp && is_sampled && p->top_k > 0 && p->top_k < n) {
        int n_elig = 0;
        for (int i = 0; i < n; i++)
            if (l[i] > -INFINITY) s.ord[n_elig++] = ns_sample_key_logit(l[i], i);
        if (n_elig > p->top_k) {
            qsort(s.ord, (size_t)n_elig, sizeof *s.ord, ns_sample_near_cmp_desc);
            const int32_t a = ns_sample_near_key_id(s.ord[p->top_k - 1]), b = ns_sample_near_key_id(s.ord[p->top_k]);
            if (l[a] - l[b] <= delta) {
                ns_sample_near_exchange(&s, l, a, b, 0, m, inv_t);
                ns_sample_near_try(&s, s.lp, p, "top_k tie");
            }
        }
    }

    if (s.best > 0.0 && s.lp && is_sampled && p->top_p < 1.0f) {
        /* the candidates (top_k and the floor applied) and W, then top_p's cut among them */
        q = *p;
        q.top_p = 1.0f, q.min_p = 0.0f;
        const uint64_t W = ns_cpu_sample_weights_ref(l, n, &q, s.w, s.keys);
        int n_cand = 0;
        for (int i = 0; i < n; i++)
            if (s.w[i] > 0) s.ord[n_cand++] = ns_sample_key_e(ns_sample_e(l[i], m, inv_t), i);
        qsort(s.ord, (size_t)n_cand, sizeof *s.ord, ns_sample_near_cmp_desc);
        const uint64_t target = ns_sample_top_p_target(p->top_p, W);
        uint64_t cum = 0;
        int j = 0;
        while (j < n_cand && (cum += s.w[ns_sample_near_key_id(s.ord[j])]) < target) j++;
        if (j + 1 < n_cand) {
            const int32_t a = ns_sample_near_key_id(s.ord[j]), b = ns_sample_near_key_id(s.ord[j + 1]);
            if (fabsf(l[a] - l[b]) <= delta) {
                ns_sample_near_exchange(&s, l, a, b, 1, m, inv_t);
                ns_sample_near_try(&s, s.lp, p, "top_p tie");
            }
        }
        for (int sign = -1; sign <= 1; sign += 2) {
            q = *p;
            q.top_p = (float)((double)p->top_p * (1.0 + sign * 2e-5));
            if (!(q.top_p < 1.0f)) q.top_p = nextafterf(1.0f, 0.0f);
            ns_sample_near_try(&s, l, &q, "top_p target");
        }
    }

    if (s.best > 0.0 && s.lp && is_sampled && p->min_p > 0.0f) {
        /* the tokens kept before min_p: the nearest to its threshold on either side */
        q = *p;
        q.min_p = 0.0f;
        ns_cpu_sample_weights_ref(l, n, &q, s.w, s.keys);
        int32_t i_in = -1, i_out = -1;
        float e_in = INFINITY, e_out = -1.0f;
        for (int i = 0; i < n; i++) {
            if (s.w[i] == 0) continue;
            const float e = ns_sample_e(l[i], m, inv_t);
            if (e >= p->min_p && e < e_in) e_in = e, i_in = i;
            if (e < p->min_p && e > e_out) e_out = e, i_out = i;
        }
        const float l_th = m + t * logf(p->min_p);
        const int32_t edge[2] = {i_in, i_out};
        for (int k = 0; k < 2; k++)
            if (edge[k] >= 0 && fabsf(l[edge[k]] - l_th) <= delta &&
                ns_sample_near_cross_min_p(&s, l, edge[k], l_th, p->min_p, m, inv_t))
                ns_sample_near_try(&s, s.lp, p, "min_p edge");
    }

    free(s.lp);
    free(s.w);
    free(s.keys);
    free(s.ord);
    if (kind) *kind = s.kind;
    return s.best;
}

#endif
