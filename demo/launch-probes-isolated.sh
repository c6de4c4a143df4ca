#!/usr/bin/env bash
# Probes A,B in star-1 and C,D in star-2; the collector (star-1, star-2, public) at 192.168.255.252.
source "$(dirname "$0")/lib.sh"
stage_files
put_group star-isolated "$MARATHON_DIR/stars-isolated.json"
echo "Done. The isolated visualizer: http://192.168.255.252:9001/"
