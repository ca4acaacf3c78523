/* test_spec.c: the job spec parser (jobs/spec.c) through its public entry points.
 * A full spec with every field, defaults, relative paths, then one test per kind of bad
 * spec: each checks the status code, that the message names file:line:col and the field,
 * and that *out was left zeroed. Hostile inputs (every truncation of a valid spec, a 10 MB
 * scalar, alias cycles, deep nesting) must give a clean error, never a crash. */
#include "../test.h"

#include <jansson.h>
#include <stdlib.h>

#include "common.h"
#include "fingerprint.h"
#include "spec.h"

#define SPEC_PATH "specs/job.yaml"

static ns_status parse(const char *yaml, ns_job_spec *s, ns_error *err) {
    ns_error_clear(err);
    return ns_job_spec_parse(yaml, strlen(yaml), SPEC_PATH, s, err);
}

static bool all_zero(const ns_job_spec *s) {
    const unsigned char *b = (const unsigned char *)s;
    for (size_t i = 0; i < sizeof *s; i++)
        if (b[i]) return false;
    return true;
}

/* Parses yaml, expects status `code` and every NULL-terminated needle in the message. */
static void check_err_at(const char *file, int line, const char *yaml, ns_status code,
                         const char *const *needles) {
    ns_job_spec s;
    ns_error err;
    memset(&s, 0xAB, sizeof s); /* the parser must zero it on error */
    ns_status st = parse(yaml, &s, &err);
    if (st != code)
        ns_test_fail_at(file, line, "status %d (%s), expected %d; message: %s", st,
                        ns_status_name(st), code, err.msg);
    if (st == NS_OK) {
        ns_job_spec_free(&s);
        return;
    }
    if (err.code != st) ns_test_fail_at(file, line, "err.code %d != status %d", err.code, st);
    for (const char *const *n = needles; *n; n++)
        if (!strstr(err.msg, *n))
            ns_test_fail_at(file, line, "message lacks \"%s\": %s", *n, err.msg);
    if (!all_zero(&s)) ns_test_fail_at(file, line, "*out not zeroed after an error");
    if (getenv("NS_TEST_VERBOSE")) fprintf(stderr, "     %s\n", err.msg);
}
#define CHECK_ERR(yaml, code, ...)                                                       \
    check_err_at(__FILE__, __LINE__, (yaml), (code), (const char *const[]){__VA_ARGS__, NULL})

/* name, model, input.path and a template: the smallest valid spec (4 + 2 lines). */
#define MINIMAL                                                                          \
    "name: t\n"                                                                          \
    "model: m.gguf\n"                                                                    \
    "input:\n"                                                                           \
    "  path: in.jsonl\n"                                                                 \
    "prompt:\n"                                                                          \
    "  template: \"Q: {{text}}\"\n"

static const char k_full[] =
    "# every field\n"
    "version: 1\n"
    "name: summarize-docs\n"
    "model: ../models/SmolLM2-135M-Instruct.Q4_1.gguf\n"
    "backend: cuda\n"
    "devices: [0, 2, 3]\n"
    "precision: fp8\n"
    "input:\n"
    "  path: docs/*.jsonl\n"
    "  format: jsonl\n"
    "  id_field: doc_id\n"
    "prompt:\n"
    "  system: \"You are a concise assistant.\"\n"
    "  user: \"Summarize this document:\\n{{text}}\"\n"
    "sampling:\n"
    "  temperature: 0.7\n"
    "  top_p: 0.9\n"
    "  top_k: 40\n"
    "  min_p: 0.05\n"
    "  seed: 18446744073709551615\n"
    "  max_tokens: 128\n"
    "  stop: [\"\\n\\n\", \"END\"]\n"
    "  n: 3\n"
    "  repeat_penalty: 1.1\n"
    "  repeat_last_n: 32\n"
    "  presence_penalty: 0.5\n"
    "  frequency_penalty: -0.5\n"
    "  logprobs: 5\n"
    "output:\n"
    "  path: /abs/out.jsonl\n"
    "  format: openai-batch\n"
    "  zstd_level: 19\n"
    "limits:\n"
    "  max_batch_tokens: 512\n"
    "  max_seqs: 64\n"
    "  max_context: 2048\n"
    "  priority: -5\n"
    "  retries: 0\n"
    "on_bad_input: queue\n";

NS_TEST(test_spec_full) {
    ns_job_spec s;
    ns_error err, *errp = &err;
    CHECK_STATUS_OK(parse(k_full, &s, &err), errp);
    CHECK(s.spec_path && strcmp(s.spec_path, SPEC_PATH) == 0);
    CHECK(s.name && strcmp(s.name, "summarize-docs") == 0);
    CHECK(s.model && strcmp(s.model, "specs/../models/SmolLM2-135M-Instruct.Q4_1.gguf") == 0);
    CHECK(s.backend && strcmp(s.backend, "cuda") == 0);
    CHECK(s.fp8);
    CHECK_EQ_INT(s.n_devices, 3);
    CHECK_EQ_INT(s.devices[0], 0);
    CHECK_EQ_INT(s.devices[1], 2);
    CHECK_EQ_INT(s.devices[2], 3);
    CHECK(s.input_path && strcmp(s.input_path, "specs/docs/*.jsonl") == 0);
    CHECK_EQ_INT(s.input_format, NS_INPUT_JSONL);
    CHECK(s.id_field && strcmp(s.id_field, "doc_id") == 0);
    CHECK(s.prompt_template == NULL);
    CHECK(s.system_template && strcmp(s.system_template, "You are a concise assistant.") == 0);
    CHECK(s.user_template && strcmp(s.user_template, "Summarize this document:\n{{text}}") == 0);
    CHECK(s.chat);
    CHECK_NEAR(s.sampling.temperature, 0.7, 1e-6);
    CHECK_NEAR(s.sampling.top_p, 0.9, 1e-6);
    CHECK_EQ_INT(s.sampling.top_k, 40);
    CHECK_NEAR(s.sampling.min_p, 0.05, 1e-6);
    CHECK(s.sampling.seed == UINT64_MAX);
    CHECK_EQ_INT(s.sampling.max_tokens, 128);
    CHECK_EQ_INT(s.sampling.n_stop, 2);
    CHECK(strcmp(s.sampling.stop[0], "\n\n") == 0);
    CHECK(strcmp(s.sampling.stop[1], "END") == 0);
    CHECK_EQ_INT(s.n, 3);
    CHECK_NEAR(s.sampling.repeat_penalty, 1.1, 1e-6);
    CHECK_EQ_INT(s.sampling.repeat_last_n, 32);
    CHECK_NEAR(s.sampling.presence_penalty, 0.5, 1e-6);
    CHECK_NEAR(s.sampling.frequency_penalty, -0.5, 1e-6);
    CHECK_EQ_INT(s.sampling.n_logprobs, 5);
    CHECK(s.output_path && strcmp(s.output_path, "/abs/out.jsonl") == 0);
    CHECK_EQ_INT(s.output_format, NS_OUTPUT_OPENAI_BATCH);
    CHECK_EQ_INT(s.zstd_level, 19);
    CHECK_EQ_INT(s.max_batch_tokens, 512);
    CHECK_EQ_INT(s.max_seqs, 64);
    CHECK_EQ_INT(s.max_context, 2048);
    CHECK_EQ_INT(s.priority, -5);
    CHECK_EQ_INT(s.max_retries, 0);
    CHECK_EQ_INT(s.on_bad_input, NS_BAD_INPUT_QUEUE);
    ns_job_spec_free(&s);
    CHECK(all_zero(&s));
    ns_job_spec_free(&s); /* twice is harmless */
    ns_job_spec_free(NULL);
}

NS_TEST(test_spec_minimal_defaults) {
    ns_job_spec s;
    ns_error err, *errp = &err;
    CHECK_STATUS_OK(parse(MINIMAL, &s, &err), errp);
    ns_sampling d;
    ns_sampling_default(&d);
    CHECK(strcmp(s.name, "t") == 0);
    CHECK(strcmp(s.backend, "auto") == 0);
    CHECK_EQ_INT(s.n_devices, 0);
    CHECK_EQ_INT(s.input_format, NS_INPUT_JSONL);
    CHECK(s.id_field == NULL);
    CHECK(s.prompt_template && strcmp(s.prompt_template, "Q: {{text}}") == 0);
    CHECK(s.system_template == NULL && s.user_template == NULL);
    CHECK(!s.chat);
    CHECK(memcmp(&s.sampling, &d, sizeof d) == 0);
    CHECK_EQ_INT(s.sampling.n_logprobs, -1);
    CHECK_EQ_INT(s.n, 1);
    CHECK(s.output_path == NULL);
    CHECK_EQ_INT(s.output_format, NS_OUTPUT_JSONL);
    CHECK_EQ_INT(s.zstd_level, 3);
    CHECK_EQ_INT(s.max_batch_tokens, 0);
    CHECK_EQ_INT(s.max_seqs, 0);
    CHECK_EQ_INT(s.max_context, 0);
    CHECK_EQ_INT(s.priority, 0);
    CHECK_EQ_INT(s.max_retries, 2);
    CHECK_EQ_INT(s.on_bad_input, NS_BAD_INPUT_REJECT);
    CHECK(!s.fp8);
    ns_job_spec_free(&s);
}

NS_TEST(test_spec_formats_and_optional_forms) {
    ns_job_spec s;
    ns_error err, *errp = &err;
    /* text input without a prompt: the template is the line itself */
    CHECK_STATUS_OK(parse("name: t\nmodel: m\ninput: {path: a.txt, format: text}\n", &s, &err),
                    errp);
    CHECK(s.prompt_template && strcmp(s.prompt_template, "{{text}}") == 0);
    CHECK(!s.chat);
    ns_job_spec_free(&s);
    /* openai-batch: messages come from the body */
    CHECK_STATUS_OK(parse("name: t\nmodel: m\ninput: {path: b.jsonl, format: openai-batch}\n",
                          &s, &err),
                    errp);
    CHECK(s.chat);
    CHECK(!s.prompt_template && !s.user_template && !s.system_template);
    CHECK_EQ_INT(s.input_format, NS_INPUT_OPENAI_BATCH);
    ns_job_spec_free(&s);
    /* chat without system; a single stop string; one device as a scalar; empty values =
     * absent; version 1; 0 limits = engine default; a comment-only line */
    CHECK_STATUS_OK(parse("version: 1\nname: t\nmodel: m\ninput:\n  path: a\n  id_field:\n"
                          "prompt:\n  user: hi\n# note\nsampling:\n  stop: END\n  logprobs: 0\n"
                          "devices: 1\noutput:\nlimits: {max_seqs: 0}\n",
                          &s, &err),
                    errp);
    CHECK(s.chat && s.user_template && strcmp(s.user_template, "hi") == 0);
    CHECK(s.system_template == NULL && s.id_field == NULL && s.output_path == NULL);
    CHECK_EQ_INT(s.sampling.n_stop, 1);
    CHECK(strcmp(s.sampling.stop[0], "END") == 0);
    CHECK_EQ_INT(s.sampling.n_logprobs, 0);
    CHECK_EQ_INT(s.n_devices, 1);
    CHECK_EQ_INT(s.devices[0], 1);
    CHECK_EQ_INT(s.max_seqs, 0);
    ns_job_spec_free(&s);
    /* a 127-byte stop string is the longest allowed */
    char y[512];
    char stop[128];
    memset(stop, 'x', 127);
    stop[127] = '\0';
    snprintf(y, sizeof y, MINIMAL "sampling:\n  stop: [\"%s\"]\n", stop);
    CHECK_STATUS_OK(parse(y, &s, &err), errp);
    CHECK(strcmp(s.sampling.stop[0], stop) == 0);
    ns_job_spec_free(&s);
}

NS_TEST(test_spec_relative_paths) {
    ns_job_spec s;
    ns_error err, *errp = &err;
    const char *y = "name: t\nmodel: m.gguf\ninput: {path: in/*.jsonl}\nprompt: {template: x}\n"
                    "output: {path: out.jsonl}\n";
    /* no directory: paths stay as written */
    CHECK_STATUS_OK(ns_job_spec_parse(y, strlen(y), "job.yaml", &s, &err), errp);
    CHECK(strcmp(s.model, "m.gguf") == 0);
    CHECK(strcmp(s.input_path, "in/*.jsonl") == 0);
    CHECK(strcmp(s.output_path, "out.jsonl") == 0);
    ns_job_spec_free(&s);
    /* an absolute directory */
    CHECK_STATUS_OK(ns_job_spec_parse(y, strlen(y), "/srv/jobs/nightly.yaml", &s, &err), errp);
    CHECK(strcmp(s.model, "/srv/jobs/m.gguf") == 0);
    CHECK(strcmp(s.input_path, "/srv/jobs/in/*.jsonl") == 0);
    CHECK(strcmp(s.output_path, "/srv/jobs/out.jsonl") == 0);
    ns_job_spec_free(&s);
    /* the root directory; absolute paths are kept */
    const char *ya = "name: t\nmodel: /m/x.gguf\ninput: {path: in.txt, format: text}\n";
    CHECK_STATUS_OK(ns_job_spec_parse(ya, strlen(ya), "/job.yaml", &s, &err), errp);
    CHECK(strcmp(s.model, "/m/x.gguf") == 0);
    CHECK(strcmp(s.input_path, "/in.txt") == 0);
    ns_job_spec_free(&s);
    /* from a file: ns_job_spec_load */
    char dir[300], path[400];
    snprintf(dir, sizeof dir, "%s/spec", ns_test_tmpdir());
    snprintf(path, sizeof path, "%s/job.yaml", dir);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
    CHECK(system(cmd) == 0);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fputs(k_full, f);
    fclose(f);
    CHECK_STATUS_OK(ns_job_spec_load(path, &s, &err), errp);
    char want[500];
    snprintf(want, sizeof want, "%s/docs/*.jsonl", dir);
    CHECK(s.input_path && strcmp(s.input_path, want) == 0);
    CHECK(s.spec_path && strcmp(s.spec_path, path) == 0);
    ns_job_spec_free(&s);
    /* missing file and a directory: NS_ERR_IO naming the path */
    snprintf(path, sizeof path, "%s/nope.yaml", dir);
    memset(&s, 0x5A, sizeof s);
    CHECK_EQ_INT(ns_job_spec_load(path, &s, &err), NS_ERR_IO);
    CHECK(strstr(err.msg, "nope.yaml") != NULL);
    CHECK(all_zero(&s));
    CHECK_EQ_INT(ns_job_spec_load(dir, &s, &err), NS_ERR_IO);
    CHECK(all_zero(&s));
}

NS_TEST(test_spec_yaml_syntax) {
    /* an unclosed quote: libyaml's problem and where the scalar starts */
    CHECK_ERR("name: \"abc\nmodel: m\n", NS_ERR_FORMAT, SPEC_PATH ":", "YAML syntax error",
              "quoted scalar", "line 1, column 7");
    /* bad indentation */
    CHECK_ERR("name: t\nmodel: m\ninput:\n    path: a\n  format: jsonl\n", NS_ERR_FORMAT,
              SPEC_PATH ":5:", "YAML syntax error");
    CHECK_ERR("name: t\n  model: m\n", NS_ERR_FORMAT, SPEC_PATH ":2:", "YAML syntax error");
    /* unclosed flow mapping, tab indentation, invalid UTF-8, a NUL byte */
    CHECK_ERR(MINIMAL "sampling: {top_p: 1\n", NS_ERR_FORMAT, SPEC_PATH ":", "YAML syntax error");
    CHECK_ERR("name: t\n\tmodel: m\n", NS_ERR_FORMAT, SPEC_PATH ":2:", "YAML syntax error");
    CHECK_ERR("name: t\nmodel: \xff\xfe\n", NS_ERR_FORMAT, SPEC_PATH ":2:8:", "UTF-8");
    ns_job_spec s;
    ns_error err;
    static const char nul[] = "name: t\nmo\0del: m\n";
    CHECK_EQ_INT(ns_job_spec_parse(nul, sizeof nul - 1, SPEC_PATH, &s, &err), NS_ERR_FORMAT);
    CHECK(strstr(err.msg, SPEC_PATH ":2:3:") != NULL);
    CHECK(all_zero(&s));
    /* an undefined alias */
    CHECK_ERR("name: *nope\n", NS_ERR_FORMAT, SPEC_PATH ":1:7:", "YAML syntax error");
}

NS_TEST(test_spec_unknown_fields) {
    CHECK_ERR("name: t\nmodel: m\nmodle: x\n", NS_ERR_INVALID, SPEC_PATH ":3:1:",
              "unknown field 'modle'", "expected one of: version, name, model", "did you mean 'model'");
    CHECK_ERR(MINIMAL "sampling:\n  temperature: 0.5\n  tempreature: 0.5\n", NS_ERR_INVALID,
              SPEC_PATH ":9:3:", "unknown field 'sampling.tempreature'", "temperature, top_p");
    CHECK_ERR(MINIMAL "output: {path: o, level: 3}\n", NS_ERR_INVALID, SPEC_PATH ":7:19:",
              "unknown field 'output.level'");
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a, fromat: text}\n", NS_ERR_INVALID,
              SPEC_PATH ":3:18:", "unknown field 'input.fromat'");
    CHECK_ERR(MINIMAL "limits: {retry: 1}\n", NS_ERR_INVALID, "unknown field 'limits.retry'");
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a}\nprompt: {template: x, usr: y}\n",
              NS_ERR_INVALID, SPEC_PATH ":4:23:", "unknown field 'prompt.usr'");
    /* keys that are not names */
    CHECK_ERR("name: t\n[a]: 1\n", NS_ERR_INVALID, SPEC_PATH ":2:1:", "expected a field name");
    CHECK_ERR("name: t\n~: 1\n", NS_ERR_INVALID, SPEC_PATH ":2:1:", "expected a field name");
    CHECK_ERR("name: t\n: 1\n", NS_ERR_FORMAT, SPEC_PATH ":2:", "YAML syntax error");
}

NS_TEST(test_spec_wrong_types) {
    CHECK_ERR(MINIMAL "sampling:\n  top_p: abc\n", NS_ERR_INVALID, SPEC_PATH ":8:10:",
              "sampling.top_p: expected a number in (0, 1], got 'abc'");
    CHECK_ERR(MINIMAL "sampling:\n  max_tokens: 1.5\n", NS_ERR_INVALID, SPEC_PATH ":8:15:",
              "sampling.max_tokens: expected an integer", "got '1.5'");
    CHECK_ERR(MINIMAL "sampling:\n  stop: {a: b}\n", NS_ERR_INVALID, SPEC_PATH ":8:9:",
              "sampling.stop: expected a string or a list of strings, got a mapping");
    CHECK_ERR(MINIMAL "sampling:\n  stop: [a, [b]]\n", NS_ERR_INVALID, SPEC_PATH ":8:13:",
              "sampling.stop[1]: expected a string, got a list");
    CHECK_ERR(MINIMAL "sampling: 3\n", NS_ERR_INVALID, SPEC_PATH ":7:11:",
              "sampling: expected a mapping, got '3'");
    CHECK_ERR("name: [a, b]\nmodel: m\n", NS_ERR_INVALID, SPEC_PATH ":1:7:",
              "name: expected a string, got a list");
    CHECK_ERR("name: t\nmodel: {a: 1}\n", NS_ERR_INVALID, SPEC_PATH ":2:8:",
              "model: expected a string, got a mapping");
    CHECK_ERR("name: t\nmodel: m\ninput: a.jsonl\n", NS_ERR_INVALID, SPEC_PATH ":3:8:",
              "input: expected a mapping, got 'a.jsonl'");
    CHECK_ERR(MINIMAL "devices: {a: 1}\n", NS_ERR_INVALID, SPEC_PATH ":7:10:", "devices:");
    CHECK_ERR(MINIMAL "devices: [0, x]\n", NS_ERR_INVALID, SPEC_PATH ":7:14:", "devices[1]:");
    CHECK_ERR(MINIMAL "sampling: {seed: -1}\n", NS_ERR_INVALID, SPEC_PATH ":7:18:",
              "sampling.seed: expected an integer");
    CHECK_ERR(MINIMAL "sampling: {seed: 18446744073709551616}\n", NS_ERR_INVALID,
              "sampling.seed");
    CHECK_ERR(MINIMAL "sampling: {top_k: 0x10}\n", NS_ERR_INVALID, "sampling.top_k");
    CHECK_ERR(MINIMAL "sampling: {temperature: 0x1p-1}\n", NS_ERR_INVALID, "sampling.temperature");
    CHECK_ERR(MINIMAL "sampling: {temperature: nan}\n", NS_ERR_INVALID, "sampling.temperature");
    CHECK_ERR(MINIMAL "sampling: {temperature: \"\"}\n", NS_ERR_INVALID, "sampling.temperature");
    CHECK_ERR(MINIMAL "sampling: {max_tokens: 99999999999999999999}\n", NS_ERR_INVALID,
              "sampling.max_tokens");
    CHECK_ERR("name: \"\"\nmodel: m\n", NS_ERR_INVALID, SPEC_PATH ":1:7:", "name: expected a non-empty");
    CHECK_ERR("name: \"a\\tb\"\nmodel: m\n", NS_ERR_INVALID, SPEC_PATH ":1:7:", "name:",
              "control");
    CHECK_ERR("name: \"a\\0b\"\nmodel: m\n", NS_ERR_INVALID, SPEC_PATH ":1:7:", "name:", "NUL");
}

NS_TEST(test_spec_out_of_range) {
    CHECK_ERR(MINIMAL "sampling:\n  top_p: 1.5\n", NS_ERR_INVALID, SPEC_PATH ":8:10:",
              "sampling.top_p: expected a number in (0, 1], got '1.5'");
    CHECK_ERR(MINIMAL "sampling:\n  top_p: 0\n", NS_ERR_INVALID, "sampling.top_p");
    CHECK_ERR(MINIMAL "sampling:\n  temperature: -1\n", NS_ERR_INVALID, SPEC_PATH ":8:16:",
              "sampling.temperature", "got '-1'");
    CHECK_ERR(MINIMAL "sampling:\n  temperature: 1e39\n", NS_ERR_INVALID, "sampling.temperature");
    CHECK_ERR(MINIMAL "sampling:\n  n: 0\n", NS_ERR_INVALID, SPEC_PATH ":8:6:",
              "sampling.n: expected an integer in [1, 64], got '0'");
    CHECK_ERR(MINIMAL "sampling:\n  n: 65\n", NS_ERR_INVALID, "sampling.n");
    CHECK_ERR(MINIMAL "sampling: {min_p: 1}\n", NS_ERR_INVALID, "sampling.min_p", "[0, 1)");
    CHECK_ERR(MINIMAL "sampling: {repeat_penalty: 0}\n", NS_ERR_INVALID, "sampling.repeat_penalty");
    CHECK_ERR(MINIMAL "sampling: {presence_penalty: 2.5}\n", NS_ERR_INVALID,
              "sampling.presence_penalty", "[-2, 2]");
    CHECK_ERR(MINIMAL "sampling: {frequency_penalty: -3}\n", NS_ERR_INVALID,
              "sampling.frequency_penalty");
    CHECK_ERR(MINIMAL "sampling: {top_k: -1}\n", NS_ERR_INVALID, "sampling.top_k");
    CHECK_ERR(MINIMAL "sampling: {max_tokens: 0}\n", NS_ERR_INVALID, "sampling.max_tokens");
    CHECK_ERR(MINIMAL "sampling: {repeat_last_n: -1}\n", NS_ERR_INVALID, "sampling.repeat_last_n");
    CHECK_ERR(MINIMAL "sampling: {logprobs: 21}\n", NS_ERR_INVALID, SPEC_PATH ":7:22:",
              "sampling.logprobs", "[0, 20]");
    CHECK_ERR(MINIMAL "sampling: {stop: [a, b, c, d, e, f, g, h, i]}\n", NS_ERR_INVALID,
              SPEC_PATH ":7:18:", "sampling.stop", "at most 8");
    CHECK_ERR(MINIMAL "sampling: {stop: [a, \"\"]}\n", NS_ERR_INVALID, SPEC_PATH ":7:22:",
              "sampling.stop[1]", "1 to 127 bytes");
    char y[600], stop[129];
    memset(stop, 'x', 128);
    stop[128] = '\0';
    snprintf(y, sizeof y, MINIMAL "sampling:\n  stop: %s\n", stop);
    CHECK_ERR(y, NS_ERR_INVALID, SPEC_PATH ":8:9:", "sampling.stop", "got 128 bytes");
    CHECK_ERR(MINIMAL "output:\n  zstd_level: 30\n", NS_ERR_INVALID, SPEC_PATH ":8:15:",
              "output.zstd_level: expected an integer in [1, 19], got '30'");
    CHECK_ERR(MINIMAL "output: {zstd_level: 0}\n", NS_ERR_INVALID, "output.zstd_level");
    CHECK_ERR(MINIMAL "limits: {max_batch_tokens: 65537}\n", NS_ERR_INVALID,
              "limits.max_batch_tokens", "0 (engine default) or an integer in [1, 65536]");
    CHECK_ERR(MINIMAL "limits: {max_seqs: -1}\n", NS_ERR_INVALID, "limits.max_seqs");
    CHECK_ERR(MINIMAL "limits: {max_context: 8}\n", NS_ERR_INVALID, "limits.max_context",
              "[16, 1048576]");
    CHECK_ERR(MINIMAL "limits: {priority: 1001}\n", NS_ERR_INVALID, "limits.priority");
    CHECK_ERR(MINIMAL "limits: {retries: 101}\n", NS_ERR_INVALID, "limits.retries");
    CHECK_ERR(MINIMAL "devices: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]\n",
              NS_ERR_INVALID, SPEC_PATH ":7:10:", "devices", "at most 16");
    CHECK_ERR(MINIMAL "devices: [0, -1]\n", NS_ERR_INVALID, "devices[1]");
    CHECK_ERR(MINIMAL "devices: [1, 1]\n", NS_ERR_INVALID, SPEC_PATH ":7:14:", "devices[1]",
              "twice");
    CHECK_ERR("version: 2\n" MINIMAL, NS_ERR_INVALID, SPEC_PATH ":1:10:",
              "version: expected 1", "got '2'");
}

NS_TEST(test_spec_missing_required) {
    CHECK_ERR("model: m\ninput: {path: a}\nprompt: {template: x}\n", NS_ERR_INVALID,
              SPEC_PATH ": missing required field 'name'");
    CHECK_ERR("name: t\ninput: {path: a}\nprompt: {template: x}\n", NS_ERR_INVALID,
              SPEC_PATH ": missing required field 'model'");
    CHECK_ERR("name: t\nmodel: m\nprompt: {template: x}\n", NS_ERR_INVALID,
              SPEC_PATH ": missing required field 'input.path'");
    CHECK_ERR("name: t\nmodel: m\ninput:\n  format: text\n", NS_ERR_INVALID, SPEC_PATH ":4:3:",
              "input: missing required field 'input.path'");
    CHECK_ERR("name:\nmodel: m\n", NS_ERR_INVALID, SPEC_PATH ":1:1:", "name: expected a non-empty");
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a}\n", NS_ERR_INVALID,
              SPEC_PATH ": missing required field 'prompt'", "'template' or 'user'");
}

NS_TEST(test_spec_prompt_rules) {
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a}\nprompt:\n  template: x\n  user: y\n",
              NS_ERR_INVALID, SPEC_PATH ":6:9:", "prompt: expected either 'template' or 'user'");
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a}\nprompt:\n  system: x\n", NS_ERR_INVALID,
              SPEC_PATH ":5:11:", "prompt:", "'user'");
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a}\nprompt: {}\n", NS_ERR_INVALID,
              SPEC_PATH ":4:9:", "prompt: expected 'template' or 'user'");
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a}\nprompt: {template: x, system: y}\n",
              NS_ERR_INVALID, SPEC_PATH ":4:31:", "prompt.system");
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a, format: openai-batch}\nprompt: {user: y}\n",
              NS_ERR_INVALID, SPEC_PATH ":4:1:", "prompt:", "openai-batch");
    CHECK_ERR("name: t\nmodel: m\ninput: {path: a, format: text, id_field: x}\nprompt: {user: y}\n",
              NS_ERR_INVALID, SPEC_PATH ":3:42:", "input.id_field", "jsonl");
}

NS_TEST(test_spec_bad_enums) {
    CHECK_ERR("name: t\nmodel: m\ninput:\n  path: a\n  format: csv\n", NS_ERR_INVALID,
              SPEC_PATH ":5:11:", "input.format: expected one of: jsonl, openai-batch, text; got 'csv'");
    CHECK_ERR(MINIMAL "output: {format: csv}\n", NS_ERR_INVALID, SPEC_PATH ":7:18:",
              "output.format", "jsonl, openai-batch");
    CHECK_ERR(MINIMAL "backend: rocm\n", NS_ERR_INVALID, SPEC_PATH ":7:10:", "backend",
              "auto, cpu, cuda", "'rocm'");
    CHECK_ERR(MINIMAL "on_bad_input: skip\n", NS_ERR_INVALID, SPEC_PATH ":7:15:", "on_bad_input",
              "reject, queue");
    CHECK_ERR(MINIMAL "backend: [cpu]\n", NS_ERR_INVALID, "backend", "got a list");
    CHECK_ERR(MINIMAL "precision: fp16\n", NS_ERR_INVALID, SPEC_PATH ":7:12:", "precision",
              "default, fp8", "'fp16'");
    CHECK_ERR(MINIMAL "precision: {fp8: true}\n", NS_ERR_INVALID, SPEC_PATH ":7:", "precision");
}

NS_TEST(test_spec_duplicates_and_documents) {
    CHECK_ERR("name: a\nmodel: m\nname: b\n", NS_ERR_INVALID, SPEC_PATH ":3:1:",
              "name: duplicate field", "line 1, column 1");
    CHECK_ERR(MINIMAL "sampling:\n  top_p: 0.5\n  top_p: 0.6\n", NS_ERR_INVALID,
              SPEC_PATH ":9:3:", "sampling.top_p: duplicate field");
    CHECK_ERR("name: t\nmodel: m\nmodel:\n", NS_ERR_INVALID, SPEC_PATH ":3:1:", "model: duplicate");
    /* empty files: nothing, blanks, comments, a bare document marker */
    CHECK_ERR("", NS_ERR_INVALID, SPEC_PATH ": ", "empty");
    CHECK_ERR("\n\n   \n", NS_ERR_INVALID, SPEC_PATH ": ", "empty");
    CHECK_ERR("# nothing here\n", NS_ERR_INVALID, "empty");
    CHECK_ERR("---\n", NS_ERR_INVALID, "empty");
    ns_job_spec s;
    ns_error err;
    memset(&s, 1, sizeof s);
    CHECK_EQ_INT(ns_job_spec_parse(NULL, 0, SPEC_PATH, &s, &err), NS_ERR_INVALID);
    CHECK(all_zero(&s));
    /* not a mapping */
    CHECK_ERR("- name: t\n- model: m\n", NS_ERR_INVALID, SPEC_PATH ":1:1:", "mapping",
              "got a list");
    CHECK_ERR("just text\n", NS_ERR_INVALID, SPEC_PATH ":1:1:", "mapping", "'just text'");
    /* two documents */
    CHECK_ERR(MINIMAL "---\nname: u\n", NS_ERR_INVALID, SPEC_PATH ":7:1:", "second");
    /* no path: messages still have a place holder */
    CHECK_EQ_INT(ns_job_spec_parse("x: 1\n", 5, NULL, &s, &err), NS_ERR_INVALID);
    CHECK(strstr(err.msg, "<spec>:1:1:") != NULL);
}

NS_TEST(test_spec_oversized_and_hostile) {
    /* a 10 MB name */
    size_t big = 10u << 20;
    char *y = malloc(big + 256);
    CHECK(y != NULL);
    if (!y) return;
    size_t n = (size_t)sprintf(y, "name: ");
    memset(y + n, 'a', big);
    n += big;
    n += (size_t)sprintf(y + n, "\nmodel: m\ninput: {path: a}\nprompt: {template: x}\n");
    CHECK_ERR(y, NS_ERR_INVALID, SPEC_PATH ":1:7:", "name: expected a string of at most 128 bytes",
              "10485760 bytes");
    free(y);
    /* 129 bytes is one too many, 128 fits */
    char line[400];
    char name[130];
    memset(name, 'n', 129);
    name[129] = '\0';
    snprintf(line, sizeof line, "name: %s\nmodel: m\ninput: {path: a}\nprompt: {template: x}\n", name);
    CHECK_ERR(line, NS_ERR_INVALID, "name:", "129 bytes");
    name[128] = '\0';
    snprintf(line, sizeof line, "name: %s\nmodel: m\ninput: {path: a}\nprompt: {template: x}\n", name);
    ns_job_spec s;
    ns_error err, *errp = &err;
    CHECK_STATUS_OK(parse(line, &s, &err), errp);
    ns_job_spec_free(&s);
    /* aliases: allowed where they make a valid value; a cycle or a list where a scalar
     * is expected is an error, not a loop */
    CHECK_STATUS_OK(parse("name: &n t\nmodel: *n\ninput: {path: *n}\nprompt: {template: *n}\n",
                          &s, &err),
                    errp);
    CHECK(strcmp(s.model, "specs/t") == 0);
    ns_job_spec_free(&s);
    CHECK_ERR(MINIMAL "devices: &a [*a]\n", NS_ERR_INVALID, "devices[0]");
    CHECK_ERR(MINIMAL "sampling: &s {stop: *s}\n", NS_ERR_INVALID, "sampling.stop");
    /* deep nesting inside a field we do not descend */
    size_t depth = 10000;
    char *deep = malloc(2 * depth + 256);
    CHECK(deep != NULL);
    if (!deep) return;
    n = (size_t)sprintf(deep, MINIMAL "sampling: {stop: ");
    for (size_t i = 0; i < depth; i++) deep[n++] = '[';
    for (size_t i = 0; i < depth; i++) deep[n++] = ']';
    memcpy(deep + n, "}\n", 3);
    CHECK_ERR(deep, NS_ERR_INVALID, "sampling.stop[0]");
    free(deep);
}

/* Every prefix of a valid spec, in a buffer of exactly that size (so ASan sees any read
 * past the end): it parses or fails cleanly with a message that starts with the path. */
NS_TEST(test_spec_truncated_every_offset) {
    size_t len = strlen(k_full);
    int n_ok = 0, n_err = 0;
    for (size_t cut = 0; cut <= len; cut++) {
        char *buf = malloc(cut ? cut : 1);
        CHECK(buf != NULL);
        if (!buf) return;
        memcpy(buf, k_full, cut);
        ns_job_spec s;
        ns_error err;
        ns_error_clear(&err);
        memset(&s, 0x77, sizeof s);
        ns_status st = ns_job_spec_parse(buf, cut, SPEC_PATH, &s, &err);
        if (st == NS_OK) {
            CHECK(s.name && s.model && s.input_path);
            ns_job_spec_free(&s);
            n_ok++;
        } else {
            CHECK_MSG(st == NS_ERR_INVALID || st == NS_ERR_FORMAT, "cut %zu: status %d", cut, st);
            CHECK_MSG(strncmp(err.msg, SPEC_PATH ":", strlen(SPEC_PATH) + 1) == 0,
                      "cut %zu: %s", cut, err.msg);
            CHECK_MSG(all_zero(&s), "cut %zu: *out not zeroed", cut);
            n_err++;
        }
        free(buf);
    }
    CHECK(n_ok > 0 && n_err > 0);
    CHECK_EQ_INT(n_ok + n_err, (long long)len + 1);
}

NS_TEST(test_spec_deterministic_flag) {
    const char *ok = "name: d\nmodel: m.gguf\ninput:\n  path: in.jsonl\nprompt:\n  template: \"{{text}}\"\n"
                     "limits:\n  deterministic: true\n";
    ns_job_spec s;
    ns_error err;
    ns_error *e = &err;
    CHECK_STATUS_OK(ns_job_spec_parse(ok, strlen(ok), "d.yaml", &s, e), e);
    CHECK(s.deterministic);
    ns_job_spec_free(&s);
    const char *bad = "name: d\nmodel: m.gguf\ninput:\n  path: in.jsonl\nprompt:\n  template: \"{{text}}\"\n"
                      "limits:\n  deterministic: maybe\n";
    CHECK(ns_job_spec_parse(bad, strlen(bad), "d.yaml", &s, e) == NS_ERR_INVALID);
    CHECK_MSG(strstr(err.msg, "d.yaml:8:") && strstr(err.msg, "limits.deterministic") && strstr(err.msg, "true or false"),
              "%s", err.msg);
}

/* precision: fp8 parses, goes into the fingerprint, and a resume with another precision
 * is refused naming it; a fingerprint recorded before the key existed still resumes. */
NS_TEST(test_spec_precision_and_fingerprint) {
    ns_job_spec a, b;
    ns_error err, *e = &err;
    CHECK_STATUS_OK(parse(MINIMAL "precision: fp8\n", &a, &err), e);
    CHECK_STATUS_OK(parse(MINIMAL "precision: default\n", &b, &err), e);
    CHECK(a.fp8 && !b.fp8);
    char *fa = ns_fingerprint_make(&a, "0123456789abcdef", 42), *fb = ns_fingerprint_make(&b, "0123456789abcdef", 42);
    CHECK(fa && fb && strstr(fa, "\"precision\":\"fp8\"") && strstr(fb, "\"precision\":\"default\""));
    if (fa && fb) {
        CHECK_STATUS_OK(ns_fingerprint_compare(fa, fa, &err), e);
        CHECK(ns_fingerprint_compare(fb, fa, &err) == NS_ERR_INVALID);
        CHECK_MSG(strstr(err.msg, "precision was \"default\", now \"fp8\""), "%s", err.msg);
        /* recorded without the key (an older nightshift): only recorded keys are compared */
        json_error_t je;
        json_t *old = json_loads(fb, 0, &je);
        CHECK(old && json_object_del(old, "precision") == 0);
        char *fold = old ? json_dumps(old, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
        CHECK(fold && !strstr(fold, "precision"));
        if (fold) CHECK_STATUS_OK(ns_fingerprint_compare(fold, fa, &err), e);
        free(fold);
        json_decref(old);
    }
    free(fa);
    free(fb);
    ns_job_spec_free(&a);
    ns_job_spec_free(&b);
}
