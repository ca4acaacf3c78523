/* gguf.h: reader for GGUF model files (versions 2 and 3), memory-mapped, and a small
 * writer used by the tests (and tools) to produce tiny models in the same format.
 *
 * Every count, string length, array length, tensor offset and tensor size is checked
 * against the file before it is used: a truncated, corrupt or hostile file gets an
 * NS_ERR_FORMAT naming the field, the value and the limit, never a crash or an
 * out-of-bounds read. All returned pointers borrow from the ns_gguf (the mapping) and
 * stay valid until ns_gguf_close.
 *
 * Format facts (GGUF spec): header "GGUF", u32 version, u64 n_tensors, u64 n_kv
 * (v2 and v3; v1 used u32 counts and is refused); strings are u64 length + bytes (no NUL);
 * tensor data starts at the next multiple of general.alignment (default 32) after the
 * tensor infos; each tensor offset is relative to that start and aligned.
 */
#ifndef NS_GGUF_H
#define NS_GGUF_H

#include "common.h"

/* ggml tensor types that nightshift reads (numbering from ggml). */
typedef enum ns_ggml_type {
    NS_GGML_F32 = 0,
    NS_GGML_F16 = 1,
    NS_GGML_Q4_0 = 2,
    NS_GGML_Q4_1 = 3,
    NS_GGML_Q8_0 = 8,
    NS_GGML_BF16 = 30,
} ns_ggml_type;

/* Block size in elements and bytes per block; 0 for a type nightshift does not know. */
int ns_ggml_type_block_size(int type);
size_t ns_ggml_type_block_bytes(int type);
/* Name ("q4_1") or NULL for an unknown type. */
const char *ns_ggml_type_name(int type);
/* Bytes of a row of n elements; 0 if the type is unknown or n is not a multiple of the
 * block size. */
size_t ns_ggml_row_bytes(int type, int64_t n);

/* Metadata value types (GGUF spec numbering). */
typedef enum ns_gguf_vtype {
    NS_GGUF_U8 = 0, NS_GGUF_I8 = 1, NS_GGUF_U16 = 2, NS_GGUF_I16 = 3,
    NS_GGUF_U32 = 4, NS_GGUF_I32 = 5, NS_GGUF_F32 = 6, NS_GGUF_BOOL = 7,
    NS_GGUF_STRING = 8, NS_GGUF_ARRAY = 9, NS_GGUF_U64 = 10, NS_GGUF_I64 = 11,
    NS_GGUF_F64 = 12,
} ns_gguf_vtype;

/* A string inside the mapping: not NUL-terminated. */
typedef struct ns_gguf_str {
    const char *ptr;
    uint64_t len;
} ns_gguf_str;

#define NS_GGUF_MAX_DIMS 4

typedef struct ns_gguf_tensor {
    ns_gguf_str name;
    uint32_t n_dims;
    int64_t ne[NS_GGUF_MAX_DIMS]; /* ne[0] is the innermost (row) dimension; unused = 1 */
    int type;                     /* ns_ggml_type, checked to be known */
    uint64_t offset;              /* from the start of the data section */
    uint64_t nbytes;              /* checked to lie inside the file */
    const void *data;             /* borrowed, inside the mapping */
} ns_gguf_tensor;

typedef struct ns_gguf ns_gguf;

/* Opens and validates a GGUF file (read-only mmap). On success *out owns the mapping;
 * free with ns_gguf_close. Errors: NS_ERR_IO (cannot open/map), NS_ERR_FORMAT (anything
 * malformed: the message names the field, value and limit), NS_ERR_UNSUPPORTED (version,
 * tensor type), NS_ERR_NOMEM. Thread-safe to read after open. */
ns_status ns_gguf_open(const char *path, ns_gguf **out, ns_error *err);

/* Same over a caller-owned buffer, which must outlive the ns_gguf (used by fuzz tests). */
ns_status ns_gguf_open_memory(const void *data, size_t nbytes, ns_gguf **out, ns_error *err);

/* NULL-tolerant. */
void ns_gguf_close(ns_gguf *g);

uint32_t ns_gguf_version(const ns_gguf *g);
size_t ns_gguf_file_bytes(const ns_gguf *g);

/* Metadata. Keys are looked up by exact name. */
int64_t ns_gguf_n_kv(const ns_gguf *g);
ns_gguf_str ns_gguf_kv_key(const ns_gguf *g, int64_t i);
ns_gguf_vtype ns_gguf_kv_type(const ns_gguf *g, int64_t i);
/* Index of a key, or -1. */
int64_t ns_gguf_find_key(const ns_gguf *g, const char *key);

/* Typed getters. Integers convert between integer types when the value fits the target
 * (else NS_ERR_FORMAT naming key, value, limit); f32 accepts f32 and f64. NS_ERR_NOT_FOUND
 * when absent (message names the key), NS_ERR_FORMAT on a type mismatch. */
ns_status ns_gguf_get_u32(const ns_gguf *g, const char *key, uint32_t *out, ns_error *err);
ns_status ns_gguf_get_i64(const ns_gguf *g, const char *key, int64_t *out, ns_error *err);
ns_status ns_gguf_get_f32(const ns_gguf *g, const char *key, float *out, ns_error *err);
ns_status ns_gguf_get_bool(const ns_gguf *g, const char *key, bool *out, ns_error *err);
ns_status ns_gguf_get_str(const ns_gguf *g, const char *key, ns_gguf_str *out, ns_error *err);
/* Arrays: element type and count. */
ns_status ns_gguf_get_arr_info(const ns_gguf *g, const char *key, ns_gguf_vtype *elem_type,
                               uint64_t *n, ns_error *err);
/* Element i of a string array (O(1): offsets indexed at open). */
ns_status ns_gguf_get_arr_str(const ns_gguf *g, const char *key, uint64_t i, ns_gguf_str *out,
                              ns_error *err);
/* Pointer to the packed elements of a numeric array (little-endian, may be unaligned:
 * read with memcpy). */
ns_status ns_gguf_get_arr_data(const ns_gguf *g, const char *key, const void **data,
                               ns_error *err);

/* Tensors. */
int64_t ns_gguf_n_tensors(const ns_gguf *g);
const ns_gguf_tensor *ns_gguf_tensor_at(const ns_gguf *g, int64_t i);
/* By name, or NULL. */
const ns_gguf_tensor *ns_gguf_find_tensor(const ns_gguf *g, const char *name);

/* ---- writer (tests and tools): builds a GGUF v3 file in memory, then writes it ---- */
typedef struct ns_gguf_writer ns_gguf_writer;

ns_gguf_writer *ns_gguf_writer_create(void); /* NULL on OOM; free with _destroy */
void ns_gguf_writer_destroy(ns_gguf_writer *w);
/* Each adder copies its arguments. Return NS_OK or NS_ERR_NOMEM/NS_ERR_INVALID. */
ns_status ns_gguf_writer_add_u32(ns_gguf_writer *w, const char *key, uint32_t v);
ns_status ns_gguf_writer_add_i32(ns_gguf_writer *w, const char *key, int32_t v);
ns_status ns_gguf_writer_add_f32(ns_gguf_writer *w, const char *key, float v);
ns_status ns_gguf_writer_add_bool(ns_gguf_writer *w, const char *key, bool v);
ns_status ns_gguf_writer_add_str(ns_gguf_writer *w, const char *key, const char *v);
ns_status ns_gguf_writer_add_arr_str(ns_gguf_writer *w, const char *key, const char *const *v,
                                     uint64_t n);
ns_status ns_gguf_writer_add_arr_i32(ns_gguf_writer *w, const char *key, const int32_t *v,
                                     uint64_t n);
ns_status ns_gguf_writer_add_arr_f32(ns_gguf_writer *w, const char *key, const float *v,
                                     uint64_t n);
/* data holds ns_ggml_row_bytes(type, ne[0]) * ne[1] * ... bytes, already in that type. */
ns_status ns_gguf_writer_add_tensor(ns_gguf_writer *w, const char *name, int type,
                                    uint32_t n_dims, const int64_t *ne, const void *data);
/* Serializes to a malloc'd buffer (caller frees) or to a file. */
ns_status ns_gguf_writer_to_memory(const ns_gguf_writer *w, void **data, size_t *nbytes,
                                   ns_error *err);
ns_status ns_gguf_writer_write(const ns_gguf_writer *w, const char *path, ns_error *err);

#endif
