/* emu_attention.cpp: the fast paged-attention kernel (kernels/cuda/attention.cu) for bf16
 * pools and for the FP8 KV cache, and the FP8 KV store, run on the CPU through
 * tests/gpu/emu_cuda.h (one std::thread per CUDA thread, cp.async emulated).
 * KV store: every code and every scale equal to ns_cpu_quant_rows_fp8 of the same
 * (token, KV head) row, written at the row's slot and nowhere else, rows of zeros, of an
 * infinity, and near the top code among them.
 * Attention, with groups of 8, 1 and 3 tokens, over shuffled block tables, against
 * ns_cpu_attention_paged_ref on fp32 pools holding exactly what the kernel's pools decode
 * to (bf16 values; e4m3 codes times their row's scale): NMSE <= 1e-10 and every element
 * within 1e-5 (only the order of the fp32 sums differs), the bf16 copy of out equal to out
 * rounded, nothing written outside out. It fails for a wrong chunk swizzle, a scale from
 * another key or head, a read before its cp.async wait, or a misaligned copy.
 * The generic kernel (any head_dim; bf16 and fp32 pools) the same way.
 * The launchers (ns_cuda_kv_store, _fp8, ns_cuda_attention_paged, _fp8), in a child
 * process per NS_CUDA_ATTN_TC level 0, 1, 2: each launch within CUDA's limits, the kernel
 * the level and the shapes ask for (fast, tensor-core, generic; one token per group or
 * not), and its output the CPU reference's.
 * tests/gpu/parity.c checks the real kernels on a GPU. Built and run by `make test`. */
#include <sys/wait.h>
#include <unistd.h>

#include "emu_cuda.h"
#include "emu_attn_batch.h"
#include "../../kernels/cuda/attention.cu"
#include "../../kernels/cuda/attention_tc.cu" /* the launchers above dispatch to it */

extern "C" {
#include "ops.h"
}

static uint64_t rng_state = 0x6a09e667f3bcc908ull;
static float rnd(float amp) { /* uniform in [-amp, amp) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return amp * ((float)(rng_state >> 40) / (float)(1u << 24) * 2.0f - 1.0f);
}

struct attn_case {
    int n_head, n_head_kv, hd, bs;
    float q_amp; /* large: peaked softmax rows, the running max moves between tiles */
};

static const size_t CANARY = 64;
static const float CANARY_VAL = 12345.0f;

/* The KV store through kv_store_fp8_kernel: n_tok rows of k, v (some special) to shuffled
 * slots of a pool of n_slots; returns 1 if it passed. */
static int store_case(int n_head_kv, int hd) {
    const int n_tok = 37, n_slots = 300;
    const size_t row = (size_t)n_head_kv * hd;
    std::vector<float> k((size_t)n_tok * row), v((size_t)n_tok * row);
    for (size_t i = 0; i < k.size(); i++) k[i] = rnd(3.0f), v[i] = rnd(0.01f);
    for (int d = 0; d < hd; d++) k[(size_t)5 * hd + d] = 0.0f;  /* token 0, head 5 % n_head_kv: zeros */
    k[(size_t)7 * hd + 3] = INFINITY;                           /* a row with an infinity: scale NaN */
    v[(size_t)11 * hd + 2] = NAN;                                /* and one with a NaN (kept by the amax) */
    v[(size_t)9 * hd] = 448.0f, v[(size_t)9 * hd + 1] = -447.9f; /* near the top code */
    std::vector<int32_t> slot(n_tok);
    for (int t = 0; t < n_tok; t++) slot[t] = (t * 97 + 13) % n_slots;
    const uint8_t FILL = 0x5a;
    const float FILL_S = -7.0f;
    std::vector<uint8_t> kp((size_t)n_slots * row, FILL), vp((size_t)n_slots * row, FILL);
    std::vector<float> ks((size_t)n_slots * n_head_kv, FILL_S), vs((size_t)n_slots * n_head_kv, FILL_S);
    const int threads = 256;
    const int64_t n_rows = (int64_t)n_tok * n_head_kv;
    emu_launch((unsigned)((n_rows * 32 + threads - 1) / threads), 1, threads, 0, [&] {
        kv_store_fp8_kernel(kp.data(), vp.data(), ks.data(), vs.data(), k.data(), v.data(), slot.data(), n_tok, n_head_kv,
                            hd);
    });
    std::vector<uint8_t> want_k((size_t)n_tok * row), want_v((size_t)n_tok * row);
    std::vector<float> want_ks((size_t)n_tok * n_head_kv), want_vs((size_t)n_tok * n_head_kv);
    ns_cpu_quant_rows_fp8(want_k.data(), want_ks.data(), k.data(), n_rows, hd);
    ns_cpu_quant_rows_fp8(want_v.data(), want_vs.data(), v.data(), n_rows, hd);
    std::vector<char> used(n_slots, 0);
    for (int t = 0; t < n_tok; t++) used[slot[t]] = 1;
    for (int t = 0; t < n_tok; t++)
        for (int h = 0; h < n_head_kv; h++) {
            const size_t src = (size_t)t * n_head_kv + h, dst = (size_t)slot[t] * n_head_kv + h;
            auto same = [](float a, float b) { return std::memcmp(&a, &b, 4) == 0 || (std::isnan(a) && std::isnan(b)); };
            const bool scales_ok = same(ks[dst], want_ks[src]) && same(vs[dst], want_vs[src]);
            if (!scales_ok || std::memcmp(&kp[dst * hd], &want_k[src * hd], hd) ||
                std::memcmp(&vp[dst * hd], &want_v[src * hd], hd)) {
                std::printf("FAIL emu kv_store_fp8 H%d hd%d: token %d head %d differs from ns_cpu_quant_rows_fp8\n",
                            n_head_kv, hd, t, h);
                return 0;
            }
        }
    for (int s = 0; s < n_slots; s++) {
        if (used[s]) continue;
        for (size_t i = 0; i < row; i++)
            if (kp[(size_t)s * row + i] != FILL || vp[(size_t)s * row + i] != FILL) {
                std::printf("FAIL emu kv_store_fp8 H%d hd%d: slot %d written\n", n_head_kv, hd, s);
                return 0;
            }
        for (int h = 0; h < n_head_kv; h++)
            if (ks[(size_t)s * n_head_kv + h] != FILL_S || vs[(size_t)s * n_head_kv + h] != FILL_S) {
                std::printf("FAIL emu kv_store_fp8 H%d hd%d: scale of slot %d written\n", n_head_kv, hd, s);
                return 0;
            }
    }
    std::printf("ok   emu kv_store_fp8 H%d hd%d: %d rows, codes and scales as ns_cpu_quant_rows_fp8\n", n_head_kv, hd,
                (int)n_rows);
    return 1;
}

/* The kernels run_case runs: the fast one over bf16 or e4m3 pools, the generic one
 * (attention_gqa_kernel: any head_dim) over bf16 or fp32 pools. */
enum kernel_kind { FAST_BF16, FAST_FP8, GENERIC_BF16, GENERIC_F32 };

/* One attention case with groups of up to qt tokens; returns 1 if it passed. */
static int run_case(const attn_case &c, int qt, kernel_kind kind) {
    const int hd = c.hd, bs = c.bs;
    const bool f8 = kind == FAST_FP8, f32 = kind == GENERIC_F32, generic = kind >= GENERIC_BF16;
    int T = 0, tok_start[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) tok_start[s] = T, T += SEQ_NEW[s];
    const int n_blocks = N_SEQ * MAX_BLOCKS;
    const size_t row = (size_t)c.n_head_kv * hd, n_slot = (size_t)n_blocks * bs, pool_n = n_slot * row;
    /* the pools, and fp32 pools of exactly what they decode to */
    std::vector<float> kp(pool_n), vp(pool_n);
    std::vector<__nv_bfloat16> kb(f8 || f32 ? 0 : pool_n), vb(f8 || f32 ? 0 : pool_n);
    std::vector<uint8_t> k8(f8 ? pool_n : 0), v8(f8 ? pool_n : 0);
    std::vector<float> ks(f8 ? n_slot * c.n_head_kv : 0), vs(f8 ? n_slot * c.n_head_kv : 0);
    for (size_t i = 0; i < pool_n; i++) {
        const size_t r = i / hd; /* (slot, head) row: its own magnitude, so the scales differ */
        kp[i] = rnd(0.05f + (float)(r % 7)), vp[i] = rnd(0.02f + (float)(r % 5));
    }
    if (f8) {
        ns_cpu_quant_rows_fp8(k8.data(), ks.data(), kp.data(), (int64_t)(n_slot * c.n_head_kv), hd);
        ns_cpu_quant_rows_fp8(v8.data(), vs.data(), vp.data(), (int64_t)(n_slot * c.n_head_kv), hd);
        for (size_t i = 0; i < pool_n; i++)
            kp[i] = ns_fp8_e4m3_to_float(k8[i]) * ks[i / hd], vp[i] = ns_fp8_e4m3_to_float(v8[i]) * vs[i / hd];
    } else if (!f32) {
        for (size_t i = 0; i < pool_n; i++) {
            kb[i] = __float2bfloat16_rn(kp[i]), vb[i] = __float2bfloat16_rn(vp[i]);
            kp[i] = __bfloat162float(kb[i]), vp[i] = __bfloat162float(vb[i]);
        }
    }
    emu_attn_batch bt = emu_make_batch(qt, rng_state);
    std::vector<int32_t> &table = bt.table, &pos = bt.pos, &tok_seq = bt.tok_seq, &groups = bt.groups;
    const int n_groups = bt.n_groups;
    const size_t qn = (size_t)T * c.n_head * hd;
    const float scale = 1.0f / std::sqrt((float)hd);
    std::vector<float> q(qn), ref(qn), scratch(4096);
    for (size_t i = 0; i < qn; i++) q[i] = rnd(c.q_amp);
    for (int s = 0; s < N_SEQ; s++) {
        const size_t off = (size_t)tok_start[s] * c.n_head * hd;
        ns_cpu_attention_paged_ref(ref.data() + off, q.data() + off, pos.data() + tok_start[s], SEQ_NEW[s], kp.data(),
                                   vp.data(), table.data() + (size_t)s * MAX_BLOCKS, SEQ_PAST[s] + SEQ_NEW[s], bs,
                                   c.n_head, c.n_head_kv, hd, scale, 0, c.n_head, scratch.data());
    }
    std::vector<float> out(qn + 2 * CANARY, CANARY_VAL);
    std::vector<__nv_bfloat16> out16(qn + 2 * CANARY, __float2bfloat16_rn(CANARY_VAL));
    float *o = out.data() + CANARY;
    __nv_bfloat16 *o16 = out16.data() + CANARY;
    const unsigned char *kpool = f8    ? (const unsigned char *)k8.data()
                                 : f32 ? (const unsigned char *)kp.data()
                                       : (const unsigned char *)kb.data();
    const unsigned char *vpool = f8    ? (const unsigned char *)v8.data()
                                 : f32 ? (const unsigned char *)vp.data()
                                       : (const unsigned char *)vb.data();
    const float *kscale = f8 ? ks.data() : nullptr, *vscale = f8 ? vs.data() : nullptr;
#define EMU_FAST(HD, QT, F8)                                                                                       \
    attention_fast_kernel<HD, QT, F8>(o, o16, q.data(), pos.data(), tok_seq.data(), groups.data(), table.data(), \
                                      MAX_BLOCKS, kpool, vpool, kscale, vscale, bs, c.n_head, c.n_head_kv, scale)
#define EMU_GENERIC(T, QT)                                                                                        \
    attention_gqa_kernel<T, QT>(o, o16, q.data(), pos.data(), tok_seq.data(), groups.data(), table.data(), MAX_BLOCKS, \
                                (const T *)kpool, (const T *)vpool, bs, c.n_head, c.n_head_kv, hd, scale)
    auto body = [&] {
        if (generic) {
            if (f32) { if (qt == 1) EMU_GENERIC(float, 1); else EMU_GENERIC(float, ATTN_QT); }
            else { if (qt == 1) EMU_GENERIC(__nv_bfloat16, 1); else EMU_GENERIC(__nv_bfloat16, ATTN_QT); }
        } else if (hd == 64 && qt == 1) { if (f8) EMU_FAST(64, 1, true); else EMU_FAST(64, 1, false); }
        else if (hd == 64) { if (f8) EMU_FAST(64, ATTN_QT, true); else EMU_FAST(64, ATTN_QT, false); }
        else if (qt == 1) { if (f8) EMU_FAST(128, 1, true); else EMU_FAST(128, 1, false); }
        else { if (f8) EMU_FAST(128, ATTN_QT, true); else EMU_FAST(128, ATTN_QT, false); }
    };
#undef EMU_FAST
#undef EMU_GENERIC
    const size_t smem = generic    ? attn_smem_bytes(f32 ? NS_CUDA_TYPE_F32 : NS_CUDA_TYPE_BF16, hd)
                        : hd == 64 ? (f8 ? fast_smem_bytes<64, true>() : fast_smem_bytes<64, false>())
                                   : (f8 ? fast_smem_bytes<128, true>() : fast_smem_bytes<128, false>());
    emu_launch((unsigned)n_groups, (unsigned)c.n_head_kv, 32u * (c.n_head / c.n_head_kv), smem, body);

    char what[128];
    static const char *const names[] = {"fast bf16", "fast fp8", "generic bf16", "generic f32"};
    std::snprintf(what, sizeof what, "emu attention %s H%d/%d hd%d bs%d qt%d |q|<%g T%d", names[kind], c.n_head,
                  c.n_head_kv, hd, bs, qt, (double)c.q_amp, T);
    for (size_t i = 0; i < CANARY; i++)
        if (out[i] != CANARY_VAL || out[CANARY + qn + i] != CANARY_VAL ||
            out16[i].bits != __float2bfloat16_rn(CANARY_VAL).bits ||
            out16[CANARY + qn + i].bits != __float2bfloat16_rn(CANARY_VAL).bits) {
            std::printf("FAIL %s: a write outside out\n", what);
            return 0;
        }
    double num = 0, den = 0, worst = 0, amax = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < qn; i++) amax = std::max(amax, std::fabs((double)ref[i]));
    for (size_t i = 0; i < qn; i++) {
        if (!std::isfinite(o[i])) {
            std::printf("FAIL %s: element %zu not finite (%g)\n", what, i, (double)o[i]);
            return 0;
        }
        if (o16[i].bits != __float2bfloat16_rn(o[i]).bits) {
            std::printf("FAIL %s: bf16 copy of element %zu is not out rounded\n", what, i);
            return 0;
        }
        double d = (double)o[i] - ref[i], e = std::fabs(d) / (1e-5 * amax);
        num += d * d, den += (double)ref[i] * ref[i];
        if (e > worst) worst = e, worst_i = i;
    }
    const double nmse = num / den;
    if (!(nmse <= 1e-10) || worst > 1.0) {
        std::printf("FAIL %s: NMSE %.3g (bound 1e-10); element %zu: %.9g vs ref %.9g (bound 1e-5 max |ref|)\n", what,
                    nmse, worst_i, (double)o[worst_i], (double)ref[worst_i]);
        return 0;
    }
    std::printf("ok   %s (NMSE %.3g)\n", what, nmse);
    return 1;
}

/* ---- the launchers ----
 * A batch's K/V rows stored through ns_cuda_kv_store / _fp8, then attention through
 * ns_cuda_attention_paged / _fp8 over the backend's groups (single 0) and one token per
 * group (single 1), at the NS_CUDA_ATTN_TC level this process was started with: each
 * launch accepted (block, grid, shared memory within CUDA's limits), the kernel that ran
 * the one the level asks for, and its output the CPU reference's. */
enum pool_kind { P_BF16, P_FP8, P_F32 };
struct dispatch_case {
    pool_kind pk;
    int n_head, n_head_kv, hd, bs;
};

static int dispatch_case_run(const dispatch_case &c, int level) {
    const int hd = c.hd, bs = c.bs, G = c.n_head / c.n_head_kv;
    const size_t row = (size_t)c.n_head_kv * hd, n_slot = (size_t)N_POOL_BLOCKS * bs, pool_n = n_slot * row;
    const size_t n_scale = n_slot * c.n_head_kv, el = c.pk == P_FP8 ? 1 : c.pk == P_BF16 ? 2 : 4;
    /* the pools as the device holds them, and as fp32 (what they decode to) */
    std::vector<float> kp(pool_n), vp(pool_n), ks(c.pk == P_FP8 ? n_scale : 0), vs(c.pk == P_FP8 ? n_scale : 0);
    std::vector<unsigned char> kd(pool_n * el), vd(pool_n * el);
    for (size_t i = 0; i < pool_n; i++) kp[i] = rnd(1.0f), vp[i] = rnd(1.0f);
    auto encode = [&](size_t r0, size_t n_rows) { /* rows r0 .. (slot, head) rows of hd values */
        const size_t a = r0 * hd, n = n_rows * hd;
        if (c.pk == P_FP8) {
            ns_cpu_quant_rows_fp8(kd.data() + a, ks.data() + r0, kp.data() + a, (int64_t)n_rows, hd);
            ns_cpu_quant_rows_fp8(vd.data() + a, vs.data() + r0, vp.data() + a, (int64_t)n_rows, hd);
            for (size_t i = a; i < a + n; i++)
                kp[i] = ns_fp8_e4m3_to_float(kd[i]) * ks[i / hd], vp[i] = ns_fp8_e4m3_to_float(vd[i]) * vs[i / hd];
        } else if (c.pk == P_BF16) {
            __nv_bfloat16 *kb = (__nv_bfloat16 *)kd.data(), *vb = (__nv_bfloat16 *)vd.data();
            for (size_t i = a; i < a + n; i++) {
                kb[i] = __float2bfloat16_rn(kp[i]), vb[i] = __float2bfloat16_rn(vp[i]);
                kp[i] = __bfloat162float(kb[i]), vp[i] = __bfloat162float(vb[i]);
            }
        } else {
            std::memcpy(kd.data() + a * 4, kp.data() + a, n * 4), std::memcpy(vd.data() + a * 4, vp.data() + a, n * 4);
        }
    };
    encode(0, n_slot * c.n_head_kv);
    uint64_t rng = 0x5be0cd19137e2179ull;
    emu_attn_batch bt = emu_make_batch(NS_CUDA_ATTN_QT, rng);
    const int T = bt.T;
    /* the new tokens' K/V rows, stored at their slots: on the CPU, then through the launcher */
    std::vector<float> k((size_t)T * row), v((size_t)T * row);
    std::vector<int32_t> slot(T);
    for (float &x : k) x = rnd(1.0f);
    for (float &x : v) x = rnd(1.0f);
    for (int t = 0; t < T; t++) {
        const int s = bt.tok_seq[t], p = bt.pos[t];
        slot[t] = bt.table[(size_t)s * MAX_BLOCKS + p / bs] * bs + p % bs;
        std::memcpy(&kp[(size_t)slot[t] * row], &k[(size_t)t * row], row * 4);
        std::memcpy(&vp[(size_t)slot[t] * row], &v[(size_t)t * row], row * 4);
        encode((size_t)slot[t] * c.n_head_kv, c.n_head_kv);
    }
    const std::vector<unsigned char> kd_want = kd, vd_want = vd;
    const std::vector<float> ks_want = ks, vs_want = vs;
    for (int t = 0; t < T; t++) { /* the new rows (and scales) wrong until the stores write them */
        for (size_t i = (size_t)slot[t] * row * el; i < (size_t)(slot[t] + 1) * row * el; i++) kd[i] ^= 0xff, vd[i] ^= 0xff;
        for (size_t h = (size_t)slot[t] * c.n_head_kv; c.pk == P_FP8 && h < (size_t)(slot[t] + 1) * c.n_head_kv; h++)
            ks[h] = vs[h] = -1.0f;
    }
    const void *store_kernel = c.pk == P_FP8    ? (const void *)&kv_store_fp8_kernel
                               : c.pk == P_BF16 ? (const void *)&kv_store_kernel<__nv_bfloat16>
                                                : (const void *)&kv_store_kernel<float>;
    const long stores0 = emu_launch_count(store_kernel);
    cudaError_t e = c.pk == P_FP8 ? ns_cuda_kv_store_fp8(kd.data(), vd.data(), ks.data(), vs.data(), k.data(), v.data(),
                                                         slot.data(), T, c.n_head_kv, hd, nullptr)
                                  : ns_cuda_kv_store(kd.data(), vd.data(), c.pk == P_BF16 ? NS_CUDA_TYPE_BF16 : NS_CUDA_TYPE_F32,
                                                     k.data(), v.data(), slot.data(), T, (int)row, nullptr);
    char what[160];
    static const char *const pk_names[] = {"bf16", "fp8", "f32"};
    std::snprintf(what, sizeof what, "emu launchers %s H%d/%d hd%d bs%d, NS_CUDA_ATTN_TC=%d", pk_names[c.pk], c.n_head,
                  c.n_head_kv, hd, bs, level);
    if (e != cudaSuccess || cudaGetLastError() != cudaSuccess || emu_launch_count(store_kernel) != stores0 + 1 ||
        kd != kd_want || vd != vd_want || ks != ks_want || vs != vs_want) {
        std::printf("FAIL %s: the KV store launcher (status %d) did not write what the CPU wrote\n", what, (int)e);
        return 0;
    }
    const size_t qn = (size_t)T * c.n_head * hd;
    const float scale = 1.0f / std::sqrt((float)hd);
    std::vector<float> q(qn), ref(qn), scratch(4096);
    for (float &x : q) x = rnd(1.0f);
    for (int s = 0; s < N_SEQ; s++) {
        const size_t off = (size_t)bt.tok_start[s] * c.n_head * hd;
        ns_cpu_attention_paged_ref(ref.data() + off, q.data() + off, bt.pos.data() + bt.tok_start[s], SEQ_NEW[s],
                                   kp.data(), vp.data(), bt.table.data() + (size_t)s * MAX_BLOCKS,
                                   SEQ_PAST[s] + SEQ_NEW[s], bs, c.n_head, c.n_head_kv, hd, scale, 0, c.n_head,
                                   scratch.data());
    }
    std::vector<int32_t> singles(2 * (size_t)T);
    for (int t = 0; t < T; t++) singles[2 * t] = t, singles[2 * t + 1] = 1;
    for (int single = 0; single < 2; single++) {
        const bool fast = (hd == 64 || hd == 128) && c.pk != P_F32;
        const bool tc = fast && (level == 2 || (level == 1 && !single)) && G <= 16;
        const void *want;
        if (tc)
            want = hd == 64 ? (c.pk == P_FP8 ? (const void *)&attention_tc_kernel<64, true> : (const void *)&attention_tc_kernel<64, false>)
                            : (c.pk == P_FP8 ? (const void *)&attention_tc_kernel<128, true> : (const void *)&attention_tc_kernel<128, false>);
        else if (fast && hd == 64)
            want = c.pk == P_FP8 ? (single ? (const void *)&attention_fast_kernel<64, 1, true> : (const void *)&attention_fast_kernel<64, ATTN_QT, true>)
                                 : (single ? (const void *)&attention_fast_kernel<64, 1, false> : (const void *)&attention_fast_kernel<64, ATTN_QT, false>);
        else if (fast)
            want = c.pk == P_FP8 ? (single ? (const void *)&attention_fast_kernel<128, 1, true> : (const void *)&attention_fast_kernel<128, ATTN_QT, true>)
                                 : (single ? (const void *)&attention_fast_kernel<128, 1, false> : (const void *)&attention_fast_kernel<128, ATTN_QT, false>);
        else
            want = c.pk == P_F32 ? (single ? (const void *)&attention_gqa_kernel<float, 1> : (const void *)&attention_gqa_kernel<float, ATTN_QT>)
                                 : (single ? (const void *)&attention_gqa_kernel<__nv_bfloat16, 1> : (const void *)&attention_gqa_kernel<__nv_bfloat16, ATTN_QT>);
        const long runs0 = emu_launch_count(want);
        std::vector<float> out(qn + 2 * CANARY, CANARY_VAL);
        float *o = out.data() + CANARY;
        const int32_t *groups = single ? singles.data() : bt.groups.data();
        const int n_groups = single ? T : bt.n_groups;
        e = c.pk == P_FP8 ? ns_cuda_attention_paged_fp8(o, nullptr, q.data(), bt.pos.data(), bt.tok_seq.data(), groups,
                                                        n_groups, single, bt.table.data(), MAX_BLOCKS, kd.data(), vd.data(),
                                                        ks.data(), vs.data(), bs, c.n_head, c.n_head_kv, hd, scale, nullptr)
                          : ns_cuda_attention_paged(o, nullptr, q.data(), bt.pos.data(), bt.tok_seq.data(), groups, n_groups,
                                                    single, bt.table.data(), MAX_BLOCKS, kd.data(), vd.data(),
                                                    c.pk == P_BF16 ? NS_CUDA_TYPE_BF16 : NS_CUDA_TYPE_F32, bs, c.n_head,
                                                    c.n_head_kv, hd, scale, nullptr);
        if (e != cudaSuccess || cudaGetLastError() != cudaSuccess || emu_launch_count(want) != runs0 + 1) {
            std::printf("FAIL %s, single %d: status %d; the expected kernel ran %ld times\n", what, single, (int)e,
                        emu_launch_count(want) - runs0);
            return 0;
        }
        /* fp32 kernels: 1e-5 of max |ref|; tensor cores (Q and P in bf16, |v| <= 1): 6e-3 */
        double amax = 0, num = 0, den = 0;
        for (size_t i = 0; i < qn; i++) amax = std::max(amax, std::fabs((double)ref[i]));
        const double tol = tc ? 6e-3 : 1e-5 * amax;
        bool ok = out[0] == CANARY_VAL && out[CANARY + qn] == CANARY_VAL;
        for (size_t i = 0; i < qn && ok; i++) {
            const double d = (double)o[i] - ref[i];
            ok = std::isfinite(o[i]) && std::fabs(d) <= tol;
            num += d * d, den += (double)ref[i] * ref[i];
        }
        if (!ok || !(num / den <= (tc ? 1e-4 : 1e-10))) {
            std::printf("FAIL %s, single %d: output off the CPU reference (NMSE %.3g)\n", what, single, num / den);
            return 0;
        }
    }
    std::printf("ok   %s: the store, then each group layout's kernel as the level says, within bounds\n", what);
    return 1;
}

/* Runs the launcher checks in a child process started with NS_CUDA_ATTN_TC=level (the
 * backend reads the switch once); returns the child's failures, or 1 if it died. */
static int dispatch_level(int level, int *n_pass) {
    std::fflush(stdout);
    const pid_t pid = fork();
    if (pid == 0) {
        char v[2] = {(char)('0' + level), 0};
        setenv("NS_CUDA_ATTN_TC", v, 1);
        unsetenv("NS_CUDA_ATTN_SLOW");
        const dispatch_case cases[] = {
            {P_BF16, 8, 2, 64, 16},  /* fast or tensor cores */
            {P_FP8, 16, 2, 128, 5},  /* the FP8 variants */
            {P_FP8, 8, 2, 64, 16},
            {P_F32, 8, 2, 64, 7},    /* precise mode: the generic kernel */
            {P_BF16, 6, 2, 80, 16},  /* head_dim 80: the generic kernel */
        };
        int fails = 0;
        for (const dispatch_case &c : cases) fails += !dispatch_case_run(c, level);
        std::fflush(stdout);
        _exit(fails > 100 ? 100 : fails);
    }
    int st = 0;
    if (pid < 0 || waitpid(pid, &st, 0) != pid || !WIFEXITED(st)) {
        std::printf("FAIL emu launchers, NS_CUDA_ATTN_TC=%d: the check process died\n", level);
        return 1;
    }
    *n_pass += 5 - WEXITSTATUS(st);
    return WEXITSTATUS(st);
}

int main(int argc, char **argv) {
    const bool only_fp8 = argc > 1 && !std::strcmp(argv[1], "fp8"); /* (mutation runs) */
    int n_pass = 0, n_fail = 0;
    for (int hd : {64, 128})
        for (int h : {1, 8}) store_case(h, hd) ? n_pass++ : n_fail++;
    const attn_case cases[] = {
        {8, 2, 64, 16, 1.0f},   /* G 4, as Llama-3.2-1B */
        {12, 3, 64, 5, 8.0f},   /* G 4, blocks of 5, peaked rows */
        {9, 9, 64, 16, 1.0f},   /* G 1, as SmolLM2-135M (9 heads of 64, 3 KV heads: G 3 below) */
        {9, 3, 64, 7, 2.0f},    /* G 3 */
        {16, 2, 128, 16, 1.0f}, /* G 8, head_dim 128 */
        {8, 2, 128, 1, 8.0f},   /* G 4 as Llama-3.1-8B, one key per block */
    };
    for (bool f8 : {false, true})
        for (const attn_case &c : cases)
            for (int qt : {8, 1, 3}) { /* 8: the backend's prompt groups (NS_CUDA_ATTN_QT); 1: decode */
                if (only_fp8 && !f8) continue;
                /* groups of 3 (partial groups) in the first two layouts; the bf16 kernel, which
                 * ran on GPUs already, with groups of 8 and 1 only */
                if (qt == 3 && (!f8 || &c - cases > 1)) continue;
                run_case(c, qt, f8 ? FAST_FP8 : FAST_BF16) ? n_pass++ : n_fail++;
            }
    /* the generic kernel: head_dim not 64 or 128 (odd ones take its scalar loads), or pools
     * in fp32 (the backend's precise mode) */
    const attn_case generic_cases[] = {
        {6, 2, 80, 7, 1.0f},  /* G 3, 16-byte loads */
        {9, 3, 256, 5, 8.0f}, /* the largest head_dim */
        {6, 3, 18, 3, 1.0f},  /* scalar loads (18 bf16 is not a 16-byte multiple) */
        {2, 1, 7, 4, 2.0f},   /* odd head_dim */
        {16, 1, 64, 16, 1.0f}, /* G 16 */
    };
    for (kernel_kind kind : {GENERIC_BF16, GENERIC_F32})
        for (const attn_case &c : generic_cases)
            for (int qt : {8, 1}) {
                if (only_fp8) continue;
                run_case(c, qt, kind) ? n_pass++ : n_fail++;
            }
    if (!only_fp8)
        for (int level = 0; level <= 2; level++) n_fail += dispatch_level(level, &n_pass);
    std::printf("%d passed, %d failed, 0 skipped\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
