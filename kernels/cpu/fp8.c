/* fp8.c: FP8 E4M3 rows with a scale per row (the rule in fp8.h), and the product of two
 * such matrices: the CPU references of the CUDA backend's FP8 path (NS_CUDA_FP8=1), which
 * quantizes the weights per output row at load and each matmul input per token, and
 * multiplies them with cuBLASLt. The CUDA stand-in (tests/cudamock) and the GPU checks
 * (tests/gpu/parity.c) compare against these. */
#include "fp8.h"

#include <math.h>

#include "ops.h"

void ns_cpu_quant_rows_fp8(uint8_t *out, float *scales, const float *x, int64_t n_rows, int64_t n) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * n;
        uint8_t *o = out + r * n;
        float m = 0.0f;
        for (int64_t i = 0; i < n; i++) {
            float v = fabsf(xr[i]);
            if (!(m != m || v <= m)) m = v; /* NaN once seen is kept, as in the kernel */
        }
        float inv;
        scales[r] = ns_fp8_row_scale(m, &inv);
        for (int64_t i = 0; i < n; i++) o[i] = ns_fp8_e4m3_from_float(xr[i] * inv);
    }
}

void ns_cpu_matmul_fp8_ref(float *y, const uint8_t *xq, const float *x_scales, const uint8_t *wq,
                           const float *w_scales, int M, int N, int K) {
    float lut[256];
    for (int q = 0; q < 256; q++) lut[q] = ns_fp8_e4m3_to_float((uint8_t)q);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            const uint8_t *a = xq + (size_t)m * K, *b = wq + (size_t)n * K;
            double acc = 0.0;
            for (int k = 0; k < K; k++) acc += (double)lut[a[k]] * (double)lut[b[k]];
            y[(size_t)m * N + n] = (float)acc * (x_scales[m] * w_scales[n]);
        }
}
