#!/usr/bin/env bash
# bench/disk.sh - the one command that measures what this machine's disk
# allows a write-ahead sync while LMDB's pages are written out beside it.
#
# Builds bench/mt_bench (as bench/run.sh does) and runs `mt_bench
# sync-floor` once per page rate: a thread pwrites a 4 KiB record and
# fdatasyncs a zero-filled file, again and again (what the engine's sync
# thread does for each group), while another writes 4 KiB pages at random
# offsets of a 1 GiB file at the given MiB/s and writes the file out once a
# second the way a checkpoint does (sync_file_range in pieces, then
# fdatasync; the top of bench/mt_bench.c has the details). The rate 0 is
# the sync alone. `grow` rows append the pages to a file that starts empty
# instead, as a young engine's data file grows. Prints one table.
#
# Environment:
#   BENCH_DIR     where the temporary directory goes (default: the repo's
#                 parent, so it is on the same disk as the repo)
#   BUILD_DIR     build directory (default: <repo>/build-bench)
#   DISK_SECONDS  seconds per row (default 8)
#   DISK_RATES    page rates, MiB/s (default "0 20 40 80 140")
#
# Exit status: 0 if every row ran without an I/O error, 1 otherwise. The
# temporary directory is removed however the script ends.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD_DIR:-$REPO/build-bench}
BASE=${BENCH_DIR:-$(dirname "$REPO")}
SECS=${DISK_SECONDS:-8}
RATES=${DISK_RATES:-0 20 40 80 140}

# shellcheck source=bench/lib.sh
. "$REPO/bench/lib.sh"
bench_setup disk
MT_BENCH=$BUILD/bench/mt_bench
FAILED=0

echo "machine: nproc $(nproc), kernel $(uname -r), fs $(df -T "$TMP" | awk 'NR == 2 {print $2 " (" $1 ")"}'), load $(cut -d ' ' -f 1-3 /proc/loadavg); ${SECS}s per row"
"$MT_BENCH" sync-floor-header
for r in $RATES; do
    "$MT_BENCH" sync-floor --dir "$TMP/floor" --writeback "$r" --seconds "$SECS" || FAILED=1
done
for r in $RATES; do
    [ "$r" = 0 ] && continue
    "$MT_BENCH" sync-floor --dir "$TMP/floor" --writeback "$r" --seconds "$SECS" --grow || FAILED=1
done
exit "$FAILED"
