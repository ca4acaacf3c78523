/* tp_nccl.c: see tp_nccl.h. NCCL's entry points are looked up with dlsym, typed from
 * nccl.h, so that nothing links against libnccl. */
#include "tp_nccl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef NS_HAVE_CUDA
#include <dlfcn.h>
#if !defined(NS_NO_NCCL_H) && __has_include(<nccl.h>)
#include <nccl.h>
#else
/* A CUDA toolkit without NCCL's headers: the few names used here, with the values of
 * NCCL 2.x's ABI (nccl.h: ncclSuccess 0, ncclSum 0, ncclFloat32 7). */
#include <cuda_runtime_api.h>
typedef struct ncclComm *ncclComm_t;
typedef int ncclResult_t;
typedef int ncclDataType_t;
typedef int ncclRedOp_t;
enum { ncclSuccess = 0, ncclSum = 0, ncclFloat32 = 7 };
#endif

#include "backend_cuda.h"

typedef ncclResult_t (*fn_comm_init_all)(ncclComm_t *, int, const int *);
typedef ncclResult_t (*fn_all_reduce)(const void *, void *, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                                      cudaStream_t);
typedef ncclResult_t (*fn_comm_destroy)(ncclComm_t);
typedef const char *(*fn_error_string)(ncclResult_t);
typedef ncclResult_t (*fn_get_version)(int *);

typedef struct nccl_rank {
    ns_tp tp; /* first: ns_tp * is a nccl_rank * */
    ns_tp_nccl *group;
    ns_backend *backend;
    ncclComm_t comm;
} nccl_rank;

struct ns_tp_nccl {
    void *lib;
    fn_comm_init_all comm_init_all;
    fn_all_reduce all_reduce;
    fn_comm_destroy comm_destroy;
    fn_error_string error_string;
    int n_ranks;
    nccl_rank *ranks;
    char version[32];
};

static void all_reduce(ns_tp *tp, float *buf, size_t n) {
    nccl_rank *r = (nccl_rank *)tp;
    ns_tp_nccl *g = r->group;
    if (ns_backend_cuda_failed(r->backend)) return; /* an earlier error is already recorded */
    ncclResult_t e = g->all_reduce(buf, buf, n, ncclFloat32, ncclSum, r->comm,
                                   (cudaStream_t)ns_backend_cuda_stream(r->backend));
    if (e != ncclSuccess) {
        char what[160];
        snprintf(what, sizeof what, "all_reduce of %zu floats (ncclAllReduce, rank %d of %d): %s", n, tp->rank,
                 tp->n_ranks, g->error_string(e));
        ns_backend_cuda_fail(r->backend, what);
    }
}

ns_status ns_tp_nccl_create(ns_backend *const *ranks, int n_ranks, ns_tp_nccl **out, ns_error *err) {
    *out = NULL;
    if (n_ranks < 1 || n_ranks > 64) return ns_error_set(err, NS_ERR_INVALID, "tp nccl: %d ranks (1..64)", n_ranks);
    int devs[64];
    for (int r = 0; r < n_ranks; r++) {
        devs[r] = ranks[r] ? ns_backend_cuda_device(ranks[r]) : -1;
        if (devs[r] < 0)
            return ns_error_set(err, NS_ERR_INVALID, "tp nccl: rank %d is not a CUDA backend", r);
        for (int q = 0; q < r; q++)
            if (devs[q] == devs[r])
                return ns_error_set(err, NS_ERR_INVALID, "tp nccl: ranks %d and %d are both on device %d", q, r,
                                    devs[r]);
    }
    ns_tp_nccl *g = calloc(1, sizeof *g);
    if (!g) return ns_error_set(err, NS_ERR_NOMEM, "tp nccl: out of memory");
    ns_status st;
    g->lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!g->lib) {
        st = ns_error_set(err, NS_ERR_UNSUPPORTED,
                          "tp nccl: cannot load libnccl.so.2 (%s); install NCCL or add its directory to "
                          "LD_LIBRARY_PATH",
                          dlerror());
        goto fail;
    }
    g->comm_init_all = (fn_comm_init_all)dlsym(g->lib, "ncclCommInitAll");
    g->all_reduce = (fn_all_reduce)dlsym(g->lib, "ncclAllReduce");
    g->comm_destroy = (fn_comm_destroy)dlsym(g->lib, "ncclCommDestroy");
    g->error_string = (fn_error_string)dlsym(g->lib, "ncclGetErrorString");
    fn_get_version get_version = (fn_get_version)dlsym(g->lib, "ncclGetVersion");
    if (!g->comm_init_all || !g->all_reduce || !g->comm_destroy || !g->error_string || !get_version) {
        st = ns_error_set(err, NS_ERR_UNSUPPORTED, "tp nccl: libnccl.so.2 lacks an entry point (ncclCommInitAll, "
                                                   "ncclAllReduce, ncclCommDestroy, ncclGetErrorString, ncclGetVersion)");
        goto fail;
    }
    int v = 0;
    if (get_version(&v) == ncclSuccess)
        snprintf(g->version, sizeof g->version, "%d.%d.%d", v / 10000, v / 100 % 100, v % 100);
    g->ranks = calloc((size_t)n_ranks, sizeof *g->ranks);
    ncclComm_t comms[64];
    if (!g->ranks) {
        st = ns_error_set(err, NS_ERR_NOMEM, "tp nccl: out of memory");
        goto fail;
    }
    ncclResult_t e = g->comm_init_all(comms, n_ranks, devs);
    if (e != ncclSuccess) {
        st = ns_error_set(err, NS_ERR_BACKEND, "tp nccl: ncclCommInitAll over %d devices: %s", n_ranks,
                          g->error_string(e));
        goto fail;
    }
    g->n_ranks = n_ranks;
    for (int r = 0; r < n_ranks; r++) {
        g->ranks[r].tp.rank = r;
        g->ranks[r].tp.n_ranks = n_ranks;
        g->ranks[r].tp.all_reduce = all_reduce;
        g->ranks[r].group = g;
        g->ranks[r].backend = ranks[r];
        g->ranks[r].comm = comms[r];
    }
    *out = g;
    return NS_OK;
fail:
    ns_tp_nccl_destroy(g);
    return st;
}

void ns_tp_nccl_destroy(ns_tp_nccl *g) {
    if (!g) return;
    for (int r = 0; r < g->n_ranks; r++)
        if (g->ranks[r].comm) g->comm_destroy(g->ranks[r].comm);
    free(g->ranks);
    if (g->lib) dlclose(g->lib);
    free(g);
}

ns_tp *ns_tp_nccl_rank(ns_tp_nccl *g, int rank) {
    NS_ASSERT(rank >= 0 && rank < g->n_ranks);
    return &g->ranks[rank].tp;
}

const char *ns_tp_nccl_version(const ns_tp_nccl *g) { return g && g->version[0] ? g->version : NULL; }

#else /* no CUDA build */

ns_status ns_tp_nccl_create(ns_backend *const *ranks, int n_ranks, ns_tp_nccl **out, ns_error *err) {
    (void)ranks, (void)n_ranks;
    *out = NULL;
    return ns_error_set(err, NS_ERR_UNSUPPORTED, "tp nccl: this build has no CUDA backend (built without nvcc)");
}
void ns_tp_nccl_destroy(ns_tp_nccl *g) { (void)g; }
ns_tp *ns_tp_nccl_rank(ns_tp_nccl *g, int rank) {
    (void)g, (void)rank;
    return NULL;
}
const char *ns_tp_nccl_version(const ns_tp_nccl *g) {
    (void)g;
    return NULL;
}

#endif
