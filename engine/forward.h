/* forward.h: the Llama-family forward pass, written once over engine/backend.h.
 * One call runs a mixed batch (prompt chunks of some sequences, single decode tokens of
 * others, each at its own positions) through every layer, writes the batch's K/V into
 * each sequence's KV blocks, and returns the logits of the rows asked for.
 */
#ifndef NS_FORWARD_H
#define NS_FORWARD_H

#include "backend.h"
#include "model.h"

/* Activation buffers for batches of up to max_tokens tokens and max_logits logit rows,
 * allocated once in the backend: the step loop never allocates. */
typedef struct ns_fwd_scratch {
    int max_tokens;
    int max_logits;
    float *x;      /* (max_tokens, n_embd) residual stream */
    float *xb;     /* (max_tokens, n_embd) normed input */
    float *q;      /* (max_tokens, n_head*head_dim) */
    float *k;      /* (max_tokens, n_head_kv*head_dim) */
    float *v;      /* (max_tokens, n_head_kv*head_dim) */
    float *att;    /* (max_tokens, n_head*head_dim) */
    float *hb;     /* (max_tokens, n_ff) gate, then swiglu out */
    float *hb2;    /* (max_tokens, n_ff) up */
    float *qkv;    /* (max_tokens, q_dim + 2 kv_dim) the fused QKV's product (the model has wqkv):
                    * hb where n_ff is that wide (the attention block does not use it), else its
                    * own; NULL without wqkv */
    float *xl;     /* (max_logits, n_embd) rows for the output head */
    float *logits; /* (max_logits, n_vocab) device */
} ns_fwd_scratch;

ns_status ns_fwd_scratch_alloc(const ns_model *m, int max_tokens, int max_logits, ns_fwd_scratch *s,
                               ns_error *err);
void ns_fwd_scratch_free(const ns_model *m, ns_fwd_scratch *s);

/* Tensor-parallel communication: all_reduce sums buf (n floats, backend memory) over all
 * ranks in place, like ncclAllReduce(sum); every rank calls it at the same points. */
typedef struct ns_tp {
    int rank, n_ranks;
    void (*all_reduce)(struct ns_tp *tp, float *buf, size_t n);
} ns_tp;

/* Runs batch through the model. The KV blocks for positions up to n_past + n_seq_tokens
 * must already be in each sequence's block table. On return logits_host
 * (batch->n_logits, n_vocab) holds the logits of batch->logit_rows. With logits_host NULL
 * the logits stay in s->logits (backend memory) and nothing synchronizes: the caller
 * reads them with a backend op (argmax_rows, sample_rows), rows 0..n_logits-1. A backend
 * with graph_begin (CUDA graphs) may run a decode batch padded with dummy rows, whose
 * logits follow the batch's own in s->logits; batch->max_rows is set here. */
ns_status ns_forward(const ns_model *m, ns_fwd_scratch *s, const ns_fwd_batch *batch, float *logits_host,
                     ns_error *err);
/* The same for one rank of a tensor-parallel model (tp NULL: not sharded). */
ns_status ns_forward_tp(const ns_model *m, ns_fwd_scratch *s, const ns_fwd_batch *batch, float *logits_host,
                        ns_tp *tp, ns_error *err);

#endif
