/* cmd_generate.c: `nightshift generate`: one prompt through the engine, the completion
 * streamed to stdout as it is decoded; timing and token counts to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "cli.h"
#include "engine.h"

static const char *help =
    "usage: nightshift generate --model M (--prompt P | --prompt-file F) [options]\n"
    "\n"
    "  --model M             GGUF model file\n"
    "  --prompt P            prompt text\n"
    "  --prompt-file F       read the prompt from a file\n"
    "  --chat                wrap the prompt as a user message in the model's chat template\n"
    "  --system S            system message for --chat (default: the template's own, if any)\n"
    "  --special             parse special-token text (<|im_start|>...) in a raw prompt\n"
    "  --max-tokens N        tokens to generate (default 128)\n"
    "  --temperature T       0 = greedy (default 0)\n"
    "  --top-k K             0 = off (default)\n"
    "  --top-p P             (0, 1], 1 = off (default)\n"
    "  --min-p P             [0, 1), 0 = off (default)\n"
    "  --repeat-penalty R    1 = off (default); --repeat-last-n N (default 64)\n"
    "  --presence-penalty X  [-2, 2] (default 0); --frequency-penalty X [-2, 2] (default 0)\n"
    "  --seed S              random seed (default 0)\n"
    "  --stop S              stop string, repeatable (up to 8)\n"
    "  --logprobs N          print the chosen token's logprob and the top N to stderr\n"
    "  --ignore-eos          keep generating past end-of-generation tokens\n"
    "  --threads N           CPU threads (default: all cores)\n"
    "  --backend B           auto, cpu or cuda (default auto)\n"
    "  --device N            CUDA device (default 0)\n"
    "  --precision P         default, or fp8: layer matrices, their inputs and the KV cache in FP8\n"
    "                        (cuda, compute capability 8.9+; faster, results differ; refused elsewhere)\n"
    "  --ctx N               context length per sequence (default min(model, 4096))\n"
    "  --quiet               no statistics on stderr\n";

typedef struct gen_state {
    int n_chunks;
} gen_state;

static void on_text(void *user, uint64_t id, const char *text, size_t len) {
    (void)id;
    gen_state *g = user;
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    g->n_chunks++;
}

int ns_cmd_generate(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *prompt_file = NULL, *system = NULL, *backend = "auto";
    bool chat = false, special = false, quiet = false;
    long long v;
    double d;
    ns_sampling sp;
    ns_sampling_default(&sp);
    sp.max_tokens = 128;
    sp.repeat_last_n = 64;
    sp.n_logprobs = -1;
    ns_engine_config cfg;
    ns_engine_config_default(&cfg);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VAL()                                                                        \
    do {                                                                                  \
        if (!val) {                                                                       \
            fprintf(stderr, "nightshift generate: %s needs a value\n", a);                \
            return NS_EXIT_USAGE;                                                         \
        }                                                                                 \
        i++;                                                                              \
    } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            return NS_EXIT_OK;
        } else if (!strcmp(a, "--model")) { NEED_VAL(); model = val;
        } else if (!strcmp(a, "--prompt")) { NEED_VAL(); prompt = val;
        } else if (!strcmp(a, "--prompt-file")) { NEED_VAL(); prompt_file = val;
        } else if (!strcmp(a, "--system")) { NEED_VAL(); system = val;
        } else if (!strcmp(a, "--backend")) { NEED_VAL(); backend = val;
        } else if (!strcmp(a, "--precision")) {
            NEED_VAL();
            if (strcmp(val, "default") && strcmp(val, "fp8")) {
                fprintf(stderr, "nightshift generate: --precision '%s': expected default or fp8\n", val);
                return NS_EXIT_USAGE;
            }
            cfg.fp8 = cfg.kv_fp8 = !strcmp(val, "fp8");
        } else if (!strcmp(a, "--chat")) { chat = true;
        } else if (!strcmp(a, "--special")) { special = true;
        } else if (!strcmp(a, "--quiet")) { quiet = true;
        } else if (!strcmp(a, "--ignore-eos")) { sp.ignore_eos = true;
        } else if (!strcmp(a, "--max-tokens")) {
            NEED_VAL(); if (!ns_cli_parse_int(a, val, 1, 1 << 20, &v)) return NS_EXIT_USAGE; sp.max_tokens = (int)v;
        } else if (!strcmp(a, "--top-k")) {
            NEED_VAL(); if (!ns_cli_parse_int(a, val, 0, 1 << 24, &v)) return NS_EXIT_USAGE; sp.top_k = (int)v;
        } else if (!strcmp(a, "--repeat-last-n")) {
            NEED_VAL(); if (!ns_cli_parse_int(a, val, 0, 1 << 20, &v)) return NS_EXIT_USAGE; sp.repeat_last_n = (int)v;
        } else if (!strcmp(a, "--logprobs")) {
            NEED_VAL(); if (!ns_cli_parse_int(a, val, 0, NS_MAX_LOGPROBS, &v)) return NS_EXIT_USAGE; sp.n_logprobs = (int)v;
        } else if (!strcmp(a, "--seed")) {
            NEED_VAL(); if (!ns_cli_parse_int(a, val, 0, INT64_MAX, &v)) return NS_EXIT_USAGE; sp.seed = (uint64_t)v;
        } else if (!strcmp(a, "--threads")) {
            NEED_VAL(); if (!ns_cli_parse_int(a, val, 1, 256, &v)) return NS_EXIT_USAGE; cfg.n_threads = (int)v;
        } else if (!strcmp(a, "--device")) {
            NEED_VAL(); if (!ns_cli_parse_int(a, val, 0, 1023, &v)) return NS_EXIT_USAGE; cfg.device = (int)v;
        } else if (!strcmp(a, "--ctx")) {
            NEED_VAL(); if (!ns_cli_parse_int(a, val, 2, 1 << 20, &v)) return NS_EXIT_USAGE; cfg.n_ctx = (int)v;
        } else if (!strcmp(a, "--temperature")) {
            NEED_VAL(); if (!ns_cli_parse_float(a, val, -1e9, 1e9, &d)) return NS_EXIT_USAGE; sp.temperature = (float)d;
        } else if (!strcmp(a, "--top-p")) {
            NEED_VAL(); if (!ns_cli_parse_float(a, val, -1e9, 1e9, &d)) return NS_EXIT_USAGE; sp.top_p = (float)d;
        } else if (!strcmp(a, "--min-p")) {
            NEED_VAL(); if (!ns_cli_parse_float(a, val, -1e9, 1e9, &d)) return NS_EXIT_USAGE; sp.min_p = (float)d;
        } else if (!strcmp(a, "--repeat-penalty")) {
            NEED_VAL(); if (!ns_cli_parse_float(a, val, -1e9, 1e9, &d)) return NS_EXIT_USAGE; sp.repeat_penalty = (float)d;
        } else if (!strcmp(a, "--presence-penalty")) {
            NEED_VAL(); if (!ns_cli_parse_float(a, val, -1e9, 1e9, &d)) return NS_EXIT_USAGE; sp.presence_penalty = (float)d;
        } else if (!strcmp(a, "--frequency-penalty")) {
            NEED_VAL(); if (!ns_cli_parse_float(a, val, -1e9, 1e9, &d)) return NS_EXIT_USAGE; sp.frequency_penalty = (float)d;
        } else if (!strcmp(a, "--stop")) {
            NEED_VAL();
            if (sp.n_stop >= NS_MAX_STOP || strlen(val) == 0 || strlen(val) >= NS_MAX_STOP_LEN) {
                fprintf(stderr, "nightshift generate: --stop '%s': at most %d stop strings of 1..%d bytes\n", val,
                        NS_MAX_STOP, NS_MAX_STOP_LEN - 1);
                return NS_EXIT_USAGE;
            }
            strcpy(sp.stop[sp.n_stop++], val);
        } else {
            fprintf(stderr, "nightshift generate: unknown option '%s' (see --help)\n", a);
            return NS_EXIT_USAGE;
        }
#undef NEED_VAL
    }
    if (!model || (!prompt == !prompt_file)) {
        fprintf(stderr, "nightshift generate: --model and exactly one of --prompt or --prompt-file are required\n");
        return NS_EXIT_USAGE;
    }
    /* Validate sampling before the (slow) model load; n_vocab is checked again at submit. */
    ns_error err;
    ns_error_clear(&err);
    if (ns_sampling_validate(&sp, INT32_MAX, &err)) {
        fprintf(stderr, "nightshift generate: %s\n", err.msg);
        return NS_EXIT_USAGE;
    }

    int rc = NS_EXIT_FAILURE;
    char *file_text = NULL, *rendered = NULL;
    int32_t *ids = NULL;
    ns_engine *e = NULL;
    ns_completion *c = NULL;
    ns_chat_template tpl;
    memset(&tpl, 0, sizeof tpl);
    size_t prompt_len;
    if (prompt_file) {
        if (!(file_text = ns_cli_read_file(prompt_file, &prompt_len))) return NS_EXIT_INPUT;
        prompt = file_text;
    } else {
        prompt_len = strlen(prompt);
    }

    cfg.model_path = model;
    cfg.backend = backend;
    cfg.max_seqs = 1;
    cfg.max_batch_tokens = 512;
    const char *note = NULL;
    double t0 = ns_time_now();
    if (ns_engine_open(&cfg, &e, &note, &err)) {
        fprintf(stderr, "nightshift generate: %s: %s\n", model, err.msg);
        rc = err.code == NS_ERR_NOMEM || err.code == NS_ERR_BACKEND ? NS_EXIT_FAILURE : NS_EXIT_INPUT;
        goto done;
    }
    if (note && !quiet) fprintf(stderr, "nightshift: %s\n", note);
    double t_load = ns_time_now() - t0;

    const ns_tokenizer *tok = ns_engine_tokenizer(e);
    bool parse_special = special;
    if (chat) {
        const char *jinja = ns_engine_chat_template(e);
        if (ns_chat_template_detect(jinja, jinja ? strlen(jinja) : 0, &tpl, &err)) {
            fprintf(stderr, "nightshift generate: %s: %s\n", model, err.msg);
            rc = NS_EXIT_INPUT;
            goto done;
        }
        if (tpl.family == NS_CHAT_NONE) {
            fprintf(stderr, "nightshift generate: %s: the model has no chat template this version knows; "
                            "drop --chat and format the prompt yourself\n", model);
            rc = NS_EXIT_INPUT;
            goto done;
        }
        ns_chat_msg msgs[2];
        int n_msgs = 0;
        if (system) msgs[n_msgs++] = (ns_chat_msg){"system", system};
        msgs[n_msgs++] = (ns_chat_msg){"user", prompt};
        size_t rlen;
        if (ns_chat_render(&tpl, msgs, n_msgs, true, &rendered, &rlen, &err)) {
            fprintf(stderr, "nightshift generate: %s\n", err.msg);
            goto done;
        }
        prompt = rendered;
        prompt_len = rlen;
        parse_special = true;
    }
    size_t n_ids;
    if (ns_tokenizer_encode(tok, prompt, prompt_len, ns_engine_add_bos(e), parse_special, &ids, &n_ids, &err)) {
        fprintf(stderr, "nightshift generate: %s\n", err.msg);
        goto done;
    }
    gen_state gs = {0};
    ns_request req = {.id = 0, .prompt = ids, .n_prompt = (int)n_ids, .sampling = sp, .on_text = on_text, .user = &gs};
    if (n_ids > (size_t)INT32_MAX || ns_engine_submit(e, &req, &err)) {
        fprintf(stderr, "nightshift generate: %s\n", err.msg);
        rc = NS_EXIT_INPUT;
        goto done;
    }
    double t1 = ns_time_now(), t_first = 0;
    while (!ns_engine_idle(e)) {
        ns_step_stats stats;
        if (ns_engine_step(e, &stats, &err)) {
            fprintf(stderr, "\nnightshift generate: %s\n", err.msg);
            goto done;
        }
        if (stats.note) fprintf(stderr, "nightshift generate: %s\n", stats.note);
        if (stats.n_prompt_tokens > 0) t_first = ns_time_now(); /* end of the last prefill step */
    }
    double t2 = ns_time_now();
    if (ns_engine_collect(e, &c, 1) != 1) {
        fprintf(stderr, "nightshift generate: internal error: no completion\n");
        goto done;
    }
    fputc('\n', stdout);
    fflush(stdout);
    if (c->finish == NS_FINISH_ERROR) {
        fprintf(stderr, "nightshift generate: %s\n", c->error);
        goto done;
    }
    if (c->logprobs) {
        for (int i = 0; i < c->n_tokens; i++) {
            const ns_logprob *lp = c->logprobs + (size_t)i * (1 + c->n_top_logprobs);
            fprintf(stderr, "logprob %d: token %d %.4f", i, lp[0].token, (double)lp[0].logprob);
            for (int k = 1; k <= c->n_top_logprobs; k++) fprintf(stderr, " | %d %.4f", lp[k].token, (double)lp[k].logprob);
            fputc('\n', stderr);
        }
    }
    if (!quiet) {
        double t_prefill = t_first > 0 ? t_first - t1 : 0;
        double t_gen = t2 - (t_first > 0 ? t_first : t1);
        fprintf(stderr,
                "nightshift: %s backend, load %.2f s; prompt %d tokens in %.2f s (%.1f tok/s); "
                "generated %d tokens in %.2f s (%.1f tok/s); finish: %s\n",
                ns_engine_backend_name(e), t_load, c->n_prompt_tokens, t_prefill,
                t_prefill > 0 ? c->n_prompt_tokens / t_prefill : 0.0, c->n_tokens, t_gen,
                t_gen > 0 ? (c->n_tokens - 1) / t_gen : 0.0, ns_finish_name(c->finish));
    }
    rc = NS_EXIT_OK;
done:
    ns_completion_free(c);
    ns_engine_close(e);
    ns_chat_template_free(&tpl);
    free(ids);
    free(rendered);
    free(file_text);
    return rc;
}
