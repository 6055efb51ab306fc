#!/usr/bin/env bash
# Builds moontide out of tree: scripts/build.sh [BUILD_DIR] [configure options...]
# The default BUILD_DIR is build/. Example: scripts/build.sh build-asan --enable-sanitizers
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-build}
shift || true
cd "$top"
if [ ! -x configure ] || [ configure.ac -nt configure ] || [ Makefile.am -nt Makefile.in ]; then
    autoreconf -fi >/dev/null
fi
mkdir -p "$dir"
cd "$dir"
if [ ! -f Makefile ] || [ "$top/configure" -nt Makefile ]; then
    "$top/configure" -q "$@"
fi
make -j"$(nproc)" >/dev/null
