#!/usr/bin/env bash
# tests/gpu/run_selftest.sh BUILD: runs tests/gpu/run.sh, the prepared GPU check, on this
# machine with stand-ins for its programs, so that a mistake in the script shows here and
# not in a GPU session's few minutes. The stand-ins: gpu-parity and unit print a summary
# line (a check fails when asked to, FAKE_FAIL="MODE VAR=VALUE"); gpu-bench prints
# throughput made up from the switches it is given (each switch a known factor); step 5's
# nightshift and tiny model are the CPU stand-in build's (BUILD/cudamock). Checks: the
# steps and benchmarks all run and land in the summary; the side-by-side ratios are the
# stand-in's factors; each switch's advice follows from its checks and ratios and from
# engine/switches.h's default; a time budget too small to finish cuts the rest, marked,
# and the summary still prints; NS_GPU_ONLY runs only the steps it names. Ends with "N
# passed, N failed, N skipped".
set -u
build=${1:-build}
cd "$(dirname "$0")/../.."
root=$PWD
pass=0 fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi; }
if [ ! -x "$build/cudamock/nightshift" ] || [ ! -x "$build/cudamock/unit" ]; then
  echo "SKIP: no CPU stand-in build ($build/cudamock)"; echo "0 passed, 0 failed, 1 skipped"; exit 0
fi
T=$(mktemp -d)
[ -n "${KEEP_T:-}" ] || trap 'rm -rf "$T"' EXIT
bin=$T/bin
mkdir -p "$bin"
ln -s "$root/$build/cudamock/nightshift" "$bin/nightshift"
cat >"$bin/gpu-parity" <<'EOF'
#!/usr/bin/env bash
echo "ok   stand-in $1"
if [ -n "${FAKE_FAIL:-}" ] && [ "$1" = "${FAKE_FAIL%% *}" ] && [ "$(printenv "${FAKE_FAIL#* }" | head -c 1)" = 1 ] 2>/dev/null; then
  echo "FAIL stand-in"; echo "2 passed, 1 failed, 0 skipped"; exit 1
fi
echo "3 passed, 0 failed, 0 skipped"
EOF
cat >"$bin/unit" <<EOF
#!/usr/bin/env bash
[ "\$1" = --write-tiny-model ] && exec "$root/$build/cudamock/unit" "\$@"
echo "4 passed, 0 failed, 0 skipped"
EOF
# throughput: 60,000 (1B), 13,000 (8B), 9,000 (64 sequences), times each switch's factor
cat >"$bin/gpu-bench" <<'EOF'
#!/usr/bin/env bash
sleep "${FAKE_SLEEP:-0}"
if [ "$1" = gemm ]; then echo "result: gemm_tflops=780.0"; exit 0; fi
base=60000; [ "$2" = 8b ] && base=13000; [ "$4" = 64 ] && base=9000
f="1"
[ "${NS_CUDA_GRAPHS:-0}" = 1 ] && f="$f*1.01"
[ "${NS_CUDA_ATTN_TC:-0}" = 1 ] && f="$f*1.05"
[ "${NS_CUDA_ATTN_TC:-0}" = 2 ] && f="$f*0.97"
[ "${NS_ENGINE_OVERLAP:-0}" = 1 ] && f="$f*1.00"
[ "${NS_CUDA_FUSED_FFN:-0}" = 1 ] && f="$f*1.06"
[ "${NS_CUDA_FUSED_NORM:-0}" = 1 ] && f="$f*1.03"
[ "${NS_CUDA_FUSED_QKV:-0}" = 1 ] && f="$f*1.04"
[ "${NS_CUDA_FP8:-0}" = 1 ] && f="$f*1.20"
[ "${NS_CUDA_KV_FP8:-0}" = 1 ] && f="$f*1.10"
awk -v b="$base" "BEGIN { printf \"result: shape=$2 out_tok_s=%.0f total_tok_s=1 tflops=1 mfu_pct=1 seconds=1\\n\", b * $f }"
EOF
chmod +x "$bin"/*
# a copy of the tree's script with a switches.h whose defaults are given (DEFAULTS="NAME=V ...")
tree() { # tree DIR DEFAULTS
  mkdir -p "$1/tests/gpu" "$1/engine"
  cp tests/gpu/run.sh tests/gpu/runner_cuda.sh tests/gpu/hf_baseline.py "$1/tests/gpu/"
  cp engine/switches.h "$1/engine/"
  for d in $2; do sed -i "s/^#define ${d%=*} [0-9]/#define ${d%=*} ${d#*=}/" "$1/engine/switches.h"; done
}
# (no torch here: run.sh's HF step says SKIPPED)
go() { # go DIR OUTDIR MODE [VAR=VALUE ...]: runs the copy in DIR; its output in OUTDIR/out.txt
  local dir=$1 out=$2 mode=$3; shift 3
  mkdir -p "$out"
  (cd "$dir" && env NS_GPU_BIN="$bin" OUT="$out" "$@" bash tests/gpu/run.sh $mode >"$out/out.txt" 2>&1)
}
says() { grep -q -- "$2" "$1/out.txt"; }
verdict_is() { grep "^$2 " "$1/summary.txt" | grep -q -- "-> $3"; }

# 1. every step and benchmark, every check passing, the defaults as in the tree
tree "$T/a" ""
go "$T/a" "$T/oa" full; rc=$?
check "all pass: exit 0" [ $rc -eq 0 ]
check "all pass: totals line" says "$T/oa" "^[0-9]* passed, 0 failed, 1 skipped$"
n_rows=$(sed -n '/^== summary/,/^== side by side/p' "$T/oa/out.txt" | grep -c ' (.* s)$')
check "all pass: 17 checks + 36 benchmarks in the summary ($n_rows)" [ "$n_rows" -eq 53 ]
check "all pass: step 5 ran on the stand-in" says "$T/oa" "^5. nightshift run on cuda .* 0 failed"
check "all pass: graphs ratio x1.010" grep -q "^gen-1b-graphs .*x1.010 of gen-1b$" "$T/oa/summary.txt"
check "all pass: fp8-all over all x1.320" grep -q "^gen-1b-fp8-all .*x1.320 of gen-1b-all$" "$T/oa/summary.txt"
check "all pass: fp8 KV alone x1.100" grep -q "^gen-1b-kvfp8 .*x1.100 of gen-1b$" "$T/oa/summary.txt"
check "all pass: fused 8B ratio x1.092" grep -q "^gen-8b-fused .*x1.092 of gen-8b$" "$T/oa/summary.txt"
check "all pass: fused QKV with every switch, 8B x1.040" grep -q "^gen-8b-all .*x1.040 of gen-8b-all-noqkv$" "$T/oa/summary.txt"
# defaults as they are in the tree: 1.01 is under the 1.02 bar, 0.97 under 0.98
default_of() { sed -n "/^#ifndef $1\\b/{n;s/^#define [A-Z_]* \\([0-9]\\).*/\\1/p}" engine/switches.h; }
want_on() { [ "$(default_of "$1")" = "$2" ] && echo "on by default already" || echo "turn on: $1 $2"; }
want_off() { [ "$(default_of "$1")" = 0 ] && echo "keep off" || echo "off: $1 0"; }
check "all pass: graphs (x1.01) advice" verdict_is "$T/oa" NS_CUDA_GRAPHS=1 "$(want_off NS_DEFAULT_CUDA_GRAPHS)"
check "all pass: tc1 (x1.05) advice" verdict_is "$T/oa" NS_CUDA_ATTN_TC=1 "$(want_on NS_DEFAULT_CUDA_ATTN_TC 1)"
check "all pass: tc2 (x0.97) advice" verdict_is "$T/oa" NS_CUDA_ATTN_TC=2 "keep off\|off: NS_DEFAULT_CUDA_ATTN_TC 0"
check "all pass: ffn (x1.06) advice" verdict_is "$T/oa" NS_CUDA_FUSED_FFN=1 "$(want_on NS_DEFAULT_CUDA_FUSED_FFN 1)"
check "all pass: norm (x1.03) advice" verdict_is "$T/oa" NS_CUDA_FUSED_NORM=1 "$(want_on NS_DEFAULT_CUDA_FUSED_NORM 1)"
check "all pass: qkv (x1.04) advice" verdict_is "$T/oa" NS_CUDA_FUSED_QKV=1 "$(want_on NS_DEFAULT_CUDA_FUSED_QKV 1)"
check "all pass: overlap (x1.00) advice" verdict_is "$T/oa" NS_ENGINE_OVERLAP=1 "$(want_off NS_DEFAULT_ENGINE_OVERLAP)"
check "all pass: fp8 stays opt-in" verdict_is "$T/oa" NS_CUDA_FP8=1 "opt-in only"

# 2. the graphs check failing, with graphs and the fused feed-forward already on by default
tree "$T/b" "NS_DEFAULT_CUDA_GRAPHS=1 NS_DEFAULT_CUDA_FUSED_FFN=1"
go "$T/b" "$T/ob" full FAKE_FAIL="synthetic NS_CUDA_GRAPHS"; rc=$?
check "graphs failing: exit 1" [ $rc -eq 1 ]
check "graphs failing: step 4g failed" grep -q "^4g\. .* 1 failed" "$T/ob/summary.txt"
check "graphs failing: advice turns it off" verdict_is "$T/ob" NS_CUDA_GRAPHS=1 "off: NS_DEFAULT_CUDA_GRAPHS 0 in engine/switches.h (now 1)"
check "graphs failing: ffn already on" verdict_is "$T/ob" NS_CUDA_FUSED_FFN=1 "on by default already: keep"
check "graphs failing: norm still advised on" verdict_is "$T/ob" NS_CUDA_FUSED_NORM=1 "$(want_on NS_DEFAULT_CUDA_FUSED_NORM 1)"
# the plain benchmarks ran with every switch said off, whatever the defaults
check "graphs failing: plain run unchanged by the defaults" grep -q "out_tok_s=60000 " "$T/ob/bench-gen-1b.txt"

# 3. a budget too small for the benchmarks: the rest is cut and marked, the summary printed
tree "$T/c" ""
go "$T/c" "$T/oc" full NS_GPU_BUDGET_S=18 FAKE_SLEEP=0.5; rc=$?
check "budget: exit 0 (cut, not failed)" [ $rc -eq 0 ]
check "budget: some rows cut" grep -q "SKIPPED, out of time" "$T/oc/summary.txt"
check "budget: the summary printed" says "$T/oc" "^== the switches"
check "budget: a cut check is not a failed one" bash -c "! grep -q 'checks FAILED' '$T/oc/summary.txt'"
check "budget: missing numbers ask for another run" grep -q -- "-> \(numbers missing\|checks not all run\)" "$T/oc/summary.txt"

# 4. bench mode: no checks run, so no switch is advised on
tree "$T/d" ""
go "$T/d" "$T/od" bench; rc=$?
check "bench mode: exit 0" [ $rc -eq 0 ]
check "bench mode: checks not run, no advice to turn on" bash -c "! grep -q -- '-> turn on' '$T/od/summary.txt'"

# 5. fp8 mode: its four checks and its benchmarks, fp8-all beside all
tree "$T/e" ""
go "$T/e" "$T/oe" fp8; rc=$?
check "fp8 mode: exit 0" [ $rc -eq 0 ]
check "fp8 mode: step 4p ran" grep -q "^4p\. .* 0 failed" "$T/oe/summary.txt"
check "fp8 mode: step 4pq ran" grep -q "^4pq\. .* 0 failed" "$T/oe/summary.txt"
check "fp8 mode: no step 2" bash -c "! grep -q '^2\. ' '$T/oe/summary.txt'"
check "fp8 mode: fp8-all over all x1.320" grep -q "^gen-1b-fp8-all .*x1.320 of gen-1b-all$" "$T/oe/summary.txt"
check "fp8 mode: 8B fp8 beside bf16" grep -q "^gen-8b-fp8 .* of gen-8b$" "$T/oe/summary.txt"
check "fp8 mode: fused QKV beside fp8-all x1.040" grep -q "^gen-1b-fp8-all .*x1.040 of gen-1b-fp8-all-noqkv$" "$T/oe/summary.txt"

# 6. NS_GPU_ONLY: the named steps and benchmarks alone, the rest leave no row
tree "$T/f" ""
go "$T/f" "$T/of" full NS_GPU_ONLY='^(1\. .*|gemm|gen-1b|gen-8b-all)$'; rc=$?
check "only: exit 0" [ $rc -eq 0 ]
n_rows=$(sed -n '/^== summary/,/^== side by side/p' "$T/of/out.txt" | grep -c ' (.* s)$')
check "only: the header and 4 rows in the summary ($n_rows)" [ "$n_rows" -eq 5 ]
check "only: ops left out" bash -c "! grep -q '^ops ' '$T/of/summary.txt'"
check "only: step 1 ran" grep -q "^1\. .* 0 failed" "$T/of/summary.txt"
check "only: gen-8b-all ran, gen-8b did not" bash -c "grep -q '^gen-8b-all ' '$T/of/summary.txt' && ! grep -q '^gen-8b ' '$T/of/summary.txt'"
check "only: switches whose checks did not run are not advised on" bash -c "! grep -q -- '-> turn on' '$T/of/summary.txt'"
echo "$pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
