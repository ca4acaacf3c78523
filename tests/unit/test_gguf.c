/* test_gguf.c: the GGUF reader and writer (engine/gguf.c).
 *
 * Round trip through the writer; every truncation of a small file refused; byte mutations
 * of the header, kv and tensor-info region either refused or leaving every tensor inside
 * the buffer; hand-built malformed files, each one field away from a valid baseline,
 * refused with the expected code and message; the demo model's known facts.
 * Buffers handed to the reader are exactly sized mallocs so ASan catches any overread.
 */
#define _POSIX_C_SOURCE 200809L
#include "../test.h"
#include "gguf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static bool str_eq(ns_gguf_str s, const char *c) {
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

/* Copy of n bytes of p in an exactly sized malloc (n == 0: a 1-byte buffer, which the
 * caller passes with nbytes 0). */
static uint8_t *exact_copy(const void *p, size_t n) {
    uint8_t *b = malloc(n ? n : 1);
    if (b && n) memcpy(b, p, n);
    return b;
}

/* Reads every byte the reader says is part of the file: keys, values, string-array
 * elements, numeric arrays, tensor data ranges (checked to lie inside buf). Returns false
 * if some tensor lies outside. */
static bool touch_all(const ns_gguf *g, const uint8_t *buf, size_t n) {
    unsigned sum = 0;
    bool inside = true;
    for (int64_t i = 0; i < ns_gguf_n_kv(g); i++) {
        ns_gguf_str k = ns_gguf_kv_key(g, i);
        for (uint64_t j = 0; j < k.len; j++) sum += (unsigned char)k.ptr[j];
        char key[128];
        if (k.len >= sizeof key || memchr(k.ptr, 0, (size_t)k.len)) continue;
        memcpy(key, k.ptr, (size_t)k.len);
        key[k.len] = '\0';
        ns_error err;
        ns_gguf_vtype et;
        uint64_t cnt;
        ns_gguf_str s;
        uint32_t u;
        int64_t v;
        float f;
        bool b;
        (void)ns_gguf_get_u32(g, key, &u, &err);
        (void)ns_gguf_get_i64(g, key, &v, &err);
        (void)ns_gguf_get_f32(g, key, &f, &err);
        (void)ns_gguf_get_bool(g, key, &b, &err);
        if (ns_gguf_get_str(g, key, &s, &err) == NS_OK)
            for (uint64_t j = 0; j < s.len; j++) sum += (unsigned char)s.ptr[j];
        if (ns_gguf_get_arr_info(g, key, &et, &cnt, &err) != NS_OK) continue;
        if (et == NS_GGUF_STRING) {
            for (uint64_t e = 0; e < cnt; e++) {
                if (ns_gguf_get_arr_str(g, key, e, &s, &err) != NS_OK) return false;
                for (uint64_t j = 0; j < s.len; j++) sum += (unsigned char)s.ptr[j];
            }
        } else {
            const void *d;
            if (ns_gguf_get_arr_data(g, key, &d, &err) != NS_OK) return false;
            size_t esz = (et == NS_GGUF_U8 || et == NS_GGUF_I8 || et == NS_GGUF_BOOL) ? 1
                         : (et == NS_GGUF_U16 || et == NS_GGUF_I16)                    ? 2
                         : (et == NS_GGUF_U64 || et == NS_GGUF_I64 || et == NS_GGUF_F64) ? 8
                                                                                          : 4;
            for (uint64_t j = 0; j < cnt * esz; j++) sum += ((const uint8_t *)d)[j];
        }
    }
    for (int64_t i = 0; i < ns_gguf_n_tensors(g); i++) {
        const ns_gguf_tensor *t = ns_gguf_tensor_at(g, i);
        uintptr_t lo = (uintptr_t)buf, hi = lo + n, p = (uintptr_t)t->data;
        if (p < lo || p > hi || t->nbytes > hi - p) {
            inside = false;
            continue;
        }
        sum += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
    }
    volatile unsigned sink = sum;
    (void)sink;
    return inside;
}

/* A small valid file: a few kvs of each kind and two tensors, the last of which ends
 * exactly at the end of the file (32 bytes of f32), so every proper prefix is invalid. */
static void small_file(void **buf, size_t *n) {
    ns_gguf_writer *w = ns_gguf_writer_create();
    NS_ASSERT(w);
    const char *toks[] = {"<s>", "", "hello"};
    int32_t ints[] = {1, -2, 3};
    float fl[] = {0.25f, -1.0f};
    NS_ASSERT(ns_gguf_writer_add_str(w, "general.architecture", "llama") == NS_OK);
    NS_ASSERT(ns_gguf_writer_add_u32(w, "general.alignment", 32) == NS_OK);
    NS_ASSERT(ns_gguf_writer_add_u32(w, "llama.block_count", 2) == NS_OK);
    NS_ASSERT(ns_gguf_writer_add_f32(w, "llama.eps", 1e-5f) == NS_OK);
    NS_ASSERT(ns_gguf_writer_add_bool(w, "t.flag", true) == NS_OK);
    NS_ASSERT(ns_gguf_writer_add_arr_str(w, "tokenizer.ggml.tokens", toks, 3) == NS_OK);
    NS_ASSERT(ns_gguf_writer_add_arr_i32(w, "t.ints", ints, 3) == NS_OK);
    NS_ASSERT(ns_gguf_writer_add_arr_f32(w, "t.floats", fl, 2) == NS_OK);
    uint8_t q[34] = {0}, f[32] = {0};
    for (int i = 0; i < 34; i++) q[i] = (uint8_t)(i * 7);
    for (int i = 0; i < 32; i++) f[i] = (uint8_t)(200 - i);
    int64_t ne_q[1] = {32}, ne_f[2] = {4, 2};
    NS_ASSERT(ns_gguf_writer_add_tensor(w, "a.q8", NS_GGML_Q8_0, 1, ne_q, q) == NS_OK);
    NS_ASSERT(ns_gguf_writer_add_tensor(w, "b.f32", NS_GGML_F32, 2, ne_f, f) == NS_OK);
    ns_error err;
    NS_ASSERT(ns_gguf_writer_to_memory(w, buf, n, &err) == NS_OK);
    ns_gguf_writer_destroy(w);
}

/* ---- type helpers ---- */

NS_TEST(test_gguf_type_helpers) {
    CHECK_EQ_INT(ns_ggml_type_block_size(NS_GGML_F32), 1);
    CHECK_EQ_INT(ns_ggml_type_block_bytes(NS_GGML_F32), 4);
    CHECK_EQ_INT(ns_ggml_type_block_size(NS_GGML_F16), 1);
    CHECK_EQ_INT(ns_ggml_type_block_bytes(NS_GGML_F16), 2);
    CHECK_EQ_INT(ns_ggml_type_block_size(NS_GGML_BF16), 1);
    CHECK_EQ_INT(ns_ggml_type_block_bytes(NS_GGML_BF16), 2);
    CHECK_EQ_INT(ns_ggml_type_block_size(NS_GGML_Q8_0), 32);
    CHECK_EQ_INT(ns_ggml_type_block_bytes(NS_GGML_Q8_0), 34);
    CHECK_EQ_INT(ns_ggml_type_block_size(NS_GGML_Q4_0), 32);
    CHECK_EQ_INT(ns_ggml_type_block_bytes(NS_GGML_Q4_0), 18);
    CHECK_EQ_INT(ns_ggml_type_block_size(NS_GGML_Q4_1), 32);
    CHECK_EQ_INT(ns_ggml_type_block_bytes(NS_GGML_Q4_1), 20);
    CHECK_EQ_INT(ns_ggml_type_block_size(7), 0);
    CHECK_EQ_INT(ns_ggml_type_block_bytes(-1), 0);
    CHECK(ns_ggml_type_name(7) == NULL);
    CHECK(strcmp(ns_ggml_type_name(NS_GGML_Q4_1), "q4_1") == 0);
    CHECK(strcmp(ns_ggml_type_name(NS_GGML_BF16), "bf16") == 0);
    CHECK_EQ_INT(ns_ggml_row_bytes(NS_GGML_Q4_1, 64), 40);
    CHECK_EQ_INT(ns_ggml_row_bytes(NS_GGML_Q8_0, 576), 18 * 34);
    CHECK_EQ_INT(ns_ggml_row_bytes(NS_GGML_Q4_0, 33), 0);
    CHECK_EQ_INT(ns_ggml_row_bytes(NS_GGML_F32, 3), 12);
    CHECK_EQ_INT(ns_ggml_row_bytes(NS_GGML_F32, -1), 0);
    CHECK_EQ_INT(ns_ggml_row_bytes(99, 32), 0);
}

/* ---- round trip ---- */

NS_TEST(test_gguf_round_trip) {
    ns_error err;
    ns_error *e = &err; /* CHECK_STATUS_OK wants a pointer it can test */
    ns_gguf_writer *w = ns_gguf_writer_create();
    CHECK(w != NULL);
    if (!w) return;
    const char *strs[] = {"a", "", "<|im_start|>", "h\xc3\xa9llo"};
    int32_t ints[] = {1, -2, INT32_MAX, INT32_MIN};
    float fls[] = {0.5f, -1.0f, 3.25e-7f};
    CHECK_STATUS_OK(ns_gguf_writer_add_str(w, "general.architecture", "llama"), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_u32(w, "general.alignment", 32), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_u32(w, "t.u32", 4000000000u), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_i32(w, "t.i32", -5), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_f32(w, "t.f32", 1.5f), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_bool(w, "t.true", true), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_bool(w, "t.false", false), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_str(w, "t.empty", ""), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_arr_str(w, "t.strs", strs, 4), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_arr_str(w, "t.strs0", NULL, 0), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_arr_i32(w, "t.ints", ints, 4), e);
    CHECK_STATUS_OK(ns_gguf_writer_add_arr_f32(w, "t.floats", fls, 3), e);

    /* writer refusals leave the writer unchanged */
    CHECK_EQ_INT(ns_gguf_writer_add_u32(w, "t.u32", 1), NS_ERR_INVALID);
    CHECK_EQ_INT(ns_gguf_writer_add_u32(w, "general.alignment", 64), NS_ERR_INVALID);
    CHECK_EQ_INT(ns_gguf_writer_add_str(w, "t.null", NULL), NS_ERR_INVALID);
    CHECK_EQ_INT(ns_gguf_writer_add_u32(w, NULL, 1), NS_ERR_INVALID);

    /* one tensor of each type, 1 to 4 dims, random bytes */
    struct { const char *name; int type; uint32_t n_dims; int64_t ne[4]; } ts[] = {
        {"t.f32", NS_GGML_F32, 2, {3, 2, 1, 1}},
        {"t.f16", NS_GGML_F16, 1, {5, 1, 1, 1}},
        {"t.bf16", NS_GGML_BF16, 3, {2, 2, 2, 1}},
        {"t.q8_0", NS_GGML_Q8_0, 2, {64, 3, 1, 1}},
        {"t.q4_0", NS_GGML_Q4_0, 4, {32, 1, 2, 2}},
        {"blk.0.ffn_down.weight", NS_GGML_Q4_1, 2, {96, 2, 1, 1}},
    };
    enum { N_T = sizeof ts / sizeof ts[0] };
    uint8_t *tdata[N_T];
    size_t tbytes[N_T];
    ns_test_rng rng = {42};
    for (int i = 0; i < N_T; i++) {
        size_t rows = (size_t)(ts[i].ne[1] * ts[i].ne[2] * ts[i].ne[3]);
        tbytes[i] = ns_ggml_row_bytes(ts[i].type, ts[i].ne[0]) * rows;
        tdata[i] = malloc(tbytes[i]);
        NS_ASSERT(tdata[i]);
        for (size_t j = 0; j < tbytes[i]; j++) tdata[i][j] = (uint8_t)ns_test_rng_u64(&rng);
        CHECK_STATUS_OK(ns_gguf_writer_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].ne,
                                                  tdata[i]),
                        e);
    }
    int64_t bad_ne[2] = {33, 1};
    CHECK_EQ_INT(ns_gguf_writer_add_tensor(w, "bad", NS_GGML_Q8_0, 2, bad_ne, tdata[0]), NS_ERR_INVALID);
    CHECK_EQ_INT(ns_gguf_writer_add_tensor(w, "bad", 7, 2, ts[0].ne, tdata[0]), NS_ERR_INVALID);
    CHECK_EQ_INT(ns_gguf_writer_add_tensor(w, "bad", NS_GGML_F32, 0, ts[0].ne, tdata[0]), NS_ERR_INVALID);
    CHECK_EQ_INT(ns_gguf_writer_add_tensor(w, "bad", NS_GGML_F32, 5, ts[0].ne, tdata[0]), NS_ERR_INVALID);
    CHECK_EQ_INT(ns_gguf_writer_add_tensor(w, "t.f32", NS_GGML_F32, 2, ts[0].ne, tdata[0]), NS_ERR_INVALID);

    char path[512];
    snprintf(path, sizeof path, "%s/round_trip.gguf", ns_test_tmpdir());
    CHECK_STATUS_OK(ns_gguf_writer_write(w, path, &err), e);
    void *mem = NULL;
    size_t mem_n = 0;
    CHECK_STATUS_OK(ns_gguf_writer_to_memory(w, &mem, &mem_n, &err), e);
    ns_gguf_writer_destroy(w);

    /* the file on disk is the in-memory serialization */
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (f) {
        uint8_t *disk = malloc(mem_n + 1);
        NS_ASSERT(disk);
        size_t got = fread(disk, 1, mem_n + 1, f);
        fclose(f);
        CHECK_EQ_INT(got, mem_n);
        CHECK(got == mem_n && memcmp(disk, mem, mem_n) == 0);
        free(disk);
    }

    ns_gguf *g = NULL;
    CHECK_STATUS_OK(ns_gguf_open(path, &g, &err), e);
    if (g) {
        CHECK_EQ_INT(ns_gguf_version(g), 3);
        CHECK_EQ_INT(ns_gguf_file_bytes(g), mem_n);
        CHECK_EQ_INT(ns_gguf_n_kv(g), 12);
        CHECK(str_eq(ns_gguf_kv_key(g, 0), "general.architecture"));
        CHECK(str_eq(ns_gguf_kv_key(g, 11), "t.floats"));
        CHECK_EQ_INT(ns_gguf_kv_type(g, 2), NS_GGUF_U32);
        CHECK_EQ_INT(ns_gguf_kv_type(g, 8), NS_GGUF_ARRAY);
        CHECK_EQ_INT(ns_gguf_find_key(g, "t.i32"), 3);
        CHECK_EQ_INT(ns_gguf_find_key(g, "t.missing"), -1);

        ns_gguf_str s;
        uint32_t u;
        int64_t v;
        float fv;
        bool b;
        CHECK_STATUS_OK(ns_gguf_get_str(g, "general.architecture", &s, &err), e);
        CHECK(str_eq(s, "llama"));
        CHECK_STATUS_OK(ns_gguf_get_str(g, "t.empty", &s, &err), e);
        CHECK_EQ_INT(s.len, 0);
        CHECK_STATUS_OK(ns_gguf_get_u32(g, "general.alignment", &u, &err), e);
        CHECK_EQ_INT(u, 32);
        CHECK_STATUS_OK(ns_gguf_get_u32(g, "t.u32", &u, &err), e);
        CHECK_EQ_INT(u, 4000000000u);
        CHECK_STATUS_OK(ns_gguf_get_i64(g, "t.u32", &v, &err), e);
        CHECK_EQ_INT(v, 4000000000ll);
        CHECK_STATUS_OK(ns_gguf_get_i64(g, "t.i32", &v, &err), e);
        CHECK_EQ_INT(v, -5);
        CHECK_STATUS_OK(ns_gguf_get_f32(g, "t.f32", &fv, &err), e);
        CHECK(fv == 1.5f);
        CHECK_STATUS_OK(ns_gguf_get_bool(g, "t.true", &b, &err), e);
        CHECK(b);
        CHECK_STATUS_OK(ns_gguf_get_bool(g, "t.false", &b, &err), e);
        CHECK(!b);

        /* conversions and mismatches */
        CHECK_EQ_INT(ns_gguf_get_u32(g, "t.i32", &u, &err), NS_ERR_FORMAT);
        CHECK(strstr(err.msg, "t.i32") && strstr(err.msg, "-5"));
        CHECK_EQ_INT(ns_gguf_get_f32(g, "t.u32", &fv, &err), NS_ERR_FORMAT);
        CHECK(strstr(err.msg, "u32") != NULL);
        CHECK_EQ_INT(ns_gguf_get_str(g, "t.u32", &s, &err), NS_ERR_FORMAT);
        CHECK_EQ_INT(ns_gguf_get_bool(g, "t.u32", &b, &err), NS_ERR_FORMAT);
        CHECK_EQ_INT(ns_gguf_get_u32(g, "t.strs", &u, &err), NS_ERR_FORMAT);
        CHECK_EQ_INT(ns_gguf_get_u32(g, "nope.key", &u, &err), NS_ERR_NOT_FOUND);
        CHECK(strstr(err.msg, "nope.key") != NULL);

        ns_gguf_vtype et;
        uint64_t n;
        CHECK_STATUS_OK(ns_gguf_get_arr_info(g, "t.strs", &et, &n, &err), e);
        CHECK_EQ_INT(et, NS_GGUF_STRING);
        CHECK_EQ_INT(n, 4);
        for (uint64_t i = 0; i < 4; i++) {
            CHECK_STATUS_OK(ns_gguf_get_arr_str(g, "t.strs", i, &s, &err), e);
            CHECK(str_eq(s, strs[i]));
        }
        CHECK_EQ_INT(ns_gguf_get_arr_str(g, "t.strs", 4, &s, &err), NS_ERR_INVALID);
        CHECK(strstr(err.msg, "index 4") != NULL);
        CHECK_EQ_INT(ns_gguf_get_arr_str(g, "t.ints", 0, &s, &err), NS_ERR_FORMAT);
        CHECK_STATUS_OK(ns_gguf_get_arr_info(g, "t.strs0", &et, &n, &err), e);
        CHECK_EQ_INT(et, NS_GGUF_STRING);
        CHECK_EQ_INT(n, 0);
        CHECK_EQ_INT(ns_gguf_get_arr_str(g, "t.strs0", 0, &s, &err), NS_ERR_INVALID);

        const void *d;
        CHECK_STATUS_OK(ns_gguf_get_arr_info(g, "t.ints", &et, &n, &err), e);
        CHECK_EQ_INT(et, NS_GGUF_I32);
        CHECK_EQ_INT(n, 4);
        CHECK_STATUS_OK(ns_gguf_get_arr_data(g, "t.ints", &d, &err), e);
        int32_t ri[4];
        memcpy(ri, d, sizeof ri);
        CHECK(memcmp(ri, ints, sizeof ri) == 0);
        CHECK_STATUS_OK(ns_gguf_get_arr_info(g, "t.floats", &et, &n, &err), e);
        CHECK_EQ_INT(et, NS_GGUF_F32);
        CHECK_EQ_INT(n, 3);
        CHECK_STATUS_OK(ns_gguf_get_arr_data(g, "t.floats", &d, &err), e);
        float rf[3];
        memcpy(rf, d, sizeof rf);
        CHECK(memcmp(rf, fls, sizeof rf) == 0);
        CHECK_EQ_INT(ns_gguf_get_arr_data(g, "t.strs", &d, &err), NS_ERR_FORMAT);
        CHECK_EQ_INT(ns_gguf_get_arr_info(g, "t.u32", &et, &n, &err), NS_ERR_FORMAT);

        CHECK_EQ_INT(ns_gguf_n_tensors(g), N_T);
        CHECK(ns_gguf_tensor_at(g, N_T) == NULL);
        CHECK(ns_gguf_tensor_at(g, -1) == NULL);
        CHECK(ns_gguf_find_tensor(g, "missing") == NULL);
        for (int i = 0; i < N_T; i++) {
            const ns_gguf_tensor *t = ns_gguf_find_tensor(g, ts[i].name);
            CHECK(t != NULL);
            if (!t) continue;
            CHECK(t == ns_gguf_tensor_at(g, i));
            CHECK(str_eq(t->name, ts[i].name));
            CHECK_EQ_INT(t->type, ts[i].type);
            CHECK_EQ_INT(t->n_dims, ts[i].n_dims);
            for (int dd = 0; dd < 4; dd++) CHECK_EQ_INT(t->ne[dd], ts[i].ne[dd]);
            CHECK_EQ_INT(t->nbytes, tbytes[i]);
            CHECK_EQ_INT(t->offset % 32, 0);
            CHECK(memcmp(t->data, tdata[i], tbytes[i]) == 0);
        }
        ns_gguf_close(g);
    }

    /* the same bytes through the memory entry point: data aligned within the buffer */
    g = NULL;
    CHECK_STATUS_OK(ns_gguf_open_memory(mem, mem_n, &g, &err), e);
    if (g) {
        for (int64_t i = 0; i < ns_gguf_n_tensors(g); i++) {
            const ns_gguf_tensor *t = ns_gguf_tensor_at(g, i);
            CHECK_EQ_INT(((const uint8_t *)t->data - (const uint8_t *)mem) % 32, 0);
        }
        CHECK(touch_all(g, mem, mem_n));
    }
    ns_gguf_close(g);
    ns_gguf_close(NULL);
    free(mem);
    for (int i = 0; i < N_T; i++) free(tdata[i]);
}

NS_TEST(test_gguf_open_file_errors) {
    ns_error err;
    ns_gguf *g = (ns_gguf *)&err; /* must be reset to NULL on failure */
    char path[512];
    snprintf(path, sizeof path, "%s/does-not-exist.gguf", ns_test_tmpdir());
    CHECK_EQ_INT(ns_gguf_open(path, &g, &err), NS_ERR_IO);
    CHECK(g == NULL);
    CHECK(strstr(err.msg, "does-not-exist.gguf") != NULL);

    /* an empty file and a truncated file: format errors naming the path */
    snprintf(path, sizeof path, "%s/empty.gguf", ns_test_tmpdir());
    FILE *f = fopen(path, "wb");
    NS_ASSERT(f);
    fclose(f);
    CHECK_EQ_INT(ns_gguf_open(path, &g, &err), NS_ERR_FORMAT);
    CHECK(strstr(err.msg, "empty.gguf") != NULL);

    void *buf;
    size_t n;
    small_file(&buf, &n);
    snprintf(path, sizeof path, "%s/cut.gguf", ns_test_tmpdir());
    f = fopen(path, "wb");
    NS_ASSERT(f);
    CHECK_EQ_INT(fwrite(buf, 1, n - 1, f), n - 1);
    CHECK_EQ_INT(fclose(f), 0);
    CHECK_EQ_INT(ns_gguf_open(path, &g, &err), NS_ERR_FORMAT);
    CHECK(strstr(err.msg, "cut.gguf") && strstr(err.msg, "runs past the end"));
    free(buf);

    /* a directory is not a model */
    CHECK_EQ_INT(ns_gguf_open(ns_test_tmpdir(), &g, &err), NS_ERR_IO);
}

/* ---- truncation and mutation ---- */

NS_TEST(test_gguf_truncation) {
    void *buf;
    size_t n;
    small_file(&buf, &n);
    ns_error err;
    ns_error *e = &err; /* CHECK_STATUS_OK wants a pointer it can test */
    ns_gguf *g = NULL;
    CHECK_STATUS_OK(ns_gguf_open_memory(buf, n, &g, &err), e);
    if (g) { /* the last tensor ends exactly at the end of the file */
        const ns_gguf_tensor *t = ns_gguf_tensor_at(g, ns_gguf_n_tensors(g) - 1);
        CHECK((const uint8_t *)t->data + t->nbytes == (const uint8_t *)buf + n);
        ns_gguf_close(g);
    }
    for (size_t len = 0; len < n; len++) {
        uint8_t *p = exact_copy(buf, len);
        NS_ASSERT(p);
        ns_error_clear(&err);
        g = NULL;
        ns_status st = ns_gguf_open_memory(p, len, &g, &err);
        CHECK_MSG(st != NS_OK && err.code == st && err.msg[0] && g == NULL,
                  "prefix of %zu of %zu bytes: status %d (%s)", len, n, st, err.msg);
        ns_gguf_close(g);
        free(p);
    }
    free(buf);
}

NS_TEST(test_gguf_mutation) {
    void *buf;
    size_t n;
    small_file(&buf, &n);
    ns_error err;
    ns_error *e = &err; /* CHECK_STATUS_OK wants a pointer it can test */
    ns_gguf *g = NULL;
    CHECK_STATUS_OK(ns_gguf_open_memory(buf, n, &g, &err), e);
    if (!g) {
        free(buf);
        return;
    }
    size_t data_start = (size_t)((const uint8_t *)ns_gguf_tensor_at(g, 0)->data - (const uint8_t *)buf);
    ns_gguf_close(g);

    ns_test_rng rng = {1234};
    int n_ok = 0, n_fail = 0;
    for (size_t pos = 0; pos < data_start; pos++) {
        for (int variant = 0; variant < 8; variant++) {
            uint8_t *p = exact_copy(buf, n);
            NS_ASSERT(p);
            switch (variant) {
            case 0: p[pos] = 0xFF; break;
            case 1: p[pos] = 0x00; break;
            case 2: p[pos] = 0x7F; break;
            case 3: case 4: case 5: p[pos] = (uint8_t)ns_test_rng_u64(&rng); break;
            case 6: /* a whole u64 of 0xFF: huge counts and lengths */
                for (size_t j = pos; j < pos + 8 && j < n; j++) p[j] = 0xFF;
                break;
            default: /* two random bytes anywhere in the region */
                p[pos] = (uint8_t)ns_test_rng_u64(&rng);
                p[ns_test_rng_u64(&rng) % data_start] = (uint8_t)ns_test_rng_u64(&rng);
                break;
            }
            g = NULL;
            ns_error_clear(&err);
            ns_status st = ns_gguf_open_memory(p, n, &g, &err);
            if (st == NS_OK) {
                n_ok++;
                CHECK_MSG(touch_all(g, p, n), "pos %zu variant %d: tensor outside the buffer", pos, variant);
            } else {
                n_fail++;
                CHECK_MSG(err.code == st && err.msg[0] && g == NULL, "pos %zu variant %d: status %d, msg '%s'",
                          pos, variant, st, err.msg);
            }
            ns_gguf_close(g);
            free(p);
        }
    }
    CHECK(n_ok > 0 && n_fail > 0); /* both outcomes were exercised */
    free(buf);
}

/* ---- hand-built malformed files ---- */

typedef struct tbuf {
    uint8_t *p;
    size_t n, cap;
} tbuf;

static void tb_bytes(tbuf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        NS_ASSERT(b->p);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void tb_u32(tbuf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    tb_bytes(b, x, 4);
}
static void tb_u64(tbuf *b, uint64_t v) {
    tb_u32(b, (uint32_t)v);
    tb_u32(b, (uint32_t)(v >> 32));
}
static void tb_str_len(tbuf *b, const char *s, uint64_t len) { /* len: the declared length */
    tb_u64(b, len);
    tb_bytes(b, s, strlen(s));
}
static void tb_str(tbuf *b, const char *s) { tb_str_len(b, s, strlen(s)); }

/* A valid baseline file; each field, changed alone, makes one malformed case.
 * kvs: general.architecture = "llama", general.alignment = 32, test.value = u32 7.
 * tensors: "a" f32 {32, 2} at 0 (256 bytes), "b" q8_0 {32} at 256 (34 bytes). */
typedef struct fcase {
    char magic[5];
    uint32_t version;
    uint64_t n_kv_add, n_tensors_add; /* added to the true counts */
    uint64_t arch_len;                /* declared length of "llama" */
    uint64_t key_len;                 /* declared length of the key "test.value" */
    uint32_t vtype;                   /* value type of test.value */
    bool has_align;
    uint32_t align;
    bool dup_key, nested_array;
    uint32_t n_dims0;                 /* tensor a */
    uint64_t ne0_1;                   /* tensor a, ne[1] */
    const char *name1;                /* tensor b */
    uint32_t type1;
    uint64_t ne1_0;
    uint64_t offset1;
    uint64_t data_bytes;
} fcase;

static fcase fcase_base(void) {
    fcase c = {.magic = "GGUF", .version = 3, .arch_len = 5, .key_len = 10, .vtype = NS_GGUF_U32,
               .has_align = true, .align = 32, .n_dims0 = 2, .ne0_1 = 2, .name1 = "b",
               .type1 = NS_GGML_Q8_0, .ne1_0 = 32, .offset1 = 256, .data_bytes = 256 + 34};
    return c;
}

static void fcase_build(const fcase *c, tbuf *b) {
    b->n = 0;
    tb_bytes(b, c->magic, 4);
    tb_u32(b, c->version);
    tb_u64(b, 2 + c->n_tensors_add);
    tb_u64(b, 3 + (c->dup_key ? 1 : 0) + (c->nested_array ? 1 : 0) + c->n_kv_add);
    tb_str(b, "general.architecture");
    tb_u32(b, NS_GGUF_STRING);
    tb_str_len(b, "llama", c->arch_len);
    if (c->has_align) {
        tb_str(b, "general.alignment");
        tb_u32(b, NS_GGUF_U32);
        tb_u32(b, c->align);
    } else {
        tb_str(b, "general.name");
        tb_u32(b, NS_GGUF_STRING);
        tb_str(b, "x");
    }
    tb_str_len(b, "test.value", c->key_len);
    tb_u32(b, c->vtype);
    tb_u32(b, 7);
    if (c->dup_key) {
        tb_str(b, "test.value");
        tb_u32(b, NS_GGUF_U32);
        tb_u32(b, 8);
    }
    if (c->nested_array) {
        tb_str(b, "test.nested");
        tb_u32(b, NS_GGUF_ARRAY);
        tb_u32(b, NS_GGUF_ARRAY);
        tb_u64(b, 1);
        tb_u32(b, NS_GGUF_U32);
        tb_u64(b, 1);
        tb_u32(b, 5);
    }
    tb_str(b, "a");
    tb_u32(b, c->n_dims0);
    for (uint32_t d = 0; d < c->n_dims0; d++) tb_u64(b, d == 0 ? 32 : d == 1 ? c->ne0_1 : 1);
    tb_u32(b, NS_GGML_F32);
    tb_u64(b, 0);
    tb_str(b, c->name1);
    tb_u32(b, 1);
    tb_u64(b, c->ne1_0);
    tb_u32(b, c->type1);
    tb_u64(b, c->offset1);
    uint8_t zero[64] = {0};
    while (b->n % 32) tb_bytes(b, zero, 1);
    for (uint64_t i = 0; i < c->data_bytes; i++) tb_bytes(b, zero, 1);
}

/* Opens the case from an exactly sized buffer and checks code and message substrings. */
static void expect_fail(const char *what, const fcase *c, ns_status code, const char *sub1,
                        const char *sub2) {
    tbuf b = {0};
    fcase_build(c, &b);
    uint8_t *p = exact_copy(b.p, b.n);
    NS_ASSERT(p);
    ns_error err;
    ns_error_clear(&err);
    ns_gguf *g = NULL;
    ns_status st = ns_gguf_open_memory(p, b.n, &g, &err);
    CHECK_MSG(st == code && err.code == code, "%s: status %d (want %d): %s", what, st, code, err.msg);
    CHECK_MSG(strstr(err.msg, sub1) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, sub1);
    CHECK_MSG(!sub2 || strstr(err.msg, sub2) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, sub2);
    CHECK(g == NULL);
    ns_gguf_close(g);
    free(p);
    free(b.p);
}

NS_TEST(test_gguf_handmade_baseline) {
    fcase c = fcase_base();
    tbuf b = {0};
    fcase_build(&c, &b);
    uint8_t *p = exact_copy(b.p, b.n);
    ns_error err;
    ns_error *e = &err; /* CHECK_STATUS_OK wants a pointer it can test */
    ns_gguf *g = NULL;
    CHECK_STATUS_OK(ns_gguf_open_memory(p, b.n, &g, &err), e);
    if (g) {
        CHECK_EQ_INT(ns_gguf_n_kv(g), 3);
        CHECK_EQ_INT(ns_gguf_n_tensors(g), 2);
        const ns_gguf_tensor *t = ns_gguf_find_tensor(g, "b");
        CHECK(t && t->type == NS_GGML_Q8_0 && t->nbytes == 34 && t->offset == 256);
        uint32_t v;
        CHECK_STATUS_OK(ns_gguf_get_u32(g, "test.value", &v, &err), e);
        CHECK_EQ_INT(v, 7);
    }
    ns_gguf_close(g);
    free(p);

    /* version 2 reads the same */
    c.version = 2;
    fcase_build(&c, &b);
    p = exact_copy(b.p, b.n);
    g = NULL;
    CHECK_STATUS_OK(ns_gguf_open_memory(p, b.n, &g, &err), e);
    if (g) CHECK_EQ_INT(ns_gguf_version(g), 2);
    ns_gguf_close(g);
    free(p);

    /* no general.alignment: the default 32 */
    c = fcase_base();
    c.has_align = false;
    fcase_build(&c, &b);
    p = exact_copy(b.p, b.n);
    g = NULL;
    CHECK_STATUS_OK(ns_gguf_open_memory(p, b.n, &g, &err), e);
    ns_gguf_close(g);
    free(p);
    free(b.p);
}

NS_TEST(test_gguf_malformed) {
    fcase c;
    c = fcase_base(); memcpy(c.magic, "GGUX", 4);
    expect_fail("bad magic", &c, NS_ERR_FORMAT, "magic", NULL);
    c = fcase_base(); c.version = 1;
    expect_fail("version 1", &c, NS_ERR_UNSUPPORTED, "version 1 ", NULL);
    c = fcase_base(); c.version = 99;
    expect_fail("version 99", &c, NS_ERR_UNSUPPORTED, "version 99", NULL);
    c = fcase_base(); c.version = 0x03000000u;
    expect_fail("big-endian", &c, NS_ERR_UNSUPPORTED, "big-endian", NULL);
    c = fcase_base(); c.n_kv_add = 1ull << 40;
    expect_fail("huge n_kv", &c, NS_ERR_FORMAT, "n_kv 1099511627779", "exceeds the limit");
    c = fcase_base(); c.n_kv_add = UINT64_MAX - 3; /* n_kv = 2^64-1 */
    expect_fail("n_kv 2^64-1", &c, NS_ERR_FORMAT, "n_kv 18446744073709551615", "exceeds the limit");
    c = fcase_base(); c.n_tensors_add = 1ull << 50;
    expect_fail("huge n_tensors", &c, NS_ERR_FORMAT, "n_tensors", "exceeds the limit");
    c = fcase_base(); c.key_len = 1ull << 60;
    expect_fail("huge key length", &c, NS_ERR_FORMAT, "key length 1152921504606846976", "runs past the end");
    c = fcase_base(); c.arch_len = UINT64_MAX;
    expect_fail("huge string length", &c, NS_ERR_FORMAT, "'general.architecture'", "string length 18446744073709551615");
    c = fcase_base(); c.vtype = 13;
    expect_fail("unknown value type", &c, NS_ERR_FORMAT, "'test.value'", "unknown value type 13");
    c = fcase_base(); c.vtype = 0xFFFFFFFFu;
    expect_fail("value type 2^32-1", &c, NS_ERR_FORMAT, "'test.value'", "unknown value type 4294967295");
    c = fcase_base(); c.dup_key = true;
    expect_fail("duplicate key", &c, NS_ERR_FORMAT, "duplicate key 'test.value'", NULL);
    c = fcase_base(); c.nested_array = true;
    expect_fail("array of arrays", &c, NS_ERR_UNSUPPORTED, "'test.nested'", "arrays of arrays");
    c = fcase_base(); c.n_dims0 = 0;
    expect_fail("n_dims 0", &c, NS_ERR_FORMAT, "tensor 'a'", "n_dims 0 outside 1..4");
    c = fcase_base(); c.n_dims0 = 5;
    expect_fail("n_dims 5", &c, NS_ERR_FORMAT, "tensor 'a'", "n_dims 5 outside 1..4");
    c = fcase_base(); c.ne0_1 = 0;
    expect_fail("ne 0", &c, NS_ERR_FORMAT, "tensor 'a'", "ne[1] = 0");
    c = fcase_base(); c.ne0_1 = 1ull << 62;
    expect_fail("element overflow", &c, NS_ERR_FORMAT, "tensor 'a'", "overflows");
    c = fcase_base(); c.ne0_1 = 1ull << 57; /* 2^62 elements fit in int64, 2^64 bytes do not */
    expect_fail("byte overflow", &c, NS_ERR_FORMAT, "tensor 'a'", "byte size overflows");
    c = fcase_base(); c.type1 = 7;
    expect_fail("unknown tensor type", &c, NS_ERR_UNSUPPORTED, "tensor 'b'", "type 7");
    c = fcase_base(); c.ne1_0 = 33;
    expect_fail("ne[0] not a block multiple", &c, NS_ERR_FORMAT, "tensor 'b'",
                "ne[0] = 33 is not a multiple of the block size 32");
    c = fcase_base(); c.offset1 = 260;
    expect_fail("misaligned offset", &c, NS_ERR_FORMAT, "tensor 'b'",
                "offset 260 is not a multiple of the alignment 32");
    c = fcase_base(); c.data_bytes = 256 + 20;
    expect_fail("tensor past end", &c, NS_ERR_FORMAT, "tensor 'b': data [offset 256, 34 bytes]",
                "runs past the end of the file (file has 276 data bytes)");
    c = fcase_base(); c.offset1 = UINT64_MAX - 31;
    expect_fail("offset near 2^64", &c, NS_ERR_FORMAT, "tensor 'b'", "runs past the end");
    c = fcase_base(); c.name1 = "a";
    expect_fail("duplicate tensor", &c, NS_ERR_FORMAT, "duplicate tensor name 'a'", NULL);
    c = fcase_base(); c.align = 0;
    expect_fail("alignment 0", &c, NS_ERR_FORMAT, "general.alignment 0", "power of two");
    c = fcase_base(); c.align = 48;
    expect_fail("alignment 48", &c, NS_ERR_FORMAT, "general.alignment 48", "power of two");
    c = fcase_base(); c.align = 1u << 31;
    expect_fail("alignment 2^31", &c, NS_ERR_FORMAT, "data section starts at byte 2147483648", NULL);
}

/* ---- the demo model ---- */

NS_TEST(test_gguf_demo_model) {
    const char *path = ns_test_demo_model();
    if (!path) SKIP("demo model not present (make model)");
    ns_error err;
    ns_error *e = &err; /* CHECK_STATUS_OK wants a pointer it can test */
    ns_gguf *g = NULL;
    CHECK_STATUS_OK(ns_gguf_open(path, &g, &err), e);
    if (!g) return;
    CHECK_EQ_INT(ns_gguf_version(g), 3);
    CHECK_EQ_INT(ns_gguf_n_tensors(g), 272);
    ns_gguf_str s;
    CHECK_STATUS_OK(ns_gguf_get_str(g, "general.architecture", &s, &err), e);
    CHECK(str_eq(s, "llama"));
    uint32_t u;
    CHECK_STATUS_OK(ns_gguf_get_u32(g, "llama.block_count", &u, &err), e);
    CHECK_EQ_INT(u, 30);

    const ns_gguf_tensor *t = ns_gguf_find_tensor(g, "token_embd.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_EQ_INT(t->type, NS_GGML_Q8_0);
        CHECK_EQ_INT(t->n_dims, 2);
        CHECK_EQ_INT(t->ne[0], 576);
        CHECK_EQ_INT(t->ne[1], 49152);
        CHECK_EQ_INT(t->nbytes, ns_ggml_row_bytes(NS_GGML_Q8_0, 576) * 49152);
    }
    t = ns_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    CHECK(t != NULL);
    if (t) {
        CHECK_EQ_INT(t->type, NS_GGML_Q4_1);
        CHECK_EQ_INT(t->ne[0], 1536);
        CHECK_EQ_INT(t->ne[1], 576);
    }
    ns_gguf_vtype et;
    uint64_t n;
    CHECK_STATUS_OK(ns_gguf_get_arr_info(g, "tokenizer.ggml.tokens", &et, &n, &err), e);
    CHECK_EQ_INT(et, NS_GGUF_STRING);
    CHECK_EQ_INT(n, 49152);
    CHECK_STATUS_OK(ns_gguf_get_arr_str(g, "tokenizer.ggml.tokens", 1, &s, &err), e);
    CHECK(str_eq(s, "<|im_start|>"));

    /* every tensor is found by its own name and lies inside the file */
    size_t total = 0;
    for (int64_t i = 0; i < ns_gguf_n_tensors(g); i++) {
        const ns_gguf_tensor *ti = ns_gguf_tensor_at(g, i);
        char name[128];
        NS_ASSERT(ti->name.len < sizeof name);
        memcpy(name, ti->name.ptr, (size_t)ti->name.len);
        name[ti->name.len] = '\0';
        CHECK(ns_gguf_find_tensor(g, name) == ti);
        total += (size_t)ti->nbytes;
    }
    CHECK(total < ns_gguf_file_bytes(g));
    ns_gguf_close(g);
}
