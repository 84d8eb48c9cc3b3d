#!/usr/bin/env bash
# The node with a real containerd, runc and iptables (root): pods run from locally built
# images, get addresses on the bundled bridge, restart, crash-loop, get OOM-killed, log,
# survive a kill -9 of ferrokube, and leave nothing behind when deleted.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node

python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/busybox.tar" "$IMAGE" >/dev/null
# The airgap directory: archives there are imported at start (gzip too).
mkdir -p "$E2E_DIR/data/images"
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/data/images/airgap.tar" docker.io/library/airgap:1 >/dev/null
gzip "$E2E_DIR/data/images/airgap.tar"
start_node || exit 1
check "node is Ready" "True" "$(k get node e2e-node -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
check_contains "node reports the runtime" "containerd://" "$(k get node e2e-node -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')"
check "get nodes -o wide columns" "NAME STATUS ROLES AGE VERSION INTERNAL-IP EXTERNAL-IP OS-IMAGE KERNEL-VERSION CONTAINER-RUNTIME" "$(k get nodes -o wide | head -1 | xargs)"
check_cmd "images import" "$FERROKUBE" images import --run-dir "$RUN" "$E2E_DIR/busybox.tar"
# Imports go through containerd's API (content, snapshots, images), no ctr: a docker save
# archive too, its RepoTags normalized; again, it changes nothing; what is no image archive
# is refused saying why.
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/saved.tar" saved:1 --format docker >/dev/null
out=$("$FERROKUBE" images import --run-dir "$RUN" "$E2E_DIR/saved.tar" 2>&1)
check_contains "a docker save archive is imported under its RepoTags, normalized" "docker.io/library/saved:1" "$out"
check_contains "a second import of it succeeds too" "docker.io/library/saved:1" "$("$FERROKUBE" images import --run-dir "$RUN" "$E2E_DIR/saved.tar" 2>&1)"
ctr_k8s() { ctr --address "$RUN/containerd/containerd.sock" -n k8s.io "$@"; }
check "the import's lease is gone" "" "$(ctr_k8s leases ls -q)"
check_contains "its layer is unpacked into overlayfs" "Committed" "$(ctr_k8s snapshots ls)"
k run saved --image=saved:1 --image-pull-policy=Never -- sleep 3600 >/dev/null
check_cmd "a pod runs from it" k wait --for=condition=Ready pod/saved --timeout=60s
k delete pod saved --grace-period=1 --wait=false >/dev/null
printf 'not an image\n' >"$E2E_DIR/notes.txt" && tar -C "$E2E_DIR" -cf "$E2E_DIR/notes.tar" notes.txt
check_contains "an archive that holds no image is refused, saying why" "not an image archive: neither index.json (OCI image layout) nor manifest.json (docker save) in it" "$("$FERROKUBE" images import --run-dir "$RUN" "$E2E_DIR/notes.tar" 2>&1)"

cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  initContainers:
  - {name: init, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "echo init done"]}
  containers:
  - name: httpd
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [httpd, -f, -p, "8080", -h, /www]
    ports: [{containerPort: 8080}]
  - name: side
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'while true; do echo "side \$MY_NAME"; sleep 1; done']
    env:
    - {name: MY_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
YAML
check_cmd "pod with an init container and two containers becomes Ready" k wait --for=condition=Ready pod/web --timeout=90s
check "both containers ready" "2/2 Running" "$(k get pod web --no-headers | awk '{print $2, $3}')"
IP=$(k get pod web -o jsonpath='{.status.podIP}')
case "$IP" in "$NET".*) ok "pod IP from the node's pod CIDR ($IP)" ;; *) not_ok "pod IP from the node's pod CIDR" "got [$IP]" ;; esac
check "get pods -o wide shows the IP and node" "$IP e2e-node" "$(k get pod web -o wide --no-headers | awk '{print $6, $7}')"
check "the host reaches the pod's port" "hello from ferrokube" "$(curl -s --max-time 5 "http://$IP:8080/")"
check "init container ran first" "init done" "$(k logs web -c init)"
events=$(k describe pod web)
check_contains "describe shows the kubelet's events (image present)" "already present on machine" "$events"
check_contains "describe shows the kubelet's events (created)" "Created container: side" "$events"
check_contains "describe shows the kubelet's events (started)" "Started container httpd" "$events"
check_contains "env from the downward API" "side web" "$(k logs web -c side --tail=1)"

# exec: streams, exit codes, stdin, a terminal; and the Python client's v4 framing.
check "exec prints stdout" "hello-exec" "$(k exec web -c side -- echo hello-exec)"
k exec web -c side -- sh -c 'exit 7' >/dev/null 2>&1
check "exec returns the command's exit code" "7" "$?"
check "exec -i passes stdin" "piped" "$(echo piped | k exec -i web -c side -- head -1)"
# stdin ends on its own (SPDY to the runtime), so the exit status still comes back after it.
echo in | k exec -i web -c side -- sh -c 'cat >/dev/null; exit 3' >/dev/null 2>&1
check "exec -i returns the exit code after stdin ends" "3" "$?"
out=$(echo in | k exec -i web -c side -- sh -c 'read l; echo out:$l; echo err:$l >&2' 2>"$E2E_DIR/err.txt")
check "exec -i keeps stdout and stderr apart" "out:in err:in" "$out $(cat "$E2E_DIR/err.txt")"
# (NUL bytes a terminal does not show are ignored: one sometimes precedes the output, raw
# or echoed back as "^@".)
check "exec -it gets a terminal" "/dev/pts/0" "$(script -qc "$KUBECTL exec -it web -c side -- tty" /dev/null | tr -d '\r\000' | sed 's/\^@//g' | head -1)"
# (The size reaches the runtime on the resize channel after the process starts.)
check "exec -it passes the terminal's size" "33 101" "$(script -qc "stty rows 33 cols 101; $KUBECTL exec -it web -c side -- sh -c 'sleep 1; stty size'" /dev/null | tr -d '\r\000' | sed 's/\^@//g' | head -1)"
script -qec "$KUBECTL exec -it web -c side -- sh -c 'exit 5'" /dev/null >/dev/null 2>&1
check "exec -it returns the exit code" "5" "$?"
py=$("${PYTHON:-python3}" - "$KUBECONFIG" <<'PY' 2>&1
import sys
from kubernetes import client, config
from kubernetes.stream import stream
core = client.CoreV1Api(config.new_client_from_config(config_file=sys.argv[1]))
print(stream(core.connect_get_namespaced_pod_exec, "web", "default", container="side", command=["echo", "from-python"], stderr=True, stdin=False, stdout=True, tty=False).strip())
PY
)
check "exec from the Python client" "from-python" "$py"

# The service-account volume: a token bound to the pod, the cluster CA, the namespace.
SADIR=/var/run/secrets/kubernetes.io/serviceaccount
PODTOKEN=$(k exec web -c side -- cat $SADIR/token)
check "the pod's token authenticates to the API" "200" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $PODTOKEN" "https://127.0.0.1:$PORT/apis")"
check "the pod's namespace file" "default" "$(k exec web -c side -- cat $SADIR/namespace)"
check "the pod's CA file is the cluster CA" "$(cat "$E2E_DIR/data/server/tls/ca.crt")" "$(k exec web -c side -- cat $SADIR/ca.crt)"
check "the pod's volume is read-only" "ro" "$(k exec web -c side -- sh -c "touch $SADIR/x 2>/dev/null && echo rw || echo ro")"

echo "to the pod" >"$E2E_DIR/up.txt"
check_cmd "cp into a pod" timeout 30 "$KUBECTL" cp "$E2E_DIR/up.txt" web:/tmp/up.txt -c side
check "the copied file is there" "to the pod" "$(k exec web -c side -- cat /tmp/up.txt)"
check_cmd "cp out of a pod" timeout 30 "$KUBECTL" cp web:/www/index.html "$E2E_DIR/down.html" -c httpd
check "the file came out" "hello from ferrokube" "$(cat "$E2E_DIR/down.html" 2>/dev/null)"
check "echo | exec -i cat ends at EOF" "eof-ok" "$(echo eof-ok | timeout 20 "$KUBECTL" exec -i web -c side -- cat)"
check_contains "attach streams the container's output" "side web" "$(timeout 4 "$KUBECTL" attach web -c side 2>/dev/null | head -1)"

# The kubelet API: the API server reaches logs, exec, attach and port-forward through it (the
# checks above), and nodes/<name>/proxy reaches it too.
check "the Node publishes its kubelet port" "10250" "$(k get node e2e-node -o jsonpath='{.status.daemonEndpoints.kubeletEndpoint.Port}')"
check "nodes/proxy/healthz" "ok" "$(k get --raw /api/v1/nodes/e2e-node/proxy/healthz)"
check_contains "nodes/proxy/pods lists the node's pods" '"name":"web"' "$(k get --raw /api/v1/nodes/e2e-node/proxy/pods)"
summary_json=$(k get --raw /api/v1/nodes/e2e-node/proxy/stats/summary)
check "stats/summary names the node" "e2e-node" "$(echo "$summary_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["node"]["nodeName"])')"
check "and measures the pod's containers' memory" "yes" "$(echo "$summary_json" | python3 -c 'import json,sys; d = json.load(sys.stdin); p = [p for p in d["pods"] if p["podRef"]["name"] == "web"][0]; print("yes" if p["memory"]["workingSetBytes"] > 0 and {c["name"] for c in p["containers"]} == {"httpd", "side"} else d)')"
check_contains "nodes/proxy/metrics" "kubelet_running_pods" "$(k get --raw /api/v1/nodes/e2e-node/proxy/metrics)"
curl_credentials
KUBELET_IP=$(k get node e2e-node -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
check "the kubelet's serving certificate verifies against the cluster CA for its address" "401" "$(curl -s --cacert "$E2E_DIR/ca.crt" -o /dev/null -w '%{http_code}' "https://$KUBELET_IP:10250/healthz")"
check "the admin's certificate is authorized there (a SubjectAccessReview)" "ok" "$(api "https://$KUBELET_IP:10250/healthz")"
sa_token=$(k create token default)
check "a service account without nodes/proxy is refused as upstream's kubelet says" "Forbidden (user=system:serviceaccount:default:default, verb=get, resource=nodes, subresource=proxy)" \
  "$(curl -s --cacert "$E2E_DIR/ca.crt" -H "Authorization: Bearer $sa_token" "https://$KUBELET_IP:10250/pods")"
check "and through the API server it is refused there" "403" "$(curl -s --cacert "$E2E_DIR/ca.crt" -H "Authorization: Bearer $sa_token" -o /dev/null -w '%{http_code}' "https://127.0.0.1:$PORT/api/v1/nodes/e2e-node/proxy/pods")"

# port-forward: kubectl's SPDY tunnelled in a websocket, and the Python client's v4 channels.
"$KUBECTL" port-forward -v=4 pod/web 18080:8080 >"$E2E_DIR/pf.log" 2>&1 &
PF=$!
eventually "kubectl port-forward reaches the pod's port" "hello from ferrokube" 20 curl -s --max-time 5 http://127.0.0.1:18080/
check "a second connection through the same port-forward" "hello from ferrokube" "$(curl -s --max-time 5 http://127.0.0.1:18080/)"
kill $PF 2>/dev/null; wait $PF 2>/dev/null
check_contains "kubectl tunnelled SPDY in a websocket (no fallback)" "negotiated protocol: portforward.k8s.io" "$(grep tunneling_dialer "$E2E_DIR/pf.log")"
# kubectl's direct SPDY upgrade (its fallback, and what older clients speak).
KUBECTL_PORT_FORWARD_WEBSOCKETS=false "$KUBECTL" port-forward -v=4 pod/web 18081:8080 >"$E2E_DIR/pf-spdy.log" 2>&1 &
PF=$!
eventually "port-forward over a direct SPDY upgrade" "hello from ferrokube" 20 curl -s --max-time 5 http://127.0.0.1:18081/
kill $PF 2>/dev/null; wait $PF 2>/dev/null
check "and no websocket was involved" "0" "$(grep -c tunneling_dialer "$E2E_DIR/pf-spdy.log")"
py=$("${PYTHON:-python3}" - "$KUBECONFIG" <<'PY' 2>&1
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
core = client.CoreV1Api(config.new_client_from_config(config_file=sys.argv[1]))
pf = portforward(core.connect_get_namespaced_pod_portforward, "web", "default", ports="8080")
sock = pf.socket(8080)
sock.settimeout(10)
sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while b"hello from ferrokube" not in data:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
sock.close()
print(data.decode().strip().splitlines()[-1])
PY
)
check "port-forward from the Python client" "hello from ferrokube" "$py"

# Pod to pod, and pod to host (the bridge address is the host's).
cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'printf "GET / HTTP/1.0\r\n\r\n" | nc $IP 8080']
YAML
check_cmd "client pod completes" k wait --for=jsonpath='{.status.phase}'=Succeeded pod/client --timeout=60s
check_contains "a pod reaches another pod by IP" "hello from ferrokube" "$(k logs client)"
python3 -m http.server 18099 --bind "$NET.1" --directory "$E2E_DIR" >/dev/null 2>&1 &
HTTPD=$!
echo "host side" >"$E2E_DIR/host.txt"
sleep 0.5
cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: tohost}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sh, -c, 'printf "GET /host.txt HTTP/1.0\r\n\r\n" | nc $NET.1 18099']
YAML
k wait --for=jsonpath='{.status.phase}'=Succeeded pod/tohost --timeout=60s >/dev/null
check_contains "a pod reaches the host" "host side" "$(k logs tohost)"
kill $HTTPD 2>/dev/null

# hostPort: the node's address and localhost forward to the pod; the rule goes with it.
HOSTPORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])')
cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: hostport}
spec:
  containers:
  - name: web
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [httpd, -f, -p, "80", -h, /www]
    ports: [{containerPort: 80, hostPort: $HOSTPORT}]
YAML
k wait --for=condition=Ready pod/hostport --timeout=60s >/dev/null
NODE_IP=$(k get node e2e-node -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
check "hostPort answers on the node's address" "hello from ferrokube" "$(curl -s --max-time 5 "http://$NODE_IP:$HOSTPORT/")"
check "hostPort answers on localhost" "hello from ferrokube" "$(curl -s --max-time 5 "http://127.0.0.1:$HOSTPORT/")"
k delete pod hostport --wait --timeout=60s >/dev/null
check "the hostPort rule is removed with the pod" "0" "$(iptables -w -t nat -S FERROKUBE-HOSTPORTS 2>/dev/null | grep -c -- "--dport $HOSTPORT ")"

# Crash loop with growing back-off, OOM kill, unpullable image.
k run crash --image=$IMAGE --image-pull-policy=IfNotPresent -- sh -c 'echo boom; exit 3' >/dev/null
k run hog --image=$IMAGE --image-pull-policy=IfNotPresent --restart=Never --overrides='{"spec":{"containers":[{"name":"hog","image":"'$IMAGE'","imagePullPolicy":"IfNotPresent","command":["dd","if=/dev/zero","of=/dev/null","bs=200M","count=1"],"resources":{"limits":{"memory":"32Mi"}}}]}}' >/dev/null
k run nopull --image=127.0.0.1:9/none:1 --image-pull-policy=Always >/dev/null
k wait --for=jsonpath='{.status.containerStatuses[0].restartCount}'=1 pod/crash --timeout=60s >/dev/null
k wait --for=jsonpath='{.status.containerStatuses[0].state.waiting.reason}'=CrashLoopBackOff pod/crash --timeout=60s >/dev/null
check "crashing container shows CrashLoopBackOff" "CrashLoopBackOff" "$(k get pod crash -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')"
check "its last state has the exit code" "3" "$(k get pod crash -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')"
check "logs --previous" "boom" "$(k logs crash --previous)"
# Back-off is reported as upstream's kubelet does: one BackOff event whose count grows with
# every sync that finds the container waiting (not one Event per restart or per sync).
backoff_counts() { k get events --field-selector involvedObject.name=crash -o jsonpath='{range .items[?(@.reason=="BackOff")]}{.count}{" "}{end}'; }
one_backoff_counted() { set -- $(backoff_counts); [ $# -eq 1 ] && [ "$1" -gt 1 ] && echo yes; }
eventually "a crash loop gives one BackOff event with a count" "yes" 60 one_backoff_counted
first_count=$(backoff_counts)
backoff_grew() { set -- $(backoff_counts); [ $# -eq 1 ] && [ "$1" -gt "$first_count" ] && echo yes; }
eventually "its count grows (still one event)" "yes" 30 backoff_grew
wide=$(k get events -o wide --field-selector involvedObject.name=crash)
check_contains "kubectl get events -o wide shows COUNT" "COUNT" "$(echo "$wide" | head -1)"
check_contains "with upstream's BackOff message" "Back-off restarting failed container crash in pod crash_default(" "$wide"
k wait --for=jsonpath='{.status.phase}'=Failed pod/hog --timeout=60s >/dev/null
# (containerd may report the OOM kill just after the exit: the reason follows within a sync)
eventually "a memory hog is OOMKilled" "OOMKilled" 10 k get pod hog -o jsonpath='{.status.containerStatuses[0].state.terminated.reason}'
k wait --for=jsonpath='{.status.containerStatuses[0].state.waiting.reason}'=ImagePullBackOff pod/nopull --timeout=60s >/dev/null
check "an unpullable image shows ImagePullBackOff between attempts" "ImagePullBackOff" "$(k get pod nopull -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}')"
check_contains "the failed pull (ErrImagePull) is reported as an event" "Failed to pull image \"127.0.0.1:9/none:1\"" "$(k get events --field-selector involvedObject.name=nopull -o jsonpath='{.items[*].message}')"

# Environment from ConfigMaps and Secrets; an image from the airgap directory.
k create cm envcm --from-literal=COLOR=blue --from-literal=SIZE=3 >/dev/null
k create secret generic envsec --from-literal=TOKEN=t0k3n >/dev/null
cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: envs}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: docker.io/library/airgap:1
    imagePullPolicy: Never
    command: [sh, -c, 'echo \$CFG_COLOR \$CFG_SIZE \$TOKEN \$PLAIN']
    envFrom: [{prefix: CFG_, configMapRef: {name: envcm}}]
    env:
    - {name: TOKEN, valueFrom: {secretKeyRef: {name: envsec, key: TOKEN}}}
    - {name: PLAIN, value: plain}
YAML
k wait --for=jsonpath='{.status.phase}'=Succeeded pod/envs --timeout=60s >/dev/null
check "airgap image ran; env from configMap, secret and values" "blue 3 t0k3n plain" "$(k logs envs)"

# Volumes: configMap (updated in place), secret (mode), emptyDir (disk and memory),
# downwardAPI, hostPath.
k create cm vcm --from-literal=greeting=hello >/dev/null
k create secret generic vsec --from-literal=pw=s3cret >/dev/null
cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: vols, labels: {app: vols}}
spec:
  containers:
  - name: c
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    volumeMounts:
    - {name: cfg, mountPath: /cfg}
    - {name: sec, mountPath: /sec, readOnly: true}
    - {name: scratch, mountPath: /scratch}
    - {name: mem, mountPath: /mem}
    - {name: info, mountPath: /info}
    - {name: host, mountPath: /host}
  volumes:
  - {name: cfg, configMap: {name: vcm}}
  - {name: sec, secret: {secretName: vsec, defaultMode: 0400}}
  - {name: scratch, emptyDir: {}}
  - {name: mem, emptyDir: {medium: Memory}}
  - {name: info, downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}}
  - {name: host, hostPath: {path: $E2E_DIR/hostdir, type: DirectoryOrCreate}}
YAML
k wait --for=condition=Ready pod/vols --timeout=60s >/dev/null
check "configMap volume" "hello" "$(k exec vols -- cat /cfg/greeting)"
check "secret volume with its mode" "s3cret -r--------" "$(k exec vols -- sh -c 'echo $(cat /sec/pw) $(ls -l /sec/pw | cut -c1-10)')"
check "downwardAPI volume" "vols" "$(k exec vols -- cat /info/name)"
check "emptyDir medium Memory is a tmpfs" "tmpfs" "$(k exec vols -- sh -c 'mount | grep " /mem " | cut -d" " -f1')"
k exec vols -- sh -c 'echo from-pod > /host/x' >/dev/null
check "hostPath volume" "from-pod" "$(cat "$E2E_DIR/hostdir/x" 2>/dev/null)"
k patch cm vcm --type=merge -p '{"data":{"greeting":"updated"}}' >/dev/null
for _ in $(seq 50); do [ "$(k exec vols -- cat /cfg/greeting)" = updated ] && break; sleep 0.2; done
check "configMap updates reach the running pod" "updated" "$(k exec vols -- cat /cfg/greeting)"
vols_uid=$(k get pod vols -o jsonpath='{.metadata.uid}')
k delete pod vols --wait --timeout=60s >/dev/null
check "the pod's volumes are removed with it" "no" "$([ -e "$E2E_DIR/data/pods/$vols_uid" ] && echo yes || echo no)"
check "no tmpfs left" "0" "$(grep -c "$vols_uid" /proc/mounts)"

# Probes: readiness gates Ready, a failing liveness probe restarts the container.
cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: probes}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [httpd, -f, -p, "8080", -h, /www]
    ports: [{name: http, containerPort: 8080}]
    readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}
    livenessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: notready
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    readinessProbe: {exec: {command: ["false"]}, periodSeconds: 1}
  - name: dies
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    livenessProbe: {exec: {command: [test, -e, /nope]}, periodSeconds: 1, failureThreshold: 2}
YAML
k wait --for=jsonpath='{.status.containerStatuses[?(@.name=="dies")].restartCount}'=1 pod/probes --timeout=90s >/dev/null
check "a failing liveness probe restarts the container" "1" "$(k get pod probes -o jsonpath='{.status.containerStatuses[?(@.name=="dies")].restartCount}')"
check "the restarted container's lastState is terminated" "yes" "$(k get pod probes -o jsonpath='{.status.containerStatuses[?(@.name=="dies")].lastState.terminated.exitCode}' | grep -q . && echo yes)"
check "a passing httpGet readiness probe makes the container ready" "true" "$(k get pod probes -o jsonpath='{.status.containerStatuses[?(@.name=="web")].ready}')"
check "a failing readiness probe keeps the container not ready" "false" "$(k get pod probes -o jsonpath='{.status.containerStatuses[?(@.name=="notready")].ready}')"
check "and the pod NotReady" "False" "$(k get pod probes -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
check "the healthy containers were not restarted" "0" "$(k get pod probes -o jsonpath='{.status.containerStatuses[?(@.name=="web")].restartCount}')"
k delete pod probes --wait=false >/dev/null

# securityContext (pod-level user and groups, container overrides, read-only root,
# capabilities, privileged), workingDir, and resource values in env and downwardAPI files.
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: secure}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 3000, supplementalGroups: [4000]}
  volumes: [{name: res, downwardAPI: {items: [{path: cpu_m, resourceFieldRef: {containerName: user, resource: requests.cpu, divisor: 1m}}]}}]
  containers:
  - name: user
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    workingDir: /tmp
    securityContext: {readOnlyRootFilesystem: true}
    resources: {limits: {memory: 64Mi}, requests: {cpu: 250m}}
    env: [{name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}]
    volumeMounts: [{name: res, mountPath: /res}]
  - name: netadmin
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    securityContext: {runAsUser: 0, runAsGroup: 0, capabilities: {add: [NET_ADMIN], drop: [NET_RAW]}}
  - name: priv
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    securityContext: {runAsUser: 0, privileged: true}
YAML
check_cmd "the securityContext pod runs" k wait --for=condition=Ready pod/secure --timeout=60s
check "runAsUser/runAsGroup/supplementalGroups from the pod" "1000 3000 4000" "$(k exec secure -c user -- sh -c 'echo $(id -u) $(id -g) $(id -G | tr " " "\n" | grep 4000)')"
check "readOnlyRootFilesystem" "read-only" "$(k exec secure -c user -- sh -c 'touch /x 2>/dev/null && echo writable || echo read-only')"
check "workingDir" "/tmp" "$(k exec secure -c user -- pwd)"
check "resourceFieldRef in env (limits.memory / 1Mi)" "64" "$(k exec secure -c user -- sh -c 'echo $MEM_MI')"
check "resourceFieldRef in a downwardAPI file (requests.cpu / 1m)" "250" "$(k exec secure -c user -- cat /res/cpu_m)"
check "the container's runAsUser overrides the pod's" "0" "$(k exec secure -c netadmin -- id -u)"
# Default effective set a80425fb, plus NET_ADMIN (bit 12), minus NET_RAW (bit 13).
check "capabilities add and drop" "00000000a80415fb" "$(k exec secure -c netadmin -- awk '/^CapEff/ {print $2}' /proc/self/status)"
check "privileged gets every capability" "$(awk '/^CapBnd/ {print $2}' /proc/self/status)" "$(k exec secure -c priv -- awk '/^CapEff/ {print $2}' /proc/self/status)"
k delete pod secure --wait=false >/dev/null

# A private registry on loopback (docker-registry with basic auth): the pull needs the pod's
# imagePullSecret, or its service account's.
REG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=$E2E_DIR/registry
mkdir -p "$REG/data"
python3 -W ignore -c "import crypt; print('alice:' + crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))" >"$REG/htpasswd"
cat >"$REG/config.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $REG/data}}
http: {addr: "127.0.0.1:$REG_PORT"}
auth: {htpasswd: {realm: e2e, path: $REG/htpasswd}}
YAML
docker-registry serve "$REG/config.yml" >"$REG/log" 2>&1 &
REG_PID=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" && break; sleep 0.1; done
check "the registry wants credentials" "401" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$REG_PORT/v2/")"
PRIV=127.0.0.1:$REG_PORT/e2e/busybox:pulled
check_cmd "the test image is pushed to the registry" python3 "$(dirname "$0")/../images/push.py" "$E2E_DIR/busybox.tar" "127.0.0.1:$REG_PORT" e2e/busybox:pulled alice:s3cret
k run private-anon --image="$PRIV" --image-pull-policy=Always -- sleep 3600 >/dev/null
eventually "without credentials the pull fails" "yes" 60 sh -c "$KUBECTL get pod private-anon -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -qE '^(ErrImagePull|ImagePullBackOff)$' && echo yes"
k create secret docker-registry regcred --docker-server="127.0.0.1:$REG_PORT" --docker-username=alice --docker-password=s3cret >/dev/null
k run private --image="$PRIV" --image-pull-policy=Always --overrides='{"spec":{"imagePullSecrets":[{"name":"regcred"}]}}' -- sleep 3600 >/dev/null
check_cmd "an image pulled from the local registry with an imagePullSecret runs" k wait --for=condition=Ready pod/private --timeout=90s
k create sa puller >/dev/null
k patch sa puller -p '{"imagePullSecrets":[{"name":"regcred"}]}' >/dev/null
k run private-sa --image="$PRIV" --image-pull-policy=Always --overrides='{"spec":{"serviceAccountName":"puller"}}' -- sleep 3600 >/dev/null
check "the service account's pull secrets are copied to the pod" "regcred" "$(k get pod private-sa -o jsonpath='{.spec.imagePullSecrets[*].name}')"
check_cmd "and the pull with them succeeds" k wait --for=condition=Ready pod/private-sa --timeout=90s
k delete pod private-anon private private-sa --wait=false >/dev/null
kill "$REG_PID" 2>/dev/null

# SIGTERM: an orderly stop (stop accepting, controllers, node components, containerd, then
# the store) that leaves the pods running.
before=$(k get pod web -o jsonpath='{.status.containerStatuses[*].containerID} {.status.containerStatuses[*].restartCount}')
t0=$SECONDS
kill -TERM "$SERVER_PID"
wait "$SERVER_PID"
rc=$?
SERVER_PID=
check "SIGTERM stops the server with status 0" "0" "$rc"
check "within 15 s" "yes" "$([ $((SECONDS - t0)) -le 15 ] && echo yes)"
check_contains "the store is flushed last" "ferrokube::server: stopped" "$(cat "$E2E_DIR/server.log")"
check "the pod keeps serving while ferrokube is stopped" "hello from ferrokube" "$(curl -s --max-time 5 "http://$IP:8080/")"
start_node || exit 1
eventually "after an orderly restart: same containers, same restart counts" "$before" 30 k get pod web -o jsonpath='{.status.containerStatuses[*].containerID} {.status.containerStatuses[*].restartCount}'

# kill -9 ferrokube: containers keep running, same IDs, restart counts unchanged.
stop_server KILL
check "the pod keeps serving while ferrokube is down" "hello from ferrokube" "$(curl -s --max-time 5 "http://$IP:8080/")"
start_node || exit 1
sleep 3
check "after restart: same containers, same restart counts" "$before" "$(k get pod web -o jsonpath='{.status.containerStatuses[*].containerID} {.status.containerStatuses[*].restartCount}')"
check "after restart the pod is still Ready" "True" "$(k get pod web -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"

# Deleting pods leaves nothing behind.
uids=$(k get pods -o jsonpath='{.items[*].metadata.uid}')
# A preStop hook runs before the container is stopped.
mkdir -p "$E2E_DIR/hooks"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: hooked}
spec:
  terminationGracePeriodSeconds: 10
  volumes: [{name: h, hostPath: {path: $E2E_DIR/hooks, type: DirectoryOrCreate}}]
  containers:
  - name: c
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "exec sleep 3600"]
    volumeMounts: [{name: h, mountPath: /hooks}]
    lifecycle:
      postStart: {exec: {command: [sh, -c, "echo started > /hooks/poststart"]}}
      preStop: {exec: {command: [sh, -c, "echo stopping > /hooks/prestop"]}}
  - name: bad-hook
    image: $IMAGE
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "exec sleep 3600"]
    lifecycle: {postStart: {exec: {command: ["false"]}}}
YAML
eventually "a postStart hook ran after the start" "started" 60 cat "$E2E_DIR/hooks/poststart"
eventually "a failing postStart hook kills its container, which restarts" "yes" 60 sh -c "[ \"\$($KUBECTL get pod hooked -o jsonpath='{.status.containerStatuses[?(@.name==\"bad-hook\")].restartCount}')\" -ge 1 ] && echo yes"
k delete pod hooked --wait=true --timeout=60s >/dev/null
check "a preStop hook runs before the container stops" "stopping" "$(cat "$E2E_DIR/hooks/prestop" 2>/dev/null)"
check "pods have veths on the bridge while they run" "yes" "$([ "$(ip -br link show master "$BRIDGE" | wc -l)" -gt 0 ] && echo yes)"
# Minutes in, the node renewing its Lease is still Ready: the node controller never judged it
# silent (it reads the Leases from its informer) and marked no pod NotReady.
check "the node stays Ready past the grace period" "True" "$(k get node e2e-node -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
check "no NodeNotReady event" "" "$(k get events -A --field-selector reason=NodeNotReady -o jsonpath='{range .items[*]}{.firstTimestamp} {.message}{"\n"}{end}')"
# Kubelet timing as upstream's: a pod's containers stop in parallel (two that ignore SIGTERM
# take one grace period), the final status is written before the object goes (terminated
# containers, Ready=False, a terminal phase), and the first restart after a crash is immediate.
cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - {name: a, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "trap '' TERM; while true; do sleep 1; done"]}
  - {name: b, image: $IMAGE, imagePullPolicy: IfNotPresent, command: [sh, -c, "trap '' TERM; while true; do sleep 1; done"]}
YAML
k wait --for=condition=Ready pod/stubborn --timeout=60s >/dev/null
(timeout 30 "$KUBECTL" get pod stubborn -w -o jsonpath='{.status.phase} {.status.conditions[?(@.type=="Ready")].status} {.status.containerStatuses[*].state.terminated.exitCode}{"\n"}' >"$E2E_DIR/final" 2>&1 &)
sleep 0.5
t0=$(date +%s%N)
k delete pod stubborn --wait --timeout=60s >/dev/null
elapsed=$((($(date +%s%N) - t0) / 1000000))
echo "# two SIGTERM-ignoring containers deleted in $elapsed ms (grace period 5 s)"
check "two containers that ignore SIGTERM are gone in one grace period (+ 2 s)" "yes" "$([ "$elapsed" -le 7000 ] && echo yes)"
check_contains "a deleted pod's final status comes before it goes" "Failed False 137 137" "$(cat "$E2E_DIR/final")"
k run crashfast --image "$IMAGE" --image-pull-policy IfNotPresent -- sh -c 'sleep 1; exit 3' >/dev/null
k wait --for=jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}'=3 pod/crashfast --timeout=60s >/dev/null 2>&1 &
eventually "the first restart after a crash is immediate" "1" 6 "$KUBECTL" get pod crashfast -o jsonpath='{.status.containerStatuses[0].restartCount}'
check_cmd "delete all pods" k delete pods --all --wait --timeout=90s
sleep 1
check "a deleted pod's token no longer authenticates" "401" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $PODTOKEN" "https://127.0.0.1:$PORT/api/v1/namespaces/default/pods")"
check "no veth left on the bridge" "0" "$(ip -br link show master "$BRIDGE" | wc -l)"
check "no address lease left" "" "$(ls "$E2E_DIR/data/cni/ipam/ferrokube" 2>/dev/null | grep -v '^last$' | xargs)"
left=0
for u in $uids; do left=$((left + $(find /sys/fs/cgroup -maxdepth 3 -name "pod$u" 2>/dev/null | wc -l))); done
check "no pod cgroup left" "0" "$left"
check "no network namespace mount left" "0" "$(awk -v d="$RUN" '$2 ~ "^"d".*netns" {n++} END {print n+0}' /proc/mounts)"

# --container-runtime-endpoint: an existing containerd (started here, from the configuration
# ferrokube wrote, moved to a root, state and socket of its own) runs the pods; ferrokube
# starts no containerd and imports the airgap images into that one.
stop_server TERM
EXT=$RUN/ext-runtime
mkdir -p "$EXT"
sed -e "s|^root = .*|root = \"$EXT/root\"|" -e "s|$RUN/containerd|$EXT/state|g" "$E2E_DIR/data/etc/containerd.toml" >"$EXT/config.toml"
containerd --config "$EXT/config.toml" >"$EXT/log" 2>&1 &
EXT_PID=$!
for _ in $(seq 100); do [ -S "$EXT/state/containerd.sock" ] && break; sleep 0.1; done
start_node --container-runtime-endpoint "unix://$EXT/state/containerd.sock" || exit 1
check "ferrokube started no containerd of its own" "0" "$(pgrep -c -f "containerd --config $E2E_DIR/data/etc/containerd.toml")"
k run ext --image=docker.io/library/airgap:1 --image-pull-policy=Never -- sleep 3600 >/dev/null
check_cmd "a pod runs on the existing runtime" k wait --for=condition=Ready pod/ext --timeout=90s
check "exec through the existing runtime" "ext-ok" "$(k exec ext -- echo ext-ok)"
cid=$(k get pod ext -o jsonpath='{.status.containerStatuses[0].containerID}' | sed 's|containerd://||')
check_contains "its container is in that runtime" "$cid" "$(ctr --address "$EXT/state/containerd.sock" -n k8s.io containers ls -q)"
k delete pod ext --wait --timeout=60s >/dev/null
stop_server TERM
kill "$EXT_PID" 2>/dev/null; wait "$EXT_PID" 2>/dev/null

summary
