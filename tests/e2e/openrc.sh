#!/usr/bin/env bash
# install.sh in a booted openrc container (sysvinit running openrc; the steps: service.sh).
INIT=openrc
. "$(dirname "$0")/service.sh"
