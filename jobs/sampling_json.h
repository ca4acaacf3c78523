/* sampling_json.h: ns_sampling to and from JSON text (jansson), for per-item overrides
 * stored in the queue and for the job fingerprint. Every field is written; reading
 * accepts exactly what writing produces (unknown keys are errors) and validates. */
#ifndef NS_SAMPLING_JSON_H
#define NS_SAMPLING_JSON_H

#include "common.h"
#include "sampler.h"

/* malloc'd compact JSON object with sorted keys; NULL on OOM. */
char *ns_sampling_to_json(const ns_sampling *s);
/* Parses what ns_sampling_to_json wrote. Errors: NS_ERR_FORMAT naming the key. */
ns_status ns_sampling_from_json(const char *json, ns_sampling *out, ns_error *err);

#endif
