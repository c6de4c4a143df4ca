# Shared by the demo scripts: where netmod is, where Marathon listens.
# shellcheck shell=bash
set -euo pipefail
DEMO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MARATHON_DIR="$DEMO_DIR/marathon"
MARATHON="${MARATHON:-http://127.0.0.1:8080}"
# The seed's slave image had the demo files under /star; the lab's is here.
STAR_DIR=/run/netmod-lab/star

if [ -z "${NETMOD:-}" ]; then
  # A build of this repository (netmod and netmod-lab side by side), else PATH.
  for d in "$DEMO_DIR/../target/release" "$DEMO_DIR/../target/debug"; do
    if [ -x "$d/netmod" ] && [ -x "$d/netmod-lab" ]; then NETMOD="$(cd "$d" && pwd)/netmod"; break; fi
  done
  NETMOD="${NETMOD:-netmod}"
fi

# Stage the resource files the collectors fetch through file:// URIs.
stage_files() {
  if [ ! -d "$STAR_DIR" ]; then
    echo "the lab is not up: run ./demo/launch-cluster.sh (or launch-cluster-before.sh) first" >&2
    exit 1
  fi
  install -m 0644 "$MARATHON_DIR"/star-resources*.json "$STAR_DIR"/
}

# PUT a group definition to Marathon.
put_group() {
  local id="$1" file="$2"
  echo "Launching group '$id' ($file)"
  curl -sS --fail-with-body -X PUT -H "Content-Type: application/json" \
    "$MARATHON/v2/groups/$id" --data-binary @"$file"
  echo
}

delete_group() {
  local id="$1"
  echo "Stopping group '$id'"
  curl -sS --fail-with-body -X DELETE "$MARATHON/v2/groups/$id"
  echo
}
