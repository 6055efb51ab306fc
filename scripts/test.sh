#!/usr/bin/env bash
# Installs what moontide needs, builds it twice (plain, and with ASan+UBSan),
# runs every test (unit and integration) in both builds, and ends with one
# line: "N passed, N failed".
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
"$top/scripts/install-deps.sh" || { echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
status=0
run_suite() { # name build-dir configure-options...
    local name=$1 dir=$2
    shift 2
    echo "== $name build ($dir) =="
    if ! "$top/scripts/build.sh" "$dir" --enable-werror "$@"; then
        echo "$name build failed"
        failed=$((failed + 1))
        status=1
        return
    fi
    (cd "$dir" && make -j"$(nproc)" check >check.out 2>&1)
    local rc=$?
    if [ "$rc" -ne 0 ] && [ ! -f "$dir/test-suite.log" ]; then
        echo "$name: make check failed before running tests:"
        tail -40 "$dir/check.out"
    fi
    local log="$dir/test-suite.log"
    local p f
    p=$(awk '/^# PASS:/ {print $3}' "$log" 2>/dev/null)
    f=$(awk '/^# (FAIL|ERROR|XPASS):/ {s += $3} END {print s + 0}' "$log" 2>/dev/null)
    p=${p:-0}
    f=${f:-0}
    echo "$name: $p passed, $f failed"
    if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
        status=1
        [ "$f" -eq 0 ] && f=1
        # Show what failed, with its log.
        grep -E '^(FAIL|ERROR|XPASS)' "$dir/test-suite.log" | head -20
        sed -n '1,200p' "$log" | grep -vE '^(PASS|SKIP)' | head -200
    fi
    passed=$((passed + p))
    failed=$((failed + f))
}

run_suite plain build
run_suite sanitizers build-asan --enable-sanitizers
echo "$passed passed, $failed failed"
exit $status
