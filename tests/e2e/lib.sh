# Shared helpers of the end-to-end scripts: start/stop a server, assertions, counters.
# Expects FERROKUBE (binary) and KUBECTL; sets KUBECONFIG.

PASS=0
FAIL=0
E2E_DIR=$(mktemp -d /tmp/ferrokube-e2e.XXXXXX)
# A port the kernel says is free (random picks can collide with ephemeral ports in use).
PORT=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
export KUBECONFIG=$E2E_DIR/kubeconfig
SERVER_PID=

# launch_server TRIES INTERVAL WHAT READY-CMD -- SERVER-ARGS...: starts `ferrokube server` on
# this run's data dir, port and kubeconfig, then waits until READY-CMD succeeds (TRIES x
# INTERVAL seconds at most) or the server exits; WHAT names the wait in the failure message.
launch_server() {
  local tries=$1 interval=$2 what=$3 ready=$4
  shift 4
  [ "${1:-}" = -- ] && shift
  "$FERROKUBE" server --data-dir "$E2E_DIR/data" --https-listen-port "$PORT" --bind-address "${BIND_ADDRESS:-127.0.0.1}" \
    --write-kubeconfig "$KUBECONFIG" "$@" >>"$E2E_DIR/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq "$tries"); do
    if eval "$ready" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep "$interval"
  done
  echo "$what; log:" >&2
  tail -20 "$E2E_DIR/server.log" >&2
  return 1
}

# The control plane alone, ready when /readyz answers.
start_server() {
  launch_server 100 0.05 "server did not become ready" 'curl -skf "https://127.0.0.1:$PORT/readyz"' -- --disable-agent "$@"
}

stop_server() {
  local sig=${1:-TERM}
  if [ -n "$SERVER_PID" ]; then
    kill -"$sig" "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}

cleanup() {
  stop_server KILL
  # A failed run keeps its server's log for the post-mortem (E2E_KEEP_LOG=1: every run).
  if { [ "$FAIL" -gt 0 ] || [ -n "${E2E_KEEP_LOG:-}" ]; } && [ -f "$E2E_DIR/server.log" ]; then
    cp "$E2E_DIR/server.log" "/tmp/$(basename "$0" .sh)-server.log" && echo "server log: /tmp/$(basename "$0" .sh)-server.log" >&2
  fi
  rm -rf "$E2E_DIR"
}
trap cleanup EXIT

ok() { PASS=$((PASS + 1)); echo "ok   - $1"; }
not_ok() { FAIL=$((FAIL + 1)); echo "FAIL - $1"; [ -n "${2:-}" ] && printf '       %s\n' "$2"; }

# check NAME EXPECTED ACTUAL
check() {
  if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1" "expected [$2] got [$3]"; fi
}

# check_contains NAME NEEDLE HAYSTACK
check_contains() {
  case "$3" in *"$2"*) ok "$1" ;; *) not_ok "$1" "[$2] not in [$3]" ;; esac
}

# check_cmd NAME CMD... : the command succeeds
check_cmd() {
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then ok "$name"; else not_ok "$name" "$out"; fi
}

# check_fails NAME CMD... : the command fails
check_fails() {
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then not_ok "$name" "unexpectedly succeeded: $out"; else ok "$name"; fi
}

k() { "$KUBECTL" "$@"; }

# curl_credentials: the admin's client certificate, key and the CA from the kubeconfig, for
# `api` (curl as the admin) against $BASE.
curl_credentials() {
  kc_field() { awk -v f="$1" '$1 == f":" {print $2}' "$KUBECONFIG" | base64 -d; }
  kc_field client-certificate-data >"$E2E_DIR/admin.crt"
  kc_field client-key-data >"$E2E_DIR/admin.key"
  kc_field certificate-authority-data >"$E2E_DIR/ca.crt"
  BASE="https://127.0.0.1:$PORT"
}
api() { curl -s --cacert "$E2E_DIR/ca.crt" --cert "$E2E_DIR/admin.crt" --key "$E2E_DIR/admin.key" "$@"; }

summary() {
  echo "$(basename "$0"): $PASS passed, $FAIL failed"
  [ "$FAIL" -eq 0 ]
}

# use_node: this suite runs a node (root): a bridge, pod CIDR and run dir of its own, the
# busybox test image name, start_node, and a cleanup that leaves nothing behind.
use_node() {
  if [ "$(id -u)" != 0 ]; then
    echo "$(basename "$0") needs root (containerd, network namespaces, iptables)" >&2
    exit 1
  fi
  BRIDGE=fke2e$((RANDOM % 100))
  CIDR=10.42.$((100 + RANDOM % 100)).0/24
  NET=${CIDR%.0/24}
  RUN=$E2E_DIR/run
  IMAGE=docker.io/library/busybox:e2e

  start_node() {
    launch_server 300 0.1 "node did not register" 'k get node e2e-node' -- \
      --run-dir "$RUN" --node-name e2e-node --pod-cidr "$CIDR" --pod-bridge "$BRIDGE" --kubelet-root-dir "$E2E_DIR/kubelet" "$@"
  }

  node_cleanup() {
    k delete pods --all --wait --timeout=60s >/dev/null 2>&1
    stop_server TERM
    # Whatever is left (pods of controllers that recreated them, a failed run's shims,
    # mounts, the bridge, our chains): killall takes it down.
    "$FERROKUBE" killall --data-dir "$E2E_DIR/data" --run-dir "$RUN" --pod-bridge "$BRIDGE" >/dev/null 2>&1
    pkill -f "containerd-shim.*$RUN" 2>/dev/null
    for m in $(awk -v d="$E2E_DIR" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r); do umount "$m" 2>/dev/null; done
    ip link del "$BRIDGE" 2>/dev/null
    cleanup
  }
  trap node_cleanup EXIT
}

# Pods across nodes (multinode.sh, vxlan.sh).
# web_pods NODE...: a pod web-NODE on each node, serving "hello from web-NODE" at / and 300 kB
# of x at /big on port 8080; checks that each runs.
web_pods() {
  local n
  for n in "$@"; do
    cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: web-$n, labels: {app: web}}
spec:
  nodeName: $n
  terminationGracePeriodSeconds: 1
  containers:
  - name: httpd
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'mkdir -p /www && echo "hello from \$(hostname)" > /www/index.html && head -c 300000 /dev/zero | tr "\\\\0" x > /www/big && exec httpd -f -p 8080 -h /www']
    ports: [{containerPort: 8080}]
YAML
  done
  for n in "$@"; do
    check_cmd "a pod runs on $n" k wait --for=condition=Ready "pod/web-$n" --timeout=90s
  done
}
pod_ip() { k get pod "$1" -o jsonpath='{.status.podIP}'; }
# http_get POD ADDRESS [PORT] [PATH]: the last line of the answer, fetched from inside POD
# (busybox's static wget crashes in getaddrinfo; nc speaks HTTP well enough).
http_get() { k exec "$1" -- sh -c "printf 'GET /${4:-} HTTP/1.0\r\n\r\n' | nc -w 3 $2 ${3:-8080}" 2>&1 | tail -1 | tr -d '\r'; }
# lookup POD NAME: the addresses NAME resolves to from inside POD.
lookup() { k exec "$1" -- nslookup "$2" 2>/dev/null | awk '/^Name:/ {found=1; next} found && /^Address/ {print $NF}' | sort | xargs; }
# check_sender_address DESCRIPTION FROM TO: a connection from pod FROM to pod TO (port 9001)
# arrives from FROM's pod address (no masquerade inside the pod network).
check_sender_address() {
  local to=$3
  k exec "$to" -- sh -c "setsid sh -c 'sleep 30 | nc -l -p 9001' </dev/null >/dev/null 2>&1 &"
  k exec "$2" -- sh -c "setsid sh -c 'sleep 30 | nc $(pod_ip "$to") 9001' </dev/null >/dev/null 2>&1 &"
  peer_of_9001() { k exec "$to" -- netstat -tn 2>/dev/null | awk '$4 ~ /:9001$/ && $6 == "ESTABLISHED" {sub(/:[0-9]+$/, "", $5); sub(/^::ffff:/, "", $5); print $5}' | head -1; }
  eventually "$1" "$(pod_ip "$2")" 10 peer_of_9001
}

# eventually NAME EXPECTED TIMEOUT CMD... : CMD prints EXPECTED within TIMEOUT seconds.
eventually() {
  local name=$1 want=$2 limit=$3 got
  shift 3
  local deadline=$((SECONDS + limit))
  while :; do
    got=$("$@" 2>&1)
    if [ "$got" = "$want" ]; then ok "$name"; return 0; fi
    if [ "$SECONDS" -ge "$deadline" ]; then not_ok "$name" "expected [$want] got [$got] after ${limit}s"; return 1; fi
    sleep 0.5
  done
}

# extension_certs DIR: a CA (DIR/ext-ca.crt) and a serving certificate for
# metrics-server.kube-system.svc signed by it (DIR/ext.crt, DIR/ext.key), as an extension
# API server behind an APIService presents; DIR/other-ca.crt is a CA that did not sign it.
extension_certs() {
  local d=$1
  mkdir -p "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ext-ca.key" -out "$d/ext-ca.crt" -days 1 -subj "/CN=ext-ca" 2>/dev/null
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/other-ca.key" -out "$d/other-ca.crt" -days 1 -subj "/CN=other-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$d/ext.key" -out "$d/ext.csr" -subj "/CN=metrics-server.kube-system.svc" 2>/dev/null
  printf 'subjectAltName=DNS:metrics-server.kube-system.svc\n' >"$d/ext.cnf"
  openssl x509 -req -in "$d/ext.csr" -CA "$d/ext-ca.crt" -CAkey "$d/ext-ca.key" -CAcreateserial -out "$d/ext.crt" -days 1 -extfile "$d/ext.cnf" 2>/dev/null
}

# metrics_apiservice CA-FILE [PORT]: the APIService of metrics.k8s.io/v1beta1, served by
# kube-system/metrics-server (PORT, default 443), trusting CA-FILE.
metrics_apiservice() {
  printf 'apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: v1beta1.metrics.k8s.io}\nspec:\n  group: metrics.k8s.io\n  version: v1beta1\n  groupPriorityMinimum: 100\n  versionPriority: 100\n  service: {name: metrics-server, namespace: kube-system, port: %s}\n  caBundle: %s\n' \
    "${2:-443}" "$(base64 -w0 <"$1")"
}

# standin_start DIR: a stand-in for the public registries on loopback, so that pods naming
# `busybox`, `nginx` or `gcr.io/google_containers/pause` (pulled Always, no tag) get local
# images: a CA added to the host's trust store, a certificate for the registries' names, those
# names on a 127.0.0.1 line in /etc/hosts, docker-registry serving TLS on 127.0.0.1:443, and
# the stand-in images pushed (busybox; nginx = busybox httpd serving /usr/share/nginx/html on
# :80; pause = a shell that sleeps until SIGTERM). Must run before containerd starts (it reads
# the trust store once). standin_stop puts the host back.
STANDIN_NAMES="registry-1.docker.io index.docker.io docker.io gcr.io registry.k8s.io quay.io"
standin_start() {
  local d=$1 images=$(dirname "${BASH_SOURCE[0]}")/../images
  mkdir -p "$d/data"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.crt" -days 1 -subj "/CN=ferrokube e2e registry CA" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout "$d/registry.key" -out "$d/registry.csr" -subj "/CN=docker.io" 2>/dev/null
  printf 'subjectAltName=%s\n' "$(for n in $STANDIN_NAMES; do printf 'DNS:%s,' "$n"; done | sed 's/,$//')" >"$d/registry.cnf"
  openssl x509 -req -in "$d/registry.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -out "$d/registry.crt" -days 1 -extfile "$d/registry.cnf" 2>/dev/null || return 1
  cp "$d/ca.crt" /usr/local/share/ca-certificates/ferrokube-e2e-registry.crt && update-ca-certificates >/dev/null 2>&1 || return 1
  echo "127.0.0.1 $STANDIN_NAMES # ferrokube e2e registry stand-in" >>/etc/hosts
  printf 'version: 0.1\nstorage: {filesystem: {rootdirectory: %s}}\nhttp:\n  addr: 127.0.0.1:443\n  tls: {certificate: %s, key: %s}\n' "$d/data" "$d/registry.crt" "$d/registry.key" >"$d/config.yml"
  docker-registry serve "$d/config.yml" >"$d/log" 2>&1 &
  for _ in $(seq 50); do curl -s --cacert "$d/ca.crt" https://docker.io/v2/ >/dev/null && break; sleep 0.1; done
  python3 "$images/mkimage.py" "$d/busybox.tar" docker.io/library/busybox:latest >/dev/null &&
    python3 "$images/mkimage.py" "$d/nginx.tar" docker.io/library/nginx:latest --cmd '["httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"]' \
      --file "usr/share/nginx/html/index.html=<html><body>nginx stand-in</body></html>" >/dev/null &&
    python3 "$images/mkimage.py" "$d/pause.tar" gcr.io/google_containers/pause:latest --cmd '["/bin/sh", "-c", "trap \"exit 0\" TERM; while :; do sleep 1; done"]' >/dev/null || return 1
  SSL_CERT_FILE=$d/ca.crt python3 "$images/push.py" "$d/busybox.tar" https://docker.io library/busybox:latest >/dev/null &&
    SSL_CERT_FILE=$d/ca.crt python3 "$images/push.py" "$d/nginx.tar" https://docker.io library/nginx:latest >/dev/null &&
    SSL_CERT_FILE=$d/ca.crt python3 "$images/push.py" "$d/pause.tar" https://gcr.io google_containers/pause:latest >/dev/null
}
standin_stop() {
  local d=$1
  pkill -f "docker-registry serve $d/config.yml" 2>/dev/null
  # (In place: /etc/hosts may be a bind mount that cannot be replaced.)
  sed -i '/# ferrokube e2e registry stand-in$/d' /etc/hosts
  if [ -f /usr/local/share/ca-certificates/ferrokube-e2e-registry.crt ]; then
    rm -f /usr/local/share/ca-certificates/ferrokube-e2e-registry.crt
    update-ca-certificates --fresh >/dev/null 2>&1
  fi
}

# A three-member etcd cluster on loopback, TLS for clients and peers (etcd.sh).
# etcd_cluster DIR: CA, member and client certificates in DIR/pki (ca.crt, member.crt/key,
# client.crt/key), members m1..m3 with client ports ETCD_PORT[1..3]; ETCD_ENDPOINTS lists them.
etcd_cluster() {
  ETCD_DIR=$1
  local pki=$ETCD_DIR/pki i
  mkdir -p "$pki"
  ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$pki/$1.key" -subj "/CN=$2" "${@:3}" 2>/dev/null; }
  ec ca etcd-ca -x509 -days 30 -out "$pki/ca.crt" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
  for who in member client; do
    ec "$who" "etcd-$who" -out "$pki/$who.csr"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' >"$pki/$who.ext"
    openssl x509 -req -in "$pki/$who.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 30 -extfile "$pki/$who.ext" -out "$pki/$who.crt" 2>/dev/null
  done
  ETCD_PORT=()
  ETCD_PEER=()
  local cluster=
  for i in 1 2 3; do
    ETCD_PORT[i]=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    ETCD_PEER[i]=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    cluster+=${cluster:+,}m$i=https://127.0.0.1:${ETCD_PEER[i]}
  done
  ETCD_CLUSTER=$cluster
  ETCD_ENDPOINTS=https://127.0.0.1:${ETCD_PORT[1]},https://127.0.0.1:${ETCD_PORT[2]},https://127.0.0.1:${ETCD_PORT[3]}
  ETCD_PIDS=()
  for i in 1 2 3; do etcd_start "$i" new; done
  for _ in $(seq 100); do etcdctl_ endpoint health >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "etcd did not become healthy" >&2
  tail -5 "$ETCD_DIR"/m*.log >&2
  return 1
}

# etcd_start I [new|existing]: (re)starts member I.
etcd_start() {
  local i=$1 pki=$ETCD_DIR/pki
  etcd --name "m$i" --data-dir "$ETCD_DIR/m$i" \
    --listen-client-urls "https://127.0.0.1:${ETCD_PORT[$i]}" --advertise-client-urls "https://127.0.0.1:${ETCD_PORT[$i]}" \
    --listen-peer-urls "https://127.0.0.1:${ETCD_PEER[$i]}" --initial-advertise-peer-urls "https://127.0.0.1:${ETCD_PEER[$i]}" \
    --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state "${2:-existing}" --initial-cluster-token ferrokube-e2e \
    --cert-file "$pki/member.crt" --key-file "$pki/member.key" --trusted-ca-file "$pki/ca.crt" --client-cert-auth \
    --peer-cert-file "$pki/member.crt" --peer-key-file "$pki/member.key" --peer-trusted-ca-file "$pki/ca.crt" --peer-client-cert-auth \
    >>"$ETCD_DIR/m$i.log" 2>&1 &
  ETCD_PIDS[i]=$!
}

# etcd_stop I [SIGNAL]
etcd_stop() {
  kill -"${2:-TERM}" "${ETCD_PIDS[$1]}" 2>/dev/null
  wait "${ETCD_PIDS[$1]}" 2>/dev/null
}

etcdctl_() {
  ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" --cacert "$ETCD_DIR/pki/ca.crt" --cert "$ETCD_DIR/pki/client.crt" --key "$ETCD_DIR/pki/client.key" "$@"
}

# The flags that put a server's datastore on this cluster.
etcd_flags() {
  echo --datastore-endpoint "$ETCD_ENDPOINTS" --datastore-cafile "$ETCD_DIR/pki/ca.crt" --datastore-certfile "$ETCD_DIR/pki/client.crt" --datastore-keyfile "$ETCD_DIR/pki/client.key"
}
