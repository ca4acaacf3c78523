#!/usr/bin/env bash
# tests/gpu/repeat.sh: after tests/gpu/run.sh, in the same device call, the main benchmarks
# again, in rounds, until DEADLINE (seconds since the epoch), so that the note can quote
# medians of several runs rather than one. Each round runs its benchmarks one after the
# other on the same card: every switch off, the six default switches on, those without the
# fused QKV, those with precision fp8, on the 1B shape; HF transformers on the 1B in one
# batch of 1,000 (its faster way); the 8B off and on. Prints one "rep:" line per run and,
# at the end, the median of each benchmark over this script's runs.
# usage: bash tests/gpu/repeat.sh BIN DEADLINE LOG
#   BIN: the programs (run.sh's /tmp/nsgpu/pack); LOG: a file the lines are appended to
set -u
cd "$(dirname "$0")/../.."
bin=$1 deadline=$2 log=$3
off="NS_CUDA_GRAPHS=0 NS_CUDA_ATTN_TC=0 NS_ENGINE_OVERLAP=0 NS_CUDA_FUSED_FFN=0 NS_CUDA_FUSED_NORM=0 NS_CUDA_FUSED_QKV=0"
all="NS_CUDA_GRAPHS=1 NS_CUDA_ATTN_TC=1 NS_ENGINE_OVERLAP=1 NS_CUDA_FUSED_FFN=1 NS_CUDA_FUSED_NORM=1 NS_CUDA_FUSED_QKV=1"
fp8="NS_CUDA_FP8=1 NS_CUDA_KV_FP8=1"
one() { # one NAME NEED_S CMD...: runs CMD if NEED_S seconds are left before the deadline
  local name=$1 need=$2 left; shift 2
  left=$((deadline - $(date +%s)))
  [ "$left" -lt "$need" ] && return 1
  local res
  res=$(timeout "$left" "$@" 2>&1 | grep '^result:' | tail -n 1 | grep -o 'out_tok_s=[0-9]*')
  echo "rep: $name ${res:-out_tok_s=FAILED}" | tee -a "$log"
}
round() {
  one gen-1b 15 env $off "$bin/gpu-bench" gen 1b 1000 128 128 1024 0 &&
    one gen-1b-all 15 env $all "$bin/gpu-bench" gen 1b 1000 128 128 1024 0 &&
    one gen-1b-all-noqkv 15 env $all NS_CUDA_FUSED_QKV=0 "$bin/gpu-bench" gen 1b 1000 128 128 1024 0 &&
    one gen-1b-fp8-all 15 env $all $fp8 "$bin/gpu-bench" gen 1b 1000 128 128 1024 0 &&
    one hf-1b-b1000 45 env PYTHONUNBUFFERED=1 python3 tests/gpu/hf_baseline.py --shape 1b --n 1000 --batch 1000 &&
    one gen-8b 30 env $off "$bin/gpu-bench" gen 8b 1000 128 128 1024 0 &&
    one gen-8b-all 30 env $all "$bin/gpu-bench" gen 8b 1000 128 128 1024 0
}
while round; do :; done
echo "== medians of the repeats (output tok/s; run.sh's own run not included)" | tee -a "$log"
for name in $(grep '^rep: ' "$log" | awk '{ print $2 }' | sort -u); do
  vals=$(grep "^rep: $name out_tok_s=[0-9]" "$log" | sed 's/.*=//' | sort -n)
  n=$(printf '%s\n' $vals | grep -c .)
  [ "$n" -eq 0 ] && continue
  med=$(printf '%s\n' $vals | awk -v n="$n" 'NR == int((n + 1) / 2) { a = $1 } NR == int(n / 2) + 1 { b = $1 } END { printf "%.0f", n % 2 ? a : (a + b) / 2 }')
  printf '%-16s median %8s of %d:%s\n' "$name" "$med" "$n" "$(printf ' %s' $vals)"
done | tee -a "$log"
