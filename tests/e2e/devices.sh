#!/usr/bin/env bash
# Device plugins on a real node (root): a test plugin (tests/e2e/device_plugin.py, grpcio)
# registers example.com/widget with 3 devices; the Node offers them, a pod asking for 2 runs
# with the plugin's environment, mount and device node inside, a second one stays Pending with
# upstream's "Insufficient example.com/widget", an unhealthy device leaves allocatable, the
# PodResources API lists the allocation, a restarted kubelet keeps it, a freed pair goes to the
# waiting pod, and a plugin that goes away takes its devices out of allocatable.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
PYTHON=${PYTHON:-python3}
PLUGIN=$(dirname "$0")/device_plugin.py

mkdir -p "$E2E_DIR/data/images" "$E2E_DIR/widget"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox.tar" "$IMAGE" >/dev/null
ROOTDIR=$E2E_DIR/kubelet
start_node || exit 1
eventually "the kubelet serves device plugin registration" "yes" 20 bash -c "[ -S '$ROOTDIR/device-plugins/kubelet.sock' ] && echo yes"

"$PYTHON" "$PLUGIN" serve "$ROOTDIR/device-plugins" "$E2E_DIR/widget" >>"$E2E_DIR/plugin.log" 2>&1 &
PLUGIN_PID=$!
trap 'kill $PLUGIN_PID 2>/dev/null; node_cleanup' EXIT
widgets() { k get node e2e-node -o jsonpath="{.status.capacity['example\.com/widget']} {.status.allocatable['example\.com/widget']}"; }
eventually "the Node offers the plugin's 3 devices (capacity, allocatable)" "3 3" 20 widgets

pod() {
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    resources: {limits: {example.com/widget: $2}}
YAML
}
pod first 2
check_cmd "a pod asking for 2 widgets runs" k wait --for=condition=Ready pod/first --timeout=60s
check "it gets the plugin's preferred devices (the highest ids) in its environment" "w1,w2" "$(k exec first -- sh -c 'echo $WIDGET_IDS')"
check "the plugin's mount" "widget data" "$(k exec first -- cat /widget/hello)"
check "and its device node" "character special file" "$(k exec first -- stat -c %F /dev/widget)"
check_contains "GetPreferredAllocation, Allocate and PreStartContainer were called" "GetPreferredAllocation w1,w2 Allocate w1,w2 PreStartContainer w1,w2" "$(grep -E '^(GetPreferred|Allocate|PreStart)' "$E2E_DIR/widget/calls.log" | xargs)"
pod second 2
eventually "a second pod asking for 2 stays Pending: upstream's Insufficient message" "True" 20 bash -c "'$KUBECTL' get pod second -o jsonpath='{.status.conditions[?(@.type==\"PodScheduled\")].message}' | grep -q 'Insufficient example.com/widget' && echo True"
check "kubectl describe node shows the allocation" "2 2" "$(k describe node e2e-node | awk '/Allocated resources/,0' | awk '$1 == "example.com/widget" {print $2, $3}')"

echo w0 >"$E2E_DIR/widget/unhealthy"
eventually "an unhealthy device leaves allocatable, not capacity" "3 2" 20 widgets
check "PodResources lists the pod's devices" "default/first/app example.com/widget w1,w2" "$("$PYTHON" "$PLUGIN" podresources "$ROOTDIR/pod-resources/kubelet.sock" list)"
check "and the allocatable (healthy) ones" "example.com/widget w1,w2" "$("$PYTHON" "$PLUGIN" podresources "$ROOTDIR/pod-resources/kubelet.sock" allocatable)"

# The kubelet restarts: the plugin registers again, the allocation is kept.
before=$(grep -c '^Registered' "$E2E_DIR/widget/calls.log")
stop_server TERM
start_node || exit 1
eventually "after a kubelet restart the plugin registers again" "yes" 30 bash -c "[ \$(grep -c '^Registered' '$E2E_DIR/widget/calls.log') -gt $before ] && echo yes"
eventually "the Node offers the devices again" "3 2" 20 widgets
check "the checkpoint kept the running pod's devices" "default/first/app example.com/widget w1,w2" "$("$PYTHON" "$PLUGIN" podresources "$ROOTDIR/pod-resources/kubelet.sock" list)"
check "and its container (same devices inside)" "w1,w2" "$(k exec first -- sh -c 'echo $WIDGET_IDS')"
check "the second pod still waits" "Pending" "$(k get pod second -o jsonpath='{.status.phase}')"

rm -f "$E2E_DIR/widget/unhealthy"
k delete pod first --wait=true --timeout=60s >/dev/null
check_cmd "the freed devices go to the waiting pod" k wait --for=condition=Ready pod/second --timeout=60s
check "second has two healthy devices" "2" "$(k exec second -- sh -c 'echo $WIDGET_IDS' | tr ',' '\n' | grep -c w)"

kill $PLUGIN_PID
wait $PLUGIN_PID 2>/dev/null
eventually "a plugin gone: its devices stay in capacity, none allocatable" "3 0" 20 widgets
k delete pod --all --wait=false >/dev/null
summary
