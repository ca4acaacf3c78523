/* spec.h: the job spec, one YAML file (libyaml), validated completely before any work.
 * Reference of every field: schemas/job-spec.md. Relative paths (model, inputs, output)
 * are resolved against the spec file's directory.
 *
 * Errors name the file, line, column and field, and say what was expected, e.g.
 *   "jobs/summarize.yaml:12:10: sampling.top_p: expected a number in (0, 1], got '1.5'"
 * Unknown fields are errors (a typo must not be silently ignored).
 */
#ifndef NS_SPEC_H
#define NS_SPEC_H

#include "common.h"
#include "sampler.h"

typedef enum ns_input_format {
    NS_INPUT_JSONL = 0,        /* one JSON object per line; fields used by the template */
    NS_INPUT_OPENAI_BATCH = 1, /* OpenAI Batch API input lines: custom_id, method, url, body */
    NS_INPUT_TEXT = 2,         /* one prompt per line; the field {{text}} */
} ns_input_format;

typedef enum ns_output_format {
    NS_OUTPUT_JSONL = 0,
    NS_OUTPUT_OPENAI_BATCH = 1,
} ns_output_format;

typedef enum ns_bad_input {
    NS_BAD_INPUT_REJECT = 0, /* a bad input line rejects the whole submit (default) */
    NS_BAD_INPUT_QUEUE = 1,  /* queue it as a failed item carrying its error */
} ns_bad_input;

#define NS_SPEC_MAX_DEVICES 16

typedef struct ns_job_spec {
    char *spec_path;       /* as given */
    char *name;            /* required, 1..128 bytes */
    char *model;           /* required; resolved path */
    char *backend;         /* "auto" (default), "cpu", "cuda" */
    int devices[NS_SPEC_MAX_DEVICES];
    int n_devices;
    /* input */
    char *input_path;      /* required; resolved; may contain a glob (* ? [..]) */
    ns_input_format input_format;
    char *id_field;        /* jsonl: field holding the item id; NULL = the line number */
    /* prompt: exactly one of prompt_template (raw text) or user_template (chat) */
    char *prompt_template; /* "Summarize: {{text}}" with {{field}} from the input record */
    char *system_template; /* chat system message (may use {{field}}), or NULL */
    char *user_template;   /* chat user message */
    bool chat;             /* render with the model's chat template */
    /* sampling; n completions per item */
    ns_sampling sampling;
    int n;                 /* 1..64 */
    /* output */
    char *output_path;     /* NULL = none (use nightshift export) */
    ns_output_format output_format;
    int zstd_level;        /* 1..19, default 3 */
    /* limits */
    int max_batch_tokens;  /* 0 = engine default */
    int max_seqs;          /* 0 = engine default */
    int max_context;       /* 0 = engine default */
    int priority;          /* higher runs first; default 0 */
    int max_retries;       /* attempts after the first; default 2 */
    bool deterministic;    /* batch-invariant engine: bit-identical outputs whatever the batch */
    bool fp8;              /* precision: fp8 (CUDA: layer matrices and their inputs in FP8 E4M3) */
    ns_bad_input on_bad_input;
} ns_job_spec;

/* Parses and validates path. On error nothing is allocated in *out (it is zeroed) and
 * err names file:line:column and the field. Errors: NS_ERR_IO (cannot read),
 * NS_ERR_FORMAT (YAML syntax), NS_ERR_INVALID (unknown field, wrong type, out of range,
 * missing required field). */
ns_status ns_job_spec_load(const char *path, ns_job_spec *out, ns_error *err);

/* Same from a string; path is used for messages and to resolve relative paths. */
ns_status ns_job_spec_parse(const char *yaml, size_t len, const char *path, ns_job_spec *out,
                            ns_error *err);

void ns_job_spec_free(ns_job_spec *s); /* NULL-tolerant; zeroes *s */

#endif
