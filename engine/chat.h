/* chat.h: chat templates: turning a list of messages into the prompt text a chat model
 * was trained on.
 *
 * A GGUF carries tokenizer.chat_template, a Jinja program. We do not run Jinja:
 * ns_chat_template_detect recognises the family from marker strings in the template
 * text (and lifts a few literals out of it, such as a default system message), and
 * ns_chat_render writes that family's format in C. For plain string messages the result
 * is byte-for-byte what HF transformers' apply_chat_template gives for the templates
 * the tests embed (SmolLM2, Llama 3, Llama 3.1, Llama 2, Mistral, Zephyr, Gemma), minus
 * the leading BOS (below). Tools, images and other template features are not rendered.
 *
 * BOS: the rendered text never starts with the BOS token ("<|begin_of_text|>", "<s>",
 * "<bos>"). The caller adds it when tokenizing: ns_tokenizer_encode(text, add_bos = the
 * model's tokenizer.ggml.add_bos_token, parse_special = true). Markers inside the
 * conversation ("<|im_start|>", "</s>" after an assistant turn, llama2's "<s>" before
 * each later [INST]) are emitted as text and must be tokenized with parse_special.
 * EOS text: the llama2, mistral and zephyr formats write "</s>", the EOS of those models.
 *
 * Thread-safety: a detected template is read-only; render may run concurrently.
 */
#ifndef NS_CHAT_H
#define NS_CHAT_H

#include "common.h"

typedef enum ns_chat_family {
    NS_CHAT_NONE = 0, /* no template: the model takes raw prompts only */
    NS_CHAT_CHATML,   /* <|im_start|>role\ncontent<|im_end|>\n (SmolLM2, Qwen, ...) */
    NS_CHAT_LLAMA3,   /* <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> */
    NS_CHAT_LLAMA2,   /* <s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nuser [/INST] answer </s> */
    NS_CHAT_MISTRAL,  /* [INST] sys\n\nuser [/INST] answer</s> (no system block) */
    NS_CHAT_ZEPHYR,   /* <|user|>\ncontent</s>\n (Zephyr, TinyLlama chat) */
    NS_CHAT_GEMMA,    /* <start_of_turn>user\ncontent<end_of_turn>\n, assistant = "model" */
} ns_chat_family;

typedef struct ns_chat_msg {
    const char *role;    /* "system", "user" or "assistant" */
    const char *content; /* NUL-terminated UTF-8, anything (markers are not escaped) */
} ns_chat_msg;

typedef struct ns_chat_template {
    ns_chat_family family;
    /* chatml: the system message the template inserts when the first message is not a
     * system one (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by
     * Hugging Face"), taken from the template text. Owned, or NULL for none. */
    char *default_system;
    /* llama3: text that opens the system turn, which is then always emitted, even with
     * no system message (Llama 3.1+: "Cutting Knowledge Date: December 2023\nToday Date:
     * 26 Jul 2024\n\n", the date being the template's fixed fallback so that prompts do
     * not change from day to day). Owned, or NULL for Llama 3.0 behaviour. */
    char *system_preamble;
    /* mistral: true for the v0.2-style spacing (" [INST] user [/INST] answer</s>"),
     * false for v0.1 ("[INST] user [/INST]answer</s>"), as read from the template. */
    bool mistral_spaced;
} ns_chat_template;

/* Recognises the family of a Jinja chat template (len bytes, need not be
 * NUL-terminated; NULL or empty: NS_CHAT_NONE, NS_OK). Fills *out, which the caller
 * releases with ns_chat_template_free. Errors: NS_ERR_UNSUPPORTED for a template of no
 * known family (the message quotes its start and lists the families; *out is then
 * NS_CHAT_NONE, so a caller that only runs raw prompts may go on), NS_ERR_NOMEM.
 * Callers that need a chat format and get NS_CHAT_NONE report "model has no chat
 * template" for the item. */
ns_status ns_chat_template_detect(const char *jinja, size_t len, ns_chat_template *out,
                                  ns_error *err);

/* A template of a named family ("chatml", "llama3", "llama2", "mistral", "zephyr",
 * "gemma"), with no default system message or preamble: for job specs that override
 * the model's template. Errors: NS_ERR_INVALID naming the value and the choices. */
ns_status ns_chat_template_from_name(const char *name, ns_chat_template *out, ns_error *err);

/* Frees what the template owns and resets it to NS_CHAT_NONE. NULL-tolerant. */
void ns_chat_template_free(ns_chat_template *t);

/* "none", "chatml", "llama3", "llama2", "mistral", "zephyr", "gemma" ("unknown" for a
 * value out of range). Static string. */
const char *ns_chat_family_name(ns_chat_family f);

/* Renders n_msgs messages; with add_generation_prompt, appends the opening of an
 * assistant turn (families whose template has none, llama2 and mistral, ignore it).
 * *out is malloc'd and NUL-terminated, caller frees; *out_len excludes the NUL.
 * Errors (item errors; *out is NULL): NS_ERR_INVALID for no messages, a NULL role or
 * content, a role other than system/user/assistant (names the role and the message
 * index), and for llama2, mistral and gemma a system message anywhere but first or
 * user/assistant turns that do not alternate starting with user (as their templates
 * raise); NS_ERR_UNSUPPORTED for NS_CHAT_NONE ("model has no chat template");
 * NS_ERR_NOMEM. */
ns_status ns_chat_render(const ns_chat_template *t, const ns_chat_msg *msgs, int n_msgs,
                         bool add_generation_prompt, char **out, size_t *out_len,
                         ns_error *err);

#endif
