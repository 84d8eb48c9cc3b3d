#!/usr/bin/env bash
# Installs what ferrokube's build and tests need beyond the Rust toolchain on Debian 12.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for p in curl ca-certificates python3-venv; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q "${need[@]}"
fi
