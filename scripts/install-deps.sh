#!/usr/bin/env bash
# Installs the Debian 12 packages moontide needs to build, run and test.
# Run as root. Safe to run again: apt-get skips what is already there.
set -euo pipefail
packages=(
    build-essential autoconf automake libtool pkg-config
    libevent-dev liblmdb-dev liblua5.4-dev libjansson-dev libyaml-dev
    libssl-dev zlib1g-dev libcmocka-dev
    python3 curl tzdata
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
