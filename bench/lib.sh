# bench/lib.sh - what the benchmark scripts share, sourced by run.sh,
# delivery.sh and live.sh after they set REPO, BUILD and BASE.
#
# bench_setup NAME  installs the exit trap: however the script ends, a
#                   background probe (PROBE_PID) is interrupted, the engine
#                   (ENGINE_PID) gets SIGTERM (SIGKILL after 10 s), and the
#                   temporary directory (TMP) is removed; then builds moontide
#                   and the bench tools in $BUILD and makes TMP under $BASE.

TMP=""
ENGINE_PID=""
PROBE_PID=""
BENCH_NAME=bench

bench_cleanup() {
    local rc=$?
    if [ -n "$PROBE_PID" ] && kill -0 "$PROBE_PID" 2>/dev/null; then
        kill -INT "$PROBE_PID" 2>/dev/null || true
        wait "$PROBE_PID" 2>/dev/null || true
    fi
    if [ -n "$ENGINE_PID" ] && kill -0 "$ENGINE_PID" 2>/dev/null; then
        kill -TERM "$ENGINE_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$ENGINE_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$ENGINE_PID" 2>/dev/null; then
            echo "$BENCH_NAME.sh: engine did not stop on SIGTERM; killing it" >&2
            kill -KILL "$ENGINE_PID" 2>/dev/null || true
        fi
        wait "$ENGINE_PID" 2>/dev/null || true
    fi
    if [ -n "$TMP" ]; then
        rm -rf "$TMP"
    fi
    exit "$rc"
}

bench_setup() {
    BENCH_NAME=$1
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    echo "== building in $BUILD" >&2
    if [ ! -f "$BUILD/Makefile" ]; then
        if [ ! -x "$REPO/configure" ]; then
            (cd "$REPO" && autoreconf -fi)
        fi
        mkdir -p "$BUILD"
        (cd "$BUILD" && "$REPO/configure" -q)
    fi
    make -s -C "$BUILD" -j"$(nproc)" moontide bench >&2
    MOONTIDE=$BUILD/moontide
    TMP=$(mktemp -d "$BASE/moontide-$BENCH_NAME.XXXXXX")
}
