#!/usr/bin/env python3
"""hf_baseline.py: HF transformers `generate` on the same workload as gpu-bench, for the
side-by-side number in tests/gpu/run.sh (a dev tool: torch and transformers are on the
GPU machines, never a nightshift dependency).

A Llama-3.2-1B-shaped model (or 8B) with random bf16 weights, built on the GPU; N prompts
of N_IN random token ids; greedy, exactly N_OUT new tokens each (min_new_tokens =
max_new_tokens, no EOS), in batches of BATCH, after one untimed batch of the same size.
Prints output tok/s and total tok/s.

usage: hf_baseline.py [--shape 1b|8b] [--n 1000] [--n-in 128] [--n-out 128] [--batch 250]
"""
import argparse
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1b")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-in", type=int, default=128)
    ap.add_argument("--n-out", type=int, default=128)
    ap.add_argument("--batch", type=int, default=250)
    a = ap.parse_args()
    shapes = {
        "1b": dict(num_hidden_layers=16, hidden_size=2048, intermediate_size=8192, head_dim=64),
        "8b": dict(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336, head_dim=128),
    }
    cfg = transformers.LlamaConfig(vocab_size=128256, num_attention_heads=32, num_key_value_heads=8,
                                   rope_theta=500000.0, max_position_embeddings=8192, tie_word_embeddings=False,
                                   **shapes[a.shape])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(1)
    prompts = torch.randint(0, cfg.vocab_size, (a.n, a.n_in), device="cuda", generator=g)
    gen_kw = dict(max_new_tokens=a.n_out, min_new_tokens=a.n_out, do_sample=False, pad_token_id=0,
                  eos_token_id=None)
    print(f"hf transformers {transformers.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"attn {model.config._attn_implementation}", flush=True)
    with torch.inference_mode():
        # warm-up: one whole batch of the timed size, untimed. With a small one (8 prompts x 4
        # tokens, before 2026-11-26) the first timed batch of 250 took 11.9 s and the next
        # ones 1.7 to 2.2 s (H100, run 10): one-time costs that nightshift's benchmark, which
        # warms up too, does not pay in its timed run either.
        w = prompts[:a.batch]
        t0 = time.time()
        model.generate(w, attention_mask=torch.ones_like(w), **gen_kw)
        torch.cuda.synchronize()
        print(f"  warm-up: {w.shape[0]} x {a.n_out} new tokens, {time.time() - t0:.1f} s (not timed)", flush=True)
        t0 = time.time()
        n_gen = 0
        for i in range(0, a.n, a.batch):
            p = prompts[i:i + a.batch]
            out = model.generate(p, attention_mask=torch.ones_like(p), **gen_kw)
            n_gen += (out.shape[1] - a.n_in) * out.shape[0]
            print(f"  batch {i // a.batch}: {out.shape[0]} x {out.shape[1] - a.n_in} new tokens, "
                  f"{time.time() - t0:.1f} s", flush=True)
        torch.cuda.synchronize()
        dt = time.time() - t0
    total = a.n * (a.n_in + a.n_out)
    print(f"hf generate {a.shape}: {a.n} prompts x ({a.n_in} in + {a.n_out} out), batch {a.batch}: {dt:.2f} s, "
          f"output {n_gen / dt:.0f} tok/s, total {total / dt:.0f} tok/s")
    print(f"result: shape=hf-{a.shape} out_tok_s={n_gen / dt:.0f} total_tok_s={total / dt:.0f} seconds={dt:.2f}")


if __name__ == "__main__":
    main()
