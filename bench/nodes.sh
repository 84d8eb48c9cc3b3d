#!/usr/bin/env bash
# Joined-node benchmark (root, containerd, the release binary, kubectl): a server and one
# agent in a network namespace on a test bridge, as tests/e2e/multinode.sh sets them up.
#   join      `ferrokube agent` start -> Node Ready (fresh data dir: discovery, three CSRs,
#             containerd start, registration), median of 5; beside the server's own node
#             (server start -> its Node Ready, in-process clients) in the same run
#   RSS       VmRSS of the agent process (containerd not counted) with 0 and 30 pods
#   RTT       pod-to-pod TCP echo round trip (1-byte messages on one connection, 2000 round
#             trips, median) from a pod on the server's node to a pod on the same node and
#             to one on the agent, client and server run in the pods' network namespaces
# Usage: bash bench/nodes.sh [path to ferrokube] (default target/release/ferrokube).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=$(readlink -f "${1:-${CARGO_TARGET_DIR:-target}/release/ferrokube}")
KUBECTL=${KUBECTL:-$(command -v kubectl || echo .tools/bin/kubectl)}
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
D=$(mktemp -d /tmp/fk-bench-nodes.XXXXXX)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LAN=fkbl$((RANDOM % 100)) NS=fkbn$((RANDOM % 100)) SUB=172.31.$((160 + RANDOM % 30))
SERVER_IP=$SUB.1 AGENT_IP=$SUB.2 CIDR=10.$((100 + RANDOM % 30)).0.0/16
export KUBECONFIG=$D/kubeconfig
SERVER= AGENT=
k() { "$KUBECTL" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
cleanup() {
  k delete pods --all --grace-period=1 --wait=false >/dev/null 2>&1
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  nsenter --net="/run/netns/$NS" "$BIN" killall --data-dir "$D/agent" --run-dir "$D/agent-run" --pod-bridge fkbpa >/dev/null 2>&1
  "$BIN" killall --data-dir "$D/data" --run-dir "$D/run" --pod-bridge fkbps >/dev/null 2>&1
  ip netns del "$NS" 2>/dev/null
  ip link del "v$NS" 2>/dev/null
  ip link del "$LAN" 2>/dev/null
  ip route | awk '/proto 107/ {print $1}' | while read -r r; do ip route del "$r" proto 107 2>/dev/null; done
  rm -rf "$D"
}
trap cleanup EXIT
ip link add "$LAN" type bridge && ip addr add "$SERVER_IP/24" dev "$LAN" && ip link set "$LAN" up
ip netns add "$NS"
ip link add "v$NS" type veth peer name eth0 netns "$NS"
ip link set "v$NS" master "$LAN" up
nsenter --net="/run/netns/$NS" sh -c "ip addr add $AGENT_IP/24 dev eth0 && ip link set lo up && ip link set eth0 up && ip route add default via $SERVER_IP"

ready() { [ "$(k get node "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; }
t0=$(now_ms)
"$BIN" server --data-dir "$D/data" --https-listen-port "$PORT" --write-kubeconfig "$KUBECONFIG" --run-dir "$D/run" \
  --node-name bench-server --node-ip "$SERVER_IP" --pod-bridge fkbps --cluster-cidr "$CIDR" --kubelet-root-dir "$D/kubelet" >"$D/server.log" 2>&1 &
SERVER=$!
until ready bench-server; do sleep 0.02; done
SERVER_MS=$(($(now_ms) - t0))
TOKEN=$(cat "$D/data/server/token")

# join: fresh data dirs, the Node deleted between runs.
joins=()
for i in 1 2 3 4 5; do
  rm -rf "$D/agent" "$D/agent-run"
  t0=$(now_ms)
  nsenter --net="/run/netns/$NS" "$BIN" agent --server "https://$SERVER_IP:$PORT" --token "$TOKEN" --data-dir "$D/agent" --run-dir "$D/agent-run" \
    --node-name bench-agent --node-ip "$AGENT_IP" --pod-bridge fkbpa --cluster-cidr "$CIDR" --kubelet-root-dir "$D/agent-kubelet" >"$D/agent.log" 2>&1 &
  AGENT=$!
  until ready bench-agent; do sleep 0.02; done
  joins+=($(($(now_ms) - t0)))
  if [ "$i" -lt 5 ]; then
    kill "$AGENT"; wait "$AGENT" 2>/dev/null; AGENT=
    nsenter --net="/run/netns/$NS" "$BIN" killall --data-dir "$D/agent" --run-dir "$D/agent-run" --pod-bridge fkbpa >/dev/null 2>&1
    k delete node bench-agent >/dev/null
  fi
done
JOIN_MS=$(printf '%s\n' "${joins[@]}" | sort -n | sed -n 3p)
rss() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
sleep 2
RSS0=$(rss "$AGENT")

# 30 pods on the agent (the embedded pause image).
for i in $(seq 30); do
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: p%s}\nspec:\n  nodeName: bench-agent\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 1\n  containers: [{name: c, image: docker.io/ferrokube/pause:1, imagePullPolicy: Never}]\n---\n' "$i"
done | k apply -f - >/dev/null
k wait --for=condition=Ready pod --all --timeout=180s >/dev/null
sleep 3
RSS30=$(rss "$AGENT")
k delete pods --all --grace-period=1 --wait >/dev/null

# RTT: two pods on the server's node, one on the agent; echo server and client in their netns.
for p in same:bench-server other:bench-agent client:bench-server; do
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: %s}\nspec:\n  nodeName: %s\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 1\n  containers: [{name: c, image: docker.io/ferrokube/pause:1, imagePullPolicy: Never}]\n---\n' "${p%%:*}" "${p##*:}"
done | k apply -f - >/dev/null
k wait --for=condition=Ready pod same other client --timeout=120s >/dev/null
pid_of() { # the pause process of a pod, found by its cgroup
  local uid; uid=$(k get pod "$1" -o jsonpath='{.metadata.uid}')
  grep -l "pod$uid" /proc/[0-9]*/cgroup 2>/dev/null | head -1 | cut -d/ -f3
}
cat >"$D/echo.py" <<'PY'
import socket, sys, time
if sys.argv[1] == "serve":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9009)); s.listen(1)
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(1)
        if not b: break
        c.sendall(b)
else:
    c = socket.create_connection((sys.argv[2], 9009)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(2000):
        t = time.perf_counter_ns(); c.sendall(b"x"); c.recv(1); times.append(time.perf_counter_ns() - t)
    times.sort(); print("%.1f" % (times[len(times) // 2] / 1000))
PY
rtt() { # rtt SERVER-POD: median microseconds from the client pod
  local spid cpid ip
  spid=$(pid_of "$1"); cpid=$(pid_of client); ip=$(k get pod "$1" -o jsonpath='{.status.podIP}')
  nsenter --net="/proc/$spid/ns/net" python3 "$D/echo.py" serve &
  local srv=$!
  sleep 0.5
  nsenter --net="/proc/$cpid/ns/net" python3 "$D/echo.py" connect "$ip"
  wait "$srv" 2>/dev/null
}
RTT_SAME=$(rtt same)
RTT_OTHER=$(rtt other)

echo "ferrokube node benchmark (2 cores, $(date -u +%F))"
echo "server start -> its own node Ready (in-process):   ${SERVER_MS} ms"
echo "agent start -> Node Ready (join, fresh), runs:     ${joins[*]} ms; median ${JOIN_MS} ms  (goal < 2000 ms)"
echo "join / server's own node start:                    $(python3 -c "print(round($JOIN_MS / $SERVER_MS, 2))")"
echo "agent RSS (containerd not counted), 0 pods:         ${RSS0} MB  (goal < 25 MB)"
echo "agent RSS, 30 pods:                                 ${RSS30} MB  (goal < 40 MB)"
echo "pod-to-pod TCP echo RTT, same node:                 ${RTT_SAME} us (median of 2000)"
echo "pod-to-pod TCP echo RTT, across nodes:              ${RTT_OTHER} us"
echo "ratio across / same node:                           $(python3 -c "print(round($RTT_OTHER / $RTT_SAME, 2))")"
