#!/usr/bin/env bash
# Servers on an external etcd (root: this machine runs a node). A three-member etcd
# cluster on loopback with TLS for clients and peers; server A (127.0.0.2) and server B
# (127.0.0.3) joined to it with A's token; an agent that knows both. Shared objects, CA and
# Endpoints; leader election and failover after kill -9 (servers and the agent);
# acknowledged writes survive losing a server and an etcd member; without quorum requests
# fail in time with a 5xx Status; watches across servers and after compaction (410);
# migration redb -> etcd -> redb with every object identical.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
command -v etcd >/dev/null && command -v etcdctl >/dev/null || { echo "etcd.sh needs etcd and etcdctl (Debian: etcd-server, etcd-client)" >&2; exit 1; }
A=127.0.0.2
B=127.0.0.3
KA=$E2E_DIR/a.kubeconfig
A_PID=
ka() { "$KUBECTL" --kubeconfig "$KA" "$@"; }
etcd_cleanup() {
  k delete deployment --all --wait --timeout=30s >/dev/null 2>&1
  k delete pods --all --wait --timeout=30s >/dev/null 2>&1
  [ -n "$A_PID" ] && kill -9 "$A_PID" 2>/dev/null
  [ -n "${M_PID:-}" ] && kill -9 "$M_PID" 2>/dev/null
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  if [ "$FAIL" -gt 0 ] && [ -f "$E2E_DIR/agent.log" ]; then cp "$E2E_DIR/agent.log" /tmp/etcd-agent.log && echo "agent log: /tmp/etcd-agent.log" >&2; fi
  for i in 1 2 3; do etcd_stop "$i" KILL; done
  [ -n "${SOLO_PID:-}" ] && kill -9 "$SOLO_PID" 2>/dev/null
  if [ "$FAIL" -gt 0 ] && [ -f "$E2E_DIR/a.log" ]; then cp "$E2E_DIR/a.log" /tmp/etcd-a-server.log && echo "server A log: /tmp/etcd-a-server.log" >&2; fi
  node_cleanup
}
trap etcd_cleanup EXIT

etcd_cluster "$E2E_DIR/etcd" || exit 1
ETCD=$(etcd_flags)
# Short timings, so that the suite sees compaction and timeouts happen.
TIMINGS="--datastore-timeout 5s --etcd-compaction-interval 4s"

# ready_at ADDR PID LOG: waits for /readyz of the server at ADDR.
ready_at() {
  for _ in $(seq 200); do
    curl -skf "https://$1:$PORT/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  echo "the server at $1 did not become ready" >&2
  tail -20 "$3" >&2
  return 1
}
start_a() {
  # shellcheck disable=SC2086
  "$FERROKUBE" server --data-dir "$E2E_DIR/a" --https-listen-port "$PORT" --bind-address $A --advertise-address $A \
    --write-kubeconfig "$KA" --disable-agent $ETCD $TIMINGS >>"$E2E_DIR/a.log" 2>&1 &
  A_PID=$!
  ready_at $A $A_PID "$E2E_DIR/a.log"
}
holder() { k -n kube-system get lease "$1" -o jsonpath='{.spec.holderIdentity}'; }
endpoints() { k get endpoints kubernetes -o jsonpath='{.subsets[*].addresses[*].ip}'; }

start_a || exit 1
for _ in $(seq 100); do [ -s "$E2E_DIR/a/server/token" ] && break; sleep 0.1; done
check_fails "a server with a wrong token does not join" "$FERROKUBE" server --data-dir "$E2E_DIR/wrong" --https-listen-port "$PORT" --bind-address 127.0.0.4 --disable-agent --write-kubeconfig "$E2E_DIR/wrong.kubeconfig" $ETCD --token abcdef.0123456789abcdef
check_contains "and says which token to give" "first server's <data-dir>/server/token" "$("$FERROKUBE" server --data-dir "$E2E_DIR/wrong" --https-listen-port "$PORT" --bind-address 127.0.0.4 --disable-agent --write-kubeconfig "$E2E_DIR/wrong.kubeconfig" $ETCD --token abcdef.0123456789abcdef 2>&1 | tail -1)"

# Server B: the same etcd, A's token.
# shellcheck disable=SC2086
"$FERROKUBE" server --data-dir "$E2E_DIR/b" --https-listen-port "$PORT" --bind-address $B --advertise-address $B \
  --write-kubeconfig "$KUBECONFIG" --disable-agent $ETCD $TIMINGS --server "https://$A:$PORT" --token "$(cat "$E2E_DIR/a/server/token")" >>"$E2E_DIR/server.log" 2>&1 &
SERVER_PID=$!
ready_at $B $SERVER_PID "$E2E_DIR/server.log" || exit 1
# This machine's node: an agent that knows both servers.
mkdir -p "$E2E_DIR/data/images"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox.tar" "$IMAGE" >/dev/null || exit 1
NODE_IP=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") print $(i + 1)}')
NODE_IP=${NODE_IP:-$(hostname -I | awk '{print $1}')}
"$FERROKUBE" agent --server "https://$A:$PORT,https://$B:$PORT" --token "$(cat "$E2E_DIR/a/server/token")" --data-dir "$E2E_DIR/data" \
  --run-dir "$RUN" --node-name e2e-node --node-ip "$NODE_IP" --pod-bridge "$BRIDGE" --kubelet-root-dir "$E2E_DIR/kubelet" >>"$E2E_DIR/agent.log" 2>&1 &
AGENT_PID=$!
eventually "an agent given both servers joins" "e2e-node" 60 k get nodes -o jsonpath='{.items[*].metadata.name}'

# --- One cluster, two servers.
check "server B took server A's CA from etcd" "$(sha256sum <"$E2E_DIR/a/server/tls/ca.crt")" "$(sha256sum <"$E2E_DIR/b/server/tls/ca.crt")"
check "A's admin credentials work against B" "namespace/default" "$(ka --server "https://$B:$PORT" get ns default -o name 2>&1)"
check "the node is seen through A" "e2e-node" "$(ka get nodes -o jsonpath='{.items[*].metadata.name}')"
ka create configmap from-a --from-literal=k=v >/dev/null
check "an object written through A is read through B at once" "v" "$(k get cm from-a -o jsonpath='{.data.k}')"
rv=$(ka get cm from-a -o jsonpath='{.metadata.resourceVersion}')
check "with the same resourceVersion" "$rv" "$(k get cm from-a -o jsonpath='{.metadata.resourceVersion}')"
check_contains "etcdctl shows it as /registry/configmaps/default/from-a" "/registry/configmaps/default/from-a" "$(etcdctl_ get --prefix /registry --keys-only)"
check "etcd's mod revision is its resourceVersion" "$rv" "$(etcdctl_ get /registry/configmaps/default/from-a -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kvs"][0]["mod_revision"])')"
check "the stored value is the object, without a resourceVersion" "from-a v -" "$(etcdctl_ get /registry/configmaps/default/from-a --print-value-only | python3 -c 'import json,sys; o=json.load(sys.stdin); print(o["metadata"]["name"], o["data"]["k"], o["metadata"].get("resourceVersion", "-"))')"
ka apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}]
YAML
check_contains "a Deployment is stored under its group" "/registry/apps/deployments/default/web" "$(etcdctl_ get --prefix /registry/apps --keys-only)"
eventually "the Deployment applied through A runs its pod on the node" "Running" 60 ka get pods -l app=web -o jsonpath='{.items[*].status.phase}'
eventually "the kubernetes Endpoints lists both servers" "$A $B" 20 endpoints
A_ID=$(holder apiserver-endpoint-127-0-0-2)
B_ID=$(holder apiserver-endpoint-127-0-0-3)
check "server A, first up, leads the controller manager" "$A_ID" "$(holder kube-controller-manager)"
check "and the scheduler" "$A_ID" "$(holder kube-scheduler)"

# --- Failover: kill -9 the leader; B takes over while kubectl against B keeps working.
(
  fails=0
  while [ ! -f "$E2E_DIR/stop-probe" ]; do
    k get --request-timeout=5s ns default -o name >/dev/null 2>&1 || fails=$((fails + 1))
    sleep 0.3
  done
  echo $fails >"$E2E_DIR/probe-fails"
) &
PROBE=$!
kill -9 $A_PID
wait $A_PID 2>/dev/null
A_PID=
killed=$SECONDS
eventually "B holds the controller manager's Lease within 20 s of A's kill -9" "$B_ID" 20 holder kube-controller-manager
eventually "and the scheduler's" "$B_ID" $((20 - (SECONDS - killed) > 1 ? 20 - (SECONDS - killed) : 1)) holder kube-scheduler
k scale deployment web --replicas=3 >/dev/null
eventually "a Deployment scaled through B reconciles: 3 pods run" "Running Running Running" 60 k get pods -l app=web -o jsonpath='{.items[*].status.phase}'
eventually "A leaves the kubernetes Endpoints once its presence expires" "$B" 30 endpoints
renewed() { k -n kube-node-lease get lease e2e-node -o jsonpath='{.spec.renewTime}'; }
before=$(renewed)
sleep 11
check_cmd "the agent renews its node Lease through B" test "$(renewed)" != "$before"
check "and stays Ready" "True" "$(k get node e2e-node -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
check_contains "it failed over from A to B" "failed over" "$(cat "$E2E_DIR/agent.log")"
touch "$E2E_DIR/stop-probe"
wait $PROBE
check "kubectl against B answered every request during the failover" "0" "$(cat "$E2E_DIR/probe-fails")"

# --- Acknowledged writes survive: 8 clients through both servers; kill -9 A and one member.
start_a || exit 1
k create namespace load >/dev/null
writer() {
  local n=$1 server=$2 i=0
  while [ ! -f "$E2E_DIR/stop-load" ]; do
    i=$((i + 1))
    if k --server "$server" --request-timeout=10s -n load create configmap "w$n-$i" --from-literal=i=$i >/dev/null 2>&1; then
      echo "w$n-$i" >>"$E2E_DIR/acked-$n"
    fi
  done
}
WRITERS=()
for n in 1 2 3 4; do writer $n "https://$A:$PORT" & WRITERS+=($!); done
for n in 5 6 7 8; do writer $n "https://$B:$PORT" & WRITERS+=($!); done
sleep 4
kill -9 $A_PID
wait $A_PID 2>/dev/null
A_PID=
etcd_stop 1 KILL
echo "--- e2e: etcd member 1 killed at $(date -u +%T.%N)" >>"$E2E_DIR/server.log"
sleep 4
touch "$E2E_DIR/stop-load"
wait "${WRITERS[@]}"
acked=$(cat "$E2E_DIR"/acked-* 2>/dev/null | sort)
through_a=$(cat "$E2E_DIR"/acked-[1-4] 2>/dev/null | wc -l)
check_cmd "the writers got creates acknowledged through both servers ($(echo "$acked" | wc -l), $through_a through A)" test "$through_a" -gt 10 -a "$(echo "$acked" | wc -l)" -gt 40
present=$(k -n load get cm -o name | sed 's|^configmap/||' | sort)
check "every acknowledged create is present after losing server A and an etcd member" "" "$(comm -23 <(echo "$acked") <(echo "$present") | head -5 | xargs)"
etcd_start 1
for _ in $(seq 100); do etcdctl_ endpoint health >/dev/null 2>&1 && break; sleep 0.2; done

# --- Without quorum: a timely 5xx Status, then writes resume.
curl_credentials
etcd_stop 2 KILL
etcd_stop 3 KILL
echo "--- e2e: etcd members 2 and 3 killed at $(date -u +%T.%N)" >>"$E2E_DIR/server.log"
t=$SECONDS
code=$(api -m 30 -o "$E2E_DIR/noquorum.json" -w '%{http_code}' -H 'Content-Type: application/json' -X POST "https://$B:$PORT/api/v1/namespaces/load/configmaps" -d '{"metadata":{"name":"no-quorum"}}')
took=$((SECONDS - t))
check_cmd "with two of three members stopped a create fails with a 5xx (got $code)" [ "${code:0:1}" = 5 ]
check "as a Status" "Status Failure" "$(python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); print(o["kind"], o["status"])' "$E2E_DIR/noquorum.json" 2>&1)"
check_cmd "within the request timeout (${took}s)" [ "$took" -le 12 ]
t=$SECONDS
code=$(api -m 30 -o /dev/null -w '%{http_code}' "https://$B:$PORT/api/v1/namespaces/load/configmaps")
check_cmd "a list fails the same way, in time (got $code after $((SECONDS - t))s)" test "${code:0:1}" = 5 -a $((SECONDS - t)) -le 12
etcd_start 2
etcd_start 3
resumed() { k -n load create configmap resumed >/dev/null 2>&1; k -n load get configmap resumed -o name 2>/dev/null; }
eventually "after the members return, writes resume" "configmap/resumed" 60 resumed

# --- Watches: across servers, and from a compacted revision.
start_a || exit 1
# A list paged across servers: the continue token A gave reads the same snapshot on B.
total=$(k -n load get configmaps -o name | wc -l)
page1=$(api "https://$A:$PORT/api/v1/namespaces/load/configmaps?limit=7")
token=$(echo "$page1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["continue"])')
ka -n load create configmap after-the-first-page >/dev/null
rest=$(api "https://$B:$PORT/api/v1/namespaces/load/configmaps?limit=1000&continue=$token" | python3 -c 'import json,sys; o=json.load(sys.stdin); print(len(o["items"]), "after-the-first-page" in [i["metadata"]["name"] for i in o["items"]])')
check "a list paged through A continues on B at the same revision" "$((total - 7)) False" "$rest"
rv1=$(ka -n load create configmap watch-1 -o jsonpath='{.metadata.resourceVersion}')
ka -n load create configmap watch-2 >/dev/null
ka -n load create configmap watch-3 >/dev/null
events() { python3 -c 'import json,sys
out = []
for line in sys.stdin:
    e = json.loads(line)
    o = e["object"]
    out.append(e["type"] + ":" + (o.get("metadata", {}).get("name") or "%s %s" % (o.get("code"), o.get("reason"))))
print(" ".join(out))'; }
check "a watch on B from a resourceVersion A returned gets exactly the later events" "ADDED:watch-2 ADDED:watch-3" \
  "$(api -m 3 "https://$B:$PORT/api/v1/namespaces/load/configmaps?watch=1&resourceVersion=$rv1" | events)"
compacted_watch() { api -m 2 "https://$B:$PORT/api/v1/namespaces/load/configmaps?watch=1&resourceVersion=$rv1" | head -1 | events; }
eventually "once etcd is compacted past it, a watch from it gets 410 Expired" "ERROR:410 Expired" 40 compacted_watch
relist_rv=$(k get --raw "/api/v1/namespaces/load/configmaps?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')
ka -n load create configmap watch-4 >/dev/null
check "the client relists and watches from the list's resourceVersion" "ADDED:watch-4" "$(api -m 2 "https://$B:$PORT/api/v1/namespaces/load/configmaps?watch=1&resourceVersion=$relist_rv" | events)"
out=$("$FERROKUBE" snapshot save --name etcd --data-dir "$E2E_DIR/b" 2>&1)
check_contains "snapshot save on an etcd datastore reports the file" "snapshot $E2E_DIR/b/db/snapshots/etcd-" "$out"
snap=$(ls "$E2E_DIR"/b/db/snapshots/etcd-* 2>/dev/null | head -1)
check_cmd "etcdctl reads it as an etcd snapshot of the cluster" sh -c "ETCDCTL_API=3 etcdctl snapshot status '$snap' -w json | python3 -c 'import json,sys; assert json.load(sys.stdin)[\"totalKey\"] > 100'"
check_contains "the servers compacted etcd" "etcd compacted" "$(cat "$E2E_DIR/a.log" "$E2E_DIR/server.log")"

# --- Migration: a cluster on the embedded datastore into etcd and back, every object intact.
SOLO_CLIENT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SOLO_PEER=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
etcd --name solo --data-dir "$E2E_DIR/solo" --listen-client-urls "http://127.0.0.1:$SOLO_CLIENT" --advertise-client-urls "http://127.0.0.1:$SOLO_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$SOLO_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$SOLO_PEER" --initial-cluster "solo=http://127.0.0.1:$SOLO_PEER" >>"$E2E_DIR/solo.log" 2>&1 &
SOLO_PID=$!
SOLO=http://127.0.0.1:$SOLO_CLIENT
M=$E2E_DIR/m
M_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_m() {
  "$FERROKUBE" server --data-dir "$M" --https-listen-port "$M_PORT" --bind-address 127.0.0.1 --write-kubeconfig "$M/kubeconfig" --disable-agent "$@" >>"$E2E_DIR/m.log" 2>&1 &
  M_PID=$!
  for _ in $(seq 200); do curl -skf "https://127.0.0.1:$M_PORT/readyz" >/dev/null 2>&1 && return 0; kill -0 $M_PID 2>/dev/null || break; sleep 0.1; done
  tail -20 "$E2E_DIR/m.log" >&2
  return 1
}
km() { "$KUBECTL" --kubeconfig "$M/kubeconfig" "$@"; }
start_m || exit 1
km create namespace shop >/dev/null
km -n shop create configmap settings --from-literal=colour=blue >/dev/null
km -n shop create secret generic password --from-literal=p=s3cret >/dev/null
km -n shop create deployment shop --image="$IMAGE" >/dev/null
km -n shop create role reader --verb=get --resource=pods >/dev/null
uid=$(km -n shop get configmap settings -o jsonpath='{.metadata.uid}')
kill $M_PID
wait $M_PID
M_PID=
"$FERROKUBE" datastore dump --from "$M" >"$E2E_DIR/before" 2>>"$E2E_DIR/dump.log"
check_cmd "dump of the embedded datastore lists every object" [ "$(wc -l <"$E2E_DIR/before")" -gt 100 ]
check_contains "migrate redb -> etcd" "migrated $(wc -l <"$E2E_DIR/before") objects" "$("$FERROKUBE" datastore migrate --from "$M" --to "$SOLO" 2>&1)"
"$FERROKUBE" datastore dump --from "$SOLO" --data-dir "$M" >"$E2E_DIR/in-etcd" 2>>"$E2E_DIR/dump.log"
check "every object is identical in etcd (JSON, uids included)" "" "$(diff "$E2E_DIR/before" "$E2E_DIR/in-etcd" | head -3)"
check_contains "migrating from a directory without a datastore says so" "holds no datastore" "$("$FERROKUBE" datastore migrate --from "$E2E_DIR/nothing" --to "$SOLO" 2>&1)"
check_contains "migrating into a datastore that is not empty is refused" "already holds" "$("$FERROKUBE" datastore migrate --from "$M" --to "$SOLO" 2>&1)"
check_contains "migrate etcd -> redb" "migrated $(wc -l <"$E2E_DIR/before") objects" "$("$FERROKUBE" datastore migrate --from "$SOLO" --to "$E2E_DIR/back" 2>&1)"
"$FERROKUBE" datastore dump --from "$E2E_DIR/back" >"$E2E_DIR/after" 2>>"$E2E_DIR/dump.log"
check "and back: every object identical again" "" "$(diff "$E2E_DIR/before" "$E2E_DIR/after" | head -3)"
start_m --datastore-endpoint "$SOLO" || exit 1
check "the migrated cluster's server runs on etcd with its objects" "$uid blue" "$(km -n shop get configmap settings -o jsonpath='{.metadata.uid} {.data.colour}')"
check "its Secrets too" "s3cret" "$(km -n shop get secret password -o jsonpath='{.data.p}' | base64 -d)"

summary
