/* tiny_model.c: see tiny_model.h. */
#include "tiny_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "gguf.h"
#include "ops.h"

void ns_tiny_cfg_default(ns_tiny_cfg *c) {
    memset(c, 0, sizeof *c);
    c->arch = "llama";
    c->n_layer = 2;
    c->n_embd = 64;
    c->n_ff = 128;
    c->n_head = 4;
    c->n_head_kv = 2;
    c->n_ctx = 256;
    c->wtype = NS_GGML_F32;
    c->tied = 1;
    c->rope_base = 10000.0f;
    c->seed = 1;
}

/* GPT-2 byte-to-unicode: printable bytes map to themselves, the rest to U+0100 + i. */
static void byte_token(int b, char *out) {
    int cp;
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) {
        cp = b;
    } else {
        int n = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static ns_status add_matrix(ns_gguf_writer *w, const ns_tiny_cfg *c, ns_test_rng *rng, const char *name,
                            int64_t ne0, int64_t ne1, int type, float scale) {
    if (c->skip_tensor && !strcmp(name, c->skip_tensor)) return NS_OK;
    if (c->bad_shape_tensor && !strcmp(name, c->bad_shape_tensor)) ne0 *= 2;
    size_t n = (size_t)(ne0 * ne1);
    float *f = malloc(n * sizeof(float));
    size_t row_bytes = ns_ggml_row_bytes(type, ne0);
    void *q = malloc(row_bytes * (size_t)ne1 + 1);
    if (!f || !q) {
        free(f);
        free(q);
        return NS_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) f[i] = ns_test_rng_f32(rng) * scale;
    for (int64_t r = 0; r < ne1; r++)
        ns_cpu_quantize_row(type, f + r * ne0, (char *)q + (size_t)r * row_bytes, ne0);
    int64_t ne[2] = {ne0, ne1};
    ns_status st = ns_gguf_writer_add_tensor(w, name, type, ne1 == 1 ? 1 : 2, ne, q);
    free(f);
    free(q);
    return st;
}

static ns_status add_norm(ns_gguf_writer *w, const ns_tiny_cfg *c, ns_test_rng *rng, const char *name, int64_t n) {
    if (c->skip_tensor && !strcmp(name, c->skip_tensor)) return NS_OK;
    float *f = malloc((size_t)n * sizeof(float));
    if (!f) return NS_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) f[i] = 1.0f + 0.2f * ns_test_rng_f32(rng);
    int64_t ne[1] = {n};
    ns_status st = ns_gguf_writer_add_tensor(w, name, NS_GGML_F32, 1, ne, f);
    free(f);
    return st;
}

ns_status ns_tiny_model_write(const char *path, const ns_tiny_cfg *c, ns_error *err) {
    ns_gguf_writer *w = ns_gguf_writer_create();
    if (!w) return ns_error_set(err, NS_ERR_NOMEM, "tiny model: out of memory");
    ns_status st = NS_OK;
    char key[128], name[128];
    const char *a = c->arch;
    ns_test_rng rng = {c->seed};
    int head_dim = c->n_embd / c->n_head;
    char *tokens[NS_TINY_N_VOCAB];
    int32_t types[NS_TINY_N_VOCAB];
    static char store[NS_TINY_N_VOCAB][16];
    const char *merges[] = {"t h", "th e", "Ġ t", "Ġ the", "i n", "a n", "e r", "o n"};
    int n_merges = 8;
    for (int i = 0; i < 256; i++) {
        byte_token(i, store[i]);
        tokens[i] = store[i];
        types[i] = 1;
    }
    const char *merged[] = {"th", "the", "Ġt", "Ġthe", "in", "an", "er", "on"};
    for (int i = 0; i < n_merges; i++) {
        snprintf(store[256 + i], sizeof store[0], "%s", merged[i]);
        tokens[256 + i] = store[256 + i];
        types[256 + i] = 1;
    }
    const char *specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int i = 0; i < 3; i++) {
        snprintf(store[264 + i], sizeof store[0], "%s", specials[i]);
        tokens[264 + i] = store[264 + i];
        types[264 + i] = 3;
    }

#define TRY(x)                                                                            \
    do {                                                                                  \
        if ((st = (x)) != NS_OK) goto done;                                               \
    } while (0)
    TRY(ns_gguf_writer_add_str(w, "general.architecture", a));
    TRY(ns_gguf_writer_add_str(w, "general.name", "tiny random model"));
    snprintf(key, sizeof key, "%s.block_count", a);
    TRY(ns_gguf_writer_add_u32(w, key, (uint32_t)c->n_layer));
    snprintf(key, sizeof key, "%s.context_length", a);
    TRY(ns_gguf_writer_add_u32(w, key, (uint32_t)c->n_ctx));
    snprintf(key, sizeof key, "%s.embedding_length", a);
    TRY(ns_gguf_writer_add_u32(w, key, (uint32_t)c->n_embd));
    snprintf(key, sizeof key, "%s.feed_forward_length", a);
    TRY(ns_gguf_writer_add_u32(w, key, (uint32_t)c->n_ff));
    snprintf(key, sizeof key, "%s.attention.head_count", a);
    TRY(ns_gguf_writer_add_u32(w, key, (uint32_t)c->n_head));
    snprintf(key, sizeof key, "%s.attention.head_count_kv", a);
    TRY(ns_gguf_writer_add_u32(w, key, (uint32_t)c->n_head_kv));
    snprintf(key, sizeof key, "%s.rope.freq_base", a);
    TRY(ns_gguf_writer_add_f32(w, key, c->rope_base));
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
    TRY(ns_gguf_writer_add_f32(w, key, 1e-5f));
    TRY(ns_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2"));
    TRY(ns_gguf_writer_add_str(w, "tokenizer.ggml.pre", "default"));
    TRY(ns_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens, NS_TINY_N_VOCAB));
    TRY(ns_gguf_writer_add_arr_i32(w, "tokenizer.ggml.token_type", types, NS_TINY_N_VOCAB));
    TRY(ns_gguf_writer_add_arr_str(w, "tokenizer.ggml.merges", merges, (uint64_t)n_merges));
    TRY(ns_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 265));
    TRY(ns_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 264));
    TRY(ns_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", false));
    TRY(ns_gguf_writer_add_str(w, "tokenizer.chat_template",
                               "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                               "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"));

    int q_dim = c->n_head * head_dim, kv_dim = c->n_head_kv * head_dim;
    float s_in = 1.0f / sqrtf((float)c->n_embd);
    TRY(add_matrix(w, c, &rng, "token_embd.weight", c->n_embd, NS_TINY_N_VOCAB, c->wtype, 1.0f));
    if (c->nan_output_norm) {
        float nanv[1024];
        for (int i = 0; i < c->n_embd && i < 1024; i++) nanv[i] = NAN;
        int64_t ne[1] = {c->n_embd};
        TRY(ns_gguf_writer_add_tensor(w, "output_norm.weight", NS_GGML_F32, 1, ne, nanv));
    } else {
        TRY(add_norm(w, c, &rng, "output_norm.weight", c->n_embd));
    }
    if (!c->tied) TRY(add_matrix(w, c, &rng, "output.weight", c->n_embd, NS_TINY_N_VOCAB, c->wtype, s_in * 4));
    bool bias = !strcmp(a, "qwen2");
    for (int il = 0; il < c->n_layer; il++) {
#define NAME(s) (snprintf(name, sizeof name, "blk.%d.%s", il, s), name)
        TRY(add_norm(w, c, &rng, NAME("attn_norm.weight"), c->n_embd));
        TRY(add_matrix(w, c, &rng, NAME("attn_q.weight"), c->n_embd, q_dim, c->wtype, s_in * 2));
        TRY(add_matrix(w, c, &rng, NAME("attn_k.weight"), c->n_embd, kv_dim, c->wtype, s_in * 2));
        TRY(add_matrix(w, c, &rng, NAME("attn_v.weight"), c->n_embd, kv_dim, c->wtype, s_in * 2));
        if (bias) {
            TRY(add_matrix(w, c, &rng, NAME("attn_q.bias"), q_dim, 1, NS_GGML_F32, 0.1f));
            TRY(add_matrix(w, c, &rng, NAME("attn_k.bias"), kv_dim, 1, NS_GGML_F32, 0.1f));
            TRY(add_matrix(w, c, &rng, NAME("attn_v.bias"), kv_dim, 1, NS_GGML_F32, 0.1f));
        }
        TRY(add_matrix(w, c, &rng, NAME("attn_output.weight"), q_dim, c->n_embd, c->wtype, s_in));
        TRY(add_norm(w, c, &rng, NAME("ffn_norm.weight"), c->n_embd));
        TRY(add_matrix(w, c, &rng, NAME("ffn_gate.weight"), c->n_embd, c->n_ff, c->wtype, s_in * 2));
        TRY(add_matrix(w, c, &rng, NAME("ffn_up.weight"), c->n_embd, c->n_ff, c->wtype, s_in * 2));
        TRY(add_matrix(w, c, &rng, NAME("ffn_down.weight"), c->n_ff, c->n_embd, c->wtype,
                       1.0f / sqrtf((float)c->n_ff)));
#undef NAME
    }
#undef TRY
    st = ns_gguf_writer_write(w, path, err);
    ns_gguf_writer_destroy(w);
    return st;
done:
    ns_gguf_writer_destroy(w);
    return ns_error_set(err, st, "tiny model: building '%s' failed (%s)", path, ns_status_name(st));
}
