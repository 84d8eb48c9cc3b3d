#!/bin/sh
# Installs ferrokube as a service:
#   curl -sfL https://<host>/install.sh | sh -
#   sh install.sh                                   (from a checkout or a download)
#   INSTALL_FERROKUBE_SKIP_DOWNLOAD=true sh install.sh   (airgap: the binary is in place)
#
# Environment:
#   INSTALL_FERROKUBE_EXEC           role and flags of the service (default "server"), e.g.
#                                    "server --disable-agent --tls-san example.com"
#   INSTALL_FERROKUBE_VERSION        release to download (default: latest)
#   INSTALL_FERROKUBE_DOWNLOAD_URL   base URL serving ferrokube[-arm64] and ferrokube[-arm64].sha256
#   INSTALL_FERROKUBE_BIN_DIR        where the binary and scripts go (default /usr/local/bin)
#   INSTALL_FERROKUBE_SYSTEMD_DIR    where the systemd unit goes (default /etc/systemd/system)
#   INSTALL_FERROKUBE_CONFIG_DIR     configuration directory (default /etc/ferrokube)
#   INSTALL_FERROKUBE_SKIP_DOWNLOAD  true: use the binary already in the bin dir
#   INSTALL_FERROKUBE_SKIP_ENABLE    true: do not enable the service at boot
#   INSTALL_FERROKUBE_SKIP_START     true: do not (re)start the service
#   INSTALL_FERROKUBE_SKIP_DEPS      true: do not install containerd, runc, iptables
#   FERROKUBE_URL, FERROKUBE_TOKEN   join an existing server (agent role)
#   FERROKUBE_*                      passed to the service through its environment file
# Re-running upgrades in place and restarts the service; pods keep running (KillMode=process).
# ferrokube-killall.sh and ferrokube-uninstall.sh clean the directories and bridge that
# --data-dir, --run-dir, --pod-bridge and --kubelet-root-dir in INSTALL_FERROKUBE_EXEC name.
set -eu

info() { echo "[INFO]  $*"; }
warn() { echo "[WARN]  $*" >&2; }
fatal() {
  echo "[ERROR] $*" >&2
  exit 1
}

BIN_DIR=${INSTALL_FERROKUBE_BIN_DIR:-/usr/local/bin}
SYSTEMD_DIR=${INSTALL_FERROKUBE_SYSTEMD_DIR:-/etc/systemd/system}
EXEC=${INSTALL_FERROKUBE_EXEC:-}
VERSION=${INSTALL_FERROKUBE_VERSION:-latest}
CONFIG_DIR=${INSTALL_FERROKUBE_CONFIG_DIR:-/etc/ferrokube}
SERVICE=ferrokube
if [ -z "$EXEC" ]; then
  if [ -n "${FERROKUBE_URL:-}" ]; then EXEC=agent; else EXEC=server; fi
fi
ROLE=${EXEC%% *}
case "$ROLE" in
  server | agent) ;;
  -*) EXEC="server $EXEC" ROLE=server ;;
  *) fatal "INSTALL_FERROKUBE_EXEC must start with server or agent (got \"$ROLE\")" ;;
esac
# The value of flag --$1 in the service's flags (--name value or --name=value), if given:
# killall and uninstall clean where the service was told to work.
flag_value() (
  set -f
  prev=
  for word in $EXEC; do
    case "$word" in --"$1"=*)
      echo "${word#*=}"
      exit 0
      ;;
    esac
    if [ "$prev" = "--$1" ]; then
      echo "$word"
      exit 0
    fi
    prev=$word
  done
)
DATA_DIR=$(flag_value data-dir)
DATA_DIR=${DATA_DIR:-${FERROKUBE_DATA_DIR:-/var/lib/ferrokube}}
RUN_DIR=$(flag_value run-dir)
RUN_DIR=${RUN_DIR:-/run/ferrokube}
POD_BRIDGE=$(flag_value pod-bridge)
BRIDGE_FLAG=
[ -z "$POD_BRIDGE" ] || BRIDGE_FLAG=" --pod-bridge \"$POD_BRIDGE\""
KUBELET_ROOT=$(flag_value kubelet-root-dir)
KUBELET_ROOT=${KUBELET_ROOT:-/var/lib/kubelet}
if [ "$ROLE" = agent ]; then
  SERVICE=ferrokube-agent
  [ -n "${FERROKUBE_URL:-}" ] || fatal "the agent needs FERROKUBE_URL (https://<server>:6443)"
  [ -n "${FERROKUBE_TOKEN:-}" ] || fatal "the agent needs FERROKUBE_TOKEN (the server's <data-dir>/server/token)"
fi

# ---- host checks ------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fatal "run as root (sudo sh install.sh, or curl ... | sudo sh -): it installs a service"
[ "$(uname -s)" = Linux ] || fatal "ferrokube runs on Linux only (this is $(uname -s))"
case $(uname -m) in
  x86_64 | amd64) SUFFIX= ;;
  aarch64 | arm64) SUFFIX=-arm64 ;;
  *) fatal "no ferrokube build for $(uname -m): there are x86_64 and aarch64 builds" ;;
esac
needs_node=true
case " $EXEC " in *" --disable-agent "*) needs_node=false ;; esac
if [ "$needs_node" = true ]; then
  memory=false
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    grep -qw memory /sys/fs/cgroup/cgroup.controllers && memory=true
  elif awk '$1 == "memory" && $4 == 1 {found=1} END {exit !found}' /proc/cgroups 2>/dev/null; then
    memory=true
  fi
  [ "$memory" = true ] || fatal "the memory cgroup is not enabled: pods need it. On a Raspberry Pi add 'cgroup_memory=1 cgroup_enable=memory' to /boot/firmware/cmdline.txt (or /boot/cmdline.txt) and reboot; elsewhere boot with cgroup_enable=memory"
  if ! grep -qw overlay /proc/filesystems; then
    modprobe overlay 2>/dev/null || true
    grep -qw overlay /proc/filesystems || fatal "the kernel has no overlay filesystem (modprobe overlay failed): containerd's overlayfs snapshotter needs it"
  fi
fi

# ---- prerequisites ----------------------------------------------------------------------------
install_packages() {
  if command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  elif command -v dnf >/dev/null 2>&1; then
    dnf install -y -q "$@" >/dev/null
  elif command -v zypper >/dev/null 2>&1; then
    zypper --non-interactive install "$@" >/dev/null
  elif command -v apk >/dev/null 2>&1; then
    apk add -q "$@" >/dev/null
  else
    return 1
  fi
}
missing=
command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
if [ "$needs_node" = true ]; then
  command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
  command -v runc >/dev/null 2>&1 || missing="$missing runc"
fi
if [ -n "$missing" ]; then
  if [ "${INSTALL_FERROKUBE_SKIP_DEPS:-}" = true ]; then
    fatal "missing:$missing (install them, or run without INSTALL_FERROKUBE_SKIP_DEPS)"
  fi
  info "installing$missing"
  # shellcheck disable=SC2086
  install_packages $missing || fatal "missing:$missing, and no apt-get, dnf, zypper or apk to install them with: install them and run this again"
fi

# ---- the binary ---------------------------------------------------------------------------------
BIN=$BIN_DIR/ferrokube
mkdir -p "$BIN_DIR"
fetch() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$2" "$1"
  else
    fatal "neither curl nor wget is installed: install one, or set INSTALL_FERROKUBE_SKIP_DOWNLOAD=true with the binary at $BIN"
  fi
}
if [ "${INSTALL_FERROKUBE_SKIP_DOWNLOAD:-}" = true ]; then
  [ -x "$BIN" ] || fatal "INSTALL_FERROKUBE_SKIP_DOWNLOAD=true but there is no executable $BIN"
  info "using the binary in place: $BIN"
else
  if [ -n "${INSTALL_FERROKUBE_DOWNLOAD_URL:-}" ]; then
    BASE=${INSTALL_FERROKUBE_DOWNLOAD_URL%/}
  elif [ "$VERSION" = latest ]; then
    BASE=https://github.com/ferrokube/ferrokube/releases/latest/download
  else
    BASE=https://github.com/ferrokube/ferrokube/releases/download/$VERSION
  fi
  TMP=$(mktemp -d)
  trap 'rm -rf "$TMP"' EXIT
  info "downloading $BASE/ferrokube$SUFFIX"
  fetch "$BASE/ferrokube$SUFFIX.sha256" "$TMP/sha256" || fatal "cannot download $BASE/ferrokube$SUFFIX.sha256"
  fetch "$BASE/ferrokube$SUFFIX" "$TMP/ferrokube" || fatal "cannot download $BASE/ferrokube$SUFFIX"
  want=$(awk '{print $1; exit}' "$TMP/sha256")
  have=$(sha256sum "$TMP/ferrokube" | awk '{print $1}')
  if [ -z "$want" ] || [ "$want" != "$have" ]; then
    fatal "checksum mismatch for ferrokube$SUFFIX: expected $want, got $have (download again, or check the mirror)"
  fi
  chmod 755 "$TMP/ferrokube"
  # Atomic replace: the running service keeps its old binary until it restarts.
  mv -f "$TMP/ferrokube" "$BIN.new" && mv -f "$BIN.new" "$BIN"
  info "installed $BIN ($("$BIN" --version 2>/dev/null || echo unknown version))"
fi

# ---- killall and uninstall ----------------------------------------------------------------------
cat >"$BIN_DIR/ferrokube-killall.sh" <<EOF
#!/bin/sh
# Stops ferrokube, its containerd and every pod, and removes their mounts, chains and links.
set -e
[ "\$(id -u)" = 0 ] || exec sudo "\$0" "\$@"
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then systemctl stop $SERVICE 2>/dev/null || true; fi
if command -v rc-service >/dev/null 2>&1; then rc-service $SERVICE stop 2>/dev/null || true; fi
exec "$BIN" killall --data-dir "$DATA_DIR" --run-dir "$RUN_DIR"$BRIDGE_FLAG "\$@"
EOF
cat >"$BIN_DIR/ferrokube-uninstall.sh" <<EOF
#!/bin/sh
# Removes ferrokube: everything ferrokube-killall.sh stops, then the service, the binary, the
# configuration, the data directory (the cluster) and the kubeconfig.
set -e
[ "\$(id -u)" = 0 ] || exec sudo "\$0" "\$@"
"$BIN_DIR/ferrokube-killall.sh" || true
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable $SERVICE 2>/dev/null || true
  rm -f "$SYSTEMD_DIR/$SERVICE.service" "$SYSTEMD_DIR/$SERVICE.service.env"
  systemctl daemon-reload 2>/dev/null || true
else
  rm -f "$SYSTEMD_DIR/$SERVICE.service" "$SYSTEMD_DIR/$SERVICE.service.env"
fi
if [ -f /etc/init.d/$SERVICE ]; then
  rc-update delete $SERVICE default 2>/dev/null || true
  rm -f /etc/init.d/$SERVICE /etc/conf.d/$SERVICE
fi
rm -rf "$CONFIG_DIR" "$DATA_DIR" "$RUN_DIR"
# What the kubelet made in its root directory; the directory only when nothing else is there.
rm -rf "$KUBELET_ROOT/device-plugins" "$KUBELET_ROOT/pod-resources" "$KUBELET_ROOT/plugins_registry" "$KUBELET_ROOT/plugins/kubernetes.io"
rmdir "$KUBELET_ROOT/plugins" "$KUBELET_ROOT" 2>/dev/null || true
rm -f "$BIN" "$BIN_DIR/ferrokube-killall.sh" "$BIN_DIR/ferrokube-uninstall.sh"
echo "ferrokube removed"
EOF
chmod 755 "$BIN_DIR/ferrokube-killall.sh" "$BIN_DIR/ferrokube-uninstall.sh"
mkdir -p "$CONFIG_DIR"

# ---- the service --------------------------------------------------------------------------------
# The environment file: FERROKUBE_* of this shell (the agent's URL and token among them).
ENV_LINES=$(env | grep '^FERROKUBE_' | grep -v '^FERROKUBE_URL=\|^FERROKUBE_TOKEN=' || true)
write_env() {
  umask 077
  {
    echo "# Written by install.sh; the service reads it at start."
    [ -n "$ENV_LINES" ] && echo "$ENV_LINES"
    [ -n "${FERROKUBE_URL:-}" ] && echo "FERROKUBE_URL=$FERROKUBE_URL"
    [ -n "${FERROKUBE_TOKEN:-}" ] && echo "FERROKUBE_TOKEN=$FERROKUBE_TOKEN"
    true
  } >"$1"
  chmod 600 "$1"
}

if [ -d /run/systemd/system ] || [ -n "${INSTALL_FERROKUBE_SYSTEMD_DIR:-}" ]; then
  mkdir -p "$SYSTEMD_DIR"
  write_env "$SYSTEMD_DIR/$SERVICE.service.env"
  cat >"$SYSTEMD_DIR/$SERVICE.service" <<EOF
[Unit]
Description=ferrokube ($ROLE): a Kubernetes node in one binary
Wants=network-online.target
After=network-online.target

[Service]
# READY=1 once /readyz answers 200.
Type=notify
NotifyAccess=main
EnvironmentFile=-/etc/default/$SERVICE
EnvironmentFile=-$SYSTEMD_DIR/$SERVICE.service.env
# Only ferrokube itself is stopped: pods (their shims) keep running across restarts.
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$BIN $EXEC

[Install]
WantedBy=multi-user.target
EOF
  info "wrote $SYSTEMD_DIR/$SERVICE.service"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if [ "${INSTALL_FERROKUBE_SKIP_ENABLE:-}" != true ]; then
      systemctl enable "$SERVICE" >/dev/null 2>&1
    fi
    if [ "${INSTALL_FERROKUBE_SKIP_START:-}" != true ]; then
      info "starting $SERVICE"
      systemctl restart "$SERVICE"
    fi
  fi
elif command -v openrc-run >/dev/null 2>&1 || [ -x /sbin/openrc-run ]; then
  # Debian's openrc has no /etc/conf.d until something puts a file there.
  mkdir -p /etc/conf.d
  write_env "/etc/conf.d/$SERVICE"
  cat >"/etc/init.d/$SERVICE" <<EOF
#!/sbin/openrc-run
description="ferrokube ($ROLE): a Kubernetes node in one binary"
# openrc's own supervisor: restarts it if it dies (systemd's Restart=always), and writes
# its log where start-stop-daemon cannot (Debian's has no --stdout).
supervisor=supervise-daemon
command="$BIN"
command_args="$EXEC"
pidfile="/run/$SERVICE.pid"
respawn_delay=5
respawn_max=0
output_log="/var/log/$SERVICE.log"
error_log="/var/log/$SERVICE.log"
# Pods keep running when the service stops: only ferrokube itself is signalled, never the
# rest of its cgroup (containerd's shims), whatever rc_cgroup_cleanup says in rc.conf.
retry="TERM/30/KILL/5"
rc_cgroup_cleanup="no"
depend() {
  after network-online net firewall
  want cgroups
}
start_pre() {
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  set -a; [ -f /etc/conf.d/$SERVICE ] && . /etc/conf.d/$SERVICE; set +a
}
EOF
  chmod 755 "/etc/init.d/$SERVICE"
  info "wrote /etc/init.d/$SERVICE"
  [ "${INSTALL_FERROKUBE_SKIP_ENABLE:-}" = true ] || rc-update add "$SERVICE" default >/dev/null
  [ "${INSTALL_FERROKUBE_SKIP_START:-}" = true ] || rc-service "$SERVICE" restart
else
  warn "neither systemd nor openrc runs here: start it yourself with  $BIN $EXEC"
fi
info "done: kubeconfig at $CONFIG_DIR/ferrokube.yaml once the server is up; remove with $BIN_DIR/ferrokube-uninstall.sh"
