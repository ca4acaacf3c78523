/* forward.c: the decoder forward pass (see forward.h). Read top to bottom it is the whole
 * model: embed -> n_layer x [RMSNorm -> Q,K,V -> RoPE -> paged attention -> output
 * projection -> residual -> RMSNorm -> SwiGLU FFN -> residual] -> RMSNorm -> output head
 * on the rows whose logits are wanted.
 */
#include "forward.h"

#include <math.h>
#include <string.h>

ns_status ns_fwd_scratch_alloc(const ns_model *m, int max_tokens, int max_logits, ns_fwd_scratch *s,
                               ns_error *err) {
    memset(s, 0, sizeof *s);
    const ns_hparams *hp = &m->hp;
    ns_backend *b = m->backend;
    size_t T = (size_t)max_tokens;
    size_t q_dim = (size_t)hp->n_head * hp->head_dim, kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    struct { float **p; size_t n; } bufs[] = {
        {&s->x, T * hp->n_embd},  {&s->xb, T * hp->n_embd}, {&s->q, T * q_dim},
        {&s->k, T * kv_dim},      {&s->v, T * kv_dim},      {&s->att, T * q_dim},
        {&s->hb, T * hp->n_ff},   {&s->hb2, T * hp->n_ff},
        {&s->xl, (size_t)max_logits * hp->n_embd},
        {&s->logits, (size_t)max_logits * hp->n_vocab},
    };
    s->max_tokens = max_tokens;
    s->max_logits = max_logits;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        ns_status st = b->ops->buf_alloc(b, bufs[i].n * sizeof(float), (void **)bufs[i].p, err);
        if (st) {
            ns_fwd_scratch_free(m, s);
            return st;
        }
    }
    if (hp->n_layer > 0 && m->layers[0].wqkv) {
        const size_t n_qkv = q_dim + 2 * kv_dim;
        if (n_qkv <= (size_t)hp->n_ff) {
            s->qkv = s->hb;
        } else {
            ns_status st = b->ops->buf_alloc(b, T * n_qkv * sizeof(float), (void **)&s->qkv, err);
            if (st) {
                ns_fwd_scratch_free(m, s);
                return st;
            }
        }
    }
    return NS_OK;
}

void ns_fwd_scratch_free(const ns_model *m, ns_fwd_scratch *s) {
    if (!m || !s) return;
    ns_backend *b = m->backend;
    float *ps[] = {s->x, s->xb, s->q, s->k, s->v, s->att, s->hb, s->hb2, s->xl, s->logits,
                   s->qkv != s->hb ? s->qkv : NULL};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++)
        if (ps[i]) b->ops->buf_free(b, ps[i]);
    memset(s, 0, sizeof *s);
}

ns_status ns_forward(const ns_model *m, ns_fwd_scratch *s, const ns_fwd_batch *batch, float *logits_host,
                     ns_error *err) {
    return ns_forward_tp(m, s, batch, logits_host, NULL, err);
}

/* x += delta, then out = rmsnorm(x) * w: one op where the backend fuses them (out then
 * fit only for the matmuls that read it next, as here). */
static void add_then_norm(ns_backend *b, float *x, const float *delta, float *out, const ns_bweight *w, int T, int n,
                          float eps) {
    const ns_backend_ops *op = b->ops;
    if (op->add_rmsnorm) {
        op->add_rmsnorm(b, x, delta, out, w, T, n, eps);
    } else {
        op->add(b, x, delta, (int64_t)T * n);
        op->rmsnorm(b, out, x, w, T, n, eps);
    }
}

/* The ops of one pass over n_rows rows, n_logits of them wanting logits (the first
 * n_logits of batch->logit_rows, or every row of a padded decode batch). */
static void forward_ops(const ns_model *m, ns_fwd_scratch *s, int T, int n_logits, ns_tp *tp) {
    const ns_hparams *hp = &m->hp;
    ns_backend *b = m->backend;
    const ns_backend_ops *op = b->ops;
    const int n_embd = hp->n_embd, hd = hp->head_dim;
    const int q_dim = hp->n_head * hd, kv_dim = hp->n_head_kv * hd;
    const float scale = 1.0f / sqrtf((float)hd);

    op->embed(b, s->x, m->tok_embd, n_embd);
    op->rmsnorm(b, s->xb, s->x, m->layers[0].attn_norm, T, n_embd, hp->norm_eps);
    for (int il = 0; il < hp->n_layer; il++) {
        const ns_layer_weights *L = &m->layers[il];
        /* attention block (xb: the attention norm of x, made by the previous layer's end) */
        if (L->wqkv && s->qkv) {
            op->qkv_rope(b, s->q, s->k, s->v, s->qkv, s->xb, L->wqkv, L->bq, L->bk, L->bv, T, hp->n_head,
                         hp->n_head_kv, hd, hp->n_rot, m->rope_inv_freq, hp->is_neox);
        } else {
            op->matmul(b, s->q, s->xb, L->wq, T, q_dim, n_embd);
            op->matmul(b, s->k, s->xb, L->wk, T, kv_dim, n_embd);
            op->matmul(b, s->v, s->xb, L->wv, T, kv_dim, n_embd);
            if (L->bq) op->add_bias(b, s->q, L->bq, T, q_dim);
            if (L->bk) op->add_bias(b, s->k, L->bk, T, kv_dim);
            if (L->bv) op->add_bias(b, s->v, L->bv, T, kv_dim);
            op->rope(b, s->q, hp->n_head, hd, hp->n_rot, m->rope_inv_freq, hp->is_neox);
            op->rope(b, s->k, hp->n_head_kv, hd, hp->n_rot, m->rope_inv_freq, hp->is_neox);
        }
        op->kv_store(b, il, s->k, s->v);
        op->attention(b, il, s->att, s->q, hp->n_head, scale);
        op->matmul(b, s->xb, s->att, L->wo, T, n_embd, q_dim);
        if (tp) tp->all_reduce(tp, s->xb, (size_t)T * n_embd); /* row-parallel: sum the partials */
        /* feed-forward block */
        add_then_norm(b, s->x, s->xb, s->xb, L->ffn_norm, T, n_embd, hp->norm_eps);
        if (op->gate_up_swiglu) {
            op->gate_up_swiglu(b, s->hb, s->hb2, s->xb, L->w_gate, L->w_up, T, hp->n_ff, n_embd);
        } else {
            op->matmul(b, s->hb, s->xb, L->w_gate, T, hp->n_ff, n_embd);
            op->matmul(b, s->hb2, s->xb, L->w_up, T, hp->n_ff, n_embd);
            op->swiglu(b, s->hb, s->hb, s->hb2, (int64_t)T * hp->n_ff);
        }
        op->matmul(b, s->xb, s->hb, L->w_down, T, n_embd, hp->n_ff); /* hb: read here only */
        if (tp) tp->all_reduce(tp, s->xb, (size_t)T * n_embd);
        if (il + 1 < hp->n_layer) /* the residual, and the next layer's attention norm */
            add_then_norm(b, s->x, s->xb, s->xb, m->layers[il + 1].attn_norm, T, n_embd, hp->norm_eps);
        else
            op->add(b, s->x, s->xb, (int64_t)T * n_embd);
    }
    if (n_logits == 0) return;
    /* output head only on the rows that need logits (last prompt token, decode tokens) */
    op->gather_logit_rows(b, s->xl, s->x, n_embd);
    op->rmsnorm(b, s->xl, s->xl, m->output_norm, n_logits, n_embd, hp->norm_eps);
    op->matmul(b, s->logits, s->xl, m->output, n_logits, hp->n_vocab, n_embd);
}

ns_status ns_forward_tp(const ns_model *m, ns_fwd_scratch *s, const ns_fwd_batch *batch, float *logits_host,
                        ns_tp *tp, ns_error *err) {
    const ns_hparams *hp = &m->hp;
    ns_backend *b = m->backend;
    const ns_backend_ops *op = b->ops;
    int T = batch->n_tokens;
    if (T < 1 || T > s->max_tokens || batch->n_logits > s->max_logits)
        return ns_error_set(err, NS_ERR_INVALID, "forward: batch of %d tokens / %d logit rows exceeds %d / %d", T,
                            batch->n_logits, s->max_tokens, s->max_logits);
    for (int i = 0; i < T; i++) /* below 0: a pick's id on the device (the backend checks the row) */
        if ((batch->tokens[i] < 0 && !op->pick_launch) || batch->tokens[i] >= hp->n_vocab)
            return ns_error_set(err, NS_ERR_INVALID, "forward: token id %d at batch row %d is out of range [0, %d)",
                                batch->tokens[i], i, hp->n_vocab);
    /* a recorded pass (graph_begin) may pad a decode batch up to what the buffers hold;
     * not under tensor parallelism, whose all-reduces run between the ops */
    const bool graphs = op->graph_begin && !tp;
    ns_fwd_batch bt = *batch;
    bt.max_rows = graphs ? NS_MIN(s->max_tokens, s->max_logits) : 0;
    ns_status st = op->batch_set(b, &bt, err);
    if (st) return st;
    int n_rows = T;
    bool replayed = false, rerun = false;
    if (graphs && (st = op->graph_begin(b, &n_rows, &replayed, err))) return st;
    NS_ASSERT(n_rows >= T && n_rows <= NS_MAX(T, bt.max_rows));
    if (!replayed) {
        forward_ops(m, s, n_rows, n_rows > T ? n_rows : batch->n_logits, tp);
        if (graphs && (st = op->graph_end(b, &rerun, err))) return st;
        if (rerun) forward_ops(m, s, n_rows, n_rows > T ? n_rows : batch->n_logits, tp);
    }
    if (batch->n_logits == 0 || !logits_host) return NS_OK;
    return op->download(b, logits_host, s->logits, (size_t)batch->n_logits * hp->n_vocab * sizeof(float), err);
}
