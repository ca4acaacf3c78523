/* tp_nccl.h: the tensor-parallel all-reduce (ns_tp, forward.h) over NCCL, for ranks that
 * are CUDA backends of this process (one per GPU, one thread per rank, as with the CPU
 * stand-in in tp_local.h). The all-reduce is enqueued on each rank's own stream, in
 * place, summing fp32 (ncclAllReduce, ncclSum): the forward pass never waits for it on
 * the host.
 * NCCL is loaded when a group is created (dlopen of libnccl.so.2), so nightshift builds,
 * starts and runs without it; creating a group where it is missing is an error that
 * names the library. A failing NCCL call is recorded in its rank's backend and returned
 * by that backend's next synchronizing call (as every CUDA error is). */
#ifndef NS_TP_NCCL_H
#define NS_TP_NCCL_H

#include "forward.h"

typedef struct ns_tp_nccl ns_tp_nccl;

/* A group over n_ranks CUDA backends (ranks[r] is rank r; each on its own device, as
 * ncclCommInitAll wants). Errors: NS_ERR_UNSUPPORTED without a CUDA build or without
 * libnccl.so.2; NS_ERR_INVALID for a rank that is not a CUDA backend or repeats a
 * device; NS_ERR_BACKEND with NCCL's message when NCCL refuses. */
ns_status ns_tp_nccl_create(ns_backend *const *ranks, int n_ranks, ns_tp_nccl **out, ns_error *err);
void ns_tp_nccl_destroy(ns_tp_nccl *g); /* NULL-tolerant; after every rank stopped using it */

/* The communicator of one rank (borrowed from the group, valid until _destroy). */
ns_tp *ns_tp_nccl_rank(ns_tp_nccl *g, int rank);

/* NCCL's version as "2.27.3", or NULL if not loaded. */
const char *ns_tp_nccl_version(const ns_tp_nccl *g);

#endif
