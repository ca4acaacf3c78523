/* tokenizer.c: tokenizers built from GGUF metadata (see tokenizer.h for the contract).
 *
 * Two models:
 * - "gpt2": byte-level BPE. The text is cut at special tokens, then split into
 *   pre-tokens by one or two PCRE2 patterns applied in stages (llama.cpp's and HF's
 *   Sequence pre-tokenizers: each stage splits the pieces of the previous one, keeping the
 *   unmatched gaps as pieces too), then each pre-token is merged by merge rank starting
 *   from one symbol per byte (the GPT-2 byte->unicode table names the byte tokens; a byte
 *   the vocab has no token for is dropped, as HF and llama.cpp do).
 * - "llama": SentencePiece BPE. Spaces become U+2581, an optional U+2581 is prepended,
 *   adjacent symbols merge by highest vocab score, and pieces not in the vocab fall back to
 *   <0xXX> byte tokens (or one unk per char when byte tokens are missing).
 * Both merge loops use a heap, so a 1 MB word costs O(n log n), not O(n^2).
 * Checked against HF tokenizers on the demo vocab with every supported pattern family
 * (tests/golden/make_tokens.py holds the method).
 *
 * Invariants after ns_tokenizer_load: every stored id (bos, eos, merge results, byte
 * tokens) is -1 or in [0, n_vocab); every merge's two sides and their concatenation are
 * vocab tokens; the tokenizer is read-only, so encode/decode may run on many threads at
 * once (each call allocates its own scratch and PCRE2 match data).
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "tokenizer.h"

#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TOK_GPT2 = 1, TOK_SPM = 2 };

/* tokenizer.ggml.token_type values (llama.cpp numbering; 0 is "undefined"). */
enum {
    TT_UNDEFINED = 0,
    TT_NORMAL = 1,
    TT_UNKNOWN = 2,
    TT_CONTROL = 3,
    TT_USER_DEFINED = 4,
    TT_UNUSED = 5,
    TT_BYTE = 6,
};

#define ATTR_EOG 0x80 /* flag or'ed into attr[] beside the type */
#define ATTR_TYPE(a) ((a) & 0x0f)

#define MAX_STAGES 2

typedef struct merge_slot {
    uint64_t key; /* (left id << 32 | right id) + 1; 0 marks an empty slot */
    int32_t rank;
    int32_t result;
} merge_slot;

/* A tokenizer.ggml.pre name and its pattern family. */
typedef struct pre_def {
    const char *name;
    int family;
} pre_def;

enum { PRE_GPT2 = 0, PRE_LLAMA3, PRE_QWEN2, PRE_DIGITS_GPT2, PRE_N_FAMILIES };

/* \s is written [\s\x{85}] (and \S as [^\s\x{85}]) because PCRE2's \s under UCP is the
 * Z categories plus \t\n\v\f\r, while Oniguruma (HF tokenizers) and llama.cpp also count
 * U+0085 NEL as whitespace. The contractions are spelled with [sS] rather than (?i:) so
 * that caseless Unicode matching does not accept U+017F (long s) or U+212A (Kelvin). */
#define WS "\\s\\x{85}"
#define GPT2_PATTERN                                                                       \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS           \
    "]+(?![^" WS "])|[" WS "]+"
#define CONTRACTIONS_CI "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]"
#define LLAMA3_LIKE(NUM)                                                                   \
    CONTRACTIONS_CI "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" NUM "| ?[^" WS                        \
    "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"

/* A pattern family: patterns applied in stages; `ignore_merges` takes a pre-token that
 * is itself a vocab token whole, without merging (HF's BPE ignore_merges, Llama 3). */
static const struct {
    int n_stages;
    const char *stages[MAX_STAGES];
    bool ignore_merges;
} g_families[PRE_N_FAMILIES] = {
    [PRE_GPT2] = {1, {GPT2_PATTERN, NULL}, false},
    [PRE_LLAMA3] = {1, {LLAMA3_LIKE("\\p{N}{1,3}"), NULL}, true},
    [PRE_QWEN2] = {1, {LLAMA3_LIKE("\\p{N}"), NULL}, false},
    /* HF Sequence[Digits(individual_digits), ByteLevel]: every digit alone first. */
    [PRE_DIGITS_GPT2] = {2, {"\\p{N}", GPT2_PATTERN}, false},
};

/* tokenizer.ggml.pre names accepted, by family (names as llama.cpp's converter writes). */
static const pre_def g_pre_names[] = {
    {"default", PRE_GPT2},         {"gpt2", PRE_GPT2},          {"gpt-2", PRE_GPT2},
    {"mpt", PRE_GPT2},             {"olmo", PRE_GPT2},          {"jais", PRE_GPT2},
    {"llama-bpe", PRE_LLAMA3},     {"llama3", PRE_LLAMA3},      {"llama-v3", PRE_LLAMA3},
    {"smaug-bpe", PRE_LLAMA3},     {"dbrx", PRE_LLAMA3},        {"falcon3", PRE_LLAMA3},
    {"qwen2", PRE_QWEN2},          {"stablelm2", PRE_QWEN2},    {"deepseek-r1-qwen", PRE_QWEN2},
    {"smollm", PRE_DIGITS_GPT2},   {"starcoder", PRE_DIGITS_GPT2}, {"refact", PRE_DIGITS_GPT2},
    {"command-r", PRE_DIGITS_GPT2}, {"codeshell", PRE_DIGITS_GPT2},
};
#define N_PRE_NAMES (sizeof g_pre_names / sizeof g_pre_names[0])

struct ns_tokenizer {
    int kind; /* TOK_GPT2 or TOK_SPM */
    const char *pre_name; /* static */
    int32_t n_vocab;

    char *text;       /* all token texts, each NUL-terminated */
    size_t *text_off; /* (n_vocab) */
    uint32_t *text_len; /* (n_vocab) bytes, without the NUL */
    uint8_t *attr;    /* (n_vocab) TT_* type | ATTR_EOG */
    float *scores;    /* (n_vocab) SentencePiece only, else NULL */

    int32_t *vocab_slots; /* open-addressing map text -> id; -1 empty; size vocab_mask+1 */
    uint64_t vocab_mask;

    merge_slot *merges; /* gpt2: (left, right) -> rank, result; size merge_mask+1 */
    uint64_t merge_mask;
    int32_t n_merges;

    int32_t byte_token[256]; /* gpt2: token of the byte's unicode char; spm: <0xXX>; or -1 */
    char byte_char[256][3];  /* gpt2: UTF-8 of the byte's unicode char, NUL-padded */
    uint8_t byte_char_len[256];
    int16_t cp_byte[324];    /* gpt2: the inverse, code point -> byte, or -1 */

    int n_stages;
    pcre2_code *re[MAX_STAGES];
    bool ignore_merges;

    /* Tokens matched verbatim in the text (control, unknown, user-defined), grouped by
     * first byte and longest first within a group: special_ids[special_start[b] ..
     * special_start[b+1]). */
    int32_t *special_ids;
    int32_t special_start[257];

    int32_t bos, eos, eot, unk, pad;
    bool add_bos, add_space_prefix;
};

/* ---------------------------------------------------------------- small helpers */

static uint64_t hash_bytes(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static const char *tok_text(const ns_tokenizer *t, int32_t id) {
    return t->text + t->text_off[id];
}

static int32_t vocab_find(const ns_tokenizer *t, const char *p, size_t n) {
    uint64_t i = hash_bytes(p, n) & t->vocab_mask;
    for (;;) {
        int32_t id = t->vocab_slots[i];
        if (id < 0) return -1;
        if (t->text_len[id] == n && memcmp(tok_text(t, id), p, n) == 0) return id;
        i = (i + 1) & t->vocab_mask;
    }
}

static const merge_slot *merge_find(const ns_tokenizer *t, int32_t left, int32_t right) {
    uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
    uint64_t i = hash_u64(key) & t->merge_mask;
    for (;;) {
        const merge_slot *s = &t->merges[i];
        if (s->key == key) return s;
        if (s->key == 0) return NULL;
        i = (i + 1) & t->merge_mask;
    }
}

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

/* Length of the valid UTF-8 sequence at p (at most n bytes), or 0 if p[0] does not start
 * one (then the byte stands alone). */
static size_t utf8_valid_len(const unsigned char *p, size_t n) {
    unsigned char c = p[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0) lo = 0xa0;
        if (c == 0xed) hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0) lo = 0x90;
        if (c == 0xf4) hi = 0x8f;
    } else return 0;
    if (n < len) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    return len;
}

/* Decodes one UTF-8 char at p (n bytes left); returns its length and sets *cp, or
 * returns 1 with *cp = -1 for an invalid byte. */
static size_t utf8_decode(const unsigned char *p, size_t n, int32_t *cp) {
    size_t len = utf8_valid_len(p, n);
    if (len == 0) {
        *cp = -1;
        return 1;
    }
    int32_t c = len == 1 ? p[0] : len == 2 ? (p[0] & 0x1f) : len == 3 ? (p[0] & 0x0f) : (p[0] & 0x07);
    for (size_t i = 1; i < len; i++) c = (c << 6) | (p[i] & 0x3f);
    *cp = c;
    return len;
}

static size_t utf8_encode(int32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xe0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        out[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (char)(0xf0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    out[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* GPT-2's byte -> unicode table: printable Latin-1 bytes stand for themselves, the other
 * 68 bytes take code points 256, 257, ... 323 in byte order. */
static int32_t gpt2_byte_to_cp(int b) {
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) return b;
    int k = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff))) k++;
    return 256 + k;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* The byte of a "<0xHH>" token text, or -1. */
static int byte_token_value(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int hi = hexval(s[3]), lo = hexval(s[4]);
    if (hi < 0 || lo < 0) return -1;
    return hi * 16 + lo;
}

static const char *vtype_name(ns_gguf_vtype v) {
    static const char *names[] = {"u8",  "i8",   "u16",    "i16",   "u32", "i32", "f32",
                                  "bool", "string", "array", "u64",  "i64", "f64"};
    return (unsigned)v < sizeof names / sizeof names[0] ? names[v] : "unknown";
}

/* ---------------------------------------------------------------- loading */

void ns_tokenizer_free(ns_tokenizer *t) {
    if (!t) return;
    for (int i = 0; i < MAX_STAGES; i++) pcre2_code_free(t->re[i]);
    free(t->special_ids);
    free(t->merges);
    free(t->vocab_slots);
    free(t->scores);
    free(t->attr);
    free(t->text_len);
    free(t->text_off);
    free(t->text);
    free(t);
}

static bool has_key(const ns_gguf *g, const char *key) {
    return ns_gguf_find_key(g, key) >= 0;
}

/* Reads an optional token id: absent keeps *id; -1 (or 0xFFFFFFFF) means "none". */
static ns_status load_opt_id(const ns_gguf *g, const char *key, int32_t n_vocab, int32_t *id,
                             ns_error *err) {
    if (!has_key(g, key)) return NS_OK;
    int64_t v;
    ns_status st = ns_gguf_get_i64(g, key, &v, err);
    if (st) return st;
    if (v == -1 || v == 0xffffffffll) {
        *id = -1;
        return NS_OK;
    }
    if (v < 0 || v >= n_vocab)
        return ns_error_set(err, NS_ERR_FORMAT, "%s = %lld is out of range (n_vocab %d)", key,
                            (long long)v, (int)n_vocab);
    *id = (int32_t)v;
    return NS_OK;
}

static ns_status load_opt_bool(const ns_gguf *g, const char *key, bool *out, ns_error *err) {
    if (!has_key(g, key)) return NS_OK;
    return ns_gguf_get_bool(g, key, out, err);
}

static ns_status load_tokens(const ns_gguf *g, ns_tokenizer *t, ns_error *err) {
    const char *key = "tokenizer.ggml.tokens";
    ns_gguf_vtype et;
    uint64_t n;
    ns_status st = ns_gguf_get_arr_info(g, key, &et, &n, err);
    if (st) return st;
    if (et != NS_GGUF_STRING)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: array of %s, expected string", key,
                            vtype_name(et));
    if (n == 0 || n > INT32_MAX - 1)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: %llu tokens (limit 1..%d)", key,
                            (unsigned long long)n, INT32_MAX - 1);
    t->n_vocab = (int32_t)n;
    t->text_off = ns_malloc_array(n, sizeof *t->text_off);
    t->text_len = ns_malloc_array(n, sizeof *t->text_len);
    t->attr = ns_calloc_array(n, 1);
    if (!t->text_off || !t->text_len || !t->attr)
        return ns_error_set(err, NS_ERR_NOMEM, "%s: no memory for %llu tokens", key,
                            (unsigned long long)n);
    size_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        ns_gguf_str s;
        if ((st = ns_gguf_get_arr_str(g, key, i, &s, err))) return st;
        if (s.len > UINT32_MAX - 1 || s.len > SIZE_MAX - total - 1)
            return ns_error_set(err, NS_ERR_FORMAT, "%s[%llu]: length %llu too large", key,
                                (unsigned long long)i, (unsigned long long)s.len);
        t->text_off[i] = total;
        t->text_len[i] = (uint32_t)s.len;
        total += (size_t)s.len + 1;
    }
    t->text = malloc(total);
    if (!t->text) return ns_error_set(err, NS_ERR_NOMEM, "%s: no memory for %zu bytes", key, total);
    for (uint64_t i = 0; i < n; i++) {
        ns_gguf_str s;
        if ((st = ns_gguf_get_arr_str(g, key, i, &s, err))) return st;
        if (s.len) memcpy(t->text + t->text_off[i], s.ptr, (size_t)s.len);
        t->text[t->text_off[i] + s.len] = '\0';
    }

    /* text -> id; a duplicated text keeps its first id */
    t->vocab_mask = pow2_at_least(n * 2) - 1;
    t->vocab_slots = ns_malloc_array(t->vocab_mask + 1, sizeof *t->vocab_slots);
    if (!t->vocab_slots) return ns_error_set(err, NS_ERR_NOMEM, "%s: no memory for the map", key);
    memset(t->vocab_slots, 0xff, (t->vocab_mask + 1) * sizeof *t->vocab_slots);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *p = tok_text(t, id);
        size_t len = t->text_len[id];
        uint64_t i = hash_bytes(p, len) & t->vocab_mask;
        bool dup = false;
        while (t->vocab_slots[i] >= 0) {
            int32_t o = t->vocab_slots[i];
            if (t->text_len[o] == len && memcmp(tok_text(t, o), p, len) == 0) {
                dup = true;
                break;
            }
            i = (i + 1) & t->vocab_mask;
        }
        if (!dup) t->vocab_slots[i] = id;
    }
    return NS_OK;
}

static ns_status load_token_types(const ns_gguf *g, ns_tokenizer *t, ns_error *err) {
    const char *key = "tokenizer.ggml.token_type";
    if (!has_key(g, key)) {
        for (int32_t i = 0; i < t->n_vocab; i++) t->attr[i] = TT_NORMAL;
        return NS_OK;
    }
    ns_gguf_vtype et;
    uint64_t n;
    const void *data;
    ns_status st = ns_gguf_get_arr_info(g, key, &et, &n, err);
    if (st) return st;
    if (et != NS_GGUF_I32 && et != NS_GGUF_U32)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: array of %s, expected i32", key,
                            vtype_name(et));
    if (n != (uint64_t)t->n_vocab)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "%s: %llu entries but tokenizer.ggml.tokens has %d", key,
                            (unsigned long long)n, (int)t->n_vocab);
    if ((st = ns_gguf_get_arr_data(g, key, &data, err))) return st;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        int32_t v;
        memcpy(&v, (const char *)data + (size_t)i * 4, 4);
        if (v < TT_UNDEFINED || v > TT_BYTE)
            return ns_error_set(err, NS_ERR_FORMAT, "%s[%d] = %d (valid types 0..6)", key, (int)i,
                                (int)v);
        t->attr[i] = (uint8_t)(v == TT_UNDEFINED ? TT_NORMAL : v);
    }
    return NS_OK;
}

static ns_status load_scores(const ns_gguf *g, ns_tokenizer *t, ns_error *err) {
    const char *key = "tokenizer.ggml.scores";
    ns_gguf_vtype et;
    uint64_t n;
    const void *data;
    ns_status st = ns_gguf_get_arr_info(g, key, &et, &n, err);
    if (st) return st;
    if (et != NS_GGUF_F32)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: array of %s, expected f32", key,
                            vtype_name(et));
    if (n != (uint64_t)t->n_vocab)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "%s: %llu entries but tokenizer.ggml.tokens has %d", key,
                            (unsigned long long)n, (int)t->n_vocab);
    if ((st = ns_gguf_get_arr_data(g, key, &data, err))) return st;
    t->scores = ns_malloc_array((size_t)n, sizeof *t->scores);
    if (!t->scores) return ns_error_set(err, NS_ERR_NOMEM, "%s: no memory", key);
    memcpy(t->scores, data, (size_t)n * sizeof *t->scores);
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (isnan(t->scores[i]))
            return ns_error_set(err, NS_ERR_FORMAT, "%s[%d] is NaN", key, (int)i);
    return NS_OK;
}

static ns_status load_merges(const ns_gguf *g, ns_tokenizer *t, ns_error *err) {
    const char *key = "tokenizer.ggml.merges";
    ns_gguf_vtype et;
    uint64_t n;
    ns_status st = ns_gguf_get_arr_info(g, key, &et, &n, err);
    if (st) return st;
    if (et != NS_GGUF_STRING)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: array of %s, expected string", key,
                            vtype_name(et));
    if (n > INT32_MAX - 1)
        return ns_error_set(err, NS_ERR_FORMAT, "%s: %llu merges (limit %d)", key,
                            (unsigned long long)n, INT32_MAX - 1);
    t->n_merges = (int32_t)n;
    t->merge_mask = pow2_at_least(n * 2) - 1;
    t->merges = ns_calloc_array(t->merge_mask + 1, sizeof *t->merges);
    if (!t->merges) return ns_error_set(err, NS_ERR_NOMEM, "%s: no memory for %llu merges", key,
                                        (unsigned long long)n);
    char *cat = NULL;
    size_t cat_cap = 0;
    for (uint64_t r = 0; r < n; r++) {
        ns_gguf_str s;
        if ((st = ns_gguf_get_arr_str(g, key, r, &s, err))) goto done;
        /* "left right": split at the first space after the first byte (a left side may
         * itself start with a space in vocabularies that do not map spaces) */
        size_t sp = 0;
        for (size_t i = 1; i < s.len; i++)
            if (s.ptr[i] == ' ') {
                sp = i;
                break;
            }
        if (sp == 0 || sp + 1 >= s.len) {
            st = ns_error_set(err, NS_ERR_FORMAT, "%s[%llu] = \"%.*s\": expected \"left right\"",
                              key, (unsigned long long)r, (int)NS_MIN(s.len, 64), s.ptr);
            goto done;
        }
        const char *lp = s.ptr, *rp = s.ptr + sp + 1;
        size_t ln = sp, rn = (size_t)s.len - sp - 1;
        int32_t left = vocab_find(t, lp, ln), right = vocab_find(t, rp, rn);
        if (left < 0 || right < 0) {
            st = ns_error_set(err, NS_ERR_FORMAT, "%s[%llu] = \"%.*s\": token \"%.*s\" is not in the vocab",
                              key, (unsigned long long)r, (int)NS_MIN(s.len, 64), s.ptr,
                              (int)NS_MIN(left < 0 ? ln : rn, 64), left < 0 ? lp : rp);
            goto done;
        }
        if (ln + rn > cat_cap) {
            size_t nc = NS_MAX(ln + rn, 2 * cat_cap);
            char *p = realloc(cat, nc);
            if (!p) {
                st = ns_error_set(err, NS_ERR_NOMEM, "%s: no memory", key);
                goto done;
            }
            cat = p;
            cat_cap = nc;
        }
        memcpy(cat, lp, ln);
        memcpy(cat + ln, rp, rn);
        int32_t result = vocab_find(t, cat, ln + rn);
        if (result < 0) {
            st = ns_error_set(err, NS_ERR_FORMAT, "%s[%llu] = \"%.*s\": merged token \"%.*s\" is not in the vocab",
                              key, (unsigned long long)r, (int)NS_MIN(s.len, 64), s.ptr,
                              (int)NS_MIN(ln + rn, 64), cat);
            goto done;
        }
        uint64_t k = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
        uint64_t i = hash_u64(k) & t->merge_mask;
        while (t->merges[i].key != 0 && t->merges[i].key != k) i = (i + 1) & t->merge_mask;
        if (t->merges[i].key == 0) { /* a repeated merge keeps its first (best) rank */
            t->merges[i].key = k;
            t->merges[i].rank = (int32_t)r;
            t->merges[i].result = result;
        }
    }
done:
    free(cat);
    return st;
}

/* Byte tokens. gpt2: the token of each byte's GPT-2 char; a vocab may lack some (SmolLM2
 * has no token for 21 bytes, 0x04 and 0xff among them): such bytes are dropped from the
 * input, as HF tokenizers (BPE without unk_token) and llama.cpp both do. spm: <0xXX>. */
static void setup_byte_tokens(ns_tokenizer *t) {
    for (int i = 0; i < 324; i++) t->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        if (t->kind == TOK_SPM) {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            t->byte_token[b] = vocab_find(t, hex, 6);
            continue;
        }
        int32_t cp = gpt2_byte_to_cp(b);
        t->cp_byte[cp] = (int16_t)b;
        t->byte_char_len[b] = (uint8_t)utf8_encode(cp, t->byte_char[b]);
        t->byte_token[b] = vocab_find(t, t->byte_char[b], t->byte_char_len[b]);
    }
}

typedef struct special_key {
    uint64_t key; /* first byte << 32 | (UINT32_MAX - length): byte order, longest first */
    int32_t id;
} special_key;

static int cmp_special(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->key != y->key) return x->key < y->key ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static bool is_verbatim_type(int type) {
    return type == TT_CONTROL || type == TT_USER_DEFINED || type == TT_UNKNOWN;
}

static ns_status setup_specials(ns_tokenizer *t, ns_error *err) {
    int32_t n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_verbatim_type(ATTR_TYPE(t->attr[i])) && t->text_len[i] > 0) n++;
    t->special_ids = ns_malloc_array((size_t)n, sizeof *t->special_ids);
    special_key *keys = ns_malloc_array((size_t)n, sizeof *keys);
    if (!t->special_ids || !keys) {
        free(keys);
        return ns_error_set(err, NS_ERR_NOMEM, "special tokens: no memory");
    }
    n = 0;
    for (int32_t i = 0; i < t->n_vocab; i++)
        if (is_verbatim_type(ATTR_TYPE(t->attr[i])) && t->text_len[i] > 0) {
            uint64_t first = (unsigned char)tok_text(t, i)[0];
            keys[n].key = (first << 32) | (UINT32_MAX - t->text_len[i]);
            keys[n++].id = i;
        }
    qsort(keys, (size_t)n, sizeof *keys, cmp_special);
    for (int32_t i = 0; i < n; i++) t->special_ids[i] = keys[i].id;
    free(keys);
    int32_t j = 0;
    for (int b = 0; b <= 256; b++) {
        while (j < n && (unsigned char)tok_text(t, t->special_ids[j])[0] < b) j++;
        t->special_start[b] = j;
    }
    t->special_start[256] = n;

    /* end of turn and end of generation, by id and by the usual texts */
    static const char *eot_texts[] = {"<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"};
    static const char *eog_texts[] = {"<|im_end|>",     "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
                                      "<|endoftext|>", "</s>",       "<end_of_turn>", "<|end|>",
                                      "<EOT>"};
    if (t->eot < 0)
        for (size_t i = 0; i < sizeof eot_texts / sizeof *eot_texts && t->eot < 0; i++) {
            int32_t id = vocab_find(t, eot_texts[i], strlen(eot_texts[i]));
            if (id >= 0 && is_verbatim_type(ATTR_TYPE(t->attr[id]))) t->eot = id;
        }
    for (size_t i = 0; i < sizeof eog_texts / sizeof *eog_texts; i++) {
        int32_t id = vocab_find(t, eog_texts[i], strlen(eog_texts[i]));
        if (id >= 0 && is_verbatim_type(ATTR_TYPE(t->attr[id]))) t->attr[id] |= ATTR_EOG;
    }
    if (t->eos >= 0) t->attr[t->eos] |= ATTR_EOG;
    if (t->eot >= 0) t->attr[t->eot] |= ATTR_EOG;
    return NS_OK;
}

static ns_status setup_pre(const ns_gguf *g, ns_tokenizer *t, ns_error *err) {
    const char *key = "tokenizer.ggml.pre";
    int family = PRE_GPT2;
    t->pre_name = "default";
    if (has_key(g, key)) {
        ns_gguf_str s;
        ns_status st = ns_gguf_get_str(g, key, &s, err);
        if (st) return st;
        size_t i;
        for (i = 0; i < N_PRE_NAMES; i++)
            if (strlen(g_pre_names[i].name) == s.len && memcmp(g_pre_names[i].name, s.ptr, s.len) == 0)
                break;
        if (i == N_PRE_NAMES) {
            char list[400];
            size_t off = 0;
            for (size_t k = 0; k < N_PRE_NAMES && off < sizeof list; k++)
                off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", k ? ", " : "",
                                        g_pre_names[k].name);
            return ns_error_set(err, NS_ERR_UNSUPPORTED, "%s = \"%.*s\" is not supported (supported: %s)",
                                key, (int)NS_MIN(s.len, 64), s.ptr, list);
        }
        t->pre_name = g_pre_names[i].name;
        family = g_pre_names[i].family;
    }
    t->n_stages = g_families[family].n_stages;
    t->ignore_merges = g_families[family].ignore_merges;
    for (int k = 0; k < t->n_stages; k++) {
        int ec;
        PCRE2_SIZE eo;
        const char *pat = g_families[family].stages[k];
        t->re[k] = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED,
                                 PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &ec, &eo, NULL);
        if (!t->re[k]) {
            PCRE2_UCHAR msg[128];
            pcre2_get_error_message(ec, msg, sizeof msg);
            return ns_error_set(err, NS_ERR_UNSUPPORTED, "pre-tokenizer \"%s\": PCRE2 error at %zu: %s",
                                t->pre_name, (size_t)eo, (const char *)msg);
        }
        /* JIT is an optimization: if it is unavailable pcre2_match interprets */
        (void)pcre2_jit_compile(t->re[k], PCRE2_JIT_COMPLETE);
    }
    return NS_OK;
}

ns_status ns_tokenizer_load(const ns_gguf *g, ns_tokenizer **out, ns_error *err) {
    *out = NULL;
    ns_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return ns_error_set(err, NS_ERR_NOMEM, "tokenizer: no memory");
    t->bos = t->eos = t->eot = t->unk = t->pad = -1;
    ns_status st;
    ns_gguf_str model;
    if ((st = ns_gguf_get_str(g, "tokenizer.ggml.model", &model, err))) goto fail;
    if (model.len == 4 && memcmp(model.ptr, "gpt2", 4) == 0) t->kind = TOK_GPT2;
    else if (model.len == 5 && memcmp(model.ptr, "llama", 5) == 0) t->kind = TOK_SPM;
    else {
        st = ns_error_set(err, NS_ERR_UNSUPPORTED,
                          "tokenizer.ggml.model = \"%.*s\" is not supported (supported: gpt2, llama)",
                          (int)NS_MIN(model.len, 64), model.ptr);
        goto fail;
    }
    if ((st = load_tokens(g, t, err))) goto fail;
    if ((st = load_token_types(g, t, err))) goto fail;

    /* SentencePiece defaults as llama.cpp has them; byte-level vocabularies have none */
    if (t->kind == TOK_SPM) {
        t->unk = 0 < t->n_vocab ? 0 : -1;
        t->bos = 1 < t->n_vocab ? 1 : -1;
        t->eos = 2 < t->n_vocab ? 2 : -1;
        t->add_bos = true;
        t->add_space_prefix = true;
    }
    if ((st = load_opt_id(g, "tokenizer.ggml.bos_token_id", t->n_vocab, &t->bos, err))) goto fail;
    if ((st = load_opt_id(g, "tokenizer.ggml.eos_token_id", t->n_vocab, &t->eos, err))) goto fail;
    if ((st = load_opt_id(g, "tokenizer.ggml.eot_token_id", t->n_vocab, &t->eot, err))) goto fail;
    if ((st = load_opt_id(g, "tokenizer.ggml.unknown_token_id", t->n_vocab, &t->unk, err))) goto fail;
    if ((st = load_opt_id(g, "tokenizer.ggml.padding_token_id", t->n_vocab, &t->pad, err))) goto fail;
    int32_t eom = -1;
    if ((st = load_opt_id(g, "tokenizer.ggml.eom_token_id", t->n_vocab, &eom, err))) goto fail;
    if (eom >= 0) t->attr[eom] |= ATTR_EOG;
    if ((st = load_opt_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err))) goto fail;
    if ((st = load_opt_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix, err)))
        goto fail;

    if (t->kind == TOK_GPT2) {
        if ((st = load_merges(g, t, err))) goto fail;
        if ((st = setup_pre(g, t, err))) goto fail;
    } else {
        if ((st = load_scores(g, t, err))) goto fail;
        t->pre_name = "default"; /* SentencePiece has no split pattern */
    }
    setup_byte_tokens(t);
    if ((st = setup_specials(t, err))) goto fail;
    *out = t;
    return NS_OK;
fail:
    ns_tokenizer_free(t);
    return st;
}

/* ---------------------------------------------------------------- encoding */

typedef struct spm_sym {
    int32_t start, len; /* bytes in the normalized text; len 0 once merged away */
    int32_t prev, next;
} spm_sym;

typedef struct spm_pair {
    float score;
    int32_t left, right, size;
} spm_pair;

/* Per-call state: the output and scratch that grows to the largest piece seen. */
typedef struct enc_ctx {
    const ns_tokenizer *t;
    int32_t *ids;
    size_t n_ids, cap_ids;
    pcre2_match_data *md;
    bool oom;
    /* gpt2 BPE scratch, (n) each: symbol id, neighbours, best merge with the right
     * neighbour (rank, result); heap of (rank << 32 | pos) */
    int32_t *sym_id, *sym_prev, *sym_next, *pair_rank, *pair_result;
    size_t sym_cap;
    uint64_t *heap;
    size_t heap_cap;
    char *buf; /* mapped text (ignore_merges) or SentencePiece normalized text */
    size_t buf_cap;
    spm_sym *spm_syms;
    size_t spm_sym_cap;
    spm_pair *spm_heap;
    size_t spm_heap_cap;
} enc_ctx;

static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t nc = NS_MAX(need, *cap * 2);
    if (nc < 64) nc = 64;
    void *q = NULL;
    if (nc <= SIZE_MAX / elem) q = realloc(*p, nc * elem);
    if (!q) return false;
    *p = q;
    *cap = nc;
    return true;
}

static void emit(enc_ctx *c, int32_t id) {
    if (c->oom || id < 0) return;
    if (c->n_ids == c->cap_ids && !grow((void **)&c->ids, &c->cap_ids, c->n_ids + 1, sizeof *c->ids)) {
        c->oom = true;
        return;
    }
    c->ids[c->n_ids++] = id;
}

static void heap_push_u64(uint64_t *h, size_t *n, uint64_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop_u64(uint64_t *h, size_t *n) {
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= m) break;
        size_t s = (l + 1 < m && h[l + 1] < h[l]) ? l + 1 : l;
        if (h[s] >= v) break;
        h[i] = h[s];
        i = s;
    }
    if (m) h[i] = v;
    return top;
}

/* Looks up the merge of pos with its right neighbour and queues it. */
static void bpe_queue_pair(enc_ctx *c, int32_t pos, size_t *n_heap) {
    int32_t nx = c->sym_next[pos];
    c->pair_rank[pos] = -1;
    if (nx < 0) return;
    const merge_slot *m = merge_find(c->t, c->sym_id[pos], c->sym_id[nx]);
    if (!m) return;
    c->pair_rank[pos] = m->rank;
    c->pair_result[pos] = m->result;
    heap_push_u64(c->heap, n_heap, ((uint64_t)(uint32_t)m->rank << 32) | (uint32_t)pos);
}

/* Byte-level BPE of one pre-token: one symbol per byte, then repeatedly the merge of
 * lowest rank (leftmost first among equal ranks), as HF tokenizers and llama.cpp do. */
static void bpe_piece(enc_ctx *c, const char *p, size_t n) {
    const ns_tokenizer *t = c->t;
    const unsigned char *u = (const unsigned char *)p;
    if (n == 0 || c->oom) return;
    if (n == 1) {
        emit(c, t->byte_token[u[0]]);
        return;
    }
    if (t->ignore_merges) { /* a pre-token that is a vocab token is taken whole */
        if (!grow((void **)&c->buf, &c->buf_cap, 2 * n, 1)) {
            c->oom = true;
            return;
        }
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(c->buf + m, t->byte_char[u[i]], t->byte_char_len[u[i]]);
            m += t->byte_char_len[u[i]];
        }
        int32_t id = vocab_find(t, c->buf, m);
        if (id >= 0) {
            emit(c, id);
            return;
        }
    }
    if (n > INT32_MAX) { /* positions are int32: split a > 2 GB pre-token */
        bpe_piece(c, p, n / 2);
        bpe_piece(c, p + n / 2, n - n / 2);
        return;
    }
    if (n > c->sym_cap) {
        size_t cap = c->sym_cap;
        bool ok = true;
        int32_t **arrs[] = {&c->sym_id, &c->sym_prev, &c->sym_next, &c->pair_rank, &c->pair_result};
        for (size_t k = 0; k < 5 && ok; k++) {
            cap = c->sym_cap;
            ok = grow((void **)arrs[k], &cap, n, sizeof(int32_t));
        }
        if (!ok) {
            c->oom = true;
            return;
        }
        c->sym_cap = cap;
    }
    /* each merge queues at most two pairs */
    if (!grow((void **)&c->heap, &c->heap_cap, 3 * n, sizeof *c->heap)) {
        c->oom = true;
        return;
    }
    int32_t len = 0; /* symbols: the bytes that have a token */
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_token[u[i]];
        if (id < 0) continue;
        c->sym_id[len] = id;
        c->sym_prev[len] = len - 1;
        c->sym_next[len] = len + 1;
        len++;
    }
    if (len == 0) return;
    c->sym_next[len - 1] = -1;
    size_t n_heap = 0;
    for (int32_t i = 0; i < len; i++) bpe_queue_pair(c, i, &n_heap);
    while (n_heap > 0) {
        uint64_t top = heap_pop_u64(c->heap, &n_heap);
        int32_t pos = (int32_t)(uint32_t)top, rank = (int32_t)(top >> 32);
        /* stale unless pos is alive and still pairs with the same rank: a rank names
         * exactly one (left, right) pair */
        if (c->sym_id[pos] < 0 || c->pair_rank[pos] != rank) continue;
        int32_t nx = c->sym_next[pos];
        c->sym_id[pos] = c->pair_result[pos];
        c->sym_id[nx] = -1;
        c->pair_rank[nx] = -1;
        c->sym_next[pos] = c->sym_next[nx];
        if (c->sym_next[nx] >= 0) c->sym_prev[c->sym_next[nx]] = pos;
        if (c->sym_prev[pos] >= 0) bpe_queue_pair(c, c->sym_prev[pos], &n_heap);
        bpe_queue_pair(c, pos, &n_heap);
    }
    for (int32_t i = 0; i >= 0; i = c->sym_next[i]) emit(c, c->sym_id[i]);
}

/* Splits [p, p+n) with the pattern of `stage`; matches and the gaps between them both
 * become pieces for the next stage (the last stage hands them to BPE). */
static void pre_split(enc_ctx *c, int stage, const char *p, size_t n) {
    if (n == 0 || c->oom) return;
    if (stage == c->t->n_stages) {
        bpe_piece(c, p, n);
        return;
    }
    const pcre2_code *re = c->t->re[stage];
    size_t off = 0, gap = 0;
    while (off < n) {
        int rc = pcre2_match(re, (PCRE2_SPTR)p, n, off, 0, c->md, NULL);
        /* no match, or a match error (resource limit): the rest is one piece */
        if (rc < 0) break;
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t s = ov[0], e = ov[1];
        if (e <= s) { /* empty match: none of the patterns has one, but never loop */
            off = s + 1;
            while (off < n && ((unsigned char)p[off] & 0xc0) == 0x80) off++;
            continue;
        }
        if (s > gap) pre_split(c, stage + 1, p + gap, s - gap);
        pre_split(c, stage + 1, p + s, e - s);
        off = gap = e;
    }
    if (gap < n) pre_split(c, stage + 1, p + gap, n - gap);
}

static void spm_heap_push(spm_pair *h, size_t *n, spm_pair v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        /* max-heap on score; among equal scores the leftmost first */
        if (h[p].score > v.score || (h[p].score == v.score && h[p].left < v.left)) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static bool spm_before(const spm_pair *a, const spm_pair *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static spm_pair spm_heap_pop(spm_pair *h, size_t *n) {
    spm_pair top = h[0], v = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1;
        if (l >= m) break;
        size_t s = (l + 1 < m && spm_before(&h[l + 1], &h[l])) ? l + 1 : l;
        if (!spm_before(&h[s], &v)) break;
        h[i] = h[s];
        i = s;
    }
    if (m) h[i] = v;
    return top;
}

static void spm_try_pair(enc_ctx *c, int32_t left, int32_t right, size_t *n_heap) {
    if (left < 0 || right < 0) return;
    const spm_sym *a = &c->spm_syms[left], *b = &c->spm_syms[right];
    int32_t id = vocab_find(c->t, c->buf + a->start, (size_t)(a->len + b->len));
    if (id < 0) return;
    spm_pair pr = {c->t->scores[id], left, right, a->len + b->len};
    spm_heap_push(c->spm_heap, n_heap, pr);
}

/* SentencePiece BPE of one text fragment (between special tokens). */
static void spm_fragment(enc_ctx *c, const char *p, size_t n, bool prefix_space) {
    const ns_tokenizer *t = c->t;
    if (c->oom || n == 0) return; /* empty text: no tokens, not a lone U+2581 */
    /* normalize: ' ' -> U+2581 (3 bytes), optional leading U+2581 */
    if (n > (INT32_MAX - 3) / 3) { /* offsets are int32: cut absurd fragments */
        spm_fragment(c, p, n / 2, prefix_space);
        spm_fragment(c, p + n / 2, n - n / 2, false);
        return;
    }
    if (!grow((void **)&c->buf, &c->buf_cap, 3 * n + 3, 1)) {
        c->oom = true;
        return;
    }
    size_t m = 0;
    if (prefix_space) {
        memcpy(c->buf, "\xe2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (p[i] == ' ') {
            memcpy(c->buf + m, "\xe2\x96\x81", 3);
            m += 3;
        } else c->buf[m++] = p[i];
    }
    if (!grow((void **)&c->spm_syms, &c->spm_sym_cap, m, sizeof *c->spm_syms) ||
        !grow((void **)&c->spm_heap, &c->spm_heap_cap, 3 * m, sizeof *c->spm_heap)) {
        c->oom = true;
        return;
    }
    /* one symbol per UTF-8 char (an invalid byte is a char of its own) */
    int32_t n_sym = 0;
    for (size_t i = 0; i < m;) {
        size_t l = utf8_valid_len((const unsigned char *)c->buf + i, m - i);
        if (l == 0) l = 1;
        spm_sym *s = &c->spm_syms[n_sym];
        s->start = (int32_t)i;
        s->len = (int32_t)l;
        s->prev = n_sym - 1;
        s->next = -1;
        if (n_sym > 0) c->spm_syms[n_sym - 1].next = n_sym;
        n_sym++;
        i += l;
    }
    size_t n_heap = 0;
    for (int32_t i = 0; i + 1 < n_sym; i++) spm_try_pair(c, i, i + 1, &n_heap);
    while (n_heap > 0) {
        spm_pair pr = spm_heap_pop(c->spm_heap, &n_heap);
        spm_sym *a = &c->spm_syms[pr.left], *b = &c->spm_syms[pr.right];
        if (a->len == 0 || b->len == 0 || a->len + b->len != pr.size || a->next != pr.right)
            continue; /* stale */
        a->len += b->len;
        b->len = 0;
        a->next = b->next;
        if (b->next >= 0) c->spm_syms[b->next].prev = pr.left;
        spm_try_pair(c, a->prev, pr.left, &n_heap);
        spm_try_pair(c, pr.left, a->next, &n_heap);
    }
    for (int32_t i = 0; i >= 0 && n_sym > 0; i = c->spm_syms[i].next) {
        const spm_sym *s = &c->spm_syms[i];
        int32_t id = vocab_find(t, c->buf + s->start, (size_t)s->len);
        if (id >= 0) {
            emit(c, id);
            continue;
        }
        /* byte fallback when every byte has its <0xXX> token, else one unknown token for
         * the char (as SentencePiece without byte fallback does) */
        bool all = true;
        for (int32_t k = 0; k < s->len; k++)
            all = all && t->byte_token[(unsigned char)c->buf[s->start + k]] >= 0;
        if (!all) {
            emit(c, t->unk);
            continue;
        }
        for (int32_t k = 0; k < s->len; k++)
            emit(c, t->byte_token[(unsigned char)c->buf[s->start + k]]);
    }
}

static void encode_fragment(enc_ctx *c, const char *p, size_t n, bool *is_prev_special) {
    if (c->t->kind == TOK_GPT2) {
        pre_split(c, 0, p, n);
    } else {
        /* as llama.cpp: a space is prepended to the text at the start and after each
         * special token */
        spm_fragment(c, p, n, c->t->add_space_prefix && *is_prev_special);
    }
    *is_prev_special = false;
}

ns_status ns_tokenizer_encode(const ns_tokenizer *t, const char *text, size_t len, bool add_bos,
                              bool parse_special, int32_t **ids, size_t *n_ids, ns_error *err) {
    *ids = NULL;
    *n_ids = 0;
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.t = t;
    if (t->kind == TOK_GPT2) {
        c.md = pcre2_match_data_create(1, NULL);
        if (!c.md) c.oom = true;
    }
    if (!grow((void **)&c.ids, &c.cap_ids, len / 3 + 16, sizeof *c.ids)) c.oom = true;
    if (add_bos && t->bos >= 0) emit(&c, t->bos); /* the caller decides (add_bos_token) */

    /* cut at verbatim tokens: user-defined ones always, control/unknown ones only when
     * parse_special (llama.cpp's rule); the longest match wins at each position */
    bool is_prev_special = true;
    size_t frag = 0;
    for (size_t i = 0; i < len && !c.oom;) {
        unsigned char b = (unsigned char)text[i];
        int32_t lo = t->special_start[b], hi = t->special_start[b + 1], hit = -1;
        for (int32_t k = lo; k < hi; k++) {
            int32_t id = t->special_ids[k];
            if (!parse_special && ATTR_TYPE(t->attr[id]) != TT_USER_DEFINED) continue;
            size_t tl = t->text_len[id];
            if (tl <= len - i && memcmp(text + i, tok_text(t, id), tl) == 0) {
                hit = id;
                break;
            }
        }
        if (hit < 0) {
            i++;
            continue;
        }
        if (i > frag) encode_fragment(&c, text + frag, i - frag, &is_prev_special);
        emit(&c, hit);
        is_prev_special = true;
        i += t->text_len[hit];
        frag = i;
    }
    if (len > frag) encode_fragment(&c, text + frag, len - frag, &is_prev_special);

    pcre2_match_data_free(c.md);
    free(c.sym_id);
    free(c.sym_prev);
    free(c.sym_next);
    free(c.pair_rank);
    free(c.pair_result);
    free(c.heap);
    free(c.buf);
    free(c.spm_syms);
    free(c.spm_heap);
    if (c.oom) {
        free(c.ids);
        return ns_error_set(err, NS_ERR_NOMEM, "tokenizer: no memory to encode %zu bytes", len);
    }
    *ids = c.ids;
    *n_ids = c.n_ids;
    return NS_OK;
}

/* ---------------------------------------------------------------- accessors */

bool ns_tokenizer_add_bos(const ns_tokenizer *t) { return t->add_bos; }

int32_t ns_tokenizer_n_vocab(const ns_tokenizer *t) { return t->n_vocab; }
int32_t ns_tokenizer_bos(const ns_tokenizer *t) { return t->bos; }
int32_t ns_tokenizer_eos(const ns_tokenizer *t) { return t->eos; }
int32_t ns_tokenizer_eot(const ns_tokenizer *t) { return t->eot; }

bool ns_tokenizer_is_eog(const ns_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && (t->attr[id] & ATTR_EOG);
}

bool ns_tokenizer_is_control(const ns_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n_vocab) return false;
    int type = ATTR_TYPE(t->attr[id]);
    return type == TT_CONTROL || type == TT_UNKNOWN || type == TT_UNUSED;
}

const char *ns_tokenizer_token_text(const ns_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? tok_text(t, id) : NULL;
}

int32_t ns_tokenizer_find(const ns_tokenizer *t, const char *text) {
    return vocab_find(t, text, strlen(text));
}

const char *ns_tokenizer_model_name(const ns_tokenizer *t) {
    return t->kind == TOK_GPT2 ? "gpt2" : "llama";
}

const char *ns_tokenizer_pre_name(const ns_tokenizer *t) { return t->pre_name; }

/* ---------------------------------------------------------------- decoding */

typedef void (*byte_sink)(void *ctx, const char *p, size_t n);

/* Feeds the raw bytes of token id to sink (see ns_tokenizer_token_bytes). */
static void token_visit(const ns_tokenizer *t, int32_t id, bool render_special, byte_sink sink,
                        void *ctx) {
    const char *s = tok_text(t, id);
    size_t n = t->text_len[id];
    int type = ATTR_TYPE(t->attr[id]);
    if (type == TT_CONTROL || type == TT_UNKNOWN || type == TT_UNUSED) {
        if (render_special) sink(ctx, s, n);
        return;
    }
    if (type == TT_USER_DEFINED) {
        sink(ctx, s, n);
        return;
    }
    if (type == TT_BYTE) {
        int b = byte_token_value(s, n);
        if (b >= 0) {
            char c = (char)b;
            sink(ctx, &c, 1);
            return;
        }
    }
    if (t->kind == TOK_SPM) { /* U+2581 -> ' ' */
        size_t run = 0;
        for (size_t i = 0; i < n;) {
            if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                if (i > run) sink(ctx, s + run, i - run);
                sink(ctx, " ", 1);
                i += 3;
                run = i;
            } else i++;
        }
        if (n > run) sink(ctx, s + run, n - run);
        return;
    }
    /* byte-level: each char names a byte; a char outside the table passes through */
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t l = utf8_decode(u + i, n - i, &cp);
        int b = cp >= 0 && cp < 324 ? t->cp_byte[cp] : -1;
        if (b >= 0) {
            char c = (char)b;
            sink(ctx, &c, 1);
        } else sink(ctx, s + i, l);
        i += l;
    }
}

typedef struct copy_sink {
    char *buf;
    size_t cap, n;
} copy_sink;

static void copy_bytes(void *ctx, const char *p, size_t n) {
    copy_sink *c = ctx;
    for (size_t i = 0; i < n; i++, c->n++)
        if (c->n < c->cap) c->buf[c->n] = p[i];
}

int ns_tokenizer_token_bytes(const ns_tokenizer *t, int32_t id, bool render_special, char *buf,
                             size_t cap) {
    if (id < 0 || id >= t->n_vocab) return -1;
    copy_sink c = {buf, cap, 0};
    token_visit(t, id, render_special, copy_bytes, &c);
    return c.n > INT32_MAX ? INT32_MAX : (int)c.n;
}

void ns_detok_init(ns_detok *d, bool render_special) {
    memset(d, 0, sizeof *d);
    d->render_special = render_special;
    d->at_start = true;
}

/* The UTF-8 assembler behind ns_detok: complete sequences go out, a valid but
 * incomplete prefix waits in pending, anything invalid becomes one U+FFFD (per maximal
 * invalid subpart, as Python's errors="replace" does). With out == NULL it only counts. */
typedef struct utf8_sink {
    char pending[8];
    int n_pending;
    char *out;
    size_t n;
    bool drop_space; /* SentencePiece: drop the first byte if it is ' ' */
    bool any;        /* saw a raw byte */
} utf8_sink;

static void put(utf8_sink *s, const char *p, size_t n) {
    if (s->out) memcpy(s->out + s->n, p, n);
    s->n += n;
}

static void utf8_byte(utf8_sink *s, unsigned char b) {
    for (;;) {
        if (s->n_pending == 0) {
            if (b < 0x80) {
                char c = (char)b;
                put(s, &c, 1);
            } else if ((b >= 0xc2 && b <= 0xf4)) {
                s->pending[s->n_pending++] = (char)b;
            } else {
                put(s, "\xef\xbf\xbd", 3);
            }
            return;
        }
        unsigned char lead = (unsigned char)s->pending[0];
        size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2;
        unsigned char lo = 0x80, hi = 0xbf;
        if (s->n_pending == 1) {
            if (lead == 0xe0) lo = 0xa0;
            if (lead == 0xed) hi = 0x9f;
            if (lead == 0xf0) lo = 0x90;
            if (lead == 0xf4) hi = 0x8f;
        }
        if (b < lo || b > hi) { /* the prefix is invalid; b starts afresh */
            put(s, "\xef\xbf\xbd", 3);
            s->n_pending = 0;
            continue;
        }
        s->pending[s->n_pending++] = (char)b;
        if ((size_t)s->n_pending == need) {
            put(s, s->pending, need);
            s->n_pending = 0;
        }
        return;
    }
}

static void utf8_feed(void *ctx, const char *p, size_t n) {
    utf8_sink *s = ctx;
    for (size_t i = 0; i < n; i++) {
        if (!s->any) {
            s->any = true;
            if (s->drop_space && p[i] == ' ') continue;
        }
        utf8_byte(s, (unsigned char)p[i]);
    }
}

int ns_detok_push(const ns_tokenizer *t, ns_detok *d, int32_t id, char *out, size_t cap) {
    if (id < 0 || id >= t->n_vocab || d->n_pending < 0 || d->n_pending > 4) return -1;
    utf8_sink s;
    memset(&s, 0, sizeof s);
    memcpy(s.pending, d->pending, sizeof s.pending);
    s.n_pending = d->n_pending;
    s.drop_space = d->at_start && t->kind == TOK_SPM && t->add_space_prefix;
    utf8_sink count = s;
    token_visit(t, id, d->render_special, utf8_feed, &count); /* first pass: size only */
    if (count.n > cap || count.n > INT32_MAX) return -1;
    s.out = out;
    token_visit(t, id, d->render_special, utf8_feed, &s);
    memcpy(d->pending, s.pending, sizeof d->pending);
    d->n_pending = s.n_pending;
    if (s.any) d->at_start = false;
    return (int)s.n;
}

int ns_detok_flush(ns_detok *d, char *out, size_t cap) {
    if (d->n_pending <= 0) {
        d->n_pending = 0;
        return 0;
    }
    if (cap < 3) return -1;
    memcpy(out, "\xef\xbf\xbd", 3);
    d->n_pending = 0;
    return 3;
}
