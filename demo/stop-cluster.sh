#!/usr/bin/env bash
# Tear the cluster down: nothing of the lab is left.
source "$(dirname "$0")/lib.sh"
exec "$NETMOD" lab down
