/* spec.c: the job spec (jobs/spec.h): YAML text -> a validated ns_job_spec.
 *
 * libyaml's document API loads the file into a node graph in which every node carries
 * its line and column. We walk only the structure we know (top-level mapping, its
 * sections, the few lists), so neither the nesting depth of a hostile file nor an alias
 * cycle can make this code recurse or loop. Each field is checked where it is read (type,
 * range, enum) and every error names file:line:col and the dotted field; unknown and
 * duplicate fields are errors. An empty value (`key:`, `~`, `null`) counts as an absent
 * field. The parse writes straight into *out; on any error ns_job_spec_free releases what
 * was set, so the caller always sees either a complete spec or a zeroed struct.
 * Reference of the format: schemas/job-spec.md.
 */
#include "spec.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define SPEC_VERSION 1
#define SPEC_MAX_NAME 128            /* bytes */
#define SPEC_MAX_PATH 4095           /* bytes, before resolution */
#define SPEC_MAX_ID_FIELD 256        /* bytes */
#define SPEC_MAX_TEMPLATE (1 << 20)  /* bytes, each prompt template */
#define SPEC_MAX_FILE (64u << 20)    /* bytes, ns_job_spec_load */
#define SPEC_MAX_FIELDS 16           /* fields of the largest section */
#define SPEC_SHOW_MAX 40             /* bytes of a bad value quoted in a message */

typedef struct spec_parser {
    const char *path;    /* spec path for messages ("<spec>" when none was given) */
    const char *text;    /* the YAML bytes (for reader-error positions) */
    size_t len;
    yaml_document_t *doc;
    ns_error *err;
    ns_job_spec *out;
} spec_parser;

/* The fields of one mapping, by index in the section's name table. val is NULL when the
 * field is absent or empty; key is set whenever the field was written. */
typedef struct spec_fields {
    yaml_node_t *key[SPEC_MAX_FIELDS];
    yaml_node_t *val[SPEC_MAX_FIELDS];
} spec_fields;

/* ---- messages ------------------------------------------------------------------------ */

static ns_status fail_at(spec_parser *p, const yaml_node_t *node, ns_status code,
                         const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* "<path>:<line>:<col>: <field>: <msg>"; without a node "<path>: <field>: <msg>"; a NULL
 * field leaves out "<field>: ". */
static ns_status fail_at(spec_parser *p, const yaml_node_t *node, ns_status code,
                         const char *field, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char where[300];
    if (node)
        snprintf(where, sizeof where, "%.240s:%zu:%zu", p->path, node->start_mark.line + 1,
                 node->start_mark.column + 1);
    else
        snprintf(where, sizeof where, "%.240s", p->path);
    if (field) return ns_error_set(p->err, code, "%s: %s: %s", where, field, msg);
    return ns_error_set(p->err, code, "%s: %s", where, msg);
}

static bool is_null(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    return len == 0 || (len == 1 && v[0] == '~') ||
           (len == 4 && (!memcmp(v, "null", 4) || !memcmp(v, "Null", 4) ||
                         !memcmp(v, "NULL", 4)));
}

/* What a node is, for "got ...": "'abc'" (quoted, cut to SPEC_SHOW_MAX bytes on a UTF-8
 * boundary, control bytes as '?'), "a mapping", "a list", "an empty value". */
static const char *describe(const yaml_node_t *n, char *buf, size_t cap) {
    if (!n) return "nothing";
    if (n->type == YAML_MAPPING_NODE) return "a mapping";
    if (n->type == YAML_SEQUENCE_NODE) return "a list";
    if (n->type != YAML_SCALAR_NODE) return "nothing";
    if (is_null(n)) return "an empty value";
    const unsigned char *v = n->data.scalar.value;
    size_t len = n->data.scalar.length, take = len;
    if (take > SPEC_SHOW_MAX) {
        take = SPEC_SHOW_MAX;
        while (take > 0 && (v[take] & 0xC0) == 0x80) take--; /* do not split a character */
    }
    NS_ASSERT(cap >= SPEC_SHOW_MAX + 8);
    size_t j = 0;
    buf[j++] = '\'';
    for (size_t i = 0; i < take; i++) buf[j++] = (v[i] < 0x20 || v[i] == 0x7f) ? '?' : (char)v[i];
    if (take < len) {
        memcpy(buf + j, "...", 3);
        j += 3;
    }
    buf[j++] = '\'';
    buf[j] = '\0';
    return buf;
}

/* Edit distance of two short strings (for "did you mean"); large when either is long. */
static int edit_distance(const char *a, size_t na, const char *b) {
    size_t nb = strlen(b);
    if (na > 31 || nb > 31) return 99;
    int prev[32], cur[32];
    for (size_t j = 0; j <= nb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = NS_MIN(sub, NS_MIN(del, ins));
        }
        memcpy(prev, cur, sizeof prev);
    }
    return prev[nb];
}

/* ---- mappings -------------------------------------------------------------------------- */

static const char *type_name(const yaml_node_t *n) {
    return n->type == YAML_MAPPING_NODE ? "a mapping"
           : n->type == YAML_SEQUENCE_NODE ? "a list"
                                           : "a scalar";
}

/* Reads the fields of mapping `map` (section "" for the top level, else "sampling" etc.)
 * into fs by their index in names[n_names]. Unknown, duplicate and non-scalar keys are
 * errors. */
static ns_status read_fields(spec_parser *p, yaml_node_t *map, const char *section,
                             const char *const *names, int n_names, spec_fields *fs) {
    NS_ASSERT(n_names <= SPEC_MAX_FIELDS);
    memset(fs, 0, sizeof *fs);
    char buf[SPEC_SHOW_MAX + 8];
    for (yaml_node_pair_t *pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top;
         pair++) {
        yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);
        yaml_node_t *v = yaml_document_get_node(p->doc, pair->value);
        if (!k || !v) return fail_at(p, map, NS_ERR_FORMAT, section[0] ? section : NULL, "broken mapping");
        if (k->type != YAML_SCALAR_NODE)
            return fail_at(p, k, NS_ERR_INVALID, section[0] ? section : NULL,
                           "expected a field name, got %s", type_name(k));
        if (is_null(k))
            return fail_at(p, k, NS_ERR_INVALID, section[0] ? section : NULL,
                           "expected a field name, got an empty value");
        const char *ks = (const char *)k->data.scalar.value;
        size_t kn = k->data.scalar.length;
        int idx = -1;
        for (int i = 0; i < n_names; i++) {
            if (strlen(names[i]) == kn && memcmp(names[i], ks, kn) == 0) {
                idx = i;
                break;
            }
        }
        if (idx < 0) {
            char list[300];
            size_t off = 0;
            int best = -1, best_d = 3;
            for (int i = 0; i < n_names; i++) {
                off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "",
                                        names[i]);
                if (off >= sizeof list) off = sizeof list - 1;
                int d = edit_distance(ks, kn, names[i]);
                if (d < best_d) best_d = d, best = i;
            }
            char hint[80] = "";
            if (best >= 0) snprintf(hint, sizeof hint, "; did you mean '%s'?", names[best]);
            const char *shown = describe(k, buf, sizeof buf);
            if (section[0])
                return fail_at(p, k, NS_ERR_INVALID, NULL,
                               "unknown field '%s.%.*s' (expected one of: %s)%s", section,
                               (int)(strlen(shown) - 2), shown + 1, list, hint);
            return fail_at(p, k, NS_ERR_INVALID, NULL,
                           "unknown field %s (expected one of: %s)%s", shown, list, hint);
        }
        if (fs->key[idx]) {
            char field[96];
            snprintf(field, sizeof field, "%s%s%s", section, section[0] ? "." : "", names[idx]);
            return fail_at(p, k, NS_ERR_INVALID, field,
                           "duplicate field (first given at line %zu, column %zu)",
                           fs->key[idx]->start_mark.line + 1, fs->key[idx]->start_mark.column + 1);
        }
        fs->key[idx] = k;
        fs->val[idx] = is_null(v) ? NULL : v;
    }
    return NS_OK;
}

/* A section value must be a mapping. */
static ns_status need_mapping(spec_parser *p, yaml_node_t *v, const char *field) {
    if (v->type == YAML_MAPPING_NODE) return NS_OK;
    char buf[SPEC_SHOW_MAX + 8];
    return fail_at(p, v, NS_ERR_INVALID, field, "expected a mapping, got %s",
                   describe(v, buf, sizeof buf));
}

/* ---- scalars --------------------------------------------------------------------------- */

/* Copies a string of min_len..max_len bytes (no NUL bytes) into *dst (malloc'd). */
static ns_status get_string(spec_parser *p, yaml_node_t *v, const char *field, size_t min_len,
                            size_t max_len, char **dst) {
    char buf[SPEC_SHOW_MAX + 8];
    if (v->type != YAML_SCALAR_NODE)
        return fail_at(p, v, NS_ERR_INVALID, field, "expected a string, got %s",
                       describe(v, buf, sizeof buf));
    size_t len = v->data.scalar.length;
    const char *s = (const char *)v->data.scalar.value;
    if (len < min_len)
        return fail_at(p, v, NS_ERR_INVALID, field, "expected a non-empty string, got ''");
    if (len > max_len)
        return fail_at(p, v, NS_ERR_INVALID, field,
                       "expected a string of at most %zu bytes, got %zu bytes", max_len, len);
    if (memchr(s, '\0', len))
        return fail_at(p, v, NS_ERR_INVALID, field, "expected a string, got one with a NUL byte");
    char *c = malloc(len + 1);
    if (!c) return fail_at(p, v, NS_ERR_NOMEM, field, "out of memory (%zu bytes)", len + 1);
    memcpy(c, s, len);
    c[len] = '\0';
    free(*dst);
    *dst = c;
    return NS_OK;
}

/* An integer in [lo, hi] (or 0 when zero_ok), written in decimal, the whole scalar. */
static ns_status get_int(spec_parser *p, yaml_node_t *v, const char *field, long long lo,
                         long long hi, bool zero_ok, long long *out) {
    char buf[SPEC_SHOW_MAX + 8], range[96];
    if (zero_ok)
        snprintf(range, sizeof range, "0 (engine default) or an integer in [%lld, %lld]", lo, hi);
    else
        snprintf(range, sizeof range, "an integer in [%lld, %lld]", lo, hi);
    if (v->type != YAML_SCALAR_NODE || v->data.scalar.length == 0)
        goto bad;
    const char *s = (const char *)v->data.scalar.value;
    size_t len = v->data.scalar.length;
    if (!(s[0] == '-' || s[0] == '+' || (s[0] >= '0' && s[0] <= '9'))) goto bad;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(s, &end, 10);
    if (end != s + len) goto bad;
    if (errno == ERANGE || x < lo || x > hi) {
        if (!(zero_ok && x == 0 && errno != ERANGE)) goto bad;
    }
    *out = x;
    return NS_OK;
bad:
    return fail_at(p, v, NS_ERR_INVALID, field, "expected %s, got %s", range,
                   describe(v, buf, sizeof buf));
}

enum { OPEN_LO = 1, OPEN_HI = 2 };

/* A finite number in the range lo..hi (open ends per flags), also finite as a float;
 * range_text is how the range reads in messages, e.g. "(0, 1]". */
static ns_status get_float(spec_parser *p, yaml_node_t *v, const char *field, double lo,
                           double hi, int flags, const char *range_text, float *out) {
    char buf[SPEC_SHOW_MAX + 8];
    if (v->type != YAML_SCALAR_NODE || v->data.scalar.length == 0) goto bad;
    const char *s = (const char *)v->data.scalar.value;
    size_t len = v->data.scalar.length;
    if (!(s[0] == '-' || s[0] == '+' || s[0] == '.' || (s[0] >= '0' && s[0] <= '9'))) goto bad;
    char *end = NULL;
    errno = 0;
    double x = strtod(s, &end);
    if (end != s + len || memchr(s, 'x', len) || memchr(s, 'X', len)) goto bad; /* no hex */
    if (!isfinite(x) || !isfinite((float)x)) goto bad;
    bool lo_ok = (flags & OPEN_LO) ? x > lo : x >= lo;
    bool hi_ok = (flags & OPEN_HI) ? x < hi : x <= hi;
    if (!(lo_ok && hi_ok)) goto bad;
    *out = (float)x;
    return NS_OK;
bad:
    return fail_at(p, v, NS_ERR_INVALID, field, "expected a number in %s, got %s", range_text,
                   describe(v, buf, sizeof buf));
}

/* An unsigned 64-bit integer (seed). */
static ns_status get_u64(spec_parser *p, yaml_node_t *v, const char *field, uint64_t *out) {
    char buf[SPEC_SHOW_MAX + 8];
    if (v->type != YAML_SCALAR_NODE || v->data.scalar.length == 0) goto bad;
    const char *s = (const char *)v->data.scalar.value;
    size_t len = v->data.scalar.length;
    if (!(s[0] >= '0' && s[0] <= '9')) goto bad;
    char *end = NULL;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (end != s + len || errno == ERANGE) goto bad;
    *out = (uint64_t)x;
    return NS_OK;
bad:
    return fail_at(p, v, NS_ERR_INVALID, field,
                   "expected an integer in [0, 18446744073709551615], got %s",
                   describe(v, buf, sizeof buf));
}

/* One of names[n] -> its index. */
static ns_status get_enum(spec_parser *p, yaml_node_t *v, const char *field,
                          const char *const *names, int n, int *out) {
    char buf[SPEC_SHOW_MAX + 8], list[200];
    if (v->type == YAML_SCALAR_NODE) {
        for (int i = 0; i < n; i++) {
            if (strlen(names[i]) == v->data.scalar.length &&
                memcmp(names[i], v->data.scalar.value, v->data.scalar.length) == 0) {
                *out = i;
                return NS_OK;
            }
        }
    }
    size_t off = 0;
    for (int i = 0; i < n && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", names[i]);
    return fail_at(p, v, NS_ERR_INVALID, field, "expected one of: %s; got %s", list,
                   describe(v, buf, sizeof buf));
}

/* "dir/rel" where dir is the spec file's directory; rel unchanged when absolute or when
 * the spec path has no directory. malloc'd; NULL on OOM. */
static char *resolve_path(const char *spec_path, const char *rel) {
    const char *slash = spec_path ? strrchr(spec_path, '/') : NULL;
    size_t nrel = strlen(rel);
    size_t ndir = 0;
    if (rel[0] != '/' && slash) ndir = (size_t)(slash - spec_path) + 1; /* keeps the '/' */
    char *r = malloc(ndir + nrel + 1);
    if (!r) return NULL;
    memcpy(r, spec_path, ndir);
    memcpy(r + ndir, rel, nrel + 1);
    return r;
}

static ns_status get_path(spec_parser *p, yaml_node_t *v, const char *field, char **dst) {
    char *rel = NULL;
    ns_status st = get_string(p, v, field, 1, SPEC_MAX_PATH, &rel);
    if (st) return st;
    char *r = resolve_path(p->out->spec_path, rel);
    free(rel);
    if (!r) return fail_at(p, v, NS_ERR_NOMEM, field, "out of memory");
    free(*dst);
    *dst = r;
    return NS_OK;
}

/* ---- sections -------------------------------------------------------------------------- */

static const char *const k_input_formats[] = {"jsonl", "openai-batch", "text"};
static const char *const k_output_formats[] = {"jsonl", "openai-batch"};
static const char *const k_backends[] = {"auto", "cpu", "cuda"};
static const char *const k_bad_input[] = {"reject", "queue"};

enum { IN_PATH, IN_FORMAT, IN_ID_FIELD, IN_N };
static const char *const k_input[IN_N] = {"path", "format", "id_field"};

static ns_status parse_input(spec_parser *p, yaml_node_t *key, yaml_node_t *v) {
    ns_job_spec *o = p->out;
    spec_fields f;
    ns_status st;
    if (!v) {
        if (key)
            return fail_at(p, key, NS_ERR_INVALID, "input",
                           "expected a mapping with at least 'path', got an empty value");
        return fail_at(p, NULL, NS_ERR_INVALID, NULL, "missing required field 'input.path'");
    }
    if ((st = need_mapping(p, v, "input"))) return st;
    if ((st = read_fields(p, v, "input", k_input, IN_N, &f))) return st;
    if (!f.val[IN_PATH]) {
        if (f.key[IN_PATH])
            return fail_at(p, f.key[IN_PATH], NS_ERR_INVALID, "input.path",
                           "expected a path, got an empty value");
        return fail_at(p, v, NS_ERR_INVALID, "input", "missing required field 'input.path'");
    }
    if ((st = get_path(p, f.val[IN_PATH], "input.path", &o->input_path))) return st;
    int fmt = NS_INPUT_JSONL;
    if (f.val[IN_FORMAT] &&
        (st = get_enum(p, f.val[IN_FORMAT], "input.format", k_input_formats, 3, &fmt)))
        return st;
    o->input_format = (ns_input_format)fmt;
    if (f.val[IN_ID_FIELD]) {
        if (o->input_format != NS_INPUT_JSONL)
            return fail_at(p, f.val[IN_ID_FIELD], NS_ERR_INVALID, "input.id_field",
                           "only used with input.format jsonl, got format %s",
                           k_input_formats[fmt]);
        if ((st = get_string(p, f.val[IN_ID_FIELD], "input.id_field", 1, SPEC_MAX_ID_FIELD,
                             &o->id_field)))
            return st;
    }
    return NS_OK;
}

enum { PR_TEMPLATE, PR_SYSTEM, PR_USER, PR_N };
static const char *const k_prompt[PR_N] = {"template", "system", "user"};

/* Needs input_format (parse_input first). */
static ns_status parse_prompt(spec_parser *p, yaml_node_t *key, yaml_node_t *v) {
    ns_job_spec *o = p->out;
    spec_fields f;
    ns_status st;
    if (o->input_format == NS_INPUT_OPENAI_BATCH) {
        o->chat = true;
        if (key)
            return fail_at(p, key, NS_ERR_INVALID, "prompt",
                           "not used with input.format openai-batch (each request's body "
                           "carries its messages); remove the prompt section");
        return NS_OK;
    }
    if (!v) {
        if (key)
            return fail_at(p, key, NS_ERR_INVALID, "prompt",
                           "expected 'template' or 'user', got an empty value");
        if (o->input_format == NS_INPUT_TEXT) {
            o->prompt_template = malloc(sizeof "{{text}}");
            if (!o->prompt_template)
                return fail_at(p, NULL, NS_ERR_NOMEM, "prompt", "out of memory");
            memcpy(o->prompt_template, "{{text}}", sizeof "{{text}}");
            o->chat = false;
            return NS_OK;
        }
        return fail_at(p, NULL, NS_ERR_INVALID, NULL,
                       "missing required field 'prompt' (expected 'template' or 'user')");
    }
    if ((st = need_mapping(p, v, "prompt"))) return st;
    if ((st = read_fields(p, v, "prompt", k_prompt, PR_N, &f))) return st;
    yaml_node_t *t = f.val[PR_TEMPLATE], *sys = f.val[PR_SYSTEM], *usr = f.val[PR_USER];
    if (t && usr)
        return fail_at(p, usr, NS_ERR_INVALID, "prompt",
                       "expected either 'template' or 'user' (chat), got both");
    if (t && sys)
        return fail_at(p, sys, NS_ERR_INVALID, "prompt.system",
                       "'system' goes with 'user' (chat), not with 'template'");
    if (!t && !usr) {
        if (sys)
            return fail_at(p, sys, NS_ERR_INVALID, "prompt",
                           "'system' needs 'user' (the chat user message)");
        return fail_at(p, v, NS_ERR_INVALID, "prompt", "expected 'template' or 'user'");
    }
    if (t) {
        o->chat = false;
        return get_string(p, t, "prompt.template", 1, SPEC_MAX_TEMPLATE, &o->prompt_template);
    }
    o->chat = true;
    if ((st = get_string(p, usr, "prompt.user", 1, SPEC_MAX_TEMPLATE, &o->user_template)))
        return st;
    if (sys && (st = get_string(p, sys, "prompt.system", 1, SPEC_MAX_TEMPLATE,
                                &o->system_template)))
        return st;
    return NS_OK;
}

static ns_status parse_stop(spec_parser *p, yaml_node_t *v, ns_sampling *s) {
    char field[32];
    yaml_node_t *items[NS_MAX_STOP];
    int n = 0;
    if (v->type == YAML_SCALAR_NODE) {
        items[n++] = v;
    } else if (v->type == YAML_SEQUENCE_NODE) {
        yaml_node_item_t *it = v->data.sequence.items.start;
        size_t count = (size_t)(v->data.sequence.items.top - it);
        if (count > NS_MAX_STOP)
            return fail_at(p, v, NS_ERR_INVALID, "sampling.stop",
                           "expected at most %d stop strings, got %zu", NS_MAX_STOP, count);
        for (; it < v->data.sequence.items.top; it++) {
            yaml_node_t *e = yaml_document_get_node(p->doc, *it);
            if (!e) return fail_at(p, v, NS_ERR_FORMAT, "sampling.stop", "broken list");
            items[n++] = e;
        }
    } else {
        return fail_at(p, v, NS_ERR_INVALID, "sampling.stop",
                       "expected a string or a list of strings, got a mapping");
    }
    for (int i = 0; i < n; i++) {
        yaml_node_t *e = items[i];
        snprintf(field, sizeof field, v == e ? "sampling.stop" : "sampling.stop[%d]", i);
        if (e->type != YAML_SCALAR_NODE || is_null(e)) {
            char buf[SPEC_SHOW_MAX + 8];
            return fail_at(p, e, NS_ERR_INVALID, field, "expected a string, got %s",
                           describe(e, buf, sizeof buf));
        }
        size_t len = e->data.scalar.length;
        if (len < 1 || len > NS_MAX_STOP_LEN - 1)
            return fail_at(p, e, NS_ERR_INVALID, field,
                           "expected a string of 1 to %d bytes, got %zu bytes",
                           NS_MAX_STOP_LEN - 1, len);
        if (memchr(e->data.scalar.value, '\0', len))
            return fail_at(p, e, NS_ERR_INVALID, field,
                           "expected a string, got one with a NUL byte");
        memcpy(s->stop[i], e->data.scalar.value, len);
        s->stop[i][len] = '\0';
    }
    s->n_stop = n;
    return NS_OK;
}

enum {
    SA_TEMPERATURE, SA_TOP_P, SA_TOP_K, SA_MIN_P, SA_SEED, SA_MAX_TOKENS, SA_STOP, SA_N,
    SA_REPEAT_PENALTY, SA_REPEAT_LAST_N, SA_PRESENCE, SA_FREQUENCY, SA_LOGPROBS, SA_N_FIELDS
};
static const char *const k_sampling[SA_N_FIELDS] = {
    "temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "stop", "n",
    "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "logprobs"};

static ns_status parse_sampling(spec_parser *p, yaml_node_t *v) {
    ns_job_spec *o = p->out;
    ns_sampling *s = &o->sampling;
    spec_fields f;
    ns_status st;
    long long x;
    if (!v) return NS_OK;
    if ((st = need_mapping(p, v, "sampling"))) return st;
    if ((st = read_fields(p, v, "sampling", k_sampling, SA_N_FIELDS, &f))) return st;
    yaml_node_t **a = f.val;
    if (a[SA_TEMPERATURE] && (st = get_float(p, a[SA_TEMPERATURE], "sampling.temperature", 0,
                                             HUGE_VAL, OPEN_HI, "[0, inf) (0 = greedy)",
                                             &s->temperature)))
        return st;
    if (a[SA_TOP_P] && (st = get_float(p, a[SA_TOP_P], "sampling.top_p", 0, 1, OPEN_LO,
                                       "(0, 1]", &s->top_p)))
        return st;
    if (a[SA_TOP_K]) {
        if ((st = get_int(p, a[SA_TOP_K], "sampling.top_k", 0, INT32_MAX, false, &x))) return st;
        s->top_k = (int32_t)x;
    }
    if (a[SA_MIN_P] && (st = get_float(p, a[SA_MIN_P], "sampling.min_p", 0, 1, OPEN_HI,
                                       "[0, 1)", &s->min_p)))
        return st;
    if (a[SA_SEED] && (st = get_u64(p, a[SA_SEED], "sampling.seed", &s->seed))) return st;
    if (a[SA_MAX_TOKENS]) {
        if ((st = get_int(p, a[SA_MAX_TOKENS], "sampling.max_tokens", 1, INT32_MAX, false, &x)))
            return st;
        s->max_tokens = (int32_t)x;
    }
    if (a[SA_STOP] && (st = parse_stop(p, a[SA_STOP], s))) return st;
    if (a[SA_N]) {
        if ((st = get_int(p, a[SA_N], "sampling.n", 1, 64, false, &x))) return st;
        o->n = (int)x;
    }
    if (a[SA_REPEAT_PENALTY] &&
        (st = get_float(p, a[SA_REPEAT_PENALTY], "sampling.repeat_penalty", 0, HUGE_VAL,
                        OPEN_LO | OPEN_HI, "(0, inf) (1 = off)", &s->repeat_penalty)))
        return st;
    if (a[SA_REPEAT_LAST_N]) {
        if ((st = get_int(p, a[SA_REPEAT_LAST_N], "sampling.repeat_last_n", 0, INT32_MAX, false,
                          &x)))
            return st;
        s->repeat_last_n = (int32_t)x;
    }
    if (a[SA_PRESENCE] && (st = get_float(p, a[SA_PRESENCE], "sampling.presence_penalty", -2, 2,
                                          0, "[-2, 2]", &s->presence_penalty)))
        return st;
    if (a[SA_FREQUENCY] && (st = get_float(p, a[SA_FREQUENCY], "sampling.frequency_penalty", -2,
                                           2, 0, "[-2, 2]", &s->frequency_penalty)))
        return st;
    if (a[SA_LOGPROBS]) {
        if ((st = get_int(p, a[SA_LOGPROBS], "sampling.logprobs", 0, NS_MAX_LOGPROBS, false, &x)))
            return st;
        s->n_logprobs = (int32_t)x;
    }
    return NS_OK;
}

enum { OU_PATH, OU_FORMAT, OU_ZSTD, OU_N };
static const char *const k_output[OU_N] = {"path", "format", "zstd_level"};

static ns_status parse_output(spec_parser *p, yaml_node_t *v) {
    ns_job_spec *o = p->out;
    spec_fields f;
    ns_status st;
    long long x;
    if (!v) return NS_OK;
    if ((st = need_mapping(p, v, "output"))) return st;
    if ((st = read_fields(p, v, "output", k_output, OU_N, &f))) return st;
    if (f.val[OU_PATH] && (st = get_path(p, f.val[OU_PATH], "output.path", &o->output_path)))
        return st;
    int fmt = NS_OUTPUT_JSONL;
    if (f.val[OU_FORMAT] &&
        (st = get_enum(p, f.val[OU_FORMAT], "output.format", k_output_formats, 2, &fmt)))
        return st;
    o->output_format = (ns_output_format)fmt;
    if (f.val[OU_ZSTD]) {
        if ((st = get_int(p, f.val[OU_ZSTD], "output.zstd_level", 1, 19, false, &x))) return st;
        o->zstd_level = (int)x;
    }
    return NS_OK;
}

enum { LI_BATCH_TOKENS, LI_SEQS, LI_CONTEXT, LI_PRIORITY, LI_RETRIES, LI_DETERMINISTIC, LI_N };
static const char *const k_limits[LI_N] = {"max_batch_tokens", "max_seqs", "max_context",
                                           "priority", "retries", "deterministic"};

static ns_status get_bool(spec_parser *p, yaml_node_t *v, const char *field, bool *out) {
    char buf[SPEC_SHOW_MAX + 8];
    if (v->type == YAML_SCALAR_NODE) {
        const char *s = (const char *)v->data.scalar.value;
        if (!strcmp(s, "true")) {
            *out = true;
            return NS_OK;
        }
        if (!strcmp(s, "false")) {
            *out = false;
            return NS_OK;
        }
    }
    return fail_at(p, v, NS_ERR_INVALID, field, "expected true or false, got %s", describe(v, buf, sizeof buf));
}

static ns_status parse_limits(spec_parser *p, yaml_node_t *v) {
    ns_job_spec *o = p->out;
    spec_fields f;
    ns_status st;
    long long x;
    if (!v) return NS_OK;
    if ((st = need_mapping(p, v, "limits"))) return st;
    if ((st = read_fields(p, v, "limits", k_limits, LI_N, &f))) return st;
    static const struct {
        const char *field;
        long long lo, hi;
        bool zero_ok;
    } k[LI_DETERMINISTIC] = {
        {"limits.max_batch_tokens", 1, 65536, true},
        {"limits.max_seqs", 1, 4096, true},
        {"limits.max_context", 16, 1048576, true},
        {"limits.priority", -1000, 1000, false},
        {"limits.retries", 0, 100, false},
    };
    int *dst[LI_DETERMINISTIC] = {&o->max_batch_tokens, &o->max_seqs, &o->max_context, &o->priority,
                                  &o->max_retries};
    if (f.val[LI_DETERMINISTIC] &&
        (st = get_bool(p, f.val[LI_DETERMINISTIC], "limits.deterministic", &o->deterministic)))
        return st;
    for (int i = 0; i < LI_DETERMINISTIC; i++) {
        if (!f.val[i]) continue;
        if ((st = get_int(p, f.val[i], k[i].field, k[i].lo, k[i].hi, k[i].zero_ok, &x))) return st;
        *dst[i] = (int)x;
    }
    return NS_OK;
}

static ns_status parse_devices(spec_parser *p, yaml_node_t *v) {
    ns_job_spec *o = p->out;
    long long x;
    ns_status st;
    char field[32];
    if (v->type == YAML_SCALAR_NODE) { /* a single id */
        if ((st = get_int(p, v, "devices", 0, INT_MAX, false, &x))) return st;
        o->devices[0] = (int)x;
        o->n_devices = 1;
        return NS_OK;
    }
    if (v->type != YAML_SEQUENCE_NODE)
        return fail_at(p, v, NS_ERR_INVALID, "devices",
                       "expected a list of device ids, got a mapping");
    size_t count = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (count > NS_SPEC_MAX_DEVICES)
        return fail_at(p, v, NS_ERR_INVALID, "devices",
                       "expected at most %d device ids, got %zu", NS_SPEC_MAX_DEVICES, count);
    int n = 0;
    for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top;
         it++, n++) {
        yaml_node_t *e = yaml_document_get_node(p->doc, *it);
        if (!e) return fail_at(p, v, NS_ERR_FORMAT, "devices", "broken list");
        snprintf(field, sizeof field, "devices[%d]", n);
        if ((st = get_int(p, e, field, 0, INT_MAX, false, &x))) return st;
        for (int j = 0; j < n; j++)
            if (o->devices[j] == (int)x)
                return fail_at(p, e, NS_ERR_INVALID, field, "device %lld is listed twice", x);
        o->devices[n] = (int)x;
    }
    o->n_devices = n;
    return NS_OK;
}

enum {
    TO_VERSION, TO_NAME, TO_MODEL, TO_BACKEND, TO_DEVICES, TO_INPUT, TO_PROMPT, TO_SAMPLING,
    TO_OUTPUT, TO_LIMITS, TO_ON_BAD_INPUT, TO_PRECISION, TO_N
};
static const char *const k_top[TO_N] = {"version", "name",    "model",  "backend",
                                        "devices", "input",   "prompt", "sampling",
                                        "output",  "limits",  "on_bad_input", "precision"};
static const char *const k_precisions[] = {"default", "fp8"};

static ns_status parse_root(spec_parser *p, yaml_node_t *root) {
    ns_job_spec *o = p->out;
    spec_fields f;
    ns_status st;
    long long x;
    char buf[SPEC_SHOW_MAX + 8];
    if ((st = read_fields(p, root, "", k_top, TO_N, &f))) return st;
    yaml_node_t **a = f.val;

    if (a[TO_VERSION]) {
        yaml_node_t *v = a[TO_VERSION];
        if (get_int(p, v, "version", SPEC_VERSION, SPEC_VERSION, false, &x) != NS_OK)
            return fail_at(p, v, NS_ERR_INVALID, "version",
                           "expected %d (the only spec version this nightshift reads), got %s",
                           SPEC_VERSION, describe(v, buf, sizeof buf));
    }
    /* required strings */
    static const int req[2] = {TO_NAME, TO_MODEL};
    for (int i = 0; i < 2; i++) {
        int k = req[i];
        if (!a[k] && f.key[k])
            return fail_at(p, f.key[k], NS_ERR_INVALID, k_top[k],
                           "expected a non-empty string, got an empty value");
        if (!a[k])
            return fail_at(p, NULL, NS_ERR_INVALID, NULL, "missing required field '%s'",
                           k_top[k]);
    }
    if ((st = get_string(p, a[TO_NAME], "name", 1, SPEC_MAX_NAME, &o->name))) return st;
    for (const unsigned char *c = (const unsigned char *)o->name; *c; c++)
        if (*c < 0x20 || *c == 0x7f)
            return fail_at(p, a[TO_NAME], NS_ERR_INVALID, "name",
                           "expected a name without control characters, got %s",
                           describe(a[TO_NAME], buf, sizeof buf));
    if ((st = get_path(p, a[TO_MODEL], "model", &o->model))) return st;

    int backend = 0;
    if (a[TO_BACKEND] && (st = get_enum(p, a[TO_BACKEND], "backend", k_backends, 3, &backend)))
        return st;
    size_t nb = strlen(k_backends[backend]) + 1;
    if (!(o->backend = malloc(nb))) return fail_at(p, NULL, NS_ERR_NOMEM, "backend", "out of memory");
    memcpy(o->backend, k_backends[backend], nb);

    if (a[TO_DEVICES] && (st = parse_devices(p, a[TO_DEVICES]))) return st;
    int precision = 0;
    if (a[TO_PRECISION] && (st = get_enum(p, a[TO_PRECISION], "precision", k_precisions, 2, &precision)))
        return st;
    o->fp8 = precision == 1;
    if ((st = parse_input(p, f.key[TO_INPUT], a[TO_INPUT]))) return st;
    if ((st = parse_prompt(p, f.key[TO_PROMPT], a[TO_PROMPT]))) return st;
    if ((st = parse_sampling(p, a[TO_SAMPLING]))) return st;
    if ((st = parse_output(p, a[TO_OUTPUT]))) return st;
    if ((st = parse_limits(p, a[TO_LIMITS]))) return st;
    int bad = NS_BAD_INPUT_REJECT;
    if (a[TO_ON_BAD_INPUT] &&
        (st = get_enum(p, a[TO_ON_BAD_INPUT], "on_bad_input", k_bad_input, 2, &bad)))
        return st;
    o->on_bad_input = (ns_bad_input)bad;

    /* The sampler's own check, as a backstop for the per-field ranges above. */
    ns_error verr;
    ns_error_clear(&verr);
    if (ns_sampling_validate(&o->sampling, INT32_MAX, &verr) != NS_OK)
        return fail_at(p, a[TO_SAMPLING], verr.code ? verr.code : NS_ERR_INVALID, NULL,
                       "sampling.%s", verr.msg);
    return NS_OK;
}

/* ---- entry points ---------------------------------------------------------------------- */

static ns_status syntax_error(spec_parser *p, const yaml_parser_t *ps) {
    const char *problem = ps->problem ? ps->problem : "unknown error";
    if (ps->error == YAML_MEMORY_ERROR)
        return ns_error_set(p->err, NS_ERR_NOMEM, "%.240s: out of memory while reading YAML",
                            p->path);
    if (ps->error == YAML_READER_ERROR) {
        /* the reader gives a byte offset only: count lines ourselves */
        size_t off = NS_MIN(ps->problem_offset, p->len), line = 1, col = 1;
        for (size_t i = 0; i < off; i++) {
            if (p->text[i] == '\n') line++, col = 1;
            else col++;
        }
        return ns_error_set(p->err, NS_ERR_FORMAT, "%.240s:%zu:%zu: YAML syntax error: %s (byte %zu)",
                            p->path, line, col, problem, ps->problem_offset);
    }
    char ctx[160] = "";
    if (ps->context)
        snprintf(ctx, sizeof ctx, " (%s that starts at line %zu, column %zu)", ps->context,
                 ps->context_mark.line + 1, ps->context_mark.column + 1);
    return ns_error_set(p->err, NS_ERR_FORMAT, "%.240s:%zu:%zu: YAML syntax error: %s%s",
                        p->path, ps->problem_mark.line + 1, ps->problem_mark.column + 1, problem,
                        ctx);
}

ns_status ns_job_spec_parse(const char *yaml, size_t len, const char *path, ns_job_spec *out,
                            ns_error *err) {
    NS_ASSERT(out != NULL);
    memset(out, 0, sizeof *out);
    if (!yaml) yaml = "", len = 0;
    spec_parser p = {.path = path && *path ? path : "<spec>", .text = yaml, .len = len,
                     .err = err, .out = out};
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    bool has_doc = false;
    ns_status st = NS_OK;
    if (!yaml_parser_initialize(&parser))
        return ns_error_set(err, NS_ERR_NOMEM, "%.240s: out of memory", p.path);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);

    /* defaults */
    ns_sampling_default(&out->sampling);
    out->n = 1;
    out->zstd_level = 3;
    out->max_retries = 2;
    out->input_format = NS_INPUT_JSONL;
    out->output_format = NS_OUTPUT_JSONL;
    out->on_bad_input = NS_BAD_INPUT_REJECT;
    size_t np = strlen(path ? path : "") + 1;
    if (!(out->spec_path = malloc(np))) {
        st = ns_error_set(err, NS_ERR_NOMEM, "%.240s: out of memory", p.path);
        goto done;
    }
    memcpy(out->spec_path, path ? path : "", np);

    if (!yaml_parser_load(&parser, &doc)) {
        st = syntax_error(&p, &parser);
        goto done;
    }
    has_doc = true;
    p.doc = &doc;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || is_null(root)) {
        st = fail_at(&p, NULL, NS_ERR_INVALID, NULL,
                     "the spec is empty (expected a mapping with name, model, input, ...)");
        goto done;
    }
    if (root->type != YAML_MAPPING_NODE) {
        char buf[SPEC_SHOW_MAX + 8];
        st = fail_at(&p, root, NS_ERR_INVALID, NULL,
                     "expected the spec to be a mapping of fields (name, model, input, ...), "
                     "got %s", describe(root, buf, sizeof buf));
        goto done;
    }
    /* One document per file: a second one would be silently ignored otherwise. */
    if (!yaml_parser_load(&parser, &extra)) {
        st = syntax_error(&p, &parser);
        goto done;
    }
    yaml_node_t *root2 = yaml_document_get_root_node(&extra);
    if (root2) {
        size_t line = extra.start_mark.line + 1, col = extra.start_mark.column + 1;
        yaml_document_delete(&extra);
        st = ns_error_set(err, NS_ERR_INVALID,
                          "%.240s:%zu:%zu: expected one YAML document, found a second one",
                          p.path, line, col);
        goto done;
    }
    yaml_document_delete(&extra);
    st = parse_root(&p, root);

done:
    if (has_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (st != NS_OK) ns_job_spec_free(out);
    return st;
}

ns_status ns_job_spec_load(const char *path, ns_job_spec *out, ns_error *err) {
    NS_ASSERT(out != NULL && path != NULL);
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return ns_error_set(err, NS_ERR_IO, "%.240s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    ns_status st = NS_OK;
    for (;;) {
        if (n == cap) {
            if (cap >= SPEC_MAX_FILE) {
                st = ns_error_set(err, NS_ERR_INVALID,
                                  "%.240s: larger than %u MiB; a job spec is a small file", path,
                                  SPEC_MAX_FILE >> 20);
                goto done;
            }
            size_t ncap = cap ? cap * 2 : 4096;
            if (ncap > SPEC_MAX_FILE) ncap = SPEC_MAX_FILE;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                st = ns_error_set(err, NS_ERR_NOMEM, "%.240s: out of memory", path);
                goto done;
            }
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        st = ns_error_set(err, NS_ERR_IO, "%.240s: cannot read: %s", path, strerror(errno));
        goto done;
    }
    st = ns_job_spec_parse(buf, n, path, out, err);
done:
    free(buf);
    fclose(f);
    return st;
}

void ns_job_spec_free(ns_job_spec *s) {
    if (!s) return;
    free(s->spec_path);
    free(s->name);
    free(s->model);
    free(s->backend);
    free(s->input_path);
    free(s->id_field);
    free(s->prompt_template);
    free(s->system_template);
    free(s->user_template);
    free(s->output_path);
    memset(s, 0, sizeof *s);
}
