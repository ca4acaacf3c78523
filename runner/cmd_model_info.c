/* cmd_model_info.c: `nightshift model-info M`: architecture, sizes, tensor types,
 * vocabulary and chat template of a GGUF file, read from its metadata without loading
 * the weights (so it is quick, and works on vocab-only files). */
#include <stdio.h>
#include <string.h>

#include "chat.h"
#include "cli.h"
#include "gguf.h"
#include "model.h"
#include "tokenizer.h"

int ns_cmd_model_info(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        puts("usage: nightshift model-info MODEL.gguf\n\n"
             "Prints the architecture, hyperparameters, tensor types, vocabulary and chat template.");
        return NS_EXIT_OK;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: nightshift model-info MODEL.gguf\n");
        return NS_EXIT_USAGE;
    }
    const char *path = argv[1];
    ns_error err;
    ns_error_clear(&err);
    ns_gguf *g = NULL;
    ns_tokenizer *tok = NULL;
    ns_chat_template tpl;
    memset(&tpl, 0, sizeof tpl);
    int rc = NS_EXIT_INPUT;
    if (ns_gguf_open(path, &g, &err)) {
        fprintf(stderr, "nightshift model-info: %s: %s\n", path, err.msg);
        return err.code == NS_ERR_IO ? NS_EXIT_FAILURE : NS_EXIT_INPUT;
    }
    printf("file:          %s (GGUF v%u, %zu bytes, %lld tensors, %lld metadata keys)\n", path,
           ns_gguf_version(g), ns_gguf_file_bytes(g), (long long)ns_gguf_n_tensors(g), (long long)ns_gguf_n_kv(g));
    ns_gguf_str name;
    if (ns_gguf_find_key(g, "general.name") >= 0 && ns_gguf_get_str(g, "general.name", &name, NULL) == NS_OK)
        printf("name:          %.*s\n", (int)NS_MIN(name.len, 200), name.ptr);

    /* tensor types and parameter count */
    long long by_type[32] = {0};
    unsigned long long n_params = 0, n_bytes = 0;
    for (int64_t i = 0; i < ns_gguf_n_tensors(g); i++) {
        const ns_gguf_tensor *t = ns_gguf_tensor_at(g, i);
        if (t->type >= 0 && t->type < 32) by_type[t->type]++;
        n_params += (unsigned long long)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        n_bytes += t->nbytes;
    }
    ns_hparams hp;
    bool has_weights = ns_gguf_n_tensors(g) > 0;
    if (has_weights) {
        if (ns_hparams_read(g, &hp, &err)) {
            fprintf(stderr, "nightshift model-info: %s: %s\n", path, err.msg);
            goto done;
        }
        printf("architecture:  %s (rope %s pairs, %s output)\n", hp.arch, hp.is_neox ? "neox" : "interleaved",
               hp.tied_output ? "tied" : "separate");
        printf("layers:        %d\nembedding:     %d\nfeed-forward:  %d\n", hp.n_layer, hp.n_embd, hp.n_ff);
        printf("heads:         %d (kv %d, head dim %d, rope dims %d)\n", hp.n_head, hp.n_head_kv, hp.head_dim,
               hp.n_rot);
        printf("context:       %d\nrope base:     %g", hp.n_ctx_train, (double)hp.rope_base);
        if (hp.rope_scale_factor > 1.0f) printf(" (llama3 scaling x%g)", (double)hp.rope_scale_factor);
        if (ns_gguf_find_tensor(g, "rope_freqs.weight")) printf(" (rope_freqs.weight)");
        printf("\nnorm eps:      %g\nvocab (rows):  %d\n", (double)hp.norm_eps, hp.n_vocab);
        printf("parameters:    %llu (%.1f M), %llu bytes of tensor data\n", n_params, n_params / 1e6, n_bytes);
        printf("tensor types: ");
        for (int t = 0; t < 32; t++)
            if (by_type[t]) printf(" %s x%lld", ns_ggml_type_name(t) ? ns_ggml_type_name(t) : "?", by_type[t]);
        printf("\n");
    } else {
        printf("weights:       none (vocab-only file)\n");
    }
    if (ns_tokenizer_load(g, &tok, &err)) {
        fprintf(stderr, "nightshift model-info: %s: %s\n", path, err.msg);
        goto done;
    }
    printf("tokenizer:     %s (pre '%s'), %d tokens, bos %d, eos %d, eot %d\n", ns_tokenizer_model_name(tok),
           ns_tokenizer_pre_name(tok), ns_tokenizer_n_vocab(tok), ns_tokenizer_bos(tok), ns_tokenizer_eos(tok),
           ns_tokenizer_eot(tok));
    if (ns_gguf_find_key(g, "tokenizer.chat_template") >= 0) {
        ns_gguf_str jt;
        if (ns_gguf_get_str(g, "tokenizer.chat_template", &jt, &err)) {
            fprintf(stderr, "nightshift model-info: %s: %s\n", path, err.msg);
            goto done;
        }
        ns_status st = ns_chat_template_detect(jt.ptr, jt.len, &tpl, &err);
        if (st && st != NS_ERR_UNSUPPORTED) {
            fprintf(stderr, "nightshift model-info: %s: %s\n", path, err.msg);
            goto done;
        }
        if (st) tpl.family = NS_CHAT_NONE; /* a template this version cannot render */
        printf("chat template: %s (%llu bytes of Jinja)%s%s%s\n",
               tpl.family == NS_CHAT_NONE ? "unknown family (--chat unavailable)" : ns_chat_family_name(tpl.family),
               (unsigned long long)jt.len, tpl.default_system ? ", default system: \"" : "",
               tpl.default_system ? tpl.default_system : "", tpl.default_system ? "\"" : "");
    } else {
        printf("chat template: none\n");
    }
    rc = NS_EXIT_OK;
done:
    ns_chat_template_free(&tpl);
    ns_tokenizer_free(tok);
    ns_gguf_close(g);
    return rc;
}
