/* kv_cache.h: the host-side bookkeeping of the paged KV cache: a pool of fixed-size
 * blocks with reference counts. The memory itself lives in the backend (kv_alloc); this
 * module only decides which block ids a sequence owns. A block returns to the free list
 * when its last reference is released, so a later prefix cache can share blocks between
 * sequences by retaining them. Not thread-safe: the engine's step owns it.
 */
#ifndef NS_KV_CACHE_H
#define NS_KV_CACHE_H

#include "common.h"

typedef struct ns_kv_blocks ns_kv_blocks;

/* n_blocks >= 1, block_size >= 1. Free with ns_kv_blocks_destroy. */
ns_status ns_kv_blocks_create(int n_blocks, int block_size, ns_kv_blocks **out, ns_error *err);
void ns_kv_blocks_destroy(ns_kv_blocks *kv); /* NULL-tolerant */

int ns_kv_blocks_n_total(const ns_kv_blocks *kv);
int ns_kv_blocks_n_free(const ns_kv_blocks *kv);
int ns_kv_blocks_block_size(const ns_kv_blocks *kv);
/* Blocks needed to hold n_tokens. */
int ns_kv_blocks_needed(const ns_kv_blocks *kv, int n_tokens);

/* Takes a free block with reference count 1, or returns -1 when none is free. */
int32_t ns_kv_blocks_alloc(ns_kv_blocks *kv);
/* Adds a reference to an allocated block. */
void ns_kv_blocks_retain(ns_kv_blocks *kv, int32_t id);
/* Drops a reference; the block is free again when the count reaches 0. */
void ns_kv_blocks_release(ns_kv_blocks *kv, int32_t id);
int ns_kv_blocks_refcount(const ns_kv_blocks *kv, int32_t id);

#endif
