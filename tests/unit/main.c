/* main.c: runs the registered unit tests (see tests/test.h) and prints
 * "N passed, N failed, N skipped". Usage: unit [SUBSTRING]. Exit 1 on any failure. */
#define _POSIX_C_SOURCE 200809L
#include "../test.h"
#include "common.h"
#include "gguf.h"
#include "tiny_model.h"

#include <stdarg.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/stat.h>

#define NS_TEST_MAX 1024

static ns_test_case g_tests[NS_TEST_MAX];
static int g_n_tests;
static int g_cur_failed;
static int g_cur_skipped;
static const char *g_cur_name;
static char g_tmpdir[256];

void ns_test_register(const char *name, void (*fn)(void)) {
    if (g_n_tests >= NS_TEST_MAX) {
        fprintf(stderr, "too many tests\n");
        abort();
    }
    g_tests[g_n_tests].name = name;
    g_tests[g_n_tests].fn = fn;
    g_n_tests++;
}

void ns_test_fail_at(const char *file, int line, const char *fmt, ...) {
    if (g_cur_failed < 5) {
        fprintf(stderr, "  FAIL %s (%s:%d): ", g_cur_name, file, line);
        va_list ap;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
    g_cur_failed++;
}

void ns_test_skip(const char *why) {
    fprintf(stderr, "  SKIP %s: %s\n", g_cur_name, why);
    g_cur_skipped = 1;
}

const char *ns_test_errmsg(const void *err) { return err ? ((const ns_error *)err)->msg : ""; }

const char *ns_test_demo_model(void) {
    const char *p = getenv("NS_DEMO_MODEL");
    if (!p || !*p) p = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    return access(p, R_OK) == 0 ? p : NULL;
}

static void rm_tmpdir(void) {
    if (getenv("NS_TEST_KEEP_TMP")) {
        fprintf(stderr, "kept %s\n", g_tmpdir);
        return;
    }
    if (g_tmpdir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_tmpdir);
    }
}

const char *ns_test_tmpdir(void) {
    if (!g_tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_tmpdir, sizeof g_tmpdir, "%s/nstest.XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(g_tmpdir)) {
            perror("mkdtemp");
            abort();
        }
        atexit(rm_tmpdir);
    }
    return g_tmpdir;
}

int ns_test_allclose_at(const char *file, int line, const float *got, const float *ref, size_t n,
                        double atol, double rtol, double max_nmse) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) {
            ns_test_fail_at(file, line, "element %zu not finite: %g", i, (double)got[i]);
            return 0;
        }
        double d = (double)got[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    double nmse = den > 0 ? num / den : num;
    if (!(nmse <= max_nmse)) {
        ns_test_fail_at(file, line, "NMSE %.3g > %.3g over %zu elements", nmse, max_nmse, n);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - (double)ref[i]);
        if (!(err <= atol + rtol * fabs((double)ref[i]))) {
            ns_test_fail_at(file, line, "element %zu: %.9g vs ref %.9g (err %.3g)", i,
                            (double)got[i], (double)ref[i], err);
            return 0;
        }
    }
    return 1;
}

int main(int argc, char **argv) {
    /* helper for the shell tests: write a tiny random-weight model and exit */
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "--write-tiny-model")) {
        ns_tiny_cfg c;
        ns_tiny_cfg_default(&c);
        if (argc == 4) c.seed = strtoull(argv[3], NULL, 10); /* test helper: a different model */
        c.wtype = NS_GGML_Q8_0;
        c.n_ctx = 512;
        ns_error err;
        if (ns_tiny_model_write(argv[2], &c, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        return 0;
    }
    const char *filter = argc > 1 ? argv[1] : NULL;
    int n_pass = 0, n_fail = 0, n_skip = 0;
    for (int i = 0; i < g_n_tests; i++) {
        if (filter && !strstr(g_tests[i].name, filter)) continue;
        g_cur_name = g_tests[i].name;
        g_cur_failed = 0;
        g_cur_skipped = 0;
        g_tests[i].fn();
        if (g_cur_failed) {
            n_fail++;
            fprintf(stderr, "FAIL %s (%d checks)\n", g_cur_name, g_cur_failed);
        } else if (g_cur_skipped) {
            n_skip++;
        } else {
            n_pass++;
            if (getenv("NS_TEST_VERBOSE")) fprintf(stderr, "ok   %s\n", g_cur_name);
        }
    }
    printf("%d passed, %d failed, %d skipped\n", n_pass, n_fail, n_skip);
    return n_fail ? 1 : 0;
}
