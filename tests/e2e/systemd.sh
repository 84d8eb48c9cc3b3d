#!/usr/bin/env bash
# install.sh in a booted systemd container (the steps: service.sh).
INIT=systemd
. "$(dirname "$0")/service.sh"
