/* emu_fp8.cpp: the FP8 row quantizer (kernels/cuda/fp8.cu) run on the CPU through
 * tests/gpu/emu_cuda.h (one std::thread per CUDA thread), against ns_cpu_quant_rows_fp8:
 * every byte and every scale equal, for fp32 and bf16 inputs, both the 4-wide and the
 * scalar path, rows of 1 to 14336 elements, and rows with zeros, tiny values, values that
 * round to the largest code, an infinity or a NaN; nothing written outside out and scales.
 * tests/gpu/parity.c checks the real kernel on a GPU. Built and run by `make test`. */
#include "emu_cuda.h"
#include "../../kernels/cuda/fp8.cu"

extern "C" {
#include "ops.h"
}

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static float rnd(float amp) { /* uniform in [-amp, amp) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return amp * ((float)(rng_state >> 40) / (float)(1u << 24) * 2.0f - 1.0f);
}

enum { CANARY = 64, EMU_F32, EMU_BF16 };
static const uint8_t CANARY_BYTE = 0xa5;

/* Row r of a case: mostly random with a per-row amplitude; some rows special. */
static void fill_row(float *x, int64_t n, int r) {
    const float amps[] = {1.0f, 3e-3f, 250.0f, 1e-30f, 7.0f};
    for (int64_t i = 0; i < n; i++) x[i] = rnd(amps[r % 5]);
    switch (r % 9) {
    case 5: for (int64_t i = 0; i < n; i++) x[i] = 0.0f; break;          /* zeros: scale 1 */
    case 6: x[n / 2] = INFINITY; break;                                   /* scale NaN */
    case 7: x[n - 1] = NAN; break;                                        /* NaN last: must survive the max */
    case 8: x[0] = -1000.0f; if (n > 1) x[n - 1] = 999.9f; break;         /* near the top code */
    default: break;
    }
}

static bool same_float(float a, float b) { return __float_as_uint(a) == __float_as_uint(b) || (a != a && b != b); }

/* One case; returns 1 if it passed. in_type: EMU_F32 or _BF16; offset: bytes
 * added to out (1 forces the scalar path). */
static int run_case(int64_t n_rows, int64_t n, int in_type, size_t offset) {
    std::vector<float> x((size_t)(n_rows * n)), xr((size_t)(n_rows * n));
    std::vector<__nv_bfloat16> xb((size_t)(n_rows * n));
    for (int64_t r = 0; r < n_rows; r++) fill_row(&x[(size_t)(r * n)], n, (int)r);
    for (size_t i = 0; i < x.size(); i++) {
        xb[i] = __float2bfloat16_rn(x[i]);
        xr[i] = in_type == EMU_BF16 ? __bfloat162float(xb[i]) : x[i]; /* what the kernel reads */
    }
    std::vector<uint8_t> ref((size_t)(n_rows * n)), outbuf((size_t)(n_rows * n) + 2 * CANARY + 8, CANARY_BYTE);
    std::vector<float> ref_s((size_t)n_rows), sbuf((size_t)n_rows + 2 * CANARY, 12345.0f);
    ns_cpu_quant_rows_fp8(ref.data(), ref_s.data(), xr.data(), n_rows, n);
    uint8_t *out = outbuf.data() + CANARY + offset;
    float *scales = sbuf.data() + CANARY;
    const bool vec = quant_rows_vec(out, n);
    emu_launch((unsigned)n_rows, 1, FP8_THREADS, 0, [&] {
        if (in_type == EMU_F32) {
            if (vec) quant_rows_fp8_kernel<float, true>(out, scales, x.data(), n);
            else quant_rows_fp8_kernel<float, false>(out, scales, x.data(), n);
        } else {
            if (vec) quant_rows_fp8_kernel<__nv_bfloat16, true>(out, scales, xb.data(), n);
            else quant_rows_fp8_kernel<__nv_bfloat16, false>(out, scales, xb.data(), n);
        }
    });
    int bad = 0;
    for (int64_t i = 0; i < n_rows * n; i++)
        if (out[i] != ref[(size_t)i] && bad++ < 3)
            std::printf("  row %lld elem %lld: x %a code %02x, reference %02x\n", (long long)(i / n),
                        (long long)(i % n), (double)xr[(size_t)i], out[i], ref[(size_t)i]);
    for (int64_t r = 0; r < n_rows; r++)
        if (!same_float(scales[r], ref_s[(size_t)r]) && bad++ < 6)
            std::printf("  row %lld: scale %a, reference %a\n", (long long)r, (double)scales[r],
                        (double)ref_s[(size_t)r]);
    for (size_t i = 0; i < CANARY + offset; i++) bad += outbuf[i] != CANARY_BYTE;
    for (size_t i = CANARY + offset + (size_t)(n_rows * n); i < outbuf.size(); i++) bad += outbuf[i] != CANARY_BYTE;
    for (int i = 0; i < CANARY; i++) bad += sbuf[(size_t)i] != 12345.0f || sbuf[(size_t)(CANARY + n_rows + i)] != 12345.0f;
    /* the reference itself: special rows give the stated scales */
    for (int64_t r = 0; r < n_rows; r++) {
        int kind = (int)(r % 9);
        if (kind == 5 && ref_s[(size_t)r] != 1.0f) bad++;
        if ((kind == 6 || kind == 7) && ref_s[(size_t)r] == ref_s[(size_t)r]) bad++;
    }
    std::printf("%s emu quant_rows_fp8 %lld rows x %lld, %s input, %s path\n", bad ? "FAIL" : "ok  ",
                (long long)n_rows, (long long)n, in_type == EMU_F32 ? "fp32" : "bf16",
                vec ? "4-wide" : "scalar");
    return bad == 0;
}

int main() {
    const int64_t shapes[][2] = {{9, 1}, {9, 3}, {18, 7}, {9, 576}, {10, 1000}, {9, 4099}, {3, 14336}};
    int n_pass = 0, n_fail = 0;
    for (auto &s : shapes)
        for (int type : {EMU_F32, EMU_BF16})
            for (size_t offset : {(size_t)0, (size_t)1}) {
                if (offset && s[1] % 4) continue; /* already scalar */
                run_case(s[0], s[1], type, offset) ? n_pass++ : n_fail++;
            }
    std::printf("%d passed, %d failed, 0 skipped\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
