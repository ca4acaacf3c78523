/* cmd_run.c: `nightshift run`: claims pending items under a lease, shortest prompts
 * first, keeps the engine fed, and commits each group of finished items (compressed
 * result + status in one transaction) at least every second or every 64 items.
 * Every database call of the loop (commits, claims, lease renewals, the figures for
 * `status`) runs on a thread of its own with its own connection (the queue thread), so
 * that the engine's next steps do not wait for compression and SQLite.
 *
 * SIGINT/SIGTERM: stop claiming, drop in-flight work and release its leases (it goes back
 * to pending, attempt not counted), commit what finished, exit 4 (NS_EXIT_INTERRUPTED).
 * A crash (kill -9) leaves leases that expire; the next run reclaims those items.
 * Fault injection for the crash tests: NS_FAULT=after_steps:N or after_commits:N makes
 * the process SIGKILL itself at that point. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "fingerprint.h"
#include "sampling_json.h"
#include "spec.h"
#include "store.h"

#define COMMIT_EVERY_ITEMS 64
#define COMMIT_EVERY_SECONDS 1.0
#define NS_MAX_N 64

static volatile sig_atomic_t g_stop;
static int64_t g_committed; /* results this process committed */

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

typedef struct slot {
    bool used;
    ns_claimed_item item;
    int n_want, n_got;
    int n_submitted;  /* engine requests made for it (fewer than n_want after a failure) */
    ns_completion *done[NS_MAX_N];
    bool failed;
    char error[1024];
} slot;

typedef struct fault {
    long after_steps, after_commits;
    long commit_items; /* NS_COMMIT_ITEMS: commit every N items (tests); default 64 */
} fault;

static long env_long(const char *s, const char *prefix) {
    size_t n = strlen(prefix);
    if (!s || strncmp(s, prefix, n)) return 0;
    char *end;
    long v = strtol(s + n, &end, 10);
    return *end == '\0' && v > 0 ? v : 0;
}

static void fault_parse(fault *f) {
    memset(f, 0, sizeof *f);
    const char *s = getenv("NS_FAULT");
    f->after_steps = env_long(s, "after_steps:");
    f->after_commits = env_long(s, "after_commits:");
    f->commit_items = env_long(getenv("NS_COMMIT_ITEMS"), "");
    if (!f->commit_items) f->commit_items = COMMIT_EVERY_ITEMS;
}

static uint64_t mix64(uint64_t h) {
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    return h ^ (h >> 31);
}

/* The seed of sample k of an item: from the job seed and the item's custom_id, so that
 * an item's output does not depend on batch neighbours, order or interruptions. */
static uint64_t item_seed(uint64_t job_seed, const char *custom_id, int k) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (const char *p = custom_id; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001B3ull;
    return mix64(job_seed ^ mix64(h + (uint64_t)k));
}

static bool parse_duration(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) return false;
    double mult = 1;
    if (!strcmp(end, "") || !strcmp(end, "s")) mult = 1;
    else if (!strcmp(end, "m")) mult = 60;
    else if (!strcmp(end, "h")) mult = 3600;
    else return false;
    *out = v * mult;
    return true;
}

/* The result JSON of a finished item: choices + usage. malloc'd. */
static char *result_json(const slot *sl, const ns_tokenizer *tok, int *prompt_tokens, int *completion_tokens,
                         const char **finish) {
    json_t *o = json_object(), *choices = json_array();
    int total = 0;
    *finish = "stop";
    for (int k = 0; k < sl->n_want; k++) {
        const ns_completion *c = sl->done[k];
        json_t *ch = json_object();
        json_object_set_new(ch, "index", json_integer(k));
        json_object_set_new(ch, "text", json_stringn(c->text, c->text_len));
        json_object_set_new(ch, "finish_reason", json_string(ns_finish_name(c->finish)));
        json_object_set_new(ch, "completion_tokens", json_integer(c->n_tokens));
        if (c->logprobs) {
            json_t *lp = json_array();
            for (int i = 0; i < c->n_tokens; i++) {
                const ns_logprob *l = c->logprobs + (size_t)i * (1 + c->n_top_logprobs);
                json_t *e = json_object(), *top = json_array();
                const char *t = ns_tokenizer_token_text(tok, l[0].token);
                json_object_set_new(e, "token", json_string(t ? t : ""));
                json_object_set_new(e, "id", json_integer(l[0].token));
                json_object_set_new(e, "logprob", json_real(l[0].logprob));
                for (int j = 1; j <= c->n_top_logprobs; j++) {
                    json_t *a = json_object();
                    const char *tt = ns_tokenizer_token_text(tok, l[j].token);
                    json_object_set_new(a, "token", json_string(tt ? tt : ""));
                    json_object_set_new(a, "id", json_integer(l[j].token));
                    json_object_set_new(a, "logprob", json_real(l[j].logprob));
                    json_array_append_new(top, a);
                }
                json_object_set_new(e, "top_logprobs", top);
                json_array_append_new(lp, e);
            }
            json_object_set_new(ch, "logprobs", lp);
        }
        json_array_append_new(choices, ch);
        total += c->n_tokens;
        if (c->finish == NS_FINISH_LENGTH) *finish = "length";
    }
    json_object_set_new(o, "choices", choices);
    json_t *usage = json_object();
    json_object_set_new(usage, "prompt_tokens", json_integer(sl->item.n_tokens));
    json_object_set_new(usage, "completion_tokens", json_integer(total));
    json_object_set_new(usage, "total_tokens", json_integer(sl->item.n_tokens + total));
    json_object_set_new(o, "usage", usage);
    char *text = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(7));
    json_decref(o);
    *prompt_tokens = sl->item.n_tokens;
    *completion_tokens = total;
    return text;
}

static void slot_reset(slot *sl) {
    for (int k = 0; k < sl->n_want; k++) ns_completion_free(sl->done[k]);
    /* the item was moved out of the claimed array: free its buffers, not the item */
    free(sl->item.tokens);
    free(sl->item.sampling_json);
    memset(sl, 0, sizeof *sl);
}

/* A pending commit: results and the strings they point to. */
typedef struct pending_results {
    ns_result *r;
    char **bodies;
    char **errors;
    int n, cap;
} pending_results;

static bool pending_push(pending_results *p, const ns_result *r, char *body, char *error) {
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 128;
        ns_result *nr = realloc(p->r, (size_t)cap * sizeof *nr);
        if (nr) p->r = nr;
        char **nb = realloc(p->bodies, (size_t)cap * sizeof *nb);
        if (nb) p->bodies = nb;
        char **ne = realloc(p->errors, (size_t)cap * sizeof *ne);
        if (ne) p->errors = ne;
        if (!nr || !nb || !ne) return false;
        p->cap = cap;
    }
    p->r[p->n] = *r;
    p->bodies[p->n] = body;
    p->errors[p->n] = error;
    p->n++;
    return true;
}

static void pending_clear(pending_results *p) {
    for (int i = 0; i < p->n; i++) {
        free(p->bodies[i]);
        free(p->errors[i]);
    }
    p->n = 0;
}

/* Queue bookkeeping on the engine's thread, timed by kind for `run --stats`. */
enum { BOOK_CLAIM, BOOK_JSON, BOOK_COMMIT, BOOK_N };
static const char *const book_names[BOOK_N] = {"waiting for claims", "result JSON", "waiting for commits"};

/* ---- the queue thread: every database call of the run loop ----
 * The engine's thread never waits on SQLite while there is work for the engine: it hands
 * a finished group (with the run's figures for `status`) to this thread, asks it for
 * more items before the slots run dry, and for lease renewals; each has one request in
 * flight. The thread has its own connection (connections are not shared across threads)
 * and serves commits first, then claims, then renewals. Measured on 2 cores (README, "Job
 * pipeline numbers"): a tiny-model job 7% faster, the demo model unchanged.
 * NS_QUEUE_THREAD=0 serves every request at once on the caller's thread and connection
 * instead ("inline"; the loop is the same): for tests and comparisons. */

typedef enum { CLAIM_IDLE, CLAIM_ASKED, CLAIM_READY } claim_state;

typedef struct queue_thread {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool inited, started, quit;
    bool inline_; /* no thread: requests are served in the caller's call, on its connection */
    ns_store *store; /* the thread's own connection, or the caller's (inline) */
    const char *owner;
    int64_t job_id;
    double lease;
    /* commit: the group, the engine's figures for `status` */
    bool commit_busy;
    pending_results group;
    char stats[400];
    /* claim: asked for want items; ready with items (n of them; the caller's then) */
    claim_state claim;
    int want;
    ns_claimed_item *items;
    int n_items;
    bool renew;
    /* the first error; no request is served after it */
    ns_status st;
    ns_error err;
    double seconds[3]; /* spent committing, claiming, renewing */
} queue_thread;

/* Serves one request (commits first, then claims, then renewals), with mu held (it is
 * released during the database call). Returns false when there was none. */
static bool queue_serve(queue_thread *q) {
    ns_error err;
    ns_error_clear(&err);
    ns_status st = NS_OK;
    double t0 = ns_time_now();
    int kind;
    if (q->commit_busy) {
        kind = 0;
        pthread_mutex_unlock(&q->mu);
        st = ns_store_results_commit(q->store, q->owner, q->group.r, q->group.n, NULL, &err);
        if (!st && q->stats[0]) st = ns_store_job_set_run_stats(q->store, q->job_id, q->stats, &err);
        pthread_mutex_lock(&q->mu);
        if (!st) g_committed += q->group.n;
        pending_clear(&q->group);
        q->commit_busy = false;
    } else if (q->claim == CLAIM_ASKED) {
        kind = 1;
        const int want = q->want;
        pthread_mutex_unlock(&q->mu);
        ns_claimed_item *items = NULL;
        int n = 0;
        st = ns_store_items_claim(q->store, q->job_id, q->owner, q->lease, want, &items, &n, &err);
        pthread_mutex_lock(&q->mu);
        q->items = items, q->n_items = n;
        q->claim = CLAIM_READY;
    } else if (q->renew) {
        kind = 2;
        q->renew = false;
        pthread_mutex_unlock(&q->mu);
        st = ns_store_leases_renew(q->store, q->owner, q->lease, &err);
        pthread_mutex_lock(&q->mu);
    } else {
        return false;
    }
    q->seconds[kind] += ns_time_now() - t0;
    if (st && !q->st) q->st = st, q->err = err;
    pthread_cond_broadcast(&q->cv);
    return true;
}

static void *queue_main(void *arg) {
    queue_thread *q = arg;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        while (!q->quit && !q->st && !q->commit_busy && q->claim != CLAIM_ASKED && !q->renew)
            pthread_cond_wait(&q->cv, &q->mu);
        if (q->st || (q->quit && !q->commit_busy)) break; /* a group handed over is committed first */
        (void)queue_serve(q);
    }
    q->commit_busy = false;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return NULL;
}

/* After posting a request (mu held): inline, serve it now. */
static void queue_posted(queue_thread *q) {
    if (q->inline_) (void)queue_serve(q);
    else pthread_cond_broadcast(&q->cv);
}

/* Starts the queue thread with its own connection to the caller's database, or
 * (threaded false) sets up inline service on the caller's store. */
static ns_status queue_start(queue_thread *q, bool threaded, ns_store *caller_store, int64_t job_id,
                             const char *owner, double lease, ns_error *err) {
    memset(q, 0, sizeof *q);
    q->owner = owner, q->job_id = job_id, q->lease = lease;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->inited = true;
    if (!threaded) {
        q->inline_ = true;
        q->store = caller_store;
        return NS_OK;
    }
    ns_status st = ns_store_open_again(caller_store, &q->store, err);
    if (st) return st;
    /* SIGINT/SIGTERM go to the engine's thread: the queue thread starts with them blocked */
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int rc = pthread_create(&q->th, NULL, queue_main, q);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) return ns_error_set(err, NS_ERR_IO, "run: cannot start the queue thread");
    q->started = true;
    return NS_OK;
}

/* The first error of the queue thread (into *err), else NS_OK. Call with mu held. */
static ns_status queue_error(queue_thread *q, ns_error *err) {
    if (q->st && err) *err = q->err;
    return q->st;
}

/* Waits until the group in flight (if any) is committed. */
static ns_status queue_commit_wait(queue_thread *q, ns_error *err) {
    if (!q->inited) return NS_OK;
    pthread_mutex_lock(&q->mu);
    while (q->commit_busy && !q->st) pthread_cond_wait(&q->cv, &q->mu);
    ns_status st = queue_error(q, err);
    pthread_mutex_unlock(&q->mu);
    return st;
}

/* Hands *pend over with the figures for `status` (after the previous group is done) and
 * gives back an empty group: the two groups' arrays swap, so nothing is allocated. */
static ns_status queue_commit(queue_thread *q, pending_results *pend, const char *stats, ns_error *err) {
    ns_status st = queue_commit_wait(q, err);
    if (st) return st;
    pthread_mutex_lock(&q->mu);
    pending_results empty = q->group;
    q->group = *pend;
    *pend = empty;
    snprintf(q->stats, sizeof q->stats, "%s", stats ? stats : "");
    q->commit_busy = true;
    queue_posted(q);
    st = q->inline_ ? queue_error(q, err) : NS_OK;
    pthread_mutex_unlock(&q->mu);
    return st;
}

/* Asks for up to want items (when no claim is in flight). */
static void queue_claim_ask(queue_thread *q, int want) {
    pthread_mutex_lock(&q->mu);
    if (q->claim == CLAIM_IDLE && !q->st) {
        q->claim = CLAIM_ASKED;
        q->want = want;
        queue_posted(q);
    }
    pthread_mutex_unlock(&q->mu);
}

/* Takes the claimed items if they are ready (waiting for them with wait): returns 1 and
 * sets *items (the caller frees them), *n; 0 when none is ready (or none was asked for);
 * -1 on an error of the queue thread. */
static int queue_claim_take(queue_thread *q, bool wait, ns_claimed_item **items, int *n, ns_error *err) {
    pthread_mutex_lock(&q->mu);
    while (wait && q->claim == CLAIM_ASKED && !q->st) pthread_cond_wait(&q->cv, &q->mu);
    int r = 0;
    if (queue_error(q, err)) {
        r = -1;
    } else if (q->claim == CLAIM_READY) {
        *items = q->items, *n = q->n_items;
        q->items = NULL, q->n_items = 0;
        q->claim = CLAIM_IDLE;
        r = 1;
    }
    pthread_mutex_unlock(&q->mu);
    return r;
}

static void queue_renew(queue_thread *q) {
    pthread_mutex_lock(&q->mu);
    q->renew = true;
    queue_posted(q);
    pthread_mutex_unlock(&q->mu);
}

/* Commits a group in flight, stops the thread, frees what it holds (items claimed and
 * never taken keep their leases: ns_store_leases_release gives them back). */
static void queue_stop(queue_thread *q) {
    if (q->started) {
        pthread_mutex_lock(&q->mu);
        q->quit = true;
        pthread_cond_broadcast(&q->cv);
        pthread_mutex_unlock(&q->mu);
        pthread_join(q->th, NULL);
        q->started = false;
    }
    if (q->inited) {
        pthread_cond_destroy(&q->cv);
        pthread_mutex_destroy(&q->mu);
        q->inited = false;
    }
    ns_store_claimed_free(q->items, q->n_items);
    q->items = NULL, q->n_items = 0;
    pending_clear(&q->group);
    free(q->group.r);
    free(q->group.bodies);
    free(q->group.errors);
    memset(&q->group, 0, sizeof q->group);
    if (!q->inline_) ns_store_close(q->store); /* inline: the caller's */
    q->store = NULL;
}

typedef struct progress {
    bool tty;
    double t_start, t_last;
    int64_t total, done0, done, failed;
    int64_t tokens;
} progress;

static void progress_show(progress *pg, int64_t job_id, const ns_step_stats *st, bool force) {
    double now = ns_time_now();
    double every = pg->tty ? 0.2 : 5.0;
    if (!force && now - pg->t_last < every) return;
    pg->t_last = now;
    double el = now - pg->t_start;
    double tok_s = el > 0 ? pg->tokens / el : 0;
    int64_t finished = pg->done + pg->failed;
    int64_t this_run = finished - pg->done0;
    double items_s = el > 0 ? this_run / el : 0;
    double eta = items_s > 0 ? (pg->total - finished) / items_s : -1;
    double hit = st && st->prompt_tokens_admitted > 0 ? 100.0 * (double)st->prefix_hit_tokens / (double)st->prompt_tokens_admitted : 0;
    char eta_s[32];
    if (eta < 0) snprintf(eta_s, sizeof eta_s, "?");
    else snprintf(eta_s, sizeof eta_s, "%dm%02ds", (int)(eta / 60), (int)eta % 60);
    if (pg->tty) {
        int width = 30, fill = pg->total ? (int)(width * finished / pg->total) : 0;
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        fprintf(stderr, "\r[%s] %lld/%lld items, %lld failed, %.0f tok/s, batch %d, kv %d/%d, prefix hits %.0f%%, ETA %s  ",
                bar, (long long)finished, (long long)pg->total, (long long)pg->failed, tok_s, st ? st->n_seqs : 0,
                st ? st->kv_blocks_used : 0, st ? st->kv_blocks_total : 0, hit, eta_s);
    } else {
        fprintf(stderr, "nightshift: job %lld: %lld/%lld items done, %lld failed, %.0f tok/s, batch %d, kv blocks %d/%d, "
                        "prefix hits %.0f%%, ETA %s\n",
                (long long)job_id, (long long)finished, (long long)pg->total, (long long)pg->failed, tok_s,
                st ? st->n_seqs : 0, st ? st->kv_blocks_used : 0, st ? st->kv_blocks_total : 0, hit, eta_s);
    }
}

/* The engine's latest figures, for `nightshift status` (stored with each commit). */
static void run_stats_json(char *json, size_t cap, const ns_step_stats *st, const progress *pg) {
    double el = ns_time_now() - pg->t_start;
    snprintf(json, cap,
             "{\"batch\":%d,\"step_tokens\":%d,\"kv_blocks_used\":%d,\"kv_blocks_cached\":%d,"
             "\"kv_blocks_total\":%d,\"prefix_hit_tokens\":%lld,\"prompt_tokens_admitted\":%lld,"
             "\"preempted\":%lld,\"engine_tok_s\":%.1f}",
             st->n_seqs, st->n_tokens, st->kv_blocks_used, st->kv_blocks_cached, st->kv_blocks_total,
             (long long)st->prefix_hit_tokens, (long long)st->prompt_tokens_admitted, (long long)st->n_preempted,
             el > 0 ? (double)pg->tokens / el : 0.0);
}

typedef struct run_opts {
    const char *db_path;
    int64_t job_id;
    double max_time;
    int64_t max_items;
    int n_threads;
    double lease;
    bool quiet;
    bool stats;
    int device;                          /* this worker's CUDA device */
    int devices[NS_SPEC_MAX_DEVICES];    /* --devices; n_devices 0 = not given */
    int n_devices;
} run_opts;

/* Runs one job until it has no pending items, or a stop. Returns an exit code. */
static int run_job(ns_store *store, const run_opts *o, int64_t job_id, const char *owner, double t_deadline,
                   int64_t *items_budget, const fault *flt) {
    int rc = NS_EXIT_FAILURE;
    ns_error err;
    ns_error_clear(&err);
    ns_job_info info;
    ns_job_spec spec;
    memset(&spec, 0, sizeof spec);
    ns_engine *e = NULL;
    char *spec_text = NULL, *fp_now = NULL;
    slot *slots = NULL;
    ns_claimed_item *claimed = NULL;
    int n_claimed = 0, n_slots = 0;
    pending_results pend = {0};
    queue_thread qt;
    memset(&qt, 0, sizeof qt);
    static long n_commits, n_steps;
    long n_steps_job = 0;

    if (ns_store_job_info(store, job_id, &info, &err) || ns_store_job_spec_text(store, job_id, &spec_text, &err)) {
        fprintf(stderr, "nightshift run: %s\n", err.msg);
        goto done;
    }
    if (ns_job_spec_parse(spec_text, strlen(spec_text), info.spec_path, &spec, &err)) {
        fprintf(stderr, "nightshift run: job %lld: stored spec: %s\n", (long long)job_id, err.msg);
        goto done;
    }
    /* the stored spec's relative paths were resolved at submit: use the recorded model */
    free(spec.model);
    spec.model = strdup(info.model_path);
    char hash[17];
    uint64_t size;
    if (!spec.model || ns_file_hash(spec.model, hash, &size, &err)) {
        fprintf(stderr, "nightshift run: job %lld: %s\n", (long long)job_id, spec.model ? err.msg : "out of memory");
        rc = NS_EXIT_INPUT;
        goto done;
    }
    fp_now = ns_fingerprint_make(&spec, hash, size);
    if (!fp_now || ns_fingerprint_compare(info.fingerprint, fp_now, &err)) {
        fprintf(stderr, "nightshift run: job %lld: refusing to resume: %s\n", (long long)job_id,
                fp_now ? err.msg : "out of memory");
        rc = NS_EXIT_INPUT;
        goto done;
    }
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = spec.model;
    cfg.backend = spec.backend ? spec.backend : "auto";
    cfg.n_threads = o->n_threads;
    cfg.n_ctx = spec.max_context;
    cfg.max_seqs = spec.max_seqs;
    cfg.max_batch_tokens = spec.max_batch_tokens;
    cfg.batch_invariant = spec.deterministic;
    cfg.fp8 = cfg.kv_fp8 = spec.fp8; /* precision: fp8 is FP8 GEMMs and the FP8 KV cache */
    cfg.device = o->device;
    if (cfg.max_seqs && cfg.max_batch_tokens && cfg.max_batch_tokens < cfg.max_seqs) cfg.max_batch_tokens = cfg.max_seqs;
    const char *note = NULL;
    if (ns_engine_open(&cfg, &e, &note, &err)) {
        fprintf(stderr, "nightshift run: job %lld: %s: %s\n", (long long)job_id, spec.model, err.msg);
        rc = NS_EXIT_INPUT;
        goto done;
    }
    if (note && !o->quiet) fprintf(stderr, "nightshift: %s\n", note);
    int max_seqs = cfg.max_seqs ? cfg.max_seqs : 64;
    int n = spec.n > 0 ? spec.n : 1;
    n_slots = NS_MAX(2 * max_seqs / n, 2);
    slots = ns_calloc_array((size_t)n_slots, sizeof(slot));
    if (!slots) {
        fprintf(stderr, "nightshift run: out of memory\n");
        goto done;
    }
    progress pg = {.tty = isatty(2) && !o->quiet, .t_start = ns_time_now(), .t_last = 0,
                   .total = info.n_total, .done0 = info.n_done + info.n_failed, .done = info.n_done,
                   .failed = info.n_failed};
    const char *qmode = getenv("NS_QUEUE_THREAD");
    const bool threaded = !(qmode && !strcmp(qmode, "0"));
    if (queue_start(&qt, threaded, store, job_id, owner, o->lease, &err)) {
        fprintf(stderr, "nightshift run: %s\n", err.msg);
        goto done;
    }
    double t_commit = ns_time_now(), t_renew = ns_time_now(), t_claim_next = 0;
    double t_book[BOOK_N] = {0}; /* seconds the engine's thread spent on queue bookkeeping, by kind */
    double t_engine = 0;          /* seconds in engine steps */
    int n_used = 0;
    bool claiming = true, interrupted = false;
    ns_step_stats st;
    memset(&st, 0, sizeof st);
    char stats_json[400];
    for (;;) {
        if (g_stop) {
            interrupted = true;
            break;
        }
        double now = ns_time_now();
        if ((o->max_time > 0 && now >= t_deadline) || (*items_budget == 0)) claiming = false;
        /* 1. claim into free slots: take what the queue thread claimed (waiting for it only
         * when the engine has nothing to do), and ask for more */
        if (claiming) {
            double tb = ns_time_now();
            int got = queue_claim_take(&qt, ns_engine_idle(e), &claimed, &n_claimed, &err);
            t_book[BOOK_CLAIM] += ns_time_now() - tb;
            if (got < 0) {
                fprintf(stderr, "\nnightshift run: %s\n", err.msg);
                goto done;
            }
            if (got && n_claimed == 0) {
                ns_store_claimed_free(claimed, 0);
                claimed = NULL;
                if (n_used == 0 && ns_engine_idle(e)) break; /* nothing left to do */
                t_claim_next = now + 0.2; /* the queue is dry for now: ask again later */
            }
            if (*items_budget > 0) *items_budget -= n_claimed;
            for (int i = 0; i < n_claimed; i++) {
                int si = 0;
                while (slots[si].used) si++;
                slot *sl = &slots[si];
                memset(sl, 0, sizeof *sl);
                sl->used = true;
                sl->item = claimed[i];
                sl->n_want = n;
                n_used++;
                ns_sampling sp = spec.sampling;
                ns_error ierr;
                ns_error_clear(&ierr);
                if (sl->item.sampling_json && ns_sampling_from_json(sl->item.sampling_json, &sp, &ierr)) {
                    sl->failed = true;
                    snprintf(sl->error, sizeof sl->error, "custom_id '%s': %s", sl->item.custom_id, ierr.msg);
                    continue;
                }
                for (int k = 0; k < n && !sl->failed; k++) {
                    ns_request req = {.id = (uint64_t)si * NS_MAX_N + (uint64_t)k, .prompt = sl->item.tokens,
                                      .n_prompt = sl->item.n_tokens, .sampling = sp};
                    req.sampling.seed = item_seed(sp.seed, sl->item.custom_id, k);
                    if (ns_engine_submit(e, &req, &ierr)) {
                        sl->failed = true;
                        snprintf(sl->error, sizeof sl->error, "custom_id '%s': %s", sl->item.custom_id, ierr.msg);
                    } else {
                        sl->n_submitted++;
                    }
                }
            }
            free(claimed); /* the items' buffers now belong to the slots */
            claimed = NULL;
            n_claimed = 0;
            /* a dry queue is asked again after a pause, unless the engine has nothing to do */
            if (n_used < n_slots && (now >= t_claim_next || ns_engine_idle(e))) {
                int want = n_slots - n_used;
                if (*items_budget > 0 && want > *items_budget) want = (int)*items_budget;
                queue_claim_ask(&qt, want);
            }
        }
        /* 2. one engine step */
        if (!ns_engine_idle(e)) {
            double te = ns_time_now();
            ns_status est = ns_engine_step(e, &st, &err);
            t_engine += ns_time_now() - te;
            if (est) {
                fprintf(stderr, "\nnightshift run: engine: %s\n", err.msg);
                goto done;
            }
            if (st.note) fprintf(stderr, "\nnightshift run: %s\n", st.note); /* rare: a batch shrink */
            pg.tokens += st.n_tokens;
            n_steps++;
            n_steps_job++;
            if (flt->after_steps && n_steps >= flt->after_steps) raise(SIGKILL);
        }
        ns_completion *cs[64];
        int nc;
        while ((nc = ns_engine_collect(e, cs, 64)) > 0) {
            for (int i = 0; i < nc; i++) {
                slot *sl = &slots[cs[i]->id / NS_MAX_N];
                int k = (int)(cs[i]->id % NS_MAX_N);
                sl->done[k] = cs[i];
                sl->n_got++;
                if (cs[i]->finish == NS_FINISH_ERROR && !sl->failed) {
                    sl->failed = true;
                    snprintf(sl->error, sizeof sl->error, "custom_id '%s': %s", sl->item.custom_id, cs[i]->error);
                }
            }
        }
        /* 3. finished items -> pending results */
        for (int si = 0; si < n_slots; si++) {
            slot *sl = &slots[si];
            if (!sl->used) continue;
            /* done when every request made for it came back (a failed item stops making them) */
            bool complete = sl->n_got == (sl->failed ? sl->n_submitted : sl->n_want);
            if (!complete) continue;
            ns_result r;
            memset(&r, 0, sizeof r);
            r.item_id = sl->item.id;
            char *body = NULL, *errtxt = NULL;
            if (sl->failed) {
                r.failed = true;
                errtxt = strdup(sl->error);
                r.error = errtxt;
                pg.failed++;
            } else {
                const char *finish;
                double tb = ns_time_now();
                body = result_json(sl, ns_engine_tokenizer(e), &r.prompt_tokens, &r.completion_tokens, &finish);
                t_book[BOOK_JSON] += ns_time_now() - tb;
                r.body_json = body;
                r.body_len = body ? strlen(body) : 0;
                r.finish_reason = finish;
                r.seconds = sl->done[0] ? sl->done[0]->seconds : 0;
                pg.done++;
            }
            if ((!sl->failed && !body) || (sl->failed && !errtxt) || !pending_push(&pend, &r, body, errtxt)) {
                fprintf(stderr, "\nnightshift run: out of memory\n");
                free(body);
                free(errtxt);
                goto done;
            }
            slot_reset(sl);
            n_used--;
        }
        /* 4. hand a group to the queue thread */
        now = ns_time_now();
        if (pend.n >= flt->commit_items || (pend.n > 0 && now - t_commit >= COMMIT_EVERY_SECONDS)) {
            run_stats_json(stats_json, sizeof stats_json, &st, &pg);
            double tb = ns_time_now();
            ns_status cst = queue_commit(&qt, &pend, stats_json, &err);
            t_book[BOOK_COMMIT] += ns_time_now() - tb;
            if (cst) {
                fprintf(stderr, "\nnightshift run: commit: %s\n", err.msg);
                goto done;
            }
            t_commit = now;
            n_commits++;
            if (flt->after_commits && n_commits >= flt->after_commits) {
                (void)queue_commit_wait(&qt, NULL); /* killed after that commit */
                raise(SIGKILL);
            }
        }
        if (now - t_renew >= o->lease / 3) {
            queue_renew(&qt);
            t_renew = now;
        }
        if (!o->quiet) progress_show(&pg, job_id, &st, false);
        if (!claiming && n_used == 0) break;
    }
    /* finish: commit what is done (with the last figures), stop the queue thread, then
     * give the rest back */
    {
        run_stats_json(stats_json, sizeof stats_json, &st, &pg);
        double tb = ns_time_now();
        ns_status cst = pend.n > 0 || n_steps > 0 ? queue_commit(&qt, &pend, n_steps > 0 ? stats_json : NULL, &err)
                                                 : NS_OK;
        if (!cst) cst = queue_commit_wait(&qt, &err);
        t_book[BOOK_COMMIT] += ns_time_now() - tb;
        if (cst) {
            fprintf(stderr, "\nnightshift run: commit: %s\n", err.msg);
            goto done;
        }
        queue_stop(&qt);
    }
    int64_t released = 0;
    if (ns_store_leases_release(store, owner, &released, &err)) {
        fprintf(stderr, "\nnightshift run: %s\n", err.msg);
        goto done;
    }
    if (!o->quiet) {
        progress_show(&pg, job_id, &st, true);
        if (pg.tty) fputc('\n', stderr);
    }
    if (o->stats) {
        double wall = ns_time_now() - pg.t_start, total = 0;
        char parts[256];
        int off = 0;
        for (int k = 0; k < BOOK_N; k++) {
            total += t_book[k];
            off += snprintf(parts + off, sizeof parts - (size_t)off, "%s%s %.3f", k ? ", " : "", book_names[k], t_book[k]);
        }
        fprintf(stderr, "nightshift run: job %lld: wall %.3f s, queue bookkeeping on the engine's thread %.3f s = %.2f%% "
                        "(%s); %s: compress + commit %.3f s, claims %.3f s, leases %.3f s; %lld "
                        "tokens through the engine in %ld steps, %.3f s\n",
                (long long)job_id, wall, total, wall > 0 ? 100.0 * total / wall : 0.0, parts,
                qt.inline_ ? "on the engine's thread too" : "on the queue thread", qt.seconds[0], qt.seconds[1],
                qt.seconds[2], (long long)pg.tokens, n_steps_job, t_engine);
    }
    if (!interrupted && spec.output_path) {
        /* the job is complete (nothing pending or running): write its output file */
        ns_job_info now_info;
        if (ns_store_job_info(store, job_id, &now_info, &err) == NS_OK && now_info.n_pending == 0 &&
            now_info.n_running == 0) {
            int erc = ns_export_job(store, job_id, spec.output_path, NULL, false);
            if (erc != NS_EXIT_OK) {
                rc = erc;
                goto done;
            }
        }
    }
    if (interrupted) {
        fprintf(stderr, "nightshift run: interrupted; %lld in-flight items returned to the queue; run again to "
                        "resume\n", (long long)released);
        rc = NS_EXIT_INTERRUPTED;
    } else {
        rc = NS_EXIT_OK;
    }
done:
    queue_stop(&qt); /* a group in flight is committed first */
    if (slots)
        for (int si = 0; si < n_slots; si++)
            if (slots[si].used) slot_reset(&slots[si]);
    free(slots);
    ns_store_claimed_free(claimed, n_claimed);
    pending_clear(&pend);
    free(pend.r);
    free(pend.bodies);
    free(pend.errors);
    ns_engine_close(e);
    ns_job_spec_free(&spec);
    free(spec_text);
    free(fp_now);
    return rc;
}

typedef struct pick_ctx {
    int64_t job_id;
    int best_priority;
} pick_ctx;

/* "0,1,3" -> devices; at most NS_SPEC_MAX_DEVICES, each 0..1023, no repeats. */
static bool parse_device_list(const char *s, int *devices, int *n) {
    *n = 0;
    const char *p = s;
    while (p && *p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 1023 || (*end && *end != ',') || *n >= NS_SPEC_MAX_DEVICES) break;
        for (int i = 0; i < *n; i++)
            if (devices[i] == (int)v) goto bad;
        devices[(*n)++] = (int)v;
        if (!*end) return true;
        p = end + 1;
    }
bad:
    fprintf(stderr, "nightshift run: --devices: '%s' is not a list of up to %d distinct device numbers (e.g. 0,1)\n",
            s ? s : "", NS_SPEC_MAX_DEVICES);
    *n = 0;
    return false;
}

static int pick_job(void *user, const ns_job_info *info) {
    pick_ctx *p = user;
    if (info->n_pending + info->n_running == 0 || !strcmp(info->status, "cancelled")) return 0;
    /* list is newest first: take the highest priority, oldest among equals */
    if (p->job_id == 0 || info->priority >= p->best_priority) {
        p->job_id = info->id;
        p->best_priority = info->priority;
    }
    return 0;
}

/* One worker: claims and runs items until none are pending (or a limit or a signal).
 * replica >= 0: one of several worker processes (its device is o->device). */
static int run_worker(run_opts *o, const fault *flt, int replica) {
    ns_error err;
    ns_error_clear(&err);
    ns_store *store = NULL;
    if (ns_store_open(o->db_path, &store, &err)) {
        fprintf(stderr, "nightshift run: %s\n", err.msg);
        return NS_EXIT_FAILURE;
    }
    char owner[128], host[64] = "host";
    gethostname(host, sizeof host - 1);
    snprintf(owner, sizeof owner, "%s:%ld:%llx", host, (long)getpid(), (unsigned long long)(ns_time_now() * 1e6));
    if (replica >= 0) {
        size_t len = strlen(owner);
        snprintf(owner + len, sizeof owner - len, ":dev%d", o->device);
    }
    double deadline = ns_time_now() + o->max_time;
    int64_t budget = o->max_items > 0 ? o->max_items : -1;
    int rc = NS_EXIT_OK;
    if (o->job_id) {
        rc = run_job(store, o, o->job_id, owner, deadline, &budget, flt);
    } else {
        for (;;) {
            pick_ctx p = {0, 0};
            if (ns_store_jobs_list(store, pick_job, &p, &err)) {
                fprintf(stderr, "nightshift run: %s\n", err.msg);
                rc = NS_EXIT_FAILURE;
                break;
            }
            if (p.job_id == 0) {
                if (!o->quiet) fprintf(stderr, "nightshift run: no pending items\n");
                break;
            }
            rc = run_job(store, o, p.job_id, owner, deadline, &budget, flt);
            if (rc != NS_EXIT_OK || budget == 0 || (o->max_time > 0 && ns_time_now() >= deadline)) break;
            ns_job_info info;
            if (ns_store_job_info(store, p.job_id, &info, &err) == NS_OK && info.n_pending > 0) break; /* leases of others */
        }
    }
    ns_store_close(store);
    if (replica >= 0 && !o->quiet)
        fprintf(stderr, "nightshift run: worker %d (device %d): %lld results committed, exit %d\n", replica, o->device,
                (long long)g_committed, rc);
    return rc;
}

/* The devices named by the spec of the job that would run (--job, or the first picked). */
static int spec_devices(const run_opts *o, int *devices, int *n_devices) {
    *n_devices = 0;
    ns_error err;
    ns_error_clear(&err);
    ns_store *store = NULL;
    if (ns_store_open(o->db_path, &store, &err)) {
        fprintf(stderr, "nightshift run: %s\n", err.msg);
        return NS_EXIT_FAILURE;
    }
    int64_t job_id = o->job_id;
    if (!job_id) {
        pick_ctx p = {0, 0};
        if (ns_store_jobs_list(store, pick_job, &p, &err) == NS_OK) job_id = p.job_id;
    }
    char *text = NULL;
    ns_job_info info;
    ns_job_spec spec;
    memset(&spec, 0, sizeof spec);
    if (job_id && ns_store_job_info(store, job_id, &info, &err) == NS_OK &&
        ns_store_job_spec_text(store, job_id, &text, &err) == NS_OK &&
        ns_job_spec_parse(text, strlen(text), info.spec_path, &spec, &err) == NS_OK) {
        *n_devices = spec.n_devices;
        memcpy(devices, spec.devices, sizeof spec.devices);
    }
    /* a job that cannot be read is reported by the worker that runs it */
    ns_job_spec_free(&spec);
    free(text);
    ns_store_close(store);
    return NS_EXIT_OK;
}

/* Data parallelism: one worker process per device, each with its own engine and its own
 * store connection; the store's leases share the items out. Signals reach the workers
 * (SIGTERM is passed on); the exit code is the most serious of theirs (4 interrupted >
 * 1 failure > 3 bad job > 0). */
static int run_replicas(run_opts *o, const fault *flt, const int *devices, int n) {
    pid_t pids[NS_SPEC_MAX_DEVICES];
    if (!o->quiet) {
        fprintf(stderr, "nightshift run: %d workers, one per device:", n);
        for (int i = 0; i < n; i++) fprintf(stderr, " %d", devices[i]);
        fprintf(stderr, "\n");
    }
    fflush(NULL);
    int n_started = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) {
            fprintf(stderr, "nightshift run: fork for device %d: %s\n", devices[i], strerror(errno));
            break;
        }
        if (pid == 0) {
            o->device = devices[i];
            int rc = run_worker(o, flt, i);
            fflush(NULL);
            _exit(rc);
        }
        pids[n_started++] = pid;
    }
    int worst = n_started == n ? NS_EXIT_OK : NS_EXIT_FAILURE;
    bool passed_on = false;
    for (int i = 0; i < n_started;) {
        int status;
        pid_t w = waitpid(pids[i], &status, 0);
        if (w < 0 && errno == EINTR) {
            if (g_stop && !passed_on) {
                for (int k = 0; k < n_started; k++) kill(pids[k], SIGTERM);
                passed_on = true;
            }
            continue;
        }
        int rc = w < 0 ? NS_EXIT_FAILURE
                 : WIFEXITED(status) ? WEXITSTATUS(status)
                                     : NS_EXIT_FAILURE;
        if (w >= 0 && WIFSIGNALED(status))
            fprintf(stderr, "nightshift run: worker on device %d killed by signal %d\n", devices[i], WTERMSIG(status));
        static const int rank[] = {[NS_EXIT_OK] = 0, [NS_EXIT_INPUT] = 1, [NS_EXIT_FAILURE] = 2, [NS_EXIT_INTERRUPTED] = 3};
        int r_rc = rc >= 0 && rc <= NS_EXIT_INTERRUPTED ? rank[rc] : 2;
        int r_worst = rank[worst];
        if (r_rc > r_worst) worst = rc;
        i++;
    }
    return worst;
}

int ns_cmd_run(int argc, char **argv) {
    run_opts o = {.db_path = ns_cli_default_db(), .lease = 60.0};
    long long v;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: nightshift run [--db PATH] [--job ID] [--max-time DURATION] [--max-items N]\n"
                 "                      [--threads N] [--devices LIST] [--lease SECONDS] [--quiet] [--stats]\n\n"
                 "Runs queued items (all jobs by priority, or --job ID) until none are pending.\n"
                 "  --devices L    CUDA devices, e.g. 0,1 (default: the job spec's devices, else 0); with\n"
                 "                 several, one worker process per device shares the queue (data parallel)\n"
                 "  --max-time D   stop claiming after D (90, 90s, 15m, 2h); in-flight items finish\n"
                 "  --max-items N  claim at most N items in this run\n"
                 "  --lease S      lease length in seconds (default 60); a crashed run's items return after it\n"
                 "  --stats        print the time spent on queue bookkeeping at the end\n"
                 "Progress: a bar on a terminal, else a log line every 5 s (stderr).\n"
                 "Exit codes: 0 done (or limit reached), 1 failure, 3 bad job or model, 4 interrupted\n"
                 "(SIGINT/SIGTERM: finished items are committed, the rest returned to the queue).");
            return NS_EXIT_OK;
        } else if (!strcmp(a, "--db") && val) { o.db_path = val; i++;
        } else if (!strcmp(a, "--quiet")) { o.quiet = true;
        } else if (!strcmp(a, "--stats")) { o.stats = true;
        } else if (!strcmp(a, "--job")) {
            if (!ns_cli_parse_int(a, val, 1, INT64_MAX, &v)) return NS_EXIT_USAGE;
            o.job_id = v; i++;
        } else if (!strcmp(a, "--max-items")) {
            if (!ns_cli_parse_int(a, val, 1, INT64_MAX, &v)) return NS_EXIT_USAGE;
            o.max_items = v; i++;
        } else if (!strcmp(a, "--threads")) {
            if (!ns_cli_parse_int(a, val, 1, 256, &v)) return NS_EXIT_USAGE;
            o.n_threads = (int)v; i++;
        } else if (!strcmp(a, "--devices")) {
            if (!parse_device_list(val, o.devices, &o.n_devices)) return NS_EXIT_USAGE;
            i++;
        } else if (!strcmp(a, "--lease")) {
            if (!ns_cli_parse_float(a, val, 0.05, 86400, &d)) return NS_EXIT_USAGE;
            o.lease = d; i++;
        } else if (!strcmp(a, "--max-time")) {
            if (!val || !parse_duration(val, &o.max_time)) {
                fprintf(stderr, "nightshift run: --max-time: '%s' is not a duration (90, 90s, 15m, 2h)\n", val ? val : "");
                return NS_EXIT_USAGE;
            }
            i++;
        } else {
            fprintf(stderr, "nightshift run: unknown option '%s' (see --help)\n", a);
            return NS_EXIT_USAGE;
        }
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    fault flt;
    fault_parse(&flt);

    /* devices: --devices, else the job's spec (--job, or the job that would run first) */
    int devices[NS_SPEC_MAX_DEVICES], n_devices = o.n_devices;
    memcpy(devices, o.devices, sizeof devices);
    if (n_devices == 0) {
        int rc = spec_devices(&o, devices, &n_devices);
        if (rc != NS_EXIT_OK) return rc;
    }
    if (n_devices <= 1) {
        o.device = n_devices == 1 ? devices[0] : 0;
        return run_worker(&o, &flt, -1);
    }
    return run_replicas(&o, &flt, devices, n_devices);
}
