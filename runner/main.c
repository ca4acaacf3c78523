/* main.c: the nightshift command: dispatches subcommands, prints help, and is (with the
 * other runner/ files) the only code that decides the process exit code. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define NS_VERSION "0.1.0"

static const char *usage =
    "nightshift " NS_VERSION ": offline batch LLM inference\n"
    "\n"
    "usage: nightshift COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  generate    --model M (--prompt P | --prompt-file F) [--chat] [sampling flags]\n"
    "              stream one completion to stdout (see `nightshift generate --help`)\n"
    "  model-info  M        print the architecture, sizes, tensor types, vocabulary, template\n"
    "  tokenize    --model M (--text T | --file F) [--bos] [--special]\n"
    "              print the token ids of the text, space-separated, on one line\n"
    "  submit      JOB.yaml [--db PATH]   queue a job's items; prints the job id\n"
    "  run         [--job ID] [--max-time D] [--max-items N]   run queued items\n"
    "  status      [--json] [JOB]         counts per status, tokens, ETA\n"
    "  export      JOB [-o FILE|-] [--format jsonl|openai-batch] [--zstd]\n"
    "  cancel      JOB                    pending items become cancelled\n"
    "  retry       JOB [--all]            failed items go back to pending\n"
    "  help        this text\n"
    "\n"
    "The queue database is $NIGHTSHIFT_DB, else ./nightshift.db (--db PATH overrides).\n"
    "Each command has --help.\n"
    "\n"
    "exit codes: 0 ok, 1 failure, 2 bad command line, 3 bad input (spec, model, data),\n"
    "            4 run interrupted (rerun to resume)\n"
    "Errors go to stderr; stdout carries only results.\n";

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(usage, stderr);
        return NS_EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        fputs(usage, stdout);
        return NS_EXIT_OK;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("nightshift %s\n", NS_VERSION);
        return NS_EXIT_OK;
    }
    if (!strcmp(cmd, "generate")) return ns_cmd_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "model-info")) return ns_cmd_model_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "tokenize")) return ns_cmd_tokenize(argc - 1, argv + 1);
    if (!strcmp(cmd, "submit")) return ns_cmd_submit(argc - 1, argv + 1);
    if (!strcmp(cmd, "run")) return ns_cmd_run(argc - 1, argv + 1);
    if (!strcmp(cmd, "status")) return ns_cmd_status(argc - 1, argv + 1);
    if (!strcmp(cmd, "export")) return ns_cmd_export(argc - 1, argv + 1);
    if (!strcmp(cmd, "cancel")) return ns_cmd_cancel(argc - 1, argv + 1);
    if (!strcmp(cmd, "retry")) return ns_cmd_retry(argc - 1, argv + 1);
    fprintf(stderr, "nightshift: unknown command '%s' (try `nightshift help`)\n", cmd);
    return NS_EXIT_USAGE;
}

const char *ns_cli_default_db(void) {
    const char *p = getenv("NIGHTSHIFT_DB");
    return p && *p ? p : "nightshift.db";
}

bool ns_cli_parse_int(const char *flag, const char *s, long long lo, long long hi, long long *out) {
    if (!s) {
        fprintf(stderr, "nightshift: %s needs a value\n", flag);
        return false;
    }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0') {
        fprintf(stderr, "nightshift: %s: '%s' is not an integer\n", flag, s);
        return false;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "nightshift: %s = %lld is out of range [%lld, %lld]\n", flag, v, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

bool ns_cli_parse_float(const char *flag, const char *s, double lo, double hi, double *out) {
    if (!s) {
        fprintf(stderr, "nightshift: %s needs a value\n", flag);
        return false;
    }
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || isnan(v)) {
        fprintf(stderr, "nightshift: %s: '%s' is not a number\n", flag, s);
        return false;
    }
    if (v < lo || v > hi) {
        fprintf(stderr, "nightshift: %s = %g is out of range [%g, %g]\n", flag, v, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

char *ns_cli_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "nightshift: cannot open '%s': %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) break;
    }
    if (!buf || ferror(f)) {
        fprintf(stderr, "nightshift: cannot read '%s'%s\n", path, buf ? "" : ": out of memory");
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}
