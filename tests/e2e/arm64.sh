#!/usr/bin/env bash
# The aarch64 release binary (cross-built by scripts/test.sh) runs its control plane under
# qemu-aarch64-static, with no binfmt registration: kubectl get, apply and a watch against it.
# FERROKUBE_ARM64 names the binary.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

ARM=${FERROKUBE_ARM64:-}
QEMU=$(command -v qemu-aarch64-static || true)
if [ -z "$ARM" ] || [ ! -x "$ARM" ] || [ -z "$QEMU" ]; then
  not_ok "the aarch64 binary (FERROKUBE_ARM64=$ARM) and qemu-aarch64-static ($QEMU) are there" "scripts/test.sh builds it; scripts/install-deps.sh installs qemu-user-static"
  summary
  exit 1
fi
info=$(file -b "$ARM")
check_contains "the binary is an aarch64 executable" "ARM aarch64" "$info"
check_contains "and stripped" ", stripped" "$info"
echo "       size of the stripped aarch64 binary: $(stat -c %s "$ARM") bytes ($(( $(stat -c %s "$ARM") / 1024 / 1024 )) MiB)"
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  out=$("$ARM" --version 2>&1); rc=$?
  check "this x86_64 host cannot run it natively (no binfmt)" "126" "$rc"
fi
check_contains "under qemu (with the aarch64 C library of libc6-arm64-cross) it runs" "ferrokube" "$("$QEMU" -L /usr/aarch64-linux-gnu "$ARM" --version 2>&1)"

# launch_server runs $FERROKUBE: a wrapper that runs the aarch64 binary under qemu.
cat >"$E2E_DIR/ferrokube-arm64" <<EOF
#!/bin/sh
exec "$QEMU" -L /usr/aarch64-linux-gnu "$ARM" "\$@"
EOF
chmod +x "$E2E_DIR/ferrokube-arm64"
FERROKUBE=$E2E_DIR/ferrokube-arm64
launch_server 600 0.1 "the aarch64 server did not become ready" 'curl -skf "https://127.0.0.1:$PORT/readyz"' -- --disable-agent || { summary; exit 1; }
check "the emulated process is qemu running our binary" "yes" "$(tr '\0' ' ' </proc/"$SERVER_PID"/cmdline | grep -q "qemu-aarch64-static -L /usr/aarch64-linux-gnu $ARM server" && echo yes)"

check "kubectl get ns" "default kube-node-lease kube-public kube-system" "$(k get ns -o jsonpath='{.items[*].metadata.name}')"
check_contains "kubectl version sees the server" "Server Version" "$(k version 2>&1)"
check_cmd "kubectl apply a namespace, a ConfigMap and a Deployment" k apply -f - <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: edge}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: edge}
data: {mode: one}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: edge}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: busybox}]}
YAML
check "the ConfigMap reads back" "one" "$(k -n edge get configmap settings -o jsonpath='{.data.mode}')"
eventually "the Deployment's controller made 2 pods (no node: Pending)" "2" 60 sh -c "$KUBECTL -n edge get pods -l app=web -o name | wc -l"

k -n edge get configmaps -w -o jsonpath='{.metadata.name}={.data.mode}{"\n"}' >"$E2E_DIR/watch.out" 2>&1 &
watch_pid=$!
eventually "the watch lists the ConfigMap first" "yes" 60 sh -c "grep -q '^settings=one$' '$E2E_DIR/watch.out' && echo yes"
k -n edge patch configmap settings --type merge -p '{"data":{"mode":"two"}}' >/dev/null
k -n edge create configmap second --from-literal=mode=three >/dev/null
eventually "kubectl get -w shows the update" "yes" 60 sh -c "grep -q '^settings=two$' '$E2E_DIR/watch.out' && echo yes"
eventually "and the new object" "yes" 60 sh -c "grep -q '^second=three$' '$E2E_DIR/watch.out' && echo yes"
kill "$watch_pid" 2>/dev/null; wait "$watch_pid" 2>/dev/null

stop_server TERM
launch_server 600 0.1 "the aarch64 server did not restart" 'curl -skf "https://127.0.0.1:$PORT/readyz"' -- --disable-agent || { summary; exit 1; }
check "after a restart under qemu the objects are there" "two three" "$(k -n edge get configmaps settings second -o jsonpath='{.items[*].data.mode}')"
summary
