/* backend_cpu.c: the CPU backend. Each weight matrix is kept twice: as the file's
 * quantized rows, read directly by ns_cpu_matmul_quant for small batches (decode), and
 * dequantized to float32 at load for OpenBLAS sgemm on large ones (prompt chunks). The
 * matrix work is split by output columns over the pool threads, one single-threaded
 * kernel call per slice, so our pool and OpenBLAS never compete for cores.
 * Why both: see README "CPU engine".
 * Attention runs per (sequence, head range) task over that sequence's KV blocks only.
 * "Device" memory is host memory; upload/download are memcpy.
 */
#include "backend.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cuda.h"
#include "matmul_quant.h"
#include "ops.h"
#include "sample_rule.h"
#include "threadpool.h"

struct ns_bweight {
    float *data;  /* (ne1, ne0) float32, for sgemm at large M */
    int64_t ne0, ne1;
    void *raw;    /* (ne1 rows of ns_ggml_row_bytes) the file's quantized rows, for small M; NULL for f32 */
    int type;     /* ggml type of raw */
    size_t row_bytes;
};

/* Up to this many activation rows, matmuls read the quantized weights directly (decode
 * steps up to batch 32); above, float32 sgemm on the copy dequantized at load (prompt
 * chunks). Measured on bench-engine: README "CPU engine". */
#define NS_CPU_QUANT_MAX_M 32

typedef struct cpu_backend {
    ns_backend base;
    ns_pool *pool;
    int n_threads;
    /* KV pool */
    ns_kv_shape kv;
    float **k_pool; /* (n_layer) each (n_blocks + 1, block_size, n_head_kv, head_dim): a spare block */
    float **v_pool;
    /* per-thread attention scratch: (n_threads, scratch_len) */
    float *scratch;
    size_t scratch_len;
    /* the current batch: the caller's arrays, or a padded copy in bt_buf (tests) */
    ns_fwd_batch batch;
    int32_t *bt_buf;
    size_t bt_cap;
    bool pad_on; /* ns_backend_cpu_set_padding */
    /* tests: NS_FAULT_BATCH_TOKENS=N makes a batch of more than N tokens fail as out of
     * memory (the engine's shrink-on-OOM path); -1 = off */
    int fault_batch_tokens;
    /* tests (ns_backend_cpu_set_row_sampling): scratch of the sample_rows reference,
     * (2 * n_vocab) uint64_t, grown on first use */
    uint64_t *samp_scratch;
    size_t samp_cap;
    /* tests (ns_backend_cpu_set_overlap): picks run at launch into a ring of two, waited
     * for in order; the batch's tokens with the last pick's ids put in (tok_buf) */
    struct { int32_t *ids; int cap, n; } pick[2];
    int pick_head, pick_count, pick_last; /* the oldest not waited for, how many, the newest */
    int32_t *tok_buf;
    size_t tok_cap;
    ns_backend_ops ops; /* this backend's copy of cpu_ops (the tests may add sample_rows) */
} cpu_backend;

static cpu_backend *cpu(ns_backend *b) { return (cpu_backend *)b; }

/* ---- memory ---- */

static ns_status cpu_buf_alloc(ns_backend *b, size_t nbytes, void **out, ns_error *err) {
    (void)b;
    void *p = NULL;
    if (posix_memalign(&p, 64, nbytes ? nbytes : 64) != 0)
        return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: cannot allocate %zu bytes", nbytes);
    memset(p, 0, nbytes);
    *out = p;
    return NS_OK;
}

static void cpu_buf_free(ns_backend *b, void *p) {
    (void)b;
    free(p);
}

static ns_status cpu_upload(ns_backend *b, void *dst, const void *src, size_t n, ns_error *err) {
    (void)b;
    (void)err;
    memcpy(dst, src, n);
    return NS_OK;
}

static ns_status cpu_download(ns_backend *b, void *dst, const void *src, size_t n, ns_error *err) {
    (void)b;
    (void)err;
    memcpy(dst, src, n);
    return NS_OK;
}

/* ---- weights ---- */

typedef struct {
    const ns_gguf_tensor *t;
    float *dst;
    size_t row_bytes;
    int64_t rows_per_task;
} dequant_task;

static void dequant_fn(void *ctxp, int i_task, int i_thread) {
    (void)i_thread;
    dequant_task *c = ctxp;
    int64_t r0 = (int64_t)i_task * c->rows_per_task;
    int64_t r1 = NS_MIN(r0 + c->rows_per_task, c->t->ne[1]);
    for (int64_t r = r0; r < r1; r++)
        ns_cpu_dequant_row(c->t->type, (const char *)c->t->data + (size_t)r * c->row_bytes,
                           c->dst + (size_t)r * (size_t)c->t->ne[0], c->t->ne[0]);
}

static void cpu_weight_free(ns_backend *b, ns_bweight *w);

static ns_status cpu_weight_load(ns_backend *b, const ns_gguf_tensor *t, ns_bweight **out, ns_error *err) {
    *out = NULL;
    size_t row_bytes = ns_ggml_row_bytes(t->type, t->ne[0]);
    if (row_bytes == 0)
        return ns_error_set(err, NS_ERR_UNSUPPORTED, "cpu backend: tensor '%.*s' type %d is not supported",
                            (int)NS_MIN(t->name.len, 96), t->name.ptr, t->type);
    int64_t n_rows = t->ne[1] * t->ne[2] * t->ne[3];
    ns_bweight *w = calloc(1, sizeof *w);
    if (!w) return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: out of memory");
    w->ne0 = t->ne[0];
    w->ne1 = n_rows;
    ns_status st = cpu_buf_alloc(b, (size_t)w->ne0 * (size_t)n_rows * sizeof(float), (void **)&w->data, err);
    if (st) {
        free(w);
        return st;
    }
    cpu_backend *c = cpu(b);
    ns_gguf_tensor flat = *t;
    flat.ne[1] = n_rows;
    dequant_task task = {&flat, w->data, row_bytes, (n_rows + 63) / 64};
    int n_tasks = (int)((n_rows + task.rows_per_task - 1) / task.rows_per_task);
    ns_pool_run(c->pool, n_tasks, dequant_fn, &task);
    if (t->type != NS_GGML_F32 && t->ne[1] > 1) {
        /* matrices also keep the file's rows for the small-M quantized kernel */
        w->type = t->type;
        w->row_bytes = row_bytes;
        w->raw = malloc(row_bytes * (size_t)n_rows);
        if (!w->raw) {
            cpu_weight_free(b, w);
            return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: out of memory");
        }
        memcpy(w->raw, t->data, row_bytes * (size_t)n_rows);
    }
    *out = w;
    return NS_OK;
}

static void cpu_weight_free(ns_backend *b, ns_bweight *w) {
    (void)b;
    if (!w) return;
    free(w->raw);
    free(w->data);
    free(w);
}

static const float *cpu_weight_f32(const ns_bweight *w) { return w->data; }

/* ---- KV pool and batch ---- */

static void free_kv(cpu_backend *c) {
    if (c->k_pool)
        for (int i = 0; i < c->kv.n_layer; i++) free(c->k_pool[i]);
    if (c->v_pool)
        for (int i = 0; i < c->kv.n_layer; i++) free(c->v_pool[i]);
    free(c->k_pool);
    free(c->v_pool);
    free(c->scratch);
    c->k_pool = c->v_pool = NULL;
    c->scratch = NULL;
}

static ns_status cpu_kv_alloc(ns_backend *b, const ns_kv_shape *shape, ns_error *err) {
    cpu_backend *c = cpu(b);
    free_kv(c);
    c->kv = *shape;
    /* one spare block past the engine's, for padding rows (ns_backend_pad_rows); never
     * touched otherwise, so it costs no memory (the pool is not zeroed) */
    size_t per_layer = (size_t)(shape->n_blocks + 1) * (size_t)shape->block_size * (size_t)shape->n_head_kv *
                       (size_t)shape->head_dim * sizeof(float);
    c->k_pool = ns_calloc_array((size_t)shape->n_layer, sizeof(float *));
    c->v_pool = ns_calloc_array((size_t)shape->n_layer, sizeof(float *));
    /* scratch: scores for one query over the longest sequence the pool can hold */
    c->scratch_len = (size_t)shape->n_blocks * (size_t)shape->block_size + 16;
    c->scratch = ns_malloc_array((size_t)c->n_threads * c->scratch_len, sizeof(float));
    if (!c->k_pool || !c->v_pool || !c->scratch) goto oom;
    /* Not zeroed: a slot is always written (kv_store) before attention reads it, and
     * untouched pages cost no memory, so RSS follows the blocks actually used. */
    for (int i = 0; i < shape->n_layer; i++) {
        if (posix_memalign((void **)&c->k_pool[i], 64, per_layer ? per_layer : 64) != 0) goto oom;
        if (posix_memalign((void **)&c->v_pool[i], 64, per_layer ? per_layer : 64) != 0) goto oom;
    }
    return NS_OK;
oom:
    free_kv(c);
    return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: cannot allocate the KV cache (%d layers x 2 x %zu bytes)",
                        shape->n_layer, per_layer);
}

/* The decode batch bt padded to P rows (ns_backend_pad_rows) into c->bt_buf. A test path:
 * it may allocate. */
static ns_status pad_batch(cpu_backend *c, const ns_fwd_batch *bt, int P, ns_error *err) {
    const int T = bt->n_tokens, MB = bt->max_blocks_per_seq;
    const size_t need = 6 * (size_t)P + (size_t)P * (size_t)MB;
    if (need > c->bt_cap) {
        free(c->bt_buf);
        c->bt_cap = 0;
        if (!(c->bt_buf = ns_malloc_array(need, sizeof(int32_t))))
            return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: out of memory for a padded batch");
        c->bt_cap = need;
    }
    int32_t *tokens = c->bt_buf, *pos = tokens + P, *tok_start = pos + P, *n_seq_tokens = tok_start + P,
            *n_past = n_seq_tokens + P, *logit_rows = n_past + P, *table = logit_rows + P;
    memcpy(tokens, bt->tokens, (size_t)T * sizeof(int32_t));
    memcpy(pos, bt->pos, (size_t)T * sizeof(int32_t));
    memcpy(tok_start, bt->tok_start, (size_t)T * sizeof(int32_t));
    memcpy(n_seq_tokens, bt->n_seq_tokens, (size_t)T * sizeof(int32_t));
    memcpy(n_past, bt->n_past, (size_t)T * sizeof(int32_t));
    memcpy(table, bt->block_table, (size_t)T * MB * sizeof(int32_t));
    for (int t = 0; t < P; t++) logit_rows[t] = t;
    for (int t = T; t < P; t++) {
        tokens[t] = 0, pos[t] = 0, tok_start[t] = t, n_seq_tokens[t] = 1, n_past[t] = 0;
        for (int i = 0; i < MB; i++) table[(size_t)t * MB + i] = c->kv.n_blocks; /* the spare block */
    }
    c->batch.n_tokens = c->batch.n_seqs = c->batch.n_logits = P;
    c->batch.tokens = tokens, c->batch.pos = pos, c->batch.tok_start = tok_start;
    c->batch.n_seq_tokens = n_seq_tokens, c->batch.n_past = n_past, c->batch.block_table = table;
    c->batch.logit_rows = logit_rows;
    return NS_OK;
}

static ns_status cpu_batch_set(ns_backend *b, const ns_fwd_batch *batch, ns_error *err) {
    int limit = cpu(b)->fault_batch_tokens;
    if (limit >= 0 && batch->n_tokens > limit)
        return ns_error_set(err, NS_ERR_NOMEM,
                            "cpu backend: out of memory for a batch of %d tokens (simulated: NS_FAULT_BATCH_TOKENS=%d)",
                            batch->n_tokens, limit);
    /* Host memory already: the ops read the caller's arrays, which stay valid and
     * unchanged until the step's forward pass returns (engine contract). */
    cpu_backend *c = cpu(b);
    c->batch = *batch;
    bool refs = false;
    for (int t = 0; t < batch->n_tokens && !refs; t++) refs = batch->tokens[t] < 0;
    if (refs) { /* tokens from the last pick (ns_backend_cpu_set_overlap: a test path, it may allocate) */
        const int n_last = c->pick[c->pick_last].n; /* 0 before the first pick */
        if ((size_t)batch->n_tokens > c->tok_cap) {
            free(c->tok_buf);
            c->tok_cap = 0;
            if (!(c->tok_buf = ns_malloc_array((size_t)batch->n_tokens, sizeof(int32_t))))
                return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: out of memory for the batch tokens");
            c->tok_cap = (size_t)batch->n_tokens;
        }
        for (int t = 0; t < batch->n_tokens; t++) {
            int32_t tok = batch->tokens[t];
            if (tok < 0) {
                if (-1 - tok >= n_last)
                    return ns_error_set(err, NS_ERR_INVALID, "cpu backend: batch row %d names row %d of the last pick, "
                                        "which has %d rows", t, -1 - tok, n_last);
                tok = NS_MAX(c->pick[c->pick_last].ids[-1 - tok], 0);
            }
            c->tok_buf[t] = tok;
        }
        c->batch.tokens = c->tok_buf;
    }
    const int P = c->pad_on ? ns_backend_pad_rows(&c->batch) : 0;
    if (P > batch->n_tokens) return pad_batch(c, &c->batch, P, err);
    return NS_OK;
}

/* graph_begin of a padding backend (tests): the ops run on the padded rows, nothing is
 * recorded. */
static ns_status cpu_graph_begin(ns_backend *b, int *n_rows, bool *replayed, ns_error *err) {
    (void)err;
    *n_rows = cpu(b)->batch.n_tokens;
    *replayed = false;
    return NS_OK;
}

static ns_status cpu_graph_end(ns_backend *b, bool *rerun, ns_error *err) {
    (void)b, (void)err;
    *rerun = false;
    return NS_OK;
}

/* ---- ops ---- */

static void cpu_embed(ns_backend *b, float *out, const ns_bweight *table, int n_embd) {
    const ns_fwd_batch *bt = &cpu(b)->batch;
    ns_cpu_embed(out, table->data, NS_GGML_F32, bt->tokens, bt->n_tokens, n_embd);
}

typedef struct {
    float *out;
    const float *x, *w;
    int n_rows, n, rows_per_task;
    float eps;
} rms_task;

static void rms_fn(void *p, int i_task, int i_thread) {
    (void)i_thread;
    rms_task *t = p;
    int r0 = i_task * t->rows_per_task, r1 = NS_MIN(r0 + t->rows_per_task, t->n_rows);
    ns_cpu_rmsnorm(t->out + (size_t)r0 * t->n, t->x + (size_t)r0 * t->n, t->w, r1 - r0, t->n, t->eps);
}

static void cpu_rmsnorm(ns_backend *b, float *out, const float *x, const ns_bweight *w, int n_rows, int n, float eps) {
    cpu_backend *c = cpu(b);
    int per = n_rows < 8 ? n_rows : (n_rows + c->n_threads - 1) / c->n_threads;
    if (per < 1) return;
    rms_task t = {out, x, w->data, n_rows, n, per, eps};
    ns_pool_run(c->pool, (n_rows + per - 1) / per, rms_fn, &t);
}

typedef struct {
    float *y;
    const float *x;
    const ns_bweight *w;
    int M, N, K, cols_per_task;
    bool quant;     /* quantized kernel (small M) */
    bool invariant; /* batch-invariant kernel (every M) */
} mm_task;

static void mm_fn(void *p, int i_task, int i_thread) {
    (void)i_thread;
    mm_task *t = p;
    int n0 = i_task * t->cols_per_task, n1 = NS_MIN(n0 + t->cols_per_task, t->N);
    /* y[:, n0:n1] = x . W[n0:n1]^T; y rows have stride N */
    if (t->invariant && t->w->raw)
        ns_cpu_matmul_quant_invariant(t->y + n0, t->N, t->x, (const char *)t->w->raw + (size_t)n0 * t->w->row_bytes,
                                      t->w->type, t->M, n1 - n0, t->K);
    else if (t->invariant)
        ns_cpu_matmul_quant_invariant(t->y + n0, t->N, t->x, t->w->data + (size_t)n0 * t->K, NS_GGML_F32, t->M,
                                      n1 - n0, t->K);
    else if (t->quant)
        ns_cpu_matmul_quant(t->y + n0, t->N, t->x, (const char *)t->w->raw + (size_t)n0 * t->w->row_bytes,
                            t->w->type, t->M, n1 - n0, t->K);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, t->M, n1 - n0, t->K, 1.0f, t->x, t->K,
                    t->w->data + (size_t)n0 * t->K, t->K, 0.0f, t->y + n0, t->N);
}

static void cpu_matmul(ns_backend *b, float *y, const float *x, const ns_bweight *w, int M, int N, int K) {
    cpu_backend *c = cpu(b);
    NS_ASSERT(w->ne0 == K && w->ne1 == N);
    /* slices of 64 columns or more; about 4 per thread for balance */
    int n_tasks = c->n_threads * 4;
    int per = (N + n_tasks - 1) / n_tasks;
    per = (per + 15) / 16 * 16;
    if (per < 64) per = 64;
    /* batch-invariant: one kernel for every M, whose per-row arithmetic does not depend on M */
    bool quant = w->raw != NULL && M <= NS_CPU_QUANT_MAX_M;
    mm_task t = {y, x, w, M, N, K, per, quant, b->batch_invariant};
    ns_pool_run(c->pool, (N + per - 1) / per, mm_fn, &t);
}

static void cpu_add_bias(ns_backend *b, float *y, const ns_bweight *bias, int M, int N) {
    (void)b;
    for (int m = 0; m < M; m++) ns_cpu_add(y + (size_t)m * N, bias->data, N);
}

static void cpu_rope(ns_backend *b, float *x, int n_head, int head_dim, int n_rot, const float *inv_freq, int is_neox) {
    const ns_fwd_batch *bt = &cpu(b)->batch;
    ns_cpu_rope(x, bt->pos, bt->n_tokens, n_head, head_dim, n_rot, inv_freq, is_neox);
}

static void cpu_kv_store(ns_backend *b, int layer, const float *k, const float *v) {
    cpu_backend *c = cpu(b);
    const ns_fwd_batch *bt = &c->batch;
    size_t row = (size_t)c->kv.n_head_kv * (size_t)c->kv.head_dim;
    for (int s = 0; s < bt->n_seqs; s++) {
        const int32_t *table = bt->block_table + (size_t)s * bt->max_blocks_per_seq;
        for (int i = 0; i < bt->n_seq_tokens[s]; i++) {
            int tok = bt->tok_start[s] + i;
            int pos = bt->n_past[s] + i;
            int blk = table[pos / c->kv.block_size];
            NS_ASSERT(blk >= 0 && blk <= c->kv.n_blocks); /* n_blocks: the spare block */
            size_t off = ((size_t)blk * c->kv.block_size + (size_t)(pos % c->kv.block_size)) * row;
            memcpy(c->k_pool[layer] + off, k + (size_t)tok * row, row * sizeof(float));
            memcpy(c->v_pool[layer] + off, v + (size_t)tok * row, row * sizeof(float));
        }
    }
}

typedef struct {
    cpu_backend *c;
    int layer;
    float *out;
    const float *q;
    int n_head;
    float scale;
    int heads_per_task;
    int tasks_per_seq;
} attn_task;

static void attn_fn(void *p, int i_task, int i_thread) {
    attn_task *t = p;
    cpu_backend *c = t->c;
    const ns_fwd_batch *bt = &c->batch;
    int s = i_task / t->tasks_per_seq;
    int h0 = (i_task % t->tasks_per_seq) * t->heads_per_task;
    int h1 = NS_MIN(h0 + t->heads_per_task, t->n_head);
    int hd = c->kv.head_dim;
    size_t q_row = (size_t)t->n_head * hd;
    int tok0 = bt->tok_start[s];
    int n_kv = bt->n_past[s] + bt->n_seq_tokens[s];
    ns_cpu_attention_paged(t->out + (size_t)tok0 * q_row, t->q + (size_t)tok0 * q_row, bt->pos + tok0,
                           bt->n_seq_tokens[s], c->k_pool[t->layer], c->v_pool[t->layer],
                           bt->block_table + (size_t)s * bt->max_blocks_per_seq, n_kv, c->kv.block_size,
                           t->n_head, c->kv.n_head_kv, hd, t->scale, h0, h1,
                           c->scratch + (size_t)i_thread * c->scratch_len);
}

static void cpu_attention(ns_backend *b, int layer, float *out, const float *q, int n_head, float scale) {
    cpu_backend *c = cpu(b);
    const ns_fwd_batch *bt = &c->batch;
    /* Split heads across threads when there are few sequences (one long prompt). */
    int tasks_per_seq = bt->n_seqs >= c->n_threads * 2 ? 1 : NS_MIN(n_head, c->n_threads * 2);
    int heads_per_task = (n_head + tasks_per_seq - 1) / tasks_per_seq;
    tasks_per_seq = (n_head + heads_per_task - 1) / heads_per_task;
    attn_task t = {c, layer, out, q, n_head, scale, heads_per_task, tasks_per_seq};
    ns_pool_run(c->pool, bt->n_seqs * tasks_per_seq, attn_fn, &t);
}

typedef struct {
    float *out;
    const float *a, *bb;
    int64_t n, per;
    int kind; /* 0 swiglu, 1 add */
} ew_task;

static void ew_fn(void *p, int i_task, int i_thread) {
    (void)i_thread;
    ew_task *t = p;
    int64_t i0 = (int64_t)i_task * t->per, i1 = NS_MIN(i0 + t->per, t->n);
    if (t->kind == 0)
        ns_cpu_swiglu(t->out + i0, t->a + i0, t->bb + i0, i1 - i0);
    else
        ns_cpu_add(t->out + i0, t->a + i0, i1 - i0);
}

static void run_elementwise(cpu_backend *c, int kind, float *out, const float *a, const float *bb, int64_t n) {
    int64_t per = n < 16384 ? n : (n + c->n_threads - 1) / c->n_threads;
    per = (per + 15) / 16 * 16;
    ew_task t = {out, a, bb, n, per, kind};
    ns_pool_run(c->pool, (int)((n + per - 1) / per), ew_fn, &t);
}

static void cpu_swiglu(ns_backend *b, float *out, const float *gate, const float *up, int64_t n) {
    run_elementwise(cpu(b), 0, out, gate, up, n);
}

static void cpu_add(ns_backend *b, float *y, const float *x, int64_t n) {
    run_elementwise(cpu(b), 1, y, x, NULL, n);
}

static void cpu_gather_logit_rows(ns_backend *b, float *out, const float *x, int width) {
    const ns_fwd_batch *bt = &cpu(b)->batch;
    for (int i = 0; i < bt->n_logits; i++)
        memcpy(out + (size_t)i * width, x + (size_t)bt->logit_rows[i] * width, (size_t)width * sizeof(float));
}

static ns_status cpu_sample_rows(ns_backend *b, int32_t *ids_host, const float *logits, int n_rows, int n_vocab,
                                 const ns_row_sampling *params, ns_error *err) {
    cpu_backend *c = cpu(b);
    if (n_vocab > NS_SAMPLE_MAX_VOCAB)
        return ns_error_set(err, NS_ERR_INVALID, "cpu backend: row sampling supports n_vocab <= %d, not %d",
                            NS_SAMPLE_MAX_VOCAB, n_vocab);
    if ((size_t)n_vocab * 2 > c->samp_cap) { /* a test path: it may allocate */
        free(c->samp_scratch);
        c->samp_cap = 0;
        c->samp_scratch = ns_malloc_array((size_t)n_vocab * 2, sizeof *c->samp_scratch);
        if (!c->samp_scratch) return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: out of memory for row sampling");
        c->samp_cap = (size_t)n_vocab * 2;
    }
    ns_cpu_sample_rows_ref(ids_host, logits, n_rows, n_vocab, params, c->samp_scratch);
    return NS_OK;
}

/* ns_backend_cpu_set_overlap: the pick runs now, by the row rule (greedy rows for params
 * NULL), into the next slot of the ring; pick_wait hands the slots out in order. */
static ns_status cpu_pick_launch(ns_backend *b, const float *logits, int n_rows, int n_vocab,
                                 const ns_row_sampling *params, ns_error *err) {
    cpu_backend *c = cpu(b);
    if (c->pick_count == 2) return ns_error_set(err, NS_ERR_INVALID, "cpu backend: a third pick outstanding");
    const int slot = (c->pick_head + c->pick_count) % 2;
    if (n_rows > c->pick[slot].cap) {
        free(c->pick[slot].ids);
        c->pick[slot].cap = 0;
        if (!(c->pick[slot].ids = ns_malloc_array((size_t)n_rows, sizeof(int32_t))))
            return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: out of memory for picked ids");
        c->pick[slot].cap = n_rows;
    }
    ns_row_sampling *greedy = NULL;
    if (!params) {
        if (!(greedy = ns_malloc_array((size_t)NS_MAX(n_rows, 1), sizeof *greedy)))
            return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: out of memory for picked ids");
        for (int i = 0; i < n_rows; i++) greedy[i] = (ns_row_sampling){0.0f, 0, 1.0f, 0.0f, 0.0};
    }
    ns_status st = cpu_sample_rows(b, c->pick[slot].ids, logits, n_rows, n_vocab, params ? params : greedy, err);
    free(greedy);
    if (st) return st;
    c->pick[slot].n = n_rows;
    c->pick_last = slot;
    c->pick_count++;
    return NS_OK;
}

static ns_status cpu_pick_wait(ns_backend *b, int32_t *ids_host, int n_rows, ns_error *err) {
    cpu_backend *c = cpu(b);
    if (c->pick_count == 0) return ns_error_set(err, NS_ERR_INVALID, "cpu backend: pick_wait with no pick launched");
    const int slot = c->pick_head;
    if (n_rows != c->pick[slot].n)
        return ns_error_set(err, NS_ERR_INVALID, "cpu backend: pick_wait for %d rows, the pick has %d", n_rows,
                            c->pick[slot].n);
    memcpy(ids_host, c->pick[slot].ids, (size_t)n_rows * sizeof(int32_t));
    c->pick_head = (slot + 1) % 2;
    c->pick_count--;
    return NS_OK;
}

static void cpu_destroy(ns_backend *b) {
    if (!b) return;
    cpu_backend *c = cpu(b);
    free(c->pick[0].ids);
    free(c->pick[1].ids);
    free(c->tok_buf);
    free(c->samp_scratch);
    free(c->bt_buf);
    free_kv(c);
    ns_pool_destroy(c->pool);
    free(c);
}

static const ns_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .buf_alloc = cpu_buf_alloc,
    .buf_free = cpu_buf_free,
    .upload = cpu_upload,
    .download = cpu_download,
    .weight_load = cpu_weight_load,
    .weight_free = cpu_weight_free,
    .weight_f32 = cpu_weight_f32,
    .kv_alloc = cpu_kv_alloc,
    .batch_set = cpu_batch_set,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .add_bias = cpu_add_bias,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .swiglu = cpu_swiglu,
    .add = cpu_add,
    .gather_logit_rows = cpu_gather_logit_rows,
};

void ns_backend_cpu_set_padding(ns_backend *b, bool on) {
    if (!b || b->ops->destroy != cpu_destroy) return;
    cpu_backend *c = cpu(b);
    c->pad_on = on;
    c->ops.graph_begin = on ? cpu_graph_begin : NULL;
    c->ops.graph_end = on ? cpu_graph_end : NULL;
}

void ns_backend_cpu_set_row_sampling(ns_backend *b, bool on) {
    if (!b || b->ops->destroy != cpu_destroy) return;
    cpu(b)->ops.sample_rows = on ? cpu_sample_rows : NULL;
}

void ns_backend_cpu_set_overlap(ns_backend *b, bool on) {
    if (!b || b->ops->destroy != cpu_destroy) return;
    cpu(b)->ops.pick_launch = on ? cpu_pick_launch : NULL;
    cpu(b)->ops.pick_wait = on ? cpu_pick_wait : NULL;
}

ns_status ns_backend_cpu_create(int n_threads, ns_backend **out, ns_error *err) {
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)NS_MIN(n, 256) : 1;
    }
    cpu_backend *c = calloc(1, sizeof *c);
    if (!c) return ns_error_set(err, NS_ERR_NOMEM, "cpu backend: out of memory");
    c->ops = cpu_ops;
    c->base.ops = &c->ops;
    c->base.kv_elem_bytes = 4;
    c->base.can_batch_invariant = true;
    /* a test hook: an unparsable value leaves it off */
    const char *fault = getenv("NS_FAULT_BATCH_TOKENS");
    char *end = NULL;
    long limit = fault && *fault ? strtol(fault, &end, 10) : -1;
    c->fault_batch_tokens = end && *end == '\0' && limit >= 0 && limit <= INT32_MAX ? (int)limit : -1;
    c->n_threads = n_threads;
    ns_status st = ns_pool_create(n_threads, &c->pool, err);
    if (st) {
        free(c);
        return st;
    }
    /* Our pool splits the matrix work; OpenBLAS must not start threads of its own. */
    openblas_set_num_threads(1);
    *out = &c->base;
    return NS_OK;
}

ns_status ns_backend_create(const char *name, int n_threads, ns_backend **out, const char **note, ns_error *err) {
    return ns_backend_create_on(name, n_threads, 0, out, note, err);
}

ns_status ns_backend_create_on(const char *name, int n_threads, int device, ns_backend **out, const char **note,
                               ns_error *err) {
    if (note) *note = NULL;
    if (!name || strcmp(name, "cpu") == 0) return ns_backend_cpu_create(n_threads, out, err);
#ifdef NS_HAVE_CUDA
    /* n_threads is for the CPU; device for CUDA. auto falls back to the CPU only when
     * there is no device at all. */
    if (strcmp(name, "auto") == 0) {
        int n_dev = 0;
        if (ns_backend_cuda_device_count(&n_dev, NULL) == NS_OK && n_dev > 0)
            return ns_backend_cuda_create(device, out, err);
        if (note) *note = "backend auto: no CUDA device found; using the CPU";
        return ns_backend_cpu_create(n_threads, out, err);
    }
    if (strcmp(name, "cuda") == 0) return ns_backend_cuda_create(device, out, err);
#else
    (void)device;
    if (strcmp(name, "auto") == 0) {
        if (note) *note = "backend auto: this build has no CUDA backend; using the CPU";
        return ns_backend_cpu_create(n_threads, out, err);
    }
    if (strcmp(name, "cuda") == 0)
        return ns_error_set(err, NS_ERR_UNSUPPORTED,
                            "backend 'cuda' is not available in this build (built without nvcc); use cpu or auto");
#endif
    return ns_error_set(err, NS_ERR_INVALID, "backend '%s' is unknown (expected auto, cpu or cuda)", name);
}

void ns_backend_destroy(ns_backend *b) {
    if (b) b->ops->destroy(b);
}
