#!/usr/bin/env bash
# install.sh in a booted systemd container (root): a Debian 12 root made with debootstrap,
# booted with systemd-nspawn (sharing the host's network, so the local HTTP server and the
# API are on 127.0.0.1). install.sh with the binary from a local HTTP server -> the service
# active, the node Ready, a pod Running; `systemctl restart ferrokube` keeps the pod's
# container (same ID); re-running install.sh upgrades in place; ferrokube-uninstall.sh
# leaves iptables-save as before the install (a foreign chain still there) and no mount,
# process, link or file of ours.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
root_dir=$(cd "$here/../.." && pwd)
if [ "$(id -u)" != 0 ]; then echo "systemd.sh needs root" >&2; exit 1; fi
for t in systemd-nspawn debootstrap nsenter; do
  command -v "$t" >/dev/null || { not_ok "$t is installed (scripts/install-deps.sh installs it)"; summary; exit 1; }
done

# The container's root, cached between runs (debootstrap takes a while).
cache=${FERROKUBE_NSPAWN_ROOT_CACHE:-/var/cache/ferrokube-e2e/bookworm-root.tar}
rootfs=$E2E_DIR/root
mkdir -p "$rootfs"
if [ -f "$cache" ]; then
  tar -C "$rootfs" -xf "$cache"
else
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iptables,iproute2,curl,ca-certificates,containerd,runc,kmod,procps \
    bookworm "$rootfs" http://deb.debian.org/debian >"$E2E_DIR/debootstrap.log" 2>&1 || { not_ok "debootstrap" "$(tail -5 "$E2E_DIR/debootstrap.log")"; summary; exit 1; }
  mkdir -p "$(dirname "$cache")" && tar -C "$rootfs" -cf "$cache" .
fi
# Debian's own containerd service is not needed: ferrokube runs its own.
ln -sf /dev/null "$rootfs/etc/systemd/system/containerd.service"
echo fk-nspawn >"$rootfs/etc/hostname"
# The test image, in the airgap directory the server imports at start.
mkdir -p "$rootfs/var/lib/ferrokube/images"
python3 "$here/../images/mkimage.py" "$rootfs/var/lib/ferrokube/images/busybox.tar" docker.io/library/busybox:e2e >/dev/null
cp "$root_dir/install.sh" "$rootfs/root/install.sh"

# The release, served on loopback.
www=$E2E_DIR/www
mkdir -p "$www" && cp "$FERROKUBE" "$www/ferrokube" && (cd "$www" && sha256sum ferrokube >ferrokube.sha256)
HTTP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$www" >"$E2E_DIR/http.log" 2>&1 &
HTTP_PID=$!

# A foreign chain, there before the install; what iptables looks like then (without counters).
iptables -N E2E-NSPAWN-FOREIGN 2>/dev/null; iptables -A E2E-NSPAWN-FOREIGN -s 192.0.2.7 -j RETURN
rules() { iptables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'; }
rules >"$E2E_DIR/rules-before"

# A container that behaves like a machine for ferrokube: all capabilities (iptables, links,
# mounts), writable /proc/sys and /sys, and the keyring syscalls runc uses (nspawn filters
# them by default).
SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 systemd-nspawn -D "$rootfs" --boot --register=no --keep-unit --capability=all \
  --system-call-filter=@keyring -M fk-nspawn >"$E2E_DIR/console.log" 2>&1 </dev/null &
NSPAWN=$!
LEADER=
for _ in $(seq 100); do LEADER=$(pgrep -P "$NSPAWN" | head -1); [ -n "$LEADER" ] && break; sleep 0.1; done
inside() { nsenter -t "$LEADER" -m -u -i -n -p -- env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
booted=
for _ in $(seq 150); do
  state=$(inside systemctl is-system-running 2>/dev/null)
  case "$state" in running | degraded) booted=$state; break ;; esac
  sleep 0.2
done
cleanup_nspawn() {
  [ -n "$LEADER" ] && inside systemctl poweroff >/dev/null 2>&1
  for _ in $(seq 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
  kill "$NSPAWN" 2>/dev/null; wait "$NSPAWN" 2>/dev/null
  kill "$HTTP_PID" 2>/dev/null
  iptables -F E2E-NSPAWN-FOREIGN 2>/dev/null; iptables -X E2E-NSPAWN-FOREIGN 2>/dev/null
  for m in $(awk -v d="$E2E_DIR" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
  cleanup
}
trap cleanup_nspawn EXIT
if [ -n "$booted" ]; then ok "the container booted systemd ($booted)"; else not_ok "the container booted systemd" "$(tail -5 "$E2E_DIR/console.log")"; summary; exit 1; fi
# On this host (cgroup v1, no systemd as PID 1) nspawn mounts the cgroup controllers read-only;
# a machine's are writable, so make them so in the container.
inside sh -c 'for m in $(awk "\$3 == \"cgroup\" {print \$2}" /proc/mounts); do mount -o remount,bind,rw "$m"; done'

export KUBECONFIG=$rootfs/etc/ferrokube/ferrokube.yaml
exec_flags="server --https-listen-port $PORT --node-name fk-nspawn"
install_inside() {
  inside env INSTALL_FERROKUBE_DOWNLOAD_URL="http://127.0.0.1:$HTTP_PORT" INSTALL_FERROKUBE_EXEC="$exec_flags" sh /root/install.sh 2>&1
}
out=$(install_inside); rc=$?
check "install.sh in the container succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | tail -5 | sed 's/^/       /'
check "systemctl is-active ferrokube" "active" "$(inside systemctl is-active ferrokube)"
check "enabled at boot" "enabled" "$(inside systemctl is-enabled ferrokube 2>&1)"
eventually "the node is Ready" "True" 60 k get node fk-nspawn -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
cat <<YAML | k apply -f - >/dev/null
apiVersion: v1
kind: Pod
metadata: {name: keeper}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: c, image: docker.io/library/busybox:e2e, imagePullPolicy: IfNotPresent, command: [sh, -c, "sleep 3600"]}
YAML
if k wait --for=condition=Ready pod/keeper --timeout=90s >/dev/null 2>&1; then
  ok "a pod runs"
else
  not_ok "a pod runs"
  k describe pod keeper 2>&1 | tail -15 | sed 's/^/       /'
  inside journalctl -u ferrokube --no-pager 2>&1 | grep -v 'GET\|PUT\|PATCH' | tail -25 | cut -c1-250 | sed 's/^/       /'
fi
cid=$(k get pod keeper -o jsonpath='{.status.containerStatuses[0].containerID}')
check_contains "the pod has a container ID" "containerd://" "$cid"

inside systemctl restart ferrokube
check "after systemctl restart the service is active (Type=notify: ready)" "active" "$(inside systemctl is-active ferrokube)"
check "the API answers right away" "ok" "$(curl -sk "https://127.0.0.1:$PORT/readyz")"
eventually "the pod is Ready again" "True" 60 k get pod keeper -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
check "the restart kept the pod's container (same ID)" "$cid" "$(k get pod keeper -o jsonpath='{.status.containerStatuses[0].containerID}')"
check "and did not restart it" "0" "$(k get pod keeper -o jsonpath='{.status.containerStatuses[0].restartCount}')"

# A new release: re-running install.sh upgrades in place and restarts; the pod stays.
printf '\n' >>"$www/ferrokube" && (cd "$www" && sha256sum ferrokube >ferrokube.sha256)
out=$(install_inside); rc=$?
check "re-running install.sh succeeds" "0" "$rc"
check "the installed binary is the new release" "$(sha256sum <"$www/ferrokube")" "$(sha256sum <"$rootfs/usr/local/bin/ferrokube")"
check "the service is active on it" "active" "$(inside systemctl is-active ferrokube)"
eventually "the pod is Ready after the upgrade" "True" 60 k get pod keeper -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
check "with the same container" "$cid" "$(k get pod keeper -o jsonpath='{.status.containerStatuses[0].containerID}')"

out=$(inside /usr/local/bin/ferrokube-uninstall.sh 2>&1); rc=$?
check "ferrokube-uninstall.sh succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | tail -5 | sed 's/^/       /'
rules >"$E2E_DIR/rules-after"
check "iptables-save is as before the install" "" "$(diff "$E2E_DIR/rules-before" "$E2E_DIR/rules-after")"
check_contains "the foreign chain is still there" "-A E2E-NSPAWN-FOREIGN -s 192.0.2.7/32 -j RETURN" "$(cat "$E2E_DIR/rules-after")"
check "no mount of ours in the container" "" "$(inside awk '$2 ~ /ferrokube|kubelet/ {print $2}' /proc/mounts | head -3)"
check "no process of ours" "" "$(inside pgrep -a -f 'ferrokube|containerd-shim' | grep -v pgrep | head -3)"
check "no link of ours" "" "$(ip -o link show | grep -Eo 'fk0|vethfk[0-9a-f]+' | head -3)"
left=$(inside sh -c 'ls -d /usr/local/bin/ferrokube* /etc/systemd/system/ferrokube* /etc/ferrokube /var/lib/ferrokube /run/ferrokube 2>/dev/null')
check "no file of ours" "" "$left"
check "the service is gone" "inactive" "$(inside systemctl is-active ferrokube 2>&1)"
summary
