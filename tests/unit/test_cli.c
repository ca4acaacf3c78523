/* test_cli.c: the nightshift binary as a user runs it (path in NS_BIN, set by
 * tests/run.sh): help, usage errors and exit codes, tokenize, model-info, and generate
 * on the demo model. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "../test.h"
#include "gguf.h"
#include "tiny_model.h"

/* Runs a shell command; returns its exit code and its stdout (malloc'd) in *out. */
static int run_cmd(const char *cmd, char **out) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - 1 - n, p)) > 0) {
        n += got;
        if (n + 1 >= cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int status = pclose(p);
    if (out) *out = buf;
    else free(buf);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static const char *bin(void) {
    const char *b = getenv("NS_BIN");
    return b && *b ? b : NULL;
}

NS_TEST(test_cli_help_and_usage) {
    if (!bin()) SKIP("NS_BIN not set (run through tests/run.sh)");
    char cmd[1024], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s --help", bin());
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK(out && strstr(out, "generate") && strstr(out, "tokenize") && strstr(out, "model-info"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s frobnicate 2>&1", bin());
    CHECK_EQ_INT(run_cmd(cmd, &out), 2);
    CHECK(out && strstr(out, "unknown command 'frobnicate'"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate --model x.gguf --prompt hi --top-p 1.5 2>&1", bin());
    CHECK_EQ_INT(run_cmd(cmd, &out), 2);
    CHECK_MSG(out && strstr(out, "top_p"), "got: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate --model x.gguf --prompt hi --max-tokens abc 2>&1", bin());
    CHECK_EQ_INT(run_cmd(cmd, &out), 2);
    CHECK(out && strstr(out, "not an integer"));
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate --model x.gguf --prompt hi --precision fp16 2>&1", bin());
    CHECK_EQ_INT(run_cmd(cmd, &out), 2);
    CHECK_MSG(out && strstr(out, "--precision 'fp16': expected default or fp8"), "got: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate --help 2>&1", bin());
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK_MSG(out && strstr(out, "--precision P"), "got: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s generate --model /nonexistent.gguf --prompt hi 2>&1", bin());
    int rc = run_cmd(cmd, &out);
    CHECK(rc == 1 || rc == 3);
    CHECK(out && strstr(out, "/nonexistent.gguf"));
    free(out);
}

NS_TEST(test_cli_tokenize_vocab_only) {
    if (!bin()) SKIP("NS_BIN not set (run through tests/run.sh)");
    /* a tiny model's tokenizer keys, no tensors */
    char full[512], vocab[512];
    snprintf(full, sizeof full, "%s/cli_full.gguf", ns_test_tmpdir());
    snprintf(vocab, sizeof vocab, "%s/cli_vocab.gguf", ns_test_tmpdir());
    ns_tiny_cfg c;
    ns_tiny_cfg_default(&c);
    ns_error err;
    CHECK_STATUS_OK(ns_tiny_model_write(full, &c, &err), &err);
    ns_gguf *g = NULL;
    CHECK_STATUS_OK(ns_gguf_open(full, &g, &err), &err);
    if (!g) return;
    ns_gguf_writer *w = ns_gguf_writer_create();
    const char *keys[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"};
    for (int k = 0; k < 2; k++) {
        uint64_t n;
        ns_gguf_vtype et;
        CHECK_STATUS_OK(ns_gguf_get_arr_info(g, keys[k], &et, &n, &err), &err);
        char **strs = calloc(n, sizeof(char *));
        for (uint64_t i = 0; i < n; i++) {
            ns_gguf_str s;
            ns_gguf_get_arr_str(g, keys[k], i, &s, &err);
            strs[i] = strndup(s.ptr, s.len);
        }
        CHECK_STATUS_OK(ns_gguf_writer_add_arr_str(w, keys[k], (const char *const *)strs, n), &err);
        for (uint64_t i = 0; i < n; i++) free(strs[i]);
        free(strs);
    }
    const void *types;
    CHECK_STATUS_OK(ns_gguf_get_arr_data(g, "tokenizer.ggml.token_type", &types, &err), &err);
    int32_t tt[NS_TINY_N_VOCAB];
    memcpy(tt, types, sizeof tt);
    ns_gguf_writer_add_arr_i32(w, "tokenizer.ggml.token_type", tt, NS_TINY_N_VOCAB);
    ns_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    ns_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 264);
    ns_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 265);
    CHECK_STATUS_OK(ns_gguf_writer_write(w, vocab, &err), &err);
    ns_gguf_writer_destroy(w);
    ns_gguf_close(g);

    char cmd[2048], *out = NULL;
    /* " the" merges to one token (id 259 = "Ġthe"); specials plain unless --special */
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s --text ' the<|im_end|>'", bin(), vocab);
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK_MSG(out && !strncmp(out, "259 ", 4) && !strstr(out, "266"), "got: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s --special --bos --text ' the<|im_end|>'", bin(), vocab);
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK_MSG(out && !strcmp(out, "265 259 266\n"), "got: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s model-info %s", bin(), vocab);
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK(out && strstr(out, "vocab-only") && strstr(out, "267 tokens"));
    free(out);
}

NS_TEST(test_cli_demo_model) {
    if (!bin()) SKIP("NS_BIN not set (run through tests/run.sh)");
    const char *m = ns_test_demo_model();
    if (!m) SKIP("demo model not present (make model)");
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "%s model-info %s", bin(), m);
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK_MSG(out && strstr(out, "llama") && strstr(out, "layers:        30") && strstr(out, "q4_1") &&
                  strstr(out, "chatml") && strstr(out, "49152"),
              "got: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s --special --text '<|im_start|>user'", bin(), m);
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK_MSG(out && !strcmp(out, "1 4093\n"), "got: %s", out ? out : "");
    free(out);
    snprintf(cmd, sizeof cmd,
             "%s generate --quiet --model %s --chat --max-tokens 24 --prompt 'What is the capital of France?'",
             bin(), m);
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK_MSG(out && strstr(out, "Paris"), "got: %s", out ? out : "");
    free(out);
    /* a stop string cuts the output before it */
    snprintf(cmd, sizeof cmd,
             "%s generate --quiet --model %s --chat --max-tokens 24 --stop Paris --prompt 'What is the capital of France?'",
             bin(), m);
    CHECK_EQ_INT(run_cmd(cmd, &out), 0);
    CHECK_MSG(out && !strstr(out, "Paris"), "got: %s", out ? out : "");
    free(out);
}
