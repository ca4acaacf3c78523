/* gguf.c: the GGUF reader (v2/v3, little-endian, memory-mapped) and the small in-memory
 * GGUF v3 writer declared in gguf.h.
 *
 * Reader invariants: every field is read through a cursor that checks the bytes remain
 * before touching them, and every count or size is checked for overflow before it is
 * multiplied or added. Counts are bounded by the file size before anything is allocated,
 * so memory stays proportional to the file (at most a few words per kv, string-array
 * element and tensor). After a successful open every kv value, every string-array element
 * and every tensor's data lies inside the buffer; the getters never re-validate.
 *
 * Lookup: keys and tensor names go into open-addressed hash tables (FNV-1a, linear
 * probing, load <= 1/2); string arrays keep the offset of each element so that
 * ns_gguf_get_arr_str is O(1).
 *
 * The writer serializes kvs as they are added and copies tensor data; to_memory lays out
 * header, kvs, tensor infos, padding to 32 and each tensor's data padded to 32 (as ggml).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mmap, fsync, strdup */
#endif
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_HEADER_BYTES 24u   /* magic, version, n_tensors, n_kv */
#define GGUF_MIN_KV_BYTES 12u   /* key length (8) + value type (4); the value adds more */
#define GGUF_MIN_TENSOR_BYTES 32u /* name length, n_dims, one ne, type, offset */
#define GGUF_MAX_KEY_BYTES 65535u /* spec: keys are at most 2^16-1 bytes */

/* ---- ggml types ---- */

int ns_ggml_type_block_size(int type) {
    switch (type) {
    case NS_GGML_F32: return 1;
    case NS_GGML_F16: return 1;
    case NS_GGML_BF16: return 1;
    case NS_GGML_Q8_0: return 32;
    case NS_GGML_Q4_0: return 32;
    case NS_GGML_Q4_1: return 32;
    default: return 0;
    }
}

size_t ns_ggml_type_block_bytes(int type) {
    switch (type) {
    case NS_GGML_F32: return 4;
    case NS_GGML_F16: return 2;
    case NS_GGML_BF16: return 2;
    case NS_GGML_Q8_0: return 34; /* f16 scale + 32 x i8 */
    case NS_GGML_Q4_0: return 18; /* f16 scale + 16 bytes of nibbles */
    case NS_GGML_Q4_1: return 20; /* f16 scale + f16 min + 16 bytes of nibbles */
    default: return 0;
    }
}

const char *ns_ggml_type_name(int type) {
    switch (type) {
    case NS_GGML_F32: return "f32";
    case NS_GGML_F16: return "f16";
    case NS_GGML_BF16: return "bf16";
    case NS_GGML_Q8_0: return "q8_0";
    case NS_GGML_Q4_0: return "q4_0";
    case NS_GGML_Q4_1: return "q4_1";
    default: return NULL;
    }
}

size_t ns_ggml_row_bytes(int type, int64_t n) {
    int bs = ns_ggml_type_block_size(type);
    size_t bb = ns_ggml_type_block_bytes(type);
    if (bs <= 0 || n < 0 || n % bs != 0) return 0;
    uint64_t n_blocks = (uint64_t)(n / bs);
    if (n_blocks > SIZE_MAX / bb) return 0;
    return (size_t)n_blocks * bb;
}

/* ---- value types ---- */

/* Bytes of one scalar of type t; 0 for string, array and unknown types. */
static size_t vtype_scalar_bytes(uint32_t t) {
    switch (t) {
    case NS_GGUF_U8: case NS_GGUF_I8: case NS_GGUF_BOOL: return 1;
    case NS_GGUF_U16: case NS_GGUF_I16: return 2;
    case NS_GGUF_U32: case NS_GGUF_I32: case NS_GGUF_F32: return 4;
    case NS_GGUF_U64: case NS_GGUF_I64: case NS_GGUF_F64: return 8;
    default: return 0;
    }
}

static const char *vtype_name(uint32_t t) {
    static const char *const names[] = {"u8",   "i8",     "u16",   "i16", "u32",
                                        "i32",  "f32",    "bool",  "string", "array",
                                        "u64",  "i64",    "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static bool vtype_is_int(uint32_t t) {
    return t == NS_GGUF_U8 || t == NS_GGUF_I8 || t == NS_GGUF_U16 || t == NS_GGUF_I16 ||
           t == NS_GGUF_U32 || t == NS_GGUF_I32 || t == NS_GGUF_U64 || t == NS_GGUF_I64;
}

/* Little-endian decoding, independent of the host byte order. */
static uint16_t rd_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static uint64_t rd_u64(const uint8_t *p) {
    return (uint64_t)rd_u32(p) | ((uint64_t)rd_u32(p + 4) << 32);
}

/* ---- the reader's state ---- */

typedef struct gguf_kv {
    ns_gguf_str key;
    ns_gguf_vtype type;
    ns_gguf_vtype elem_type; /* arrays only */
    uint64_t n;              /* arrays: element count */
    const uint8_t *val;      /* scalars: the value; strings: the bytes; arrays: first element */
    uint64_t len;            /* strings: byte length */
    uint64_t *str_offsets;   /* string arrays: n offsets from val of each element's length
                                prefix (owned) */
} gguf_kv;

/* Open-addressed table of indices into an array of records whose name is an ns_gguf_str
 * at a fixed stride. */
typedef struct gguf_index {
    int64_t *slots; /* -1 = empty; capacity mask + 1 (power of two) */
    uint64_t mask;
    const char *names; /* address of the first record's ns_gguf_str */
    size_t stride;
} gguf_index;

struct ns_gguf {
    const uint8_t *base; /* the file bytes */
    size_t nbytes;
    void *map; /* non-NULL when we own a mapping of map_bytes */
    size_t map_bytes;
    const char *label; /* path for messages during open, or NULL */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_start; /* file offset of the data section */
    uint64_t data_nbytes;
    int64_t n_kv;
    gguf_kv *kvs;
    int64_t n_tensors;
    ns_gguf_tensor *tensors;
    gguf_index key_index;
    gguf_index tensor_index;
};

static const uint8_t g_empty_file[1];

/* ---- error messages ---- */

/* Copies a name from the file into out for an error message: at most 80 bytes shown,
 * non-printable bytes replaced by '?'. */
static const char *show_name(const char *p, uint64_t len, char *out, size_t out_size) {
    size_t shown = len < 80 ? (size_t)len : 80;
    if (shown + 4 > out_size) shown = out_size - 4;
    size_t j = 0;
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)p[i];
        out[j++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (shown < len) {
        out[j++] = '.';
        out[j++] = '.';
        out[j++] = '.';
    }
    out[j] = '\0';
    return out;
}

static ns_status gguf_fail_at(const ns_gguf *g, ns_error *err, const char *file, int line,
                              ns_status code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static ns_status gguf_fail_at(const ns_gguf *g, ns_error *err, const char *file, int line,
                              ns_status code, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (g && g->label) return ns_error_set_at(err, file, line, code, "gguf %s: %s", g->label, msg);
    return ns_error_set_at(err, file, line, code, "gguf: %s", msg);
}
#define FAIL(g, err, code, ...) gguf_fail_at((g), (err), __FILE__, __LINE__, (code), __VA_ARGS__)

/* ---- hash index ---- */

static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static ns_status index_init(gguf_index *ix, int64_t n, const void *names, size_t stride) {
    uint64_t cap = 8;
    while (cap < (uint64_t)n * 2) cap *= 2; /* n is bounded by the file size: no overflow */
    ix->slots = ns_malloc_array((size_t)cap, sizeof *ix->slots);
    if (!ix->slots) return NS_ERR_NOMEM;
    for (uint64_t i = 0; i < cap; i++) ix->slots[i] = -1;
    ix->mask = cap - 1;
    ix->names = names;
    ix->stride = stride;
    return NS_OK;
}

static const ns_gguf_str *index_name(const gguf_index *ix, int64_t i) {
    return (const ns_gguf_str *)(const void *)(ix->names + (size_t)i * ix->stride);
}

/* Index of the record named (p, len), or -1. */
static int64_t index_find(const gguf_index *ix, const char *p, size_t len) {
    if (!ix->slots) return -1;
    for (uint64_t h = hash_bytes(p, len) & ix->mask;; h = (h + 1) & ix->mask) {
        int64_t i = ix->slots[h];
        if (i < 0) return -1;
        const ns_gguf_str *s = index_name(ix, i);
        if (s->len == len && (len == 0 || memcmp(s->ptr, p, len) == 0)) return i;
    }
}

/* Inserts record i; returns -1, or the index of an earlier record with the same name. */
static int64_t index_insert(gguf_index *ix, int64_t i) {
    const ns_gguf_str *name = index_name(ix, i);
    for (uint64_t h = hash_bytes(name->ptr, (size_t)name->len) & ix->mask;;
         h = (h + 1) & ix->mask) {
        int64_t j = ix->slots[h];
        if (j < 0) {
            ix->slots[h] = i;
            return -1;
        }
        const ns_gguf_str *s = index_name(ix, j);
        if (s->len == name->len && (s->len == 0 || memcmp(s->ptr, name->ptr, (size_t)s->len) == 0))
            return j;
    }
}

/* ---- cursor ---- */

typedef struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos; /* invariant: pos <= size */
} cursor;

static size_t cur_left(const cursor *c) { return c->size - c->pos; }

static bool cur_u32(cursor *c, uint32_t *v) {
    if (cur_left(c) < 4) return false;
    *v = rd_u32(c->base + c->pos);
    c->pos += 4;
    return true;
}

static bool cur_u64(cursor *c, uint64_t *v) {
    if (cur_left(c) < 8) return false;
    *v = rd_u64(c->base + c->pos);
    c->pos += 8;
    return true;
}

/* Reads a string (u64 length + bytes). STR_CUT: even the length was cut off;
 * STR_LONG: *len bytes do not fit in what is left. */
enum { STR_OK, STR_CUT, STR_LONG };
static int cur_str(cursor *c, ns_gguf_str *s, uint64_t *len) {
    if (!cur_u64(c, len)) return STR_CUT;
    if (*len > cur_left(c)) return STR_LONG;
    s->ptr = (const char *)(c->base + c->pos);
    s->len = *len;
    c->pos += (size_t)*len;
    return STR_OK;
}

/* ---- parsing ---- */

static ns_status parse_kv(ns_gguf *g, cursor *c, int64_t i, ns_error *err) {
    gguf_kv *kv = &g->kvs[i];
    char nm[96];
    uint64_t len;
    int rs = cur_str(c, &kv->key, &len);
    if (rs != STR_OK) {
        if (rs == STR_CUT)
            return FAIL(g, err, NS_ERR_FORMAT, "kv %lld: key length cut off at byte %zu (file has %zu bytes)",
                        (long long)i, c->pos, c->size);
        return FAIL(g, err, NS_ERR_FORMAT,
                    "kv %lld: key length %llu at byte %zu runs past the end of the file (%zu bytes left)",
                    (long long)i, (unsigned long long)len, c->pos - 8, cur_left(c));
    }
    if (kv->key.len > GGUF_MAX_KEY_BYTES)
        return FAIL(g, err, NS_ERR_FORMAT, "kv %lld: key length %llu exceeds the limit %u",
                    (long long)i, (unsigned long long)kv->key.len, GGUF_MAX_KEY_BYTES);
    show_name(kv->key.ptr, kv->key.len, nm, sizeof nm);

    int64_t dup = index_insert(&g->key_index, i);
    if (dup >= 0)
        return FAIL(g, err, NS_ERR_FORMAT, "duplicate key '%s' (kv %lld and kv %lld)", nm,
                    (long long)dup, (long long)i);

    uint32_t type;
    if (!cur_u32(c, &type))
        return FAIL(g, err, NS_ERR_FORMAT, "key '%s': value type cut off at byte %zu (file has %zu bytes)",
                    nm, c->pos, c->size);
    if (type > NS_GGUF_F64)
        return FAIL(g, err, NS_ERR_FORMAT, "key '%s': unknown value type %u (known: 0..%d)", nm, type,
                    (int)NS_GGUF_F64);
    kv->type = (ns_gguf_vtype)type;

    if (type == NS_GGUF_STRING) {
        ns_gguf_str s;
        rs = cur_str(c, &s, &len);
        if (rs != STR_OK) {
            if (rs == STR_CUT)
                return FAIL(g, err, NS_ERR_FORMAT, "key '%s': string length cut off at byte %zu", nm, c->pos);
            return FAIL(g, err, NS_ERR_FORMAT,
                        "key '%s': string length %llu runs past the end of the file (%zu bytes left)", nm,
                        (unsigned long long)len, cur_left(c));
        }
        kv->val = (const uint8_t *)s.ptr;
        kv->len = s.len;
        return NS_OK;
    }
    if (type != NS_GGUF_ARRAY) {
        size_t sz = vtype_scalar_bytes(type);
        if (cur_left(c) < sz)
            return FAIL(g, err, NS_ERR_FORMAT, "key '%s': %s value (%zu bytes) cut off at byte %zu (file has %zu bytes)",
                        nm, vtype_name(type), sz, c->pos, c->size);
        kv->val = c->base + c->pos;
        c->pos += sz;
        return NS_OK;
    }

    /* array: element type, count, elements */
    uint32_t et;
    uint64_t n;
    if (!cur_u32(c, &et) || !cur_u64(c, &n))
        return FAIL(g, err, NS_ERR_FORMAT, "key '%s': array header cut off at byte %zu (file has %zu bytes)",
                    nm, c->pos, c->size);
    if (et == NS_GGUF_ARRAY)
        return FAIL(g, err, NS_ERR_UNSUPPORTED, "key '%s': arrays of arrays are not supported", nm);
    if (et > NS_GGUF_F64)
        return FAIL(g, err, NS_ERR_FORMAT, "key '%s': unknown array element type %u (known: 0..%d)", nm,
                    et, (int)NS_GGUF_F64);
    kv->elem_type = (ns_gguf_vtype)et;
    kv->n = n;
    kv->val = c->base + c->pos;
    if (et != NS_GGUF_STRING) {
        size_t sz = vtype_scalar_bytes(et);
        if (n > cur_left(c) / sz)
            return FAIL(g, err, NS_ERR_FORMAT,
                        "key '%s': array of %llu %s (%zu bytes each) runs past the end of the file (%zu bytes left)",
                        nm, (unsigned long long)n, vtype_name(et), sz, cur_left(c));
        c->pos += (size_t)n * sz;
        return NS_OK;
    }
    /* each string takes at least its 8-byte length */
    if (n > cur_left(c) / 8)
        return FAIL(g, err, NS_ERR_FORMAT,
                    "key '%s': array of %llu strings cannot fit in the %zu bytes left (8 bytes each at least)",
                    nm, (unsigned long long)n, cur_left(c));
    kv->str_offsets = ns_malloc_array((size_t)n, sizeof *kv->str_offsets);
    if (!kv->str_offsets)
        return FAIL(g, err, NS_ERR_NOMEM, "key '%s': no memory for %llu string offsets", nm,
                    (unsigned long long)n);
    size_t start = c->pos;
    for (uint64_t k = 0; k < n; k++) {
        kv->str_offsets[k] = c->pos - start;
        ns_gguf_str s;
        rs = cur_str(c, &s, &len);
        if (rs != STR_OK) {
            if (rs == STR_CUT)
                return FAIL(g, err, NS_ERR_FORMAT, "key '%s': string %llu of %llu: length cut off at byte %zu",
                            nm, (unsigned long long)k, (unsigned long long)n, c->pos);
            return FAIL(g, err, NS_ERR_FORMAT,
                        "key '%s': string %llu of %llu: length %llu runs past the end of the file (%zu bytes left)",
                        nm, (unsigned long long)k, (unsigned long long)n, (unsigned long long)len,
                        cur_left(c));
        }
    }
    return NS_OK;
}

static ns_status parse_tensor_info(ns_gguf *g, cursor *c, int64_t i, ns_error *err) {
    ns_gguf_tensor *t = &g->tensors[i];
    char nm[96];
    uint64_t len;
    int rs = cur_str(c, &t->name, &len);
    if (rs != STR_OK) {
        if (rs == STR_CUT)
            return FAIL(g, err, NS_ERR_FORMAT, "tensor %lld: name length cut off at byte %zu (file has %zu bytes)",
                        (long long)i, c->pos, c->size);
        return FAIL(g, err, NS_ERR_FORMAT,
                    "tensor %lld: name length %llu runs past the end of the file (%zu bytes left)",
                    (long long)i, (unsigned long long)len, cur_left(c));
    }
    show_name(t->name.ptr, t->name.len, nm, sizeof nm);
    int64_t dup = index_insert(&g->tensor_index, i);
    if (dup >= 0)
        return FAIL(g, err, NS_ERR_FORMAT, "duplicate tensor name '%s' (tensor %lld and tensor %lld)", nm,
                    (long long)dup, (long long)i);

    if (!cur_u32(c, &t->n_dims))
        return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': n_dims cut off at byte %zu", nm, c->pos);
    if (t->n_dims < 1 || t->n_dims > NS_GGUF_MAX_DIMS)
        return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': n_dims %u outside 1..%d", nm, t->n_dims,
                    NS_GGUF_MAX_DIMS);
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < NS_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t ne;
        if (!cur_u64(c, &ne))
            return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': ne[%u] cut off at byte %zu", nm, d, c->pos);
        if (ne < 1 || ne > (uint64_t)INT64_MAX)
            return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': ne[%u] = %llu outside 1..%lld", nm, d,
                        (unsigned long long)ne, (long long)INT64_MAX);
        if ((int64_t)ne > INT64_MAX / n_elements)
            return FAIL(g, err, NS_ERR_FORMAT,
                        "tensor '%s': element count overflows at ne[%u] = %llu (limit %lld elements)", nm,
                        d, (unsigned long long)ne, (long long)INT64_MAX);
        t->ne[d] = (int64_t)ne;
        n_elements *= (int64_t)ne;
    }
    uint32_t type;
    if (!cur_u32(c, &type))
        return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': type cut off at byte %zu", nm, c->pos);
    if (type > INT32_MAX || !ns_ggml_type_name((int)type))
        return FAIL(g, err, NS_ERR_UNSUPPORTED,
                    "tensor '%s': ggml type %u is not supported (f32, f16, bf16, q8_0, q4_0, q4_1)", nm,
                    type);
    t->type = (int)type;
    int bs = ns_ggml_type_block_size(t->type);
    if (t->ne[0] % bs != 0)
        return FAIL(g, err, NS_ERR_FORMAT,
                    "tensor '%s': ne[0] = %lld is not a multiple of the block size %d of type %s", nm,
                    (long long)t->ne[0], bs, ns_ggml_type_name(t->type));
    if (!cur_u64(c, &t->offset))
        return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': offset cut off at byte %zu", nm, c->pos);

    /* nbytes = row bytes * rows, in u64 with overflow checks */
    uint64_t n_blocks = (uint64_t)(t->ne[0] / bs);
    uint64_t bb = ns_ggml_type_block_bytes(t->type);
    uint64_t rows = (uint64_t)(n_elements / t->ne[0]);
    if (n_blocks > UINT64_MAX / bb)
        return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': row size overflows (ne[0] = %lld)", nm,
                    (long long)t->ne[0]);
    uint64_t row = n_blocks * bb;
    if (row > UINT64_MAX / rows)
        return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': byte size overflows (%llu rows of %llu bytes)", nm,
                    (unsigned long long)rows, (unsigned long long)row);
    t->nbytes = row * rows;
    return NS_OK;
}

static ns_status gguf_parse(ns_gguf *g, ns_error *err) {
    cursor c = {g->base, g->nbytes, 0};
    if (c.size < 4)
        return FAIL(g, err, NS_ERR_FORMAT, "file is %zu bytes, too short for the magic (4 bytes)", c.size);
    if (memcmp(c.base, "GGUF", 4) != 0)
        return FAIL(g, err, NS_ERR_FORMAT, "bad magic %02x %02x %02x %02x (expected \"GGUF\")", c.base[0],
                    c.base[1], c.base[2], c.base[3]);
    c.pos = 4;
    if (!cur_u32(&c, &g->version))
        return FAIL(g, err, NS_ERR_FORMAT, "file is %zu bytes, too short for the version", c.size);
    if (g->version != 2 && g->version != 3) {
        if (g->version == 0x03000000u || g->version == 0x02000000u)
            return FAIL(g, err, NS_ERR_UNSUPPORTED,
                        "version %u is not supported (big-endian file? only little-endian 2 and 3)", g->version);
        return FAIL(g, err, NS_ERR_UNSUPPORTED, "version %u is not supported (only 2 and 3)", g->version);
    }
    uint64_t n_tensors, n_kv;
    if (!cur_u64(&c, &n_tensors) || !cur_u64(&c, &n_kv))
        return FAIL(g, err, NS_ERR_FORMAT, "file is %zu bytes, too short for the %u-byte header", c.size,
                    GGUF_HEADER_BYTES);
    /* Sanity limits before any allocation: each kv and tensor info needs some bytes. */
    uint64_t max_kv = cur_left(&c) / GGUF_MIN_KV_BYTES;
    if (n_kv > max_kv)
        return FAIL(g, err, NS_ERR_FORMAT, "n_kv %llu exceeds the limit %llu for a file of %zu bytes",
                    (unsigned long long)n_kv, (unsigned long long)max_kv, c.size);
    uint64_t max_tensors = cur_left(&c) / GGUF_MIN_TENSOR_BYTES;
    if (n_tensors > max_tensors)
        return FAIL(g, err, NS_ERR_FORMAT, "n_tensors %llu exceeds the limit %llu for a file of %zu bytes",
                    (unsigned long long)n_tensors, (unsigned long long)max_tensors, c.size);
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;

    g->kvs = ns_calloc_array((size_t)n_kv, sizeof *g->kvs);
    g->tensors = ns_calloc_array((size_t)n_tensors, sizeof *g->tensors);
    if (!g->kvs || !g->tensors ||
        index_init(&g->key_index, g->n_kv, &g->kvs[0].key, sizeof *g->kvs) != NS_OK ||
        index_init(&g->tensor_index, g->n_tensors, &g->tensors[0].name, sizeof *g->tensors) != NS_OK)
        return FAIL(g, err, NS_ERR_NOMEM, "no memory for %llu kvs and %llu tensors",
                    (unsigned long long)n_kv, (unsigned long long)n_tensors);

    ns_status st;
    for (int64_t i = 0; i < g->n_kv; i++)
        if ((st = parse_kv(g, &c, i, err)) != NS_OK) return st;

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    int64_t ia = index_find(&g->key_index, "general.alignment", strlen("general.alignment"));
    if (ia >= 0) {
        const gguf_kv *kv = &g->kvs[ia];
        if (kv->type != NS_GGUF_U32)
            return FAIL(g, err, NS_ERR_FORMAT, "general.alignment has type %s (expected u32)",
                        vtype_name(kv->type));
        uint32_t a = rd_u32(kv->val);
        if (a == 0 || (a & (a - 1)) != 0)
            return FAIL(g, err, NS_ERR_FORMAT, "general.alignment %u is not a nonzero power of two", a);
        g->alignment = a;
    }

    for (int64_t i = 0; i < g->n_tensors; i++)
        if ((st = parse_tensor_info(g, &c, i, err)) != NS_OK) return st;

    /* the data section starts at the next multiple of the alignment (pos < 2^63: no overflow) */
    uint64_t a = g->alignment;
    g->data_start = ((uint64_t)c.pos + a - 1) / a * a;
    if (g->data_start > c.size) {
        if (g->n_tensors > 0)
            return FAIL(g, err, NS_ERR_FORMAT,
                        "data section starts at byte %llu (tensor infos end at %zu, alignment %u), past the end of the file (%zu bytes)",
                        (unsigned long long)g->data_start, c.pos, g->alignment, c.size);
        g->data_start = c.size;
    }
    g->data_nbytes = c.size - g->data_start;

    for (int64_t i = 0; i < g->n_tensors; i++) {
        ns_gguf_tensor *t = &g->tensors[i];
        char nm[96];
        show_name(t->name.ptr, t->name.len, nm, sizeof nm);
        if (t->offset % a != 0)
            return FAIL(g, err, NS_ERR_FORMAT, "tensor '%s': offset %llu is not a multiple of the alignment %u",
                        nm, (unsigned long long)t->offset, g->alignment);
        if (t->offset > g->data_nbytes || t->nbytes > g->data_nbytes - t->offset)
            return FAIL(g, err, NS_ERR_FORMAT,
                        "tensor '%s': data [offset %llu, %llu bytes] runs past the end of the file (file has %llu data bytes)",
                        nm, (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                        (unsigned long long)g->data_nbytes);
        t->data = g->base + g->data_start + t->offset;
    }
    return NS_OK;
}

/* ---- open / close ---- */

ns_status ns_gguf_open_memory(const void *data, size_t nbytes, ns_gguf **out, ns_error *err) {
    if (!out) return ns_error_set(err, NS_ERR_INVALID, "gguf: out is NULL");
    *out = NULL;
    if (!data && nbytes > 0) return ns_error_set(err, NS_ERR_INVALID, "gguf: data is NULL but nbytes is %zu", nbytes);
    ns_gguf *g = calloc(1, sizeof *g);
    if (!g) return ns_error_set(err, NS_ERR_NOMEM, "gguf: no memory");
    g->base = data ? data : g_empty_file;
    g->nbytes = nbytes;
    ns_status st = gguf_parse(g, err);
    if (st != NS_OK) {
        ns_gguf_close(g);
        return st;
    }
    *out = g;
    return NS_OK;
}

ns_status ns_gguf_open(const char *path, ns_gguf **out, ns_error *err) {
    if (!out || !path) return ns_error_set(err, NS_ERR_INVALID, "gguf: path or out is NULL");
    *out = NULL;
    ns_status st = NS_OK;
    ns_gguf *g = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        st = ns_error_set(err, NS_ERR_IO, "gguf %s: cannot open: %s", path, strerror(errno));
        goto cleanup;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = ns_error_set(err, NS_ERR_IO, "gguf %s: cannot stat: %s", path, strerror(errno));
        goto cleanup;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = ns_error_set(err, NS_ERR_IO, "gguf %s: not a regular file", path);
        goto cleanup;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > SIZE_MAX) {
        st = ns_error_set(err, NS_ERR_IO, "gguf %s: size %lld cannot be mapped", path, (long long)sb.st_size);
        goto cleanup;
    }
    g = calloc(1, sizeof *g);
    if (!g) {
        st = ns_error_set(err, NS_ERR_NOMEM, "gguf %s: no memory", path);
        goto cleanup;
    }
    g->nbytes = (size_t)sb.st_size;
    g->base = g_empty_file;
    if (g->nbytes > 0) {
        void *m = mmap(NULL, g->nbytes, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = ns_error_set(err, NS_ERR_IO, "gguf %s: cannot map %zu bytes: %s", path, g->nbytes,
                              strerror(errno));
            goto cleanup;
        }
        g->map = m;
        g->map_bytes = g->nbytes;
        g->base = m;
    }
    g->label = path;
    st = gguf_parse(g, err);
    g->label = NULL; /* the caller's path need not outlive the call */

cleanup:
    if (fd >= 0) close(fd);
    if (st != NS_OK) {
        ns_gguf_close(g);
        return st;
    }
    *out = g;
    return NS_OK;
}

void ns_gguf_close(ns_gguf *g) {
    if (!g) return;
    if (g->kvs)
        for (int64_t i = 0; i < g->n_kv; i++) free(g->kvs[i].str_offsets);
    free(g->kvs);
    free(g->tensors);
    free(g->key_index.slots);
    free(g->tensor_index.slots);
    if (g->map) munmap(g->map, g->map_bytes);
    free(g);
}

uint32_t ns_gguf_version(const ns_gguf *g) { return g->version; }
size_t ns_gguf_file_bytes(const ns_gguf *g) { return g->nbytes; }

/* ---- metadata ---- */

int64_t ns_gguf_n_kv(const ns_gguf *g) { return g->n_kv; }

ns_gguf_str ns_gguf_kv_key(const ns_gguf *g, int64_t i) {
    NS_ASSERT(i >= 0 && i < g->n_kv);
    return g->kvs[i].key;
}

ns_gguf_vtype ns_gguf_kv_type(const ns_gguf *g, int64_t i) {
    NS_ASSERT(i >= 0 && i < g->n_kv);
    return g->kvs[i].type;
}

int64_t ns_gguf_find_key(const ns_gguf *g, const char *key) {
    if (!g || !key) return -1;
    return index_find(&g->key_index, key, strlen(key));
}

/* The kv named key, or NULL with NS_ERR_NOT_FOUND in err. */
static const gguf_kv *get_kv(const ns_gguf *g, const char *key, ns_error *err) {
    int64_t i = ns_gguf_find_key(g, key);
    if (i < 0) {
        ns_error_set(err, NS_ERR_NOT_FOUND, "gguf: key '%s' not found", key ? key : "(null)");
        return NULL;
    }
    return &g->kvs[i];
}

/* Integer value of an integer-typed kv, as either signed or unsigned. */
static void kv_int(const gguf_kv *kv, bool *is_neg, int64_t *sv, uint64_t *uv) {
    const uint8_t *p = kv->val;
    int64_t s = 0;
    uint64_t u = 0;
    bool neg = false;
    switch (kv->type) {
    case NS_GGUF_U8: u = p[0]; break;
    case NS_GGUF_I8: s = (int8_t)p[0]; neg = s < 0; u = (uint64_t)s; break;
    case NS_GGUF_U16: u = rd_u16(p); break;
    case NS_GGUF_I16: s = (int16_t)rd_u16(p); neg = s < 0; u = (uint64_t)s; break;
    case NS_GGUF_U32: u = rd_u32(p); break;
    case NS_GGUF_I32: s = (int32_t)rd_u32(p); neg = s < 0; u = (uint64_t)s; break;
    case NS_GGUF_U64: u = rd_u64(p); break;
    case NS_GGUF_I64: s = (int64_t)rd_u64(p); neg = s < 0; u = (uint64_t)s; break;
    default: break;
    }
    if (!neg && kv->type != NS_GGUF_I8 && kv->type != NS_GGUF_I16 && kv->type != NS_GGUF_I32 &&
        kv->type != NS_GGUF_I64)
        s = u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)u;
    *is_neg = neg;
    *sv = s;
    *uv = u;
}

static ns_status type_mismatch(const gguf_kv *kv, const char *key, const char *want, ns_error *err) {
    return ns_error_set(err, NS_ERR_FORMAT, "gguf: key '%s' has type %s (expected %s)", key,
                        vtype_name(kv->type), want);
}

ns_status ns_gguf_get_u32(const ns_gguf *g, const char *key, uint32_t *out, ns_error *err) {
    const gguf_kv *kv = get_kv(g, key, err);
    if (!kv) return NS_ERR_NOT_FOUND;
    if (!vtype_is_int(kv->type)) return type_mismatch(kv, key, "an integer", err);
    bool neg;
    int64_t s;
    uint64_t u;
    kv_int(kv, &neg, &s, &u);
    if (neg) return ns_error_set(err, NS_ERR_FORMAT, "gguf: key '%s' = %lld is negative (expected 0..%u)", key, (long long)s, UINT32_MAX);
    if (u > UINT32_MAX)
        return ns_error_set(err, NS_ERR_FORMAT, "gguf: key '%s' = %llu exceeds the limit %u", key,
                            (unsigned long long)u, UINT32_MAX);
    *out = (uint32_t)u;
    return NS_OK;
}

ns_status ns_gguf_get_i64(const ns_gguf *g, const char *key, int64_t *out, ns_error *err) {
    const gguf_kv *kv = get_kv(g, key, err);
    if (!kv) return NS_ERR_NOT_FOUND;
    if (!vtype_is_int(kv->type)) return type_mismatch(kv, key, "an integer", err);
    bool neg;
    int64_t s;
    uint64_t u;
    kv_int(kv, &neg, &s, &u);
    if (!neg && u > (uint64_t)INT64_MAX)
        return ns_error_set(err, NS_ERR_FORMAT, "gguf: key '%s' = %llu exceeds the limit %lld", key,
                            (unsigned long long)u, (long long)INT64_MAX);
    *out = s;
    return NS_OK;
}

ns_status ns_gguf_get_f32(const ns_gguf *g, const char *key, float *out, ns_error *err) {
    const gguf_kv *kv = get_kv(g, key, err);
    if (!kv) return NS_ERR_NOT_FOUND;
    if (kv->type == NS_GGUF_F32) {
        uint32_t bits = rd_u32(kv->val);
        memcpy(out, &bits, sizeof *out);
        return NS_OK;
    }
    if (kv->type == NS_GGUF_F64) {
        uint64_t bits = rd_u64(kv->val);
        double d;
        memcpy(&d, &bits, sizeof d);
        if (isfinite(d) && fabs(d) > FLT_MAX)
            return ns_error_set(err, NS_ERR_FORMAT, "gguf: key '%s' = %g is outside the f32 range (|x| <= %g)",
                                key, d, (double)FLT_MAX);
        *out = (float)d;
        return NS_OK;
    }
    return type_mismatch(kv, key, "f32 or f64", err);
}

ns_status ns_gguf_get_bool(const ns_gguf *g, const char *key, bool *out, ns_error *err) {
    const gguf_kv *kv = get_kv(g, key, err);
    if (!kv) return NS_ERR_NOT_FOUND;
    if (kv->type != NS_GGUF_BOOL) return type_mismatch(kv, key, "bool", err);
    *out = kv->val[0] != 0;
    return NS_OK;
}

ns_status ns_gguf_get_str(const ns_gguf *g, const char *key, ns_gguf_str *out, ns_error *err) {
    const gguf_kv *kv = get_kv(g, key, err);
    if (!kv) return NS_ERR_NOT_FOUND;
    if (kv->type != NS_GGUF_STRING) return type_mismatch(kv, key, "string", err);
    out->ptr = (const char *)kv->val;
    out->len = kv->len;
    return NS_OK;
}

ns_status ns_gguf_get_arr_info(const ns_gguf *g, const char *key, ns_gguf_vtype *elem_type,
                               uint64_t *n, ns_error *err) {
    const gguf_kv *kv = get_kv(g, key, err);
    if (!kv) return NS_ERR_NOT_FOUND;
    if (kv->type != NS_GGUF_ARRAY) return type_mismatch(kv, key, "array", err);
    if (elem_type) *elem_type = kv->elem_type;
    if (n) *n = kv->n;
    return NS_OK;
}

ns_status ns_gguf_get_arr_str(const ns_gguf *g, const char *key, uint64_t i, ns_gguf_str *out,
                              ns_error *err) {
    const gguf_kv *kv = get_kv(g, key, err);
    if (!kv) return NS_ERR_NOT_FOUND;
    if (kv->type != NS_GGUF_ARRAY || kv->elem_type != NS_GGUF_STRING)
        return ns_error_set(err, NS_ERR_FORMAT, "gguf: key '%s' has type %s%s%s (expected array of string)",
                            key, vtype_name(kv->type), kv->type == NS_GGUF_ARRAY ? " of " : "",
                            kv->type == NS_GGUF_ARRAY ? vtype_name(kv->elem_type) : "");
    if (i >= kv->n)
        return ns_error_set(err, NS_ERR_INVALID, "gguf: key '%s': index %llu out of range (array has %llu)",
                            key, (unsigned long long)i, (unsigned long long)kv->n);
    const uint8_t *p = kv->val + kv->str_offsets[i];
    out->len = rd_u64(p);
    out->ptr = (const char *)(p + 8);
    return NS_OK;
}

ns_status ns_gguf_get_arr_data(const ns_gguf *g, const char *key, const void **data,
                               ns_error *err) {
    const gguf_kv *kv = get_kv(g, key, err);
    if (!kv) return NS_ERR_NOT_FOUND;
    if (kv->type != NS_GGUF_ARRAY || kv->elem_type == NS_GGUF_STRING)
        return ns_error_set(err, NS_ERR_FORMAT, "gguf: key '%s' has type %s%s%s (expected numeric array)",
                            key, vtype_name(kv->type), kv->type == NS_GGUF_ARRAY ? " of " : "",
                            kv->type == NS_GGUF_ARRAY ? vtype_name(kv->elem_type) : "");
    *data = kv->val;
    return NS_OK;
}

/* ---- tensors ---- */

int64_t ns_gguf_n_tensors(const ns_gguf *g) { return g->n_tensors; }

const ns_gguf_tensor *ns_gguf_tensor_at(const ns_gguf *g, int64_t i) {
    if (!g || i < 0 || i >= g->n_tensors) return NULL;
    return &g->tensors[i];
}

const ns_gguf_tensor *ns_gguf_find_tensor(const ns_gguf *g, const char *name) {
    if (!g || !name) return NULL;
    int64_t i = index_find(&g->tensor_index, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}

/* ---- writer ---- */

typedef struct writer_tensor {
    char *name;
    int type;
    uint32_t n_dims;
    int64_t ne[NS_GGUF_MAX_DIMS];
    void *data;
    size_t nbytes;
} writer_tensor;

struct ns_gguf_writer {
    uint8_t *kv_bytes; /* serialized kvs, in order */
    size_t kv_nbytes, kv_cap;
    char **keys; /* copies, for the duplicate check */
    uint64_t n_kv;
    size_t keys_cap;
    writer_tensor *tensors;
    uint64_t n_tensors;
    size_t tensors_cap;
};

ns_gguf_writer *ns_gguf_writer_create(void) { return calloc(1, sizeof(ns_gguf_writer)); }

void ns_gguf_writer_destroy(ns_gguf_writer *w) {
    if (!w) return;
    free(w->kv_bytes);
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->tensors);
    free(w);
}

/* Grows *p (of *cap elements of size elem) to hold at least need elements. */
static bool grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return true;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2) return false;
        c *= 2;
    }
    if (c > SIZE_MAX / elem) return false;
    void *q = realloc(*p, c * elem);
    if (!q) return false;
    *p = q;
    *cap = c;
    return true;
}

static bool kv_put(ns_gguf_writer *w, const void *p, size_t n) {
    if (n > SIZE_MAX - w->kv_nbytes) return false;
    void *buf = w->kv_bytes;
    if (!grow(&buf, &w->kv_cap, w->kv_nbytes + n, 1)) return false;
    w->kv_bytes = buf;
    if (n) memcpy(w->kv_bytes + w->kv_nbytes, p, n);
    w->kv_nbytes += n;
    return true;
}

static bool kv_put_u32(ns_gguf_writer *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return kv_put(w, b, 4);
}

static bool kv_put_u64(ns_gguf_writer *w, uint64_t v) {
    return kv_put_u32(w, (uint32_t)v) && kv_put_u32(w, (uint32_t)(v >> 32));
}

static bool kv_put_str(ns_gguf_writer *w, const char *s) {
    size_t n = strlen(s);
    return kv_put_u64(w, n) && kv_put(w, s, n);
}

/* Starts a kv: checks the key (non-NULL, not too long, not a duplicate), remembers it and
 * writes the key and the value type. On failure the writer is unchanged. */
static ns_status kv_begin(ns_gguf_writer *w, const char *key, uint32_t type, size_t *mark) {
    if (!w || !key || strlen(key) > GGUF_MAX_KEY_BYTES) return NS_ERR_INVALID;
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0) return NS_ERR_INVALID;
    void *keys = w->keys;
    if (!grow(&keys, &w->keys_cap, (size_t)w->n_kv + 1, sizeof *w->keys)) return NS_ERR_NOMEM;
    w->keys = keys;
    *mark = w->kv_nbytes;
    if (!kv_put_str(w, key) || !kv_put_u32(w, type)) {
        w->kv_nbytes = *mark;
        return NS_ERR_NOMEM;
    }
    return NS_OK;
}

/* Finishes a kv: on ok records the key; on failure rolls the bytes back. */
static ns_status kv_end(ns_gguf_writer *w, const char *key, size_t mark, bool ok) {
    char *copy = ok ? strdup(key) : NULL;
    if (!copy) {
        w->kv_nbytes = mark;
        return NS_ERR_NOMEM;
    }
    w->keys[w->n_kv++] = copy;
    return NS_OK;
}

static ns_status add_scalar(ns_gguf_writer *w, const char *key, uint32_t type, uint32_t bits) {
    size_t mark;
    ns_status st = kv_begin(w, key, type, &mark);
    if (st != NS_OK) return st;
    bool ok;
    if (type == NS_GGUF_BOOL) {
        uint8_t b = (uint8_t)bits;
        ok = kv_put(w, &b, 1);
    } else {
        ok = kv_put_u32(w, bits);
    }
    return kv_end(w, key, mark, ok);
}

ns_status ns_gguf_writer_add_u32(ns_gguf_writer *w, const char *key, uint32_t v) {
    /* the writer lays data out at 32: another alignment would describe a different file */
    if (key && strcmp(key, "general.alignment") == 0 && v != GGUF_DEFAULT_ALIGNMENT) return NS_ERR_INVALID;
    return add_scalar(w, key, NS_GGUF_U32, v);
}

ns_status ns_gguf_writer_add_i32(ns_gguf_writer *w, const char *key, int32_t v) {
    if (key && strcmp(key, "general.alignment") == 0) return NS_ERR_INVALID;
    return add_scalar(w, key, NS_GGUF_I32, (uint32_t)v);
}

ns_status ns_gguf_writer_add_f32(ns_gguf_writer *w, const char *key, float v) {
    if (key && strcmp(key, "general.alignment") == 0) return NS_ERR_INVALID;
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return add_scalar(w, key, NS_GGUF_F32, bits);
}

ns_status ns_gguf_writer_add_bool(ns_gguf_writer *w, const char *key, bool v) {
    if (key && strcmp(key, "general.alignment") == 0) return NS_ERR_INVALID;
    return add_scalar(w, key, NS_GGUF_BOOL, v ? 1u : 0u);
}

ns_status ns_gguf_writer_add_str(ns_gguf_writer *w, const char *key, const char *v) {
    if (!v || (key && strcmp(key, "general.alignment") == 0)) return NS_ERR_INVALID;
    size_t mark;
    ns_status st = kv_begin(w, key, NS_GGUF_STRING, &mark);
    if (st != NS_OK) return st;
    return kv_end(w, key, mark, kv_put_str(w, v));
}

ns_status ns_gguf_writer_add_arr_str(ns_gguf_writer *w, const char *key, const char *const *v,
                                     uint64_t n) {
    if ((n > 0 && !v) || (key && strcmp(key, "general.alignment") == 0)) return NS_ERR_INVALID;
    for (uint64_t i = 0; i < n; i++)
        if (!v[i]) return NS_ERR_INVALID;
    size_t mark;
    ns_status st = kv_begin(w, key, NS_GGUF_ARRAY, &mark);
    if (st != NS_OK) return st;
    bool ok = kv_put_u32(w, NS_GGUF_STRING) && kv_put_u64(w, n);
    for (uint64_t i = 0; ok && i < n; i++) ok = kv_put_str(w, v[i]);
    return kv_end(w, key, mark, ok);
}

static ns_status add_arr_4(ns_gguf_writer *w, const char *key, uint32_t et, const void *v, uint64_t n) {
    if ((n > 0 && !v) || n > SIZE_MAX / 4 || (key && strcmp(key, "general.alignment") == 0))
        return NS_ERR_INVALID;
    size_t mark;
    ns_status st = kv_begin(w, key, NS_GGUF_ARRAY, &mark);
    if (st != NS_OK) return st;
    bool ok = kv_put_u32(w, et) && kv_put_u64(w, n);
    const uint8_t *p = v;
    for (uint64_t i = 0; ok && i < n; i++) {
        uint32_t bits;
        memcpy(&bits, p + i * 4, 4);
        ok = kv_put_u32(w, bits);
    }
    return kv_end(w, key, mark, ok);
}

ns_status ns_gguf_writer_add_arr_i32(ns_gguf_writer *w, const char *key, const int32_t *v,
                                     uint64_t n) {
    return add_arr_4(w, key, NS_GGUF_I32, v, n);
}

ns_status ns_gguf_writer_add_arr_f32(ns_gguf_writer *w, const char *key, const float *v,
                                     uint64_t n) {
    return add_arr_4(w, key, NS_GGUF_F32, v, n);
}

ns_status ns_gguf_writer_add_tensor(ns_gguf_writer *w, const char *name, int type,
                                    uint32_t n_dims, const int64_t *ne, const void *data) {
    if (!w || !name || !ne || !data || n_dims < 1 || n_dims > NS_GGUF_MAX_DIMS) return NS_ERR_INVALID;
    if (!ns_ggml_type_name(type)) return NS_ERR_INVALID;
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0) return NS_ERR_INVALID;
    int64_t rows = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] < 1) return NS_ERR_INVALID;
        if (d > 0) {
            if (ne[d] > INT64_MAX / rows) return NS_ERR_INVALID;
            rows *= ne[d];
        }
    }
    if (ne[0] > INT64_MAX / rows) return NS_ERR_INVALID;
    size_t row = ns_ggml_row_bytes(type, ne[0]);
    if (row == 0 || (uint64_t)rows > SIZE_MAX / row) return NS_ERR_INVALID;
    size_t nbytes = row * (size_t)rows;

    void *tensors = w->tensors;
    if (!grow(&tensors, &w->tensors_cap, (size_t)w->n_tensors + 1, sizeof *w->tensors))
        return NS_ERR_NOMEM;
    w->tensors = tensors;
    writer_tensor t = {0};
    t.name = strdup(name);
    t.data = malloc(nbytes);
    if (!t.name || !t.data) {
        free(t.name);
        free(t.data);
        return NS_ERR_NOMEM;
    }
    memcpy(t.data, data, nbytes);
    t.type = type;
    t.n_dims = n_dims;
    for (uint32_t d = 0; d < NS_GGUF_MAX_DIMS; d++) t.ne[d] = d < n_dims ? ne[d] : 1;
    t.nbytes = nbytes;
    w->tensors[w->n_tensors++] = t;
    return NS_OK;
}

/* a += b, false on overflow */
static bool add_size(size_t *a, size_t b) {
    if (b > SIZE_MAX - *a) return false;
    *a += b;
    return true;
}

static bool pad_size(size_t *a) { /* round up to the writer's alignment */
    size_t r = *a % GGUF_DEFAULT_ALIGNMENT;
    return r == 0 || add_size(a, GGUF_DEFAULT_ALIGNMENT - r);
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static void put_u64(uint8_t *p, uint64_t v) {
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

ns_status ns_gguf_writer_to_memory(const ns_gguf_writer *w, void **data, size_t *nbytes,
                                   ns_error *err) {
    if (!w || !data || !nbytes) return ns_error_set(err, NS_ERR_INVALID, "gguf writer: NULL argument");
    *data = NULL;
    *nbytes = 0;
    /* layout: header, kvs, tensor infos, pad, data (each tensor padded) */
    size_t size = GGUF_HEADER_BYTES;
    bool ok = add_size(&size, w->kv_nbytes);
    for (uint64_t i = 0; ok && i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        ok = add_size(&size, 8) && add_size(&size, strlen(t->name)) &&
             add_size(&size, 4 + 8 * (size_t)t->n_dims + 4 + 8);
    }
    ok = ok && pad_size(&size);
    size_t data_start = size;
    for (uint64_t i = 0; ok && i < w->n_tensors; i++)
        ok = add_size(&size, w->tensors[i].nbytes) && pad_size(&size);
    if (!ok) return ns_error_set(err, NS_ERR_INVALID, "gguf writer: file size overflows");

    uint8_t *buf = calloc(1, size);
    if (!buf) return ns_error_set(err, NS_ERR_NOMEM, "gguf writer: no memory for %zu bytes", size);
    uint8_t *p = buf;
    memcpy(p, "GGUF", 4);
    put_u32(p + 4, 3);
    put_u64(p + 8, w->n_tensors);
    put_u64(p + 16, w->n_kv);
    p += GGUF_HEADER_BYTES;
    if (w->kv_nbytes) memcpy(p, w->kv_bytes, w->kv_nbytes);
    p += w->kv_nbytes;
    size_t offset = 0;
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        size_t len = strlen(t->name);
        put_u64(p, len);
        memcpy(p + 8, t->name, len);
        p += 8 + len;
        put_u32(p, t->n_dims);
        p += 4;
        for (uint32_t d = 0; d < t->n_dims; d++, p += 8) put_u64(p, (uint64_t)t->ne[d]);
        put_u32(p, (uint32_t)t->type);
        put_u64(p + 4, offset);
        p += 12;
        memcpy(buf + data_start + offset, t->data, t->nbytes);
        offset += t->nbytes;
        pad_size(&offset); /* cannot overflow: the total was checked above */
    }
    *data = buf;
    *nbytes = size;
    return NS_OK;
}

ns_status ns_gguf_writer_write(const ns_gguf_writer *w, const char *path, ns_error *err) {
    if (!w || !path) return ns_error_set(err, NS_ERR_INVALID, "gguf writer: NULL argument");
    ns_status st = NS_OK;
    void *buf = NULL;
    size_t nbytes = 0;
    char *tmp = NULL;
    FILE *f = NULL;
    bool tmp_created = false;

    st = ns_gguf_writer_to_memory(w, &buf, &nbytes, err);
    if (st != NS_OK) goto cleanup;
    size_t plen = strlen(path);
    tmp = malloc(plen + 5);
    if (!tmp) {
        st = ns_error_set(err, NS_ERR_NOMEM, "gguf writer: no memory");
        goto cleanup;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    f = fopen(tmp, "wb");
    if (!f) {
        st = ns_error_set(err, NS_ERR_IO, "gguf writer: cannot create %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    tmp_created = true;
    if (fwrite(buf, 1, nbytes, f) != nbytes || fflush(f) != 0 || fsync(fileno(f)) != 0) {
        st = ns_error_set(err, NS_ERR_IO, "gguf writer: cannot write %zu bytes to %s: %s", nbytes, tmp,
                          strerror(errno));
        goto cleanup;
    }
    int rc = fclose(f);
    f = NULL;
    if (rc != 0) {
        st = ns_error_set(err, NS_ERR_IO, "gguf writer: cannot close %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    if (rename(tmp, path) != 0) {
        st = ns_error_set(err, NS_ERR_IO, "gguf writer: cannot rename %s to %s: %s", tmp, path,
                          strerror(errno));
        goto cleanup;
    }
    tmp_created = false;

cleanup:
    if (f) fclose(f);
    if (tmp_created) remove(tmp);
    free(tmp);
    free(buf);
    return st;
}
