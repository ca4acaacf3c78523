/* fuzz_gguf.c: libFuzzer entry for the GGUF reader. Opens the input with
 * ns_gguf_open_memory from an exactly sized copy and, when it opens, reads every key,
 * every value through each typed getter, every string-array element, every numeric array
 * and the first and last byte of every tensor, and looks each tensor up by name.
 * ASan/UBSan report any out-of-bounds read; the explicit check aborts if a tensor lies
 * outside the input.
 *
 * Build: clang -fsanitize=fuzzer,address,undefined -Iengine engine/common.c engine/gguf.c
 *        tests/fuzz/fuzz_gguf.c -o fuzz_gguf -lm
 */
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t elem_bytes(ns_gguf_vtype t) {
    switch (t) {
    case NS_GGUF_U8: case NS_GGUF_I8: case NS_GGUF_BOOL: return 1;
    case NS_GGUF_U16: case NS_GGUF_I16: return 2;
    case NS_GGUF_U64: case NS_GGUF_I64: case NS_GGUF_F64: return 8;
    default: return 4;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1); /* exact size: ASan sees any overread */
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    ns_gguf *g = NULL;
    ns_error err;
    ns_status st = ns_gguf_open_memory(buf, size, &g, &err);
    if (st != NS_OK) {
        if (g != NULL || err.code != st || err.msg[0] == '\0') abort(); /* contract */
        free(buf);
        return 0;
    }
    volatile unsigned sink = 0;
    for (int64_t i = 0; i < ns_gguf_n_kv(g); i++) {
        ns_gguf_str k = ns_gguf_kv_key(g, i);
        for (uint64_t j = 0; j < k.len; j++) sink += (unsigned char)k.ptr[j];
        (void)ns_gguf_kv_type(g, i);
        char key[256];
        if (k.len >= sizeof key || memchr(k.ptr, 0, (size_t)k.len)) continue;
        memcpy(key, k.ptr, (size_t)k.len);
        key[k.len] = '\0';
        if (ns_gguf_find_key(g, key) != i) abort(); /* keys are unique */
        uint32_t u;
        int64_t v;
        float f;
        bool b;
        ns_gguf_str s;
        (void)ns_gguf_get_u32(g, key, &u, &err);
        (void)ns_gguf_get_i64(g, key, &v, &err);
        (void)ns_gguf_get_f32(g, key, &f, &err);
        (void)ns_gguf_get_bool(g, key, &b, &err);
        if (ns_gguf_get_str(g, key, &s, &err) == NS_OK)
            for (uint64_t j = 0; j < s.len; j++) sink += (unsigned char)s.ptr[j];
        ns_gguf_vtype et;
        uint64_t n;
        if (ns_gguf_get_arr_info(g, key, &et, &n, &err) != NS_OK) continue;
        if (et == NS_GGUF_STRING) {
            for (uint64_t e = 0; e < n; e++) {
                if (ns_gguf_get_arr_str(g, key, e, &s, &err) != NS_OK) abort();
                for (uint64_t j = 0; j < s.len; j++) sink += (unsigned char)s.ptr[j];
            }
            if (ns_gguf_get_arr_str(g, key, n, &s, &err) == NS_OK) abort();
        } else {
            const void *d;
            if (ns_gguf_get_arr_data(g, key, &d, &err) != NS_OK) abort();
            for (uint64_t j = 0; j < n * elem_bytes(et); j++) sink += ((const uint8_t *)d)[j];
        }
    }
    for (int64_t i = 0; i < ns_gguf_n_tensors(g); i++) {
        const ns_gguf_tensor *t = ns_gguf_tensor_at(g, i);
        uintptr_t lo = (uintptr_t)buf, p = (uintptr_t)t->data;
        if (p < lo || p > lo + size || t->nbytes > lo + size - p) abort();
        if (t->nbytes == 0 || t->n_dims < 1 || t->n_dims > NS_GGUF_MAX_DIMS) abort();
        sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
        char name[256];
        if (t->name.len < sizeof name && !memchr(t->name.ptr, 0, (size_t)t->name.len)) {
            memcpy(name, t->name.ptr, (size_t)t->name.len);
            name[t->name.len] = '\0';
            if (ns_gguf_find_tensor(g, name) != t) abort();
        }
    }
    (void)sink;
    ns_gguf_close(g);
    free(buf);
    return 0;
}
