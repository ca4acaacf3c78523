/* golden.h: the golden cases of tests/golden/golden.txt (made by
 * tests/golden/make_golden.py from HF transformers; the format is in tests/golden/README.md),
 * loaded for the tests that compare the demo model against them (test_golden.c on the CPU,
 * test_cudamock.c on the CUDA stand-in). */
#ifndef NS_TEST_GOLDEN_H
#define NS_TEST_GOLDEN_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

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

/* Reads tests/golden/golden.txt (from the repository root) into cases (GOLDEN_MAX_CASES);
 * returns the number of cases, or -1 when the file cannot be opened. Free with free_golden. */
int load_golden(golden_case *cases);
void free_golden(golden_case *cases, int n);
/* The case's next-token logits (n_vocab floats) from its logits file into out; 0 on success. */
int load_golden_logits(const golden_case *c, float *out, int n_vocab);
/* Submits case i as request id i: its prompt, greedy, its n_greedy tokens, ignore_eos. */
ns_status golden_submit_greedy(ns_engine *e, const golden_case *cases, int i, ns_error *err);

#endif
