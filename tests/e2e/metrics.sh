#!/usr/bin/env bash
# Resource metrics and autoscaling on a real node (root): `kubectl top node|pod` from the
# kubelets' CRI stats through the built-in metrics.k8s.io, a HorizontalPodAutoscaler scaling
# a CPU-burning Deployment up and, once idle, back down within its stabilization window, and
# the Prometheus metrics of the API server and the kubelet.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node

# The test image as an airgap archive, imported at start.
mkdir -p "$E2E_DIR/data/images"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox.tar" "$IMAGE" >/dev/null
start_node --metric-resolution 2s --horizontal-pod-autoscaler-sync-period 2s || exit 1

# --- Resource metrics -------------------------------------------------------------------
eventually "kubectl top node shows the node" "e2e-node" 20 bash -c "'$KUBECTL' top node --no-headers 2>/dev/null | awk '{print \$1}'"
check "with a CPU (millicores) and a memory (MiB) usage" "yes" "$(k top node --no-headers | awk '{print ($2 ~ /^[0-9]+m$/ && $4 ~ /^[1-9][0-9]*Mi$/) ? "yes" : $0}')"
k apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: burn}
spec:
  replicas: 1
  selector: {matchLabels: {app: burn}}
  template:
    metadata: {labels: {app: burn}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burn
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        # Busy until /tmp/idle exists, then idle.
        command: [sh, -c, 'while true; do if [ -e /tmp/idle ]; then sleep 1; else i=0; while [ \$i -lt 20000 ]; do i=\$((i+1)); done; fi; done']
        resources: {requests: {cpu: 100m, memory: 16Mi}, limits: {cpu: 200m}}
      - name: quiet
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        command: [sleep, "3600"]
        resources: {requests: {cpu: 10m}}
YAML
check_cmd "a CPU-burning pod runs" k rollout status deploy/burn --timeout=90s
millicores() { k top pod -l app=burn --containers --no-headers 2>/dev/null | awk -v c="$1" '$2 == c {sub("m", "", $3); print $3}' | head -1; }
busy() { local m; m=$(millicores burn); [ -n "$m" ] && [ "$m" -ge 50 ] && echo busy; }
eventually "kubectl top pod --containers: the burning container uses CPU" "busy" 30 busy
check "and the sleeping one next to none" "yes" "$(m=$(millicores quiet); [ -n "$m" ] && [ "$m" -lt 20 ] && echo yes)"
check_contains "kubectl top pod sums the pod" "burn-" "$(k top pod --no-headers | awk '{print $1}')"
pod=$(k get pods -l app=burn -o jsonpath='{.items[0].metadata.name}')
check "PodMetrics carry the pod's labels" "burn" "$(k get --raw "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/$pod" | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["labels"]["app"])')"
items() { k get --raw "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))'; }
check "a label selector picks pods" "1 0" "$(items '/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dburn') $(items '/apis/metrics.k8s.io/v1beta1/pods?labelSelector=app%3Dnone')"
check "kubectl get podmetrics prints metrics-server's columns" "NAME CPU MEMORY WINDOW" "$(k get podmetrics | head -1 | xargs)"
check_contains "an unknown pod is NotFound in upstream's words" 'podmetrics.metrics.k8s.io "nothere" not found' "$(k top pod nothere 2>&1)"
curl_credentials
check "metrics are read-only: a create is 405 MethodNotAllowed" "405 MethodNotAllowed" "$(api -X POST -H 'Content-Type: application/json' -d '{}' -o "$E2E_DIR/out" -w '%{http_code} ' "$BASE/apis/metrics.k8s.io/v1beta1/nodes"; python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["reason"])' "$E2E_DIR/out")"
check_contains "the kubelet's resource metrics endpoint (upstream's names)" 'container_cpu_usage_seconds_total{container="burn",namespace="default",pod="' "$(k get --raw /api/v1/nodes/e2e-node/proxy/metrics/resource)"
# Who may read them: view (and above) through the aggregated role, as with metrics-server.
k create namespace team >/dev/null
k create serviceaccount viewer -n team >/dev/null
k create rolebinding viewer -n team --clusterrole=view --serviceaccount=team:viewer >/dev/null
check "a view-bound account may read its namespace's pod metrics" "yes" "$(k auth can-i list pods.metrics.k8s.io -n team --as=system:serviceaccount:team:viewer)"
check "and no other namespace's" "no" "$(k auth can-i list pods.metrics.k8s.io -n default --as=system:serviceaccount:team:viewer)"

# --- The API server's own metrics -------------------------------------------------------
metrics=$(k get --raw /metrics)
check_contains "/metrics counts requests by verb, resource and code" 'apiserver_request_total{code="201",component="apiserver",dry_run="",group="apps",resource="deployments",scope="namespace",subresource="",verb="POST",version="v1"} 1' "$metrics"
check_contains "with latency histograms" 'apiserver_request_duration_seconds_bucket{component="apiserver",dry_run="",group="apps",resource="deployments",scope="namespace",subresource="",verb="POST",version="v1",le="0.005"}' "$metrics"
check_contains "open watches" 'apiserver_longrunning_requests{component="apiserver",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"}' "$metrics"
check_contains "the datastore's commit latency" 'ferrokube_store_commit_duration_seconds_count{engine="redb"}' "$metrics"
check_contains "the process's memory" "process_resident_memory_bytes " "$metrics"
check_contains "/metrics needs system:monitoring" 'cannot get path "/metrics"' "$(k get --raw /metrics --as=jane 2>&1)"
check_contains "which the group grants" "apiserver_request_total" "$(k get --raw /metrics --as=jane --as-group=system:monitoring 2>&1 | head -3)"

# --- HorizontalPodAutoscaler ------------------------------------------------------------
check_contains "an autoscaler with maxReplicas 0 is refused" 'spec.maxReplicas: Invalid value: 0: must be greater than 0' \
  "$(printf 'apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: bad}\nspec: {scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}, maxReplicas: 0}\n' | k apply -f - 2>&1)"
# A Deployment whose containers request no CPU: nothing to compute a utilization from.
k create deployment norequests --image="$IMAGE" -- sleep 3600 >/dev/null
k autoscale deployment norequests --max=5 --name=defaults >/dev/null 2>&1
check "kubectl autoscale gets upstream's defaults (min 1, cpu 80%)" "1 cpu 80" "$(k get hpa defaults -o jsonpath='{.spec.minReplicas} {.spec.metrics[0].resource.name} {.spec.metrics[0].resource.target.averageUtilization}')"
k delete hpa defaults >/dev/null
k apply -f - >/dev/null <<'YAML'
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burn}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 10
YAML
check "behavior gets upstream's defaults for what it leaves out" "0 Max 2 Max" "$(k get hpa burn -o jsonpath='{.spec.behavior.scaleUp.stabilizationWindowSeconds} {.spec.behavior.scaleUp.selectPolicy} {.spec.behavior.scaleUp.policies[*].periodSeconds}' | awk '{print $1, $2, NF-2}') $(k get hpa burn -o jsonpath='{.spec.behavior.scaleDown.selectPolicy}')"
eventually "the busy Deployment is scaled up to maxReplicas" "3" 60 bash -c "'$KUBECTL' get deploy burn -o jsonpath='{.spec.replicas}'"
check_contains "kubectl get hpa shows the utilization against the target" "Deployment/burn cpu:" "$(k get hpa burn --no-headers | awk '{print $2, $3}')"
rescales() { k get events --field-selector involvedObject.name=burn,reason=SuccessfulRescale -o jsonpath='{.items[*].message}'; }
eventually "a SuccessfulRescale event in upstream's words" "yes" 10 bash -c "$(declare -f rescales k); rescales | grep -q 'reason: cpu resource utilization (percentage of request) above target' && echo yes"
check "status: conditions as upstream's controller sets them" "True True True" "$(k get hpa burn -o jsonpath='{.status.conditions[?(@.type=="AbleToScale")].status} {.status.conditions[?(@.type=="ScalingActive")].status} {.status.conditions[?(@.type=="ScalingLimited")].status}')"
check "ScalingLimited says why" "TooManyReplicas" "$(k get hpa burn -o jsonpath='{.status.conditions[?(@.type=="ScalingLimited")].reason}')"
check_cmd "the new pods run" k rollout status deploy/burn --timeout=90s
for p in $(k get pods -l app=burn -o name); do k exec "$p" -c burn -- touch /tmp/idle; done
idle_at=$(date +%s)
eventually "idle, it is scaled back down to minReplicas" "1" 60 bash -c "'$KUBECTL' get deploy burn -o jsonpath='{.spec.replicas}'"
took=$(( $(date +%s) - idle_at ))
check "not before the 10 s stabilization window" "yes" "$([ "$took" -ge 10 ] && echo yes || echo "no: $took s")"
eventually "the scale-down event" "yes" 10 bash -c "$(declare -f rescales k); rescales | grep -q 'New size: 1; reason: All metrics below target' && echo yes"

# An autoscaler whose target has no requests cannot compute a utilization.
k autoscale deployment norequests --max=2 --cpu=50% >/dev/null 2>&1
active() { k get hpa norequests -o jsonpath='{.status.conditions[?(@.type=="ScalingActive")].status} {.status.conditions[?(@.type=="ScalingActive")].reason} {.status.conditions[?(@.type=="ScalingActive")].message}'; }
eventually "a target without CPU requests: ScalingActive False, and which container lacks one" "False FailedGetResourceMetric the HPA was unable to compute the replica count: failed to get cpu utilization: missing request for cpu in container busybox of Pod" 40 \
  bash -c "$(declare -f active k); active | sed 's/ of Pod .*/ of Pod/'"
printf 'apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: missing}\nspec: {scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: nosuch}, maxReplicas: 2}\n' | k apply -f - >/dev/null
eventually "a missing target: AbleToScale False FailedGetScale" "False FailedGetScale" 20 bash -c "'$KUBECTL' get hpa missing -o jsonpath='{.status.conditions[?(@.type==\"AbleToScale\")].status} {.status.conditions[?(@.type==\"AbleToScale\")].reason}'"

k delete deploy --all --wait=false >/dev/null 2>&1
summary
