/* test_tp.c: tensor parallelism on the CPU stand-in: the model split over 2 ranks
 * (ns_model_load_shard; one thread and one CPU backend per rank; ns_forward_tp with the
 * in-process all-reduce of engine/tp_local.c) gives the same greedy tokens, and logits
 * within float tolerance, as the unsplit model (TP=1). */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "forward.h"
#include "gguf.h"
#include "tiny_model.h"
#include "tp_local.h"
#include "tp_run.h"

#define TP_GEN 12
#define TP_MAX_TOK 64

typedef struct tp_rank {
    const char *path;
    int rank, n_ranks;
    ns_tp *tp;                 /* NULL for TP=1 */
    const int32_t *prompt;
    int n_prompt;
    int32_t out[TP_GEN];
    float first_logits[NS_TINY_N_VOCAB];
    ns_status st;
    char err[600];
} tp_rank;

static void *tp_rank_main(void *arg) {
    tp_rank *t = arg;
    ns_error err;
    ns_error_clear(&err);
    ns_backend *b = NULL;
    if (!(t->st = ns_backend_cpu_create(1, &b, &err)))
        t->st = ns_test_tp_greedy(t->path, b, t->rank, t->n_ranks, t->tp, t->prompt, t->n_prompt, TP_GEN, t->out,
                                  t->first_logits, &err);
    if (t->st) snprintf(t->err, sizeof t->err, "rank %d: %s", t->rank, err.msg);
    ns_backend_destroy(b);
    return NULL;
}

static void check_tp(int wtype, const char *arch) {
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    c.wtype = wtype;
    c.arch = arch;
    c.tied = 0;
    char path[512];
    snprintf(path, sizeof path, "%s/tiny_tp_%d_%s.gguf", ns_test_tmpdir(), wtype, arch);
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    int32_t prompt[9] = {72, 101, 108, 108, 111, 32, 116, 104, 101};

    tp_rank one = {.path = path, .rank = 0, .n_ranks = 1, .prompt = prompt, .n_prompt = 9};
    tp_rank_main(&one);
    CHECK_MSG(one.st == NS_OK, "%s", one.err);

    enum { N = 2 };
    ns_tp_local *g = NULL;
    CHECK_STATUS_OK(ns_tp_local_create(N, (size_t)TP_MAX_TOK * 64, &g, &err), &err);
    if (!g) return;
    tp_rank r[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        r[i] = (tp_rank){.path = path, .rank = i, .n_ranks = N, .tp = ns_tp_local_rank(g, i), .prompt = prompt,
                         .n_prompt = 9};
        CHECK(pthread_create(&th[i], NULL, tp_rank_main, &r[i]) == 0);
    }
    for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
    ns_tp_local_destroy(g);
    for (int i = 0; i < N; i++) {
        CHECK_MSG(r[i].st == NS_OK, "%s", r[i].err);
        if (r[i].st || one.st) continue;
        for (int k = 0; k < TP_GEN; k++) CHECK_EQ_INT(r[i].out[k], one.out[k]);
        CHECK_ALLCLOSE(r[i].first_logits, one.first_logits, NS_TINY_N_VOCAB, 1e-4, 1e-4, 1e-9);
    }
    /* every rank holds the same all-reduced values: identical logits on both ranks */
    if (r[0].st == NS_OK && r[1].st == NS_OK)
        CHECK(memcmp(r[0].first_logits, r[1].first_logits, sizeof r[0].first_logits) == 0);
}

NS_TEST(test_tp_two_ranks_equal_tp1_f32) { check_tp(NS_GGML_F32, "llama"); }
NS_TEST(test_tp_two_ranks_equal_tp1_q8_0) { check_tp(NS_GGML_Q8_0, "llama"); }
NS_TEST(test_tp_two_ranks_equal_tp1_qwen2_bias) { check_tp(NS_GGML_F32, "qwen2"); }

NS_TEST(test_tp_shard_errors) {
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c); /* 4 heads, 2 kv heads */
    char path[512];
    snprintf(path, sizeof path, "%s/tiny_tp_bad.gguf", ns_test_tmpdir());
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(path, &c, &err), &err);
    ns_gguf *g = NULL;
    ns_backend *b = NULL;
    ns_model *m = NULL;
    CHECK_STATUS_OK(ns_gguf_open(path, &g, &err), &err);
    CHECK_STATUS_OK(ns_backend_cpu_create(1, &b, &err), &err);
    if (g && b) {
        CHECK(ns_model_load_shard(g, b, 0, 3, &m, &err) == NS_ERR_UNSUPPORTED); /* 4 heads over 3 ranks */
        CHECK_MSG(strstr(err.msg, "over 3 ranks") != NULL, "%s", err.msg);
        CHECK(m == NULL);
        CHECK(ns_model_load_shard(g, b, 2, 2, &m, &err) == NS_ERR_UNSUPPORTED); /* rank out of range */
    }
    ns_backend_destroy(b);
    ns_gguf_close(g);
}
