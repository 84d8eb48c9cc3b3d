#!/usr/bin/env bash
# Service networking with a real containerd and real iptables (root): ClusterIP load
# balancing from the host and from a pod, NodePort and LoadBalancer on the node address,
# ClientIP affinity, a pod reaching itself through its service, connections refused when a
# service has no endpoints; cluster DNS (service, headless and StatefulSet pod names, other
# names through an upstream resolver the test runs on loopback); an extension API server in
# a pod behind an APIService; and `ferrokube cleanup` removing ferrokube's rules (only those).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
mkdir -p "$E2E_DIR/data/images"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox.tar" "$IMAGE" >/dev/null || exit 1
# A rule that is not ours: cleanup must leave it alone.
iptables -w -t nat -N E2E-FOREIGN && iptables -w -t nat -A OUTPUT -d 192.0.2.123/32 -j E2E-FOREIGN
foreign_cleanup() { kill "${UPSTREAM_PID:-0}" 2>/dev/null; iptables -w -t nat -D OUTPUT -d 192.0.2.123/32 -j E2E-FOREIGN 2>/dev/null; iptables -w -t nat -X E2E-FOREIGN 2>/dev/null; node_cleanup; }
trap foreign_cleanup EXIT
# The "host resolver" for names outside the cluster: answers every A query with 203.0.113.7
# (and other types with no records).
python3 - "$E2E_DIR/upstream.port" >/dev/null 2>&1 <<'PY' &
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
while True:
    q, peer = s.recvfrom(512)
    end = 12
    while q[end] != 0:
        end += q[end] + 1
    question = q[12:end + 5]
    is_a = q[end + 1:end + 3] == b"\x00\x01"
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([203, 0, 113, 7]) if is_a else b""
    s.sendto(q[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, int(is_a), 0, 0) + question + answer, peer)
PY
UPSTREAM_PID=$!
for _ in $(seq 50); do [ -s "$E2E_DIR/upstream.port" ] && break; sleep 0.1; done
# Listening on every address makes the API reachable from pods (the kubernetes Service).
BIND_ADDRESS=0.0.0.0
start_node --dns-upstream "127.0.0.1:$(cat "$E2E_DIR/upstream.port")" || exit 1

k apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo}
spec:
  replicas: 3
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: $IMAGE
        imagePullPolicy: IfNotPresent
        command: [sh, -c, "hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        ports: [{name: http, containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
YAML
k expose deploy echo --port=80 --target-port=http >/dev/null
check_cmd "the backends roll out" k rollout status deploy/echo --timeout=120s
CIP=$(k get svc echo -o jsonpath='{.spec.clusterIP}')
eventually "three ready endpoints" "3" 30 sh -c "$KUBECTL get endpointslices -l kubernetes.io/service-name=echo -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}' | wc -w | tr -d ' '"

answers() { for _ in $(seq 40); do curl -s --max-time 2 "$1"; done | sort -u | xargs; }
spread=$(answers "http://$CIP/")
check "from the host, the ClusterIP reaches all 3 pods" "3" "$(echo "$spread" | wc -w | tr -d ' ')"
check_contains "answers come from the pods" "echo-" "$spread"

k run client --image=$IMAGE --image-pull-policy=IfNotPresent --overrides='{"spec": {"terminationGracePeriodSeconds": 1}}' -- sleep 3600 >/dev/null
k wait --for=condition=Ready pod/client --timeout=60s >/dev/null
# (busybox's static wget crashes in getaddrinfo; nc speaks HTTP well enough)
http_get() { k exec "$1" -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $2 80" | tail -1 | tr -d '\r'; }
check_contains "from a pod, the ClusterIP answers" "echo-" "$(http_get client "$CIP")"
from_pod=$(k exec client -- sh -c "for i in \$(seq 40); do printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $CIP 80 | tail -1; done" | tr -d '\r' | sort -u | grep -c echo-)
check "from a pod, repeated requests reach all 3 pods" "3" "$from_pod"

# Cluster DNS.
resolv=$(k exec client -- cat /etc/resolv.conf)
check_contains "pods get the cluster DNS as nameserver" "nameserver 10.43.0.10" "$resolv"
check_contains "with the namespace search path" "search default.svc.cluster.local svc.cluster.local cluster.local" "$resolv"
check_contains "and ndots:5" "options ndots:5" "$resolv"
lookup() { k exec "$1" -- nslookup "$2" 2>/dev/null | awk '/^Name:/ {found=1; next} found && /^Address/ {print $NF}' | sort | xargs; }
check "a service name resolves to its ClusterIP" "$CIP" "$(lookup client echo.default.svc.cluster.local)"
check_contains "and HTTP to the address of http://echo.default.svc.cluster.local answers" "echo-" "$(http_get client "$(lookup client echo.default.svc.cluster.local)")"
check "a name outside the cluster goes to the upstream resolver" "203.0.113.7" "$(lookup client www.example.test)"
# The API from inside: the kubernetes Service and its name lead to this server.
check "kubernetes.default resolves to the first service address" "10.43.0.1" "$(lookup client kubernetes.default.svc.cluster.local)"
check "a pod reaches the API server through the kubernetes Service" "open" "$(k exec client -- sh -c 'echo | nc -w 3 10.43.0.1 443 >/dev/null && echo open')"
check "pods see the kubernetes Service in their environment" "10.43.0.1 443" "$(k exec client -- sh -c 'echo $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT')"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: db}
spec: {clusterIP: None, selector: {app: db}, ports: [{name: tcp, port: 80}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 1
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "exec sleep 3600"]}]
YAML
check_cmd "a StatefulSet behind a headless service" k rollout status sts/db --timeout=90s
eventually "db-0.db resolves to the pod's IP" "$(k get pod db-0 -o jsonpath='{.status.podIP}')" 20 lookup client db-0.db.default.svc.cluster.local
check "the headless name lists the pod" "$(k get pod db-0 -o jsonpath='{.status.podIP}')" "$(lookup client db.default.svc.cluster.local)"
old_ip=$(k get pod db-0 -o jsonpath='{.status.podIP}')
k delete pod db-0 --wait=true >/dev/null
k wait --for=condition=Ready pod/db-0 --timeout=60s >/dev/null
new_ip=$(k get pod db-0 -o jsonpath='{.status.podIP}')
eventually "after the pod is recreated the name follows its new IP" "$new_ip" 20 lookup client db-0.db.default.svc.cluster.local
echo "       (db-0 moved from $old_ip to $new_ip)"

NODE_IP=$(k get node e2e-node -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
k patch svc echo -p '{"spec": {"type": "NodePort"}}' >/dev/null
NP=$(k get svc echo -o jsonpath='{.spec.ports[0].nodePort}')
eventually "NodePort on the node address" "yes" 20 sh -c "curl -s --max-time 2 http://$NODE_IP:$NP/ | grep -q echo- && echo yes"

k expose deploy echo --name=lb --type=LoadBalancer --port=8081 --target-port=http >/dev/null
eventually "a LoadBalancer gets the node address" "$NODE_IP" 20 k get svc lb -o jsonpath='{.status.loadBalancer.ingress[0].ip}'
eventually "and answers there" "yes" 20 sh -c "curl -s --max-time 2 http://$NODE_IP:8081/ | grep -q echo- && echo yes"
check_contains "kubectl shows it" "$NODE_IP" "$(k get svc lb)"

k patch svc echo -p '{"spec": {"sessionAffinity": "ClientIP"}}' >/dev/null
sleep 1
check "ClientIP affinity pins a client to one pod" "1" "$(answers "http://$CIP/" | wc -w | tr -d ' ')"
k patch svc echo -p '{"spec": {"sessionAffinity": "None"}}' >/dev/null

k scale deploy echo --replicas=1 >/dev/null
eventually "scaled to one endpoint" "1" 60 sh -c "$KUBECTL get endpointslices -l kubernetes.io/service-name=echo -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}' | wc -w | tr -d ' '"
only=$(k get endpointslices -l kubernetes.io/service-name=echo -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].targetRef.name}')
check "a pod reaches itself through its service (hairpin)" "$only" "$(http_get "$only" "$CIP")"

k scale deploy echo --replicas=0 >/dev/null
eventually "no endpoints left" "0" 60 sh -c "$KUBECTL get endpointslices -l kubernetes.io/service-name=echo -o jsonpath='{.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}' | wc -w | tr -d ' '"
sleep 1
start_t=$(date +%s%N)
curl -s --max-time 5 "http://$CIP/" >/dev/null; rc=$?
ms=$(( ($(date +%s%N) - start_t) / 1000000 ))
check "without endpoints the connection is refused" "7" "$rc"
check "at once, not after a timeout" "yes" "$([ "$ms" -lt 1000 ] && echo yes)"
k scale deploy echo --replicas=2 >/dev/null
eventually "back to 2, it serves again" "yes" 90 sh -c "curl -s --max-time 2 http://$CIP/ | grep -q echo- && echo yes"

# An extension API server in a pod (the host's python3 through hostPath mounts; its code
# from a ConfigMap, its certificate from a Secret, the aggregator's trust from
# extension-apiserver-authentication), registered for metrics.k8s.io.
extension_certs "$E2E_DIR/ext"
k -n kube-system create secret tls metrics-server-tls --cert="$E2E_DIR/ext/ext.crt" --key="$E2E_DIR/ext/ext.key" >/dev/null
k -n kube-system create configmap metrics-server-code --from-file="$(dirname "$0")/extension_apiserver.py" >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: metrics-server, namespace: kube-system, labels: {k8s-app: metrics-server}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [/usr/bin/python3, /srv/extension_apiserver.py, "4443", /tls/tls.crt, /tls/tls.key, /auth, e2e-node]
    ports: [{name: https, containerPort: 4443}]
    readinessProbe: {tcpSocket: {port: 4443}, periodSeconds: 1}
    volumeMounts:
    - {name: usr, mountPath: /usr, readOnly: true}
    - {name: lib, mountPath: /lib, readOnly: true}
    - {name: lib64, mountPath: /lib64, readOnly: true}
    - {name: code, mountPath: /srv}
    - {name: tls, mountPath: /tls}
    - {name: auth, mountPath: /auth}
  volumes:
  - {name: usr, hostPath: {path: /usr}}
  - {name: lib, hostPath: {path: /usr/lib}}
  - {name: lib64, hostPath: {path: /usr/lib64}}
  - {name: code, configMap: {name: metrics-server-code}}
  - {name: tls, secret: {secretName: metrics-server-tls}}
  - {name: auth, configMap: {name: extension-apiserver-authentication}}
---
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  selector: {k8s-app: metrics-server}
  ports: [{name: https, port: 443, targetPort: https}]
YAML
metrics_apiservice "$E2E_DIR/ext/ext-ca.crt" | k apply -f - >/dev/null
check_cmd "the extension server's pod gets ready" k -n kube-system wait --for=condition=Ready pod/metrics-server --timeout=60s
eventually "its APIService becomes Available" "kube-system/metrics-server True" 30 bash -c "'$KUBECTL' get apiservice v1beta1.metrics.k8s.io --no-headers | awk '{print \$2, \$3}'"
check "kubectl get --raw /apis/metrics.k8s.io/v1beta1 through the API server" "APIResourceList metrics.k8s.io/v1beta1" \
  "$(k get --raw /apis/metrics.k8s.io/v1beta1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["kind"], d["groupVersion"])')"
check_contains "the pod saw the caller in the front-proxy headers" "GET /apis/metrics.k8s.io/v1beta1 user=system:admin groups=system:masters,system:authenticated proxy=front-proxy-client" "$(k -n kube-system logs metrics-server)"
check "kubectl top node reads it" "e2e-node 250m" "$(k top node e2e-node --no-headers 2>&1 | awk '{print $1, $2}')"
k -n kube-system delete svc metrics-server >/dev/null
eventually "deleting the Service turns it unavailable" "False (ServiceNotFound)" 20 bash -c "'$KUBECTL' get apiservice v1beta1.metrics.k8s.io --no-headers | awk '{print \$3, \$4}'"
k delete apiservice v1beta1.metrics.k8s.io >/dev/null
k -n kube-system delete pod metrics-server --wait=true --timeout=60s >/dev/null

k delete pods,deploy --all --wait=true --timeout=60s >/dev/null 2>&1
stop_server TERM
check_cmd "ferrokube cleanup" "$FERROKUBE" cleanup --pod-bridge "$BRIDGE"
check "no ferrokube chain or rule is left" "0" "$(iptables-save | grep -cE 'FERROKUBE|FKSVC|FKSEP|FKLOC')"
check "nor the bridge" "" "$(ip -o link show "$BRIDGE" 2>/dev/null)"
check "a rule that is not ours is untouched" "1" "$(iptables-save -t nat | grep -c -- '-A OUTPUT -d 192.0.2.123/32 -j E2E-FOREIGN')"
summary
