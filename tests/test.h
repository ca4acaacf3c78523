/* test.h: the unit-test harness. Each tests/unit/test_*.c file defines tests with
 * NS_TEST(name) { ... }; they register themselves at start-up and tests/unit/main.c runs
 * them (all, or those whose name contains argv[1]).
 *
 * A test passes when none of its CHECKs failed; NS_SKIP marks it skipped (for example a
 * CUDA test on a machine with no GPU, or a test that needs the demo model when it is
 * absent). The run ends with the line "N passed, N failed, N skipped".
 */
#ifndef NS_TEST_H
#define NS_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

typedef struct ns_test_case {
    const char *name;
    void (*fn)(void);
} ns_test_case;

void ns_test_register(const char *name, void (*fn)(void));
void ns_test_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void ns_test_skip(const char *why);
/* The message of an ns_error (passed as void * so that test.h needs no engine header). */
const char *ns_test_errmsg(const void *err);
/* Path of the demo model, or NULL when it is not present (tests then skip). */
const char *ns_test_demo_model(void);
/* A fresh temporary directory for this test run (created once, removed at exit). */
const char *ns_test_tmpdir(void);

#define NS_TEST(name)                                                                    \
    static void name(void);                                                              \
    __attribute__((constructor)) static void name##_register(void) {                     \
        ns_test_register(#name, name);                                                   \
    }                                                                                    \
    static void name(void)

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) ns_test_fail_at(__FILE__, __LINE__, "CHECK(%s)", #cond);            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                             \
    do {                                                                                 \
        if (!(cond)) ns_test_fail_at(__FILE__, __LINE__, __VA_ARGS__);                   \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                               \
    do {                                                                                 \
        long long ns_a_ = (long long)(a), ns_b_ = (long long)(b);                        \
        if (ns_a_ != ns_b_)                                                              \
            ns_test_fail_at(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, ns_a_, \
                            ns_b_);                                                      \
    } while (0)

/* |a-b| <= tol, written so that NaN fails. */
#define CHECK_NEAR(a, b, tol)                                                            \
    do {                                                                                 \
        double ns_a_ = (double)(a), ns_b_ = (double)(b);                                 \
        if (!(fabs(ns_a_ - ns_b_) <= (tol)))                                             \
            ns_test_fail_at(__FILE__, __LINE__, "%s ~= %s: %.9g vs %.9g (tol %g)", #a, #b, \
                            ns_a_, ns_b_, (double)(tol));                                \
    } while (0)

#define CHECK_STATUS_OK(expr, errp)                                                      \
    do {                                                                                 \
        int ns_s_ = (expr);                                                              \
        if (ns_s_ != 0)                                                                  \
            ns_test_fail_at(__FILE__, __LINE__, "%s returned %d: %s", #expr, ns_s_,      \
                            ns_test_errmsg(errp));                                       \
    } while (0)

#define SKIP(why)                                                                        \
    do {                                                                                 \
        ns_test_skip(why);                                                               \
        return;                                                                          \
    } while (0)

/* Numeric comparison helpers for kernel tests: every element finite, NMSE against the
 * reference at most max_nmse, and every element within atol + rtol*|ref| (NaN fails).
 * Return 1 when all hold, 0 after reporting the first failure. */
int ns_test_allclose_at(const char *file, int line, const float *got, const float *ref, size_t n,
                        double atol, double rtol, double max_nmse);
#define CHECK_ALLCLOSE(got, ref, n, atol, rtol, nmse)                                    \
    ns_test_allclose_at(__FILE__, __LINE__, (got), (ref), (n), (atol), (rtol), (nmse))

/* Deterministic pseudo-random numbers for test data. */
typedef struct { unsigned long long s; } ns_test_rng;
static inline unsigned long long ns_test_rng_u64(ns_test_rng *r) {
    unsigned long long z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Uniform in [-1, 1). */
static inline float ns_test_rng_f32(ns_test_rng *r) {
    return (float)((double)(ns_test_rng_u64(r) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

#endif
