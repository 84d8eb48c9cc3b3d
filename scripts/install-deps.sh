#!/usr/bin/env bash
# Installs what ferrokube's build and tests need beyond the Rust toolchain on Debian 12.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
# Build: protoc for the CRI client, a static libc for the pause program.
# Node: containerd (its ctr serves the tests only), runc, iptables, iproute2, util-linux (nsenter).
# Tests: curl, python3-venv, busybox-static for test images; tzdata for CronJob time zones;
# docker-registry for pulls from a local registry; etcd-server and etcd-client for servers on etcd; shellcheck for install.sh; systemd-container
# and debootstrap for install.sh in a booted systemd container. Edge boards: the aarch64 cross
# compiler and C library (ring, the pause program, the linker) and qemu-user-static to run it.
for p in curl ca-certificates python3-venv protobuf-compiler etcd-server etcd-client libc6-dev gcc containerd runc iptables iproute2 util-linux busybox-static tzdata docker-registry shellcheck systemd-container debootstrap gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static file; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q "${need[@]}"
fi
# The aarch64 standard library for the cross build.
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  rustup target add aarch64-unknown-linux-gnu
fi
