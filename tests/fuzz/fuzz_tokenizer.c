/* fuzz_tokenizer.c: libFuzzer entry for the tokenizer (engine/tokenizer.c).
 *
 * Loads, once, the demo model's byte-level vocab (path from NS_DEMO_MODEL, else
 * models/SmolLM2-135M-Instruct.Q4_1.gguf) and a small SentencePiece vocab built in memory
 * with ns_gguf_writer. The first input byte picks the tokenizer, parse_special and add_bos;
 * the rest is the text. Each input is encoded and decoded, and these must hold (abort
 * otherwise): every id in range; byte-level: the raw token bytes give back the text less
 * the bytes that have no token; SentencePiece without specials: they give back " " + text;
 * the streaming decoder emits only valid UTF-8, and exactly the text when the text is
 * valid UTF-8 and nothing was dropped (a U+2581 in SentencePiece text counts as ' ').
 * ASan/UBSan catch the rest.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -Iengine engine/common.c engine/gguf.c
 *        engine/tokenizer.c tests/fuzz/fuzz_tokenizer.c -o fuzz_tokenizer -lpcre2-8 -lm
 * Run:   ./fuzz_tokenizer -max_len=4096 [corpus_dir]
 */
#include "gguf.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ns_tokenizer *g_bpe; /* demo vocab, NULL if the model is absent */
static ns_tokenizer *g_spm;
static bool g_bpe_has_byte[256];

static void die(const char *what, const char *msg) {
    fprintf(stderr, "fuzz_tokenizer: %s: %s\n", what, msg);
    abort();
}

static ns_tokenizer *load_spm(void) {
    static char hex[256][8];
    const char *toks[3 + 256 + 8];
    int32_t types[3 + 256 + 8];
    float scores[3 + 256 + 8];
    const char *head[] = {"<unk>", "<s>", "</s>"};
    const char *pieces[] = {"\xe2\x96\x81", "a", "b", "ab", "\xe2\x96\x81" "a", "ba", "bab", "\xe2\x96\x81" "ab"};
    int n = 0;
    for (int i = 0; i < 3; i++) {
        toks[n] = head[i];
        types[n] = i == 0 ? 2 : 3;
        scores[n++] = 0;
    }
    for (int b = 0; b < 256; b++) {
        snprintf(hex[b], sizeof hex[b], "<0x%02X>", b);
        toks[n] = hex[b];
        types[n] = 6;
        scores[n++] = 0;
    }
    for (int i = 0; i < 8; i++) {
        toks[n] = pieces[i];
        types[n] = 1;
        scores[n++] = (float)-i;
    }
    ns_gguf_writer *w = ns_gguf_writer_create();
    if (!w) die("writer", "no memory");
    if (ns_gguf_writer_add_str(w, "tokenizer.ggml.model", "llama") ||
        ns_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, (uint64_t)n) ||
        ns_gguf_writer_add_arr_i32(w, "tokenizer.ggml.token_type", types, (uint64_t)n) ||
        ns_gguf_writer_add_arr_f32(w, "tokenizer.ggml.scores", scores, (uint64_t)n))
        die("writer", "add failed");
    void *buf;
    size_t nbytes;
    ns_error err;
    if (ns_gguf_writer_to_memory(w, &buf, &nbytes, &err)) die("writer", err.msg);
    ns_gguf_writer_destroy(w);
    ns_gguf *g;
    ns_tokenizer *t;
    if (ns_gguf_open_memory(buf, nbytes, &g, &err)) die("spm gguf", err.msg);
    if (ns_tokenizer_load(g, &t, &err)) die("spm tokenizer", err.msg);
    ns_gguf_close(g);
    free(buf);
    return t;
}

static void init(void) {
    const char *path = getenv("NS_DEMO_MODEL");
    if (!path || !*path) path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    ns_error err;
    ns_gguf *g;
    if (ns_gguf_open(path, &g, &err) == NS_OK) {
        if (ns_tokenizer_load(g, &g_bpe, &err)) die(path, err.msg);
        ns_gguf_close(g);
        /* which bytes have a token (SmolLM2 lacks 21): one-byte encodes tell */
        for (int b = 0; b < 256; b++) {
            char c = (char)b;
            int32_t *ids;
            size_t n;
            if (ns_tokenizer_encode(g_bpe, &c, 1, false, false, &ids, &n, &err)) die("encode", err.msg);
            g_bpe_has_byte[b] = n == 1;
            free(ids);
        }
    } else {
        fprintf(stderr, "fuzz_tokenizer: %s (only the SentencePiece vocab is fuzzed)\n", err.msg);
    }
    g_spm = load_spm();
}

static bool utf8_ok(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        size_t len;
        unsigned char lo = 0x80, hi = 0xbf;
        if (c < 0x80) len = 1;
        else if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            lo = c == 0xe0 ? 0xa0 : 0x80;
            hi = c == 0xed ? 0x9f : 0xbf;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            lo = c == 0xf0 ? 0x90 : 0x80;
            hi = c == 0xf4 ? 0x8f : 0xbf;
        } else return false;
        if (i + len > n || (len > 1 && (p[i + 1] < lo || p[i + 1] > hi))) return false;
        for (size_t k = 2; k < len; k++)
            if ((p[i + k] & 0xc0) != 0x80) return false;
        i += len;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bool ready;
    if (!ready) {
        init();
        ready = true;
    }
    if (size == 0) return 0;
    uint8_t flags = data[0];
    const char *text = (const char *)data + 1;
    size_t n = size - 1;
    bool use_spm = (flags & 1) || !g_bpe, parse_special = flags & 2, add_bos = flags & 4;
    const ns_tokenizer *t = use_spm ? g_spm : g_bpe;

    int32_t *ids = NULL;
    size_t n_ids = 0;
    ns_error err;
    if (ns_tokenizer_encode(t, text, n, add_bos, parse_special, &ids, &n_ids, &err)) die("encode", err.msg);
    int32_t n_vocab = ns_tokenizer_n_vocab(t);
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= n_vocab) die("encode", "id out of range");

    /* raw bytes */
    size_t raw_len = 0;
    for (size_t i = 0; i < n_ids; i++) raw_len += (size_t)ns_tokenizer_token_bytes(t, ids[i], true, NULL, 0);
    char *raw = malloc(raw_len + 1);
    size_t off = 0;
    for (size_t i = 0; i < n_ids; i++)
        off += (size_t)ns_tokenizer_token_bytes(t, ids[i], true, raw + off, raw_len - off);
    char *want = malloc(n + 2);
    size_t n_want = 0;
    bool check_raw = !add_bos || ns_tokenizer_bos(t) < 0;
    if (use_spm) {
        check_raw = check_raw && !parse_special;
        if (n > 0) want[n_want++] = ' ';
        for (size_t i = 0; i < n; i++) { /* a U+2581 in the text decodes as ' ' */
            if (i + 3 <= n && memcmp(text + i, "\xe2\x96\x81", 3) == 0) {
                want[n_want++] = ' ';
                i += 2;
            } else want[n_want++] = text[i];
        }
    } else {
        for (size_t i = 0; i < n; i++)
            if (g_bpe_has_byte[(unsigned char)text[i]]) want[n_want++] = text[i];
    }
    if (check_raw && (off != n_want || memcmp(raw, want, n_want) != 0)) die("raw bytes", "differ from the input");

    /* streaming decode */
    size_t out_cap = 3 * raw_len + 64; /* every raw byte at worst a U+FFFD, plus the tail */
    char *out = malloc(out_cap);
    size_t n_out = 0;
    ns_detok d;
    ns_detok_init(&d, true);
    for (size_t i = 0; i < n_ids; i++) {
        int k = ns_detok_push(t, &d, ids[i], out + n_out, out_cap - n_out);
        if (k < 0) die("detok", "push failed");
        if (!utf8_ok((unsigned char *)out + n_out, (size_t)k)) die("detok", "invalid UTF-8 chunk");
        n_out += (size_t)k;
    }
    int k = ns_detok_flush(&d, out + n_out, out_cap - n_out);
    if (k < 0) die("detok", "flush failed");
    n_out += (size_t)k;
    if (!utf8_ok((unsigned char *)out, n_out)) die("detok", "invalid UTF-8");
    if (check_raw && utf8_ok((unsigned char *)want, n_want)) {
        /* SentencePiece: the decoder drops the prefix space it added */
        const char *w = use_spm && n_want ? want + 1 : want;
        size_t wn = use_spm && n_want ? n_want - 1 : n_want;
        if (n_out != wn || memcmp(out, w, wn) != 0) die("detok", "decode differs from the input");
    }
    free(out);
    free(want);
    free(raw);
    free(ids);
    return 0;
}
