/* input.h: streams a job's input records, line by line, from one file or a sorted glob
 * of files, and renders each record's prompt from the spec's templates. Memory does not
 * grow with the number of lines: one line is held at a time.
 *
 * A bad line (not JSON, not an object, a missing template field, a missing or non-string
 * id, an openai-batch line without custom_id/body/messages) is not fatal here: the record
 * comes back with `error` set, naming the file, line, field and value, and the caller
 * decides (reject the submit, or queue the item as failed).
 */
#ifndef NS_INPUT_H
#define NS_INPUT_H

#include "common.h"
#include "sampler.h"
#include "spec.h"

#define NS_INPUT_MAX_LINE (16u << 20) /* a longer line is a bad line */

typedef struct ns_input_record {
    const char *file;      /* borrowed: the input file this line came from */
    int64_t line;          /* 1-based line number in that file */
    int64_t index;         /* 0-based record index over all files (input order) */
    char custom_id[256];   /* id field, openai custom_id, or "<file basename>:<line>" */
    /* rendered prompt: for chat specs (and openai-batch), system may be NULL and user is
     * the user message; otherwise prompt holds the raw prompt text. malloc'd, owned by
     * the reader until the next call. */
    char *prompt;
    char *system;
    char *user;
    /* openai-batch lines may override sampling fields (body.temperature, top_p,
     * max_tokens or max_completion_tokens, seed, stop, n...): has_sampling says so and
     * sampling holds the merged result (spec defaults + overrides). */
    bool has_sampling;
    ns_sampling sampling;
    char error[512];       /* non-empty: a bad line */
} ns_input_record;

typedef struct ns_input_reader ns_input_reader;

/* Opens the spec's input (glob expanded and sorted). Errors: NS_ERR_NOT_FOUND (no file
 * matches, message names the pattern), NS_ERR_IO. */
ns_status ns_input_open(const ns_job_spec *spec, ns_input_reader **out, ns_error *err);
void ns_input_close(ns_input_reader *r); /* NULL-tolerant */

/* Reads the next record. Returns 1 with *rec filled (check rec->error), 0 at the end of
 * the input, or a negative status on an I/O error. Blank lines are skipped (not records).
 * The record's strings stay valid until the next call. */
int ns_input_next(ns_input_reader *r, ns_input_record *rec, ns_error *err);

/* Renders a {{field}} template against a JSON object given as text (one record). Fields
 * are top-level keys; string values are inserted as is, numbers and booleans as JSON
 * text; a missing field or a non-scalar value is an error naming the field. {{ x }}
 * with spaces is allowed. *out is malloc'd. Exposed for tests. */
ns_status ns_template_render(const char *tmpl, const char *json_object, size_t json_len, char **out,
                             ns_error *err);

#endif
