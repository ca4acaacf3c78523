/* model.h: a Llama-family decoder model: hyperparameters read from GGUF metadata, and
 * its weights loaded into a backend. Supported architectures: "llama" (Llama 2/3,
 * SmolLM/SmolLM2, Mistral, TinyLlama; interleaved RoPE pairs as llama.cpp's converter
 * permutes Q/K) and "qwen2" (NeoX RoPE pairs, Q/K/V biases). Nothing is specific to one
 * model: every size comes from metadata, and every tensor's shape is checked against it.
 */
#ifndef NS_MODEL_H
#define NS_MODEL_H

#include "backend.h"
#include "gguf.h"

typedef struct ns_hparams {
    char arch[32];
    int n_layer;
    int n_embd;
    int n_ff;
    int n_head;
    int n_head_kv;
    int head_dim;     /* n_embd / n_head unless attention.key_length says otherwise */
    int n_rot;        /* rope.dimension_count, default head_dim */
    int n_vocab;
    int n_ctx_train;
    float norm_eps;
    float rope_base;
    float rope_scale_factor;  /* Llama 3.1 scaling (1 = none) */
    float rope_low_freq_factor;
    float rope_high_freq_factor;
    int rope_orig_ctx;
    int is_neox;      /* 0: interleaved pairs, 1: NeoX halves */
    int has_qkv_bias;
    int tied_output;  /* output = token_embd^T */
} ns_hparams;

typedef struct ns_layer_weights {
    ns_bweight *attn_norm;   /* (n_embd) */
    ns_bweight *wq;          /* (n_head*head_dim, n_embd) */
    ns_bweight *wk;          /* (n_head_kv*head_dim, n_embd) */
    ns_bweight *wv;          /* (n_head_kv*head_dim, n_embd) */
    ns_bweight *bq, *bk, *bv;/* biases or NULL */
    ns_bweight *wqkv;        /* wq, wk, wv joined (backend qkv_rope), or NULL */
    ns_bweight *wo;          /* (n_embd, n_head*head_dim) */
    ns_bweight *ffn_norm;    /* (n_embd) */
    ns_bweight *w_gate;      /* (n_ff, n_embd) */
    ns_bweight *w_up;        /* (n_ff, n_embd) */
    ns_bweight *w_down;      /* (n_embd, n_ff) */
} ns_layer_weights;

typedef struct ns_model {
    ns_hparams hp;
    ns_backend *backend;      /* borrowed */
    ns_bweight *tok_embd;     /* (n_vocab, n_embd) */
    ns_bweight *output_norm;  /* (n_embd) */
    ns_bweight *output;       /* (n_vocab, n_embd); == tok_embd when tied */
    ns_layer_weights *layers; /* (n_layer) */
    float *rope_inv_freq;     /* device (n_rot/2) */
    /* Weight types seen, for model-info: count of tensors per ns_ggml_type (index < 32). */
    int n_tensors_by_type[32];
    uint64_t n_params;
    int rank, n_ranks;        /* tensor parallelism: this model holds shard rank of n_ranks */
} ns_model;

/* Reads and checks the hyperparameters. Errors name the key and the value. */
ns_status ns_hparams_read(const ns_gguf *g, ns_hparams *hp, ns_error *err);

/* Loads every weight into backend b (dequantizing as the backend chooses). Errors: a
 * missing tensor or a tensor whose shape disagrees with the hyperparameters is named with
 * its expected and actual shape. *out is freed with ns_model_free. */
ns_status ns_model_load(const ns_gguf *g, ns_backend *b, ns_model **out, ns_error *err);
void ns_model_free(ns_model *m); /* NULL-tolerant; frees the weights in the backend */

/* Tensor parallelism (Megatron-style): loads rank's shard of n_ranks. wq/wk/wv (and
 * biases), w_gate and w_up are split by output rows, wo and w_down by input columns; the
 * rest is replicated. hp then holds this rank's n_head, n_head_kv and n_ff. The forward
 * pass must all-reduce the outputs of wo and w_down (ns_forward_tp). Errors: heads or
 * rows not divisible by n_ranks, or column splits that cut a quantization block. */
ns_status ns_model_load_shard(const ns_gguf *g, ns_backend *b, int rank, int n_ranks, ns_model **out,
                              ns_error *err);

/* A model of shape hp (arch "llama" or "qwen2"; n_layer, n_embd, n_ff, n_head, n_head_kv,
 * head_dim, n_vocab, n_ctx_train, rope_base and norm_eps set; the rest is derived) with
 * pseudo-random bf16 weights from seed, built without a file: benchmarks and backend
 * comparisons at real model shapes. Every matrix is a different window of one random
 * buffer (uniform, std 1/sqrt(n_embd)); norm weights are near 1. The same hp and seed
 * give the same weights on every backend. */
ns_status ns_model_random(const ns_hparams *hp, uint64_t seed, ns_backend *b, ns_model **out, ns_error *err);

#endif
