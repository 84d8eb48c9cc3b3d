#!/usr/bin/env bash
# Secrets encryption at rest: `ferrokube secrets-encrypt status|enable|rotate-keys|disable`
# against the running server of a data dir, the data dir grepped for every Secret value
# (plain and base64) after each step, the Secrets read back through kubectl, across a restart
# and a kill -9; and a user's own EncryptionConfiguration (aesgcm, secretbox) given with
# --encryption-provider-config.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

enc() { "$FERROKUBE" secrets-encrypt "$@" --data-dir "$E2E_DIR/data" 2>&1; }
# found VALUE...: how many of the values (each plain or base64) occur in the data dir's files.
found() {
  local n=0 v
  for v in "$@"; do
    if grep -rqaF -e "$v" -e "$(printf %s "$v" | base64 -w0)" "$E2E_DIR/data"; then n=$((n + 1)); fi
  done
  echo "$n"
}
# value NAME: the Secret's value `v`, decoded.
value() { k get secret "$1" -o jsonpath='{.data.v}' | base64 -d; }

out=$(enc status)
check_contains "status without a running server says so" "no ferrokube server is running" "$out"

start_server || exit 1
V1=plain-marker-one-$RANDOM$RANDOM
V2=plain-marker-two-$RANDOM$RANDOM
k create secret generic s1 --from-literal=v="$V1" >/dev/null
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Secret
metadata: {name: s2}
stringData: {v: "$V2"}
EOF
k label secret s1 step=one >/dev/null
# Every Secret counts: ours and the server's own (its join token's).
N=$(k get secrets -A -o name | wc -l)
check "before encryption the values are in the data dir (the grep finds them)" "2" "$(found "$V1" "$V2")"
out=$(enc status)
check_contains "status shows encryption disabled" "Encryption Status: Disabled" "$out"

out=$(enc enable)
check_contains "enable reports the Secrets it encrypted" "secrets encryption enabled: $N Secrets encrypted with aescbc:aescbckey-" "$out"
check "after enable no value is in the data dir, plain or base64" "0" "$(found "$V1" "$V2")"
out=$(enc status)
check_contains "status shows encryption enabled" "Encryption Status: Enabled" "$out"
check_contains "status counts the Secrets under the active key" "Secrets: $N stored, $N with the active key" "$out"
key1=$(echo "$out" | awk '/^Active Key:/ {print $3}')
check "Secrets read back after enable" "$V1 $V2" "$(value s1) $(value s2)"
check_contains "enable twice is refused clearly" "already enabled" "$(enc enable)"

V3=plain-marker-three-$RANDOM$RANDOM
k create secret generic s3 --from-literal=v="$V3" >/dev/null
check "a Secret created while encryption is on never reaches the file in plain" "0" "$(found "$V3")"

out=$(enc rotate-keys)
check_contains "rotate-keys reports the new key" "keys rotated: $((N + 1)) Secrets encrypted with aescbc:aescbckey-" "$out"
out=$(enc status)
key2=$(echo "$out" | awk '/^Active Key:/ {print $3}')
if [ -n "$key2" ] && [ "$key2" != "$key1" ]; then ok "rotate-keys changes the active key"; else not_ok "rotate-keys changes the active key" "$key1 -> $key2"; fi
check_contains "every Secret is under the new key" "Secrets: $((N + 1)) stored, $((N + 1)) with the active key" "$out"
check "the old key is gone from the configuration" "0" "$(grep -c "${key1#aescbc:}" "$E2E_DIR/data/server/cred/encryption-config.json")"
check "after rotate-keys no value is in the data dir" "0" "$(found "$V1" "$V2" "$V3")"
check "Secrets read back after rotate-keys" "$V1 $V2 $V3" "$(value s1) $(value s2) $(value s3)"
check "config file is private" "600" "$(stat -c %a "$E2E_DIR/data/server/cred/encryption-config.json")"

stop_server TERM
start_server || exit 1
check "Secrets read back after a restart" "$V1 $V2 $V3" "$(value s1) $(value s2) $(value s3)"
check_contains "the restarted server keeps encryption on" "Active Key: $key2" "$(enc status)"
V4=plain-marker-four-$RANDOM$RANDOM
k create secret generic s4 --from-literal=v="$V4" >/dev/null
stop_server KILL
start_server || exit 1
check "a Secret acknowledged before kill -9 reads back" "$V4" "$(value s4)"
check "and it is not in the file in plain" "0" "$(found "$V4")"

out=$(enc disable)
check_contains "disable reports the Secrets stored in plain" "secrets encryption disabled: $((N + 2)) Secrets stored in plain" "$out"
check_contains "status shows encryption disabled again" "Encryption Status: Disabled" "$(enc status)"
check "Secrets read back after disable" "$V1 $V2 $V3 $V4" "$(value s1) $(value s2) $(value s3) $(value s4)"
check_contains "rotate-keys while disabled is refused clearly" "run \`ferrokube secrets-encrypt enable\` first" "$(enc rotate-keys)"
stop_server TERM

# A user's own configuration: aesgcm first, secretbox to read with; secrets-encrypt leaves it alone.
rm -rf "$E2E_DIR/data"
GCM=$(head -c 32 /dev/urandom | base64 -w0)
BOX=$(head -c 32 /dev/urandom | base64 -w0)
gcm() { printf '      - aesgcm:\n          keys:\n            - name: gcm1\n              secret: %s\n' "$GCM"; }
box() { printf '      - secretbox:\n          keys:\n            - name: box1\n              secret: %s\n' "$BOX"; }
# enc_config FIRST SECOND: a configuration for secrets with these providers, then identity.
enc_config() {
  printf 'apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n'
  "$1"
  "$2"
  printf '      - identity: {}\n'
}
enc_config gcm box >"$E2E_DIR/enc.yaml"
start_server --encryption-provider-config "$E2E_DIR/enc.yaml" || exit 1
V5=plain-marker-five-$RANDOM$RANDOM
k create secret generic s5 --from-literal=v="$V5" >/dev/null
check "a given aesgcm configuration keeps the value out of the file" "0" "$(found "$V5")"
check "and the Secret reads back" "$V5" "$(value s5)"
check_contains "status names the given configuration" "Active Key: aesgcm:gcm1" "$(enc status)"
check_contains "secrets-encrypt does not rewrite a given configuration" "--encryption-provider-config" "$(enc rotate-keys)"
k create cm plain-cm --from-literal=v="$V5-cm" >/dev/null
check "ConfigMaps are not encrypted by a secrets-only configuration" "1" "$(found "$V5-cm")"
stop_server TERM

# Providers reordered: secretbox first still reads what aesgcm wrote.
enc_config box gcm >"$E2E_DIR/enc.yaml"
start_server --encryption-provider-config "$E2E_DIR/enc.yaml" || exit 1
check_contains "secretbox first is the active key" "Active Key: secretbox:box1" "$(enc status)"
check "what aesgcm wrote still reads under a secretbox-first configuration" "$V5" "$(value s5)"
stop_server TERM

echo "kind: Nope" >"$E2E_DIR/bad.yaml"
out=$("$FERROKUBE" server --disable-agent --data-dir "$E2E_DIR/data" --https-listen-port "$PORT" --write-kubeconfig "$E2E_DIR/kc2" --encryption-provider-config "$E2E_DIR/bad.yaml" 2>&1)
check_contains "a bad configuration is refused at start with the file's name" "bad.yaml" "$out"
check_contains "and says what is wrong" "EncryptionConfiguration" "$out"

summary
