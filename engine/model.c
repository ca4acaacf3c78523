/* model.c: hyperparameters from GGUF metadata and the weights of a Llama-family decoder,
 * with every tensor's presence, type and shape checked before any is loaded. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static ns_status get_u32_key(const ns_gguf *g, const char *arch, const char *suffix, int *out,
                             bool required, int dflt, ns_error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (ns_gguf_find_key(g, key) < 0) {
        if (required) return ns_error_set(err, NS_ERR_NOT_FOUND, "model: metadata key '%s' is missing", key);
        *out = dflt;
        return NS_OK;
    }
    uint32_t v;
    ns_status st = ns_gguf_get_u32(g, key, &v, err);
    if (st) return st;
    if (v > (1u << 30))
        return ns_error_set(err, NS_ERR_FORMAT, "model: %s = %u is out of range (at most 2^30)", key, v);
    *out = (int)v;
    return NS_OK;
}

static ns_status get_f32_key(const ns_gguf *g, const char *arch, const char *suffix, float *out,
                             float dflt, ns_error *err) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (ns_gguf_find_key(g, key) < 0) {
        *out = dflt;
        return NS_OK;
    }
    return ns_gguf_get_f32(g, key, out, err);
}

ns_status ns_hparams_read(const ns_gguf *g, ns_hparams *hp, ns_error *err) {
    memset(hp, 0, sizeof *hp);
    ns_gguf_str arch;
    ns_status st = ns_gguf_get_str(g, "general.architecture", &arch, err);
    if (st) return st;
    if (arch.len == 0 || arch.len >= sizeof hp->arch)
        return ns_error_set(err, NS_ERR_FORMAT, "model: general.architecture has length %llu (1..%zu)",
                            (unsigned long long)arch.len, sizeof hp->arch - 1);
    memcpy(hp->arch, arch.ptr, arch.len);
    hp->arch[arch.len] = '\0';
    if (strcmp(hp->arch, "llama") == 0) {
        hp->is_neox = 0;
    } else if (strcmp(hp->arch, "qwen2") == 0) {
        hp->is_neox = 1;
        hp->has_qkv_bias = 1;
    } else {
        return ns_error_set(err, NS_ERR_UNSUPPORTED,
                            "model: architecture '%s' is not supported (supported: llama, qwen2)", hp->arch);
    }
    const char *a = hp->arch;
    if ((st = get_u32_key(g, a, "block_count", &hp->n_layer, true, 0, err))) return st;
    if ((st = get_u32_key(g, a, "embedding_length", &hp->n_embd, true, 0, err))) return st;
    if ((st = get_u32_key(g, a, "feed_forward_length", &hp->n_ff, true, 0, err))) return st;
    if ((st = get_u32_key(g, a, "attention.head_count", &hp->n_head, true, 0, err))) return st;
    if ((st = get_u32_key(g, a, "attention.head_count_kv", &hp->n_head_kv, false, hp->n_head, err))) return st;
    if ((st = get_u32_key(g, a, "context_length", &hp->n_ctx_train, false, 2048, err))) return st;
    if ((st = get_f32_key(g, a, "attention.layer_norm_rms_epsilon", &hp->norm_eps, 1e-5f, err))) return st;
    if ((st = get_f32_key(g, a, "rope.freq_base", &hp->rope_base, 10000.0f, err))) return st;

    if (hp->n_layer < 1 || hp->n_embd < 1 || hp->n_ff < 1 || hp->n_head < 1 || hp->n_head_kv < 1)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "model: sizes must be >= 1 (block_count %d, embedding_length %d, "
                            "feed_forward_length %d, head_count %d, head_count_kv %d)",
                            hp->n_layer, hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv);
    if (hp->n_head % hp->n_head_kv != 0)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "model: %s.attention.head_count %d is not a multiple of head_count_kv %d",
                            a, hp->n_head, hp->n_head_kv);
    int default_head_dim = hp->n_embd / hp->n_head;
    if ((st = get_u32_key(g, a, "attention.key_length", &hp->head_dim, false, default_head_dim, err))) return st;
    if (hp->head_dim < 2 || hp->head_dim % 2 != 0 || hp->head_dim > 1024)
        return ns_error_set(err, NS_ERR_FORMAT, "model: head dimension %d must be even and in [2, 1024]",
                            hp->head_dim);
    if ((st = get_u32_key(g, a, "rope.dimension_count", &hp->n_rot, false, hp->head_dim, err))) return st;
    if (hp->n_rot < 2 || hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "model: %s.rope.dimension_count = %d must be even and in [2, %d]", a,
                            hp->n_rot, hp->head_dim);
    if (!(hp->norm_eps > 0.0f && hp->norm_eps < 1.0f))
        return ns_error_set(err, NS_ERR_FORMAT,
                            "model: %s.attention.layer_norm_rms_epsilon = %g is out of range (0, 1)", a,
                            (double)hp->norm_eps);
    if (!(hp->rope_base > 1.0f && hp->rope_base < 1e12f))
        return ns_error_set(err, NS_ERR_FORMAT, "model: %s.rope.freq_base = %g is out of range (1, 1e12)", a,
                            (double)hp->rope_base);
    if (hp->n_ctx_train < 1) hp->n_ctx_train = 2048;

    /* Llama 3.1 style scaling from metadata (GGUFs more often carry rope_freqs.weight). */
    hp->rope_scale_factor = 1.0f;
    hp->rope_low_freq_factor = 1.0f;
    hp->rope_high_freq_factor = 4.0f;
    hp->rope_orig_ctx = 8192;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (ns_gguf_find_key(g, key) >= 0) {
        ns_gguf_str type;
        if ((st = ns_gguf_get_str(g, key, &type, err))) return st;
        if (type.len == 6 && memcmp(type.ptr, "llama3", 6) == 0) {
            if ((st = get_f32_key(g, a, "rope.scaling.factor", &hp->rope_scale_factor, 8.0f, err))) return st;
            if ((st = get_f32_key(g, a, "rope.scaling.low_freq_factor", &hp->rope_low_freq_factor, 1.0f, err))) return st;
            if ((st = get_f32_key(g, a, "rope.scaling.high_freq_factor", &hp->rope_high_freq_factor, 4.0f, err))) return st;
            if ((st = get_u32_key(g, a, "rope.scaling.original_context_length", &hp->rope_orig_ctx, false, 8192, err))) return st;
            if (!(hp->rope_scale_factor >= 1.0f) || !(hp->rope_high_freq_factor > hp->rope_low_freq_factor))
                return ns_error_set(err, NS_ERR_FORMAT, "model: rope scaling factors out of range (factor %g, low %g, high %g)",
                                    (double)hp->rope_scale_factor, (double)hp->rope_low_freq_factor,
                                    (double)hp->rope_high_freq_factor);
        } else if (!(type.len == 4 && memcmp(type.ptr, "none", 4) == 0)) {
            return ns_error_set(err, NS_ERR_UNSUPPORTED, "model: %s = '%.*s' is not supported (none, llama3)",
                                key, (int)NS_MIN(type.len, 32), type.ptr);
        }
    }

    const ns_gguf_tensor *emb = ns_gguf_find_tensor(g, "token_embd.weight");
    if (!emb) {
        hp->n_vocab = 0; /* vocab-only file: the caller decides whether that is an error */
    } else {
        if (emb->ne[1] < 1 || emb->ne[1] > (1 << 24))
            return ns_error_set(err, NS_ERR_FORMAT, "model: token_embd.weight has %lld rows (1..2^24)",
                                (long long)emb->ne[1]);
        hp->n_vocab = (int)emb->ne[1];
    }
    hp->tied_output = ns_gguf_find_tensor(g, "output.weight") == NULL;
    return NS_OK;
}

/* Finds a tensor and checks its shape ({ne0, ne1} with ne1 = 1 for vectors). */
static ns_status find_checked(const ns_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                              bool optional, const ns_gguf_tensor **out, ns_error *err) {
    const ns_gguf_tensor *t = ns_gguf_find_tensor(g, name);
    *out = t;
    if (!t) {
        if (optional) return NS_OK;
        return ns_error_set(err, NS_ERR_NOT_FOUND, "model: tensor '%s' is missing (expected shape [%lld, %lld])",
                            name, (long long)ne0, (long long)ne1);
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return ns_error_set(err, NS_ERR_FORMAT,
                            "model: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld] "
                            "from the hyperparameters",
                            name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                            (long long)t->ne[3], (long long)ne0, (long long)ne1);
    return NS_OK;
}

/* How a tensor is split across tensor-parallel ranks (Megatron-style): by output rows
 * (column-parallel: wq, wk, wv, their biases, w_gate, w_up) or by input columns
 * (row-parallel: wo, w_down, whose partial outputs are summed by an all-reduce). */
typedef enum { SHARD_NONE, SHARD_ROWS, SHARD_COLS } shard_kind;

static ns_status load_one(ns_model *m, const ns_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                          bool optional, shard_kind shard, ns_bweight **out, ns_error *err) {
    const ns_gguf_tensor *t;
    ns_status st = find_checked(g, name, ne0, ne1, optional, &t, err);
    if (st || !t) return st;
    bool is_vector = ne1 == 1;
    if (is_vector && t->type != NS_GGML_F32 && t->type != NS_GGML_F16 && t->type != NS_GGML_BF16)
        return ns_error_set(err, NS_ERR_UNSUPPORTED, "model: vector tensor '%s' has type %s (expected f32, f16 or bf16)",
                            name, ns_ggml_type_name(t->type));
    ns_gguf_tensor part = *t;
    void *tmp = NULL;
    int R = m->n_ranks, r = m->rank;
    if (R > 1 && shard == SHARD_ROWS && is_vector) { /* a bias: a slice of its elements */
        part.ne[0] = ne0 / R;
        part.nbytes = ns_ggml_row_bytes(t->type, part.ne[0]);
        part.data = (const char *)t->data + (size_t)r * part.nbytes;
    } else if (R > 1 && shard == SHARD_ROWS) {
        size_t rb = ns_ggml_row_bytes(t->type, ne0);
        part.ne[1] = ne1 / R;
        part.nbytes = rb * (size_t)part.ne[1];
        part.data = (const char *)t->data + (size_t)r * part.nbytes;
    } else if (R > 1 && shard == SHARD_COLS) {
        int64_t ne0_l = ne0 / R;
        size_t rb = ns_ggml_row_bytes(t->type, ne0), rb_l = ns_ggml_row_bytes(t->type, ne0_l);
        if (rb_l == 0 || rb_l * (size_t)R != rb)
            return ns_error_set(err, NS_ERR_UNSUPPORTED,
                                "model: tensor '%s' (%s, %lld columns) cannot be split in %d column blocks", name,
                                ns_ggml_type_name(t->type), (long long)ne0, R);
        tmp = ns_malloc_array((size_t)ne1, rb_l);
        if (!tmp) return ns_error_set(err, NS_ERR_NOMEM, "model: out of memory slicing '%s'", name);
        for (int64_t i = 0; i < ne1; i++)
            memcpy((char *)tmp + (size_t)i * rb_l, (const char *)t->data + (size_t)i * rb + (size_t)r * rb_l, rb_l);
        part.ne[0] = ne0_l;
        part.nbytes = rb_l * (size_t)ne1;
        part.data = tmp;
    }
    st = m->backend->ops->weight_load(m->backend, &part, out, err);
    free(tmp);
    if (st) return st;
    if (t->type >= 0 && t->type < 32) m->n_tensors_by_type[t->type]++;
    m->n_params += (uint64_t)part.ne[0] * (uint64_t)part.ne[1];
    return NS_OK;
}

/* The RoPE inverse frequencies (Llama 3 scaling from hp, or per-pair factors) on the device. */
static ns_status set_rope(ns_model *m, const float *factors, ns_error *err) {
    const ns_hparams *hp = &m->hp;
    ns_backend *b = m->backend;
    int n_pairs = hp->n_rot / 2;
    float *inv = ns_malloc_array((size_t)n_pairs, sizeof(float));
    if (!inv) return ns_error_set(err, NS_ERR_NOMEM, "model: out of memory");
    ns_rope_inv_freq(inv, hp->n_rot, hp->rope_base, hp->rope_scale_factor, hp->rope_low_freq_factor,
                     hp->rope_high_freq_factor, hp->rope_orig_ctx, factors);
    ns_status st = b->ops->buf_alloc(b, (size_t)n_pairs * sizeof(float), (void **)&m->rope_inv_freq, err);
    if (!st) st = b->ops->upload(b, m->rope_inv_freq, inv, (size_t)n_pairs * sizeof(float), err);
    free(inv);
    return st;
}

/* wq, wk and wv as one matrix (L->wqkv), for a backend that computes the three in one
 * GEMM (qkv_rope); left NULL where it has no such op or does not join these. */
static ns_status join_qkv(ns_model *m, ns_layer_weights *L, ns_error *err) {
    ns_backend *b = m->backend;
    if (!b->ops->weight_join || !b->ops->qkv_rope) return NS_OK;
    ns_bweight *parts[3] = {L->wq, L->wk, L->wv};
    return b->ops->weight_join(b, parts, 3, &L->wqkv, err);
}

ns_status ns_model_load(const ns_gguf *g, ns_backend *b, ns_model **out, ns_error *err) {
    return ns_model_load_shard(g, b, 0, 1, out, err);
}

ns_status ns_model_load_shard(const ns_gguf *g, ns_backend *b, int rank, int n_ranks, ns_model **out,
                              ns_error *err) {
    *out = NULL;
    ns_status st;
    ns_model *m = calloc(1, sizeof *m);
    if (!m) return ns_error_set(err, NS_ERR_NOMEM, "model: out of memory");
    m->backend = b;
    m->rank = rank;
    m->n_ranks = n_ranks;
    if ((st = ns_hparams_read(g, &m->hp, err))) goto fail;
    ns_hparams *hp = &m->hp;
    if (n_ranks < 1 || rank < 0 || rank >= n_ranks || hp->n_head % n_ranks || hp->n_head_kv % n_ranks ||
        hp->n_ff % n_ranks) {
        st = ns_error_set(err, NS_ERR_UNSUPPORTED,
                          "model: cannot split %d heads, %d kv heads and %d feed-forward rows over %d ranks (rank %d)",
                          hp->n_head, hp->n_head_kv, hp->n_ff, n_ranks, rank);
        goto fail;
    }
    if (hp->n_vocab == 0) {
        st = ns_error_set(err, NS_ERR_NOT_FOUND, "model: tensor 'token_embd.weight' is missing (vocab-only file?)");
        goto fail;
    }
    m->layers = ns_calloc_array((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        st = ns_error_set(err, NS_ERR_NOMEM, "model: out of memory");
        goto fail;
    }

    /* Check every tensor before loading any, so a bad file fails fast and cheaply. */
    int64_t q_dim = (int64_t)hp->n_head * hp->head_dim, kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    const ns_gguf_tensor *t;
    char name[96];
    if ((st = find_checked(g, "token_embd.weight", hp->n_embd, hp->n_vocab, false, &t, err))) goto fail;
    if ((st = find_checked(g, "output_norm.weight", hp->n_embd, 1, false, &t, err))) goto fail;
    if ((st = find_checked(g, "output.weight", hp->n_embd, hp->n_vocab, true, &t, err))) goto fail;
    for (int il = 0; il < hp->n_layer; il++) {
        struct { const char *n; int64_t ne0, ne1; bool opt; } spec[] = {
            {"attn_norm.weight", hp->n_embd, 1, false}, {"attn_q.weight", hp->n_embd, q_dim, false},
            {"attn_k.weight", hp->n_embd, kv_dim, false}, {"attn_v.weight", hp->n_embd, kv_dim, false},
            {"attn_output.weight", q_dim, hp->n_embd, false}, {"ffn_norm.weight", hp->n_embd, 1, false},
            {"ffn_gate.weight", hp->n_embd, hp->n_ff, false}, {"ffn_up.weight", hp->n_embd, hp->n_ff, false},
            {"ffn_down.weight", hp->n_ff, hp->n_embd, false}, {"attn_q.bias", q_dim, 1, !hp->has_qkv_bias},
            {"attn_k.bias", kv_dim, 1, !hp->has_qkv_bias}, {"attn_v.bias", kv_dim, 1, !hp->has_qkv_bias},
        };
        for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
            snprintf(name, sizeof name, "blk.%d.%s", il, spec[i].n);
            if ((st = find_checked(g, name, spec[i].ne0, spec[i].ne1, spec[i].opt, &t, err))) goto fail;
        }
    }

    if ((st = load_one(m, g, "token_embd.weight", hp->n_embd, hp->n_vocab, false, SHARD_NONE, &m->tok_embd, err)))
        goto fail;
    if ((st = load_one(m, g, "output_norm.weight", hp->n_embd, 1, false, SHARD_NONE, &m->output_norm, err)))
        goto fail;
    if (hp->tied_output) {
        m->output = m->tok_embd;
    } else if ((st = load_one(m, g, "output.weight", hp->n_embd, hp->n_vocab, false, SHARD_NONE, &m->output, err))) {
        goto fail;
    }
    for (int il = 0; il < hp->n_layer; il++) {
        ns_layer_weights *L = &m->layers[il];
        struct { const char *n; int64_t ne0, ne1; bool opt; shard_kind sh; ns_bweight **dst; } spec[] = {
            {"attn_norm.weight", hp->n_embd, 1, false, SHARD_NONE, &L->attn_norm},
            {"attn_q.weight", hp->n_embd, q_dim, false, SHARD_ROWS, &L->wq},
            {"attn_k.weight", hp->n_embd, kv_dim, false, SHARD_ROWS, &L->wk},
            {"attn_v.weight", hp->n_embd, kv_dim, false, SHARD_ROWS, &L->wv},
            {"attn_output.weight", q_dim, hp->n_embd, false, SHARD_COLS, &L->wo},
            {"ffn_norm.weight", hp->n_embd, 1, false, SHARD_NONE, &L->ffn_norm},
            {"ffn_gate.weight", hp->n_embd, hp->n_ff, false, SHARD_ROWS, &L->w_gate},
            {"ffn_up.weight", hp->n_embd, hp->n_ff, false, SHARD_ROWS, &L->w_up},
            {"ffn_down.weight", hp->n_ff, hp->n_embd, false, SHARD_COLS, &L->w_down},
            {"attn_q.bias", q_dim, 1, true, SHARD_ROWS, &L->bq},
            {"attn_k.bias", kv_dim, 1, true, SHARD_ROWS, &L->bk},
            {"attn_v.bias", kv_dim, 1, true, SHARD_ROWS, &L->bv},
        };
        for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
            snprintf(name, sizeof name, "blk.%d.%s", il, spec[i].n);
            if ((st = load_one(m, g, name, spec[i].ne0, spec[i].ne1, spec[i].opt, spec[i].sh, spec[i].dst, err)))
                goto fail;
        }
        if ((st = join_qkv(m, L, err))) goto fail;
    }

    /* this rank's share of the heads and the feed-forward rows */
    hp->n_head /= n_ranks;
    hp->n_head_kv /= n_ranks;
    hp->n_ff /= n_ranks;

    /* RoPE inverse frequencies, with Llama 3 scaling from metadata or a rope_freqs tensor. */
    int n_pairs = hp->n_rot / 2;
    float *factors = NULL;
    const ns_gguf_tensor *rf;
    if ((st = find_checked(g, "rope_freqs.weight", n_pairs, 1, true, &rf, err))) goto fail;
    if (rf) {
        if (rf->type != NS_GGML_F32) {
            st = ns_error_set(err, NS_ERR_UNSUPPORTED, "model: rope_freqs.weight must be f32, is %s",
                              ns_ggml_type_name(rf->type));
            goto fail;
        }
        factors = ns_malloc_array((size_t)n_pairs, sizeof(float));
        if (!factors) {
            st = ns_error_set(err, NS_ERR_NOMEM, "model: out of memory");
            goto fail;
        }
        memcpy(factors, rf->data, (size_t)n_pairs * sizeof(float));
    }
    st = set_rope(m, factors, err);
    free(factors);
    if (st) goto fail;
    *out = m;
    return NS_OK;
fail:
    ns_model_free(m);
    return st;
}

/* ---- random weights at a real shape ---- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Loads a (ne1, ne0) bf16 matrix (ne1 == 1: an f32 vector near 1) from a window of pool. */
static ns_status load_random(ns_model *m, const char *name, int64_t ne0, int64_t ne1, const uint16_t *pool,
                             size_t pool_n, uint64_t *rng, float *vec, ns_bweight **out, ns_error *err) {
    ns_gguf_tensor t;
    memset(&t, 0, sizeof t);
    t.name.ptr = name;
    t.name.len = strlen(name);
    t.n_dims = 2;
    t.ne[0] = ne0, t.ne[1] = ne1, t.ne[2] = 1, t.ne[3] = 1;
    if (ne1 == 1) {
        for (int64_t i = 0; i < ne0; i++) vec[i] = 1.0f + 0.0625f * ((float)(splitmix64(rng) >> 40) / 16777216.0f - 0.5f);
        t.type = NS_GGML_F32;
        t.nbytes = (uint64_t)ne0 * sizeof(float);
        t.data = vec;
    } else {
        size_t n = (size_t)ne0 * (size_t)ne1;
        NS_ASSERT(n <= pool_n);
        size_t slack = pool_n - n;
        t.type = NS_GGML_BF16;
        t.nbytes = n * sizeof(uint16_t);
        t.data = pool + (slack ? splitmix64(rng) % (slack + 1) : 0);
    }
    ns_status st = m->backend->ops->weight_load(m->backend, &t, out, err);
    if (st) return st;
    m->n_tensors_by_type[t.type]++;
    m->n_params += (uint64_t)ne0 * (uint64_t)ne1;
    return NS_OK;
}

ns_status ns_model_random(const ns_hparams *hp_in, uint64_t seed, ns_backend *b, ns_model **out, ns_error *err) {
    *out = NULL;
    ns_hparams hp = *hp_in;
    bool qwen = strcmp(hp.arch, "qwen2") == 0;
    if ((!qwen && strcmp(hp.arch, "llama") != 0) || hp.n_layer < 1 || hp.n_embd < 2 || hp.n_ff < 1 ||
        hp.n_head < 1 || hp.n_head_kv < 1 || hp.n_head % hp.n_head_kv || hp.head_dim < 2 || hp.head_dim % 2 ||
        hp.n_vocab < 2 || hp.n_ctx_train < 1 || !(hp.rope_base > 1.0f) || !(hp.norm_eps > 0.0f))
        return ns_error_set(err, NS_ERR_INVALID,
                            "model: random model shape is not valid (arch '%s', %d layers, n_embd %d, n_ff %d, "
                            "heads %d/%d, head_dim %d, vocab %d)",
                            hp.arch, hp.n_layer, hp.n_embd, hp.n_ff, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_vocab);
    hp.is_neox = qwen;
    hp.has_qkv_bias = qwen;
    if (hp.n_rot == 0) hp.n_rot = hp.head_dim;
    if (hp.rope_scale_factor == 0.0f) {
        hp.rope_scale_factor = 1.0f;
        hp.rope_low_freq_factor = 1.0f;
        hp.rope_high_freq_factor = 4.0f;
        hp.rope_orig_ctx = 8192;
    }
    int64_t q_dim = (int64_t)hp.n_head * hp.head_dim, kv_dim = (int64_t)hp.n_head_kv * hp.head_dim;
    size_t biggest = (size_t)hp.n_vocab * (size_t)hp.n_embd;
    biggest = NS_MAX(biggest, (size_t)hp.n_ff * (size_t)hp.n_embd);
    biggest = NS_MAX(biggest, (size_t)q_dim * (size_t)hp.n_embd);
    size_t pool_n = biggest + ((size_t)1 << 20);
    int64_t widest = NS_MAX(NS_MAX((int64_t)hp.n_embd, hp.n_ff), q_dim);
    uint16_t *pool = ns_malloc_array(pool_n, sizeof(uint16_t));
    float *vec = ns_malloc_array((size_t)widest, sizeof(float));
    ns_model *m = calloc(1, sizeof *m);
    ns_status st;
    if (!pool || !vec || !m) {
        st = ns_error_set(err, NS_ERR_NOMEM, "model: out of memory for a random model (%zu MiB)",
                          pool_n * sizeof(uint16_t) >> 20);
        goto fail;
    }
    m->hp = hp;
    m->backend = b;
    m->n_ranks = 1;
    m->layers = ns_calloc_array((size_t)hp.n_layer, sizeof *m->layers);
    if (!m->layers) {
        st = ns_error_set(err, NS_ERR_NOMEM, "model: out of memory");
        goto fail;
    }
    /* uniform in [-a, a] with std 1/sqrt(n_embd): a = sqrt(3 / n_embd) */
    uint64_t rng = seed;
    float a = sqrtf(3.0f / (float)hp.n_embd);
    for (size_t i = 0; i < pool_n; i++) {
        uint64_t r = splitmix64(&rng);
        float u1 = (float)(r >> 40) / 16777216.0f, u2 = (float)((r >> 8) & 0xffffff) / 16777216.0f;
        pool[i] = ns_fp32_to_bf16(a * (2.0f * u1 - 1.0f));
        if (++i < pool_n) pool[i] = ns_fp32_to_bf16(a * (2.0f * u2 - 1.0f));
    }
    if ((st = load_random(m, "token_embd.weight", hp.n_embd, hp.n_vocab, pool, pool_n, &rng, vec, &m->tok_embd, err)))
        goto fail;
    if ((st = load_random(m, "output_norm.weight", hp.n_embd, 1, pool, pool_n, &rng, vec, &m->output_norm, err)))
        goto fail;
    if ((st = load_random(m, "output.weight", hp.n_embd, hp.n_vocab, pool, pool_n, &rng, vec, &m->output, err)))
        goto fail;
    for (int il = 0; il < hp.n_layer; il++) {
        ns_layer_weights *L = &m->layers[il];
        struct { const char *n; int64_t ne0, ne1; bool want; ns_bweight **dst; } spec[] = {
            {"attn_norm.weight", hp.n_embd, 1, true, &L->attn_norm},
            {"attn_q.weight", hp.n_embd, q_dim, true, &L->wq},
            {"attn_k.weight", hp.n_embd, kv_dim, true, &L->wk},
            {"attn_v.weight", hp.n_embd, kv_dim, true, &L->wv},
            {"attn_output.weight", q_dim, hp.n_embd, true, &L->wo},
            {"ffn_norm.weight", hp.n_embd, 1, true, &L->ffn_norm},
            {"ffn_gate.weight", hp.n_embd, hp.n_ff, true, &L->w_gate},
            {"ffn_up.weight", hp.n_embd, hp.n_ff, true, &L->w_up},
            {"ffn_down.weight", hp.n_ff, hp.n_embd, true, &L->w_down},
            {"attn_q.bias", q_dim, 1, qwen, &L->bq},
            {"attn_k.bias", kv_dim, 1, qwen, &L->bk},
            {"attn_v.bias", kv_dim, 1, qwen, &L->bv},
        };
        char name[96];
        for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++) {
            if (!spec[i].want) continue;
            snprintf(name, sizeof name, "blk.%d.%s", il, spec[i].n);
            if ((st = load_random(m, name, spec[i].ne0, spec[i].ne1, pool, pool_n, &rng, vec, spec[i].dst, err)))
                goto fail;
        }
        if ((st = join_qkv(m, L, err))) goto fail;
    }
    if ((st = set_rope(m, NULL, err))) goto fail;
    free(pool);
    free(vec);
    *out = m;
    return NS_OK;
fail:
    free(pool);
    free(vec);
    ns_model_free(m);
    return st;
}

void ns_model_free(ns_model *m) {
    if (!m) return;
    ns_backend *b = m->backend;
    if (m->layers) {
        for (int il = 0; il < m->hp.n_layer; il++) {
            ns_layer_weights *L = &m->layers[il];
            ns_bweight *ws[] = {L->attn_norm, L->wq, L->wk, L->wv, L->bq, L->bk, L->bv, L->wqkv,
                                L->wo, L->ffn_norm, L->w_gate, L->w_up, L->w_down};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
                if (ws[i]) b->ops->weight_free(b, ws[i]);
        }
        free(m->layers);
    }
    if (m->output && m->output != m->tok_embd) b->ops->weight_free(b, m->output);
    if (m->tok_embd) b->ops->weight_free(b, m->tok_embd);
    if (m->output_norm) b->ops->weight_free(b, m->output_norm);
    if (m->rope_inv_freq) b->ops->buf_free(b, m->rope_inv_freq);
    free(m);
}
