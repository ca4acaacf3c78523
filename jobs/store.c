/* store.c: the job queue in SQLite (WAL mode): schema and migrations, jobs, items, claims
 * under a lease, results committed zstd-compressed together with their status, export.
 *
 * Choices this file makes within store.h's contract:
 * - The schema lives here as k_schema_001, the same text as schemas/001_init.sql (a unit
 *   test compares them). PRAGMA user_version is the schema version; open applies the
 *   missing migrations in one BEGIN IMMEDIATE transaction, so two processes opening a
 *   new file at once migrate it once.
 * - jobs.status holds only 'active' or 'cancelled'. The status shown by job_info is
 *   derived from the item counts: "cancelled" (cancelled flag), "completed" (has items,
 *   none pending or running), "running" (some running, or some finished and some still
 *   pending), "queued" otherwise. jobs.finished_at is set by the commit or claim that
 *   finishes a job's last item, and by cancel; retry clears it.
 * - A claim first returns running items whose lease has expired to pending (their
 *   attempt stays counted; a cancelled job's become cancelled), then takes pending items
 *   of one job at a time (job_id, or the active job of highest priority, oldest first)
 *   in (n_prompt, idx) order straight off the items_claim index.
 * - Items failed by the engine are final; max_retries counts claims that ended without
 *   a commit (crash, lease expiry). leases_release undoes the attempt it releases.
 * - A NULL custom_id is stored as "item-<idx>". custom_id is at most 255 bytes.
 * - Functions that write use BEGIN IMMEDIATE, or a SAVEPOINT when the caller already
 *   holds a transaction from ns_store_begin.
 * - Export: cb returns 0 to go on; > 0 stops early and export returns NS_OK; < 0 stops
 *   and export returns that value as its status (err says where it stopped).
 * - Errors name the database file and the operation and carry sqlite3_errmsg. SQLite's
 *   CORRUPT/NOTADB map to NS_ERR_FORMAT, BUSY/LOCKED (after the 10 s busy timeout) to
 *   NS_ERR_CAPACITY, NOMEM to NS_ERR_NOMEM, constraint errors to NS_ERR_INVALID, the rest
 *   to NS_ERR_IO.
 * Times in the database are unix seconds (wall clock), so that leases work across
 * processes.
 */
#include "store.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sqlite3.h>
#define ZDICT_STATIC_LINKING_ONLY
#include <zdict.h>
#include <zstd.h>

#define NS_STORE_SCHEMA_VERSION 3
#define NS_STORE_MAX_BODY ((size_t)256 << 20) /* largest result body, bytes */
#define NS_STORE_MAX_CUSTOM_ID 255
#define NS_STORE_BUSY_MS 10000

/* ---- schema: the same text as schemas/001_init.sql ---- */
static const char k_schema_001[] =
    "-- 001_init.sql: the first nightshift queue schema (PRAGMA user_version = 1).\n"
    "-- Never edit a migration once it has been released: add 002_*.sql instead (see\n"
    "-- schemas/README.md). jobs/store.c embeds this exact text; test_store_schema_file_matches\n"
    "-- checks that the two agree.\n"
    "\n"
    "CREATE TABLE jobs (\n"
    "    id          INTEGER PRIMARY KEY,\n"
    "    name        TEXT NOT NULL,\n"
    "    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),\n"
    "    spec_path   TEXT,\n"
    "    spec_text   TEXT,\n"
    "    fingerprint TEXT,\n"
    "    model_path  TEXT,\n"
    "    priority    INTEGER NOT NULL DEFAULT 0,\n"
    "    max_retries INTEGER NOT NULL DEFAULT 0 CHECK (max_retries >= 0),\n"
    "    zstd_level  INTEGER NOT NULL DEFAULT 3,\n"
    "    created_at  REAL NOT NULL,\n"
    "    finished_at REAL\n"
    ");\n"
    "\n"
    "CREATE TABLE items (\n"
    "    id            INTEGER PRIMARY KEY,\n"
    "    job_id        INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,\n"
    "    idx           INTEGER NOT NULL,\n"
    "    custom_id     TEXT NOT NULL,\n"
    "    prompt_tokens BLOB NOT NULL,\n"
    "    n_prompt      INTEGER NOT NULL CHECK (n_prompt >= 0),\n"
    "    sampling_json TEXT,\n"
    "    status        TEXT NOT NULL DEFAULT 'pending'\n"
    "                  CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),\n"
    "    attempts      INTEGER NOT NULL DEFAULT 0,\n"
    "    lease_owner   TEXT,\n"
    "    lease_expires REAL,\n"
    "    error         TEXT,\n"
    "    updated_at    REAL NOT NULL,\n"
    "    UNIQUE (job_id, custom_id),\n"
    "    UNIQUE (job_id, idx)\n"
    ");\n"
    "\n"
    "-- claim: a job's pending items, shortest prompt first, then input order.\n"
    "CREATE INDEX items_claim ON items (job_id, status, n_prompt, idx);\n"
    "-- leases: expiry scans and renew/release by owner touch only running items.\n"
    "CREATE INDEX items_lease_expires ON items (lease_expires) WHERE status = 'running';\n"
    "CREATE INDEX items_lease_owner ON items (lease_owner) WHERE status = 'running';\n"
    "-- export walks the index of UNIQUE (job_id, idx); it needs no index of its own.\n"
    "\n"
    "CREATE TABLE results (\n"
    "    item_id           INTEGER PRIMARY KEY REFERENCES items (id) ON DELETE CASCADE,\n"
    "    body              BLOB NOT NULL,\n"
    "    raw_bytes         INTEGER NOT NULL CHECK (raw_bytes >= 0),\n"
    "    prompt_tokens     INTEGER NOT NULL,\n"
    "    completion_tokens INTEGER NOT NULL,\n"
    "    finish_reason     TEXT,\n"
    "    seconds           REAL NOT NULL,\n"
    "    created_at        REAL NOT NULL\n"
    ");\n";

/* ---- the same text as schemas/002_zstd_dict.sql ---- */
static const char k_schema_002[] =
    "-- 002: a per-job zstd dictionary for result bodies. Short results compress poorly one at\n"
    "-- a time; a dictionary trained on a job's first results and kept with the job compresses\n"
    "-- the rest 2-3x better (measured: README \"Job pipeline\"). zstd_dict_state: 0 = not\n"
    "-- decided yet, 1 = in use (frames carry its dictionary id), 2 = tried, plain frames kept.\n"
    "ALTER TABLE jobs ADD COLUMN zstd_dict BLOB;\n"
    "ALTER TABLE jobs ADD COLUMN zstd_dict_state INTEGER NOT NULL DEFAULT 0;\n";

/* ---- the same text as schemas/003_run_stats.sql ---- */
static const char k_schema_003[] =
    "-- 003: the engine's latest per-step figures for a job, written by `nightshift run` at each\n"
    "-- commit and shown by `nightshift status`: a JSON object (batch size, step tokens, KV\n"
    "-- blocks used/cached/total, prefix-cache hits, preemptions, engine tokens/s, updated_at).\n"
    "ALTER TABLE jobs ADD COLUMN run_stats TEXT;\n";

/* Dictionary training: after DICT_TRAIN_N results of a job, train on the first
 * DICT_TRAIN_FIT and keep the dictionary if the other ones compress at most
 * DICT_KEEP_RATIO of their plain size with it. */
#define DICT_TRAIN_N 128
#define DICT_TRAIN_FIT 96
#define DICT_MAX_BYTES (16 << 10)
#define DICT_KEEP_RATIO 0.85

typedef struct migration {
    int version;
    const char *name;
    const char *sql;
} migration;

static const migration k_migrations[] = {
    {1, "001_init.sql", k_schema_001},
    {2, "002_zstd_dict.sql", k_schema_002},
    {3, "003_run_stats.sql", k_schema_003},
};
#define N_MIGRATIONS ((int)(sizeof k_migrations / sizeof k_migrations[0]))

/* ---- cached statements ---- */
enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_SAVEPOINT,
    ST_RELEASE,
    ST_ROLLBACK_TO,
    ST_JOB_INSERT,
    ST_JOB_GET,
    ST_JOB_LATEST,
    ST_JOB_ROW,
    ST_JOB_COUNTS,
    ST_JOB_TOTALS,
    ST_ITEM_INSERT,
    ST_EXPIRE,
    ST_PICK_JOB,
    ST_CLAIM_SELECT,
    ST_CLAIM_TAKE,
    ST_CLAIM_GIVEUP,
    ST_COMMIT_ITEM,
    ST_COMMIT_RESULT,
    ST_FINISH_JOBS,
    ST_RENEW,
    ST_RELEASE_LEASES,
    ST_CANCEL_ITEMS,
    ST_CANCEL_JOB,
    ST_RETRY_DEL_RESULTS,
    ST_RETRY_FAILED,
    ST_RETRY_ALL,
    ST_JOB_REACTIVATE,
    ST_COUNT
};

/* A running item whose job was cancelled goes to 'cancelled' instead of 'pending'. */
#define BACK_TO_QUEUE                                                                      \
    "CASE WHEN (SELECT j.status FROM jobs j WHERE j.id = items.job_id) = 'cancelled' "      \
    "THEN 'cancelled' ELSE 'pending' END"

static const char *const k_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_SAVEPOINT] = "SAVEPOINT ns_op",
    [ST_RELEASE] = "RELEASE ns_op",
    [ST_ROLLBACK_TO] = "ROLLBACK TO ns_op",
    [ST_JOB_INSERT] = "INSERT INTO jobs (name, status, spec_path, spec_text, fingerprint, "
                      "model_path, priority, max_retries, zstd_level, created_at) "
                      "VALUES (?1, 'active', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [ST_JOB_GET] = "SELECT status, max_retries FROM jobs WHERE id = ?1",
    [ST_JOB_LATEST] = "SELECT id FROM jobs ORDER BY id DESC LIMIT 1",
    [ST_JOB_ROW] = "SELECT id, name, status, model_path, fingerprint, priority, max_retries, "
                   "zstd_level, created_at, spec_path, run_stats FROM jobs WHERE id = ?1",
    [ST_JOB_COUNTS] = "SELECT status, count(*) FROM items WHERE job_id = ?1 GROUP BY status",
    [ST_JOB_TOTALS] = "SELECT coalesce(sum(r.prompt_tokens), 0), "
                      "coalesce(sum(r.completion_tokens), 0), coalesce(sum(r.seconds), 0), "
                      "coalesce(min(r.created_at), 0), coalesce(max(r.created_at), 0) "
                      "FROM items i JOIN results r ON r.item_id = i.id "
                      "WHERE i.job_id = ?1 AND i.status = 'done'",
    [ST_ITEM_INSERT] = "INSERT INTO items (job_id, idx, custom_id, prompt_tokens, n_prompt, "
                       "sampling_json, status, error, updated_at) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [ST_EXPIRE] = "UPDATE items SET status = " BACK_TO_QUEUE ", lease_owner = NULL, "
                  "lease_expires = NULL, updated_at = ?1 "
                  "WHERE status = 'running' AND lease_expires < ?1",
    [ST_PICK_JOB] = "SELECT j.id, j.max_retries FROM jobs j WHERE j.status = 'active' AND "
                    "EXISTS (SELECT 1 FROM items i WHERE i.job_id = j.id AND "
                    "i.status = 'pending') ORDER BY j.priority DESC, j.id LIMIT 1",
    [ST_CLAIM_SELECT] = "SELECT id, idx, custom_id, prompt_tokens, n_prompt, sampling_json, "
                        "attempts FROM items WHERE job_id = ?1 AND status = 'pending' "
                        "ORDER BY n_prompt, idx LIMIT ?2",
    [ST_CLAIM_TAKE] = "UPDATE items SET status = 'running', attempts = attempts + 1, "
                      "lease_owner = ?2, lease_expires = ?3, updated_at = ?4 WHERE id = ?1",
    [ST_CLAIM_GIVEUP] = "UPDATE items SET status = 'failed', error = ?2, lease_owner = NULL, "
                        "lease_expires = NULL, updated_at = ?3 WHERE id = ?1",
    [ST_COMMIT_ITEM] = "UPDATE items SET status = ?3, error = ?4, lease_owner = NULL, "
                       "lease_expires = NULL, updated_at = ?5 "
                       "WHERE id = ?1 AND lease_owner = ?2 AND status = 'running' "
                       "RETURNING job_id",
    [ST_COMMIT_RESULT] = "INSERT OR REPLACE INTO results (item_id, body, raw_bytes, "
                         "prompt_tokens, completion_tokens, finish_reason, seconds, "
                         "created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [ST_FINISH_JOBS] = "UPDATE jobs SET finished_at = ?1 WHERE finished_at IS NULL AND "
                       "status = 'active' AND "
                       "EXISTS (SELECT 1 FROM items i WHERE i.job_id = jobs.id) AND "
                       "NOT EXISTS (SELECT 1 FROM items i WHERE i.job_id = jobs.id AND "
                       "i.status IN ('pending', 'running'))",
    [ST_RENEW] = "UPDATE items SET lease_expires = ?2, updated_at = ?3 "
                 "WHERE status = 'running' AND lease_owner = ?1",
    [ST_RELEASE_LEASES] = "UPDATE items SET status = " BACK_TO_QUEUE ", "
                          "attempts = max(attempts - 1, 0), lease_owner = NULL, "
                          "lease_expires = NULL, updated_at = ?2 "
                          "WHERE status = 'running' AND lease_owner = ?1",
    [ST_CANCEL_ITEMS] = "UPDATE items SET status = 'cancelled', updated_at = ?2 "
                        "WHERE job_id = ?1 AND status = 'pending'",
    [ST_CANCEL_JOB] = "UPDATE jobs SET status = 'cancelled', "
                      "finished_at = coalesce(finished_at, ?2) WHERE id = ?1",
    [ST_RETRY_DEL_RESULTS] = "DELETE FROM results WHERE item_id IN "
                             "(SELECT id FROM items WHERE job_id = ?1 AND status = 'done')",
    [ST_RETRY_FAILED] = "UPDATE items SET status = 'pending', attempts = 0, error = NULL, "
                        "lease_owner = NULL, lease_expires = NULL, updated_at = ?2 "
                        "WHERE job_id = ?1 AND status = 'failed'",
    [ST_RETRY_ALL] = "UPDATE items SET status = 'pending', attempts = 0, error = NULL, "
                     "lease_owner = NULL, lease_expires = NULL, updated_at = ?2 "
                     "WHERE job_id = ?1 AND status IN ('failed', 'done', 'cancelled')",
    [ST_JOB_REACTIVATE] = "UPDATE jobs SET status = 'active', finished_at = NULL WHERE id = ?1",
};

struct ns_store {
    sqlite3 *db;
    char *path;
    sqlite3_stmt *st[ST_COUNT];
    ZSTD_CCtx *cctx;
    ZSTD_DCtx *dctx;
    unsigned char *tok_buf; /* (4 * n_tokens) little-endian int32, item_insert */
    size_t tok_cap;
    unsigned char *z_buf;   /* compressed body, results_commit */
    size_t z_cap;
    char *d_buf;            /* decompressed body + NUL, export */
    size_t d_cap;
    int64_t level_job;      /* job whose zstd level is cached (0 = none) */
    int level;
    int64_t dict_job;       /* job whose dictionary state is cached (0 = none) */
    int dict_state;         /* 0 undecided, 1 in use, 2 plain */
    ZSTD_CDict *cdict;      /* dict_state 1, at the job's level */
    ZSTD_DDict *ddict;
};

/* ---- helpers ---- */

static double wall_now(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (double)time(NULL);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static ns_status map_rc(int rc) {
    switch (rc & 0xff) {
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return NS_ERR_FORMAT;
    case SQLITE_NOMEM: return NS_ERR_NOMEM;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return NS_ERR_CAPACITY;
    case SQLITE_CONSTRAINT:
    case SQLITE_RANGE:
    case SQLITE_TOOBIG:
    case SQLITE_MISMATCH: return NS_ERR_INVALID;
    default: return NS_ERR_IO;
    }
}

/* Fills err from a SQLite return code rc of operation op. */
static ns_status db_err_at(ns_store *s, ns_error *err, int line, int rc, const char *op) {
    const char *msg = s && s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    return ns_error_set_at(err, __FILE__, line, map_rc(rc), "%s: %s: %s (sqlite error %d)",
                           s && s->path ? s->path : "database", op, msg, rc);
}
#define db_err(s, err, rc, op) db_err_at((s), (err), __LINE__, (rc), (op))

/* Runs a bind call; on failure fills err and jumps to fail. Needs s, err, st, op. */
#define BIND(call)                                                                         \
    do {                                                                                   \
        int rc_ = (call);                                                                  \
        if (rc_ != SQLITE_OK) {                                                            \
            st = db_err(s, err, rc_, op);                                                  \
            goto fail;                                                                     \
        }                                                                                  \
    } while (0)

/* The cached statement id, prepared on first use, reset and unbound otherwise.
 * NULL with err filled on failure. */
static sqlite3_stmt *stmt_get(ns_store *s, int id, ns_error *err) {
    sqlite3_stmt *q = s->st[id];
    if (!q) {
        int rc = sqlite3_prepare_v3(s->db, k_sql[id], -1, SQLITE_PREPARE_PERSISTENT, &q, NULL);
        if (rc != SQLITE_OK) {
            db_err(s, err, rc, "prepare");
            sqlite3_finalize(q);
            return NULL;
        }
        s->st[id] = q;
        return q;
    }
    /* reset reports the error of the previous step, which was handled then */
    (void)sqlite3_reset(q);
    if (sqlite3_clear_bindings(q) != SQLITE_OK) {
        db_err(s, err, sqlite3_errcode(s->db), "clear bindings");
        return NULL;
    }
    return q;
}

/* Steps q to completion (a statement that returns no rows we need). */
static ns_status stmt_run(ns_store *s, sqlite3_stmt *q, const char *op, ns_error *err) {
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
    }
    ns_status st = rc == SQLITE_DONE ? NS_OK : db_err(s, err, rc, op);
    (void)sqlite3_reset(q);
    return st;
}

/* Runs a cached statement that takes no parameters. */
static ns_status run_simple(ns_store *s, int id, ns_error *err) {
    sqlite3_stmt *q = stmt_get(s, id, err);
    if (!q) return err ? err->code : NS_ERR_IO;
    return stmt_run(s, q, k_sql[id], err);
}

static ns_status status_of(ns_error *err) { return err && err->code ? err->code : NS_ERR_IO; }

/* Runs sql that has no parameters nor rows (exec). */
static ns_status exec_sql(ns_store *s, const char *sql, const char *op, ns_error *err) {
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? NS_OK : db_err(s, err, rc, op);
}

/* One integer from a one-row query. */
static ns_status query_int(ns_store *s, const char *sql, int64_t *out, ns_error *err) {
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, sql, -1, &q, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(q);
        return db_err(s, err, rc, sql);
    }
    rc = sqlite3_step(q);
    ns_status st = NS_OK;
    if (rc == SQLITE_ROW) *out = sqlite3_column_int64(q, 0);
    else st = db_err(s, err, rc == SQLITE_DONE ? SQLITE_ERROR : rc, sql);
    sqlite3_finalize(q);
    return st;
}

/* Transactions of the store's own operations: BEGIN IMMEDIATE, or a savepoint inside
 * a transaction the caller opened with ns_store_begin. */
static ns_status tx_begin(ns_store *s, bool *own, ns_error *err) {
    *own = sqlite3_get_autocommit(s->db) != 0;
    return run_simple(s, *own ? ST_BEGIN : ST_SAVEPOINT, err);
}

static void tx_abort(ns_store *s, bool own) {
    if (own) {
        if (!sqlite3_get_autocommit(s->db)) (void)run_simple(s, ST_ROLLBACK, NULL);
    } else {
        (void)run_simple(s, ST_ROLLBACK_TO, NULL);
        (void)run_simple(s, ST_RELEASE, NULL);
    }
}

static ns_status tx_end(ns_store *s, bool own, ns_error *err) {
    ns_status st = run_simple(s, own ? ST_COMMIT : ST_RELEASE, err);
    if (st != NS_OK) tx_abort(s, own);
    return st;
}

static void copy_text(char *dst, size_t cap, const unsigned char *src) {
    snprintf(dst, cap, "%s", src ? (const char *)src : "");
}

static char *dup_text(const unsigned char *src) {
    if (!src) return NULL;
    size_t n = strlen((const char *)src);
    char *p = malloc(n + 1);
    if (p) memcpy(p, src, n + 1);
    return p;
}

static ns_status grow(void **buf, size_t *cap, size_t need, ns_error *err) {
    if (need <= *cap) return NS_OK;
    size_t n = *cap ? *cap : 4096;
    while (n < need) n = n > SIZE_MAX / 2 ? need : n * 2;
    void *p = realloc(*buf, n);
    if (!p) return ns_error_set(err, NS_ERR_NOMEM, "store: out of memory for a %zu-byte buffer", need);
    *buf = p;
    *cap = n;
    return NS_OK;
}

/* Resolves job_id 0 to the most recent job and checks that the job exists. */
static ns_status job_resolve(ns_store *s, int64_t job_id, int64_t *out, ns_error *err) {
    const char *op = "find job";
    ns_status st = NS_OK;
    sqlite3_stmt *q = stmt_get(s, job_id ? ST_JOB_GET : ST_JOB_LATEST, err);
    if (!q) return status_of(err);
    if (job_id) BIND(sqlite3_bind_int64(q, 1, job_id));
    int rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        *out = job_id ? job_id : sqlite3_column_int64(q, 0);
    } else if (rc == SQLITE_DONE) {
        st = job_id ? ns_error_set(err, NS_ERR_NOT_FOUND, "%s: job %lld not found", s->path,
                                   (long long)job_id)
                    : ns_error_set(err, NS_ERR_NOT_FOUND, "%s: no jobs yet", s->path);
    } else {
        st = db_err(s, err, rc, op);
    }
fail:
    (void)sqlite3_reset(q);
    return st;
}

/* Sets finished_at of active jobs that have no pending or running item left. */
static ns_status finish_jobs(ns_store *s, double now, ns_error *err) {
    const char *op = "mark finished jobs";
    ns_status st = NS_OK;
    sqlite3_stmt *q = stmt_get(s, ST_FINISH_JOBS, err);
    if (!q) return status_of(err);
    BIND(sqlite3_bind_double(q, 1, now));
    st = stmt_run(s, q, op, err);
fail:
    return st;
}

/* ---- open, close, migrations ---- */

static ns_status check_magic(const char *path, ns_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return NS_OK; /* absent: SQLite creates it (or reports why it cannot) */
    unsigned char head[16];
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    if (n == 0) return NS_OK; /* an empty file is an empty database */
    if (n < sizeof head || memcmp(head, "SQLite format 3", 16) != 0)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "%s: not a nightshift database (not an SQLite file: its header is "
                            "not 'SQLite format 3')",
                            path);
    return NS_OK;
}

static ns_status migrate(ns_store *s, ns_error *err) {
    int64_t version = 0;
    ns_status st = query_int(s, "PRAGMA user_version", &version, err);
    if (st != NS_OK) return st;
    if (version > NS_STORE_SCHEMA_VERSION || version < 0)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "%s: database schema version %lld is newer than this nightshift "
                            "(knows up to %d)",
                            s->path, (long long)version, NS_STORE_SCHEMA_VERSION);
    if (version < NS_STORE_SCHEMA_VERSION) {
        if ((st = exec_sql(s, "BEGIN IMMEDIATE", "begin migration", err)) != NS_OK) return st;
        /* another process may have migrated while we waited for the lock */
        if ((st = query_int(s, "PRAGMA user_version", &version, err)) != NS_OK) goto fail;
        if (version == 0) {
            int64_t n_objects = 0;
            st = query_int(s, "SELECT count(*) FROM sqlite_master", &n_objects, err);
            if (st != NS_OK) goto fail;
            if (n_objects > 0) {
                st = ns_error_set(err, NS_ERR_FORMAT,
                                  "%s: not a nightshift database (schema version 0, but it "
                                  "already holds %lld tables or indexes)",
                                  s->path, (long long)n_objects);
                goto fail;
            }
        }
        for (int i = 0; i < N_MIGRATIONS; i++) {
            if (k_migrations[i].version <= version) continue;
            int rc = sqlite3_exec(s->db, k_migrations[i].sql, NULL, NULL, NULL);
            if (rc != SQLITE_OK) {
                st = db_err(s, err, rc, k_migrations[i].name);
                goto fail;
            }
        }
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", NS_STORE_SCHEMA_VERSION);
        if ((st = exec_sql(s, sql, "set user_version", err)) != NS_OK) goto fail;
        if ((st = exec_sql(s, "COMMIT", "commit migration", err)) != NS_OK) goto fail;
        return NS_OK;
    }
    /* current version: make sure it is ours and not another program's user_version */
    int64_t n_tables = 0;
    st = query_int(s,
                   "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                   "name IN ('jobs', 'items', 'results')",
                   &n_tables, err);
    if (st != NS_OK) return st;
    if (n_tables != 3)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "%s: not a nightshift database (schema version %lld but the tables "
                            "jobs, items, results are missing)",
                            s->path, (long long)version);
    return NS_OK;
fail:
    if (!sqlite3_get_autocommit(s->db)) (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return st;
}

/* check_magic reads the file through a descriptor of its own: closing it drops every
 * POSIX lock this process holds on the file, those of its open SQLite connections too
 * (SQLite's "How To Corrupt" 2.2). So it runs only for a process's first connection;
 * ns_store_open_again skips it. */
static ns_status store_open(const char *path, bool check, ns_store **out, ns_error *err) {
    *out = NULL;
    if (!path || !*path) return ns_error_set(err, NS_ERR_INVALID, "store: empty database path");
    ns_status st = check ? check_magic(path, err) : NS_OK;
    if (st != NS_OK) return st;

    ns_store *s = calloc(1, sizeof *s);
    if (!s) return ns_error_set(err, NS_ERR_NOMEM, "store: out of memory");
    size_t n = strlen(path);
    s->path = malloc(n + 1);
    if (!s->path) {
        free(s);
        return ns_error_set(err, NS_ERR_NOMEM, "store: out of memory");
    }
    memcpy(s->path, path, n + 1);

    int rc = sqlite3_open_v2(path, &s->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK) {
        st = db_err(s, err, rc, "open");
        if (st != NS_ERR_FORMAT) st = ns_error_set(err, NS_ERR_IO, "%s: cannot open: %s", path,
                                                   sqlite3_errmsg(s->db));
        goto fail;
    }
    if ((rc = sqlite3_extended_result_codes(s->db, 1)) != SQLITE_OK) {
        st = db_err(s, err, rc, "enable extended result codes");
        goto fail;
    }
    if ((rc = sqlite3_busy_timeout(s->db, NS_STORE_BUSY_MS)) != SQLITE_OK) {
        st = db_err(s, err, rc, "set busy timeout");
        goto fail;
    }
    {
        /* Switching a new file to WAL fails with SQLITE_BUSY, without calling the busy
         * handler, while another process opens it too: retry for the busy timeout. */
        sqlite3_stmt *q = NULL;
        rc = sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &q, NULL);
        if (rc == SQLITE_OK) rc = sqlite3_step(q);
        for (int waited_ms = 0; q && (rc & 0xff) == SQLITE_BUSY && waited_ms < NS_STORE_BUSY_MS;) {
            (void)sqlite3_reset(q);
            waited_ms += NS_MAX(sqlite3_sleep(5), 1);
            rc = sqlite3_step(q);
        }
        if (rc != SQLITE_ROW) {
            st = db_err(s, err, rc == SQLITE_DONE ? SQLITE_ERROR : rc, "set WAL journal mode");
            sqlite3_finalize(q);
            goto fail;
        }
        const unsigned char *mode = sqlite3_column_text(q, 0);
        bool is_wal = mode && strcmp((const char *)mode, "wal") == 0;
        char got[32];
        copy_text(got, sizeof got, mode);
        sqlite3_finalize(q);
        if (!is_wal) {
            st = ns_error_set(err, NS_ERR_IO,
                              "%s: cannot use the WAL journal mode here (SQLite kept '%s'); "
                              "the queue needs a local file system",
                              path, got);
            goto fail;
        }
    }
    if ((st = exec_sql(s, "PRAGMA synchronous = NORMAL", "set synchronous", err)) != NS_OK) goto fail;
    if ((st = exec_sql(s, "PRAGMA foreign_keys = ON", "enable foreign keys", err)) != NS_OK) goto fail;
    if ((st = migrate(s, err)) != NS_OK) goto fail;
    *out = s;
    return NS_OK;
fail:
    ns_store_close(s);
    return st;
}

ns_status ns_store_open(const char *path, ns_store **out, ns_error *err) { return store_open(path, true, out, err); }

ns_status ns_store_open_again(const ns_store *s, ns_store **out, ns_error *err) {
    return store_open(s->path, false, out, err);
}

void ns_store_close(ns_store *s) {
    if (!s) return;
    for (int i = 0; i < ST_COUNT; i++) sqlite3_finalize(s->st[i]);
    if (s->db) {
        if (!sqlite3_get_autocommit(s->db)) (void)sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        if (sqlite3_close(s->db) != SQLITE_OK) (void)sqlite3_close_v2(s->db);
    }
    ZSTD_freeCCtx(s->cctx);
    ZSTD_freeDCtx(s->dctx);
    ZSTD_freeCDict(s->cdict);
    ZSTD_freeDDict(s->ddict);
    free(s->tok_buf);
    free(s->z_buf);
    free(s->d_buf);
    free(s->path);
    free(s);
}

ns_status ns_store_begin(ns_store *s, ns_error *err) { return run_simple(s, ST_BEGIN, err); }
ns_status ns_store_commit(ns_store *s, ns_error *err) {
    ns_status st = run_simple(s, ST_COMMIT, err);
    if (st != NS_OK) ns_store_rollback(s);
    return st;
}
void ns_store_rollback(ns_store *s) {
    if (s && !sqlite3_get_autocommit(s->db)) (void)run_simple(s, ST_ROLLBACK, NULL);
}

/* ---- jobs ---- */

static ns_status check_len(const char *field, const char *v, size_t max, ns_error *err) {
    size_t n = v ? strlen(v) : 0;
    if (n > max)
        return ns_error_set(err, NS_ERR_INVALID, "job.%s: %zu bytes, at most %zu allowed", field,
                            n, max);
    return NS_OK;
}

ns_status ns_store_job_create(ns_store *s, const ns_job_new *job, int64_t *job_id, ns_error *err) {
    const char *op = "create job";
    ns_status st;
    if ((st = check_len("name", job->name, 128, err)) != NS_OK) return st;
    if ((st = check_len("model_path", job->model_path, 1023, err)) != NS_OK) return st;
    if ((st = check_len("fingerprint", job->fingerprint, 2047, err)) != NS_OK) return st;
    if (job->max_retries < 0)
        return ns_error_set(err, NS_ERR_INVALID, "job.max_retries: %d, expected >= 0",
                            job->max_retries);
    int level = job->zstd_level ? job->zstd_level : ZSTD_CLEVEL_DEFAULT;
    if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
        return ns_error_set(err, NS_ERR_INVALID, "job.zstd_level: %d, expected %d..%d",
                            job->zstd_level, ZSTD_minCLevel(), ZSTD_maxCLevel());
    sqlite3_stmt *q = stmt_get(s, ST_JOB_INSERT, err);
    if (!q) return status_of(err);
    BIND(sqlite3_bind_text(q, 1, job->name ? job->name : "", -1, SQLITE_STATIC));
    BIND(sqlite3_bind_text(q, 2, job->spec_path, -1, SQLITE_STATIC));
    BIND(sqlite3_bind_text(q, 3, job->spec_text, -1, SQLITE_STATIC));
    BIND(sqlite3_bind_text(q, 4, job->fingerprint, -1, SQLITE_STATIC));
    BIND(sqlite3_bind_text(q, 5, job->model_path, -1, SQLITE_STATIC));
    BIND(sqlite3_bind_int(q, 6, job->priority));
    BIND(sqlite3_bind_int(q, 7, job->max_retries));
    BIND(sqlite3_bind_int(q, 8, level));
    BIND(sqlite3_bind_double(q, 9, wall_now()));
    if ((st = stmt_run(s, q, op, err)) != NS_OK) goto fail;
    *job_id = sqlite3_last_insert_rowid(s->db);
fail:
    (void)sqlite3_clear_bindings(q); /* drop the borrowed strings */
    return st;
}

static void derive_status(ns_job_info *info, bool is_cancelled) {
    const char *v;
    if (is_cancelled) v = "cancelled";
    else if (info->n_total > 0 && info->n_pending == 0 && info->n_running == 0) v = "completed";
    else if (info->n_running > 0 || (info->n_done + info->n_failed > 0 && info->n_pending > 0))
        v = "running";
    else v = "queued";
    snprintf(info->status, sizeof info->status, "%s", v);
}

ns_status ns_store_job_info(ns_store *s, int64_t job_id, ns_job_info *info, ns_error *err) {
    const char *op = "read job";
    ns_status st = job_resolve(s, job_id, &job_id, err);
    if (st != NS_OK) return st;
    memset(info, 0, sizeof *info);
    bool is_cancelled = false;
    int rc;

    sqlite3_stmt *q = stmt_get(s, ST_JOB_ROW, err);
    if (!q) return status_of(err);
    BIND(sqlite3_bind_int64(q, 1, job_id));
    if ((rc = sqlite3_step(q)) != SQLITE_ROW) {
        st = rc == SQLITE_DONE ? ns_error_set(err, NS_ERR_NOT_FOUND, "%s: job %lld not found",
                                              s->path, (long long)job_id)
                               : db_err(s, err, rc, op);
        goto fail;
    }
    info->id = sqlite3_column_int64(q, 0);
    copy_text(info->name, sizeof info->name, sqlite3_column_text(q, 1));
    const unsigned char *js = sqlite3_column_text(q, 2);
    is_cancelled = js && strcmp((const char *)js, "cancelled") == 0;
    copy_text(info->model_path, sizeof info->model_path, sqlite3_column_text(q, 3));
    copy_text(info->fingerprint, sizeof info->fingerprint, sqlite3_column_text(q, 4));
    info->priority = sqlite3_column_int(q, 5);
    info->max_retries = sqlite3_column_int(q, 6);
    info->zstd_level = sqlite3_column_int(q, 7);
    info->created_at = sqlite3_column_double(q, 8);
    copy_text(info->spec_path, sizeof info->spec_path, sqlite3_column_text(q, 9));
    copy_text(info->run_stats, sizeof info->run_stats, sqlite3_column_text(q, 10));
    (void)sqlite3_reset(q);

    op = "count job items";
    if (!(q = stmt_get(s, ST_JOB_COUNTS, err))) return status_of(err);
    BIND(sqlite3_bind_int64(q, 1, job_id));
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        const char *status = (const char *)sqlite3_column_text(q, 0);
        int64_t n = sqlite3_column_int64(q, 1);
        if (!status) continue;
        info->n_total += n;
        if (!strcmp(status, "pending")) info->n_pending = n;
        else if (!strcmp(status, "running")) info->n_running = n;
        else if (!strcmp(status, "done")) info->n_done = n;
        else if (!strcmp(status, "failed")) info->n_failed = n;
        else if (!strcmp(status, "cancelled")) info->n_cancelled = n;
    }
    if (rc != SQLITE_DONE) {
        st = db_err(s, err, rc, op);
        goto fail;
    }
    (void)sqlite3_reset(q);

    op = "sum job tokens";
    if (!(q = stmt_get(s, ST_JOB_TOTALS, err))) return status_of(err);
    BIND(sqlite3_bind_int64(q, 1, job_id));
    if ((rc = sqlite3_step(q)) != SQLITE_ROW) {
        st = db_err(s, err, rc == SQLITE_DONE ? SQLITE_ERROR : rc, op);
        goto fail;
    }
    info->prompt_tokens = sqlite3_column_int64(q, 0);
    info->completion_tokens = sqlite3_column_int64(q, 1);
    info->run_seconds = sqlite3_column_double(q, 2);
    info->first_result_at = sqlite3_column_double(q, 3);
    info->last_result_at = sqlite3_column_double(q, 4);
    derive_status(info, is_cancelled);
fail:
    (void)sqlite3_reset(q);
    return st;
}

ns_status ns_store_job_set_run_stats(ns_store *s, int64_t job_id, const char *json, ns_error *err) {
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "UPDATE jobs SET run_stats = ?2 WHERE id = ?1", -1, &q, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(q, 1, job_id);
        sqlite3_bind_text(q, 2, json, -1, SQLITE_STATIC);
        rc = sqlite3_step(q);
    }
    sqlite3_finalize(q);
    if (rc != SQLITE_DONE) return db_err(s, err, rc, "store run stats");
    return NS_OK;
}

ns_status ns_store_job_spec_text(ns_store *s, int64_t job_id, char **text, ns_error *err) {
    *text = NULL;
    ns_status st = job_resolve(s, job_id, &job_id, err);
    if (st != NS_OK) return st;
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT coalesce(spec_text, '') FROM jobs WHERE id = ?1",
                                -1, &q, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(q);
        return db_err(s, err, rc, "read job spec");
    }
    const char *op = "read job spec";
    BIND(sqlite3_bind_int64(q, 1, job_id));
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        const unsigned char *v = sqlite3_column_text(q, 0);
        if (!v || !(*text = dup_text(v)))
            st = ns_error_set(err, NS_ERR_NOMEM, "read job spec: out of memory");
    } else {
        st = rc == SQLITE_DONE ? ns_error_set(err, NS_ERR_NOT_FOUND, "%s: job %lld not found",
                                              s->path, (long long)job_id)
                               : db_err(s, err, rc, op);
    }
fail:
    sqlite3_finalize(q);
    return st;
}

ns_status ns_store_jobs_list(ns_store *s, int (*cb)(void *user, const ns_job_info *info), void *user,
                             ns_error *err) {
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT id FROM jobs ORDER BY id DESC", -1, &q, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(q);
        return db_err(s, err, rc, "list jobs");
    }
    ns_status st = NS_OK;
    ns_job_info info;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if ((st = ns_store_job_info(s, sqlite3_column_int64(q, 0), &info, err)) != NS_OK) break;
        if (cb(user, &info)) break;
    }
    if (st == NS_OK && rc != SQLITE_ROW && rc != SQLITE_DONE) st = db_err(s, err, rc, "list jobs");
    sqlite3_finalize(q);
    return st;
}

ns_status ns_store_job_cancel(ns_store *s, int64_t job_id, int64_t *n_changed, ns_error *err) {
    const char *op = "cancel job";
    bool own = false;
    sqlite3_stmt *q = NULL;
    ns_status st = tx_begin(s, &own, err);
    if (st != NS_OK) return st;
    if ((st = job_resolve(s, job_id, &job_id, err)) != NS_OK) goto fail;
    double now = wall_now();
    if (!(q = stmt_get(s, ST_CANCEL_ITEMS, err))) goto fail_status;
    BIND(sqlite3_bind_int64(q, 1, job_id));
    BIND(sqlite3_bind_double(q, 2, now));
    if ((st = stmt_run(s, q, op, err)) != NS_OK) goto fail;
    int64_t n = sqlite3_changes64(s->db);
    if (!(q = stmt_get(s, ST_CANCEL_JOB, err))) goto fail_status;
    BIND(sqlite3_bind_int64(q, 1, job_id));
    BIND(sqlite3_bind_double(q, 2, now));
    if ((st = stmt_run(s, q, op, err)) != NS_OK) goto fail;
    if ((st = tx_end(s, own, err)) != NS_OK) return st;
    if (n_changed) *n_changed = n;
    return NS_OK;
fail_status:
    st = status_of(err);
fail:
    tx_abort(s, own);
    return st;
}

ns_status ns_store_job_retry(ns_store *s, int64_t job_id, bool failed_only, int64_t *n_changed,
                             ns_error *err) {
    const char *op = "retry job";
    bool own = false;
    sqlite3_stmt *q = NULL;
    ns_status st = tx_begin(s, &own, err);
    if (st != NS_OK) return st;
    if ((st = job_resolve(s, job_id, &job_id, err)) != NS_OK) goto fail;
    if (!failed_only) { /* done items lose their result: it will be made again */
        if (!(q = stmt_get(s, ST_RETRY_DEL_RESULTS, err))) goto fail_status;
        BIND(sqlite3_bind_int64(q, 1, job_id));
        if ((st = stmt_run(s, q, op, err)) != NS_OK) goto fail;
    }
    if (!(q = stmt_get(s, failed_only ? ST_RETRY_FAILED : ST_RETRY_ALL, err))) goto fail_status;
    BIND(sqlite3_bind_int64(q, 1, job_id));
    BIND(sqlite3_bind_double(q, 2, wall_now()));
    if ((st = stmt_run(s, q, op, err)) != NS_OK) goto fail;
    int64_t n = sqlite3_changes64(s->db);
    if (n > 0) {
        if (!(q = stmt_get(s, ST_JOB_REACTIVATE, err))) goto fail_status;
        BIND(sqlite3_bind_int64(q, 1, job_id));
        if ((st = stmt_run(s, q, op, err)) != NS_OK) goto fail;
    }
    if ((st = tx_end(s, own, err)) != NS_OK) return st;
    if (n_changed) *n_changed = n;
    return NS_OK;
fail_status:
    st = status_of(err);
fail:
    tx_abort(s, own);
    return st;
}

/* ---- items ---- */

ns_status ns_store_item_insert(ns_store *s, int64_t job_id, const ns_item_new *item, ns_error *err) {
    const char *op = "insert item";
    ns_status st = NS_OK;
    if (item->n_tokens < 0 || (item->n_tokens > 0 && !item->tokens))
        return ns_error_set(err, NS_ERR_INVALID, "item %lld: n_tokens %d without tokens",
                            (long long)item->idx, item->n_tokens);
    if (item->idx < 0)
        return ns_error_set(err, NS_ERR_INVALID, "item idx %lld: expected >= 0",
                            (long long)item->idx);
    char id_buf[32];
    const char *custom_id = item->custom_id;
    if (!custom_id) {
        snprintf(id_buf, sizeof id_buf, "item-%lld", (long long)item->idx);
        custom_id = id_buf;
    }
    size_t id_len = strlen(custom_id);
    if (id_len > NS_STORE_MAX_CUSTOM_ID)
        return ns_error_set(err, NS_ERR_INVALID,
                            "item %lld: custom_id '%.40s...' is %zu bytes, at most %d allowed",
                            (long long)item->idx, custom_id, id_len, NS_STORE_MAX_CUSTOM_ID);
    size_t nbytes = (size_t)item->n_tokens * 4;
    if ((st = grow((void **)&s->tok_buf, &s->tok_cap, nbytes + 1, err)) != NS_OK) return st;
    for (int i = 0; i < item->n_tokens; i++) { /* int32 little-endian whatever the host */
        uint32_t v = (uint32_t)item->tokens[i];
        s->tok_buf[4 * i + 0] = (unsigned char)(v & 0xff);
        s->tok_buf[4 * i + 1] = (unsigned char)((v >> 8) & 0xff);
        s->tok_buf[4 * i + 2] = (unsigned char)((v >> 16) & 0xff);
        s->tok_buf[4 * i + 3] = (unsigned char)(v >> 24);
    }
    sqlite3_stmt *q = stmt_get(s, ST_ITEM_INSERT, err);
    if (!q) return status_of(err);
    BIND(sqlite3_bind_int64(q, 1, job_id));
    BIND(sqlite3_bind_int64(q, 2, item->idx));
    BIND(sqlite3_bind_text(q, 3, custom_id, (int)id_len, SQLITE_STATIC));
    BIND(sqlite3_bind_blob64(q, 4, s->tok_buf, nbytes, SQLITE_STATIC)); /* never NULL */
    BIND(sqlite3_bind_int(q, 5, item->n_tokens));
    BIND(sqlite3_bind_text(q, 6, item->sampling_json, -1, SQLITE_STATIC));
    BIND(sqlite3_bind_text(q, 7, item->error ? "failed" : "pending", -1, SQLITE_STATIC));
    BIND(sqlite3_bind_text(q, 8, item->error, -1, SQLITE_STATIC));
    BIND(sqlite3_bind_double(q, 9, wall_now()));
    int rc = sqlite3_step(q);
    if (rc != SQLITE_DONE) {
        const char *msg = sqlite3_errmsg(s->db);
        if (rc == SQLITE_CONSTRAINT_UNIQUE && strstr(msg, "custom_id"))
            st = ns_error_set(err, NS_ERR_INVALID, "job %lld: duplicate custom_id '%s' (item idx %lld)",
                              (long long)job_id, custom_id, (long long)item->idx);
        else if (rc == SQLITE_CONSTRAINT_UNIQUE && strstr(msg, "idx"))
            st = ns_error_set(err, NS_ERR_INVALID, "job %lld: duplicate item idx %lld (custom_id '%s')",
                              (long long)job_id, (long long)item->idx, custom_id);
        else if (rc == SQLITE_CONSTRAINT_FOREIGNKEY)
            st = ns_error_set(err, NS_ERR_NOT_FOUND, "%s: insert item: job %lld not found",
                              s->path, (long long)job_id);
        else
            st = db_err(s, err, rc, op);
    }
fail:
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return st;
}

void ns_store_claimed_free(ns_claimed_item *items, int n) {
    if (!items) return;
    for (int i = 0; i < n; i++) {
        free(items[i].tokens);
        free(items[i].sampling_json);
    }
    free(items);
}

/* Reads the current row of ST_CLAIM_SELECT into it (tokens decoded). */
static ns_status claim_row(ns_store *s, sqlite3_stmt *q, int64_t job_id, ns_claimed_item *it,
                           ns_error *err) {
    memset(it, 0, sizeof *it);
    it->id = sqlite3_column_int64(q, 0);
    it->job_id = job_id;
    it->idx = sqlite3_column_int64(q, 1);
    copy_text(it->custom_id, sizeof it->custom_id, sqlite3_column_text(q, 2));
    const unsigned char *blob = sqlite3_column_blob(q, 3);
    int nbytes = sqlite3_column_bytes(q, 3);
    int64_t n_prompt = sqlite3_column_int64(q, 4);
    if (n_prompt < 0 || n_prompt > INT32_MAX / 4 || nbytes != 4 * n_prompt || (nbytes && !blob))
        return ns_error_set(err, NS_ERR_FORMAT,
                            "%s: item %lld (custom_id '%s'): prompt_tokens blob of %d bytes does "
                            "not hold n_prompt %lld int32 tokens",
                            s->path, (long long)it->idx, it->custom_id, nbytes, (long long)n_prompt);
    it->n_tokens = (int)n_prompt;
    it->tokens = ns_malloc_array((size_t)n_prompt, sizeof *it->tokens);
    if (!it->tokens) return ns_error_set(err, NS_ERR_NOMEM, "store: out of memory for tokens");
    for (int64_t i = 0; i < n_prompt; i++) {
        uint32_t v = (uint32_t)blob[4 * i] | (uint32_t)blob[4 * i + 1] << 8 |
                     (uint32_t)blob[4 * i + 2] << 16 | (uint32_t)blob[4 * i + 3] << 24;
        it->tokens[i] = (int32_t)v;
    }
    const unsigned char *sj = sqlite3_column_text(q, 5);
    if (sj && !(it->sampling_json = dup_text(sj)))
        return ns_error_set(err, NS_ERR_NOMEM, "store: out of memory for sampling_json");
    it->attempts = sqlite3_column_int(q, 6); /* before this claim */
    return NS_OK;
}

ns_status ns_store_items_claim(ns_store *s, int64_t job_id, const char *owner, double lease_seconds,
                               int max, ns_claimed_item **items, int *n_items, ns_error *err) {
    const char *op = "claim items";
    *items = NULL;
    *n_items = 0;
    if (!owner || !*owner) return ns_error_set(err, NS_ERR_INVALID, "claim: empty lease owner");
    if (!(lease_seconds > 0) || !isfinite(lease_seconds))
        return ns_error_set(err, NS_ERR_INVALID, "claim: lease_seconds %g, expected > 0",
                            lease_seconds);
    if (max < 0) return ns_error_set(err, NS_ERR_INVALID, "claim: max %d, expected >= 0", max);
    if (max == 0) return NS_OK;

    ns_claimed_item *out = ns_calloc_array((size_t)max, sizeof *out);
    if (!out) return ns_error_set(err, NS_ERR_NOMEM, "claim: out of memory for %d items", max);
    int n = 0;
    bool own = false, gave_up = false;
    sqlite3_stmt *q = NULL;
    ns_status st = tx_begin(s, &own, err);
    if (st != NS_OK) {
        free(out);
        return st;
    }
    double now = wall_now();
    int rc;

    /* 1. expired leases go back to the queue */
    if (!(q = stmt_get(s, ST_EXPIRE, err))) goto fail_status;
    BIND(sqlite3_bind_double(q, 1, now));
    if ((st = stmt_run(s, q, "expire leases", err)) != NS_OK) goto fail;

    /* 2. pending items, one job at a time, shortest first */
    while (n < max) {
        int64_t jid = job_id;
        int max_retries = 0;
        if (job_id) {
            if (!(q = stmt_get(s, ST_JOB_GET, err))) goto fail_status;
            BIND(sqlite3_bind_int64(q, 1, job_id));
            rc = sqlite3_step(q);
            if (rc == SQLITE_DONE) {
                st = ns_error_set(err, NS_ERR_NOT_FOUND, "%s: claim: job %lld not found", s->path,
                                  (long long)job_id);
                goto fail;
            }
            if (rc != SQLITE_ROW) {
                st = db_err(s, err, rc, op);
                goto fail;
            }
            const unsigned char *js = sqlite3_column_text(q, 0);
            bool is_cancelled = js && strcmp((const char *)js, "cancelled") == 0;
            max_retries = sqlite3_column_int(q, 1);
            (void)sqlite3_reset(q);
            if (is_cancelled) break;
        } else {
            if (!(q = stmt_get(s, ST_PICK_JOB, err))) goto fail_status;
            rc = sqlite3_step(q);
            if (rc == SQLITE_DONE) break;
            if (rc != SQLITE_ROW) {
                st = db_err(s, err, rc, op);
                goto fail;
            }
            jid = sqlite3_column_int64(q, 0);
            max_retries = sqlite3_column_int(q, 1);
            (void)sqlite3_reset(q);
        }

        int first = n;
        if (!(q = stmt_get(s, ST_CLAIM_SELECT, err))) goto fail_status;
        BIND(sqlite3_bind_int64(q, 1, jid));
        BIND(sqlite3_bind_int(q, 2, max - n));
        while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
            st = claim_row(s, q, jid, &out[n], err);
            n++; /* counted even on error, so that its memory is freed */
            if (st != NS_OK) goto fail;
        }
        if (rc != SQLITE_DONE) {
            st = db_err(s, err, rc, op);
            goto fail;
        }
        (void)sqlite3_reset(q);
        if (n == first) break;

        /* take them, or give up on those out of attempts */
        double expires = now + lease_seconds;
        int kept = first;
        for (int i = first; i < n; i++) {
            ns_claimed_item *it = &out[i];
            if (it->attempts >= 1 + max_retries) {
                char msg[64];
                snprintf(msg, sizeof msg, "gave up after %d attempts", it->attempts);
                if (!(q = stmt_get(s, ST_CLAIM_GIVEUP, err))) goto fail_status;
                BIND(sqlite3_bind_int64(q, 1, it->id));
                BIND(sqlite3_bind_text(q, 2, msg, -1, SQLITE_TRANSIENT));
                BIND(sqlite3_bind_double(q, 3, now));
                if ((st = stmt_run(s, q, "give up item", err)) != NS_OK) goto fail;
                free(it->tokens);
                free(it->sampling_json);
                memset(it, 0, sizeof *it);
                gave_up = true;
                continue;
            }
            if (!(q = stmt_get(s, ST_CLAIM_TAKE, err))) goto fail_status;
            BIND(sqlite3_bind_int64(q, 1, it->id));
            BIND(sqlite3_bind_text(q, 2, owner, -1, SQLITE_STATIC));
            BIND(sqlite3_bind_double(q, 3, expires));
            BIND(sqlite3_bind_double(q, 4, now));
            if ((st = stmt_run(s, q, op, err)) != NS_OK) goto fail;
            it->attempts++;
            if (kept != i) {
                out[kept] = *it;
                memset(it, 0, sizeof *it);
            }
            kept++;
        }
        n = kept;
    }
    if (gave_up && (st = finish_jobs(s, now, err)) != NS_OK) goto fail;
    if ((st = tx_end(s, own, err)) != NS_OK) goto fail_freed;
    if (n == 0) {
        free(out);
        out = NULL;
    }
    *items = out;
    *n_items = n;
    return NS_OK;
fail_status:
    st = status_of(err);
fail:
    if (q) {
        (void)sqlite3_reset(q);
        (void)sqlite3_clear_bindings(q);
    }
    tx_abort(s, own);
fail_freed:
    ns_store_claimed_free(out, n);
    return st;
}

ns_status ns_store_leases_renew(ns_store *s, const char *owner, double lease_seconds, ns_error *err) {
    const char *op = "renew leases";
    ns_status st = NS_OK;
    if (!owner || !(lease_seconds > 0) || !isfinite(lease_seconds))
        return ns_error_set(err, NS_ERR_INVALID, "renew: owner and lease_seconds > 0 needed");
    double now = wall_now();
    sqlite3_stmt *q = stmt_get(s, ST_RENEW, err);
    if (!q) return status_of(err);
    BIND(sqlite3_bind_text(q, 1, owner, -1, SQLITE_STATIC));
    BIND(sqlite3_bind_double(q, 2, now + lease_seconds));
    BIND(sqlite3_bind_double(q, 3, now));
    st = stmt_run(s, q, op, err);
fail:
    (void)sqlite3_clear_bindings(q);
    return st;
}

ns_status ns_store_leases_release(ns_store *s, const char *owner, int64_t *n_released, ns_error *err) {
    const char *op = "release leases";
    ns_status st = NS_OK;
    if (!owner) return ns_error_set(err, NS_ERR_INVALID, "release: NULL owner");
    sqlite3_stmt *q = stmt_get(s, ST_RELEASE_LEASES, err);
    if (!q) return status_of(err);
    BIND(sqlite3_bind_text(q, 1, owner, -1, SQLITE_STATIC));
    BIND(sqlite3_bind_double(q, 2, wall_now()));
    if ((st = stmt_run(s, q, op, err)) == NS_OK && n_released)
        *n_released = sqlite3_changes64(s->db);
fail:
    (void)sqlite3_clear_bindings(q);
    return st;
}

/* The zstd level of job_id (cached: a job's level never changes). */
static ns_status job_level(ns_store *s, int64_t job_id, int *level, ns_error *err) {
    if (s->level_job == job_id) {
        *level = s->level;
        return NS_OK;
    }
    const char *op = "read job zstd level";
    ns_status st = NS_OK;
    sqlite3_stmt *q = stmt_get(s, ST_JOB_ROW, err);
    if (!q) return status_of(err);
    BIND(sqlite3_bind_int64(q, 1, job_id));
    int rc = sqlite3_step(q);
    if (rc != SQLITE_ROW) {
        st = db_err(s, err, rc == SQLITE_DONE ? SQLITE_ERROR : rc, op);
        goto fail;
    }
    s->level_job = job_id;
    s->level = *level = sqlite3_column_int(q, 7);
fail:
    (void)sqlite3_reset(q);
    return st;
}

/* Loads job_id's dictionary state (and dictionaries) into the cache. */
static ns_status dict_load(ns_store *s, int64_t job_id, int level, ns_error *err) {
    if (s->dict_job == job_id) return NS_OK;
    ZSTD_freeCDict(s->cdict);
    ZSTD_freeDDict(s->ddict);
    s->cdict = NULL;
    s->ddict = NULL;
    s->dict_job = 0;
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "SELECT zstd_dict_state, zstd_dict FROM jobs WHERE id = ?1", -1, &q, NULL);
    if (rc != SQLITE_OK) return db_err(s, err, rc, "read job dictionary");
    sqlite3_bind_int64(q, 1, job_id);
    rc = sqlite3_step(q);
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(q);
        return db_err(s, err, rc == SQLITE_DONE ? SQLITE_ERROR : rc, "read job dictionary");
    }
    s->dict_state = sqlite3_column_int(q, 0);
    if (s->dict_state == 1) {
        const void *d = sqlite3_column_blob(q, 1);
        int dn = sqlite3_column_bytes(q, 1);
        if (d && dn > 0) {
            s->cdict = ZSTD_createCDict(d, (size_t)dn, level);
            s->ddict = ZSTD_createDDict(d, (size_t)dn);
        }
        if (!s->cdict || !s->ddict) {
            sqlite3_finalize(q);
            return ns_error_set(err, NS_ERR_FORMAT, "%s: job %lld: its zstd dictionary (%d bytes) does not load",
                                s->path, (long long)job_id, dn);
        }
    }
    sqlite3_finalize(q);
    s->dict_job = job_id;
    return NS_OK;
}

/* Once a job has DICT_TRAIN_N results, trains a dictionary on the first ones and keeps
 * it when it wins on the held-out ones (state 1), else records plain frames (state 2).
 * Runs inside the caller's transaction. */
static ns_status dict_maybe_train(ns_store *s, int64_t job_id, int level, ns_error *err) {
    if (s->dict_state != 0) return NS_OK;
    sqlite3_stmt *q = NULL;
    ns_status st = NS_OK;
    char *samples = NULL;
    size_t *sizes = NULL, used = 0, cap = 0;
    void *dict = NULL, *zb = NULL;
    ZSTD_CDict *cd = NULL;
    int n = 0, rc = sqlite3_prepare_v2(s->db,
                                       "SELECT r.body, r.raw_bytes FROM results r JOIN items i ON i.id = r.item_id "
                                       "WHERE i.job_id = ?1 ORDER BY r.item_id LIMIT ?2",
                                       -1, &q, NULL);
    if (rc != SQLITE_OK) return db_err(s, err, rc, "read results for the dictionary");
    sqlite3_bind_int64(q, 1, job_id);
    sqlite3_bind_int(q, 2, DICT_TRAIN_N);
    sizes = calloc(DICT_TRAIN_N, sizeof *sizes);
    if (!s->dctx) s->dctx = ZSTD_createDCtx();
    if (!sizes || !s->dctx) {
        st = ns_error_set(err, NS_ERR_NOMEM, "dictionary: out of memory");
        goto done;
    }
    while ((rc = sqlite3_step(q)) == SQLITE_ROW && n < DICT_TRAIN_N) {
        const void *blob = sqlite3_column_blob(q, 0);
        int blen = sqlite3_column_bytes(q, 0);
        int64_t raw = sqlite3_column_int64(q, 1);
        if (!blob || blen <= 0 || raw < 0 || raw > (1 << 20)) continue; /* skip huge or odd ones */
        if (used + (size_t)raw > cap) {
            size_t nc = (used + (size_t)raw) * 2 + 4096;
            char *ns = realloc(samples, nc);
            if (!ns) {
                st = ns_error_set(err, NS_ERR_NOMEM, "dictionary: out of memory");
                goto done;
            }
            samples = ns;
            cap = nc;
        }
        size_t got = ZSTD_decompressDCtx(s->dctx, samples + used, (size_t)raw, blob, (size_t)blen);
        if (ZSTD_isError(got) || got != (size_t)raw) continue;
        sizes[n++] = got;
        used += got;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        st = db_err(s, err, rc, "read results for the dictionary");
        goto done;
    }
    if (n < DICT_TRAIN_N) goto done; /* not enough yet: decide later */
    size_t fit_bytes = 0;
    for (int i = 0; i < DICT_TRAIN_FIT; i++) fit_bytes += sizes[i];
    size_t dict_cap = fit_bytes / 4 < DICT_MAX_BYTES ? fit_bytes / 4 : DICT_MAX_BYTES;
    int state = 2;
    size_t dict_len = 0;
    if (dict_cap >= 256 && (dict = malloc(dict_cap))) {
        dict_len = ZDICT_trainFromBuffer(dict, dict_cap, samples, sizes, DICT_TRAIN_FIT);
        if (!ZDICT_isError(dict_len) && (cd = ZSTD_createCDict(dict, dict_len, level))) {
            /* held-out comparison: plain vs with the dictionary */
            size_t plain = 0, with = 0, off = fit_bytes;
            if (!s->cctx) s->cctx = ZSTD_createCCtx();
            size_t zcap = ZSTD_compressBound(1 << 20);
            zb = malloc(zcap);
            for (int i = DICT_TRAIN_FIT; i < n && zb && s->cctx; i++) {
                size_t a = ZSTD_compressCCtx(s->cctx, zb, zcap, samples + off, sizes[i], level);
                size_t b = ZSTD_compress_usingCDict(s->cctx, zb, zcap, samples + off, sizes[i], cd);
                if (ZSTD_isError(a) || ZSTD_isError(b)) {
                    plain = 0;
                    break;
                }
                plain += a;
                with += b;
                off += sizes[i];
            }
            if (plain > 0 && (double)with <= DICT_KEEP_RATIO * (double)plain) state = 1;
        }
    }
    sqlite3_stmt *u = NULL;
    /* only if still undecided: another runner may have decided meanwhile, and frames it
     * wrote with its dictionary must stay decodable */
    rc = sqlite3_prepare_v2(s->db, "UPDATE jobs SET zstd_dict_state = ?2, zstd_dict = ?3 WHERE id = ?1 AND zstd_dict_state = 0",
                            -1, &u, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(u, 1, job_id);
        sqlite3_bind_int(u, 2, state);
        if (state == 1) sqlite3_bind_blob64(u, 3, dict, dict_len, SQLITE_STATIC);
        else sqlite3_bind_null(u, 3);
        rc = sqlite3_step(u);
        sqlite3_finalize(u);
    }
    if (rc != SQLITE_DONE) {
        st = db_err(s, err, rc, "store the job dictionary");
        goto done;
    }
    s->dict_job = 0; /* reload: state and dictionaries */
    st = dict_load(s, job_id, level, err);
done:
    sqlite3_finalize(q);
    ZSTD_freeCDict(cd);
    free(zb);
    free(dict);
    free(samples);
    free(sizes);
    return st;
}

ns_status ns_store_results_commit(ns_store *s, const char *owner, const ns_result *results, int n,
                                  int64_t *n_skipped, ns_error *err) {
    const char *op = "commit results";
    if (n_skipped) *n_skipped = 0;
    if (!owner || n < 0 || (n > 0 && !results))
        return ns_error_set(err, NS_ERR_INVALID, "commit: owner, n >= 0 and results needed");
    if (n == 0) return NS_OK;
    if (!s->cctx && !(s->cctx = ZSTD_createCCtx()))
        return ns_error_set(err, NS_ERR_NOMEM, "commit: cannot create a zstd context");
    bool own = false;
    sqlite3_stmt *q = NULL;
    int64_t skipped = 0;
    ns_status st = tx_begin(s, &own, err);
    if (st != NS_OK) return st;
    double now = wall_now();
    for (int i = 0; i < n; i++) {
        const ns_result *r = &results[i];
        bool failed = r->failed;
        const char *error = r->error;
        char msg[160];
        if (!failed && (r->body_len > NS_STORE_MAX_BODY || (r->body_len && !r->body_json))) {
            snprintf(msg, sizeof msg, "result body of %zu bytes %s", r->body_len,
                     r->body_json ? "is over the 256 MiB limit" : "has no data");
            failed = true;
            error = msg;
        }
        if (failed && !error) error = "failed (no message given)";

        if (!(q = stmt_get(s, ST_COMMIT_ITEM, err))) goto fail_status;
        BIND(sqlite3_bind_int64(q, 1, r->item_id));
        BIND(sqlite3_bind_text(q, 2, owner, -1, SQLITE_STATIC));
        BIND(sqlite3_bind_text(q, 3, failed ? "failed" : "done", -1, SQLITE_STATIC));
        BIND(sqlite3_bind_text(q, 4, failed ? error : NULL, -1, SQLITE_TRANSIENT));
        BIND(sqlite3_bind_double(q, 5, now));
        int rc = sqlite3_step(q);
        int64_t item_job = 0;
        bool is_ours = rc == SQLITE_ROW;
        if (is_ours) {
            item_job = sqlite3_column_int64(q, 0);
            rc = sqlite3_step(q);
        }
        if (rc != SQLITE_DONE) {
            st = db_err(s, err, rc, op);
            goto fail;
        }
        (void)sqlite3_reset(q);
        if (!is_ours) {
            skipped++;
            continue;
        }
        if (failed) continue;

        int level = 0;
        if ((st = job_level(s, item_job, &level, err)) != NS_OK) goto fail;
        size_t bound = ZSTD_compressBound(r->body_len);
        if (ZSTD_isError(bound)) {
            st = ns_error_set(err, NS_ERR_INVALID, "commit: item %lld: zstd bound: %s",
                              (long long)r->item_id, ZSTD_getErrorName(bound));
            goto fail;
        }
        if ((st = grow((void **)&s->z_buf, &s->z_cap, bound, err)) != NS_OK) goto fail;
        if ((st = dict_load(s, item_job, level, err)) != NS_OK) goto fail;
        if ((st = dict_maybe_train(s, item_job, level, err)) != NS_OK) goto fail;
        size_t zlen = s->cdict ? ZSTD_compress_usingCDict(s->cctx, s->z_buf, s->z_cap,
                                                           r->body_len ? r->body_json : "", r->body_len, s->cdict)
                               : ZSTD_compressCCtx(s->cctx, s->z_buf, s->z_cap,
                                                   r->body_len ? r->body_json : "", r->body_len, level);
        if (ZSTD_isError(zlen)) {
            st = ns_error_set(err, NS_ERR_IO, "commit: item %lld: zstd compress: %s",
                              (long long)r->item_id, ZSTD_getErrorName(zlen));
            goto fail;
        }
        op = "store result";
        if (!(q = stmt_get(s, ST_COMMIT_RESULT, err))) goto fail_status;
        BIND(sqlite3_bind_int64(q, 1, r->item_id));
        BIND(sqlite3_bind_blob64(q, 2, s->z_buf, zlen, SQLITE_STATIC));
        BIND(sqlite3_bind_int64(q, 3, (int64_t)r->body_len));
        BIND(sqlite3_bind_int(q, 4, r->prompt_tokens));
        BIND(sqlite3_bind_int(q, 5, r->completion_tokens));
        BIND(sqlite3_bind_text(q, 6, r->finish_reason, -1, SQLITE_STATIC));
        BIND(sqlite3_bind_double(q, 7, r->seconds));
        BIND(sqlite3_bind_double(q, 8, now));
        if ((st = stmt_run(s, q, op, err)) != NS_OK) goto fail;
        (void)sqlite3_clear_bindings(q);
        op = "commit results";
    }
    if ((st = finish_jobs(s, now, err)) != NS_OK) goto fail;
    if ((st = tx_end(s, own, err)) != NS_OK) return st;
    if (n_skipped) *n_skipped = skipped;
    return NS_OK;
fail_status:
    st = status_of(err);
fail:
    if (q) {
        (void)sqlite3_reset(q);
        (void)sqlite3_clear_bindings(q);
    }
    tx_abort(s, own);
    return st;
}

/* ---- export ---- */

/* Decompresses the current row's body (column 4, raw_bytes column 5) into s->d_buf. */
static ns_status export_body(ns_store *s, sqlite3_stmt *q, int64_t job_id, ns_export_row *row,
                             ns_error *err) {
    const void *blob = sqlite3_column_blob(q, 4);
    int blen = sqlite3_column_bytes(q, 4);
    int64_t raw = sqlite3_column_int64(q, 5);
    char where[400];
    snprintf(where, sizeof where, "%s: job %lld item idx %lld (custom_id '%s')", s->path,
             (long long)job_id, (long long)row->idx, row->custom_id ? row->custom_id : "");
    if (sqlite3_column_type(q, 4) == SQLITE_NULL)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: done but has no result row", where);
    if (raw < 0 || (uint64_t)raw > NS_STORE_MAX_BODY)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: raw_bytes %lld outside 0..%zu", where,
                            (long long)raw, NS_STORE_MAX_BODY);
    if (blen <= 0 || !blob)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: empty result body (no zstd frame)", where);
    unsigned long long fcs = ZSTD_getFrameContentSize(blob, (size_t)blen);
    if (fcs == ZSTD_CONTENTSIZE_ERROR)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: result body is not a zstd frame", where);
    if (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs != (unsigned long long)raw)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "%s: zstd frame holds %llu bytes but raw_bytes says %lld", where, fcs,
                            (long long)raw);
    ns_status st = grow((void **)&s->d_buf, &s->d_cap, (size_t)raw + 1, err);
    if (st != NS_OK) return st;
    if (!s->dctx && !(s->dctx = ZSTD_createDCtx()))
        return ns_error_set(err, NS_ERR_NOMEM, "export: cannot create a zstd context");
    size_t got;
    if (ZSTD_getDictID_fromFrame(blob, (size_t)blen) != 0) { /* a job-dictionary frame */
        int level = 0;
        ns_status dst = job_level(s, job_id, &level, err);
        if (dst == NS_OK) dst = dict_load(s, job_id, level, err);
        if (dst != NS_OK) return dst;
        if (!s->ddict) return ns_error_set(err, NS_ERR_FORMAT, "%s: frame needs the job's zstd dictionary, which is missing", where);
        got = ZSTD_decompress_usingDDict(s->dctx, s->d_buf, (size_t)raw, blob, (size_t)blen, s->ddict);
    } else {
        got = ZSTD_decompressDCtx(s->dctx, s->d_buf, (size_t)raw, blob, (size_t)blen);
    }
    if (ZSTD_isError(got))
        return ns_error_set(err, NS_ERR_FORMAT, "%s: corrupt zstd result body: %s", where,
                            ZSTD_getErrorName(got));
    if (got != (size_t)raw)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: result body decompressed to %zu bytes, "
                            "raw_bytes says %lld", where, got, (long long)raw);
    s->d_buf[got] = '\0';
    row->body_json = s->d_buf;
    row->body_len = got;
    return NS_OK;
}

ns_status ns_store_export(ns_store *s, int64_t job_id, int (*cb)(void *user, const ns_export_row *row),
                          void *user, ns_error *err) {
    const char *op = "export";
    ns_status st = job_resolve(s, job_id, &job_id, err);
    if (st != NS_OK) return st;
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db,
                                "SELECT i.idx, i.custom_id, i.status, i.error, r.body, r.raw_bytes, "
                                "r.prompt_tokens, r.completion_tokens, r.finish_reason "
                                "FROM items i LEFT JOIN results r ON r.item_id = i.id "
                                "WHERE i.job_id = ?1 ORDER BY i.idx",
                                -1, &q, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(q);
        return db_err(s, err, rc, op);
    }
    BIND(sqlite3_bind_int64(q, 1, job_id));
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        ns_export_row row;
        memset(&row, 0, sizeof row);
        row.idx = sqlite3_column_int64(q, 0);
        row.custom_id = (const char *)sqlite3_column_text(q, 1);
        row.status = (const char *)sqlite3_column_text(q, 2);
        if (!row.custom_id) row.custom_id = "";
        if (!row.status) row.status = "";
        if (!strcmp(row.status, "done")) {
            if ((st = export_body(s, q, job_id, &row, err)) != NS_OK) goto fail;
            row.prompt_tokens = sqlite3_column_int(q, 6);
            row.completion_tokens = sqlite3_column_int(q, 7);
            row.finish_reason = (const char *)sqlite3_column_text(q, 8);
        } else if (!strcmp(row.status, "failed")) {
            row.error = (const char *)sqlite3_column_text(q, 3);
            if (!row.error) row.error = "";
        }
        int r = cb(user, &row);
        if (r > 0) break;
        if (r < 0) {
            st = ns_error_set(err, r, "%s: export of job %lld stopped by its consumer at item idx "
                              "%lld (%s)", s->path, (long long)job_id, (long long)row.idx,
                              ns_status_name(r));
            goto fail;
        }
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) st = db_err(s, err, rc, op);
fail:
    sqlite3_finalize(q);
    return st;
}

ns_status ns_store_check(ns_store *s, ns_error *err) {
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(s->db, "PRAGMA integrity_check", -1, &q, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(q);
        return db_err(s, err, rc, "integrity check");
    }
    ns_status st = NS_OK;
    rc = sqlite3_step(q);
    if (rc == SQLITE_ROW) {
        const unsigned char *v = sqlite3_column_text(q, 0);
        if (!v || strcmp((const char *)v, "ok") != 0)
            st = ns_error_set(err, NS_ERR_FORMAT, "%s: integrity check failed: %s", s->path,
                              v ? (const char *)v : "(no message)");
    } else {
        st = db_err(s, err, rc == SQLITE_DONE ? SQLITE_CORRUPT : rc, "integrity check");
    }
    sqlite3_finalize(q);
    return st;
}
