/* test_tokenizer.c: engine/tokenizer.c.
 *
 * - Golden ids for the demo model (tests/golden/tokens_smollm2.txt, made by
 *   tests/golden/make_tokens.py from Hugging Face tokenizers), and decode(encode(x)) == x.
 * - Streaming decode: emoji split across tokens come out whole, incomplete tails as U+FFFD.
 * - Vocab-only GGUFs written with ns_gguf_writer: a small byte-level BPE (pre-tokenizer
 *   stages, special and user-defined tokens) and a small SentencePiece vocab (scores, byte
 *   fallback, unknown chars, space prefix), each with segmentations worked out by hand.
 * - Malformed tokenizer metadata refused with the right code and a message naming it.
 * - Hostile input: invalid UTF-8 and 1 MB without spaces encode quickly and byte-exactly.
 */
#define _POSIX_C_SOURCE 200809L
#include "../test.h"
#include "gguf.h"
#include "tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GOLDEN_PATH "tests/golden/tokens_smollm2.txt"

/* ---- helpers ---- */

static ns_tokenizer *load_demo(void) {
    const char *path = ns_test_demo_model();
    if (!path) return NULL;
    ns_error err;
    ns_gguf *g = NULL;
    ns_tokenizer *t = NULL;
    if (ns_gguf_open(path, &g, &err) != NS_OK) {
        ns_test_fail_at(__FILE__, __LINE__, "open %s: %s", path, err.msg);
        return NULL;
    }
    if (ns_tokenizer_load(g, &t, &err) != NS_OK)
        ns_test_fail_at(__FILE__, __LINE__, "load tokenizer: %s", err.msg);
    ns_gguf_close(g); /* the tokenizer must not borrow from the file */
    return t;
}

/* Valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF)? */
static bool utf8_ok(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        size_t len;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c < 0x80) len = 1;
        else if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else return false;
        if (i + len > n) return false;
        if (len > 1 && (p[i + 1] < lo || p[i + 1] > hi)) return false;
        for (size_t k = 2; k < len; k++)
            if ((p[i + k] & 0xc0) != 0x80) return false;
        i += len;
    }
    return true;
}

/* Streams ids through ns_detok into a malloc'd string (*n bytes). Every chunk must be
 * valid UTF-8 on its own. */
static char *detok_all(const ns_tokenizer *t, const int32_t *ids, size_t n_ids,
                       bool render_special, size_t *n) {
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    ns_detok d;
    ns_detok_init(&d, render_special);
    char chunk[4096];
    for (size_t i = 0; i <= n_ids; i++) {
        int k = i < n_ids ? ns_detok_push(t, &d, ids[i], chunk, sizeof chunk)
                          : ns_detok_flush(&d, chunk, sizeof chunk);
        if (k < 0) {
            ns_test_fail_at(__FILE__, __LINE__, "detok returned %d at token %zu", k, i);
            break;
        }
        CHECK_MSG(utf8_ok(chunk, (size_t)k), "chunk %zu is not valid UTF-8", i);
        if (len + (size_t)k + 1 > cap) {
            while (len + (size_t)k + 1 > cap) cap *= 2;
            out = realloc(out, cap);
        }
        memcpy(out + len, chunk, (size_t)k);
        len += (size_t)k;
    }
    out[len] = '\0';
    *n = len;
    return out;
}

/* Concatenated raw token bytes (no UTF-8 repair): must give back any input exactly. */
static char *raw_all(const ns_tokenizer *t, const int32_t *ids, size_t n_ids, size_t *n) {
    size_t len = 0;
    for (size_t i = 0; i < n_ids; i++) len += (size_t)ns_tokenizer_token_bytes(t, ids[i], true, NULL, 0);
    char *out = malloc(len + 1);
    size_t off = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int k = ns_tokenizer_token_bytes(t, ids[i], true, out + off, len - off);
        off += (size_t)k;
    }
    *n = off;
    return out;
}

static int hexdig(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

typedef struct golden_case {
    char name[64];
    bool parse_special;
    char *text;
    size_t n_text;
    int32_t *ids;
    size_t n_ids;
} golden_case;

/* Reads tests/golden/tokens_smollm2.txt (format in tests/golden/make_tokens.py). */
static golden_case *golden_read(size_t *n_cases) {
    *n_cases = 0;
    FILE *f = fopen(GOLDEN_PATH, "r");
    if (!f) {
        ns_test_fail_at(__FILE__, __LINE__, "cannot open %s", GOLDEN_PATH);
        return NULL;
    }
    golden_case *cases = NULL;
    size_t cap = 0, n = 0;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    while ((got = getline(&line, &line_cap, f)) >= 0) {
        if (got > 0 && line[got - 1] == '\n') line[--got] = '\0';
        if (got == 0 || line[0] == '#') continue;
        char *f1 = strchr(line, '\t');
        char *f2 = f1 ? strchr(f1 + 1, '\t') : NULL;
        char *f3 = f2 ? strchr(f2 + 1, '\t') : NULL;
        if (!f3) {
            ns_test_fail_at(__FILE__, __LINE__, "bad golden line: %.40s", line);
            continue;
        }
        *f1 = *f2 = *f3 = '\0';
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            cases = realloc(cases, cap * sizeof *cases);
        }
        golden_case *c = &cases[n++];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "%s", line);
        c->parse_special = f1[1] == '1';
        size_t hexlen = strlen(f2 + 1);
        c->text = malloc(hexlen / 2 + 1);
        for (size_t i = 0; i + 1 < hexlen + 1 && i < hexlen; i += 2)
            c->text[c->n_text++] = (char)(hexdig(f2[1 + i]) * 16 + hexdig(f2[2 + i]));
        c->text[c->n_text] = '\0';
        c->ids = malloc((strlen(f3 + 1) / 2 + 1) * sizeof *c->ids);
        char *p = f3 + 1;
        while (*p) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p) break;
            c->ids[c->n_ids++] = (int32_t)v;
            p = end;
        }
    }
    free(line);
    fclose(f);
    *n_cases = n;
    return cases;
}

static void golden_free(golden_case *cases, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(cases[i].text);
        free(cases[i].ids);
    }
    free(cases);
}

/* ---- demo model ---- */

NS_TEST(test_tokenizer_demo_metadata) {
    if (!ns_test_demo_model()) SKIP("demo model not present");
    ns_tokenizer *t = load_demo();
    if (!t) return;
    CHECK_EQ_INT(ns_tokenizer_n_vocab(t), 49152);
    CHECK(strcmp(ns_tokenizer_model_name(t), "gpt2") == 0);
    CHECK(strcmp(ns_tokenizer_pre_name(t), "smollm") == 0);
    CHECK_EQ_INT(ns_tokenizer_bos(t), 1);
    CHECK_EQ_INT(ns_tokenizer_eos(t), 2);
    CHECK_EQ_INT(ns_tokenizer_eot(t), 2);
    CHECK(ns_tokenizer_is_eog(t, 2));
    CHECK(ns_tokenizer_is_eog(t, 0)); /* <|endoftext|> */
    CHECK(!ns_tokenizer_is_eog(t, 1));
    CHECK(!ns_tokenizer_is_eog(t, 100));
    CHECK(!ns_tokenizer_is_eog(t, -1));
    CHECK(!ns_tokenizer_is_eog(t, 49152));
    CHECK(ns_tokenizer_is_control(t, 1));
    CHECK(ns_tokenizer_is_control(t, 16));
    CHECK(!ns_tokenizer_is_control(t, 17));
    CHECK_EQ_INT(ns_tokenizer_find(t, "<|im_start|>"), 1);
    CHECK_EQ_INT(ns_tokenizer_find(t, "\xc4\xa0the"), 260); /* "Ġthe" */
    CHECK_EQ_INT(ns_tokenizer_find(t, "no such token, surely"), -1);
    CHECK(strcmp(ns_tokenizer_token_text(t, 2), "<|im_end|>") == 0);
    CHECK(ns_tokenizer_token_text(t, -1) == NULL);
    CHECK(ns_tokenizer_token_text(t, 49152) == NULL);
    char buf[64];
    CHECK_EQ_INT(ns_tokenizer_token_bytes(t, 260, false, buf, sizeof buf), 4);
    CHECK(memcmp(buf, " the", 4) == 0);
    CHECK_EQ_INT(ns_tokenizer_token_bytes(t, 2, false, buf, sizeof buf), 0);
    CHECK_EQ_INT(ns_tokenizer_token_bytes(t, 2, true, buf, sizeof buf), 10);
    CHECK_EQ_INT(ns_tokenizer_token_bytes(t, 2, true, buf, 3), 10); /* like snprintf */
    CHECK_EQ_INT(ns_tokenizer_token_bytes(t, 49152, true, buf, sizeof buf), -1);
    /* add_bos_token is false for SmolLM2; BOS only when the caller asks */
    CHECK(!ns_tokenizer_add_bos(t));
    int32_t *ids;
    size_t n;
    ns_error err;
    CHECK_STATUS_OK(ns_tokenizer_encode(t, "hi", 2, false, true, &ids, &n, &err), &err);
    CHECK(n >= 1 && ids[0] != 1);
    free(ids);
    CHECK_STATUS_OK(ns_tokenizer_encode(t, "hi", 2, true, true, &ids, &n, &err), &err);
    CHECK(n >= 2 && ids[0] == 1);
    free(ids);
    ns_tokenizer_free(t);
}

NS_TEST(test_tokenizer_golden) {
    if (!ns_test_demo_model()) SKIP("demo model not present");
    ns_tokenizer *t = load_demo();
    if (!t) return;
    size_t n_cases;
    golden_case *cases = golden_read(&n_cases);
    CHECK(n_cases >= 30);
    for (size_t i = 0; i < n_cases; i++) {
        const golden_case *c = &cases[i];
        int32_t *ids = NULL;
        size_t n = 0;
        ns_error err;
        CHECK_STATUS_OK(ns_tokenizer_encode(t, c->text, c->n_text, false, c->parse_special, &ids,
                                            &n, &err), &err);
        size_t k = 0;
        while (k < n && k < c->n_ids && ids[k] == c->ids[k]) k++;
        CHECK_MSG(k == n && k == c->n_ids,
                  "case %s: %zu ids vs %zu golden, first difference at %zu (%d vs %d)", c->name,
                  n, c->n_ids, k, k < n ? (int)ids[k] : -1, k < c->n_ids ? (int)c->ids[k] : -1);
        free(ids);
    }
    golden_free(cases, n_cases);
    ns_tokenizer_free(t);
}

NS_TEST(test_tokenizer_roundtrip) {
    if (!ns_test_demo_model()) SKIP("demo model not present");
    ns_tokenizer *t = load_demo();
    if (!t) return;
    size_t n_cases;
    golden_case *cases = golden_read(&n_cases);
    for (size_t i = 0; i < n_cases; i++) {
        const golden_case *c = &cases[i];
        int32_t *ids = NULL;
        size_t n = 0, m = 0;
        ns_error err;
        CHECK_STATUS_OK(ns_tokenizer_encode(t, c->text, c->n_text, false, c->parse_special, &ids,
                                            &n, &err), &err);
        char *back = detok_all(t, ids, n, true, &m);
        CHECK_MSG(m == c->n_text && memcmp(back, c->text, m) == 0, "case %s: decode differs",
                  c->name);
        free(back);
        char *raw = raw_all(t, ids, n, &m);
        CHECK_MSG(m == c->n_text && memcmp(raw, c->text, m) == 0, "case %s: raw bytes differ",
                  c->name);
        free(raw);
        free(ids);
    }
    golden_free(cases, n_cases);

    /* specials are dropped unless rendering is asked for */
    const char *chat = "<|im_start|>user\nhi<|im_end|>";
    int32_t *ids;
    size_t n, m;
    ns_error err;
    CHECK_STATUS_OK(ns_tokenizer_encode(t, chat, strlen(chat), false, true, &ids, &n, &err), &err);
    CHECK(n >= 2 && ids[0] == 1 && ids[n - 1] == 2);
    char *back = detok_all(t, ids, n, false, &m);
    CHECK(m == 7 && memcmp(back, "user\nhi", 7) == 0);
    free(back);
    free(ids);
    ns_tokenizer_free(t);
}

NS_TEST(test_tokenizer_stream_emoji) {
    if (!ns_test_demo_model()) SKIP("demo model not present");
    ns_tokenizer *t = load_demo();
    if (!t) return;
    const char *text = "ok \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91"
                       "\xa7 \xf0\x9f\x8f\xb3\xef\xb8\x8f\xe2\x80\x8d\xf0\x9f\x8c\x88 \xe4\xbd\xa0"
                       "\xe5\xa5\xbd!";
    int32_t *ids;
    size_t n;
    ns_error err;
    CHECK_STATUS_OK(ns_tokenizer_encode(t, text, strlen(text), false, false, &ids, &n, &err), &err);
    ns_detok d;
    ns_detok_init(&d, false);
    char out[512], chunk[128];
    size_t len = 0;
    int n_held = 0; /* pushes that ended with bytes held back */
    for (size_t i = 0; i < n; i++) {
        int k = ns_detok_push(t, &d, ids[i], chunk, sizeof chunk);
        CHECK(k >= 0);
        if (k < 0) break;
        CHECK_MSG(utf8_ok(chunk, (size_t)k), "chunk %zu not valid UTF-8", i);
        if (d.n_pending > 0) n_held++;
        memcpy(out + len, chunk, (size_t)k);
        len += (size_t)k;
    }
    CHECK_MSG(n_held > 0, "no emoji was split across tokens: the test proves nothing");
    CHECK_EQ_INT(ns_detok_flush(&d, chunk, sizeof chunk), 0);
    CHECK(len == strlen(text) && memcmp(out, text, len) == 0);
    free(ids);

    /* a tail cut short: held back, then flushed as one U+FFFD */
    ns_detok_init(&d, false);
    int32_t b0 = ns_tokenizer_find(t, "\xc3\xb0"); /* byte 0xF0 */
    int32_t b1 = ns_tokenizer_find(t, "\xc5\x82"); /* byte 0x9F */
    CHECK(b0 >= 0 && b1 >= 0);
    CHECK_EQ_INT(ns_detok_push(t, &d, b0, chunk, sizeof chunk), 0);
    CHECK_EQ_INT(ns_detok_push(t, &d, b1, chunk, sizeof chunk), 0);
    CHECK_EQ_INT(ns_detok_flush(&d, chunk, sizeof chunk), 3);
    CHECK(memcmp(chunk, "\xef\xbf\xbd", 3) == 0);
    /* an interrupted sequence: U+FFFD, then the ASCII byte */
    ns_detok_init(&d, false);
    CHECK_EQ_INT(ns_detok_push(t, &d, b0, chunk, sizeof chunk), 0);
    int k = ns_detok_push(t, &d, ns_tokenizer_find(t, "a"), chunk, sizeof chunk);
    CHECK(k == 4 && memcmp(chunk, "\xef\xbf\xbd" "a", 4) == 0);
    /* too small an output buffer is refused without consuming the token */
    ns_detok_init(&d, true);
    CHECK_EQ_INT(ns_detok_push(t, &d, 2, chunk, 3), -1);
    CHECK_EQ_INT(ns_detok_push(t, &d, 2, chunk, sizeof chunk), 10);
    CHECK_EQ_INT(ns_detok_push(t, &d, 49152, chunk, sizeof chunk), -1);
    ns_tokenizer_free(t);
}

/* ---- small vocabularies written with ns_gguf_writer ---- */

typedef struct tvocab {
    const char *model; /* NULL: key omitted */
    const char *pre;   /* NULL: key omitted */
    const char **tokens;
    int n_tokens;
    const int32_t *types; /* NULL: key omitted */
    int n_types;
    const float *scores; /* NULL: key omitted */
    int n_scores;
    const char **merges; /* NULL: key omitted */
    int n_merges;
    int64_t bos, eos, unk; /* < -1: key omitted */
    int add_space_prefix;  /* -1: key omitted */
    bool tokens_as_i32, types_as_f32, scores_as_i32, bos_as_str;
} tvocab;

/* Writes v as a vocab-only GGUF in memory, opens it, builds the tokenizer, closes the
 * GGUF. Returns the tokenizer status. */
static ns_status tvocab_load(const tvocab *v, ns_tokenizer **out, ns_error *err) {
    *out = NULL;
    ns_gguf_writer *w = ns_gguf_writer_create();
    NS_ASSERT(w);
    NS_ASSERT(ns_gguf_writer_add_str(w, "general.architecture", "llama") == NS_OK);
    if (v->model) NS_ASSERT(ns_gguf_writer_add_str(w, "tokenizer.ggml.model", v->model) == NS_OK);
    if (v->pre) NS_ASSERT(ns_gguf_writer_add_str(w, "tokenizer.ggml.pre", v->pre) == NS_OK);
    if (v->tokens_as_i32) {
        int32_t *z = calloc((size_t)v->n_tokens, sizeof *z);
        NS_ASSERT(ns_gguf_writer_add_arr_i32(w, "tokenizer.ggml.tokens", z, (uint64_t)v->n_tokens) == NS_OK);
        free(z);
    } else if (v->tokens) {
        NS_ASSERT(ns_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", v->tokens,
                                             (uint64_t)v->n_tokens) == NS_OK);
    }
    if (v->types && v->types_as_f32) {
        float *z = calloc((size_t)v->n_types, sizeof *z);
        NS_ASSERT(ns_gguf_writer_add_arr_f32(w, "tokenizer.ggml.token_type", z, (uint64_t)v->n_types) == NS_OK);
        free(z);
    } else if (v->types) {
        NS_ASSERT(ns_gguf_writer_add_arr_i32(w, "tokenizer.ggml.token_type", v->types,
                                             (uint64_t)v->n_types) == NS_OK);
    }
    if (v->scores && v->scores_as_i32) {
        int32_t *z = calloc((size_t)v->n_scores, sizeof *z);
        NS_ASSERT(ns_gguf_writer_add_arr_i32(w, "tokenizer.ggml.scores", z, (uint64_t)v->n_scores) == NS_OK);
        free(z);
    } else if (v->scores) {
        NS_ASSERT(ns_gguf_writer_add_arr_f32(w, "tokenizer.ggml.scores", v->scores,
                                             (uint64_t)v->n_scores) == NS_OK);
    }
    if (v->merges)
        NS_ASSERT(ns_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", v->merges,
                                             (uint64_t)v->n_merges) == NS_OK);
    if (v->bos_as_str) NS_ASSERT(ns_gguf_writer_add_str(w, "tokenizer.ggml.bos_token_id", "1") == NS_OK);
    else if (v->bos >= -1) NS_ASSERT(ns_gguf_writer_add_i32(w, "tokenizer.ggml.bos_token_id", (int32_t)v->bos) == NS_OK);
    if (v->eos >= -1) NS_ASSERT(ns_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos) == NS_OK);
    if (v->unk >= -1) NS_ASSERT(ns_gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)v->unk) == NS_OK);
    if (v->add_space_prefix >= 0)
        NS_ASSERT(ns_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", v->add_space_prefix) == NS_OK);
    void *buf = NULL;
    size_t nbytes = 0;
    ns_error werr;
    NS_ASSERT(ns_gguf_writer_to_memory(w, &buf, &nbytes, &werr) == NS_OK);
    ns_gguf_writer_destroy(w);
    ns_gguf *g = NULL;
    ns_status st = ns_gguf_open_memory(buf, nbytes, &g, err);
    if (st == NS_OK) {
        st = ns_tokenizer_load(g, out, err);
        ns_gguf_close(g);
    }
    free(buf);
    return st;
}

/* The GPT-2 byte -> unicode map, written out independently of tokenizer.c. */
static void byte_char(int b, char out[3]) {
    int cp = b;
    bool printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
    if (!printable) {
        int k = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 0x21 && x <= 0x7e) || (x >= 0xa1 && x <= 0xac) || (x >= 0xae))) k++;
        cp = 256 + k;
    }
    memset(out, 0, 3);
    if (cp < 0x80) out[0] = (char)cp;
    else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
    }
}

/* A byte-level BPE vocab: id 0 <|endoftext|> (control), 1..256 the bytes, then merges'
 * results, then "<u>" (user-defined) and "xyz" (reachable by no merge). */
#define BPE_N_MERGES 9
static const char *bpe_merges[BPE_N_MERGES] = {
    "\xc4\xa0 t",      /* Ġ t */
    "h e",
    "\xc4\xa0t he",    /* Ġt he */
    "l l",
    "he ll",
    "hell o",
    "\xc4\xa0 hello",  /* Ġ hello */
    "\xc4\xa0 \xc4\xa0", /* Ġ Ġ */
    "\xc4\x8a \xc4\x8a", /* Ċ Ċ */
};
static const char *bpe_merged[BPE_N_MERGES] = {
    "\xc4\xa0t", "he", "\xc4\xa0the", "ll", "hell", "hello", "\xc4\xa0hello", "\xc4\xa0\xc4\xa0",
    "\xc4\x8a\xc4\x8a",
};

typedef struct bpe_vocab {
    char bytes[256][3];
    const char *tokens[1 + 256 + BPE_N_MERGES + 2];
    int32_t types[1 + 256 + BPE_N_MERGES + 2];
    int n;
} bpe_vocab;

static void bpe_vocab_make(bpe_vocab *bv, tvocab *v, const char *pre) {
    memset(bv, 0, sizeof *bv);
    memset(v, 0, sizeof *v);
    bv->tokens[bv->n] = "<|endoftext|>";
    bv->types[bv->n++] = 3;
    for (int b = 0; b < 256; b++) {
        byte_char(b, bv->bytes[b]);
        bv->tokens[bv->n] = bv->bytes[b];
        bv->types[bv->n++] = 1;
    }
    for (int i = 0; i < BPE_N_MERGES; i++) {
        bv->tokens[bv->n] = bpe_merged[i];
        bv->types[bv->n++] = 1;
    }
    bv->tokens[bv->n] = "<u>";
    bv->types[bv->n++] = 4;
    bv->tokens[bv->n] = "xyz";
    bv->types[bv->n++] = 1;
    v->model = "gpt2";
    v->pre = pre;
    v->tokens = bv->tokens;
    v->n_tokens = bv->n;
    v->types = bv->types;
    v->n_types = bv->n;
    v->merges = bpe_merges;
    v->n_merges = BPE_N_MERGES;
    v->bos = -2;
    v->eos = 0;
    v->unk = -2;
    v->add_space_prefix = -1;
}

/* Encodes text and compares with the tokens named by their vocab texts (NULL-ended). */
static void expect_tokens(const ns_tokenizer *t, const char *text, bool special, int line,
                          const char *const *want) {
    int32_t *ids = NULL;
    size_t n = 0, n_want = 0;
    ns_error err;
    if (ns_tokenizer_encode(t, text, strlen(text), false, special, &ids, &n, &err) != NS_OK) {
        ns_test_fail_at(__FILE__, line, "encode \"%s\": %s", text, err.msg);
        return;
    }
    while (want[n_want]) n_want++;
    bool same = n == n_want;
    for (size_t i = 0; same && i < n; i++) same = ids[i] == ns_tokenizer_find(t, want[i]);
    if (!same) {
        char got[512] = "";
        size_t off = 0;
        for (size_t i = 0; i < n && off < sizeof got - 1; i++)
            off += (size_t)snprintf(got + off, sizeof got - off, "%s[%s]", i ? " " : "",
                                    ns_tokenizer_token_text(t, ids[i]));
        ns_test_fail_at(__FILE__, line, "encode \"%s\": got %s", text, got);
    }
    free(ids);
}
#define EXPECT_TOKENS(t, text, special, ...)                                              \
    do {                                                                                 \
        const char *const want_[] = {__VA_ARGS__, NULL};                                 \
        expect_tokens((t), (text), (special), __LINE__, want_);                          \
    } while (0)

#define G "\xc4\xa0" /* Ġ, the byte-level space */

NS_TEST(test_tokenizer_bpe_vocab_only) {
    bpe_vocab bv;
    tvocab v;
    ns_error err;
    ns_tokenizer *t = NULL;

    bpe_vocab_make(&bv, &v, NULL); /* no pre key: the GPT-2 pattern */
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (!t) return;
    CHECK(strcmp(ns_tokenizer_pre_name(t), "default") == 0);
    CHECK(strcmp(ns_tokenizer_model_name(t), "gpt2") == 0);
    CHECK_EQ_INT(ns_tokenizer_n_vocab(t), bv.n);
    CHECK_EQ_INT(ns_tokenizer_bos(t), -1);
    CHECK_EQ_INT(ns_tokenizer_eos(t), 0);
    CHECK(ns_tokenizer_is_eog(t, 0));
    EXPECT_TOKENS(t, " the hello", false, G "the", G "hello");
    EXPECT_TOKENS(t, "hellohello", false, "hello", "hello");
    EXPECT_TOKENS(t, "hel", false, "he", "l");
    EXPECT_TOKENS(t, "lll", false, "ll", "l"); /* leftmost first among equal ranks */
    EXPECT_TOKENS(t, "xyz", false, "x", "y", "z");
    /* GPT-2 pattern alone: "  1" is " " + " 1" */
    EXPECT_TOKENS(t, "a  1", false, "a", G, G, "1");
    EXPECT_TOKENS(t, "a  b", false, "a", G, G, "b"); /* no "Ġb" in this vocab */
    EXPECT_TOKENS(t, "a   ", false, "a", G G, G);
    /* specials: control only with parse_special, user-defined always */
    EXPECT_TOKENS(t, "a<|endoftext|>b", true, "a", "<|endoftext|>", "b");
    EXPECT_TOKENS(t, "<|end|", true, "<", "|", "e", "n", "d", "|");
    EXPECT_TOKENS(t, "a<u>b", false, "a", "<u>", "b");
    int32_t *ids;
    size_t n;
    CHECK_STATUS_OK(ns_tokenizer_encode(t, "<|endoftext|>", 13, false, false, &ids, &n, &err), &err);
    CHECK(n > 1);
    for (size_t i = 0; i < n; i++) CHECK(ids[i] != 0);
    free(ids);
    CHECK_STATUS_OK(ns_tokenizer_encode(t, "", 0, false, true, &ids, &n, &err), &err);
    CHECK_EQ_INT(n, 0);
    free(ids);
    ns_tokenizer_free(t);

    /* smollm: digits split off first, so the GPT-2 pattern sees "a  " and keeps "  " */
    bpe_vocab_make(&bv, &v, "smollm");
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (!t) return;
    CHECK(strcmp(ns_tokenizer_pre_name(t), "smollm") == 0);
    EXPECT_TOKENS(t, "a  1", false, "a", G G, "1");
    EXPECT_TOKENS(t, " 12", false, G, "1", "2");
    ns_tokenizer_free(t);

    /* llama-bpe: whole vocab words skip the merges; newline runs stay together */
    bpe_vocab_make(&bv, &v, "llama-bpe");
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (!t) return;
    EXPECT_TOKENS(t, "xyz", false, "xyz");
    EXPECT_TOKENS(t, "a\n\nb", false, "a", "\xc4\x8a\xc4\x8a", "b");
    EXPECT_TOKENS(t, "I'M", false, "I", "'", "M");
    ns_tokenizer_free(t);

    /* a byte with no token is dropped, and its neighbours may merge (HF, llama.cpp) */
    bpe_vocab_make(&bv, &v, NULL);
    bv.tokens[1 + 'q'] = "QQQ";
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (t) {
        EXPECT_TOKENS(t, "aqa", false, "a", "a");
        EXPECT_TOKENS(t, "hqe", false, "he");
        CHECK_STATUS_OK(ns_tokenizer_encode(t, "q", 1, false, false, &ids, &n, &err), &err);
        CHECK_EQ_INT(n, 0);
        free(ids);
    }
    ns_tokenizer_free(t);

    /* qwen2 parses too */
    bpe_vocab_make(&bv, &v, "qwen2");
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (t) EXPECT_TOKENS(t, " the", false, G "the");
    ns_tokenizer_free(t);
}

#define U "\xe2\x96\x81" /* U+2581, SentencePiece's space */

/* A SentencePiece vocab: <unk> <s> </s>, the 256 byte tokens (optional), then pieces
 * whose scores make "hello world" merge in a known order. */
typedef struct spm_vocab {
    char hex[256][8];
    const char *tokens[3 + 256 + 18];
    int32_t types[3 + 256 + 18];
    float scores[3 + 256 + 18];
    int n;
} spm_vocab;

static void spm_vocab_make(spm_vocab *sv, tvocab *v, bool with_bytes) {
    static const char *pieces[] = {U, "h", "e", "l", "o", "w", "r", "d",
                                   "he", "ll", "llo", "hello", U "hello", U "w", "or", U "wor"};
    static const char *more[] = {"ld", U "world"};
    memset(sv, 0, sizeof *sv);
    memset(v, 0, sizeof *v);
    const char *special[] = {"<unk>", "<s>", "</s>"};
    int special_type[] = {2, 3, 3};
    for (int i = 0; i < 3; i++) {
        sv->tokens[sv->n] = special[i];
        sv->types[sv->n] = special_type[i];
        sv->scores[sv->n++] = 0;
    }
    if (with_bytes)
        for (int b = 0; b < 256; b++) {
            snprintf(sv->hex[b], sizeof sv->hex[b], "<0x%02X>", b);
            sv->tokens[sv->n] = sv->hex[b];
            sv->types[sv->n] = 6;
            sv->scores[sv->n++] = 0;
        }
    /* merged pieces score -1, -2, ... in the order they should merge */
    float next = -1;
    for (size_t i = 0; i < sizeof pieces / sizeof *pieces; i++) {
        sv->tokens[sv->n] = pieces[i];
        sv->types[sv->n] = 1;
        sv->scores[sv->n++] = strlen(pieces[i]) == 1 || strcmp(pieces[i], U) == 0 ? -100 : next--;
    }
    for (size_t i = 0; i < sizeof more / sizeof *more; i++) {
        sv->tokens[sv->n] = more[i];
        sv->types[sv->n] = 1;
        sv->scores[sv->n++] = next--;
    }
    v->model = "llama";
    v->tokens = sv->tokens;
    v->n_tokens = sv->n;
    v->types = sv->types;
    v->n_types = sv->n;
    v->scores = sv->scores;
    v->n_scores = sv->n;
    v->bos = 1;
    v->eos = 2;
    v->unk = 0;
    v->add_space_prefix = -1;
}

NS_TEST(test_tokenizer_spm) {
    spm_vocab sv;
    tvocab v;
    ns_error err;
    ns_tokenizer *t = NULL;
    spm_vocab_make(&sv, &v, true);
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (!t) return;
    CHECK(strcmp(ns_tokenizer_model_name(t), "llama") == 0);
    CHECK_EQ_INT(ns_tokenizer_bos(t), 1);
    CHECK_EQ_INT(ns_tokenizer_eos(t), 2);
    CHECK(ns_tokenizer_is_eog(t, 2));
    CHECK(ns_tokenizer_is_control(t, 1));
    CHECK(ns_tokenizer_is_control(t, 0));
    EXPECT_TOKENS(t, "hello world", false, U "hello", U "world");
    EXPECT_TOKENS(t, "hello  world", false, U "hello", U, U "world");
    EXPECT_TOKENS(t, "lll", false, U, "ll", "l");
    /* byte fallback: "\n" and "é" (C3 A9) are not pieces */
    EXPECT_TOKENS(t, "he\n", false, U, "he", "<0x0A>");
    EXPECT_TOKENS(t, "\xc3\xa9", false, U, "<0xC3>", "<0xA9>");
    /* invalid UTF-8 bytes fall back one by one */
    EXPECT_TOKENS(t, "h\xff", false, U, "h", "<0xFF>");
    /* a space is prepended after a special token too (llama.cpp) */
    EXPECT_TOKENS(t, "<s>hello", true, "<s>", U "hello");
    EXPECT_TOKENS(t, "<s>", false, U, "<0x3C>", "<0x73>", "<0x3E>");

    int32_t *ids;
    size_t n, m;
    CHECK_STATUS_OK(ns_tokenizer_encode(t, "hello world", 11, true, false, &ids, &n, &err), &err);
    CHECK(n == 3 && ids[0] == 1);
    CHECK(ns_tokenizer_add_bos(t)); /* add_bos_token defaults to true for llama */
    char *back = detok_all(t, ids, n, false, &m);
    CHECK(m == 11 && memcmp(back, "hello world", 11) == 0); /* prefix space dropped */
    free(back);
    back = detok_all(t, ids, n, true, &m);
    CHECK(m == 15 && memcmp(back, "<s> hello world", 15) == 0);
    free(back);
    free(ids);
    const char *mixed = " he\n\xc3\xa9 lll";
    CHECK_STATUS_OK(ns_tokenizer_encode(t, mixed, strlen(mixed), false, false, &ids, &n, &err), &err);
    back = detok_all(t, ids, n, false, &m);
    CHECK(m == strlen(mixed) && memcmp(back, mixed, m) == 0);
    free(back);
    free(ids);
    char buf[8];
    CHECK_EQ_INT(ns_tokenizer_token_bytes(t, ns_tokenizer_find(t, "<0x0A>"), false, buf, sizeof buf), 1);
    CHECK(buf[0] == '\n');
    CHECK_EQ_INT(ns_tokenizer_token_bytes(t, ns_tokenizer_find(t, U "hello"), false, buf, sizeof buf), 6);
    CHECK(memcmp(buf, " hello", 6) == 0);
    ns_tokenizer_free(t);

    /* no byte tokens: an unknown char becomes one <unk> */
    spm_vocab_make(&sv, &v, false);
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (t) EXPECT_TOKENS(t, "h\xc3\xa9", false, U, "h", "<unk>");
    ns_tokenizer_free(t);

    /* add_space_prefix false */
    spm_vocab_make(&sv, &v, true);
    v.add_space_prefix = 0;
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (t) {
        EXPECT_TOKENS(t, "hello world", false, "hello", U "world");
        CHECK_STATUS_OK(ns_tokenizer_encode(t, "hello", 5, false, false, &ids, &n, &err), &err);
        back = detok_all(t, ids, n, false, &m);
        CHECK(m == 5 && memcmp(back, "hello", 5) == 0);
        free(back);
        free(ids);
    }
    ns_tokenizer_free(t);
}

/* Loads v, expects code and a message containing sub. */
static void expect_load_fail(const tvocab *v, ns_status code, const char *sub, int line) {
    ns_tokenizer *t = NULL;
    ns_error err;
    ns_error_clear(&err);
    ns_status st = tvocab_load(v, &t, &err);
    if (st != code || t != NULL || !strstr(err.msg, sub))
        ns_test_fail_at(__FILE__, line, "expected %s containing \"%s\", got %s: %s",
                        ns_status_name(code), sub, ns_status_name(st), err.msg);
    ns_tokenizer_free(t);
}

NS_TEST(test_tokenizer_malformed) {
    bpe_vocab bv;
    tvocab v;
    const char *bad_merges[] = {"h e", "q \xe2\x98\x83"}; /* ☃ is not in the vocab */
    bpe_vocab_make(&bv, &v, NULL);
    v.merges = bad_merges;
    v.n_merges = 2;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.merges[1]", __LINE__);
    const char *no_space[] = {"he"};
    v.merges = no_space;
    v.n_merges = 1;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.merges[0]", __LINE__);
    const char *no_result[] = {"x z"}; /* "xz" is not a token */
    v.merges = no_result;
    expect_load_fail(&v, NS_ERR_FORMAT, "\"xz\"", __LINE__);
    v.merges = NULL;
    expect_load_fail(&v, NS_ERR_NOT_FOUND, "tokenizer.ggml.merges", __LINE__);

    bpe_vocab_make(&bv, &v, NULL);
    v.n_types = v.n_tokens - 1;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.token_type", __LINE__);
    bpe_vocab_make(&bv, &v, NULL);
    bv.types[5] = 9;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.token_type[5] = 9", __LINE__);
    bpe_vocab_make(&bv, &v, NULL);
    v.types_as_f32 = true;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.token_type", __LINE__);
    bpe_vocab_make(&bv, &v, NULL);
    v.tokens_as_i32 = true;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.tokens", __LINE__);
    bpe_vocab_make(&bv, &v, NULL);
    v.tokens = NULL;
    expect_load_fail(&v, NS_ERR_NOT_FOUND, "tokenizer.ggml.tokens", __LINE__);

    bpe_vocab_make(&bv, &v, NULL);
    v.bos = v.n_tokens;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.bos_token_id", __LINE__);
    bpe_vocab_make(&bv, &v, NULL);
    v.eos = 1000000;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.eos_token_id", __LINE__);
    bpe_vocab_make(&bv, &v, NULL);
    v.bos_as_str = true;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.bos_token_id", __LINE__);

    bpe_vocab_make(&bv, &v, "no-such-pre");
    expect_load_fail(&v, NS_ERR_UNSUPPORTED, "smollm", __LINE__);
    expect_load_fail(&v, NS_ERR_UNSUPPORTED, "no-such-pre", __LINE__);
    bpe_vocab_make(&bv, &v, NULL);
    v.model = "bert";
    expect_load_fail(&v, NS_ERR_UNSUPPORTED, "gpt2, llama", __LINE__);
    v.model = NULL;
    expect_load_fail(&v, NS_ERR_NOT_FOUND, "tokenizer.ggml.model", __LINE__);

    spm_vocab sv;
    spm_vocab_make(&sv, &v, true);
    v.scores = NULL;
    expect_load_fail(&v, NS_ERR_NOT_FOUND, "tokenizer.ggml.scores", __LINE__);
    spm_vocab_make(&sv, &v, true);
    v.n_scores--;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.scores", __LINE__);
    spm_vocab_make(&sv, &v, true);
    v.scores_as_i32 = true;
    expect_load_fail(&v, NS_ERR_FORMAT, "tokenizer.ggml.scores", __LINE__);
    spm_vocab_make(&sv, &v, true);
    v.unk = -1; /* "none" is accepted */
    ns_tokenizer *t = NULL;
    ns_error err;
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    ns_tokenizer_free(t);
}

/* ---- hostile input ---- */

/* Byte-level vocab: does byte b have a token? (SmolLM2 lacks 21 of them.) */
static bool byte_has_token(const ns_tokenizer *t, int b) {
    char c[3];
    byte_char(b, c);
    return ns_tokenizer_find(t, c) >= 0;
}

/* Encodes hostile text with a byte-level vocab: fast, ids in range, raw bytes give back
 * the input less the bytes that have no token, decode is valid UTF-8. */
static void check_hostile(const ns_tokenizer *t, const char *what, const char *text, size_t n,
                          bool special, double max_s) {
    int32_t *ids = NULL;
    size_t n_ids = 0, m = 0, n_want = 0;
    bool has[256];
    for (int b = 0; b < 256; b++) has[b] = byte_has_token(t, b);
    char *want = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        if (has[(unsigned char)text[i]]) want[n_want++] = text[i];
    ns_error err;
    double t0 = ns_time_now();
    ns_status st = ns_tokenizer_encode(t, text, n, false, special, &ids, &n_ids, &err);
    double dt = ns_time_now() - t0;
    CHECK_MSG(st == NS_OK, "%s: %s", what, err.msg);
    CHECK_MSG(dt < max_s, "%s: %zu bytes took %.2f s (limit %.0f s)", what, n, dt, max_s);
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= ns_tokenizer_n_vocab(t)) {
            ns_test_fail_at(__FILE__, __LINE__, "%s: id %d out of range", what, (int)ids[i]);
            break;
        }
    char *raw = raw_all(t, ids, n_ids, &m);
    CHECK_MSG(m == n_want && memcmp(raw, want, m) == 0, "%s: raw bytes differ", what);
    free(raw);
    char *back = detok_all(t, ids, n_ids, true, &m);
    CHECK_MSG(utf8_ok(back, m), "%s: decode is not valid UTF-8", what);
    if (utf8_ok(want, n_want))
        CHECK_MSG(m == n_want && memcmp(back, want, m) == 0, "%s: decode differs", what);
    free(back);
    free(want);
    free(ids);
}

static void hostile_suite(const ns_tokenizer *t) {
    static const char *bad[] = {
        "\xff", "\xc3", "a\x80" "b", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf",
        "\xe2\x82", "x \xf0\x9f\x98 y", "12\xfe" "34", "<|im_start|\xff>", " \xc3\xa9\xc3",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        check_hostile(t, bad[i], bad[i], strlen(bad[i]), true, 5);
        check_hostile(t, bad[i], bad[i], strlen(bad[i]), false, 5);
    }
    /* every byte value, and random bytes */
    char all[512];
    for (int i = 0; i < 512; i++) all[i] = (char)(i & 0xff);
    check_hostile(t, "all bytes", all, sizeof all, true, 5);
    ns_test_rng rng = {42};
    char rnd[4096];
    for (int rep = 0; rep < 20; rep++) {
        for (size_t i = 0; i < sizeof rnd; i++) rnd[i] = (char)ns_test_rng_u64(&rng);
        check_hostile(t, "random bytes", rnd, sizeof rnd, rep & 1, 5);
    }
    /* 1 MB without a space, of several kinds */
    size_t big = 1 << 20;
    char *s = malloc(big);
    memset(s, 'a', big);
    check_hostile(t, "1 MB of 'a'", s, big, true, 20);
    for (size_t i = 0; i < big; i++) s[i] = (char)('a' + ns_test_rng_u64(&rng) % 26);
    check_hostile(t, "1 MB of letters", s, big, true, 20);
    memset(s, ' ', big);
    check_hostile(t, "1 MB of spaces", s, big, true, 20);
    memset(s, '\n', big);
    check_hostile(t, "1 MB of newlines", s, big, true, 20);
    memset(s, '7', big);
    check_hostile(t, "1 MB of digits", s, big, true, 20);
    for (size_t i = 0; i + 3 <= big; i += 3) memcpy(s + i, "\xe4\xb8\xad", 3); /* 中 */
    s[big - 1] = 'x';
    check_hostile(t, "1 MB of CJK", s, big, true, 20);
    for (size_t i = 0; i < big; i++) s[i] = "<|>"[ns_test_rng_u64(&rng) % 3];
    check_hostile(t, "1 MB of <|>", s, big, true, 20);
    free(s);
}

NS_TEST(test_tokenizer_hostile_input) {
    bpe_vocab bv;
    tvocab v;
    ns_error err;
    ns_tokenizer *t = NULL;
    bpe_vocab_make(&bv, &v, "smollm");
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (t) hostile_suite(t);
    ns_tokenizer_free(t);
    spm_vocab sv;
    spm_vocab_make(&sv, &v, true);
    CHECK_STATUS_OK(tvocab_load(&v, &t, &err), &err);
    if (t) { /* the SentencePiece prefix space changes the raw bytes: check decode only */
        const char *bad = "h\xff\xc3 \xf0\x9f\x98";
        int32_t *ids;
        size_t n, m;
        CHECK_STATUS_OK(ns_tokenizer_encode(t, bad, strlen(bad), false, true, &ids, &n, &err), &err);
        char *back = detok_all(t, ids, n, false, &m);
        CHECK(utf8_ok(back, m));
        free(back);
        free(ids);
        size_t big = 1 << 20;
        char *s = malloc(big);
        memset(s, 'l', big);
        double t0 = ns_time_now();
        CHECK_STATUS_OK(ns_tokenizer_encode(t, s, big, false, true, &ids, &n, &err), &err);
        CHECK_MSG(ns_time_now() - t0 < 20, "SentencePiece 1 MB took too long");
        CHECK_EQ_INT(n, 1 + big / 2); /* ▁ then ll ll ... */
        free(ids);
        free(s);
    }
    ns_tokenizer_free(t);
}

NS_TEST(test_tokenizer_demo_hostile_input) {
    if (!ns_test_demo_model()) SKIP("demo model not present");
    ns_tokenizer *t = load_demo();
    if (!t) return;
    hostile_suite(t);
    ns_tokenizer_free(t);
}

/* The demo vocab copied into a vocab-only GGUF (no tensors) tokenizes the same. */
NS_TEST(test_tokenizer_demo_vocab_only) {
    const char *path = ns_test_demo_model();
    if (!path) SKIP("demo model not present");
    ns_error err;
    ns_gguf *g = NULL;
    if (ns_gguf_open(path, &g, &err) != NS_OK) {
        ns_test_fail_at(__FILE__, __LINE__, "%s", err.msg);
        return;
    }
    uint64_t n_tok = 0, n_merge = 0;
    ns_gguf_vtype et;
    CHECK_STATUS_OK(ns_gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n_tok, &err), &err);
    CHECK_STATUS_OK(ns_gguf_get_arr_info(g, "tokenizer.ggml.merges", &et, &n_merge, &err), &err);
    char **toks = calloc(n_tok, sizeof *toks), **merges = calloc(n_merge, sizeof *merges);
    for (uint64_t i = 0; i < n_tok; i++) {
        ns_gguf_str s;
        (void)ns_gguf_get_arr_str(g, "tokenizer.ggml.tokens", i, &s, &err);
        toks[i] = strndup(s.ptr, s.len);
    }
    for (uint64_t i = 0; i < n_merge; i++) {
        ns_gguf_str s;
        (void)ns_gguf_get_arr_str(g, "tokenizer.ggml.merges", i, &s, &err);
        merges[i] = strndup(s.ptr, s.len);
    }
    const void *types;
    CHECK_STATUS_OK(ns_gguf_get_arr_data(g, "tokenizer.ggml.token_type", &types, &err), &err);
    int32_t *ty = malloc(n_tok * sizeof *ty);
    memcpy(ty, types, n_tok * sizeof *ty);
    ns_gguf_writer *w = ns_gguf_writer_create();
    CHECK(ns_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2") == NS_OK);
    CHECK(ns_gguf_writer_add_str(w, "tokenizer.ggml.pre", "smollm") == NS_OK);
    CHECK(ns_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)toks, n_tok) == NS_OK);
    CHECK(ns_gguf_writer_add_arr_i32(w, "tokenizer.ggml.token_type", ty, n_tok) == NS_OK);
    CHECK(ns_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, n_merge) == NS_OK);
    CHECK(ns_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1) == NS_OK);
    CHECK(ns_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2) == NS_OK);
    char file[512];
    snprintf(file, sizeof file, "%s/vocab_only.gguf", ns_test_tmpdir());
    CHECK_STATUS_OK(ns_gguf_writer_write(w, file, &err), &err);
    ns_gguf_writer_destroy(w);
    for (uint64_t i = 0; i < n_tok; i++) free(toks[i]);
    for (uint64_t i = 0; i < n_merge; i++) free(merges[i]);
    free(toks);
    free(merges);
    free(ty);

    ns_tokenizer *full = NULL, *vo = NULL;
    CHECK_STATUS_OK(ns_tokenizer_load(g, &full, &err), &err);
    ns_gguf_close(g);
    g = NULL;
    CHECK_STATUS_OK(ns_gguf_open(file, &g, &err), &err);
    CHECK(g && ns_gguf_n_tensors(g) == 0);
    if (g) CHECK_STATUS_OK(ns_tokenizer_load(g, &vo, &err), &err);
    ns_gguf_close(g);
    if (full && vo) {
        const char *text = "<|im_start|>user\nWhat is 12+30? Answer in 2 words.<|im_end|>";
        int32_t *a, *b;
        size_t na, nb;
        CHECK_STATUS_OK(ns_tokenizer_encode(full, text, strlen(text), false, true, &a, &na, &err), &err);
        CHECK_STATUS_OK(ns_tokenizer_encode(vo, text, strlen(text), false, true, &b, &nb, &err), &err);
        CHECK(na == nb && memcmp(a, b, na * sizeof *a) == 0);
        CHECK(na > 2 && a[0] == 1 && a[na - 1] == 2);
        free(a);
        free(b);
    }
    ns_tokenizer_free(full);
    ns_tokenizer_free(vo);
}
