#!/usr/bin/env bash
# The one test command: Rust unit and integration tests, then the end-to-end suites that drive
# a real `ferrokube server` with kubectl v1.35, helm v4, curl and the official Python client,
# and the node suite with a real containerd, runc and iptables (run as root, as CI does).
# Needs: cargo, python3, curl (scripts/install-deps.sh installs the rest).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

cargo build --locked
cargo test --locked
# The edge-board release binary, run under qemu by tests/e2e/arm64.sh.
cargo build --locked --release --target aarch64-unknown-linux-gnu --bin ferrokube

"$root/scripts/fetch-clients.sh" >/dev/null
venv=$root/.tools/venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import kubernetes, pytest, grpc_tools, cryptography' 2>/dev/null; then
  python3 -m venv "$venv"
  # grpcio for the test device plugin and CSI driver (tests/e2e/*.py); cryptography for
  # certificates near their renewal (shortcert.py).
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes pytest grpcio grpcio-tools cryptography
fi

export FERROKUBE=$root/target/debug/ferrokube FERROKUBE_ARM64=$root/target/aarch64-unknown-linux-gnu/release/ferrokube KUBECTL=$root/.tools/bin/kubectl PYTHON=$venv/bin/python
status=0
for suite in tests/e2e/kubectl.sh tests/e2e/fidelity.sh tests/e2e/aggregation.sh tests/e2e/durability.sh tests/e2e/node.sh tests/e2e/workloads.sh tests/e2e/services.sh tests/e2e/metrics.sh tests/e2e/netpol.sh tests/e2e/devices.sh tests/e2e/csi.sh tests/e2e/rbac.sh tests/e2e/webhooks.sh tests/e2e/encryption.sh tests/e2e/audit.sh tests/e2e/operate.sh tests/e2e/installer.sh tests/e2e/systemd.sh tests/e2e/openrc.sh tests/e2e/killall.sh tests/e2e/multinode.sh tests/e2e/vxlan.sh tests/e2e/etcd.sh tests/e2e/registries.sh tests/e2e/arm64.sh tests/e2e/clients.sh; do
  echo "== $suite"
  bash "$suite" || status=1
done
echo "== tests/e2e/test_python_client.py"
"$venv/bin/python" -m pytest -q tests/e2e/test_python_client.py || status=1
exit $status
