/* cmd_submit.c: `nightshift submit JOB.yaml [--db PATH]`: validates the spec, streams
 * the inputs, renders and tokenizes each prompt, and queues every item in ONE
 * transaction: a bad input line rejects the whole submit (all bad lines listed, up to
 * 20) and nothing is queued, unless the spec says on_bad_input: queue. Prints the job id.
 * Only the tokenizer is loaded, not the weights. */
#define _DEFAULT_SOURCE
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "cli.h"
#include "fingerprint.h"
#include "gguf.h"
#include "input.h"
#include "model.h"
#include "sampling_json.h"
#include "spec.h"
#include "store.h"
#include "tokenizer.h"

#define MAX_REPORTED 20

/* Renders the record's prompt text (chat template or raw) into *text (malloc'd). */
static ns_status render_prompt(const ns_job_spec *spec, const ns_chat_template *tpl, const ns_input_record *rec,
                               char **text, size_t *len, bool *parse_special, ns_error *err) {
    if (spec->chat || spec->input_format == NS_INPUT_OPENAI_BATCH) {
        if (tpl->family == NS_CHAT_NONE)
            return ns_error_set(err, NS_ERR_INVALID, "the model has no chat template this version can render");
        ns_chat_msg msgs[2];
        int n = 0;
        if (rec->system) msgs[n++] = (ns_chat_msg){"system", rec->system};
        msgs[n++] = (ns_chat_msg){"user", rec->user ? rec->user : ""};
        *parse_special = true;
        return ns_chat_render(tpl, msgs, n, true, text, len, err);
    }
    *parse_special = false;
    *text = strdup(rec->prompt ? rec->prompt : "");
    if (!*text) return ns_error_set(err, NS_ERR_NOMEM, "out of memory");
    *len = strlen(*text);
    return NS_OK;
}

int ns_cmd_submit(int argc, char **argv) {
    const char *spec_path = NULL, *db_path = ns_cli_default_db();
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            puts("usage: nightshift submit JOB.yaml [--db PATH]\n\n"
                 "Validates the job spec (reference: schemas/job-spec.md), queues one item per input\n"
                 "line in the database (default $NIGHTSHIFT_DB or ./nightshift.db) and prints the job id.\n"
                 "A bad input line rejects the whole submit, unless the spec has on_bad_input: queue.");
            return NS_EXIT_OK;
        } else if (!strcmp(argv[i], "--db") && i + 1 < argc) {
            db_path = argv[++i];
        } else if (argv[i][0] == '-' || spec_path) {
            fprintf(stderr, "nightshift submit: unexpected argument '%s' (see --help)\n", argv[i]);
            return NS_EXIT_USAGE;
        } else {
            spec_path = argv[i];
        }
    }
    if (!spec_path) {
        fprintf(stderr, "usage: nightshift submit JOB.yaml [--db PATH]\n");
        return NS_EXIT_USAGE;
    }
    int rc = NS_EXIT_INPUT;
    ns_error err;
    ns_error_clear(&err);
    ns_job_spec spec;
    memset(&spec, 0, sizeof spec);
    ns_gguf *g = NULL;
    ns_tokenizer *tok = NULL;
    ns_chat_template tpl;
    memset(&tpl, 0, sizeof tpl);
    ns_input_reader *in = NULL;
    ns_store *store = NULL;
    char *spec_text = NULL, *fingerprint = NULL;
    bool in_tx = false;
    int n_bad = 0;
    int64_t n_items = 0, n_failed = 0, n_tokens = 0;

    if (ns_job_spec_load(spec_path, &spec, &err)) {
        fprintf(stderr, "nightshift submit: %s\n", err.msg);
        goto done;
    }
    size_t spec_len;
    if (!(spec_text = ns_cli_read_file(spec_path, &spec_len))) goto done;
    if (ns_gguf_open(spec.model, &g, &err) || ns_tokenizer_load(g, &tok, &err)) {
        fprintf(stderr, "nightshift submit: %s: model '%s': %s\n", spec_path, spec.model, err.msg);
        goto done;
    }
    ns_hparams hp;
    if (ns_hparams_read(g, &hp, &err)) {
        fprintf(stderr, "nightshift submit: %s: model '%s': %s\n", spec_path, spec.model, err.msg);
        goto done;
    }
    int n_ctx = spec.max_context ? spec.max_context : NS_MIN(hp.n_ctx_train, 4096);
    if (n_ctx > hp.n_ctx_train) {
        fprintf(stderr, "nightshift submit: %s: limits.max_context %d exceeds the model's context length %d\n",
                spec_path, n_ctx, hp.n_ctx_train);
        goto done;
    }
    if (ns_gguf_find_key(g, "tokenizer.chat_template") >= 0) {
        ns_gguf_str jt;
        if (ns_gguf_get_str(g, "tokenizer.chat_template", &jt, &err) == NS_OK)
            (void)ns_chat_template_detect(jt.ptr, jt.len, &tpl, &err); /* unknown family: NONE */
    }
    if ((spec.chat || spec.input_format == NS_INPUT_OPENAI_BATCH) && tpl.family == NS_CHAT_NONE) {
        fprintf(stderr, "nightshift submit: %s: the prompt is a chat, but model '%s' has no chat template this "
                        "version can render (use prompt.template instead)\n", spec_path, spec.model);
        goto done;
    }
    char hash[17];
    uint64_t model_size;
    if (ns_file_hash(spec.model, hash, &model_size, &err)) {
        fprintf(stderr, "nightshift submit: %s\n", err.msg);
        goto done;
    }
    fingerprint = ns_fingerprint_make(&spec, hash, model_size);
    if (!fingerprint) {
        fprintf(stderr, "nightshift submit: out of memory\n");
        rc = NS_EXIT_FAILURE;
        goto done;
    }
    if (ns_input_open(&spec, &in, &err)) {
        fprintf(stderr, "nightshift submit: %s: %s\n", spec_path, err.msg);
        goto done;
    }
    if (ns_store_open(db_path, &store, &err)) {
        fprintf(stderr, "nightshift submit: %s\n", err.msg);
        rc = NS_EXIT_FAILURE;
        goto done;
    }
    if (ns_store_begin(store, &err)) {
        fprintf(stderr, "nightshift submit: %s\n", err.msg);
        rc = NS_EXIT_FAILURE;
        goto done;
    }
    in_tx = true;
    char abs_spec[4096];
    if (!realpath(spec_path, abs_spec)) snprintf(abs_spec, sizeof abs_spec, "%s", spec_path);
    ns_job_new jn = {.name = spec.name, .spec_path = abs_spec, .spec_text = spec_text, .fingerprint = fingerprint,
                     .model_path = spec.model, .priority = spec.priority, .max_retries = spec.max_retries,
                     .zstd_level = spec.zstd_level};
    int64_t job_id;
    if (ns_store_job_create(store, &jn, &job_id, &err)) {
        fprintf(stderr, "nightshift submit: %s\n", err.msg);
        rc = NS_EXIT_FAILURE;
        goto done;
    }
    ns_input_record rec;
    int r;
    bool add_bos = ns_tokenizer_add_bos(tok);
    while ((r = ns_input_next(in, &rec, &err)) == 1) {
        char item_err[640] = "";
        char *text = NULL, *samp_json = NULL;
        int32_t *ids = NULL;
        size_t n_ids = 0, text_len = 0;
        bool parse_special = false;
        if (rec.error[0]) {
            snprintf(item_err, sizeof item_err, "%s", rec.error);
        } else {
            ns_error ierr;
            ns_error_clear(&ierr);
            const ns_sampling *sp = rec.has_sampling ? &rec.sampling : &spec.sampling;
            if (render_prompt(&spec, &tpl, &rec, &text, &text_len, &parse_special, &ierr) ||
                ns_tokenizer_encode(tok, text, text_len, add_bos, parse_special, &ids, &n_ids, &ierr)) {
                snprintf(item_err, sizeof item_err, "%s:%lld: %s", rec.file, (long long)rec.line, ierr.msg);
            } else if (n_ids == 0) {
                snprintf(item_err, sizeof item_err, "%s:%lld: the prompt is empty after templating", rec.file,
                         (long long)rec.line);
            } else if ((int64_t)n_ids >= n_ctx) {
                snprintf(item_err, sizeof item_err,
                         "%s:%lld: custom_id '%s': the prompt is %zu tokens after templating; the context is %d "
                         "tokens (at most %d prompt tokens)",
                         rec.file, (long long)rec.line, rec.custom_id, n_ids, n_ctx, n_ctx - 1);
            } else if (rec.has_sampling && !(samp_json = ns_sampling_to_json(sp))) {
                snprintf(item_err, sizeof item_err, "out of memory");
            }
        }
        ns_item_new it = {.idx = rec.index, .custom_id = rec.custom_id, .tokens = ids, .n_tokens = (int)n_ids,
                          .sampling_json = samp_json, .error = item_err[0] ? item_err : NULL};
        if (item_err[0]) {
            if (spec.on_bad_input == NS_BAD_INPUT_REJECT) {
                if (n_bad < MAX_REPORTED) fprintf(stderr, "nightshift submit: %s\n", item_err);
                n_bad++;
            }
            it.tokens = NULL;
            it.n_tokens = 0;
        }
        ns_status ist = NS_OK;
        if (!item_err[0] || spec.on_bad_input == NS_BAD_INPUT_QUEUE) ist = ns_store_item_insert(store, job_id, &it, &err);
        free(text);
        free(ids);
        free(samp_json);
        if (ist == NS_ERR_INVALID) { /* duplicate custom_id: an input error */
            if (n_bad < MAX_REPORTED) fprintf(stderr, "nightshift submit: %s:%lld: %s\n", rec.file, (long long)rec.line, err.msg);
            n_bad++;
            continue;
        }
        if (ist) {
            fprintf(stderr, "nightshift submit: %s\n", err.msg);
            rc = NS_EXIT_FAILURE;
            goto done;
        }
        if (item_err[0]) n_failed++;
        else n_tokens += (int64_t)n_ids;
        n_items++;
    }
    if (r < 0) {
        fprintf(stderr, "nightshift submit: %s\n", err.msg);
        rc = NS_EXIT_FAILURE;
        goto done;
    }
    if (n_bad) {
        fprintf(stderr, "nightshift submit: %d bad input line%s%s; nothing was queued (on_bad_input: queue would "
                        "queue them as failed items)\n", n_bad, n_bad == 1 ? "" : "s",
                n_bad > MAX_REPORTED ? " (first 20 shown)" : "");
        goto done;
    }
    if (n_items == 0) {
        fprintf(stderr, "nightshift submit: %s: the input '%s' has no records; nothing was queued\n", spec_path,
                spec.input_path);
        goto done;
    }
    if (ns_store_commit(store, &err)) {
        fprintf(stderr, "nightshift submit: %s\n", err.msg);
        rc = NS_EXIT_FAILURE;
        goto done;
    }
    in_tx = false;
    fprintf(stderr, "nightshift: job %lld '%s': %lld items queued (%lld failed at submit), %lld prompt tokens\n",
            (long long)job_id, spec.name, (long long)n_items, (long long)n_failed, (long long)n_tokens);
    printf("%lld\n", (long long)job_id);
    rc = fflush(stdout) == 0 ? NS_EXIT_OK : NS_EXIT_FAILURE;
done:
    if (in_tx) ns_store_rollback(store);
    ns_store_close(store);
    ns_input_close(in);
    ns_chat_template_free(&tpl);
    ns_tokenizer_free(tok);
    ns_gguf_close(g);
    free(fingerprint);
    free(spec_text);
    ns_job_spec_free(&spec);
    return rc;
}
