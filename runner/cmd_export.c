/* cmd_export.c: `nightshift export JOB [-o FILE|-] [--format jsonl|openai-batch] [--zstd]`:
 * streams a job's results in input order, one row in memory at a time.
 *
 * jsonl: one object per item: {"custom_id", "status", "output" (n=1) or "outputs",
 *   "finish_reason", "usage", "logprobs"?} or {"custom_id", "status":"failed", "error"}.
 * openai-batch: the OpenAI Batch API output file (done items) and error file (failed
 *   items, FILE.errors.jsonl; with -o - they go to stderr).
 * A file is written to FILE.tmp and renamed at the end, so an interrupted export never
 * leaves a partial file under FILE. Items not finished yet are left out (counted on
 * stderr). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "cli.h"
#include "spec.h"
#include "store.h"

typedef struct sink {
    FILE *f;
    ZSTD_CStream *zs; /* when --zstd */
    char *zbuf;
    size_t zcap;
    bool failed;
} sink;

static void sink_write(sink *s, const char *p, size_t n) {
    if (s->failed) return;
    if (!s->zs) {
        if (fwrite(p, 1, n, s->f) != n) s->failed = true;
        return;
    }
    ZSTD_inBuffer in = {p, n, 0};
    while (in.pos < in.size) {
        ZSTD_outBuffer out = {s->zbuf, s->zcap, 0};
        size_t r = ZSTD_compressStream2(s->zs, &out, &in, ZSTD_e_continue);
        if (ZSTD_isError(r) || fwrite(s->zbuf, 1, out.pos, s->f) != out.pos) {
            s->failed = true;
            return;
        }
    }
}

static void sink_finish(sink *s) {
    if (s->failed || !s->zs) return;
    size_t r;
    do {
        ZSTD_outBuffer out = {s->zbuf, s->zcap, 0};
        ZSTD_inBuffer in = {NULL, 0, 0};
        r = ZSTD_compressStream2(s->zs, &out, &in, ZSTD_e_end);
        if (ZSTD_isError(r) || fwrite(s->zbuf, 1, out.pos, s->f) != out.pos) {
            s->failed = true;
            return;
        }
    } while (r != 0);
}

typedef struct export_ctx {
    bool openai;
    sink out, errs;
    int64_t job_id;
    const char *model;
    int64_t n_done, n_failed, n_unfinished;
    long kill_after_rows; /* NS_FAULT=after_rows:N */
    char err[256];
} export_ctx;

static void emit(sink *s, json_t *o) {
    char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(7));
    if (!line) {
        s->failed = true;
        return;
    }
    sink_write(s, line, strlen(line));
    sink_write(s, "\n", 1);
    free(line);
}

static int export_row(void *user, const ns_export_row *row) {
    export_ctx *x = user;
    if (x->kill_after_rows && x->n_done + x->n_failed >= x->kill_after_rows) raise(SIGKILL); /* crash tests */
    bool done = !strcmp(row->status, "done"), failed = !strcmp(row->status, "failed");
    if (!done && !failed) {
        x->n_unfinished++;
        return 0;
    }
    json_t *body = NULL;
    if (done) {
        json_error_t je;
        /* JSON_ALLOW_NUL: a model may emit the byte 0, stored as \u0000 (valid JSON) */
        body = json_loadb(row->body_json, row->body_len, JSON_ALLOW_NUL, &je);
        if (!body) {
            snprintf(x->err, sizeof x->err, "item '%s': stored result is not JSON: %s", row->custom_id, je.text);
            return 1;
        }
    }
    json_t *o = json_object();
    json_object_set_new(o, "custom_id", json_string(row->custom_id));
    json_t *choices = body ? json_object_get(body, "choices") : NULL;
    json_t *usage = body ? json_object_get(body, "usage") : NULL;
    if (!x->openai) {
        json_object_set_new(o, "status", json_string(row->status));
        if (failed) {
            json_object_set_new(o, "error", json_string(row->error ? row->error : "unknown error"));
        } else {
            size_t nch = json_array_size(choices);
            if (nch == 1) {
                json_t *c = json_array_get(choices, 0);
                json_object_set(o, "output", json_object_get(c, "text"));
                json_object_set(o, "finish_reason", json_object_get(c, "finish_reason"));
                if (json_object_get(c, "logprobs")) json_object_set(o, "logprobs", json_object_get(c, "logprobs"));
            } else {
                json_object_set(o, "outputs", choices);
            }
            json_object_set(o, "usage", usage);
        }
        emit(&x->out, o);
    } else {
        char rid[64];
        snprintf(rid, sizeof rid, "batch_req_%lld_%lld", (long long)x->job_id, (long long)row->idx);
        json_object_set_new(o, "id", json_string(rid));
        if (failed) {
            json_t *e = json_object();
            json_object_set_new(e, "code", json_string("item_failed"));
            json_object_set_new(e, "message", json_string(row->error ? row->error : "unknown error"));
            json_object_set_new(o, "response", json_null());
            json_object_set_new(o, "error", e);
            emit(&x->errs, o);
        } else {
            json_t *resp = json_object(), *rb = json_object(), *chs = json_array();
            size_t i;
            json_t *c;
            json_array_foreach(choices, i, c) {
                json_t *ch = json_object(), *msg = json_object();
                json_object_set_new(ch, "index", json_integer((json_int_t)i));
                json_object_set_new(msg, "role", json_string("assistant"));
                json_object_set(msg, "content", json_object_get(c, "text"));
                json_object_set_new(ch, "message", msg);
                json_object_set(ch, "finish_reason", json_object_get(c, "finish_reason"));
                json_object_set_new(ch, "logprobs", json_null());
                json_array_append_new(chs, ch);
            }
            char cid[64];
            snprintf(cid, sizeof cid, "chatcmpl-%lld-%lld", (long long)x->job_id, (long long)row->idx);
            json_object_set_new(rb, "id", json_string(cid));
            json_object_set_new(rb, "object", json_string("chat.completion"));
            json_object_set_new(rb, "model", json_string(x->model));
            json_object_set_new(rb, "choices", chs);
            json_object_set(rb, "usage", usage);
            json_object_set_new(resp, "status_code", json_integer(200));
            json_object_set_new(resp, "request_id", json_string(rid));
            json_object_set_new(resp, "body", rb);
            json_object_set_new(o, "response", resp);
            json_object_set_new(o, "error", json_null());
            emit(&x->out, o);
        }
    }
    json_decref(o);
    json_decref(body);
    if (done) x->n_done++;
    else x->n_failed++;
    if (x->out.failed || x->errs.failed) {
        snprintf(x->err, sizeof x->err, "write failed: %s", strerror(errno));
        return 1;
    }
    return 0;
}

static bool open_sink(sink *s, const char *path, bool zstd, int level) {
    memset(s, 0, sizeof *s);
    s->f = path ? fopen(path, "wb") : stdout;
    if (!s->f) {
        fprintf(stderr, "nightshift export: cannot create '%s': %s\n", path, strerror(errno));
        return false;
    }
    if (zstd) {
        s->zs = ZSTD_createCStream();
        s->zcap = ZSTD_CStreamOutSize();
        s->zbuf = malloc(s->zcap);
        if (!s->zs || !s->zbuf || ZSTD_isError(ZSTD_CCtx_setParameter(s->zs, ZSTD_c_compressionLevel, level))) {
            fprintf(stderr, "nightshift export: cannot start zstd\n");
            return false;
        }
    }
    return true;
}

static bool close_sink(sink *s, bool is_file) {
    sink_finish(s);
    ZSTD_freeCStream(s->zs);
    free(s->zbuf);
    bool ok = !s->failed;
    if (s->f && is_file) ok = fclose(s->f) == 0 && ok;
    else if (s->f) ok = fflush(s->f) == 0 && ok;
    return ok;
}

int ns_cmd_export(int argc, char **argv) {
    const char *db = ns_cli_default_db(), *out_path = "-", *format = NULL;
    int64_t job = 0;
    bool zstd = false;
    long long v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            puts("usage: nightshift export JOB [-o FILE|-] [--format jsonl|openai-batch] [--zstd] [--db PATH]\n\n"
                 "Streams the job's finished items in input order (default to stdout).\n"
                 "  jsonl         {custom_id, status, output, finish_reason, usage} or {custom_id, status, error}\n"
                 "  openai-batch  OpenAI Batch API output lines; failed items go to FILE.errors.jsonl\n"
                 "                (to stderr with -o -)\n"
                 "  --zstd        compress the output (zstd frame)\n"
                 "The default format is the job's output.format.");
            return NS_EXIT_OK;
        } else if (!strcmp(a, "--db") && i + 1 < argc) { db = argv[++i];
        } else if ((!strcmp(a, "-o") || !strcmp(a, "--output")) && i + 1 < argc) { out_path = argv[++i];
        } else if (!strcmp(a, "--format") && i + 1 < argc) { format = argv[++i];
        } else if (!strcmp(a, "--zstd")) { zstd = true;
        } else if (a[0] != '-' && job == 0) {
            if (!ns_cli_parse_int("JOB", a, 1, INT64_MAX, &v)) return NS_EXIT_USAGE;
            job = v;
        } else {
            fprintf(stderr, "nightshift export: unexpected argument '%s' (see --help)\n", a);
            return NS_EXIT_USAGE;
        }
    }
    if (!job) {
        fprintf(stderr, "usage: nightshift export JOB [-o FILE|-] [--format jsonl|openai-batch] [--zstd]\n");
        return NS_EXIT_USAGE;
    }
    if (format && strcmp(format, "jsonl") && strcmp(format, "openai-batch")) {
        fprintf(stderr, "nightshift export: --format '%s': expected jsonl or openai-batch\n", format);
        return NS_EXIT_USAGE;
    }
    ns_error err;
    ns_error_clear(&err);
    ns_store *s = NULL;
    if (ns_store_open(db, &s, &err)) {
        fprintf(stderr, "nightshift export: %s\n", err.msg);
        return NS_EXIT_FAILURE;
    }
    int rc = ns_export_job(s, job, out_path, format, zstd);
    ns_store_close(s);
    return rc;
}

int ns_export_job(ns_store *s, int64_t job, const char *out_path, const char *format, bool zstd) {
    ns_error err;
    ns_error_clear(&err);
    int rc = NS_EXIT_FAILURE;
    ns_job_info info;
    export_ctx x;
    memset(&x, 0, sizeof x);
    bool to_file = out_path && strcmp(out_path, "-") != 0;
    char tmp[4200] = "", errs_path[4200] = "", errs_tmp[4300] = "";
    if (ns_store_job_info(s, job, &info, &err)) {
        fprintf(stderr, "nightshift export: %s\n", err.msg);
        rc = err.code == NS_ERR_NOT_FOUND ? NS_EXIT_INPUT : NS_EXIT_FAILURE;
        goto done;
    }
    x.openai = format ? !strcmp(format, "openai-batch") : false;
    if (!format) {
        /* the job's own output.format, from the spec stored with it */
        char *spec_text = NULL;
        ns_job_spec spec;
        memset(&spec, 0, sizeof spec);
        if (ns_store_job_spec_text(s, job, &spec_text, &err) ||
            ns_job_spec_parse(spec_text, strlen(spec_text), info.spec_path, &spec, &err)) {
            fprintf(stderr, "nightshift export: job %lld: %s\n", (long long)job, err.msg);
            free(spec_text);
            goto done;
        }
        x.openai = spec.output_format == NS_OUTPUT_OPENAI_BATCH;
        ns_job_spec_free(&spec);
        free(spec_text);
    }
    x.job_id = job;
    const char *slash = strrchr(info.model_path, '/');
    x.model = slash ? slash + 1 : info.model_path; /* the model file's name */
    const char *fault = getenv("NS_FAULT");
    if (fault && !strncmp(fault, "after_rows:", 11)) x.kill_after_rows = strtol(fault + 11, NULL, 10);
    if (to_file) {
        snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
        snprintf(errs_path, sizeof errs_path, "%s.errors.jsonl", out_path);
        snprintf(errs_tmp, sizeof errs_tmp, "%s.tmp", errs_path);
    }
    if (!open_sink(&x.out, to_file ? tmp : NULL, zstd, 3)) goto done;
    if (x.openai) {
        if (to_file) {
            if (!open_sink(&x.errs, errs_tmp, false, 3)) goto done;
        } else {
            x.errs.f = stderr;
        }
    }
    ns_status st = ns_store_export(s, job, export_row, &x, &err);
    bool ok_out = close_sink(&x.out, to_file);
    bool ok_err = !x.openai || close_sink(&x.errs, to_file);
    if (st || x.err[0] || !ok_out || !ok_err) {
        fprintf(stderr, "nightshift export: %s\n", st ? err.msg : x.err[0] ? x.err : "write failed");
        if (to_file) {
            remove(tmp);
            if (x.openai) remove(errs_tmp);
        }
        goto done;
    }
    if (to_file) {
        if (rename(tmp, out_path) != 0 || (x.openai && rename(errs_tmp, errs_path) != 0)) {
            fprintf(stderr, "nightshift export: cannot rename into '%s': %s\n", out_path, strerror(errno));
            goto done;
        }
    }
    fprintf(stderr, "nightshift: job %lld: exported %lld done and %lld failed items%s",
            (long long)job, (long long)x.n_done, (long long)x.n_failed, x.openai && x.n_failed && to_file ? " (errors in " : "");
    if (x.openai && x.n_failed && to_file) fprintf(stderr, "%s)", errs_path);
    if (x.n_unfinished) fprintf(stderr, "; %lld items not finished yet were left out", (long long)x.n_unfinished);
    fprintf(stderr, "\n");
    rc = NS_EXIT_OK;
done:
    return rc;
}
