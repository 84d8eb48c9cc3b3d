#!/usr/bin/env bash
# registries.yaml (root, real containerd), with containerd's configuration from the user's
# template: docker.io mirrored to a local docker-registry with
# basic auth; a pod naming `busybox` (implicit :latest, so pulled Always) pulls from the mirror
# and runs; with the mirror down the pull fails with ErrImagePull and the mirror's error; a
# bad registries.yaml is refused at start with what to fix. (The image is on the node by
# then: Always pulls all the same, as upstream's kubelet does.) A second registry's mirror
# keeps its repositories under other names (registries.yaml `rewrite`): its pod pulls
# through ferrokube's relay, authenticated, under the rewritten name.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
use_node
images=$(dirname "$0")/../images

REG_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REG=$E2E_DIR/registry
mkdir -p "$REG/data"
python3 -W ignore -c "import crypt; print('alice:' + crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))" >"$REG/htpasswd"
printf 'version: 0.1\nlog: {level: info}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: "127.0.0.1:%s"}\nauth: {htpasswd: {realm: e2e, path: %s}}\n' \
  "$REG/data" "$REG_PORT" "$REG/htpasswd" >"$REG/config.yml"
docker-registry serve "$REG/config.yml" >"$REG/log" 2>&1 &
REG_PID=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$REG_PORT/v2/" && break; sleep 0.1; done
check "the mirror wants credentials" "401" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$REG_PORT/v2/")"
python3 "$images/mkimage.py" "$E2E_DIR/busybox.tar" docker.io/library/busybox:latest >/dev/null
check_cmd "busybox is pushed to the mirror as library/busybox:latest" python3 "$images/push.py" "$E2E_DIR/busybox.tar" "127.0.0.1:$REG_PORT" library/busybox:latest alice:s3cret
check_cmd "and as mirrored/app:1 (example.test/team/app:1 renamed)" python3 "$images/push.py" "$E2E_DIR/busybox.tar" "127.0.0.1:$REG_PORT" mirrored/app:1 alice:s3cret

conf=$E2E_DIR/registries.yaml
cat >"$conf" <<YAML
mirrors:
  docker.io:
    endpoint:
      - "http://127.0.0.1:$REG_PORT"
  example.test:
    endpoint:
      - "http://127.0.0.1:$REG_PORT"
    rewrite:
      "^team/(.*)": "mirrored/\$1"
configs:
  "127.0.0.1:$REG_PORT":
    auth:
      username: alice
      password: s3cret
YAML
printf 'mirrors:\n  docker.io:\n    endpoints: [http://x]\n' >"$E2E_DIR/bad.yaml"
out=$("$FERROKUBE" server --data-dir "$E2E_DIR/bad-data" --https-listen-port "$PORT" --bind-address 127.0.0.1 --write-kubeconfig "$E2E_DIR/bad-kc" \
  --run-dir "$E2E_DIR/bad-run" --node-name bad --pod-bridge "${BRIDGE}x" --private-registry "$E2E_DIR/bad.yaml" 2>&1)
check_contains "a bad registries.yaml is refused at start, naming the file" "$E2E_DIR/bad.yaml" "$out"
check_contains "and the key" "unknown field \`endpoints\`" "$out"
printf 'mirrors:\n  docker.io:\n    endpoint: [http://x]\n    rewrite: {"^(x": y}\n' >"$E2E_DIR/bad.yaml"
out=$("$FERROKUBE" server --data-dir "$E2E_DIR/bad-data" --https-listen-port "$PORT" --bind-address 127.0.0.1 --write-kubeconfig "$E2E_DIR/bad-kc" \
  --run-dir "$E2E_DIR/bad-run" --node-name bad --pod-bridge "${BRIDGE}x" --private-registry "$E2E_DIR/bad.yaml" 2>&1)
check_contains "a rewrite that is no regular expression is refused, naming it" 'mirrors.docker.io.rewrite "^(x": regex parse error' "$out"

# The user's own containerd template, here our configuration with a line of theirs on top.
mkdir -p "$E2E_DIR/data/agent/containerd"
printf '# e2e: my own containerd template\n{{ferrokube_config}}\n' >"$E2E_DIR/data/agent/containerd/config.toml.tmpl"
start_node --private-registry "$conf" || exit 1
check "containerd's configuration comes from the user's template" "# e2e: my own containerd template" "$(head -1 "$E2E_DIR/data/etc/containerd.toml")"
check "which ferrokube leaves as it was" "{{ferrokube_config}}" "$(sed -n 2p "$E2E_DIR/data/agent/containerd/config.toml.tmpl")"
check_contains "containerd's hosts.toml for docker.io names the mirror" "[host.\"http://127.0.0.1:$REG_PORT\"]" "$(cat "$E2E_DIR/data/etc/containerd/certs.d/docker.io/hosts.toml" 2>&1)"
k run mirrored --image=busybox -- sleep 3600 >/dev/null
check "a pod naming busybox pulls Always (implicit :latest)" "Always" "$(k get pod mirrored -o jsonpath='{.spec.containers[0].imagePullPolicy}')"
if k wait --for=condition=Ready pod/mirrored --timeout=90s >/dev/null 2>&1; then ok "it pulls from the mirror and runs"; else
  not_ok "it pulls from the mirror and runs" "$(k get pod mirrored -o jsonpath='{.status.containerStatuses[0].state}')"; fi
check_contains "the mirror served the manifest to containerd, authenticated" 'useragent="containerd' "$(grep 'authorized request' "$REG/log" | grep 'manifests/latest' | grep containerd | head -1)"

relay=$(sed -n 's/^\[host\."http:\/\/\(127\.0\.0\.1:[0-9]*\)"\]$/\1/p' "$E2E_DIR/data/etc/containerd/certs.d/example.test/hosts.toml" 2>/dev/null)
check_contains "example.test's hosts.toml names the relay for its rewritten mirror" "127.0.0.1:" "$relay"
k run renamed --image=example.test/team/app:1 -- sleep 3600 >/dev/null
if k wait --for=condition=Ready pod/renamed --timeout=90s >/dev/null 2>&1; then ok "a pod naming example.test/team/app:1 pulls it from the mirror's mirrored/app:1 and runs"; else
  not_ok "a pod naming example.test/team/app:1 pulls it from the mirror's mirrored/app:1 and runs" "$(k get pod renamed -o jsonpath='{.status.containerStatuses[0].state}')"; fi
check_contains "the mirror was asked for the renamed repository by containerd, authenticated" '/v2/mirrored/app/manifests/1?ns=example.test' "$(grep 'authorized request' "$REG/log" | grep 'useragent="containerd' | grep 'manifests/1' | head -1)"
check_contains "containerd keeps the image under its own name" "example.test/team/app:1" "$(ctr --address "$RUN/containerd/containerd.sock" -n k8s.io images ls -q)"

kill "$REG_PID" 2>/dev/null; wait "$REG_PID" 2>/dev/null
k run mirror-down --image=busybox -- sleep 3600 >/dev/null
eventually "with the mirror down the pull fails" "yes" 60 sh -c "$KUBECTL get pod mirror-down -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -qE '^(ErrImagePull|ImagePullBackOff)$' && echo yes"
msg=$(k get events --field-selector involvedObject.name=mirror-down,reason=Failed -o jsonpath='{.items[*].message}')
check_contains "with ErrImagePull's message naming the mirror" "127.0.0.1:$REG_PORT" "$msg"
k run renamed-down --image=example.test/team/app:2 -- sleep 3600 >/dev/null
eventually "with the mirror down a rewritten pull fails" "yes" 60 sh -c "$KUBECTL get pod renamed-down -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -qE '^(ErrImagePull|ImagePullBackOff)$' && echo yes"
msg=$(k get events --field-selector involvedObject.name=renamed-down,reason=Failed -o jsonpath='{.items[*].message}')
check_contains "with the relay's account of the mirror's fault" "http://127.0.0.1:$REG_PORT/v2/mirrored/app/manifests/2?ns=example.test: dial tcp 127.0.0.1:$REG_PORT: connect: connection refused" "$msg"
k delete pod mirrored mirror-down renamed renamed-down --wait=false >/dev/null
summary
