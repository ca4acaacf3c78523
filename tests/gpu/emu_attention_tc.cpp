/* emu_attention_tc.cpp: the tensor-core attention kernel (kernels/cuda/attention_tc.cu)
 * run on the CPU through tests/gpu/emu_cuda.h (one std::thread per CUDA thread, wmma
 * fragments and cp.async emulated), against ns_cpu_attention_paged_ref. It checks the
 * kernel's logic on a machine without a GPU: the row mapping (tokens x query heads of a
 * KV head), the causal cut per row, the online softmax across tiles, paging through
 * shuffled block tables, the fragment layouts and alignments, the cp.async waits, and
 * that nothing outside out is written; over bf16 pools and over the FP8 KV cache (e4m3
 * codes with a scale per (slot, KV head) row: the staging copies, the decode into the bf16
 * tiles, each key's scales). tests/gpu/parity.c checks the real kernel on a GPU.
 * Built and run by `make test` (tests/run.sh).
 */
#include "emu_cuda.h"
#include "emu_attn_batch.h"
#include "../../kernels/cuda/attention_tc.cu"

extern "C" {
#include "ops.h"
}
#include "fp8.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float rnd(float amp) { /* uniform in [-amp, amp) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return amp * ((float)(rng_state >> 40) / (float)(1u << 24) * 2.0f - 1.0f);
}
static float round_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

struct attn_case {
    int n_head, n_head_kv, hd, bs;
    float q_amp; /* large: peaked softmax rows, the running max moves between tiles */
};

static const size_t CANARY = 64;
static const float CANARY_VAL = 12345.0f;

/* One case with groups of up to qt tokens over bf16 (f8 false) or e4m3 pools; returns 1
 * if it passed. */
static int run_case(const attn_case &c, int qt, bool f8) {
    const int G = c.n_head / c.n_head_kv, hd = c.hd, bs = c.bs;
    int T = 0, tok_start[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) tok_start[s] = T, T += SEQ_NEW[s];
    const int n_blocks = N_SEQ * MAX_BLOCKS;
    const size_t row = (size_t)c.n_head_kv * hd, n_slot = (size_t)n_blocks * bs, pool_n = n_slot * row;
    /* the pools (|k|, |v| <= 1), and fp32 pools of exactly what they hold */
    std::vector<float> kp(pool_n), vp(pool_n);
    std::vector<__nv_bfloat16> kb(f8 ? 0 : pool_n), vb(f8 ? 0 : pool_n);
    std::vector<uint8_t> k8(f8 ? pool_n : 0), v8(f8 ? pool_n : 0);
    std::vector<float> ks(f8 ? n_slot * c.n_head_kv : 0), vs(f8 ? n_slot * c.n_head_kv : 0);
    if (f8) {
        for (size_t i = 0; i < pool_n; i++) { /* each (slot, head) row its own magnitude, so the scales differ */
            const size_t r = i / hd;
            kp[i] = rnd(0.25f + 0.25f * (float)(r % 4)), vp[i] = rnd(1.0f - 0.2f * (float)(r % 5));
        }
        ns_cpu_quant_rows_fp8(k8.data(), ks.data(), kp.data(), (int64_t)(n_slot * c.n_head_kv), hd);
        ns_cpu_quant_rows_fp8(v8.data(), vs.data(), vp.data(), (int64_t)(n_slot * c.n_head_kv), hd);
        for (size_t i = 0; i < pool_n; i++)
            kp[i] = ns_fp8_e4m3_to_float(k8[i]) * ks[i / hd], vp[i] = ns_fp8_e4m3_to_float(v8[i]) * vs[i / hd];
    } else {
        for (size_t i = 0; i < pool_n; i++) kp[i] = round_bf16(rnd(1.0f)), vp[i] = round_bf16(rnd(1.0f));
        for (size_t i = 0; i < pool_n; i++) kb[i] = __float2bfloat16_rn(kp[i]), vb[i] = __float2bfloat16_rn(vp[i]);
    }
    emu_attn_batch bt = emu_make_batch(qt, rng_state);
    std::vector<int32_t> &table = bt.table, &pos = bt.pos, &tok_seq = bt.tok_seq, &groups = bt.groups;
    const int n_groups = bt.n_groups;
    const size_t qn = (size_t)T * c.n_head * hd;
    /* two references: with q as given, and with q rounded to bf16 as the kernel rounds it
     * (then only the rounding of P and the order of the sums are left) */
    std::vector<float> q(qn), q16(qn), ref(qn), ref16(qn), scratch(4096);
    for (size_t i = 0; i < qn; i++) q[i] = rnd(c.q_amp), q16[i] = round_bf16(q[i]);
    for (int s = 0; s < N_SEQ; s++) {
        const size_t off = (size_t)tok_start[s] * c.n_head * hd;
        for (int pass = 0; pass < 2; pass++)
            ns_cpu_attention_paged_ref((pass ? ref16 : ref).data() + off, (pass ? q16 : q).data() + off,
                                       pos.data() + tok_start[s], SEQ_NEW[s], kp.data(), vp.data(),
                                       table.data() + (size_t)s * MAX_BLOCKS, SEQ_PAST[s] + SEQ_NEW[s], bs, c.n_head,
                                       c.n_head_kv, hd, 1.0f / std::sqrt((float)hd), 0, c.n_head, scratch.data());
    }
    std::vector<float> out(qn + 2 * CANARY, CANARY_VAL);
    std::vector<__nv_bfloat16> out16(qn + 2 * CANARY, __float2bfloat16_rn(CANARY_VAL));
    float *o = out.data() + CANARY;
    __nv_bfloat16 *o16 = out16.data() + CANARY;
    const int n_warps = tc_warps(qt, G);
    const float scale = 1.0f / std::sqrt((float)hd);
    const void *kpool = f8 ? (const void *)k8.data() : (const void *)kb.data();
    const void *vpool = f8 ? (const void *)v8.data() : (const void *)vb.data();
    const float *kscale = f8 ? ks.data() : nullptr, *vscale = f8 ? vs.data() : nullptr;
#define EMU_TC_ARGS                                                                                                  \
    o, o16, q.data(), pos.data(), tok_seq.data(), groups.data(), table.data(), MAX_BLOCKS, kpool, vpool, kscale, vscale, \
        bs, c.n_head, c.n_head_kv, scale
    auto body = [&] {
        if (hd == 64)
            f8 ? attention_tc_kernel<64, true>(EMU_TC_ARGS) : attention_tc_kernel<64, false>(EMU_TC_ARGS);
        else
            f8 ? attention_tc_kernel<128, true>(EMU_TC_ARGS) : attention_tc_kernel<128, false>(EMU_TC_ARGS);
    };
#undef EMU_TC_ARGS
    const size_t smem = hd == 64 ? (f8 ? tc_smem_bytes<64, true>(n_warps) : tc_smem_bytes<64, false>(n_warps))
                                 : (f8 ? tc_smem_bytes<128, true>(n_warps) : tc_smem_bytes<128, false>(n_warps));
    emu_launch((unsigned)n_groups, (unsigned)c.n_head_kv, 32u * n_warps, smem, body);

    char what[128];
    std::snprintf(what, sizeof what, "emu attention_tc %s H%d/%d hd%d bs%d qt%d |q|<%g T%d", f8 ? "fp8" : "bf16",
                  c.n_head, c.n_head_kv, hd, bs, qt, (double)c.q_amp, T);
    for (size_t i = 0; i < CANARY; i++)
        if (out[i] != CANARY_VAL || out[CANARY + qn + i] != CANARY_VAL ||
            out16[i].bits != __float2bfloat16_rn(CANARY_VAL).bits ||
            out16[CANARY + qn + i].bits != __float2bfloat16_rn(CANARY_VAL).bits) {
            std::printf("FAIL %s: a write outside out\n", what);
            return 0;
        }
    /* against the reference with q in bf16: NMSE, and every element within 4.5e-3 (P in
     * bf16 moves an output by at most 2^-9 max |v_j - out| <= 2^-8, |v| <= 1 here, plus fp32
     * sums; FP8, where l sums the unrounded p: 2^-9 max |v|); against the plain reference:
     * NMSE only (q in bf16 moves peaked rows) */
    double num = 0, den = 0, num0 = 0, den0 = 0, worst = 0;
    size_t worst_i = 0;
    for (size_t i = 0; i < qn; i++) {
        if (!std::isfinite(o[i])) {
            std::printf("FAIL %s: element %zu not finite (%g)\n", what, i, (double)o[i]);
            return 0;
        }
        if (o16[i].bits != __float2bfloat16_rn(o[i]).bits) {
            std::printf("FAIL %s: bf16 copy of element %zu is not out rounded\n", what, i);
            return 0;
        }
        double d = (double)o[i] - ref16[i], e = std::fabs(d) / 4.5e-3;
        num += d * d, den += (double)ref16[i] * ref16[i];
        num0 += ((double)o[i] - ref[i]) * ((double)o[i] - ref[i]), den0 += (double)ref[i] * ref[i];
        if (e > worst) worst = e, worst_i = i;
    }
    const double nmse = num / den, nmse0 = num0 / den0;
    if (!(nmse <= 1e-5) || !(nmse0 <= 1e-4) || worst > 1.0) {
        std::printf("FAIL %s: NMSE %.3g (bound 1e-5), %.3g against q unrounded (bound 1e-4); element %zu: %.7g vs "
                    "ref %.7g\n",
                    what, nmse, nmse0, worst_i, (double)o[worst_i], (double)ref16[worst_i]);
        return 0;
    }
    std::printf("ok   %s (NMSE %.3g; %.3g against q unrounded)\n", what, nmse, nmse0);
    return 1;
}

int main() {
    const attn_case cases[] = {
        {8, 2, 64, 16, 1.0f},   /* G 4, as Llama-3.2-1B */
        {12, 3, 64, 5, 8.0f},   /* G 4, blocks of 5, peaked rows */
        {4, 4, 64, 7, 1.0f},    /* G 1: 8 rows of 16 used */
        {16, 2, 128, 16, 1.0f}, /* G 8, head_dim 128 */
        {8, 2, 128, 1, 8.0f},   /* G 4 as Llama-3.1-8B, one key per block */
        {32, 2, 128, 16, 1.0f}, /* G 16: 128 rows, 8 warps */
    };
    int n_pass = 0, n_fail = 0;
    for (bool f8 : {false, true})
        for (const attn_case &c : cases)
            for (int qt : {8, 1, 3}) /* 8: the backend's prompt groups (NS_CUDA_ATTN_QT); 1: decode */
                run_case(c, qt, f8) ? n_pass++ : n_fail++;
    std::printf("%d passed, %d failed, 0 skipped\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
