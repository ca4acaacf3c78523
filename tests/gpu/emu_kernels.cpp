/* emu_kernels.cpp: the small CUDA kernels (kernels/cuda/rmsnorm.cu, swiglu.cu, add.cu,
 * rope.cu, embed.cu, quant.cu, sample.cu) run on the CPU through tests/gpu/emu_cuda.h
 * (one std::thread per CUDA thread), through their launchers (ns_cuda_rmsnorm, ...: the
 * block size and grid they pick, checked against CUDA's limits) and directly on a grid of
 * 3 blocks (so that the grid-stride loops take several turns), against the CPU references:
 *   rmsnorm        within 1e-5 relative of ns_cpu_rmsnorm_ref (the block sums in another
 *                  order), in place too; its bf16 copy the fp32 output rounded;
 *   add_rmsnorm    x + delta exact, its output bit for bit rmsnorm's over that x (the
 *                  claim of ops_cuda.h), bf16 only, and over delta in place;
 *   swiglu         within 2e-6 relative of ns_cpu_swiglu_ref, in place; the bf16 variant
 *                  bit for bit the same expression over bf16 inputs;
 *   add, add_bias  bit for bit;
 *   rope           both pairings, n_rot below head_dim, positions up to 40000: within
 *                  2e-6 of the larger input of the pair (fp32 rotation against the
 *                  reference's double), dims past n_rot untouched;
 *   qkv_split_rope the fused QKV's epilogue bit for bit add_bias then rope on each part,
 *                  with biases and without, both pairings, n_rot below head_dim, pairs
 *                  past the shared cos/sin table, more tokens than the grid;
 *   embed          every storage type against ns_cpu_dequant_row_ref, bit for bit;
 *   gather_rows, tokens_from_ids  exact, by their definitions;
 *   dequant_row    every type to fp32 (bit for bit) and to bf16 (the fp32 value rounded);
 *                  f32_to_bf16, and the split's hi = bf16(x), lo = bf16(x - hi);
 *   sample_greedy  the argmax with the lowest id on ties, NaN never winning, -1 for rows
 *                  with nothing above -inf, vocabularies 1 to 128256.
 * Every output has canaries on both sides. tests/gpu/parity.c checks the real kernels on
 * a GPU. Built and run by `make test` (tests/run.sh). */
#include "emu_cuda.h"
#include "../../kernels/cuda/add.cu"
#include "../../kernels/cuda/embed.cu"
#include "../../kernels/cuda/qkv.cu"
#include "../../kernels/cuda/quant.cu"
#include "../../kernels/cuda/rmsnorm.cu"
#include "../../kernels/cuda/rope.cu"
#include "../../kernels/cuda/sample.cu"
#include "../../kernels/cuda/swiglu.cu"

extern "C" {
#include "ops.h"
}

static uint64_t rng_state = 0x3c6ef372fe94f82bull;
static float rnd(float amp) { /* uniform in [-amp, amp) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return amp * ((float)(rng_state >> 40) / (float)(1u << 24) * 2.0f - 1.0f);
}
static int rnd_int(int n) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rng_state >> 33) % (uint64_t)n);
}

static int n_pass, n_fail;
static void result(bool ok, const char *what) {
    std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    ok ? n_pass++ : n_fail++;
}
static bool same_bits(float a, float b) { return __float_as_uint(a) == __float_as_uint(b); }

/* A buffer of n T with CANARY elements of a fixed pattern on both sides. */
enum { CANARY = 32 };
template <class T> struct guarded {
    std::vector<T> v;
    explicit guarded(size_t n) : v(n + 2 * CANARY) { std::memset(v.data(), 0xa7, v.size() * sizeof(T)); }
    T *p() { return v.data() + CANARY; }
    bool intact() const {
        const unsigned char *b = (const unsigned char *)v.data();
        const size_t n = v.size() * sizeof(T), c = CANARY * sizeof(T);
        for (size_t i = 0; i < c; i++)
            if (b[i] != 0xa7 || b[n - 1 - i] != 0xa7) return false;
        return true;
    }
};

/* A launcher's status, and the launch's (emu_cuda.h refuses a configuration CUDA would). */
static bool launched(cudaError_t e) { return e == cudaSuccess && cudaGetLastError() == cudaSuccess; }

/* Runs body on `grid` blocks of `threads` threads (no dynamic shared memory). */
static void run(unsigned grid, unsigned threads, const std::function<void()> &body) {
    emu_launch(grid, 1, threads, 0, body);
}

static void check_rmsnorm() {
    const int shapes[][2] = {{3, 1}, {2, 7}, {4, 64}, {3, 576}, {2, 2049}};
    for (auto &sh : shapes) {
        const int rows = sh[0], n = sh[1];
        const size_t N = (size_t)rows * n;
        std::vector<float> x(N), d(N), w(n), ref(N), xd(N);
        for (size_t i = 0; i < N; i++) x[i] = rnd(3.0f), d[i] = rnd(1.0f);
        for (int i = 0; i < n; i++) w[i] = rnd(2.0f);
        x[0] = 0.0f;
        ns_cpu_rmsnorm_ref(ref.data(), x.data(), w.data(), rows, n, 1e-5f);
        char what[160];
        /* plain, with the bf16 copy */
        guarded<float> out(N);
        guarded<__nv_bfloat16> o16(N);
        float *op = out.p();
        __nv_bfloat16 *o16p = o16.p();
        bool ok = launched(ns_cuda_rmsnorm(op, (uint16_t *)o16p, x.data(), w.data(), rows, n, 1e-5f, nullptr)) &&
                  out.intact() && o16.intact();
        for (size_t i = 0; i < N && ok; i++)
            ok = std::fabs(op[i] - ref[i]) <= 1e-5f * std::fabs(ref[i]) + 1e-30f &&
                 o16p[i].bits == __float2bfloat16_rn(op[i]).bits;
        std::snprintf(what, sizeof what, "emu rmsnorm %d x %d: within 1e-5 of ns_cpu_rmsnorm_ref, bf16 copy rounded", rows, n);
        result(ok, what);
        /* in place, no bf16 copy: the same values */
        std::vector<float> xi = x;
        float *xip = xi.data();
        run((unsigned)rows, 256, [&] { rmsnorm_f32_kernel(xip, nullptr, xip, w.data(), n, 1e-5f); });
        ok = true;
        for (size_t i = 0; i < N && ok; i++) ok = same_bits(xi[i], op[i]);
        std::snprintf(what, sizeof what, "emu rmsnorm %d x %d in place: the same bits", rows, n);
        result(ok, what);
        /* add_rmsnorm against add then rmsnorm, bit for bit */
        for (size_t i = 0; i < N; i++) xd[i] = x[i] + d[i];
        std::vector<float> want(N);
        float *wp = want.data();
        run((unsigned)rows, 256, [&] { rmsnorm_f32_kernel(wp, nullptr, xd.data(), w.data(), n, 1e-5f); });
        std::vector<float> xa = x;
        guarded<float> out2(N);
        guarded<__nv_bfloat16> o16b(N);
        float *xap = xa.data(), *o2 = out2.p();
        __nv_bfloat16 *o16bp = o16b.p();
        ok = launched(ns_cuda_add_rmsnorm(xap, d.data(), o2, (uint16_t *)o16bp, w.data(), rows, n, 1e-5f, nullptr)) &&
             out2.intact() && o16b.intact();
        for (size_t i = 0; i < N && ok; i++)
            ok = same_bits(xa[i], xd[i]) && same_bits(o2[i], want[i]) && o16bp[i].bits == __float2bfloat16_rn(want[i]).bits;
        std::snprintf(what, sizeof what, "emu add_rmsnorm %d x %d: x + delta exact, output add-then-rmsnorm's bits", rows, n);
        result(ok, what);
        /* bf16 only, and out over delta */
        xa = x;
        std::vector<float> dd = d;
        guarded<__nv_bfloat16> o16c(N);
        float *ddp = dd.data();
        __nv_bfloat16 *o16cp = o16c.p();
        run((unsigned)rows, 256, [&] { add_rmsnorm_kernel(xap, ddp, nullptr, o16cp, w.data(), n, 1e-5f); });
        ok = o16c.intact();
        for (size_t i = 0; i < N && ok; i++) ok = o16cp[i].bits == __float2bfloat16_rn(want[i]).bits && same_bits(dd[i], d[i]);
        xa = x, dd = d;
        run((unsigned)rows, 256, [&] { add_rmsnorm_kernel(xap, ddp, ddp, nullptr, w.data(), n, 1e-5f); });
        for (size_t i = 0; i < N && ok; i++) ok = same_bits(dd[i], want[i]);
        std::snprintf(what, sizeof what, "emu add_rmsnorm %d x %d: bf16 only, and out over delta", rows, n);
        result(ok, what);
    }
}

static void check_swiglu() {
    for (int64_t n : {1, 255, 256, 1000, 70001, 24576}) { /* bf16: 1000 and 24576 8 at a time */
        std::vector<float> g(n), u(n), ref(n);
        for (int64_t i = 0; i < n; i++) g[i] = rnd(12.0f), u[i] = rnd(3.0f);
        g[0] = -100.0f; /* exp(100): silu -> -0 */
        ns_cpu_swiglu_ref(ref.data(), g.data(), u.data(), n);
        for (unsigned grid : {ns_grid_for(n, 256), 3u}) {
            guarded<float> out(n);
            guarded<__nv_bfloat16> o16(n);
            float *op = out.p();
            __nv_bfloat16 *o16p = o16.p();
            bool ok = true;
            if (grid == 3u) run(grid, 256, [&] { swiglu_f32_kernel(op, o16p, g.data(), u.data(), n); });
            else ok = launched(ns_cuda_swiglu(op, (uint16_t *)o16p, g.data(), u.data(), n, nullptr));
            ok = ok && out.intact() && o16.intact();
            for (int64_t i = 0; i < n && ok; i++)
                ok = std::fabs(op[i] - ref[i]) <= 2e-6f * std::fabs(ref[i]) + 1e-30f &&
                     o16p[i].bits == __float2bfloat16_rn(op[i]).bits;
            std::vector<float> gi = g;
            float *gip = gi.data();
            run(grid, 256, [&] { swiglu_f32_kernel(gip, nullptr, gip, u.data(), n); });
            for (int64_t i = 0; i < n && ok; i++) ok = same_bits(gi[i], op[i]);
            char what[128];
            std::snprintf(what, sizeof what, "emu swiglu n %lld grid %u: within 2e-6 of ns_cpu_swiglu_ref, in place",
                          (long long)n, grid);
            result(ok, what);
            /* bf16 in and out */
            std::vector<__nv_bfloat16> gb(n), ub(n);
            for (int64_t i = 0; i < n; i++) gb[i] = __float2bfloat16_rn(g[i]), ub[i] = __float2bfloat16_rn(u[i]);
            guarded<__nv_bfloat16> ob(n);
            __nv_bfloat16 *obp = ob.p();
            const bool vec8 = n % 8 == 0; /* guarded's and vector's data: 16-byte aligned */
            if (grid == 3u && vec8)
                run(grid, 256, [&] { swiglu_bf16_vec8_kernel((uint4 *)obp, (const uint4 *)gb.data(), (const uint4 *)ub.data(), n / 8); });
            else if (grid == 3u) run(grid, 256, [&] { swiglu_bf16_kernel(obp, gb.data(), ub.data(), n); });
            else ok = launched(ns_cuda_swiglu_bf16((uint16_t *)obp, (const uint16_t *)gb.data(), (const uint16_t *)ub.data(), n, nullptr));
            ok = ok && ob.intact();
            for (int64_t i = 0; i < n && ok; i++) {
                const float gf = __bfloat162float(gb[i]);
                ok = obp[i].bits == __float2bfloat16_rn(gf / (1.0f + std::exp(-gf)) * __bfloat162float(ub[i])).bits;
            }
            std::snprintf(what, sizeof what, "emu swiglu_bf16 n %lld grid %u (%s): bit for bit", (long long)n, grid,
                          vec8 ? "8 a thread" : "1 a thread");
            result(ok, what);
        }
    }
}

static void check_add() {
    const int M = 37, N = 129;
    const int64_t n = (int64_t)M * N;
    std::vector<float> y(n), x(n), bias(N);
    for (int64_t i = 0; i < n; i++) y[i] = rnd(5.0f), x[i] = rnd(5.0f);
    for (int i = 0; i < N; i++) bias[i] = rnd(1.0f);
    for (unsigned grid : {ns_grid_for(n, 256), 3u}) {
        guarded<float> a(n), b(n);
        std::memcpy(a.p(), y.data(), n * 4), std::memcpy(b.p(), y.data(), n * 4);
        float *ap = a.p(), *bp = b.p();
        bool ok = true;
        if (grid == 3u) {
            run(grid, 256, [&] { add_f32_kernel(ap, x.data(), n); });
            run(grid, 256, [&] { add_bias_f32_kernel(bp, bias.data(), n, N); });
        } else {
            ok = launched(ns_cuda_add(ap, x.data(), n, nullptr)) && launched(ns_cuda_add_bias(bp, bias.data(), M, N, nullptr));
        }
        ok = ok && a.intact() && b.intact();
        for (int64_t i = 0; i < n && ok; i++) ok = same_bits(ap[i], y[i] + x[i]) && same_bits(bp[i], y[i] + bias[i % N]);
        char what[96];
        std::snprintf(what, sizeof what, "emu add and add_bias %d x %d grid %u: bit for bit", M, N, grid);
        result(ok, what);
    }
}

static void check_rope() {
    struct rc { int n_tokens, n_head, head_dim, n_rot, neox; };
    const rc cases[] = {{5, 3, 64, 64, 0}, {5, 3, 64, 64, 1}, {4, 2, 80, 32, 0}, {3, 4, 128, 96, 1}, {1, 1, 2, 2, 0}};
    for (const rc &c : cases) {
        const int half = c.n_rot / 2;
        const size_t N = (size_t)c.n_tokens * c.n_head * c.head_dim;
        std::vector<float> x(N), inv(half);
        std::vector<int32_t> pos(c.n_tokens);
        for (size_t i = 0; i < N; i++) x[i] = rnd(4.0f);
        for (int i = 0; i < half; i++) inv[i] = std::pow(500000.0f, -2.0f * i / (float)c.n_rot);
        for (int t = 0; t < c.n_tokens; t++) pos[t] = t == 0 ? 0 : rnd_int(40000);
        std::vector<float> ref = x;
        ns_cpu_rope_ref(ref.data(), pos.data(), c.n_tokens, c.n_head, c.head_dim, c.n_rot, inv.data(), c.neox);
        const int64_t total = (int64_t)c.n_tokens * c.n_head * half;
        for (unsigned grid : {ns_grid_for(total, 256), 3u}) {
            guarded<float> g(N);
            std::memcpy(g.p(), x.data(), N * 4);
            float *gp = g.p();
            bool ok = true;
            if (grid == 3u)
                run(grid, 256, [&] {
                    rope_f32_kernel(gp, pos.data(), c.n_tokens, c.n_head, c.head_dim, half, inv.data(), c.neox);
                });
            else
                ok = launched(ns_cuda_rope(gp, pos.data(), c.n_tokens, c.n_head, c.head_dim, c.n_rot, inv.data(), c.neox,
                                           nullptr));
            ok = ok && g.intact();
            for (size_t th = 0; th < (size_t)c.n_tokens * c.n_head && ok; th++) {
                const float *v = gp + th * c.head_dim, *r = ref.data() + th * c.head_dim, *x0 = x.data() + th * c.head_dim;
                for (int i = 0; i < half && ok; i++) {
                    const int i0 = c.neox ? i : 2 * i, i1 = c.neox ? i + half : 2 * i + 1;
                    const float tol = 2e-6f * std::max(std::fabs(x0[i0]), std::fabs(x0[i1]));
                    ok = std::fabs(v[i0] - r[i0]) <= tol && std::fabs(v[i1] - r[i1]) <= tol;
                }
                for (int i = c.n_rot; i < c.head_dim && ok; i++) ok = same_bits(v[i], x0[i]);
            }
            char what[128];
            std::snprintf(what, sizeof what, "emu rope %s T%d H%d hd%d rot%d grid %u: within 2e-6 of ns_cpu_rope_ref",
                          c.neox ? "neox" : "pairs", c.n_tokens, c.n_head, c.head_dim, c.n_rot, grid);
            result(ok, what);
        }
    }
}

/* The fused QKV's epilogue against the unfused ops it replaces: the product (T, q_dim +
 * 2 kv_dim) split into q, k, v, each plus its bias (add_bias), then rope on q and k: the
 * same bits. Canaries around each output. */
static void check_qkv_split_rope() {
    struct qc { int T, n_head, n_head_kv, head_dim, n_rot, neox; bool bias; unsigned grid; };
    const qc cases[] = {{5, 4, 2, 64, 64, 0, false, 0}, {5, 4, 2, 64, 64, 1, true, 0}, {3, 3, 3, 80, 32, 0, true, 0},
                        {4, 4, 1, 128, 96, 1, false, 2}, {2, 2, 1, 1026, 1026, 1, true, 0}, {1, 1, 1, 2, 0, 0, true, 0}};
    for (const qc &c : cases) {
        const int half = c.n_rot / 2, q_dim = c.n_head * c.head_dim, kv_dim = c.n_head_kv * c.head_dim;
        const int n_all = q_dim + 2 * kv_dim;
        std::vector<float> qkv((size_t)c.T * n_all), bias(n_all), inv(half > 0 ? half : 1);
        std::vector<int32_t> pos(c.T);
        for (auto &x : qkv) x = rnd(4.0f);
        for (auto &x : bias) x = rnd(0.5f);
        for (int i = 0; i < half; i++) inv[i] = std::pow(500000.0f, -2.0f * i / (float)c.n_rot);
        for (int t = 0; t < c.T; t++) pos[t] = t == 0 ? 0 : rnd_int(40000);
        /* the unfused ops: split, add_bias, rope */
        std::vector<float> rq((size_t)c.T * q_dim), rk((size_t)c.T * kv_dim), rv((size_t)c.T * kv_dim);
        for (int t = 0; t < c.T; t++) {
            std::memcpy(&rq[(size_t)t * q_dim], &qkv[(size_t)t * n_all], q_dim * 4);
            std::memcpy(&rk[(size_t)t * kv_dim], &qkv[(size_t)t * n_all + q_dim], kv_dim * 4);
            std::memcpy(&rv[(size_t)t * kv_dim], &qkv[(size_t)t * n_all + q_dim + kv_dim], kv_dim * 4);
        }
        bool ok = true;
        if (c.bias)
            ok = launched(ns_cuda_add_bias(rq.data(), bias.data(), c.T, q_dim, nullptr)) &&
                 launched(ns_cuda_add_bias(rk.data(), bias.data() + q_dim, c.T, kv_dim, nullptr)) &&
                 launched(ns_cuda_add_bias(rv.data(), bias.data() + q_dim + kv_dim, c.T, kv_dim, nullptr));
        ok = ok && launched(ns_cuda_rope(rq.data(), pos.data(), c.T, c.n_head, c.head_dim, c.n_rot, inv.data(), c.neox,
                                         nullptr)) &&
             launched(ns_cuda_rope(rk.data(), pos.data(), c.T, c.n_head_kv, c.head_dim, c.n_rot, inv.data(), c.neox,
                                   nullptr));
        guarded<float> q((size_t)c.T * q_dim), k((size_t)c.T * kv_dim), v((size_t)c.T * kv_dim);
        const float *bq = c.bias ? bias.data() : nullptr, *bk = c.bias ? bias.data() + q_dim : nullptr,
                    *bv = c.bias ? bias.data() + q_dim + kv_dim : nullptr;
        float *qp = q.p(), *kp = k.p(), *vp = v.p();
        if (c.grid) /* fewer blocks than tokens: the grid-stride loop */
            run(c.grid, QKV_THREADS, [&] {
                qkv_split_rope_kernel(qp, kp, vp, qkv.data(), bq, bk, bv, pos.data(), c.T, q_dim, kv_dim, c.head_dim,
                                      half, inv.data(), c.neox);
            });
        else
            ok = ok && launched(ns_cuda_qkv_split_rope(qp, kp, vp, qkv.data(), bq, bk, bv, pos.data(), c.T, c.n_head,
                                                       c.n_head_kv, c.head_dim, c.n_rot, inv.data(), c.neox, nullptr));
        ok = ok && q.intact() && k.intact() && v.intact();
        for (size_t i = 0; i < rq.size() && ok; i++) ok = same_bits(qp[i], rq[i]);
        for (size_t i = 0; i < rk.size() && ok; i++) ok = same_bits(kp[i], rk[i]) && same_bits(vp[i], rv[i]);
        char what[160];
        std::snprintf(what, sizeof what,
                      "emu qkv_split_rope %s T%d H%d/%d hd%d rot%d%s%s: add_bias then rope's bits on q, k, v",
                      c.neox ? "neox" : "pairs", c.T, c.n_head, c.n_head_kv, c.head_dim, c.n_rot,
                      c.bias ? " biases" : "", c.grid ? " grid 2" : "");
        result(ok, what);
    }
}

/* A table (n_rows, n) in type from random floats (with a few special values). */
static std::vector<uint8_t> make_rows(int type, int n_rows, int n, std::vector<float> *ref) {
    const size_t rb = ns_cuda_row_bytes(type, n);
    std::vector<uint8_t> t((size_t)n_rows * rb);
    std::vector<float> src(n);
    ref->assign((size_t)n_rows * n, 0.0f);
    for (int r = 0; r < n_rows; r++) {
        for (int i = 0; i < n; i++) src[i] = rnd(r % 3 == 0 ? 100.0f : 1.0f);
        if (type == NS_CUDA_TYPE_F32 && r == 1) src[0] = INFINITY, src[1] = -0.0f;
        ns_cpu_quantize_row(type, src.data(), t.data() + (size_t)r * rb, n);
        ns_cpu_dequant_row_ref(type, t.data() + (size_t)r * rb, ref->data() + (size_t)r * n, n);
    }
    return t;
}

static const int TYPES[] = {NS_CUDA_TYPE_F32, NS_CUDA_TYPE_F16, NS_CUDA_TYPE_BF16,
                            NS_CUDA_TYPE_Q8_0, NS_CUDA_TYPE_Q4_0, NS_CUDA_TYPE_Q4_1};

static void check_embed_and_gather() {
    const int n_vocab = 50, n_embd = 96, n_tok = 9;
    for (int type : TYPES) {
        std::vector<float> ref;
        std::vector<uint8_t> table = make_rows(type, n_vocab, n_embd, &ref);
        std::vector<int32_t> ids(n_tok);
        for (int t = 0; t < n_tok; t++) ids[t] = t == 0 ? n_vocab - 1 : t == 1 ? 0 : rnd_int(n_vocab);
        const size_t N = (size_t)n_tok * n_embd;
        for (unsigned grid : {ns_grid_for((int64_t)N, 256), 3u}) {
            guarded<float> out(N);
            float *op = out.p();
            bool ok = true;
            if (grid == 3u)
                run(grid, 256, [&] {
                    embed_kernel(op, table.data(), ns_cuda_row_bytes(type, n_embd), type, ids.data(), n_tok, n_embd);
                });
            else
                ok = launched(ns_cuda_embed(op, table.data(), type, ids.data(), n_tok, n_embd, nullptr));
            ok = ok && out.intact();
            for (int t = 0; t < n_tok && ok; t++)
                for (int i = 0; i < n_embd && ok; i++)
                    ok = same_bits(op[(size_t)t * n_embd + i], ref[(size_t)ids[t] * n_embd + i]);
            char what[96];
            std::snprintf(what, sizeof what, "emu embed type %d grid %u: ns_cpu_dequant_row_ref's bits", type, grid);
            result(ok, what);
        }
    }
    /* gather_rows */
    const int width = 77, n_src = 12, n_rows = 5;
    std::vector<float> x((size_t)n_src * width);
    for (float &v : x) v = rnd(1.0f);
    const int32_t rows[n_rows] = {11, 0, 3, 3, 7};
    guarded<float> out((size_t)n_rows * width);
    float *op = out.p();
    bool ok = launched(ns_cuda_gather_rows(op, x.data(), rows, n_rows, width, nullptr)) && out.intact();
    for (int r = 0; r < n_rows && ok; r++)
        ok = !std::memcmp(op + (size_t)r * width, x.data() + (size_t)rows[r] * width, (size_t)width * 4);
    result(ok, "emu gather_rows: rows copied, canaries intact");
    /* tokens_from_ids: negative tokens name a pick's row, -1 picks and rows past n_ids give 0 */
    const int32_t ids[4] = {17, -1, 4, 99};
    int32_t tok[8] = {5, -1, -2, -3, 0, -4, -5, 12}, want[8] = {5, 17, 0, 4, 0, 99, 0, 12};
    int32_t *tp = tok;
    const bool ok_launch = launched(ns_cuda_tokens_from_ids(tp, 8, ids, 4, nullptr));
    result(ok_launch && !std::memcmp(tok, want, sizeof tok), "emu tokens_from_ids: ids by row, 0 for -1 and past the rows");
}

static void check_dequant() {
    const int n_rows = 7, n = 160;
    for (int type : TYPES) {
        std::vector<float> ref;
        std::vector<uint8_t> src = make_rows(type, n_rows, n, &ref);
        const size_t rb = ns_cuda_row_bytes(type, n), N = (size_t)n_rows * n;
        guarded<float> o32(N);
        guarded<__nv_bfloat16> o16(N);
        float *o32p = o32.p();
        __nv_bfloat16 *o16p = o16.p();
        bool ok = launched(ns_cuda_dequant_row(type, src.data(), rb, o32p, NS_CUDA_TYPE_F32, n_rows, n, nullptr));
        run(3, 256, [&] { dequant_row_kernel(type, src.data(), rb, o16p, 1, n_rows, n); });
        ok = ok && o32.intact() && o16.intact();
        for (size_t i = 0; i < N && ok; i++)
            ok = same_bits(o32p[i], ref[i]) && o16p[i].bits == __float2bfloat16_rn(ref[i]).bits;
        char what[96];
        std::snprintf(what, sizeof what, "emu dequant_row type %d: fp32 bit for bit, bf16 rounded", type);
        result(ok, what);
    }
    const int64_t N = 5000;
    std::vector<float> x(N);
    for (float &v : x) v = rnd(1000.0f);
    x[1] = NAN, x[2] = INFINITY, x[3] = 3.3895314e38f; /* rounds up to inf in bf16 */
    guarded<__nv_bfloat16> b(N), hi(N), lo(N);
    __nv_bfloat16 *bp = b.p(), *hp = hi.p(), *lp = lo.p();
    run(3, 256, [&] { f32_to_bf16_kernel(bp, x.data(), N); });
    bool ok = launched(ns_cuda_f32_to_bf16_split((uint16_t *)hp, (uint16_t *)lp, x.data(), N, nullptr));
    ok = ok && b.intact() && hi.intact() && lo.intact();
    for (int64_t i = 0; i < N && ok; i++) {
        const __nv_bfloat16 h = __float2bfloat16_rn(x[i]);
        ok = bp[i].bits == h.bits && hp[i].bits == h.bits &&
             lp[i].bits == __float2bfloat16_rn(x[i] - __bfloat162float(h)).bits;
    }
    result(ok, "emu f32_to_bf16 and the split: hi = bf16(x), lo = bf16(x - hi)");
}

static void check_sample_greedy() {
    for (int n_vocab : {1, 7, 1000, 128256}) {
        const int rows = 8;
        std::vector<float> l((size_t)rows * n_vocab);
        std::vector<int32_t> want(rows);
        for (int r = 0; r < rows; r++) {
            float *x = &l[(size_t)r * n_vocab];
            for (int i = 0; i < n_vocab; i++) x[i] = rnd(10.0f);
            switch (r) {
            case 1: x[n_vocab - 1] = 50.0f, x[n_vocab / 2] = 50.0f; break;      /* tie: the lower id */
            case 2: x[0] = NAN, x[n_vocab - 1] = 40.0f; break;                 /* NaN never wins */
            case 3: for (int i = 0; i < n_vocab; i++) x[i] = -INFINITY; break;   /* nothing: -1 */
            case 4: for (int i = 0; i < n_vocab; i++) x[i] = NAN; break;         /* nothing: -1 */
            case 5: x[n_vocab / 3] = INFINITY; break;
            case 6: for (int i = 0; i < n_vocab; i++) x[i] = i % 2 ? NAN : -INFINITY; break;
            default: break;
            }
            int best = -1;
            for (int i = 0; i < n_vocab; i++)
                if (x[i] > -INFINITY && (best < 0 || x[i] > x[best])) best = i;
            want[r] = best;
        }
        guarded<int32_t> ids(rows);
        int32_t *ip = ids.p();
        bool ok = launched(ns_cuda_sample_greedy(ip, l.data(), rows, n_vocab, nullptr)) && ids.intact() &&
                  !std::memcmp(ip, want.data(), rows * 4);
        char what[96];
        std::snprintf(what, sizeof what, "emu sample_greedy vocab %d: ties, NaN, -inf, +inf rows", n_vocab);
        result(ok, what);
    }
}

int main() {
    check_rmsnorm();
    check_swiglu();
    check_add();
    check_rope();
    check_qkv_split_rope();
    check_embed_and_gather();
    check_dequant();
    check_sample_greedy();
    std::printf("%d passed, %d failed, 0 skipped\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
