#!/usr/bin/env bash
# The aggregation layer with kubectl v1.35 and curl: local APIServices for the built-in
# groups, an extension API server for metrics.k8s.io (tests/e2e/extension_apiserver.py, a
# host process behind a Service without selector and a hand-written EndpointSlice; the node
# suite runs one in a pod) registered with an APIService, every availability reason
# upstream reports on the way to Available, requests proxied with the caller's identity in
# the front-proxy headers, discovery and OpenAPI listing the group, and what happens when
# the Service goes away.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
start_server || exit 1
curl_credentials

check "apiservices columns" "NAME SERVICE AVAILABLE AGE" "$(k get apiservices | head -1 | xargs)"
check "every built-in group-version has a local APIService" "v1. Local True" "$(k get apiservice v1. --no-headers | awk '{print $1, $2, $3}')"
check "with upstream's priorities" "17800 15" "$(k get apiservice v1.apps -o jsonpath='{.spec.groupPriorityMinimum} {.spec.versionPriority}')"
check "and upstream's reason" "Local: Local APIServices are always available" "$(k get apiservice v1.apps -o jsonpath='{.status.conditions[0].reason}: {.status.conditions[0].message}')"
check "/apis in upstream's group order" "apiregistration.k8s.io apps events.k8s.io authentication.k8s.io authorization.k8s.io autoscaling" "$(k get --raw /apis | python3 -c 'import json,sys; print(*[g["name"] for g in json.load(sys.stdin)["groups"]][:6])')"
check_contains "an APIService name must be version.group" 'metadata.name: Invalid value: "metrics": must be `spec.version+"."+spec.group`' \
  "$(printf 'apiVersion: apiregistration.k8s.io/v1\nkind: APIService\nmetadata: {name: metrics}\nspec: {group: metrics.k8s.io, version: v1beta1, groupPriorityMinimum: 100, versionPriority: 100}\n' | k apply -f - 2>&1)"

# How extension servers authenticate the aggregator.
auth=$E2E_DIR/auth
mkdir -p "$auth"
for key in client-ca-file requestheader-allowed-names requestheader-client-ca-file requestheader-extra-headers-prefix requestheader-group-headers requestheader-username-headers; do
  k -n kube-system get cm extension-apiserver-authentication -o go-template="{{index .data \"$key\"}}" >"$auth/$key"
done
check "extension-apiserver-authentication names the front proxy" '["front-proxy-client"] ["X-Remote-User"] ["X-Remote-Group"] ["X-Remote-Extra-"]' \
  "$(cat "$auth/requestheader-allowed-names") $(cat "$auth/requestheader-username-headers") $(cat "$auth/requestheader-group-headers") $(cat "$auth/requestheader-extra-headers-prefix")"
check "with its own CA, not the cluster's" "different" "$(cmp -s "$auth/requestheader-client-ca-file" "$auth/client-ca-file" && echo same || echo different)"
check "and the cluster CA for client certificates" "same" "$(cmp -s "$auth/client-ca-file" "$E2E_DIR/ca.crt" && echo same || echo different)"

extension_certs "$E2E_DIR/ext"
EXT_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 "$(dirname "$0")/extension_apiserver.py" "$EXT_PORT" "$E2E_DIR/ext/ext.crt" "$E2E_DIR/ext/ext.key" "$auth" fk-node >"$E2E_DIR/ext.log" 2>&1 &
EXT_PID=$!
trap 'kill $EXT_PID 2>/dev/null; cleanup' EXIT
reason() { k get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.status.conditions[?(@.type=="Available")].status} {.status.conditions[?(@.type=="Available")].reason}: {.status.conditions[?(@.type=="Available")].message}'; }

metrics_apiservice "$E2E_DIR/ext/other-ca.crt" >"$E2E_DIR/apiservice.yaml"
check "the built-in resource metrics are a local APIService" "Local True" "$(k get apiservice v1beta1.metrics.k8s.io --no-headers | awk '{print $2, $3}')"
check "served here: an empty NodeMetricsList without nodes" "NodeMetricsList 0" "$(k get --raw /apis/metrics.k8s.io/v1beta1/nodes | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["kind"], len(d["items"]))')"
check_contains "metrics-server's APIService takes the group over" "apiservice.apiregistration.k8s.io/v1beta1.metrics.k8s.io configured" "$(k apply -f "$E2E_DIR/apiservice.yaml" 2>&1)"
eventually "without its Service: ServiceNotFound" 'False ServiceNotFound: service/metrics-server in "kube-system" is not present' 10 reason
k apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 4443, targetPort: 4443}]
YAML
eventually "a Service on another port: ServicePortError" 'False ServicePortError: service/metrics-server in "kube-system" is not listening on port 443' 10 reason
k -n kube-system patch svc metrics-server --type=json -p '[{"op": "replace", "path": "/spec/ports/0/port", "value": 443}]' >/dev/null
eventually "no EndpointSlice: EndpointsNotFound" 'False EndpointsNotFound: cannot find endpointslices for service/metrics-server in "kube-system"' 10 reason
slice() {
  printf 'apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: metrics-server-1, namespace: kube-system, labels: {kubernetes.io/service-name: metrics-server}}\naddressType: IPv4\nendpoints: [{addresses: [127.0.0.1], conditions: {ready: %s}}]\nports: [{name: https, port: %s, protocol: TCP}]\n' "$1" "$EXT_PORT"
}
slice false | k apply -f - >/dev/null
eventually "no ready endpoint: MissingEndpoints" 'False MissingEndpoints: endpointslices for service/metrics-server in "kube-system" have no addresses with port name "https"' 10 reason
slice true | k apply -f - >/dev/null
eventually "a certificate the caBundle did not sign: FailedDiscoveryCheck" "False FailedDiscoveryCheck: failing or missing response from https://127.0.0.1:$EXT_PORT/apis/metrics.k8s.io/v1beta1" 10 bash -c "$(declare -f reason k); reason | cut -d: -f1-4"
check "an unavailable group-version answers 503" "503 service unavailable" "$(api -o "$E2E_DIR/out" -w '%{http_code} ' "$BASE/apis/metrics.k8s.io/v1beta1"; cat "$E2E_DIR/out")"
metrics_apiservice "$E2E_DIR/ext/ext-ca.crt" | k apply -f - >/dev/null
eventually "the right caBundle: Available" "True Passed: all checks passed" 10 reason
check "kubectl get apiservices shows it Available" "kube-system/metrics-server True" "$(k get apiservice v1beta1.metrics.k8s.io --no-headers | awk '{print $2, $3}')"

# Requests through the API server, as the caller.
check "kubectl get --raw of the group-version, proxied" "APIResourceList metrics.k8s.io/v1beta1 nodes,pods" \
  "$(k get --raw /apis/metrics.k8s.io/v1beta1 | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["kind"], d["groupVersion"], ",".join(r["name"] for r in d["resources"]))')"
check_contains "the extension server saw the caller through the front proxy" "GET /apis/metrics.k8s.io/v1beta1 user=system:admin groups=system:masters,system:authenticated proxy=front-proxy-client" "$(cat "$E2E_DIR/ext.log")"
check_contains "and the aggregator's own checks as system:kube-aggregator" "user=system:kube-aggregator groups=system:masters proxy=front-proxy-client" "$(cat "$E2E_DIR/ext.log")"
check "kubectl get nodes.metrics.k8s.io" "fk-node" "$(k get nodes.metrics.k8s.io --no-headers 2>&1 | awk '{print $1}')"
check "identity headers a client sends are replaced" "system-admin" "$(api -H 'X-Remote-User: mallory' -H 'X-Remote-Group: system:masters' "$BASE/apis/metrics.k8s.io/v1beta1/nodes" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["metadata"]["labels"]["served-for"])')"
check "the extension server's errors come back as it sent them" "404 NotFound" "$(api -o "$E2E_DIR/out" -w '%{http_code} ' "$BASE/apis/metrics.k8s.io/v1beta1/nodes/elsewhere"; python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["reason"])' "$E2E_DIR/out")"
openssl req -new -newkey rsa:2048 -nodes -keyout "$E2E_DIR/ann.key" -subj "/CN=ann/O=ops" -out "$E2E_DIR/ann.csr" 2>/dev/null
printf 'apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {name: ann}\nspec:\n  signerName: kubernetes.io/kube-apiserver-client\n  request: %s\n  usages: [client auth]\n' "$(base64 -w0 <"$E2E_DIR/ann.csr")" | k apply -f - >/dev/null
k certificate approve ann >/dev/null
eventually "a user's certificate is issued" "yes" 10 bash -c "'$KUBECTL' get csr ann -o jsonpath='{.status.certificate}' | grep -q . && echo yes"
k get csr ann -o jsonpath='{.status.certificate}' | base64 -d >"$E2E_DIR/ann.crt"
as_ann() { k --client-certificate="$E2E_DIR/ann.crt" --client-key="$E2E_DIR/ann.key" "$@"; }
check_contains "an aggregated group is authorized by this server first" 'nodes.metrics.k8s.io is forbidden: User "ann" cannot list resource "nodes" in API group "metrics.k8s.io" at the cluster scope' "$(as_ann get --raw /apis/metrics.k8s.io/v1beta1/nodes 2>&1)"
k create clusterrole metrics-reader --verb=get,list --resource=nodes.metrics.k8s.io,pods.metrics.k8s.io >/dev/null 2>&1 ||
  printf 'apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: metrics-reader}\nrules: [{apiGroups: [metrics.k8s.io], resources: [nodes, pods], verbs: [get, list]}]\n' | k apply -f - >/dev/null
k create clusterrolebinding ann-metrics --clusterrole=metrics-reader --user=ann >/dev/null
as_ann get --raw /apis/metrics.k8s.io/v1beta1/nodes >/dev/null 2>&1
check_contains "another user reaches it as that user" "GET /apis/metrics.k8s.io/v1beta1/nodes user=ann groups=ops,system:authenticated proxy=front-proxy-client" "$(cat "$E2E_DIR/ext.log")"

# Discovery and OpenAPI.
check "/apis lists the group last (priority 100)" "metrics.k8s.io v1beta1" "$(k get --raw /apis | python3 -c 'import json,sys; g=json.load(sys.stdin)["groups"][-1]; print(g["name"], g["preferredVersion"]["version"])')"
check "/apis/metrics.k8s.io" "APIGroup metrics.k8s.io/v1beta1" "$(k get --raw /apis/metrics.k8s.io | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["kind"], d["preferredVersion"]["groupVersion"])')"
check_contains "kubectl api-resources lists its resources" "nodes metrics.k8s.io/v1beta1 false NodeMetrics" "$(k api-resources 2>&1 | awk '{print $1, $2, $3, $4}')"
disc() { api -H 'Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList' "$BASE/apis" | python3 -c 'import json,sys; g=[i for i in json.load(sys.stdin)["items"] if i["metadata"]["name"]=="metrics.k8s.io"][0]["versions"][0]; print(g["freshness"], *sorted(r["resource"] for r in g["resources"]))'; }
check "aggregated discovery includes it, Current" "Current nodes pods" "$(disc)"
check "the OpenAPI v3 index lists it" "yes" "$(k get --raw /openapi/v3 | python3 -c 'import json,sys; print("yes" if "apis/metrics.k8s.io/v1beta1" in json.load(sys.stdin)["paths"] else "no")')"

# The Service goes away.
k -n kube-system delete svc metrics-server >/dev/null
eventually "deleting the Service makes it unavailable (ServiceNotFound)" "kube-system/metrics-server False (ServiceNotFound)" 10 bash -c "'$KUBECTL' get apiservice v1beta1.metrics.k8s.io --no-headers | awk '{print \$2, \$3, \$4}'"
check_contains "requests get 503 ServiceUnavailable" "the server is currently unable to handle the request" "$(k get --raw /apis/metrics.k8s.io/v1beta1/nodes 2>&1)"
check "aggregated discovery marks it Stale" "Stale nodes pods" "$(disc)"
k delete apiservice v1beta1.metrics.k8s.io >/dev/null
check "without the APIService the built-in resource metrics answer again" "200 APIResourceList" "$(api -o "$E2E_DIR/out" -w '%{http_code} ' "$BASE/apis/metrics.k8s.io/v1beta1"; python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["kind"])' "$E2E_DIR/out")"

# Custom resources get local APIServices while served.
k apply -f - >/dev/null <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gizmos.example.net}
spec:
  group: example.net
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
  - {name: v1, served: true, storage: true, schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}}
YAML
crd_apiservice() { k get apiservice v1.example.net --no-headers 2>&1 | awk '{printf "%s %s ", $2, $3}'; k get apiservice v1.example.net -o jsonpath='{.metadata.labels.kube-aggregator\.kubernetes\.io/automanaged}' 2>&1; }
eventually "a CRD group gets a local APIService" "Local True true" 10 crd_apiservice
k delete crd gizmos.example.net >/dev/null
eventually "which goes with the CRD" "NotFound" 10 bash -c "'$KUBECTL' get apiservice v1.example.net 2>&1 | grep -o NotFound"

summary
