#!/usr/bin/env bash
# bench/delivery.sh - the one command that benchmarks delivery to external
# subscribers: Server-Sent Events fan-out, pull consumers, webhooks and
# scheduled (deliverafter) delivery.
#
# Builds moontide and bench/mt_delivery in a build directory of their own
# (default flags, no sanitizers), starts `moontide run` with durability fsync
# on a temporary data directory and a loopback port, runs the cases of
# bench/mt_delivery.c against it (each case makes the subscriptions it needs
# over HTTP and deletes them after), and prints one table and the targets.
#
# 1000 streams need more descriptors than the usual soft limit of 1024.
# moontide raises its soft limit to the hard limit; the engine also runs
# under `ulimit -n 65536` where that is allowed, for machines whose hard limit
# is low (else the hard limit stays). mt_delivery raises its own.
#
# Environment:
#   BENCH_DIR     where the temporary directory goes (default: the repo's
#                 parent, so it is on the same disk as the repo)
#   BUILD_DIR     build directory (default: <repo>/build-bench)
#   SSE_SECONDS   measured seconds per SSE case (default 8, plus 1 s warm-up)
#   PULL_EVENTS   backlog per pull case (default 20000)
#   HOOK_EVENTS   backlog per webhook case (default 5000)
#   SCHED_EVENTS  scheduled events (default 500)
#   CASES         which groups of cases to run (default "sse pull webhook
#                 sched"); targets of groups not run print "(no result)"
#
# Exit status: 0 if every case ran without error (targets missed are
# reported, not failed), 1 otherwise: an event missing, delivered twice or
# before its deliverafter time, or a request refused. The engine is stopped
# and the temporary directory removed however the script ends.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$REPO/build-bench}
BASE=${BENCH_DIR:-$(dirname "$REPO")}
SSE_SECONDS=${SSE_SECONDS:-8}
PULL_EVENTS=${PULL_EVENTS:-20000}
HOOK_EVENTS=${HOOK_EVENTS:-5000}
SCHED_EVENTS=${SCHED_EVENTS:-500}
CASES=" ${CASES:-sse pull webhook sched} "
SSE_RATE=200 # events/s published; each SSE client receives all of them
LOAD_START=$(cut -d ' ' -f 1-3 /proc/loadavg) # the machine is shared: say how busy it was

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
bench_setup delivery
MT_DELIVERY=$BUILD/bench/mt_delivery
ROWS=$TMP/rows
: >"$ROWS"
FAILED=0

# ---- the engine ----
NOFILE=65536
if ! (ulimit -n "$NOFILE") 2>/dev/null; then
    NOFILE=$(ulimit -Hn)
fi
bench_start_engine 8GiB "$NOFILE"
URL=http://127.0.0.1:$PORT
echo "== engine pid $ENGINE_PID on port $PORT, open-file limit $NOFILE, data in $TMP" >&2

run() {
    # One mt_delivery case: its rows go to the table, its stderr to ours.
    local before
    before=$(wc -l <"$ROWS")
    if ! "$MT_DELIVERY" "$@" --url "$URL" --engine-pid "$ENGINE_PID" >>"$ROWS"; then
        FAILED=1
    fi
    tail -n +"$((before + 1))" "$ROWS" >&2
}

want() { [[ "$CASES" == *" $1 "* ]]; }

"$MT_DELIVERY" header >&2
want sse && echo "== SSE fan-out, $SSE_RATE events/s published" >&2
want sse && for c in 1 100 1000; do
    run sse --clients "$c" --rate "$SSE_RATE" --seconds "$SSE_SECONDS" --name "sse-c$c"
done
if want pull; then
    echo "== pull consumers, $PULL_EVENTS events of backlog per case" >&2
    run pull --sub pullk1 --consumers 1 --events "$PULL_EVENTS" --max 100 --name pull-k1
    run pull --sub pullk8 --consumers 8 --events "$PULL_EVENTS" --max 100 --name pull-k8
    run pull --sub pullk8m30 --consumers 8 --events "$PULL_EVENTS" --max 30 --name pull-k8-max30
fi
if want webhook; then
    echo "== webhooks, $HOOK_EVENTS events of backlog per case" >&2
    run webhook --sub hookc4 --concurrency 4 --events "$HOOK_EVENTS" --name hook-c4
    run webhook --sub hookc32 --concurrency 32 --events "$HOOK_EVENTS" --name hook-c32
fi
if want sched; then
    echo "== scheduled delivery, $SCHED_EVENTS events due 1-5 s ahead" >&2
    run sched --events "$SCHED_EVENTS" --handler "$REPO/bench/handlers/refire.lua"
fi

kill -TERM "$ENGINE_PID"
if ! wait "$ENGINE_PID"; then
    echo "delivery.sh: the engine exited with an error:" >&2
    tail -n 20 "$TMP/engine.log" >&2
    FAILED=1
fi
ENGINE_PID=""
if grep -q '"level":"\(error\|warn\)\|^\[\(warn\|err\)' "$TMP/engine.log"; then
    echo "delivery.sh: the engine logged warnings or errors:" >&2
    grep '"level":"\(error\|warn\)\|^\[\(warn\|err\)' "$TMP/engine.log" | sort | uniq -c |
        sort -rn | head -n 10 >&2
fi

# ---- the table ----
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
echo
echo "moontide delivery benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: nproc $(nproc), cpu '$CPU', kernel $(uname -r)," \
    "load $LOAD_START at the start, $(cut -d ' ' -f 1-3 /proc/loadavg) at the end"
echo "engine: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(dirty tree)')," \
    "durability fsync, ulimit -n $NOFILE, SSE ${SSE_SECONDS}s per case at $SSE_RATE events/s"
echo
"$MT_DELIVERY" header
cat "$ROWS"
echo
awk -v ssec="$SSE_SECONDS" '
    { rate[$1] = $6; p99[$1] = $9; mx[$1] = $10; err += $13 }
    function line(name, value, op, target, unit,   ok) {
        if (value == "" || value == "-") {
            printf "  %-44s %12s     target %s %s%s  (no result)\n", name, "-", op, target, unit
            return
        }
        ok = (op == "<=" && value + 0 <= target) || (op == ">=" && value + 0 >= target)
        printf "  %-44s %12.1f%-3s target %s %s%-3s %s\n", name, value, unit, op, target,
               unit, ok ? "MET" : "MISSED"
    }
    END {
        print "targets:"
        line("sse-c1000 deliveries/s (1000 x 200 events/s)", rate["sse-c1000"], ">=", 200000, "")
        line("sse-c1000 end-to-end p99", p99["sse-c1000"], "<=", 50, " ms")
        line("pull-k8 events/s acknowledged (8 consumers)", rate["pull-k8"], ">=", 50000, "")
        line("sched-pull lateness p99", p99["sched-pull"], "<=", 100, " ms")
        line("sched-pull lateness max", mx["sched-pull"], "<=", 100, " ms")
        line("sched-hook lateness p99", p99["sched-hook"], "<=", 100, " ms")
        line("sched-hook lateness max", mx["sched-hook"], "<=", 100, " ms")
        line("sched-lua-sse lateness p99", p99["sched-lua-sse"], "<=", 100, " ms")
        line("sched-lua-sse lateness max", mx["sched-lua-sse"], "<=", 100, " ms")
        if (rate["pull-k1"] != "") {
            printf "  %-44s %12.1f    (one consumer, bound by its round trips: no target)\n",
                   "pull-k1 events/s acknowledged", rate["pull-k1"]
        }
        if (err > 0) {
            print "\n!!!!!!!! ERRORS during the runs (see the errors column and the messages above) !!!!!!!!"
        }
    }' "$ROWS"
if [ "$FAILED" != 0 ]; then
    echo "delivery.sh: some cases failed (see above)" >&2
    exit 1
fi
