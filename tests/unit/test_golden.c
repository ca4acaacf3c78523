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
#include "golden.h"

#define GOLDEN_MAX_ABS 1e-3
#define GOLDEN_MAX_NMSE 1e-9

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
        int rd = load_golden_logits(&cases[i], ref, V);
        CHECK_MSG(rd == 0, "cannot read tests/golden/%s (%d logits)", cases[i].logits_file, V);
        if (rd) continue;
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
    for (int i = 0; i < n; i++) CHECK_STATUS_OK(golden_submit_greedy(e, cases, i, &err), &err);
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
