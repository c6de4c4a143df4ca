#!/usr/bin/env bash
# The cluster with netmod as the network isolator: two agents, pool 192.168.0.0/16 routed into the fabric.
source "$(dirname "$0")/lib.sh"
exec "$NETMOD" lab up "$@"
