#!/usr/bin/env bash
# bench/run.sh - the one command that benchmarks moontide's durable appends.
#
# Builds moontide and bench/mt_bench in a build directory of their own
# (default flags, no sanitizers), runs the disk baselines (pwrite+fdatasync,
# raw LMDB at 1, 100 and 1000 appends per commit), starts `moontide run`
# with durability fsync on a temporary data directory, runs the HTTP cases,
# and prints one table with the ratios the targets are stated in. Two
# floor rows (GET /healthz over 1 and 64 connections) show what the HTTP
# exchange alone costs on the machine, and the table ends with the bounds
# they set on the targets.
#
# Environment:
#   BENCH_DIR      where the temporary directory goes (default: the repo's
#                  parent, so it is on the same disk as the repo)
#   BUILD_DIR      build directory (default: <repo>/build-bench)
#   BENCH_SECONDS  seconds per HTTP case (default 10, plus 1 s warm-up)
#   BENCH_SYSCALLS 1: count the engine's syscalls during case 2 (perf stat on
#                  syscall tracepoints, or strace -c -f without perf; strace
#                  slows the engine, so case 2's numbers then do not count)
#
# Exit status: 0 if every run had no error (targets missed are reported, not
# failed), 1 otherwise. The engine is stopped and the temporary directory
# removed however the script ends.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$REPO/build-bench}
SECS=${BENCH_SECONDS:-10}
BASE=${BENCH_DIR:-$(dirname "$REPO")}

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
bench_setup bench
MT_BENCH=$BUILD/bench/mt_bench
ROWS=$TMP/rows
: >"$ROWS"
FAILED=0

run() {
    # One mt_bench run: its row goes to the table, its stderr to ours.
    if ! "$MT_BENCH" "$@" >>"$ROWS"; then
        FAILED=1
    fi
    tail -n 1 "$ROWS" >&2
}

# ---- baselines ----
echo "== baselines in $TMP" >&2
"$MT_BENCH" header >&2
run fsync --dir "$TMP/fsync" --n 5000
run lmdb --dir "$TMP/lmdb-1" --per-txn 1 --events 3000
run lmdb --dir "$TMP/lmdb-100" --per-txn 100 --events 300000
run lmdb --dir "$TMP/lmdb-1000" --per-txn 1000 --events 500000
rm -rf "$TMP/fsync" "$TMP/lmdb-1" "$TMP/lmdb-100" "$TMP/lmdb-1000"

# ---- the engine ----
# Durability fsync, the case under test (bench_start_engine in lib.sh).
bench_start_engine 8GiB
URL=http://127.0.0.1:$PORT/events
echo "== engine pid $ENGINE_PID on port $PORT" >&2

# The floor: GET /healthz, an HTTP exchange that appends nothing.
run http --get --url "http://127.0.0.1:$PORT/healthz" --conns 1 --seconds "$SECS" --name floor-c1-get
run http --get --url "http://127.0.0.1:$PORT/healthz" --conns 64 --seconds "$SECS" --name floor-c64-get
run http --url "$URL" --conns 1 --batch 1 --seconds "$SECS" --name case1-c1-b1
if [ "${BENCH_SYSCALLS:-0}" = 1 ]; then
    if perf stat -e syscalls:sys_enter_fdatasync true >/dev/null 2>&1; then
        perf stat -p "$ENGINE_PID" -o "$TMP/syscalls.txt" -e syscalls:sys_enter_fdatasync \
            -e syscalls:sys_enter_pwrite64 -e syscalls:sys_enter_writev \
            -e syscalls:sys_enter_sync_file_range -e syscalls:sys_enter_epoll_wait \
            -e syscalls:sys_enter_futex &
        PROBE_PID=$!
    elif command -v strace >/dev/null; then
        strace -c -f -o "$TMP/syscalls.txt" -p "$ENGINE_PID" 2>/dev/null &
        PROBE_PID=$!
    fi
    sleep 0.5
fi
run http --url "$URL" --conns 64 --batch 1 --seconds "$SECS" --name case2-c64-b1
if [ -n "$PROBE_PID" ]; then
    kill -INT "$PROBE_PID" 2>/dev/null || true
    wait "$PROBE_PID" 2>/dev/null || true
    PROBE_PID=""
fi
run http --url "$URL" --conns 64 --batch 100 --seconds "$SECS" --name case3-c64-b100

kill -TERM "$ENGINE_PID"
if ! wait "$ENGINE_PID"; then
    echo "run.sh: the engine exited with an error:" >&2
    tail -n 20 "$TMP/engine.log" >&2
    FAILED=1
fi
ENGINE_PID=""
if grep -q '"level":"\(error\|warn\)' "$TMP/engine.log"; then
    echo "run.sh: the engine logged warnings or errors:" >&2
    grep '"level":"\(error\|warn\)' "$TMP/engine.log" | head -n 10 >&2
fi

# ---- the table ----
FS=$(df -T "$TMP" | awk 'NR == 2 { print $2 " (" $1 ")" }')
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo
echo "moontide durable-append benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: nproc $(nproc), cpu '$CPU', kernel $(uname -r), data dir fs $FS," \
    "load $(cut -d ' ' -f 1-3 /proc/loadavg)"
echo "engine: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(dirty tree)')," \
    "durability fsync, ${SECS}s per HTTP case"
echo
"$MT_BENCH" header
cat "$ROWS"
echo
awk '
    { ev[$1] = $5; p50[$1] = $7; p99[$1] = $8; err += $10 }
    function ratio(a, b) { return b > 0 ? a / b : 0 }
    function line(name, value, op, target, unit,   ok) {
        ok = (op == "<=" && value <= target) || (op == ">=" && value >= target) ||
             (op == "<" && value < target)
        printf "  %-40s %10.3f%-3s target %s %s%-3s %s\n", name, value, unit, op, target,
               unit, ok ? "ok" : "MISSED"
    }
    END {
        print "targets:"
        line("case1 p50 / fsync p50", ratio(p50["case1-c1-b1"], p50["fsync"]), "<=", 1.5, "")
        line("case2 events/s / lmdb-100 events/s",
             ratio(ev["case2-c64-b1"], ev["lmdb-100"]), ">=", 0.40, "")
        line("case3 events/s / lmdb-1000 events/s",
             ratio(ev["case3-c64-b100"], ev["lmdb-1000"]), ">=", 0.50, "")
        line("case3 p99", p99["case3-c64-b100"], "<", 10, " ms")
        print ""
        print "what this machine allows, whatever the engine does:"
        printf "  %-40s %10.3f     (>= 1.5: case1 target out of reach)\n",
               "(floor-c1 p50 + fsync p50) / fsync p50",
               ratio(p50["floor-c1-get"] + p50["fsync"], p50["fsync"])
        printf "  %-40s %10.3f     (< 0.4: case2 target out of reach)\n",
               "floor-c64 requests/s / lmdb-100",
               ratio(ev["floor-c64-get"], ev["lmdb-100"])
        printf "  %-40s %10.1f ms  (64 x 100 events in flight / case3 rate)\n",
               "case3 mean latency (Little law)",
               ratio(6400 * 1000, ev["case3-c64-b100"])
        printf "  %-40s %10.0f     (events/s case3 needs for a 10 ms mean)\n",
               "case3 rate for p99 < 10 ms, at least", 6400 / 0.010
        if (err > 0) {
            printf "\n!!!!!!!! %d ERRORS during the runs: the numbers above are not valid !!!!!!!!\n", err
        }
    }' "$ROWS"
if [ -f "$TMP/syscalls.txt" ]; then
    echo
    echo "engine syscalls during case 2 (fdatasync = WAL syncs + checkpoints; requests per"
    echo "fdatasync is about the group size):"
    grep -v '^#' "$TMP/syscalls.txt" | sed '/^[[:space:]]*$/d' | head -n 25
    SYNCS=$(awk '/sys_enter_fdatasync/ { gsub(",", "", $1); print $1 }' "$TMP/syscalls.txt")
    REQS=$(awk '$1 == "case2-c64-b1" { print $3 }' "$ROWS")
    if [ -n "$SYNCS" ] && [ -n "$REQS" ] && [ "$SYNCS" -gt 0 ]; then
        echo "  requests per fdatasync: $(awk -v r="$REQS" -v s="$SYNCS" 'BEGIN { printf "%.1f", r / s }')"
    fi
fi
if [ "$FAILED" != 0 ]; then
    echo "run.sh: some runs failed (see above)" >&2
    exit 1
fi
