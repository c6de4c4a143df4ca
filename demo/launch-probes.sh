#!/usr/bin/env bash
# Four probes with their own addresses (netgroup public) and the collector at 192.168.255.253.
source "$(dirname "$0")/lib.sh"
stage_files
put_group star "$MARATHON_DIR/stars.json"
echo "Done. The visualizer: http://192.168.255.253:9001/"
