#!/usr/bin/env bash
# tests/run.sh BUILD [cuda]: runs the unit tests (engine, kernels, golden, store, spec,
# input, CLI through NS_BIN), the parser tests under AddressSanitizer, the CUDA backend's
# host code and the job pipeline with backend cuda on the CPU stand-in for the device
# (tests/cudamock; some of its tests again with the kernels' own code, emulated), the
# CUDA kernels and their launchers emulated on the CPU (tests/gpu/emu_cuda.h), the FP8
# codes against CUDA's host conversions, and the GPU check's script on stand-ins, when
# those binaries were built;
# then the job pipeline end to end; ends with one line "N passed, N failed, N skipped"
# summed over all.
set -u
build=${1:-build}
mode=${2:-}
cd "$(dirname "$0")/.."
export NS_BIN="$PWD/$build/nightshift"
if [ "$mode" = cuda ]; then
  # the CUDA unit tests (tests/unit/test_cuda.c): SKIPPED without a CUDA build or device.
  # The full GPU check (kernel parity, greedy tokens, throughput) is tests/gpu/run.sh.
  "$build/unit" cuda
  exit $?
fi
pass=0 fail=0 skip=0 rc=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT
run() {
  local out
  set -o pipefail
  "$@" 2>&1 | tee "$log" || rc=1
  out=$(tail -n 1 "$log")
  if [[ $out =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
    pass=$((pass + BASH_REMATCH[1])); fail=$((fail + BASH_REMATCH[2])); skip=$((skip + BASH_REMATCH[3]))
  else
    echo "tests/run.sh: $1 ended without a summary line" >&2; fail=$((fail + 1)); rc=1
  fi
}
echo "== unit tests ($build/unit)" >&2
run "$build/unit"
if [ -x "$build/unit-asan-parsers" ]; then
  echo "== parser tests under AddressSanitizer ($build/unit-asan-parsers)" >&2
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 run "$build/unit-asan-parsers"
fi
if [ -x "$build/unit-cudamock" ]; then
  echo "== the CUDA backend's host code on a CPU stand-in for the device ($build/unit-cudamock)" >&2
  run "$build/unit-cudamock"
fi
if [ -x "$build/unit-cudamock-emu" ]; then
  # the real kernels' code (emulated) under the backend, end to end, about 2 minutes:
  # prompt logits against the CPU's on a head_dim-64 model, bf16 and FP8 KV caches, with
  # the fast attention kernels and with the tensor-core ones; the CPU's greedy tokens
  # (the generic attention kernel); the FP8 KV cache with the tensor-core attention for
  # every group, FP8 GEMMs, graphs, overlap and the fused norm. Any other test of
  # test_cudamock.c runs the same way by its name (the demo-model one takes hours).
  echo "== the same stand-in running the CUDA kernels' own code, emulated ($build/unit-cudamock-emu)" >&2
  run env NS_CUDA_ATTN_TC=0 "$build/unit-cudamock-emu" test_cudamock_prompt_logits_near_cpu
  run env NS_CUDA_ATTN_TC=2 "$build/unit-cudamock-emu" test_cudamock_prompt_logits_near_cpu
  run "$build/unit-cudamock-emu" test_cudamock_greedy_matches_cpu
  run env NS_CUDA_ATTN_TC=2 "$build/unit-cudamock-emu" test_cudamock_kv_fp8_runs_and_composes
  run "$build/unit-cudamock-emu" test_cudamock_fused_qkv_all_switches
fi
if [ -x "$build/cudamock/nightshift" ]; then
  echo "== the job pipeline with backend cuda on the CPU stand-in (tests/gpu/runner_cuda.sh)" >&2
  run bash tests/gpu/runner_cuda.sh "$build/cudamock"
  echo "== the same with CUDA graphs (NS_CUDA_GRAPHS=1)" >&2
  run env NS_CUDA_GRAPHS=1 bash tests/gpu/runner_cuda.sh "$build/cudamock"
  echo "== the prepared GPU check (tests/gpu/run.sh) with stand-ins for its programs" >&2
  run bash tests/gpu/run_selftest.sh "$build"
  echo "== gpu-bench's ops on the stand-in (tests/gpu/bench_smoke.sh)" >&2
  run bash tests/gpu/bench_smoke.sh "$build"
fi
for check in "emu-sample-rows:the CUDA row-sampling kernel, emulated on the CPU" \
             "emu-attention-tc:the CUDA tensor-core attention kernel (bf16 and FP8 KV), emulated on the CPU" \
             "emu-attention:the CUDA fast attention kernel (bf16 and FP8 KV) and FP8 KV store, emulated" \
             "emu-fp8:the CUDA FP8 kernels, emulated on the CPU" \
             "emu-kernels:the small CUDA kernels (norms, SwiGLU, RoPE, gathers, dequantization, argmax), emulated" \
             "check-fp8-format:FP8 E4M3 codes against CUDA's host conversions"; do
  if [ -x "$build/${check%%:*}" ]; then
    echo "== ${check#*:} ($build/${check%%:*})" >&2
    run "$build/${check%%:*}"
  fi
done
echo "== job pipeline end to end (tests/e2e/pipeline.sh)" >&2
run bash tests/e2e/pipeline.sh "$build"
echo "== the same with the queue's calls inline (NS_QUEUE_THREAD=0)" >&2
run env NS_QUEUE_THREAD=0 bash tests/e2e/pipeline.sh "$build"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ] && [ $rc -eq 0 ]
