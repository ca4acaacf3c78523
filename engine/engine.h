/* engine.h: the inference engine as the runner uses it. No SQLite, no files other than
 * the model: requests in (id, prompt tokens, sampling), completions out.
 *
 *   ns_engine_open(cfg) -> ns_engine_submit(req)... -> loop { ns_engine_step();
 *   ns_engine_collect() } until ns_engine_idle() -> ns_engine_close().
 *
 * Scheduling in this version: FIFO admission while the sequence limit and the KV pool
 * allow, reserving KV blocks for prompt + max_tokens at admission (never preempts);
 * every step runs one mixed batch: one decode token for each generating sequence, then
 * prompt chunks up to the token budget. A finished sequence frees its slot and blocks at
 * once, so the next step can admit a waiting request (continuous batching).
 * Overlapped steps (NS_ENGINE_OVERLAP=1; off by default until measured on a GPU), on a
 * backend that picks tokens without waiting (pick_launch: CUDA):
 * a step launches its forward pass and its picks, then takes in the previous step's
 * tokens (detokenizing, stop checks, completions) while the device works; the next
 * step's batch names those tokens by their rows on the device. So a completion is
 * collected one step after its last token was picked, and a sequence that stops has
 * one extra row computed and dropped. A step with a row the host samples (penalties,
 * logprobs) waits for its own tokens; so does optimistic mode.
 * Threads: one thread drives an engine; the backend uses its own worker threads inside.
 */
#ifndef NS_ENGINE_H
#define NS_ENGINE_H

#include "common.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

typedef struct ns_engine_config {
    const char *model_path;
    const char *backend;   /* "auto" (default), "cpu", "cuda" */
    int device;            /* CUDA device index (default 0); one engine per device for data parallelism */
    int n_threads;         /* 0 = every core */
    int n_ctx;             /* max tokens (prompt + generated) per sequence; 0 = min(model's, 4096) */
    int max_seqs;          /* sequences in one batch; 0 = 64 */
    int max_batch_tokens;  /* tokens per forward step; 0 = 512; must be >= max_seqs */
    int block_size;        /* KV block size in tokens; 0 = 16 */
    size_t kv_bytes;       /* KV pool budget in bytes; 0 = max(max_seqs x min(n_ctx, 1024), n_ctx) tokens */
    int policy;            /* NS_SCHED_CONTINUOUS (default) or NS_SCHED_STATIC */
    bool no_prefix_cache;  /* turn off sharing of KV blocks between prompts with a common prefix */
    bool optimistic;       /* admit on prompt blocks only; preempt (and later recompute) on KV pressure */
    bool batch_invariant;  /* bit-identical outputs whatever the batch composition (slower) */
    bool fp8;              /* layer matrices and their inputs in FP8 E4M3 (a backend with use_fp8:
                            * CUDA, compute capability 8.9+); results differ; refused elsewhere */
    bool kv_fp8;           /* the KV cache in FP8 E4M3 (use_kv_fp8: CUDA, head_dim 64 or 128, else
                            * bf16, said on stderr); results differ; refused on the CPU */
    /* Benchmarks and backend comparisons: with synthetic set (and model_path NULL) the
     * engine runs ns_model_random(synthetic, synthetic_seed) and has no tokenizer, so
     * completions carry tokens and no text, and only stop_tokens and max_tokens end them. */
    const ns_hparams *synthetic;
    uint64_t synthetic_seed;
    bool no_device_sampling; /* sample on the host even where the backend could (argmax_rows, sample_rows) */
} ns_engine_config;

/* Scheduling policies (for benchmarks; continuous is the product's). */
enum {
    NS_SCHED_CONTINUOUS = 0, /* a finished sequence's slot is refilled in the next step */
    NS_SCHED_STATIC = 1,     /* a batch is admitted, then nothing until all of it finished */
};

void ns_engine_config_default(ns_engine_config *cfg);

/* Streaming: called from ns_engine_step with newly decoded text (complete UTF-8, stop
 * strings held back and cut). text is borrowed for the call. */
typedef void (*ns_text_cb)(void *user, uint64_t id, const char *text, size_t len);

typedef struct ns_request {
    uint64_t id;
    const int32_t *prompt; /* (n_prompt) copied at submit */
    int n_prompt;
    ns_sampling sampling;
    ns_text_cb on_text;    /* optional */
    void *user;
} ns_request;

typedef enum ns_finish {
    NS_FINISH_STOP = 0,   /* EOS/EOT, a stop token or a stop string */
    NS_FINISH_LENGTH = 1, /* max_tokens or the context limit */
    NS_FINISH_ERROR = 2,  /* the item failed; error says why */
} ns_finish;

const char *ns_finish_name(ns_finish f); /* "stop", "length", "error" */

/* A finished request. Free with ns_completion_free. */
typedef struct ns_completion {
    uint64_t id;
    ns_finish finish;
    char *text;            /* NUL-terminated, stop string cut */
    size_t text_len;
    int32_t *tokens;       /* (n_tokens) generated tokens */
    int n_tokens;
    int n_prompt_tokens;
    int n_top_logprobs;    /* per token; logprobs NULL when the request asked for none */
    ns_logprob *logprobs;  /* (n_tokens, 1 + n_top_logprobs): chosen, then top-N */
    double seconds;        /* from admission to finish */
    char error[192];       /* NS_FINISH_ERROR: what went wrong, naming the request */
} ns_completion;

void ns_completion_free(ns_completion *c); /* NULL-tolerant */

typedef struct ns_step_stats {
    int n_seqs;         /* sequences in the batch */
    int n_tokens;       /* tokens in the batch */
    int n_prompt_tokens;/* of which prompt */
    int n_decode;       /* of which decode */
    int n_running;      /* admitted sequences */
    int n_waiting;      /* submitted, not admitted */
    int kv_blocks_used;
    int kv_blocks_total;
    int kv_blocks_cached;   /* free blocks still holding a reusable prefix */
    int64_t prefix_hit_tokens; /* prompt tokens served from the prefix cache, since open */
    int64_t prompt_tokens_admitted; /* prompt tokens admitted, since open */
    int64_t n_preempted;    /* sequences preempted (optimistic mode), since open */
    int64_t n_oom_retries;  /* steps discarded on out of memory and run again smaller, since open */
    int batch_token_limit;  /* tokens per step now (max_batch_tokens, less after out of memory) */
    const char *note;       /* set when this step changed how the engine runs (a shrink after out of
                               memory), for the caller to show; valid until the next step */
} ns_step_stats;

typedef struct ns_engine ns_engine;

/* Opens the model on the chosen backend. Errors name the file and the field. If note is
 * not NULL it may receive a static message to show the user (backend fallback). */
ns_status ns_engine_open(const ns_engine_config *cfg, ns_engine **out, const char **note, ns_error *err);
void ns_engine_close(ns_engine *e); /* NULL-tolerant; drops unfinished requests */

const ns_hparams *ns_engine_hparams(const ns_engine *e);
const ns_tokenizer *ns_engine_tokenizer(const ns_engine *e); /* NULL for a synthetic model */
const char *ns_engine_backend_name(const ns_engine *e);
/* The engine's backend (borrowed; for tests and tools that inspect or adjust it). */
struct ns_backend *ns_engine_backend(ns_engine *e);
/* The model's chat template text (borrowed, NUL-terminated) or NULL. */
const char *ns_engine_chat_template(const ns_engine *e);
int ns_engine_n_ctx(const ns_engine *e);
/* Whether prompts for this model start with BOS (tokenizer.ggml.add_bos_token). */
bool ns_engine_add_bos(const ns_engine *e);

/* Queues a request (prompt copied). Item errors return NS_ERR_INVALID with a message
 * naming the request, field, value and limit (empty prompt, token out of range, prompt
 * longer than the context, bad sampling value); the engine is unchanged. */
ns_status ns_engine_submit(ns_engine *e, const ns_request *req, ns_error *err);

/* Runs one forward step (admission, one batch, sampling). Returns NS_OK also when there
 * was nothing to do. stats may be NULL.
 * Out of memory in the backend during a step (NS_ERR_NOMEM) does not fail the job: the
 * step is discarded, the tokens per step (and sequences per step) are halved for the rest
 * of the engine's life, and the next step runs smaller; only a one-token step that still
 * fails returns the error. */
ns_status ns_engine_step(ns_engine *e, ns_step_stats *stats, ns_error *err);

/* Moves up to max finished completions into out[]; returns how many. The caller owns
 * them. */
int ns_engine_collect(ns_engine *e, ns_completion **out, int max);

/* True when nothing is waiting or running (completions may still be uncollected). */
bool ns_engine_idle(const ns_engine *e);

/* Scores a prompt outside the scheduler: runs it through the model (in chunks of
 * max_batch_tokens) and writes the logits of its last position to logits (n_vocab).
 * The engine must be idle; KV blocks are borrowed for the call and released.
 * Errors: as ns_engine_submit for a bad prompt; NS_ERR_CAPACITY if the KV pool cannot
 * hold it; NS_ERR_INVALID if the engine is busy. */
ns_status ns_engine_prompt_logits(ns_engine *e, const int32_t *prompt, int n_prompt, float *logits,
                                  ns_error *err);

#endif
