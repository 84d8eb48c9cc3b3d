#!/usr/bin/env bash
# Service networking with a real containerd and real iptables (root): ClusterIP load
# balancing from the host and from a pod, NodePort and LoadBalancer on the node address,
# ClientIP affinity, a pod reaching itself through its service, connections refused when a
# service has no endpoints, and `ferrokube cleanup` removing ferrokube's rules (only those).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
mkdir -p "$E2E_DIR/data/images"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox.tar" "$IMAGE" >/dev/null || exit 1
# A rule that is not ours: cleanup must leave it alone.
iptables -w -t nat -N E2E-FOREIGN && iptables -w -t nat -A OUTPUT -d 192.0.2.123/32 -j E2E-FOREIGN
foreign_cleanup() { iptables -w -t nat -D OUTPUT -d 192.0.2.123/32 -j E2E-FOREIGN 2>/dev/null; iptables -w -t nat -X E2E-FOREIGN 2>/dev/null; node_cleanup; }
trap foreign_cleanup EXIT
start_node || exit 1

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

k delete pods,deploy --all --wait=true --timeout=60s >/dev/null 2>&1
stop_server TERM
check_cmd "ferrokube cleanup" "$FERROKUBE" cleanup --pod-bridge "$BRIDGE"
check "no ferrokube chain or rule is left" "0" "$(iptables-save | grep -cE 'FERROKUBE|FKSVC|FKSEP|FKLOC')"
check "nor the bridge" "" "$(ip -o link show "$BRIDGE" 2>/dev/null)"
check "a rule that is not ours is untouched" "1" "$(iptables-save -t nat | grep -c -- '-A OUTPUT -d 192.0.2.123/32 -j E2E-FOREIGN')"
summary
