/* attention.c: causal grouped-query attention of one sequence over a paged KV cache.
 *
 * Pool layout (n_blocks_total, block_size, n_head_kv, head_dim): key j of the sequence is
 * row (block_table[j / block_size] * block_size + j % block_size) of the pool, and head
 * kvh of that row starts kvh * head_dim floats in. Query i sees keys 0..q_pos[i]; both
 * versions only ever read the first ceil((q_pos[i] + 1) / block_size) table entries and,
 * of the last one, only the slots below q_pos[i] + 1, so blocks of other sequences (and
 * stale slots past n_kv) are never touched.
 *
 * The reference works one (query, head) at a time in three passes (scores into scratch,
 * exp and sum, the probability-weighted sum of V rows), accumulating in double.
 *
 * The fast version works in fp32 with AVX2/FMA, one (query, kv head) at a time: the query
 * heads that share the kv head (up to ATTN_MAX_GROUP of them) walk the keys together in
 * tiles of up to ATTN_TILE keys, so each K and V row comes from L2 once and is reused
 * from L1 by the other heads of the group. Softmax is online: per head a running max m,
 * a running sum l and the output row itself as the accumulator, rescaled by
 * exp(m_old - m_new) when the max grows. Its state lives on the stack; it needs no scratch.
 * A head's result depends only on its own query and n_seen (not on n_kv, on the head
 * range or on its neighbours), so splitting heads or queries across calls is bit-exact.
 */
#include "ops.h"
#include "common.h"
#include "simd.h"

#include <math.h>

/* Row of key/value j for kv head kvh. row_stride = n_head_kv * head_dim. */
static inline const float *kv_row(const float *pool, const int32_t *block_table, int j,
                                  int block_size, size_t row_stride, size_t kv_off) {
    size_t row = (size_t)block_table[j / block_size] * (size_t)block_size + (size_t)(j % block_size);
    return pool + row * row_stride + kv_off;
}

void ns_cpu_attention_paged_ref(float *out, const float *q, const int32_t *q_pos, int n_q,
                                const float *k_pool, const float *v_pool,
                                const int32_t *block_table, int n_kv, int block_size, int n_head,
                                int n_head_kv, int head_dim, float scale, int h0, int h1,
                                float *scratch) {
    int group = n_head / n_head_kv;
    size_t row_stride = (size_t)n_head_kv * head_dim;
    for (int i = 0; i < n_q; i++) {
        NS_ASSERT(q_pos[i] >= 0 && q_pos[i] < n_kv);
        int n_seen = q_pos[i] + 1;
        for (int h = h0; h < h1; h++) {
            size_t kv_off = (size_t)(h / group) * head_dim;
            const float *qh = q + ((size_t)i * n_head + h) * head_dim;
            float *o = out + ((size_t)i * n_head + h) * head_dim;
            double mx = -INFINITY;
            for (int j = 0; j < n_seen; j++) {
                const float *k = kv_row(k_pool, block_table, j, block_size, row_stride, kv_off);
                double s = 0.0;
                for (int d = 0; d < head_dim; d++) s += (double)qh[d] * k[d];
                scratch[j] = (float)(s * scale);
                mx = scratch[j] > mx ? scratch[j] : mx;
            }
            double sum = 0.0;
            for (int j = 0; j < n_seen; j++) sum += exp(scratch[j] - mx);
            for (int j = 0; j < n_seen; j++) scratch[j] = (float)(exp(scratch[j] - mx) / sum);
            for (int d = 0; d < head_dim; d++) {
                double acc = 0.0;
                for (int j = 0; j < n_seen; j++)
                    acc += (double)scratch[j] *
                           kv_row(v_pool, block_table, j, block_size, row_stride, kv_off)[d];
                o[d] = (float)acc;
            }
        }
    }
}

static inline float dot_f32(const float *a, const float *b, int n) {
    int d = 0;
    float s = 0.0f;
#if NS_CPU_AVX2
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (; d + 16 <= n; d += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), s1);
    }
    for (; d + 8 <= n; d += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
    s = ns_simd_hsum(_mm256_add_ps(s0, s1));
#endif
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}

#define ATTN_TILE 16     /* keys per tile */
#define ATTN_MAX_GROUP 8 /* query heads per kv head walked together */

/* Scores of nj keys (rows row_stride apart) into s; returns their max. The AVX2 path
 * takes 4 keys at a time, sharing the q loads and one horizontal reduce. */
static float tile_scores(float *s, const float *qh, const float *kb, int nj, size_t row_stride,
                          int head_dim, float scale) {
    float mx = -INFINITY;
    int j = 0;
#if NS_CPU_AVX2
    if (head_dim % 8 == 0) {
        __m128 vmx = _mm_set1_ps(-INFINITY), vscale = _mm_set1_ps(scale);
        for (; j + 4 <= nj; j += 4) {
            const float *k0 = kb + (size_t)j * row_stride, *k1 = k0 + row_stride;
            const float *k2 = k1 + row_stride, *k3 = k2 + row_stride;
            /* two accumulators per key (even and odd 8-float steps): 8 FMA chains */
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            int d = 0;
            for (; d + 16 <= head_dim; d += 16) {
                __m256 qa = _mm256_loadu_ps(qh + d), qb = _mm256_loadu_ps(qh + d + 8);
                a0 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k0 + d), a0);
                a1 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k1 + d), a1);
                a2 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k2 + d), a2);
                a3 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k3 + d), a3);
                b0 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k0 + d + 8), b0);
                b1 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k1 + d + 8), b1);
                b2 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k2 + d + 8), b2);
                b3 = _mm256_fmadd_ps(qb, _mm256_loadu_ps(k3 + d + 8), b3);
            }
            if (d < head_dim) { /* head_dim % 16 == 8 */
                __m256 qa = _mm256_loadu_ps(qh + d);
                a0 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k0 + d), a0);
                a1 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k1 + d), a1);
                a2 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k2 + d), a2);
                a3 = _mm256_fmadd_ps(qa, _mm256_loadu_ps(k3 + d), a3);
            }
            a0 = _mm256_add_ps(a0, b0), a1 = _mm256_add_ps(a1, b1);
            a2 = _mm256_add_ps(a2, b2), a3 = _mm256_add_ps(a3, b3);
            /* (a0, a1, a2, a3) lane sums: two hadds leave per-key halves in each 128 */
            __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
            r = _mm_mul_ps(r, vscale);
            _mm_storeu_ps(s + j, r);
            vmx = _mm_max_ps(vmx, r);
        }
        vmx = _mm_max_ps(vmx, _mm_movehl_ps(vmx, vmx));
        vmx = _mm_max_ss(vmx, _mm_movehdup_ps(vmx));
        mx = _mm_cvtss_f32(vmx);
    }
#endif
    for (; j < nj; j++) {
        s[j] = scale * dot_f32(qh, kb + (size_t)j * row_stride, head_dim);
        mx = s[j] > mx ? s[j] : mx;
    }
    return mx;
}

/* p = exp(s - m) in place for n <= ATTN_TILE scores (s has ATTN_TILE slots); returns
 * the sum. The AVX2 path pads the tile to a multiple of 8 with -inf, whose exp is 0. */
static float tile_exp(float *s, int n, float m) {
    float sum = 0.0f;
#if NS_CPU_AVX2
    int n8 = (n + 7) & ~7;
    for (int j = n; j < n8; j++) s[j] = -INFINITY;
    __m256 vm = _mm256_set1_ps(m), vsum = _mm256_setzero_ps();
    for (int j = 0; j < n8; j += 8) {
        __m256 e = ns_simd_exp(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));
        _mm256_storeu_ps(s + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    sum = ns_simd_hsum(vsum);
#else
    for (int j = 0; j < n; j++) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
#endif
    return sum;
}

#if NS_CPU_AVX2
/* o[0, 8 nv) = alpha * o + sum_t p[t] * V[t][0, 8 nv), nv <= 8 accumulators in registers;
 * always inlined so that nv is a constant. */
static inline __attribute__((always_inline)) void v_tile_chunk(float *o, const int nv, float alpha,
                                                               const float *p, const float *v,
                                                               int n, size_t row_stride) {
    /* the unroll pragmas make acc registers rather than a stack array */
    __m256 acc[8], va = _mm256_set1_ps(alpha);
#pragma GCC unroll 8
    for (int u = 0; u < nv; u++) acc[u] = _mm256_mul_ps(_mm256_loadu_ps(o + 8 * u), va);
    for (int t = 0; t < n; t++, v += row_stride) {
        __m256 pt = _mm256_set1_ps(p[t]);
#pragma GCC unroll 8
        for (int u = 0; u < nv; u++) acc[u] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(v + 8 * u), acc[u]);
    }
#pragma GCC unroll 8
    for (int u = 0; u < nv; u++) _mm256_storeu_ps(o + 8 * u, acc[u]);
}
#endif

/* o (head_dim) = alpha * o + sum_t p[t] * V[t] over a tile of n value rows. */
static void tile_accum_v(float *o, float alpha, const float *p, const float *v, int n,
                         size_t row_stride, int head_dim) {
    int d0 = 0;
#if NS_CPU_AVX2
    for (; d0 + 64 <= head_dim; d0 += 64) v_tile_chunk(o + d0, 8, alpha, p, v + d0, n, row_stride);
    for (; d0 + 32 <= head_dim; d0 += 32) v_tile_chunk(o + d0, 4, alpha, p, v + d0, n, row_stride);
    for (; d0 + 8 <= head_dim; d0 += 8) v_tile_chunk(o + d0, 1, alpha, p, v + d0, n, row_stride);
#endif
    for (int d = d0; d < head_dim; d++) {
        float a = o[d] * alpha;
        for (int t = 0; t < n; t++) a += p[t] * v[(size_t)t * row_stride + d];
        o[d] = a;
    }
}

void ns_cpu_attention_paged(float *out, const float *q, const int32_t *q_pos, int n_q,
                            const float *k_pool, const float *v_pool, const int32_t *block_table,
                            int n_kv, int block_size, int n_head, int n_head_kv, int head_dim,
                            float scale, int h0, int h1, float *scratch) {
    (void)scratch; /* the online softmax keeps its state on the stack */
    int group = n_head / n_head_kv;
    size_t row_stride = (size_t)n_head_kv * head_dim;
    for (int i = 0; i < n_q; i++) {
        NS_ASSERT(q_pos[i] >= 0 && q_pos[i] < n_kv);
        int n_seen = q_pos[i] + 1;
        int n_blk = (n_seen + block_size - 1) / block_size;
        for (int hs = h0; hs < h1;) {
            /* heads [hs, he): the same kv head, at most ATTN_MAX_GROUP of them */
            int kvh = hs / group;
            int he = (kvh + 1) * group;
            he = he < h1 ? he : h1;
            he = he < hs + ATTN_MAX_GROUP ? he : hs + ATTN_MAX_GROUP;
            int n_g = he - hs;
            size_t kv_off = (size_t)kvh * head_dim;
            const float *qg = q + ((size_t)i * n_head + hs) * head_dim;
            float *og = out + ((size_t)i * n_head + hs) * head_dim;
            float m[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP], s[ATTN_TILE];
            for (int g = 0; g < n_g; g++) m[g] = -INFINITY, l[g] = 0.0f;
            for (size_t k = 0; k < (size_t)n_g * head_dim; k++) og[k] = 0.0f;

            for (int b = 0; b < n_blk; b++) {
                size_t base = (size_t)block_table[b] * block_size * row_stride + kv_off;
                int nj = n_seen - b * block_size < block_size ? n_seen - b * block_size : block_size;
                for (int t0 = 0; t0 < nj; t0 += ATTN_TILE) {
                    int n_t = nj - t0 < ATTN_TILE ? nj - t0 : ATTN_TILE;
                    const float *kt = k_pool + base + (size_t)t0 * row_stride;
                    const float *vt = v_pool + base + (size_t)t0 * row_stride;
                    for (int g = 0; g < n_g; g++) {
                        float tmax = tile_scores(s, qg + (size_t)g * head_dim, kt, n_t, row_stride,
                                                 head_dim, scale);
                        float m_new = tmax > m[g] ? tmax : m[g];
                        float alpha = expf(m[g] - m_new); /* 0 on the first tile, 1 if m kept */
                        float psum = tile_exp(s, n_t, m_new);
                        l[g] = l[g] * alpha + psum;
                        tile_accum_v(og + (size_t)g * head_dim, alpha, s, vt, n_t, row_stride, head_dim);
                        m[g] = m_new;
                    }
                }
            }
            for (int g = 0; g < n_g; g++) {
                float inv = 1.0f / l[g];
                float *o = og + (size_t)g * head_dim;
                for (int d = 0; d < head_dim; d++) o[d] *= inv;
            }
            hs = he;
        }
    }
}
