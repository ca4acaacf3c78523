/* store.h: the job queue in SQLite (WAL mode). Schema and migrations: schemas/NNN_name.sql,
 * tracked by PRAGMA user_version; documented in schemas/README.md so that a user can read
 * the queue with the sqlite3 CLI.
 *
 * Invariants:
 * - An item's result and its status change are one transaction (ns_store_results_commit).
 * - Claims take a lease (owner, expiry). A crashed runner's items come back to pending
 *   when their lease has expired; a result is committed only by the current lease owner,
 *   so an item is never done twice.
 * - Results are stored zstd-compressed; export streams them back in input order, one row
 *   at a time (memory flat in the number of items).
 * Threads: one ns_store per thread. Several processes may share a file (busy timeout).
 */
#ifndef NS_STORE_H
#define NS_STORE_H

#include "common.h"

typedef struct ns_store ns_store;

/* Opens or creates the database, applies pending migrations, sets WAL and a busy
 * timeout. Errors: NS_ERR_IO (cannot open), NS_ERR_FORMAT (not a nightshift database,
 * or a newer schema version than this binary knows: the message says both versions). */
ns_status ns_store_open(const char *path, ns_store **out, ns_error *err);
/* A second connection to s's database, for another thread of this process (a connection
 * is used by one thread at a time). Unlike ns_store_open it does not read the file
 * itself, which would drop the locks of the connections already open. */
ns_status ns_store_open_again(const ns_store *s, ns_store **out, ns_error *err);
void ns_store_close(ns_store *s); /* NULL-tolerant */

/* Explicit transactions for bulk inserts (submit). begin is BEGIN IMMEDIATE. */
ns_status ns_store_begin(ns_store *s, ns_error *err);
ns_status ns_store_commit(ns_store *s, ns_error *err);
void ns_store_rollback(ns_store *s);

/* ---- jobs ---- */
typedef struct ns_job_new {
    const char *name;
    const char *spec_path;
    const char *spec_text;     /* the YAML as submitted, kept for the record */
    const char *fingerprint;   /* JSON: model hash, template, sampling, engine version */
    const char *model_path;
    int priority;
    int max_retries;
    int zstd_level;
} ns_job_new;

ns_status ns_store_job_create(ns_store *s, const ns_job_new *job, int64_t *job_id, ns_error *err);

typedef struct ns_job_info {
    int64_t id;
    char name[129];
    char status[16];          /* "queued", "running", "completed", "cancelled" */
    char model_path[1024];
    char spec_path[1024];     /* as given to submit: relative paths in the spec are resolved
                                 against its directory (output.path at run and export) */
    char fingerprint[2048];
    int priority, max_retries, zstd_level;
    double created_at;        /* unix seconds */
    /* counts, as in the OpenAI Batch API request_counts, plus more */
    int64_t n_total, n_pending, n_running, n_done, n_failed, n_cancelled;
    int64_t prompt_tokens, completion_tokens; /* over done items */
    double run_seconds;       /* sum of item wall time */
    double first_result_at, last_result_at; /* unix seconds of the first and last commit, 0 = none */
    char run_stats[512];      /* the last run's engine figures (JSON object), "" if none */
} ns_job_info;

/* Fills info for job_id (0 = the most recent job). NS_ERR_NOT_FOUND if none. */
ns_status ns_store_job_info(ns_store *s, int64_t job_id, ns_job_info *info, ns_error *err);
/* Records the engine's latest figures for the job (a JSON object, written by run). */
ns_status ns_store_job_set_run_stats(ns_store *s, int64_t job_id, const char *json, ns_error *err);
/* The job's spec as submitted (YAML text), malloc'd, caller frees. NS_ERR_NOT_FOUND if
 * there is no such job. */
ns_status ns_store_job_spec_text(ns_store *s, int64_t job_id, char **text, ns_error *err);
/* Calls cb for every job, newest first; stops early when cb returns non-zero. */
ns_status ns_store_jobs_list(ns_store *s, int (*cb)(void *user, const ns_job_info *info), void *user,
                             ns_error *err);
/* cancel: pending items -> cancelled (running ones finish). retry: failed (all = also
 * done) items -> pending with attempts reset. Report how many items changed. */
ns_status ns_store_job_cancel(ns_store *s, int64_t job_id, int64_t *n_changed, ns_error *err);
ns_status ns_store_job_retry(ns_store *s, int64_t job_id, bool failed_only, int64_t *n_changed,
                             ns_error *err);

/* ---- items ---- */
typedef struct ns_item_new {
    int64_t idx;               /* input order, 0-based */
    const char *custom_id;     /* unique within the job */
    const int32_t *tokens;     /* prompt tokens (stored as a blob) */
    int n_tokens;
    const char *sampling_json; /* per-item sampling overrides, or NULL */
    const char *error;         /* non-NULL: inserted as failed with this error */
} ns_item_new;

/* Inserts one item (inside a transaction from ns_store_begin). A duplicate custom_id in
 * the job is NS_ERR_INVALID naming it. */
ns_status ns_store_item_insert(ns_store *s, int64_t job_id, const ns_item_new *item, ns_error *err);

typedef struct ns_claimed_item {
    int64_t id;
    int64_t job_id;
    int64_t idx;
    char custom_id[256];
    int32_t *tokens;           /* malloc'd (n_tokens) */
    int n_tokens;
    char *sampling_json;       /* malloc'd or NULL */
    int attempts;              /* including this one */
} ns_claimed_item;

/* Claims up to max pending items (or running items whose lease expired) of job_id
 * (0 = any job, by priority then age), shortest prompts first, under owner's lease for
 * lease_seconds. Increments attempts; items past the job's max_retries become failed
 * ("gave up after N attempts") instead of being claimed. *items is malloc'd, free with
 * ns_store_claimed_free. */
ns_status ns_store_items_claim(ns_store *s, int64_t job_id, const char *owner, double lease_seconds,
                               int max, ns_claimed_item **items, int *n_items, ns_error *err);
void ns_store_claimed_free(ns_claimed_item *items, int n);

/* Extends owner's leases. */
ns_status ns_store_leases_renew(ns_store *s, const char *owner, double lease_seconds, ns_error *err);
/* Returns owner's running items to pending (attempt not counted), e.g. on SIGINT. */
ns_status ns_store_leases_release(ns_store *s, const char *owner, int64_t *n_released, ns_error *err);

typedef struct ns_result {
    int64_t item_id;
    bool failed;
    const char *error;         /* failed: the message */
    const char *body_json;     /* done: the completion(s) as JSON text (compressed here) */
    size_t body_len;
    int prompt_tokens;
    int completion_tokens;
    const char *finish_reason; /* "stop", "length" */
    double seconds;
} ns_result;

/* Commits n results in ONE transaction: for each, result row + status change, only where
 * owner still holds the lease (others are skipped and counted in *n_skipped, may be
 * NULL). zstd level from the job. */
ns_status ns_store_results_commit(ns_store *s, const char *owner, const ns_result *results, int n,
                                  int64_t *n_skipped, ns_error *err);

/* ---- export ---- */
typedef struct ns_export_row {
    int64_t idx;
    const char *custom_id;
    const char *status;        /* "done", "failed", "pending", ... */
    const char *error;         /* failed items, else NULL */
    const char *body_json;     /* done items: decompressed completion JSON, else NULL */
    size_t body_len;
    int prompt_tokens, completion_tokens;
    const char *finish_reason;
} ns_export_row;

/* Streams the job's items in input order (idx) to cb; stops early when cb returns
 * non-zero (that value is returned as NS_ERR_IO... see store.c). Memory stays flat. */
ns_status ns_store_export(ns_store *s, int64_t job_id, int (*cb)(void *user, const ns_export_row *row),
                          void *user, ns_error *err);

/* PRAGMA integrity_check == "ok". */
ns_status ns_store_check(ns_store *s, ns_error *err);

#endif
