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
 * written over x; the fp32 values and x bit for bit those of rmsnorm.cu's kernels (the
 * same sums in the same order: the GPU's parity check holds them to that); through the
 * launchers, at each width kept in registers and one computed twice; SwiGLU's 8-wide and
 * 1-wide paths likewise.
 * The FP8 GEMM's helpers where cuBLASLt lacks outer-vector scales: expand_scales (each
 * row's scale to each of its K blocks, both layouts) equal to the rule, scale_outer
 * (unscaled sums times the two scales, fp32 and bf16 out) bit for bit the stand-in's
 * arithmetic; nothing written outside their outputs; through the launchers (a 4096-block
 * grid cap, so grid-stride loops run more than once for the larger shapes).
 * tests/gpu/parity.c checks the real kernels on a GPU. Built and run by `make test`. */
#include "emu_cuda.h"
#include "../../kernels/cuda/fp8.cu"
#include "../../kernels/cuda/rmsnorm.cu"

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
        const cudaError_t e = add ? ns_cuda_add_rmsnorm_fp8(xp, dp, o, qq, ss, wp, n_rows, n, 1e-5f, nullptr)
                                  : ns_cuda_rmsnorm_fp8(o, qq, ss, xp, wp, n_rows, n, 1e-5f, nullptr);
        bad += e != cudaSuccess || cudaGetLastError() != cudaSuccess;
        if (add && mode != 2)
            for (size_t i = 0; i < N; i++) bad += __float_as_uint(x[i]) != __float_as_uint(xsum[i]); /* x += delta, exactly */
        if (mode == 0) {
            for (size_t i = 0; i < N; i++) /* the values, against the CPU's */
                if (!(std::fabs(o[i] - ref[i]) <= 1e-5f * (1.0f + std::fabs(ref[i]))) && bad++ < 3)
                    std::printf("  rmsnorm_fp8 elem %zu: %.9g, reference %.9g\n", i, (double)o[i], (double)ref[i]);
            /* and bit for bit those of rmsnorm.cu's kernel (the one the bf16 path runs) */
            std::vector<float> xu = x0, du = delta, ou(N);
            bad += (add ? ns_cuda_add_rmsnorm(xu.data(), du.data(), ou.data(), nullptr, wp, n_rows, n, 1e-5f, nullptr)
                        : ns_cuda_rmsnorm(ou.data(), nullptr, xu.data(), wp, n_rows, n, 1e-5f, nullptr)) != cudaSuccess;
            for (size_t i = 0; i < N; i++)
                if (__float_as_uint(ou[i]) != __float_as_uint(o[i]) && bad++ < 6)
                    std::printf("  rmsnorm_fp8 elem %zu: %a, rmsnorm.cu's %a\n", i, (double)o[i], (double)ou[i]);
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
    char kept[48] = "none kept, computed twice";
    if (fp8_norm_per(n)) std::snprintf(kept, sizeof kept, "%d per thread kept", fp8_norm_per(n));
    std::printf("%s emu %srmsnorm_fp8 %d rows x %d (%s): fp32 out (rmsnorm.cu's bits), none, over x\n",
                bad ? "FAIL" : "ok  ", add ? "add_" : "", n_rows, n, kept);
    return bad == 0;
}

/* q_offset: bytes added to q (1 forces the 1-wide path). */
static int run_swiglu(int n_rows, int n, size_t q_offset) {
    const size_t N = (size_t)n_rows * n;
    std::vector<__nv_bfloat16> g(N), u(N);
    std::vector<float> v(N);
    for (size_t i = 0; i < N; i++) {
        g[i] = __float2bfloat16_rn(rnd(6.0f));
        u[i] = __float2bfloat16_rn(rnd(2.0f));
        if (i % 997 == 5) g[i] = __float2bfloat16_rn(-100.0f); /* silu -0: a zero's sign */
        if (n_rows > 1 && i / n == 1) g[i] = __float2bfloat16_rn(0.0f); /* row 1 all (signed) zeros: scale 1 */
        float gf = __bfloat162float(g[i]);
        v[i] = gf / (1.0f + expf(-gf)) * __bfloat162float(u[i]);
    }
    std::vector<uint8_t> q(N + 2 * CANARY + 8, CANARY_BYTE), q_ref(N);
    std::vector<float> sc(n_rows + 2 * CANARY, 12345.0f), sc_ref(n_rows);
    ns_cpu_quant_rows_fp8(q_ref.data(), sc_ref.data(), v.data(), n_rows, n);
    uint8_t *qq = q.data() + CANARY + q_offset;
    float *ss = sc.data() + CANARY;
    const bool vec = swiglu_fp8_vec(qq, g.data(), u.data(), n);
    const int groups = swiglu_fp8_groups(n, vec ? 8 : 1);
    int bad = ns_cuda_swiglu_bf16_fp8(qq, ss, (const uint16_t *)g.data(), (const uint16_t *)u.data(), n_rows, n,
                                      nullptr) != cudaSuccess ||
              cudaGetLastError() != cudaSuccess;
    for (size_t i = 0; i < N; i++)
        if (qq[i] != q_ref[i] && bad++ < 3)
            std::printf("  swiglu_bf16_fp8 elem %zu: code %02x, reference %02x\n", i, qq[i], q_ref[i]);
    for (int r = 0; r < n_rows; r++) bad += __float_as_uint(ss[r]) != __float_as_uint(sc_ref[r]);
    for (int i = 0; i < CANARY; i++)
        bad += q[i] != CANARY_BYTE || q[CANARY + q_offset + N + i] != CANARY_BYTE || sc[i] != 12345.0f ||
               sc[CANARY + n_rows + i] != 12345.0f;
    char kept[48] = "none kept, computed twice";
    if (groups) std::snprintf(kept, sizeof kept, "%d group%s per thread kept", groups, groups > 1 ? "s" : "");
    std::printf("%s emu swiglu_bf16_fp8 %d rows x %d (%d-wide, %s)\n", bad ? "FAIL" : "ok  ", n_rows, n, vec ? 8 : 1,
                kept);
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
    /* per thread kept: 4, 4, 4, 8, 16, 32, 32, none, none */
    const int norm_shapes[][2] = {{2, 1}, {3, 7}, {2, 576}, {2, 2048}, {2, 4096}, {1, 8000}, {1, 8192}, {1, 8193}, {1, 20000}};
    for (auto &s : norm_shapes)
        for (bool add : {false, true}) run_norm(s[0], s[1], add) ? n_pass++ : n_fail++;
    /* 8-wide: 1, 1, 2, 4, 8 groups, none; 1-wide: 1, 2, 4, 8, none; 8192 1-wide by q's offset */
    const int swiglu_shapes[][2] = {{3, 8},    {3, 1536}, {2, 8192}, {2, 14336}, {1, 20000}, {1, 40000},
                                    {2, 1},    {2, 1001}, {2, 2001}, {1, 4001},  {1, 4100}};
    for (auto &s : swiglu_shapes) run_swiglu(s[0], s[1], 0) ? n_pass++ : n_fail++;
    run_swiglu(2, 8192, 1) ? n_pass++ : n_fail++;
    const int expand_shapes[][2] = {{1, 1}, {7, 3}, {1000, 16}, {4096, 112}};
    for (auto &s : expand_shapes)
        for (bool kbm : {false, true}) run_expand(s[0], s[1], kbm) ? n_pass++ : n_fail++;
    /* 4-wide, 1-wide (N odd), rows past the grid's 2048, columns past its 16 x 1024 */
    const int outer_shapes[][2] = {{1, 16}, {7, 48}, {5, 37}, {33, 1008}, {600, 2048}, {2100, 8}, {3, 20000}};
    for (auto &s : outer_shapes)
        for (bool bf16 : {false, true}) run_scale_outer(s[0], s[1], bf16) ? n_pass++ : n_fail++;
    std::printf("%d passed, %d failed, 0 skipped\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
