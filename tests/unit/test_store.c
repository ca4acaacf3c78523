/* test_store.c: the SQLite job queue (jobs/store.c) through its public API: schema file
 * and embedded schema agree, bulk insert, duplicate ids, claim order, leases that expire
 * and move to another owner, results round trip through zstd and export, retries,
 * cancel/retry, release, reopen, version and file-format errors, a truncated file, and
 * two processes claiming from one database at once.
 */
#define _POSIX_C_SOURCE 200809L
#include "../test.h"

#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/wait.h>

#include <sqlite3.h>

#include "common.h"
#include "store.h"

/* ---- helpers ---- */

static void db_path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "%s/%s", ns_test_tmpdir(), name);
    char side[600];
    remove(out);
    snprintf(side, sizeof side, "%s-wal", out);
    remove(side);
    snprintf(side, sizeof side, "%s-shm", out);
    remove(side);
}

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static int64_t make_job(ns_store *s, const char *name, int priority, int max_retries, ns_error *err) {
    ns_job_new j = {.name = name, .spec_path = "job.yaml", .spec_text = "model: m.gguf\n",
                    .fingerprint = "{\"model\":\"abc\"}", .model_path = "m.gguf",
                    .priority = priority, .max_retries = max_retries, .zstd_level = 3};
    int64_t id = 0;
    CHECK_STATUS_OK(ns_store_job_create(s, &j, &id, err), err);
    return id;
}

/* Inserts n items; item i has (i * 7) % 13 + 1 tokens unless fixed_len >= 0. */
static void add_items(ns_store *s, int64_t job, int n, int fixed_len, ns_error *err) {
    int32_t toks[64];
    char cid[32];
    CHECK_STATUS_OK(ns_store_begin(s, err), err);
    for (int i = 0; i < n; i++) {
        int len = fixed_len >= 0 ? fixed_len : (i * 7) % 13 + 1;
        for (int t = 0; t < len; t++) toks[t] = i * 100 + t - 5; /* some negative */
        snprintf(cid, sizeof cid, "req-%d", i);
        ns_item_new it = {.idx = i, .custom_id = cid, .tokens = toks, .n_tokens = len,
                          .sampling_json = i % 2 ? "{\"temperature\":0.5}" : NULL};
        CHECK_STATUS_OK(ns_store_item_insert(s, job, &it, err), err);
    }
    CHECK_STATUS_OK(ns_store_commit(s, err), err);
}

static ns_result done_result(int64_t item_id, const char *body) {
    ns_result r = {.item_id = item_id, .body_json = body, .body_len = strlen(body),
                   .prompt_tokens = 3, .completion_tokens = 5, .finish_reason = "stop",
                   .seconds = 0.25};
    return r;
}

/* Export collector: copies up to 64 rows' key fields. */
typedef struct row_copy {
    int64_t idx;
    char custom_id[64];
    char status[16];
    char error[128];
    char *body; /* malloc'd, or NULL */
    size_t body_len;
    int prompt_tokens, completion_tokens;
} row_copy;

typedef struct collect {
    row_copy rows[64];
    int n, n_calls, stop_after, stop_value;
} collect;

static int collect_cb(void *user, const ns_export_row *row) {
    collect *c = user;
    c->n_calls++;
    if (c->n < 64) {
        row_copy *r = &c->rows[c->n++];
        r->idx = row->idx;
        snprintf(r->custom_id, sizeof r->custom_id, "%s", row->custom_id);
        snprintf(r->status, sizeof r->status, "%s", row->status);
        snprintf(r->error, sizeof r->error, "%s", row->error ? row->error : "");
        r->body = NULL;
        r->body_len = row->body_len;
        if (row->body_json) {
            r->body = malloc(row->body_len + 1);
            memcpy(r->body, row->body_json, row->body_len);
            r->body[row->body_len] = '\0';
        }
        r->prompt_tokens = row->prompt_tokens;
        r->completion_tokens = row->completion_tokens;
    }
    if (c->stop_after && c->n_calls >= c->stop_after) return c->stop_value;
    return 0;
}

static void collect_free(collect *c) {
    for (int i = 0; i < c->n; i++) free(c->rows[i].body);
    c->n = 0;
}

/* ---- tests ---- */

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) {
        free(p);
        p = NULL;
    }
    if (p) p[n] = '\0';
    fclose(f);
    return p;
}

static char *dump_schema(sqlite3 *db) {
    sqlite3_stmt *q = NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(1, cap);
    if (sqlite3_prepare_v2(db,
                           "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master "
                           "ORDER BY type, name",
                           -1, &q, NULL) != SQLITE_OK)
        return out;
    while (sqlite3_step(q) == SQLITE_ROW)
        for (int c = 0; c < 4; c++)
            len += (size_t)snprintf(out + len, cap - len, "%s|", sqlite3_column_text(q, c));
    sqlite3_finalize(q);
    return out;
}

/* schemas/001_init.sql (read from the repo root) creates exactly what store.c creates. */
NS_TEST(test_store_schema_file_matches) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "schema.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    ns_store_close(s);

    char *file_sql = read_file("schemas/001_init.sql");
    char *file_sql2 = read_file("schemas/002_zstd_dict.sql");
    char *file_sql3 = read_file("schemas/003_run_stats.sql");
    CHECK_MSG(file_sql != NULL && file_sql2 != NULL && file_sql3 != NULL,
              "cannot read schemas/00N_*.sql (run from the repo root)");
    if (!file_sql || !file_sql2 || !file_sql3) return;
    sqlite3 *a = NULL, *b = NULL;
    CHECK(sqlite3_open(path, &a) == SQLITE_OK);
    CHECK(sqlite3_open(":memory:", &b) == SQLITE_OK);
    CHECK(sqlite3_exec(b, file_sql, NULL, NULL, NULL) == SQLITE_OK);
    CHECK(sqlite3_exec(b, file_sql2, NULL, NULL, NULL) == SQLITE_OK); /* migrations in order */
    CHECK(sqlite3_exec(b, file_sql3, NULL, NULL, NULL) == SQLITE_OK);
    free(file_sql2);
    free(file_sql3);
    char *da = dump_schema(a), *dbs = dump_schema(b);
    CHECK(strlen(da) > 100);
    CHECK_MSG(strcmp(da, dbs) == 0, "schema differs:\nstore.c:  %s\nfile:     %s", da, dbs);
    sqlite3_stmt *q = NULL;
    CHECK(sqlite3_prepare_v2(a, "PRAGMA user_version", -1, &q, NULL) == SQLITE_OK);
    CHECK(sqlite3_step(q) == SQLITE_ROW);
    CHECK_EQ_INT(sqlite3_column_int(q, 0), 3);
    sqlite3_finalize(q);
    free(da);
    free(dbs);
    free(file_sql);
    sqlite3_close(a);
    sqlite3_close(b);
}

NS_TEST(test_store_insert_counts) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "insert.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "bulk", 0, 2, err);
    add_items(s, job, 1000, -1, err);
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, 0, &info, err), err); /* 0 = most recent */
    CHECK_EQ_INT(info.id, job);
    CHECK(strcmp(info.name, "bulk") == 0);
    CHECK(strcmp(info.status, "queued") == 0);
    CHECK(strcmp(info.model_path, "m.gguf") == 0);
    CHECK_EQ_INT(info.n_total, 1000);
    CHECK_EQ_INT(info.n_pending, 1000);
    CHECK_EQ_INT(info.n_running + info.n_done + info.n_failed + info.n_cancelled, 0);
    CHECK_EQ_INT(info.max_retries, 2);
    CHECK(info.created_at > 1.6e9);
    CHECK_EQ_INT(ns_store_job_info(s, job + 99, &info, err), NS_ERR_NOT_FOUND);
    char *spec = NULL;
    CHECK_STATUS_OK(ns_store_job_spec_text(s, job, &spec, err), err);
    CHECK(spec && strcmp(spec, "model: m.gguf\n") == 0);
    free(spec);
    CHECK_EQ_INT(ns_store_job_spec_text(s, job + 99, &spec, err), NS_ERR_NOT_FOUND);
    CHECK(spec == NULL);
    CHECK_STATUS_OK(ns_store_check(s, err), err);
    ns_store_close(s);
}

NS_TEST(test_store_duplicate_custom_id) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "dup.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int32_t tok = 1;
    CHECK_STATUS_OK(ns_store_begin(s, err), err);
    int64_t job = make_job(s, "dup", 0, 0, err);
    ns_item_new a = {.idx = 0, .custom_id = "alpha", .tokens = &tok, .n_tokens = 1};
    ns_item_new b = {.idx = 1, .custom_id = "beta", .tokens = &tok, .n_tokens = 1};
    ns_item_new c = {.idx = 2, .custom_id = "alpha", .tokens = &tok, .n_tokens = 1};
    CHECK_STATUS_OK(ns_store_item_insert(s, job, &a, err), err);
    CHECK_STATUS_OK(ns_store_item_insert(s, job, &b, err), err);
    CHECK_EQ_INT(ns_store_item_insert(s, job, &c, err), NS_ERR_INVALID);
    CHECK_MSG(strstr(e.msg, "'alpha'") && strstr(e.msg, "duplicate custom_id"), "msg: %s", e.msg);
    ns_store_rollback(s);
    ns_job_info info;
    CHECK_EQ_INT(ns_store_job_info(s, job, &info, err), NS_ERR_NOT_FOUND);
    CHECK_EQ_INT(ns_store_job_info(s, 0, &info, err), NS_ERR_NOT_FOUND);
    /* the store still works after the rollback */
    job = make_job(s, "dup2", 0, 0, err);
    CHECK_STATUS_OK(ns_store_item_insert(s, job, &a, err), err);
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK_EQ_INT(info.n_total, 1);
    ns_store_close(s);
}

NS_TEST(test_store_claim_order) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "order.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t low = make_job(s, "low", 0, 0, err);
    int64_t high = make_job(s, "high", 5, 0, err);
    add_items(s, low, 50, -1, err);
    add_items(s, high, 30, -1, err);

    ns_claimed_item *it = NULL;
    int n = 0;
    /* any job: the high-priority job's items come first, shortest first, then idx */
    CHECK_STATUS_OK(ns_store_items_claim(s, 0, "w1", 60, 40, &it, &n, err), err);
    CHECK_EQ_INT(n, 40);
    for (int i = 0; i < n && i < 30; i++) CHECK_EQ_INT(it[i].job_id, high);
    for (int i = 30; i < n; i++) CHECK_EQ_INT(it[i].job_id, low);
    for (int i = 1; i < 30 && i < n; i++) {
        bool ordered = it[i - 1].n_tokens < it[i].n_tokens ||
                       (it[i - 1].n_tokens == it[i].n_tokens && it[i - 1].idx < it[i].idx);
        CHECK_MSG(ordered, "claim %d: (%d, %lld) after (%d, %lld)", i, it[i].n_tokens,
                  (long long)it[i].idx, it[i - 1].n_tokens, (long long)it[i - 1].idx);
    }
    for (int i = 0; i < n; i++) {
        int64_t k = it[i].idx;
        CHECK_EQ_INT(it[i].n_tokens, (k * 7) % 13 + 1);
        for (int t = 0; t < it[i].n_tokens; t++) CHECK_EQ_INT(it[i].tokens[t], k * 100 + t - 5);
        char cid[32];
        snprintf(cid, sizeof cid, "req-%lld", (long long)k);
        CHECK(strcmp(it[i].custom_id, cid) == 0);
        CHECK_EQ_INT(it[i].attempts, 1);
        CHECK((it[i].sampling_json != NULL) == (k % 2 == 1));
        if (it[i].sampling_json) CHECK(strcmp(it[i].sampling_json, "{\"temperature\":0.5}") == 0);
    }
    ns_store_claimed_free(it, n);

    /* a given job only */
    CHECK_STATUS_OK(ns_store_items_claim(s, low, "w2", 60, 1000, &it, &n, err), err);
    CHECK_EQ_INT(n, 40);
    for (int i = 0; i < n; i++) CHECK_EQ_INT(it[i].job_id, low);
    ns_store_claimed_free(it, n);
    CHECK_STATUS_OK(ns_store_items_claim(s, 0, "w2", 60, 10, &it, &n, err), err);
    CHECK_EQ_INT(n, 0);
    CHECK(it == NULL);
    ns_store_claimed_free(it, n);
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, low, &info, err), err);
    CHECK_EQ_INT(info.n_running, 50);
    CHECK(strcmp(info.status, "running") == 0);
    CHECK_EQ_INT(ns_store_items_claim(s, 999, "w2", 60, 10, &it, &n, err), NS_ERR_NOT_FOUND);
    CHECK_EQ_INT(ns_store_items_claim(s, 0, "w2", 0, 10, &it, &n, err), NS_ERR_INVALID);
    ns_store_close(s);
}

NS_TEST(test_store_lease_expiry) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "lease.db");
    ns_store *a = NULL, *b = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &a, err), err);
    CHECK_STATUS_OK(ns_store_open(path, &b, err), err);
    if (!a || !b) return;
    int64_t job = make_job(a, "lease", 0, 3, err);
    add_items(a, job, 10, 4, err);

    ns_claimed_item *ia = NULL, *ib = NULL;
    int na = 0, nb = 0;
    CHECK_STATUS_OK(ns_store_items_claim(a, job, "A", 0.05, 10, &ia, &na, err), err);
    CHECK_EQ_INT(na, 10);
    /* while A's lease holds, B gets nothing */
    CHECK_STATUS_OK(ns_store_items_claim(b, job, "B", 60, 10, &ib, &nb, err), err);
    CHECK_EQ_INT(nb, 0);
    sleep_s(0.15);
    CHECK_STATUS_OK(ns_store_items_claim(b, job, "B", 60, 10, &ib, &nb, err), err);
    CHECK_EQ_INT(nb, 10);
    for (int i = 0; i < nb && i < na; i++) {
        CHECK_EQ_INT(ib[i].id, ia[i].id);
        CHECK_EQ_INT(ib[i].attempts, 2);
    }
    ns_result rs[10];
    for (int i = 0; i < na; i++) rs[i] = done_result(ia[i].id, "{\"by\":\"A\"}");
    int64_t skipped = -1;
    CHECK_STATUS_OK(ns_store_results_commit(a, "A", rs, na, &skipped, err), err);
    CHECK_EQ_INT(skipped, 10);
    /* renewing A's (lost) leases changes nothing of B's */
    CHECK_STATUS_OK(ns_store_leases_renew(a, "A", 60, err), err);
    CHECK_STATUS_OK(ns_store_leases_renew(b, "B", 60, err), err);
    for (int i = 0; i < nb; i++) rs[i] = done_result(ib[i].id, "{\"by\":\"B\"}");
    CHECK_STATUS_OK(ns_store_results_commit(b, "B", rs, nb, &skipped, err), err);
    CHECK_EQ_INT(skipped, 0);
    /* a second commit of the same items is skipped: nothing is done twice */
    CHECK_STATUS_OK(ns_store_results_commit(b, "B", rs, nb, &skipped, err), err);
    CHECK_EQ_INT(skipped, 10);

    collect c = {0};
    CHECK_STATUS_OK(ns_store_export(a, job, collect_cb, &c, err), err);
    CHECK_EQ_INT(c.n, 10);
    for (int i = 0; i < c.n; i++) {
        CHECK(strcmp(c.rows[i].status, "done") == 0);
        CHECK(c.rows[i].body && strcmp(c.rows[i].body, "{\"by\":\"B\"}") == 0);
    }
    collect_free(&c);
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(a, job, &info, err), err);
    CHECK_EQ_INT(info.n_done, 10);
    CHECK(strcmp(info.status, "completed") == 0);
    ns_store_claimed_free(ia, na);
    ns_store_claimed_free(ib, nb);
    ns_store_close(a);
    ns_store_close(b);
}

static int64_t find_id(const ns_claimed_item *it, int n, int64_t idx) {
    for (int i = 0; i < n; i++)
        if (it[i].idx == idx) return it[i].id;
    return -1;
}

NS_TEST(test_store_export_roundtrip) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "export.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "export", 0, 0, err);
    add_items(s, job, 6, -1, err);
    ns_claimed_item *it = NULL;
    int n = 0;
    CHECK_STATUS_OK(ns_store_items_claim(s, job, "w", 60, 6, &it, &n, err), err);
    CHECK_EQ_INT(n, 6);

    size_t big_len = (size_t)1 << 20;
    char *big = malloc(big_len + 1);
    ns_test_rng rng = {42};
    for (size_t i = 0; i < big_len; i++) big[i] = (char)('a' + ns_test_rng_u64(&rng) % 26);
    big[big_len] = '\0';
    ns_result rs[4];
    rs[0] = done_result(find_id(it, n, 0), "{\"text\":\"hello\"}");
    rs[1] = done_result(find_id(it, n, 1), big);
    rs[2] = done_result(find_id(it, n, 2), "");
    rs[3] = (ns_result){.item_id = find_id(it, n, 3), .failed = true,
                        .error = "item 3: prompt of 9000 tokens is longer than n_ctx 8192"};
    int64_t skipped = -1;
    CHECK_STATUS_OK(ns_store_results_commit(s, "w", rs, 4, &skipped, err), err);
    CHECK_EQ_INT(skipped, 0);
    /* 4 and 5 go back to pending */
    int64_t n_rel = 0;
    CHECK_STATUS_OK(ns_store_leases_release(s, "w", &n_rel, err), err);
    CHECK_EQ_INT(n_rel, 2);

    collect c = {0};
    CHECK_STATUS_OK(ns_store_export(s, job, collect_cb, &c, err), err);
    CHECK_EQ_INT(c.n, 6);
    for (int i = 0; i < c.n; i++) CHECK_EQ_INT(c.rows[i].idx, i);
    CHECK(strcmp(c.rows[0].custom_id, "req-0") == 0);
    CHECK(strcmp(c.rows[0].status, "done") == 0);
    CHECK(c.rows[0].body && strcmp(c.rows[0].body, "{\"text\":\"hello\"}") == 0);
    CHECK_EQ_INT(c.rows[0].prompt_tokens, 3);
    CHECK_EQ_INT(c.rows[0].completion_tokens, 5);
    CHECK_EQ_INT(c.rows[1].body_len, big_len);
    CHECK(c.rows[1].body && memcmp(c.rows[1].body, big, big_len) == 0);
    CHECK(c.rows[2].body != NULL); /* done with an empty body: "" not NULL */
    CHECK_EQ_INT(c.rows[2].body_len, 0);
    CHECK(strcmp(c.rows[3].status, "failed") == 0);
    CHECK(strstr(c.rows[3].error, "longer than n_ctx 8192") != NULL);
    CHECK(c.rows[3].body == NULL);
    CHECK(strcmp(c.rows[4].status, "pending") == 0 && c.rows[4].body == NULL);
    CHECK(c.rows[4].error[0] == '\0');
    collect_free(&c);

    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK_EQ_INT(info.n_done, 3);
    CHECK_EQ_INT(info.n_failed, 1);
    CHECK_EQ_INT(info.n_pending, 2);
    CHECK_EQ_INT(info.prompt_tokens, 9);
    CHECK_EQ_INT(info.completion_tokens, 15);
    CHECK_NEAR(info.run_seconds, 0.75, 1e-9);
    CHECK(strcmp(info.status, "running") == 0);

    /* early stop: > 0 stops with NS_OK, < 0 is returned as the status */
    c = (collect){.stop_after = 2, .stop_value = 1};
    CHECK_STATUS_OK(ns_store_export(s, job, collect_cb, &c, err), err);
    CHECK_EQ_INT(c.n_calls, 2);
    collect_free(&c);
    c = (collect){.stop_after = 3, .stop_value = NS_ERR_IO};
    CHECK_EQ_INT(ns_store_export(s, job, collect_cb, &c, err), NS_ERR_IO);
    CHECK_EQ_INT(c.n_calls, 3);
    collect_free(&c);
    CHECK_EQ_INT(ns_store_export(s, job + 5, collect_cb, &c, err), NS_ERR_NOT_FOUND);

    /* a corrupt body is a format error naming the item, never a crash */
    ns_store_close(s);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db,
                       "UPDATE results SET body = x'28b52ffd2405deadbeef' WHERE item_id = "
                       "(SELECT id FROM items WHERE idx = 0)",
                       NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    c = (collect){0};
    CHECK_EQ_INT(ns_store_export(s, job, collect_cb, &c, err), NS_ERR_FORMAT);
    CHECK_MSG(strstr(e.msg, "req-0") != NULL, "msg: %s", e.msg);
    CHECK_EQ_INT(c.n_calls, 0);
    collect_free(&c);
    ns_store_claimed_free(it, n);
    free(big);
    ns_store_close(s);
}

NS_TEST(test_store_retries_exhausted) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "retries.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "retries", 0, 1, err);
    add_items(s, job, 3, 2, err);
    ns_claimed_item *it = NULL;
    int n = 0;
    for (int attempt = 1; attempt <= 2; attempt++) {
        CHECK_STATUS_OK(ns_store_items_claim(s, job, "crashy", 0.02, 10, &it, &n, err), err);
        CHECK_EQ_INT(n, 3);
        for (int i = 0; i < n; i++) CHECK_EQ_INT(it[i].attempts, attempt);
        ns_store_claimed_free(it, n);
        sleep_s(0.06);
    }
    CHECK_STATUS_OK(ns_store_items_claim(s, job, "crashy", 0.02, 10, &it, &n, err), err);
    CHECK_EQ_INT(n, 0);
    ns_store_claimed_free(it, n);
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK_EQ_INT(info.n_failed, 3);
    CHECK(strcmp(info.status, "completed") == 0);
    collect c = {0};
    CHECK_STATUS_OK(ns_store_export(s, job, collect_cb, &c, err), err);
    for (int i = 0; i < c.n; i++)
        CHECK_MSG(strcmp(c.rows[i].error, "gave up after 2 attempts") == 0, "error: %s",
                  c.rows[i].error);
    collect_free(&c);
    /* retry resets attempts */
    int64_t changed = 0;
    CHECK_STATUS_OK(ns_store_job_retry(s, job, true, &changed, err), err);
    CHECK_EQ_INT(changed, 3);
    CHECK_STATUS_OK(ns_store_items_claim(s, job, "ok", 60, 10, &it, &n, err), err);
    CHECK_EQ_INT(n, 3);
    if (n > 0) CHECK_EQ_INT(it[0].attempts, 1);
    ns_store_claimed_free(it, n);
    ns_store_close(s);
}

NS_TEST(test_store_cancel_retry) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "cancel.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "cancel", 0, 0, err);
    add_items(s, job, 10, 3, err);
    ns_claimed_item *it = NULL;
    int n = 0;
    CHECK_STATUS_OK(ns_store_items_claim(s, job, "w", 60, 3, &it, &n, err), err);
    CHECK_EQ_INT(n, 3);
    if (n != 3) return;
    ns_result rs[2] = {done_result(it[0].id, "{}"),
                       {.item_id = it[1].id, .failed = true, .error = "bad"}};
    CHECK_STATUS_OK(ns_store_results_commit(s, "w", rs, 2, NULL, err), err);
    int64_t changed = -1;
    CHECK_STATUS_OK(ns_store_job_cancel(s, job, &changed, err), err);
    CHECK_EQ_INT(changed, 7);
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK(strcmp(info.status, "cancelled") == 0);
    CHECK_EQ_INT(info.n_cancelled, 7);
    CHECK_EQ_INT(info.n_running, 1);
    /* a cancelled job gives nothing to claim; its running item still commits */
    ns_claimed_item *more = NULL;
    int n_more = 0;
    CHECK_STATUS_OK(ns_store_items_claim(s, 0, "x", 60, 10, &more, &n_more, err), err);
    CHECK_EQ_INT(n_more, 0);
    CHECK_STATUS_OK(ns_store_items_claim(s, job, "x", 60, 10, &more, &n_more, err), err);
    CHECK_EQ_INT(n_more, 0);
    ns_result r3 = done_result(it[2].id, "{\"late\":1}");
    int64_t skipped = -1;
    CHECK_STATUS_OK(ns_store_results_commit(s, "w", &r3, 1, &skipped, err), err);
    CHECK_EQ_INT(skipped, 0);
    /* retry failed only: the one failed item; the job is active again */
    CHECK_STATUS_OK(ns_store_job_retry(s, job, true, &changed, err), err);
    CHECK_EQ_INT(changed, 1);
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK_EQ_INT(info.n_pending, 1);
    CHECK_EQ_INT(info.n_done, 2);
    CHECK_EQ_INT(info.n_cancelled, 7);
    CHECK(strcmp(info.status, "running") == 0);
    /* retry all: done and cancelled too; done results are dropped */
    CHECK_STATUS_OK(ns_store_job_retry(s, job, false, &changed, err), err);
    CHECK_EQ_INT(changed, 9);
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK_EQ_INT(info.n_pending, 10);
    CHECK_EQ_INT(info.completion_tokens, 0);
    CHECK(strcmp(info.status, "queued") == 0);
    CHECK_EQ_INT(ns_store_job_cancel(s, job + 7, &changed, err), NS_ERR_NOT_FOUND);
    ns_store_claimed_free(it, n);
    ns_store_close(s);
}

NS_TEST(test_store_release) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "release.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "release", 0, 0, err);
    add_items(s, job, 5, 1, err);
    ns_claimed_item *it = NULL;
    int n = 0;
    for (int round = 0; round < 3; round++) { /* max_retries 0, yet never "gave up" */
        CHECK_STATUS_OK(ns_store_items_claim(s, job, "w", 60, 10, &it, &n, err), err);
        CHECK_EQ_INT(n, 5);
        for (int i = 0; i < n; i++) CHECK_EQ_INT(it[i].attempts, 1);
        ns_store_claimed_free(it, n);
        int64_t released = 0;
        CHECK_STATUS_OK(ns_store_leases_release(s, "w", &released, err), err);
        CHECK_EQ_INT(released, 5);
    }
    int64_t released = -1;
    CHECK_STATUS_OK(ns_store_leases_release(s, "nobody", &released, err), err);
    CHECK_EQ_INT(released, 0);
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK_EQ_INT(info.n_pending, 5);
    ns_store_close(s);
}

static int count_jobs(void *user, const ns_job_info *info) {
    int *n = user;
    (*n)++;
    return info->id == 1; /* stop at the oldest */
}

NS_TEST(test_store_reopen) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "reopen.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t j1 = make_job(s, "one", 0, 0, err);
    int64_t j2 = make_job(s, "two", 0, 0, err);
    add_items(s, j1, 20, -1, err);
    add_items(s, j2, 20, -1, err);
    ns_claimed_item *it = NULL;
    int n = 0;
    CHECK_STATUS_OK(ns_store_items_claim(s, j2, "w", 60, 5, &it, &n, err), err);
    ns_result rs[5];
    for (int i = 0; i < n; i++) rs[i] = done_result(it[i].id, "{\"ok\":true}");
    CHECK_STATUS_OK(ns_store_results_commit(s, "w", rs, n, NULL, err), err);
    ns_store_claimed_free(it, n);
    ns_store_close(s);

    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, 0, &info, err), err);
    CHECK_EQ_INT(info.id, j2);
    CHECK(strcmp(info.name, "two") == 0);
    CHECK_EQ_INT(info.n_done, 5);
    CHECK_EQ_INT(info.n_pending, 15);
    CHECK_STATUS_OK(ns_store_job_info(s, j1, &info, err), err);
    CHECK_EQ_INT(info.n_pending, 20);
    int n_jobs = 0;
    CHECK_STATUS_OK(ns_store_jobs_list(s, count_jobs, &n_jobs, err), err);
    CHECK_EQ_INT(n_jobs, 2);
    collect c = {0};
    CHECK_STATUS_OK(ns_store_export(s, j2, collect_cb, &c, err), err);
    int n_done = 0;
    for (int i = 0; i < c.n; i++)
        if (c.rows[i].body && strcmp(c.rows[i].body, "{\"ok\":true}") == 0) n_done++;
    CHECK_EQ_INT(n_done, 5);
    collect_free(&c);
    CHECK_STATUS_OK(ns_store_check(s, err), err);
    ns_store_close(s);
}

NS_TEST(test_store_version_too_new) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "newer.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    ns_store_close(s);
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    s = NULL;
    CHECK_EQ_INT(ns_store_open(path, &s, err), NS_ERR_FORMAT);
    CHECK(s == NULL);
    CHECK_MSG(strstr(e.msg, "version 99 is newer") && strstr(e.msg, "knows up to 3"), "msg: %s",
              e.msg);
}

NS_TEST(test_store_not_sqlite) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "garbage.db");
    FILE *f = fopen(path, "wb");
    for (int i = 0; i < 5000; i++) fputc((i * 31 + 7) & 0xff, f);
    fclose(f);
    ns_store *s = NULL;
    CHECK_EQ_INT(ns_store_open(path, &s, err), NS_ERR_FORMAT);
    CHECK(s == NULL);
    CHECK_MSG(strstr(e.msg, path) != NULL, "msg: %s", e.msg);

    /* a SQLite file of some other program */
    db_path(path, sizeof path, "other.db");
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    CHECK(sqlite3_exec(db, "CREATE TABLE foo (x)", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    CHECK_EQ_INT(ns_store_open(path, &s, err), NS_ERR_FORMAT);
    CHECK_MSG(strstr(e.msg, "not a nightshift database") != NULL, "msg: %s", e.msg);

    /* a directory that does not exist */
    CHECK_EQ_INT(ns_store_open("/nonexistent-dir/x/queue.db", &s, err), NS_ERR_IO);
}

NS_TEST(test_store_truncated) {
    ns_error e, *err = &e;
    char path[512], cut[512];
    db_path(path, sizeof path, "full.db");
    db_path(cut, sizeof cut, "cut.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "trunc", 0, 0, err);
    add_items(s, job, 3000, 20, err);
    ns_store_close(s); /* checkpoints the WAL into the file */

    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)size);
    CHECK(fread(buf, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    CHECK(size > 100000);
    f = fopen(cut, "wb");
    fwrite(buf, 1, (size_t)size / 2, f);
    fclose(f);
    free(buf);

    s = NULL;
    ns_status st = ns_store_open(cut, &s, err);
    if (st != NS_OK) {
        CHECK(st == NS_ERR_FORMAT || st == NS_ERR_IO);
        CHECK(strstr(e.msg, "cut.db") != NULL);
        return;
    }
    CHECK_EQ_INT(ns_store_check(s, err), NS_ERR_FORMAT);
    CHECK(strstr(e.msg, "integrity") != NULL);
    /* the other entry points fail cleanly too (or work on what is left) */
    collect c = {0};
    (void)ns_store_export(s, job, collect_cb, &c, err);
    collect_free(&c);
    ns_job_info info;
    (void)ns_store_job_info(s, job, &info, err);
    ns_claimed_item *it = NULL;
    int n = 0;
    if (ns_store_items_claim(s, job, "w", 60, 5000, &it, &n, err) == NS_OK)
        ns_store_claimed_free(it, n);
    ns_store_close(s);
}

/* One worker process: claims in small groups until nothing is left, commits each group
 * done with its owner name as body, writes the claimed ids to fd. After its first claim
 * it tells the other worker (met_w) and waits for the other's first claim (met_r), so
 * that a slow start (under a sanitizer, on a loaded machine) cannot let one worker take
 * everything. Returns the exit code. */
static int worker(const char *path, const char *owner, int fd, int go_fd, int met_w, int met_r) {
    char go;
    if (read(go_fd, &go, 1) < 0) return 6; /* wait until both workers exist */
    close(go_fd);
    ns_error e;
    ns_store *s = NULL;
    if (ns_store_open(path, &s, &e) != NS_OK) {
        fprintf(stderr, "worker %s: %s\n", owner, e.msg);
        return 2;
    }
    char body[64];
    snprintf(body, sizeof body, "{\"by\":\"%s\"}", owner);
    int code = 0;
    for (;;) {
        ns_claimed_item *it = NULL;
        int n = 0;
        if (ns_store_items_claim(s, 0, owner, 60, 7, &it, &n, &e) != NS_OK) {
            fprintf(stderr, "worker %s: claim: %s\n", owner, e.msg);
            code = 3;
            break;
        }
        if (met_w >= 0) { /* the first claim: meet the other worker */
            char one = 1;
            if (write(met_w, &one, 1) != 1 || read(met_r, &one, 1) != 1) code = 7;
            close(met_w), close(met_r);
            met_w = met_r = -1;
        }
        if (n == 0 || code) {
            ns_store_claimed_free(it, n);
            break;
        }
        ns_result rs[7];
        for (int i = 0; i < n; i++) rs[i] = done_result(it[i].id, body);
        int64_t skipped = 0;
        if (ns_store_results_commit(s, owner, rs, n, &skipped, &e) != NS_OK || skipped) {
            fprintf(stderr, "worker %s: commit: %s (skipped %lld)\n", owner, e.msg,
                    (long long)skipped);
            code = 4;
        }
        for (int i = 0; i < n; i++)
            if (write(fd, &it[i].id, sizeof it[i].id) != (ssize_t)sizeof it[i].id) code = 5;
        ns_store_claimed_free(it, n);
        if (code) break;
        sleep_s(0.001); /* SQLite's lock is not fair: leave the other process a gap */
    }
    ns_store_close(s);
    return code;
}

static const int *g_owner_by_id;
static int g_n_wrong;

static int check_owner_cb(void *user, const ns_export_row *row) {
    const char *const *owners = user;
    char want[64];
    snprintf(want, sizeof want, "{\"by\":\"%s\"}", owners[g_owner_by_id[row->idx + 1]]);
    if (!row->body_json || strcmp(row->body_json, want) != 0) g_n_wrong++;
    return 0;
}

NS_TEST(test_store_two_processes) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "procs.db");
    enum { N_ITEMS = 1500 };
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "procs", 0, 0, err);
    add_items(s, job, N_ITEMS, -1, err);
    ns_store_close(s);

    int fds[2][2];
    pid_t pid[2];
    const char *owners[2] = {"proc-a", "proc-b"};
    int go[2], met[2][2];
    CHECK(pipe(go) == 0);
    CHECK(pipe(met[0]) == 0 && pipe(met[1]) == 0); /* met[w]: worker w -> the other */
    fflush(NULL);
    for (int w = 0; w < 2; w++) {
        CHECK(pipe(fds[w]) == 0);
        pid[w] = fork();
        if (pid[w] == 0) {
            close(fds[w][0]);
            close(go[1]);
            close(met[w][0]), close(met[1 - w][1]);
            _exit(worker(path, owners[w], fds[w][1], go[0], met[w][1], met[1 - w][0])); /* _exit: skip our atexit */
        }
        close(fds[w][1]);
    }
    close(go[0]);
    close(go[1]); /* both start now */
    for (int w = 0; w < 2; w++) close(met[w][0]), close(met[w][1]);
    static int seen[N_ITEMS + 1];
    static int by[N_ITEMS + 1];
    memset(seen, 0, sizeof seen);
    int n_got[2] = {0, 0};
    for (int w = 0; w < 2; w++) {
        int64_t id;
        while (read(fds[w][0], &id, sizeof id) == (ssize_t)sizeof id) {
            n_got[w]++;
            if (id >= 1 && id <= N_ITEMS) {
                seen[id]++;
                by[id] = w;
            } else {
                CHECK_MSG(0, "unexpected item id %lld", (long long)id);
            }
        }
        close(fds[w][0]);
        int status = 0;
        CHECK(waitpid(pid[w], &status, 0) == pid[w]);
        CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker %d status %d", w, status);
    }
    CHECK_EQ_INT(n_got[0] + n_got[1], N_ITEMS);
    int n_twice = 0, n_never = 0;
    for (int i = 1; i <= N_ITEMS; i++) {
        if (seen[i] > 1) n_twice++;
        if (seen[i] == 0) n_never++;
    }
    CHECK_EQ_INT(n_twice, 0);
    CHECK_EQ_INT(n_never, 0);
    CHECK_MSG(n_got[0] > 0 && n_got[1] > 0, "one worker claimed everything (%d, %d)", n_got[0],
              n_got[1]);

    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK_EQ_INT(info.n_done, N_ITEMS);
    CHECK(strcmp(info.status, "completed") == 0);
    /* each body names the process that claimed the item (one job inserted in order:
     * item id = idx + 1) */
    int64_t n_rows = 0;
    sqlite3 *db = NULL;
    CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    sqlite3_stmt *q = NULL;
    CHECK(sqlite3_prepare_v2(db, "SELECT id, lease_owner, status FROM items", -1, &q, NULL) ==
          SQLITE_OK);
    while (sqlite3_step(q) == SQLITE_ROW) {
        n_rows++;
        CHECK(sqlite3_column_type(q, 1) == SQLITE_NULL);
        CHECK(strcmp((const char *)sqlite3_column_text(q, 2), "done") == 0);
    }
    CHECK_EQ_INT(n_rows, N_ITEMS);
    sqlite3_finalize(q);
    sqlite3_close(db);
    g_owner_by_id = by;
    g_n_wrong = 0;
    CHECK_STATUS_OK(ns_store_export(s, job, check_owner_cb, owners, err), err);
    CHECK_EQ_INT(g_n_wrong, 0);
    CHECK_STATUS_OK(ns_store_check(s, err), err);
    ns_store_close(s);
}

/* Garbage over a few pages in the middle (size unchanged): open may succeed, but the
 * integrity check reports it and no entry point crashes. */
NS_TEST(test_store_corrupt_pages) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "corrupt.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "corrupt", 0, 0, err);
    add_items(s, job, 3000, 20, err);
    ns_store_close(s);

    FILE *f = fopen(path, "r+b");
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    CHECK(size > 100000);
    fseek(f, size / 2, SEEK_SET);
    ns_test_rng rng = {7};
    for (int i = 0; i < 3 * 4096; i++) fputc((int)(ns_test_rng_u64(&rng) & 0xff), f);
    fclose(f);

    s = NULL;
    ns_status st = ns_store_open(path, &s, err);
    if (st != NS_OK) {
        CHECK(st == NS_ERR_FORMAT);
        CHECK(strstr(e.msg, "corrupt.db") != NULL);
        return;
    }
    CHECK_EQ_INT(ns_store_check(s, err), NS_ERR_FORMAT);
    CHECK_MSG(strstr(e.msg, "integrity check failed") != NULL, "msg: %s", e.msg);
    collect c = {0};
    (void)ns_store_export(s, job, collect_cb, &c, err);
    collect_free(&c);
    ns_job_info info;
    (void)ns_store_job_info(s, job, &info, err);
    ns_claimed_item *it = NULL;
    int n = 0;
    if (ns_store_items_claim(s, job, "w", 60, 5000, &it, &n, err) == NS_OK)
        ns_store_claimed_free(it, n);
    ns_store_close(s);
}

/* Several processes open (and migrate) the same new file at once: all succeed. */
NS_TEST(test_store_open_race) {
    char path[512];
    db_path(path, sizeof path, "race.db");
    enum { N_PROCS = 4 };
    int go[2];
    CHECK(pipe(go) == 0);
    pid_t pid[N_PROCS];
    fflush(NULL);
    for (int k = 0; k < N_PROCS; k++) {
        pid[k] = fork();
        if (pid[k] == 0) {
            close(go[1]);
            char c;
            if (read(go[0], &c, 1) < 0) _exit(9);
            ns_error e;
            ns_store *s = NULL;
            if (ns_store_open(path, &s, &e) != NS_OK) {
                fprintf(stderr, "open: %s\n", e.msg);
                _exit(1);
            }
            int64_t id = 0;
            ns_job_new j = {.name = "race"};
            int code = ns_store_job_create(s, &j, &id, &e) == NS_OK ? 0 : 2;
            ns_store_close(s);
            _exit(code);
        }
    }
    close(go[0]);
    close(go[1]);
    for (int k = 0; k < N_PROCS; k++) {
        int status = 0;
        CHECK(waitpid(pid[k], &status, 0) == pid[k]);
        CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "process %d status %d", k, status);
    }
    ns_error e, *err = &e;
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    int n_jobs = 0;
    if (s) CHECK_STATUS_OK(ns_store_jobs_list(s, count_jobs, &n_jobs, err), err);
    CHECK_EQ_INT(n_jobs, N_PROCS);
    ns_store_close(s);
}

/* Export collector that checks every body against the one committed for its idx. */
typedef struct dict_check {
    char **bodies;
    int n_rows, n_bad;
} dict_check;

static int dict_check_cb(void *user, const ns_export_row *row) {
    dict_check *d = user;
    d->n_rows++;
    const char *want = d->bodies[row->idx];
    if (!row->body_json || row->body_len != strlen(want) || memcmp(row->body_json, want, row->body_len)) d->n_bad++;
    return 0;
}

/* Commits n results whose bodies come from make(i), 50 at a time. */
static void commit_bodies(ns_store *s, int64_t job, int n, char **bodies, ns_error *err) {
    ns_claimed_item *it = NULL;
    int got = 0;
    for (int done = 0; done < n; done += got) {
        CHECK_STATUS_OK(ns_store_items_claim(s, job, "w", 60, 50, &it, &got, err), err);
        if (got == 0) break;
        ns_result r[50];
        for (int i = 0; i < got; i++) r[i] = done_result(it[i].id, bodies[it[i].idx]);
        CHECK_STATUS_OK(ns_store_results_commit(s, "w", r, got, NULL, err), err);
        ns_store_claimed_free(it, got);
    }
}

static int64_t sql_int(const char *path, const char *sql) {
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    int64_t v = -1;
    if (sqlite3_open(path, &db) == SQLITE_OK && sqlite3_prepare_v2(db, sql, -1, &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        v = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

/* Short, similar JSON results: after 128 of them the job trains a dictionary, keeps it
 * because it wins on held-out results, and later frames use it; export decodes both kinds.
 * Random bodies: the dictionary does not win, plain frames are kept. */
NS_TEST(test_store_zstd_dictionary) {
    ns_error e, *err = &e;
    for (int kind = 0; kind < 2; kind++) {
        char path[512];
        db_path(path, sizeof path, kind ? "dict-random.db" : "dict.db");
        ns_store *s = NULL;
        CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
        if (!s) return;
        int64_t job = make_job(s, "dict", 0, 2, err);
        enum { N = 300 };
        add_items(s, job, N, 4, err);
        char **bodies = calloc(N, sizeof *bodies);
        ns_test_rng rng = {kind + 3};
        for (int i = 0; i < N; i++) {
            bodies[i] = malloc(400);
            if (kind == 0) {
                snprintf(bodies[i], 400,
                         "{\"choices\":[{\"index\":0,\"text\":\"The answer to question %d is %d.\",\"finish_reason\":"
                         "\"stop\",\"completion_tokens\":%d}],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d}}",
                         i, i * 7 % 100, 5 + i % 9, 20 + i % 13, 5 + i % 9);
            } else {
                for (int k = 0; k < 300; k++) bodies[i][k] = (char)('!' + ns_test_rng_u64(&rng) % 90);
                bodies[i][300] = 0;
            }
        }
        commit_bodies(s, job, N, bodies, err);
        dict_check d = {bodies, 0, 0};
        CHECK_STATUS_OK(ns_store_export(s, job, dict_check_cb, &d, err), err);
        CHECK_EQ_INT(d.n_rows, N);
        CHECK_EQ_INT(d.n_bad, 0);
        ns_store_close(s);
        int64_t state = sql_int(path, "SELECT zstd_dict_state FROM jobs");
        if (kind == 0) {
            CHECK_EQ_INT(state, 1);
            /* frames after the decision are smaller than the plain ones before it */
            int64_t plain = sql_int(path, "SELECT AVG(length(body)) FROM results WHERE item_id <= 100");
            int64_t dict = sql_int(path, "SELECT AVG(length(body)) FROM results WHERE item_id > 200");
            CHECK_MSG(dict > 0 && dict * 3 < plain * 2, "avg frame: plain %lld, with dictionary %lld", (long long)plain,
                      (long long)dict);
        } else {
            CHECK_EQ_INT(state, 2);
        }
        /* a fresh process (new store) still decodes everything */
        CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
        dict_check d2 = {bodies, 0, 0};
        CHECK_STATUS_OK(ns_store_export(s, job, dict_check_cb, &d2, err), err);
        CHECK_EQ_INT(d2.n_bad, 0);
        ns_store_close(s);
        for (int i = 0; i < N; i++) free(bodies[i]);
        free(bodies);
    }
}

NS_TEST(test_store_run_stats_round_trip) {
    ns_error e, *err = &e;
    char path[512];
    db_path(path, sizeof path, "stats.db");
    ns_store *s = NULL;
    CHECK_STATUS_OK(ns_store_open(path, &s, err), err);
    if (!s) return;
    int64_t job = make_job(s, "stats", 0, 2, err);
    ns_job_info info;
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK(info.run_stats[0] == 0);
    CHECK_STATUS_OK(ns_store_job_set_run_stats(s, job, "{\"batch\":7}", err), err);
    CHECK_STATUS_OK(ns_store_job_info(s, job, &info, err), err);
    CHECK(strcmp(info.run_stats, "{\"batch\":7}") == 0);
    ns_store_close(s);
}
