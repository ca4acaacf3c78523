/* emu_sample_rows.cpp: the CUDA row-sampling kernel (kernels/cuda/sample_rows.cu) run on
 * the CPU, one std::thread per CUDA thread, against ns_cpu_sample_rows_ref. It checks the
 * kernel's logic (the radix selections, the reductions, the barriers' placement) on a
 * machine without a GPU; tests/gpu/parity.c checks the real thing on a GPU.
 *
 * The emulation is tests/gpu/emu_cuda.h's (this file is compiled with -ffp-contract=off,
 * so that the __f*_rn intrinsics are the plain IEEE operations). A missing __syncthreads
 * can go unnoticed here (the threads are scheduled differently), a wrong selection
 * cannot.
 * Built and run by `make test` (tests/run.sh) when a C++20 compiler is present.
 */
#include "emu_cuda.h"
#include "../../kernels/cuda/sample_rows.cu"

extern "C" {
#include "ops.h"
}
#include "sample_cases.h"

/* Runs sample_rows_kernel over n_rows blocks of SR_THREADS threads, one block at a time
 * (the __shared__ statics are the block's). */
static void emu_sample_rows(int32_t *ids, const float *logits, int n_rows, int n_vocab, const ns_row_sampling *p) {
    emu_launch((unsigned)n_rows, 1, SR_THREADS, 0, [=] { sample_rows_kernel(ids, logits, n_vocab, p); });
}

int main() {
    const int vocabs[] = {1, 7, 8, 300, 4099, 40000};
    const int rows = NS_SAMPLE_CASE_ROWS;
    uint64_t rng = 12345;
    int n_pass = 0, n_fail = 0;
    for (int n : vocabs) {
        std::vector<float> x((size_t)rows * n);
        std::vector<ns_row_sampling> ps(rows);
        std::vector<uint64_t> scratch(2 * (size_t)n);
        std::vector<int32_t> ref(rows), got(rows, -7);
        ns_sample_cases(&rng, n, x.data(), ps.data());
        ns_cpu_sample_rows_ref(ref.data(), x.data(), rows, n, ps.data(), scratch.data());
        emu_sample_rows(got.data(), x.data(), rows, n, ps.data());
        int bad = 0;
        for (int i = 0; i < rows; i++) {
            const int32_t want = ns_sample_case_expect(i, n);
            if (got[i] == ref[i] && (want == -2 || want == ref[i])) continue;
            if (bad++ < 5)
                std::printf("FAIL emu sample_rows n_vocab %d row %d (T %g top_k %d top_p %g min_p %g u %.17g): %d, "
                            "reference %d, expected %d\n",
                            n, i, (double)ps[i].temperature, ps[i].top_k, (double)ps[i].top_p, (double)ps[i].min_p,
                            ps[i].u, got[i], ref[i], want);
        }
        if (!bad) std::printf("ok   emu sample_rows %d rows, n_vocab %d\n", rows, n);
        bad ? n_fail++ : n_pass++;
    }
    std::printf("%d passed, %d failed, 0 skipped\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
