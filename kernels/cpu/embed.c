/* embed.c: token embedding gather. Each output row is one row of the embedding table,
 * dequantised from the table's storage type with ns_cpu_dequant_row. The caller checks
 * ids against n_vocab; n_embd must be a multiple of the type's block size (32 for the
 * quantised types), which the model loader checks.
 */
#include "ops.h"
#include "gguf.h"

/* Bytes of one table row of n elements (the kernels do not depend on gguf.c). */
static size_t row_nbytes(int type, int n) {
    switch (type) {
    case NS_GGML_F32: return (size_t)n * 4;
    case NS_GGML_F16:
    case NS_GGML_BF16: return (size_t)n * 2;
    case NS_GGML_Q8_0: return (size_t)(n / 32) * 34;
    case NS_GGML_Q4_0: return (size_t)(n / 32) * 18;
    case NS_GGML_Q4_1: return (size_t)(n / 32) * 20;
    default: NS_ASSERT(!"ns_cpu_embed: unknown type");
    }
    return 0;
}

void ns_cpu_embed(float *out, const void *table, int type, const int32_t *ids, int n_tokens,
                  int n_embd) {
    size_t nbytes = row_nbytes(type, n_embd);
    for (int i = 0; i < n_tokens; i++)
        ns_cpu_dequant_row(type, (const uint8_t *)table + (size_t)ids[i] * nbytes,
                           out + (size_t)i * n_embd, n_embd);
}
