#!/usr/bin/env bash
# kubectl v1.35 against `ferrokube server --disable-agent`: the everyday commands.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
start_server || exit 1

check_contains "version shows the server" "Server Version: v1.35" "$(k version 2>&1)"
check_contains "api-resources lists deployments" "deployments" "$(k api-resources 2>&1)"
check_contains "api-resources short names" "deploy" "$(k api-resources --api-group=apps 2>&1)"
check_contains "api-versions lists apps/v1" "apps/v1" "$(k api-versions 2>&1)"
check "built-in namespaces" "default kube-node-lease kube-public kube-system" "$(k get ns -o name | sed 's|namespace/||' | xargs)"
check_contains "get ns shows STATUS column" "STATUS" "$(k get ns 2>&1)"
check_cmd "create ns (protobuf body)" k create ns e2e
check "namespace is Active" "Active" "$(k get ns e2e -o jsonpath='{.status.phase}')"

cat >"$E2E_DIR/multi.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg
  namespace: e2e
  labels: {app: web, tier: front}
data:
  a: "1"
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: e2e
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: e2e
spec:
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
YAML
check_cmd "create -f multi-document YAML (default validation)" k create -f "$E2E_DIR/multi.yaml"
# (every namespace also holds the cluster CA in kube-root-ca.crt, as upstream)
eventually "the new namespace got its kube-root-ca.crt" "configmap/kube-root-ca.crt" 10 "$KUBECTL" -n e2e get cm kube-root-ca.crt -o name
check "get -o name" "configmap/cfg configmap/kube-root-ca.crt" "$(k -n e2e get cm -o name | xargs)"
check "get -o jsonpath" "1" "$(k -n e2e get cm cfg -o jsonpath='{.data.a}')"
check "get -o json" "ConfigMap" "$(k -n e2e get cm cfg -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kind"])')"
check_contains "get -o yaml" "namespace: e2e" "$(k -n e2e get cm cfg -o yaml)"
check "defaults applied to the deployment" "RollingUpdate/IfNotPresent/30" \
  "$(k -n e2e get deploy web -o jsonpath='{.spec.strategy.type}/{.spec.template.spec.containers[0].imagePullPolicy}/{.spec.template.spec.terminationGracePeriodSeconds}')"
check "get -l" "configmap/cfg" "$(k -n e2e get cm -l 'app=web,tier in (front,back)' -o name)"
check "get -l with no match" "" "$(k -n e2e get cm -l 'app,app!=web' -o name)"
check "get --field-selector" "configmap/cfg" "$(k -n e2e get cm --field-selector metadata.name=cfg -o name)"
check "--field-selector across namespaces" "e2e/cfg" "$(k get cm -A --field-selector metadata.namespace=e2e,metadata.name!=kube-root-ca.crt -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{end}')"
check_contains "get all shows the deployment and service" "deployment.apps/web" "$(k -n e2e get all 2>&1)"
check_contains "get all shows the service" "service/web" "$(k -n e2e get all 2>&1)"

check_cmd "label" k -n e2e label cm cfg extra=yes
check "label is there" "yes" "$(k -n e2e get cm cfg -o jsonpath='{.metadata.labels.extra}')"
check_cmd "annotate" k -n e2e annotate cm cfg note=hello
check "annotation is there" "hello" "$(k -n e2e get cm cfg -o jsonpath='{.metadata.annotations.note}')"
check_cmd "patch --type=merge" k -n e2e patch cm cfg --type=merge -p '{"data":{"b":"2"}}'
check_cmd "patch --type=json" k -n e2e patch cm cfg --type=json -p '[{"op":"add","path":"/data/c","value":"3"}]'
check "patches applied" "1 2 3" "$(k -n e2e get cm cfg -o jsonpath='{.data.a} {.data.b} {.data.c}')"
check_cmd "edit via KUBE_EDITOR" env KUBE_EDITOR="sed -i s/nginx:1.25/nginx:1.26/" "$KUBECTL" -n e2e edit deploy web
check "edit changed the image" "nginx:1.26" "$(k -n e2e get deploy web -o jsonpath='{.spec.template.spec.containers[0].image}')"
check "edit bumped the generation" "2" "$(k -n e2e get deploy web -o jsonpath='{.metadata.generation}')"
check "containers kept by the strategic merge" "1" "$(k -n e2e get deploy web -o jsonpath='{.spec.template.spec.containers[*].name}' | wc -w)"
check_cmd "scale" k -n e2e scale deploy web --replicas=4
check "scale applied" "4" "$(k -n e2e get deploy web -o jsonpath='{.spec.replicas}')"
check_cmd "create deployment (protobuf body)" k -n e2e create deployment gen --image=busybox:1.36
check_cmd "create secret (protobuf body)" k -n e2e create secret generic sec --from-literal=pw=s3cret
check "secret data is base64" "s3cret" "$(k -n e2e get secret sec -o jsonpath='{.data.pw}' | base64 -d)"

check_cmd "--dry-run=server create" k -n e2e create cm dry --from-literal=x=1 --dry-run=server
check_fails "dry run stored nothing" k -n e2e get cm dry

# A stale update is rejected with a conflict.
k -n e2e get cm cfg -o yaml >"$E2E_DIR/stale.yaml"
k -n e2e label cm cfg bump=1 >/dev/null
out=$(k replace -f "$E2E_DIR/stale.yaml" 2>&1)
check_contains "stale replace is a Conflict" "the object has been modified" "$out"

# Invalid input gets a clear error.
out=$(k -n e2e create cm Bad_Name 2>&1)
check_contains "invalid name is rejected with the field" "metadata.name: Invalid value" "$out"
out=$(printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n' | k -n e2e create -f - 2>&1)
check_contains "pod without containers is Invalid" "spec.containers: Required value" "$out"

# get -w prints ADDED/MODIFIED/DELETED as they happen.
k -n e2e get cm -w --output-watch-events >"$E2E_DIR/watch.out" 2>&1 &
WPID=$!
sleep 1
k -n e2e create cm watched --from-literal=a=b >/dev/null
k -n e2e label cm watched x=y >/dev/null
k -n e2e delete cm watched >/dev/null
for _ in $(seq 50); do grep -q DELETED "$E2E_DIR/watch.out" && break; sleep 0.1; done
kill $WPID 2>/dev/null; wait $WPID 2>/dev/null
check "get -w event sequence" "ADDED MODIFIED DELETED" "$(awk '$2 == "watched" {print $1}' "$E2E_DIR/watch.out" | xargs)"

# Finalizers hold a delete; delete --wait returns once they are gone.
k -n e2e create cm held --from-literal=a=b >/dev/null
k -n e2e patch cm held --type=merge -p '{"metadata":{"finalizers":["example.com/hold"]}}' >/dev/null
k -n e2e delete cm held --wait=false >/dev/null
check "object with a finalizer stays, marked for deletion" "true" "$(k -n e2e get cm held -o jsonpath='{.metadata.deletionTimestamp}' | grep -q . && echo true)"
( sleep 1; k -n e2e patch cm held --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null ) &
check_cmd "delete --wait returns after the finalizer is removed" k -n e2e delete cm held --wait --timeout=20s --ignore-not-found
check_fails "object is gone" k -n e2e get cm held

check_cmd "delete -f multi-document YAML" k delete -f "$E2E_DIR/multi.yaml" --wait
check_fails "deleted deployment is gone" k -n e2e get deploy web
check_cmd "delete ns --wait" k delete ns e2e --wait --timeout=30s
check_fails "namespace is gone" k get ns e2e

# Authentication: requests without credentials are system:anonymous, refused all but the
# health and version endpoints (RBAC's public-info-viewer); bad credentials are 401.
check "readyz is public" "ok" "$(curl -sk "https://127.0.0.1:$PORT/readyz")"
check "an anonymous list is 403" "403" "$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$PORT/api/v1/namespaces")"
check_contains "403 carries a Status" '"message":"namespaces is forbidden: User \"system:anonymous\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope","reason":"Forbidden"' "$(curl -sk "https://127.0.0.1:$PORT/api/v1/namespaces")"
check_contains "401 carries a Status" '"reason":"Unauthorized"' "$(curl -sk -H 'Authorization: Bearer nope' "https://127.0.0.1:$PORT/api/v1/namespaces")"
check "HTTP/2 is negotiated" "2" "$(curl -sk -o /dev/null -w '%{http_version}' "https://127.0.0.1:$PORT/version")"
check "HTTP/1.1 is served too" "1.1 200" "$(curl -sk --http1.1 -o /dev/null -w '%{http_version} %{http_code}' "https://127.0.0.1:$PORT/version")"
TOKEN=$(cat "$E2E_DIR/data/server/admin-token")
check "bearer token authenticates" "200" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "https://127.0.0.1:$PORT/api/v1/namespaces")"
check "wrong bearer token is 401" "401" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer nope" "https://127.0.0.1:$PORT/api/v1/namespaces")"

# Service accounts: the kubernetes Service, the CA in every namespace, TokenRequest, and
# tokens that authenticate only while their service account exists.
check "the kubernetes Service holds the first service address" "10.43.0.1 443/TCP" "$(k get svc kubernetes -o jsonpath='{.spec.clusterIP} {.spec.ports[0].port}/{.spec.ports[0].protocol}')"
k create ns sa-test >/dev/null
eventually "every namespace gets the cluster CA" "$(cat "$E2E_DIR/data/server/tls/ca.crt")" 10 "$KUBECTL" -n sa-test get cm kube-root-ca.crt -o jsonpath='{.data.ca\.crt}'
eventually "every namespace gets a default ServiceAccount" "default" 10 "$KUBECTL" -n sa-test get sa default -o jsonpath='{.metadata.name}'
k -n sa-test create sa robot >/dev/null
SATOKEN=$(k -n sa-test create token robot 2>&1)
check "kubectl create token returns a JWT" "3" "$(echo "$SATOKEN" | awk -F. '{print NF}')"
kid=$(python3 -c 'import sys, base64, json; h = sys.argv[1].split(".")[0]; print(json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))["kid"])' "$SATOKEN" 2>&1)
check "the issuer's JWKS holds the key the token names" "$kid" "$(k get --raw /openid/v1/jwks | python3 -c 'import json, sys; print(json.load(sys.stdin)["keys"][0]["kid"])')"
check "OIDC discovery names the issuer" "https://kubernetes.default.svc.cluster.local" "$(k get --raw /.well-known/openid-configuration | python3 -c 'import json, sys; print(json.load(sys.stdin)["issuer"])')"
check "a service-account token authenticates (discovery is every user's)" "200" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $SATOKEN" "https://127.0.0.1:$PORT/apis")"
check "and gets only what RBAC grants it" "403" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $SATOKEN" "https://127.0.0.1:$PORT/api/v1/namespaces/sa-test/configmaps")"
check_contains "token lifetime under 10 minutes is refused" "may not specify a duration less than 10 minutes" "$(k -n sa-test create token robot --duration=5m 2>&1)"
check_contains "a token for a missing service account is NotFound" 'serviceaccounts "ghost" not found' "$(k -n sa-test create token ghost 2>&1)"
check_contains "a token bound to a missing pod is refused" 'pods "nopod" not found' "$(k -n sa-test create token robot --bound-object-kind=Pod --bound-object-name=nopod 2>&1)"
tampered="${SATOKEN%.*}.$(echo "${SATOKEN##*.}" | rev)"
check "a tampered token is 401" "401" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tampered" "https://127.0.0.1:$PORT/api/v1/namespaces")"
k -n sa-test delete sa robot >/dev/null
check "the token stops working when its service account is deleted" "401" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $SATOKEN" "https://127.0.0.1:$PORT/api/v1/namespaces")"
k -n sa-test run p --image=busybox --restart=Never >/dev/null
check "pods get the service-account volume mounted" "/var/run/secrets/kubernetes.io/serviceaccount true" "$(k -n sa-test get pod p -o jsonpath='{.spec.containers[0].volumeMounts[0].mountPath} {.spec.containers[0].volumeMounts[0].readOnly}')"
check "the volume projects token, CA and namespace" "token kube-root-ca.crt namespace" "$(k -n sa-test get pod p -o jsonpath='{.spec.volumes[0].projected.sources[0].serviceAccountToken.path} {.spec.volumes[0].projected.sources[1].configMap.name} {.spec.volumes[0].projected.sources[2].downwardAPI.items[0].path}')"
k -n sa-test run q --image=busybox --restart=Never --overrides='{"spec":{"automountServiceAccountToken":false}}' >/dev/null
check "automountServiceAccountToken: false mounts nothing" "" "$(k -n sa-test get pod q -o jsonpath='{.spec.volumes}')"
k delete ns sa-test --wait=false >/dev/null

python3 -c "import json; print(json.dumps({'apiVersion':'v1','kind':'ConfigMap','metadata':{'name':'big'},'data':{'k':'a'*4000000}}))" >"$E2E_DIR/big.json"
check_contains "a body over 3 MiB is refused over HTTP/2 (kubectl)" "RequestEntityTooLarge" "$(k create -f "$E2E_DIR/big.json" --validate=false 2>&1)"
out=$(curl -sk --http1.1 -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' --data-binary @"$E2E_DIR/big.json" -w ' %{http_code}' "https://127.0.0.1:$PORT/api/v1/namespaces/default/configmaps")
check_contains "a body over 3 MiB is 413 with a Status over HTTP/1.1" '"reason":"RequestEntityTooLarge","code":413}
 413' "$out"
check_fails "the oversized object was not stored" k get cm big

# A List file (what `kubectl get -o yaml` writes) is validated by kubectl against
# /openapi/v2 in protobuf before it is applied.
k create configmap listed-a --from-literal=k=a >/dev/null
k create configmap listed-b --from-literal=k=b >/dev/null
k get cm listed-a listed-b -o yaml > "$E2E_DIR/list.yaml"
k delete cm listed-a listed-b >/dev/null
check_contains "kubectl apply -f of a List (get -o yaml output)" "configmap/listed-b created" "$(k apply -f "$E2E_DIR/list.yaml" 2>&1)"
check "both items are back" "a b" "$(k get cm listed-a listed-b -o jsonpath='{.items[*].data.k}')"
printf '%s' '{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"listed-c"},"bogus":1}]}' > "$E2E_DIR/badlist.json"
check_contains "a List item's unknown field is caught by kubectl's validation" 'unknown field "bogus" in io.k8s.api.core.v1.ConfigMap' "$(k create -f "$E2E_DIR/badlist.json" 2>&1)"
curl_credentials
check_contains "/openapi/v2 answers protobuf as kube-apiserver does" "application/octet-stream" "$(api -s -o /dev/null -w '%{content_type}' -H 'Accept: application/com.github.proto-openapi.spec.v2@v1.0+protobuf' "https://127.0.0.1:$PORT/openapi/v2")"

summary
