/* sampler.c: sampling parameters, their validation, and the per-request sampler.
 *
 * One step (see sampler.h for the order): penalties are applied in place to the caller's
 * logits; greedy is an argmax; otherwise the candidates are copied into the sampler's own
 * arrays (cut to top_k by a size-k min-heap), turned into unnormalised probabilities
 * e_i = exp((l_i - max) / T) (the best token has e = 1 exactly), cut by top_p, then by
 * min_p, and one is drawn with probability e_i / sum(e).
 *
 * Candidates: tokens with a logit above -inf, minus those more than 80*T below the
 * maximum (relative probability < e^-80: they could never be drawn in practice, and
 * dropping them keeps exp in range). NaN logits count as -inf: never chosen,
 * probability 0, logprob -inf. Tokens at +inf share all the mass equally. When no logit
 * is above -inf there is no token: ns_sampler_sample returns -1.
 *
 * top_p does not sort the vocabulary. One pass buckets the e_i by binary exponent
 * (bucket b holds [2^-b, 2^-(b-1)); everything below 2^-23 is one lump whose mass is the
 * total minus the rest). Every bucket before the one where the cumulative mass reaches p
 * is kept whole; only that boundary bucket goes through a heap, popped best first until
 * the mass is reached. The result is exactly the smallest prefix of the (probability
 * desc, id asc) order whose mass reaches p. Ties are broken by the lowest id everywhere
 * (greedy, top_k, top_p, logprobs), so a step is a function of (logits, params, seed,
 * accepted tokens) only.
 *
 * Speed: the passes over the vocabulary are written as blocks of LANES elements so that
 * GCC vectorises them at -O2 (exp is a branch-free polynomial, not libm's expf).
 * n_vocab 49152, top_p 0.9, T 0.8: about 55 us a step on one core with -march=native.
 *
 * Logprobs are the log-softmax of the penalised logits at temperature 1, before top_k,
 * top_p and min_p: what the model assigns, not what the truncated sampler would draw.
 *
 * Random numbers: xoshiro256** seeded through splitmix64 from params.seed, one generator
 * per sampler, one draw per non-greedy step.
 *
 * Memory: everything is allocated by ns_sampler_create (candidates: 8 bytes per vocab
 * entry; penalty counts: an open-addressing table sized for min(max_tokens, n_vocab)
 * distinct tokens; the repeat window: a ring of min(repeat_last_n, max_tokens) ids).
 * ns_sampler_sample and ns_sampler_accept do not allocate.
 * Thread-safety: a sampler belongs to one request; different samplers are independent
 * and may run on different threads.
 */
#include "sampler.h"
#include "sample_rule.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- parameters ------------------------------------------------------------------- */

void ns_sampling_default(ns_sampling *s) {
    memset(s, 0, sizeof *s);
    s->temperature = 0.0f; /* greedy */
    s->top_k = 0;
    s->top_p = 1.0f;
    s->min_p = 0.0f;
    s->repeat_penalty = 1.0f;
    s->repeat_last_n = 64;
    s->presence_penalty = 0.0f;
    s->frequency_penalty = 0.0f;
    s->seed = 0;
    s->max_tokens = 16;
    s->n_logprobs = -1;
    s->ignore_eos = false;
    s->n_stop = 0;
    s->n_stop_tokens = 0;
}

static ns_status bad_float(ns_error *err, const char *field, float v, const char *range) {
    return ns_error_set(err, NS_ERR_INVALID, "%s = %g is out of range %s", field, (double)v,
                        range);
}

static ns_status bad_int(ns_error *err, const char *field, long long v, long long lo,
                         long long hi) {
    return ns_error_set(err, NS_ERR_INVALID, "%s = %lld is out of range [%lld, %lld]", field, v,
                        lo, hi);
}

ns_status ns_sampling_validate(const ns_sampling *s, int32_t n_vocab, ns_error *err) {
    /* Comparisons are written so that NaN fails them: !(x in range). */
    if (n_vocab < 1)
        return ns_error_set(err, NS_ERR_INVALID, "n_vocab = %d is out of range [1, %d]",
                            (int)n_vocab, (int)INT32_MAX);
    if (!(s->temperature >= 0.0f && isfinite(s->temperature)))
        return bad_float(err, "temperature", s->temperature, "[0, inf) (0 = greedy)");
    if (s->top_k < 0) return bad_int(err, "top_k", s->top_k, 0, INT32_MAX);
    if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        return bad_float(err, "top_p", s->top_p, "(0, 1]");
    if (!(s->min_p >= 0.0f && s->min_p < 1.0f))
        return bad_float(err, "min_p", s->min_p, "[0, 1)");
    if (!(s->repeat_penalty > 0.0f && isfinite(s->repeat_penalty)))
        return bad_float(err, "repeat_penalty", s->repeat_penalty, "(0, inf) (1 = off)");
    if (s->repeat_last_n < 0) return bad_int(err, "repeat_last_n", s->repeat_last_n, 0, INT32_MAX);
    if (!(s->presence_penalty >= -2.0f && s->presence_penalty <= 2.0f))
        return bad_float(err, "presence_penalty", s->presence_penalty, "[-2, 2]");
    if (!(s->frequency_penalty >= -2.0f && s->frequency_penalty <= 2.0f))
        return bad_float(err, "frequency_penalty", s->frequency_penalty, "[-2, 2]");
    if (s->max_tokens < 1) return bad_int(err, "max_tokens", s->max_tokens, 1, INT32_MAX);
    if (s->n_logprobs < -1 || s->n_logprobs > NS_MAX_LOGPROBS)
        return bad_int(err, "n_logprobs", s->n_logprobs, -1, NS_MAX_LOGPROBS);
    if (s->n_stop < 0 || s->n_stop > NS_MAX_STOP)
        return bad_int(err, "n_stop", s->n_stop, 0, NS_MAX_STOP);
    for (int i = 0; i < s->n_stop; i++) {
        if (!memchr(s->stop[i], '\0', NS_MAX_STOP_LEN))
            return ns_error_set(err, NS_ERR_INVALID,
                                "stop[%d] is not NUL-terminated within %d bytes (at most %d "
                                "bytes of text)",
                                i, NS_MAX_STOP_LEN, NS_MAX_STOP_LEN - 1);
        if (s->stop[i][0] == '\0')
            return ns_error_set(err, NS_ERR_INVALID,
                                "stop[%d] is empty (a stop string has 1 to %d bytes)", i,
                                NS_MAX_STOP_LEN - 1);
    }
    if (s->n_stop_tokens < 0 || s->n_stop_tokens > NS_MAX_STOP)
        return bad_int(err, "n_stop_tokens", s->n_stop_tokens, 0, NS_MAX_STOP);
    for (int i = 0; i < s->n_stop_tokens; i++) {
        if (s->stop_tokens[i] < 0 || s->stop_tokens[i] >= n_vocab)
            return ns_error_set(err, NS_ERR_INVALID,
                                "stop_tokens[%d] = %d is out of range [0, %d) (n_vocab)", i,
                                (int)s->stop_tokens[i], (int)n_vocab);
    }
    return NS_OK;
}

/* ---- random numbers: xoshiro256**, seeded by splitmix64 ---------------------------- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t st[4]) {
    const uint64_t result = rotl64(st[1] * 5, 7) * 9;
    const uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl64(st[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_unit(uint64_t st[4]) {
    return (double)(xoshiro_next(st) >> 11) * 0x1.0p-53;
}

/* ---- the sampler ------------------------------------------------------------------- */

/* One token seen in the generated text: counts for the penalties. token -1 = empty slot. */
typedef struct pen_slot {
    int32_t token;
    int32_t n_all;    /* occurrences among all accepted tokens (presence/frequency) */
    int32_t n_window; /* occurrences among the last repeat window (repetition penalty) */
} pen_slot;

struct ns_sampler {
    ns_sampling params;
    int32_t n_vocab;
    uint64_t rng[4];
    /* candidates of one step, as two parallel arrays so that the exp pass vectorises */
    float *cv;   /* (n_vocab) logit, then unnormalised probability e = exp((l - max) / T) */
    int32_t *ci; /* (n_vocab) token id */
    /* penalties; all NULL/0 when every penalty is off */
    bool has_penalties;
    pen_slot *slots;  /* (n_slots) open addressing, linear probing, n_slots a power of 2 */
    int32_t *used;    /* (n_slots) indices of occupied slots, in insertion order */
    int32_t n_slots;
    int32_t n_used;
    int32_t *ring;    /* (n_ring) last accepted tokens, for the repeat window */
    int32_t n_ring;   /* capacity; 0 = repetition penalty off */
    int32_t n_ring_filled;
    int32_t i_ring;   /* next slot to write */
};

ns_sampler *ns_sampler_create(const ns_sampling *params, int32_t n_vocab) {
    if (!params || n_vocab < 1) return NULL;
    ns_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->params = *params;
    s->n_vocab = n_vocab;
    uint64_t x = params->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);

    s->cv = ns_malloc_array((size_t)n_vocab, sizeof *s->cv);
    s->ci = ns_malloc_array((size_t)n_vocab, sizeof *s->ci);
    if (!s->cv || !s->ci) goto fail;

    const bool has_repeat = params->repeat_penalty != 1.0f && params->repeat_last_n > 0;
    s->has_penalties =
        has_repeat || params->presence_penalty != 0.0f || params->frequency_penalty != 0.0f;
    if (s->has_penalties) {
        /* At most min(max_tokens, n_vocab) distinct tokens are accepted in a normal run;
         * twice that keeps probing short. */
        int64_t n_distinct = NS_MIN((int64_t)NS_MAX(params->max_tokens, 1), (int64_t)n_vocab);
        int64_t n_slots = 16;
        while (n_slots < 2 * n_distinct) n_slots *= 2;
        s->n_slots = (int32_t)n_slots;
        s->slots = ns_malloc_array((size_t)n_slots, sizeof *s->slots);
        s->used = ns_malloc_array((size_t)n_slots, sizeof *s->used);
        if (!s->slots || !s->used) goto fail;
        for (int64_t i = 0; i < n_slots; i++) s->slots[i].token = -1;
        if (has_repeat) {
            /* Only generated tokens are recorded, so a window longer than max_tokens is
             * the same as max_tokens. */
            s->n_ring = NS_MIN(params->repeat_last_n, NS_MAX(params->max_tokens, 1));
            s->ring = ns_malloc_array((size_t)s->n_ring, sizeof *s->ring);
            if (!s->ring) goto fail;
        }
    }
    return s;
fail:
    ns_sampler_free(s);
    return NULL;
}

void ns_sampler_free(ns_sampler *s) {
    if (!s) return;
    free(s->ring);
    free(s->used);
    free(s->slots);
    free(s->ci);
    free(s->cv);
    free(s);
}

static inline uint32_t slot_hash(int32_t token, int32_t n_slots) {
    return ((uint32_t)token * 2654435761u) & (uint32_t)(n_slots - 1);
}

/* Returns the slot of token, inserting it; NULL when the table is at its load limit
 * (only after far more than max_tokens distinct tokens were accepted). */
static pen_slot *slot_get(ns_sampler *s, int32_t token, bool insert) {
    uint32_t i = slot_hash(token, s->n_slots);
    for (;;) {
        pen_slot *sl = &s->slots[i];
        if (sl->token == token) return sl;
        if (sl->token < 0) {
            if (!insert || s->n_used >= s->n_slots - 1) return NULL;
            sl->token = token;
            sl->n_all = 0;
            sl->n_window = 0;
            s->used[s->n_used++] = (int32_t)i;
            return sl;
        }
        i = (i + 1) & (uint32_t)(s->n_slots - 1);
    }
}

/* Ids outside [0, n_vocab) (such as the -1 of a step with no candidate) are ignored.
 * Tokens beyond the table's load limit (about 2 * max_tokens distinct ones) are not
 * counted; that cannot happen in a run that stops at max_tokens. */
void ns_sampler_accept(ns_sampler *s, int32_t token) {
    if (!s || !s->has_penalties || token < 0 || token >= s->n_vocab) return;
    pen_slot *sl = slot_get(s, token, true);
    if (!sl) return;
    sl->n_all++;
    if (s->n_ring > 0) {
        if (s->n_ring_filled == s->n_ring) {
            pen_slot *old = slot_get(s, s->ring[s->i_ring], false);
            if (old) old->n_window--;
        } else {
            s->n_ring_filled++;
        }
        s->ring[s->i_ring] = token;
        s->i_ring = (s->i_ring + 1) % s->n_ring;
        sl->n_window++;
    }
}

/* Repetition (llama.cpp: once per distinct token in the window, logit/p if > 0 else
 * logit*p), then presence and frequency (OpenAI: logit -= count*f + (count > 0)*p).
 * Touches only the tokens seen so far. */
static void apply_penalties(ns_sampler *s, float *logits) {
    if (!s->has_penalties) return;
    const float rp = s->params.repeat_penalty;
    const float pres = s->params.presence_penalty;
    const float freq = s->params.frequency_penalty;
    for (int32_t i = 0; i < s->n_used; i++) {
        const pen_slot *sl = &s->slots[s->used[i]];
        float l = logits[sl->token];
        if (isnan(l)) continue;
        if (s->n_ring > 0 && sl->n_window > 0) l = l > 0.0f ? l / rp : l * rp;
        if (sl->n_all > 0) l -= (float)sl->n_all * freq + pres;
        logits[sl->token] = l;
    }
}

/* ---- numeric helpers --------------------------------------------------------------- */

/* Logits more than EXP_SPAN below the maximum (in units of the temperature) are dropped:
 * their probability relative to the best token is below e^-80 ~ 1.8e-35. This also keeps
 * the argument of ns_sample_exp (kernels/cpu/sample_rule.h, the same polynomial as the
 * CUDA row sampler's, branch-free so that the loops using it vectorise) in range. */
#define EXP_SPAN NS_SAMPLE_EXP_SPAN

/* The loops below run over blocks of a fixed LANES elements plus a scalar tail: GCC's
 * default cost model at -O2 vectorises a loop only when its trip count needs no
 * epilogue, and a constant inner count qualifies. */
#define LANES 16

/* v[j] = exp((v[j] - m) * inv_t); the caller guarantees the argument is in range. */
static void exp_pass(float *v, int32_t n, float m, float inv_t) {
    int32_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) v[j + k] = ns_sample_exp((v[j + k] - m) * inv_t);
    for (; j < n; j++) v[j] = ns_sample_exp((v[j] - m) * inv_t);
}

/* Sum in double over LANES fixed chains (the order is fixed: reproducible). */
static double sum_f32(const float *v, int32_t n) {
    double acc[LANES] = {0};
    int32_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) acc[k] += (double)v[j + k];
    for (; j < n; j++) acc[0] += (double)v[j];
    double sum = 0.0;
    for (int k = 0; k < LANES; k++) sum += acc[k];
    return sum;
}

/* Largest logit, NaN skipped (x > m is false for NaN); -inf when there is none. */
static float max_logit(const float *logits, int32_t n) {
    float lane[LANES];
    for (int k = 0; k < LANES; k++) lane[k] = -INFINITY;
    int32_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) lane[k] = logits[j + k] > lane[k] ? logits[j + k] : lane[k];
    float m = -INFINITY;
    for (; j < n; j++) m = logits[j] > m ? logits[j] : m;
    for (int k = 0; k < LANES; k++) m = lane[k] > m ? lane[k] : m;
    return m;
}

/* Number of v[j] >= thr (NaN never counts). */
static int32_t count_at_least(const float *v, int32_t n, float thr) {
    int32_t lane[LANES] = {0};
    int32_t j = 0;
    for (; j + LANES <= n; j += LANES)
        for (int k = 0; k < LANES; k++) lane[k] += v[j + k] >= thr;
    int32_t cnt = 0;
    for (; j < n; j++) cnt += v[j] >= thr;
    for (int k = 0; k < LANES; k++) cnt += lane[k];
    return cnt;
}

/* Whether any of v[0..LANES) is >= thr: lets the sparse filters below skip whole blocks
 * with one vector compare. */
static inline bool block_any_at_least(const float *v, float thr) {
    int hit = 0;
    for (int k = 0; k < LANES; k++) hit |= v[k] >= thr;
    return hit != 0;
}

static inline bool block_any_above(const float *v, float thr) {
    int hit = 0;
    for (int k = 0; k < LANES; k++) hit |= v[k] > thr;
    return hit != 0;
}

/* (v, id) ranks above (w, jd): higher value, then lower id. */
static inline bool better(float v, int32_t id, float w, int32_t jd) {
    return v > w || (v == w && id < jd);
}

/* Heaps over the parallel arrays (v, id). Max-heap: root = best. Min-heap: root = worst. */
static void sift_down_max(float *v, int32_t *id, int32_t n, int32_t i) {
    const float xv = v[i];
    const int32_t xi = id[i];
    for (;;) {
        int32_t k = 2 * i + 1;
        if (k >= n) break;
        if (k + 1 < n && better(v[k + 1], id[k + 1], v[k], id[k])) k++;
        if (!better(v[k], id[k], xv, xi)) break;
        v[i] = v[k];
        id[i] = id[k];
        i = k;
    }
    v[i] = xv;
    id[i] = xi;
}

static void sift_down_min(float *v, int32_t *id, int32_t n, int32_t i) {
    const float xv = v[i];
    const int32_t xi = id[i];
    for (;;) {
        int32_t k = 2 * i + 1;
        if (k >= n) break;
        if (k + 1 < n && better(v[k], id[k], v[k + 1], id[k + 1])) k++;
        if (!better(xv, xi, v[k], id[k])) break;
        v[i] = v[k];
        id[i] = id[k];
        i = k;
    }
    v[i] = xv;
    id[i] = xi;
}

static void sift_up_min(float *v, int32_t *id, int32_t i) {
    const float xv = v[i];
    const int32_t xi = id[i];
    while (i > 0) {
        int32_t parent = (i - 1) / 2;
        if (!better(v[parent], id[parent], xv, xi)) break;
        v[i] = v[parent];
        id[i] = id[parent];
        i = parent;
    }
    v[i] = xv;
    id[i] = xi;
}

static inline void cand_swap(float *v, int32_t *id, int32_t a, int32_t b) {
    const float tv = v[a];
    const int32_t ti = id[a];
    v[a] = v[b];
    id[a] = id[b];
    v[b] = tv;
    id[b] = ti;
}

/* Argmax, lowest id on ties, NaN skipped; -1 when no logit is above -inf. Two passes
 * that vectorise: the maximum, then the first position holding it. */
static int32_t argmax(const float *logits, int32_t n) {
    const float m = max_logit(logits, n);
    if (!(m > -INFINITY)) return -1;
    int32_t j = 0;
    for (; j + LANES <= n; j += LANES) {
        int hit = 0;
        for (int k = 0; k < LANES; k++) hit |= logits[j + k] == m;
        if (hit) break;
    }
    for (; j < n; j++)
        if (logits[j] == m) return j;
    return -1; /* not reached: m is one of the logits */
}

/* Buckets of an unnormalised probability e in [0, 1] for top_p: bucket b < N_EXACT
 * holds [2^-b, 2^-(b-1)); bucket N_EXACT (the lump) holds everything below
 * 2^-(N_EXACT-1). Most of a large vocabulary falls in the lump, which is never
 * histogrammed element by element: its mass is the total minus the rest. */
#define N_EXACT 24
static inline int prob_bucket(float e) { /* e >= 2^-(N_EXACT-1) */
    union { float f; uint32_t u; } bits = {.f = e};
    const int b = 127 - (int)((bits.u >> 23) & 0xffu);
    return b < 0 ? 0 : b;
}

/* ---- one step ---------------------------------------------------------------------- */

/* top_p on e = cv[0..nc): keeps the smallest prefix of the (e desc, id asc) order whose
 * mass reaches top_p of the total, moved to the front. Returns its size. */
static int32_t cut_top_p(float *cv, int32_t *ci, int32_t nc, float top_p) {
    const float lump_below = 0x1p-23f; /* 2^-(N_EXACT-1) */
    const double z = sum_f32(cv, nc);
    /* mass per exact bucket, four interleaved histograms to break store-load chains */
    double hist4[4][N_EXACT];
    memset(hist4, 0, sizeof hist4);
    for (int32_t j0 = 0; j0 < nc; j0 += LANES) {
        if (j0 + LANES <= nc && !block_any_at_least(cv + j0, lump_below)) continue;
        for (int32_t j = j0; j < NS_MIN(j0 + LANES, nc); j++)
            if (cv[j] >= lump_below) hist4[j & 3][prob_bucket(cv[j])] += cv[j];
    }
    double hist[N_EXACT + 1], counted = 0.0;
    for (int b = 0; b < N_EXACT; b++) {
        hist[b] = (hist4[0][b] + hist4[1][b]) + (hist4[2][b] + hist4[3][b]);
        counted += hist[b];
    }
    hist[N_EXACT] = z > counted ? z - counted : 0.0;
    const double target = (double)top_p * z;
    double cum = 0.0;
    int b_edge = 0;
    while (b_edge < N_EXACT && cum + hist[b_edge] < target) cum += hist[b_edge++];

    /* Buckets before b_edge are all in (their mass is below the target); bucket b_edge is
     * the boundary; later ones are out. Bucket b_edge and before: e >= 2^-b_edge; before
     * b_edge: e >= 2^-(b_edge-1). Move the kept ones to the front, sure ones first. */
    const float keep_from = b_edge < N_EXACT ? ldexpf(1.0f, -b_edge) : 0.0f;
    const float sure_from = ldexpf(1.0f, 1 - b_edge);
    int32_t n_keep = 0;
    for (int32_t j0 = 0; j0 < nc; j0 += LANES) {
        if (j0 + LANES <= nc && !block_any_at_least(cv + j0, keep_from)) continue;
        for (int32_t j = j0; j < NS_MIN(j0 + LANES, nc); j++)
            if (cv[j] >= keep_from) cand_swap(cv, ci, j, n_keep++);
    }
    int32_t n_sure = 0;
    for (int32_t j = 0; j < n_keep; j++)
        if (cv[j] >= sure_from) cand_swap(cv, ci, j, n_sure++);
    cum = 0.0;
    for (int32_t j = 0; j < n_sure; j++) cum += cv[j];

    /* heap the boundary bucket, pop best first until the mass is reached */
    float *hv = cv + n_sure;
    int32_t *hi = ci + n_sure;
    const int32_t n_edge = n_keep - n_sure;
    for (int32_t j = n_edge / 2 - 1; j >= 0; j--) sift_down_max(hv, hi, n_edge, j);
    int32_t n_heap = n_edge;
    while (n_heap > 0 && cum < target) {
        cum += hv[0];
        cand_swap(hv, hi, 0, n_heap - 1);
        n_heap--;
        sift_down_max(hv, hi, n_heap, 0);
    }
    /* the popped ones sit at [n_heap, n_edge) of the boundary range */
    memmove(hv, hv + n_heap, (size_t)(n_edge - n_heap) * sizeof *hv);
    memmove(hi, hi + n_heap, (size_t)(n_edge - n_heap) * sizeof *hi);
    return n_sure + (n_edge - n_heap);
}

/* Temperature sampling with top_k, top_p, min_p. Returns -1 when no logit is above -inf. */
static int32_t sample_dist(ns_sampler *s, const float *logits) {
    const ns_sampling *p = &s->params;
    const int32_t n_vocab = s->n_vocab;
    float *cv = s->cv;
    int32_t *ci = s->ci;
    /* A temperature above 1e30 is indistinguishable from 1e30 in float; one so small that
     * 1/T overflows is greedy (so is a NaN or negative one, which validation rejects). */
    const float t = p->temperature < 1e30f ? p->temperature : 1e30f;
    const float inv_t = 1.0f / t;
    if (!(t > 0.0f) || !(inv_t < INFINITY)) return argmax(logits, n_vocab);

    /* 1. candidates: top_k by a size-k min-heap, else every token, and their maximum */
    int32_t nc = 0;
    float m;
    if (p->top_k > 0 && p->top_k < n_vocab) {
        const int32_t k = p->top_k;
        int32_t i = 0;
        for (; i < n_vocab && nc < k; i++) {
            const float v = logits[i];
            if (!(v > -INFINITY)) continue; /* NaN or -inf: probability 0 */
            cv[nc] = v;
            ci[nc] = i;
            sift_up_min(cv, ci, nc);
            nc++;
        }
        /* Ids only grow from here, so a token with the root's value never outranks the
         * root: "better than the worst kept" is simply v > cv[0] (false for NaN). */
        while (i < n_vocab) {
            if (i + LANES <= n_vocab && !block_any_above(logits + i, cv[0])) {
                i += LANES;
                continue;
            }
            for (const int32_t end = NS_MIN(i + LANES, n_vocab); i < end; i++) {
                if (logits[i] > cv[0]) {
                    cv[0] = logits[i];
                    ci[0] = i;
                    sift_down_min(cv, ci, nc, 0);
                }
            }
        }
        m = max_logit(cv, nc);
    } else {
        m = max_logit(logits, n_vocab);
    }
    if (!(m > -INFINITY)) return -1;
    if (m == INFINITY) {
        /* only the +inf tokens remain, equally likely: logit 0 each */
        nc = 0;
        for (int32_t i = 0; i < n_vocab; i++)
            if (logits[i] == INFINITY && (p->top_k <= 0 || nc < p->top_k)) cv[nc] = 0.0f, ci[nc++] = i;
        m = 0.0f;
    } else {
        /* drop what exp would flush to (almost) zero */
        const float thr = m - EXP_SPAN * t;
        if (p->top_k > 0 && p->top_k < n_vocab) {
            int32_t w = 0;
            for (int32_t j = 0; j < nc; j++)
                if (cv[j] >= thr) cv[w] = cv[j], ci[w++] = ci[j];
            nc = w;
        } else {
            if (count_at_least(logits, n_vocab, thr) == n_vocab) {
                /* the common case: every logit within range (no NaN, no -inf) */
                memcpy(cv, logits, (size_t)n_vocab * sizeof *cv);
                int32_t i = 0;
                for (; i + LANES <= n_vocab; i += LANES)
                    for (int k = 0; k < LANES; k++) ci[i + k] = i + k;
                for (; i < n_vocab; i++) ci[i] = i;
                nc = n_vocab;
            } else {
                /* branch-free compaction: always write, advance when kept */
                for (int32_t i = 0; i < n_vocab; i++) {
                    const float v = logits[i];
                    cv[nc] = v;
                    ci[nc] = i;
                    nc += v >= thr && v > -INFINITY;
                }
            }
        }
    }

    /* 2. softmax with temperature, unnormalised: the best token has e = 1 exactly */
    exp_pass(cv, nc, m, inv_t);

    /* 3. top_p */
    if (p->top_p < 1.0f) nc = cut_top_p(cv, ci, nc, p->top_p);

    /* 4. min_p: keep e >= min_p * e_max, and e_max = 1 */
    if (p->min_p > 0.0f) {
        int32_t w = 0;
        for (int32_t j0 = 0; j0 < nc; j0 += LANES) {
            if (j0 + LANES <= nc && !block_any_at_least(cv + j0, p->min_p)) continue;
            for (int32_t j = j0; j < NS_MIN(j0 + LANES, nc); j++) { /* branch-free */
                const float e = cv[j];
                const int32_t id = ci[j];
                cv[w] = e;
                ci[w] = id;
                w += e >= p->min_p;
            }
        }
        nc = w;
    }

    /* 5. draw: u in [0, total), walked in blocks of 64 so that most of the walk is a
     * cheap block sum */
    const double u = rng_unit(s->rng) * sum_f32(cv, nc);
    double acc = 0.0;
    int32_t pick = -1;
    for (int32_t j0 = 0; j0 < nc; j0 += 64) {
        const int32_t n_blk = NS_MIN(64, nc - j0);
        const double blk = sum_f32(cv + j0, n_blk);
        if (acc + blk <= u && j0 + n_blk < nc) {
            acc += blk;
            continue;
        }
        for (int32_t j = j0; j < j0 + n_blk; j++) {
            if (!(cv[j] > 0.0f)) continue;
            pick = ci[j];
            acc += cv[j];
            if (u < acc) return pick;
        }
    }
    return pick; /* rounding: the last token with e > 0 */
}

bool ns_sampler_row_params(ns_sampler *s, ns_row_sampling *out) {
    if (s->has_penalties) return false;
    const ns_sampling *p = &s->params;
    float t, inv_t;
    const bool dist = ns_sample_temperature(p->temperature, &t, &inv_t);
    *out = (ns_row_sampling){dist ? p->temperature : 0.0f, p->top_k, p->top_p, p->min_p, 0.0};
    if (dist) out->u = rng_unit(s->rng);
    return true;
}

/* log-softmax of the penalised logits at temperature 1, for logprob reports. */
typedef struct lse_info {
    float max;     /* largest non-NaN logit */
    int32_t n_inf; /* tokens at +inf (they share all the mass) */
    double lse;    /* log(sum(exp(l))) when max is finite */
} lse_info;

/* Uses the candidate arrays as scratch. */
static lse_info lse_compute(ns_sampler *s, const float *logits) {
    const int32_t n = s->n_vocab;
    lse_info r = {max_logit(logits, n), 0, -INFINITY};
    if (r.max == INFINITY) {
        for (int32_t i = 0; i < n; i++) r.n_inf += logits[i] == INFINITY;
    } else if (r.max > -INFINITY) {
        const float thr = r.max - EXP_SPAN;
        int32_t nc = 0;
        if (count_at_least(logits, n, thr) == n) {
            memcpy(s->cv, logits, (size_t)n * sizeof *s->cv);
            nc = n;
        } else {
            for (int32_t i = 0; i < n; i++) { /* branch-free compaction */
                s->cv[nc] = logits[i];
                nc += logits[i] >= thr;
            }
        }
        exp_pass(s->cv, nc, r.max, 1.0f);
        r.lse = (double)r.max + log(sum_f32(s->cv, nc));
    }
    return r;
}

static float logprob_of(const lse_info *r, float l) {
    if (!(l > -INFINITY)) return -INFINITY; /* NaN, -inf */
    if (r->n_inf > 0) return l == INFINITY ? (float)-log((double)r->n_inf) : -INFINITY;
    return (float)((double)l - r->lse);
}

/* Returns -1 (and reports logprobs as token -1, -inf) when no logit is above -inf, e.g.
 * every logit is NaN: the caller should fail the item. */
int32_t ns_sampler_sample(ns_sampler *s, float *logits, ns_logprob *chosen_lp,
                          ns_logprob *top_lp) {
    const ns_sampling *p = &s->params;
    apply_penalties(s, logits);
    const int32_t tok =
        p->temperature == 0.0f ? argmax(logits, s->n_vocab) : sample_dist(s, logits);

    const int32_t n_top = top_lp && p->n_logprobs > 0 ? p->n_logprobs : 0;
    if (!chosen_lp && n_top == 0) return tok;
    const lse_info r = tok >= 0 ? lse_compute(s, logits) : (lse_info){-INFINITY, 0, -INFINITY};
    if (chosen_lp) {
        chosen_lp->token = tok;
        chosen_lp->logprob = tok >= 0 ? logprob_of(&r, logits[tok]) : -INFINITY;
    }
    if (n_top > 0) {
        /* the n_top best by (logit desc, id asc), NaN ranked as -inf, by insertion into a
         * sorted list of at most NS_MAX_LOGPROBS entries */
        float val[NS_MAX_LOGPROBS];
        int32_t cnt = 0;
        for (int32_t i = 0; i < s->n_vocab && tok >= 0; i++) {
            /* once the list is full, ids only grow: only v > the last kept can enter */
            if (cnt == n_top && (i & (LANES - 1)) == 0 && i + LANES <= s->n_vocab &&
                !block_any_above(logits + i, val[cnt - 1])) {
                i += LANES - 1;
                continue;
            }
            const float v = isnan(logits[i]) ? -INFINITY : logits[i];
            if (cnt == n_top && !better(v, i, val[cnt - 1], top_lp[cnt - 1].token)) continue;
            int32_t j = cnt < n_top ? cnt++ : cnt - 1;
            while (j > 0 && better(v, i, val[j - 1], top_lp[j - 1].token)) {
                val[j] = val[j - 1];
                top_lp[j] = top_lp[j - 1];
                j--;
            }
            val[j] = v;
            top_lp[j].token = i;
        }
        for (int32_t j = 0; j < cnt; j++) top_lp[j].logprob = logprob_of(&r, val[j]);
        for (int32_t j = cnt; j < n_top; j++) {
            top_lp[j].token = -1;
            top_lp[j].logprob = -INFINITY;
        }
    }
    return tok;
}

/* ---- stop strings ------------------------------------------------------------------ */

/* First occurrence of needle (nlen >= 1) in hay[0..hlen), or -1. */
static int64_t find_bytes(const char *hay, size_t hlen, const char *needle, size_t nlen) {
    if (nlen > hlen) return -1;
    const char *end = hay + (hlen - nlen) + 1; /* last possible start + 1 */
    const char *q = hay;
    while (q < end) {
        q = memchr(q, needle[0], (size_t)(end - q));
        if (!q) return -1;
        if (memcmp(q, needle, nlen) == 0) return (int64_t)(q - hay);
        q++;
    }
    return -1;
}

int64_t ns_stop_find(const ns_sampling *params, const char *text, size_t len,
                     size_t *n_holdback) {
    int64_t best = -1;
    size_t hold = 0;
    const int n_stop = params ? NS_MIN(NS_MAX(params->n_stop, 0), NS_MAX_STOP) : 0;
    for (int i = 0; i < n_stop; i++) {
        const char *st = params->stop[i];
        const char *nul = memchr(st, '\0', NS_MAX_STOP_LEN);
        const size_t sl = nul ? (size_t)(nul - st) : NS_MAX_STOP_LEN;
        if (sl == 0) continue;
        /* a match for this string only matters when it starts before the best so far */
        size_t hlen = len;
        if (best >= 0) hlen = NS_MIN(len, (size_t)best + sl - 1);
        const int64_t off = find_bytes(text, hlen, st, sl);
        if (off >= 0 && (best < 0 || off < best)) best = off;
        /* longest suffix of text that is a proper prefix of st */
        for (size_t k = NS_MIN(sl - 1, len); k > hold; k--) {
            if (memcmp(text + len - k, st, k) == 0) {
                hold = k;
                break;
            }
        }
    }
    if (n_holdback) *n_holdback = hold;
    return best;
}
