/* kv_cache.c: block pool with reference counts, a LIFO free list, and the prefix cache:
 * an open-addressing hash table (hash -> block id, linear probing with tombstones) and a
 * doubly linked LRU list of released-but-cached blocks (see kv_cache.h). */
#include "kv_cache.h"

#include <stdlib.h>
#include <string.h>

#define TOMB (-2)
#define EMPTY (-1)

struct ns_kv_blocks {
    int n_blocks;
    int block_size;
    int n_free;
    int32_t *free_list; /* (n_blocks) stack of free, uncached ids */
    int32_t *refcount;  /* (n_blocks) */
    uint64_t *hash;     /* (n_blocks) published hash, 0 = none */
    uint8_t *ready;     /* (n_blocks) */
    /* LRU of evictable cached blocks (refcount 0, published, ready) */
    int32_t *lru_prev, *lru_next; /* (n_blocks), -1 = none */
    int32_t lru_head, lru_tail;   /* head = least recently used */
    int n_cached;
    /* hash table: (table_size) block ids, EMPTY or TOMB */
    int32_t *table;
    uint32_t table_mask;
    uint32_t n_tomb;   /* tombstones; the table is rebuilt when they pass a quarter */
};

ns_status ns_kv_blocks_create(int n_blocks, int block_size, ns_kv_blocks **out, ns_error *err) {
    *out = NULL;
    if (n_blocks < 1 || block_size < 1 || n_blocks > (1 << 28))
        return ns_error_set(err, NS_ERR_INVALID, "kv cache: n_blocks %d (1..2^28) and block_size %d (>= 1)",
                            n_blocks, block_size);
    ns_kv_blocks *kv = calloc(1, sizeof *kv);
    if (!kv) return ns_error_set(err, NS_ERR_NOMEM, "kv cache: out of memory");
    uint32_t ts = 16;
    while (ts < (uint32_t)n_blocks * 2) ts <<= 1;
    kv->free_list = ns_malloc_array((size_t)n_blocks, sizeof(int32_t));
    kv->refcount = ns_calloc_array((size_t)n_blocks, sizeof(int32_t));
    kv->hash = ns_calloc_array((size_t)n_blocks, sizeof(uint64_t));
    kv->ready = ns_calloc_array((size_t)n_blocks, 1);
    kv->lru_prev = ns_malloc_array((size_t)n_blocks, sizeof(int32_t));
    kv->lru_next = ns_malloc_array((size_t)n_blocks, sizeof(int32_t));
    kv->table = ns_malloc_array(ts, sizeof(int32_t));
    if (!kv->free_list || !kv->refcount || !kv->hash || !kv->ready || !kv->lru_prev || !kv->lru_next || !kv->table) {
        ns_kv_blocks_destroy(kv);
        return ns_error_set(err, NS_ERR_NOMEM, "kv cache: out of memory for %d blocks", n_blocks);
    }
    kv->n_blocks = n_blocks;
    kv->block_size = block_size;
    kv->table_mask = ts - 1;
    for (uint32_t i = 0; i < ts; i++) kv->table[i] = EMPTY;
    /* lowest ids on top of the stack, so allocation order is 0, 1, 2, ... */
    for (int i = 0; i < n_blocks; i++) kv->free_list[i] = n_blocks - 1 - i;
    for (int i = 0; i < n_blocks; i++) kv->lru_prev[i] = kv->lru_next[i] = -1;
    kv->lru_head = kv->lru_tail = -1;
    kv->n_free = n_blocks;
    *out = kv;
    return NS_OK;
}

void ns_kv_blocks_destroy(ns_kv_blocks *kv) {
    if (!kv) return;
    free(kv->free_list);
    free(kv->refcount);
    free(kv->hash);
    free(kv->ready);
    free(kv->lru_prev);
    free(kv->lru_next);
    free(kv->table);
    free(kv);
}

int ns_kv_blocks_n_total(const ns_kv_blocks *kv) { return kv->n_blocks; }
int ns_kv_blocks_n_free(const ns_kv_blocks *kv) { return kv->n_free + kv->n_cached; }
int ns_kv_blocks_n_cached(const ns_kv_blocks *kv) { return kv->n_cached; }
int ns_kv_blocks_block_size(const ns_kv_blocks *kv) { return kv->block_size; }
int ns_kv_blocks_needed(const ns_kv_blocks *kv, int n_tokens) {
    return (n_tokens + kv->block_size - 1) / kv->block_size;
}

/* ---- hash table ---- */

static uint32_t slot_of(const ns_kv_blocks *kv, uint64_t h) { return (uint32_t)(h ^ (h >> 32)) & kv->table_mask; }

static int32_t table_find(const ns_kv_blocks *kv, uint64_t h, uint32_t *pos) {
    for (uint32_t i = slot_of(kv, h), n = 0; n <= kv->table_mask; i = (i + 1) & kv->table_mask, n++) {
        int32_t id = kv->table[i];
        if (id == EMPTY) return -1;
        if (id != TOMB && kv->hash[id] == h) {
            if (pos) *pos = i;
            return id;
        }
    }
    return -1;
}


static void table_insert(ns_kv_blocks *kv, int32_t id) {
    for (uint32_t i = slot_of(kv, kv->hash[id]);; i = (i + 1) & kv->table_mask) {
        if (kv->table[i] == EMPTY || kv->table[i] == TOMB) {
            if (kv->table[i] == TOMB) kv->n_tomb--;
            kv->table[i] = id;
            return;
        }
    }
}

static void table_rebuild(ns_kv_blocks *kv) {
    for (uint32_t i = 0; i <= kv->table_mask; i++) kv->table[i] = EMPTY;
    for (int32_t id = 0; id < kv->n_blocks; id++)
        if (kv->hash[id]) table_insert(kv, id);
    kv->n_tomb = 0;
}

static void forget_hash(ns_kv_blocks *kv, int32_t id) {
    uint32_t pos;
    if (kv->hash[id] && table_find(kv, kv->hash[id], &pos) == id) {
        kv->table[pos] = TOMB;
        kv->n_tomb++;
    }
    kv->hash[id] = 0;
    if (kv->n_tomb > (kv->table_mask + 1) / 4) table_rebuild(kv);
}

/* ---- LRU ---- */

static void lru_remove(ns_kv_blocks *kv, int32_t id) {
    int32_t p = kv->lru_prev[id], n = kv->lru_next[id];
    if (p >= 0) kv->lru_next[p] = n;
    else kv->lru_head = n;
    if (n >= 0) kv->lru_prev[n] = p;
    else kv->lru_tail = p;
    kv->lru_prev[id] = kv->lru_next[id] = -1;
    kv->n_cached--;
}

static void lru_push_tail(ns_kv_blocks *kv, int32_t id) {
    kv->lru_prev[id] = kv->lru_tail;
    kv->lru_next[id] = -1;
    if (kv->lru_tail >= 0) kv->lru_next[kv->lru_tail] = id;
    else kv->lru_head = id;
    kv->lru_tail = id;
    kv->n_cached++;
}

/* ---- blocks ---- */

int32_t ns_kv_blocks_alloc(ns_kv_blocks *kv) {
    int32_t id;
    if (kv->n_free > 0) {
        id = kv->free_list[--kv->n_free];
    } else if (kv->lru_head >= 0) {
        id = kv->lru_head; /* evict the least recently used cached prefix */
        lru_remove(kv, id);
        forget_hash(kv, id);
    } else {
        return -1;
    }
    NS_ASSERT(kv->refcount[id] == 0);
    kv->refcount[id] = 1;
    kv->ready[id] = 0;
    return id;
}

void ns_kv_blocks_retain(ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks && kv->refcount[id] > 0);
    kv->refcount[id]++;
}

void ns_kv_blocks_release(ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks && kv->refcount[id] > 0);
    if (--kv->refcount[id] > 0) return;
    if (kv->hash[id] && kv->ready[id]) {
        lru_push_tail(kv, id);
    } else {
        forget_hash(kv, id);
        kv->ready[id] = 0;
        kv->free_list[kv->n_free++] = id;
    }
}

int ns_kv_blocks_refcount(const ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks);
    return kv->refcount[id];
}

uint64_t ns_kv_hash_block(uint64_t prev, const int32_t *tokens, int n) {
    uint64_t h = prev ^ 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < n; i++) {
        h ^= (uint64_t)(uint32_t)tokens[i];
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
    }
    h ^= (uint64_t)n * 0x94D049BB133111EBull;
    h ^= h >> 29;
    return h ? h : 1;
}

int32_t ns_kv_blocks_lookup(ns_kv_blocks *kv, uint64_t hash, bool require_ready) {
    int32_t id = table_find(kv, hash, NULL);
    if (id < 0 || (require_ready && !kv->ready[id])) return -1;
    if (kv->refcount[id] == 0) {
        lru_remove(kv, id); /* revived: in use again */
        kv->refcount[id] = 1;
    } else {
        kv->refcount[id]++;
    }
    return id;
}

void ns_kv_blocks_publish(ns_kv_blocks *kv, int32_t id, uint64_t hash) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks && kv->refcount[id] > 0 && hash != 0);
    if (kv->hash[id] || table_find(kv, hash, NULL) >= 0) return;
    kv->hash[id] = hash;
    table_insert(kv, id);
}

void ns_kv_blocks_unpublish(ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks);
    forget_hash(kv, id);
}

void ns_kv_blocks_set_ready(ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks);
    kv->ready[id] = 1;
}

bool ns_kv_blocks_is_ready(const ns_kv_blocks *kv, int32_t id) {
    NS_ASSERT(id >= 0 && id < kv->n_blocks);
    return kv->ready[id] != 0;
}
