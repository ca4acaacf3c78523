/* golden.c: loading tests/golden/golden.txt (see golden.h). */
#include "golden.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int load_golden(golden_case *cases) {
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

void free_golden(golden_case *cases, int n) {
    for (int i = 0; i < n; i++) {
        free(cases[i].text);
        free(cases[i].prompt);
    }
}

int load_golden_logits(const golden_case *c, float *out, int n_vocab) {
    char path[128];
    snprintf(path, sizeof path, "tests/golden/%s", c->logits_file);
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t rd = fread(out, sizeof(float), (size_t)n_vocab, f);
    fclose(f);
    return rd == (size_t)n_vocab ? 0 : -1;
}

ns_status golden_submit_greedy(ns_engine *e, const golden_case *cases, int i, ns_error *err) {
    ns_request req;
    memset(&req, 0, sizeof req);
    req.id = (uint64_t)i;
    req.prompt = cases[i].prompt;
    req.n_prompt = cases[i].n_prompt;
    ns_sampling_default(&req.sampling);
    req.sampling.max_tokens = cases[i].n_greedy;
    req.sampling.ignore_eos = true;
    return ns_engine_submit(e, &req, err);
}
