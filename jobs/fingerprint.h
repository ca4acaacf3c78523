/* fingerprint.h: what a job's results depend on, recorded at submit and checked before a
 * run resumes: the model file's content hash and size, the prompt templates, the chat
 * template family, the sampling parameters, the precision (default or fp8) and the engine
 * version. A changed fingerprint
 * refuses the run with a message that says what changed. */
#ifndef NS_FINGERPRINT_H
#define NS_FINGERPRINT_H

#include "common.h"
#include "spec.h"

#define NS_ENGINE_VERSION "nightshift-engine-1"

/* 64-bit content hash of a whole file (read in 1 MiB chunks), as 16 hex digits + NUL. */
ns_status ns_file_hash(const char *path, char hex[17], uint64_t *size, ns_error *err);

/* malloc'd JSON object text: {"engine", "model_hash", "model_size", "precision", "prompt",
 * "sampling"}. A fingerprint recorded before a key existed resumes: only the recorded keys
 * are compared. */
char *ns_fingerprint_make(const ns_job_spec *spec, const char *model_hash, uint64_t model_size);

/* Compares two fingerprints; returns NS_OK when equal, else NS_ERR_INVALID with a message
 * naming each key that differs and both values (shortened). */
ns_status ns_fingerprint_compare(const char *recorded, const char *current, ns_error *err);

#endif
