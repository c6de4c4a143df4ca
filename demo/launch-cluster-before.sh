#!/usr/bin/env bash
# The "before" cluster: vanilla Mesos (no network isolator), two agents.
source "$(dirname "$0")/lib.sh"
exec "$NETMOD" lab up --no-isolator "$@"
