#!/usr/bin/env bash
# Installs what moontide needs, builds it, and runs the engine with
# config/default.yaml (HTTP on 127.0.0.1:8080, data in ./data).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/scripts/install-deps.sh"
"$top/scripts/build.sh" build
cd "$top"
exec build/moontide run -c config/default.yaml "$@"
