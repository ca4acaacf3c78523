/* threadpool.h: a fixed pool of worker threads for the CPU backend. The caller thread
 * takes part in every run, so a pool of n threads starts n-1 workers. Workers spin
 * briefly between runs (a forward pass dispatches hundreds of small runs per step), then
 * sleep on a condition variable.
 */
#ifndef NS_THREADPOOL_H
#define NS_THREADPOOL_H

#include "common.h"

typedef struct ns_pool ns_pool;

/* fn(ctx, i_task, i_thread): i_thread < n_threads, usable to index per-thread scratch. */
typedef void (*ns_pool_fn)(void *ctx, int i_task, int i_thread);

/* n_threads >= 1. Errors: NS_ERR_NOMEM, NS_ERR_BACKEND (pthread_create failed). */
ns_status ns_pool_create(int n_threads, ns_pool **out, ns_error *err);
void ns_pool_destroy(ns_pool *p); /* NULL-tolerant; joins the workers */
int ns_pool_n_threads(const ns_pool *p);

/* Runs fn for i_task in [0, n_tasks), tasks handed out dynamically, and returns when all
 * are done. Not reentrant: one run at a time per pool, from one thread. */
void ns_pool_run(ns_pool *p, int n_tasks, ns_pool_fn fn, void *ctx);

#endif
