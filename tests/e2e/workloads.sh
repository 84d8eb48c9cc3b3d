#!/usr/bin/env bash
# Workload controllers on a real node (root: containerd, runc, iptables): Deployments roll
# out, roll back, scale and heal; garbage collection in the background, foreground and
# orphan modes; a DaemonSet; Jobs that complete, run indexed, or stop at their backoffLimit;
# a CronJob that runs every minute and keeps its history limit; namespace deletion.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
IMAGE2=docker.io/library/busybox:e2e2

# Both test images through the airgap directory, imported at start.
mkdir -p "$E2E_DIR/data/images"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox.tar" "$IMAGE" >/dev/null || exit 1
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox2.tar" "$IMAGE2" >/dev/null || exit 1
start_node || exit 1

# The CronJob first: it needs a couple of minutes of schedule while the rest runs.
k apply -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "*/1 * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "echo tick"]}]
YAML

eventually "a new namespace gets a default service account" "default" 10 k -n default get sa default -o name --no-headers -o custom-columns=N:.metadata.name

# The scheduler: a pod no node fits waits, says why, and goes as soon as the node changes.
k run picky --image=$IMAGE --image-pull-policy=IfNotPresent --overrides='{"spec": {"nodeSelector": {"disk": "ssd"}, "terminationGracePeriodSeconds": 1}}' -- sleep 3600 >/dev/null
eventually "a pod no node fits is unschedulable" "False Unschedulable" 20 k get pod picky -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].status} {.status.conditions[?(@.type=="PodScheduled")].reason}'
check "with upstream's message" "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector." "$(k get pod picky -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}')"
check_contains "and a FailedScheduling event" "FailedScheduling" "$(k get events --field-selector involvedObject.name=picky -o jsonpath='{.items[*].reason}')"
k label node e2e-node disk=ssd >/dev/null
eventually "labelling the node schedules it at once" "e2e-node" 20 k get pod picky -o jsonpath='{.spec.nodeName}'
k run greedy --image=$IMAGE --image-pull-policy=IfNotPresent --overrides='{"spec": {"containers": [{"name": "greedy", "image": "'$IMAGE'", "resources": {"requests": {"cpu": "1000"}}}]}}' >/dev/null
eventually "a pod asking for 1000 cpus waits" "0/1 nodes are available: 1 Insufficient cpu." 20 k get pod greedy -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].message}'
k delete pod picky greedy --wait=false >/dev/null

k apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, annotations: {kubernetes.io/change-cause: first}}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "exec sleep 3600"]}]
YAML
check_cmd "a 3-replica Deployment rolls out" k rollout status deploy/web --timeout=120s
check "all 3 replicas are available" "3" "$(k get deploy web -o jsonpath='{.status.availableReplicas}')"
check "Available condition" "True" "$(k get deploy web -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')"
check "its ReplicaSet is owned by the Deployment" "Deployment" "$(k get rs -l app=web -o jsonpath='{.items[0].metadata.ownerReferences[0].kind}')"
check "pods carry the template hash" "3" "$(k get pods -l app=web,pod-template-hash -o name | wc -l | tr -d ' ')"
check_contains "scaling events are recorded" "Scaled up replica set web-" "$(k get events --field-selector involvedObject.name=web -o jsonpath='{.items[*].message}')"

# A Service in front: an address from the service CIDR, endpoints that follow the pods.
k expose deploy web --port=80 --target-port=8080 >/dev/null
check_contains "the service gets a ClusterIP from 10.43.0.0/16" "10.43." "$(k get svc web -o jsonpath='{.spec.clusterIP}')"
pod_ips() { k get pods -l app=web --field-selector=status.phase=Running -o jsonpath='{.items[*].status.podIP}' | tr ' ' '\n' | sort | xargs; }
slice_ips() { k get endpointslices -l kubernetes.io/service-name=web -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}' | tr ' ' '\n' | sort | xargs; }
eventually "its EndpointSlice lists the 3 pod IPs" "$(pod_ips)" 30 slice_ips
check "and so do its Endpoints" "$(pod_ips)" "$(k get endpoints web -o jsonpath='{.subsets[*].addresses[*].ip}' | tr ' ' '\n' | sort | xargs)"

k set image deploy/web c=$IMAGE2 >/dev/null
k annotate deploy web kubernetes.io/change-cause=second --overwrite >/dev/null
check_cmd "set image rolls out" k rollout status deploy/web --timeout=120s
eventually "old pods go, every pod runs the new image" "$IMAGE2 $IMAGE2 $IMAGE2" 30 k get pods -l app=web -o jsonpath='{.items[*].spec.containers[0].image}'
check "two ReplicaSets, the old one scaled to 0" "1=0 2=3" "$(k get rs -l app=web -o jsonpath='{range .items[*]}{.metadata.annotations.deployment\.kubernetes\.io/revision}={.spec.replicas}{"\n"}{end}' | sort | xargs)"
eventually "after the rollout the slice lists the new pods" "$(pod_ips)" 30 slice_ips
check "deployment revision 2" "2" "$(k get deploy web -o jsonpath='{.metadata.annotations.deployment\.kubernetes\.io/revision}')"
check_contains "rollout history lists both revisions" "1         first" "$(k rollout history deploy/web)"
check_cmd "rollout undo" k rollout undo deploy/web
check_cmd "the undo rolls out" k rollout status deploy/web --timeout=120s
check "the template is back on the first image" "$IMAGE" "$(k get deploy web -o jsonpath='{.spec.template.spec.containers[0].image}')"
check "the first ReplicaSet is now revision 3" "3" "$(k get rs -l app=web -o jsonpath="{.items[?(@.spec.template.spec.containers[0].image==\"$IMAGE\")].metadata.annotations.deployment\.kubernetes\.io/revision}")"

k scale deploy/web --replicas=5 >/dev/null
eventually "scale up to 5" "5" 60 k get deploy web -o jsonpath='{.status.readyReplicas}'
k scale deploy/web --replicas=2 >/dev/null
eventually "scale down to 2" "2" 60 sh -c "$KUBECTL get pods -l app=web -o name --field-selector=status.phase=Running | grep -c . "
victim=$(k get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
k delete pod "$victim" --wait=false >/dev/null
eventually "a deleted pod is replaced" "2" 60 k get deploy web -o jsonpath='{.status.availableReplicas}'
eventually "the deleted pod is gone" "" 30 sh -c "$KUBECTL get pods -l app=web -o name | grep '$victim\$'"

k rollout pause deploy/web >/dev/null
k set image deploy/web c=$IMAGE2 >/dev/null
sleep 2
check "a paused Deployment does not roll" "$IMAGE $IMAGE" "$(k get pods -l app=web -o jsonpath='{.items[*].spec.containers[0].image}')"
check "Progressing says paused" "DeploymentPaused" "$(k get deploy web -o jsonpath='{.status.conditions[?(@.type=="Progressing")].reason}')"
k rollout resume deploy/web >/dev/null
check_cmd "resumed, it rolls out" k rollout status deploy/web --timeout=120s

check_cmd "delete the Deployment" k delete deploy web --wait=true --timeout=60s
eventually "its ReplicaSets are garbage collected" "0" 60 sh -c "$KUBECTL get rs -l app=web -o name | grep -c ."
eventually "and its pods" "0" 60 sh -c "$KUBECTL get pods -l app=web -o name | grep -c ."

# Orphan and foreground deletion of a ReplicaSet.
cat >"$E2E_DIR/keep.yaml" <<YAML
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: keep}
spec:
  replicas: 2
  selector: {matchLabels: {app: keep}}
  template:
    metadata: {labels: {app: keep}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "exec sleep 3600"]}]
YAML
k apply -f "$E2E_DIR/keep.yaml" >/dev/null
eventually "a ReplicaSet keeps 2 pods" "2" 60 k get rs keep -o jsonpath='{.status.readyReplicas}'
check_cmd "delete it with --cascade=orphan" k delete rs keep --cascade=orphan --wait=true --timeout=30s
check "its pods stay" "2" "$(k get pods -l app=keep -o name | grep -c .)"
check "and are released" "" "$(k get pods -l app=keep -o jsonpath='{.items[*].metadata.ownerReferences}')"
k apply -f "$E2E_DIR/keep.yaml" >/dev/null
eventually "a new ReplicaSet adopts the orphans" "ReplicaSet ReplicaSet" 30 k get pods -l app=keep -o jsonpath='{.items[*].metadata.ownerReferences[0].kind}'
check "adopting them, it creates none" "2" "$(k get pods -l app=keep -o name | grep -c .)"
check_cmd "foreground deletion waits for the pods" k delete rs keep --cascade=foreground --wait=true --timeout=60s
check "no pod outlives a foreground deletion" "0" "$(k get pods -l app=keep -o name | grep -c .)"

# DaemonSet.
k apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "exec sleep 3600"]}]
YAML
check_cmd "a DaemonSet rolls out" k rollout status ds/agent --timeout=120s
check "one pod on the node" "e2e-node" "$(k get pods -l app=agent -o jsonpath='{.items[*].spec.nodeName}')"
check "status counts the node" "1 1 1" "$(k get ds agent -o jsonpath='{.status.desiredNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled}')"
k set image ds/agent c=$IMAGE2 >/dev/null
check_cmd "a DaemonSet update rolls out" k rollout status ds/agent --timeout=120s
eventually "the daemon pod runs the new image" "$IMAGE2" 30 k get pods -l app=agent -o jsonpath='{.items[*].spec.containers[0].image}'
check_contains "DaemonSet history has two revisions" "2" "$(k rollout history ds/agent)"
k delete ds agent --wait=true --timeout=60s >/dev/null

# StatefulSet: ordinals, stable hostnames, a claim per ordinal whose data outlives the pod.
check_contains "local-path is the default StorageClass" "local-path (default)" "$(k get storageclass)"
k apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 3
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "exec sleep 3600"], volumeMounts: [{name: data, mountPath: /data}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 100Mi}}}
YAML
check_cmd "a StatefulSet of 3 rolls out" k rollout status sts/db --timeout=180s
check "pods db-0, db-1, db-2" "db-0 db-1 db-2" "$(k get pods -l app=db -o jsonpath='{.items[*].metadata.name}')"
check "created one after the other" "create Pod db-0 in StatefulSet db successful,create Pod db-1 in StatefulSet db successful,create Pod db-2 in StatefulSet db successful" \
  "$(k get events --field-selector involvedObject.name=db,reason=SuccessfulCreate -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | grep '^create Pod' | paste -sd,)"
check "a stable hostname" "db-1" "$(k exec db-1 -- hostname)"
check "each ordinal has its bound claim" "Bound Bound Bound" "$(k get pvc data-db-0 data-db-1 data-db-2 -o jsonpath='{.items[*].status.phase}')"
k exec db-1 -- sh -c 'echo keep-me > /data/file'
k delete pod db-1 --wait=true >/dev/null
eventually "db-1 comes back" "True" 90 k get pod db-1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
check "with its data" "keep-me" "$(k exec db-1 -- cat /data/file)"
k set image sts/db c=$IMAGE2 >/dev/null
check_cmd "a StatefulSet update rolls out" k rollout status sts/db --timeout=180s
check "replacing pods from db-2 down" "db-2,db-1,db-0" \
  "$(k get events --field-selector involvedObject.name=db,reason=SuccessfulDelete -o jsonpath='{range .items[*]}{.message}{"\n"}{end}' | sed 's/delete Pod \(db-[0-9]\).*/\1/' | paste -sd,)"
check "all on the new image" "$IMAGE2 $IMAGE2 $IMAGE2" "$(k get pods -l app=db -o jsonpath='{.items[*].spec.containers[0].image}')"
check "data still there after the update" "keep-me" "$(k exec db-1 -- cat /data/file)"
k delete sts db --wait=true >/dev/null
eventually "deleting the StatefulSet removes its pods" "" 60 k get pods -l app=db -o name
check "and keeps the claims" "3" "$(k get pvc -o name | grep -c data-db-)"
k delete pvc data-db-0 data-db-1 data-db-2 --wait=true >/dev/null
eventually "deleted claims release their volumes, which go" "" 30 k get pv -o name
check "with their directories" "" "$(ls "$E2E_DIR/data/storage")"

# Jobs.
k apply -f - >/dev/null <<YAML
apiVersion: batch/v1
kind: Job
metadata: {name: five}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "echo done"]}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: indexed}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, 'echo "index \$JOB_COMPLETION_INDEX"']}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: fails}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "exit 3"]}]
YAML
check_cmd "a Job with completions=5, parallelism=2 completes" k wait --for=condition=complete job/five --timeout=180s
check "5 pods succeeded" "5" "$(k get job five -o jsonpath='{.status.succeeded}')"
check_cmd "an Indexed Job completes" k wait --for=condition=complete job/indexed --timeout=120s
check "every index completed" "0-2" "$(k get job indexed -o jsonpath='{.status.completedIndexes}')"
check "pods see their index" "index 0 index 1 index 2" "$(for p in $(k get pods -l job-name=indexed -o name); do k logs "$p"; done | sort | xargs)"
check_cmd "a failing Job fails" k wait --for=condition=failed job/fails --timeout=120s
check "at its backoffLimit" "BackoffLimitExceeded 2" "$(k get job fails -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason} {.status.failed}')"

# The CronJob has been running meanwhile.
eventually "the CronJob has run on schedule" "true" 150 sh -c "[ -n \"\$($KUBECTL get cronjob tick -o jsonpath='{.status.lastSuccessfulTime}')\" ] && echo true"
check_contains "its Jobs are named after the schedule" "tick-" "$(k get jobs -o name)"
eventually "it keeps only its history limit" "1" 150 sh -c "$KUBECTL get jobs -o name | grep -c tick-"

# Drain respects a PodDisruptionBudget: with one node, once one of two guarded pods is
# evicted its replacement cannot be scheduled, so the second eviction must wait.
k create deployment guarded --image=$IMAGE --replicas=2 -- sleep 3600 >/dev/null
k create poddisruptionbudget guarded --selector=app=guarded --min-available=1 >/dev/null
eventually "the budget allows one disruption" "1" 90 k get pdb guarded -o jsonpath='{.status.disruptionsAllowed}'
check "PDB columns" "NAME MIN AVAILABLE MAX UNAVAILABLE ALLOWED DISRUPTIONS AGE" "$(k get pdb guarded | head -1 | xargs)"
drain_out=$(k drain e2e-node --ignore-daemonsets --delete-emptydir-data --force --timeout=15s 2>&1)
check "drain cannot finish against the budget" "1" "$?"
check_contains "and says why" "Cannot evict pod as it would violate the pod's disruption budget" "$drain_out"
check "one guarded pod still runs, not being evicted" "1" "$(k get pods -l app=guarded -o custom-columns=P:.status.phase,D:.metadata.deletionTimestamp --no-headers | grep -c 'Running *<none>')"
check_contains "its replacement waits on the cordoned node" "node(s) were unschedulable" "$(k get pods -l app=guarded -o jsonpath='{.items[*].status.conditions[?(@.reason=="Unschedulable")].message}')"
check "the node is cordoned" "true" "$(k get node e2e-node -o jsonpath='{.spec.unschedulable}')"
k uncordon e2e-node >/dev/null
eventually "uncordoned, the deployment recovers" "2" 90 k get deploy guarded -o jsonpath='{.status.availableReplicas}'
k delete deploy guarded >/dev/null; k delete pdb guarded >/dev/null

# Deleting a namespace removes what is in it.
k create ns doomed >/dev/null
k -n doomed create deployment d --image=$IMAGE --replicas=2 -- sleep 3600 >/dev/null
eventually "a deployment in a namespace runs" "2" 90 k -n doomed get deploy d -o jsonpath='{.status.readyReplicas}'
check_cmd "delete the namespace" k delete ns doomed --timeout=120s
check "the namespace is gone" "" "$(k get ns doomed -o name 2>/dev/null)"

k delete cronjob tick --wait=true >/dev/null 2>&1
k delete jobs --all --wait=true >/dev/null 2>&1
summary
