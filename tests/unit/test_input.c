/* test_input.c: {{field}} templates and the input readers (jsonl, text, openai-batch):
 * ids, bad lines that do not stop the reader, blank lines, CRLF, BOM, a line past
 * NS_INPUT_MAX_LINE, a last line without '\n', sorted globs, and a long stream.
 * Specs are built by hand (not through jobs/spec.c) so these tests stand alone. */
#include "../test.h"

#include <stdlib.h>

#include "common.h"
#include "input.h"
#include "sampler.h"
#include "spec.h"

/* ---- helpers ----------------------------------------------------------------------- */

static void write_file(const char *path, const char *data, size_t len) {
    FILE *f = fopen(path, "wb");
    CHECK_MSG(f != NULL, "cannot create %s", path);
    if (!f) return;
    CHECK(fwrite(data, 1, len, f) == len);
    CHECK(fclose(f) == 0);
}

static void write_str(const char *path, const char *s) { write_file(path, s, strlen(s)); }

/* A path under the test directory: tmp/<name>. Static buffer rotation (4 at a time). */
static const char *tmp_path(const char *name) {
    static char bufs[4][512];
    static int i;
    char *b = bufs[i++ & 3];
    snprintf(b, 512, "%s/%s", ns_test_tmpdir(), name);
    return b;
}


static void spec_init(ns_job_spec *s, const char *path, ns_input_format fmt) {
    memset(s, 0, sizeof *s);
    s->name = strdup("test");
    s->input_path = strdup(path);
    s->input_format = fmt;
    ns_sampling_default(&s->sampling);
    s->n = 1;
}

/* The specs here are built by hand; the production free releases them. */
static void spec_clear(ns_job_spec *s) { ns_job_spec_free(s); }

static ns_input_reader *open_ok(const ns_job_spec *s) {
    ns_error err, *errp = &err;
    ns_error_clear(&err);
    ns_input_reader *r = NULL;
    CHECK_STATUS_OK(ns_input_open(s, &r, &err), errp);
    CHECK(r != NULL);
    return r;
}

/* Reads one record; expects a record (1). */
static int next1(ns_input_reader *r, ns_input_record *rec) {
    ns_error err;
    ns_error_clear(&err);
    int rc = ns_input_next(r, rec, &err);
    CHECK_MSG(rc == 1, "ns_input_next returned %d (%s), expected a record", rc, err.msg);
    return rc == 1;
}

static void expect_end(ns_input_reader *r) {
    ns_input_record rec;
    ns_error err;
    ns_error_clear(&err);
    int rc = ns_input_next(r, &rec, &err);
    CHECK_MSG(rc == 0, "expected the end, got %d (%s)", rc, rc == 1 ? rec.error : err.msg);
}

#define CHECK_STR(a, b)                                                                  \
    do {                                                                                 \
        const char *ns_sa_ = (a), *ns_sb_ = (b);                                         \
        CHECK_MSG(ns_sa_ && ns_sb_ && strcmp(ns_sa_, ns_sb_) == 0, "%s == \"%s\": got \"%s\"", #a, \
                  ns_sb_ ? ns_sb_ : "(null)", ns_sa_ ? ns_sa_ : "(null)");               \
    } while (0)

#define CHECK_HAS(s, sub)                                                                \
    do {                                                                                 \
        const char *ns_s_ = (s);                                                         \
        CHECK_MSG(ns_s_ && strstr(ns_s_, (sub)), "%s should contain \"%s\": \"%s\"", #s, (sub), \
                  ns_s_ ? ns_s_ : "(null)");                                             \
    } while (0)

/* Renders tmpl against json; returns the malloc'd text or NULL, with the error in err. */
static char *render(const char *tmpl, const char *json, ns_error *err) {
    char *out = (char *)1;
    ns_error_clear(err);
    ns_status st = ns_template_render(tmpl, json, strlen(json), &out, err);
    if (st != NS_OK) {
        CHECK(out == NULL);
        CHECK(err->code == st);
        return NULL;
    }
    CHECK(out != NULL);
    return out;
}

static void expect_render(const char *tmpl, const char *json, const char *want) {
    ns_error err;
    char *got = render(tmpl, json, &err);
    CHECK_MSG(got && strcmp(got, want) == 0, "render(\"%s\", %s): got \"%s\" (%s), want \"%s\"", tmpl,
              json, got ? got : "(null)", got ? "" : err.msg, want);
    free(got);
}

static void expect_render_err(const char *tmpl, const char *json, ns_status code, const char *msg_part) {
    ns_error err;
    char *got = render(tmpl, json, &err);
    CHECK_MSG(got == NULL, "render(\"%s\"): expected an error, got \"%s\"", tmpl, got ? got : "");
    free(got);
    CHECK_EQ_INT(err.code, code);
    CHECK_MSG(strstr(err.msg, msg_part) != NULL, "render(\"%s\"): error \"%s\" should contain \"%s\"",
              tmpl, err.msg, msg_part);
}

/* ---- templates --------------------------------------------------------------------- */

NS_TEST(test_input_template_render) {
    expect_render("Summarize: {{text}}", "{\"text\":\"hello\"}", "Summarize: hello");
    expect_render("{{ text }}|{{text  }}|{{\ttext}}", "{\"text\":\"x\"}", "x|x|x");
    expect_render("{{a.b.c}}/{{a.d}}", "{\"a\":{\"b\":{\"c\":\"deep\"},\"d\":7}}", "deep/7");
    expect_render("{{a.b}}", "{\"a.b\":\"flat\",\"a\":{\"b\":\"nested\"}}", "flat"); /* key first */
    expect_render("{{i}} {{neg}} {{r}} {{r2}} {{big}} {{t}} {{f}}",
                  "{\"i\":42,\"neg\":-3,\"r\":1.5,\"r2\":0.1,\"big\":2.0,\"t\":true,\"f\":false}",
                  "42 -3 1.5 0.1 2.0 true false");
    expect_render("", "{\"a\":1}", "");
    expect_render("no fields", "{}", "no fields");
    expect_render("{{a}}{{b}}{{a}}", "{\"a\":\"x\",\"b\":\"y\"}", "xyx");
    expect_render("{{name-1}}{{n_2}}", "{\"name-1\":\"p\",\"n_2\":\"q\"}", "pq");
    expect_render("Übersetze: {{t}} ✓", "{\"t\":\"日本語 😀\"}", "Übersetze: 日本語 😀 ✓");
    expect_render("{{t}}", "{\"t\":\"\\u00e9\\n{{x}}\"}", "é\n{{x}}"); /* values are not re-scanned */
    expect_render("a } b {c} }}", "{}", "a } b {c} }}");

    expect_render_err("{{missing}}", "{\"text\":\"x\"}", NS_ERR_INVALID, "field 'missing' is missing");
    expect_render_err("{{a.x}}", "{\"a\":{\"b\":1}}", NS_ERR_INVALID, "field 'a.x' is missing");
    expect_render_err("{{a.b.c}}", "{\"a\":{\"b\":1}}", NS_ERR_INVALID, "field 'a.b.c' is missing");
    expect_render_err("{{arr}}", "{\"arr\":[1,2]}", NS_ERR_INVALID,
                      "field 'arr' is an array; templates take strings, numbers and booleans");
    expect_render_err("{{o}}", "{\"o\":{}}", NS_ERR_INVALID, "field 'o' is an object");
    expect_render_err("{{n}}", "{\"n\":null}", NS_ERR_INVALID, "field 'n' is null");
    expect_render_err("abc {{text", "{\"text\":\"x\"}", NS_ERR_INVALID, "unclosed '{{' at offset 4");
    expect_render_err("{{text}} {{", "{\"text\":\"x\"}", NS_ERR_INVALID, "unclosed '{{' at offset 9");
    expect_render_err("{{}}", "{}", NS_ERR_INVALID, "offset 0");
    expect_render_err("x{{a b}}", "{\"a\":1}", NS_ERR_INVALID, "offset 1");
    expect_render_err("{{a}}", "[1]", NS_ERR_INVALID, "expected a JSON object");
    expect_render_err("{{a}}", "{\"a\":", NS_ERR_FORMAT, "invalid JSON");
    expect_render_err("{{a}}", "{\"a\":1,\"a\":2}", NS_ERR_FORMAT, "duplicate");
}

/* ---- jsonl ------------------------------------------------------------------------- */

NS_TEST(test_input_jsonl_ids) {
    const char *path = tmp_path("ids.jsonl");
    write_str(path, "{\"id\":\"doc-1\",\"text\":\"alpha\"}\n"
                    "{\"id\":17,\"text\":\"beta\"}\n"
                    "{\"text\":\"gamma\"}\n"
                    "{\"id\":1.5,\"text\":\"delta\"}\n"
                    "{\"id\":\"doc-5\",\"text\":\"eps\"}\n");
    ns_job_spec s;
    spec_init(&s, path, NS_INPUT_JSONL);
    s.id_field = strdup("id");
    s.prompt_template = strdup("T: {{text}}");
    ns_input_reader *r = open_ok(&s);
    ns_input_record rec;
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.custom_id, "doc-1");
        CHECK_STR(rec.prompt, "T: alpha");
        CHECK(rec.system == NULL && rec.user == NULL);
        CHECK_EQ_INT(rec.line, 1);
        CHECK_EQ_INT(rec.index, 0);
        CHECK_STR(rec.file, path);
        CHECK(!rec.has_sampling);
        CHECK_EQ_INT(rec.sampling.max_tokens, s.sampling.max_tokens);
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.custom_id, "17");
        CHECK_STR(rec.prompt, "T: beta");
    }
    if (r && next1(r, &rec)) { /* missing id: a bad line naming the field */
        CHECK_HAS(rec.error, "ids.jsonl:3: ");
        CHECK_HAS(rec.error, "'id'");
        CHECK_HAS(rec.error, "missing");
        CHECK(rec.prompt == NULL);
        CHECK_STR(rec.custom_id, "ids.jsonl:3");
        CHECK_EQ_INT(rec.index, 2);
    }
    if (r && next1(r, &rec)) {
        CHECK_HAS(rec.error, "ids.jsonl:4: ");
        CHECK_HAS(rec.error, "'id'");
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.custom_id, "doc-5");
        CHECK_EQ_INT(rec.index, 4);
    }
    if (r) expect_end(r);
    ns_input_close(r);
    spec_clear(&s);
}

NS_TEST(test_input_jsonl_bad_lines) {
    const char *path = tmp_path("bad.jsonl");
    write_str(path, "{\"text\":\"one\"}\n"
                    "this is not json\n"
                    "[1,2,3]\n"
                    "\"just a string\"\n"
                    "42\n"
                    "null\n"
                    "{\"text\":\"x\"} trailing\n"
                    "{\"text\":\"a\",\"text\":\"b\"}\n"
                    "{\"other\":\"x\"}\n"
                    "{\"text\":\"five\"}\n");
    ns_job_spec s;
    spec_init(&s, path, NS_INPUT_JSONL);
    s.prompt_template = strdup("{{text}}");
    ns_input_reader *r = open_ok(&s);
    ns_input_record rec;
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.custom_id, "bad.jsonl:1"); /* no id_field: basename:line */
        CHECK_STR(rec.prompt, "one");
    }
    if (r && next1(r, &rec)) {
        char want[600];
        snprintf(want, sizeof want, "%s:2:", path);
        CHECK_MSG(strncmp(rec.error, want, strlen(want)) == 0, "error \"%s\" should start \"%s\"",
                  rec.error, want);
        CHECK_HAS(rec.error, ": invalid JSON: ");
        CHECK(rec.prompt == NULL);
        CHECK_EQ_INT(rec.index, 1);
    }
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "bad.jsonl:3: expected a JSON object, got an array");
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "bad.jsonl:4: expected a JSON object, got a string");
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "bad.jsonl:5: expected a JSON object, got an integer");
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "bad.jsonl:6: expected a JSON object, got null");
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "bad.jsonl:7:");
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "duplicate object key");
    if (r && next1(r, &rec)) {
        CHECK_HAS(rec.error, "bad.jsonl:9: ");
        CHECK_HAS(rec.error, "field 'text' is missing");
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.prompt, "five");
        CHECK_EQ_INT(rec.index, 9);
    }
    if (r) expect_end(r);
    ns_input_close(r);
    spec_clear(&s);
}

NS_TEST(test_input_jsonl_blank_crlf_bom_chat) {
    const char *path = tmp_path("crlf.jsonl");
    write_str(path, "\xEF\xBB\xBF{\"q\":\"first\"}\r\n"
                    "\r\n"
                    "   \t \n"
                    "\n"
                    "{\"q\":\"fifth\",\"sys\":\"be brief\"}\r\n"
                    "{\"q\":\"last\"}"); /* truncated: no newline */
    ns_job_spec s;
    spec_init(&s, path, NS_INPUT_JSONL);
    s.chat = true;
    s.user_template = strdup("Q: {{q}}");
    ns_input_reader *r = open_ok(&s);
    ns_input_record rec;
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.user, "Q: first");
        CHECK(rec.prompt == NULL && rec.system == NULL);
        CHECK_EQ_INT(rec.line, 1);
        CHECK_EQ_INT(rec.index, 0);
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.user, "Q: fifth");
        CHECK_EQ_INT(rec.line, 5);
        CHECK_EQ_INT(rec.index, 1);
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.user, "Q: last");
        CHECK_EQ_INT(rec.line, 6);
        CHECK_EQ_INT(rec.index, 2);
    }
    if (r) expect_end(r);
    if (r) expect_end(r); /* the end stays the end */
    ns_input_close(r);

    /* a broken template is the spec's error, found at open */
    free(s.user_template);
    s.user_template = strdup("Q: {{q");
    ns_error err;
    ns_error_clear(&err);
    r = (ns_input_reader *)1;
    CHECK_EQ_INT(ns_input_open(&s, &r, &err), NS_ERR_INVALID);
    CHECK(r == NULL);
    CHECK_HAS(err.msg, "user_template: unclosed '{{' at offset 3");
    free(s.user_template);
    s.user_template = strdup("Q: {{q}}");

    /* a system template, and a field it lacks on one line */
    s.system_template = strdup("{{sys}}");
    r = open_ok(&s);
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "crlf.jsonl:1: system_template: field 'sys' is missing");
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.system, "be brief");
        CHECK_STR(rec.user, "Q: fifth");
    }
    ns_input_close(r);
    spec_clear(&s);
}

NS_TEST(test_input_jsonl_long_line) {
    /* a 20 MB line (over NS_INPUT_MAX_LINE) between two good ones */
    const char *path = tmp_path("long.jsonl");
    size_t n_long = 20u << 20;
    const char *head = "{\"text\":\"before\"}\n{\"text\":\"";
    const char *tail = "\"}\n{\"text\":\"after\"}\n";
    size_t n = strlen(head) + n_long + strlen(tail);
    char *data = malloc(n);
    CHECK(data != NULL);
    if (!data) return;
    memcpy(data, head, strlen(head));
    memset(data + strlen(head), 'x', n_long);
    memcpy(data + strlen(head) + n_long, tail, strlen(tail));
    write_file(path, data, n);
    free(data);

    ns_job_spec s;
    spec_init(&s, path, NS_INPUT_JSONL);
    s.prompt_template = strdup("{{text}}");
    ns_input_reader *r = open_ok(&s);
    ns_input_record rec;
    if (r && next1(r, &rec)) CHECK_STR(rec.prompt, "before");
    if (r && next1(r, &rec)) {
        CHECK_HAS(rec.error, "long.jsonl:2: line is longer than");
        CHECK(rec.prompt == NULL);
        CHECK_EQ_INT(rec.line, 2);
        CHECK_STR(rec.custom_id, "long.jsonl:2");
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.prompt, "after");
        CHECK_EQ_INT(rec.line, 3);
        CHECK_EQ_INT(rec.index, 2);
    }
    if (r) expect_end(r);
    ns_input_close(r);
    spec_clear(&s);

    /* a line of exactly NS_INPUT_MAX_LINE bytes is still a line */
    const char *path2 = tmp_path("max.txt");
    data = malloc(NS_INPUT_MAX_LINE + 1);
    CHECK(data != NULL);
    if (!data) return;
    memset(data, 'y', NS_INPUT_MAX_LINE);
    data[NS_INPUT_MAX_LINE] = '\n';
    write_file(path2, data, NS_INPUT_MAX_LINE + 1);
    free(data);
    spec_init(&s, path2, NS_INPUT_TEXT);
    r = open_ok(&s);
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK(rec.prompt && strlen(rec.prompt) == NS_INPUT_MAX_LINE);
    }
    if (r) expect_end(r);
    ns_input_close(r);
    spec_clear(&s);
}

/* ---- text -------------------------------------------------------------------------- */

NS_TEST(test_input_text) {
    const char *path = tmp_path("prompts.txt");
    write_str(path, "What is 2+2?\n\nName a {{color}}\r\n  indented line  \nlast");
    ns_job_spec s;
    spec_init(&s, path, NS_INPUT_TEXT);
    ns_input_reader *r = open_ok(&s); /* no template: the line itself */
    ns_input_record rec;
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.prompt, "What is 2+2?");
        CHECK_STR(rec.custom_id, "prompts.txt:1");
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.prompt, "Name a {{color}}"); /* a value is never a template */
        CHECK_EQ_INT(rec.line, 3);
        CHECK_EQ_INT(rec.index, 1);
    }
    if (r && next1(r, &rec)) CHECK_STR(rec.prompt, "  indented line  ");
    if (r && next1(r, &rec)) CHECK_STR(rec.prompt, "last");
    if (r) expect_end(r);
    ns_input_close(r);

    s.prompt_template = strdup("Answer: {{ text }}.");
    r = open_ok(&s);
    if (r && next1(r, &rec)) CHECK_STR(rec.prompt, "Answer: What is 2+2?.");
    ns_input_close(r);
    free(s.prompt_template);

    /* a field other than {{text}} fails every line: the spec is rejected at open */
    s.prompt_template = strdup("{{text}} {{lang}}");
    ns_error err;
    ns_error_clear(&err);
    r = (ns_input_reader *)1;
    CHECK_EQ_INT(ns_input_open(&s, &r, &err), NS_ERR_INVALID);
    CHECK(r == NULL);
    CHECK_HAS(err.msg, "prompt_template: field 'lang' not in a text input (only {{text}})");
    free(s.prompt_template);
    s.prompt_template = NULL;

    /* chat over text input */
    s.chat = true;
    s.system_template = strdup("You are terse.");
    s.user_template = strdup("Q: {{text}}");
    r = open_ok(&s);
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK(rec.prompt == NULL);
        CHECK_STR(rec.system, "You are terse.");
        CHECK_STR(rec.user, "Q: What is 2+2?");
    }
    ns_input_close(r);
    spec_clear(&s);
}

/* ---- openai-batch ------------------------------------------------------------------ */

NS_TEST(test_input_openai_batch) {
    const char *path = tmp_path("batch.jsonl");
    write_str(
        path,
        /* 1: system + user strings, no overrides */
        "{\"custom_id\":\"req-1\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":\"Hi there\"}]}}\n"
        /* 2: parts content, last user wins, overrides */
        "{\"custom_id\":\"req-2\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"ignored\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hello, \"},"
        "{\"type\":\"text\",\"text\":\"world\"}]}],"
        "\"temperature\":0.7,\"top_p\":0.9,\"max_completion_tokens\":99,\"seed\":1234,"
        "\"stop\":[\"END\",\"\\n\\n\"],\"n\":1,\"presence_penalty\":0.5,\"frequency_penalty\":-0.25,"
        "\"logprobs\":true,\"top_logprobs\":5}}\n"
        /* 3: an assistant turn is not supported */
        "{\"custom_id\":\"req-3\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
        "{\"role\":\"tool\",\"content\":\"b\"}]}}\n"
        /* 4: temperature of the wrong type */
        "{\"custom_id\":\"req-4\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"temperature\":\"hot\"}}\n"
        /* 5: top_p out of range */
        "{\"custom_id\":\"req-5\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"top_p\":1.5}}\n"
        /* 6: no custom_id */
        "{\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}]}}\n"
        /* 7: legacy completions */
        "{\"custom_id\":\"req-7\",\"method\":\"POST\",\"url\":\"/v1/completions\","
        "\"body\":{\"prompt\":\"Once upon\",\"max_tokens\":5,\"stop\":\"\\n\"}}\n"
        /* 8: max_tokens of the wrong type */
        "{\"custom_id\":\"req-8\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"max_tokens\":1.5}}\n"
        /* 9: an image part */
        "{\"custom_id\":\"req-9\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}}\n"
        /* 10: a second system message */
        "{\"custom_id\":\"req-10\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
        "\"body\":{\"messages\":[{\"role\":\"system\",\"content\":\"a\"},"
        "{\"role\":\"system\",\"content\":\"b\"},{\"role\":\"user\",\"content\":\"c\"}]}}\n"
        /* 11: wrong url */
        "{\"custom_id\":\"req-11\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{}}\n");
    ns_job_spec s;
    spec_init(&s, path, NS_INPUT_OPENAI_BATCH);
    s.sampling.max_tokens = 64;
    s.sampling.repeat_penalty = 1.1f;
    s.prompt_template = strdup("{{ignored}}"); /* templates do not apply to openai-batch */
    ns_input_reader *r = open_ok(&s);
    ns_input_record rec;
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.custom_id, "req-1");
        CHECK_STR(rec.system, "Be brief.");
        CHECK_STR(rec.user, "Hi there");
        CHECK(rec.prompt == NULL);
        CHECK(!rec.has_sampling);
        CHECK_EQ_INT(rec.sampling.max_tokens, 64);
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.custom_id, "req-2");
        CHECK(rec.system == NULL);
        CHECK_STR(rec.user, "Hello, world");
        CHECK(rec.has_sampling);
        CHECK_NEAR(rec.sampling.temperature, 0.7, 1e-6);
        CHECK_NEAR(rec.sampling.top_p, 0.9, 1e-6);
        CHECK_EQ_INT(rec.sampling.max_tokens, 99);
        CHECK_EQ_INT(rec.sampling.seed, 1234);
        CHECK_EQ_INT(rec.sampling.n_stop, 2);
        CHECK_STR(rec.sampling.stop[0], "END");
        CHECK_STR(rec.sampling.stop[1], "\n\n");
        CHECK_NEAR(rec.sampling.presence_penalty, 0.5, 1e-6);
        CHECK_NEAR(rec.sampling.frequency_penalty, -0.25, 1e-6);
        CHECK_EQ_INT(rec.sampling.n_logprobs, 5);
        CHECK_NEAR(rec.sampling.repeat_penalty, 1.1, 1e-6); /* the spec's, kept */
    }
    if (r && next1(r, &rec)) {
        CHECK_HAS(rec.error, "batch.jsonl:3: body.messages[1].role 'tool' is not supported");
        CHECK_STR(rec.custom_id, "req-3");
        CHECK(rec.user == NULL);
    }
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "batch.jsonl:4: body.temperature");
    if (r && next1(r, &rec)) {
        CHECK_HAS(rec.error, "batch.jsonl:5: ");
        CHECK_HAS(rec.error, "top_p = 1.5 is out of range (0, 1]");
    }
    if (r && next1(r, &rec)) {
        CHECK_HAS(rec.error, "batch.jsonl:6: custom_id");
        CHECK_STR(rec.custom_id, "batch.jsonl:6");
    }
    if (r && next1(r, &rec)) {
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.prompt, "Once upon");
        CHECK(rec.system == NULL && rec.user == NULL);
        CHECK(rec.has_sampling);
        CHECK_EQ_INT(rec.sampling.max_tokens, 5);
        CHECK_EQ_INT(rec.sampling.n_stop, 1);
        CHECK_STR(rec.sampling.stop[0], "\n");
    }
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "batch.jsonl:8: body.max_tokens");
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "batch.jsonl:9: body.messages[0].content[0].type 'image_url'");
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "batch.jsonl:10: body.messages[1]");
    if (r && next1(r, &rec)) CHECK_HAS(rec.error, "batch.jsonl:11: url '/v1/embeddings'");
    if (r) expect_end(r);
    ns_input_close(r);
    spec_clear(&s);
}

/* ---- globs ------------------------------------------------------------------------- */

NS_TEST(test_input_glob_sorted) {
    /* written out of order; read back sorted, with each file's own line numbers */
    write_str(tmp_path("part-c.jsonl"), "{\"t\":\"c1\"}\n");
    write_str(tmp_path("part-a.jsonl"), "{\"t\":\"a1\"}\n\n{\"t\":\"a3\"}\n");
    write_str(tmp_path("part-b.jsonl"), "\xEF\xBB\xBF{\"t\":\"b1\"}\n{\"t\":\"b2\"}");
    write_str(tmp_path("other.jsonl"), "{\"t\":\"no\"}\n");
    ns_job_spec s;
    spec_init(&s, tmp_path("part-*.jsonl"), NS_INPUT_JSONL);
    s.prompt_template = strdup("{{t}}");
    ns_input_reader *r = open_ok(&s);
    const char *want[][3] = {{"a1", "part-a.jsonl", "1"}, {"a3", "part-a.jsonl", "3"},
                             {"b1", "part-b.jsonl", "1"}, {"b2", "part-b.jsonl", "2"},
                             {"c1", "part-c.jsonl", "1"}};
    ns_input_record rec;
    for (int i = 0; r && i < 5; i++) {
        if (!next1(r, &rec)) break;
        CHECK_STR(rec.error, "");
        CHECK_STR(rec.prompt, want[i][0]);
        CHECK(rec.file && strstr(rec.file, want[i][1]));
        CHECK_EQ_INT(rec.line, atoi(want[i][2]));
        CHECK_EQ_INT(rec.index, i);
        char id[64];
        snprintf(id, sizeof id, "%s:%s", want[i][1], want[i][2]);
        CHECK_STR(rec.custom_id, id);
    }
    if (r) expect_end(r);
    ns_input_close(r);
    spec_clear(&s);
}

NS_TEST(test_input_no_match) {
    ns_job_spec s;
    spec_init(&s, tmp_path("nothing-*.jsonl"), NS_INPUT_JSONL);
    s.prompt_template = strdup("{{t}}");
    ns_input_reader *r = (ns_input_reader *)1;
    ns_error err;
    ns_error_clear(&err);
    CHECK_EQ_INT(ns_input_open(&s, &r, &err), NS_ERR_NOT_FOUND);
    CHECK(r == NULL);
    CHECK_HAS(err.msg, "input: no file matches '");
    CHECK_HAS(err.msg, "nothing-*.jsonl'");
    spec_clear(&s);

    spec_init(&s, tmp_path("plain-missing.txt"), NS_INPUT_TEXT);
    CHECK_EQ_INT(ns_input_open(&s, &r, &err), NS_ERR_NOT_FOUND);
    spec_clear(&s);
    ns_input_close(NULL);
}

/* ---- a long stream ----------------------------------------------------------------- */

NS_TEST(test_input_stream_200k) {
    const char *path = tmp_path("stream.jsonl");
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    const int n = 200000;
    for (int i = 0; i < n; i++) fprintf(f, "{\"id\":%d,\"text\":\"item number %d\"}\n", i, i);
    CHECK(fclose(f) == 0);
    ns_job_spec s;
    spec_init(&s, path, NS_INPUT_JSONL);
    s.id_field = strdup("id");
    s.prompt_template = strdup("Summarize: {{text}}");
    ns_input_reader *r = open_ok(&s);
    ns_input_record rec;
    ns_error err;
    ns_error_clear(&err);
    int count = 0, n_bad = 0, rc;
    while (r && (rc = ns_input_next(r, &rec, &err)) == 1) {
        if (rec.error[0] || rec.index != count) n_bad++;
        if (count == n - 1) {
            char id[32];
            snprintf(id, sizeof id, "%d", n - 1);
            CHECK_STR(rec.custom_id, id);
            CHECK_STR(rec.prompt, "Summarize: item number 199999");
        }
        count++;
    }
    CHECK_EQ_INT(count, n);
    CHECK_EQ_INT(n_bad, 0);
    ns_input_close(r);
    spec_clear(&s);
}
