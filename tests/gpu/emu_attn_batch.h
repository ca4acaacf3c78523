/* emu_attn_batch.h: the mixed batch that the emulated attention checks
 * (emu_attention.cpp, emu_attention_tc.cpp) run: five sequences with tokens already
 * cached and new tokens (a prompt chunk, a decode token, a chunk from position 0, a chunk
 * across a tile edge, a long context), every block-table entry a distinct block of the
 * pool, shuffled, and the new tokens in groups of up to qt per sequence, as the backend
 * makes them. Include after emu_cuda.h. */
#ifndef NS_EMU_ATTN_BATCH_H
#define NS_EMU_ATTN_BATCH_H

static const int SEQ_PAST[] = {37, 100, 0, 31, 140};
static const int SEQ_NEW[] = {9, 1, 23, 2, 5};
enum { N_SEQ = 5, MAX_BLOCKS = 160, N_POOL_BLOCKS = N_SEQ * MAX_BLOCKS };

struct emu_attn_batch {
    int T = 0, n_groups = 0, tok_start[N_SEQ];
    std::vector<int32_t> table, pos, tok_seq, groups; /* table: (N_SEQ, MAX_BLOCKS) */
};

/* The batch with groups of up to qt tokens; rng: the caller's LCG state (the shuffle
 * draws from it). */
static emu_attn_batch emu_make_batch(int qt, uint64_t &rng) {
    emu_attn_batch b;
    for (int s = 0; s < N_SEQ; s++) b.tok_start[s] = b.T, b.T += SEQ_NEW[s];
    std::vector<int32_t> perm(N_POOL_BLOCKS);
    for (int i = 0; i < N_POOL_BLOCKS; i++) perm[i] = i;
    for (int i = N_POOL_BLOCKS - 1; i > 0; i--) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        std::swap(perm[i], perm[(int)((rng >> 33) % (uint64_t)(i + 1))]);
    }
    b.table.assign(perm.begin(), perm.end());
    b.pos.resize(b.T), b.tok_seq.resize(b.T);
    for (int s = 0; s < N_SEQ; s++) {
        for (int i = 0; i < SEQ_NEW[s]; i++) b.pos[b.tok_start[s] + i] = SEQ_PAST[s] + i, b.tok_seq[b.tok_start[s] + i] = s;
        for (int i = 0; i < SEQ_NEW[s]; i += qt)
            b.groups.push_back(b.tok_start[s] + i), b.groups.push_back(std::min(qt, SEQ_NEW[s] - i));
    }
    b.n_groups = (int)b.groups.size() / 2;
    return b;
}

#endif
