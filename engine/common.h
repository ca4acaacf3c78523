/* common.h: status codes, the error record, assertions and small helpers shared by
 * every module of nightshift.
 *
 * Library code returns ns_status (0 ok, negative error) and fills an ns_error with the
 * place where the error was first seen. Only runner/ calls exit(). NS_ASSERT is for bugs,
 * never for input validation (it stays on under NDEBUG, but input errors must be statuses).
 */
#ifndef NS_COMMON_H
#define NS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

typedef int ns_status;

enum {
    NS_OK = 0,
    NS_ERR_IO = -1,          /* open/read/write/mmap failed */
    NS_ERR_FORMAT = -2,      /* malformed, truncated or hostile file or input */
    NS_ERR_NOMEM = -3,       /* allocation failed */
    NS_ERR_INVALID = -4,     /* invalid argument or value (names the field) */
    NS_ERR_UNSUPPORTED = -5, /* valid but not supported (type, architecture) */
    NS_ERR_CAPACITY = -6,    /* KV cache or batch full: back off and retry */
    NS_ERR_NOT_FOUND = -7,   /* key, tensor or file missing */
    NS_ERR_BACKEND = -8,     /* backend (BLAS, CUDA) reported an error */
};

/* Where and why an operation failed. msg is NUL-terminated and names the field,
 * the value and the limit where there is one. */
typedef struct ns_error {
    ns_status code;
    const char *file; /* source file where the error was first seen (static string) */
    int line;
    char msg[512];
} ns_error;

/* Fills err (if not NULL) and returns code. Formats like printf. */
ns_status ns_error_set_at(ns_error *err, const char *file, int line, ns_status code,
                          const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define ns_error_set(err, code, ...) ns_error_set_at((err), __FILE__, __LINE__, (code), __VA_ARGS__)

/* Clears err to NS_OK with an empty message. */
void ns_error_clear(ns_error *err);

/* Short name of a status code ("format", "io", ...). Static string. */
const char *ns_status_name(ns_status code);

/* Aborts with file and line: for bugs only. */
#define NS_ASSERT(cond)                                                                  \
    do {                                                                                 \
        if (!(cond)) ns_assert_fail(__FILE__, __LINE__, #cond);                          \
    } while (0)
_Noreturn void ns_assert_fail(const char *file, int line, const char *expr);

/* malloc/calloc that return NULL on size overflow as well as on failure. */
void *ns_malloc_array(size_t n, size_t size);
void *ns_calloc_array(size_t n, size_t size);

/* Monotonic time in seconds. */
double ns_time_now(void);

/* Peak resident set size of this process in bytes (0 if unknown). */
size_t ns_peak_rss_bytes(void);

#define NS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define NS_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
