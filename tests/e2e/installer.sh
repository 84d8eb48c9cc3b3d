#!/usr/bin/env bash
# install.sh on a host without systemd as PID 1 (root): shellcheck-clean; refuses non-root;
# downloads from a local HTTP server with a sha256 check (a bad checksum refused, nothing
# replaced); writes the systemd unit (Type=notify, KillMode=process, Delegate=yes) and a
# private environment file; re-running upgrades in place; the airgap path; the unit's command
# run as systemd would (NOTIFY_SOCKET) sends READY=1 once /readyz is 200; the uninstall script
# removes everything it installed. The agent role: FERROKUBE_URL and FERROKUBE_TOKEN required,
# a ferrokube-agent unit with them in its private environment file; its command joins the
# server, tells READY=1 and runs a pod; its uninstall script, told the paths the service's
# flags name, stops it and removes its bridge, chains and files.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
script=$root/install.sh

if command -v shellcheck >/dev/null; then
  check_cmd "install.sh is shellcheck-clean (POSIX sh)" shellcheck -s sh "$script"
else
  not_ok "shellcheck is installed (scripts/install-deps.sh installs it)"
fi

www=$E2E_DIR/www
mkdir -p "$www"
cp "$FERROKUBE" "$www/ferrokube"
(cd "$www" && sha256sum ferrokube >ferrokube.sha256)
HTTP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$www" >"$E2E_DIR/http.log" 2>&1 &
HTTP_PID=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$HTTP_PORT/ferrokube.sha256" >/dev/null && break; sleep 0.1; done

bin=$E2E_DIR/bin
export INSTALL_FERROKUBE_DOWNLOAD_URL=http://127.0.0.1:$HTTP_PORT INSTALL_FERROKUBE_BIN_DIR=$bin \
  INSTALL_FERROKUBE_SYSTEMD_DIR=$E2E_DIR/systemd INSTALL_FERROKUBE_CONFIG_DIR=$E2E_DIR/etc \
  INSTALL_FERROKUBE_SKIP_ENABLE=true INSTALL_FERROKUBE_SKIP_START=true \
  INSTALL_FERROKUBE_EXEC="server --disable-agent --https-listen-port $PORT --bind-address 127.0.0.1 --write-kubeconfig $KUBECONFIG" \
  FERROKUBE_DATA_DIR=$E2E_DIR/data
install_sh() { sh "$script" 2>&1; }

out=$(setpriv --reuid=65534 --regid=65534 --clear-groups sh "$script" 2>&1)
check_contains "install.sh refuses to run as non-root, saying how" "run as root" "$out"

out=$(install_sh); rc=$?
check "install.sh succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/       /'
check "the binary is the one served (sha256 checked)" "$(sha256sum <"$FERROKUBE")" "$(sha256sum <"$bin/ferrokube")"
check "ferrokube-killall.sh and ferrokube-uninstall.sh beside it" "yes yes" "$([ -x "$bin/ferrokube-killall.sh" ] && echo yes) $([ -x "$bin/ferrokube-uninstall.sh" ] && echo yes)"
unit=$E2E_DIR/systemd/ferrokube.service
for line in "Type=notify" "KillMode=process" "Delegate=yes" "Restart=always" "LimitNOFILE=1048576" "ExecStart=$bin/ferrokube server --disable-agent --https-listen-port $PORT" "EnvironmentFile=-$E2E_DIR/systemd/ferrokube.service.env" "WantedBy=multi-user.target"; do
  check_contains "the unit has $line" "$line" "$(cat "$unit" 2>&1)"
done
check "the environment file is private" "600" "$(stat -c %a "$E2E_DIR/systemd/ferrokube.service.env" 2>&1)"
check_contains "and passes FERROKUBE_* to the service" "FERROKUBE_DATA_DIR=$E2E_DIR/data" "$(cat "$E2E_DIR/systemd/ferrokube.service.env")"

# A bad checksum is refused and nothing is replaced.
echo "0000000000000000000000000000000000000000000000000000000000000000  ferrokube" >"$www/ferrokube.sha256"
out=$(install_sh); rc=$?
check "a checksum mismatch fails the install" "1" "$rc"
check_contains "and says so" "checksum mismatch" "$out"
check "the installed binary is untouched" "$(sha256sum <"$FERROKUBE")" "$(sha256sum <"$bin/ferrokube")"

# Re-running with a new release upgrades in place.
printf '#!/bin/sh\necho "ferrokube v9.9.9-e2e"\n' >"$www/ferrokube"
(cd "$www" && sha256sum ferrokube >ferrokube.sha256)
out=$(install_sh)
check_contains "re-running installs the new release" "ferrokube v9.9.9-e2e" "$out"
cp "$FERROKUBE" "$www/ferrokube"
(cd "$www" && sha256sum ferrokube >ferrokube.sha256)
install_sh >/dev/null
check "and back (idempotent)" "$(sha256sum <"$FERROKUBE")" "$(sha256sum <"$bin/ferrokube")"

# Airgap: the binary in place, nothing downloaded.
kill "$HTTP_PID" 2>/dev/null
out=$(INSTALL_FERROKUBE_SKIP_DOWNLOAD=true install_sh); rc=$?
check "airgap install with the binary in place" "0" "$rc"
out=$(INSTALL_FERROKUBE_SKIP_DOWNLOAD=true INSTALL_FERROKUBE_BIN_DIR=$E2E_DIR/empty install_sh)
check_contains "airgap without a binary says where it looked" "no executable $E2E_DIR/empty/ferrokube" "$out"

# The unit's command as systemd runs it: READY=1 on NOTIFY_SOCKET once the API is ready.
exec_line=$(sed -n 's/^ExecStart=//p' "$unit")
sock=$E2E_DIR/notify.sock
python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); s.settimeout(30)
print(s.recv(64).decode(), flush=True)' "$sock" >"$E2E_DIR/notified" &
LISTENER=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.05; done
set -a; . "$E2E_DIR/systemd/ferrokube.service.env"; set +a
# shellcheck disable=SC2086
NOTIFY_SOCKET=$sock $exec_line >>"$E2E_DIR/server.log" 2>&1 &
SERVER_PID=$!
wait "$LISTENER"
ready_then=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$PORT/readyz")
check "the service tells systemd READY=1" "READY=1" "$(cat "$E2E_DIR/notified")"
check "and /readyz answers 200 by then" "200" "$ready_then"
check "the kubeconfig it wrote works" "Active" "$(k get ns default -o jsonpath='{.status.phase}' 2>&1)"

# The agent role, beside the server (which runs without a node of its own).
AGENT_PID=
agent_cleanup() {
  if [ -n "$AGENT_PID" ]; then
    kill -KILL "$AGENT_PID" 2>/dev/null
    "$FERROKUBE" killall --data-dir "$E2E_DIR/agent-data" --run-dir "$E2E_DIR/agent-run" --pod-bridge fkinst0 >/dev/null 2>&1
  fi
  cleanup
}
trap agent_cleanup EXIT
abin=$E2E_DIR/agent-bin
mkdir -p "$abin" && cp "$FERROKUBE" "$abin/ferrokube"
agent_install() {
  env INSTALL_FERROKUBE_SKIP_DOWNLOAD=true INSTALL_FERROKUBE_BIN_DIR="$abin" INSTALL_FERROKUBE_SYSTEMD_DIR="$E2E_DIR/agent-systemd" \
    INSTALL_FERROKUBE_CONFIG_DIR="$E2E_DIR/agent-etc" FERROKUBE_DATA_DIR="$E2E_DIR/agent-data" \
    INSTALL_FERROKUBE_EXEC="agent --node-name inst-agent --run-dir $E2E_DIR/agent-run --pod-bridge fkinst0 --kubelet-root-dir $E2E_DIR/agent-kubelet --cgroup-root /ferrokube/inst-agent" \
    "$@" sh "$script" 2>&1
}
out=$(agent_install FERROKUBE_URL="https://127.0.0.1:$PORT"); rc=$?
check "the agent role without FERROKUBE_TOKEN is refused" "1" "$rc"
check_contains "saying what to give" "the agent needs FERROKUBE_TOKEN" "$out"
out=$(agent_install FERROKUBE_URL="https://127.0.0.1:$PORT" FERROKUBE_TOKEN="$(cat "$E2E_DIR/data/server/token")"); rc=$?
check "install.sh for an agent succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/       /'
aunit=$E2E_DIR/agent-systemd/ferrokube-agent.service
check_contains "its unit is ferrokube-agent.service, running the agent" "ExecStart=$abin/ferrokube agent --node-name inst-agent" "$(cat "$aunit" 2>&1)"
aenv=$E2E_DIR/agent-systemd/ferrokube-agent.service.env
check "its environment file is private" "600" "$(stat -c %a "$aenv" 2>&1)"
check "and holds the server's URL and the token" "FERROKUBE_URL=https://127.0.0.1:$PORT FERROKUBE_TOKEN=K10" "$(grep -o '^FERROKUBE_URL=.*\|^FERROKUBE_TOKEN=K10' "$aenv" | xargs)"
check_contains "its killall script cleans where the flags say" "--run-dir \"$E2E_DIR/agent-run\" --pod-bridge \"fkinst0\"" "$(cat "$abin/ferrokube-killall.sh")"
exec_line=$(sed -n 's/^ExecStart=//p' "$aunit")
sock=$E2E_DIR/agent-notify.sock
python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(sys.argv[1]); s.settimeout(60)
print(s.recv(64).decode(), flush=True)' "$sock" >"$E2E_DIR/agent-notified" &
LISTENER=$!
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.05; done
# shellcheck disable=SC2086
(set -a; . "$aenv"; set +a; NOTIFY_SOCKET=$sock exec $exec_line) >>"$E2E_DIR/agent.log" 2>&1 &
AGENT_PID=$!
wait "$LISTENER"
check "the agent tells systemd READY=1" "READY=1" "$(cat "$E2E_DIR/agent-notified")"
eventually "its node joined and is Ready" "True" 60 k get node inst-agent -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
python3 "$(dirname "$0")/../images/mkimage.py" "$E2E_DIR/busybox.tar" docker.io/library/busybox:inst >/dev/null
"$FERROKUBE" images import --run-dir "$E2E_DIR/agent-run" "$E2E_DIR/busybox.tar" >/dev/null
k run on-agent --image=docker.io/library/busybox:inst --image-pull-policy=Never --overrides='{"spec":{"nodeName":"inst-agent"}}' -- sleep 3600 >/dev/null
check_cmd "a pod runs on it" k wait --for=condition=Ready pod/on-agent --timeout=60s
out=$("$abin/ferrokube-uninstall.sh" 2>&1); rc=$?
check "the agent's ferrokube-uninstall.sh succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/       /'
if kill -0 "$AGENT_PID" 2>/dev/null; then not_ok "the agent is stopped"; else ok "the agent is stopped"; fi
wait "$AGENT_PID" 2>/dev/null; AGENT_PID=
check "its bridge is gone" "" "$(ip -br link show fkinst0 2>/dev/null)"
check "no containerd of its is left" "" "$(pgrep -f "$E2E_DIR/agent-data" | head -3)"
left=$(ls "$abin" "$E2E_DIR/agent-systemd" "$E2E_DIR/agent-etc" "$E2E_DIR/agent-data" "$E2E_DIR/agent-run" 2>/dev/null | grep -v ':$' | grep -c . || true)
check "no file of the agent's install is left" "0" "$left"
k delete node inst-agent >/dev/null 2>&1

# Uninstall: the server stopped, every installed file gone.
out=$("$bin/ferrokube-uninstall.sh" 2>&1); rc=$?
check "ferrokube-uninstall.sh succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | sed 's/^/       /'
if kill -0 "$SERVER_PID" 2>/dev/null; then not_ok "the server is stopped"; else ok "the server is stopped"; fi
wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
left=$(ls "$bin" "$E2E_DIR/systemd" "$E2E_DIR/etc" "$E2E_DIR/data" 2>/dev/null | grep -v ':$' | grep -c . || true)
check "no file of the install is left (binary, scripts, unit, env, config, data)" "0" "$left"
summary
