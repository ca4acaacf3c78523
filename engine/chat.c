/* chat.c: chat template families, detected from the Jinja text and rendered in C.
 *
 * Each renderer below transcribes one reference template (named above it) for plain
 * string messages, including its whitespace handling: Jinja's `trim` / Python's
 * str.strip() where the template applies it, nothing where it does not. Literals lifted
 * from a template (default system message, Llama 3.1 date preamble) are read only from
 * a plain string literal, never from an expression, and their Jinja escapes are decoded.
 */
#include "chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- small helpers ----------------------------------------------------------------- */

/* First occurrence of needle (NUL-terminated, non-empty) in hay[0..hlen), or NULL. */
static const char *find_in(const char *hay, size_t hlen, const char *needle) {
    const size_t nlen = strlen(needle);
    if (nlen == 0 || nlen > hlen) return NULL;
    const char *end = hay + (hlen - nlen) + 1;
    for (const char *q = hay; q < end; q++) {
        q = memchr(q, needle[0], (size_t)(end - q));
        if (!q) return NULL;
        if (memcmp(q, needle, nlen) == 0) return q;
    }
    return NULL;
}

static bool contains(const char *hay, size_t hlen, const char *needle) {
    return find_in(hay, hlen, needle) != NULL;
}

/* Growing output buffer; `oom` sticks after the first failed allocation. */
typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            if (cap > SIZE_MAX / 2) {
                b->oom = true;
                return;
            }
            cap *= 2;
        }
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* Length of the Python whitespace character (str.isspace) that starts at s[0..n), or 0.
 * ASCII \t\n\v\f\r, \x1c-\x1f and space; U+0085, U+00A0, U+1680, U+2000-U+200A, U+2028,
 * U+2029, U+202F, U+205F, U+3000 in UTF-8. */
static size_t space_len_at(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    const unsigned char c = s[0];
    if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) return 1;
    if (c == 0xc2 && n >= 2 && (s[1] == 0x85 || s[1] == 0xa0)) return 2;
    if (c == 0xe1 && n >= 3 && s[1] == 0x9a && s[2] == 0x80) return 3;
    if (c == 0xe2 && n >= 3) {
        if (s[1] == 0x80 && ((s[2] >= 0x80 && s[2] <= 0x8a) || s[2] == 0xa8 || s[2] == 0xa9 ||
                             s[2] == 0xaf))
            return 3;
        if (s[1] == 0x81 && s[2] == 0x9f) return 3;
    }
    if (c == 0xe3 && n >= 3 && s[1] == 0x80 && s[2] == 0x80) return 3;
    return 0;
}

/* Length of the whitespace character that ends s[0..n), or 0. */
static size_t space_len_before(const unsigned char *s, size_t n) {
    for (size_t k = 1; k <= 3 && k <= n; k++)
        if (space_len_at(s + n - k, k) == k) return k;
    return 0;
}

/* Python str.strip() of the bytes b->p[from..len), in place. */
static void sb_strip_from(sbuf *b, size_t from) {
    if (b->oom) return;
    unsigned char *s = (unsigned char *)b->p + from;
    size_t n = b->len - from, head = 0, k;
    while ((k = space_len_before(s, n)) > 0) n -= k;
    while (head < n && (k = space_len_at(s + head, n - head)) > 0) head += k;
    memmove(s, s + head, n - head);
    b->len = from + (n - head);
    b->p[b->len] = '\0';
}

/* Appends content stripped as by Jinja's `trim`. */
static void sb_put_trimmed(sbuf *b, const char *s) {
    const size_t from = b->len;
    sb_puts(b, s);
    sb_strip_from(b, from);
}

/* Reads the rest of a Jinja string literal starting at p (inside the literal; the
 * literal's quote is `quote`), up to the first occurrence of `stop` (which must come
 * before the closing quote) or, when stop is NULL, to the closing quote. Decodes
 * \n \t \r \\ \' \". Returns a malloc'd string, or NULL when the text is not one plain
 * literal (an expression or the end of the template comes first) or on OOM. */
static char *read_literal(const char *p, const char *end, char quote, const char *stop) {
    sbuf b = {0};
    const size_t stop_len = stop ? strlen(stop) : 0;
    while (p < end) {
        if (stop && (size_t)(end - p) >= stop_len && memcmp(p, stop, stop_len) == 0) {
            if (!b.p) sb_put(&b, "", 0);
            if (b.oom) break;
            return b.p;
        }
        if (*p == quote) {
            if (stop) break; /* the literal ends before the stop text */
            if (!b.p) sb_put(&b, "", 0);
            if (b.oom) break;
            return b.p;
        }
        if (*p == '\\' && p + 1 < end) {
            const char e = p[1];
            const char c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            if (e != 'n' && e != 't' && e != 'r' && e != '\\' && e != '\'' && e != '"') break;
            sb_put(&b, &c, 1);
            p += 2;
            continue;
        }
        sb_put(&b, p, 1);
        p++;
    }
    free(b.p);
    return NULL;
}

/* The quote character of the string literal that contains position p, found by
 * scanning the template from its start (Jinja literals do not nest); 0 when p is not
 * inside a literal. Only the text inside {{ }} and {% %} counts as code. */
static char literal_quote_at(const char *tmpl, const char *p) {
    char quote = 0;
    bool in_code = false;
    for (const char *q = tmpl; q < p; q++) {
        if (quote) {
            if (*q == '\\') q++;
            else if (*q == quote) quote = 0;
        } else if (!in_code) {
            if (*q == '{' && (q[1] == '{' || q[1] == '%')) in_code = true, q++;
        } else if (*q == '\'' || *q == '"') {
            quote = *q;
        } else if ((*q == '}' || *q == '%') && q[1] == '}') {
            in_code = false;
            q++;
        }
    }
    return quote;
}

/* chatml: the text of a literal "<|im_start|>system\n...<|im_end|>" (the newline real
 * or escaped), the first one that is a plain literal. */
static char *find_default_system(const char *tmpl, size_t len) {
    static const char marker[] = "<|im_start|>system";
    const char *end = tmpl + len, *p = tmpl;
    while ((p = find_in(p, (size_t)(end - p), marker)) != NULL) {
        const char *q = p + strlen(marker);
        size_t nl = 0;
        if (q < end && *q == '\n') nl = 1;
        else if (end - q >= 2 && q[0] == '\\' && q[1] == 'n') nl = 2;
        const char quote = nl ? literal_quote_at(tmpl, p) : 0;
        if (quote) {
            char *text = read_literal(q + nl, end, quote, "<|im_end|>");
            if (text) return text;
        }
        p += strlen(marker);
    }
    return NULL;
}

/* llama3.1+: "Cutting Knowledge Date: <date>\nToday Date: <date_string>\n\n", with the
 * knowledge date read from the literal and date_string from its literal fallback
 * (`set date_string = "26 Jul 2024"`; that value when absent). NULL when the template
 * has no such preamble; *oom set on allocation failure. */
static char *find_system_preamble(const char *tmpl, size_t len, bool *oom) {
    static const char kd[] = "Cutting Knowledge Date: ";
    const char *end = tmpl + len;
    const char *p = find_in(tmpl, len, kd);
    if (!p) return NULL;
    const char quote = literal_quote_at(tmpl, p);
    char *knowledge = NULL, *date = NULL, *result = NULL;
    if (quote) {
        /* up to the newline: either escaped (\n) in the literal or a real one */
        knowledge = read_literal(p + strlen(kd), end, quote, "\\n");
        if (!knowledge) knowledge = read_literal(p + strlen(kd), end, quote, "\n");
    }
    for (const char *d = tmpl; (d = find_in(d, (size_t)(end - d), "date_string = ")) != NULL;) {
        d += strlen("date_string = ");
        if (d < end && (*d == '"' || *d == '\'')) {
            date = read_literal(d + 1, end, *d, NULL);
            if (date) break;
        }
    }
    sbuf b = {0};
    sb_puts(&b, "Cutting Knowledge Date: ");
    sb_puts(&b, knowledge ? knowledge : "December 2023");
    sb_puts(&b, "\nToday Date: ");
    sb_puts(&b, date ? date : "26 Jul 2024");
    sb_puts(&b, "\n\n");
    if (b.oom) {
        *oom = true;
        free(b.p);
    } else {
        result = b.p;
    }
    free(knowledge);
    free(date);
    return result;
}

/* ---- detection --------------------------------------------------------------------- */

const char *ns_chat_family_name(ns_chat_family f) {
    switch (f) {
    case NS_CHAT_NONE: return "none";
    case NS_CHAT_CHATML: return "chatml";
    case NS_CHAT_LLAMA3: return "llama3";
    case NS_CHAT_LLAMA2: return "llama2";
    case NS_CHAT_MISTRAL: return "mistral";
    case NS_CHAT_ZEPHYR: return "zephyr";
    case NS_CHAT_GEMMA: return "gemma";
    }
    return "unknown";
}

#define FAMILY_LIST "chatml, llama3, llama2, mistral, zephyr, gemma"

void ns_chat_template_free(ns_chat_template *t) {
    if (!t) return;
    free(t->default_system);
    free(t->system_preamble);
    memset(t, 0, sizeof *t);
}

ns_status ns_chat_template_detect(const char *jinja, size_t len, ns_chat_template *out,
                                  ns_error *err) {
    memset(out, 0, sizeof *out);
    if (!jinja || len == 0) return NS_OK;
    const char *j = jinja;
    if (contains(j, len, "<|im_start|>")) {
        out->family = NS_CHAT_CHATML;
        out->default_system = find_default_system(j, len);
        /* NULL there means no default or OOM; without one the rendering is still chatml */
    } else if (contains(j, len, "<|start_header_id|>")) {
        out->family = NS_CHAT_LLAMA3;
        bool oom = false;
        out->system_preamble = find_system_preamble(j, len, &oom);
        if (oom) return ns_error_set(err, NS_ERR_NOMEM, "out of memory reading the chat template");
    } else if (contains(j, len, "<start_of_turn>")) {
        out->family = NS_CHAT_GEMMA;
    } else if (contains(j, len, "[INST]")) {
        if (contains(j, len, "<<SYS>>")) {
            out->family = NS_CHAT_LLAMA2;
        } else {
            out->family = NS_CHAT_MISTRAL;
            out->mistral_spaced = contains(j, len, "' [INST] '") || contains(j, len, "\" [INST] \"");
        }
    } else if (contains(j, len, "<|user|>") && !contains(j, len, "<|end|>")) {
        out->family = NS_CHAT_ZEPHYR; /* Phi-3 also uses <|user|>, but ends turns with <|end|> */
    } else {
        char head[61];
        size_t n = NS_MIN(len, sizeof head - 1);
        for (size_t i = 0; i < n; i++) {
            const unsigned char c = (unsigned char)j[i];
            head[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
        }
        head[n] = '\0';
        return ns_error_set(err, NS_ERR_UNSUPPORTED,
                            "chat template of no known family (it starts \"%s%s\"); "
                            "supported: " FAMILY_LIST,
                            head, len > n ? "..." : "");
    }
    return NS_OK;
}

ns_status ns_chat_template_from_name(const char *name, ns_chat_template *out, ns_error *err) {
    memset(out, 0, sizeof *out);
    for (int f = NS_CHAT_CHATML; f <= NS_CHAT_GEMMA; f++) {
        if (name && strcmp(name, ns_chat_family_name((ns_chat_family)f)) == 0) {
            out->family = (ns_chat_family)f;
            out->mistral_spaced = true;
            return NS_OK;
        }
    }
    return ns_error_set(err, NS_ERR_INVALID, "chat template \"%.40s\" is not one of " FAMILY_LIST,
                        name ? name : "(null)");
}

/* ---- rendering --------------------------------------------------------------------- */

enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT };

static const char *const role_names[] = {"system", "user", "assistant"};

/* Copies at most 32 bytes of s for an error message, control bytes as '?'. */
static const char *printable(const char *s, char buf[36]) {
    size_t i = 0;
    for (; s[i] && i < 32; i++) {
        const unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    strcpy(buf + i, s[i] ? "..." : "");
    return buf;
}

/* Roles of the [INST] and gemma templates: an optional system message first, then user
 * and assistant alternating, starting with user (their templates raise otherwise). */
static ns_status check_alternation(const ns_chat_template *t, const int *roles, int n,
                                   ns_error *err) {
    const char *fam = ns_chat_family_name(t->family);
    const int first = roles[0] == ROLE_SYSTEM ? 1 : 0;
    if (first == n)
        return ns_error_set(err, NS_ERR_INVALID,
                            "the %s chat template needs a user message after the system one",
                            fam);
    for (int i = first; i < n; i++) {
        const int want = (i - first) % 2 == 0 ? ROLE_USER : ROLE_ASSISTANT;
        if (roles[i] == want) continue;
        if (roles[i] == ROLE_SYSTEM)
            return ns_error_set(err, NS_ERR_INVALID,
                                "messages[%d]: role \"system\" is only allowed as the first "
                                "message with the %s chat template",
                                i, fam);
        return ns_error_set(err, NS_ERR_INVALID,
                            "messages[%d]: role \"%s\" where \"%s\" is expected: the %s chat "
                            "template needs user and assistant turns to alternate, starting "
                            "with user",
                            i, role_names[roles[i]], role_names[want], fam);
    }
    return NS_OK;
}

/* Reference: SmolLM2-135M-Instruct (and the plain chatml template): per message
 * '<|im_start|>' + role + '\n' + content + '<|im_end|>' + '\n', a default system message
 * first when messages[0] is not a system one, then '<|im_start|>assistant\n'. */
static void render_chatml(const ns_chat_template *t, const ns_chat_msg *m, const int *roles,
                          int n, bool gen, sbuf *b) {
    if (t->default_system && roles[0] != ROLE_SYSTEM) {
        sb_puts(b, "<|im_start|>system\n");
        sb_puts(b, t->default_system);
        sb_puts(b, "<|im_end|>\n");
    }
    for (int i = 0; i < n; i++) {
        sb_puts(b, "<|im_start|>");
        sb_puts(b, role_names[roles[i]]);
        sb_puts(b, "\n");
        sb_puts(b, m[i].content);
        sb_puts(b, "<|im_end|>\n");
    }
    if (gen) sb_puts(b, "<|im_start|>assistant\n");
}

/* Reference: Meta-Llama-3-8B-Instruct: per message '<|start_header_id|>' + role +
 * '<|end_header_id|>\n\n' + content|trim + '<|eot_id|>' (bos_token first). With a
 * preamble (Meta-Llama-3.1-8B-Instruct, no tools): the system turn always, made of the
 * preamble and messages[0]['content']|trim when that is a system message. */
static void render_llama3(const ns_chat_template *t, const ns_chat_msg *m, const int *roles,
                          int n, bool gen, sbuf *b) {
    int i = 0;
    if (t->system_preamble) {
        sb_puts(b, "<|start_header_id|>system<|end_header_id|>\n\n");
        sb_puts(b, t->system_preamble);
        if (roles[0] == ROLE_SYSTEM) sb_put_trimmed(b, m[i++].content);
        sb_puts(b, "<|eot_id|>");
    }
    for (; i < n; i++) {
        sb_puts(b, "<|start_header_id|>");
        sb_puts(b, role_names[roles[i]]);
        sb_puts(b, "<|end_header_id|>\n\n");
        sb_put_trimmed(b, m[i].content);
        sb_puts(b, "<|eot_id|>");
    }
    if (gen) sb_puts(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Reference: Llama-2-7b-chat-hf: the system message goes into the first user turn as
 * '<<SYS>>\n' + system + '\n<</SYS>>\n\n'; user: bos_token + '[INST] ' + content.strip()
 * + ' [/INST]'; assistant: ' ' + content.strip() + ' ' + eos_token. The first bos_token
 * is the caller's BOS. No generation prompt. */
static void render_llama2(const ns_chat_msg *m, const int *roles, int n, sbuf *b) {
    const int first = roles[0] == ROLE_SYSTEM ? 1 : 0;
    for (int i = first; i < n; i++) {
        if (roles[i] == ROLE_USER) {
            if (i > first) sb_puts(b, "<s>");
            sb_puts(b, "[INST] ");
            const size_t from = b->len;
            if (i == first && first == 1) {
                sb_puts(b, "<<SYS>>\n");
                sb_puts(b, m[0].content);
                sb_puts(b, "\n<</SYS>>\n\n");
            }
            sb_puts(b, m[i].content);
            sb_strip_from(b, from);
            sb_puts(b, " [/INST]");
        } else {
            sb_puts(b, " ");
            sb_put_trimmed(b, m[i].content);
            sb_puts(b, " </s>");
        }
    }
}

/* Reference: Mistral-7B-Instruct-v0.2 / Mixtral-8x7B-Instruct-v0.1 (2024 templates):
 * user: ' [INST] ' + content + ' [/INST]', the first one prefixed by system + '\n\n';
 * assistant: ' ' + content + eos_token; bos_token first. v0.1 spacing (mistral_spaced
 * false): '[INST] ' and content + eos_token. No generation prompt. */
static void render_mistral(const ns_chat_template *t, const ns_chat_msg *m, const int *roles,
                           int n, sbuf *b) {
    const int first = roles[0] == ROLE_SYSTEM ? 1 : 0;
    for (int i = first; i < n; i++) {
        if (roles[i] == ROLE_USER) {
            sb_puts(b, t->mistral_spaced ? " [INST] " : "[INST] ");
            if (i == first && first == 1) {
                sb_puts(b, m[0].content);
                sb_puts(b, "\n\n");
            }
            sb_puts(b, m[i].content);
            sb_puts(b, " [/INST]");
        } else {
            if (t->mistral_spaced) sb_puts(b, " ");
            sb_puts(b, m[i].content);
            sb_puts(b, "</s>");
        }
    }
}

/* Reference: HuggingFaceH4/zephyr-7b-beta (also TinyLlama-1.1B-Chat): per message
 * '<|' + role + '|>\n' + content + eos_token + '\n' (the newline after each output tag
 * survives trim_blocks), then '<|assistant|>\n'. */
static void render_zephyr(const ns_chat_msg *m, const int *roles, int n, bool gen, sbuf *b) {
    for (int i = 0; i < n; i++) {
        sb_puts(b, "<|");
        sb_puts(b, role_names[roles[i]]);
        sb_puts(b, "|>\n");
        sb_puts(b, m[i].content);
        sb_puts(b, "</s>\n");
    }
    if (gen) sb_puts(b, "<|assistant|>\n");
}

/* Reference: gemma-2b-it / gemma-3: '<start_of_turn>' + role + '\n' + content|trim +
 * '<end_of_turn>\n' with assistant called "model", then '<start_of_turn>model\n'. A
 * system message (which Gemma 1/2 templates reject) is put before the first user
 * content as system + '\n\n', as Gemma 3's template does. */
static void render_gemma(const ns_chat_msg *m, const int *roles, int n, bool gen, sbuf *b) {
    const int first = roles[0] == ROLE_SYSTEM ? 1 : 0;
    for (int i = first; i < n; i++) {
        sb_puts(b, "<start_of_turn>");
        sb_puts(b, roles[i] == ROLE_ASSISTANT ? "model" : role_names[roles[i]]);
        sb_puts(b, "\n");
        if (i == first && first == 1) {
            sb_puts(b, m[0].content);
            sb_puts(b, "\n\n");
        }
        sb_put_trimmed(b, m[i].content);
        sb_puts(b, "<end_of_turn>\n");
    }
    if (gen) sb_puts(b, "<start_of_turn>model\n");
}

ns_status ns_chat_render(const ns_chat_template *t, const ns_chat_msg *msgs, int n_msgs,
                         bool add_generation_prompt, char **out, size_t *out_len,
                         ns_error *err) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!t || t->family == NS_CHAT_NONE)
        return ns_error_set(err, NS_ERR_UNSUPPORTED,
                            "model has no chat template: send a raw prompt, or name a "
                            "template family (" FAMILY_LIST ")");
    if (t->family < NS_CHAT_CHATML || t->family > NS_CHAT_GEMMA)
        return ns_error_set(err, NS_ERR_INVALID, "chat template family %d is out of range",
                            (int)t->family);
    if (n_msgs < 1 || !msgs)
        return ns_error_set(err, NS_ERR_INVALID, "messages: %d messages, at least 1 needed",
                            n_msgs);

    int *roles = ns_malloc_array((size_t)n_msgs, sizeof *roles);
    if (!roles) return ns_error_set(err, NS_ERR_NOMEM, "out of memory for %d messages", n_msgs);
    ns_status st = NS_OK;
    for (int i = 0; i < n_msgs && st == NS_OK; i++) {
        char buf[36];
        roles[i] = -1;
        if (!msgs[i].role) {
            st = ns_error_set(err, NS_ERR_INVALID, "messages[%d]: role is missing", i);
            break;
        }
        for (int r = ROLE_SYSTEM; r <= ROLE_ASSISTANT; r++)
            if (strcmp(msgs[i].role, role_names[r]) == 0) roles[i] = r;
        if (roles[i] < 0)
            st = ns_error_set(err, NS_ERR_INVALID,
                              "messages[%d]: role \"%s\" is not supported (system, user, "
                              "assistant)",
                              i, printable(msgs[i].role, buf));
        else if (!msgs[i].content)
            st = ns_error_set(err, NS_ERR_INVALID, "messages[%d]: content is missing", i);
    }
    if (st == NS_OK && (t->family == NS_CHAT_LLAMA2 || t->family == NS_CHAT_MISTRAL ||
                        t->family == NS_CHAT_GEMMA))
        st = check_alternation(t, roles, n_msgs, err);
    if (st != NS_OK) {
        free(roles);
        return st;
    }

    sbuf b = {0};
    sb_put(&b, "", 0); /* an empty result is still a string */
    switch (t->family) {
    case NS_CHAT_CHATML: render_chatml(t, msgs, roles, n_msgs, add_generation_prompt, &b); break;
    case NS_CHAT_LLAMA3: render_llama3(t, msgs, roles, n_msgs, add_generation_prompt, &b); break;
    case NS_CHAT_LLAMA2: render_llama2(msgs, roles, n_msgs, &b); break;
    case NS_CHAT_MISTRAL: render_mistral(t, msgs, roles, n_msgs, &b); break;
    case NS_CHAT_ZEPHYR: render_zephyr(msgs, roles, n_msgs, add_generation_prompt, &b); break;
    case NS_CHAT_GEMMA: render_gemma(msgs, roles, n_msgs, add_generation_prompt, &b); break;
    case NS_CHAT_NONE: break;
    }
    free(roles);
    if (b.oom) {
        free(b.p);
        return ns_error_set(err, NS_ERR_NOMEM, "out of memory rendering %d messages", n_msgs);
    }
    *out = b.p;
    if (out_len) *out_len = b.len;
    return NS_OK;
}
