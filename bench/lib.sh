# bench/lib.sh - what the benchmark scripts share, sourced by run.sh,
# delivery.sh and live.sh after they set REPO, BUILD and BASE.
#
# bench_setup NAME  installs the exit trap: however the script ends, a
#                   background probe (PROBE_PID) is interrupted, the engine
#                   (ENGINE_PID) gets SIGTERM (SIGKILL after 10 s), and the
#                   temporary directory (TMP) is removed; then builds moontide
#                   and the bench tools in $BUILD and makes TMP under $BASE.
# bench_start_engine MAP_SIZE [NOFILE]
#                   writes $TMP/bench.yaml (data in $TMP/data, a free loopback
#                   port, durability fsync), starts `moontide run` on it from
#                   $REPO (where handler paths are resolved; under `ulimit -n
#                   NOFILE` if given) with its log in $TMP/engine.log, and waits
#                   for its port: sets ENGINE_PID and PORT, or exits 1.

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

bench_start_engine() {
    local map_size=$1 nofile=${2:-}
    cat >"$TMP/bench.yaml" <<EOF
version: 1
engine:
  data_dir: $TMP/data
  listen: 127.0.0.1:0
  map_size: $map_size
  durability: fsync
EOF
    (cd "$REPO" && { [ -z "$nofile" ] || ulimit -n "$nofile"; } &&
        exec "$MOONTIDE" run -c "$TMP/bench.yaml" 2>"$TMP/engine.log" </dev/null >/dev/null) &
    ENGINE_PID=$!
    PORT=""
    for _ in $(seq 1 100); do
        PORT=$(sed -n 's/.*"port": *"\{0,1\}\([0-9][0-9]*\).*/\1/p' "$TMP/engine.log" | head -n 1)
        [ -n "$PORT" ] && break
        kill -0 "$ENGINE_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$PORT" ]; then
        echo "$BENCH_NAME.sh: the engine did not start:" >&2
        cat "$TMP/engine.log" >&2
        exit 1
    fi
}
