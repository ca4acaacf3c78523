/* tokenizer.h: tokenizers built from GGUF metadata (tokenizer.ggml.*).
 *
 * - model "gpt2": byte-level BPE with the pre-tokenizer split pattern named by
 *   tokenizer.ggml.pre (default GPT-2, llama-bpe / Llama 3, qwen2, smollm, ...), via PCRE2.
 * - model "llama": SentencePiece BPE (scores) with byte fallback (<0xXX> tokens),
 *   leading-space handling per tokenizer.ggml.add_space_prefix.
 * Special and control tokens (BOS, EOS, EOT, chat markers) are matched in the text only
 * when parse_special is asked, and are never split. A vocab-only GGUF (no tensors) is
 * enough. The tokenizer copies what it needs: the ns_gguf may be closed afterwards.
 * Thread-safety: a loaded tokenizer is read-only; encode/decode may run concurrently.
 */
#ifndef NS_TOKENIZER_H
#define NS_TOKENIZER_H

#include "common.h"
#include "gguf.h"

typedef struct ns_tokenizer ns_tokenizer;

/* Builds the tokenizer. Errors: NS_ERR_NOT_FOUND (missing key, named), NS_ERR_FORMAT
 * (bad vocab/merges/ids, named), NS_ERR_UNSUPPORTED (unknown model or pre pattern; the
 * message lists the supported ones). Free with ns_tokenizer_free. */
ns_status ns_tokenizer_load(const ns_gguf *g, ns_tokenizer **out, ns_error *err);
void ns_tokenizer_free(ns_tokenizer *t); /* NULL-tolerant */

/* Encodes len bytes of text (need not be NUL-terminated; invalid UTF-8 is encoded through
 * byte tokens, never rejected). add_bos prepends BOS whenever the vocab has one; callers
 * that follow the model's convention pass ns_tokenizer_add_bos(t).
 * *ids is malloc'd, caller frees. Errors: NS_ERR_NOMEM. */
ns_status ns_tokenizer_encode(const ns_tokenizer *t, const char *text, size_t len, bool add_bos,
                              bool parse_special, int32_t **ids, size_t *n_ids, ns_error *err);

int32_t ns_tokenizer_n_vocab(const ns_tokenizer *t);
/* The model's convention: tokenizer.ggml.add_bos_token (default true for "llama",
 * false for "gpt2"). */
bool ns_tokenizer_add_bos(const ns_tokenizer *t);
int32_t ns_tokenizer_bos(const ns_tokenizer *t); /* -1 if none */
int32_t ns_tokenizer_eos(const ns_tokenizer *t); /* -1 if none */
int32_t ns_tokenizer_eot(const ns_tokenizer *t); /* end of turn (<|im_end|>, <|eot_id|>), -1 if none */
/* True for tokens that end generation: EOS, EOT and other end-of-generation markers. */
bool ns_tokenizer_is_eog(const ns_tokenizer *t, int32_t id);
/* True for control/special tokens (not rendered when decoding unless asked). */
bool ns_tokenizer_is_control(const ns_tokenizer *t, int32_t id);
/* The vocab string of a token as stored (borrowed, NUL-terminated), NULL if out of range. */
const char *ns_tokenizer_token_text(const ns_tokenizer *t, int32_t id);
/* Token id of an exact vocab string, or -1. */
int32_t ns_tokenizer_find(const ns_tokenizer *t, const char *text);
/* "gpt2" or "llama"; and the pre-tokenizer name ("smollm", "default", ...). Static/borrowed. */
const char *ns_tokenizer_model_name(const ns_tokenizer *t);
const char *ns_tokenizer_pre_name(const ns_tokenizer *t);

/* Raw bytes of one token (byte-level chars unmapped; SentencePiece U+2581 -> ' ';
 * <0xXX> -> that byte). Control tokens give their text only when render_special.
 * Writes at most cap bytes, returns the full length (like snprintf, no NUL), or -1 for an
 * id out of range. */
int ns_tokenizer_token_bytes(const ns_tokenizer *t, int32_t id, bool render_special, char *buf,
                             size_t cap);

/* Streaming decoder: feeds token ids, emits only complete UTF-8 sequences, holding back
 * an incomplete tail until the next token completes it (or ns_detok_flush). */
typedef struct ns_detok {
    char pending[8];
    int n_pending;
    bool render_special;
    bool at_start; /* SentencePiece: drop the one leading space of the first token */
} ns_detok;
void ns_detok_init(ns_detok *d, bool render_special);
/* Appends the decoded complete UTF-8 of token id to out (cap bytes); returns bytes written,
 * or -1 if cap is too small (needs at most 64 + token length) or id is out of range. */
int ns_detok_push(const ns_tokenizer *t, ns_detok *d, int32_t id, char *out, size_t cap);
/* Emits what is still pending (an invalid UTF-8 tail as U+FFFD). */
int ns_detok_flush(ns_detok *d, char *out, size_t cap);

#endif
