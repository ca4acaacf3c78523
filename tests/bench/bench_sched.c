/* bench_sched.c: offline throughput of the scheduling policies, in the manner of SGLang's
 * bench_offline_throughput and trtllm-bench: every request is submitted at once, the
 * engine is stepped until idle, and throughput is counted over the whole batch.
 *
 * usage: bench-sched MODEL.gguf [--workload fixed|mixed|prefix|all] [--n N] [--reps 3]
 *                               [--max-seqs 32] [--max-batch-tokens 512] [--n-ctx 1536]
 *                               [--kv-bytes 0] [--seed 1234] [--threads N] [--jsonl FILE]
 *
 * Workloads (prompts are random token ids in [100, n_vocab) from --seed; every request
 * uses ignore_eos, so every policy does exactly the same work):
 *   fixed:  N = 64 prompts of 128 tokens, 64 output tokens each.
 *   mixed:  N = 48 prompts, prompt lengths log-uniform in 16..1024 (mean ~240), output
 *           lengths log-uniform in 16..256 (mean ~90).
 *   prefix: N = 48 prompts, a common 200-token instruction then a unique 100-token part;
 *           32 output tokens each.
 * The defaults keep one policy run at about 20-60 s on 2 CPU cores; --n overrides N for
 * every workload selected.
 *
 * Policies, each on the same workload with a fresh engine (ns_engine_open) and the same
 * max_seqs, max_batch_tokens, n_ctx and kv_bytes:
 *   static-arrival     NS_SCHED_STATIC, no prefix cache, submitted in arrival order
 *   static-sorted      NS_SCHED_STATIC, no prefix cache, sorted by prompt + output length
 *   continuous         NS_SCHED_CONTINUOUS, no prefix cache, sorted
 *   continuous+prefix  NS_SCHED_CONTINUOUS, prefix cache on, sorted
 * and with --policies all also: the same with optimistic admission (preempt and recompute
 * on KV pressure), and the same in batch-invariant (deterministic) mode.
 *
 * Per run: wall time from the first submit to the last completion collected (model load
 * excluded); requests/s, input (prompt) tok/s, output tok/s, total tok/s; mean batch size
 * (n_seqs per step) and mean KV utilization (kv_blocks_used / kv_blocks_total per step),
 * both over steps that ran tokens; prefix cache hit rate (prefix_hit_tokens /
 * prompt_tokens_admitted from the last step). Every completion is checked to have
 * finished with exactly its max_tokens tokens; a mismatch is reported on stderr and the
 * exit status is 1. Each row is the median of --reps runs by total tok/s; the speedup is
 * against static-arrival's median. Peak RSS is process-wide and so cumulative over
 * every run before it. Timings are wall-clock on a shared machine: compare rows from the
 * same invocation only.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

#define MAX_REPS 32

typedef struct workload {
    const char *name;
    char desc[192];
    int n_req;
    int32_t **prompts; /* (n_req) each (n_prompt[i]) */
    int *n_prompt;     /* (n_req) */
    int *n_out;        /* (n_req) max_tokens of each request */
    int64_t in_tokens, out_tokens;
} workload;

typedef struct run_result {
    double wall_s;
    int64_t n_steps;     /* steps that ran tokens */
    double sum_seqs;     /* sum over those steps of n_seqs */
    double sum_kv_util;  /* sum over those steps of kv_blocks_used / kv_blocks_total */
    int64_t prefix_hit_tokens, prompt_tokens_admitted;
    size_t peak_rss;
    int n_bad;           /* completions that failed the check */
} run_result;

typedef struct policy {
    const char *name;
    int sched;
    bool prefix_cache;
    bool sorted;
    bool optimistic;
    bool deterministic;
} policy;

static const policy POLICIES[] = {
    {"static-arrival", NS_SCHED_STATIC, false, false, false, false},
    {"static-sorted", NS_SCHED_STATIC, false, true, false, false},
    {"continuous", NS_SCHED_CONTINUOUS, false, true, false, false},
    {"continuous+prefix", NS_SCHED_CONTINUOUS, true, true, false, false},
    /* variants of the product's default (continuous+prefix), run with --policies all */
    {"cont+prefix+optimistic", NS_SCHED_CONTINUOUS, true, true, true, false},
    {"cont+prefix+determin.", NS_SCHED_CONTINUOUS, true, true, false, true},
};
#define N_BASE_POLICIES 4 /* the four of the issue; the variants only with --policies all */
static bool g_all_policies;
#define N_POLICIES ((int)(sizeof POLICIES / sizeof POLICIES[0]))

typedef struct bench_opts {
    const char *model;
    int n_threads, max_seqs, max_batch_tokens, n_ctx;
    size_t kv_bytes;
} bench_opts;

/* splitmix64: deterministic across platforms. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

static int32_t rng_token(uint64_t *s, int n_vocab) {
    return 100 + (int32_t)(rng_next(s) % (uint64_t)(n_vocab - 100));
}

/* An integer log-uniform in [lo, hi]. */
static int rng_log_uniform(uint64_t *s, int lo, int hi) {
    double x = exp(log((double)lo) + rng_unit(s) * (log((double)hi + 1.0) - log((double)lo)));
    int v = (int)x;
    return v < lo ? lo : v > hi ? hi : v;
}

static void workload_free(workload *w) {
    if (w->prompts)
        for (int i = 0; i < w->n_req; i++) free(w->prompts[i]);
    free(w->prompts);
    free(w->n_prompt);
    free(w->n_out);
    memset(w, 0, sizeof *w);
}

/* Builds workload `name` with n requests (0 = the workload's default). Returns 0, or -1
 * on an unknown name or out of memory. */
static int workload_make(const char *name, int n, int n_vocab, uint64_t seed, workload *w) {
    memset(w, 0, sizeof *w);
    bool is_fixed = !strcmp(name, "fixed"), is_mixed = !strcmp(name, "mixed"), is_prefix = !strcmp(name, "prefix");
    if (!is_fixed && !is_mixed && !is_prefix) return -1;
    w->name = is_fixed ? "fixed" : is_mixed ? "mixed" : "prefix";
    w->n_req = n > 0 ? n : is_fixed ? 64 : 48;
    w->prompts = ns_calloc_array((size_t)w->n_req, sizeof *w->prompts);
    w->n_prompt = ns_calloc_array((size_t)w->n_req, sizeof *w->n_prompt);
    w->n_out = ns_calloc_array((size_t)w->n_req, sizeof *w->n_out);
    if (!w->prompts || !w->n_prompt || !w->n_out) goto fail;
    uint64_t s = seed ^ (is_fixed ? 0x11 : is_mixed ? 0x22 : 0x33);
    enum { PREFIX_LEN = 200, UNIQUE_LEN = 100 };
    int32_t common[PREFIX_LEN];
    for (int i = 0; i < PREFIX_LEN; i++) common[i] = rng_token(&s, n_vocab);
    for (int r = 0; r < w->n_req; r++) {
        int np, no;
        if (is_fixed) np = 128, no = 64;
        else if (is_mixed) np = rng_log_uniform(&s, 16, 1024), no = rng_log_uniform(&s, 16, 256);
        else np = PREFIX_LEN + UNIQUE_LEN, no = 32;
        w->prompts[r] = ns_malloc_array((size_t)np, sizeof(int32_t));
        if (!w->prompts[r]) goto fail;
        int i = 0;
        if (is_prefix)
            for (; i < PREFIX_LEN; i++) w->prompts[r][i] = common[i];
        for (; i < np; i++) w->prompts[r][i] = rng_token(&s, n_vocab);
        w->n_prompt[r] = np;
        w->n_out[r] = no;
        w->in_tokens += np;
        w->out_tokens += no;
    }
    if (is_fixed)
        snprintf(w->desc, sizeof w->desc, "%d requests x (128 prompt + 64 output) tokens", w->n_req);
    else if (is_mixed)
        snprintf(w->desc, sizeof w->desc,
                 "%d requests, prompt 16..1024 log-uniform (%lld tokens), output 16..256 log-uniform (%lld tokens)",
                 w->n_req, (long long)w->in_tokens, (long long)w->out_tokens);
    else
        snprintf(w->desc, sizeof w->desc, "%d requests x (200 shared + 100 unique prompt + 32 output) tokens",
                 w->n_req);
    return 0;
fail:
    workload_free(w);
    return -1;
}

/* Sort key for the sorted submission orders: total work, then arrival index. */
static const workload *g_sort_w;
static int cmp_work(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    int wx = g_sort_w->n_prompt[x] + g_sort_w->n_out[x], wy = g_sort_w->n_prompt[y] + g_sort_w->n_out[y];
    if (wx != wy) return wx < wy ? -1 : 1;
    return x < y ? -1 : x > y;
}

static double total_tok_s(const workload *w, const run_result *r) {
    return (double)(w->in_tokens + w->out_tokens) / r->wall_s;
}

static const workload *g_cmp_w;
static int cmp_run(const void *a, const void *b) {
    double x = total_tok_s(g_cmp_w, a), y = total_tok_s(g_cmp_w, b);
    return x < y ? -1 : x > y;
}

/* Checks one completion against its request; returns 1 (and says why on stderr) if bad. */
static int check_completion(const workload *w, const policy *p, const ns_completion *c, bool *seen) {
    if (c->id >= (uint64_t)w->n_req || seen[c->id]) {
        fprintf(stderr, "bench-sched: %s/%s: unexpected completion id %llu\n", w->name, p->name,
                (unsigned long long)c->id);
        return 1;
    }
    seen[c->id] = true;
    if (c->finish == NS_FINISH_ERROR) {
        fprintf(stderr, "bench-sched: %s/%s: request %llu failed: %s\n", w->name, p->name,
                (unsigned long long)c->id, c->error);
        return 1;
    }
    if (c->n_tokens != w->n_out[c->id]) {
        fprintf(stderr, "bench-sched: %s/%s: request %llu finished (%s) with %d tokens, expected %d\n", w->name,
                p->name, (unsigned long long)c->id, ns_finish_name(c->finish), c->n_tokens, w->n_out[c->id]);
        return 1;
    }
    return 0;
}

/* Runs workload w once under policy p with a fresh engine. Returns 0 (out filled, with
 * out->n_bad counting bad completions), or -1 on an engine error (said on stderr). */
static int run_once(const bench_opts *o, const workload *w, const policy *p, run_result *out) {
    memset(out, 0, sizeof *out);
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = o->model;
    cfg.backend = "cpu";
    cfg.n_threads = o->n_threads;
    cfg.max_seqs = o->max_seqs;
    cfg.max_batch_tokens = o->max_batch_tokens;
    cfg.n_ctx = o->n_ctx;
    cfg.kv_bytes = o->kv_bytes;
    cfg.policy = p->sched;
    cfg.no_prefix_cache = !p->prefix_cache;
    cfg.optimistic = p->optimistic;
    cfg.batch_invariant = p->deterministic;

    int rc = -1;
    ns_engine *e = NULL;
    int *order = ns_malloc_array((size_t)w->n_req, sizeof *order);
    bool *seen = ns_calloc_array((size_t)w->n_req, sizeof *seen);
    ns_error err;
    if (!order || !seen) {
        fprintf(stderr, "bench-sched: out of memory\n");
        goto done;
    }
    if (ns_engine_open(&cfg, &e, NULL, &err)) {
        fprintf(stderr, "bench-sched: %s: %s\n", o->model, err.msg);
        goto done;
    }
    for (int i = 0; i < w->n_req; i++) order[i] = i;
    if (p->sorted) {
        g_sort_w = w;
        qsort(order, (size_t)w->n_req, sizeof *order, cmp_work);
    }

    double t0 = ns_time_now(), t_last = t0;
    for (int k = 0; k < w->n_req; k++) {
        int i = order[k];
        ns_request req;
        memset(&req, 0, sizeof req);
        req.id = (uint64_t)i;
        req.prompt = w->prompts[i];
        req.n_prompt = w->n_prompt[i];
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = w->n_out[i];
        req.sampling.ignore_eos = true;
        if (ns_engine_submit(e, &req, &err)) {
            fprintf(stderr, "bench-sched: %s/%s: %s\n", w->name, p->name, err.msg);
            goto done;
        }
    }

    int n_done = 0, n_stalled = 0;
    ns_step_stats st;
    memset(&st, 0, sizeof st);
    while (!ns_engine_idle(e) || n_done < w->n_req) {
        if (!ns_engine_idle(e)) {
            if (ns_engine_step(e, &st, &err)) {
                fprintf(stderr, "bench-sched: %s/%s: %s\n", w->name, p->name, err.msg);
                goto done;
            }
            if (st.n_tokens > 0) {
                n_stalled = 0;
                out->n_steps++;
                out->sum_seqs += st.n_seqs;
                if (st.kv_blocks_total > 0) out->sum_kv_util += (double)st.kv_blocks_used / st.kv_blocks_total;
            } else if (++n_stalled > 1000) {
                fprintf(stderr, "bench-sched: %s/%s: no progress in 1000 steps (%d running, %d waiting)\n",
                        w->name, p->name, st.n_running, st.n_waiting);
                goto done;
            }
        }
        ns_completion *c[64];
        int n, n_got = 0;
        while ((n = ns_engine_collect(e, c, 64)) > 0) {
            for (int i = 0; i < n; i++) {
                out->n_bad += check_completion(w, p, c[i], seen);
                ns_completion_free(c[i]);
            }
            n_got += n;
        }
        if (n_got) {
            n_done += n_got;
            t_last = ns_time_now();
        }
        if (ns_engine_idle(e) && n_done < w->n_req && !n_got) {
            fprintf(stderr, "bench-sched: %s/%s: engine idle with %d of %d requests completed\n", w->name,
                    p->name, n_done, w->n_req);
            out->n_bad += w->n_req - n_done;
            break;
        }
    }
    out->wall_s = t_last - t0;
    out->prefix_hit_tokens = st.prefix_hit_tokens;
    out->prompt_tokens_admitted = st.prompt_tokens_admitted;
    out->peak_rss = ns_peak_rss_bytes();
    rc = 0;
done:
    ns_engine_close(e);
    free(seen);
    free(order);
    return rc;
}

/* Runs every policy on workload w, prints its table and the JSONL lines. Returns the
 * number of bad completions in all runs, or -1 on an engine error. */
static int bench_workload(const bench_opts *o, const workload *w, int reps, FILE *jf) {
    printf("workload %s: %s\n", w->name, w->desc);
    printf("max_seqs %d, max_batch_tokens %d, n_ctx %d, kv_bytes %zu%s, median of %d runs by total tok/s\n\n",
           o->max_seqs, o->max_batch_tokens, o->n_ctx, o->kv_bytes, o->kv_bytes ? "" : " (engine default)", reps);
    printf("| policy            |  wall s |  req/s | in tok/s | out tok/s | total tok/s | speedup | "
           "mean batch | mean KV %% | prefix hit %% | peak RSS MiB |\n");
    printf("|-------------------|---------|--------|----------|-----------|-------------|---------|"
           "------------|-----------|--------------|--------------|\n");
    fflush(stdout);
    int n_bad = 0;
    double base_tps = 0;
    for (int ip = 0; ip < (g_all_policies ? N_POLICIES : N_BASE_POLICIES); ip++) {
        const policy *p = &POLICIES[ip];
        run_result rs[MAX_REPS];
        for (int r = 0; r < reps; r++) {
            if (run_once(o, w, p, &rs[r])) return -1;
            n_bad += rs[r].n_bad;
        }
        g_cmp_w = w;
        qsort(rs, (size_t)reps, sizeof rs[0], cmp_run);
        const run_result *m = &rs[reps / 2];
        double tps = total_tok_s(w, m);
        if (ip == 0) base_tps = tps;
        double req_s = w->n_req / m->wall_s, in_s = (double)w->in_tokens / m->wall_s;
        double out_s = (double)w->out_tokens / m->wall_s, speedup = base_tps > 0 ? tps / base_tps : 0;
        double batch = m->n_steps ? m->sum_seqs / (double)m->n_steps : 0;
        double kv = m->n_steps ? m->sum_kv_util / (double)m->n_steps : 0;
        double hit = m->prompt_tokens_admitted ? (double)m->prefix_hit_tokens / (double)m->prompt_tokens_admitted : 0;
        double rss = (double)m->peak_rss / 1048576.0;
        printf("| %-17s | %7.2f | %6.2f | %8.1f | %9.1f | %11.1f | %6.2fx | %10.1f | %9.1f | %12.1f | %12.1f |%s\n",
               p->name, m->wall_s, req_s, in_s, out_s, tps, speedup, batch, 100 * kv, 100 * hit, rss,
               m->n_bad ? " ERRORS" : "");
        fflush(stdout);
        if (jf) {
            fprintf(jf,
                    "{\"bench\":\"sched\",\"workload\":\"%s\",\"policy\":\"%s\",\"n_req\":%d,\"in_tokens\":%lld,"
                    "\"out_tokens\":%lld,\"max_seqs\":%d,\"max_batch_tokens\":%d,\"n_ctx\":%d,\"kv_bytes\":%zu,"
                    "\"threads\":%d,\"reps\":%d,\"wall_s\":%.4f,\"req_s\":%.3f,\"in_tok_s\":%.2f,\"out_tok_s\":%.2f,"
                    "\"total_tok_s\":%.2f,\"speedup\":%.4f,\"n_steps\":%lld,\"mean_batch\":%.3f,"
                    "\"mean_kv_util\":%.4f,\"prefix_hit_rate\":%.4f,\"peak_rss_mib\":%.1f,\"errors\":%d}\n",
                    w->name, p->name, w->n_req, (long long)w->in_tokens, (long long)w->out_tokens, o->max_seqs,
                    o->max_batch_tokens, o->n_ctx, o->kv_bytes, o->n_threads, reps, m->wall_s, req_s, in_s, out_s,
                    tps, speedup, (long long)m->n_steps, batch, kv, hit, rss, m->n_bad);
            fflush(jf);
        }
    }
    printf("\n");
    return n_bad;
}

static int usage(void) {
    fprintf(stderr, "usage: bench-sched MODEL.gguf [--workload fixed|mixed|prefix|all] [--n N] [--reps N] "
                    "[--max-seqs N] [--max-batch-tokens N] [--n-ctx N] [--kv-bytes N] [--seed N] [--policies base|all] "
                    "[--threads N] [--jsonl FILE]\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) return usage();
    bench_opts o = {.model = argv[1], .n_threads = 0, .max_seqs = 32, .max_batch_tokens = 512, .n_ctx = 1536};
    const char *which = "all", *jsonl = NULL;
    int n = 0, reps = 3;
    long long seed = 1234;
    if ((argc - 2) % 2) {
        fprintf(stderr, "bench-sched: %s needs a value\n", argv[argc - 1]);
        return usage();
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--workload")) { which = v; continue; }
        if (!strcmp(k, "--policies")) { g_all_policies = !strcmp(v, "all"); continue; }
        if (!strcmp(k, "--jsonl")) { jsonl = v; continue; }
        char *end;
        long long x = strtoll(v, &end, 10);
        bool is_num = end != v && *end == '\0';
        bool is_kv = !strcmp(k, "--kv-bytes"), is_seed = !strcmp(k, "--seed"), is_thr = !strcmp(k, "--threads");
        long long lo = (is_kv || is_seed || is_thr) ? 0 : 1, hi = is_kv || is_seed ? (1ll << 50) : 1000000;
        if (!is_num || x < lo || x > hi) {
            fprintf(stderr, "bench-sched: %s = '%s' is not an integer in [%lld, %lld]\n", k, v, lo, hi);
            return 2;
        }
        if (!strcmp(k, "--n")) n = (int)x;
        else if (!strcmp(k, "--reps")) reps = (int)x;
        else if (!strcmp(k, "--max-seqs")) o.max_seqs = (int)x;
        else if (!strcmp(k, "--max-batch-tokens")) o.max_batch_tokens = (int)x;
        else if (!strcmp(k, "--n-ctx")) o.n_ctx = (int)x;
        else if (is_kv) o.kv_bytes = (size_t)x;
        else if (is_seed) seed = x;
        else if (is_thr) o.n_threads = (int)x;
        else {
            fprintf(stderr, "bench-sched: unknown option %s\n", k);
            return usage();
        }
    }
    if (reps > MAX_REPS) {
        fprintf(stderr, "bench-sched: --reps = %d is above the limit %d\n", reps, MAX_REPS);
        return 2;
    }
    const char *names[3];
    int n_names = 0;
    if (!strcmp(which, "all")) names[0] = "fixed", names[1] = "mixed", names[2] = "prefix", n_names = 3;
    else if (!strcmp(which, "fixed") || !strcmp(which, "mixed") || !strcmp(which, "prefix")) names[n_names++] = which;
    else {
        fprintf(stderr, "bench-sched: --workload = '%s' is not one of fixed, mixed, prefix, all\n", which);
        return 2;
    }

    /* A probe engine for the vocabulary size; the runs each open their own. */
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = o.model;
    cfg.backend = "cpu";
    cfg.n_threads = o.n_threads;
    cfg.max_seqs = 1;
    cfg.n_ctx = 64;
    ns_engine *probe = NULL;
    ns_error err;
    if (ns_engine_open(&cfg, &probe, NULL, &err)) {
        fprintf(stderr, "bench-sched: %s: %s\n", o.model, err.msg);
        return 1;
    }
    int n_vocab = ns_engine_hparams(probe)->n_vocab;
    ns_engine_close(probe);
    if (n_vocab <= 100) {
        fprintf(stderr, "bench-sched: %s: n_vocab = %d, need more than 100\n", o.model, n_vocab);
        return 1;
    }

    FILE *jf = NULL;
    if (jsonl && !(jf = fopen(jsonl, "a"))) {
        perror(jsonl);
        return 1;
    }
    if (o.n_threads) printf("bench-sched: model %s, %d threads, seed %lld\n\n", o.model, o.n_threads, seed);
    else printf("bench-sched: model %s, all cores, seed %lld\n\n", o.model, seed);
    int n_bad = 0, rc = 0;
    for (int iw = 0; iw < n_names; iw++) {
        workload w;
        if (workload_make(names[iw], n, n_vocab, (uint64_t)seed, &w)) {
            fprintf(stderr, "bench-sched: out of memory building workload %s\n", names[iw]);
            rc = 1;
            break;
        }
        int b = bench_workload(&o, &w, reps, jf);
        workload_free(&w);
        if (b < 0) {
            rc = 1;
            break;
        }
        n_bad += b;
    }
    if (jf) fclose(jf);
    printf("peak RSS is process-wide: each row's value covers every run before it.\n");
    if (n_bad) {
        fprintf(stderr, "bench-sched: %d completions did not finish with exactly max_tokens tokens\n", n_bad);
        rc = 1;
    }
    return rc;
}
