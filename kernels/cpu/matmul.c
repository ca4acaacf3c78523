/* matmul.c: y = x . W^T for activations x (M, K) and a weight matrix W (N, K) stored row
 * by row as GGUF does (each output feature's weights contiguous). The fast version is one
 * OpenBLAS sgemm, which threads itself; the reference is a plain triple loop with double
 * accumulation, the yardstick for the tests.
 */
#include "ops.h"

#include <cblas.h>

void ns_cpu_matmul_ref(float *y, const float *x, const float *w, int M, int N, int K) {
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * K;
        for (int n = 0; n < N; n++) {
            const float *wr = w + (size_t)n * K;
            double acc = 0.0;
            for (int k = 0; k < K; k++) acc += (double)xr[k] * (double)wr[k];
            y[(size_t)m * N + n] = (float)acc;
        }
    }
}

void ns_cpu_matmul(float *y, const float *x, const float *w, int M, int N, int K) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* an empty sum: y = 0, without relying on the BLAS's K = 0 path */
        for (size_t i = 0; i < (size_t)M * N; i++) y[i] = 0.0f;
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);
}
