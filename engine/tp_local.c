/* tp_local.c: see tp_local.h. Two barriers per all-reduce: after every rank has posted
 * its buffer, and after every rank has read them all. */
#include "tp_local.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct rank_comm {
    ns_tp tp;          /* first: ns_tp * is a rank_comm * */
    ns_tp_local *group;
} rank_comm;

struct ns_tp_local {
    int n_ranks;
    size_t max_floats;
    pthread_barrier_t barrier;
    float **posted;    /* (n_ranks) each rank's buffer during a call */
    float **sum;       /* (n_ranks, max_floats) each rank's private result */
    rank_comm *ranks;  /* (n_ranks) */
};

static void all_reduce(ns_tp *tp, float *buf, size_t n) {
    rank_comm *rc = (rank_comm *)tp;
    ns_tp_local *g = rc->group;
    NS_ASSERT(n <= g->max_floats);
    int me = tp->rank;
    g->posted[me] = buf;
    pthread_barrier_wait(&g->barrier);
    float *out = g->sum[me];
    for (size_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (int r = 0; r < g->n_ranks; r++) acc += g->posted[r][i]; /* same order on every rank */
        out[i] = acc;
    }
    pthread_barrier_wait(&g->barrier);
    memcpy(buf, out, n * sizeof(float));
}

ns_status ns_tp_local_create(int n_ranks, size_t max_floats, ns_tp_local **out, ns_error *err) {
    *out = NULL;
    if (n_ranks < 1 || n_ranks > 64 || max_floats == 0)
        return ns_error_set(err, NS_ERR_INVALID, "tp: %d ranks (1..64), %zu floats", n_ranks, max_floats);
    ns_tp_local *g = calloc(1, sizeof *g);
    if (!g) return ns_error_set(err, NS_ERR_NOMEM, "tp: out of memory");
    g->n_ranks = n_ranks;
    g->max_floats = max_floats;
    g->posted = ns_calloc_array((size_t)n_ranks, sizeof(float *));
    g->sum = ns_calloc_array((size_t)n_ranks, sizeof(float *));
    g->ranks = ns_calloc_array((size_t)n_ranks, sizeof(rank_comm));
    bool ok = g->posted && g->sum && g->ranks;
    for (int r = 0; ok && r < n_ranks; r++) {
        ok = (g->sum[r] = ns_malloc_array(max_floats, sizeof(float))) != NULL;
        g->ranks[r].tp.rank = r;
        g->ranks[r].tp.n_ranks = n_ranks;
        g->ranks[r].tp.all_reduce = all_reduce;
        g->ranks[r].group = g;
    }
    if (!ok || pthread_barrier_init(&g->barrier, NULL, (unsigned)n_ranks) != 0) {
        if (g->sum)
            for (int r = 0; r < n_ranks; r++) free(g->sum[r]);
        free(g->posted);
        free(g->sum);
        free(g->ranks);
        free(g);
        return ns_error_set(err, NS_ERR_NOMEM, "tp: out of memory for %d ranks", n_ranks);
    }
    *out = g;
    return NS_OK;
}

void ns_tp_local_destroy(ns_tp_local *g) {
    if (!g) return;
    pthread_barrier_destroy(&g->barrier);
    for (int r = 0; r < g->n_ranks; r++) free(g->sum[r]);
    free(g->posted);
    free(g->sum);
    free(g->ranks);
    free(g);
}

ns_tp *ns_tp_local_rank(ns_tp_local *g, int rank) {
    NS_ASSERT(rank >= 0 && rank < g->n_ranks);
    return &g->ranks[rank].tp;
}
