#!/usr/bin/env bash
# `ferrokube killall` on a host without systemd (root, real containerd): after a server with 5
# pods, no process, mount, pod cgroup, veth, bridge, iptables chain or CNI lease of ours is
# left; other rules stay; the cluster's data stays, and the next start runs the pods again.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node

python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/busybox.tar" "$IMAGE" >/dev/null
mkdir -p "$E2E_DIR/data/images" && cp "$E2E_DIR/busybox.tar" "$E2E_DIR/data/images/"
# A rule that is not ours, there before the server: it must survive.
iptables -N E2E-FOREIGN 2>/dev/null; iptables -A E2E-FOREIGN -s 192.0.2.1 -j RETURN
start_node || exit 1
cat <<YAML | k apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: five}
spec:
  replicas: 5
  selector: {matchLabels: {app: five}}
  template:
    metadata: {labels: {app: five}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "sleep 3600"]
        volumeMounts: [{name: scratch, mountPath: /scratch}]
      volumes: [{name: scratch, emptyDir: {medium: Memory}}]
---
apiVersion: v1
kind: Service
metadata: {name: five}
spec:
  selector: {app: five}
  ports: [{port: 80}]
YAML
check_cmd "5 pods run" k rollout status deployment/five --timeout=120s
check "the node has its bridge" "yes" "$(ip link show "$BRIDGE" >/dev/null 2>&1 && echo yes)"
check "pods have veths on the bridge" "5" "$(ip -o link show master "$BRIDGE" | grep -c vethfk)"
check "and mounts under the data and run dirs" "yes" "$(grep -q "$E2E_DIR" /proc/mounts && echo yes)"

out=$("$FERROKUBE" killall --data-dir "$E2E_DIR/data" --run-dir "$RUN" --pod-bridge "$BRIDGE" 2>&1); rc=$?
check "killall succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/       /'
check_contains "it reports stopping the server" "stopped the server" "$out"
check_contains "and the pods" "killed" "$out"
if kill -0 "$SERVER_PID" 2>/dev/null; then not_ok "the server is gone"; else ok "the server is gone"; fi
wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
check "no process of ours (nothing names the run or data dir)" "" "$(pgrep -f -- "$RUN|$E2E_DIR/data" | xargs)"
check "no pod process in our cgroups" "0" "$(find /sys/fs/cgroup -path '*/ferrokube/*' -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l)"
check "no pod cgroup left" "" "$(find /sys/fs/cgroup -maxdepth 3 -type d -name ferrokube 2>/dev/null | xargs)"
check "no mount under the data or run dir" "0" "$(grep -c "$E2E_DIR" /proc/mounts)"
check "no bridge" "gone" "$(ip link show "$BRIDGE" >/dev/null 2>&1 || echo gone)"
check "no veth" "0" "$(ip -o link show | grep -c vethfk)"
check "no iptables chain or jump of ours" "0" "$(iptables-save | grep -c FERROKUBE)"
check_contains "the rule that is not ours is still there" "-A E2E-FOREIGN -s 192.0.2.1/32 -j RETURN" "$(iptables-save -t filter)"
check "no CNI lease" "gone" "$([ -e "$E2E_DIR/data/cni/ipam" ] || echo gone)"
check "the run dir is gone" "gone" "$([ -e "$RUN" ] || echo gone)"
check "the cluster's data stays" "yes" "$([ -f "$E2E_DIR/data/db/state.redb" ] && echo yes)"
out=$("$FERROKUBE" killall --data-dir "$E2E_DIR/data" --run-dir "$RUN" --pod-bridge "$BRIDGE" 2>&1); rc=$?
check "killall again has nothing to do and succeeds" "0 " "$rc $out"

start_node || exit 1
check_cmd "after a start the 5 pods run again" k rollout status deployment/five --timeout=120s
eventually "all five Running" "5" 120 sh -c "$KUBECTL get pods -l app=five --field-selector=status.phase=Running -o name | wc -l"
iptables -F E2E-FOREIGN; iptables -X E2E-FOREIGN

# ---- ferrokube uninstall (no install.sh here: the binary's own removal) ---------------------
mkdir -p "$E2E_DIR/bin" "$E2E_DIR/etc" "$E2E_DIR/systemd"
cp "$FERROKUBE" "$E2E_DIR/bin/ferrokube"
echo "disable-agent: false" >"$E2E_DIR/etc/config.yaml"
printf '[Service]\nExecStart=%s server\n' "$E2E_DIR/bin/ferrokube" >"$E2E_DIR/systemd/ferrokube.service"
out=$("$E2E_DIR/bin/ferrokube" uninstall --data-dir "$E2E_DIR/data" --run-dir "$RUN" --pod-bridge "$BRIDGE" --config-dir "$E2E_DIR/etc" \
  --kubeconfig "$KUBECONFIG" --systemd-dir "$E2E_DIR/systemd" 2>&1); rc=$?
check "uninstall succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/       /'
check_contains "it stops the server first" "stopped the server" "$out"
if kill -0 "$SERVER_PID" 2>/dev/null; then not_ok "the server is gone"; else ok "the server is gone"; fi
wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
check "no process of ours" "" "$(pgrep -f -- "$RUN|$E2E_DIR/data" | xargs)"
check "no mount" "0" "$(grep -c "$E2E_DIR" /proc/mounts)"
check "no iptables chain or jump of ours" "0" "$(iptables-save | grep -c FERROKUBE)"
check "no veth" "0" "$(ip -o link show | grep -c vethfk)"
for f in "$E2E_DIR/data" "$RUN" "$E2E_DIR/etc" "$KUBECONFIG" "$E2E_DIR/systemd/ferrokube.service" "$E2E_DIR/bin/ferrokube"; do
  check "$f is removed" "gone" "$([ -e "$f" ] || echo gone)"
done
check_contains "it says so" "ferrokube removed" "$out"
summary
