#!/usr/bin/env bash
# Installs the etcd baseline if missing, then runs the API benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v etcd >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server
  # The package starts a system etcd on 2379; the benchmark runs its own on free ports.
  systemctl stop etcd 2>/dev/null || true
fi
exec cargo bench --bench api
