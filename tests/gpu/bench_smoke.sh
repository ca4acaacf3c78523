#!/usr/bin/env bash
# tests/gpu/bench_smoke.sh BUILD: gpu-bench's ops mode (tests/gpu/bench_gpu.c) on the CPU
# stand-in for the device (BUILD/cudamock/gpu-bench, `ops small`), so that its host code
# (buffers, launcher arguments, the stand-in's checks of them) has run before a GPU
# session spends time on it. The stand-in's timings are zero: only that it ran and that
# every op gave its line counts here. Ends with "N passed, N failed, N skipped".
set -u
build=${1:-build}
bin=$build/cudamock/gpu-bench
if [ ! -x "$bin" ]; then
  echo "SKIP: no stand-in gpu-bench ($bin)"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
out=$("$bin" ops small 2>&1); rc=$?
printf '%s\n' "$out" | tail -n 4
pass=0 fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi; }
check "gpu-bench ops small: exit 0" [ $rc -eq 0 ]
for op in rmsnorm rmsnorm_fp8 add_rmsnorm add_rmsnorm_fp8 swiglu_bf16 swiglu_bf16_fp8 quant_rows_fp8_bf16 \
          f32_to_bf16 scale_outer_f32 scale_outer_bf16 rope_q_k qkv_split_rope attn_decode_40 attn_decode_tc_40 \
          attn_decode_fp8_40 attn_decode_tc_fp8_40 attn_decode_72 attn_decode_tc_72; do
  check "gpu-bench ops small: $op timed" grep -q "^result:.* ${op}_gbps=" <<<"$out"
done
echo "$pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
