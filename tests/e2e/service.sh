#!/usr/bin/env bash
# install.sh in a booted container (root), sourced by systemd.sh (INIT=systemd) and
# openrc.sh (INIT=openrc): a Debian 12 root made with debootstrap (for openrc, with
# sysvinit-core and openrc put in systemd-sysv's place), booted with systemd-nspawn (sharing
# the host's network, so the local HTTP server and the API are on 127.0.0.1). install.sh
# with the binary from a local HTTP server -> the service started and enabled, the node
# Ready, a pod Running; restarting the service keeps the pod's container (same ID); a killed
# ferrokube is started again by the init; re-running install.sh upgrades in place;
# ferrokube-uninstall.sh leaves iptables-save as before the install (a foreign chain still
# there) and no mount, process, link or file of ours.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)
root_dir=$(cd "$here/../.." && pwd)
case "${INIT:-}" in systemd | openrc) ;; *) echo "service.sh: INIT must be systemd or openrc" >&2; exit 2 ;; esac
if [ "$(id -u)" != 0 ]; then echo "$(basename "$0") needs root" >&2; exit 1; fi
for t in systemd-nspawn debootstrap nsenter; do
  command -v "$t" >/dev/null || { not_ok "$t is installed (scripts/install-deps.sh installs it)"; summary; exit 1; }
done

# The container's root, cached between runs (debootstrap takes a while): the systemd root,
# and the openrc root made from it.
cache_dir=${FERROKUBE_NSPAWN_ROOT_CACHE_DIR:-/var/cache/ferrokube-e2e}
cache=$cache_dir/bookworm-root.tar
rootfs=$E2E_DIR/root
mkdir -p "$rootfs" "$cache_dir"
if [ "$INIT" = openrc ] && [ -f "$cache_dir/bookworm-openrc-root.tar" ]; then
  tar -C "$rootfs" -xf "$cache_dir/bookworm-openrc-root.tar"
else
  if [ -f "$cache" ]; then
    tar -C "$rootfs" -xf "$cache"
  else
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iptables,iproute2,curl,ca-certificates,containerd,runc,kmod,procps \
      bookworm "$rootfs" http://deb.debian.org/debian >"$E2E_DIR/debootstrap.log" 2>&1 || { not_ok "debootstrap" "$(tail -5 "$E2E_DIR/debootstrap.log")"; summary; exit 1; }
    tar -C "$rootfs" -cf "$cache" .
  fi
  if [ "$INIT" = openrc ]; then
    mount --bind /proc "$rootfs/proc"
    chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get install -y --no-install-recommends sysvinit-core openrc >"$E2E_DIR/apt.log" 2>&1
    rc=$?
    umount "$rootfs/proc"
    [ "$rc" = 0 ] || { not_ok "openrc installed in the root" "$(tail -5 "$E2E_DIR/apt.log")"; summary; exit 1; }
    # No terminals in the container: no gettys. And should it ever halt, the host's
    # network interfaces (shared) stay up.
    sed -i -E 's/^([1-6]:[0-9]+:respawn:)/#\1/' "$rootfs/etc/inittab"
    echo NETDOWN=no >>"$rootfs/etc/default/halt"
    tar -C "$rootfs" -cf "$cache_dir/bookworm-openrc-root.tar" .
  fi
fi
# Debian's own containerd service is not needed: ferrokube runs its own.
if [ "$INIT" = systemd ]; then
  ln -sf /dev/null "$rootfs/etc/systemd/system/containerd.service"
else
  rm -f "$rootfs/etc/init.d/containerd"
fi
echo "fk-$INIT" >"$rootfs/etc/hostname"
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
# them by default). systemd boots with --boot; sysvinit (running openrc) is PID 1 as the
# container's command.
nspawn=(systemd-nspawn -D "$rootfs" --register=no --keep-unit --capability=all --system-call-filter=@keyring -M "fk-$INIT")
if [ "$INIT" = systemd ]; then nspawn+=(--boot); else nspawn+=(/sbin/init); fi
SYSTEMD_NSPAWN_API_VFS_WRITABLE=1 "${nspawn[@]}" >"$E2E_DIR/console.log" 2>&1 </dev/null &
NSPAWN=$!
LEADER=
for _ in $(seq 100); do LEADER=$(pgrep -P "$NSPAWN" | head -1); [ -n "$LEADER" ] && break; sleep 0.1; done
inside() { nsenter -t "$LEADER" -m -u -i -n -p -- env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

# The init's words for the service, the same for both: booted, svc_state (active or
# inactive), svc_enabled (enabled or not), svc_restart, svc_log.
if [ "$INIT" = systemd ]; then
  booted() { case "$(inside systemctl is-system-running 2>/dev/null)" in running | degraded) return 0 ;; esac; return 1; }
  svc_state() { inside systemctl is-active ferrokube 2>&1; }
  svc_enabled() { inside systemctl is-enabled ferrokube 2>&1; }
  svc_restart() { inside systemctl restart ferrokube; }
  svc_log() { inside journalctl -u ferrokube --no-pager 2>&1; }
  poweroff_inside() { inside systemctl poweroff; }
else
  booted() { [ "$(inside cat /run/openrc/softlevel 2>/dev/null)" = default ] && [ -z "$(inside ls /run/openrc/starting 2>/dev/null)" ]; }
  svc_state() { case "$(inside rc-service ferrokube status 2>&1)" in *"status: started"*) echo active ;; *) echo inactive ;; esac; }
  svc_enabled() { if inside rc-update show default 2>/dev/null | grep -qw ferrokube; then echo enabled; else echo disabled; fi; }
  svc_restart() { inside rc-service ferrokube restart; }
  svc_log() { inside cat /var/log/ferrokube.log 2>&1; }
  # Never sysvinit's halt: it takes every network interface down (`halt -i`), and this
  # container shares the host's. Its PID 1 killed, the container is gone.
  poweroff_inside() { kill -KILL "$LEADER"; }
fi
state=
for _ in $(seq 150); do booted && { state=booted; break; }; sleep 0.2; done
cleanup_nspawn() {
  [ -n "$LEADER" ] && poweroff_inside >/dev/null 2>&1
  for _ in $(seq 50); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.2; done
  kill "$NSPAWN" 2>/dev/null; wait "$NSPAWN" 2>/dev/null
  kill "$HTTP_PID" 2>/dev/null
  iptables -F E2E-NSPAWN-FOREIGN 2>/dev/null; iptables -X E2E-NSPAWN-FOREIGN 2>/dev/null
  for m in $(awk -v d="$E2E_DIR" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r); do umount -l "$m" 2>/dev/null; done
  cleanup
}
trap cleanup_nspawn EXIT
if [ -n "$state" ]; then ok "the container booted $INIT"; else not_ok "the container booted $INIT" "$(tail -5 "$E2E_DIR/console.log")"; summary; exit 1; fi
# On this host (cgroup v1, no systemd as PID 1) nspawn mounts the cgroup controllers read-only;
# a machine's are writable, so make them so in the container.
inside sh -c 'for m in $(awk "\$3 == \"cgroup\" {print \$2}" /proc/mounts); do mount -o remount,bind,rw "$m"; done'

export KUBECONFIG=$rootfs/etc/ferrokube/ferrokube.yaml
node=fk-$INIT
exec_flags="server --https-listen-port $PORT --node-name $node"
install_inside() {
  inside env INSTALL_FERROKUBE_DOWNLOAD_URL="http://127.0.0.1:$HTTP_PORT" INSTALL_FERROKUBE_EXEC="$exec_flags" sh /root/install.sh 2>&1
}
out=$(install_inside); rc=$?
check "install.sh in the container succeeds" "0" "$rc"
[ "$rc" = 0 ] || echo "$out" | tail -5 | sed 's/^/       /'
check "the service is started ($INIT)" "active" "$(svc_state)"
check "and enabled at boot" "enabled" "$(svc_enabled)"
eventually "the node is Ready" "True" 60 k get node "$node" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
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
  svc_log | grep -v 'GET\|PUT\|PATCH' | tail -25 | cut -c1-250 | sed 's/^/       /'
fi
cid=$(k get pod keeper -o jsonpath='{.status.containerStatuses[0].containerID}')
check_contains "the pod has a container ID" "containerd://" "$cid"

svc_restart >/dev/null 2>&1
check "after a restart of the service it is started" "active" "$(svc_state)"
if [ "$INIT" = systemd ]; then
  check "the API answers right away (Type=notify: ready)" "ok" "$(curl -sk "https://127.0.0.1:$PORT/readyz")"
else
  eventually "the API answers" "ok" 30 curl -sk "https://127.0.0.1:$PORT/readyz"
fi
eventually "the pod is Ready again" "True" 60 k get pod keeper -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'
check "the restart kept the pod's container (same ID)" "$cid" "$(k get pod keeper -o jsonpath='{.status.containerStatuses[0].containerID}')"
check "and did not restart it" "0" "$(k get pod keeper -o jsonpath='{.status.containerStatuses[0].restartCount}')"

# ferrokube killed: the init starts it again (Restart=always, supervise-daemon's respawn).
pid=$(inside pgrep -x ferrokube | head -1)
inside kill -9 "$pid"
eventually "killed, ferrokube is started again by $INIT" "yes" 30 sh -c "p=\$(nsenter -t $LEADER -m -p pgrep -x ferrokube | head -1); [ -n \"\$p\" ] && [ \"\$p\" != $pid ] && curl -sfk https://127.0.0.1:$PORT/readyz >/dev/null && echo yes"
check "the pod kept its container through it" "$cid" "$(k get pod keeper -o jsonpath='{.status.containerStatuses[0].containerID}')"

# A new release: re-running install.sh upgrades in place and restarts; the pod stays.
printf '\n' >>"$www/ferrokube" && (cd "$www" && sha256sum ferrokube >ferrokube.sha256)
out=$(install_inside); rc=$?
check "re-running install.sh succeeds" "0" "$rc"
check "the installed binary is the new release" "$(sha256sum <"$www/ferrokube")" "$(sha256sum <"$rootfs/usr/local/bin/ferrokube")"
check "the service is started on it" "active" "$(svc_state)"
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
left=$(inside sh -c 'ls -d /usr/local/bin/ferrokube* /etc/systemd/system/ferrokube* /etc/init.d/ferrokube* /etc/conf.d/ferrokube* /etc/ferrokube /var/lib/ferrokube /run/ferrokube 2>/dev/null')
check "no file of ours" "" "$left"
check "the service is gone" "inactive" "$(svc_state)"
summary
