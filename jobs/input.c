/* input.c: the job's input records, streamed one line at a time from a sorted glob of
 * files, with each record's prompt rendered from the spec's {{field}} templates.
 *
 * Invariants:
 * - One line is held at a time, in one reusable buffer of at most NS_INPUT_MAX_LINE + 1
 *   bytes; a longer line becomes a bad-line record and the rest of it is read and dropped
 *   in 64 KiB chunks, never held.
 * - A bad line is never fatal: the record comes back with `error` = "file:line: why".
 *   Only I/O errors (a file that cannot be opened or read) stop the reader.
 * - Blank (whitespace-only) lines are skipped and are not records; line numbers still
 *   count them. A UTF-8 byte-order mark at the start of each file is skipped; a trailing
 *   "\r" (CRLF files) is stripped.
 * - The reader copies what it needs from the spec at open: the spec may be freed after.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* glob, strtok_r, strdup */
#endif
#include "input.h"

#include <errno.h>
#include <glob.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NS_INPUT_CHUNK (64u << 10) /* read size; also the granularity of skipping a long line */
#define NS_INPUT_MAX_NAME 255      /* longest {{field}} name */

/* ---- a growing string ------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap; /* cap includes room for the NUL */
} sbuf;

static ns_status sb_append(sbuf *b, const char *s, size_t n, ns_error *err) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) return ns_error_set(err, NS_ERR_NOMEM, "template: output too large");
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p) return ns_error_set(err, NS_ERR_NOMEM, "template: out of memory (%zu bytes)", cap);
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return NS_OK;
}

/* ---- templates -------------------------------------------------------------------- */

/* Appends the value of field `name` to out, or fails naming the field. */
typedef ns_status (*field_lookup_fn)(void *ctx, const char *name, sbuf *out, ns_error *err);

static bool is_name_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

/* Scans tmpl for {{ name }} and copies everything else as is. *out is malloc'd (even for an
 * empty template); on error *out is NULL. */
static ns_status render_with(const char *tmpl, field_lookup_fn lookup, void *ctx, char **out,
                             ns_error *err) {
    sbuf b = {0};
    ns_status st = NS_OK;
    *out = NULL;
    const char *p = tmpl;
    for (;;) {
        const char *open = strstr(p, "{{");
        if (!open) {
            st = sb_append(&b, p, strlen(p), err);
            break;
        }
        if ((st = sb_append(&b, p, (size_t)(open - p), err)) != NS_OK) break;
        const char *close = strstr(open + 2, "}}");
        if (!close) {
            st = ns_error_set(err, NS_ERR_INVALID, "unclosed '{{' at offset %zu", (size_t)(open - tmpl));
            break;
        }
        const char *s = open + 2, *e = close;
        while (s < e && (*s == ' ' || *s == '\t')) s++;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        const char *q = s;
        while (q < e && is_name_char(*q)) q++;
        if (s == e || q != e) {
            st = ns_error_set(err, NS_ERR_INVALID,
                              "bad placeholder '%.*s' at offset %zu: expected {{name}} with a name of "
                              "letters, digits, '_', '.' and '-'",
                              (int)NS_MIN((size_t)(close + 2 - open), (size_t)64), open,
                              (size_t)(open - tmpl));
            break;
        }
        size_t n = (size_t)(e - s);
        if (n > NS_INPUT_MAX_NAME) {
            st = ns_error_set(err, NS_ERR_INVALID, "field name '%.32s...' at offset %zu is longer than %d bytes",
                              s, (size_t)(open - tmpl), NS_INPUT_MAX_NAME);
            break;
        }
        char name[NS_INPUT_MAX_NAME + 1];
        memcpy(name, s, n);
        name[n] = '\0';
        if ((st = lookup(ctx, name, &b, err)) != NS_OK) break;
        p = close + 2;
    }
    if (st != NS_OK) {
        free(b.p);
        return st;
    }
    if (!b.p && (st = sb_append(&b, "", 0, err)) != NS_OK) return st;
    *out = b.p;
    return NS_OK;
}

/* Finds name in obj: a top-level key first; else a dotted path a.b.c through nested objects. */
static json_t *json_lookup(json_t *obj, const char *name) {
    json_t *v = json_object_get(obj, name);
    if (v || !strchr(name, '.')) return v;
    char path[NS_INPUT_MAX_NAME + 1];
    snprintf(path, sizeof path, "%s", name);
    char *save = NULL;
    v = obj;
    for (char *seg = strtok_r(path, ".", &save); seg; seg = strtok_r(NULL, ".", &save)) {
        if (!json_is_object(v)) return NULL;
        v = json_object_get(v, seg);
        if (!v) return NULL;
    }
    return v == obj ? NULL : v;
}

static const char *json_type_word(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

/* Shortest %g text that reads back as the same double, with ".0" if it looks integral. */
static void format_real(double v, char *buf, size_t size) {
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (!strpbrk(buf, ".eEni")) {
        size_t n = strlen(buf);
        if (n + 3 <= size) memcpy(buf + n, ".0", 3);
    }
}

/* Appends a scalar JSON value as template text: strings raw, numbers and booleans as JSON. */
static ns_status append_scalar(const char *name, const json_t *v, sbuf *out, ns_error *err) {
    char num[64];
    switch (json_typeof(v)) {
    case JSON_STRING: return sb_append(out, json_string_value(v), json_string_length(v), err);
    case JSON_INTEGER:
        snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        return sb_append(out, num, strlen(num), err);
    case JSON_REAL:
        format_real(json_real_value(v), num, sizeof num);
        return sb_append(out, num, strlen(num), err);
    case JSON_TRUE: return sb_append(out, "true", 4, err);
    case JSON_FALSE: return sb_append(out, "false", 5, err);
    default:
        return ns_error_set(err, NS_ERR_INVALID,
                            "field '%s' is %s; templates take strings, numbers and booleans", name,
                            json_type_word(v));
    }
}

static ns_status lookup_json(void *ctx, const char *name, sbuf *out, ns_error *err) {
    json_t *v = json_lookup((json_t *)ctx, name);
    if (!v) return ns_error_set(err, NS_ERR_INVALID, "field '%s' is missing", name);
    return append_scalar(name, v, out, err);
}

typedef struct text_ctx {
    const char *line;
    size_t len;
} text_ctx;

static ns_status lookup_text(void *ctx, const char *name, sbuf *out, ns_error *err) {
    const text_ctx *t = ctx;
    if (strcmp(name, "text") != 0)
        return ns_error_set(err, NS_ERR_INVALID, "field '%s' not in a text input (only {{text}})", name);
    return sb_append(out, t->line, t->len, err);
}

ns_status ns_template_render(const char *tmpl, const char *json_object, size_t json_len, char **out,
                             ns_error *err) {
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json_object, json_len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root)
        return ns_error_set(err, NS_ERR_FORMAT, "%d:%d: invalid JSON: %s", jerr.line, jerr.column,
                            jerr.text);
    ns_status st;
    if (!json_is_object(root))
        st = ns_error_set(err, NS_ERR_INVALID, "expected a JSON object, got %s", json_type_word(root));
    else
        st = render_with(tmpl, lookup_json, root, out, err);
    json_decref(root);
    return st;
}

/* ---- the reader ------------------------------------------------------------------- */

struct ns_input_reader {
    /* from the spec (copies) */
    ns_input_format format;
    bool is_chat;
    char *prompt_tmpl, *system_tmpl, *user_tmpl; /* the ones in use; NULL = not rendered */
    char *id_field;
    ns_sampling sampling;
    int n; /* the job's completions per item */
    /* files */
    char **files;
    size_t n_files, i_file;
    FILE *f;
    int64_t line_no;
    int64_t index;
    /* read buffer and the current line */
    char *rbuf; /* (NS_INPUT_CHUNK) */
    size_t rpos, rlen;
    char *line; /* (line_cap), grows to at most NS_INPUT_MAX_LINE + 1 */
    size_t line_cap;
    /* the current record's strings */
    char *prompt, *system, *user;
};

static char *dup_or_null(const char *s, bool *oom) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = true;
    return d;
}

void ns_input_close(ns_input_reader *r) {
    if (!r) return;
    if (r->f) fclose(r->f);
    for (size_t i = 0; i < r->n_files; i++) free(r->files[i]);
    free(r->files);
    free(r->rbuf);
    free(r->line);
    free(r->prompt);
    free(r->system);
    free(r->user);
    free(r->prompt_tmpl);
    free(r->system_tmpl);
    free(r->user_tmpl);
    free(r->id_field);
    free(r);
}

static ns_status lookup_none(void *ctx, const char *name, sbuf *out, ns_error *err) {
    (void)ctx, (void)name, (void)out, (void)err;
    return NS_OK;
}

/* A template's syntax, and for text inputs its fields, are the spec's fault, not a line's:
 * they fail the open, before any work. */
static ns_status check_templates(ns_input_reader *r, ns_error *err) {
    const char *names[3] = {"prompt_template", "system_template", "user_template"};
    const char *tmpls[3] = {r->prompt_tmpl, r->system_tmpl, r->user_tmpl};
    text_ctx t = {"", 0};
    for (int i = 0; i < 3; i++) {
        if (!tmpls[i]) continue;
        char *out = NULL;
        ns_error e;
        ns_error_clear(&e);
        ns_status st = r->format == NS_INPUT_TEXT ? render_with(tmpls[i], lookup_text, &t, &out, &e)
                                                  : render_with(tmpls[i], lookup_none, NULL, &out, &e);
        free(out);
        if (st != NS_OK) return ns_error_set(err, st, "input: %s: %s", names[i], e.msg);
    }
    return NS_OK;
}

ns_status ns_input_open(const ns_job_spec *spec, ns_input_reader **out, ns_error *err) {
    *out = NULL;
    if (!spec || !spec->input_path || !spec->input_path[0])
        return ns_error_set(err, NS_ERR_INVALID, "input: no input path in the spec");
    ns_input_reader *r = calloc(1, sizeof *r);
    if (!r) return ns_error_set(err, NS_ERR_NOMEM, "input: out of memory");
    ns_status st = NS_OK;
    glob_t g;
    bool has_glob = false, oom = false;

    r->format = spec->input_format;
    r->sampling = spec->sampling;
    r->n = spec->n;
    if (r->format != NS_INPUT_JSONL && r->format != NS_INPUT_OPENAI_BATCH && r->format != NS_INPUT_TEXT) {
        st = ns_error_set(err, NS_ERR_INVALID, "input: unknown input format %d", (int)r->format);
        goto fail;
    }
    if (r->format != NS_INPUT_OPENAI_BATCH) {
        /* text inputs default to the line itself: {{text}} */
        const char *def = r->format == NS_INPUT_TEXT ? "{{text}}" : NULL;
        r->is_chat = spec->user_template != NULL || (spec->chat && !spec->prompt_template);
        if (r->is_chat) {
            r->user_tmpl = dup_or_null(spec->user_template ? spec->user_template : def, &oom);
            r->system_tmpl = dup_or_null(spec->system_template, &oom);
            if (!r->user_tmpl && !oom) {
                st = ns_error_set(err, NS_ERR_INVALID, "input: the spec has no user_template for jsonl input");
                goto fail;
            }
        } else {
            r->prompt_tmpl = dup_or_null(spec->prompt_template ? spec->prompt_template : def, &oom);
            if (!r->prompt_tmpl && !oom) {
                st = ns_error_set(err, NS_ERR_INVALID,
                                  "input: the spec has neither prompt_template nor user_template for "
                                  "jsonl input");
                goto fail;
            }
        }
        if (r->format == NS_INPUT_JSONL) r->id_field = dup_or_null(spec->id_field, &oom);
    }
    if (!oom && (st = check_templates(r, err)) != NS_OK) goto fail;
    r->rbuf = malloc(NS_INPUT_CHUNK);
    if (oom || !r->rbuf) {
        st = ns_error_set(err, NS_ERR_NOMEM, "input: out of memory");
        goto fail;
    }

    int rc = glob(spec->input_path, GLOB_ERR, NULL, &g);
    if (rc == GLOB_NOMATCH) {
        st = ns_error_set(err, NS_ERR_NOT_FOUND, "input: no file matches '%s'", spec->input_path);
        goto fail;
    }
    if (rc == GLOB_NOSPACE) {
        st = ns_error_set(err, NS_ERR_NOMEM, "input: out of memory expanding '%s'", spec->input_path);
        goto fail;
    }
    if (rc != 0) {
        st = ns_error_set(err, NS_ERR_IO, "input: cannot read a directory while expanding '%s': %s",
                          spec->input_path, strerror(errno));
        goto fail;
    }
    has_glob = true;
    /* glob sorts its matches; directories among them are skipped */
    r->files = ns_calloc_array(g.gl_pathc ? g.gl_pathc : 1, sizeof *r->files);
    if (!r->files) {
        st = ns_error_set(err, NS_ERR_NOMEM, "input: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < g.gl_pathc; i++) {
        struct stat sb;
        if (stat(g.gl_pathv[i], &sb) == 0 && S_ISDIR(sb.st_mode)) continue;
        if (!(r->files[r->n_files] = strdup(g.gl_pathv[i]))) {
            st = ns_error_set(err, NS_ERR_NOMEM, "input: out of memory");
            goto fail;
        }
        r->n_files++;
    }
    if (r->n_files == 0) {
        st = ns_error_set(err, NS_ERR_NOT_FOUND, "input: no file matches '%s' (only directories)",
                          spec->input_path);
        goto fail;
    }
    globfree(&g);
    has_glob = false;

    /* open the first file now so that an unreadable input fails before any work */
    r->f = fopen(r->files[0], "rb");
    if (!r->f) {
        st = ns_error_set(err, NS_ERR_IO, "input: cannot open '%s': %s", r->files[0], strerror(errno));
        goto fail;
    }
    *out = r;
    return NS_OK;

fail:
    if (has_glob) globfree(&g);
    ns_input_close(r);
    return st;
}

/* Reads the next line of r->f into r->line (without its '\n', NUL-terminated).
 * Returns 1 with *len set (or *too_long set, the line dropped), 0 at the end of the file,
 * or NS_ERR_IO. */
static int read_line(ns_input_reader *r, size_t *len, bool *too_long, ns_error *err) {
    size_t n_line = 0;
    bool any = false;
    *too_long = false;
    for (;;) {
        if (r->rpos == r->rlen) {
            r->rpos = 0;
            r->rlen = fread(r->rbuf, 1, NS_INPUT_CHUNK, r->f);
            if (r->rlen == 0) {
                if (ferror(r->f))
                    return ns_error_set(err, NS_ERR_IO, "input: cannot read '%s': %s",
                                        r->files[r->i_file], strerror(errno));
                if (!any) return 0;
                break; /* a last line without '\n' */
            }
        }
        any = true;
        const char *start = r->rbuf + r->rpos;
        size_t avail = r->rlen - r->rpos;
        const char *nl = memchr(start, '\n', avail);
        size_t n = nl ? (size_t)(nl - start) : avail;
        r->rpos += n + (nl ? 1 : 0);
        if (!*too_long) {
            if (n > NS_INPUT_MAX_LINE - n_line) {
                *too_long = true;
            } else {
                if (n_line + n + 1 > r->line_cap) {
                    size_t cap = r->line_cap ? r->line_cap : 4096;
                    while (cap < n_line + n + 1) cap *= 2;
                    if (cap > (size_t)NS_INPUT_MAX_LINE + 1) cap = (size_t)NS_INPUT_MAX_LINE + 1;
                    char *p = realloc(r->line, cap);
                    if (!p) return ns_error_set(err, NS_ERR_NOMEM, "input: out of memory (%zu bytes)", cap);
                    r->line = p;
                    r->line_cap = cap;
                }
                memcpy(r->line + n_line, start, n);
                n_line += n;
            }
        }
        if (nl) break;
    }
    if (*too_long) n_line = 0;
    if (!r->line) { /* an empty last read still returns a valid string */
        if (!(r->line = malloc(1))) return ns_error_set(err, NS_ERR_NOMEM, "input: out of memory");
        r->line_cap = 1;
    }
    r->line[n_line] = '\0';
    *len = n_line;
    return 1;
}

static const char *base_name(const char *path) {
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void free_strings(ns_input_reader *r, ns_input_record *rec) {
    free(r->prompt);
    free(r->system);
    free(r->user);
    r->prompt = r->system = r->user = NULL;
    rec->prompt = rec->system = rec->user = NULL;
}

/* Marks rec bad: error = "file:line: " + message. Returns 1 (a record). */
static int bad(ns_input_reader *r, ns_input_record *rec, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(ns_input_reader *r, ns_input_record *rec, const char *fmt, ...) {
    free_strings(r, rec);
    int n = snprintf(rec->error, sizeof rec->error, "%s:%lld: ", rec->file, (long long)rec->line);
    if (n < 0 || (size_t)n >= sizeof rec->error) n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rec->error + n, sizeof rec->error - (size_t)n, fmt, ap);
    va_end(ap);
    if (!rec->error[0]) snprintf(rec->error, sizeof rec->error, "bad line");
    return 1;
}

/* Renders the spec's templates into the record (jsonl and text). */
static int render_record(ns_input_reader *r, ns_input_record *rec, field_lookup_fn lookup, void *ctx) {
    ns_error e;
    ns_error_clear(&e);
    if (r->is_chat) {
        if (r->system_tmpl && render_with(r->system_tmpl, lookup, ctx, &r->system, &e) != NS_OK)
            return bad(r, rec, "system_template: %s", e.msg);
        if (render_with(r->user_tmpl, lookup, ctx, &r->user, &e) != NS_OK)
            return bad(r, rec, "user_template: %s", e.msg);
    } else {
        if (render_with(r->prompt_tmpl, lookup, ctx, &r->prompt, &e) != NS_OK)
            return bad(r, rec, "prompt_template: %s", e.msg);
    }
    rec->prompt = r->prompt;
    rec->system = r->system;
    rec->user = r->user;
    return 1;
}

static int parse_jsonl(ns_input_reader *r, ns_input_record *rec, const char *line, size_t len) {
    json_error_t jerr;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        free_strings(r, rec);
        snprintf(rec->error, sizeof rec->error, "%s:%lld:%d: invalid JSON: %s", rec->file,
                 (long long)rec->line, jerr.column, jerr.text);
        return 1;
    }
    int ret;
    if (!json_is_object(root)) {
        ret = bad(r, rec, "expected a JSON object, got %s", json_type_word(root));
        goto done;
    }
    if (r->id_field) {
        json_t *id = json_lookup(root, r->id_field);
        if (!id) {
            ret = bad(r, rec, "id field '%s' is missing", r->id_field);
            goto done;
        }
        if (json_is_string(id)) {
            size_t n = json_string_length(id);
            if (n == 0 || n >= sizeof rec->custom_id || memchr(json_string_value(id), '\0', n)) {
                ret = bad(r, rec, "id field '%s' must be 1 to %zu bytes, got %zu", r->id_field,
                          sizeof rec->custom_id - 1, n);
                goto done;
            }
            memcpy(rec->custom_id, json_string_value(id), n + 1);
        } else if (json_is_integer(id)) {
            snprintf(rec->custom_id, sizeof rec->custom_id, "%lld", (long long)json_integer_value(id));
        } else {
            ret = bad(r, rec, "id field '%s' must be a string or an integer, got %s", r->id_field,
                      json_type_word(id));
            goto done;
        }
    }
    ret = render_record(r, rec, lookup_json, root);
done:
    json_decref(root);
    return ret;
}

/* ---- openai-batch ----------------------------------------------------------------- */

/* Reads an optional number body.key into *out. Returns 1 if present, 0 if absent or null,
 * -1 after marking rec bad. */
static int get_number(ns_input_reader *r, ns_input_record *rec, json_t *body, const char *key, double *out) {
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) {
        bad(r, rec, "body.%s: expected a number, got %s", key, json_type_word(v));
        return -1;
    }
    *out = json_number_value(v);
    return 1;
}

/* Same for an integer in [lo, hi]. */
static int get_int(ns_input_reader *r, ns_input_record *rec, json_t *body, const char *key, long long lo,
                   long long hi, long long *out) {
    json_t *v = json_object_get(body, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) {
        bad(r, rec, "body.%s: expected an integer, got %s", key, json_type_word(v));
        return -1;
    }
    long long x = (long long)json_integer_value(v);
    if (x < lo || x > hi) {
        bad(r, rec, "body.%s = %lld is out of range [%lld, %lld]", key, x, lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

static int set_stop(ns_input_reader *r, ns_input_record *rec, ns_sampling *s, int i, const json_t *v,
                    const char *where) {
    if (!json_is_string(v)) {
        bad(r, rec, "%s: expected a string, got %s", where, json_type_word(v));
        return -1;
    }
    size_t n = json_string_length(v);
    if (n == 0 || n >= NS_MAX_STOP_LEN) {
        bad(r, rec, "%s: a stop string has 1 to %d bytes, got %zu", where, NS_MAX_STOP_LEN - 1, n);
        return -1;
    }
    memcpy(s->stop[i], json_string_value(v), n + 1);
    return 0;
}

/* Applies body's sampling fields over the spec's. Returns 0, or -1 after marking rec bad. */
static int apply_overrides(ns_input_reader *r, ns_input_record *rec, json_t *body) {
    ns_sampling *s = &rec->sampling;
    bool any = false;
    double d;
    long long x;
    int k;
#define NUM_FIELD(key, field)                                                            \
    if ((k = get_number(r, rec, body, key, &d)) < 0) return -1;                          \
    if (k) {                                                                             \
        s->field = (float)d;                                                             \
        any = true;                                                                      \
    }
    NUM_FIELD("temperature", temperature)
    NUM_FIELD("top_p", top_p)
    NUM_FIELD("presence_penalty", presence_penalty)
    NUM_FIELD("frequency_penalty", frequency_penalty)
#undef NUM_FIELD
    if ((k = get_int(r, rec, body, "max_tokens", 1, INT32_MAX, &x)) < 0) return -1;
    if (k) s->max_tokens = (int32_t)x, any = true;
    if ((k = get_int(r, rec, body, "max_completion_tokens", 1, INT32_MAX, &x)) < 0) return -1;
    if (k) s->max_tokens = (int32_t)x, any = true; /* the newer name wins */
    if ((k = get_int(r, rec, body, "seed", 0, LLONG_MAX, &x)) < 0) return -1;
    if (k) s->seed = (uint64_t)x, any = true;

    json_t *stop = json_object_get(body, "stop");
    if (stop && !json_is_null(stop)) {
        any = true;
        if (json_is_string(stop)) {
            if (set_stop(r, rec, s, 0, stop, "body.stop") < 0) return -1;
            s->n_stop = 1;
        } else if (json_is_array(stop)) {
            size_t n = json_array_size(stop);
            if (n > NS_MAX_STOP) {
                bad(r, rec, "body.stop: at most %d stop strings, got %zu", NS_MAX_STOP, n);
                return -1;
            }
            for (size_t i = 0; i < n; i++) {
                char where[32];
                snprintf(where, sizeof where, "body.stop[%zu]", i);
                if (set_stop(r, rec, s, (int)i, json_array_get(stop, i), where) < 0) return -1;
            }
            s->n_stop = (int32_t)n;
        } else {
            bad(r, rec, "body.stop: expected a string or an array of strings, got %s", json_type_word(stop));
            return -1;
        }
    }

    /* n completions per item is a job setting (ns_input_record has no per-line n): a line
     * may repeat the job's value but not change it */
    if ((k = get_int(r, rec, body, "n", 1, 64, &x)) < 0) return -1;
    if (k) {
        int job_n = r->n > 0 ? r->n : 1;
        if (x != job_n) {
            bad(r, rec, "body.n = %lld differs from the job's n = %d (n is set per job, in the spec)", x,
                job_n);
            return -1;
        }
    }

    json_t *lp = json_object_get(body, "logprobs");
    bool has_lp = lp && !json_is_null(lp);
    if (has_lp && !json_is_boolean(lp)) {
        bad(r, rec, "body.logprobs: expected a boolean, got %s", json_type_word(lp));
        return -1;
    }
    long long top = 0;
    if ((k = get_int(r, rec, body, "top_logprobs", 0, NS_MAX_LOGPROBS, &top)) < 0) return -1;
    if (k && !(has_lp && json_is_true(lp))) {
        bad(r, rec, "body.top_logprobs needs body.logprobs = true");
        return -1;
    }
    if (has_lp) {
        s->n_logprobs = json_is_true(lp) ? (int32_t)top : -1;
        any = true;
    }

    if (any) {
        ns_error e;
        ns_error_clear(&e);
        if (ns_sampling_validate(s, INT32_MAX, &e) != NS_OK) {
            bad(r, rec, "body: %s", e.msg);
            return -1;
        }
        rec->has_sampling = true;
    }
    return 0;
}

/* Appends a message's content (a string, or an array of {type: "text", text} parts) to b. */
static int get_content(ns_input_reader *r, ns_input_record *rec, const json_t *content, size_t i_msg,
                       char **out) {
    sbuf b = {0};
    ns_error e;
    ns_error_clear(&e);
    *out = NULL;
    if (json_is_string(content)) {
        if (sb_append(&b, json_string_value(content), json_string_length(content), &e) != NS_OK) goto oom;
    } else if (json_is_array(content)) {
        for (size_t j = 0; j < json_array_size(content); j++) {
            json_t *part = json_array_get(content, j);
            json_t *type = json_object_get(part, "type");
            json_t *text = json_object_get(part, "text");
            if (!json_is_object(part) || !json_is_string(type)) {
                free(b.p);
                return bad(r, rec, "body.messages[%zu].content[%zu]: expected an object with a type",
                           i_msg, j);
            }
            if (strcmp(json_string_value(type), "text") != 0) {
                free(b.p);
                return bad(r, rec, "body.messages[%zu].content[%zu].type '%.64s' is not supported (only 'text')",
                           i_msg, j, json_string_value(type));
            }
            if (!json_is_string(text)) {
                free(b.p);
                return bad(r, rec, "body.messages[%zu].content[%zu].text: expected a string", i_msg, j);
            }
            if (sb_append(&b, json_string_value(text), json_string_length(text), &e) != NS_OK) goto oom;
        }
        if (!b.p && sb_append(&b, "", 0, &e) != NS_OK) goto oom;
    } else {
        return bad(r, rec, "body.messages[%zu].content: expected a string or an array of text parts, got %s",
                   i_msg, content ? json_type_word(content) : "nothing");
    }
    *out = b.p;
    return 0;
oom:
    free(b.p);
    return bad(r, rec, "%s", e.msg);
}

static int parse_openai(ns_input_reader *r, ns_input_record *rec, const char *line, size_t len) {
    json_error_t jerr;
    json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!root) {
        free_strings(r, rec);
        snprintf(rec->error, sizeof rec->error, "%s:%lld:%d: invalid JSON: %s", rec->file,
                 (long long)rec->line, jerr.column, jerr.text);
        return 1;
    }
    int ret = 1;
    if (!json_is_object(root)) {
        bad(r, rec, "expected a JSON object, got %s", json_type_word(root));
        goto done;
    }
    json_t *id = json_object_get(root, "custom_id");
    if (!id) {
        bad(r, rec, "custom_id is missing");
        goto done;
    }
    if (!json_is_string(id)) {
        bad(r, rec, "custom_id: expected a string, got %s", json_type_word(id));
        goto done;
    }
    size_t n_id = json_string_length(id);
    if (n_id == 0 || n_id >= sizeof rec->custom_id || memchr(json_string_value(id), '\0', n_id)) {
        bad(r, rec, "custom_id must be 1 to %zu bytes, got %zu", sizeof rec->custom_id - 1, n_id);
        goto done;
    }
    memcpy(rec->custom_id, json_string_value(id), n_id + 1);

    json_t *method = json_object_get(root, "method");
    if (!json_is_string(method) || strcmp(json_string_value(method), "POST") != 0) {
        bad(r, rec, "method must be \"POST\"");
        goto done;
    }
    json_t *url = json_object_get(root, "url");
    if (!json_is_string(url)) {
        bad(r, rec, "url is missing (expected \"/v1/chat/completions\" or \"/v1/completions\")");
        goto done;
    }
    bool is_chat_url = strcmp(json_string_value(url), "/v1/chat/completions") == 0;
    if (!is_chat_url && strcmp(json_string_value(url), "/v1/completions") != 0) {
        bad(r, rec, "url '%.64s' is not supported (expected \"/v1/chat/completions\" or \"/v1/completions\")",
            json_string_value(url));
        goto done;
    }
    json_t *body = json_object_get(root, "body");
    if (!json_is_object(body)) {
        bad(r, rec, "body: expected an object, got %s", body ? json_type_word(body) : "nothing");
        goto done;
    }

    if (is_chat_url) {
        json_t *msgs = json_object_get(body, "messages");
        if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
            bad(r, rec, "body.messages: expected a non-empty array, got %s",
                msgs ? (json_is_array(msgs) ? "an empty array" : json_type_word(msgs)) : "nothing");
            goto done;
        }
        size_t i_user = SIZE_MAX;
        for (size_t i = 0; i < json_array_size(msgs); i++) {
            json_t *m = json_array_get(msgs, i);
            json_t *role = json_object_get(m, "role");
            if (!json_is_object(m) || !json_is_string(role)) {
                bad(r, rec, "body.messages[%zu]: expected an object with a string role", i);
                goto done;
            }
            const char *rs = json_string_value(role);
            if (strcmp(rs, "system") == 0 || strcmp(rs, "developer") == 0) {
                if (i != 0) {
                    bad(r, rec, "body.messages[%zu]: at most one system message, and only first", i);
                    goto done;
                }
                if (get_content(r, rec, json_object_get(m, "content"), i, &r->system) != 0) goto done;
            } else if (strcmp(rs, "user") == 0) {
                i_user = i;
            } else {
                bad(r, rec, "body.messages[%zu].role '%.32s' is not supported", i, rs);
                goto done;
            }
        }
        if (i_user == SIZE_MAX) {
            bad(r, rec, "body.messages has no user message");
            goto done;
        }
        if (get_content(r, rec, json_object_get(json_array_get(msgs, i_user), "content"), i_user,
                        &r->user) != 0)
            goto done;
    } else {
        json_t *prompt = json_object_get(body, "prompt");
        if (!json_is_string(prompt)) {
            bad(r, rec, "body.prompt: expected a string, got %s", prompt ? json_type_word(prompt) : "nothing");
            goto done;
        }
        if (!(r->prompt = strdup(json_string_value(prompt)))) {
            bad(r, rec, "out of memory");
            goto done;
        }
    }
    if (apply_overrides(r, rec, body) != 0) goto done;
    rec->prompt = r->prompt;
    rec->system = r->system;
    rec->user = r->user;
done:
    json_decref(root);
    return ret;
}

/* ---- next ------------------------------------------------------------------------- */

static bool is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\v' || s[i] == '\f')) return false;
    return true;
}

int ns_input_next(ns_input_reader *r, ns_input_record *rec, ns_error *err) {
    free(r->prompt);
    free(r->system);
    free(r->user);
    r->prompt = r->system = r->user = NULL;
    memset(rec, 0, sizeof *rec);
    for (;;) {
        if (!r->f) {
            if (r->i_file + 1 >= r->n_files) {
                r->i_file = r->n_files;
                return 0;
            }
            r->i_file++;
            r->f = fopen(r->files[r->i_file], "rb");
            if (!r->f)
                return ns_error_set(err, NS_ERR_IO, "input: cannot open '%s': %s", r->files[r->i_file],
                                    strerror(errno));
            r->line_no = 0;
            r->rpos = r->rlen = 0;
        }
        size_t len = 0;
        bool too_long = false;
        int rc = read_line(r, &len, &too_long, err);
        if (rc < 0) return rc;
        if (rc == 0) {
            fclose(r->f);
            r->f = NULL;
            continue;
        }
        r->line_no++;
        char *line = r->line;
        if (r->line_no == 1 && len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) line += 3, len -= 3;
        if (len > 0 && line[len - 1] == '\r') line[--len] = '\0';
        if (!too_long && is_blank(line, len)) continue;

        rec->file = r->files[r->i_file];
        rec->line = r->line_no;
        rec->index = r->index++;
        rec->sampling = r->sampling;
        snprintf(rec->custom_id, sizeof rec->custom_id, "%s:%lld", base_name(rec->file),
                 (long long)rec->line);
        if (too_long) return bad(r, rec, "line is longer than %u bytes", NS_INPUT_MAX_LINE);
        switch (r->format) {
        case NS_INPUT_JSONL: return parse_jsonl(r, rec, line, len);
        case NS_INPUT_OPENAI_BATCH: return parse_openai(r, rec, line, len);
        case NS_INPUT_TEXT: {
            text_ctx t = {line, len};
            return render_record(r, rec, lookup_text, &t);
        }
        }
        return bad(r, rec, "unknown input format");
    }
}
