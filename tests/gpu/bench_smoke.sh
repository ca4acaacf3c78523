#!/usr/bin/env bash
# tests/gpu/bench_smoke.sh BUILD: gpu-bench's ops and gemm-shapes modes (tests/gpu/bench_gpu.c)
# on the CPU stand-in for the device (BUILD/cudamock/gpu-bench, `ops small`, `gemm-shapes
# 135m 4` and its fp8 form), so that their host code (buffers, launcher arguments,
# cuBLASLt layouts, the stand-in's checks of them) has run before a GPU session spends
# time on it. The stand-in's timings are zero: only that it ran, that every op gave its
# line, and that cuBLASLt's product equals cublasGemmEx's count here. Ends with "N passed,
# N failed, N skipped".
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
# gemm-shapes: each GEMM through the default and through the stand-in's one cuBLASLt
# algorithm for bf16, whose product must equal the default's
out=$("$bin" gemm-shapes 135m 4 2>&1); rc=$?
printf '%s\n' "$out" | tail -n 2
check "gpu-bench gemm-shapes 135m 4: exit 0" [ $rc -eq 0 ]
check "gpu-bench gemm-shapes: 5 GEMMs, each with a cuBLASLt algorithm" [ "$(grep -c 'cuBLASLt: 1 algorithms' <<<"$out")" -eq 5 ]
check "gpu-bench gemm-shapes: no product differs" bash -c '! grep -q "^FAIL" <<<"$1"' _ "$out"
check "gpu-bench gemm-shapes: result line" grep -q "^result: shape=135m m=4 step_ms_default=" <<<"$out"
# the same in FP8: the stand-in takes its layouts and scales only as the H100's cuBLASLt does
out=$("$bin" gemm-shapes 135m 16 fp8 2>&1); rc=$?
check "gpu-bench gemm-shapes 135m 16 fp8: exit 0" [ $rc -eq 0 ]
check "gpu-bench gemm-shapes fp8: 5 GEMMs, each with a cuBLASLt algorithm" [ "$(grep -c 'cuBLASLt: 1 algorithms' <<<"$out")" -eq 5 ]
check "gpu-bench gemm-shapes fp8: result line" grep -q "^result: shape=135m m=16 fp8=1 " <<<"$out"
echo "$pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
