/* test_sampler.c: sampling parameters, validation, greedy/temperature/top_k/top_p/min_p,
 * penalties, logprobs, stop strings. References here are written independently of
 * engine/sampler.c (full sorts in double precision), and every check on a distribution
 * uses a fixed seed, so the run is deterministic. */
#include "../test.h"

#include <stdlib.h>

#include "common.h"
#include "ops.h"
#include "sample_rule.h"
#include "sampler.h"

/* ---- helpers ----------------------------------------------------------------------- */

static ns_sampler *make(const ns_sampling *p, int32_t n_vocab) {
    ns_error err, *errp = &err; /* a pointer variable: `&err` in the macro trips -Waddress */
    ns_error_clear(&err);
    CHECK_STATUS_OK(ns_sampling_validate(p, n_vocab, &err), errp);
    ns_sampler *s = ns_sampler_create(p, n_vocab);
    CHECK(s != NULL);
    return s;
}

/* Draws n_draws tokens from fixed logits (copied each time), counts them. */
static void draw_counts(ns_sampler *s, const float *logits, int32_t n_vocab, int n_draws,
                        long *counts, float *scratch) {
    for (int32_t i = 0; i < n_vocab; i++) counts[i] = 0;
    for (int d = 0; d < n_draws; d++) {
        memcpy(scratch, logits, (size_t)n_vocab * sizeof *scratch);
        int32_t t = ns_sampler_sample(s, scratch, NULL, NULL);
        CHECK_MSG(t >= 0 && t < n_vocab, "token %d out of range", (int)t);
        if (t >= 0 && t < n_vocab) counts[t]++;
    }
}

/* Softmax in double at temperature t over the tokens in keep (or all when keep is NULL). */
static void ref_softmax(const float *logits, int32_t n, double t, const int *keep, double *p) {
    double m = -INFINITY;
    for (int32_t i = 0; i < n; i++)
        if ((!keep || keep[i]) && logits[i] > m) m = logits[i];
    double z = 0;
    for (int32_t i = 0; i < n; i++) {
        p[i] = (!keep || keep[i]) ? exp(((double)logits[i] - m) / t) : 0.0;
        z += p[i];
    }
    for (int32_t i = 0; i < n; i++) p[i] /= z;
}

/* Counts vs expected probabilities: every token within 4.5 sigma of n*p (and tokens with
 * p = 0 never drawn). */
static void check_counts(const long *counts, const double *p, int32_t n, long n_draws) {
    for (int32_t i = 0; i < n; i++) {
        double expct = (double)n_draws * p[i];
        double sigma = sqrt((double)n_draws * p[i] * (1.0 - p[i]));
        if (p[i] == 0.0) {
            CHECK_MSG(counts[i] == 0, "token %d has p = 0 but was drawn %ld times", (int)i,
                      counts[i]);
        } else {
            CHECK_MSG(fabs((double)counts[i] - expct) <= 4.5 * sigma + 1.0,
                      "token %d: drawn %ld times, expected %.1f (sigma %.1f)", (int)i,
                      counts[i], expct, sigma);
        }
    }
}

typedef struct ref_item {
    double p;
    int id;
} ref_item;

static int ref_cmp(const void *a, const void *b) {
    const ref_item *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

/* Reference pipeline with full sorts: top_k -> softmax(T) -> top_p -> min_p.
 * Writes the final renormalised probabilities to p (0 for dropped tokens). */
static void ref_pipeline(const float *logits, int32_t n, int top_k, double t, double top_p,
                         double min_p, double *p) {
    int *keep = calloc((size_t)n, sizeof *keep);
    ref_item *it = calloc((size_t)n, sizeof *it);
    for (int32_t i = 0; i < n; i++) it[i] = (ref_item){logits[i], (int)i};
    qsort(it, (size_t)n, sizeof *it, ref_cmp);
    int32_t k = (top_k > 0 && top_k < n) ? top_k : n;
    for (int32_t j = 0; j < k; j++) keep[it[j].id] = 1;
    ref_softmax(logits, n, t, keep, p);
    for (int32_t i = 0; i < n; i++) it[i] = (ref_item){p[i], (int)i};
    qsort(it, (size_t)n, sizeof *it, ref_cmp);
    double pmax = it[0].p, cum = 0;
    for (int32_t j = 0; j < n; j++) {
        int id = it[j].id;
        bool in_p = top_p >= 1.0 || cum < top_p;
        cum += it[j].p;
        if (!in_p || it[j].p < min_p * pmax) keep[id] = 0;
    }
    ref_softmax(logits, n, t, keep, p);
    free(it);
    free(keep);
}

/* ---- validation -------------------------------------------------------------------- */

NS_TEST(test_sampler_default_is_valid) {
    ns_sampling s;
    ns_error err, *errp = &err;
    ns_error_clear(&err);
    ns_sampling_default(&s);
    CHECK_STATUS_OK(ns_sampling_validate(&s, 100, &err), errp);
    CHECK(s.temperature == 0.0f);
    CHECK_EQ_INT(s.max_tokens, 16);
    CHECK(s.top_p == 1.0f);
    CHECK(s.repeat_penalty == 1.0f);
    /* every field at a legal edge */
    s.temperature = 2.0f;
    s.top_k = 100000;
    s.top_p = 1.0f;
    s.min_p = 0.0f;
    s.repeat_penalty = 0.5f;
    s.repeat_last_n = 0;
    s.presence_penalty = -2.0f;
    s.frequency_penalty = 2.0f;
    s.max_tokens = 1;
    s.n_logprobs = NS_MAX_LOGPROBS;
    s.n_stop = NS_MAX_STOP;
    for (int i = 0; i < NS_MAX_STOP; i++) {
        memset(s.stop[i], 'x', NS_MAX_STOP_LEN - 1);
        s.stop[i][NS_MAX_STOP_LEN - 1] = '\0';
    }
    s.n_stop_tokens = 2;
    s.stop_tokens[0] = 0;
    s.stop_tokens[1] = 99;
    CHECK_STATUS_OK(ns_sampling_validate(&s, 100, &err), errp);
}

/* Applies stmt to a default ns_sampling (named s_), validates with n_vocab 100 and checks
 * NS_ERR_INVALID with a message containing each of the given substrings. */
#define CHECK_REJECTED(stmt, sub1, sub2)                                                 \
    do {                                                                                 \
        ns_sampling s_;                                                                  \
        ns_sampling_default(&s_);                                                        \
        stmt;                                                                            \
        ns_error e_;                                                                     \
        ns_error_clear(&e_);                                                             \
        ns_status st_ = ns_sampling_validate(&s_, 100, &e_);                             \
        CHECK_MSG(st_ == NS_ERR_INVALID, "%s: status %d, want NS_ERR_INVALID", #stmt,    \
                  (int)st_);                                                             \
        CHECK_MSG(strstr(e_.msg, sub1) != NULL, "%s: message '%s' lacks '%s'", #stmt,    \
                  e_.msg, sub1);                                                         \
        CHECK_MSG(strstr(e_.msg, sub2) != NULL, "%s: message '%s' lacks '%s'", #stmt,    \
                  e_.msg, sub2);                                                         \
    } while (0)

NS_TEST(test_sampler_validate_rejects_each_field) {
    CHECK_REJECTED(s_.temperature = -1.0f, "temperature", "-1");
    CHECK_REJECTED(s_.temperature = NAN, "temperature", "nan");
    CHECK_REJECTED(s_.temperature = INFINITY, "temperature", "inf");
    CHECK_REJECTED(s_.top_p = 0.0f, "top_p", "(0, 1]");
    CHECK_REJECTED(s_.top_p = 1.5f, "top_p", "1.5");
    CHECK_REJECTED(s_.top_p = NAN, "top_p", "nan");
    CHECK_REJECTED(s_.min_p = 1.0f, "min_p", "[0, 1)");
    CHECK_REJECTED(s_.min_p = -0.1f, "min_p", "-0.1");
    CHECK_REJECTED(s_.top_k = -1, "top_k", "-1");
    CHECK_REJECTED(s_.max_tokens = 0, "max_tokens", "= 0");
    CHECK_REJECTED(s_.n_logprobs = 21, "n_logprobs", "21");
    CHECK_REJECTED(s_.n_logprobs = -2, "n_logprobs", "-2");
    CHECK_REJECTED(s_.repeat_penalty = 0.0f, "repeat_penalty", "= 0");
    CHECK_REJECTED(s_.repeat_penalty = NAN, "repeat_penalty", "nan");
    CHECK_REJECTED(s_.repeat_last_n = -1, "repeat_last_n", "-1");
    CHECK_REJECTED(s_.presence_penalty = 2.5f, "presence_penalty", "[-2, 2]");
    CHECK_REJECTED(s_.presence_penalty = NAN, "presence_penalty", "nan");
    CHECK_REJECTED(s_.frequency_penalty = -3.0f, "frequency_penalty", "-3");
    CHECK_REJECTED(s_.n_stop = 9, "n_stop", "9");
    CHECK_REJECTED(s_.n_stop_tokens = -1, "n_stop_tokens", "-1");
    CHECK_REJECTED((s_.n_stop_tokens = 1, s_.stop_tokens[0] = 100), "stop_tokens[0]", "100");
    CHECK_REJECTED((s_.n_stop_tokens = 2, s_.stop_tokens[1] = -5), "stop_tokens[1]", "-5");
    CHECK_REJECTED((s_.n_stop = 1, s_.stop[0][0] = '\0'), "stop[0]", "empty");
    CHECK_REJECTED((s_.n_stop = 2, strcpy(s_.stop[0], "a"),
                    memset(s_.stop[1], 'x', NS_MAX_STOP_LEN)),
                   "stop[1]", "NUL-terminated");

    /* the documented example, exactly */
    ns_sampling s;
    ns_error err;
    ns_sampling_default(&s);
    s.top_p = 1.5f;
    CHECK_EQ_INT(ns_sampling_validate(&s, 100, &err), NS_ERR_INVALID);
    CHECK_MSG(strcmp(err.msg, "top_p = 1.5 is out of range (0, 1]") == 0, "msg '%s'", err.msg);
}

/* ---- greedy ------------------------------------------------------------------------ */

NS_TEST(test_sampler_greedy_argmax_ties_nan) {
    ns_sampling p;
    ns_sampling_default(&p);
    ns_sampler *s = make(&p, 6);
    if (!s) return;
    float a[6] = {0.5f, 2.0f, -1.0f, 1.5f, 0.0f, -3.0f};
    CHECK_EQ_INT(ns_sampler_sample(s, a, NULL, NULL), 1);
    float b[6] = {0.5f, 2.0f, NAN, 2.0f, 1.0f, 2.0f}; /* ties: lowest id */
    CHECK_EQ_INT(ns_sampler_sample(s, b, NULL, NULL), 1);
    float c[6] = {NAN, NAN, 1.0f, NAN, 3.0f, NAN}; /* NaN never chosen */
    CHECK_EQ_INT(ns_sampler_sample(s, c, NULL, NULL), 4);
    float d[6] = {NAN, -INFINITY, -INFINITY, -1e30f, NAN, NAN};
    CHECK_EQ_INT(ns_sampler_sample(s, d, NULL, NULL), 3);
    float e[6] = {-2.0f, INFINITY, 1.0f, INFINITY, 0.0f, 0.0f};
    CHECK_EQ_INT(ns_sampler_sample(s, e, NULL, NULL), 1);
    /* nothing above -inf: no token (documented in sampler.c) */
    float f[6] = {NAN, NAN, -INFINITY, NAN, NAN, NAN};
    CHECK_EQ_INT(ns_sampler_sample(s, f, NULL, NULL), -1);
    ns_sampler_free(s);
    ns_sampler_free(NULL);
}

NS_TEST(test_sampler_nan_never_drawn) {
    ns_sampling p;
    ns_sampling_default(&p);
    p.temperature = 1.0f;
    p.seed = 7;
    ns_sampler *s = make(&p, 5);
    if (!s) return;
    const float logits[5] = {NAN, 0.0f, NAN, 0.0f, -INFINITY};
    float scratch[5];
    long counts[5];
    draw_counts(s, logits, 5, 4000, counts, scratch);
    CHECK_EQ_INT(counts[0], 0);
    CHECK_EQ_INT(counts[2], 0);
    CHECK_EQ_INT(counts[4], 0);
    CHECK(counts[1] > 1700 && counts[3] > 1700);
    ns_sampler_free(s);
}

/* ---- random streams ---------------------------------------------------------------- */

static void gen_sequence(uint64_t seed, int32_t *out, int n) {
    enum { V = 100 };
    ns_sampling p;
    ns_sampling_default(&p);
    p.temperature = 1.0f;
    p.top_p = 0.95f;
    p.seed = seed;
    p.max_tokens = n;
    ns_sampler *s = make(&p, V);
    if (!s) return;
    ns_test_rng rng = {12345}; /* the same logits for every seed */
    float logits[V];
    for (int t = 0; t < n; t++) {
        for (int i = 0; i < V; i++) logits[i] = 2.0f * ns_test_rng_f32(&rng);
        out[t] = ns_sampler_sample(s, logits, NULL, NULL);
        ns_sampler_accept(s, out[t]);
    }
    ns_sampler_free(s);
}

NS_TEST(test_sampler_same_seed_same_sequence) {
    int32_t a[200], b[200], c[200];
    gen_sequence(42, a, 200);
    gen_sequence(42, b, 200);
    gen_sequence(43, c, 200);
    CHECK(memcmp(a, b, sizeof a) == 0);
    int n_diff = 0;
    for (int i = 0; i < 200; i++) n_diff += a[i] != c[i];
    CHECK_MSG(n_diff > 100, "seeds 42 and 43 differ at only %d of 200 positions", n_diff);
}

/* ---- distributions ----------------------------------------------------------------- */

NS_TEST(test_sampler_distribution_matches_softmax) {
    const float logits[5] = {1.0f, 0.5f, 0.0f, -0.5f, -2.0f};
    const float temps[2] = {1.0f, 0.5f};
    for (int it = 0; it < 2; it++) {
        ns_sampling p;
        ns_sampling_default(&p);
        p.temperature = temps[it];
        p.seed = 1000 + (uint64_t)it;
        ns_sampler *s = make(&p, 5);
        if (!s) return;
        enum { N = 200000 };
        long counts[5];
        float scratch[5];
        double ref[5];
        draw_counts(s, logits, 5, N, counts, scratch);
        ref_softmax(logits, 5, temps[it], NULL, ref);
        check_counts(counts, ref, 5, N);
        ns_sampler_free(s);
    }
}

NS_TEST(test_sampler_top_k1_is_greedy) {
    enum { V = 1000 };
    ns_sampling p;
    ns_sampling_default(&p);
    p.temperature = 1.5f;
    p.top_k = 1;
    p.seed = 3;
    ns_sampler *s = make(&p, V);
    if (!s) return;
    ns_test_rng rng = {99};
    static float logits[V];
    for (int trial = 0; trial < 50; trial++) {
        for (int i = 0; i < V; i++) logits[i] = 3.0f * ns_test_rng_f32(&rng);
        if (trial % 5 == 0) logits[500] = logits[200] = 10.0f; /* a tie: lowest id wins */
        int32_t want = 0;
        for (int i = 1; i < V; i++)
            if (logits[i] > logits[want]) want = i;
        CHECK_EQ_INT(ns_sampler_sample(s, logits, NULL, NULL), want);
    }
    ns_sampler_free(s);
}

NS_TEST(test_sampler_top_k_set) {
    const float logits[6] = {0.0f, 2.0f, 1.0f, 1.9f, -1.0f, 1.9f};
    ns_sampling p;
    ns_sampling_default(&p);
    p.temperature = 1.0f;
    p.top_k = 3; /* 1, 3, 5 (3 and 5 tie at 1.9 and both make it) */
    p.seed = 11;
    ns_sampler *s = make(&p, 6);
    if (!s) return;
    long counts[6];
    float scratch[6];
    double ref[6];
    draw_counts(s, logits, 6, 30000, counts, scratch);
    ref_pipeline(logits, 6, 3, 1.0, 1.0, 0.0, ref);
    CHECK(ref[2] == 0.0 && ref[1] > 0 && ref[3] > 0 && ref[5] > 0);
    check_counts(counts, ref, 6, 30000);
    ns_sampler_free(s);

    /* ties at the cut: top_k 2 keeps 1 and the lower id of the tie (3) */
    p.top_k = 2;
    s = make(&p, 6);
    if (!s) return;
    draw_counts(s, logits, 6, 3000, counts, scratch);
    CHECK(counts[1] > 0 && counts[3] > 0);
    CHECK_EQ_INT(counts[5], 0);
    ns_sampler_free(s);
}

NS_TEST(test_sampler_top_p_smallest_set) {
    /* probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1 */
    const float logits[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    const float top_ps[3] = {0.75f, 0.85f, 0.99f};
    const int n_allowed[3] = {2, 3, 4};
    for (int it = 0; it < 3; it++) {
        ns_sampling p;
        ns_sampling_default(&p);
        p.temperature = 1.0f;
        p.top_p = top_ps[it];
        p.seed = 5;
        ns_sampler *s = make(&p, 4);
        if (!s) return;
        long counts[4];
        float scratch[4];
        draw_counts(s, logits, 4, 20000, counts, scratch);
        for (int i = 0; i < 4; i++) {
            if (i < n_allowed[it])
                CHECK_MSG(counts[i] > 0, "top_p %g: token %d never drawn", top_ps[it], i);
            else
                CHECK_MSG(counts[i] == 0, "top_p %g: token %d drawn %ld times", top_ps[it], i,
                          counts[i]);
        }
        /* renormalised: with top_p 0.75 the split is 0.5 : 0.3 */
        if (it == 0) {
            double ref[4] = {0.625, 0.375, 0, 0};
            check_counts(counts, ref, 4, 20000);
        }
        ns_sampler_free(s);
    }
}

/* A larger vocabulary, where the nucleus spans several probability buckets, against the
 * full-sort reference; and every filter together. */
NS_TEST(test_sampler_filters_match_reference) {
    enum { V = 1000, N = 60000 };
    static float logits[V], scratch[V];
    static long counts[V];
    static double ref[V];
    ns_test_rng rng = {2024};
    for (int i = 0; i < V; i++) logits[i] = 4.0f * ns_test_rng_f32(&rng);
    for (int i = 0; i < 10; i++) logits[i * 7] = 4.5f; /* ties across the cut */
    struct {
        int top_k;
        float t, top_p, min_p;
    } cases[5] = {
        {0, 0.7f, 0.5f, 0.0f},
        {0, 1.0f, 0.9f, 0.0f},
        {0, 0.8f, 1.0f, 0.3f},
        {50, 1.3f, 0.8f, 0.05f},
        {0, 0.05f, 0.95f, 0.0f}, /* logits 8 apart are e^160 apart: most are dropped */
    };
    for (int c = 0; c < 5; c++) {
        ns_sampling p;
        ns_sampling_default(&p);
        p.temperature = cases[c].t;
        p.top_k = cases[c].top_k;
        p.top_p = cases[c].top_p;
        p.min_p = cases[c].min_p;
        p.seed = 77 + (uint64_t)c;
        ns_sampler *s = make(&p, V);
        if (!s) return;
        draw_counts(s, logits, V, N, counts, scratch);
        ref_pipeline(logits, V, cases[c].top_k, cases[c].t, cases[c].top_p, cases[c].min_p,
                     ref);
        int n_kept = 0;
        for (int i = 0; i < V; i++) n_kept += ref[i] > 0;
        CHECK_MSG(n_kept > (c == 4 ? 1 : 5) && n_kept < V, "case %d keeps %d tokens", c, n_kept);
        check_counts(counts, ref, V, N);
        ns_sampler_free(s);
    }
}

/* A nucleus that reaches into the tokens with e < 2^-23 relative to the best (which the
 * sampler lumps together instead of histogramming): one strong token and 20000 weak ones
 * at 4 levels, with top_p just below 1. Exercises the lump and ties broken by id. */
NS_TEST(test_sampler_top_p_deep_tail) {
    enum { V = 20001, N = 60000 };
    static float logits[V], scratch[V];
    static long counts[V];
    static double ref[V];
    logits[0] = 0.0f;
    for (int i = 1; i < V; i++) logits[i] = -16.5f - 0.25f * (float)(i % 4); /* e ~ 7e-8 */
    ns_sampling p;
    ns_sampling_default(&p);
    p.temperature = 1.0f;
    p.top_p = 0.9995f;
    p.seed = 4;
    ns_sampler *s = make(&p, V);
    if (!s) return;
    draw_counts(s, logits, V, N, counts, scratch);
    ref_pipeline(logits, V, 0, 1.0, p.top_p, 0.0, ref);
    int n_kept = 0;
    long n_tail = 0;
    for (int i = 0; i < V; i++) n_kept += ref[i] > 0;
    for (int i = 1; i < V; i++) n_tail += counts[i];
    CHECK_MSG(n_kept > 1000 && n_kept < V - 1000, "reference keeps %d tokens", n_kept);
    CHECK_MSG(n_tail > 10, "only %ld draws from the tail", n_tail);
    for (int i = 0; i < V; i++)
        if (ref[i] == 0.0) CHECK_MSG(counts[i] == 0, "token %d outside the nucleus drawn", i);
    ns_sampler_free(s);
}

/* Temperature edges: +inf logits share the mass; a temperature so small that 1/T
 * overflows is greedy; a huge one is uniform; a small one drops far tokens. */
NS_TEST(test_sampler_temperature_edges) {
    long counts[4];
    float scratch[4];
    ns_sampling p;
    ns_sampling_default(&p);
    p.seed = 9;
    p.temperature = 1.0f;
    ns_sampler *s = make(&p, 4);
    if (!s) return;
    const float with_inf[4] = {0.0f, INFINITY, 1.0f, INFINITY};
    draw_counts(s, with_inf, 4, 4000, counts, scratch);
    CHECK(counts[0] == 0 && counts[2] == 0);
    CHECK(counts[1] > 1800 && counts[3] > 1800);
    ns_sampler_free(s);

    const float l[4] = {1.0f, 3.0f, 2.0f, 3.0f - 1e-6f};
    p.temperature = 1e-40f; /* denormal: 1/T = inf */
    s = make(&p, 4);
    if (!s) return;
    draw_counts(s, l, 4, 100, counts, scratch);
    CHECK_EQ_INT(counts[1], 100);
    ns_sampler_free(s);

    p.temperature = 1e-30f;
    s = make(&p, 4);
    if (!s) return;
    draw_counts(s, l, 4, 100, counts, scratch);
    CHECK_EQ_INT(counts[1], 100);
    ns_sampler_free(s);

    p.temperature = 1e35f;
    s = make(&p, 4);
    if (!s) return;
    draw_counts(s, l, 4, 40000, counts, scratch);
    const double uniform[4] = {0.25, 0.25, 0.25, 0.25};
    check_counts(counts, uniform, 4, 40000);
    ns_sampler_free(s);

    /* T = 0.01: logits 1 apart are e^100 apart, beyond the sampler's cut-off */
    p.temperature = 0.01f;
    s = make(&p, 4);
    if (!s) return;
    const float far[4] = {-1.0f, 0.0f, NAN, -1e30f};
    draw_counts(s, far, 4, 1000, counts, scratch);
    CHECK_EQ_INT(counts[1], 1000);
    ns_sampler_free(s);
}

NS_TEST(test_sampler_min_p_drops_below_threshold) {
    const float logits[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    const float min_ps[2] = {0.2f, 0.5f}; /* thresholds 0.1 and 0.25 */
    const int n_allowed[2] = {3, 2};
    for (int it = 0; it < 2; it++) {
        ns_sampling p;
        ns_sampling_default(&p);
        p.temperature = 1.0f;
        p.min_p = min_ps[it];
        p.seed = 8;
        ns_sampler *s = make(&p, 4);
        if (!s) return;
        long counts[4];
        float scratch[4];
        draw_counts(s, logits, 4, 20000, counts, scratch);
        for (int i = 0; i < 4; i++) {
            if (i < n_allowed[it])
                CHECK_MSG(counts[i] > 0, "min_p %g: token %d never drawn", min_ps[it], i);
            else
                CHECK_MSG(counts[i] == 0, "min_p %g: token %d drawn", min_ps[it], i);
        }
        ns_sampler_free(s);
    }
}

/* ---- penalties and logprobs -------------------------------------------------------- */

/* Reference log-softmax in double. */
static void ref_logsoftmax(const float *l, int n, double *lp) {
    double m = -INFINITY, z = 0;
    for (int i = 0; i < n; i++) m = l[i] > m ? l[i] : m;
    for (int i = 0; i < n; i++) z += exp((double)l[i] - m);
    for (int i = 0; i < n; i++) lp[i] = (double)l[i] - m - log(z);
}

NS_TEST(test_sampler_penalties_exact) {
    enum { V = 6 };
    ns_sampling p;
    ns_sampling_default(&p);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    p.n_logprobs = V;
    p.max_tokens = 100;
    ns_sampler *s = make(&p, V);
    if (!s) return;
    const int32_t seq[5] = {1, 2, 1, 3, 4}; /* window of 3: {1, 3, 4}; counts 1:2 2:1 3:1 4:1 */
    for (int i = 0; i < 5; i++) ns_sampler_accept(s, seq[i]);
    ns_sampler_accept(s, -1);  /* out of range: ignored */
    ns_sampler_accept(s, V);
    float logits[V] = {1.0f, 2.0f, 3.0f, -1.0f, 0.5f, 0.0f};
    const float want[V] = {
        1.0f,                       /* untouched */
        2.0f / 2 - (2 * 0.25f + 0.5f), /* in window, count 2 -> 0 */
        3.0f - (0.25f + 0.5f),      /* out of the window, count 1 -> 2.25 */
        -1.0f * 2 - (0.25f + 0.5f), /* in window, negative -> -2.75 */
        0.5f / 2 - (0.25f + 0.5f),  /* -> -0.5 */
        0.0f,
    };
    double ref[V];
    ref_logsoftmax(want, V, ref);
    ns_logprob chosen, top[V];
    int32_t t = ns_sampler_sample(s, logits, &chosen, top);
    CHECK_EQ_INT(t, 2);
    CHECK_EQ_INT(chosen.token, 2);
    CHECK_NEAR(chosen.logprob, ref[2], 1e-5);
    for (int j = 0; j < V; j++) {
        CHECK(top[j].token >= 0 && top[j].token < V);
        if (top[j].token >= 0 && top[j].token < V)
            CHECK_NEAR(top[j].logprob, ref[top[j].token], 1e-5);
    }
    /* order best first: 2 (2.25), 0 (1.0), 1 (0.0) and 5 (0.0) tie -> 1 first, 4, 3 */
    const int32_t order[V] = {2, 0, 1, 5, 4, 3};
    for (int j = 0; j < V; j++) CHECK_EQ_INT(top[j].token, order[j]);
    ns_sampler_free(s);

    /* the window slides: after 3 more tokens (5, 5, 5), 1/3/4 leave it */
    p.presence_penalty = 0;
    p.frequency_penalty = 0;
    s = make(&p, V);
    if (!s) return;
    for (int i = 0; i < 5; i++) ns_sampler_accept(s, seq[i]);
    for (int i = 0; i < 3; i++) ns_sampler_accept(s, 5);
    float l2[V] = {1.0f, 2.0f, 3.0f, -1.0f, 0.5f, 4.0f};
    const float want2[V] = {1.0f, 2.0f, 3.0f, -1.0f, 0.5f, 2.0f};
    ref_logsoftmax(want2, V, ref);
    CHECK_EQ_INT(ns_sampler_sample(s, l2, &chosen, top), 2);
    for (int j = 0; j < V; j++)
        if (top[j].token >= 0 && top[j].token < V)
            CHECK_NEAR(top[j].logprob, ref[top[j].token], 1e-5);
    ns_sampler_free(s);
}

NS_TEST(test_sampler_logprobs) {
    enum { V = 7 };
    ns_sampling p;
    ns_sampling_default(&p);
    p.temperature = 0.6f; /* logprobs are at temperature 1 whatever the sampling temperature */
    p.top_k = 3;
    p.n_logprobs = V;
    p.seed = 21;
    ns_sampler *s = make(&p, V);
    if (!s) return;
    ns_test_rng rng = {555};
    for (int trial = 0; trial < 20; trial++) {
        float logits[V];
        for (int i = 0; i < V; i++) logits[i] = 5.0f * ns_test_rng_f32(&rng);
        double ref[V];
        ref_logsoftmax(logits, V, ref);
        ns_logprob chosen, top[V];
        int32_t t = ns_sampler_sample(s, logits, &chosen, top);
        CHECK(t >= 0 && t < V);
        CHECK_EQ_INT(chosen.token, t);
        if (t >= 0 && t < V) CHECK_NEAR(chosen.logprob, ref[t], 1e-5);
        double sum = 0;
        for (int j = 0; j < V; j++) {
            sum += exp(top[j].logprob);
            if (j > 0) CHECK(top[j].logprob <= top[j - 1].logprob);
            if (top[j].token >= 0 && top[j].token < V)
                CHECK_NEAR(top[j].logprob, ref[top[j].token], 1e-5);
        }
        CHECK_NEAR(sum, 1.0, 1e-5);
    }
    ns_sampler_free(s);

    /* top 3 out of 1000, NaN excluded; a vocab smaller than n_logprobs pads with -1 */
    enum { W = 1000 };
    static float big[W];
    for (int i = 0; i < W; i++) big[i] = ns_test_rng_f32(&rng);
    big[10] = 5.0f;
    big[900] = 4.0f;
    big[20] = 4.0f;
    big[0] = NAN;
    p.temperature = 0.0f;
    p.top_k = 0;
    p.n_logprobs = 3;
    s = make(&p, W);
    if (!s) return;
    ns_logprob top3[3];
    CHECK_EQ_INT(ns_sampler_sample(s, big, NULL, top3), 10);
    CHECK_EQ_INT(top3[0].token, 10);
    CHECK_EQ_INT(top3[1].token, 20);
    CHECK_EQ_INT(top3[2].token, 900);
    CHECK_NEAR(top3[1].logprob - top3[0].logprob, -1.0, 1e-5);
    /* a token far below the rest still gets its exact logprob */
    ns_logprob lp_far;
    big[0] = -200.0f;
    big[10] = 300.0f; /* logprob ~0 */
    big[1] = 300.0f;
    CHECK_EQ_INT(ns_sampler_sample(s, big, &lp_far, top3), 1);
    CHECK_NEAR(lp_far.logprob, -log(2.0), 1e-5);
    CHECK_NEAR(top3[2].logprob, 4.0 - 300.0 - log(2.0), 1e-3);
    CHECK_EQ_INT(top3[2].token, 20);
    ns_sampler_free(s);

    p.n_logprobs = 5;
    s = make(&p, 3);
    if (!s) return;
    float small[3] = {0.0f, 1.0f, NAN};
    ns_logprob top5[5];
    CHECK_EQ_INT(ns_sampler_sample(s, small, NULL, top5), 1);
    CHECK_EQ_INT(top5[0].token, 1);
    CHECK_EQ_INT(top5[1].token, 0);
    CHECK_EQ_INT(top5[2].token, 2);
    CHECK(isinf(top5[2].logprob) && top5[2].logprob < 0);
    CHECK_EQ_INT(top5[3].token, -1);
    CHECK_EQ_INT(top5[4].token, -1);
    CHECK_NEAR(exp(top5[0].logprob) + exp(top5[1].logprob), 1.0, 1e-6);
    ns_sampler_free(s);
}

/* ---- stop strings ------------------------------------------------------------------ */

static int64_t stop_find(const char *const *stops, int n, const char *text, size_t *hold) {
    ns_sampling p;
    ns_sampling_default(&p);
    p.n_stop = n;
    for (int i = 0; i < n; i++) snprintf(p.stop[i], NS_MAX_STOP_LEN, "%s", stops[i]);
    return ns_stop_find(&p, text, strlen(text), hold);
}

NS_TEST(test_sampler_stop_find) {
    size_t hold = 99;
    const char *world[1] = {"world"};
    CHECK_EQ_INT(stop_find(world, 1, "world peace", &hold), 0);
    CHECK_EQ_INT(stop_find(world, 1, "Hello world!", &hold), 6);
    CHECK_EQ_INT(stop_find(world, 1, "Hello world", &hold), 6);
    CHECK_EQ_INT(hold, 0);
    CHECK_EQ_INT(stop_find(world, 1, "Hello wor", &hold), -1);
    CHECK_EQ_INT(hold, 3);
    CHECK_EQ_INT(stop_find(world, 1, "Hello w", &hold), -1);
    CHECK_EQ_INT(hold, 1);
    CHECK_EQ_INT(stop_find(world, 1, "abc", &hold), -1);
    CHECK_EQ_INT(hold, 0);
    CHECK_EQ_INT(stop_find(world, 1, "", &hold), -1);
    CHECK_EQ_INT(hold, 0);

    const char *two[2] = {"peace", "o w"};
    CHECK_EQ_INT(stop_find(two, 2, "Hello world peace", &hold), 4);
    const char *two_rev[2] = {"o w", "peace"};
    CHECK_EQ_INT(stop_find(two_rev, 2, "Hello world peace", &hold), 4);
    const char *nested[2] = {"world", "or"};
    CHECK_EQ_INT(stop_find(nested, 2, "Hello world", &hold), 6);

    const char *aab[1] = {"aab"};
    CHECK_EQ_INT(stop_find(aab, 1, "aaab", &hold), 1);
    CHECK_EQ_INT(stop_find(aab, 1, "xaa", &hold), -1);
    CHECK_EQ_INT(hold, 2);

    const char *hs[2] = {"xyz", "zz"};
    CHECK_EQ_INT(stop_find(hs, 2, "abz", &hold), -1);
    CHECK_EQ_INT(hold, 1);
    CHECK_EQ_INT(stop_find(hs, 2, "abxy", &hold), -1);
    CHECK_EQ_INT(hold, 2);

    /* len bounds the text; n_holdback may be NULL */
    ns_sampling p;
    ns_sampling_default(&p);
    p.n_stop = 1;
    strcpy(p.stop[0], "world");
    CHECK_EQ_INT(ns_stop_find(&p, "Hello world", 8, &hold), -1);
    CHECK_EQ_INT(hold, 2);
    CHECK_EQ_INT(ns_stop_find(&p, "Hello world", 11, NULL), 6);
    p.n_stop = 0;
    CHECK_EQ_INT(ns_stop_find(&p, "Hello world", 11, &hold), -1);
    CHECK_EQ_INT(hold, 0);
}

/* ---- speed (printed, not asserted) ------------------------------------------------- */

NS_TEST(test_sampler_speed) {
    enum { V = 49152, STEPS = 100, ROUNDS = 3 };
    float *logits = malloc(V * sizeof *logits);
    float *work = malloc(V * sizeof *work);
    CHECK(logits && work);
    if (!logits || !work) goto done;
    ns_test_rng rng = {31337};
    /* roughly LM-shaped: a broad bulk and a few strong candidates */
    for (int i = 0; i < V; i++)
        logits[i] = 2.0f * (ns_test_rng_f32(&rng) + ns_test_rng_f32(&rng) + ns_test_rng_f32(&rng));
    for (int i = 0; i < 20; i++) logits[(i * 2477) % V] = 12.0f + (float)i * 0.25f;

    struct {
        const char *name;
        float t, top_p;
        int top_k;
    } cfg[3] = {{"top_p=0.9 T=0.8", 0.8f, 0.9f, 0}, {"top_k=40 T=0.8", 0.8f, 1.0f, 40},
                {"greedy", 0.0f, 1.0f, 0}};
    for (int c = 0; c < 3; c++) {
        ns_sampling p;
        ns_sampling_default(&p);
        p.temperature = cfg[c].t;
        p.top_p = cfg[c].top_p;
        p.top_k = cfg[c].top_k;
        ns_sampler *s = make(&p, V);
        if (!s) goto done;
        double best = INFINITY; /* the best round: the least disturbed by other processes */
        for (int r = 0; r < ROUNDS; r++) {
            double t0 = ns_time_now();
            for (int i = 0; i < STEPS; i++) {
                memcpy(work, logits, V * sizeof *work);
                (void)ns_sampler_sample(s, work, NULL, NULL);
            }
            double us = (ns_time_now() - t0) / STEPS * 1e6;
            best = us < best ? us : best;
        }
        fprintf(stderr, "  sampler speed: n_vocab %d, %s: %.1f us/token (best of %d rounds)\n",
                V, cfg[c].name, best, ROUNDS);
        ns_sampler_free(s);
    }
done:
    free(work);
    free(logits);
}

/* ---- the row rule (kernels/cpu/sample_rule.h) and its reference ------------------------
 * ns_cpu_sample_rows_ref is what the CUDA row sampler must match token for token. Its
 * distribution (ns_cpu_sample_weights_ref: each token's weight w, the pick for draw u
 * being the token where the id-ordered running sum of w passes u * S) is checked against
 * the independent pipeline above; its draws by sweeping u over a grid, where token i gets
 * the grid points in its interval, N * w_i / S of them to within one. No randomness, no
 * statistical tolerance. */

/* Checks row weights against ref_pipeline: the same kept set, probabilities within 1e-6. */
static void check_weights(const char *what, const float *logits, int32_t n, ns_row_sampling p, uint64_t *scratch,
                          double *ref, int min_kept, int max_kept) {
    uint64_t *w = scratch, *keys = scratch + n;
    const uint64_t S = ns_cpu_sample_weights_ref(logits, n, &p, w, keys);
    ref_pipeline(logits, n, p.top_k, p.temperature, p.top_p, p.min_p, ref);
    CHECK_MSG(S > 0, "%s: no weight", what);
    int n_kept = 0, n_bad = 0, first_bad = -1;
    for (int32_t i = 0; i < n && S > 0; i++) {
        n_kept += ref[i] > 0;
        const bool bad = ref[i] == 0.0 ? w[i] != 0 : fabs((double)w[i] / (double)S - ref[i]) > 1e-6;
        if (bad && n_bad++ == 0) first_bad = (int)i;
    }
    CHECK_MSG(n_kept >= min_kept && n_kept <= max_kept, "%s: the reference keeps %d tokens", what, n_kept);
    CHECK_MSG(n_bad == 0, "%s: %d tokens off their reference probability, first %d: w/S %.8f vs %.8f", what, n_bad,
              first_bad, first_bad >= 0 ? (double)w[first_bad] / (double)S : 0.0, first_bad >= 0 ? ref[first_bad] : 0.0);
}

static int32_t row_pick(const float *logits, int32_t n, ns_row_sampling p, uint64_t *scratch) {
    int32_t id;
    ns_cpu_sample_rows_ref(&id, logits, 1, n, &p, scratch);
    return id;
}

/* counts[i] = number of u = (j + 0.5) / n_grid picking token i. */
static void row_grid_counts(const float *logits, int32_t n, ns_row_sampling p, int n_grid, long *counts,
                            uint64_t *scratch) {
    for (int32_t i = 0; i < n; i++) counts[i] = 0;
    for (int j = 0; j < n_grid; j++) {
        p.u = ((double)j + 0.5) / n_grid;
        int32_t t = row_pick(logits, n, p, scratch);
        CHECK_MSG(t >= 0 && t < n, "u = %g: token %d out of range", p.u, (int)t);
        if (t >= 0 && t < n) counts[t]++;
    }
}

NS_TEST(test_sample_rows_ref_matches_pipeline) {
    enum { V = 1000 };
    static float logits[V];
    static double ref[V];
    static uint64_t scratch[2 * V];
    static long counts[V];
    ns_test_rng rng = {2024};
    for (int i = 0; i < V; i++) logits[i] = 4.0f * ns_test_rng_f32(&rng);
    for (int i = 0; i < 10; i++) logits[i * 7] = 4.5f; /* ties across the cuts */
    struct {
        int top_k;
        float t, top_p, min_p;
    } cases[] = {
        {0, 1.0f, 1.0f, 0.0f},     {0, 0.7f, 0.5f, 0.0f},    {0, 1.0f, 0.9f, 0.0f},
        {0, 0.8f, 1.0f, 0.3f},     {50, 1.3f, 0.8f, 0.05f},  {5, 1.0f, 1.0f, 0.0f},
        {12, 2.0f, 1.0f, 0.0f},    {0, 0.05f, 0.95f, 0.0f},  {999, 1.0f, 0.99f, 0.01f},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ns_row_sampling p = {cases[c].t, cases[c].top_k, cases[c].top_p, cases[c].min_p, 0.0};
        char what[32];
        snprintf(what, sizeof what, "case %zu", c);
        check_weights(what, logits, V, p, scratch, ref, 5, V);
    }
    /* the draws of one case over a grid of u */
    enum { N = 20000 };
    ns_row_sampling p = {0.7f, 0, 0.5f, 0.0f, 0.0};
    row_grid_counts(logits, V, p, N, counts, scratch);
    ref_pipeline(logits, V, 0, p.temperature, p.top_p, 0.0, ref);
    for (int i = 0; i < V; i++)
        CHECK_MSG(fabs((double)counts[i] / N - ref[i]) <= 1.01 / N, "token %d picked %ld / %d, reference p = %.6f", i,
                  counts[i], N, ref[i]);
}

/* The draw walks the kept tokens in id order: the smallest u picks the lowest kept id,
 * the largest the highest; greedy rows and tiny temperatures take the argmax. */
NS_TEST(test_sample_rows_ref_order_and_greedy) {
    uint64_t scratch[16];
    const float l[8] = {1.0f, 3.0f, NAN, 3.0f, -INFINITY, 2.9f, -50.0f, 0.5f};
    ns_row_sampling p = {1.0f, 0, 1.0f, 0.0f, 0.0};
    CHECK_EQ_INT(row_pick(l, 8, p, scratch), 0);
    p.u = 0.999999999;
    CHECK_EQ_INT(row_pick(l, 8, p, scratch), 7);
    p.top_k = 3; /* keeps ids 1, 3 (ties, both), 5 */
    p.u = 0.0;
    CHECK_EQ_INT(row_pick(l, 8, p, scratch), 1);
    p.u = 0.999999999;
    CHECK_EQ_INT(row_pick(l, 8, p, scratch), 5);
    p.top_k = 1; /* the tie at 3.0 goes to the lowest id */
    CHECK_EQ_INT(row_pick(l, 8, p, scratch), 1);
    p = (ns_row_sampling){0.0f, 0, 1.0f, 0.0f, 0.7};
    CHECK_EQ_INT(row_pick(l, 8, p, scratch), 1);
    p.temperature = 1e-40f; /* 1/T overflows: greedy */
    CHECK_EQ_INT(row_pick(l, 8, p, scratch), 1);
    p.temperature = 0.01f; /* 80 T = 0.8: only 3.0, 3.0 and 2.9 are candidates */
    long n_low = 0;
    for (int j = 0; j < 1000; j++) {
        p.u = (j + 0.5) / 1000.0;
        int32_t t = row_pick(l, 8, p, scratch);
        CHECK_MSG(t == 1 || t == 3 || t == 5, "T = 0.01 picked %d", (int)t);
        n_low += t == 5;
    }
    CHECK_MSG(n_low <= 1, "2.9 is e^-10 below 3.0 at T = 0.01 but was picked %ld times in 1000", n_low);
}

/* Rows with nothing finite, +inf tokens, one-token vocabularies, several rows at once. */
NS_TEST(test_sample_rows_ref_edges) {
    uint64_t scratch[12];
    long counts[6];
    const float none[3] = {NAN, -INFINITY, NAN};
    ns_row_sampling p = {0.8f, 0, 0.9f, 0.1f, 0.5};
    CHECK_EQ_INT(row_pick(none, 3, p, scratch), -1);
    p.temperature = 0.0f;
    CHECK_EQ_INT(row_pick(none, 3, p, scratch), -1);
    /* +inf tokens share the mass equally; top_k keeps the lowest ids among them */
    const float inf[6] = {1.0f, INFINITY, NAN, INFINITY, INFINITY, 5.0f};
    p = (ns_row_sampling){1.0f, 0, 1.0f, 0.0f, 0.0};
    row_grid_counts(inf, 6, p, 3000, counts, scratch);
    CHECK(counts[1] == 1000 && counts[3] == 1000 && counts[4] == 1000);
    p.top_k = 2;
    row_grid_counts(inf, 6, p, 3000, counts, scratch);
    CHECK(counts[1] == 1500 && counts[3] == 1500 && counts[4] == 0);
    p.top_k = 0;
    p.top_p = 0.5f; /* 2 of the 3 equal tokens, the lowest ids */
    row_grid_counts(inf, 6, p, 3000, counts, scratch);
    CHECK(counts[1] == 1500 && counts[3] == 1500 && counts[4] == 0);
    const float one[1] = {-3.0f};
    p = (ns_row_sampling){5.0f, 1, 0.01f, 0.9f, 0.999};
    CHECK_EQ_INT(row_pick(one, 1, p, scratch), 0);
    float rows[2][6];
    memcpy(rows[0], inf, sizeof inf);
    memcpy(rows[1], inf, sizeof inf);
    rows[1][1] = rows[1][3] = rows[1][4] = 0.0f;
    ns_row_sampling ps[2] = {{1.0f, 0, 1.0f, 0.0f, 0.9}, {0.0f, 0, 1.0f, 0.0f, 0.9}};
    int32_t ids[2];
    ns_cpu_sample_rows_ref(ids, &rows[0][0], 2, 6, ps, scratch);
    CHECK_EQ_INT(ids[0], 4);
    CHECK_EQ_INT(ids[1], 5);
}

/* A large vocabulary with 33 logit levels: ties everywhere, a nucleus of thousands. */
NS_TEST(test_sample_rows_ref_large_vocab) {
    enum { V = 65536 };
    float *logits = malloc(V * sizeof *logits);
    double *ref = malloc(V * sizeof *ref);
    uint64_t *scratch = malloc(2 * V * sizeof *scratch);
    if (!logits || !ref || !scratch) goto done;
    ns_test_rng rng = {99};
    for (int i = 0; i < V; i++) logits[i] = (float)(int)(8.0f * ns_test_rng_f32(&rng)) * 0.5f;
    check_weights("top_k 30000, top_p 0.8, min_p 0.002", logits, V, (ns_row_sampling){1.1f, 30000, 0.8f, 0.002f, 0.0},
                  scratch, ref, 1000, 29999);
    check_weights("top_p 0.3", logits, V, (ns_row_sampling){0.6f, 0, 0.3f, 0.0f, 0.0}, scratch, ref, 100, 20000);
done:
    free(scratch);
    free(ref);
    free(logits);
}
