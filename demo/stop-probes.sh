#!/usr/bin/env bash
# Stop the per-task-IP probes and their collector.
source "$(dirname "$0")/lib.sh"
delete_group star
