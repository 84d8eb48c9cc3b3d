#!/usr/bin/env bash
# A server and two agents on one machine: each agent in its own network namespace, joined
# to the host by a veth pair on a test bridge that plays the LAN, with its own data dir, run
# dir and containerd. Joining with tokens (and refusals), pod CIDRs and host-gw routes,
# pods on every node reaching each other, Services and DNS across nodes, logs/exec/
# port-forward to an agent's pod, DaemonSets, node deletion, drain, kill -9 and adoption.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node

LAN=fklan$((RANDOM % 100))
SUB=172.31.$((200 + RANDOM % 50))
SERVER_IP=$SUB.1
CLUSTER_CIDR=10.$((60 + RANDOM % 30)).0.0/16
AGENTS="a1 a2"
declare -A AGENT_PID

net_cleanup() {
  for a in $AGENTS; do
    [ -n "${AGENT_PID[$a]:-}" ] && kill -KILL "${AGENT_PID[$a]}" 2>/dev/null
    if [ -e "/run/netns/fk-$a-$LAN" ]; then
      in_ns "$a" "$FERROKUBE" killall --data-dir "$E2E_DIR/$a" --run-dir "$E2E_DIR/$a-run" --pod-bridge "fkp$a" >/dev/null 2>&1
      ip netns del "fk-$a-$LAN" 2>/dev/null
    fi
    ip link del "v$LAN$a" 2>/dev/null
  done
  ip link del "$LAN" 2>/dev/null
  ip route | awk '/proto 107/ {print $1}' | while read -r r; do ip route del "$r" proto 107 2>/dev/null; done
  node_cleanup
}
trap net_cleanup EXIT

# in_ns AGENT CMD...: CMD in the agent's network namespace only (its mounts stay the host's:
# `ip netns exec` would remount /sys and hide the cgroup hierarchy from containerd and runc).
in_ns() {
  local a=$1
  shift
  nsenter --net="/run/netns/fk-$a-$LAN" "$@"
}

ip link add "$LAN" type bridge && ip addr add "$SERVER_IP/24" dev "$LAN" && ip link set "$LAN" up
n=2
for a in $AGENTS; do
  ip netns add "fk-$a-$LAN"
  ip link add "v$LAN$a" type veth peer name eth0 netns "fk-$a-$LAN"
  ip link set "v$LAN$a" master "$LAN" up
  in_ns "$a" ip addr add "$SUB.$n/24" dev eth0
  in_ns "$a" ip link set lo up
  in_ns "$a" ip link set eth0 up
  in_ns "$a" ip route add default via "$SERVER_IP"
  eval "IP_$a=$SUB.$n"
  n=$((n + 1))
done

python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/busybox.tar" "$IMAGE" >/dev/null
for d in data a1 a2; do mkdir -p "$E2E_DIR/$d/images" && cp "$E2E_DIR/busybox.tar" "$E2E_DIR/$d/images/"; done
# The server's node takes its pod range from the cluster CIDR like the agents (no --pod-cidr).
BIND_ADDRESS=0.0.0.0 launch_server 300 0.1 "node did not register" 'k get node e2e-node' -- \
  --run-dir "$RUN" --node-name e2e-node --pod-bridge "$BRIDGE" --node-ip "$SERVER_IP" --cluster-cidr "$CLUSTER_CIDR" --kubelet-root-dir "$E2E_DIR/kubelet" --metric-resolution 2s || exit 1
URL="https://$SERVER_IP:$PORT"
JOIN=$(cat "$E2E_DIR/data/server/token")
check_contains "the server writes a K10 join token" "K10" "${JOIN:0:3}"
check "the token file is private" "600" "$(stat -c %a "$E2E_DIR/data/server/token")"
check_contains "the server logs the join command" "ferrokube agent --server" "$(cat "$E2E_DIR/server.log")"

# start_agent NAME EXTRA-ARGS...: runs `ferrokube agent` for NAME in its namespace.
start_agent() {
  local a=$1
  shift
  local ip_var="IP_$a"
  nsenter --net="/run/netns/fk-$a-$LAN" "$FERROKUBE" agent --server "$URL" --data-dir "$E2E_DIR/$a" --run-dir "$E2E_DIR/$a-run" --node-name "$a" \
    --node-ip "${!ip_var}" --pod-bridge "fkp$a" --cluster-cidr "$CLUSTER_CIDR" --cgroup-root "/ferrokube/$a" --kubelet-root-dir "$E2E_DIR/$a/kubelet" "$@" >>"$E2E_DIR/$a.log" 2>&1 &
  AGENT_PID[$a]=$!
}

# Refusals: a wrong CA hash, a deleted token and an expired one.
BARE=${JOIN##*::}
WRONG="K10$(printf '0%.0s' $(seq 64))::$BARE"
out=$(in_ns a1 timeout 20 "$FERROKUBE" agent --server "$URL" --token "$WRONG" --data-dir "$E2E_DIR/x" --run-dir "$E2E_DIR/x-run" --node-name x 2>&1)
check_contains "a wrong CA hash is refused" "is not the one the token pins" "$out"
check "nothing was requested with it" "" "$(k get csr -o name)"
DEL=$("$FERROKUBE" token create --data-dir "$E2E_DIR/data" --description doomed | tail -1)
"$FERROKUBE" token delete --data-dir "$E2E_DIR/data" "${DEL##*::}" >/dev/null
out=$(in_ns a1 timeout 20 "$FERROKUBE" agent --server "$URL" --token "$DEL" --data-dir "$E2E_DIR/x" --run-dir "$E2E_DIR/x-run" --node-name x 2>&1)
check_contains "a deleted token is refused" "the server refused the token" "$out"
EXP=$("$FERROKUBE" token create --data-dir "$E2E_DIR/data" --ttl 1s | tail -1)
sleep 2
out=$(in_ns a1 timeout 20 "$FERROKUBE" agent --server "$URL" --token "$EXP" --data-dir "$E2E_DIR/x" --run-dir "$E2E_DIR/x-run" --node-name x 2>&1)
check_contains "an expired token is refused" "the server refused the token" "$out"
eventually "the token cleaner deletes the expired token's Secret" "" 10 "$KUBECTL" -n kube-system get secret "bootstrap-token-$(echo "${EXP##*::}" | cut -d. -f1)" -o name --ignore-not-found

# Join: a1 with the server's token, a2 with a fresh one.
A2TOKEN=$("$FERROKUBE" token create --data-dir "$E2E_DIR/data" --description "for a2" | tail -1)
T0=$(date +%s%N)
start_agent a1 --token "$JOIN"
start_agent a2 --token "$A2TOKEN"
eventually "agent a1 joins and turns Ready" "True" 60 "$KUBECTL" get node a1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
T1=$(date +%s%N)
echo "# a1: agent start -> Ready in $(((T1 - T0) / 1000000)) ms"
eventually "agent a2 joins and turns Ready" "True" 60 "$KUBECTL" get node a2 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
check "three nodes" "3" "$(k get nodes -o name | wc -l)"
check "every node has a pod CIDR of the cluster CIDR" "3" "$(k get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{"\n"}{end}' | grep -c "^${CLUSTER_CIDR%.0.0/16}\.")"
check "pod CIDRs are distinct" "3" "$(k get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{"\n"}{end}' | sort -u | wc -l)"
check "a1's InternalIP is its LAN address" "$IP_a1" "$(k get node a1 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')"
check "a1 is no control-plane node" "" "$(k get node a1 -o jsonpath='{.metadata.labels.node-role\.kubernetes\.io/control-plane}')"
check "the node client certificates were auto-approved" "2" "$(k get csr -o jsonpath='{range .items[*]}{.spec.signerName} {.status.conditions[0].reason}{"\n"}{end}' | grep -c 'kube-apiserver-client-kubelet AutoApproved')"
check "a1 authenticates as system:node:a1" "system:node:a1" "$(openssl x509 -noout -subject -nameopt multiline -in "$E2E_DIR/a1/agent/tls/client-kubelet.crt" | awk -F' = ' '/commonName/ {print $2}')"
check "the agent's key is private" "600" "$(stat -c %a "$E2E_DIR/a1/agent/tls/client-kubelet.key")"


# Pods on every node, reaching each other by address across nodes (host-gw routes).
web_pods e2e-node a1 a2
for n in e2e-node a1 a2; do
  cidr=$(k get node "$n" -o jsonpath='{.spec.podCIDR}')
  check_contains "web-$n has an address of $n's range" "${cidr%.0/24}." "$(pod_ip "web-$n")"
done
# Each agent keeps its pods under its own cgroup root (two nodes share this machine).
cg_of() { ls -d /sys/fs/cgroup/memory/ferrokube/$1/pod"$(k get pod "$2" -o jsonpath='{.metadata.uid}')" 2>/dev/null | wc -l; }
check "web-a1's cgroup is under a1's cgroup root" "1" "$(cg_of a1 web-a1)"
check "web-a2's cgroup is under a2's cgroup root" "1" "$(cg_of a2 web-a2)"
check "the server's pods are not under an agent's root" "0" "$(cg_of a1 web-e2e-node)"
check_contains "the server routes a1's pods via a1" "via $IP_a1" "$(ip route show "$(k get node a1 -o jsonpath='{.spec.podCIDR}')")"
check "pod on a1 -> pod on a2 by IP" "hello from web-a2" "$(http_get web-a1 "$(pod_ip web-a2)")"
check "pod on a2 -> pod on a1 by IP" "hello from web-a1" "$(http_get web-a2 "$(pod_ip web-a1)")"
check "pod on a1 -> pod on the server's node" "hello from web-e2e-node" "$(http_get web-a1 "$(pod_ip web-e2e-node)")"
check "pod on the server's node -> pod on a1" "hello from web-a1" "$(http_get web-e2e-node "$(pod_ip web-a1)")"
# The receiver sees the sender's pod address: no masquerade inside the pod network.
check_sender_address "the receiver on a2 sees the sender's pod address (no masquerade inside the cluster)" web-a1 web-a2

# A ClusterIP Service from a pod on a1 reaches backends on a2 and on the server's node.
k expose pod web-a2 --name web-a2 --port 80 --target-port 8080 >/dev/null
k expose pod web-e2e-node --name web-srv --port 80 --target-port 8080 >/dev/null
k label pod web-e2e-node only=srv >/dev/null
k patch svc web-srv -p '{"spec":{"selector":{"only":"srv"}}}' >/dev/null
eventually "a Service's backend on a2, from a pod on a1" "hello from web-a2" 30 http_get web-a1 "$(k get svc web-a2 -o jsonpath='{.spec.clusterIP}')" 80
eventually "a Service's backend on the server's node, from a pod on a1" "hello from web-e2e-node" 30 http_get web-a1 "$(k get svc web-srv -o jsonpath='{.spec.clusterIP}')" 80
check "kube-dns has one endpoint per node" "a1 a2 e2e-node" "$(k -n kube-system get endpointslice kube-dns-ferrokube -o jsonpath='{range .endpoints[*]}{.nodeName}{"\n"}{end}' | sort | xargs)"
# What a1's proxy sends 10.43.0.10:53/udp to: only a1's own DNS.
dns_target() {
  local rules svc
  rules=$(in_ns "$1" iptables-save -t nat)
  svc=$(echo "$rules" | awk '/^-A FERROKUBE-SERVICES -d 10.43.0.10\/32 -p udp/ {print $NF}')
  for sep in $(echo "$rules" | awk -v c="$svc" '$2 == c && /-j FKSEP-/ {print $NF}'); do
    echo "$rules" | awk -v c="$sep" '$2 == c && /DNAT/ {print $NF}'
  done | sort -u | xargs
}
check "an agent's pods ask the DNS of their own node" "$IP_a1:10053" "$(dns_target a1)"
eventually "DNS names resolve from a pod on an agent" "$(k get svc web-a2 -o jsonpath='{.spec.clusterIP}')" 30 lookup web-a1 web-a2.default.svc.cluster.local
# Resource metrics come from every node's kubelet API, agents' too.
top_nodes() { k top node --no-headers 2>/dev/null | awk '{print $1}' | sort | xargs; }
eventually "kubectl top node shows all three nodes" "a1 a2 e2e-node" 30 top_nodes
eventually "kubectl top pod shows a pod on an agent" "web-a2" 30 bash -c "'$KUBECTL' top pod web-a2 --no-headers 2>/dev/null | awk '{print \$1}'"
# NetworkPolicies across nodes: a2 guards its pod (its controller acts with a certificate it
# got through a CSR), a1's pod is let in by label, the server's is not.
k label pod web-a1 netpol=allowed >/dev/null
printf 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-a2-guard}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress: [{from: [{podSelector: {matchLabels: {netpol: allowed}}}]}]\n' | k apply -f - >/dev/null
reaches() { http_get "$@" | grep -q "^hello" && echo reaches || echo blocked; }
eventually "a policy on a2's pod keeps out the server's pod" "blocked" 10 reaches web-e2e-node "$(pod_ip web-a2)"
check "and lets a1's labelled pod in, across nodes" "hello from web-a2" "$(http_get web-a1 "$(pod_ip web-a2)")"
check "a2's policy controller acts under its own certificate's identity" "system:ferrokube:network-policy" "$(openssl x509 -noout -subject -in "$E2E_DIR/a2/agent/tls/client-network-policy.crt" 2>/dev/null | sed 's/.*CN *= *//')"
k delete networkpolicy web-a2-guard >/dev/null
eventually "the policy removed, the server's pod gets through again" "hello from web-a2" 10 http_get web-e2e-node "$(pod_ip web-a2)"

# The API reaches an agent's pod through that agent's kubelet API.
check "kubectl logs of a pod on an agent" "side 3" "$(k run logger --image "$IMAGE" --image-pull-policy IfNotPresent --restart Never --overrides '{"spec":{"nodeName":"a1"}}' -- sh -c 'for i in 1 2 3; do echo side $i; done; sleep 30' >/dev/null; k wait --for=condition=Ready pod/logger --timeout=60s >/dev/null; sleep 1; k logs logger | tail -1)"
LOGF=$E2E_DIR/logf
(timeout 5 "$KUBECTL" logs -f logger >"$LOGF" 2>&1 &)
sleep 2
check_contains "kubectl logs -f on an agent's pod streams" "side 1" "$(cat "$LOGF")"
check "kubectl exec on an agent's pod" "web-a1" "$(k exec web-a1 -- hostname)"
check "kubectl exec -i on an agent's pod" "piped" "$(echo piped | k exec -i web-a1 -- cat)"
echo "copied file" >"$E2E_DIR/cp.txt"
k cp "$E2E_DIR/cp.txt" web-a1:/tmp/cp.txt >/dev/null 2>&1
check "kubectl cp into an agent's pod" "copied file" "$(k exec web-a1 -- cat /tmp/cp.txt)"
PF=$((20000 + RANDOM % 10000))
(k port-forward pod/web-a2 "$PF:8080" >/dev/null 2>&1 &)
eventually "kubectl port-forward to an agent's pod" "hello from web-a2" 20 curl -s --max-time 2 "http://127.0.0.1:$PF/"
pkill -f "port-forward pod/web-a2 $PF" 2>/dev/null

# A DaemonSet runs one pod on each of the three nodes.
cat <<YAML | k apply -f - >/dev/null
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: everywhere}
spec:
  selector: {matchLabels: {app: everywhere}}
  template:
    metadata: {labels: {app: everywhere}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations: [{operator: Exists}]
      containers:
      - {name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}
YAML
eventually "a DaemonSet pod runs on each node" "a1 a2 e2e-node" 90 sh -c "$KUBECTL get pods -l app=everywhere --field-selector=status.phase=Running -o jsonpath='{range .items[*]}{.spec.nodeName}{\"\\n\"}{end}' | sort | xargs"

# Drain a2: its pods go (the DaemonSet's stay), it is cordoned.
k create deployment spread --image "$IMAGE" --replicas 4 -- sleep 3600 >/dev/null
k patch deployment spread -p '{"spec":{"template":{"spec":{"terminationGracePeriodSeconds":1,"containers":[{"name":"busybox","imagePullPolicy":"IfNotPresent"}],"tolerations":[{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":5},{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":5}]}}}}' >/dev/null
check_cmd "a Deployment spreads over the nodes" k rollout status deployment/spread --timeout=90s
check_cmd "kubectl drain an agent" k drain a2 --ignore-daemonsets --delete-emptydir-data --force --timeout=60s
check "the drained node is unschedulable" "true" "$(k get node a2 -o jsonpath='{.spec.unschedulable}')"
check "only DaemonSet pods stay on the drained node" "everywhere" "$(k get pods -o jsonpath='{range .items[*]}{.spec.nodeName} {.metadata.name}{"\n"}{end}' | awk '$1 == "a2" {print $2}' | sed 's/-[a-z0-9]*$//' | sort -u | xargs)"
k uncordon a2 >/dev/null

# kill -9 an agent: its Node turns Unknown, its Deployment pods are recreated elsewhere
# after their tolerationSeconds (5 s here); started again, it adopts its running containers.
k scale deployment spread --replicas 0 >/dev/null
k wait --for=delete pod -l app=spread --timeout=60s >/dev/null 2>&1
k cordon e2e-node a2 >/dev/null
k scale deployment spread --replicas 3 >/dev/null
check_cmd "the Deployment runs on a1 (the others cordoned)" k rollout status deployment/spread --timeout=90s
k uncordon e2e-node a2 >/dev/null
check "all its pods are on a1" "a1" "$(k get pods -l app=spread -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u | xargs)"
DS_A1=$(k get pods -l app=everywhere -o jsonpath='{range .items[?(@.spec.nodeName=="a1")]}{.metadata.name}{end}')
CID_BEFORE=$(k get pod "$DS_A1" -o jsonpath='{.status.containerStatuses[0].containerID}')
kill -KILL "${AGENT_PID[a1]}"
eventually "a killed agent's node turns Unknown" "Unknown" 90 "$KUBECTL" get node a1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
running_elsewhere() { k get pods -l app=spread -o jsonpath='{range .items[*]}{.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{"\n"}{end}' | awk '$1 != "a1" && $2 == "Running" && NF == 2' | wc -l; }
eventually "its Deployment pods run on the other nodes after tolerationSeconds" "3" 90 running_elsewhere
start_agent a1
eventually "the restarted agent is Ready again (no token needed)" "True" 60 "$KUBECTL" get node a1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
eventually "it adopts its running containers (same container ID)" "$CID_BEFORE" 30 "$KUBECTL" get pod "$DS_A1" -o jsonpath='{.status.containerStatuses[0].containerID}'
check "it ran again without the token" "0" "$(grep -c 'the server refused' "$E2E_DIR/a1.log")"
out=$(in_ns a1 timeout 20 "$FERROKUBE" agent --server "$URL" --data-dir "$E2E_DIR/a1" --run-dir "$E2E_DIR/a1-run2" --node-name a1 2>&1)
check_contains "a second agent on the same data directory is refused" "another ferrokube agent runs on this data directory" "$out"

# Certificate renewal. a1's client certificate is replaced by one (its key, the cluster CA)
# that reaches 80% of its life 15 s after the agent starts: the running agent renews it with
# a CSR as itself (no token), its components restart, its pods keep running. Then one past
# 80% already: renewed at start.
tls=$E2E_DIR/data/server/tls
short_cert() { "${PYTHON:-python3}" "$(dirname "$0")/shortcert.py" "$tls/ca.crt" "$tls/ca.key" "$E2E_DIR/a1/agent/tls/client-kubelet.key" system:node:a1 system:nodes 3600 "$1" >"$E2E_DIR/a1/agent/tls/client-kubelet.crt"; }
secs_left() { echo $(( $(date -d "$(openssl x509 -noout -enddate -in "$E2E_DIR/a1/agent/tls/client-kubelet.crt" | cut -d= -f2)" +%s) - $(date +%s) )); }
year_long() { [ "$(secs_left)" -ge $((360 * 86400)) ] && echo yes; }
kill -TERM "${AGENT_PID[a1]}"; wait "${AGENT_PID[a1]}" 2>/dev/null
short_cert 15
check "a1's certificate now expires within the hour" "yes" "$(s=$(secs_left); [ "$s" -gt 0 ] && [ "$s" -lt 3600 ] && echo yes)"
start_agent a1
eventually "a1 is Ready on its short certificate" "True" 60 "$KUBECTL" get node a1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
eventually "the running agent renews it at 80% of its life" "1" 60 sh -c "grep -c 'renewing the node.s certificates' '$E2E_DIR/a1.log'"
eventually "its new client certificate is valid for a year" "yes" 30 year_long
check_contains "requested with a CSR as system:node:a1" "system:node:a1 kubernetes.io/kube-apiserver-client-kubelet" "$(k get csr -o jsonpath='{range .items[*]}{.spec.username} {.spec.signerName}{"\n"}{end}')"
eventually "after the renewal a1 is Ready" "True" 60 "$KUBECTL" get node a1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
check "its pod kept its container through the renewal" "$CID_BEFORE" "$(k get pod "$DS_A1" -o jsonpath='{.status.containerStatuses[0].containerID}')"
check "kubectl exec on it works after the renewal" "renewed" "$(k exec "$DS_A1" -- echo renewed 2>&1)"
kill -TERM "${AGENT_PID[a1]}"; wait "${AGENT_PID[a1]}" 2>/dev/null
short_cert -60
start_agent a1
eventually "a certificate past 80% of its life is renewed at start" "yes" 60 year_long
eventually "and a1 is Ready again" "True" 60 "$KUBECTL" get node a1 -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
check "without the token" "0" "$(grep -c 'the server refused' "$E2E_DIR/a1.log")"

# A Node deleted takes its pods with it.
k delete node a2 >/dev/null
eventually "a deleted Node's pods are removed" "" 60 sh -c "$KUBECTL get pods -A -o jsonpath='{range .items[*]}{.spec.nodeName}{\"\\n\"}{end}' | grep '^a2\$'"

# killall on an agent's host stops the agent, its containerd and its pods.
out=$(in_ns a1 "$FERROKUBE" killall --data-dir "$E2E_DIR/a1" --run-dir "$E2E_DIR/a1-run" --pod-bridge fkpa1 2>&1)
check_contains "killall stops the agent" "stopped the agent" "$out"
check "the agent process is gone" "gone" "$(kill -0 "${AGENT_PID[a1]}" 2>/dev/null && echo running || echo gone)"

summary
