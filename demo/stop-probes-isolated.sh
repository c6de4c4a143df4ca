#!/usr/bin/env bash
# Stop the isolated probes and their collector.
source "$(dirname "$0")/lib.sh"
delete_group star-isolated
