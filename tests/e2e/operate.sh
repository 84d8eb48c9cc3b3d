#!/usr/bin/env bash
# Operating a server: the configuration file (flags as keys, drop-ins, the command line wins,
# unknown keys refused).
set -uo pipefail
. "$(dirname "$0")/lib.sh"

# ---- configuration file --------------------------------------------------------------------
cfg=$E2E_DIR/etc/config.yaml
mkdir -p "$E2E_DIR/etc/config.yaml.d"
cat >"$cfg" <<EOF
# Every flag of \`ferrokube server\` is a key.
data-dir: $E2E_DIR/data
https-listen-port: $PORT
bind-address: 127.0.0.1
write-kubeconfig: $KUBECONFIG
disable-agent: true
tls-san: [config-one.example]
EOF
printf 'tls-san+: [config-two.example]\nwrite-kubeconfig-mode: "640"\n' >"$E2E_DIR/etc/config.yaml.d/10-names.yaml"
"$FERROKUBE" server --config "$cfg" >>"$E2E_DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
check "the server started from config.yaml answers on its https-listen-port" "ok" "$(curl -skf "https://127.0.0.1:$PORT/readyz")"
check "write-kubeconfig and data-dir from the file" "Active" "$(k get ns default -o jsonpath='{.status.phase}' 2>&1)"
sans=$(openssl s_client -connect "127.0.0.1:$PORT" </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName 2>/dev/null)
check_contains "tls-san from the file is in the serving certificate" "config-one.example" "$sans"
check_contains "tls-san+ of a drop-in adds to it" "config-two.example" "$sans"
check "a drop-in's write-kubeconfig-mode applies" "640" "$(stat -c %a "$KUBECONFIG")"
stop_server TERM

# The command line wins over the file.
PORT2=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$FERROKUBE" server --config "$cfg" --https-listen-port "$PORT2" >>"$E2E_DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$PORT2/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
check "a flag on the command line wins over the file" "ok" "$(curl -skf "https://127.0.0.1:$PORT2/readyz")"
check "the file's port is not used then" "000" "$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$PORT/readyz")"
stop_server TERM

# Mistakes are refused before anything starts, naming what to fix.
printf 'data-dir: %s\ntls-sans: [typo.example]\n' "$E2E_DIR/data" >"$E2E_DIR/bad.yaml"
out=$("$FERROKUBE" server --config "$E2E_DIR/bad.yaml" 2>&1); rc=$?
check "a bad key makes the server exit with an error" "1" "$rc"
check_contains "the error names the key" 'unknown key "tls-sans"' "$out"
check_contains "and the file" "bad.yaml" "$out"
printf 'https-listen-port: [1, 2]\n' >"$E2E_DIR/bad2.yaml"
check_contains "a list for a one-value flag is refused" "https-listen-port: takes one value" "$("$FERROKUBE" server --config "$E2E_DIR/bad2.yaml" 2>&1)"
check_contains "a missing file is named" "$E2E_DIR/none.yaml" "$("$FERROKUBE" server --config "$E2E_DIR/none.yaml" 2>&1)"

summary
