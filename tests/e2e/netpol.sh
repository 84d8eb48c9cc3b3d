#!/usr/bin/env bash
# NetworkPolicies enforced on a real node (root: containerd, iptables): default deny,
# allow by pod label, by namespace label, by ipBlock with an exception, named ports and port
# ranges, egress deny that takes DNS with it unless DNS is allowed, removal restoring
# traffic, and upstream's validation messages through kubectl.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node

mkdir -p "$E2E_DIR/data/images"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/busybox.tar" "$IMAGE" >/dev/null
start_node || exit 1

# pod NS NAME LABELS: a pod serving "hello from NAME" on the named port http (8080) and on 9090.
pod() {
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $2, namespace: $1, labels: $3}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'mkdir -p /www && echo hello from $2 > /www/index.html && httpd -p 9090 -h /www && exec httpd -f -p 8080 -h /www']
    ports: [{name: http, containerPort: 8080}]
YAML
}
k create namespace shop >/dev/null
k create namespace tools >/dev/null
k label namespace tools team=ops >/dev/null
pod shop web '{app: web}'
pod shop client '{role: client}'
pod shop stranger '{role: stranger}'
pod tools probe '{app: probe}'
k -n shop wait --for=condition=Ready pod --all --timeout=90s >/dev/null && k -n tools wait --for=condition=Ready pod --all --timeout=60s >/dev/null || { not_ok "pods ready"; summary; exit 1; }
WEB=$(k -n shop get pod web -o jsonpath='{.status.podIP}')
STRANGER=$(k -n shop get pod stranger -o jsonpath='{.status.podIP}')
# reach NS FROM [PORT]: what FROM gets from web (the last line), or the failure.
reach() { k -n "$1" exec "$2" -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 2 $WEB ${3:-8080}" 2>/dev/null | tail -1 | tr -d '\r'; }
# resolves FROM: whether the cluster DNS answers FROM's query.
resolves() { timeout 20 "$KUBECTL" -n shop exec "$1" -- nslookup kubernetes.default.svc.cluster.local 2>/dev/null | grep -q '^Address: 10.43.0.1' && echo yes || echo no; }
# enforced: policies are written a moment after they are stored.
settle() { sleep 1.5; }

check "without policies every pod reaches web" "hello from web|hello from web|hello from web" "$(reach shop client)|$(reach shop stranger)|$(reach tools probe)"
check "and resolves names" "yes" "$(resolves client)"

k apply -f - >/dev/null <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec:
  podSelector: {}
YAML
settle
check "kubectl get netpol" "default-deny <none>" "$(k -n shop get netpol --no-headers | awk '{print $1, $2}')"
check "policyTypes defaulted to Ingress" "Ingress" "$(k -n shop get netpol default-deny -o jsonpath='{.spec.policyTypes}' | tr -d '[]"')"
check "default deny: a pod of the namespace cannot reach web" "" "$(reach shop client)"
check "nor one of another namespace" "" "$(reach tools probe)"
check "the node itself still can (probes)" "hello from web" "$(curl -s -m 2 "http://$WEB:8080/")"

k apply -f - >/dev/null <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
    - namespaceSelector: {matchLabels: {team: ops}}
    ports: [{port: http}]
YAML
settle
check "an allow by label lets the client in" "hello from web" "$(reach shop client)"
check "and not the stranger" "" "$(reach shop stranger)"
check "a namespaceSelector lets the ops namespace's pods in" "hello from web" "$(reach tools probe)"
check "only on the named port (http = 8080), not 9090" "" "$(reach shop client 9090)"
k label namespace tools team- >/dev/null
settle
check "a namespace label removed: its pods are out" "" "$(reach tools probe)"
k -n shop label pod stranger role=client --overwrite >/dev/null
settle
check "a pod label added: the stranger is let in" "hello from web" "$(reach shop stranger)"
k -n shop label pod stranger role=stranger --overwrite >/dev/null

k apply -f - >/dev/null <<YAML
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-block, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{ipBlock: {cidr: $NET.0/24, except: [$STRANGER/32]}}]
    ports: [{port: 9000, endPort: 9100}]
YAML
settle
check "an ipBlock over the pod range with a port range admits the probe on 9090" "hello from web" "$(reach tools probe 9090)"
check "but not its exception" "" "$(reach shop stranger 9090)"
k -n shop delete netpol web-from-block >/dev/null

# Egress: deny everything the client sends, DNS included; then allow DNS alone.
k apply -f - >/dev/null <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
YAML
settle
check "egress deny: the client reaches nothing" "" "$(reach shop client)"
check "not even the cluster DNS" "no" "$(resolves client)"
check "other pods still resolve" "yes" "$(resolves stranger)"
k apply -f - >/dev/null <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-dns, namespace: shop}
spec:
  podSelector: {matchLabels: {role: client}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
YAML
settle
check "DNS allowed by kube-dns's labels: it resolves" "yes" "$(resolves client)"
check "and still reaches no pod" "" "$(reach shop client)"
k apply -f - >/dev/null <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-web, namespace: shop}
spec:
  podSelector: {matchLabels: {role: client}}
  egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]
YAML
settle
check "egress by the peer's named port, with web's ingress allowing it: through" "hello from web" "$(reach shop client)"

# Bad input: upstream's messages.
check_contains "a peer with no selector is refused" 'spec.ingress[0].from[0]: Required value: must specify a peer' \
  "$(printf 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {podSelector: {}, ingress: [{from: [{}]}]}\n' | k apply -f - 2>&1)"
check_contains "an exception outside its cidr is refused" 'must be a strict subset of `cidr`' \
  "$(printf 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}}]}]}\n' | k apply -f - 2>&1)"

k -n shop delete netpol --all >/dev/null
settle
check "policies removed: traffic is back" "hello from web|hello from web|hello from web" "$(reach shop client)|$(reach shop stranger)|$(reach tools probe)"
check "and the per-pod chains are gone" "0" "$(iptables-save -t filter | grep -c '^:FKNP')"
summary
