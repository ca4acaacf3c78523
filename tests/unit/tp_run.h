/* tp_run.h: one rank of a tensor-parallel model generating greedily, for the TP tests
 * (test_tp.c on the CPU stand-in, test_cuda.c over NCCL): loads rank's shard of the model
 * file into backend b, runs the prompt and n_gen greedy steps through ns_forward_tp with
 * communicator tp (NULL: the unsplit model), and returns the tokens and the logits after
 * the prompt. The KV pool holds 8 blocks of 16 tokens. */
#ifndef NS_TEST_TP_RUN_H
#define NS_TEST_TP_RUN_H

#include "forward.h"

ns_status ns_test_tp_greedy(const char *path, ns_backend *b, int rank, int n_ranks, ns_tp *tp, const int32_t *prompt,
                            int n_prompt, int n_gen, int32_t *out /*(n_gen)*/, float *first_logits /*(n_vocab)*/,
                            ns_error *err);

#endif
