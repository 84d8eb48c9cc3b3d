#!/usr/bin/env bash
# Admission webhooks with kubectl v1.35: a validating webhook reached by URL that refuses
# with its message (shown by kubectl), warns, and sees the request as upstream sends it
# (user, operation, dryRun, oldObject); namespace and object selectors; a mutating webhook
# behind a Service (a hand-written EndpointSlice to a host process, as the aggregation suite
# does) that adds labels, with reinvocation; deletes refused; failurePolicy Fail vs Ignore
# when the webhook is down, too slow or answers for another request; the configurations
# themselves never sent to webhooks; bad configurations refused field by field.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
start_server || exit 1

# A CA and the webhook's serving certificate (its loopback address and its Service's name).
d=$E2E_DIR/hook
mkdir -p "$d"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/ca.key" -out "$d/ca.crt" -days 1 -subj "/CN=hook-ca" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$d/tls.key" -out "$d/tls.csr" -subj "/CN=webhook.hooks.svc" 2>/dev/null
printf 'subjectAltName=DNS:webhook.hooks.svc,IP:127.0.0.1\n' >"$d/ext.cnf"
openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -out "$d/tls.crt" -days 1 -extfile "$d/ext.cnf" 2>/dev/null
CA=$(base64 -w0 <"$d/ca.crt")
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HOOK_PORT=$(free_port)
DOWN_PORT=$(free_port)
python3 "$(dirname "$0")/admission_webhook.py" "$HOOK_PORT" "$d/tls.crt" "$d/tls.key" >"$E2E_DIR/hook.log" 2>&1 &
HOOK_PID=$!
trap 'kill $HOOK_PID 2>/dev/null; cleanup' EXIT
for _ in $(seq 50); do curl -sk -o /dev/null "https://127.0.0.1:$HOOK_PORT/" && break; sleep 0.1; done
last_review() { tail -1 "$E2E_DIR/hook.log"; }
field() { python3 -c 'import json,sys; d=json.load(sys.stdin)["request"]; print(*[eval(e, {"r": d}) for e in sys.argv[1:]])' "$@"; }

check "webhook configurations are served" "mutatingwebhookconfigurations validatingwebhookconfigurations" \
  "$(k api-resources --api-group=admissionregistration.k8s.io -o name | sed 's/\..*//' | sort | xargs)"
check_contains "an http URL is refused in upstream's words" "webhooks[0].clientConfig.url: Invalid value: \"http://127.0.0.1/\": 'https' is the only allowed URL scheme" \
  "$(printf 'apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: bad}\nwebhooks: [{name: bad.example.com, admissionReviewVersions: [v1], sideEffects: None, clientConfig: {url: "http://127.0.0.1/"}}]\n' | k apply -f - 2>&1)"
check_contains "sideEffects is required" 'webhooks[0].sideEffects: Unsupported value: null: supported values: "None", "NoneOnDryRun"' \
  "$(printf 'apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: bad}\nwebhooks: [{name: bad.example.com, admissionReviewVersions: [v1], clientConfig: {url: "https://127.0.0.1/"}}]\n' | k apply -f - 2>&1)"

# A validating webhook by URL, for ConfigMaps in namespaces labelled webhooks=on.
k apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: deny}
webhooks:
- name: deny.example.com
  admissionReviewVersions: [v1]
  sideEffects: None
  clientConfig: {url: "https://127.0.0.1:$HOOK_PORT/validate", caBundle: "$CA"}
  rules: [{operations: [CREATE, UPDATE, DELETE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}]
  namespaceSelector: {matchLabels: {webhooks: "on"}}
YAML
check "kubectl lists it with its webhook count" "deny 1" "$(k get validatingwebhookconfigurations deny --no-headers | awk '{print $1, $2}')"
check "defaults are upstream's" "Fail Equivalent 10 *" "$(k get validatingwebhookconfigurations deny -o jsonpath='{.webhooks[0].failurePolicy} {.webhooks[0].matchPolicy} {.webhooks[0].timeoutSeconds} {.webhooks[0].rules[0].scope}')"
k create ns guarded >/dev/null
k label ns guarded webhooks=on >/dev/null
k create ns open >/dev/null
cm() { printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: %s, labels: {%s}}\n' "$1" "$2" "$3"; }
check "the webhook's refusal is shown by kubectl" \
  'Error from server (Forbidden): error when creating "STDIN": admission webhook "deny.example.com" denied the request: objects labelled deny=yes are not allowed here' \
  "$(cm bad guarded 'deny: "yes"' | k apply -f - 2>&1)"
check "nothing was stored" "NotFound" "$(k -n guarded get cm bad 2>&1 | grep -o NotFound)"
check "what the webhook was sent" "CREATE guarded bad system:admin False v1 ConfigMap" \
  "$(last_review | field 'r["operation"]' 'r["namespace"]' 'r["name"]' 'r["userInfo"]["username"]' 'r["dryRun"]' 'r["object"]["apiVersion"]' 'r["kind"]["kind"]')"
check "its path carries the timeout" "/validate?timeout=10s" "$(tail -1 "$E2E_DIR/hook.log" | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])')"
out=$(cm good guarded 'team: "a"' | k apply -f - 2>&1)
check "an allowed object is stored, with the webhook's warning" "Warning: seen by the validating webhook configmap/good created" "$(echo $out)"
check "namespaces outside the selector are not sent to it" "configmap/bad created" "$(cm bad open 'deny: "yes"' | k apply -f - 2>&1)"
check_contains "updates are sent too, with the old object" 'admission webhook "deny.example.com" denied the request: objects labelled deny=yes are not allowed here' \
  "$(k -n guarded label cm good deny=yes 2>&1)"
check "the update request carries both versions" "UPDATE a None yes" "$(last_review | field 'r["operation"]' 'r["oldObject"]["metadata"]["labels"]["team"]' 'r["oldObject"]["metadata"]["labels"].get("deny")' 'r["object"]["metadata"]["labels"]["deny"]')"
k -n guarded create cm dry --from-literal=a=b --dry-run=server >/dev/null 2>&1
check "dry runs say so" "True" "$(last_review | field 'r["dryRun"]')"
k -n guarded label cm good keep=yes >/dev/null 2>&1
check_contains "deletes are sent with the old object, and may be refused" 'admission webhook "deny.example.com" denied the request: this object is labelled keep=yes' \
  "$(k -n guarded delete cm good 2>&1)"
check "the refused object is still there" "good" "$(k -n guarded get cm good -o jsonpath='{.metadata.name}')"

# Object selectors, and a mutating webhook behind a Service.
k create ns hooks >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: webhook, namespace: hooks}
spec: {ports: [{name: https, port: 443, targetPort: $HOOK_PORT}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: webhook-1, namespace: hooks, labels: {kubernetes.io/service-name: webhook}}
addressType: IPv4
endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]
ports: [{name: https, port: $HOOK_PORT, protocol: TCP}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: a-label}
webhooks:
- name: label.example.com
  admissionReviewVersions: [v1]
  sideEffects: None
  reinvocationPolicy: IfNeeded
  clientConfig: {service: {name: webhook, namespace: hooks, path: /mutate}, caBundle: "$CA"}
  rules: [{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}]
  objectSelector: {matchLabels: {mutate: me}}
YAML
check "a mutating webhook behind a Service labels what it selects" "yes 1" "$(cm m1 open 'mutate: me' | k apply -f - >/dev/null 2>&1; k -n open get cm m1 -o jsonpath='{.metadata.labels.mutated} {.metadata.labels.round}')"
check "objects its selector does not match are left alone" "" "$(cm m2 open 'other: x' | k apply -f - >/dev/null 2>&1; k -n open get cm m2 -o jsonpath='{.metadata.labels.mutated}')"
k apply -f - >/dev/null <<YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: b-label}
webhooks:
- name: label-again.example.com
  admissionReviewVersions: [v1]
  sideEffects: None
  clientConfig: {url: "https://127.0.0.1:$HOOK_PORT/mutate", caBundle: "$CA"}
  rules: [{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [configmaps]}]
  objectSelector: {matchLabels: {mutate: me}}
YAML
check "a webhook with reinvocationPolicy IfNeeded runs again after a later one changed the object" "3" \
  "$(cm m3 open 'mutate: me' | k apply -f - >/dev/null 2>&1; k -n open get cm m3 -o jsonpath='{.metadata.labels.round}')"
cm m4 guarded 'mutate: me' | k apply -f - >/dev/null 2>&1
check "validating webhooks see the object as the mutating ones left it" "/validate?timeout=10s yes 3" \
  "$(tail -1 "$E2E_DIR/hook.log" | python3 -c 'import json,sys; d=json.load(sys.stdin); l=d["request"]["object"]["metadata"]["labels"]; print(d["path"], l.get("mutated"), l.get("round"))')"
k delete mutatingwebhookconfigurations a-label b-label >/dev/null

# When the webhook cannot be called.
hook() { # NAME PATH POLICY TIMEOUT PORT
  printf 'apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata: {name: %s}\nwebhooks:\n- name: %s.example.com\n  admissionReviewVersions: [v1]\n  sideEffects: None\n  failurePolicy: %s\n  timeoutSeconds: %s\n  clientConfig: {url: "https://127.0.0.1:%s%s", caBundle: "%s"}\n  rules: [{operations: ["*"], apiGroups: ["*"], apiVersions: ["*"], resources: ["*/*"]}]\n  objectSelector: {matchLabels: {probe: "%s"}}\n' \
    "$1" "$1" "$3" "$4" "$5" "$2" "$CA" "$1"
}
hook down /validate Fail 10 "$DOWN_PORT" | k apply -f - >/dev/null
check "failurePolicy Fail: a webhook that is down fails the request" \
  "Error from server (InternalError): error when creating \"STDIN\": Internal error occurred: failed calling webhook \"down.example.com\": failed to call webhook: Post \"https://127.0.0.1:$DOWN_PORT/validate?timeout=10s\": dial tcp 127.0.0.1:$DOWN_PORT: connect: connection refused" \
  "$(cm f1 open 'probe: down' | k apply -f - 2>&1)"
hook down /validate Ignore 10 "$DOWN_PORT" | k apply -f - >/dev/null
check "failurePolicy Ignore: the request goes on" "configmap/f1 created" "$(cm f1 open 'probe: down' | k apply -f - 2>&1)"
hook slow /slow Fail 1 "$HOOK_PORT" | k apply -f - >/dev/null
check "a webhook slower than its timeout fails the request" \
  "Internal error occurred: failed calling webhook \"slow.example.com\": failed to call webhook: Post \"https://127.0.0.1:$HOOK_PORT/slow?timeout=1s\": context deadline exceeded" \
  "$(cm s1 open 'probe: slow' | k apply -f - 2>&1 | sed 's/.*STDIN": //')"
hook uid /bad-uid Fail 10 "$HOOK_PORT" | k apply -f - >/dev/null
check_contains "an answer for another request fails it" 'failed calling webhook "uid.example.com": expected response.uid=' "$(cm u1 open 'probe: uid' | k apply -f - 2>&1)"
hook all /validate Fail 10 "$DOWN_PORT" | sed 's/  objectSelector.*//' | k apply -f - >/dev/null
check_contains "a webhook on everything that is down blocks writes" 'failed calling webhook "all.example.com"' "$(k -n open create cm blocked 2>&1)"
check "but its configuration can still be removed" 'validatingwebhookconfiguration.admissionregistration.k8s.io "all" deleted' "$(k delete validatingwebhookconfiguration all 2>&1)"
check "and writes work again" "configmap/unblocked created" "$(k -n open create cm unblocked 2>&1)"

summary
