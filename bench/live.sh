#!/usr/bin/env bash
# bench/live.sh - the one command that measures the end-to-end latency of Lua
# handlers under live publishing: publish -> the handler's effects committed.
#
# Builds moontide and bench/mt_delivery in a build directory of their own
# (default flags, no sanitizers), starts `moontide run` with durability fsync
# on a temporary data directory and a loopback port (working directory: the
# repo, where handler paths resolve), and runs `mt_delivery live` for each
# case and rate: the case's subscriptions are made over HTTP from the log's
# end, an open-loop publisher sends R events/s in batches every millisecond
# for 1 s of warm-up and the measured seconds, and the subscriptions are
# deleted after. Prints one table and the target.
#
# End-to-end is timed with probe receipts: 1% of the events carry
# "probe": true, and the handlers (bench/handlers/probe_*.lua) do their
# usual work and, for those, also emit receipt.<handler> with the
# publisher's timestamp. ctx.emit appends in the transaction that commits
# the handler's other effects, so the receipt is visible exactly when they
# are; the tool reads receipts on one SSE stream (`GET
# /subscribe?topic=receipt.%23`) and takes receipt time - publish time, the
# SSE hop included.
#
# Cases (every subscription on live.#):
#   pub-only    no subscription and no stream: publishing alone, for comparison
#   pub-uuid    as pub-only, with ids in UUID form (in no order) over 100,000
#               subjects, as most publishers send them: every index write
#               lands on a leaf of its own
#   pub-sse     no subscription, the receipts' stream open: what the stream
#               costs (the engine formats every new event for its SSE ring
#               while any stream is open, whatever the streams' topics)
#   a-empty     one subscription, an empty handler (probe_empty.lua)
#   b-kv        one subscription, one kv read and write per event (probe_kv.lua)
#   c-fanout4   four subscriptions with the kv handler, each gets every event
#   d-kv-w2     the kv handler with `workers: 2`
#   e-cpu       one subscription whose handler also computes (about 60 us of
#               Lua per event, probe_cpu.lua)
#   f-cpu-w2    the same with `workers: 2`: what workers are for
#
# Environment:
#   BENCH_DIR     where the temporary directory goes (default: the repo's
#                 parent, so it is on the same disk as the repo)
#   BUILD_DIR     build directory (default: <repo>/build-bench)
#   LIVE_SECONDS  measured seconds per run (default 8, after 1 s of warm-up)
#   LIVE_RATES    offered rates, events/s (default "1000 5000 20000 50000")
#   LIVE_BASE_RATES  the rates of pub-only, pub-uuid and pub-sse (default "20000 50000")
#   LIVE_DRAIN    seconds to wait for the last receipts after a run (default 8)
#   LIVE_CASES    the cases to run (default: all of the above)
#   LIVE_EVERY    one event in this many is a probe (default 100; 10 gives
#                 ten times the latency samples, for tails at low rates)
#
# Exit status: 0 if every run was without error (a rate the engine cannot keep
# up with, and a missed target, are results), 1 otherwise: a receipt missing
# although the subscriptions caught up, a receipt twice, or a request refused.
# The engine is stopped and the temporary directory removed however the
# script ends.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$REPO/build-bench}
BASE=${BENCH_DIR:-$(dirname "$REPO")}
LIVE_SECONDS=${LIVE_SECONDS:-8}
LIVE_RATES=${LIVE_RATES:-1000 5000 20000 50000}
LIVE_BASE_RATES=${LIVE_BASE_RATES:-20000 50000}
LIVE_DRAIN=${LIVE_DRAIN:-8}
LIVE_EVERY=${LIVE_EVERY:-100}
LIVE_CASES=${LIVE_CASES:-pub-only pub-uuid pub-sse a-empty b-kv c-fanout4 d-kv-w2 e-cpu f-cpu-w2}
LOAD_START=$(cut -d ' ' -f 1-3 /proc/loadavg) # the machine is shared: say how busy it was

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
bench_setup live
MT_DELIVERY=$BUILD/bench/mt_delivery
ROWS=$TMP/rows
: >"$ROWS"
FAILED=0

# ---- the engine ----
bench_start_engine 16GiB
URL=http://127.0.0.1:$PORT
echo "== engine pid $ENGINE_PID on port $PORT, data in $TMP" >&2

run() {
    # One mt_delivery live run: its row goes to the table, its stderr to ours.
    local before
    before=$(wc -l <"$ROWS")
    if ! "$MT_DELIVERY" live "$@" --url "$URL" --engine-pid "$ENGINE_PID" --every "$LIVE_EVERY" \
        --seconds "$LIVE_SECONDS" --drain "$LIVE_DRAIN" >>"$ROWS"; then
        FAILED=1
    fi
    tail -n +"$((before + 1))" "$ROWS" >&2
}

"$MT_DELIVERY" live-header >&2
for c in $LIVE_CASES; do
    echo "== $c" >&2
    rates=$LIVE_RATES
    case $c in pub-*) rates=$LIVE_BASE_RATES ;; esac
    for r in $rates; do
        case $c in
        pub-only) run --name "$c-$r" --rate "$r" --subs 0 --no-stream ;;
        pub-uuid) run --name "$c-$r" --rate "$r" --subs 0 --no-stream --subjects 100000 --random-ids ;;
        pub-sse) run --name "$c-$r" --rate "$r" --subs 0 ;;
        a-empty) run --name "$c-$r" --rate "$r" --handler bench/handlers/probe_empty.lua ;;
        b-kv) run --name "$c-$r" --rate "$r" --handler bench/handlers/probe_kv.lua ;;
        c-fanout4) run --name "$c-$r" --rate "$r" --handler bench/handlers/probe_kv.lua --subs 4 ;;
        d-kv-w2) run --name "$c-$r" --rate "$r" --handler bench/handlers/probe_kv.lua --workers 2 ;;
        e-cpu) run --name "$c-$r" --rate "$r" --handler bench/handlers/probe_cpu.lua ;;
        f-cpu-w2) run --name "$c-$r" --rate "$r" --handler bench/handlers/probe_cpu.lua --workers 2 ;;
        *)
            echo "live.sh: unknown case '$c'" >&2
            exit 1
            ;;
        esac
    done
done

kill -TERM "$ENGINE_PID"
if ! wait "$ENGINE_PID"; then
    echo "live.sh: the engine exited with an error:" >&2
    tail -n 20 "$TMP/engine.log" >&2
    FAILED=1
fi
ENGINE_PID=""
if grep -q '"level":"\(error\|warn\)' "$TMP/engine.log"; then
    echo "live.sh: the engine logged warnings or errors:" >&2
    grep '"level":"\(error\|warn\)' "$TMP/engine.log" | sed 's/"ts":"[^"]*",//' | sort |
        uniq -c | sort -rn | head -n 10 >&2
fi

# ---- the table ----
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
FS=$(df -PT "$BASE" | awk 'NR == 2 { print $2 " (" $1 ")" }')
echo
echo "moontide live handler benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: nproc $(nproc), cpu '$CPU', kernel $(uname -r), data dir fs $FS," \
    "load $LOAD_START at the start, $(cut -d ' ' -f 1-3 /proc/loadavg) at the end"
echo "engine: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo '(dirty tree)')," \
    "durability fsync; ${LIVE_SECONDS}s measured per run after 1 s of warm-up; one event in ${LIVE_EVERY} is a probe"
echo
"$MT_DELIVERY" live-header
cat "$ROWS"
echo
awk '
    { row[$1] = 1; pub[$1] = $3; p99[$1] = $8; kept[$1] = $11; err += $16 }
    END {
        print "target: four subscriptions each receiving every event at 50,000 events/s," \
              " p99 end-to-end < 10 ms"
        k = "c-fanout4-50000"
        if (!(k in row)) {
            print "  " k ": not run"
        } else {
            v = p99[k]
            ok = kept[k] == "yes" && v !~ /^[>-]/ && v + 0 < 10
            printf "  %s: published %s events/s, kept up: %s, p99 %s ms   %s\n", k, pub[k],
                   kept[k] == "yes" ? "yes" : "no", v, ok ? "MET" : "MISSED"
        }
        if (err > 0) {
            print "\n!!!!!!!! ERRORS during the runs (see the err column and the messages above) !!!!!!!!"
        }
    }' "$ROWS"
if [ "$FAILED" != 0 ]; then
    echo "live.sh: some runs failed (see above)" >&2
    exit 1
fi
