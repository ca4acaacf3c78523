/* test_engine.c: the forward pass and the engine API against a naive reference forward
 * written here (contiguous KV, reference kernels, weights dequantized with the reference
 * dequantizers), on tiny random-weight models in every weight type; mixed batches
 * against one-at-a-time runs; the model loader's errors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "engine.h"
#include "backend.h"
#include "kv_cache.h"
#include "ops.h"
#include "switches.h"
#include "tiny_model.h"

/* ---- naive reference forward ---- */

static float *ref_tensor(const ns_gguf *g, const char *name) {
    const ns_gguf_tensor *t = ns_gguf_find_tensor(g, name);
    if (!t) return NULL;
    int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    float *f = malloc((size_t)(t->ne[0] * rows) * sizeof(float));
    size_t rb = ns_ggml_row_bytes(t->type, t->ne[0]);
    for (int64_t r = 0; r < rows; r++)
        ns_cpu_dequant_row_ref(t->type, (const char *)t->data + (size_t)r * rb, f + r * t->ne[0], t->ne[0]);
    return f;
}

/* Logits (n_vocab) of the last of n tokens. */
static void ref_forward(const char *path, const int32_t *toks, int n, float *out_logits) {
    ns_gguf *g = NULL;
    ns_error err;
    if (ns_gguf_open(path, &g, &err)) {
        CHECK_MSG(0, "ref: %s", err.msg);
        return;
    }
    ns_hparams hp;
    CHECK_STATUS_OK(ns_hparams_read(g, &hp, &err), &err);
    int E = hp.n_embd, hd = hp.head_dim, H = hp.n_head, HK = hp.n_head_kv, F = hp.n_ff, V = hp.n_vocab;
    float *x = calloc((size_t)n * E, sizeof(float)), *xb = calloc((size_t)n * E, sizeof(float));
    float *q = calloc((size_t)n * H * hd, sizeof(float)), *k = calloc((size_t)n * HK * hd, sizeof(float));
    float *v = calloc((size_t)n * HK * hd, sizeof(float)), *att = calloc((size_t)n * H * hd, sizeof(float));
    float *g1 = calloc((size_t)n * F, sizeof(float)), *g2 = calloc((size_t)n * F, sizeof(float));
    float *sc = calloc((size_t)n, sizeof(float));
    float *inv_freq = calloc((size_t)hp.n_rot / 2, sizeof(float));
    int32_t *pos = calloc((size_t)n, sizeof(int32_t));
    for (int i = 0; i < n; i++) pos[i] = i;
    ns_rope_inv_freq(inv_freq, hp.n_rot, hp.rope_base, 1.0f, 1.0f, 4.0f, 8192, NULL);
    float *emb = ref_tensor(g, "token_embd.weight");
    for (int i = 0; i < n; i++) memcpy(x + (size_t)i * E, emb + (size_t)toks[i] * E, (size_t)E * sizeof(float));
    char name[64];
    for (int il = 0; il < hp.n_layer; il++) {
#define T(s) (snprintf(name, sizeof name, "blk.%d.%s", il, s), ref_tensor(g, name))
        float *an = T("attn_norm.weight"), *wq = T("attn_q.weight"), *wk = T("attn_k.weight");
        float *wv = T("attn_v.weight"), *wo = T("attn_output.weight"), *fn = T("ffn_norm.weight");
        float *wg = T("ffn_gate.weight"), *wu = T("ffn_up.weight"), *wd = T("ffn_down.weight");
        float *bq = T("attn_q.bias"), *bk = T("attn_k.bias"), *bv = T("attn_v.bias");
#undef T
        ns_cpu_rmsnorm_ref(xb, x, an, n, E, hp.norm_eps);
        ns_cpu_matmul_ref(q, xb, wq, n, H * hd, E);
        ns_cpu_matmul_ref(k, xb, wk, n, HK * hd, E);
        ns_cpu_matmul_ref(v, xb, wv, n, HK * hd, E);
        for (int i = 0; i < n; i++) {
            if (bq) ns_cpu_add_ref(q + (size_t)i * H * hd, bq, H * hd);
            if (bk) ns_cpu_add_ref(k + (size_t)i * HK * hd, bk, HK * hd);
            if (bv) ns_cpu_add_ref(v + (size_t)i * HK * hd, bv, HK * hd);
        }
        ns_cpu_rope_ref(q, pos, n, H, hd, hp.n_rot, inv_freq, hp.is_neox);
        ns_cpu_rope_ref(k, pos, n, HK, hd, hp.n_rot, inv_freq, hp.is_neox);
        for (int i = 0; i < n; i++) {
            for (int h = 0; h < H; h++) {
                int kh = h / (H / HK);
                const float *qi = q + ((size_t)i * H + h) * hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= i; j++) {
                    double d = 0;
                    for (int c = 0; c < hd; c++) d += (double)qi[c] * k[((size_t)j * HK + kh) * hd + c];
                    sc[j] = (float)(d / sqrt((double)hd));
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j <= i; j++) {
                    sc[j] = (float)exp(sc[j] - mx);
                    sum += sc[j];
                }
                float *o = att + ((size_t)i * H + h) * hd;
                for (int c = 0; c < hd; c++) {
                    double acc = 0;
                    for (int j = 0; j <= i; j++) acc += sc[j] * (double)v[((size_t)j * HK + kh) * hd + c];
                    o[c] = (float)(acc / sum);
                }
            }
        }
        ns_cpu_matmul_ref(xb, att, wo, n, E, H * hd);
        ns_cpu_add_ref(x, xb, (int64_t)n * E);
        ns_cpu_rmsnorm_ref(xb, x, fn, n, E, hp.norm_eps);
        ns_cpu_matmul_ref(g1, xb, wg, n, F, E);
        ns_cpu_matmul_ref(g2, xb, wu, n, F, E);
        ns_cpu_swiglu_ref(g1, g1, g2, (int64_t)n * F);
        ns_cpu_matmul_ref(xb, g1, wd, n, E, F);
        ns_cpu_add_ref(x, xb, (int64_t)n * E);
        free(an); free(wq); free(wk); free(wv); free(wo); free(fn); free(wg); free(wu); free(wd);
        free(bq); free(bk); free(bv);
    }
    float *on = ref_tensor(g, "output_norm.weight");
    float *ow = ref_tensor(g, "output.weight");
    if (!ow) ow = emb, emb = NULL;
    ns_cpu_rmsnorm_ref(xb, x + (size_t)(n - 1) * E, on, 1, E, hp.norm_eps);
    ns_cpu_matmul_ref(out_logits, xb, ow, 1, V, E);
    free(on); free(ow); free(emb);
    free(x); free(xb); free(q); free(k); free(v); free(att); free(g1); free(g2); free(sc); free(inv_freq); free(pos);
    ns_gguf_close(g);
}

static const char *tiny_path(const char *tag) {
    static char path[512];
    snprintf(path, sizeof path, "%s/tiny_%s.gguf", ns_test_tmpdir(), tag);
    return path;
}

static ns_engine *open_engine(const char *path, int max_seqs, int max_batch_tokens) {
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = path;
    cfg.backend = "cpu";
    cfg.max_seqs = max_seqs;
    cfg.max_batch_tokens = max_batch_tokens;
    cfg.n_threads = 2;
    ns_engine *e = NULL;
    ns_error err;
    ns_status st = ns_engine_open(&cfg, &e, NULL, &err);
    CHECK_MSG(st == NS_OK, "engine open %s: %s", path, err.msg);
    return st ? NULL : e;
}

/* Prompt logits from the engine vs the reference, for a tiny model of one weight type. */
static void check_tiny_type(int type, const char *arch, int tied) {
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    c.wtype = type;
    c.arch = arch;
    c.tied = tied;
    char tag[64];
    snprintf(tag, sizeof tag, "%s_%s_%d", ns_ggml_type_name(type), arch, tied);
    const char *path = tiny_path(tag);
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    ns_engine *e = open_engine(path, 4, 16); /* small batch budget: prompts go in chunks */
    if (!e) return;
    int32_t toks[41];
    ns_test_rng rng = {(unsigned long long)type + 7};
    for (int i = 0; i < 41; i++) toks[i] = (int32_t)(ns_test_rng_u64(&rng) % NS_TINY_N_VOCAB);
    float got[NS_TINY_N_VOCAB], ref[NS_TINY_N_VOCAB];
    for (int n = 1; n <= 41; n += 20) {
        CHECK_STATUS_OK(ns_engine_prompt_logits(e, toks, n, got, &err), &err);
        ref_forward(path, toks, n, ref);
        /* weights identical (same dequantization), so only fp32 summation order differs */
        if (!CHECK_ALLCLOSE(got, ref, NS_TINY_N_VOCAB, 1e-3, 1e-3, 1e-8)) fprintf(stderr, "  (%s, n=%d)\n", tag, n);
    }
    ns_engine_close(e);
}

NS_TEST(test_engine_tiny_f32) { check_tiny_type(NS_GGML_F32, "llama", 1); }
NS_TEST(test_engine_tiny_f16) { check_tiny_type(NS_GGML_F16, "llama", 1); }
NS_TEST(test_engine_tiny_bf16) { check_tiny_type(NS_GGML_BF16, "llama", 0); }
NS_TEST(test_engine_tiny_q8_0) { check_tiny_type(NS_GGML_Q8_0, "llama", 1); }
NS_TEST(test_engine_tiny_q4_0) { check_tiny_type(NS_GGML_Q4_0, "llama", 0); }
NS_TEST(test_engine_tiny_q4_1) { check_tiny_type(NS_GGML_Q4_1, "llama", 1); }
NS_TEST(test_engine_tiny_qwen2_neox_bias) { check_tiny_type(NS_GGML_F32, "qwen2", 0); }

/* Runs prompts through an engine (all submitted at once), greedy, returning completions
 * indexed by request id. */
static void run_all(ns_engine *e, int n_req, int32_t **prompts, const int *lens, int max_tokens,
                    ns_completion **out) {
    ns_error err;
    for (int r = 0; r < n_req; r++) {
        ns_request req;
        memset(&req, 0, sizeof req);
        req.id = (uint64_t)r;
        req.prompt = prompts[r];
        req.n_prompt = lens[r];
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = max_tokens;
        req.sampling.ignore_eos = true;
        req.sampling.n_logprobs = 3;
        CHECK_STATUS_OK(ns_engine_submit(e, &req, &err), &err);
    }
    int got = 0, guard = 0;
    while (!ns_engine_idle(e) && guard++ < 100000) {
        ns_step_stats st;
        CHECK_STATUS_OK(ns_engine_step(e, &st, &err), &err);
        CHECK(st.n_tokens <= 64);
        CHECK(st.kv_blocks_used <= st.kv_blocks_total);
        ns_completion *c[8];
        int n = ns_engine_collect(e, c, 8);
        for (int i = 0; i < n; i++) out[c[i]->id] = c[i];
        got += n;
    }
    ns_completion *c[8];
    int n = ns_engine_collect(e, c, 8);
    for (int i = 0; i < n; i++) out[c[i]->id] = c[i];
    got += n;
    CHECK_EQ_INT(got, n_req);
}

NS_TEST(test_engine_mixed_batch_equals_single) {
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    c.wtype = NS_GGML_Q8_0;
    const char *path = tiny_path("mixed");
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    enum { N = 6 };
    int lens[N] = {1, 5, 17, 33, 64, 3};
    int32_t *prompts[N];
    ns_test_rng rng = {42};
    for (int r = 0; r < N; r++) {
        prompts[r] = malloc((size_t)lens[r] * sizeof(int32_t));
        for (int i = 0; i < lens[r]; i++) prompts[r][i] = (int32_t)(ns_test_rng_u64(&rng) % 264);
    }
    ns_completion *single[N] = {0}, *batched[N] = {0};
    ns_engine *e1 = open_engine(path, 1, 64);
    ns_engine *e2 = open_engine(path, 4, 24); /* 4 slots, prompts chunked beside decodes */
    if (e1 && e2) {
        for (int r = 0; r < N; r++) run_all(e1, 1, &prompts[r], &lens[r], 12, &single[r]);
        run_all(e2, N, prompts, lens, 12, batched);
        for (int r = 0; r < N; r++) {
            if (!single[r] || !batched[r]) continue;
            CHECK_EQ_INT(single[r]->n_tokens, 12);
            CHECK_EQ_INT(batched[r]->n_tokens, 12);
            for (int i = 0; i < 12; i++) {
                CHECK_EQ_INT(single[r]->tokens[i], batched[r]->tokens[i]);
                for (int k = 0; k < 4; k++) {
                    const ns_logprob *a = &single[r]->logprobs[i * 4 + k], *b = &batched[r]->logprobs[i * 4 + k];
                    CHECK_EQ_INT(a->token, b->token);
                    CHECK_NEAR(a->logprob, b->logprob, 1e-4);
                }
            }
        }
    }
    for (int r = 0; r < N; r++) {
        ns_completion_free(single[r]);
        ns_completion_free(batched[r]);
        free(prompts[r]);
    }
    ns_engine_close(e1);
    ns_engine_close(e2);
}

NS_TEST(test_engine_loader_errors) {
    ns_error err;
    struct { const char *skip, *bad, *want; } cases[] = {
        {"blk.1.ffn_up.weight", NULL, "blk.1.ffn_up.weight' is missing"},
        {"output_norm.weight", NULL, "output_norm.weight' is missing"},
        {NULL, "blk.0.attn_k.weight", "blk.0.attn_k.weight' has shape [128, 32"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ns_tiny_cfg c;
        ns_tiny_cfg_default(&c);
        c.skip_tensor = cases[i].skip;
        c.bad_shape_tensor = cases[i].bad;
        const char *path = tiny_path("broken");
        CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
        ns_engine_config cfg;
        ns_engine_config_default(&cfg);
        cfg.model_path = path;
        cfg.backend = "cpu";
        ns_engine *e = NULL;
        ns_status st = ns_engine_open(&cfg, &e, NULL, &err);
        CHECK(st != NS_OK && e == NULL);
        CHECK_MSG(strstr(err.msg, cases[i].want) != NULL, "error '%s' lacks '%s'", err.msg, cases[i].want);
    }
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = "/nonexistent/model.gguf";
    ns_engine *e = NULL;
    CHECK(ns_engine_open(&cfg, &e, NULL, &err) == NS_ERR_IO);
    CHECK(strstr(err.msg, "/nonexistent/model.gguf") != NULL);
}

NS_TEST(test_engine_submit_errors) {
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    const char *path = tiny_path("submit");
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    ns_engine *e = open_engine(path, 2, 32);
    if (!e) return;
    int32_t toks[300];
    for (int i = 0; i < 300; i++) toks[i] = i % 200;
    ns_request req;
    memset(&req, 0, sizeof req);
    ns_sampling_default(&req.sampling);
    req.id = 7;
    req.prompt = toks;
    req.n_prompt = 300; /* n_ctx 256 */
    CHECK(ns_engine_submit(e, &req, &err) == NS_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "300 tokens") && strstr(err.msg, "256"), "%s", err.msg);
    req.n_prompt = 0;
    CHECK(ns_engine_submit(e, &req, &err) == NS_ERR_INVALID);
    req.n_prompt = 4;
    toks[2] = 99999;
    CHECK(ns_engine_submit(e, &req, &err) == NS_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "99999") != NULL, "%s", err.msg);
    toks[2] = 5;
    req.sampling.top_p = 1.5f;
    CHECK(ns_engine_submit(e, &req, &err) == NS_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "top_p") != NULL, "%s", err.msg);
    CHECK(ns_engine_idle(e));
    ns_engine_close(e);
}

NS_TEST(test_engine_stop_string_and_length) {
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    const char *path = tiny_path("stop");
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    ns_engine *e = open_engine(path, 2, 32);
    if (!e) return;
    int32_t toks[3] = {70, 71, 72};
    ns_completion *free_run = NULL, *stopped = NULL;
    int len = 3;
    int32_t *p = toks;
    run_all(e, 1, &p, &len, 20, &free_run);
    if (free_run) {
        CHECK(free_run->finish == NS_FINISH_LENGTH);
        CHECK(free_run->text_len >= 2);
        /* stop on the text of generated bytes 1..2: output must end right before them */
        if (free_run->text_len >= 3) {
            ns_request req;
            memset(&req, 0, sizeof req);
            req.prompt = toks;
            req.n_prompt = 3;
            ns_sampling_default(&req.sampling);
            req.sampling.max_tokens = 20;
            req.sampling.ignore_eos = true;
            req.sampling.n_stop = 1;
            size_t sl = free_run->text_len - 1 < 2 ? free_run->text_len - 1 : 2;
            memcpy(req.sampling.stop[0], free_run->text + 1, sl);
            req.sampling.stop[0][sl] = 0;
            if (ns_sampling_validate(&req.sampling, NS_TINY_N_VOCAB, &err) == NS_OK) {
                CHECK_STATUS_OK(ns_engine_submit(e, &req, &err), &err);
                while (!ns_engine_idle(e)) CHECK_STATUS_OK(ns_engine_step(e, NULL, &err), &err);
                CHECK(ns_engine_collect(e, &stopped, 1) == 1);
                if (stopped) {
                    CHECK(stopped->finish == NS_FINISH_STOP);
                    const char *at = strstr(free_run->text, req.sampling.stop[0]);
                    CHECK(at != NULL);
                    if (at) CHECK_EQ_INT(stopped->text_len, at - free_run->text);
                }
            }
        }
    }
    ns_completion_free(free_run);
    ns_completion_free(stopped);
    ns_engine_close(e);
}

NS_TEST(test_kv_blocks_refcount) {
    ns_kv_blocks *kv = NULL;
    ns_error err;
    CHECK_STATUS_OK(ns_kv_blocks_create(4, 16, &kv, &err), &err);
    if (!kv) return;
    CHECK_EQ_INT(ns_kv_blocks_needed(kv, 1), 1);
    CHECK_EQ_INT(ns_kv_blocks_needed(kv, 16), 1);
    CHECK_EQ_INT(ns_kv_blocks_needed(kv, 17), 2);
    int32_t a = ns_kv_blocks_alloc(kv), b = ns_kv_blocks_alloc(kv);
    CHECK(a >= 0 && b >= 0 && a != b);
    CHECK_EQ_INT(ns_kv_blocks_n_free(kv), 2);
    ns_kv_blocks_retain(kv, a);
    ns_kv_blocks_release(kv, a);
    CHECK_EQ_INT(ns_kv_blocks_refcount(kv, a), 1);
    CHECK_EQ_INT(ns_kv_blocks_n_free(kv), 2);
    ns_kv_blocks_release(kv, a);
    CHECK_EQ_INT(ns_kv_blocks_n_free(kv), 3);
    CHECK(ns_kv_blocks_alloc(kv) >= 0);
    CHECK(ns_kv_blocks_alloc(kv) >= 0);
    CHECK(ns_kv_blocks_alloc(kv) >= 0);
    CHECK_EQ_INT(ns_kv_blocks_alloc(kv), -1);
    ns_kv_blocks_destroy(kv);
    ns_kv_blocks *bad = NULL;
    CHECK(ns_kv_blocks_create(0, 16, &bad, &err) == NS_ERR_INVALID && bad == NULL);
    CHECK(ns_kv_blocks_create(4, 0, &bad, &err) == NS_ERR_INVALID && bad == NULL);
}

NS_TEST(test_engine_nan_logits_fail_the_item) {
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    c.nan_output_norm = 1;
    const char *path = tiny_path("nan");
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    ns_engine *e = open_engine(path, 2, 32);
    if (!e) return;
    int32_t toks[3] = {70, 71, 72};
    int len = 3;
    int32_t *p = toks;
    ns_completion *out = NULL;
    run_all(e, 1, &p, &len, 8, &out);
    CHECK(out != NULL);
    if (out) {
        CHECK(out->finish == NS_FINISH_ERROR);
        CHECK_MSG(strstr(out->error, "no finite logits") != NULL, "error: '%s'", out->error);
    }
    ns_completion_free(out);
    ns_engine_close(e);
}

/* ---- scheduler: prefix cache, policies, optimistic admission, batch invariance ---- */

typedef struct sched_run {
    ns_completion *c[64];
    int max_step_tokens;
    int max_kv_used;
    ns_step_stats last;
} sched_run;

/* Submits n requests (prompts[r], max_tokens each, seeds[r] or greedy) into an engine
 * with the given config tweaks and runs it dry, checking the budget and the pool. */
static void sched_go(const char *path, const ns_engine_config *tweak, int n, int32_t **prompts, const int *lens,
                     int max_tokens, float temperature, const uint64_t *seeds, sched_run *out) {
    memset(out, 0, sizeof *out);
    ns_engine_config cfg = *tweak;
    cfg.model_path = path;
    cfg.backend = "cpu";
    cfg.n_threads = 2;
    ns_engine *e = NULL;
    ns_error err;
    ns_status st = ns_engine_open(&cfg, &e, NULL, &err);
    CHECK_MSG(st == NS_OK, "open: %s", err.msg);
    if (st) return;
    for (int r = 0; r < n; r++) {
        ns_request req;
        memset(&req, 0, sizeof req);
        req.id = (uint64_t)r;
        req.prompt = prompts[r];
        req.n_prompt = lens[r];
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = max_tokens;
        req.sampling.ignore_eos = true;
        req.sampling.n_logprobs = 2;
        req.sampling.temperature = temperature;
        if (seeds) req.sampling.seed = seeds[r];
        CHECK_STATUS_OK(ns_engine_submit(e, &req, &err), &err);
    }
    int guard = 0, got = 0;
    while (!ns_engine_idle(e) && guard++ < 100000) {
        ns_step_stats s;
        CHECK_STATUS_OK(ns_engine_step(e, &s, &err), &err);
        out->max_step_tokens = NS_MAX(out->max_step_tokens, s.n_tokens);
        out->max_kv_used = NS_MAX(out->max_kv_used, s.kv_blocks_used);
        CHECK(s.kv_blocks_used <= s.kv_blocks_total);
        out->last = s;
        ns_completion *c;
        while (ns_engine_collect(e, &c, 1) == 1) {
            if (c->id < 64) out->c[c->id] = c;
            got++;
        }
    }
    CHECK_EQ_INT(got, n);
    for (int r = 0; r < n; r++) CHECK(out->c[r] && out->c[r]->n_tokens == max_tokens);
    ns_engine_close(e);
}

static void sched_free(sched_run *r) {
    for (int i = 0; i < 64; i++) ns_completion_free(r->c[i]);
}

/* Same tokens (and, when exact, bit-identical logprobs) in two runs. */
static void sched_same(const sched_run *a, const sched_run *b, int n, bool exact) {
    for (int r = 0; r < n; r++) {
        if (!a->c[r] || !b->c[r]) continue;
        CHECK_EQ_INT(a->c[r]->n_tokens, b->c[r]->n_tokens);
        for (int i = 0; i < a->c[r]->n_tokens && i < b->c[r]->n_tokens; i++) {
            if (a->c[r]->tokens[i] != b->c[r]->tokens[i]) {
                CHECK_MSG(0, "request %d token %d: %d vs %d", r, i, a->c[r]->tokens[i], b->c[r]->tokens[i]);
                break;
            }
            float x = a->c[r]->logprobs[i * 3].logprob, y = b->c[r]->logprobs[i * 3].logprob;
            if (exact) CHECK_MSG(memcmp(&x, &y, sizeof x) == 0, "request %d token %d: logprob %.9g vs %.9g", r, i, x, y);
            else CHECK_NEAR(x, y, 1e-3);
        }
    }
}

/* n prompts sharing a prefix of n_common tokens, each with a unique tail. */
static void make_prompts(int n, int n_common, int n_tail, int32_t **prompts, int *lens, unsigned long long seed) {
    ns_test_rng rng = {seed};
    int32_t common[512];
    for (int i = 0; i < n_common; i++) common[i] = (int32_t)(ns_test_rng_u64(&rng) % 264);
    for (int r = 0; r < n; r++) {
        int tail = n_tail + r % 5;
        lens[r] = n_common + tail;
        prompts[r] = malloc((size_t)lens[r] * sizeof(int32_t));
        memcpy(prompts[r], common, (size_t)n_common * sizeof(int32_t));
        for (int i = 0; i < tail; i++) prompts[r][n_common + i] = (int32_t)(ns_test_rng_u64(&rng) % 264);
    }
}

static const char *sched_model(void) {
    static char path[512];
    if (!path[0]) {
        ns_tiny_cfg c;
        ns_tiny_cfg_default(&c);
        c.wtype = NS_GGML_Q8_0;
        c.n_ctx = 512;
        snprintf(path, sizeof path, "%s/tiny_sched.gguf", ns_test_tmpdir());
        ns_error err;
        CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    }
    return path;
}

NS_TEST(test_sched_prefix_sharing_same_outputs) {
    enum { N = 12 };
    int32_t *p[N];
    int lens[N];
    make_prompts(N, 70, 9, p, lens, 5);
    ns_engine_config on, off;
    ns_engine_config_default(&on);
    on.max_seqs = 4;
    on.max_batch_tokens = 48;
    off = on;
    off.no_prefix_cache = true;
    sched_run a, b;
    sched_go(sched_model(), &off, N, p, lens, 8, 0.0f, NULL, &a);
    sched_go(sched_model(), &on, N, p, lens, 8, 0.0f, NULL, &b);
    sched_same(&a, &b, N, false);
    CHECK_EQ_INT(a.last.prefix_hit_tokens, 0);
    /* 70 common tokens = 4 full blocks of 16; every request after the first reuses them */
    CHECK_MSG(b.last.prefix_hit_tokens >= (N - 1) * 64, "prefix hits %lld", (long long)b.last.prefix_hit_tokens);
    CHECK(b.max_step_tokens <= 48 && a.max_step_tokens <= 48);
    sched_free(&a);
    sched_free(&b);
    for (int r = 0; r < N; r++) free(p[r]);
}

NS_TEST(test_sched_batch_invariant_alone_vs_full_batch) {
    enum { N = 8 };
    int32_t *p[N];
    int lens[N];
    make_prompts(N, 0, 20, p, lens, 9);
    for (int r = 0; r < N; r++) lens[r] += 13 * r; /* different lengths, chunked differently */
    for (int r = 0; r < N; r++) {
        p[r] = realloc(p[r], (size_t)lens[r] * sizeof(int32_t));
        for (int i = 20 + r % 5; i < lens[r]; i++) p[r][i] = (int32_t)((i * 7 + r) % 264);
    }
    ns_engine_config full, alone;
    ns_engine_config_default(&full);
    full.batch_invariant = true;
    full.max_seqs = 8;
    full.max_batch_tokens = 40;
    alone = full;
    alone.max_seqs = 1;
    alone.max_batch_tokens = 512;
    sched_run a, b;
    sched_go(sched_model(), &alone, N, p, lens, 10, 0.0f, NULL, &a);
    sched_go(sched_model(), &full, N, p, lens, 10, 0.0f, NULL, &b);
    sched_same(&a, &b, N, true); /* bit-identical */
    sched_free(&a);
    sched_free(&b);
    for (int r = 0; r < N; r++) free(p[r]);
}

NS_TEST(test_sched_static_and_optimistic_same_outputs) {
    enum { N = 10 };
    int32_t *p[N];
    int lens[N];
    make_prompts(N, 20, 15, p, lens, 13);
    ns_engine_config base, stat, opt;
    ns_engine_config_default(&base);
    base.batch_invariant = true;
    base.max_seqs = 6;
    base.max_batch_tokens = 64;
    stat = base;
    stat.policy = NS_SCHED_STATIC;
    opt = base;
    opt.optimistic = true;
    /* a pool of 14 blocks of 16: six sequences of 40 + 30 tokens do not fit at once */
    size_t per_token = (size_t)2 * 2 * 2 * 16 * sizeof(float); /* layers x K,V x kv heads x head dim */
    opt.kv_bytes = per_token * 16 * 14;
    sched_run a, b, c;
    sched_go(sched_model(), &base, N, p, lens, 30, 0.0f, NULL, &a);
    sched_go(sched_model(), &stat, N, p, lens, 30, 0.0f, NULL, &b);
    sched_go(sched_model(), &opt, N, p, lens, 30, 0.0f, NULL, &c);
    sched_same(&a, &b, N, true);
    sched_same(&a, &c, N, true);
    CHECK_MSG(c.last.n_preempted > 0, "optimistic mode never preempted (%lld)", (long long)c.last.n_preempted);
    CHECK(c.max_kv_used <= 14);
    sched_free(&a);
    sched_free(&b);
    sched_free(&c);
    for (int r = 0; r < N; r++) free(p[r]);
}

NS_TEST(test_sched_n_samples_seeded_reproducible_and_share_prefill) {
    enum { N = 4 };
    int32_t *p[N];
    int lens[N];
    make_prompts(1, 0, 50, p, lens, 21);
    for (int r = 1; r < N; r++) {
        p[r] = p[0];
        lens[r] = lens[0];
    }
    uint64_t seeds[N] = {11, 12, 13, 14};
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.max_seqs = 4;
    sched_run a, b;
    sched_go(sched_model(), &cfg, N, p, lens, 12, 3.0f, seeds, &a);
    sched_go(sched_model(), &cfg, N, p, lens, 12, 3.0f, seeds, &b);
    sched_same(&a, &b, N, true);
    /* the 3 later samples reuse the first one's 3 full prompt blocks */
    CHECK_MSG(a.last.prefix_hit_tokens == 3 * 48, "prefix hits %lld", (long long)a.last.prefix_hit_tokens);
    bool differ = false;
    for (int r = 1; r < N && a.c[0] && a.c[r]; r++)
        if (memcmp(a.c[0]->tokens, a.c[r]->tokens, 12 * sizeof(int32_t))) differ = true;
    CHECK_MSG(differ, "samples with different seeds are all equal");
    sched_free(&a);
    sched_free(&b);
    free(p[0]);
}

NS_TEST(test_kv_prefix_cache_refcounts_and_lru) {
    ns_kv_blocks *kv = NULL;
    ns_error err;
    CHECK_STATUS_OK(ns_kv_blocks_create(3, 4, &kv, &err), &err);
    if (!kv) return;
    int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint64_t h0 = ns_kv_hash_block(0, t, 4), h1 = ns_kv_hash_block(h0, t + 4, 4);
    CHECK(h0 != h1 && h0 != ns_kv_hash_block(0, t + 4, 4));
    int32_t a = ns_kv_blocks_alloc(kv);
    ns_kv_blocks_publish(kv, a, h0);
    CHECK_EQ_INT(ns_kv_blocks_lookup(kv, h0, true), -1); /* not computed yet */
    ns_kv_blocks_set_ready(kv, a);
    CHECK_EQ_INT(ns_kv_blocks_lookup(kv, h0, true), a); /* a sharer */
    CHECK_EQ_INT(ns_kv_blocks_refcount(kv, a), 2);
    ns_kv_blocks_release(kv, a);
    CHECK_EQ_INT(ns_kv_blocks_n_cached(kv), 0); /* still used by one */
    ns_kv_blocks_release(kv, a);                /* last user gone: cached, evictable */
    CHECK_EQ_INT(ns_kv_blocks_refcount(kv, a), 0);
    CHECK_EQ_INT(ns_kv_blocks_n_cached(kv), 1);
    CHECK_EQ_INT(ns_kv_blocks_n_free(kv), 3);
    CHECK_EQ_INT(ns_kv_blocks_lookup(kv, h0, true), a); /* revived */
    CHECK_EQ_INT(ns_kv_blocks_n_cached(kv), 0);
    ns_kv_blocks_release(kv, a);
    int32_t b = ns_kv_blocks_alloc(kv), c = ns_kv_blocks_alloc(kv);
    CHECK(b != a && c != a && b >= 0 && c >= 0); /* free blocks before evicting */
    int32_t d = ns_kv_blocks_alloc(kv);           /* evicts the cached one */
    CHECK_EQ_INT(d, a);
    CHECK_EQ_INT(ns_kv_blocks_lookup(kv, h0, false), -1);
    CHECK_EQ_INT(ns_kv_blocks_alloc(kv), -1);
    ns_kv_blocks_destroy(kv);
}

/* ---- synthetic models (ns_model_random): benchmarks and CPU/CUDA comparisons ---- */

static void synth_hp(ns_hparams *hp, const char *arch) {
    memset(hp, 0, sizeof *hp);
    snprintf(hp->arch, sizeof hp->arch, "%s", arch);
    hp->n_layer = 2, hp->n_embd = 64, hp->n_ff = 96, hp->n_head = 4, hp->n_head_kv = 2, hp->head_dim = 16;
    hp->n_vocab = 300, hp->n_ctx_train = 256, hp->rope_base = 10000.0f, hp->norm_eps = 1e-5f;
}

/* Greedy tokens of 3 requests, 8 each, and the logits of one prompt. */
static void synth_run(const ns_hparams *hp, uint64_t seed, int32_t toks[3][8], float *logits) {
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.backend = "cpu";
    cfg.n_threads = 2;
    cfg.synthetic = hp;
    cfg.synthetic_seed = seed;
    cfg.max_seqs = 4;
    ns_engine *e = NULL;
    ns_error err;
    CHECK_STATUS_OK(ns_engine_open(&cfg, &e, NULL, &err), &err);
    if (!e) return;
    CHECK(ns_engine_tokenizer(e) == NULL);
    CHECK(!ns_engine_add_bos(e));
    int32_t prompt[20];
    for (int i = 0; i < 20; i++) prompt[i] = (i * 37 + 1) % hp->n_vocab;
    CHECK_STATUS_OK(ns_engine_prompt_logits(e, prompt, 20, logits, &err), &err);
    for (int r = 0; r < 3; r++) {
        ns_request req = {0};
        req.id = (uint64_t)r;
        req.prompt = prompt + r;
        req.n_prompt = 5 + 5 * r;
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = 8;
        CHECK_STATUS_OK(ns_engine_submit(e, &req, &err), &err);
    }
    while (!ns_engine_idle(e)) CHECK_STATUS_OK(ns_engine_step(e, NULL, &err), &err);
    ns_completion *c[4];
    int n = ns_engine_collect(e, c, 4);
    CHECK_EQ_INT(n, 3);
    for (int i = 0; i < n; i++) {
        CHECK_EQ_INT(c[i]->n_tokens, 8);
        CHECK_EQ_INT(c[i]->finish, NS_FINISH_LENGTH);
        CHECK_EQ_INT((int)c[i]->text_len, 0);
        for (int j = 0; j < c[i]->n_tokens && j < 8; j++) {
            CHECK(c[i]->tokens[j] >= 0 && c[i]->tokens[j] < hp->n_vocab);
            toks[c[i]->id][j] = c[i]->tokens[j];
        }
        ns_completion_free(c[i]);
    }
    ns_engine_close(e);
}

NS_TEST(test_engine_synthetic_model_deterministic) {
    const char *archs[] = {"llama", "qwen2"};
    for (int a = 0; a < 2; a++) {
        ns_hparams hp;
        synth_hp(&hp, archs[a]);
        int32_t t1[3][8], t2[3][8], t3[3][8];
        float l1[300], l2[300], l3[300];
        synth_run(&hp, 5, t1, l1);
        synth_run(&hp, 5, t2, l2);
        synth_run(&hp, 6, t3, l3);
        CHECK(memcmp(t1, t2, sizeof t1) == 0);      /* same seed: same tokens */
        CHECK(memcmp(l1, l2, sizeof l1) == 0);      /* and the same logits, bit for bit */
        CHECK(memcmp(l1, l3, sizeof l1) != 0);      /* another seed: other weights */
        double var = 0;
        for (int i = 0; i < 300; i++) {
            CHECK(isfinite(l1[i]));
            var += (double)l1[i] * l1[i];
        }
        CHECK(var / 300 > 1e-4); /* not all zero */
    }
}

NS_TEST(test_engine_synthetic_model_params_and_errors) {
    ns_hparams hp;
    synth_hp(&hp, "qwen2");
    ns_backend *b = NULL;
    ns_error err;
    CHECK_STATUS_OK(ns_backend_cpu_create(1, &b, &err), &err);
    ns_model *m = NULL;
    CHECK_STATUS_OK(ns_model_random(&hp, 1, b, &m, &err), &err);
    if (m) {
        uint64_t E = 64, Q = 64, KV = 32, F = 96, V = 300;
        uint64_t per_layer = 2 * E + E * Q + 2 * E * KV + Q * E + 3 * E * F + Q + 2 * KV; /* norms, q/k/v/o, ffn, biases */
        CHECK(m->n_params == 2 * V * E + E + 2 * per_layer);
        CHECK(m->hp.is_neox == 1 && m->hp.has_qkv_bias == 1 && m->layers[1].bq != NULL);
        ns_model_free(m);
    }
    ns_hparams bad = hp;
    bad.n_head_kv = 3; /* 4 heads do not group into 3 */
    CHECK(ns_model_random(&bad, 1, b, &m, &err) == NS_ERR_INVALID);
    CHECK(strstr(err.msg, "heads 4/3") != NULL);
    bad = hp;
    snprintf(bad.arch, sizeof bad.arch, "gpt2");
    CHECK(ns_model_random(&bad, 1, b, &m, &err) == NS_ERR_INVALID);
    ns_backend_destroy(b);
}

/* ---- out of memory in a step: the batch shrinks, the job goes on ---- */

/* 6 requests (prompts of 30 tokens, 8 greedy tokens) in batch-invariant mode; tokens out. */
static void oom_run(const char *path, int32_t toks[6][8], ns_step_stats *last, ns_status *st_out) {
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = path;
    cfg.backend = "cpu";
    cfg.n_threads = 2;
    cfg.max_seqs = 6;
    cfg.max_batch_tokens = 64;
    cfg.batch_invariant = true;
    ns_engine *e = NULL;
    ns_error err;
    CHECK_STATUS_OK(ns_engine_open(&cfg, &e, NULL, &err), &err);
    if (!e) return;
    int32_t prompt[40];
    for (int r = 0; r < 6; r++) {
        for (int i = 0; i < 30; i++) prompt[i] = (i * 13 + r * 7 + 1) % NS_TINY_N_VOCAB;
        ns_request req = {0};
        req.id = (uint64_t)r;
        req.prompt = prompt;
        req.n_prompt = 30;
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = 8;
        req.sampling.ignore_eos = true;
        CHECK_STATUS_OK(ns_engine_submit(e, &req, &err), &err);
    }
    *st_out = NS_OK;
    memset(last, 0, sizeof *last);
    for (int guard = 0; !ns_engine_idle(e) && guard < 10000; guard++)
        if ((*st_out = ns_engine_step(e, last, &err)) != NS_OK) break;
    ns_completion *c[8];
    int n = ns_engine_collect(e, c, 8);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < 8 && j < c[i]->n_tokens; j++) toks[c[i]->id][j] = c[i]->tokens[j];
        ns_completion_free(c[i]);
    }
    if (*st_out == NS_OK) CHECK_EQ_INT(n, 6);
    ns_engine_close(e);
}

NS_TEST(test_engine_oom_in_step_shrinks_the_batch) {
    char path[512];
    snprintf(path, sizeof path, "%s/tiny_oom.gguf", ns_test_tmpdir());
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    int32_t ref[6][8], got[6][8];
    memset(ref, 0, sizeof ref);
    memset(got, 0xff, sizeof got);
    ns_step_stats st;
    ns_status s;
    unsetenv("NS_FAULT_BATCH_TOKENS");
    oom_run(path, ref, &st, &s);
    CHECK_EQ_INT(s, NS_OK);
    CHECK(st.n_oom_retries == 0 && st.batch_token_limit == 64);
    /* the backend cannot hold more than 20 tokens per step: the first steps fail, the
     * engine halves its batch until it fits, and the outputs are those of the full run */
    setenv("NS_FAULT_BATCH_TOKENS", "20", 1);
    oom_run(path, got, &st, &s);
    CHECK_EQ_INT(s, NS_OK);
    CHECK_MSG(st.n_oom_retries >= 2 && st.batch_token_limit <= 20, "%lld retries, limit %d",
              (long long)st.n_oom_retries, st.batch_token_limit);
    CHECK(memcmp(ref, got, sizeof ref) == 0);
    /* no room for even one token: the step's error comes out */
    setenv("NS_FAULT_BATCH_TOKENS", "0", 1);
    oom_run(path, got, &st, &s);
    CHECK_EQ_INT(s, NS_ERR_NOMEM);
    unsetenv("NS_FAULT_BATCH_TOKENS");
}

/* ---- picking tokens where the logits are (ns_backend_ops.sample_rows) ----
 * The CPU backend with its test hook plays a device that samples: the engine sends each
 * row's parameters and the request's draw, and downloads logits only for the rows that
 * need the host sampler (penalties, logprobs). */

enum { ROWS_N = 6, ROWS_TOKENS = 8 };

/* Request r's sampling: 0, 1, 4 temperature with cuts (picked by the backend); 2 greedy;
 * 3 a repetition penalty and 5 logprobs (both on the host). */
static void rows_sampling(int r, ns_sampling *s) {
    ns_sampling_default(s);
    s->max_tokens = ROWS_TOKENS;
    s->ignore_eos = true;
    s->seed = 1000 + (uint64_t)r;
    s->temperature = r == 2 ? 0.0f : 20.0f + 5.0f * (float)r; /* the tiny model's logits are steep */
    if (r == 0) s->top_p = 0.9f;
    if (r == 1) s->top_k = 12, s->min_p = 0.02f;
    if (r == 4) s->top_k = 40, s->top_p = 0.8f;
    if (r == 3) s->repeat_penalty = 1.3f;
    if (r == 5) s->n_logprobs = 3;
}

/* The tiny scheduler model on a batch-invariant CPU engine (NULL on failure, checked). */
static ns_engine *rows_engine(int max_seqs) {
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = sched_model();
    cfg.backend = "cpu";
    cfg.n_threads = 2;
    cfg.batch_invariant = true;
    cfg.max_seqs = max_seqs;
    cfg.max_batch_tokens = 64;
    ns_engine *e = NULL;
    ns_error err;
    ns_status st = ns_engine_open(&cfg, &e, NULL, &err);
    CHECK_MSG(st == NS_OK, "open: %s", err.msg);
    return st ? NULL : e;
}

/* Submits request id with its prompt and sampling. */
static void submit_req(ns_engine *e, uint64_t id, const int32_t *prompt, int n_prompt, const ns_sampling *sp) {
    ns_request req;
    memset(&req, 0, sizeof req);
    req.id = id;
    req.prompt = prompt;
    req.n_prompt = n_prompt;
    req.sampling = *sp;
    ns_error err;
    CHECK_STATUS_OK(ns_engine_submit(e, &req, &err), &err);
}

static void rows_run_ex(int max_seqs, bool row_sampling, bool padding, int32_t out[ROWS_N][ROWS_TOKENS],
                        float lp[ROWS_N][ROWS_TOKENS], int32_t **prompts, const int *lens) {
    memset(out, 0xff, sizeof(int32_t) * ROWS_N * ROWS_TOKENS);
    ns_engine *e = rows_engine(max_seqs);
    if (!e) return;
    ns_error err;
    ns_backend_cpu_set_row_sampling(ns_engine_backend(e), row_sampling);
    CHECK((ns_engine_backend(e)->ops->sample_rows != NULL) == row_sampling);
    ns_backend_cpu_set_padding(ns_engine_backend(e), padding);
    CHECK((ns_engine_backend(e)->ops->graph_begin != NULL) == padding);
    for (int r = 0; r < ROWS_N; r++) {
        ns_sampling sp;
        rows_sampling(r, &sp);
        submit_req(e, (uint64_t)r, prompts[r], lens[r], &sp);
    }
    int guard = 0;
    while (!ns_engine_idle(e) && guard++ < 10000) {
        CHECK_STATUS_OK(ns_engine_step(e, NULL, &err), &err);
        ns_completion *c;
        while (ns_engine_collect(e, &c, 1) == 1) {
            CHECK(c->finish == NS_FINISH_LENGTH && c->n_tokens == ROWS_TOKENS);
            for (int i = 0; i < c->n_tokens && i < ROWS_TOKENS && c->id < ROWS_N; i++) {
                out[c->id][i] = c->tokens[i];
                if (lp) lp[c->id][i] = c->logprobs ? c->logprobs[i * 4].logprob : 0.0f;
            }
            ns_completion_free(c);
        }
    }
    ns_engine_close(e);
}

static void rows_run(int max_seqs, bool row_sampling, int32_t out[ROWS_N][ROWS_TOKENS], int32_t **prompts,
                     const int *lens) {
    rows_run_ex(max_seqs, row_sampling, false, out, NULL, prompts, lens);
}

/* Decode batches padded as for CUDA graphs (dummy rows on the backend's spare KV block):
 * the same tokens, and bit-identical logprobs (the CPU is batch-invariant), as unpadded,
 * whichever side picks the tokens. */
NS_TEST(test_engine_padded_decode_batches) {
    int32_t *p[ROWS_N];
    int lens[ROWS_N];
    make_prompts(ROWS_N, 10, 12, p, lens, 37);
    for (int rs = 0; rs < 2; rs++) {
        int32_t plain[ROWS_N][ROWS_TOKENS], padded[ROWS_N][ROWS_TOKENS];
        float lp_plain[ROWS_N][ROWS_TOKENS], lp_padded[ROWS_N][ROWS_TOKENS];
        rows_run_ex(ROWS_N, rs, false, plain, lp_plain, p, lens);
        rows_run_ex(ROWS_N, rs, true, padded, lp_padded, p, lens);
        CHECK_MSG(memcmp(plain, padded, sizeof plain) == 0, "row sampling %d: padded batches changed the tokens", rs);
        CHECK_MSG(memcmp(lp_plain[5], lp_padded[5], sizeof lp_plain[5]) == 0,
                  "row sampling %d: padded batches changed the logprobs", rs);
    }
    for (int r = 0; r < ROWS_N; r++) free(p[r]);
}

NS_TEST(test_engine_backend_row_sampling) {
    int32_t *p[ROWS_N];
    int lens[ROWS_N];
    make_prompts(ROWS_N, 10, 12, p, lens, 31);
    int32_t batched[ROWS_N][ROWS_TOKENS], alone[ROWS_N][ROWS_TOKENS], host[ROWS_N][ROWS_TOKENS];
    rows_run(ROWS_N, true, batched, p, lens);
    rows_run(1, true, alone, p, lens);
    rows_run(ROWS_N, false, host, p, lens);
    /* a request's tokens do not depend on its neighbours, whichever side picks them */
    CHECK(memcmp(batched, alone, sizeof batched) == 0);
    /* the host's rows (greedy, penalty, logprobs) are the host sampler's tokens */
    for (int r = 2; r < ROWS_N; r++)
        if (r != 4) CHECK_MSG(memcmp(batched[r], host[r], sizeof host[r]) == 0, "request %d differs from the host run", r);

    /* the backend's rows, recomputed independently: the logits of prompt + tokens so far
     * (batch-invariant, so the same as in the run), the request's own draws, the rule */
    ns_engine *e = rows_engine(ROWS_N);
    ns_error err;
    const ns_status st = e ? NS_OK : NS_ERR_INVALID;
    const int n_vocab = e ? ns_engine_hparams(e)->n_vocab : 0;
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    uint64_t *scratch = malloc(2 * (size_t)n_vocab * sizeof *scratch);
    int n_differ = 0; /* tokens where the host sampler's pick for the same draw differs */
    int n_not_argmax = 0;
    for (int r = 0; r < 5 && !st && logits && scratch; r += r == 1 ? 3 : 1) {
        ns_sampling sp;
        rows_sampling(r, &sp);
        ns_sampler *rule = ns_sampler_create(&sp, n_vocab), *hs = ns_sampler_create(&sp, n_vocab);
        int32_t seq[128];
        memcpy(seq, p[r], (size_t)lens[r] * sizeof(int32_t));
        for (int i = 0; i < ROWS_TOKENS && rule && hs; i++) {
            memcpy(seq + lens[r], batched[r], (size_t)i * sizeof(int32_t));
            CHECK_STATUS_OK(ns_engine_prompt_logits(e, seq, lens[r] + i, logits, &err), &err);
            ns_row_sampling rp;
            CHECK(ns_sampler_row_params(rule, &rp));
            int32_t want;
            ns_cpu_sample_rows_ref(&want, logits, 1, n_vocab, &rp, scratch);
            CHECK_MSG(batched[r][i] == want, "request %d token %d: %d, the rule gives %d", r, i, batched[r][i], want);
            int32_t best = 0;
            for (int v = 1; v < n_vocab; v++) best = logits[v] > logits[best] ? v : best;
            n_not_argmax += want != best;
            n_differ += ns_sampler_sample(hs, logits, NULL, NULL) != want;
        }
        ns_sampler_free(rule);
        ns_sampler_free(hs);
    }
    CHECK_MSG(n_not_argmax >= 3, "only %d of %d picks differ from the argmax: the test does not sample", n_not_argmax,
              3 * ROWS_TOKENS);
    /* the rule and the host sampler draw from the same distribution in another order */
    fprintf(stderr, "  row sampling: %d of %d picks are not the argmax; %d differ from the host sampler's pick for the same draw\n",
            n_not_argmax, 3 * ROWS_TOKENS, n_differ);
    free(scratch);
    free(logits);
    ns_engine_close(e);
    for (int r = 0; r < ROWS_N; r++) free(p[r]);
}

/* ---- overlapped steps (ns_backend_ops.pick_launch) ----
 * With NS_ENGINE_OVERLAP=1, the CPU backend with its test hook plays a device whose picks
 * the engine does not wait for: step k + 1 is built and launched naming step k's tokens by their rows, and step k's
 * tokens are taken in while step k + 1 runs. On a batch-invariant engine every completion
 * must be what the same requests give without the overlap: tokens, text, finish reason
 * and logprobs, also when stop tokens, stop strings and EOS end sequences while their next
 * step is already launched, when out of memory shrinks the batch, and in padded batches. */

enum { OV_N = 10, OV_MAX = 12 };

typedef struct ov_result {
    int finish, n_tokens, seen;
    int32_t tokens[OV_MAX];
    float lp[OV_MAX];
    char text[512];
} ov_result;

/* Request r: rows_sampling's mix (device rows, greedy, a penalty, logprobs), lengths 1 to
 * 12, EOS honoured for some; stops from stop_tok / stop_str when set. */
static void ov_request(int r, const int32_t *stop_tok, char (*stop_str)[8], ns_sampling *s) {
    rows_sampling(r % ROWS_N, s);
    static const int lens[OV_N] = {1, 2, 12, 5, 12, 9, 12, 3, 12, 7};
    s->max_tokens = lens[r];
    s->ignore_eos = r % 3 != 0;
    if (stop_tok && stop_tok[r] >= 0) s->n_stop_tokens = 1, s->stop_tokens[0] = stop_tok[r];
    if (stop_str && stop_str[r][0]) {
        s->n_stop = 1;
        memcpy(s->stop[0], stop_str[r], sizeof stop_str[r]);
    }
}

static const char *ov_env = "1"; /* NS_ENGINE_OVERLAP for ov_run's engines */

/* Runs the requests to the end; *first_done: the step after which the first completion
 * was collected (1-based). overlap: the backend's hook (the engine's switch: ov_env). */
static void ov_run(int max_seqs, bool overlap, bool padding, const int32_t *stop_tok, char (*stop_str)[8],
                   ov_result out[OV_N], int32_t **prompts, const int *lens, int *first_done) {
    memset(out, 0, sizeof(ov_result) * OV_N);
    if (ov_env) setenv("NS_ENGINE_OVERLAP", ov_env, 1); /* NULL: unset */
    ns_engine *e = rows_engine(max_seqs);
    unsetenv("NS_ENGINE_OVERLAP");
    if (!e) return;
    ns_error err;
    ns_backend *b = ns_engine_backend(e);
    ns_backend_cpu_set_row_sampling(b, true);
    ns_backend_cpu_set_padding(b, padding);
    ns_backend_cpu_set_overlap(b, overlap);
    CHECK((b->ops->pick_launch != NULL) == overlap);
    for (int r = 0; r < OV_N; r++) {
        ns_sampling sp;
        ov_request(r, stop_tok, stop_str, &sp);
        submit_req(e, (uint64_t)r, prompts[r], lens[r], &sp);
    }
    int steps = 0;
    *first_done = 0;
    while (!ns_engine_idle(e) && steps < 10000) {
        CHECK_STATUS_OK(ns_engine_step(e, NULL, &err), &err);
        steps++;
        ns_completion *c;
        while (ns_engine_collect(e, &c, 1) == 1) {
            if (!*first_done) *first_done = steps;
            if (c->id < OV_N && c->n_tokens <= OV_MAX) {
                ov_result *o = &out[c->id];
                o->seen++;
                o->finish = (int)c->finish;
                o->n_tokens = c->n_tokens;
                memcpy(o->tokens, c->tokens, (size_t)c->n_tokens * sizeof(int32_t));
                for (int i = 0; i < c->n_tokens; i++) o->lp[i] = c->logprobs ? c->logprobs[i * 4].logprob : 0.0f;
                snprintf(o->text, sizeof o->text, "%.*s", (int)c->text_len, c->text);
            } else {
                CHECK_MSG(0, "completion %llu with %d tokens", (unsigned long long)c->id, c->n_tokens);
            }
            ns_completion_free(c);
        }
    }
    CHECK_MSG(ns_engine_idle(e), "not idle after %d steps", steps);
    ns_engine_close(e);
}

static void ov_compare(const char *what, const ov_result *a, const ov_result *b) {
    for (int r = 0; r < OV_N; r++) {
        CHECK_MSG(a[r].seen == 1 && b[r].seen == 1, "%s: request %d completed %d / %d times", what, r, a[r].seen,
                  b[r].seen);
        CHECK_MSG(a[r].finish == b[r].finish && a[r].n_tokens == b[r].n_tokens &&
                      memcmp(a[r].tokens, b[r].tokens, sizeof a[r].tokens) == 0 && !strcmp(a[r].text, b[r].text) &&
                      memcmp(a[r].lp, b[r].lp, sizeof a[r].lp) == 0,
                  "%s: request %d differs with overlapped steps (%d tokens, finish %d; overlapped %d tokens, finish %d)",
                  what, r, a[r].n_tokens, a[r].finish, b[r].n_tokens, b[r].finish);
    }
}

/* switches.h: unset or empty gives the default; a single digit up to max is the level;
 * anything else gives the default (and a line on stderr). */
NS_TEST(test_engine_switch_levels) {
    const char *name = "NS_TEST_SWITCH_LEVELS";
    static const struct {
        const char *v; /* NULL: unset */
        int dflt, max, want;
    } cases[] = {
        {NULL, 0, 1, 0}, {NULL, 1, 1, 1}, {"", 1, 1, 1},  {"0", 1, 1, 0},  {"1", 0, 1, 1},   {"2", 0, 2, 2},
        {"2", 0, 1, 0},  {"2", 1, 1, 1},  {"10", 0, 2, 0}, {"1 ", 0, 1, 0}, {"on", 1, 1, 1}, {"-1", 0, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].v)
            setenv(name, cases[i].v, 1);
        else
            unsetenv(name);
        int got = ns_switch(name, cases[i].dflt, cases[i].max);
        CHECK_MSG(got == cases[i].want, "'%s' (default %d, max %d): %d, not %d", cases[i].v ? cases[i].v : "(unset)",
                  cases[i].dflt, cases[i].max, got, cases[i].want);
    }
    unsetenv(name);
}

NS_TEST(test_engine_overlapped_steps_same_outputs) {
    int32_t *p[OV_N];
    int lens[OV_N];
    make_prompts(OV_N, 10, 12, p, lens, 53);
    static ov_result plain[OV_N], ovl[OV_N];
    int first_plain, first_ovl;
    /* without stops: the overlap's picks are taken in one step later (a 1-token request
     * completes after the second step, not the first) */
    ov_run(OV_N, false, false, NULL, NULL, plain, p, lens, &first_plain);
    ov_run(OV_N, true, false, NULL, NULL, ovl, p, lens, &first_ovl);
    ov_compare("no stops", plain, ovl);
    CHECK_EQ_INT(first_plain, 1);
    CHECK_EQ_INT(first_ovl, 2);
    /* off with NS_ENGINE_OVERLAP=0 whatever the backend offers; unset, or a value that is
     * not a level (it says so on stderr), switches.h's default */
    const char *envs[] = {"0", NULL, "", "yes"};
    for (int k = 0; k < 4; k++) {
        ov_env = envs[k];
        ov_run(OV_N, true, false, NULL, NULL, ovl, p, lens, &first_ovl);
        int want = k > 0 && NS_DEFAULT_ENGINE_OVERLAP ? 2 : 1;
        CHECK_MSG(first_ovl == want, "NS_ENGINE_OVERLAP '%s': first completion after step %d, not %d",
                  ov_env ? ov_env : "(unset)", first_ovl, want);
        ov_compare("overlap off or default", plain, ovl);
    }
    ov_env = "1";
    /* stops that end sequences mid-way: token 3 of some, a 2-byte string of others */
    int32_t stop_tok[OV_N];
    static char stop_str[OV_N][8];
    int n_tok_stops = 0, n_str_stops = 0;
    for (int r = 0; r < OV_N; r++) {
        stop_tok[r] = -1;
        stop_str[r][0] = 0;
        if (plain[r].n_tokens >= 6 && r % 2 == 0) stop_tok[r] = plain[r].tokens[3], n_tok_stops++;
        size_t tl = strlen(plain[r].text);
        if (r % 2 == 1 && tl >= 6 && !memchr(plain[r].text, 0, tl)) {
            memcpy(stop_str[r], plain[r].text + tl / 2, 2);
            stop_str[r][2] = 0;
            n_str_stops++;
        }
    }
    CHECK_MSG(n_tok_stops >= 2 && n_str_stops >= 1, "%d stop tokens, %d stop strings: the test stops nothing",
              n_tok_stops, n_str_stops);
    int n_stopped = 0;
    const int seqs[] = {OV_N, 3, 1};
    for (int si = 0; si < 3; si++)
        for (int pad = 0; pad < 2; pad++)
            for (int fault = 0; fault < 2; fault++) {
                char what[96];
                snprintf(what, sizeof what, "max_seqs %d%s%s", seqs[si], pad ? ", padded" : "",
                         fault ? ", out of memory above 20 tokens" : "");
                if (fault) setenv("NS_FAULT_BATCH_TOKENS", "20", 1);
                ov_run(seqs[si], false, pad, stop_tok, stop_str, plain, p, lens, &first_plain);
                ov_run(seqs[si], true, pad, stop_tok, stop_str, ovl, p, lens, &first_ovl);
                unsetenv("NS_FAULT_BATCH_TOKENS");
                ov_compare(what, plain, ovl);
                for (int r = 0; r < OV_N; r++) n_stopped += plain[r].finish == NS_FINISH_STOP && plain[r].n_tokens < 12;
            }
    CHECK_MSG(n_stopped >= 12, "only %d sequences ended on a stop: the draining path is not exercised", n_stopped);
    for (int r = 0; r < OV_N; r++) free(p[r]);
}
