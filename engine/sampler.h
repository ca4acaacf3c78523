/* sampler.h: sampling parameters, their validation, and a per-request sampler.
 *
 * Order of operations on the logits of one step: penalties (repetition over the last
 * repeat_last_n tokens, presence, frequency over all generated tokens) -> if temperature
 * is 0: greedy (argmax, lowest id on ties) -> else top_k -> softmax with temperature ->
 * top_p -> min_p -> draw from the request's own random stream.
 * Each request has its own generator seeded from `seed`, so its output does not depend on
 * its batch neighbours, and the same seed gives the same output.
 * A sampler allocates all its scratch at creation: sampling does not allocate.
 */
#ifndef NS_SAMPLER_H
#define NS_SAMPLER_H

#include "common.h"

#define NS_MAX_STOP 8
#define NS_MAX_STOP_LEN 128
#define NS_MAX_LOGPROBS 20

typedef struct ns_sampling {
    float temperature;       /* >= 0; 0 = greedy. default 0.8 in CLI, 0 = greedy here */
    int32_t top_k;           /* 0 = off; >= 0 */
    float top_p;             /* (0, 1]; 1 = off */
    float min_p;             /* [0, 1); 0 = off */
    float repeat_penalty;    /* > 0; 1 = off (llama.cpp semantics: logit/p if >0 else *p) */
    int32_t repeat_last_n;   /* >= 0, window for repeat_penalty */
    float presence_penalty;  /* [-2, 2], OpenAI semantics */
    float frequency_penalty; /* [-2, 2] */
    uint64_t seed;
    int32_t max_tokens;      /* >= 1 */
    int32_t n_logprobs;      /* 0..NS_MAX_LOGPROBS: top-N alternatives reported per token; -1 = none */
    bool ignore_eos;         /* keep generating past EOS/EOT (benchmarks) */
    int32_t n_stop;                            /* stop strings */
    char stop[NS_MAX_STOP][NS_MAX_STOP_LEN];   /* NUL-terminated, non-empty */
    int32_t n_stop_tokens;
    int32_t stop_tokens[NS_MAX_STOP];
} ns_sampling;

/* Greedy, max_tokens 16, everything else off. */
void ns_sampling_default(ns_sampling *s);

/* Checks every field against its range; the error names the field, the value and the
 * allowed range (e.g. "top_p = 1.5 is out of range (0, 1]"). n_vocab bounds stop_tokens. */
ns_status ns_sampling_validate(const ns_sampling *s, int32_t n_vocab, ns_error *err);

typedef struct ns_logprob {
    int32_t token;
    float logprob; /* natural log of the probability after penalties, before temperature/truncation */
} ns_logprob;

typedef struct ns_sampler ns_sampler;

/* Creates a sampler for one request (copies params). NULL on OOM. */
ns_sampler *ns_sampler_create(const ns_sampling *params, int32_t n_vocab);
void ns_sampler_free(ns_sampler *s); /* NULL-tolerant */

/* Picks the next token from logits (n_vocab; may be modified in place). Returns -1 when
 * no logit is finite and above -inf (a broken model or backend): the caller fails the
 * request.
 * If chosen_lp is not NULL it receives the chosen token's logprob; if top_lp is not NULL
 * and params.n_logprobs > 0 it receives the n_logprobs most likely tokens, best first.
 * Does not record the token: call ns_sampler_accept. */
int32_t ns_sampler_sample(ns_sampler *s, float *logits, ns_logprob *chosen_lp, ns_logprob *top_lp);

/* For a backend that samples where the logits are (ns_backend_ops.sample_rows, the rule
 * of kernels/cpu/sample_rule.h): fills *out with this step's parameters and returns
 * true, or returns false, drawing nothing, when the request needs this sampler (a
 * penalty is set). A non-greedy step consumes the request's one draw of the step, as
 * ns_sampler_sample does, so the random stream stays in step whichever side samples;
 * the token for a given draw may differ (the rule walks the kept tokens in id order),
 * the distribution does not. Call once per step, after the step's logits exist; then
 * ns_sampler_accept the token as usual. */
struct ns_row_sampling;
bool ns_sampler_row_params(ns_sampler *s, struct ns_row_sampling *out);

/* Records a generated token (for penalties). Prompt tokens are not recorded. */
void ns_sampler_accept(ns_sampler *s, int32_t token);

/* Stop strings over the generated text: returns the offset in text (len bytes, the whole
 * generated text so far) where the earliest stop string begins, or -1. Also sets
 * *n_holdback to the length of the longest suffix of text that is a proper prefix of some
 * stop string (bytes that a streaming caller must not emit yet). */
int64_t ns_stop_find(const ns_sampling *params, const char *text, size_t len, size_t *n_holdback);

#endif
