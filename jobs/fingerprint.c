/* fingerprint.c: see fingerprint.h. The file hash is a 64-bit multiply-xorshift over
 * 8-byte words: not cryptographic, it detects a changed or replaced model file. */
#include "fingerprint.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampling_json.h"

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v * 0x9E3779B97F4A7C15ull;
    h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9ull;
    return h ^ (h >> 32);
}

ns_status ns_file_hash(const char *path, char hex[17], uint64_t *size, ns_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return ns_error_set(err, NS_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK);
    if (!buf) {
        fclose(f);
        return ns_error_set(err, NS_ERR_NOMEM, "out of memory hashing '%s'", path);
    }
    uint64_t h = 0x6A09E667F3BCC908ull, total = 0;
    size_t n;
    while ((n = fread(buf, 1, CHUNK, f)) > 0) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t v;
            memcpy(&v, buf + i, 8);
            h = mix(h, v);
        }
        for (; i < n; i++) h = mix(h, buf[i]);
        total += n;
    }
    bool bad = ferror(f);
    free(buf);
    fclose(f);
    if (bad) return ns_error_set(err, NS_ERR_IO, "cannot read '%s'", path);
    h = mix(h, total);
    snprintf(hex, 17, "%016llx", (unsigned long long)h);
    *size = total;
    return NS_OK;
}

char *ns_fingerprint_make(const ns_job_spec *spec, const char *model_hash, uint64_t model_size) {
    char *samp = ns_sampling_to_json(&spec->sampling);
    json_error_t je;
    json_t *sj = samp ? json_loads(samp, 0, &je) : NULL;
    free(samp);
    json_t *o = json_object();
    json_t *prompt = json_object();
    if (!sj || !o || !prompt) {
        json_decref(sj);
        json_decref(o);
        json_decref(prompt);
        return NULL;
    }
    json_object_set_new(prompt, "template", spec->prompt_template ? json_string(spec->prompt_template) : json_null());
    json_object_set_new(prompt, "system", spec->system_template ? json_string(spec->system_template) : json_null());
    json_object_set_new(prompt, "user", spec->user_template ? json_string(spec->user_template) : json_null());
    json_object_set_new(prompt, "chat", json_boolean(spec->chat));
    json_object_set_new(prompt, "n", json_integer(spec->n));
    json_object_set_new(prompt, "deterministic", json_boolean(spec->deterministic));
    json_object_set_new(o, "engine", json_string(NS_ENGINE_VERSION));
    json_object_set_new(o, "model_hash", json_string(model_hash));
    json_object_set_new(o, "model_size", json_integer((json_int_t)model_size));
    json_object_set_new(o, "precision", json_string(spec->fp8 ? "fp8" : "default"));
    json_object_set_new(o, "prompt", prompt);
    json_object_set_new(o, "sampling", sj);
    char *text = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
}

ns_status ns_fingerprint_compare(const char *recorded, const char *current, ns_error *err) {
    json_error_t je;
    json_t *a = json_loads(recorded, 0, &je), *b = json_loads(current, 0, &je);
    ns_status st = NS_OK;
    if (!json_is_object(a) || !json_is_object(b)) {
        st = ns_error_set(err, NS_ERR_FORMAT, "fingerprint: recorded or current fingerprint is not a JSON object");
        goto done;
    }
    char msg[480] = "";
    size_t used = 0;
    const char *key;
    json_t *va;
    json_object_foreach(a, key, va) {
        json_t *vb = json_object_get(b, key);
        if (vb && json_equal(va, vb)) continue;
        char *sa = json_dumps(va, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
        char *sb = vb ? json_dumps(vb, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS) : NULL;
        int w = snprintf(msg + used, sizeof msg - used, "%s%s was %.60s, now %.60s", used ? "; " : "", key,
                         sa ? sa : "?", sb ? sb : "(absent)");
        if (w > 0) used = NS_MIN(sizeof msg - 1, used + (size_t)w);
        free(sa);
        free(sb);
    }
    if (used) st = ns_error_set(err, NS_ERR_INVALID, "the job's fingerprint changed: %s", msg);
done:
    json_decref(a);
    json_decref(b);
    return st;
}
