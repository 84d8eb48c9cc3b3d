#!/usr/bin/env bash
# Restart and crash safety: objects and resourceVersions survive restarts, watches resume or
# get 410, and every write acknowledged before a kill -9 is there afterwards.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
start_server || exit 1

curl_credentials
check "client certificate authenticates" "200" "$(api -o /dev/null -w '%{http_code}' "$BASE/api/v1/namespaces")"
check "server certificate verifies against the CA for 127.0.0.1" "ok" "$(api -o /dev/null "$BASE/version" && echo ok)"

for i in 1 2 3; do k create cm "keep$i" --from-literal=i=$i >/dev/null; done
k create ns durable >/dev/null
before=$(k get cm -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}')
list_rv=$(api "$BASE/api/v1/namespaces/default/configmaps" | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')
k label cm keep1 after=restart-test >/dev/null

stop_server TERM
start_server || exit 1
after=$(k get cm -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.resourceVersion} {end}')
check "restart keeps objects" "3" "$(k get cm -o name | grep -c keep)"
check "restart keeps the namespace" "Active" "$(k get ns durable -o jsonpath='{.status.phase}')"
check "restart keeps resourceVersions" \
  "$(echo "$before" | tr ' ' '\n' | grep -v '^keep1=' | xargs)" "$(echo "$after" | tr ' ' '\n' | grep -v '^keep1=' | xargs)"

# A watch resumed from the list's revision replays the change made before the restart.
replay=$(api --max-time 2 "$BASE/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=$list_rv" | head -1)
check_contains "watch from an old revision replays after restart" '"type":"MODIFIED"' "$replay"
check_contains "replayed event is the labelled object" 'restart-test' "$replay"

# With a short history, an older revision is refused with 410 Expired.
stop_server TERM
start_server --event-history 5 || exit 1
for i in $(seq 10); do k create cm "filler$i" >/dev/null; done
gone=$(api --max-time 2 "$BASE/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=$list_rv" | head -1)
check_contains "watch from a compacted revision gets ERROR" '"type":"ERROR"' "$gone"
check_contains "the error is 410 Expired" '"code":410' "$gone"

# kill -9 while clients write: every acknowledged create survives.
ack_dir=$E2E_DIR/acks
mkdir -p "$ack_dir"
writer() {
  local w=$1 n=0
  while [ $n -lt 400 ]; do
    n=$((n + 1))
    code=$(api -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
      --data "{\"metadata\":{\"name\":\"w$w-$n\"},\"data\":{\"v\":\"$n\"}}" \
      "$BASE/api/v1/namespaces/durable/configmaps")
    if [ "$code" = "201" ]; then echo "w$w-$n" >>"$ack_dir/$w"; elif [ "$code" = "000" ]; then break; fi
  done
}
writers=()
for w in 1 2 3 4; do writer $w & writers+=($!); done
sleep 1.5
stop_server KILL
wait "${writers[@]}"
acked=$(cat "$ack_dir"/* 2>/dev/null | sort)
nacked=$(echo "$acked" | grep -c . || true)
if [ "$nacked" -gt 0 ]; then ok "clients got acknowledgements before the crash ($nacked)"; else not_ok "clients got acknowledgements before the crash"; fi
start_server || exit 1
present=$(k -n durable get cm -o name | sed 's|configmap/||' | sort)
missing=$(comm -23 <(echo "$acked") <(echo "$present") | grep -c . || true)
check "every acknowledged write survived kill -9" "0" "$missing"

# The datastore refuses a second server on the same data directory.
out=$("$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/data" --https-listen-port $((PORT + 1)) --write-kubeconfig "$E2E_DIR/kc2" 2>&1)
check_contains "second server on the same data dir is refused clearly" "in use by another ferrokube process" "$out"
out=$("$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/other" --https-listen-port "$PORT" --bind-address 127.0.0.1 --write-kubeconfig "$E2E_DIR/kc3" 2>&1)
check_contains "port in use is reported clearly" "already in use" "$out"
stop_server TERM
mkdir -p "$E2E_DIR/foreign/db" && echo "not a database" >"$E2E_DIR/foreign/db/state.redb"
out=$("$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/foreign" --https-listen-port "$PORT" --write-kubeconfig "$E2E_DIR/kc4" 2>&1)
check_contains "foreign data file is reported clearly" "not a ferrokube datastore" "$out"
check "foreign data file is left untouched" "not a database" "$(cat "$E2E_DIR/foreign/db/state.redb")"
if [ "$(id -u)" != 0 ]; then
  mkdir -p "$E2E_DIR/ro" && chmod 500 "$E2E_DIR/ro"
  out=$("$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/ro/x" --https-listen-port "$PORT" --write-kubeconfig "$E2E_DIR/kc5" 2>&1)
else
  # root ignores directory permissions: use a path under a regular file instead.
  touch "$E2E_DIR/file"
  out=$("$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/file/x" --https-listen-port "$PORT" --write-kubeconfig "$E2E_DIR/kc5" 2>&1)
fi
check_contains "unwritable data dir is reported clearly" "data directory" "$out"

summary
