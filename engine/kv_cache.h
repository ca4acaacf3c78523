/* kv_cache.h: the host-side bookkeeping of the paged KV cache: a pool of fixed-size
 * blocks with reference counts, and a prefix cache over them.
 *
 * The memory itself lives in the backend (kv_alloc); this module only decides which block
 * ids a sequence owns. Prefix cache: a full block of prompt tokens is keyed by a hash of
 * its tokens chained with the hash of the blocks before it (ns_kv_hash_block), so equal
 * keys mean equal prefixes. A sequence whose leading blocks are already cached retains
 * them instead of recomputing them. A block is "ready" once its K/V have been computed;
 * a sharer must not read it before. When its last reference is released, a ready cached
 * block is not freed but kept, evictable, in LRU order; allocation takes truly free
 * blocks first, then evicts the least recently used cached block.
 * Not thread-safe: the engine's step owns it.
 */
#ifndef NS_KV_CACHE_H
#define NS_KV_CACHE_H

#include "common.h"

typedef struct ns_kv_blocks ns_kv_blocks;

/* n_blocks >= 1, block_size >= 1. Free with ns_kv_blocks_destroy. */
ns_status ns_kv_blocks_create(int n_blocks, int block_size, ns_kv_blocks **out, ns_error *err);
void ns_kv_blocks_destroy(ns_kv_blocks *kv); /* NULL-tolerant */

int ns_kv_blocks_n_total(const ns_kv_blocks *kv);
/* Blocks that can be allocated now: free ones plus evictable cached ones. */
int ns_kv_blocks_n_free(const ns_kv_blocks *kv);
/* Of those, the ones still holding a cached prefix. */
int ns_kv_blocks_n_cached(const ns_kv_blocks *kv);
int ns_kv_blocks_block_size(const ns_kv_blocks *kv);
/* Blocks needed to hold n_tokens. */
int ns_kv_blocks_needed(const ns_kv_blocks *kv, int n_tokens);

/* Takes a block with reference count 1 (not ready, not cached), evicting the least
 * recently used cached block if no free one is left; -1 when none can be had. */
int32_t ns_kv_blocks_alloc(ns_kv_blocks *kv);
/* Adds a reference to an allocated block. */
void ns_kv_blocks_retain(ns_kv_blocks *kv, int32_t id);
/* Drops a reference; at 0 the block becomes evictable-cached (ready and published) or
 * free (otherwise, and then its hash is forgotten). */
void ns_kv_blocks_release(ns_kv_blocks *kv, int32_t id);
int ns_kv_blocks_refcount(const ns_kv_blocks *kv, int32_t id);

/* ---- prefix cache ---- */
/* Chained hash of one block of tokens (never 0). prev is 0 for the first block. */
uint64_t ns_kv_hash_block(uint64_t prev, const int32_t *tokens, int n);
/* Finds the block published under hash. If found: takes a reference (reviving an
 * evictable block) and returns its id; with require_ready, a block not yet ready counts
 * as not found. -1 if absent. */
int32_t ns_kv_blocks_lookup(ns_kv_blocks *kv, uint64_t hash, bool require_ready);
/* Publishes an allocated block under hash (no-op if hash is already published). */
void ns_kv_blocks_publish(ns_kv_blocks *kv, int32_t id, uint64_t hash);
/* Withdraws a block's hash (its contents will not be computed after all). */
void ns_kv_blocks_unpublish(ns_kv_blocks *kv, int32_t id);
void ns_kv_blocks_set_ready(ns_kv_blocks *kv, int32_t id);
bool ns_kv_blocks_is_ready(const ns_kv_blocks *kv, int32_t id);

#endif
