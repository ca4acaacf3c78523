#!/usr/bin/env bash
# bench_pipeline.sh: job pipeline benchmark (submit, status, export, run bookkeeping,
# result compression) on the demo model.
#
# usage: tests/bench/bench_pipeline.sh [BUILD_DIR] [JSONL_OUT]
#   BUILD_DIR  where the nightshift binary is (default: build)
#   JSONL_OUT  if given, one JSON object per measurement is appended to this file
#
# Measures (every timing repeated BENCH_REPS times, medians reported):
#   1. submit of BENCH_BIG_N (1,000,000) and BENCH_SMALL_N (100,000) short JSONL items,
#      raw template "Q: {{text}}" (tokenizer only): items/s, peak RSS, db size
#   2. status --json JOB and export JOB -o FILE on both pending queues: wall, peak RSS
#   3. run --stats --quiet: the share of the run wall time the engine's thread spends on
#      queue work, on examples/summarize (20 items) and a synthetic 200-item job,
#      max_tokens 8; and on a 2,000-item job on the tiny test model, with the queue thread
#      and with NS_QUEUE_THREAD=0 (inline), side by side
#   4. result compression: sum(raw_bytes) vs sum(length(body)) (per-item zstd frames as
#      stored), exported JSONL and its whole-file zstd, and per-item zstd with a
#      dictionary trained on the first 100 bodies (applied to the rest), on the jobs of 3.
#      and two 1000-item jobs run once (raw template and chat, max_tokens 32); the
#      1000-item jobs also give a bookkeeping share (one run each)
#
# Environment: BENCH_REPS (3), BENCH_BIG_N (1000000), BENCH_SMALL_N (100000),
#   BENCH_COMP_N (1000), BENCH_COMP_TOKENS (32), BENCH_CHAT_N (= BENCH_COMP_N; 0 skips
#   the chat job), BENCH_TMP (a new /tmp dir),
#   BENCH_KEEP=1 keeps the temp dir. Needs the demo model (make model), /usr/bin/time,
#   sqlite3, zstd (installed with apt-get when missing and running as root).
# About 5 minutes on 2 idle cores (9.5 with other work on the machine).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
JSONL_OUT=${2:-}
if [ -n "$JSONL_OUT" ]; then case $JSONL_OUT in /*) ;; *) JSONL_OUT=$PWD/$JSONL_OUT ;; esac; fi
NS=$BUILD/nightshift
MODEL=$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf
REPS=${BENCH_REPS:-3}
BIG_N=${BENCH_BIG_N:-1000000}
SMALL_N=${BENCH_SMALL_N:-100000}
COMP_N=${BENCH_COMP_N:-1000}
COMP_TOKENS=${BENCH_COMP_TOKENS:-32}
CHAT_N=${BENCH_CHAT_N:-$COMP_N}
TRAIN_N=100

die() { echo "bench_pipeline: $*" >&2; exit 2; }
[ -x "$NS" ] || die "no binary $NS (make -j2 all)"
[ -f "$MODEL" ] || die "no demo model $MODEL (make model)"

need() { # need COMMAND DEBIAN_PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    [ "$(id -u)" = 0 ] || die "$1 missing: apt-get install $2"
    echo "bench_pipeline: installing $2" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >&2
}
[ -x /usr/bin/time ] || need /usr/bin/time time
need sqlite3 sqlite3
need zstd zstd
need awk gawk

T=${BENCH_TMP:-$(mktemp -d /tmp/bench_pipeline.XXXXXX)}
mkdir -p "$T"
[ "${BENCH_KEEP:-0}" = 1 ] || trap 'rm -rf "$T"' EXIT
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
START=$(date +%s)
log() { echo "[$(( $(date +%s) - START ))s] $*" >&2; }

# --- helpers -------------------------------------------------------------------------
# measure CMD...: runs it with stdout/stderr to $T/m.out/$T/m.err; sets WALL (s), RSS (KB)
measure() {
    local t0 t1 rc=0
    t0=$(date +%s%N)
    /usr/bin/time -v -o "$T/m.time" "$@" >"$T/m.out" 2>"$T/m.err" || rc=$?
    t1=$(date +%s%N)
    if [ $rc -ne 0 ]; then
        echo "bench_pipeline: failed ($rc): $*" >&2; tail -n 20 "$T/m.err" >&2; exit 1
    fi
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", (b-a)/1e9}')
    RSS=$(awk -F': *' '/Maximum resident set size/{print $2}' "$T/m.time")
}
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END{if(NR%2) print v[(NR+1)/2]; else printf "%.6g\n",(v[NR/2]+v[NR/2+1])/2}'; }
fsize() { stat -c %s "$1"; }
dbsize() { local s=0 f; for f in "$1" "$1-wal"; do [ -f "$f" ] && s=$((s + $(fsize "$f"))); done; echo $s; }
mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }  # KB -> MB
emit() { # emit JSON-OBJECT-BODY (without braces)
    [ -n "$JSONL_OUT" ] || return 0
    printf '{"bench":"pipeline","git":"%s","reps":%d,%s}\n' "$GIT_REV" "$REPS" "$1" >>"$JSONL_OUT"
}
ROWS=()  # table rows: "section|what|value|unit"
row() { ROWS+=("$1|$2|$3|$4"); }
fresh_db() { rm -f "$1" "$1-wal" "$1-shm"; }

# --- inputs and specs ----------------------------------------------------------------
short_items() { # short_items N FILE
    awk -v n="$1" 'BEGIN{for(i=0;i<n;i++) printf "{\"id\":\"i%d\",\"text\":\"short text %d\"}\n", i, i}' >"$2"
}
chat_items() { # chat_items N FILE: distinct short topics
    awk -v n="$1" 'BEGIN{
        na=split("red old tiny quiet busy cold bright lost happy strange green broken hidden giant silver wooden",a," ")
        nb=split("lighthouse train garden robot river city bakery library cat storm bridge clock island market violin",b," ")
        nc=split("at dawn|in winter|by the sea|at night|in the rain|after school|on a hill|in a small town",c,"|")
        for(i=0;i<n;i++) printf "{\"id\":\"c%d\",\"topic\":\"a %s %s %s\"}\n", i, a[i%na+1], b[int(i/na)%nb+1], c[int(i/(na*nb))%nc+1]
    }' >"$2"
}
raw_spec() { # raw_spec FILE NAME INPUT [MAX_TOKENS]
    {
        echo "name: $2"
        echo "model: $MODEL"
        echo "input: {path: $3, format: jsonl, id_field: id}"
        echo 'prompt: {template: "Q: {{text}}"}'
        [ -z "${4:-}" ] || echo "sampling: {temperature: 0, max_tokens: $4}"
    } >"$1"
}

# --- 1 + 2: submit, status, export on large pending queues ---------------------------
for N in "$BIG_N" "$SMALL_N"; do
    D=$T/q$N; mkdir -p "$D"
    log "submit: $N items x $REPS"
    short_items "$N" "$D/in.jsonl"
    raw_spec "$D/job.yaml" "bench-submit-$N" in.jsonl
    walls=(); rsss=()
    for r in $(seq "$REPS"); do
        fresh_db "$D/q.db"
        measure "$NS" submit "$D/job.yaml" --db "$D/q.db"
        walls+=("$WALL"); rsss+=("$RSS")
    done
    JOB=$(tr -dc 0-9 <"$T/m.out")
    w=$(median "${walls[@]}"); m=$(median "${rsss[@]}")
    ips=$(awk -v n="$N" -v w="$w" 'BEGIN{printf "%.0f", n/w}')
    dbs=$(dbsize "$D/q.db")
    row "submit $N" "items/s (median)" "$ips" "items/s"
    row "submit $N" "wall" "$w" "s"
    row "submit $N" "peak RSS" "$(mb "$m")" "MB"
    row "submit $N" "db size (+wal)" "$(awk -v b="$dbs" 'BEGIN{printf "%.1f", b/1048576}')" "MB"
    emit "\"metric\":\"submit\",\"items\":$N,\"items_per_s\":$ips,\"wall_s\":$w,\"rss_kb\":$m,\"db_bytes\":$dbs,\"walls\":[$(IFS=,; echo "${walls[*]}")]"

    for cmd in status export; do
        log "$cmd: $N pending items x $REPS"
        walls=(); rsss=()
        for r in $(seq "$REPS"); do
            if [ $cmd = status ]; then
                measure "$NS" status --json "$JOB" --db "$D/q.db"
                grep -q "\"total\":$N" "$T/m.out" || die "status does not show $N items: $(cat "$T/m.out")"
            else
                rm -f "$D/out.jsonl"
                measure "$NS" export "$JOB" -o "$D/out.jsonl" --db "$D/q.db"
            fi
            walls+=("$WALL"); rsss+=("$RSS")
        done
        w=$(median "${walls[@]}"); m=$(median "${rsss[@]}")
        row "$cmd $N pending" "wall" "$w" "s"
        row "$cmd $N pending" "peak RSS" "$(mb "$m")" "MB"
        extra=""
        [ $cmd = export ] && extra=",\"out_bytes\":$(fsize "$D/out.jsonl")"
        emit "\"metric\":\"$cmd\",\"items\":$N,\"wall_s\":$w,\"rss_kb\":$m$extra"
    done
    rm -f "$D/in.jsonl"
done

# --- 3: run bookkeeping share --------------------------------------------------------
# run_job NAME SPEC REPS [QUEUE_THREAD]: fresh db per rep; leaves the last db at
# $T/NAME.db. QUEUE_THREAD 0: the run loop's database calls inline (NS_QUEUE_THREAD=0).
# The share is the engine's thread's (the queue thread's own time is not in it).
run_job() {
    local name=$1 spec=$2 reps=$3 qmode=${4:-1} db=$T/$1.db
    local bks=() bkss=() walls=() rsss=() toks=() line
    for r in $(seq "$reps"); do
        fresh_db "$db"
        "$NS" submit "$spec" --db "$db" >/dev/null 2>"$T/submit.err" || { cat "$T/submit.err" >&2; exit 1; }
        measure env NS_QUEUE_THREAD="$qmode" "$NS" run --db "$db" --stats --quiet
        line=$(grep -m1 'bookkeeping' "$T/m.err") || die "no bookkeeping line from run --stats: $(cat "$T/m.err")"
        bks+=("$(sed -E 's/.*= *([0-9.]+)%.*/\1/' <<<"$line")")
        bkss+=("$(sed -E "s/.*engine's thread ([0-9.]+) s = .*/\1/" <<<"$line")")
        walls+=("$(sed -E 's/.*wall ([0-9.]+) s.*/\1/' <<<"$line")")
        toks+=("$(sed -E 's/.*[,;] ([0-9]+) tokens through.*/\1/' <<<"$line")")
        rsss+=("$RSS")
    done
    local bk bs w m tk
    bk=$(median "${bks[@]}"); bs=$(median "${bkss[@]}"); w=$(median "${walls[@]}")
    m=$(median "${rsss[@]}"); tk=$(median "${toks[@]}")
    local items
    items=$(sqlite3 "$db" "SELECT count(*) FROM items")
    row "run $name ($items items, x$reps)" "bookkeeping share" "$bk" "%"
    row "run $name ($items items, x$reps)" "bookkeeping time" "$bs" "s"
    row "run $name ($items items, x$reps)" "run wall (stats line)" "$w" "s"
    row "run $name ($items items, x$reps)" "tokens through engine" "$tk" "tok"
    row "run $name ($items items, x$reps)" "peak RSS" "$(mb "$m")" "MB"
    emit "\"metric\":\"run_bookkeeping\",\"job\":\"$name\",\"items\":$items,\"runs\":$reps,\"bookkeeping_pct\":$bk,\"bookkeeping_s\":$bs,\"wall_s\":$w,\"tokens\":$tk,\"rss_kb\":$m,\"pcts\":[$(IFS=,; echo "${bks[*]}")]"
}

mkdir -p "$T/summarize"
cp "$ROOT/examples/summarize/docs.jsonl" "$T/summarize/"
# the example spec with the model path made absolute; output.path lands in $T/summarize
sed -E "s|^model:.*|model: $MODEL|" "$ROOT/examples/summarize/job.yaml" >"$T/summarize/job.yaml"
log "run: examples/summarize x $REPS"
run_job summarize "$T/summarize/job.yaml" "$REPS"

mkdir -p "$T/short200"
short_items 200 "$T/short200/in.jsonl"
raw_spec "$T/short200/job.yaml" bench-short200 in.jsonl 8
log "run: 200 short items, max_tokens 8 x $REPS"
run_job short200 "$T/short200/job.yaml" "$REPS"

# the queue thread against inline database calls, on the tiny test model (2,000 items of
# 24 tokens: the case where queue work weighs most against the engine's)
mkdir -p "$T/tiny"
"$BUILD/unit" --write-tiny-model "$T/tiny/tiny.gguf" || die "cannot write the tiny model"
short_items 2000 "$T/tiny/in.jsonl"
raw_spec "$T/tiny/job.yaml" bench-tiny in.jsonl 24
sed -i -E "s|^model:.*|model: $T/tiny/tiny.gguf|" "$T/tiny/job.yaml"
log "run: tiny model, 2000 items, queue thread and inline alternately x $((3 * REPS))"
tiny_walls=("" "") tiny_share=("" "")
for r in $(seq $((3 * REPS))); do # alternated, so that the machine's drift hits both alike
    for q in 1 0; do
        fresh_db "$T/tiny.db"
        "$NS" submit "$T/tiny/job.yaml" --db "$T/tiny.db" >/dev/null 2>"$T/submit.err" || { cat "$T/submit.err" >&2; exit 1; }
        measure env NS_QUEUE_THREAD="$q" "$NS" run --db "$T/tiny.db" --stats --quiet
        line=$(grep -m1 'bookkeeping' "$T/m.err") || die "no bookkeeping line from run --stats"
        tiny_walls[$q]+=" $(sed -E 's/.*wall ([0-9.]+) s.*/\1/' <<<"$line")"
        tiny_share[$q]+=" $(sed -E 's/.*= *([0-9.]+)%.*/\1/' <<<"$line")"
    done
done
# shellcheck disable=SC2086
for q in 1 0; do
    row "run tiny, 2000 items (NS_QUEUE_THREAD=$q)" "engine's thread on queue work, median" "$(median ${tiny_share[$q]})" "%"
    row "run tiny, 2000 items (NS_QUEUE_THREAD=$q)" "run wall, median of $((3 * REPS))" "$(median ${tiny_walls[$q]})" "s"
    emit "\"metric\":\"run_queue_thread\",\"queue_thread\":$q,\"walls\":[$(tr ' ' ',' <<<"${tiny_walls[$q]# }")]"
done

mkdir -p "$T/raw$COMP_N" "$T/chat$CHAT_N"
short_items "$COMP_N" "$T/raw$COMP_N/in.jsonl"
raw_spec "$T/raw$COMP_N/job.yaml" "bench-raw$COMP_N" in.jsonl "$COMP_TOKENS"
chat_items "$CHAT_N" "$T/chat$CHAT_N/in.jsonl"
cat >"$T/chat$CHAT_N/job.yaml" <<EOF
name: bench-chat$CHAT_N
model: $MODEL
input: {path: in.jsonl, format: jsonl, id_field: id}
prompt: {user: "Write one short sentence about {{topic}}."}
sampling: {temperature: 0, max_tokens: $COMP_TOKENS}
EOF
log "run: $COMP_N short items (raw template), max_tokens $COMP_TOKENS x 1"
run_job "raw$COMP_N" "$T/raw$COMP_N/job.yaml" 1
if [ "$CHAT_N" -gt 0 ]; then
    log "run: $CHAT_N chat items, max_tokens $COMP_TOKENS x 1"
    run_job "chat$CHAT_N" "$T/chat$CHAT_N/job.yaml" 1
fi

# --- 4: compression of the results ---------------------------------------------------
sumsize() { # total bytes of the files in a directory
    find "$1" -type f -printf '%s\n' | awk '{s+=$1} END{print s+0}'
}
compress_report() { # compress_report NAME
    local name=$1 db=$T/$1.db C=$T/comp_$1
    rm -rf "$C"; mkdir -p "$C/bodies" "$C/plain" "$C/dict"
    local n raw stored exp expz
    n=$(sqlite3 "$db" "SELECT count(*) FROM results")
    raw=$(sqlite3 "$db" "SELECT sum(raw_bytes) FROM results")
    stored=$(sqlite3 "$db" "SELECT sum(length(body)) FROM results")
    "$NS" export 1 -o "$C/export.jsonl" --db "$db" 2>/dev/null
    exp=$(fsize "$C/export.jsonl")
    expz=$(zstd -q -3 -c "$C/export.jsonl" | wc -c)
    local label="compress $name ($n results)"
    row "$label" "raw JSON (sum raw_bytes)" "$raw" "B"
    row "$label" "per-item zstd -3, stored (sum length(body))" "$stored" "B"
    row "$label" "exported JSONL" "$exp" "B"
    row "$label" "whole-file zstd -3 of the export" "$expz" "B"
    local js="\"metric\":\"compression\",\"job\":\"$name\",\"results\":$n,\"raw_bytes\":$raw,\"stored_zstd_bytes\":$stored,\"export_bytes\":$exp,\"export_zstd_bytes\":$expz"
    if [ "$n" -ge $((TRAIN_N + 50)) ]; then
        # the stored frames, named by input position, decompressed by the zstd CLI
        sqlite3 "$db" "SELECT writefile('$C/bodies/' || printf('%08d', i.idx) || '.json.zst', r.body)
                       FROM results r JOIN items i ON i.id = r.item_id" >/dev/null
        # frames after the job adopted its own dictionary (schemas/002) need it to decode
        local jdict=()
        sqlite3 "$db" "SELECT writefile('$C/job.zdict', zstd_dict) FROM jobs
                       WHERE zstd_dict_state = 1 AND zstd_dict IS NOT NULL LIMIT 1" >/dev/null
        [ -s "$C/job.zdict" ] && jdict=(-D "$C/job.zdict")
        zstd -q -d --rm "${jdict[@]}" "$C"/bodies/*.zst
        local files train rest
        files=$(find "$C/bodies" -type f -printf '%f\n' | sort)
        train=$(head -n $TRAIN_N <<<"$files" | sed "s|^|$C/bodies/|")
        rest=$(tail -n +$((TRAIN_N + 1)) <<<"$files" | sed "s|^|$C/bodies/|")
        # shellcheck disable=SC2086
        zstd -q --train --maxdict=16384 $train -o "$C/dict.zdict" 2>"$C/train.err" ||
            { row "$label" "dictionary" "training failed" ""; emit "$js"; return; }
        local nrest raw_rest stored_rest plain_rest dict_rest dsz
        nrest=$(wc -l <<<"$rest")
        # shellcheck disable=SC2086
        raw_rest=$(cat $rest | wc -c)
        stored_rest=$(sqlite3 "$db" "SELECT sum(length(r.body)) FROM results r JOIN items i ON i.id = r.item_id
            WHERE i.idx >= (SELECT i2.idx FROM results r2 JOIN items i2 ON i2.id = r2.item_id
                            ORDER BY i2.idx LIMIT 1 OFFSET $TRAIN_N)")
        # one frame per body, without checksum, like the stored frames (same bytes as stored)
        # shellcheck disable=SC2086
        zstd -q -3 --no-check --output-dir-flat "$C/plain" $rest
        # shellcheck disable=SC2086
        zstd -q -3 --no-check -D "$C/dict.zdict" --output-dir-flat "$C/dict" $rest
        plain_rest=$(sumsize "$C/plain"); dict_rest=$(sumsize "$C/dict"); dsz=$(fsize "$C/dict.zdict")
        local hl="compress $name, held-out $nrest (dict from first $TRAIN_N)"
        row "$hl" "raw JSON" "$raw_rest" "B"
        row "$hl" "per-item zstd -3, stored" "$stored_rest" "B"
        row "$hl" "per-item zstd -3, CLI --no-check" "$plain_rest" "B"
        row "$hl" "per-item zstd -3 -D dict" "$dict_rest" "B"
        row "$hl" "dictionary size" "$dsz" "B"
        row "$hl" "per-item -D dict + dictionary" "$((dict_rest + dsz))" "B"
        row "$hl" "ratio raw / stored, raw / (dict+dictionary)" \
            "$(awk -v r="$raw_rest" -v s="$stored_rest" -v d=$((dict_rest + dsz)) 'BEGIN{printf "%.2f, %.2f", r/s, r/d}')" "x"
        js="$js,\"heldout_items\":$nrest,\"heldout_raw_bytes\":$raw_rest,\"heldout_stored_bytes\":$stored_rest,\"heldout_cli_zstd_bytes\":$plain_rest,\"heldout_dict_zstd_bytes\":$dict_rest,\"dict_bytes\":$dsz"
    fi
    emit "$js"
}
log "compression"
jobs=(summarize short200 "raw$COMP_N")
[ "$CHAT_N" -le 0 ] || jobs+=("chat$CHAT_N")
for j in "${jobs[@]}"; do compress_report "$j"; done

# --- table ---------------------------------------------------------------------------
log "done in $(( $(date +%s) - START )) s"
echo
echo "nightshift pipeline bench ($GIT_REV, $(nproc) cores, medians of $REPS runs unless a section says x1)"
prev=""
for r in "${ROWS[@]}"; do
    IFS='|' read -r sec what val unit <<<"$r"
    if [ "$sec" != "$prev" ]; then echo; echo "$sec"; prev=$sec; fi
    printf '  %-46s %16s %s\n' "$what" "$val" "$unit"
done
if [ -n "$JSONL_OUT" ]; then echo; echo "JSONL appended to $JSONL_OUT"; fi
