#!/usr/bin/env bash
# The audit log: an audit.k8s.io/v1 Policy (levels by user, verb, resource, namespace and
# URL; omitted stages), the events kubectl's requests leave (who, what, the answer, the
# objects at Request/RequestResponse, authorization and impersonation), watches' stages,
# failed authentication, size-based rotation, and bad policies refused at start.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

LOG=$E2E_DIR/audit/audit.log
cat >"$E2E_DIR/policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*"]
  - level: RequestResponse
    resources: [{group: "", resources: ["configmaps"]}]
    namespaces: ["audited"]
  - level: Metadata
    resources: [{group: "", resources: ["secrets"]}]
  - level: Request
    verbs: ["create", "update", "patch", "delete"]
    resources: [{group: apps, resources: ["deployments", "deployments/scale"]}]
    omitManagedFields: true
  - level: Metadata
    omitStages: [ResponseStarted]
    verbs: ["get", "list"]
    resources: [{group: "", resources: ["pods"]}]
  - level: Metadata
EOF
start_server --audit-policy-file "$E2E_DIR/policy.yaml" --audit-log-path "$LOG" || exit 1

# events FILTER: the log's events as JSON lines, filtered by a Python expression over `e`
# (`kubectl`: the event is of a kubectl request).
events() {
  python3 - "$LOG" "$1" <<'EOF'
import json, sys
out = []
for line in open(sys.argv[1]):
    e = json.loads(line)
    kubectl = e.get("userAgent", "").startswith("kubectl")
    if eval(sys.argv[2]):
        out.append(json.dumps(e))
print("\n".join(out))
EOF
}
field() { python3 -c 'import json,sys; e=json.loads(sys.stdin.readline() or "{}"); print(eval(sys.argv[1]))' "$1"; }
count() { events "$1" | grep -c . || true; }

k create ns audited >/dev/null
k -n audited create cm settings --from-literal=colour=blue >/dev/null
SECRET_VALUE=audit-secret-$RANDOM$RANDOM
k -n audited create secret generic creds --from-literal=v="$SECRET_VALUE" >/dev/null
k -n audited create deployment web --image=busybox:e2e >/dev/null
k -n audited scale deployment web --replicas=2 >/dev/null
k -n audited get pods >/dev/null
curl -sk "https://127.0.0.1:$PORT/healthz" >/dev/null
curl -sk -H "Authorization: Bearer not-a-token" "https://127.0.0.1:$PORT/api/v1/namespaces" >/dev/null
k -n audited get secrets --as=jane --as-group=devs >/dev/null 2>&1
timeout 2 "$KUBECTL" -n audited get cm -w >/dev/null 2>&1
sleep 0.5

cm=$(events 'kubectl and e["verb"] == "create" and e.get("objectRef", {}).get("resource") == "configmaps"')
check "a ConfigMap create is one event (RequestReceived omitted)" "1" "$(echo "$cm" | grep -c .)"
check "at the RequestResponse level" "RequestResponse" "$(echo "$cm" | field 'e["level"]')"
check "in the stage ResponseComplete" "ResponseComplete" "$(echo "$cm" | field 'e["stage"]')"
check "with upstream's kind and apiVersion" "Event audit.k8s.io/v1" "$(echo "$cm" | field 'e["kind"] + " " + e["apiVersion"]')"
check "its objectRef names the created object" "configmaps audited settings v1" "$(echo "$cm" | field '" ".join(e["objectRef"][k] for k in ("resource", "namespace", "name", "apiVersion"))')"
check "the user is the admin, with its groups" "True" "$(echo "$cm" | field 'e["user"]["username"] != "" and "system:masters" in e["user"]["groups"]')"
check "the source IP is the client's" "127.0.0.1" "$(echo "$cm" | field 'e["sourceIPs"][0]')"
check_contains "the user agent is kubectl's" "kubectl" "$(echo "$cm" | field 'e["userAgent"]')"
check "the response status is 201" "201" "$(echo "$cm" | field 'e["responseStatus"]["code"]')"
check "the request object is recorded" "blue" "$(echo "$cm" | field 'e["requestObject"]["data"]["colour"]')"
check "the response object is recorded" "blue" "$(echo "$cm" | field 'e["responseObject"]["data"]["colour"]')"
check "authorization is annotated" "allow" "$(echo "$cm" | field 'e["annotations"]["authorization.k8s.io/decision"]')"
check "timestamps are microsecond times" "True" "$(echo "$cm" | field 'len(e["requestReceivedTimestamp"]) == 27 and e["stageTimestamp"] >= e["requestReceivedTimestamp"]')"

sec=$(events 'kubectl and e["verb"] == "create" and e.get("objectRef", {}).get("resource") == "secrets"')
check "a Secret create is recorded at Metadata" "Metadata" "$(echo "$sec" | field 'e["level"]')"
check "without its objects" "False False" "$(echo "$sec" | field 'str("requestObject" in e) + " " + str("responseObject" in e)')"
check "the Secret's value is nowhere in the log" "0" "$(grep -c -e "$SECRET_VALUE" -e "$(printf %s "$SECRET_VALUE" | base64 -w0)" "$LOG")"

dep=$(events 'kubectl and e["verb"] == "create" and e.get("objectRef", {}).get("resource") == "deployments"')
check "a Deployment create is recorded at Request" "Request True False" "$(echo "$dep" | field 'e["level"] + " " + str("requestObject" in e) + " " + str("responseObject" in e)')"
check "omitManagedFields leaves managedFields out" "False" "$(echo "$dep" | field '"managedFields" in e["requestObject"]["metadata"]')"
scale=$(events 'kubectl and e.get("objectRef", {}).get("subresource") == "scale" and e["verb"] == "patch"')
check "kubectl scale is a patch of deployments/scale" "web Request" "$(echo "$scale" | field 'e["objectRef"]["name"] + " " + e["level"]')"

check "a pod list is recorded with verb list" "1" "$(count 'kubectl and e["verb"] == "list" and e.get("objectRef", {}).get("resource") == "pods" and e["objectRef"].get("namespace") == "audited"')"
check "health checks are not recorded (level None)" "0" "$(count 'e["requestURI"].startswith("/healthz")')"

bad=$(events 'e["responseStatus"]["code"] == 401')
check "a failed authentication is recorded with 401" "1" "$(echo "$bad" | grep -c .)"
check "without a user" "{}" "$(echo "$bad" | field 'e["user"]')"

jane=$(events 'e.get("impersonatedUser", {}).get("username") == "jane"')
check "an impersonated request records the impersonated user" "jane devs" "$(echo "$jane" | head -1 | field 'e["impersonatedUser"]["username"] + " " + e["impersonatedUser"]["groups"][0]')"
check "and the real user as user" "True" "$(echo "$jane" | head -1 | field '"system:masters" in e["user"]["groups"]')"
check "the denial is annotated forbid with a 403" "forbid 403" "$(echo "$jane" | head -1 | field 'e["annotations"]["authorization.k8s.io/decision"] + " " + str(e["responseStatus"]["code"])')"
check_contains "the 403's message is in the responseStatus" 'User \"jane\" cannot list resource \"secrets\"' "$(echo "$jane" | head -1)"

watch=$(events 'e["verb"] == "watch" and e.get("objectRef", {}).get("resource") == "configmaps" and e.get("userAgent", "").startswith("kubectl")')
check "a watch has a ResponseStarted and a ResponseComplete event" "ResponseStarted ResponseComplete" "$(echo "$watch" | python3 -c 'import json,sys; print(" ".join(json.loads(l)["stage"] for l in sys.stdin if l.strip()))')"
check "both with the same auditID" "1" "$(echo "$watch" | python3 -c 'import json,sys; print(len({json.loads(l)["auditID"] for l in sys.stdin if l.strip()}))')"

inproc=$(count 'e.get("objectRef", {}).get("resource") == "serviceaccounts" and e["verb"] == "create" and e["objectRef"].get("namespace") == "audited"')
check "the in-process controllers' requests are recorded too" "1" "$inproc"
check "under the controller's own service account" "system:serviceaccount:kube-system:service-account-controller" "$(events 'e.get("objectRef", {}).get("resource") == "serviceaccounts" and e["verb"] == "create" and e["objectRef"].get("namespace") == "audited"' | field 'e["user"]["username"]')"
check "the log is private" "600" "$(stat -c %a "$LOG")"
stop_server TERM

# Rotation: 1 MB files, two backups kept.
rm -rf "$E2E_DIR/audit"
start_server --audit-policy-file "$E2E_DIR/policy.yaml" --audit-log-path "$LOG" --audit-log-maxsize 1 --audit-log-maxbackup 2 || exit 1
k create ns audited >/dev/null 2>&1
head -c 300000 /dev/urandom | base64 -w0 >"$E2E_DIR/big"
k -n audited create cm big --from-file=v="$E2E_DIR/big" >/dev/null
for _ in $(seq 12); do api_ok=$(k -n audited get cm big -o name); done
sleep 0.5
backups=$(ls "$E2E_DIR/audit" | grep -cE '^audit-[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}-[0-9]{2}-[0-9]{2}\.[0-9]{3}\.log$' || true)
check "the log is rotated and two backups are kept" "2" "$backups"
largest=$(stat -c %s "$E2E_DIR/audit"/* | sort -n | tail -1)
if [ "$largest" -le 1048576 ]; then ok "no file passes 1 MB ($largest bytes)"; else not_ok "no file passes 1 MB" "$largest"; fi
check "every line of every file is a whole event" "0" "$(cat "$E2E_DIR/audit"/* | python3 -c '
import json, sys
bad = 0
for l in sys.stdin:
    try: json.loads(l)
    except Exception: bad += 1
print(bad)')"
check "the current log goes on after rotation" "configmap/big" "$api_ok"
stop_server TERM

# Bad policies and flags are refused at start, saying what to fix.
start_fails() { "$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/data" --https-listen-port "$PORT" --write-kubeconfig "$E2E_DIR/kc2" "$@" 2>&1; }
printf 'apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n  - level: Loud\n' >"$E2E_DIR/bad.yaml"
out=$(start_fails --audit-policy-file "$E2E_DIR/bad.yaml" --audit-log-path "$LOG")
check_contains "an unknown level is refused with the file and field" "bad.yaml: rules[0].level: Unsupported value: \"Loud\"" "$out"
out=$(start_fails --audit-log-path "$LOG")
check_contains "a log without a policy is refused clearly" "--audit-log-path needs --audit-policy-file" "$out"

summary
