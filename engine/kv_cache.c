/* kv_cache.c: block pool with reference counts and a LIFO free list (see kv_cache.h). */
#include "kv_cache.h"

#include <stdlib.h>

struct ns_kv_blocks {
    int n_blocks;
    int block_size;
    int n_free;
    int32_t *free_list; /* (n_blocks) stack of free ids */
    int32_t *refcount;  /* (n_blocks) */
};

ns_status ns_kv_blocks_create(int n_blocks, int block_size, ns_kv_blocks **out, ns_error *err) {
    *out = NULL;
    if (n_blocks < 1 || block_size < 1)
        return ns_error_set(err, NS_ERR_INVALID, "kv cache: n_blocks %d and block_size %d must be >= 1",
                            n_blocks, block_size);
    ns_kv_blocks *kv = calloc(1, sizeof *kv);
    if (!kv) return ns_error_set(err, NS_ERR_NOMEM, "kv cache: out of memory");
    kv->free_list = ns_malloc_array((size_t)n_blocks, sizeof(int32_t));
    kv->refcount = ns_calloc_array((size_t)n_blocks, sizeof(int32_t));
    if (!kv->free_list || !kv->refcount) {
        ns_kv_blocks_destroy(kv);
        return ns_error_set(err, NS_ERR_NOMEM, "kv cache: out of memory for %d blocks", n_blocks);
    }
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    /* lowest ids on top of the stack, so allocation order is 0, 1, 2, ... */
    for (int i = 0; i < n_blocks; i++) kv->free_list[i] = n_blocks - 1 - i;
    kv->n_free = n_blocks;
    *out = kv;
    return NS_OK;
}

void ns_kv_blocks_destroy(ns_kv_blocks *kv) {
    if (!kv) return;
    free(kv->free_list);
    free(kv->refcount);
    free(kv);
}

int ns_kv_blocks_n_total(const ns_kv_blocks *kv) { return kv->n_blocks; }
int ns_kv_blocks_n_free(const ns_kv_blocks *kv) { return kv->n_free; }
int ns_kv_blocks_block_size(const ns_kv_blocks *kv) { return kv->block_size; }
int ns_kv_blocks_needed(const ns_kv_blocks *kv, int n_tokens) {
    return (n_tokens + kv->block_size - 1) / kv->block_size;
}

int32_t ns_kv_blocks_alloc(ns_kv_blocks *kv) {
    if (kv->n_free == 0) return -1;
    int32_t id = kv->free_list[--kv->n_free];
    NS_ASSERT(kv->refcount[id] == 0);
    kv->refcount[id] = 1;
    return id;
}

void ns_kv_blocks_retain(ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks && kv->refcount[id] > 0);
    kv->refcount[id]++;
}

void ns_kv_blocks_release(ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks && kv->refcount[id] > 0);
    if (--kv->refcount[id] == 0) kv->free_list[kv->n_free++] = id;
}

int ns_kv_blocks_refcount(const ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks);
    return kv->refcount[id];
}
