#!/usr/bin/env bash
# tests/gpu/run.sh: the prepared GPU check, for a machine with one NVIDIA GPU (sm_80 or
# sm_90) and nvcc. Written where no GPU exists: it has been compiled there, never run.
# Steps (each under its own timeout; the whole run is meant to take 2-3 minutes, 8 at most):
#   1. build with USE_CUDA=yes (CUDA sources for sm_80/sm_90), then build/gpu-parity
#   2. gpu-parity kernels:    every ns_cuda_* op against the CPU references, odd shapes,
#                             NMSE bounds, NaN failing, canaries around every output
#   3. build/unit cuda:       the CUDA unit tests (backend ops and tiny-model logits vs CPU)
#   4. gpu-parity greedy:     greedy tokens, CPU vs CUDA, on tiny random models
#   5. gpu-parity throughput: tokens/s of the CUDA backend on a random 8-layer model
# Prints each step's output and ends with "N passed, N failed, N skipped"; exit 1 on any
# failure. usage: bash tests/gpu/run.sh [BUILD_DIR]
set -u
cd "$(dirname "$0")/../.."
build=${1:-build}
jobs=$(nproc 2>/dev/null || echo 4)
nvcc_path=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cuda_home=$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")
export PATH="$cuda_home/bin:$PATH"
pass=0 fail=0 skip=0
t_start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"

mkdir -p "$build"
echo "== 1. build (USE_CUDA=yes, $jobs jobs)"
if ! timeout 300 make -j"$jobs" USE_CUDA=yes BUILD="$build" all >"$build/gpu-build.log" 2>&1; then
  tail -n 40 "$build/gpu-build.log"; echo "0 passed, 1 failed, 0 skipped"; exit 1
fi
grep '^cuda:' "$build/gpu-build.log"
if ! timeout 120 cc -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -O2 -g -pthread -DNS_HAVE_CUDA \
    -Iengine -Ikernels/cpu -Ikernels/cuda -Itests/unit -I"$cuda_home/include" \
    tests/gpu/parity.c tests/unit/tiny_model.c "$build/libnightshift.a" "$build/libnightshift_cuda.a" \
    -o "$build/gpu-parity" -L"$cuda_home/lib64" -Wl,-rpath,"$cuda_home/lib64" \
    -lsqlite3 -lzstd -lyaml -ljansson -lopenblas -lpcre2-8 -lm -lpthread -lcublas -lcudart -lstdc++; then
  echo "0 passed, 1 failed, 0 skipped"; exit 1
fi

step() { # step NAME TIMEOUT CMD...: runs CMD, adds its summary line to the totals
  local name=$1 limit=$2 out line; shift 2
  echo "== $name"
  out=$(timeout "$limit" "$@" 2>&1); local rc=$?
  echo "$out"
  line=$(printf '%s\n' "$out" | tail -n 1)
  if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
    pass=$((pass + BASH_REMATCH[1])); fail=$((fail + BASH_REMATCH[2])); skip=$((skip + BASH_REMATCH[3]))
    [ $rc -ne 0 ] && [ "${BASH_REMATCH[2]}" = 0 ] && fail=$((fail + 1))
  else
    echo "$name: no summary line (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))"; fail=$((fail + 1))
  fi
}
step "2. kernel parity" 120 "$build/gpu-parity" kernels
step "3. CUDA unit tests" 120 "$build/unit" cuda
step "4. greedy tokens, CPU vs CUDA" 120 "$build/gpu-parity" greedy
step "5. throughput" 120 "$build/gpu-parity" throughput
echo "gpu run: $(( $(date +%s) - t_start )) s"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
