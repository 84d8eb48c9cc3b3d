#!/usr/bin/env bash
# Operating a server: the configuration file (flags as keys, drop-ins, the command line wins,
# unknown keys refused); snapshots (online under write load, restore onto a fresh data dir,
# the guard against a second restore, ls/delete/prune); auto-deployed manifests; certificates
# (check, rotate, the warning before renewal, renewal at start).
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

# ---- snapshots -----------------------------------------------------------------------------
start_server || exit 1
curl_credentials
k create ns snap >/dev/null
ack_dir=$E2E_DIR/acks
mkdir -p "$ack_dir"
writer() {
  local w=$1 n=0
  while [ ! -f "$E2E_DIR/stop-writers" ] && [ $n -lt 2000 ]; do
    n=$((n + 1))
    code=$(api -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
      --data "{\"metadata\":{\"name\":\"w$w-$n\"},\"data\":{\"v\":\"$n\"}}" "$BASE/api/v1/namespaces/snap/configmaps")
    [ "$code" = 201 ] && echo "w$w-$n" >>"$ack_dir/$w"
  done
}
writers=()
for w in 1 2 3 4; do writer $w & writers+=($!); done
sleep 1
cat "$ack_dir"/* | sort >"$E2E_DIR/acked-before"
out=$("$FERROKUBE" snapshot save --name e2e --data-dir "$E2E_DIR/data" 2>&1)
sleep 0.5
touch "$E2E_DIR/stop-writers"
wait "${writers[@]}"
check_contains "snapshot save under write load reports the file" "snapshot $E2E_DIR/data/db/snapshots/e2e-" "$out"
snap_file=$(echo "$out" | sed -n 's/^snapshot \(.*\) saved (revision \([0-9]*\)).*/\1/p')
snap_rev=$(echo "$out" | sed -n 's/.*saved (revision \([0-9]*\)).*/\1/p')
check "the snapshot file is private" "600" "$(stat -c %a "$snap_file" 2>&1)"
check_contains "snapshot ls lists it" "$(basename "$snap_file")" "$("$FERROKUBE" snapshot ls --data-dir "$E2E_DIR/data")"
check_contains "restore is refused while the server runs" "is running: stop it first" "$("$FERROKUBE" snapshot restore "$snap_file" --data-dir "$E2E_DIR/data" 2>&1)"
acked_total=$(cat "$ack_dir"/* | wc -l)
if [ "$(wc -l <"$E2E_DIR/acked-before")" -gt 0 ] && [ "$acked_total" -gt "$(wc -l <"$E2E_DIR/acked-before")" ]; then
  ok "writes were acknowledged before and during the snapshot ($(wc -l <"$E2E_DIR/acked-before") before, $acked_total in all)"
else
  not_ok "writes were acknowledged before and during the snapshot" "$(wc -l <"$E2E_DIR/acked-before") before, $acked_total in all"
fi
old_kubeconfig=$E2E_DIR/old-kubeconfig
cp "$KUBECONFIG" "$old_kubeconfig"
stop_server TERM

# Onto a fresh data directory.
fresh=$E2E_DIR/fresh
out=$("$FERROKUBE" snapshot restore "$snap_file" --data-dir "$fresh" 2>&1)
check_contains "restore onto a fresh data dir" "restored $snap_file (revision $snap_rev" "$out"
check_contains "a second restore before the server started is refused" "has not started since" "$("$FERROKUBE" snapshot restore "$snap_file" --data-dir "$fresh" 2>&1)"
"$FERROKUBE" server --disable-agent --data-dir "$fresh" --https-listen-port "$PORT" --bind-address 127.0.0.1 --write-kubeconfig "$KUBECONFIG" >>"$E2E_DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do curl -skf "https://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break; sleep 0.05; done
check "the restored cluster starts" "ok" "$(curl -skf "https://127.0.0.1:$PORT/readyz")"
present=$(k -n snap get cm -o name | sed 's|configmap/||' | sort)
missing=$(comm -23 "$E2E_DIR/acked-before" <(echo "$present") | grep -c . || true)
check "every object acknowledged before the snapshot started is there" "0" "$missing"
check "the credentials came with it: the old admin kubeconfig works" "Active" "$(KUBECONFIG=$old_kubeconfig k get ns snap -o jsonpath='{.status.phase}' 2>&1)"
rv=$(k -n snap create cm after-restore -o jsonpath='{.metadata.resourceVersion}')
if [ -n "$rv" ] && [ "$rv" -gt "$snap_rev" ]; then ok "resourceVersions continue after the snapshot's ($snap_rev -> $rv)"; else not_ok "resourceVersions continue" "snapshot $snap_rev, new $rv"; fi
check "a restored server lifts the guard" "" "$(ls "$fresh/db/restore-marker" 2>/dev/null)"
stop_server TERM

# Offline save, delete and prune.
for _ in 1 2 3; do "$FERROKUBE" snapshot save --name keep --data-dir "$fresh" >/dev/null 2>&1; sleep 1.1; done
check "save works with the server stopped" "3" "$("$FERROKUBE" snapshot ls --data-dir "$fresh" | grep -c '^keep-')"
"$FERROKUBE" snapshot prune --name keep --retention 1 --data-dir "$fresh" >/dev/null
check "prune keeps the newest" "1" "$("$FERROKUBE" snapshot ls --data-dir "$fresh" | grep -c '^keep-')"
last=$("$FERROKUBE" snapshot ls --data-dir "$fresh" | awk '/^keep-/ {print $1}')
check_contains "delete removes one" "deleted snapshot $last" "$("$FERROKUBE" snapshot delete "$last" --data-dir "$fresh")"
check_contains "delete of a missing one says so" "no snapshot" "$("$FERROKUBE" snapshot delete "$last" --data-dir "$fresh" 2>&1)"
check_contains "a store file is refused as a snapshot" "is not a ferrokube snapshot" "$("$FERROKUBE" snapshot restore "$fresh/db/state.redb" --data-dir "$E2E_DIR/other" 2>&1)"
# server --cluster-reset --cluster-reset-restore-path restores, exits, and refuses a second run.
out=$("$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/reset" --cluster-reset --cluster-reset-restore-path "$snap_file" 2>&1); rc=$?
check "server --cluster-reset restores and exits" "0 restored" "$rc $(echo "$out" | grep -o 'restored' | head -1)"
out=$("$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/reset" --cluster-reset --cluster-reset-restore-path "$snap_file" 2>&1)
check_contains "running it again is refused" "has not started since" "$out"

# ---- auto-deployed manifests ----------------------------------------------------------------
start_server || exit 1
man=$E2E_DIR/data/server/manifests
mkdir -p "$man"
# within SECONDS CMD...: CMD succeeds within SECONDS; prints the milliseconds it took.
within() {
  local limit=$1 t0
  shift
  t0=$(date +%s%N)
  while ! "$@" >/dev/null 2>&1; do
    if [ $((($(date +%s%N) - t0) / 1000000)) -gt $((limit * 1000)) ]; then echo timeout; return 1; fi
    sleep 0.1
  done
  echo $((($(date +%s%N) - t0) / 1000000))
}
gone() { ! "$KUBECTL" "$@" >/dev/null 2>&1; }
timed() { if [ "$2" != timeout ]; then ok "$1 (${2} ms)"; else not_ok "$1"; fi; }
app() {
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: deployed}\n---\n'
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one, namespace: deployed}\ndata: {a: "%s"}\n' "$1"
  [ "${2:-}" = with-two ] && printf -- '---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: two}\ndata: {b: "1"}\n'
  return 0
}
app 1 with-two >"$man/app.yaml"
timed "a dropped manifest's objects appear within 2 s" "$(within 2 k -n deployed get cm one)"
check "a namespaced object without a namespace goes to default" "1" "$(k get cm two -o jsonpath='{.data.b}' 2>&1)"
check_contains "applied server-side by ferrokube-deploy" "ferrokube-deploy Apply" "$(k -n deployed get cm one -o jsonpath='{range .metadata.managedFields[*]}{.manager} {.operation}{"\n"}{end}')"
app 2 >"$man/app.yaml"
timed "an edited manifest updates its objects within 2 s" "$(within 2 sh -c "$KUBECTL -n deployed get cm one -o jsonpath='{.data.a}' | grep -qx 2")"
timed "an object dropped from the manifest is deleted within 2 s" "$(within 2 gone get cm two)"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: skipped}\n' >"$man/skipme.yaml"
touch "$man/skipme.yaml.skip"
printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: three}\n' >"$man/later.yml"
within 3 k get cm three >/dev/null
check "a file with a .skip beside it is not applied" "NotFound" "$(k get cm skipped 2>&1 | grep -o NotFound)"
printf 'kind: ConfigMap\nmetadata: {name: broken}\n' >"$man/broken.yaml"
sleep 1.5
check_contains "a broken manifest is logged with its name and what is wrong" "needs apiVersion" "$(grep 'manifest not applied' "$E2E_DIR/server.log" | grep broken.yaml)"
rm "$man/broken.yaml" "$man/app.yaml"
timed "a removed manifest's objects go within 2 s" "$(within 2 sh -c "! $KUBECTL -n deployed get cm one >/dev/null 2>&1 || $KUBECTL get ns deployed -o jsonpath='{.status.phase}' | grep -q Terminating")"
# Removed while the server is down: undone at the next start (the record is in the cluster).
stop_server TERM
rm "$man/later.yml"
start_server || exit 1
timed "a manifest removed while the server was stopped is undone at start" "$(within 3 gone get cm three)"
stop_server TERM

# ---- certificates ---------------------------------------------------------------------------
start_server || exit 1
tls=$E2E_DIR/data/server/tls
token=$(k create token default 2>&1)
check_contains "rotate is refused while the server runs" "is running: stop it first" "$("$FERROKUBE" certificate rotate --data-dir "$E2E_DIR/data" 2>&1)"
stop_server TERM
table=$("$FERROKUBE" certificate check --data-dir "$E2E_DIR/data")
check_contains "certificate check is a table" "FILE" "$(echo "$table" | head -1)"
ca_days=$(echo "$table" | awk -v f="$tls/ca.crt" '$1 == f {print $(NF-1)}')
admin_days=$(echo "$table" | awk -v f="$tls/admin.crt" '$1 == f {print $(NF-1)}')
if [ "${ca_days:-0}" -ge 3640 ] && [ "${admin_days:-0}" -ge 360 ] && [ "${admin_days:-999}" -le 365 ]; then ok "CA for 10 years, leaves for 1 ($ca_days, $admin_days days left)"; else not_ok "CA for 10 years, leaves for 1" "$table"; fi
check_contains "the admin certificate's subject" "O=system:masters" "$(echo "$table" | grep admin.crt)"
old_admin=$(sha256sum <"$tls/admin.crt")
old_serving=$(sha256sum <"$tls/serving.crt")
check_contains "rotate --service admin" "rotated admin" "$("$FERROKUBE" certificate rotate --service admin --data-dir "$E2E_DIR/data")"
check_contains "an unknown service is refused with the choices" "serving, admin, front-proxy-client" "$("$FERROKUBE" certificate rotate --service nope --data-dir "$E2E_DIR/data" 2>&1)"
# A leaf 100 days from expiry (warned about), one 20 days from it (renewed at start).
openssl req -newkey rsa:2048 -nodes -keyout "$E2E_DIR/fp.key" -out "$E2E_DIR/fp.csr" -subj "/CN=front-proxy-client" 2>/dev/null
openssl x509 -req -in "$E2E_DIR/fp.csr" -CA "$tls/front-proxy-ca.crt" -CAkey "$tls/front-proxy-ca.key" -CAcreateserial -days 100 -out "$tls/front-proxy-client.crt" 2>/dev/null
cp "$E2E_DIR/fp.key" "$tls/front-proxy-client.key"
start_server || exit 1
check "after rotate a new admin certificate" "changed" "$([ "$(sha256sum <"$tls/admin.crt")" != "$old_admin" ] && echo changed)"
check "the others stay" "$old_serving" "$(sha256sum <"$tls/serving.crt")"
check "the rewritten admin kubeconfig works" "Active" "$(k get ns default -o jsonpath='{.status.phase}' 2>&1)"
check "a pod's token from before the rotation still authenticates" "200" "$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "https://127.0.0.1:$PORT/apis")"
check_contains "a start warns 30 days before a renewal is due (log)" "renewal due soon" "$(grep 'front-proxy-client.crt' "$E2E_DIR/server.log")"
check_contains "and as a Warning event" "CertificateExpirationWarning" "$(k get events -n default --field-selector type=Warning -o jsonpath='{.items[*].reason}')"
stop_server TERM
openssl x509 -req -in "$E2E_DIR/fp.csr" -CA "$tls/front-proxy-ca.crt" -CAkey "$tls/front-proxy-ca.key" -CAcreateserial -days 20 -out "$tls/front-proxy-client.crt" 2>/dev/null
start_server || exit 1
days=$("$FERROKUBE" certificate check --data-dir "$E2E_DIR/data" | awk -v f="$tls/front-proxy-client.crt" '$1 == f {print $(NF-1)}')
if [ "${days:-0}" -ge 360 ]; then ok "a leaf within 90 days of expiry is renewed at start ($days days left)"; else not_ok "a leaf within 90 days of expiry is renewed at start" "$days"; fi
stop_server TERM


# ---- check-config ---------------------------------------------------------------------------
out=$("$FERROKUBE" check-config --data-dir "$E2E_DIR/data" --https-listen-port "$PORT" 2>&1); rc=$?
check "check-config passes on this host" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | grep -A1 FAIL | sed 's/^/       /'
check_contains "it lists the cgroup controllers" "[pass] memory controller: available" "$out"
check_contains "the kernel options" "[pass] CONFIG_VETH" "$out"
check_contains "the iptables variant" "[pass] iptables: $(iptables --version | sed 's/.*(\(.*\)).*/\1/')" "$out"
check_contains "containerd and runc" "[pass] runc: runc version" "$out"
check_contains "and the API port" "[pass] port tcp $PORT: API server (--https-listen-port): free" "$out"
python3 -c 'import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(); time.sleep(30)' "$PORT" &
squatter=$!
for _ in $(seq 50); do ss -lnt "sport = :$PORT" | grep -q LISTEN && break; sleep 0.1; done
out=$("$FERROKUBE" check-config --data-dir "$E2E_DIR/data" --https-listen-port "$PORT" 2>&1); rc=$?
kill "$squatter"; wait "$squatter" 2>/dev/null
check "a port taken by another program fails the check" "1" "$rc"
check_contains "naming the port" "[FAIL] port tcp $PORT: API server (--https-listen-port): in use by another program" "$out"
check_contains "and what to do" "-> stop what listens on 0.0.0.0:$PORT" "$out"
check_contains "the summary counts it" "1 failed" "$out"
start_server || exit 1
out=$("$FERROKUBE" check-config --data-dir "$E2E_DIR/data" --https-listen-port "$PORT" --bind-address 127.0.0.1 --disable-agent 2>&1); rc=$?
check "the port of our own running server is no failure" "0" "$rc"
check_contains "it says whose it is" "in use by the running ferrokube server of $E2E_DIR/data" "$out"
check "--disable-agent leaves out the node's checks" "" "$(echo "$out" | grep -E 'containerd|controller:')"
stop_server TERM
out=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$FERROKUBE" check-config --data-dir "$E2E_DIR/data" --disable-agent --https-listen-port "$PORT" 2>&1); rc=$?
check "not root fails" "1" "$rc"
check_contains "with what to do" "run ferrokube as root" "$out"

summary
