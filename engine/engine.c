/* engine.c: model + tokenizer + backend + KV block pool with a prefix cache + the
 * scheduler + per-request samplers and detokenizers (see engine.h).
 *
 * Scheduler, every step: (1) admission: preempted sequences first (optimistic mode), then
 * waiting requests in submission order, while slots and KV blocks allow; a request's
 * leading full prompt blocks are looked up in the prefix cache and reused; (2) the batch:
 * one token for every sequence that has exactly one token not yet in the cache (decode),
 * then prompt chunks of the others up to the token budget; (3) one forward pass;
 * (4) sampling where a sequence reached its last known token. */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "kv_cache.h"
#include "switches.h"

typedef struct pending {
    struct pending *next;
    ns_request req;     /* req.prompt points to prompt below */
    int32_t *prompt;
} pending;

typedef struct seq {
    bool active;
    uint64_t id;
    int32_t *tokens;      /* (n_prompt + max_gen) prompt, then generated */
    int n_prompt;
    int n_cached;         /* tokens whose K/V are in the cache */
    int n_gen;
    int max_gen;
    int32_t *blocks;      /* (max_blocks_per_seq) reserved at admission */
    int n_blocks;         /* 0 while preempted (optimistic mode) */
    int n_matched;        /* leading blocks taken from the prefix cache */
    int n_ready_checked;  /* of those, how many are known to be computed */
    bool preempted;
    uint64_t admit_order;
    ns_sampling params;
    ns_sampler *sampler;
    ns_detok detok;
    char *text;
    size_t text_len, text_cap, emitted;
    ns_logprob *lps;      /* (max_gen, 1 + n_top) or NULL */
    int n_top;
    ns_text_cb on_text;
    void *user;
    double t_admit;
    int logit_row;        /* row in this step's logits, or -1 */
    /* overlapped steps (can_overlap): the row of its token in the pick on its way (its
     * value not known here yet: the next batch names it), and in the pick launched this
     * step; -1: none. draining: finished while a launched step still writes its KV blocks,
     * which are kept (and the slot taken) until that step's pick is waited for. */
    int fl_row, nx_row;
    bool draining;
} seq;

struct ns_engine {
    ns_engine_config cfg;
    ns_backend *backend;
    ns_model *model;
    ns_tokenizer *tok;
    char *chat_template;
    ns_kv_blocks *kv;
    ns_fwd_scratch scratch;
    int n_ctx;
    int max_blocks_per_seq;
    /* scheduler */
    pending *wait_head, *wait_tail;
    int n_waiting;
    seq *seqs;            /* (max_seqs) slots */
    int n_running;
    ns_completion **done; /* ring of finished completions */
    int n_done, done_cap;
    /* per-step batch arrays, allocated once */
    int32_t *b_tokens, *b_pos;        /* (max_batch_tokens) */
    int32_t *b_tok_start, *b_n_tok, *b_n_past, *b_logit_rows; /* (max_seqs) */
    int32_t *b_block_table;           /* (max_seqs, max_blocks_per_seq) */
    int *b_seq_of;                    /* (max_seqs) slot index of each batch sequence */
    float *logits;                    /* (max_seqs, n_vocab) host */
    int32_t *b_ids;                   /* (max_seqs) tokens chosen on the device */
    ns_row_sampling *b_samp;          /* (max_seqs) each logit row's parameters for sample_rows */
    bool *b_on_host;                  /* (max_seqs) logit rows sampled on the host in such a step */
    /* overlapped steps: the pick on its way (launched by the previous step) */
    bool fl_on;
    int fl_n;                         /* its rows */
    int *fl_slot;                     /* (max_seqs) the slot of each of its rows */
    bool overlap;                     /* NS_ENGINE_OVERLAP=1 */
    uint64_t *hash_scratch;           /* (max_blocks_per_seq) prefix chain hashes */
    uint64_t n_admitted;
    int64_t stat_prefix_hit, stat_prompt_admitted, stat_preempted, stat_oom;
    /* per-step limits: the config's, halved after an out-of-memory step */
    int budget_tokens, budget_seqs;
    int rr_start; /* first slot considered for decode when budget_seqs cuts the batch */
    char note[640]; /* ns_step_stats.note */
};

const char *ns_finish_name(ns_finish f) {
    return f == NS_FINISH_STOP ? "stop" : f == NS_FINISH_LENGTH ? "length" : "error";
}

void ns_engine_config_default(ns_engine_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->backend = "auto";
}

void ns_completion_free(ns_completion *c) {
    if (!c) return;
    free(c->text);
    free(c->tokens);
    free(c->logprobs);
    free(c);
}

/* Releases s's blocks, last first: the LRU then evicts a cached prefix from its tail. */
static void seq_release_blocks(ns_engine *e, seq *s) {
    for (int i = s->n_blocks - 1; i >= 0; i--) ns_kv_blocks_release(e->kv, s->blocks[i]);
    s->n_blocks = 0;
    s->n_matched = 0;
    s->n_ready_checked = 0;
}

static void seq_clear(ns_engine *e, seq *s) {
    seq_release_blocks(e, s);
    ns_sampler_free(s->sampler);
    free(s->tokens);
    free(s->blocks);
    free(s->text);
    free(s->lps);
    memset(s, 0, sizeof *s);
    s->fl_row = s->nx_row = -1;
}

/* What the configuration asks of the backend before the weights load: FP8 switched on, or
 * refused where the backend has none; batch-invariant mode refused where the backend
 * cannot give it (not ignored). */
static ns_status backend_modes(const ns_engine *e, ns_error *err) {
    if (e->cfg.fp8) {
        if (!e->backend->ops->use_fp8)
            return ns_error_set(err, NS_ERR_UNSUPPORTED,
                                "engine: precision fp8 needs the cuda backend (FP8 tensor cores, compute capability "
                                "8.9 or later); this run's backend is the CPU%s",
                                e->cfg.backend && !strcmp(e->cfg.backend, "auto") ? " (backend auto found no GPU)" : "");
        ns_status st = e->backend->ops->use_fp8(e->backend, err);
        if (st) return st;
    }
    if (!e->cfg.batch_invariant || e->backend->can_batch_invariant) return NS_OK;
    return ns_error_set(err, NS_ERR_UNSUPPORTED,
                        "engine: batch-invariant mode (a job's limits.deterministic) is not available on the %s "
                        "backend yet: its GEMMs choose their algorithm by the number of rows, so an output's last "
                        "bits depend on its batch; use backend cpu, or leave deterministic off (outputs still "
                        "follow the seed)",
                        e->cfg.backend && strcmp(e->cfg.backend, "auto") ? e->cfg.backend : "cuda");
}

ns_status ns_engine_open(const ns_engine_config *cfg_in, ns_engine **out, const char **note, ns_error *err) {
    *out = NULL;
    ns_status st;
    ns_gguf *g = NULL;
    ns_engine *e = calloc(1, sizeof *e);
    if (!e) return ns_error_set(err, NS_ERR_NOMEM, "engine: out of memory");
    e->cfg = *cfg_in;
    ns_engine_config *cfg = &e->cfg;
    e->overlap = ns_switch("NS_ENGINE_OVERLAP", NS_DEFAULT_ENGINE_OVERLAP, 1); /* switches.h */
    if (!cfg->model_path && !cfg->synthetic) {
        st = ns_error_set(err, NS_ERR_INVALID, "engine: no model path given");
        goto fail;
    }
    if (cfg->max_seqs == 0) cfg->max_seqs = 64;
    if (cfg->max_batch_tokens == 0) cfg->max_batch_tokens = 512;
    if (cfg->block_size == 0) cfg->block_size = 16;
    if (cfg->max_seqs < 1 || cfg->max_seqs > 4096 || cfg->max_batch_tokens < cfg->max_seqs ||
        cfg->max_batch_tokens > 65536 || cfg->block_size < 1 || cfg->block_size > 1024 || cfg->n_ctx < 0 ||
        cfg->n_threads < 0 || cfg->device < 0 ||
        (cfg->policy != NS_SCHED_CONTINUOUS && cfg->policy != NS_SCHED_STATIC)) {
        st = ns_error_set(err, NS_ERR_INVALID,
                          "engine: bad limits: max_seqs %d (1..4096), max_batch_tokens %d (max_seqs..65536), "
                          "block_size %d (1..1024), n_ctx %d (>= 0), threads %d (>= 0), device %d (>= 0)",
                          cfg->max_seqs, cfg->max_batch_tokens, cfg->block_size, cfg->n_ctx, cfg->n_threads,
                          cfg->device);
        goto fail;
    }

    if (cfg->synthetic) {
        if ((st = ns_backend_create_on(cfg->backend ? cfg->backend : "auto", cfg->n_threads, cfg->device, &e->backend, note, err)))
            goto fail;
        e->backend->batch_invariant = cfg->batch_invariant;
        if ((st = backend_modes(e, err))) goto fail;
        if ((st = ns_model_random(cfg->synthetic, cfg->synthetic_seed, e->backend, &e->model, err))) goto fail;
        goto model_ready;
    }
    if ((st = ns_gguf_open(cfg->model_path, &g, err))) goto fail;
    if ((st = ns_tokenizer_load(g, &e->tok, err))) goto fail;
    if (ns_gguf_find_key(g, "tokenizer.chat_template") >= 0) {
        ns_gguf_str tpl;
        if ((st = ns_gguf_get_str(g, "tokenizer.chat_template", &tpl, err))) goto fail;
        e->chat_template = malloc(tpl.len + 1);
        if (!e->chat_template) {
            st = ns_error_set(err, NS_ERR_NOMEM, "engine: out of memory");
            goto fail;
        }
        memcpy(e->chat_template, tpl.ptr, tpl.len);
        e->chat_template[tpl.len] = '\0';
    }
    if ((st = ns_backend_create_on(cfg->backend ? cfg->backend : "auto", cfg->n_threads, cfg->device, &e->backend, note, err)))
        goto fail;
    e->backend->batch_invariant = cfg->batch_invariant;
    if ((st = backend_modes(e, err))) goto fail;
    if ((st = ns_model_load(g, e->backend, &e->model, err))) goto fail;
    ns_gguf_close(g); /* weights now live in the backend; the tokenizer copied its vocab */
    g = NULL;

model_ready:;
    const ns_hparams *hp = &e->model->hp;
    if (e->tok && ns_tokenizer_n_vocab(e->tok) > hp->n_vocab) {
        st = ns_error_set(err, NS_ERR_FORMAT, "engine: tokenizer has %d tokens but token_embd.weight only %d rows",
                          ns_tokenizer_n_vocab(e->tok), hp->n_vocab);
        goto fail;
    }
    e->n_ctx = cfg->n_ctx ? cfg->n_ctx : NS_MIN(hp->n_ctx_train, 4096);
    if (e->n_ctx > hp->n_ctx_train) {
        st = ns_error_set(err, NS_ERR_INVALID, "engine: n_ctx %d exceeds the model's context length %d", e->n_ctx,
                          hp->n_ctx_train);
        goto fail;
    }
    e->max_blocks_per_seq = (e->n_ctx + cfg->block_size - 1) / cfg->block_size;
    if (cfg->kv_fp8) {
        bool on = false;
        if (!e->backend->ops->use_kv_fp8) {
            st = ns_error_set(err, NS_ERR_UNSUPPORTED,
                              "engine: an FP8 KV cache (precision fp8) needs the cuda backend; this run's backend is "
                              "the CPU");
            goto fail;
        }
        if ((st = e->backend->ops->use_kv_fp8(e->backend, hp->n_head, hp->n_head_kv, hp->head_dim, &on, err)))
            goto fail;
        if (!on)
            fprintf(stderr, "engine: the FP8 KV cache takes head_dim 64 or 128 (this model: %d heads of %d, %d KV "
                            "heads); the KV cache stays bf16\n", hp->n_head, hp->head_dim, hp->n_head_kv);
    }
    size_t kv_per_token = (size_t)hp->n_layer * 2 * (size_t)hp->n_head_kv *
                          ((size_t)hp->head_dim * (size_t)(e->backend->kv_elem_bytes > 0 ? e->backend->kv_elem_bytes : 4) +
                           (size_t)(e->backend->kv_row_extra_bytes > 0 ? e->backend->kv_row_extra_bytes : 0));
    if (cfg->kv_bytes == 0) {
        /* room for max_seqs sequences of up to 1024 tokens, and at least one full context */
        size_t tokens = NS_MAX((size_t)cfg->max_seqs * (size_t)NS_MIN(e->n_ctx, 1024), (size_t)e->n_ctx);
        cfg->kv_bytes = tokens * kv_per_token + (size_t)cfg->block_size * kv_per_token;
    }
    size_t n_blocks = cfg->kv_bytes / (kv_per_token * (size_t)cfg->block_size);
    if (n_blocks < 1 || n_blocks > (1u << 30)) {
        st = ns_error_set(err, NS_ERR_INVALID, "engine: KV budget of %zu bytes gives %zu blocks (1..2^30)", cfg->kv_bytes,
                          n_blocks);
        goto fail;
    }
    if ((st = ns_kv_blocks_create((int)n_blocks, cfg->block_size, &e->kv, err))) goto fail;
    ns_kv_shape shape = {hp->n_layer, (int)n_blocks, cfg->block_size, hp->n_head_kv, hp->head_dim};
    if ((st = e->backend->ops->kv_alloc(e->backend, &shape, err))) goto fail;
    if ((st = ns_fwd_scratch_alloc(e->model, cfg->max_batch_tokens, cfg->max_seqs, &e->scratch, err))) goto fail;
    e->budget_tokens = cfg->max_batch_tokens;
    e->budget_seqs = cfg->max_seqs;

    size_t T = (size_t)cfg->max_batch_tokens, S = (size_t)cfg->max_seqs;
    e->seqs = ns_calloc_array(S, sizeof(seq));
    e->b_tokens = ns_malloc_array(T, sizeof(int32_t));
    e->b_pos = ns_malloc_array(T, sizeof(int32_t));
    e->b_tok_start = ns_malloc_array(S, sizeof(int32_t));
    e->b_n_tok = ns_malloc_array(S, sizeof(int32_t));
    e->b_n_past = ns_malloc_array(S, sizeof(int32_t));
    e->b_logit_rows = ns_malloc_array(S, sizeof(int32_t));
    e->b_seq_of = ns_malloc_array(S, sizeof(int));
    e->b_block_table = ns_malloc_array(S * (size_t)e->max_blocks_per_seq, sizeof(int32_t));
    e->logits = ns_malloc_array(S * (size_t)hp->n_vocab, sizeof(float));
    e->b_ids = ns_malloc_array(S, sizeof(int32_t));
    e->b_samp = ns_malloc_array(S, sizeof(ns_row_sampling));
    e->b_on_host = ns_malloc_array(S, sizeof(bool));
    e->fl_slot = ns_malloc_array(S, sizeof(int));
    e->hash_scratch = ns_malloc_array((size_t)e->max_blocks_per_seq, sizeof(uint64_t));
    e->done_cap = (int)S * 2;
    e->done = ns_calloc_array((size_t)e->done_cap, sizeof(ns_completion *));
    if (!e->seqs || !e->b_tokens || !e->b_pos || !e->b_tok_start || !e->b_n_tok || !e->b_n_past ||
        !e->b_logit_rows || !e->b_seq_of || !e->b_block_table || !e->logits || !e->b_ids || !e->done ||
        !e->hash_scratch || !e->b_samp || !e->b_on_host || !e->fl_slot) {
        st = ns_error_set(err, NS_ERR_NOMEM, "engine: out of memory for batch arrays");
        goto fail;
    }
    *out = e;
    return NS_OK;
fail:
    ns_gguf_close(g);
    ns_engine_close(e);
    return st;
}

void ns_engine_close(ns_engine *e) {
    if (!e) return;
    if (e->seqs)
        for (int i = 0; i < e->cfg.max_seqs; i++)
            if (e->seqs[i].active) seq_clear(e, &e->seqs[i]);
    for (pending *p = e->wait_head; p;) {
        pending *n = p->next;
        free(p->prompt);
        free(p);
        p = n;
    }
    if (e->done)
        for (int i = 0; i < e->n_done; i++) ns_completion_free(e->done[i]);
    free(e->done);
    free(e->seqs);
    free(e->b_tokens);
    free(e->b_pos);
    free(e->b_tok_start);
    free(e->b_n_tok);
    free(e->b_n_past);
    free(e->b_logit_rows);
    free(e->b_seq_of);
    free(e->b_block_table);
    free(e->logits);
    free(e->b_ids);
    free(e->b_samp);
    free(e->b_on_host);
    free(e->fl_slot);
    free(e->hash_scratch);
    if (e->model) ns_fwd_scratch_free(e->model, &e->scratch);
    ns_kv_blocks_destroy(e->kv);
    ns_model_free(e->model);
    ns_backend_destroy(e->backend);
    ns_tokenizer_free(e->tok);
    free(e->chat_template);
    free(e);
}

const ns_hparams *ns_engine_hparams(const ns_engine *e) { return &e->model->hp; }
const ns_tokenizer *ns_engine_tokenizer(const ns_engine *e) { return e->tok; }
const char *ns_engine_backend_name(const ns_engine *e) { return e->backend->ops->name; }
ns_backend *ns_engine_backend(ns_engine *e) { return e->backend; }
const char *ns_engine_chat_template(const ns_engine *e) { return e->chat_template; }
int ns_engine_n_ctx(const ns_engine *e) { return e->n_ctx; }
bool ns_engine_add_bos(const ns_engine *e) { return e->tok && ns_tokenizer_add_bos(e->tok); }

bool ns_engine_idle(const ns_engine *e) { return e->n_waiting == 0 && e->n_running == 0 && !e->fl_on; }

ns_status ns_engine_submit(ns_engine *e, const ns_request *req, ns_error *err) {
    const ns_hparams *hp = &e->model->hp;
    unsigned long long id = (unsigned long long)req->id;
    if (req->n_prompt < 1 || !req->prompt)
        return ns_error_set(err, NS_ERR_INVALID, "request %llu: prompt is empty (at least 1 token needed)", id);
    if (req->n_prompt >= e->n_ctx)
        return ns_error_set(err, NS_ERR_INVALID,
                            "request %llu: prompt of %d tokens does not fit the context of %d tokens "
                            "(at most %d prompt tokens, leaving room for 1 generated)",
                            id, req->n_prompt, e->n_ctx, e->n_ctx - 1);
    for (int i = 0; i < req->n_prompt; i++)
        if (req->prompt[i] < 0 || req->prompt[i] >= hp->n_vocab)
            return ns_error_set(err, NS_ERR_INVALID, "request %llu: prompt token %d at index %d is out of range [0, %d)",
                                id, req->prompt[i], i, hp->n_vocab);
    ns_error verr;
    ns_error_clear(&verr);
    if (ns_sampling_validate(&req->sampling, hp->n_vocab, &verr))
        return ns_error_set(err, NS_ERR_INVALID, "request %llu: %s", id, verr.msg);
    int max_gen = NS_MIN(req->sampling.max_tokens, e->n_ctx - req->n_prompt);
    int need = ns_kv_blocks_needed(e->kv, req->n_prompt + max_gen);
    if (need > ns_kv_blocks_n_total(e->kv))
        return ns_error_set(err, NS_ERR_INVALID,
                            "request %llu: prompt %d + max_tokens %d needs %d KV blocks, the whole cache has %d",
                            id, req->n_prompt, max_gen, need, ns_kv_blocks_n_total(e->kv));
    pending *p = calloc(1, sizeof *p);
    int32_t *prompt = ns_malloc_array((size_t)req->n_prompt, sizeof(int32_t));
    if (!p || !prompt) {
        free(p);
        free(prompt);
        return ns_error_set(err, NS_ERR_NOMEM, "request %llu: out of memory", id);
    }
    memcpy(prompt, req->prompt, (size_t)req->n_prompt * sizeof(int32_t));
    p->req = *req;
    p->req.prompt = prompt;
    p->prompt = prompt;
    if (e->wait_tail)
        e->wait_tail->next = p;
    else
        e->wait_head = p;
    e->wait_tail = p;
    e->n_waiting++;
    return NS_OK;
}

/* Gives s KV blocks for its first n_tokens tokens, reusing the leading full blocks of its
 * prompt from the prefix cache (at most those before the last prompt token, which must be
 * computed to get logits). Publishes its own full prompt blocks for later sequences.
 * Returns false, changing nothing, when the pool cannot hold it now. */
static bool seq_get_blocks(ns_engine *e, seq *s, int n_tokens) {
    const int bs = e->cfg.block_size;
    int need = ns_kv_blocks_needed(e->kv, n_tokens);
    int n_share = e->cfg.no_prefix_cache ? 0 : NS_MIN((s->n_prompt - 1) / bs, need);
    uint64_t h = 0;
    for (int i = 0; i < n_share; i++) e->hash_scratch[i] = h = ns_kv_hash_block(h, s->tokens + (size_t)i * bs, bs);
    int m = 0;
    /* optimistic mode shares only computed blocks: a preempted owner never leaves a
     * sharer waiting for a block that will not be computed */
    while (m < n_share) {
        int32_t id = ns_kv_blocks_lookup(e->kv, e->hash_scratch[m], e->cfg.optimistic);
        if (id < 0) break;
        s->blocks[m++] = id;
    }
    if (need - m > ns_kv_blocks_n_free(e->kv)) {
        for (int i = m - 1; i >= 0; i--) ns_kv_blocks_release(e->kv, s->blocks[i]);
        return false;
    }
    for (int i = m; i < need; i++) {
        s->blocks[i] = ns_kv_blocks_alloc(e->kv);
        NS_ASSERT(s->blocks[i] >= 0);
    }
    for (int i = m; i < n_share; i++) ns_kv_blocks_publish(e->kv, s->blocks[i], e->hash_scratch[i]);
    s->n_blocks = need;
    s->n_matched = m;
    s->n_ready_checked = 0;
    s->n_cached = m * bs;
    e->stat_prefix_hit += (int64_t)m * bs;
    e->stat_prompt_admitted += s->n_prompt;
    return true;
}

/* Tokens a sequence needs KV blocks for at admission: everything it may write
 * (reservation, the default: never preempts) or what it has now (optimistic). */
static int admission_tokens(const ns_engine *e, const seq *s) {
    return e->cfg.optimistic ? s->n_prompt + s->n_gen : s->n_prompt + s->max_gen;
}

/* Moves the head of the wait queue into free slot s and gives it KV blocks. Sets
 * *admitted false (and changes nothing) when the KV pool cannot hold it now. */
static ns_status admit(ns_engine *e, seq *s, bool *admitted, ns_error *err) {
    *admitted = false;
    pending *p = e->wait_head;
    const ns_request *r = &p->req;
    int max_gen = NS_MIN(r->sampling.max_tokens, e->n_ctx - r->n_prompt);
    memset(s, 0, sizeof *s);
    s->fl_row = s->nx_row = -1;
    s->tokens = ns_malloc_array((size_t)(r->n_prompt + max_gen), sizeof(int32_t));
    s->blocks = ns_malloc_array((size_t)e->max_blocks_per_seq, sizeof(int32_t));
    if (!s->tokens || !s->blocks) {
        seq_clear(e, s);
        return ns_error_set(err, NS_ERR_NOMEM, "request %llu: out of memory at admission", (unsigned long long)r->id);
    }
    memcpy(s->tokens, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    s->n_prompt = r->n_prompt;
    s->max_gen = max_gen;
    if (!seq_get_blocks(e, s, admission_tokens(e, s))) {
        seq_clear(e, s);
        return NS_OK;
    }
    s->text_cap = (size_t)max_gen * 8 + 64;
    s->text = malloc(s->text_cap);
    s->sampler = ns_sampler_create(&r->sampling, e->model->hp.n_vocab);
    s->n_top = r->sampling.n_logprobs > 0 ? r->sampling.n_logprobs : 0;
    if (r->sampling.n_logprobs >= 0) s->lps = ns_malloc_array((size_t)max_gen * (size_t)(1 + s->n_top), sizeof(ns_logprob));
    if (!s->text || !s->sampler || (r->sampling.n_logprobs >= 0 && !s->lps)) {
        seq_clear(e, s);
        return ns_error_set(err, NS_ERR_NOMEM, "request %llu: out of memory at admission", (unsigned long long)r->id);
    }
    s->active = true;
    s->id = r->id;
    s->params = r->sampling;
    s->on_text = r->on_text;
    s->user = r->user;
    s->t_admit = ns_time_now();
    s->admit_order = e->n_admitted++;
    ns_detok_init(&s->detok, false);
    e->wait_head = p->next;
    if (!e->wait_head) e->wait_tail = NULL;
    e->n_waiting--;
    free(p->prompt);
    free(p);
    e->n_running++;
    *admitted = true;
    return NS_OK;
}

/* Optimistic mode: frees a running sequence's blocks; it keeps its tokens and sampler
 * and is recomputed when blocks are available again. Blocks it had not computed yet are
 * withdrawn from the prefix cache. */
static void preempt(ns_engine *e, seq *s) {
    for (int i = 0; i < s->n_blocks; i++)
        if (!ns_kv_blocks_is_ready(e->kv, s->blocks[i]) && ns_kv_blocks_refcount(e->kv, s->blocks[i]) == 1)
            ns_kv_blocks_unpublish(e->kv, s->blocks[i]);
    seq_release_blocks(e, s);
    s->n_cached = 0;
    s->preempted = true;
    e->stat_preempted++;
}

/* The most recently admitted sequence holding blocks, or NULL. */
static seq *newest_with_blocks(ns_engine *e) {
    seq *best = NULL;
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        seq *s = &e->seqs[i];
        if (s->active && s->n_blocks > 0 && (!best || s->admit_order > best->admit_order)) best = s;
    }
    return best;
}

/* Optimistic mode: every decoding sequence gets the block its next token needs,
 * preempting the newest sequences when the pool is full. */
static void grow_blocks(ns_engine *e) {
    for (int i = 0; i < e->cfg.max_seqs; i++) {
        seq *s = &e->seqs[i];
        if (!s->active || s->n_blocks == 0) continue;
        int need = ns_kv_blocks_needed(e->kv, s->n_prompt + s->n_gen);
        while (s->n_blocks > 0 && s->n_blocks < need) {
            int32_t id = ns_kv_blocks_alloc(e->kv);
            if (id >= 0) {
                s->blocks[s->n_blocks++] = id;
                continue;
            }
            seq *victim = newest_with_blocks(e);
            NS_ASSERT(victim != NULL);
            preempt(e, victim); /* may be s itself: then it waits for re-admission */
        }
    }
}

/* True when s's cached prefix blocks have all been computed (by their owner). */
static bool prefix_ready(ns_engine *e, seq *s) {
    while (s->n_ready_checked < s->n_matched && ns_kv_blocks_is_ready(e->kv, s->blocks[s->n_ready_checked]))
        s->n_ready_checked++;
    return s->n_ready_checked == s->n_matched;
}

static ns_status finish(ns_engine *e, seq *s, ns_finish why, ns_error *err) {
    ns_completion *c = calloc(1, sizeof *c);
    if (!c) return ns_error_set(err, NS_ERR_NOMEM, "engine: out of memory");
    if (e->n_done == e->done_cap) {
        int cap = e->done_cap * 2;
        ns_completion **d = realloc(e->done, (size_t)cap * sizeof *d);
        if (!d) {
            free(c);
            return ns_error_set(err, NS_ERR_NOMEM, "engine: out of memory");
        }
        e->done = d;
        e->done_cap = cap;
    }
    /* flush a held-back tail to the stream (no stop string matched it) */
    if (s->on_text && s->emitted < s->text_len) s->on_text(s->user, s->id, s->text + s->emitted, s->text_len - s->emitted);
    c->id = s->id;
    c->finish = why;
    c->n_prompt_tokens = s->n_prompt;
    c->n_tokens = s->n_gen;
    c->n_top_logprobs = s->n_top;
    c->seconds = ns_time_now() - s->t_admit;
    /* hand the buffers over instead of copying */
    c->text = s->text;
    c->text_len = s->text_len;
    c->text[c->text_len] = '\0';
    s->text = NULL;
    c->tokens = ns_malloc_array((size_t)NS_MAX(s->n_gen, 1), sizeof(int32_t));
    if (!c->tokens) {
        free(c->text);
        free(c);
        return ns_error_set(err, NS_ERR_NOMEM, "engine: out of memory");
    }
    memcpy(c->tokens, s->tokens + s->n_prompt, (size_t)s->n_gen * sizeof(int32_t));
    c->logprobs = s->lps;
    s->lps = NULL;
    e->done[e->n_done++] = c;
    if (s->nx_row >= 0)
        s->draining = true; /* a launched step still writes its blocks: cleared when its pick is in */
    else
        seq_clear(e, s);
    e->n_running--;
    return NS_OK;
}

/* Appends bytes to the sequence's text, growing the buffer if a token is unusually long. */
static ns_status text_append(seq *s, const char *p, size_t n, ns_error *err) {
    if (s->text_len + n + 1 > s->text_cap) {
        size_t cap = (s->text_len + n + 1) * 2;
        char *t = realloc(s->text, cap);
        if (!t) return ns_error_set(err, NS_ERR_NOMEM, "engine: out of memory for text");
        s->text = t;
        s->text_cap = cap;
    }
    memcpy(s->text + s->text_len, p, n);
    s->text_len += n;
    return NS_OK;
}

/* Nothing that needs the logits on the host (penalties, logprobs): the backend can pick
 * the token where the logits are. */
static bool backend_can_pick(const seq *s) {
    const ns_sampling *p = &s->params;
    return p->repeat_penalty == 1.0f && p->presence_penalty == 0.0f && p->frequency_penalty == 0.0f && !s->lps;
}

/* Greedy too: the backend's argmax gives the same token as the host sampler. */
static bool plain_greedy(const seq *s) { return s->params.temperature == 0.0f && backend_can_pick(s); }

/* Where a step's tokens are picked: all on the host from downloaded logits; all greedy
 * by the backend's argmax_rows; or by its sample_rows, where only the rows that need the
 * host sampler download their logits. */
typedef enum { PICK_HOST, PICK_ARGMAX, PICK_ROWS } pick_mode;

static pick_mode choose_pick(const ns_engine *e, int n_seq, int n_logits) {
    const ns_backend_ops *ops = e->backend->ops;
    if (n_logits == 0 || e->cfg.no_device_sampling) return PICK_HOST;
    bool all_greedy = true, any_backend = false;
    for (int k = 0; k < n_seq; k++) {
        const seq *s = &e->seqs[e->b_seq_of[k]];
        if (s->logit_row < 0) continue;
        all_greedy = all_greedy && plain_greedy(s);
        any_backend = any_backend || backend_can_pick(s);
    }
    if (all_greedy && ops->argmax_rows) return PICK_ARGMAX;
    return any_backend && ops->sample_rows ? PICK_ROWS : PICK_HOST;
}

/* PICK_ROWS after the forward pass: each row's parameters (drawing the request's random
 * number for the step: only now, so that a step discarded for lack of memory draws
 * nothing), the backend's picks into b_ids, and the logits of the host's rows into
 * e->logits at their row. */
static ns_status pick_rows(ns_engine *e, int n_seq, int n_logits, ns_error *err) {
    const int n_vocab = e->model->hp.n_vocab;
    int i = 0;
    for (int k = 0; k < n_seq; k++) {
        seq *s = &e->seqs[e->b_seq_of[k]];
        if (s->logit_row < 0) continue;
        e->b_on_host[i] = !backend_can_pick(s) || !ns_sampler_row_params(s->sampler, &e->b_samp[i]);
        if (e->b_on_host[i]) e->b_samp[i] = (ns_row_sampling){0.0f, 0, 1.0f, 0.0f, 0.0}; /* a cheap pick, unused */
        i++;
    }
    NS_ASSERT(i == n_logits);
    ns_status st = e->backend->ops->sample_rows(e->backend, e->b_ids, e->scratch.logits, n_logits, n_vocab,
                                                e->b_samp, err);
    for (i = 0; i < n_logits && !st; i++) {
        if (!e->b_on_host[i]) continue;
        const size_t off = (size_t)i * (size_t)n_vocab;
        st = e->backend->ops->download(e->backend, e->logits + off, e->scratch.logits + off,
                                       (size_t)n_vocab * sizeof(float), err);
    }
    return st;
}

/* Steps overlap (the host takes in step k's tokens while the device runs step k + 1)
 * with NS_ENGINE_OVERLAP=1 (off by default until measured on a GPU), when the backend
 * picks without waiting (pick_launch), outside optimistic mode (whose preemption would
 * free blocks a launched step writes). */
static bool can_overlap(const ns_engine *e) {
    const ns_backend_ops *ops = e->backend->ops;
    return e->overlap && ops->pick_launch && ops->pick_wait && !e->cfg.optimistic;
}

/* Every row of the step is picked on the device (no penalties, no logprobs). */
static bool all_rows_on_device(const ns_engine *e, int n_seq, pick_mode pick) {
    if (pick == PICK_ARGMAX) return true;
    if (pick != PICK_ROWS) return false;
    for (int k = 0; k < n_seq; k++) {
        const seq *s = &e->seqs[e->b_seq_of[k]];
        if (s->logit_row >= 0 && !backend_can_pick(s)) return false;
    }
    return true;
}

static ns_status accept_token(ns_engine *e, seq *s, int32_t tok, ns_error *err);

/* Waits for the pick on its way and takes in its tokens, in row order; a sequence that
 * finished meanwhile (draining) drops its token and gives its slot back. */
static ns_status complete_picks(ns_engine *e, ns_error *err) {
    e->fl_on = false;
    ns_status st = e->backend->ops->pick_wait(e->backend, e->b_ids, e->fl_n, err);
    for (int i = 0; i < e->fl_n && !st; i++) {
        seq *s = &e->seqs[e->fl_slot[i]];
        NS_ASSERT(s->active && s->fl_row == i);
        s->fl_row = -1;
        if (s->draining) {
            if (s->nx_row < 0) seq_clear(e, s);
            continue;
        }
        st = accept_token(e, s, e->b_ids[i], err);
    }
    return st;
}

/* Handles the token just sampled for sequence s; may finish it. */
static ns_status accept_token(ns_engine *e, seq *s, int32_t tok, ns_error *err) {
    ns_status st;
    if (tok < 0) {
        /* no finite logit: fail this item, keep the others going */
        ns_status fst = finish(e, s, NS_FINISH_ERROR, err);
        if (!fst) {
            ns_completion *c = e->done[e->n_done - 1];
            snprintf(c->error, sizeof c->error,
                     "request %llu: the model produced no finite logits at generated token %d",
                     (unsigned long long)c->id, c->n_tokens);
        }
        return fst;
    }
    s->tokens[s->n_prompt + s->n_gen] = tok;
    s->n_gen++;
    ns_sampler_accept(s->sampler, tok);
    bool eog = !s->params.ignore_eos && e->tok && ns_tokenizer_is_eog(e->tok, tok);
    for (int i = 0; i < s->params.n_stop_tokens; i++)
        if (s->params.stop_tokens[i] == tok) eog = true;
    if (eog) return finish(e, s, NS_FINISH_STOP, err);

    if (!e->tok) /* a synthetic model: tokens only */
        return s->n_gen >= s->max_gen ? finish(e, s, NS_FINISH_LENGTH, err) : NS_OK;
    char buf[256];
    int n = ns_detok_push(e->tok, &s->detok, tok, buf, sizeof buf);
    if (n > 0 && (st = text_append(s, buf, (size_t)n, err))) return st;
    bool at_limit = s->n_gen >= s->max_gen;
    if (at_limit) {
        n = ns_detok_flush(&s->detok, buf, sizeof buf);
        if (n > 0 && (st = text_append(s, buf, (size_t)n, err))) return st;
    }
    size_t hold = 0;
    if (s->params.n_stop > 0) {
        /* only the tail can hold a new match: the earlier text was checked before */
        size_t from = s->emitted;
        int64_t at = ns_stop_find(&s->params, s->text + from, s->text_len - from, &hold);
        if (at >= 0) {
            s->text_len = from + (size_t)at;
            if (s->on_text && s->text_len > s->emitted)
                s->on_text(s->user, s->id, s->text + s->emitted, s->text_len - s->emitted);
            s->emitted = s->text_len;
            return finish(e, s, NS_FINISH_STOP, err);
        }
    }
    if (at_limit) return finish(e, s, NS_FINISH_LENGTH, err);
    size_t ready = s->text_len - hold;
    if (s->on_text && ready > s->emitted) s->on_text(s->user, s->id, s->text + s->emitted, ready - s->emitted);
    if (ready > s->emitted) s->emitted = ready;
    return NS_OK;
}

ns_status ns_engine_step(ns_engine *e, ns_step_stats *stats, ns_error *err) {
    ns_status st;
    const int S = e->cfg.max_seqs, budget = e->budget_tokens;
    /* 1. admission */
    if (e->cfg.optimistic) {
        grow_blocks(e);
        /* preempted sequences come back first, oldest first */
        for (;;) {
            seq *best = NULL;
            for (int i = 0; i < S; i++) {
                seq *s = &e->seqs[i];
                if (s->active && s->preempted && (!best || s->admit_order < best->admit_order)) best = s;
            }
            if (!best || !seq_get_blocks(e, best, admission_tokens(e, best))) break;
            best->preempted = false;
        }
    }
    bool blocked = false;
    for (int i = 0; i < S; i++)
        if (e->seqs[i].active && e->seqs[i].preempted) blocked = true;
    if (e->cfg.policy == NS_SCHED_STATIC && e->n_running > 0) blocked = true; /* wait for the whole batch */
    for (int i = 0; i < S && e->wait_head && !blocked; i++) {
        if (e->seqs[i].active) continue;
        bool ok;
        if ((st = admit(e, &e->seqs[i], &ok, err))) return st;
        if (!ok) break; /* KV full: keep submission order, wait for blocks */
    }
    /* 2. the batch: single tokens first (decode), then chunks within the budget. A
     * sequence whose last token is still on its way (fl_row) decodes it by naming its row
     * in the pick on its way; one whose token on its way is its last waits for it. */
    int n_tok = 0, n_seq = 0, n_prompt_tok = 0, n_decode = 0;
    const bool capped = e->budget_seqs < S;
    for (int pass = 0; pass < 2; pass++) {
        for (int k = 0; k < S && n_tok < budget && n_seq < e->budget_seqs; k++) {
            /* a cut-down batch starts at a rotating slot, so every sequence gets its turn */
            int i = capped ? (k + e->rr_start) % S : k;
            seq *s = &e->seqs[i];
            if (!s->active || s->n_blocks == 0 || s->draining) continue;
            const int known = s->n_prompt + s->n_gen, coming = s->fl_row >= 0;
            if (coming && s->n_gen + 1 >= s->max_gen) continue;
            int total = known + coming;
            int remaining = total - s->n_cached;
            NS_ASSERT(remaining >= 1);
            if ((pass == 0) != (remaining == 1)) continue;
            if (!prefix_ready(e, s)) continue; /* its shared prefix is computed this step */
            int n = pass == 0 ? 1 : NS_MIN(remaining, budget - n_tok);
            e->b_tok_start[n_seq] = n_tok;
            e->b_n_tok[n_seq] = n;
            e->b_n_past[n_seq] = s->n_cached;
            memcpy(e->b_block_table + (size_t)n_seq * e->max_blocks_per_seq, s->blocks,
                   (size_t)s->n_blocks * sizeof(int32_t));
            for (int j = 0; j < n; j++) {
                const int at = s->n_cached + j;
                e->b_tokens[n_tok + j] = at < known ? s->tokens[at] : -1 - s->fl_row;
                e->b_pos[n_tok + j] = at;
            }
            s->logit_row = -1;
            if (s->n_cached + n == total) s->logit_row = n_tok + n - 1; /* needs the next token */
            e->b_seq_of[n_seq] = i;
            n_tok += n;
            n_seq++;
            if ((s->n_gen > 0 || coming) && remaining == 1) n_decode++;
            else n_prompt_tok += n;
        }
    }
    int n_logits = 0;
    for (int k = 0; k < n_seq; k++) {
        seq *s = &e->seqs[e->b_seq_of[k]];
        if (s->logit_row >= 0) e->b_logit_rows[n_logits++] = s->logit_row;
    }
    if (stats) {
        stats->n_seqs = n_seq;
        stats->n_tokens = n_tok;
        stats->n_prompt_tokens = n_prompt_tok;
        stats->n_decode = n_decode;
        stats->n_waiting = e->n_waiting;
        stats->kv_blocks_total = ns_kv_blocks_n_total(e->kv);
        stats->kv_blocks_used = stats->kv_blocks_total - ns_kv_blocks_n_free(e->kv);
        stats->n_running = e->n_running;
        stats->kv_blocks_cached = ns_kv_blocks_n_cached(e->kv);
        stats->prefix_hit_tokens = e->stat_prefix_hit;
        stats->prompt_tokens_admitted = e->stat_prompt_admitted;
        stats->n_preempted = e->stat_preempted;
        stats->n_oom_retries = e->stat_oom;
        stats->batch_token_limit = e->budget_tokens;
        stats->note = NULL;
    }
    if (n_tok == 0) return e->fl_on ? complete_picks(e, err) : NS_OK;

    ns_fwd_batch batch = {
        .n_tokens = n_tok, .n_seqs = n_seq, .tokens = e->b_tokens, .pos = e->b_pos,
        .tok_start = e->b_tok_start, .n_seq_tokens = e->b_n_tok, .n_past = e->b_n_past,
        .block_table = e->b_block_table, .max_blocks_per_seq = e->max_blocks_per_seq,
        .logit_rows = e->b_logit_rows, .n_logits = n_logits,
    };
    const pick_mode pick = choose_pick(e, n_seq, n_logits);
    /* this step's picks stay on the device while the host handles the previous step's */
    const bool overlap = can_overlap(e) && n_logits > 0 && all_rows_on_device(e, n_seq, pick);
    if (capped) e->rr_start = (e->rr_start + n_seq) % S;
    st = ns_forward(e->model, &e->scratch, &batch, pick == PICK_HOST ? e->logits : NULL, err);
    if (st == NS_ERR_NOMEM && n_tok > 1) {
        /* discard the step (nothing of it ran: no token was cached or sampled) and go on
         * with half the batch; the previous step's picks are taken in first */
        if (e->fl_on && (st = complete_picks(e, err))) return st;
        e->budget_tokens = NS_MAX(1, n_tok / 2);
        e->budget_seqs = NS_MIN(e->budget_seqs, e->budget_tokens); /* a decode batch: n_seq == n_tok */
        e->stat_oom++;
        snprintf(e->note, sizeof e->note, "%s; the step is run again with at most %d tokens and %d sequences",
                 err->msg, e->budget_tokens, e->budget_seqs);
        if (stats) {
            stats->n_oom_retries = e->stat_oom;
            stats->batch_token_limit = e->budget_tokens;
            stats->note = e->note;
        }
        return NS_OK;
    }
    if (st) return st;

    /* 3. the batch's tokens are in the cache (or on their way there, in stream order) */
    int i_logit = 0;
    for (int k = 0; k < n_seq; k++) {
        seq *s = &e->seqs[e->b_seq_of[k]];
        int bs = e->cfg.block_size;
        for (int b = s->n_cached / bs; b < (s->n_cached + e->b_n_tok[k]) / bs; b++)
            ns_kv_blocks_set_ready(e->kv, s->blocks[b]); /* full now: sharers may read it */
        s->n_cached += e->b_n_tok[k];
        if (s->logit_row >= 0) s->nx_row = i_logit++;
    }
    if (overlap) {
        /* each row's parameters (drawing the request's random number for the step), then
         * the pick, which is not waited for here */
        i_logit = 0;
        for (int k = 0; k < n_seq && pick == PICK_ROWS; k++) {
            seq *s = &e->seqs[e->b_seq_of[k]];
            if (s->logit_row < 0) continue;
            const bool on_device = ns_sampler_row_params(s->sampler, &e->b_samp[i_logit++]);
            NS_ASSERT(on_device); /* all_rows_on_device: no penalties */
        }
        st = e->backend->ops->pick_launch(e->backend, e->scratch.logits, n_logits, e->model->hp.n_vocab,
                                          pick == PICK_ROWS ? e->b_samp : NULL, err);
        if (st) return st;
    }
    /* 4. the previous step's tokens (that step and this one were built without them) */
    if (e->fl_on && (st = complete_picks(e, err))) return st;
    if (overlap) {
        e->fl_on = true;
        e->fl_n = n_logits;
        for (int k = 0; k < n_seq; k++) {
            seq *s = &e->seqs[e->b_seq_of[k]];
            if (s->logit_row < 0) continue;
            e->fl_slot[s->nx_row] = e->b_seq_of[k];
            s->fl_row = s->nx_row;
            s->nx_row = -1;
        }
        return NS_OK;
    }
    /* 5. this step's tokens now, in batch order (each request has its own random stream) */
    if (pick == PICK_ARGMAX)
        st = e->backend->ops->argmax_rows(e->backend, e->b_ids, e->scratch.logits, n_logits, e->model->hp.n_vocab, err);
    if (pick == PICK_ROWS) st = pick_rows(e, n_seq, n_logits, err);
    if (st) return st;
    const int n_vocab = e->model->hp.n_vocab;
    i_logit = 0;
    for (int k = 0; k < n_seq; k++) {
        seq *s = &e->seqs[e->b_seq_of[k]];
        if (s->logit_row < 0) continue;
        const int row = i_logit++;
        s->nx_row = -1;
        if (s->draining) { /* finished by the previous step's tokens */
            seq_clear(e, s);
            continue;
        }
        int32_t tok;
        if (pick == PICK_ARGMAX || (pick == PICK_ROWS && !e->b_on_host[row])) {
            tok = e->b_ids[row];
        } else {
            float *lrow = e->logits + (size_t)row * n_vocab;
            ns_logprob *lp = s->lps ? s->lps + (size_t)s->n_gen * (size_t)(1 + s->n_top) : NULL;
            tok = ns_sampler_sample(s->sampler, lrow, lp, lp && s->n_top > 0 ? lp + 1 : NULL);
        }
        if ((st = accept_token(e, s, tok, err))) return st;
    }
    return NS_OK;
}

int ns_engine_collect(ns_engine *e, ns_completion **out, int max) {
    int n = NS_MIN(max, e->n_done);
    for (int i = 0; i < n; i++) out[i] = e->done[i];
    memmove(e->done, e->done + n, (size_t)(e->n_done - n) * sizeof *e->done);
    e->n_done -= n;
    return n;
}

ns_status ns_engine_prompt_logits(ns_engine *e, const int32_t *prompt, int n_prompt, float *logits,
                                  ns_error *err) {
    if (!ns_engine_idle(e))
        return ns_error_set(err, NS_ERR_INVALID, "engine: prompt_logits needs an idle engine");
    const ns_hparams *hp = &e->model->hp;
    if (n_prompt < 1 || n_prompt > e->n_ctx)
        return ns_error_set(err, NS_ERR_INVALID, "engine: prompt of %d tokens is outside [1, %d]", n_prompt, e->n_ctx);
    int need = ns_kv_blocks_needed(e->kv, n_prompt);
    if (need > ns_kv_blocks_n_free(e->kv))
        return ns_error_set(err, NS_ERR_CAPACITY, "engine: prompt of %d tokens needs %d KV blocks, %d free", n_prompt,
                            need, ns_kv_blocks_n_free(e->kv));
    for (int i = 0; i < need; i++) e->b_block_table[i] = ns_kv_blocks_alloc(e->kv);
    ns_status st = NS_OK;
    int done = 0;
    while (done < n_prompt) {
        int n = NS_MIN(n_prompt - done, e->budget_tokens);
        for (int j = 0; j < n; j++) {
            e->b_tokens[j] = prompt[done + j];
            e->b_pos[j] = done + j;
        }
        e->b_tok_start[0] = 0;
        e->b_n_tok[0] = n;
        e->b_n_past[0] = done;
        e->b_logit_rows[0] = n - 1;
        bool last = done + n == n_prompt;
        ns_fwd_batch batch = {
            .n_tokens = n, .n_seqs = 1, .tokens = e->b_tokens, .pos = e->b_pos, .tok_start = e->b_tok_start,
            .n_seq_tokens = e->b_n_tok, .n_past = e->b_n_past, .block_table = e->b_block_table,
            .max_blocks_per_seq = e->max_blocks_per_seq, .logit_rows = e->b_logit_rows, .n_logits = last ? 1 : 0,
        };
        if ((st = ns_forward(e->model, &e->scratch, &batch, e->logits, err))) break;
        done += n;
    }
    if (!st) memcpy(logits, e->logits, (size_t)hp->n_vocab * sizeof(float));
    for (int i = 0; i < need; i++) ns_kv_blocks_release(e->kv, e->b_block_table[i]);
    return st;
}
