/* emu_fp8.cpp: the FP8 kernels (kernels/cuda/fp8.cu) run on the CPU through
 * tests/gpu/emu_cuda.h (one std::thread per CUDA thread).
 * The quantizer against ns_cpu_quant_rows_fp8: every byte and every scale equal, for fp32
 * and bf16 inputs, both the 4-wide and the scalar path, rows of 1 to 14336 elements, and
 * rows with zeros, tiny values, values that round to the largest code, an infinity or a
 * NaN; nothing written outside out and scales.
 * The fused ops (RMSNorm, with the residual add or not, and the bf16 SwiGLU, writing FP8
 * rows): their fp32 values within 1e-5 of ns_cpu_rmsnorm_ref (the block's sum runs in
 * another order) and the residual sum exact; their codes and scales exactly those of
 * ns_cpu_quant_rows_fp8 over the values they computed (the fp32 output they wrote, or for
 * SwiGLU the same expression on the CPU); the same codes with the fp32 output left out or
 * written over x; rows kept in registers (n <= 16384) and rows computed twice.
 * The FP8 GEMM's helpers where cuBLASLt lacks outer-vector scales: expand_scales (each
 * row's scale to each of its K blocks, both layouts) equal to the rule, scale_outer
 * (unscaled sums times the two scales, fp32 and bf16 out) bit for bit the stand-in's
 * arithmetic; nothing written outside their outputs; through the launchers (a 4096-block
 * grid cap, so grid-stride loops run more than once for the larger shapes).
 * tests/gpu/parity.c checks the real kernels on a GPU. Built and run by `make test`. */
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

/* RMSNorm writing FP8 rows: mode 0 out separate, 1 out NULL, 2 out over x; add: the
 * residual add first. Returns 1 if it passed. */
static int run_norm(int n_rows, int n, bool add) {
    const size_t N = (size_t)n_rows * n;
    std::vector<float> x0(N), delta(N), w(n), ref(N), xsum(N);
    for (auto &v : x0) v = rnd(2.0f);
    for (auto &v : delta) v = rnd(0.5f);
    for (auto &v : w) v = 0.5f + rnd(0.4f);
    for (size_t i = 0; i < N; i++) xsum[i] = add ? x0[i] + delta[i] : x0[i];
    ns_cpu_rmsnorm_ref(ref.data(), xsum.data(), w.data(), n_rows, n, 1e-5f);
    std::vector<uint8_t> q[3], q_ref(N);
    std::vector<float> sc[3], sc_ref(n_rows), out(N + 2 * CANARY, 12345.0f), x;
    int bad = 0;
    for (int mode = 0; mode < 3; mode++) {
        x = x0;
        q[mode].assign(N + 2 * CANARY, CANARY_BYTE);
        sc[mode].assign((size_t)n_rows + 2 * CANARY, 12345.0f);
        float *o = mode == 0 ? out.data() + CANARY : mode == 1 ? nullptr : x.data();
        uint8_t *qq = q[mode].data() + CANARY;
        float *ss = sc[mode].data() + CANARY;
        const float *wp = w.data(), *dp = delta.data();
        float *xp = x.data();
        const bool keep = n <= FP8_KEEP_N;
        emu_launch((unsigned)n_rows, 1, FP8_THREADS, 0, [=] {
            if (add && keep) rmsnorm_fp8_kernel<true, true>(xp, dp, o, qq, ss, wp, n, 1e-5f);
            if (add && !keep) rmsnorm_fp8_kernel<true, false>(xp, dp, o, qq, ss, wp, n, 1e-5f);
            if (!add && keep) rmsnorm_fp8_kernel<false, true>(xp, nullptr, o, qq, ss, wp, n, 1e-5f);
            if (!add && !keep) rmsnorm_fp8_kernel<false, false>(xp, nullptr, o, qq, ss, wp, n, 1e-5f);
        });
        if (add && mode != 2)
            for (size_t i = 0; i < N; i++) bad += __float_as_uint(x[i]) != __float_as_uint(xsum[i]); /* x += delta, exactly */
        if (mode == 0) {
            for (size_t i = 0; i < N; i++) /* the values, against the CPU's */
                if (!(std::fabs(o[i] - ref[i]) <= 1e-5f * (1.0f + std::fabs(ref[i]))) && bad++ < 3)
                    std::printf("  rmsnorm_fp8 elem %zu: %.9g, reference %.9g\n", i, (double)o[i], (double)ref[i]);
            ns_cpu_quant_rows_fp8(q_ref.data(), sc_ref.data(), o, n_rows, n); /* the codes of those values */
            for (int i = 0; i < CANARY; i++) bad += out[i] != 12345.0f || out[CANARY + N + i] != 12345.0f;
        }
        for (size_t i = 0; i < N; i++)
            if (qq[i] != q_ref[i] && bad++ < 6)
                std::printf("  rmsnorm_fp8 mode %d elem %zu: code %02x, reference %02x\n", mode, i, qq[i], q_ref[i]);
        for (int r = 0; r < n_rows; r++) bad += __float_as_uint(ss[r]) != __float_as_uint(sc_ref[r]);
        for (int i = 0; i < CANARY; i++)
            bad += q[mode][i] != CANARY_BYTE || q[mode][CANARY + N + i] != CANARY_BYTE ||
                   sc[mode][i] != 12345.0f || sc[mode][CANARY + n_rows + i] != 12345.0f;
    }
    std::printf("%s emu %srmsnorm_fp8 %d rows x %d (%s): fp32 out, none, over x\n", bad ? "FAIL" : "ok  ",
                add ? "add_" : "", n_rows, n, n <= FP8_KEEP_N ? "kept in registers" : "computed twice");
    return bad == 0;
}

static int run_swiglu(int n_rows, int n) {
    const size_t N = (size_t)n_rows * n;
    std::vector<__nv_bfloat16> g(N), u(N);
    std::vector<float> v(N);
    for (size_t i = 0; i < N; i++) {
        g[i] = __float2bfloat16_rn(rnd(6.0f));
        u[i] = __float2bfloat16_rn(rnd(2.0f));
        float gf = __bfloat162float(g[i]);
        v[i] = gf / (1.0f + expf(-gf)) * __bfloat162float(u[i]);
    }
    std::vector<uint8_t> q(N + 2 * CANARY, CANARY_BYTE), q_ref(N);
    std::vector<float> sc(n_rows + 2 * CANARY, 12345.0f), sc_ref(n_rows);
    ns_cpu_quant_rows_fp8(q_ref.data(), sc_ref.data(), v.data(), n_rows, n);
    uint8_t *qq = q.data() + CANARY;
    float *ss = sc.data() + CANARY;
    const __nv_bfloat16 *gp = g.data(), *up = u.data();
    emu_launch((unsigned)n_rows, 1, FP8_THREADS, 0, [=] {
        if (n <= FP8_KEEP_N) swiglu_bf16_fp8_kernel<true>(qq, ss, gp, up, n);
        else swiglu_bf16_fp8_kernel<false>(qq, ss, gp, up, n);
    });
    int bad = 0;
    for (size_t i = 0; i < N; i++)
        if (qq[i] != q_ref[i] && bad++ < 3)
            std::printf("  swiglu_bf16_fp8 elem %zu: code %02x, reference %02x\n", i, qq[i], q_ref[i]);
    for (int r = 0; r < n_rows; r++) bad += __float_as_uint(ss[r]) != __float_as_uint(sc_ref[r]);
    for (int i = 0; i < CANARY; i++)
        bad += q[i] != CANARY_BYTE || q[CANARY + N + i] != CANARY_BYTE || sc[i] != 12345.0f ||
               sc[CANARY + n_rows + i] != 12345.0f;
    std::printf("%s emu swiglu_bf16_fp8 %d rows x %d (%s)\n", bad ? "FAIL" : "ok  ", n_rows, n,
                n <= FP8_KEEP_N ? "kept in registers" : "computed twice");
    return bad == 0;
}

/* expand_scales through its launcher: dst (rows * kb) equal to src[r] at [r][j] or [j][r]. */
static bool run_expand(int64_t rows, int kb, bool kb_major) {
    const int64_t n = rows * kb;
    std::vector<float> src(rows), dst(n + 2 * CANARY, 12345.0f);
    for (int64_t r = 0; r < rows; r++) src[r] = rnd(5.0f);
    float *d = dst.data() + CANARY;
    int bad = ns_cuda_expand_scales(d, src.data(), rows, kb, kb_major, nullptr) != cudaSuccess ||
              cudaGetLastError() != cudaSuccess;
    for (int64_t r = 0; r < rows; r++)
        for (int j = 0; j < kb; j++) bad += d[kb_major ? j * rows + r : r * kb + j] != src[r];
    for (int i = 0; i < CANARY; i++) bad += dst[i] != 12345.0f || dst[CANARY + n + i] != 12345.0f;
    std::printf("%s emu expand_scales %lld rows x %d blocks, %s\n", bad ? "FAIL" : "ok  ", (long long)rows, kb,
                kb_major ? "[block][row]" : "[row][block]");
    return bad == 0;
}

/* scale_outer through its launcher: y (M, N) = raw * (a_scale[n] * b_scale[m]), bit for bit. */
static bool run_scale_outer(int M, int N, bool bf16) {
    const int64_t n = (int64_t)M * N;
    std::vector<float> raw(n), sa(N), sb(M), y32(n + 2 * CANARY, 12345.0f);
    std::vector<uint16_t> y16(n + 2 * CANARY, 0x7777);
    for (int64_t i = 0; i < n; i++) raw[i] = rnd(3e5f);
    for (int i = 0; i < N; i++) sa[i] = rnd(0.01f);
    for (int i = 0; i < M; i++) sb[i] = rnd(2.0f);
    void *y = bf16 ? (void *)(y16.data() + CANARY) : (void *)(y32.data() + CANARY);
    int bad = ns_cuda_scale_outer(y, bf16 ? NS_CUDA_TYPE_BF16 : NS_CUDA_TYPE_F32, raw.data(), sa.data(), sb.data(), M,
                                  N, nullptr) != cudaSuccess ||
              cudaGetLastError() != cudaSuccess;
    for (int64_t i = 0; i < n; i++) {
        const float v = raw[i] * (sa[i % N] * sb[i / N]);
        bad += bf16 ? y16[CANARY + i] != ns_fp32_to_bf16(v) : __float_as_uint(y32[CANARY + i]) != __float_as_uint(v);
    }
    for (int i = 0; i < CANARY; i++)
        bad += bf16 ? y16[i] != 0x7777 || y16[CANARY + n + i] != 0x7777
                    : y32[i] != 12345.0f || y32[CANARY + n + i] != 12345.0f;
    std::printf("%s emu scale_outer %d x %d, %s out\n", bad ? "FAIL" : "ok  ", M, N, bf16 ? "bf16" : "fp32");
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
    const int norm_shapes[][2] = {{2, 1}, {3, 7}, {2, 576}, {2, 2048}, {1, 16384}, {1, 20000}};
    for (auto &s : norm_shapes)
        for (bool add : {false, true}) run_norm(s[0], s[1], add) ? n_pass++ : n_fail++;
    const int swiglu_shapes[][2] = {{2, 1}, {3, 1536}, {2, 8192}, {1, 20000}};
    for (auto &s : swiglu_shapes) run_swiglu(s[0], s[1]) ? n_pass++ : n_fail++;
    const int expand_shapes[][2] = {{1, 1}, {7, 3}, {1000, 16}, {4096, 112}};
    for (auto &s : expand_shapes)
        for (bool kbm : {false, true}) run_expand(s[0], s[1], kbm) ? n_pass++ : n_fail++;
    const int outer_shapes[][2] = {{1, 16}, {7, 48}, {33, 1008}, {600, 2048}};
    for (auto &s : outer_shapes)
        for (bool bf16 : {false, true}) run_scale_outer(s[0], s[1], bf16) ? n_pass++ : n_fail++;
    std::printf("%d passed, %d failed, 0 skipped\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
