/* common.c: the error record, assertion failure, checked allocation, clocks. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

ns_status ns_error_set_at(ns_error *err, const char *file, int line, ns_status code,
                          const char *fmt, ...) {
    if (err) {
        err->code = code;
        err->file = file;
        err->line = line;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

void ns_error_clear(ns_error *err) {
    if (!err) return;
    err->code = NS_OK;
    err->file = NULL;
    err->line = 0;
    err->msg[0] = '\0';
}

const char *ns_status_name(ns_status code) {
    switch (code) {
    case NS_OK: return "ok";
    case NS_ERR_IO: return "io";
    case NS_ERR_FORMAT: return "format";
    case NS_ERR_NOMEM: return "nomem";
    case NS_ERR_INVALID: return "invalid";
    case NS_ERR_UNSUPPORTED: return "unsupported";
    case NS_ERR_CAPACITY: return "capacity";
    case NS_ERR_NOT_FOUND: return "not-found";
    case NS_ERR_BACKEND: return "backend";
    default: return "unknown";
    }
}

void ns_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "nightshift: internal error at %s:%d: assertion failed: %s\n", file, line, expr);
    abort();
}

void *ns_malloc_array(size_t n, size_t size) {
    if (size != 0 && n > SIZE_MAX / size) return NULL;
    size_t total = n * size;
    return malloc(total ? total : 1);
}

void *ns_calloc_array(size_t n, size_t size) {
    if (size != 0 && n > SIZE_MAX / size) return NULL;
    return calloc(n ? n : 1, size ? size : 1);
}

double ns_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

size_t ns_peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}
