/* cmd_status.c: `nightshift status [--json] [JOB]` (counts in the shape of the OpenAI
 * Batch API's request_counts, plus tokens, throughput and ETA), and `nightshift cancel
 * JOB`, `nightshift retry JOB [--failed|--all]`. All read or change the queue only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli.h"
#include "store.h"

static void print_job(const ns_job_info *j, bool json) {
    int64_t finished = j->n_done + j->n_failed;
    int64_t left = j->n_pending + j->n_running;
    /* throughput over the span of committed results (all runners together); the ETA
     * assumes the same rate for what is left. Unknown (-1) before two commits. */
    double span = j->last_result_at - j->first_result_at;
    double items_s = span > 0 && j->n_done > 1 ? (double)(j->n_done - 1) / span : -1;
    double tok_s = span > 0 ? (double)j->completion_tokens / span : -1;
    double eta = items_s > 0 ? (double)left / items_s : (left == 0 ? 0 : -1);
    if (json) {
        /* built with jansson so that any job name is escaped properly */
        json_error_t je;
        json_t *engine = j->run_stats[0] ? json_loads(j->run_stats, 0, &je) : NULL;
        json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:I, s:{s:I, s:I, s:I}, s:I, s:I, s:I, s:{s:I, s:I}, s:f, s:f, s:f, s:o}",
                              "id", (json_int_t)j->id, "object", "batch", "name", j->name, "status", j->status,
                              "created_at", (json_int_t)j->created_at, "request_counts", "total", (json_int_t)j->n_total,
                              "completed", (json_int_t)j->n_done, "failed", (json_int_t)j->n_failed, "pending",
                              (json_int_t)j->n_pending, "running", (json_int_t)j->n_running, "cancelled",
                              (json_int_t)j->n_cancelled, "usage", "prompt_tokens", (json_int_t)j->prompt_tokens,
                              "completion_tokens", (json_int_t)j->completion_tokens, "completion_tokens_per_s", tok_s,
                              "items_per_s", items_s, "eta_seconds", eta, "engine", engine ? engine : json_null());
        char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) : NULL;
        if (line) printf("%s\n", line);
        else fprintf(stderr, "nightshift status: out of memory\n");
        free(line);
        json_decref(o);
    } else {
        printf("job %lld '%s': %s; %lld/%lld finished (%lld done, %lld failed), %lld pending, %lld running, "
               "%lld cancelled; %lld prompt + %lld completion tokens",
               (long long)j->id, j->name, j->status, (long long)finished, (long long)j->n_total, (long long)j->n_done,
               (long long)j->n_failed, (long long)j->n_pending, (long long)j->n_running, (long long)j->n_cancelled,
               (long long)j->prompt_tokens, (long long)j->completion_tokens);
        if (tok_s > 0) printf("; %.1f completion tok/s", tok_s);
        if (eta > 0) printf("; ETA %.0f s", eta);
        printf("\n");
        if (j->run_stats[0]) printf("  engine (last commit): %s\n", j->run_stats);
    }
}

typedef struct list_ctx {
    bool json;
} list_ctx;

static int list_cb(void *user, const ns_job_info *info) {
    print_job(info, ((list_ctx *)user)->json);
    return 0;
}

static bool parse_common(int argc, char **argv, const char *usage, const char **db, int64_t *job, bool *json,
                         bool *flag, const char *flag_name) {
    for (int i = 1; i < argc; i++) {
        long long v;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts(usage);
            exit(NS_EXIT_OK);
        } else if (!strcmp(argv[i], "--db") && i + 1 < argc) {
            *db = argv[++i];
        } else if (json && !strcmp(argv[i], "--json")) {
            *json = true;
        } else if (flag && flag_name && !strcmp(argv[i], flag_name)) {
            *flag = true;
        } else if (argv[i][0] != '-' && *job == 0) {
            if (!ns_cli_parse_int("JOB", argv[i], 1, INT64_MAX, &v)) return false;
            *job = v;
        } else {
            fprintf(stderr, "nightshift: unexpected argument '%s'\n%s\n", argv[i], usage);
            return false;
        }
    }
    return true;
}

int ns_cmd_status(int argc, char **argv) {
    const char *usage = "usage: nightshift status [--json] [JOB] [--db PATH]\n\n"
                        "Without JOB: every job, newest first. --json: one JSON object per line, with\n"
                        "request_counts {total, completed, failed} as in the OpenAI Batch API.";
    const char *db = ns_cli_default_db();
    int64_t job = 0;
    bool json = false;
    if (!parse_common(argc, argv, usage, &db, &job, &json, NULL, NULL)) return NS_EXIT_USAGE;
    ns_error err;
    ns_error_clear(&err);
    ns_store *s = NULL;
    if (ns_store_open(db, &s, &err)) {
        fprintf(stderr, "nightshift status: %s\n", err.msg);
        return NS_EXIT_FAILURE;
    }
    int rc = NS_EXIT_OK;
    if (job) {
        ns_job_info info;
        if (ns_store_job_info(s, job, &info, &err)) {
            fprintf(stderr, "nightshift status: %s\n", err.msg);
            rc = err.code == NS_ERR_NOT_FOUND ? NS_EXIT_INPUT : NS_EXIT_FAILURE;
        } else {
            print_job(&info, json);
        }
    } else {
        list_ctx c = {json};
        if (ns_store_jobs_list(s, list_cb, &c, &err)) {
            fprintf(stderr, "nightshift status: %s\n", err.msg);
            rc = NS_EXIT_FAILURE;
        }
    }
    ns_store_close(s);
    return rc;
}

static int change_job(int argc, char **argv, bool is_cancel) {
    const char *usage = is_cancel ? "usage: nightshift cancel JOB [--db PATH]\n\n"
                                    "Pending items become cancelled; items being run finish."
                                  : "usage: nightshift retry JOB [--all] [--db PATH]\n\n"
                                    "Failed items (with --all: failed and done ones) go back to pending.";
    const char *db = ns_cli_default_db();
    int64_t job = 0;
    bool all = false;
    if (!parse_common(argc, argv, usage, &db, &job, NULL, &all, is_cancel ? NULL : "--all")) return NS_EXIT_USAGE;
    if (!job) {
        fprintf(stderr, "%s\n", usage);
        return NS_EXIT_USAGE;
    }
    ns_error err;
    ns_error_clear(&err);
    ns_store *s = NULL;
    if (ns_store_open(db, &s, &err)) {
        fprintf(stderr, "nightshift: %s\n", err.msg);
        return NS_EXIT_FAILURE;
    }
    int64_t n = 0;
    ns_job_info info;
    ns_status st = ns_store_job_info(s, job, &info, &err);
    if (!st) st = is_cancel ? ns_store_job_cancel(s, job, &n, &err) : ns_store_job_retry(s, job, !all, &n, &err);
    ns_store_close(s);
    if (st) {
        fprintf(stderr, "nightshift %s: %s\n", is_cancel ? "cancel" : "retry", err.msg);
        return st == NS_ERR_NOT_FOUND ? NS_EXIT_INPUT : NS_EXIT_FAILURE;
    }
    printf("job %lld: %lld items %s\n", (long long)job, (long long)n, is_cancel ? "cancelled" : "returned to pending");
    return NS_EXIT_OK;
}

int ns_cmd_cancel(int argc, char **argv) { return change_job(argc, argv, true); }
int ns_cmd_retry(int argc, char **argv) { return change_job(argc, argv, false); }
