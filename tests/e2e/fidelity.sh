#!/usr/bin/env bash
# kubectl v1.35 and helm v4 with default flags: apply (client- and server-side), diff, edit,
# set image, scale, explain, tables, describe, wait, CRDs, and the helm release lifecycle.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
HELM=${HELM:-$(dirname "$KUBECTL")/helm}
start_server || exit 1
h() { "$HELM" "$@"; }

cat >"$E2E_DIR/app.yaml" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app
  labels: {app: app, tier: web}
spec:
  replicas: 2
  revisionHistoryLimit: 5
  selector: {matchLabels: {app: app}}
  template:
    metadata: {labels: {app: app}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{containerPort: 80}]
YAML
out=$(k apply -f "$E2E_DIR/app.yaml" 2>&1)
check_contains "apply creates" "deployment.apps/app created" "$out"
check "apply records the last-applied annotation" "yes" "$(k get deploy app -o jsonpath='{.metadata.annotations.kubectl\.kubernetes\.io/last-applied-configuration}' | grep -q nginx && echo yes)"
sed -i 's/nginx:1.25/nginx:1.26/; s/tier: web/tier: front/; /revisionHistoryLimit/d' "$E2E_DIR/app.yaml"
out=$(k apply -f "$E2E_DIR/app.yaml" 2>&1)
check "apply without warnings" "deployment.apps/app configured" "$out"
check "apply changed the image" "nginx:1.26" "$(k get deploy app -o jsonpath='{.spec.template.spec.containers[0].image}')"
check "apply changed the label" "front" "$(k get deploy app -o jsonpath='{.metadata.labels.tier}')"
check "a removed field goes back to its default" "10" "$(k get deploy app -o jsonpath='{.spec.revisionHistoryLimit}')"
check "container ports survive the strategic merge" "80" "$(k get deploy app -o jsonpath='{.spec.template.spec.containers[0].ports[0].containerPort}')"

sed -i 's/nginx:1.26/nginx:1.27/' "$E2E_DIR/app.yaml"
out=$(k diff -f "$E2E_DIR/app.yaml" 2>&1); rc=$?
check "diff exits 1 on a difference" "1" "$rc"
check_contains "diff shows the new image" "+      - image: nginx:1.27" "$out"
check "diff changed nothing" "nginx:1.26" "$(k get deploy app -o jsonpath='{.spec.template.spec.containers[0].image}')"

check_cmd "set image" k set image deploy/app web=nginx:1.28
check "set image applied" "nginx:1.28" "$(k get deploy app -o jsonpath='{.spec.template.spec.containers[0].image}')"
check_cmd "scale" k scale deploy/app --replicas=3
check "scale recorded with the scale subresource" "scale" "$(k get deploy app -o jsonpath='{.metadata.managedFields[?(@.subresource=="scale")].subresource}' --show-managed-fields)"

# Server-side apply: migration from client-side apply, conflicts, --force-conflicts.
out=$(k apply --server-side -f "$E2E_DIR/app.yaml" 2>&1)
check_contains "server-side apply after scale conflicts on replicas" 'conflict with "kubectl" using apps/v1: .spec.replicas' "$out"
out=$(k apply --server-side --force-conflicts -f "$E2E_DIR/app.yaml" 2>&1)
check_contains "--force-conflicts takes the fields" "serverside-applied" "$out"
check "forced apply set replicas" "2" "$(k get deploy app -o jsonpath='{.spec.replicas}')"
check "forced apply set the image" "nginx:1.27" "$(k get deploy app -o jsonpath='{.spec.template.spec.containers[0].image}')"
check_contains "managedFields name the applier" "kubectl" "$(k get deploy app -o jsonpath='{.metadata.managedFields[*].manager}' --show-managed-fields)"
sed -i '/ports:/d' "$E2E_DIR/app.yaml"
k apply --server-side -f "$E2E_DIR/app.yaml" >/dev/null 2>&1
check "a field no longer applied is removed" "" "$(k get deploy app -o jsonpath='{.spec.template.spec.containers[0].ports}')"

check_cmd "edit via KUBE_EDITOR" env KUBE_EDITOR="sed -i s/nginx:1.27/nginx:1.29/" "$KUBECTL" edit deploy app
check "edit applied" "nginx:1.29" "$(k get deploy app -o jsonpath='{.spec.template.spec.containers[0].image}')"

out=$(k explain deployment.spec.template 2>&1)
check_contains "explain shows the field type" "FIELD: template <PodTemplateSpec>" "$out"
check_contains "explain shows the description" "Template describes the pods that will be created" "$out"
check_contains "explain lists nested fields" "spec	<PodSpec>" "$out"

# Field validation: kubectl asks Strict by default.
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: "1"}\n' >"$E2E_DIR/typo.yaml"
check_contains "unknown fields are rejected (Strict)" 'strict decoding error: unknown field "datta"' "$(k apply -f "$E2E_DIR/typo.yaml" 2>&1)"
check_contains "--validate=warn warns and drops them" 'Warning: unknown field "datta"' "$(k apply -f "$E2E_DIR/typo.yaml" --validate=warn 2>&1)"

# Tables: the familiar columns.
k run tbl --image=busybox:1.36 --labels=app=tbl >/dev/null
check "get pods columns" "NAME READY STATUS RESTARTS AGE" "$(k get pods tbl | head -1 | xargs)"
check "get pods row" "tbl 0/1 Pending 0" "$(k get pods tbl --no-headers | awk '{print $1, $2, $3, $4}')"
check "get pods -o wide columns" "NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES" "$(k get pods tbl -o wide | head -1 | xargs)"
check "get deploy columns" "NAME READY UP-TO-DATE AVAILABLE AGE" "$(k get deploy app | head -1 | xargs)"
k create svc clusterip tsvc --tcp=80:8080 >/dev/null
check "get svc columns" "NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE" "$(k get svc tsvc | head -1 | xargs)"
check "get svc row" "tsvc ClusterIP 80/TCP" "$(k get svc tsvc --no-headers | awk '{print $1, $2, $5}')"

# describe shows events about the object; kubectl events lists them.
uid=$(k get pod tbl -o jsonpath='{.metadata.uid}')
cat <<YAML | k create -f - >/dev/null
apiVersion: v1
kind: Event
metadata: {name: tbl.e2e, namespace: default}
involvedObject: {kind: Pod, name: tbl, namespace: default, apiVersion: v1, uid: "$uid"}
reason: E2EReason
message: an event for the e2e test
type: Normal
source: {component: e2e}
count: 1
YAML
check_contains "describe pod shows its events" "E2EReason" "$(k describe pod tbl 2>&1)"
check_contains "describe pod shows the image" "busybox:1.36" "$(k describe pod tbl 2>&1)"
check_contains "kubectl events lists the event" "an event for the e2e test" "$(k events 2>&1)"

# wait: for a condition (watch-list) and for deletion.
( sleep 1; k delete pod tbl >/dev/null ) &
bg=$!
check_cmd "wait --for=delete" k wait --for=delete pod/tbl --timeout=20s
wait $bg
k create cm gate >/dev/null
( sleep 1; k patch cm gate --type=merge -p '{"data":{"open":"yes"}}' >/dev/null ) &
bg=$!
check_cmd "wait --for=jsonpath" k wait --for=jsonpath='{.data.open}'=yes cm/gate --timeout=20s
wait $bg

# CustomResourceDefinitions.
cat >"$E2E_DIR/crd.yaml" <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string, default: blue}
              replicas: {type: integer}
          status:
            type: object
            properties:
              replicas: {type: integer}
YAML
check_cmd "apply a CRD" k apply -f "$E2E_DIR/crd.yaml"
check_cmd "wait for Established" k wait --for=condition=Established crd/widgets.example.com --timeout=20s
check_contains "get crd" "widgets.example.com" "$(k get crd 2>&1)"
check_contains "discovery lists the new resource" "widgets" "$(k api-resources --api-group=example.com 2>&1)"
printf 'apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w2}\nspec: {size: 5, color: red}\n' >"$E2E_DIR/cr.yaml"
check_cmd "apply custom objects" k apply -f "$E2E_DIR/cr.yaml"
check "printer columns" "NAME SIZE COLOR" "$(k get widgets | head -1 | xargs)"
check "rows with a schema default" "w1 3 blue|w2 5 red" "$(k get wd --no-headers | awk '{print $1, $2, $3}' | paste -sd'|')"
check_contains "schema validation" "spec.size" "$(printf 'apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {size: 0}\n' | k apply -f - 2>&1)"
check_cmd "scale a custom object" k scale widget w1 --replicas=4
check "custom scale applied" "4" "$(k get widget w1 -o jsonpath='{.spec.replicas}')"
check_contains "explain a custom resource" "KIND:       Widget" "$(k explain widget.spec 2>&1)"
check_cmd "server-side apply of custom objects" k apply --server-side -f "$E2E_DIR/cr.yaml"
check_cmd "delete the CRD" k delete crd widgets.example.com --wait --timeout=30s
check_fails "its objects are gone with it" k get widgets

# helm v4: the release lifecycle (server-side apply by default).
h create "$E2E_DIR/chart" >/dev/null
check_contains "helm install" "STATUS: deployed" "$(h install rel "$E2E_DIR/chart" 2>&1)"
check_contains "helm list" "deployed" "$(h list 2>&1)"
check_contains "helm status" "STATUS: deployed" "$(h status rel 2>&1)"
check "release objects exist" "1" "$(k get deploy rel-chart -o jsonpath='{.spec.replicas}')"
check_contains "helm upgrade with changed values" "REVISION: 2" "$(h upgrade rel "$E2E_DIR/chart" --set replicaCount=3 --set image.tag=1.27 2>&1)"
check "upgrade applied" "3 nginx:1.27" "$(k get deploy rel-chart -o jsonpath='{.spec.replicas} {.spec.template.spec.containers[0].image}')"
check "helm history" "superseded deployed" "$(h history rel 2>&1 | awk 'NR>1 {print $7}' | xargs)"
check_contains "helm rollback" "Rollback was a success" "$(h rollback rel 1 2>&1)"
check "rollback restored revision 1" "1" "$(k get deploy rel-chart -o jsonpath='{.spec.replicas}')"
check_contains "helm install --dry-run=server" "NAME: dry" "$(h install dry "$E2E_DIR/chart" --dry-run=server 2>&1)"
check_fails "dry run installed nothing" k get deploy dry-chart
check_contains "helm uninstall" "uninstalled" "$(h uninstall rel 2>&1)"
check "uninstall removed the objects" "" "$(k get deploy,svc,sa -l app.kubernetes.io/instance=rel -o name 2>&1)"
check "uninstall removed the release records" "" "$(k get secret -l owner=helm,name=rel -o name 2>&1)"

# A chart with a CRD in crds/.
h create "$E2E_DIR/crdchart" >/dev/null
mkdir -p "$E2E_DIR/crdchart/crds"
sed 's/widgets.example.com/gadgets.example.org/; s/group: example.com/group: example.org/; s/plural: widgets, singular: widget, kind: Widget, shortNames: \[wd\]/plural: gadgets, singular: gadget, kind: Gadget, shortNames: [gd]/' "$E2E_DIR/crd.yaml" >"$E2E_DIR/crdchart/crds/gadget.yaml"
printf 'apiVersion: example.org/v1\nkind: Gadget\nmetadata:\n  name: {{ .Release.Name }}-gadget\nspec:\n  size: 2\n' >"$E2E_DIR/crdchart/templates/gadget.yaml"
check_contains "helm install of a chart with a CRD" "STATUS: deployed" "$(h install gad "$E2E_DIR/crdchart" 2>&1)"
check "the chart's custom object exists" "gad-gadget 2 blue" "$(k get gadgets --no-headers 2>&1 | awk '{print $1, $2, $3}')"

# Bytes as clients compare them, and what metadata-only clients ask for.
curl_credentials
check_contains "kubectl auth whoami names the admin" "system:admin" "$(k auth whoami 2>&1)"
check_contains "and its groups" "[system:masters system:authenticated]" "$(k auth whoami 2>&1)"
k create cm twice >/dev/null
api -o "$E2E_DIR/conflict" -X POST -H 'Content-Type: application/json' -d '{"metadata":{"name":"twice"}}' "$BASE/api/v1/namespaces/default/configmaps"
printf '%s\n' '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"configmaps \"twice\" already exists","reason":"AlreadyExists","details":{"name":"twice","kind":"configmaps"},"code":409}' >"$E2E_DIR/conflict.want"
check "a Status is upstream's bytes (field order, final newline)" "same" "$(cmp -s "$E2E_DIR/conflict" "$E2E_DIR/conflict.want" && echo same || cat "$E2E_DIR/conflict")"
wrapped=$(python3 -c 'import base64, json; print(json.dumps(base64.encodebytes(bytes(range(256))).decode()))')
printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: wrapped}\ndata:\n  k: %s\n' "$wrapped" >"$E2E_DIR/wrapped.yaml"
check_contains "a Secret with base64 wrapped at 76 columns is accepted" "secret/wrapped created" "$(k apply -f "$E2E_DIR/wrapped.yaml" 2>&1)"
check "it is stored without the line breaks" "0" "$(k get secret wrapped -o jsonpath='{.data.k}' | tr -cd '\n' | wc -c)"
check "and decodes to the same bytes" "$(python3 -c 'import hashlib; print(hashlib.sha256(bytes(range(256))).hexdigest())')" "$(k get secret wrapped -o jsonpath='{.data.k}' | base64 -d | sha256sum | cut -d' ' -f1)"
meta=$(api -H 'Accept: application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json' "$BASE/api/v1/namespaces/default/configmaps")
check "a metadata-only list is a PartialObjectMetadataList" "PartialObjectMetadataList meta.k8s.io/v1" "$(echo "$meta" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["kind"], d["apiVersion"])')"
check "whose items hold metadata only" "PartialObjectMetadata apiVersion,kind,metadata" "$(echo "$meta" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(*sorted({i["kind"] + " " + ",".join(sorted(i)) for i in d["items"]}))')"
check "a metadata-only get, as YAML" "kind: PartialObjectMetadata" "$(api -H 'Accept: application/yaml;as=PartialObjectMetadata;v=v1;g=meta.k8s.io' "$BASE/api/v1/namespaces/default/configmaps/twice" | head -1)"
check "a list type for a get falls back to the next entry" "ConfigMap" "$(api -H 'Accept: application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json' "$BASE/api/v1/namespaces/default/configmaps/twice" | python3 -c 'import json,sys; print(json.load(sys.stdin)["kind"])')"
ev=$(api -N --max-time 2 -H 'Accept: application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io' "$BASE/api/v1/namespaces/default/configmaps?watch=true&fieldSelector=metadata.name%3Dtwice" | head -1)
check "a metadata-only watch streams PartialObjectMetadata" "ADDED PartialObjectMetadata twice no-data" "$(echo "$ev" | python3 -c 'import json,sys; e=json.load(sys.stdin); o=e["object"]; print(e["type"], o["kind"], o["metadata"]["name"], "data" in o and "data" or "no-data")')"

# A client certificate through the certificates API: request, approve, issue, authenticate.
openssl req -new -newkey rsa:2048 -nodes -keyout "$E2E_DIR/jane.key" -subj "/CN=jane/O=dev" -out "$E2E_DIR/jane.csr" 2>/dev/null
csr_yaml() { # name usages...
  local name=$1; shift
  printf 'apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {name: %s}\nspec:\n  signerName: kubernetes.io/kube-apiserver-client\n  expirationSeconds: 86400\n  request: %s\n  usages: [%s]\n' \
    "$name" "$(base64 -w0 <"$E2E_DIR/jane.csr")" "$(IFS=,; echo "$*")"
}
csr_yaml jane "client auth" >"$E2E_DIR/jane.yaml"
check_contains "a CertificateSigningRequest is created" "certificatesigningrequest.certificates.k8s.io/jane created" "$(k apply -f "$E2E_DIR/jane.yaml" 2>&1)"
check "it records who asked" "system:admin" "$(k get csr jane -o jsonpath='{.spec.username}')"
check "and waits for approval" "Pending" "$(k get csr jane --no-headers | awk '{print $NF}')"
check "csr columns" "NAME AGE SIGNERNAME REQUESTOR REQUESTEDDURATION CONDITION" "$(k get csr jane | head -1 | xargs)"
check_contains "kubectl certificate approve" "approved" "$(k certificate approve jane 2>&1)"
eventually "the signer issues the certificate" "Approved,Issued" 10 bash -c "'$KUBECTL' get csr jane --no-headers | awk '{print \$NF}'"
k get csr jane -o jsonpath='{.status.certificate}' | base64 -d >"$E2E_DIR/jane.crt"
check "the certificate names jane of dev" "CN=jane O=dev" "$(openssl x509 -in "$E2E_DIR/jane.crt" -noout -subject -nameopt sep_multiline | awk 'NR>1 {gsub(/^ +/, ""); printf "%s%s", (n++ ? " " : ""), $0}')"
check "it is a client certificate" "TLS Web Client Authentication" "$(openssl x509 -in "$E2E_DIR/jane.crt" -noout -ext extendedKeyUsage | tail -1 | xargs)"
check_contains "and it authenticates as jane" "jane" "$(k --client-certificate="$E2E_DIR/jane.crt" --client-key="$E2E_DIR/jane.key" auth whoami 2>&1)"
check_contains "with her groups" "[dev system:authenticated]" "$(k --client-certificate="$E2E_DIR/jane.crt" --client-key="$E2E_DIR/jane.key" auth whoami 2>&1)"
check_contains "the approval cannot be taken back" 'updates may not remove a condition of type "Approved"' "$(k get csr jane -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); d["status"]["conditions"]=[]; print(json.dumps(d))' | k replace --raw /apis/certificates.k8s.io/v1/certificatesigningrequests/jane/approval -f - 2>&1)"
csr_yaml serving "server auth" >"$E2E_DIR/serving.yaml"
k apply -f "$E2E_DIR/serving.yaml" >/dev/null 2>&1
k certificate approve serving >/dev/null 2>&1
eventually "a usage the signer does not allow fails the request" "Approved,Failed" 10 bash -c "'$KUBECTL' get csr serving --no-headers | awk '{print \$NF}'"
check_contains "with the signer's reason" "SignerValidationFailure" "$(k get csr serving -o jsonpath='{.status.conditions[?(@.type=="Failed")].reason}')"
csr_yaml denied "client auth" >"$E2E_DIR/denied.yaml"
k apply -f "$E2E_DIR/denied.yaml" >/dev/null 2>&1
check_contains "kubectl certificate deny" "denied" "$(k certificate deny denied 2>&1)"
check "a denied request is never issued" "Denied " "$(sleep 1; k get csr denied --no-headers | awk '{print $NF}') $(k get csr denied -o jsonpath='{.status.certificate}')"
check_contains "a request that is not a CSR is rejected" 'spec.request: Invalid value' "$(printf 'apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {name: junk}\nspec:\n  signerName: kubernetes.io/kube-apiserver-client\n  request: %s\n  usages: [client auth]\n' "$(echo junk | base64 -w0)" | k apply -f - 2>&1)"

summary
