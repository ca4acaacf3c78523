#!/usr/bin/env bash
# tests/gpu/run.sh: the prepared GPU check, for a machine with one NVIDIA GPU (sm_80 or
# sm_90). Its steps take about 640 s on an H100 (run 10, 2026-11-26, ran the first 400 s),
# so one call does not hold them all: every step has its own timeout, and no step starts
# or runs past NS_GPU_BUDGET_S (580 s; the device tool stops a command at 600): what the
# budget cuts says SKIPPED, the summary is printed all the same, and NS_GPU_ONLY runs what
# was cut in a second call.
# tests/gpu/run_selftest.sh (in make test) runs this script with stand-ins for its programs.
# Steps:
#   0. programs: $NS_GPU_BIN when set (the self-test's stand-ins), else the pack from
#      tests/gpu/pack.sh (build/gpu-pack.tar.gz, built where no GPU is needed) when
#      present, else a build here with USE_CUDA=yes
#   1. gpu-parity kernels:    every ns_cuda_* op against the CPU references on odd shapes,
#                             NMSE bounds, NaN failing, canaries around every output
#   2. unit cuda:             the CUDA unit tests (backend ops, tiny-model logits vs CPU)
#   3. gpu-parity greedy:     greedy tokens, CPU vs CUDA, tiny Q8_0/Q4_1 model files
#   4. gpu-parity synthetic:  16 prompts x 32 greedy tokens, CPU vs CUDA, on random-weight
#                             models built in memory at real shapes (SmolLM2-135M's too)
#   5. runner_cuda.sh:        submit / run / export of a 40-item job with backend cuda,
#                             and the same job on 2 worker processes (--devices 0,0 is
#                             refused, so both on device 0 through the spec's devices)
#   6. gpu-bench gemm:        the card's cuBLAS bf16 GEMM rate (the MFU denominator);
#      gpu-bench ops:         the row kernels' GB/s, each FP8-writing one beside its twin,
#                             the fused QKV's epilogue, decode attention's GB/s of K and V;
#      gpu-bench gemm-shapes: the decode step's GEMMs (1B, 8B; bf16 and FP8) as the
#                             backend runs them and through each algorithm cuBLASLt offers
#   7. gpu-bench gen 1b, 8b:  1,000 prompts x (128 in + 128 out), greedy, ignore_eos, on
#                             Llama-3.2-1B and Llama-3.1-8B shapes, bf16 random weights
#   8. hf_baseline.py 1b:     HF transformers generate on the same 1B workload, in batches
#                             of 250 and in one batch of 1,000 (the faster is the baseline)
#   3g-5g. steps 3-5 again with NS_CUDA_GRAPHS=1 (decode steps replayed as CUDA graphs),
#          and the 1B/8B benchmarks with it, and the 1B at 64 sequences both ways
#   4t.    step 4 with NS_CUDA_ATTN_TC=2 (attention on the tensor cores), and the 1B/8B
#          benchmarks with it for prompt groups (1) and for every group (2)
#   4o-5o. steps 4-5 with NS_ENGINE_OVERLAP=1 (overlapped steps), the 1B benchmark with it
#          (1,000 and 64 sequences)
#   4f-5f. steps 4-5 with NS_CUDA_FUSED_FFN=1 (bf16 gate/up GEMMs, bf16 SwiGLU) and
#          NS_CUDA_FUSED_NORM=1 (residual add + RMSNorm in one pass), the 1B benchmark with
#          each, the 8B with both, and the 1B/8B with every switch on at once
#   4q-5q. steps 4-5 with NS_CUDA_FUSED_QKV=1 (q, k, v from one GEMM over the joined
#          weights, then one pass for the biases and RoPE), and 4pq, step 4p with it; the 1B
#          benchmark with it alone and with every other switch, the 8B with every other switch
#   4p.    precision fp8 (FP8 GEMMs through cuBLASLt and the FP8 KV cache; changes results,
#          so never on by default): gpu-parity fp8 (logits against the CPU, determinism),
#          the 1B/8B benchmarks with it (gpu-bench: NS_CUDA_FP8=1 NS_CUDA_KV_FP8=1), each
#          half alone, and with every other switch (its kernel, KV cache and GEMM parity,
#          and its GEMM rate beside bf16's at 8192^3, are in step 1)
# (the CUDA unit tests in step 2 include tensor parallelism over NCCL with one rank per
# device: one rank on a one-GPU machine; step 1 includes the device sampler, step 4 its
# sampled requests end to end)
# The speed switches' defaults are in engine/switches.h. Every benchmark says every switch
# either way (all 0 but those it measures), so each ratio is one switch's, whatever the
# defaults. Logs go to $OUT (the device tool's folder) or build/gpu-logs. Ends with a
# table, the side-by-side throughput ratios, each switch's checks and ratios with what they
# advise for its default, and "N passed, N failed, N skipped"; exit 1 on any failure.
# usage: [NS_GPU_ONLY=REGEX] [NS_GPU_BUDGET_S=S] bash tests/gpu/run.sh [quick|profile|bench|fp8]
#   quick:   200 prompts in the benchmarks
#   bench:   steps 6-8 only (the benchmarks, e.g. on a second kind of card)
#   fp8:     precision fp8 alone: steps 1, 4, 5, 4p and 4pq, the row kernels' GB/s (gpu-bench ops),
#            then the 1B/8B benchmarks with every switch on in bf16 and in fp8 side by side,
#            FP8's halves alone, HF, and where the FP8 run's time goes (a short call, after a
#            change to the FP8 path)
#   profile: steps 1, 4, 5, 6, then the 1B and 8B runs again with NS_CUDA_PROFILE=1
#            (device time per op, host time) and with NS_CUDA_ATTN_SLOW=1 (the plain
#            attention kernel, side by side); no HF run
set -u
cd "$(dirname "$0")/../.."
logs=${OUT:-build/gpu-logs}
mkdir -p "$logs"
n_prompts=1000 mode=${1:-full}
[ "$mode" = quick ] && n_prompts=200
pass=0 fail=0 skip=0
t_start=$(date +%s)
table=()
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader 2>&1 | tee "$logs/gpu.txt"

echo "== 0. programs"
if [ -n "${NS_GPU_BIN:-}" ]; then # programs already built (tests of this script: stand-ins)
  bin=$NS_GPU_BIN
elif [ -f build/gpu-pack.tar.gz ]; then
  bin=/tmp/nsgpu/pack
  rm -rf /tmp/nsgpu && mkdir -p /tmp/nsgpu && tar -C /tmp/nsgpu -xzf build/gpu-pack.tar.gz
  export LD_LIBRARY_PATH="$bin/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "pack of $(head -n 1 $bin/commit 2>/dev/null)"
  if ldd "$bin/gpu-bench" | grep -q 'not found'; then ldd "$bin/gpu-bench"; echo "0 passed, 1 failed, 0 skipped"; exit 1; fi
else
  bin=build
  jobs=$(nproc 2>/dev/null || echo 4)
  if ! timeout 400 make -j"$jobs" USE_CUDA=yes all gpu-tools >"$logs/build.log" 2>&1; then
    tail -n 40 "$logs/build.log"; echo "0 passed, 1 failed, 0 skipped"; exit 1
  fi
fi

# NCCL for the tensor-parallel test: the system's, else the one in PyTorch's packages
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl.so.2'; then
  nccl_dir=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
  [ -n "$nccl_dir" ] && [ -f "$nccl_dir/libnccl.so.2" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$nccl_dir" &&
    echo "NCCL from $nccl_dir"
fi

# The device tool stops a command at 600 s: no step starts after budget seconds, and none
# runs past it, so that the summary below is always printed (what was cut says SKIPPED).
budget=${NS_GPU_BUDGET_S:-580}
# NS_GPU_ONLY (an extended regex over the names, e.g. '^(1\. .*|gen-8b.*)$'): only the steps and benchmarks
# whose names match run, the rest leave no row (a short second call after a fix)
only=${NS_GPU_ONLY:-}
in_budget() { # in_budget NAME LIMIT: false (and the row says so) when the budget is spent; sets limit
  [ -n "$only" ] && ! [[ $1 =~ $only ]] && return 1
  local left=$((budget - ($(date +%s) - t_start)))
  if [ "$left" -lt 15 ]; then
    echo "== $1: SKIPPED (the ${budget} s budget is spent)"; skip=$((skip + 1))
    table+=("$(printf '%-32s SKIPPED, out of time' "$1")"); return 1
  fi
  limit=$(( $2 < left ? $2 : left ))
}
step() { # step NAME TIMEOUT CMD...: runs CMD, adds its summary line to the totals
  local name=$1 limit out line t0=$(date +%s)
  in_budget "$1" "$2" || return 0
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$logs/step.txt" 2>&1; local rc=$?
  out=$(cat "$logs/step.txt"); cat "$logs/step.txt" >>"$logs/checks.txt"
  echo "$out"
  line=$(printf '%s\n' "$out" | tail -n 1)
  if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
    pass=$((pass + BASH_REMATCH[1])); fail=$((fail + BASH_REMATCH[2])); skip=$((skip + BASH_REMATCH[3]))
    [ $rc -ne 0 ] && [ "${BASH_REMATCH[2]}" = 0 ] && fail=$((fail + 1))
    table+=("$(printf '%-32s %s (%d s)' "$name" "$line" $(( $(date +%s) - t0 )))")
  else
    echo "$name: no summary line (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"; fail=$((fail + 1))
    table+=("$(printf '%-32s FAILED, exit %d (%d s)' "$name" $rc $(( $(date +%s) - t0 )))")
  fi
}
bench() { # bench NAME TIMEOUT CMD...: runs CMD, keeps its "result:" line for the table
  local name=$1 limit t0=$(date +%s)
  in_budget "$1" "$2" || return 0
  shift 2
  echo "== $name"
  timeout "$limit" "$@" 2>&1 | tee "$logs/bench-$name.txt"; local rc=${PIPESTATUS[0]}
  local res=$(grep '^result:' "$logs/bench-$name.txt" | tail -n 1 | sed 's/^result: //')
  if [ $rc -eq 0 ] && [ -n "$res" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); res="FAILED, exit $rc $res"; fi
  table+=("$(printf '%-32s %s (%d s)' "$name" "$res" $(( $(date +%s) - t0 )))")
}

[ "$mode" != bench ] && step "1. kernel parity" 60 "$bin/gpu-parity" kernels
if [ "$mode" != profile ] && [ "$mode" != bench ] && [ "$mode" != fp8 ]; then
  step "2. CUDA unit tests" 60 "$bin/unit" cuda
  step "3. greedy, tiny model files" 60 "$bin/gpu-parity" greedy
fi
[ "$mode" != bench ] && step "4. synthetic models, CPU vs CUDA" 120 "$bin/gpu-parity" synthetic
if [ "$mode" = fp8 ]; then
  step "5. nightshift run on cuda" 120 bash tests/gpu/runner_cuda.sh "$bin"
  step "4p. synthetic, FP8 GEMMs" 150 "$bin/gpu-parity" fp8
  step "4pq. FP8 GEMMs, fused QKV" 150 env NS_CUDA_FUSED_QKV=1 "$bin/gpu-parity" fp8
elif [ "$mode" != profile ] && [ "$mode" != bench ]; then
  step "5. nightshift run on cuda" 120 bash tests/gpu/runner_cuda.sh "$bin"
  # CUDA graphs (NS_CUDA_GRAPHS=1, off by default until these pass): the same checks
  step "3g. greedy, CUDA graphs" 60 env NS_CUDA_GRAPHS=1 "$bin/gpu-parity" greedy
  step "4g. synthetic, CUDA graphs" 120 env NS_CUDA_GRAPHS=1 "$bin/gpu-parity" synthetic
  step "5g. nightshift run, CUDA graphs" 120 env NS_CUDA_GRAPHS=1 bash tests/gpu/runner_cuda.sh "$bin"
  # tensor-core attention for every group (NS_CUDA_ATTN_TC=2, off by default until this
  # passes and the benchmarks below show it faster; its kernel parity is in step 1; the
  # tiny model of step 5 has head_dim 16, which it does not take)
  step "4t. synthetic, tensor-core attn" 120 env NS_CUDA_ATTN_TC=2 "$bin/gpu-parity" synthetic
  # overlapped steps (NS_ENGINE_OVERLAP=1, off by default until these pass): the host takes
  # in step k's tokens while the device runs step k + 1
  step "4o. synthetic, overlapped steps" 120 env NS_ENGINE_OVERLAP=1 "$bin/gpu-parity" synthetic
  step "5o. nightshift run, overlapped" 120 env NS_ENGINE_OVERLAP=1 bash tests/gpu/runner_cuda.sh "$bin"
  # fused ops (off by default): NS_CUDA_FUSED_FFN=1, gate/up GEMMs writing bf16 and the
  # bf16 SwiGLU feeding the down GEMM; NS_CUDA_FUSED_NORM=1, the residual add and the next
  # RMSNorm in one pass (their kernel parity is in step 1)
  step "4f. synthetic, fused ops" 120 env NS_CUDA_FUSED_FFN=1 NS_CUDA_FUSED_NORM=1 "$bin/gpu-parity" synthetic
  step "5f. nightshift run, fused ops" 120 env NS_CUDA_FUSED_FFN=1 NS_CUDA_FUSED_NORM=1 \
    bash tests/gpu/runner_cuda.sh "$bin"
  # the fused QKV (NS_CUDA_FUSED_QKV=1, on by default since run 11; its epilogue's parity is in step 1)
  step "4q. synthetic, fused QKV" 120 env NS_CUDA_FUSED_QKV=1 "$bin/gpu-parity" synthetic
  step "5q. nightshift run, fused QKV" 120 env NS_CUDA_FUSED_QKV=1 bash tests/gpu/runner_cuda.sh "$bin"
  step "4p. synthetic, FP8 GEMMs" 150 "$bin/gpu-parity" fp8
  step "4pq. FP8 GEMMs, fused QKV" 150 env NS_CUDA_FUSED_QKV=1 "$bin/gpu-parity" fp8
fi
# Benchmarks, most wanted first, so that a run cut short by the time budget loses the
# least: every switch is said either way (off="... =0"), so each side-by-side pair differs
# in one switch whatever engine/switches.h's defaults are; "-all" is every switch on.
off="NS_CUDA_GRAPHS=0 NS_CUDA_ATTN_TC=0 NS_ENGINE_OVERLAP=0 NS_CUDA_FUSED_FFN=0 NS_CUDA_FUSED_NORM=0 NS_CUDA_FUSED_QKV=0"
all="NS_CUDA_GRAPHS=1 NS_CUDA_ATTN_TC=1 NS_ENGINE_OVERLAP=1 NS_CUDA_FUSED_FFN=1 NS_CUDA_FUSED_NORM=1 NS_CUDA_FUSED_QKV=1"
fp8="NS_CUDA_FP8=1 NS_CUDA_KV_FP8=1" # a job's precision: fp8 (gpu-bench's names for its two halves)
gen() { # gen NAME TIMEOUT SHAPE N_PROMPTS MAX_SEQS [VAR=VALUE ...]: gpu-bench gen, switches off but those given
  local name=$1 limit=$2 shape=$3 n=$4 seqs=$5; shift 5
  bench "$name" "$limit" env $off "$@" "$bin/gpu-bench" gen "$shape" "$n" 128 128 "$seqs" "${peak:-0}"
}
bench gemm 40 "$bin/gpu-bench" gemm
# the row kernels, each FP8-writing one beside the one it replaces (GB/s)
[ "$mode" != bench ] && bench ops 60 env NS_CUDA_ATTN_TC=1 "$bin/gpu-bench" ops
# each decode-step GEMM through cublasGemmEx's default and through cuBLASLt's other
# algorithms: what a per-shape choice would save (the decode GEMMs ran at half the large
# GEMMs' rate in run 11)
if [ "$mode" != bench ]; then
  [ "$mode" != fp8 ] && bench gemm-shapes-1b 60 "$bin/gpu-bench" gemm-shapes 1b 1000
  [ "$mode" != fp8 ] && bench gemm-shapes-8b 60 "$bin/gpu-bench" gemm-shapes 8b 1000
  bench gemm-shapes-1b-fp8 60 "$bin/gpu-bench" gemm-shapes 1b 1000 fp8
  bench gemm-shapes-8b-fp8 60 "$bin/gpu-bench" gemm-shapes 8b 1000 fp8
fi
peak=$(grep -o 'gemm_tflops=[0-9.]*' "$logs/bench-gemm.txt" | cut -d= -f2)
gen gen-1b 90 1b "$n_prompts" 1024
gen gen-8b 150 8b "$n_prompts" 1024
if [ "$mode" = fp8 ]; then
  gen gen-1b-all 90 1b "$n_prompts" 1024 $all
  gen gen-1b-fp8-all 90 1b "$n_prompts" 1024 $all $fp8
  gen gen-1b-fp8-all-noqkv 90 1b "$n_prompts" 1024 $all $fp8 NS_CUDA_FUSED_QKV=0
  gen gen-1b-fp8 90 1b "$n_prompts" 1024 $fp8
  gen gen-1b-fp8gemm 90 1b "$n_prompts" 1024 NS_CUDA_FP8=1
  gen gen-8b-all 150 8b "$n_prompts" 1024 $all
  gen gen-8b-fp8-all 150 8b "$n_prompts" 1024 $all $fp8
  gen gen-8b-fp8 150 8b "$n_prompts" 1024 $fp8
  gen prof-1b-fp8-all 90 1b "$n_prompts" 1024 $all $fp8 NS_CUDA_PROFILE=1
  if python3 -c 'import torch, transformers' 2>/dev/null; then
    bench hf-1b-b1000 150 env PYTHONUNBUFFERED=1 python3 tests/gpu/hf_baseline.py --shape 1b --n "$n_prompts" --batch 1000
    bench hf-1b 150 env PYTHONUNBUFFERED=1 python3 tests/gpu/hf_baseline.py --shape 1b --n "$n_prompts" --batch 250
  fi
elif [ "$mode" != profile ]; then
  # each switch alone on the 1B shape, then every switch at once
  gen gen-1b-graphs 90 1b "$n_prompts" 1024 NS_CUDA_GRAPHS=1
  gen gen-1b-tc1 90 1b "$n_prompts" 1024 NS_CUDA_ATTN_TC=1
  gen gen-1b-tc2 90 1b "$n_prompts" 1024 NS_CUDA_ATTN_TC=2
  gen gen-1b-ffn 90 1b "$n_prompts" 1024 NS_CUDA_FUSED_FFN=1
  gen gen-1b-norm 90 1b "$n_prompts" 1024 NS_CUDA_FUSED_NORM=1
  gen gen-1b-overlap 90 1b "$n_prompts" 1024 NS_ENGINE_OVERLAP=1
  gen gen-1b-all 90 1b "$n_prompts" 1024 $all
  gen gen-1b-qkv 90 1b "$n_prompts" 1024 NS_CUDA_FUSED_QKV=1
  gen gen-1b-all-noqkv 90 1b "$n_prompts" 1024 $all NS_CUDA_FUSED_QKV=0
  # precision fp8 (FP8 GEMMs and the FP8 KV cache), each half alone, and with every switch
  gen gen-1b-fp8 90 1b "$n_prompts" 1024 $fp8
  gen gen-1b-fp8gemm 90 1b "$n_prompts" 1024 NS_CUDA_FP8=1
  gen gen-1b-kvfp8 90 1b "$n_prompts" 1024 NS_CUDA_KV_FP8=1
  gen gen-1b-fp8-all 90 1b "$n_prompts" 1024 $all $fp8
  gen gen-1b-fp8-all-noqkv 90 1b "$n_prompts" 1024 $all $fp8 NS_CUDA_FUSED_QKV=0
  if python3 -c 'import torch, transformers' 2>/dev/null; then
    # HF with every prompt in one generate call, its faster way (run 11: 46,598 tok/s against
    # 11,827 in batches of 250, each after a warm-up batch of its size): the fair baseline
    bench hf-1b-b1000 150 env PYTHONUNBUFFERED=1 python3 tests/gpu/hf_baseline.py --shape 1b --n "$n_prompts" --batch 1000
    bench hf-1b 150 env PYTHONUNBUFFERED=1 python3 tests/gpu/hf_baseline.py --shape 1b --n "$n_prompts" --batch 250
  else
    echo "== hf-1b: SKIPPED (no torch/transformers here)"; skip=$((skip + 1))
  fi
  # the 8B shape; 64 sequences, where launch overhead weighs more
  gen gen-8b-tc1 150 8b "$n_prompts" 1024 NS_CUDA_ATTN_TC=1
  gen gen-8b-tc2 150 8b "$n_prompts" 1024 NS_CUDA_ATTN_TC=2
  gen gen-8b-fused 150 8b "$n_prompts" 1024 NS_CUDA_FUSED_FFN=1 NS_CUDA_FUSED_NORM=1
  gen gen-8b-all 150 8b "$n_prompts" 1024 $all
  gen gen-8b-all-noqkv 150 8b "$n_prompts" 1024 $all NS_CUDA_FUSED_QKV=0
  gen gen-8b-fp8 150 8b "$n_prompts" 1024 $fp8
  gen gen-8b-fp8-all 150 8b "$n_prompts" 1024 $all $fp8
  gen gen-8b-kvfp8 150 8b "$n_prompts" 1024 NS_CUDA_KV_FP8=1
  gen gen-1b-b64 60 1b 64 64
  gen gen-1b-b64-graphs 60 1b 64 64 NS_CUDA_GRAPHS=1
  gen gen-1b-b64-graphs-overlap 60 1b 64 64 NS_CUDA_GRAPHS=1 NS_ENGINE_OVERLAP=1
  # where the time goes with the defaults, and with FP8 too: the next step's starting point
  # (timing events between ops slow it a little, so its tok/s is not compared)
  gen prof-1b-all 90 1b "$n_prompts" 1024 $all NS_CUDA_PROFILE=1
  gen prof-1b-fp8-all 90 1b "$n_prompts" 1024 $all $fp8 NS_CUDA_PROFILE=1
else
  # device time per op (NS_CUDA_PROFILE=1), and the plain attention kernel side by side
  gen prof-1b 90 1b "$n_prompts" 1024 NS_CUDA_PROFILE=1
  gen prof-8b 150 8b "$n_prompts" 1024 NS_CUDA_PROFILE=1
  gen prof-1b-fp8 90 1b "$n_prompts" 1024 NS_CUDA_PROFILE=1 $fp8
  gen prof-1b-tc2 90 1b "$n_prompts" 1024 NS_CUDA_PROFILE=1 NS_CUDA_ATTN_TC=2
  gen prof-8b-tc2 150 8b "$n_prompts" 1024 NS_CUDA_PROFILE=1 NS_CUDA_ATTN_TC=2
  gen slow-attn-1b 90 1b "$n_prompts" 1024 NS_CUDA_ATTN_SLOW=1
  gen slow-attn-8b 150 8b "$n_prompts" 1024 NS_CUDA_ATTN_SLOW=1
fi

echo
echo "== summary ($(head -n 1 "$logs/gpu.txt"); $(( $(date +%s) - t_start )) s)"
for row in "${table[@]}"; do echo "$row"; done | tee "$logs/summary.txt"
# what each switch bought, in output tok/s, against the run with every switch off
tok_s() { grep -o 'out_tok_s=[0-9]*' "$logs/bench-$1.txt" 2>/dev/null | tail -n 1 | cut -d= -f2; }
ratio() { # ratio NAME BASE: NAME's output tok/s over BASE's
  local a=$(tok_s "$1") b=$(tok_s "$2")
  [ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt 0 ] &&
    awk -v a="$a" -v b="$b" -v n="$1" -v m="$2" 'BEGIN { printf "%-28s %8d tok/s  x%.3f of %s\n", n, a, a / b, m }'
}
echo "== side by side (output tok/s)" | tee -a "$logs/summary.txt"
for pair in "gen-1b-graphs gen-1b" "gen-1b-b64-graphs gen-1b-b64" "gen-1b-tc1 gen-1b" \
            "gen-8b-tc1 gen-8b" "gen-1b-tc2 gen-1b" "gen-8b-tc2 gen-8b" "gen-1b-ffn gen-1b" "gen-1b-norm gen-1b" "gen-8b-fused gen-8b" "gen-1b-overlap gen-1b" \
            "gen-1b-b64-graphs-overlap gen-1b-b64-graphs" "gen-1b-all gen-1b" "gen-8b-all gen-8b" "gen-1b hf-1b" "gen-1b hf-1b-b1000" \
            "gen-1b-all hf-1b" "gen-1b-all hf-1b-b1000" "gen-1b-fp8 gen-1b" "gen-1b-fp8gemm gen-1b" "gen-1b-kvfp8 gen-1b" \
            "gen-8b-fp8 gen-8b" "gen-8b-kvfp8 gen-8b" "gen-1b-qkv gen-1b" "gen-1b-all gen-1b-all-noqkv" "gen-8b-all gen-8b-all-noqkv" "gen-1b-fp8-all gen-1b-fp8-all-noqkv" \
            "gen-1b-fp8-all gen-1b-all" "gen-8b-fp8-all gen-8b-all" "gen-1b-fp8-all hf-1b" "gen-1b-fp8-all hf-1b-b1000"; do
  ratio $pair
done | tee -a "$logs/summary.txt"
# each switch: its checks in this run, its ratios, and what they say of its default in
# engine/switches.h (on: every check passed, no ratio below 0.98 and one at least 1.02, since two
# runs of one build spread about 2%; FP8 changes results, so it stays a choice whatever its
# numbers). Advice for the person reading the run, not a decision made here.
step_state() { # step_state ID: passed, failed, or "not run" (not in this mode, or out of time)
  local row=$(grep "^${1//./\\.} " "$logs/summary.txt")
  if [ -z "$row" ] || [[ $row == *"SKIPPED, out of time"* ]]; then echo "not run"
  elif [[ $row == *" 0 failed"* ]]; then echo passed; else echo failed; fi
}
verdict() { # verdict SWITCH "STEP-IDS" "NAME/BASE ..."
  local sw=$1 ok=passed min= max=0 list= r a b missing=
  for id in $2; do
    case $(step_state "$id") in failed) ok=FAILED ;; "not run") [ "$ok" = passed ] && ok="not all run" ;; esac
  done
  for pair in $3; do
    a=$(tok_s "${pair%/*}") b=$(tok_s "${pair#*/}")
    if [ -n "$a" ] && [ -n "$b" ] && [ "$b" -gt 0 ]; then
      r=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')
      list="$list ${pair%/*} x$r"
      if [ -z "$min" ] || awk -v r="$r" -v m="$min" 'BEGIN { exit !(r < m) }'; then min=$r; fi
      if awk -v r="$r" -v m="$max" 'BEGIN { exit !(r > m) }'; then max=$r; fi
    else
      list="$list ${pair%/*} (no number)"; min=0 missing=1
    fi
  done
  # engine/switches.h's NS_DEFAULT_<name without NS_> for this switch, and its value now
  local var=NS_DEFAULT_${sw%=*}; var=${var/DEFAULT_NS_/DEFAULT_}
  local now=$(grep -A1 "^#ifndef $var\b" engine/switches.h 2>/dev/null | sed -n 's/^#define [A-Z_]* \([0-9]\).*/\1/p')
  local on=0 say
  [ "$ok" = passed ] && [ -n "$min" ] && awk -v m="$min" -v x="$max" 'BEGIN { exit !(m >= 0.98 && x >= 1.02) }' && on=1
  if [ "$sw" = NS_CUDA_FP8=1 ]; then say="opt-in only (changes results)"
  elif [ "$on" = 1 ]; then
    [ "$now" = "${sw#*=}" ] && say="on by default already: keep" || say="turn on: $var ${sw#*=} in engine/switches.h (now ${now:-?})"
  elif [ "$ok" = "not all run" ]; then say="checks not all run: run the full script"
  elif [ "$ok" = passed ] && [ -n "$missing" ]; then say="numbers missing: run again"
  else
    [ "${now:-0}" = 0 ] && say="keep off" || say="off: $var 0 in engine/switches.h (now $now)"
  fi
  printf '%-22s checks %s;%s -> %s\n' "$sw" "$ok" "$list" "$say"
}
echo "== the switches" | tee -a "$logs/summary.txt"
{
  verdict NS_CUDA_GRAPHS=1 "3g. 4g. 5g." "gen-1b-graphs/gen-1b gen-1b-b64-graphs/gen-1b-b64"
  verdict NS_CUDA_ATTN_TC=1 "1. 4t." "gen-1b-tc1/gen-1b gen-8b-tc1/gen-8b"
  verdict NS_CUDA_ATTN_TC=2 "1. 4t." "gen-1b-tc2/gen-1b gen-8b-tc2/gen-8b"
  verdict NS_ENGINE_OVERLAP=1 "4o. 5o." "gen-1b-overlap/gen-1b gen-1b-b64-graphs-overlap/gen-1b-b64-graphs"
  verdict NS_CUDA_FUSED_FFN=1 "1. 4f. 5f." "gen-1b-ffn/gen-1b"
  verdict NS_CUDA_FUSED_NORM=1 "1. 4f. 5f." "gen-1b-norm/gen-1b"
  verdict NS_CUDA_FUSED_QKV=1 "1. 4q. 5q. 4pq." "gen-1b-qkv/gen-1b gen-1b-all/gen-1b-all-noqkv gen-8b-all/gen-8b-all-noqkv"
  verdict NS_CUDA_FP8=1 "1. 4p." "gen-1b-fp8/gen-1b gen-8b-fp8/gen-8b gen-1b-fp8gemm/gen-1b gen-1b-kvfp8/gen-1b gen-8b-kvfp8/gen-8b"
} | tee -a "$logs/summary.txt"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
