/* threadpool.c: see threadpool.h. One generation counter announces a run; tasks are
 * claimed with an atomic counter; the last finisher is detected with a done counter. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#define NS_POOL_SPIN 20000

struct ns_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int generation;  /* bumped for every run and for shutdown */
    atomic_int next_task;
    atomic_int n_workers_done; /* workers that finished this run (all must, before the next) */
    atomic_int stop;
    int n_tasks;
    ns_pool_fn fn;
    void *ctx;
};

typedef struct {
    ns_pool *pool;
    int i_thread;
} worker_arg;

static void run_tasks(ns_pool *p, int i_thread) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
        if (i >= p->n_tasks) break;
        p->fn(p->ctx, i, i_thread);
    }
}

static void *worker_main(void *argp) {
    worker_arg *arg = argp;
    ns_pool *p = arg->pool;
    int i_thread = arg->i_thread;
    free(arg);
    int seen = 0; /* the generation at creation: a run may start before this thread does */
    for (;;) {
        int spins = 0;
        int g;
        while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen) {
            if (++spins < NS_POOL_SPIN) {
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load(&p->generation)) == seen) pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
            break;
        }
        seen = g;
        if (atomic_load(&p->stop)) return NULL;
        run_tasks(p, i_thread);
        atomic_fetch_add_explicit(&p->n_workers_done, 1, memory_order_release);
    }
}

ns_status ns_pool_create(int n_threads, ns_pool **out, ns_error *err) {
    *out = NULL;
    if (n_threads < 1) n_threads = 1;
    ns_pool *p = calloc(1, sizeof *p);
    if (!p) return ns_error_set(err, NS_ERR_NOMEM, "threadpool: out of memory");
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->threads = ns_calloc_array((size_t)n_threads, sizeof(pthread_t));
    if (!p->threads) {
        ns_pool_destroy(p);
        return ns_error_set(err, NS_ERR_NOMEM, "threadpool: out of memory");
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *arg = malloc(sizeof *arg);
        if (!arg) {
            p->n_threads = i;
            ns_pool_destroy(p);
            return ns_error_set(err, NS_ERR_NOMEM, "threadpool: out of memory");
        }
        arg->pool = p;
        arg->i_thread = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, arg) != 0) {
            free(arg);
            p->n_threads = i;
            ns_pool_destroy(p);
            return ns_error_set(err, NS_ERR_BACKEND, "threadpool: pthread_create failed for thread %d", i);
        }
    }
    *out = p;
    return NS_OK;
}

void ns_pool_destroy(ns_pool *p) {
    if (!p) return;
    if (p->threads) {
        atomic_store(&p->stop, 1);
        pthread_mutex_lock(&p->mu);
        atomic_fetch_add(&p->generation, 1);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
        free(p->threads);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

int ns_pool_n_threads(const ns_pool *p) { return p->n_threads; }

void ns_pool_run(ns_pool *p, int n_tasks, ns_pool_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int i = 0; i < n_tasks; i++) fn(ctx, i, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&p->n_workers_done, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    /* Every worker must leave run_tasks before fn/ctx/next_task are rewritten. */
    while (atomic_load_explicit(&p->n_workers_done, memory_order_acquire) < p->n_threads - 1)
        sched_yield();
}
