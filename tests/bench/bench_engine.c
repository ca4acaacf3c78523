/* bench_engine.c: engine throughput in the layout of llama.cpp's batched-bench.
 *
 * usage: bench-engine MODEL.gguf [--pp 128] [--tg 128] [--batches 1,8,32,64] [--reps 3]
 *                                [--threads N] [--jsonl FILE]
 *
 * For each batch size B: B requests of PP random prompt tokens each, generating TG tokens
 * with ignore_eos, all admitted at once (max_seqs = B). The prompt phase (T_PP) is the
 * forward step(s) that process all B*PP prompt tokens and sample each sequence's first
 * token; the generation phase (T_TG) is the TG decode steps of B tokens that follow.
 * S_PP = B*PP/T_PP, S_TG = B*TG/T_TG, S = B*(PP+TG)/(T_PP+T_TG). Each row is the median
 * of --reps runs (by S). Prints peak RSS. Timings are wall-clock on a shared machine:
 * compare rows from the same run only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

typedef struct row {
    int pp, tg, b;
    double t_pp, t_tg;
} row;

static int cmp_s(const void *a, const void *b) {
    const row *x = a, *y = b;
    double sx = 1.0 / (x->t_pp + x->t_tg), sy = 1.0 / (y->t_pp + y->t_tg);
    return sx < sy ? -1 : sx > sy;
}

static int run_once(const char *model, int n_threads, int B, int PP, int TG, row *out) {
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    cfg.model_path = model;
    cfg.backend = "cpu";
    cfg.n_threads = n_threads;
    cfg.max_seqs = B;
    cfg.max_batch_tokens = NS_MAX(B * PP, B) > 8192 ? 8192 : NS_MAX(B * PP, B);
    cfg.n_ctx = PP + TG + 16;
    ns_engine *e = NULL;
    ns_error err;
    if (ns_engine_open(&cfg, &e, NULL, &err)) {
        fprintf(stderr, "bench-engine: %s: %s\n", model, err.msg);
        return -1;
    }
    int n_vocab = ns_engine_hparams(e)->n_vocab;
    int32_t *prompt = malloc((size_t)PP * sizeof(int32_t));
    unsigned long long s = 12345;
    for (int r = 0; r < B; r++) {
        for (int i = 0; i < PP; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            prompt[i] = 100 + (int32_t)((s >> 33) % (unsigned long long)(n_vocab - 100));
        }
        ns_request req;
        memset(&req, 0, sizeof req);
        req.id = (uint64_t)r;
        req.prompt = prompt;
        req.n_prompt = PP;
        ns_sampling_default(&req.sampling);
        req.sampling.max_tokens = TG + 1; /* 1 from the prompt step + TG decode steps */
        req.sampling.ignore_eos = true;
        if (ns_engine_submit(e, &req, &err)) {
            fprintf(stderr, "bench-engine: %s\n", err.msg);
            free(prompt);
            ns_engine_close(e);
            return -1;
        }
    }
    free(prompt);
    double t0 = ns_time_now(), t_pp_end = t0;
    int n_decode_steps = 0;
    while (!ns_engine_idle(e)) {
        ns_step_stats st;
        if (ns_engine_step(e, &st, &err)) {
            fprintf(stderr, "bench-engine: %s\n", err.msg);
            ns_engine_close(e);
            return -1;
        }
        if (st.n_prompt_tokens > 0) t_pp_end = ns_time_now();
        else if (st.n_decode > 0) n_decode_steps++;
        ns_completion *c[64];
        int n;
        while ((n = ns_engine_collect(e, c, 64)) > 0)
            for (int i = 0; i < n; i++) ns_completion_free(c[i]);
    }
    double t1 = ns_time_now();
    ns_engine_close(e);
    if (n_decode_steps != TG) fprintf(stderr, "bench-engine: warning: %d decode steps, expected %d\n", n_decode_steps, TG);
    out->pp = PP;
    out->tg = TG;
    out->b = B;
    out->t_pp = t_pp_end - t0;
    out->t_tg = t1 - t_pp_end;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: bench-engine MODEL.gguf [--pp N] [--tg N] [--batches 1,8,32,64] [--reps N] "
                        "[--threads N] [--jsonl FILE]\n");
        return 2;
    }
    const char *model = argv[1], *batches = "1,8,32,64", *jsonl = NULL;
    int PP = 128, TG = 128, reps = 3, n_threads = 0;
    for (int i = 2; i + 1 < argc; i += 2) {
        char *end;
        long v = strtol(argv[i + 1], &end, 10);
        bool num_ok = *end == '\0' && end != argv[i + 1] && v > 0 && v < 1000000;
        if (!strcmp(argv[i], "--batches")) batches = argv[i + 1];
        else if (!strcmp(argv[i], "--jsonl")) jsonl = argv[i + 1];
        else if (!num_ok) { fprintf(stderr, "bench-engine: %s: bad value '%s'\n", argv[i], argv[i + 1]); return 2; }
        else if (!strcmp(argv[i], "--pp")) PP = (int)v;
        else if (!strcmp(argv[i], "--tg")) TG = (int)v;
        else if (!strcmp(argv[i], "--reps")) reps = (int)v;
        else if (!strcmp(argv[i], "--threads")) n_threads = (int)v;
        else { fprintf(stderr, "bench-engine: unknown option %s\n", argv[i]); return 2; }
    }
    FILE *jf = jsonl ? fopen(jsonl, "a") : NULL;
    if (jsonl && !jf) { perror(jsonl); return 1; }
    if (n_threads) printf("model %s, %d threads, median of %d runs\n\n", model, n_threads, reps);
    else printf("model %s, all cores, median of %d runs\n\n", model, reps);
    printf("|  PP |  TG |  B |   N_KV |  T_PP s | S_PP t/s |  T_TG s | S_TG t/s |     T s |    S t/s |\n");
    printf("|-----|-----|----|--------|---------|----------|---------|----------|---------|----------|\n");
    char list[256];
    snprintf(list, sizeof list, "%s", batches);
    for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
        int B = atoi(tok) > 0 ? atoi(tok) : 1;
        row rs[16];
        int n = reps > 16 ? 16 : reps;
        for (int r = 0; r < n; r++)
            if (run_once(model, n_threads, B, PP, TG, &rs[r])) return 1;
        qsort(rs, (size_t)n, sizeof rs[0], cmp_s);
        row *m = &rs[n / 2];
        double s_pp = B * PP / m->t_pp, s_tg = B * TG / m->t_tg, t = m->t_pp + m->t_tg, s = B * (PP + TG) / t;
        printf("| %3d | %3d | %2d | %6d | %7.3f | %8.2f | %7.3f | %8.2f | %7.3f | %8.2f |\n", PP, TG, B,
               B * (PP + TG), m->t_pp, s_pp, m->t_tg, s_tg, t, s);
        fflush(stdout);
        if (jf)
            fprintf(jf, "{\"bench\":\"engine\",\"pp\":%d,\"tg\":%d,\"b\":%d,\"t_pp\":%.4f,\"s_pp\":%.2f,"
                        "\"t_tg\":%.4f,\"s_tg\":%.2f,\"t\":%.4f,\"s\":%.2f}\n",
                    PP, TG, B, m->t_pp, s_pp, m->t_tg, s_tg, t, s);
    }
    printf("\npeak RSS: %.1f MiB\n", ns_peak_rss_bytes() / 1048576.0);
    if (jf) fclose(jf);
    return 0;
}
