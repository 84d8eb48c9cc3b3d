#!/usr/bin/env bash
# Authorization and admission on a node (root: containerd, runc, iptables): the bootstrap
# policy; anonymous requests; a service account's token refused with upstream's 403 until a
# Role and RoleBinding grant one Secret by name; kubectl auth can-i (also --list) before and
# after bindings; impersonation; escalation prevention; ClusterRole aggregation; the Node
# authorizer and NodeRestriction (node certificates, a second Node); Pod Security admission;
# ResourceQuota and LimitRange;
# a helm chart whose pod uses its own ServiceAccount, Role and RoleBinding from inside the
# cluster, and fails as on a real cluster without the binding; the policy reconciled at start.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
BIND_ADDRESS=0.0.0.0
HELM=${HELM:-$(dirname "$KUBECTL")/helm}
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/busybox.tar" "$IMAGE" >/dev/null
# A service range of its own: the kubernetes Service's rules are the host's, whatever else runs.
SVC=10.$((44 + RANDOM % 50))
start_node --service-cidr "$SVC.0.0/16" --cluster-dns "$SVC.0.10" || exit 1
"$FERROKUBE" images import --run-dir "$RUN" "$E2E_DIR/busybox.tar" >/dev/null
B=https://127.0.0.1:$PORT
msg() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("code"), d.get("message"))'; }

# The administrator and anonymous callers.
check "admin is in system:masters" "system:admin [system:masters system:authenticated]" "$(k auth whoami -o jsonpath='{.status.userInfo.username} {.status.userInfo.groups}' | tr -d '"' | tr ',' ' ')"
check "admin may do everything" "yes" "$(k auth can-i '*' '*' --all-namespaces)"
check "the bootstrap roles are there" "admin cluster-admin edit system:basic-user system:discovery system:public-info-viewer view" \
  "$(k get clusterroles -o name | sed 's|.*/||' | grep -E '^(admin|cluster-admin|edit|view|system:basic-user|system:discovery|system:public-info-viewer)$' | sort | xargs)"
check "anyone may read /healthz and /version" "200 200" "$(curl -sk -o /dev/null -w '%{http_code}' "$B/healthz") $(curl -sk -o /dev/null -w '%{http_code}' "$B/version")"
check "anonymous discovery is forbidden" '403 forbidden: User "system:anonymous" cannot get path "/api"' "$(curl -sk "$B/api" | msg)"
check "an invalid token is 401" "401" "$(curl -sk -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer nope' "$B/api")"

# A service account, by its token.
k create ns rbac-a >/dev/null
k -n rbac-a create sa bot >/dev/null
TOKEN=$(k -n rbac-a create token bot)
as_bot() { curl -sk -H "Authorization: Bearer $TOKEN" "$@"; }
check "a service account may read discovery" "200" "$(as_bot -o /dev/null -w '%{http_code}' "$B/apis")"
check "but not list Secrets, in upstream's words" '403 secrets is forbidden: User "system:serviceaccount:rbac-a:bot" cannot list resource "secrets" in API group "" at the cluster scope' "$(as_bot "$B/api/v1/secrets" | msg)"
check "can-i says no before a binding" "no" "$(k auth can-i get secrets/one -n rbac-a --as=system:serviceaccount:rbac-a:bot)"
k -n rbac-a create secret generic one --from-literal=k=v >/dev/null
k -n rbac-a create secret generic two --from-literal=k=v >/dev/null
k -n rbac-a create role read-one --verb=get --resource=secrets --resource-name=one >/dev/null
k -n rbac-a create rolebinding read-one --role=read-one --serviceaccount=rbac-a:bot >/dev/null
check "a Role and RoleBinding grant one Secret by name" "200" "$(as_bot -o /dev/null -w '%{http_code}' "$B/api/v1/namespaces/rbac-a/secrets/one")"
check "and no other" '403 secrets "two" is forbidden: User "system:serviceaccount:rbac-a:bot" cannot get resource "secrets" in API group "" in the namespace "rbac-a"' "$(as_bot "$B/api/v1/namespaces/rbac-a/secrets/two" | msg)"
check "can-i follows the binding" "yes no" "$(k auth can-i get secrets/one -n rbac-a --as=system:serviceaccount:rbac-a:bot) $(k auth can-i get secrets/two -n rbac-a --as=system:serviceaccount:rbac-a:bot)"
check_contains "can-i --list shows the granted name" "secrets [] [one] [get]" "$(k auth can-i --list -n rbac-a --as=system:serviceaccount:rbac-a:bot | tr -s ' ')"
check_contains "can-i --list shows what every user may do" "selfsubjectaccessreviews.authorization.k8s.io [] [] [create]" "$(k auth can-i --list -n rbac-a --as=system:serviceaccount:rbac-a:bot | tr -s ' ')"
k -n rbac-a delete rolebinding read-one >/dev/null
eventually "deleting the binding takes the grant away" "403" 5 sh -c "curl -sk -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer $TOKEN' '$B/api/v1/namespaces/rbac-a/secrets/one'"

# A user, by impersonation.
k create ns dev >/dev/null
check "jane may not create deployments in dev" "no" "$(k auth can-i create deployments --as=jane -n dev)"
k -n dev create rolebinding jane-admin --clusterrole=admin --user=jane >/dev/null
check "until she is bound to admin there" "yes no" "$(k auth can-i create deployments --as=jane -n dev) $(k auth can-i create deployments --as=jane -n default)"
check "a group binding applies to its members" "yes" "$(k -n dev create rolebinding team-view --clusterrole=view --group=team >/dev/null; k auth can-i list pods --as=joe --as-group=team -n dev)"
check "impersonating needs the impersonate verb" '403 users "bob" is forbidden: User "system:serviceaccount:rbac-a:bot" cannot impersonate resource "users" in API group "" at the cluster scope' "$(as_bot -H 'Impersonate-User: bob' "$B/api/v1/namespaces/dev/pods" | msg)"
check_contains "a forbidden verb reads as upstream's" 'nodes is forbidden: User "jane" cannot list resource "nodes" in API group "" at the cluster scope' "$(k --as=jane get nodes 2>&1)"

# Escalation prevention.
check_cmd "jane may create a Role within what she holds" k --as=jane -n dev create role pod-reader --verb=get,list --resource=pods
check_contains "but not one granting more" 'roles.rbac.authorization.k8s.io "node-reader" is forbidden: user "jane" (groups=["system:authenticated"]) is attempting to grant RBAC permissions not currently held:' \
  "$(k --as=jane -n dev create role node-reader --verb=get --resource=nodes 2>&1)"
check_contains "naming what she lacks" '{APIGroups:[""], Resources:["nodes"], Verbs:["get"]}' "$(k --as=jane -n dev create role node-reader --verb=get --resource=nodes 2>&1)"
check_contains "nor bind a role granting more" 'rolebindings.rbac.authorization.k8s.io "jane-root" is forbidden: user "jane"' "$(k --as=jane -n dev create rolebinding jane-root --clusterrole=cluster-admin --user=jane 2>&1)"
k create clusterrole bind-admin --verb=bind --resource=clusterroles --resource-name=cluster-admin >/dev/null
k -n dev create rolebinding jane-bind --clusterrole=bind-admin --user=jane >/dev/null
check_cmd "the bind verb on that role lets her" k --as=jane -n dev create rolebinding jane-root --clusterrole=cluster-admin --user=jane

# Aggregation: a chart's ClusterRole labelled aggregate-to-view joins view (and so edit, admin).
k apply -f - >/dev/null <<'YAML'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: widget-view, labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}}
rules: [{apiGroups: [example.com], resources: [widgets], verbs: [get, list]}]
YAML
eventually "an aggregate-to-view role joins view" "yes" 10 sh -c "'$KUBECTL' get clusterrole view -o json | grep -q widgets && echo yes"
eventually "and admin through edit" "yes" 10 sh -c "'$KUBECTL' get clusterrole admin -o json | grep -q widgets && echo yes"

# A helm chart with its own ServiceAccount, Role and RoleBinding; its pod calls the API from
# inside the cluster with its token (the host's python3 through hostPath mounts).
chart=$E2E_DIR/chart
mkdir -p "$chart/templates"
printf 'apiVersion: v2\nname: reader\nversion: 0.1.0\n' >"$chart/Chart.yaml"
printf 'binding: true\nimage: %s\n' "$IMAGE" >"$chart/values.yaml"
cat >"$chart/templates/rbac.yaml" <<'YAML'
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader}
rules:
- {apiGroups: [""], resources: [configmaps], verbs: [get, list]}
{{- if .Values.binding }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects:
- {kind: ServiceAccount, name: reader}
{{- end }}
YAML
cat >"$chart/templates/pod.yaml" <<'YAML'
apiVersion: v1
kind: ConfigMap
metadata: {name: reader-code}
data:
  read.py: |
    import json, os, ssl, urllib.error, urllib.request
    d = "/var/run/secrets/kubernetes.io/serviceaccount"
    token, ns = open(d + "/token").read(), open(d + "/namespace").read()
    ctx = ssl.create_default_context(cafile=d + "/ca.crt")
    for path in ["/api/v1/namespaces/%s/configmaps" % ns, "/api/v1/namespaces/%s/secrets" % ns]:
        req = urllib.request.Request("https://kubernetes.default.svc" + path, headers={"Authorization": "Bearer " + token})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                print(path, r.status, json.load(r)["kind"])
        except urllib.error.HTTPError as e:
            print(path, e.code, json.load(e)["message"])
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
  - name: read
    image: {{ .Values.image }}
    imagePullPolicy: IfNotPresent
    command: [/usr/bin/python3, /code/read.py]
    volumeMounts:
    - {name: usr, mountPath: /usr, readOnly: true}
    - {name: lib, mountPath: /lib, readOnly: true}
    - {name: lib64, mountPath: /lib64, readOnly: true}
    - {name: code, mountPath: /code}
  volumes:
  - {name: usr, hostPath: {path: /usr}}
  - {name: lib, hostPath: {path: /usr/lib}}
  - {name: lib64, hostPath: {path: /usr/lib64}}
  - {name: code, configMap: {name: reader-code}}
YAML
pod_says() { # NS: waits for the chart's pod to finish, prints its output
  for _ in $(seq 120); do
    case "$(k -n "$1" get pod reader -o jsonpath='{.status.phase}' 2>/dev/null)" in Succeeded|Failed) break ;; esac
    sleep 0.5
  done
  k -n "$1" logs reader 2>&1
}
check_cmd "helm installs the chart with its RBAC" "$HELM" install reader "$chart" -n chart-a --create-namespace --wait=false
out=$(pod_says chart-a)
check_contains "its pod lists ConfigMaps through the kubernetes Service" "/api/v1/namespaces/chart-a/configmaps 200 ConfigMapList" "$out"
check_contains "and is refused what its Role does not grant" '/api/v1/namespaces/chart-a/secrets 403 secrets is forbidden: User "system:serviceaccount:chart-a:reader" cannot list resource "secrets" in API group "" in the namespace "chart-a"' "$out"
check_cmd "the same chart without its RoleBinding installs" "$HELM" install reader "$chart" -n chart-b --create-namespace --set binding=false --wait=false
check_contains "and its pod is refused, as on a real cluster" '/api/v1/namespaces/chart-b/configmaps 403 configmaps is forbidden: User "system:serviceaccount:chart-b:reader" cannot list resource "configmaps" in API group "" in the namespace "chart-b"' "$(pod_says chart-b)"
"$HELM" uninstall reader -n chart-a >/dev/null 2>&1
"$HELM" uninstall reader -n chart-b >/dev/null 2>&1

# Nodes: the kubelet reads only what its pods use (Node authorizer) and writes only its own
# objects (NodeRestriction). Node credentials from the certificates API, a second Node object.
node_cert() { # NAME: a client certificate for system:node:NAME in system:nodes
  openssl req -new -newkey rsa:2048 -nodes -keyout "$E2E_DIR/$1.key" -subj "/CN=system:node:$1/O=system:nodes" -out "$E2E_DIR/$1.csr" 2>/dev/null
  printf 'apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {name: node-%s}\nspec:\n  signerName: kubernetes.io/kube-apiserver-client\n  request: %s\n  usages: [client auth]\n' "$1" "$(base64 -w0 <"$E2E_DIR/$1.csr")" | k apply -f - >/dev/null
  k certificate approve "node-$1" >/dev/null
  for _ in $(seq 50); do k get csr "node-$1" -o jsonpath='{.status.certificate}' | base64 -d >"$E2E_DIR/$1.crt" 2>/dev/null; [ -s "$E2E_DIR/$1.crt" ] && break; sleep 0.2; done
}
as_node() { local n=$1; shift; k --client-certificate="$E2E_DIR/$n.crt" --client-key="$E2E_DIR/$n.key" "$@"; }
node_cert e2e-node
node_cert other-node
k apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: Node
metadata: {name: other-node}
YAML
k create ns nodes-a >/dev/null
k -n nodes-a create secret generic mounted --from-literal=k=v >/dev/null
k -n nodes-a create secret generic unused --from-literal=k=v >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: holder, namespace: nodes-a}
spec:
  nodeName: e2e-node
  containers: [{name: c, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sleep, "3600"], volumeMounts: [{name: s, mountPath: /s}]}]
  volumes: [{name: s, secret: {secretName: mounted}}]
YAML
check "the node of a pod reads the Secret it mounts" "mounted" "$(as_node e2e-node -n nodes-a get secret mounted -o jsonpath='{.metadata.name}' 2>&1)"
check_contains "another node may not" 'secrets "mounted" is forbidden: User "system:node:other-node" cannot get resource "secrets" in API group "" in the namespace "nodes-a": no relationship found between node '"'"'other-node'"'"' and this object' "$(as_node other-node -n nodes-a get secret mounted 2>&1)"
check_contains "nor the pod's node a Secret no pod of it uses" 'secrets "unused" is forbidden' "$(as_node e2e-node -n nodes-a get secret unused 2>&1)"
check_contains "nor list Secrets" 'secrets is forbidden: User "system:node:e2e-node" cannot list resource "secrets"' "$(as_node e2e-node -n nodes-a get secrets 2>&1)"
check_contains "a node may not label another node" 'nodes "e2e-node" is forbidden: User "system:node:other-node" cannot patch resource "nodes"' "$(as_node other-node label node e2e-node x=y 2>&1)"
check_cmd "but may label itself" as_node other-node label node other-node x=y
check_contains "nor delete a pod bound elsewhere" 'pods "holder" is forbidden: User "system:node:other-node" cannot delete resource "pods"' "$(as_node other-node -n nodes-a delete pod holder --wait=false 2>&1)"
check "the kubelet, as its node, keeps the pod running" "Running" "$(k -n nodes-a wait --for=condition=Ready pod/holder --timeout=60s >/dev/null 2>&1; k -n nodes-a get pod holder -o jsonpath='{.status.phase}')"
k -n nodes-a delete pod holder --wait=false >/dev/null

# Pod Security admission: namespace labels choose the level; enforce refuses, warn warns.
k create ns psa-r >/dev/null
k label ns psa-r pod-security.kubernetes.io/enforce=restricted >/dev/null
check_contains "a pod violating restricted is refused with upstream's reasons" \
  'pods "bare" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "bare" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "bare" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "bare" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "bare" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")' \
  "$(k -n psa-r run bare --image=$IMAGE --restart=Never 2>&1)"
check_cmd "a pod meeting restricted is admitted" k -n psa-r run ok --image=$IMAGE --restart=Never \
  --overrides='{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":1000,"seccompProfile":{"type":"RuntimeDefault"}},"containers":[{"name":"ok","image":"'$IMAGE'","command":["true"],"securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}'
check_contains "a Deployment whose template violates it is admitted with a warning" 'Warning: would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false' "$(k -n psa-r create deployment web --image=$IMAGE 2>&1)"
k create ns psa-w >/dev/null
k label ns psa-w pod-security.kubernetes.io/warn=baseline >/dev/null
out=$(k -n psa-w run hostnet --image=$IMAGE --restart=Never --overrides='{"spec":{"hostNetwork":true}}' 2>&1)
check_contains "warn=baseline warns of host namespaces" 'Warning: would violate PodSecurity "baseline:latest": host namespaces (hostNetwork=true)' "$out"
check_contains "and admits the pod" 'pod/hostnet created' "$out"
check_contains "a level upstream does not know is refused" 'must be one of privileged, baseline, restricted' "$(k label ns psa-w pod-security.kubernetes.io/enforce=strict 2>&1)"
k delete ns psa-r psa-w --wait=false >/dev/null

# ResourceQuota and LimitRange.
k create ns quota-a >/dev/null
k -n quota-a create quota pods --hard=pods=2,count/configmaps=3 >/dev/null
for p in one two; do k -n quota-a run $p --image=$IMAGE --image-pull-policy=IfNotPresent --restart=Never -- sleep 3600 >/dev/null; done
check_contains "a quota of 2 pods refuses the third, in upstream's words" 'pods "three" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2' \
  "$(k -n quota-a run three --image=$IMAGE --restart=Never -- sleep 3600 2>&1)"
eventually "the quota's status shows the usage" "pods=2/2" 15 sh -c "'$KUBECTL' -n quota-a get quota pods -o jsonpath='pods={.status.used.pods}/{.status.hard.pods}'"
check_contains "kubectl describe quota lists used and hard" "pods              2     2" "$(k -n quota-a describe quota pods)"
k -n quota-a create quota compute --hard=requests.cpu=1 >/dev/null
check_contains "a compute quota needs requests stated" 'failed quota: compute: must specify requests.cpu for: four' "$(k -n quota-a run four --image=$IMAGE --restart=Never 2>&1)"
k -n quota-a delete quota compute >/dev/null
k -n quota-a delete pod two --wait=false >/dev/null
k create ns limits-a >/dev/null
k apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: LimitRange
metadata: {name: container-limits, namespace: limits-a}
spec:
  limits:
  - type: Container
    default: {cpu: 500m, memory: 128Mi}
    defaultRequest: {cpu: 100m, memory: 64Mi}
    max: {cpu: "1"}
YAML
k -n limits-a run filled --image=$IMAGE --restart=Never -- sleep 1 >/dev/null
check "a LimitRange fills in requests and limits" '{"limits":{"cpu":"500m","memory":"128Mi"},"requests":{"cpu":"100m","memory":"64Mi"}}' "$(k -n limits-a get pod filled -o jsonpath='{.spec.containers[0].resources}')"
check "and says so on the pod" "LimitRanger plugin set: cpu, memory request for container filled; cpu, memory limit for container filled" "$(k -n limits-a get pod filled -o jsonpath='{.metadata.annotations.kubernetes\.io/limit-ranger}')"
check_contains "and refuses more than its max" 'pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2' "$(k -n limits-a run big --image=$IMAGE --restart=Never --overrides='{"spec":{"containers":[{"name":"big","image":"'$IMAGE'","resources":{"limits":{"cpu":"2"}}}]}}' 2>&1)"
k delete ns quota-a limits-a --wait=false >/dev/null

# The bootstrap policy is reconciled at start: a rule taken away comes back.
k patch clusterrole system:basic-user --type=json -p '[{"op": "remove", "path": "/rules/1"}]' >/dev/null
stop_server TERM
start_node --service-cidr "$SVC.0.0/16" --cluster-dns "$SVC.0.10" || exit 1
check "a bootstrap role's missing rule is back after a restart" "selfsubjectreviews" "$(k get clusterrole system:basic-user -o jsonpath='{.rules[*].resources[*]}' | grep -o selfsubjectreviews)"

# Controllers act as their own service accounts, bound to upstream's system:controller:* roles.
dc=system:serviceaccount:kube-system:deployment-controller
check "the deployment controller's role is upstream's" "yes yes no no" "$(k auth can-i create replicasets.apps -n default --as=$dc) $(k auth can-i update deployments.apps/status -n default --as=$dc) $(k auth can-i get secrets -n default --as=$dc) $(k auth can-i delete nodes --as=$dc)"
check "the controller-manager's informers may list everything but write nothing else" "yes no" "$(k auth can-i list secrets -A --as=system:kube-controller-manager) $(k auth can-i delete pods -n default --as=system:kube-controller-manager)"
check "every system:controller role is bound" "$(k get clusterroles -o name | grep -c 'system:controller:')" "$(k get clusterrolebindings -o name | grep -c 'system:controller:')"
k create ns ctl-identity >/dev/null
eventually "the service-account controller, under its own identity, creates the default account" "default" 10 k -n ctl-identity get sa default -o jsonpath='{.metadata.name}'

summary
