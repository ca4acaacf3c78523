/* tp_run.c: see tp_run.h. */
#include "tp_run.h"

#include <stdlib.h>
#include <string.h>

#include "gguf.h"

#define TP_RUN_MAX_TOK 64

ns_status ns_test_tp_greedy(const char *path, ns_backend *b, int rank, int n_ranks, ns_tp *tp, const int32_t *prompt,
                            int n_prompt, int n_gen, int32_t *out, float *first_logits, ns_error *err) {
    ns_gguf *g = NULL;
    ns_model *m = NULL;
    ns_fwd_scratch sc;
    memset(&sc, 0, sizeof sc);
    float *logits = NULL;
    int32_t toks[TP_RUN_MAX_TOK], pos[TP_RUN_MAX_TOK], table[8];
    for (int i = 0; i < 8; i++) table[i] = i;
    if (n_prompt < 1 || n_prompt > TP_RUN_MAX_TOK || n_prompt + n_gen > 8 * 16)
        return ns_error_set(err, NS_ERR_INVALID, "tp run: %d prompt + %d generated tokens do not fit", n_prompt, n_gen);
    ns_status st;
    if ((st = ns_gguf_open(path, &g, err)) || (st = ns_model_load_shard(g, b, rank, n_ranks, &m, err))) goto done;
    int n_vocab = m->hp.n_vocab;
    logits = malloc((size_t)n_vocab * sizeof(float));
    ns_kv_shape shape = {m->hp.n_layer, 8, 16, m->hp.n_head_kv, m->hp.head_dim};
    if (!logits) {
        st = ns_error_set(err, NS_ERR_NOMEM, "tp run: out of memory");
        goto done;
    }
    if ((st = b->ops->kv_alloc(b, &shape, err)) || (st = ns_fwd_scratch_alloc(m, TP_RUN_MAX_TOK, 1, &sc, err))) goto done;
    int n_past = 0, n_new = n_prompt;
    memcpy(toks, prompt, (size_t)n_new * sizeof(int32_t));
    for (int step = 0; step < n_gen; step++) {
        for (int i = 0; i < n_new; i++) pos[i] = n_past + i;
        int32_t start = 0, n_tok = n_new, past = n_past, row = n_new - 1;
        ns_fwd_batch batch = {.n_tokens = n_new, .n_seqs = 1, .tokens = toks, .pos = pos, .tok_start = &start,
                              .n_seq_tokens = &n_tok, .n_past = &past, .block_table = table,
                              .max_blocks_per_seq = 8, .logit_rows = &row, .n_logits = 1};
        if ((st = ns_forward_tp(m, &sc, &batch, logits, tp, err))) goto done;
        if (step == 0) memcpy(first_logits, logits, (size_t)n_vocab * sizeof(float));
        int best = 0;
        for (int v = 1; v < n_vocab; v++)
            if (logits[v] > logits[best]) best = v;
        out[step] = best;
        n_past += n_new;
        toks[0] = best;
        n_new = 1;
    }
done:
    if (m) ns_fwd_scratch_free(m, &sc);
    ns_model_free(m);
    ns_gguf_close(g);
    free(logits);
    return st;
}
