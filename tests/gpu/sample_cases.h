/* sample_cases.h: the rows that the CUDA row sampler is checked on, shared by the GPU
 * check (tests/gpu/parity.c) and its CPU emulation (tests/gpu/emu_sample_rows.cpp). C and
 * C++. Rows of n logits mixing greedy and sampled ones, every cut, ties, NaN, -inf, +inf,
 * rows with nothing finite, extreme temperatures, and draws that land exactly on the
 * boundary between two tokens (the rule picks the token whose running sum first exceeds
 * r, so r equal to a running sum belongs to the next token). */
#ifndef NS_TEST_SAMPLE_CASES_H
#define NS_TEST_SAMPLE_CASES_H

#include <math.h>
#include <stdint.h>

#include "sample_rule.h"

#define NS_SAMPLE_CASE_ROWS 48

/* Fills x (NS_SAMPLE_CASE_ROWS, n) and p (NS_SAMPLE_CASE_ROWS); *rng is any 64-bit state. */
static inline void ns_sample_cases(uint64_t *rng, int n, float *x, ns_row_sampling *p) {
    static const float temps[] = {0.0f, 0.6f, 1.0f, 1.7f, 1e-30f, 1e35f};
    static const float topp[] = {1.0f, 0.9f, 1.0f, 0.5f, 0.01f, 0.999f};
    const int topk[] = {0, 0, 1, 40, n - 1, n + 5, 0, 2};
    for (int i = 0; i < NS_SAMPLE_CASE_ROWS; i++) {
        float *row = x + (size_t)i * (size_t)n;
        const float scale = 1.0f + (float)(i % 5) * 2.0f;
        for (int j = 0; j < n; j++) {
            *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
            row[j] = scale * (float)((double)(*rng >> 11) * 0x1.0p-53 * 2.0 - 1.0);
        }
        if (i % 7 == 3) /* coarse levels: ties everywhere */
            for (int j = 0; j < n; j++) row[j] = roundf(row[j] * 2.0f) * 0.5f;
        if (i % 9 == 4 && n > 3) row[n / 2] = NAN, row[1] = -INFINITY, row[n - 1] = NAN;
        if (i == 10 && n > 2) row[0] = INFINITY, row[n - 2] = INFINITY;
        if (i == 11)
            for (int j = 0; j < n; j++) row[j] = (j & 1) ? NAN : -INFINITY; /* nothing finite */
        *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = (ns_row_sampling){temps[i % 6], topk[(i / 2) % 8], topp[(i / 3) % 6], i % 4 == 1 ? 0.05f : 0.0f,
                                 (double)(*rng >> 11) * 0x1.0p-53};
        if (i == 12) p[i].u = 0.0;
        if (i == 13) p[i].u = 0x1.fffffffffffffp-1; /* the largest double below 1 */
        if (i >= 32 && n >= 8) {
            /* exact boundaries: 8 equal tokens first (the rest far below, cut by min_p), so
             * that every weight is 2^44 and u = k/8 gives r = k * 2^44, which is token k's */
            for (int j = 0; j < n; j++) row[j] = j < 8 ? 1.0f : -30.0f;
            p[i] = (ns_row_sampling){1.0f, 0, 1.0f, 0.5f, (double)(i - 32) / 8.0};
            if (i >= 40) { /* u = 0 where token 0 is cut: the first kept token */
                row[i - 40] = 2.0f;
                p[i] = (ns_row_sampling){1.0f, 1, 1.0f, 0.0f, 0.0};
            }
        }
    }
}

/* The token each row must give where the answer is known without the reference (-2:
 * only the reference knows). */
static inline int32_t ns_sample_case_expect(int i, int n) {
    if (i >= 32 && n >= 8) return i < 40 ? i - 32 : i - 40;
    if (i == 11) return -1;
    return -2;
}

/* How far, as a fraction of the total weight S, the draw u fell from the part of the
 * id-ordered weights w (n) that token c owns (0 inside it); INFINITY when c has no
 * weight (it was cut) or S is 0. For judging a token that differs from the rule's pick
 * on slightly different logits: a draw near a boundary may fall either side. */
static inline double ns_sample_draw_distance(const uint64_t *w, int n, uint64_t S, double u, int32_t c) {
    if (S == 0 || c < 0 || c >= n || w[c] == 0) return INFINITY;
    const uint64_t r = ns_sample_draw_r(u, S);
    uint64_t lo = 0;
    for (int v = 0; v < c; v++) lo += w[v];
    const uint64_t hi = lo + w[c]; /* c owns [lo, hi) */
    return r < lo ? (double)(lo - r) / (double)S : r >= hi ? (double)(r - hi + 1) / (double)S : 0.0;
}

#endif
