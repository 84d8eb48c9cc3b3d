#!/usr/bin/env bash
# Resource metrics benchmark (root, containerd, the release binary, kubectl): a server with its
# node and 30 running pods.
#   NodeMetrics latency   GET /apis/metrics.k8s.io/v1beta1/nodes (computed from the kubelets'
#                         scrapes), 300 requests on one kept-alive HTTPS connection, p50/p99,
#                         divided by GET /api/v1/nodes/<node> (a stored object) the same way
#   stats collection CPU  the server process's CPU time (it holds the kubelet) for 100 scrapes
#                         of the kubelet's /metrics/resource (CRI ListContainerStats, cgroups)
#                         minus 100 of its /healthz on the same path, per scrape and per pod
# Usage: bash bench/metrics.sh [path to ferrokube] (default target/release/ferrokube).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=$(readlink -f "${1:-${CARGO_TARGET_DIR:-target}/release/ferrokube}")
KUBECTL=${KUBECTL:-$(command -v kubectl || echo .tools/bin/kubectl)}
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release first" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
D=$(mktemp -d /tmp/fk-bench-metrics.XXXXXX)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export KUBECONFIG=$D/kubeconfig
PODS=30
SERVER=
k() { "$KUBECTL" "$@"; }
cleanup() {
  k delete pods --all --grace-period=1 --wait=false >/dev/null 2>&1
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  "$BIN" killall --data-dir "$D/data" --run-dir "$D/run" --pod-bridge fkbm0 >/dev/null 2>&1
  rm -rf "$D"
}
trap cleanup EXIT
mkdir -p "$D/data/images"
python3 tests/images/mkimage.py "$D/data/images/busybox.tar" docker.io/library/busybox:bench >/dev/null
"$BIN" server --data-dir "$D/data" --https-listen-port "$PORT" --bind-address 127.0.0.1 --write-kubeconfig "$KUBECONFIG" --run-dir "$D/run" \
  --node-name bench-node --pod-cidr 10.42.251.0/24 --pod-bridge fkbm0 --metric-resolution 2s --kubelet-root-dir "$D/kubelet" >"$D/server.log" 2>&1 &
SERVER=$!
until k get node bench-node >/dev/null 2>&1; do sleep 0.1; done
for i in $(seq $PODS); do
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: p%s}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers: [{name: c, image: docker.io/library/busybox:bench, imagePullPolicy: IfNotPresent, command: [sleep, "3600"]}]\n' "$i"
  echo ---
done | k apply -f - >/dev/null
k wait --for=condition=Ready pod --all --timeout=180s >/dev/null || { echo "pods did not start" >&2; exit 1; }
# Two scrapes make rates: wait until every pod has metrics.
until [ "$(k get --raw /apis/metrics.k8s.io/v1beta1/namespaces/default/pods | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["items"]))')" = "$PODS" ]; do sleep 1; done

# One kept-alive HTTPS connection with the admin's client certificate; prints per-request ms.
cat >"$D/get.py" <<'PY'
import http.client, json, ssl, sys, time, base64, os, tempfile
cfg = open(os.environ["KUBECONFIG"]).read()
def field(name):
    return base64.b64decode([l.split(": ", 1)[1] for l in cfg.splitlines() if l.strip().startswith(name + ":")][0])
d = tempfile.mkdtemp()
for n, f in (("ca", "certificate-authority-data"), ("crt", "client-certificate-data"), ("key", "client-key-data")):
    open(f"{d}/{n}", "wb").write(field(f))
ctx = ssl.create_default_context(cafile=f"{d}/ca")
ctx.load_cert_chain(f"{d}/crt", f"{d}/key")
c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[1]), context=ctx)
path, n = sys.argv[2], int(sys.argv[3])
out = []
for _ in range(n):
    t = time.perf_counter()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    out.append((time.perf_counter() - t) * 1000)
out.sort()
print(f"{out[len(out) // 2]:.3f} {out[len(out) * 99 // 100]:.3f}")
PY
lat() { python3 "$D/get.py" "$PORT" "$1" "$2"; }
read -r base50 base99 < <(lat /api/v1/nodes/bench-node 300)
read -r nm50 nm99 < <(lat /apis/metrics.k8s.io/v1beta1/nodes 300)
read -r pm50 pm99 < <(lat /apis/metrics.k8s.io/v1beta1/pods 300)

cpu() { awk '{print $14 + $15}' "/proc/$SERVER/stat"; }
HZ=$(getconf CLK_TCK)
c0=$(cpu); lat /api/v1/nodes/bench-node/proxy/healthz 100 >/dev/null; c1=$(cpu)
lat /api/v1/nodes/bench-node/proxy/metrics/resource 100 >/dev/null; c2=$(cpu)
read -r scrape50 scrape99 < <(lat /api/v1/nodes/bench-node/proxy/metrics/resource 100)
echo "ferrokube resource metrics benchmark ($PODS running pods on one node, 2 cores)"
echo "GET /api/v1/nodes/<node> (stored object, baseline): p50 $base50 ms  p99 $base99 ms"
echo "GET metrics.k8s.io NodeMetrics list:                p50 $nm50 ms  p99 $nm99 ms   ratio p50 $(python3 -c "print(f'{$nm50/$base50:.2f}')")"
echo "GET metrics.k8s.io PodMetrics list ($PODS pods):        p50 $pm50 ms  p99 $pm99 ms   ratio p50 $(python3 -c "print(f'{$pm50/$base50:.2f}')")"
echo "kubelet /metrics/resource through the API:          p50 $scrape50 ms  p99 $scrape99 ms"
python3 -c "
hz=$HZ; healthz=($c1-$c0)/hz; scrape=($c2-$c1)/hz
per=(scrape-healthz)/100
print(f'server CPU for 100 scrapes: {scrape*1000:.0f} ms (100 healthz on the same path: {healthz*1000:.0f} ms)')
print(f'stats collection: {per*1000:.2f} ms CPU per scrape, {per*1e6/$PODS:.0f} us per pod; at the default 15 s resolution {per/15*100:.3f}% of a core')
"
