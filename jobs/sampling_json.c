/* sampling_json.c: see sampling_json.h. */
#include "sampling_json.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

char *ns_sampling_to_json(const ns_sampling *s) {
    json_t *o = json_object(), *stop = json_array(), *stop_tokens = json_array();
    if (!o || !stop || !stop_tokens) goto oom;
    for (int i = 0; i < s->n_stop; i++) json_array_append_new(stop, json_string(s->stop[i]));
    for (int i = 0; i < s->n_stop_tokens; i++) json_array_append_new(stop_tokens, json_integer(s->stop_tokens[i]));
    json_object_set_new(o, "temperature", json_real(s->temperature));
    json_object_set_new(o, "top_k", json_integer(s->top_k));
    json_object_set_new(o, "top_p", json_real(s->top_p));
    json_object_set_new(o, "min_p", json_real(s->min_p));
    json_object_set_new(o, "repeat_penalty", json_real(s->repeat_penalty));
    json_object_set_new(o, "repeat_last_n", json_integer(s->repeat_last_n));
    json_object_set_new(o, "presence_penalty", json_real(s->presence_penalty));
    json_object_set_new(o, "frequency_penalty", json_real(s->frequency_penalty));
    /* seeds are u64: as a decimal string, JSON integers are only safe to 2^53 */
    char seed[32];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)s->seed);
    json_object_set_new(o, "seed", json_string(seed));
    json_object_set_new(o, "max_tokens", json_integer(s->max_tokens));
    json_object_set_new(o, "n_logprobs", json_integer(s->n_logprobs));
    json_object_set_new(o, "ignore_eos", json_boolean(s->ignore_eos));
    json_object_set_new(o, "stop", stop);
    json_object_set_new(o, "stop_tokens", stop_tokens);
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
oom:
    json_decref(o);
    json_decref(stop);
    json_decref(stop_tokens);
    return NULL;
}

ns_status ns_sampling_from_json(const char *text, ns_sampling *out, ns_error *err) {
    json_error_t je;
    json_t *o = json_loads(text, JSON_REJECT_DUPLICATES, &je);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return ns_error_set(err, NS_ERR_FORMAT, "sampling json: %s", o ? "not an object" : je.text);
    }
    ns_sampling s;
    ns_sampling_default(&s);
    ns_status st = NS_OK;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        bool num = json_is_number(v), integer = json_is_integer(v);
        double d = num ? json_number_value(v) : 0;
        if (!strcmp(key, "temperature") && num) s.temperature = (float)d;
        else if (!strcmp(key, "top_p") && num) s.top_p = (float)d;
        else if (!strcmp(key, "min_p") && num) s.min_p = (float)d;
        else if (!strcmp(key, "repeat_penalty") && num) s.repeat_penalty = (float)d;
        else if (!strcmp(key, "presence_penalty") && num) s.presence_penalty = (float)d;
        else if (!strcmp(key, "frequency_penalty") && num) s.frequency_penalty = (float)d;
        else if (!strcmp(key, "top_k") && integer) s.top_k = (int32_t)json_integer_value(v);
        else if (!strcmp(key, "repeat_last_n") && integer) s.repeat_last_n = (int32_t)json_integer_value(v);
        else if (!strcmp(key, "max_tokens") && integer) s.max_tokens = (int32_t)json_integer_value(v);
        else if (!strcmp(key, "n_logprobs") && integer) s.n_logprobs = (int32_t)json_integer_value(v);
        else if (!strcmp(key, "ignore_eos") && json_is_boolean(v)) s.ignore_eos = json_is_true(v);
        else if (!strcmp(key, "seed") && json_is_string(v)) {
            char *end;
            s.seed = strtoull(json_string_value(v), &end, 10);
            if (*end) st = ns_error_set(err, NS_ERR_FORMAT, "sampling json: seed '%s' is not a number", json_string_value(v));
        } else if (!strcmp(key, "stop") && json_is_array(v) && json_array_size(v) <= NS_MAX_STOP) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) {
                const char *str = json_string_value(e);
                if (!str || strlen(str) >= NS_MAX_STOP_LEN) {
                    st = ns_error_set(err, NS_ERR_FORMAT, "sampling json: stop[%zu] is not a string of < %d bytes", i,
                                      NS_MAX_STOP_LEN);
                    break;
                }
                strcpy(s.stop[s.n_stop++], str);
            }
        } else if (!strcmp(key, "stop_tokens") && json_is_array(v) && json_array_size(v) <= NS_MAX_STOP) {
            size_t i;
            json_t *e;
            json_array_foreach(v, i, e) s.stop_tokens[s.n_stop_tokens++] = (int32_t)json_integer_value(e);
        } else {
            st = ns_error_set(err, NS_ERR_FORMAT, "sampling json: unexpected key '%s' or type", key);
        }
        if (st) break;
    }
    json_decref(o);
    if (st) return st;
    if ((st = ns_sampling_validate(&s, INT32_MAX, err))) return st;
    *out = s;
    return NS_OK;
}
