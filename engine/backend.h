/* backend.h: the interface between the forward pass (engine/forward.c, written once) and
 * the machines it runs on. A backend owns its memory (weights, activations, the KV pool)
 * and implements the ops in its own way: the CPU backend (engine/backend_cpu.c) with
 * kernels/cpu and OpenBLAS over a pthread pool; a CUDA backend with kernels/cuda and
 * cuBLAS. Device state lives in the backend context, never in globals, so N GPUs are N
 * contexts.
 *
 * Conventions: activation buffers are float32 in the backend's memory ("device pointers"),
 * row-major, shapes written beside each argument. Ops are enqueued in order; results are
 * visible to the host only after ns_backend_ops.download (which synchronizes). Ops do not
 * allocate: buffers come from buf_alloc at set-up time.
 */
#ifndef NS_BACKEND_H
#define NS_BACKEND_H

#include "common.h"
#include "gguf.h"
#include "sample_rule.h" /* ns_row_sampling (kernels/cpu) */

typedef struct ns_backend ns_backend;
/* A weight in the backend's compute form (CPU: float32; CUDA: bf16). Opaque. */
typedef struct ns_bweight ns_bweight;

/* The KV pool: for each layer, K and V of shape (n_blocks, block_size, n_head_kv, head_dim),
 * elements of kv_elem_bytes (ns_backend). */
typedef struct ns_kv_shape {
    int n_layer;
    int n_blocks;
    int block_size;
    int n_head_kv;
    int head_dim;
} ns_kv_shape;

/* One forward batch as the host describes it: n_tokens tokens from n_seqs sequences. The
 * tokens of a sequence are contiguous, in position order: tokens [tok_start[s],
 * tok_start[s] + n_seq_tokens[s]) belong to sequence s, whose positions continue from
 * n_past[s]. A sequence with one token is a decode step; with more, a prompt chunk. */
typedef struct ns_fwd_batch {
    int n_tokens;
    int n_seqs;
    /* (n_tokens) token ids, checked < n_vocab; with a backend that has pick_launch, a token
     * -1 - i is the id in row i of the last launched pick (still on the device: the host
     * need not know it yet), read as token 0 if that row picked nothing (-1) */
    const int32_t *tokens;
    const int32_t *pos;          /* (n_tokens) position of each token */
    const int32_t *tok_start;    /* (n_seqs) first token of each sequence in the batch */
    const int32_t *n_seq_tokens; /* (n_seqs) */
    const int32_t *n_past;       /* (n_seqs) tokens already in the cache before this batch */
    const int32_t *block_table;  /* (n_seqs, max_blocks_per_seq) block ids */
    int max_blocks_per_seq;
    const int32_t *logit_rows;   /* (n_logits) batch rows whose logits are wanted */
    int n_logits;
    /* Rows the caller's activation and logit buffers hold (>= n_tokens, n_logits): a
     * backend may pad a decode batch up to it (graph_begin). 0: no padding. */
    int max_rows;
} ns_fwd_batch;

typedef struct ns_backend_ops {
    const char *name;
    void (*destroy)(ns_backend *b);

    /* Memory. buf_alloc returns zeroed device memory. */
    ns_status (*buf_alloc)(ns_backend *b, size_t nbytes, void **out, ns_error *err);
    void (*buf_free)(ns_backend *b, void *p);
    ns_status (*upload)(ns_backend *b, void *dst_dev, const void *src_host, size_t nbytes,
                        ns_error *err);
    /* download synchronizes: all enqueued ops are done when it returns. */
    ns_status (*download)(ns_backend *b, void *dst_host, const void *src_dev, size_t nbytes,
                          ns_error *err);

    /* Weights: converts a GGUF tensor (any supported type) into the backend's form. */
    ns_status (*weight_load)(ns_backend *b, const ns_gguf_tensor *t, ns_bweight **out,
                             ns_error *err);
    void (*weight_free)(ns_backend *b, ns_bweight *w);
    /* A small float32 vector (norm weights, rope freqs, biases) in device memory; n floats. */
    const float *(*weight_f32)(const ns_bweight *w);

    /* The KV pool, zeroed. */
    ns_status (*kv_alloc)(ns_backend *b, const ns_kv_shape *shape, ns_error *err);

    /* The batch layout for the ops below: copied to the device once per step. */
    ns_status (*batch_set)(ns_backend *b, const ns_fwd_batch *batch, ns_error *err);

    /* Ops over the current batch. */
    void (*embed)(ns_backend *b, float *out /*(n_tokens, n_embd)*/, const ns_bweight *table,
                  int n_embd);
    void (*rmsnorm)(ns_backend *b, float *out, const float *x /*(n_rows, n)*/,
                    const ns_bweight *w /*(n)*/, int n_rows, int n, float eps);
    /* y (M, N) = x (M, K) . W^T, W (N, K). */
    void (*matmul)(ns_backend *b, float *y, const float *x, const ns_bweight *w, int M, int N,
                   int K);
    /* y (M, N) += bias (N). */
    void (*add_bias)(ns_backend *b, float *y, const ns_bweight *bias, int M, int N);
    /* RoPE in place on (n_tokens, n_head, head_dim) at the batch positions. */
    void (*rope)(ns_backend *b, float *x, int n_head, int head_dim, int n_rot,
                 const float *inv_freq_dev /*(n_rot/2)*/, int is_neox);
    /* Writes this batch's K and V (n_tokens, n_head_kv, head_dim) into the layer's blocks. */
    void (*kv_store)(ns_backend *b, int layer, const float *k, const float *v);
    /* Causal attention of each sequence's queries over its own blocks.
     * out, q (n_tokens, n_head, head_dim). */
    void (*attention)(ns_backend *b, int layer, float *out, const float *q, int n_head,
                      float scale);
    void (*swiglu)(ns_backend *b, float *out, const float *gate, const float *up, int64_t n);
    /* Optional (NULL: matmul, matmul, swiglu). The feed-forward's first half in one op,
     * silu(x W_gate^T) * (x W_up^T), x (M, K), both weights (N, K), for a backend that can
     * keep the products in its own narrower form: the result goes to out (M, N) in the
     * form the backend's matmul takes as input, so out must be passed as x to the very
     * next op, a matmul, and read by nothing else. tmp (M, N) is scratch. */
    void (*gate_up_swiglu)(ns_backend *b, float *out, float *tmp, const float *x, const ns_bweight *w_gate,
                           const ns_bweight *w_up, int M, int N, int K);
    void (*add)(ns_backend *b, float *y, const float *x, int64_t n);
    /* Optional, both or neither (NULL: the attention block's q, k and v come from three
     * matmuls, add_bias and rope). weight_join stacks the rows of n matrices of one width
     * into *out (the sum of their rows), for one GEMM in place of n: each part then keeps
     * working as itself (its rows inside out's storage) and may be freed before or after
     * out. *out NULL with NS_OK: the backend does not join these (their forms differ).
     * qkv_rope: q (T, n_head * head_dim), k and v (T, n_head_kv * head_dim) = x (T, K) .
     * wqkv^T split, wqkv the join of wq, wk and wv, each part plus its bias (NULL: none),
     * then RoPE on q and k at the batch positions: what matmul, add_bias and rope give, up
     * to the GEMM's rounding. tmp (T, q_dim + 2 kv_dim) is scratch. */
    ns_status (*weight_join)(ns_backend *b, ns_bweight *const *parts, int n, ns_bweight **out, ns_error *err);
    void (*qkv_rope)(ns_backend *b, float *q, float *k, float *v, float *tmp, const float *x, const ns_bweight *wqkv,
                     const ns_bweight *bq, const ns_bweight *bk, const ns_bweight *bv, int T, int n_head, int n_head_kv,
                     int head_dim, int n_rot, const float *inv_freq_dev, int is_neox);
    /* Optional (NULL: add, then rmsnorm). The residual add and the next RMSNorm: x (n_rows,
     * n) += delta, out = rmsnorm(x) * w, for a backend that can skip writing out in fp32:
     * out then holds the result in the form the backend's matmul takes as input, so out
     * must be read only as x by the matmuls that follow. out may alias delta. */
    void (*add_rmsnorm)(ns_backend *b, float *x, const float *delta, float *out, const ns_bweight *w, int n_rows,
                        int n, float eps);
    /* out (n_logits, width) = rows logit_rows of x (n_tokens, width). */
    void (*gather_logit_rows)(ns_backend *b, float *out, const float *x, int width);

    /* Optional (NULL: the engine downloads the logits and samples on the host). Greedy
     * sampling where the logits are: ids_host (n_rows) = argmax of each row of logits
     * (n_rows, n_vocab, backend memory), lowest id on ties, NaN never chosen, -1 for a row
     * whose best value is not finite (the host sampler's rule). Synchronizes like download,
     * so only n_rows ints cross to the host. */
    ns_status (*argmax_rows)(ns_backend *b, int32_t *ids_host, const float *logits, int n_rows, int n_vocab,
                             ns_error *err);
    /* Optional (NULL: the engine samples on the host). Sampling where the logits are, by
     * the rule of kernels/cpu/sample_rule.h (greedy, or temperature with top_k, top_p,
     * min_p and a draw u per row): ids_host (n_rows) for logits (n_rows, n_vocab, backend
     * memory), row i with params[i] (host memory). -1 for a row with no logit above -inf.
     * Synchronizes like download. n_rows is at most the current batch's n_logits. */
    ns_status (*sample_rows)(ns_backend *b, int32_t *ids_host, const float *logits, int n_rows, int n_vocab,
                             const ns_row_sampling *params, ns_error *err);

    /* Optional, both or neither (NULL: each step's tokens reach the host before the next
     * step is built). Picking without waiting, so that the host handles step k's tokens
     * while the device runs step k + 1: pick_launch enqueues the pick of n_rows rows of
     * logits (n_rows <= the current batch's n_logits), greedy (params NULL, argmax_rows'
     * rule) or by sample_rows' rule (params host memory, copied), and returns at once;
     * pick_wait waits for the oldest launched pick not yet waited for and writes its ids.
     * At most two picks are outstanding. The next batch may name the ids of the last
     * launched pick as its tokens (ns_fwd_batch.tokens). */
    ns_status (*pick_launch)(ns_backend *b, const float *logits, int n_rows, int n_vocab,
                             const ns_row_sampling *params, ns_error *err);
    ns_status (*pick_wait)(ns_backend *b, int32_t *ids_host, int n_rows, ns_error *err);

    /* Optional (NULL: every op runs as it is called). A recorded forward pass (CUDA
     * graphs). Called after batch_set: *n_rows receives the rows the ops run on, the
     * batch's n_tokens, or more when the backend padded a decode batch (every sequence one
     * token wanting logits) up to a size it records: rows past n_tokens are padding, every
     * row then has its logits in row order, and only the batch's own are used. With
     * *replayed the backend has launched its recording of the whole pass for this size and
     * the caller runs no op; otherwise the caller runs the ops, then graph_end. */
    ns_status (*graph_begin)(ns_backend *b, int *n_rows, bool *replayed, ns_error *err);
    /* Ends what graph_begin started: a recording is finished and launched. *rerun: the
     * recording failed and nothing ran: the caller runs the ops again (no recording is
     * made then). */
    ns_status (*graph_end)(ns_backend *b, bool *rerun, ns_error *err);
    /* Optional (NULL: the backend has no FP8 path): from now on, layer matrices loaded are
     * kept in FP8 E4M3 and the matmuls that use them quantize their input the same way.
     * Called once, before any weight_load; fails, saying why, where the device cannot. */
    ns_status (*use_fp8)(ns_backend *b, ns_error *err);
    /* Optional (NULL: no FP8 KV cache): the KV cache as FP8 E4M3 codes with one scale per
     * (slot, KV head) row, where the backend takes the shape; *on says whether it will be
     * (kv_elem_bytes and kv_row_extra_bytes then say its size). Before kv_alloc; fails,
     * saying why, where the device cannot. */
    ns_status (*use_kv_fp8)(ns_backend *b, int n_head, int n_head_kv, int head_dim, bool *on, ns_error *err);
} ns_backend_ops;

/* The row count a backend that records its passes (graph_begin) pads this batch to, or
 * 0: not a decode batch (one token per sequence, every row wanting its logits in row
 * order), or no room (max_rows). Up to 256 rows a multiple of 8, above a multiple of 64,
 * so that few sizes are recorded. Padding rows are token 0 at position 0 of a sequence
 * of their own whose every block is the backend's spare KV block (one past the engine's
 * n_blocks): they write and read nothing else. */
static inline int ns_backend_pad_rows(const ns_fwd_batch *bt) {
    const int T = bt->n_tokens;
    if (bt->max_rows < T || bt->n_seqs != T || bt->n_logits != T) return 0;
    for (int i = 0; i < T; i++)
        if (bt->logit_rows[i] != i) return 0;
    const int P = T <= 256 ? (T + 7) / 8 * 8 : (T + 63) / 64 * 64;
    return P < bt->max_rows ? P : bt->max_rows;
}

struct ns_backend {
    const ns_backend_ops *ops;
    /* Set by the engine before loading: every op computes each row the same way whatever
     * the batch (CPU: the matmul kernel never switches with the number of rows). */
    bool batch_invariant;
    /* Set by the backend: whether it can honour batch_invariant (CPU: yes; CUDA: not yet,
     * since cuBLAS picks a GEMM's algorithm by its number of rows). ns_engine_open refuses
     * batch_invariant on a backend that cannot. */
    bool can_batch_invariant;
    /* Bytes of one element of the backend's KV pool (CPU: 4; CUDA: 2, bf16, or 4 in its
     * precise mode): the engine sizes the pool from its byte budget with it. */
    int kv_elem_bytes;
    /* Bytes more per (token, KV head) row of K, and of V (the FP8 KV cache's scale: 4). */
    int kv_row_extra_bytes;
};

/* Creates the CPU backend with n_threads worker threads (0 = all cores). */
ns_status ns_backend_cpu_create(int n_threads, ns_backend **out, ns_error *err);

/* Tests: gives a CPU backend the sample_rows op (ns_cpu_sample_rows_ref, a sorting
 * reference: slow), so that the engine's path for backends that sample where the logits
 * are runs without a GPU. Off by default: the CPU engine samples with engine/sampler.c. */
void ns_backend_cpu_set_row_sampling(ns_backend *b, bool on);

/* Tests: makes a CPU backend pad decode batches as the CUDA backend does for its
 * recorded passes (ns_backend_pad_rows, graph_begin reporting the padded rows; nothing is
 * recorded), so that the forward pass and the engine run padded batches without a GPU. */
void ns_backend_cpu_set_padding(ns_backend *b, bool on);

/* Tests: gives a CPU backend pick_launch and pick_wait (run at once, on
 * ns_cpu_sample_rows_ref), so that the engine's overlapped steps run without a GPU. */
void ns_backend_cpu_set_overlap(ns_backend *b, bool on);

/* "cpu", "cuda" or "auto". auto picks CUDA when it is built and a device is present,
 * else the CPU (and says so in *note, a static string, when note is not NULL). */
ns_status ns_backend_create(const char *name, int n_threads, ns_backend **out, const char **note,
                            ns_error *err);

/* The same on CUDA device `device` (0-based; ignored by the CPU backend). */
ns_status ns_backend_create_on(const char *name, int n_threads, int device, ns_backend **out, const char **note,
                               ns_error *err);

/* NULL-tolerant. */
void ns_backend_destroy(ns_backend *b);

#endif
