/* tp_local.h: an in-process all-reduce over N ranks with NCCL's semantics (every rank
 * calls it at the same points with the same n; each gets the element-wise sum, summed in
 * rank order so that all ranks hold bit-identical results). It is the CPU stand-in that
 * tests the tensor-parallel sharding math (ns_model_load_shard, ns_forward_tp) with one
 * thread per rank; on GPUs the same ns_tp interface is backed by NCCL. */
#ifndef NS_TP_LOCAL_H
#define NS_TP_LOCAL_H

#include "forward.h"

typedef struct ns_tp_local ns_tp_local;

/* A group of n_ranks; each all-reduce moves at most max_floats. Free with _destroy
 * after every rank has stopped using it. */
ns_status ns_tp_local_create(int n_ranks, size_t max_floats, ns_tp_local **out, ns_error *err);
void ns_tp_local_destroy(ns_tp_local *g); /* NULL-tolerant */

/* The communicator of one rank (borrowed from the group, valid until _destroy). */
ns_tp *ns_tp_local_rank(ns_tp_local *g, int rank);

#endif
