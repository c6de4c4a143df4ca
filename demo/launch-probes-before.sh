#!/usr/bin/env bash
# Four probes that all need host port 9000 on two agents, and the collector.
source "$(dirname "$0")/lib.sh"
stage_files
put_group star "$MARATHON_DIR/stars-before.json"
echo "Done. Two probes run, two wait for port 9000: see $MARATHON/"
