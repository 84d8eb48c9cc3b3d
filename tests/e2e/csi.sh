#!/usr/bin/env bash
# CSI on a real node (root): a test driver (tests/e2e/csi_driver.py, grpcio) registers through
# the kubelet's plugin registration; CSINode and the Node show it; a claim of its StorageClass
# is provisioned (CreateVolume), attached (VolumeAttachment, ControllerPublishVolume), staged
# and published for a pod that writes to it; a new pod reads the data back after the first
# went (unpublished, unstaged, detached); the claim grows (ControllerExpandVolume, then
# NodeExpandVolume on the node); an inline ephemeral volume gets the pod's name; deleting the
# claim deletes the volume (DeleteVolume); bad resizes get upstream's messages.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
PYTHON=${PYTHON:-python3}
DRIVER=csi.test.ferrokube.io
# (checks run in subshells read the calls log through it)
export E2E_DIR

mkdir -p "$E2E_DIR/data/images" "$E2E_DIR/csi"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox.tar" "$IMAGE" >/dev/null
ROOTDIR=$E2E_DIR/kubelet
start_node || exit 1
mkdir -p "$ROOTDIR/plugins/$DRIVER"
"$PYTHON" "$(dirname "$0")/csi_driver.py" "$ROOTDIR/plugins_registry" "$ROOTDIR/plugins/$DRIVER/csi.sock" "$E2E_DIR/csi" csi-node-1 >>"$E2E_DIR/driver.log" 2>&1 &
DRIVER_PID=$!
trap 'k delete pod --all --wait=true --timeout=30s >/dev/null 2>&1; kill $DRIVER_PID 2>/dev/null; node_cleanup' EXIT
calls() { cat "$E2E_DIR/csi/calls.log" 2>/dev/null; }
called() { calls | grep -q "$1" && echo yes || echo no; }

eventually "the driver registers: CSINode lists it with its node id" "$DRIVER csi-node-1" 30 bash -c "'$KUBECTL' get csinode e2e-node -o jsonpath='{.spec.drivers[0].name} {.spec.drivers[0].nodeID}' 2>/dev/null"
check "the kubelet told the driver it is registered" "yes" "$(called '^Registered True')"
check "the Node's node-id annotation" "{\"$DRIVER\":\"csi-node-1\"}" "$(k get node e2e-node -o jsonpath='{.metadata.annotations.csi\.volume\.kubernetes\.io/nodeid}')"
check "the driver's topology as a Node label" "z1" "$(k get node e2e-node -o jsonpath='{.metadata.labels.topology\.csi\.test\.ferrokube\.io/zone}')"
check "CSINode's topology keys and allocatable" "topology.csi.test.ferrokube.io/zone 10" "$(k get csinode e2e-node -o jsonpath='{.spec.drivers[0].topologyKeys[0]} {.spec.drivers[0].allocatable.count}')"

k apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: CSIDriver
metadata: {name: $DRIVER}
spec: {attachRequired: true, podInfoOnMount: true, volumeLifecycleModes: [Persistent, Ephemeral]}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: test-csi}
provisioner: $DRIVER
parameters: {tier: gold, csi.storage.k8s.io/fstype: ext4}
reclaimPolicy: Delete
allowVolumeExpansion: true
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  storageClassName: test-csi
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
YAML
eventually "a claim of the driver's class is provisioned and bound" "Bound" 30 bash -c "'$KUBECTL' get pvc data -o jsonpath='{.status.phase}'"
PV=$(k get pvc data -o jsonpath='{.spec.volumeName}')
check "CreateVolume with the class's parameters (not csi.storage.k8s.io/*) and the requested size" "yes" "$(called "^CreateVolume $PV 67108864 tier=gold$")"
check "the volume is a CSI PV of the driver, pre-bound, with upstream's annotation" "$DRIVER vol-$PV $DRIVER Delete 64Mi" \
  "$(k get pv "$PV" -o jsonpath="{.spec.csi.driver} {.spec.csi.volumeHandle} {.metadata.annotations.pv\.kubernetes\.io/provisioned-by} {.spec.persistentVolumeReclaimPolicy} {.spec.capacity.storage}")"
check_contains "a ProvisioningSucceeded event" "Successfully provisioned volume $PV" "$(k get events --field-selector involvedObject.name=data -o jsonpath='{.items[*].message}')"

user() {
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sh, -c, '$2; sleep 3600']
    volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
YAML
}
user writer 'echo written by the first pod > /data/hello'
check_cmd "a pod using the claim runs" k wait --for=condition=Ready pod/writer --timeout=90s
check "a VolumeAttachment for the node, attached" "$DRIVER e2e-node $PV true" "$(k get volumeattachment -o jsonpath='{.items[0].spec.attacher} {.items[0].spec.nodeName} {.items[0].spec.source.persistentVolumeName} {.items[0].status.attached}')"
check "ControllerPublishVolume to the node's id, then stage and publish (with pod info)" "yes yes yes" "$(called "^ControllerPublishVolume vol-$PV csi-node-1") $(called "^NodeStageVolume vol-$PV") $(called "^NodePublishVolume vol-$PV pod=writer ephemeral=false")"
check "the data lands in the driver's volume" "written by the first pod" "$(cat "$E2E_DIR/csi/volumes/vol-$PV/hello" 2>&1)"
k delete pod writer --wait=true --timeout=60s >/dev/null
check "the pod gone: unpublished and unstaged" "yes yes" "$(called "^NodeUnpublishVolume vol-$PV") $(called "^NodeUnstageVolume vol-$PV")"
eventually "and detached: ControllerUnpublishVolume, the VolumeAttachment gone" "yes 0" 30 bash -c "$(declare -f called calls); echo \$(called '^ControllerUnpublishVolume vol-$PV') \$('$KUBECTL' get volumeattachment --no-headers 2>/dev/null | wc -l)"
user reader 'cat /data/hello > /tmp/seen'
check_cmd "a new pod with the claim runs" k wait --for=condition=Ready pod/reader --timeout=90s
check "and reads the first pod's data back" "written by the first pod" "$(k exec reader -- cat /tmp/seen)"

# Resize: the controller grows the volume, the node its file system.
check_contains "a claim cannot shrink below its capacity" "spec.resources.requests.storage: Forbidden: field can not be less than status.capacity" \
  "$(k patch pvc data -p '{"spec":{"resources":{"requests":{"storage":"32Mi"}}}}' 2>&1)"
check_contains "nor change its class" "spec: Forbidden: spec is immutable after creation" "$(k patch pvc data -p '{"spec":{"storageClassName":"other"}}' 2>&1)"
k patch pvc data -p '{"spec":{"resources":{"requests":{"storage":"128Mi"}}}}' >/dev/null
eventually "ControllerExpandVolume grows the volume" "128Mi" 30 bash -c "'$KUBECTL' get pv $PV -o jsonpath='{.spec.capacity.storage}'"
eventually "the node expands it (NodeExpandVolume) and the claim's capacity follows" "128Mi" 30 bash -c "'$KUBECTL' get pvc data -o jsonpath='{.status.capacity.storage}'"
check "NodeExpandVolume was called with the new size" "yes" "$(called "^NodeExpandVolume vol-$PV 134217728")"
check "no FileSystemResizePending left" "" "$(k get pvc data -o jsonpath='{.status.conditions[?(@.type=="FileSystemResizePending")].status}')"

# An inline ephemeral volume.
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: inline}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    volumeMounts: [{name: eph, mountPath: /eph}]
  volumes: [{name: eph, csi: {driver: $DRIVER, volumeAttributes: {color: blue}}}]
YAML
check_cmd "a pod with an inline ephemeral CSI volume runs" k wait --for=condition=Ready pod/inline --timeout=90s
check "the driver saw the pod and its attributes" "inline blue" "$(k exec inline -- cat /eph/pod /eph/color | xargs)"
check "published as ephemeral, without staging or attaching" "yes" "$(called '^NodePublishVolume csi-[0-9a-f]* pod=inline ephemeral=true')"
k delete pod inline --wait=true --timeout=60s >/dev/null
check "and unpublished with the pod" "1" "$(calls | grep -c '^NodeUnpublishVolume csi-')"

# The claim goes: its volume is deleted by the driver.
k delete pod reader --wait=true --timeout=60s >/dev/null
k delete pvc data --wait=true --timeout=30s >/dev/null
eventually "deleting the claim deletes the volume (DeleteVolume) and its PV" "yes NotFound" 30 bash -c "$(declare -f called calls); echo \$(called '^DeleteVolume vol-$PV') \$('$KUBECTL' get pv $PV 2>&1 | grep -o NotFound)"
check "the driver's directory is gone" "no" "$([ -d "$E2E_DIR/csi/volumes/vol-$PV" ] && echo yes || echo no)"
summary
