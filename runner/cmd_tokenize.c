/* cmd_tokenize.c: `nightshift tokenize`: the token ids of a text, space-separated on one
 * line. Needs only the tokenizer metadata, so a vocab-only GGUF works. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gguf.h"
#include "tokenizer.h"

static const char *help =
    "usage: nightshift tokenize --model M (--text T | --file F) [--bos] [--special]\n"
    "\n"
    "Prints the token ids of the text, space-separated, on one line.\n"
    "  --bos      prepend the BOS token (not added otherwise)\n"
    "  --special  match special-token text such as <|im_start|> (plain text otherwise)\n";

int ns_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *file = NULL;
    bool bos = false, special = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            return NS_EXIT_OK;
        } else if (!strcmp(a, "--bos")) {
            bos = true;
        } else if (!strcmp(a, "--special")) {
            special = true;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--text") || !strcmp(a, "--file")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "nightshift tokenize: %s needs a value\n", a);
                return NS_EXIT_USAGE;
            }
            const char *v = argv[++i];
            if (!strcmp(a, "--model")) model = v;
            else if (!strcmp(a, "--text")) text = v;
            else file = v;
        } else {
            fprintf(stderr, "nightshift tokenize: unknown option '%s' (see --help)\n", a);
            return NS_EXIT_USAGE;
        }
    }
    if (!model || (!text == !file)) {
        fprintf(stderr, "nightshift tokenize: --model and exactly one of --text or --file are required\n");
        return NS_EXIT_USAGE;
    }
    int rc = NS_EXIT_INPUT;
    char *buf = NULL;
    int32_t *ids = NULL;
    ns_gguf *g = NULL;
    ns_tokenizer *tok = NULL;
    ns_error err;
    ns_error_clear(&err);
    size_t len;
    if (file) {
        if (!(buf = ns_cli_read_file(file, &len))) return NS_EXIT_INPUT;
        text = buf;
    } else {
        len = strlen(text);
    }
    if (ns_gguf_open(model, &g, &err) || ns_tokenizer_load(g, &tok, &err)) {
        fprintf(stderr, "nightshift tokenize: %s: %s\n", model, err.msg);
        goto done;
    }
    size_t n;
    if (ns_tokenizer_encode(tok, text, len, bos, special, &ids, &n, &err)) {
        fprintf(stderr, "nightshift tokenize: %s\n", err.msg);
        rc = NS_EXIT_FAILURE;
        goto done;
    }
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    rc = fflush(stdout) == 0 ? NS_EXIT_OK : NS_EXIT_FAILURE;
done:
    free(ids);
    ns_tokenizer_free(tok);
    ns_gguf_close(g);
    free(buf);
    return rc;
}
