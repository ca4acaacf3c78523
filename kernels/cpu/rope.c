/* rope.c: rotary position embedding and its frequency table.
 *
 * Pair (a, b) of head dims at position p rotates by theta = p * inv_freq[i]:
 * (a cos - b sin, a sin + b cos). GGUF llama pairs dims (2i, 2i+1); neox-style models
 * (qwen2) pair (i, i + n_rot/2). Dims from n_rot to head_dim are left as they are.
 *
 * Both versions form theta in double: at positions of tens of thousands an fp32 product
 * would already be off by ~1e-3 rad. The fast version computes cos/sin once per
 * (token, pair), in chunks of ROPE_CHUNK pairs on the stack, and rotates all heads with
 * them in fp32.
 */
#include "ops.h"
#include "simd.h"

#include <math.h>

#define ROPE_CHUNK 64
#define ROPE_TWO_PI 6.283185307179586476925

void ns_cpu_rope_ref(float *x, const int32_t *pos, int n_tokens, int n_head, int head_dim,
                     int n_rot, const float *inv_freq, int is_neox) {
    int half = n_rot / 2;
    for (int t = 0; t < n_tokens; t++) {
        for (int h = 0; h < n_head; h++) {
            float *v = x + ((size_t)t * n_head + h) * head_dim;
            for (int i = 0; i < half; i++) {
                double theta = (double)pos[t] * (double)inv_freq[i];
                double c = cos(theta), s = sin(theta);
                int i0 = is_neox ? i : 2 * i, i1 = is_neox ? i + half : 2 * i + 1;
                double a = v[i0], b = v[i1];
                v[i0] = (float)(a * c - b * s);
                v[i1] = (float)(a * s + b * c);
            }
        }
    }
}

void ns_cpu_rope(float *x, const int32_t *pos, int n_tokens, int n_head, int head_dim, int n_rot,
                 const float *inv_freq, int is_neox) {
    int half = n_rot / 2;
    /* neox: cs[i], sn[i] per pair. Interleaved: cs = (c0, c0, c1, c1, ...) and
     * sn = (-s0, s0, -s1, s1, ...), so out = x * cs + swap_pairs(x) * sn. */
    float cs[2 * ROPE_CHUNK], sn[2 * ROPE_CHUNK];
    for (int t = 0; t < n_tokens; t++) {
        for (int p0 = 0; p0 < half; p0 += ROPE_CHUNK) {
            int nc = half - p0 < ROPE_CHUNK ? half - p0 : ROPE_CHUNK;
            for (int i = 0; i < nc; i++) {
                double theta = (double)pos[t] * (double)inv_freq[p0 + i];
                float c = (float)cos(theta), s = (float)sin(theta);
                if (is_neox) {
                    cs[i] = c;
                    sn[i] = s;
                } else {
                    cs[2 * i] = cs[2 * i + 1] = c;
                    sn[2 * i] = -s;
                    sn[2 * i + 1] = s;
                }
            }
            for (int h = 0; h < n_head; h++) {
                float *v = x + ((size_t)t * n_head + h) * head_dim;
                int i = 0;
                if (is_neox) {
                    float *a = v + p0, *b = v + half + p0;
#if NS_CPU_AVX2
                    for (; i + 8 <= nc; i += 8) {
                        __m256 va = _mm256_loadu_ps(a + i), vb = _mm256_loadu_ps(b + i);
                        __m256 c = _mm256_loadu_ps(cs + i), s = _mm256_loadu_ps(sn + i);
                        _mm256_storeu_ps(a + i, _mm256_fmsub_ps(va, c, _mm256_mul_ps(vb, s)));
                        _mm256_storeu_ps(b + i, _mm256_fmadd_ps(va, s, _mm256_mul_ps(vb, c)));
                    }
#endif
                    for (; i < nc; i++) {
                        float fa = a[i], fb = b[i];
                        a[i] = fa * cs[i] - fb * sn[i];
                        b[i] = fa * sn[i] + fb * cs[i];
                    }
                } else {
                    float *a = v + 2 * p0;
                    int n2 = 2 * nc;
#if NS_CPU_AVX2
                    for (; i + 8 <= n2; i += 8) {
                        __m256 va = _mm256_loadu_ps(a + i);
                        __m256 sw = _mm256_permute_ps(va, 0xB1); /* (x1, x0, x3, x2, ...) */
                        __m256 r = _mm256_fmadd_ps(va, _mm256_loadu_ps(cs + i),
                                                   _mm256_mul_ps(sw, _mm256_loadu_ps(sn + i)));
                        _mm256_storeu_ps(a + i, r);
                    }
#endif
                    for (; i < n2; i += 2) {
                        float fa = a[i], fb = a[i + 1];
                        a[i] = fa * cs[i] + fb * sn[i];
                        a[i + 1] = fb * cs[i + 1] + fa * sn[i + 1];
                    }
                }
            }
        }
    }
}

void ns_rope_inv_freq(float *inv_freq, int n_rot, float base, float factor, float low_freq_factor,
                      float high_freq_factor, int orig_ctx, const float *freq_factors) {
    int half = n_rot / 2;
    /* Llama 3.1 rope_scaling needs high > low > 0 and orig_ctx > 0; the loader checks
     * them. Without them only freq_factors apply. */
    int is_llama3 = factor > 1.0f && orig_ctx > 0 && low_freq_factor > 0.0f &&
                    high_freq_factor > low_freq_factor;
    double low_wavelen = is_llama3 ? (double)orig_ctx / low_freq_factor : 0.0;
    double high_wavelen = is_llama3 ? (double)orig_ctx / high_freq_factor : 0.0;
    for (int i = 0; i < half; i++) {
        double f = pow((double)base, -2.0 * i / n_rot);
        if (is_llama3) {
            double wavelen = ROPE_TWO_PI / f;
            if (wavelen > low_wavelen) {
                f /= factor; /* low frequency: interpolate fully */
            } else if (wavelen >= high_wavelen) {
                /* medium: blend between scaled and unscaled */
                double smooth = ((double)orig_ctx / wavelen - low_freq_factor) /
                                ((double)high_freq_factor - low_freq_factor);
                f = (1.0 - smooth) * f / factor + smooth * f;
            } /* high frequency (wavelen < high_wavelen): unchanged */
        }
        if (freq_factors) f /= freq_factors[i];
        inv_freq[i] = (float)f;
    }
}
