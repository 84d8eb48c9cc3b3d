#!/usr/bin/env bash
# `--pod-network vxlan`: a server and two agents that do NOT share an L2 segment. Each agent
# is in its own network namespace on its own routed link to the host (its own subnet), so
# host-gw routes are impossible; pods reach pods, Services and DNS across the nodes through
# the VXLAN devices, with the pods' MTU below the links', and a Node deleted takes its
# routes, neighbour and forwarding entries with it.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node

TAG=fkvx$((RANDOM % 100))
X=$((100 + RANDOM % 50))
CLUSTER_CIDR=10.$((100 + RANDOM % 30)).0.0/16
AGENTS="a1 a2"
declare -A AGENT_PID

net_cleanup() {
  for a in $AGENTS; do
    [ -n "${AGENT_PID[$a]:-}" ] && kill -KILL "${AGENT_PID[$a]}" 2>/dev/null
    if [ -e "/run/netns/$TAG-$a" ]; then
      in_ns "$a" "$FERROKUBE" killall --data-dir "$E2E_DIR/$a" --run-dir "$E2E_DIR/$a-run" --pod-bridge "fkp$a" >/dev/null 2>&1
      ip netns del "$TAG-$a" 2>/dev/null
    fi
    ip link del "$TAG$a" 2>/dev/null
  done
  node_cleanup
  ip link del fkvxlan0 2>/dev/null
}
trap net_cleanup EXIT

in_ns() {
  local a=$1
  shift
  nsenter --net="/run/netns/$TAG-$a" "$@"
}

# a1 on 172.31.X.0/24, a2 on 172.31.X+1.0/24: point-to-point links to the host, which
# routes between them.
n=0
for a in $AGENTS; do
  sub=172.31.$((X + n))
  ip netns add "$TAG-$a"
  ip link add "$TAG$a" type veth peer name eth0 netns "$TAG-$a"
  ip addr add "$sub.1/24" dev "$TAG$a"
  ip link set "$TAG$a" up
  in_ns "$a" ip addr add "$sub.2/24" dev eth0
  in_ns "$a" ip link set lo up
  in_ns "$a" ip link set eth0 up
  in_ns "$a" ip route add default via "$sub.1"
  eval "IP_$a=$sub.2"
  n=$((n + 1))
done
SERVER_IP=172.31.$X.1

python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/busybox.tar" "$IMAGE" >/dev/null
for d in data a1 a2; do mkdir -p "$E2E_DIR/$d/images" && cp "$E2E_DIR/busybox.tar" "$E2E_DIR/$d/images/"; done
BIND_ADDRESS=0.0.0.0 launch_server 300 0.1 "node did not register" 'k get node e2e-node' -- \
  --run-dir "$RUN" --node-name e2e-node --pod-bridge "$BRIDGE" --node-ip "$SERVER_IP" --cluster-cidr "$CLUSTER_CIDR" --pod-network vxlan --kubelet-root-dir "$E2E_DIR/kubelet" || exit 1
URL="https://$SERVER_IP:$PORT"
JOIN=$(cat "$E2E_DIR/data/server/token")
for a in $AGENTS; do
  ip_var="IP_$a"
  nsenter --net="/run/netns/$TAG-$a" "$FERROKUBE" agent --server "$URL" --token "$JOIN" --data-dir "$E2E_DIR/$a" --run-dir "$E2E_DIR/$a-run" --node-name "$a" \
    --node-ip "${!ip_var}" --pod-bridge "fkp$a" --cluster-cidr "$CLUSTER_CIDR" --cgroup-root "/ferrokube/$a" --pod-network vxlan --kubelet-root-dir "$E2E_DIR/$a/kubelet" >>"$E2E_DIR/$a.log" 2>&1 &
  AGENT_PID[$a]=$!
done
for a in $AGENTS; do
  eventually "agent $a joins and turns Ready" "True" 60 "$KUBECTL" get node "$a" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
done
check_contains "a1 reaches a2's address through the host (no shared segment)" "via 172.31.$X.1" "$(in_ns a1 ip route get "$IP_a2")"
mac_of() { k get node "$1" -o jsonpath='{.metadata.annotations.ferrokube\.io/vxlan-mac}'; }
# (nsenter --net keeps the host's /sys: ask netlink)
dev_mac() { "$@" ip -o link show "$DEV" | awk '{for (i = 1; i < NF; i++) if ($i == "link/ether") print $(i + 1)}'; }
DEV=fkvxlan0
eventually "a1 publishes its VXLAN device's MAC" "$(dev_mac in_ns a1)" 20 mac_of a1
eventually "the server publishes its VXLAN device's MAC" "$(dev_mac env)" 20 mac_of e2e-node
A2_CIDR=$(k get node a2 -o jsonpath='{.spec.podCIDR}')
route_a1_to_a2() { in_ns a1 ip route show "$A2_CIDR" | xargs; }
eventually "a1 routes a2's pods on-link through its VXLAN device" "$A2_CIDR via ${A2_CIDR%/24} dev fkvxlan0 proto 107 onlink" 20 route_a1_to_a2
check_contains "a1 resolves a2's gateway to a2's device" "$(mac_of a2)" "$(in_ns a1 ip neigh show dev fkvxlan0 "${A2_CIDR%/24}")"
check_contains "a1 sends a2's device frames to a2's address" "dst $IP_a2" "$(in_ns a1 bridge fdb show dev fkvxlan0 | grep "$(mac_of a2)")"
check_contains "the device is VNI 1 on UDP 8472 from the node address" "vxlan id 1 local $IP_a1" "$(in_ns a1 ip -d link show fkvxlan0)"

web_pods e2e-node a1 a2
link_mtu() { in_ns a1 ip -o link show eth0 | awk '{for (i = 1; i < NF; i++) if ($i == "mtu") print $(i + 1)}'; }
check "the pods' MTU leaves room for VXLAN" "$(($(link_mtu) - 50))" "$(k exec web-a1 -- cat /sys/class/net/eth0/mtu)"
check "pod on a1 -> pod on a2 by IP" "hello from web-a2" "$(http_get web-a1 "$(pod_ip web-a2)")"
check "pod on a2 -> pod on a1 by IP" "hello from web-a1" "$(http_get web-a2 "$(pod_ip web-a1)")"
check "pod on a2 -> pod on the server's node" "hello from web-e2e-node" "$(http_get web-a2 "$(pod_ip web-e2e-node)")"
check "pod on the server's node -> pod on a1" "hello from web-a1" "$(http_get web-e2e-node "$(pod_ip web-a1)")"
big() { k exec web-a1 -- sh -c "printf 'GET /big HTTP/1.0\r\n\r\n' | nc -w 5 $(pod_ip web-a2) 8080 | tail -c 300000 | tr -d x | wc -c"; }
check "300 kB across nodes arrive whole (full-size packets fit)" "0" "$(big | tr -d ' ')"
host_get() { timeout 5 bash -c "exec 3<>/dev/tcp/$1/8080; printf 'GET / HTTP/1.0\r\n\r\n' >&3; cat <&3" 2>&1 | tail -1 | tr -d '\r'; }
check "the host reaches a pod on a2" "hello from web-a2" "$(host_get "$(pod_ip web-a2)")"
check_sender_address "the receiver on a2 sees the sender's pod address (no masquerade)" web-a1 web-a2
k expose pod web-a2 --name web-a2 --port 80 --target-port 8080 >/dev/null
eventually "a Service's backend on a2, from a pod on a1" "hello from web-a2" 30 http_get web-a1 "$(k get svc web-a2 -o jsonpath='{.spec.clusterIP}')" 80
eventually "DNS names resolve from a pod on a2" "$(k get svc web-a2 -o jsonpath='{.spec.clusterIP}')" 30 lookup web-a2 web-a2.default.svc.cluster.local

# A Node deleted: the others forget its route, neighbour and forwarding entries.
A2_MAC=$(mac_of a2)
kill -KILL "${AGENT_PID[a2]}"
k delete node a2 --wait=false >/dev/null
eventually "a1 drops the route to a2's pods" "" 20 route_a1_to_a2
eventually "a1 drops a2's neighbour entry" "" 10 sh -c "nsenter --net=/run/netns/$TAG-a1 ip neigh show dev fkvxlan0 ${A2_CIDR%/24} | xargs"
eventually "a1 drops a2's forwarding entry" "0" 10 sh -c "nsenter --net=/run/netns/$TAG-a1 bridge fdb show dev fkvxlan0 | grep -c '$A2_MAC'"
check "the server dropped them too" "" "$(ip route show "$A2_CIDR" | xargs)"

out=$(in_ns a1 "$FERROKUBE" killall --data-dir "$E2E_DIR/a1" --run-dir "$E2E_DIR/a1-run" --pod-bridge fkpa1 2>&1)
check_contains "killall removes the VXLAN device" "removed link fkvxlan0" "$out"
AGENT_PID[a1]=
summary
