#!/usr/bin/env bash
# tests/gpu/runner_cuda.sh BIN_DIR: the job pipeline on a GPU: a 40-item job on a tiny
# model file with backend cuda through submit -> run -> export, compared with the same
# job on the CPU (greedy; bf16 GEMM inputs can flip a near-tie, so identical outputs are
# counted and reported, and at least 36 of 40 are required); the same job sampled
# (temperature, top_k, top_p, min_p, a seed: tokens picked on the device) twice, whose
# exports must be identical; the job with precision: fp8 (and refused on the CPU); and the
# job on worker processes through the spec's devices.
# Ends with "N passed, N failed, N skipped".
set -u
bin=${1:-build}
BIN="$bin/nightshift"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0 fail=0
check() { local name=$1; shift; if "$@"; then pass=$((pass + 1)); echo "ok   $name"; else fail=$((fail + 1)); echo "FAIL $name"; fi; }
"$bin/unit" --write-tiny-model "$T/tiny.gguf" || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
: > "$T/in.jsonl"
for i in $(seq 1 40); do printf '{"id": "doc-%02d", "text": "item %d of the set"}\n' "$i" "$i" >> "$T/in.jsonl"; done
gpu=${NS_TEST_GPU_BACKEND:-cuda} # cpu: checks this script itself on a machine without a GPU
for be in cpu cuda; do
  cat > "$T/job-$be.yaml" <<YAML
name: tiny-$be
model: tiny.gguf
backend: $([ $be = cuda ] && echo "$gpu" || echo cpu)
input:
  path: in.jsonl
  format: jsonl
  id_field: id
prompt:
  template: "Say: {{text}}"
sampling:
  max_tokens: 24
  temperature: 0
limits:
  max_seqs: 8
YAML
  "$BIN" submit "$T/job-$be.yaml" --db "$T/$be.db" >/dev/null 2>"$T/err-$be" &&
    "$BIN" run --db "$T/$be.db" --stats 2>>"$T/err-$be" >/dev/null &&
    "$BIN" export 1 --db "$T/$be.db" -o "$T/$be.jsonl" 2>>"$T/err-$be"
  check "backend $be: submit, run, export exit 0" test $? = 0
done
grep -i "backend\|cuda" "$T/err-cuda" | head -3
grep -h "bookkeeping" "$T/err-cpu" "$T/err-cuda" | sed 's/^/     /' # the share of queue work in the run (informational)
check "backend cuda: 40 results" test "$(grep -c custom_id "$T/cuda.jsonl" 2>/dev/null)" = 40
same=$(paste <(grep -o '"output":"[^"]*"' "$T/cpu.jsonl") <(grep -o '"output":"[^"]*"' "$T/cuda.jsonl") |
       awk -F'\t' '$1 == $2' | wc -l)
echo "     $same of 40 outputs identical between cpu and cuda"
check "cpu vs cuda: at least 36 of 40 outputs identical" test "$same" -ge 36
# sampled on the device, twice: the same seed gives the same outputs (a high temperature:
# the tiny model's logits are steep)
sed -e 's/  temperature: 0/  temperature: 25\n  top_k: 40\n  top_p: 0.9\n  min_p: 0.02\n  seed: 7/' \
  "$T/job-cuda.yaml" > "$T/job-sampled.yaml"
for k in 1 2; do
  "$BIN" submit "$T/job-sampled.yaml" --db "$T/s$k.db" >/dev/null 2>&1 && "$BIN" run --db "$T/s$k.db" 2>/dev/null >/dev/null &&
    "$BIN" export 1 --db "$T/s$k.db" -o "$T/s$k.jsonl" 2>/dev/null
  rc=$?
  check "sampled run $k: exit 0, 40 results" test $rc = 0 -a "$(grep -c custom_id "$T/s$k.jsonl" 2>/dev/null)" = 40
done
check "sampled: two runs, identical outputs" test -s "$T/s1.jsonl" -a -s "$T/s2.jsonl" -a \
  "$(grep -o '"output":"[^"]*"' "$T/s1.jsonl" 2>/dev/null | md5sum)" = "$(grep -o '"output":"[^"]*"' "$T/s2.jsonl" 2>/dev/null | md5sum)"
differ=$(paste <(grep -o '"output":"[^"]*"' "$T/s1.jsonl") <(grep -o '"output":"[^"]*"' "$T/cuda.jsonl") |
         awk -F'\t' '$1 != $2' | wc -l)
check "sampled: outputs differ from greedy ($differ of 40)" test -s "$T/s1.jsonl" -a "$differ" -ge 10
# precision: fp8 (FP8 GEMMs, compute capability 8.9 or later): the job runs where the card
# has FP8 tensor cores, and is refused, naming why, where not; outputs against bf16's are
# reported, not required (FP8 changes results). On the CPU the same job is refused before
# any item is touched.
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d .)
{ cat "$T/job-cuda.yaml"; echo "precision: fp8"; } > "$T/job-fp8.yaml"
"$BIN" submit "$T/job-fp8.yaml" --db "$T/fp8.db" >/dev/null 2>&1 && "$BIN" run --db "$T/fp8.db" 2>"$T/err-fp8" >/dev/null
rc=$?
if [ "$gpu" = cuda ] && { [ -z "$cc" ] || [ "$cc" -ge 89 ]; }; then
  "$BIN" export 1 --db "$T/fp8.db" -o "$T/fp8.jsonl" 2>/dev/null
  check "precision fp8: run exit 0, 40 results" test $rc = 0 -a "$(grep -c custom_id "$T/fp8.jsonl" 2>/dev/null)" = 40
  check "precision fp8: said in the run's log" grep -q "precision fp8" "$T/err-fp8"
  same8=$(paste <(grep -o '"output":"[^"]*"' "$T/fp8.jsonl") <(grep -o '"output":"[^"]*"' "$T/cuda.jsonl") |
          awk -F'\t' '$1 == $2' | wc -l)
  echo "     $same8 of 40 outputs identical between fp8 and bf16"
else
  check "precision fp8 on ${gpu} (compute capability ${cc:-?}): refused (exit 3), saying why" \
    bash -c "[ $rc = 3 ] && grep -q 'precision fp8' '$T/err-fp8'"
fi
sed 's/^backend: .*/backend: cpu/' "$T/job-fp8.yaml" > "$T/job-fp8-cpu.yaml"
"$BIN" submit "$T/job-fp8-cpu.yaml" --db "$T/fp8c.db" >/dev/null 2>&1; "$BIN" run --db "$T/fp8c.db" 2>"$T/err-fp8c" >/dev/null
rc=$?
check "precision fp8 on the cpu backend: refused (exit 3) naming the cuda backend" \
  bash -c "[ $rc = 3 ] && grep -q 'precision fp8 needs the cuda backend' '$T/err-fp8c'"
check "precision fp8 on the cpu backend: 40 items still pending" \
  grep -q '"request_counts":{"total":40,"completed":0,"failed":0}' <("$BIN" status --json 1 --db "$T/fp8c.db")
# two worker processes through the spec's devices, both on device 0 where only one GPU exists
n_dev=$(nvidia-smi -L 2>/dev/null | grep -c GPU)
devs="[0, 1]"; [ "$n_dev" -lt 2 ] && devs="[0]"
{ cat "$T/job-cuda.yaml"; echo "devices: $devs"; } > "$T/job-dp.yaml"
"$BIN" submit "$T/job-dp.yaml" --db "$T/dp.db" >/dev/null 2>&1 && "$BIN" run --db "$T/dp.db" 2>"$T/err-dp" >/dev/null
check "spec devices $devs: run exit 0" test $? = 0
check "spec devices $devs: 40 completed" grep -q '"request_counts":{"total":40,"completed":40,"failed":0}' \
  <("$BIN" status --json 1 --db "$T/dp.db")
echo "$pass passed, $fail failed, 0 skipped"
[ $fail -eq 0 ]
