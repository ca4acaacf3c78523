/* test_golden.c: the demo model against golden data from an independent implementation
 * (HF transformers, float32; tests/golden/make_golden.py made tests/golden/golden.txt):
 * token ids identical, next-token logits close, 32 greedy tokens identical, both one
 * prompt at a time and all prompts together in one mixed batch. Skips without the model.
 *
 * Bounds held (measured, see README "Correctness"): max |logit diff| <= GOLDEN_MAX_ABS
 * and NMSE <= GOLDEN_MAX_NMSE over all 49152 logits of the last prompt position. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../test.h"
#include "engine.h"

#define GOLDEN_MAX_ABS 1e-3
#define GOLDEN_MAX_NMSE 1e-9
#define GOLDEN_MAX_CASES 16

typedef struct golden_case {
    char name[32];
    char *text;
    size_t text_len;
    int special;
    int32_t *prompt;
    int n_prompt;
    int32_t greedy[64];
    int n_greedy;
    char logits_file[64];
} golden_case;

static int parse_ids(char *s, int32_t **out, int max) {
    char *end;
    long n = strtol(s, &end, 10);
    if (end == s || n < 0 || n > max) return -1;
    int32_t *ids = malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    for (long i = 0; i < n; i++) {
        s = end;
        long v = strtol(s, &end, 10);
        if (end == s) {
            free(ids);
            return -1;
        }
        ids[i] = (int32_t)v;
    }
    *out = ids;
    return (int)n;
}

static int load_golden(golden_case *cases) {
    FILE *f = fopen("tests/golden/golden.txt", "r");
    if (!f) return -1;
    static char line[1 << 20];
    int n = 0;
    golden_case *c = NULL;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "case ", 5)) {
            if (n == GOLDEN_MAX_CASES) break;
            c = &cases[n++];
            memset(c, 0, sizeof *c);
            snprintf(c->name, sizeof c->name, "%.31s", line + 5);
        } else if (!c) {
            continue;
        } else if (!strncmp(line, "text_hex ", 9)) {
            const char *h = line + 9;
            size_t L = strlen(h) / 2;
            c->text = malloc(L + 1);
            for (size_t i = 0; i < L; i++) {
                unsigned v;
                sscanf(h + 2 * i, "%2x", &v);
                c->text[i] = (char)v;
            }
            c->text[L] = 0;
            c->text_len = L;
        } else if (!strncmp(line, "special ", 8)) {
            c->special = line[8] == '1';
        } else if (!strncmp(line, "prompt_ids ", 11)) {
            c->n_prompt = parse_ids(line + 11, &c->prompt, 100000);
        } else if (!strncmp(line, "greedy_ids ", 11)) {
            int32_t *g = NULL;
            c->n_greedy = parse_ids(line + 11, &g, 64);
            if (c->n_greedy > 0) memcpy(c->greedy, g, (size_t)c->n_greedy * sizeof(int32_t));
            free(g);
        } else if (!strncmp(line, "logits_file ", 12)) {
            snprintf(c->logits_file, sizeof c->logits_file, "%.63s", line + 12);
        }
    }
    fclose(f);
    return n;
}

static void free_golden(golden_case *cases, int n) {
    for (int i = 0; i < n; i++) {
        free(cases[i].text);
        free(cases[i].prompt);
    }
}

static ns_engine *open_demo(int max_seqs) {
    const char *path = ns_test_demo_model();
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = path;
    cfg.backend = "cpu";
    cfg.max_seqs = max_seqs;
    cfg.max_batch_tokens = 512;
    cfg.n_ctx = 2048;
    ns_engine *e = NULL;
    ns_error err;
    ns_status st = ns_engine_open(&cfg, &e, NULL, &err);
    CHECK_MSG(st == NS_OK, "open demo model: %s", err.msg);
    return e;
}

NS_TEST(test_golden_tokenizer_ids) {
    if (!ns_test_demo_model()) SKIP("demo model not present (make model)");
    golden_case cases[GOLDEN_MAX_CASES];
    int n = load_golden(cases);
    CHECK_MSG(n >= 6, "tests/golden/golden.txt has %d cases", n);
    ns_engine *e = open_demo(1);
    if (!e) return;
    ns_error err;
    for (int i = 0; i < n; i++) {
        int32_t *ids = NULL;
        size_t n_ids = 0;
        CHECK_STATUS_OK(ns_tokenizer_encode(ns_engine_tokenizer(e), cases[i].text, cases[i].text_len, false,
                                            cases[i].special, &ids, &n_ids, &err), &err);
        CHECK_MSG((int)n_ids == cases[i].n_prompt, "case %s: %zu ids, golden %d", cases[i].name, n_ids,
                  cases[i].n_prompt);
        for (size_t j = 0; j < n_ids && (int)j < cases[i].n_prompt; j++)
            if (ids[j] != cases[i].prompt[j]) {
                CHECK_MSG(0, "case %s: id %zu is %d, golden %d", cases[i].name, j, ids[j], cases[i].prompt[j]);
                break;
            }
        free(ids);
    }
    ns_engine_close(e);
    free_golden(cases, n);
}

NS_TEST(test_golden_logits) {
    if (!ns_test_demo_model()) SKIP("demo model not present (make model)");
    golden_case cases[GOLDEN_MAX_CASES];
    int n = load_golden(cases);
    ns_engine *e = open_demo(1);
    if (!e) return;
    int V = ns_engine_hparams(e)->n_vocab;
    float *got = malloc((size_t)V * sizeof(float)), *ref = malloc((size_t)V * sizeof(float));
    ns_error err;
    for (int i = 0; i < n; i++) {
        char path[128];
        snprintf(path, sizeof path, "tests/golden/%s", cases[i].logits_file);
        FILE *f = fopen(path, "rb");
        CHECK_MSG(f != NULL, "cannot open %s", path);
        if (!f) continue;
        size_t rd = fread(ref, sizeof(float), (size_t)V, f);
        fclose(f);
        CHECK_EQ_INT(rd, V);
        CHECK_STATUS_OK(ns_engine_prompt_logits(e, cases[i].prompt, cases[i].n_prompt, got, &err), &err);
        double max_abs = 0, num = 0, den = 0;
        for (int j = 0; j < V; j++) {
            double d = fabs((double)got[j] - ref[j]);
            if (!(d <= max_abs)) max_abs = d; /* NaN propagates */
            num += d * d;
            den += (double)ref[j] * ref[j];
        }
        if (getenv("NS_TEST_VERBOSE"))
            fprintf(stderr, "  golden %-6s n=%4d max|diff| %.3g nmse %.3g\n", cases[i].name, cases[i].n_prompt, max_abs,
                    num / den);
        CHECK_MSG(max_abs <= GOLDEN_MAX_ABS, "case %s: max |logit diff| %.4g > %g", cases[i].name, max_abs,
                  GOLDEN_MAX_ABS);
        CHECK_MSG(num / den <= GOLDEN_MAX_NMSE, "case %s: NMSE %.3g > %g", cases[i].name, num / den, GOLDEN_MAX_NMSE);
    }
    free(got);
    free(ref);
    ns_engine_close(e);
    free_golden(cases, n);
}

/* 32 greedy tokens per case, with max_seqs slots: 1 = one at a time, n = all together. */
static void check_greedy(int max_seqs) {
    golden_case cases[GOLDEN_MAX_CASES];
    int n = load_golden(cases);
    ns_engine *e = open_demo(max_seqs);
    if (!e) {
        free_golden(cases, n);
        return;
    }
    ns_error err;
    for (int i = 0; i < n; i++) {
        ns_request req;
        memset(&req, 0, sizeof req);
        req.id = (uint64_t)i;
        req.prompt = cases[i].prompt;
        req.n_prompt = cases[i].n_prompt;
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = cases[i].n_greedy;
        req.sampling.ignore_eos = true;
        CHECK_STATUS_OK(ns_engine_submit(e, &req, &err), &err);
    }
    int n_done = 0;
    while (n_done < n) {
        if (ns_engine_idle(e) && n_done < n) break;
        ns_step_stats st;
        ns_status sst = ns_engine_step(e, &st, &err);
        CHECK_STATUS_OK(sst, &err);
        if (sst) break;
        ns_completion *c;
        while (ns_engine_collect(e, &c, 1) == 1) {
            golden_case *g = &cases[c->id];
            CHECK_EQ_INT(c->n_tokens, g->n_greedy);
            for (int j = 0; j < c->n_tokens && j < g->n_greedy; j++)
                if (c->tokens[j] != g->greedy[j]) {
                    CHECK_MSG(0, "case %s (max_seqs %d): greedy token %d is %d, golden %d", g->name, max_seqs, j,
                              c->tokens[j], g->greedy[j]);
                    break;
                }
            ns_completion_free(c);
            n_done++;
        }
    }
    CHECK_EQ_INT(n_done, n);
    ns_engine_close(e);
    free_golden(cases, n);
}

NS_TEST(test_golden_greedy_one_at_a_time) {
    if (!ns_test_demo_model()) SKIP("demo model not present (make model)");
    check_greedy(1);
}

NS_TEST(test_golden_greedy_mixed_batch) {
    if (!ns_test_demo_model()) SKIP("demo model not present (make model)");
    check_greedy(16);
}
