/* tiny_model.h: writes small Llama-family GGUF models with random weights, in any weight
 * type, with a byte-level BPE vocabulary, so that engine tests run in milliseconds and
 * need no download. */
#ifndef NS_TINY_MODEL_H
#define NS_TINY_MODEL_H

#include "common.h"

typedef struct ns_tiny_cfg {
    const char *arch;  /* "llama" or "qwen2" */
    int n_layer, n_embd, n_ff, n_head, n_head_kv, n_ctx;
    int wtype;         /* ggml type of the matrices (norms are f32) */
    int tied;          /* output = token_embd */
    float rope_base;
    uint64_t seed;
    const char *skip_tensor;   /* leave this tensor out (error tests) */
    const char *bad_shape_tensor; /* write this one with ne[0] doubled (error tests) */
    int nan_output_norm;  /* output_norm.weight all NaN: every logit NaN (error tests) */
} ns_tiny_cfg;

/* n_layer 2, n_embd 64, n_ff 128, n_head 4, n_head_kv 2, n_ctx 256, f32, tied, seed 1. */
void ns_tiny_cfg_default(ns_tiny_cfg *c);

/* Vocabulary: the 256 byte-level tokens, 8 merges, then <|endoftext|> (eos),
 * <|im_start|>, <|im_end|>: n_vocab = 267. */
#define NS_TINY_N_VOCAB 267

ns_status ns_tiny_model_write(const char *path, const ns_tiny_cfg *c, ns_error *err);

#endif
