# Shared by the demo scripts: where netmod is, which lab, where its Marathon listens.
# shellcheck shell=bash
set -euo pipefail
DEMO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MARATHON_DIR="$DEMO_DIR/marathon"
# The lab: NETMOD_LAB names it (as for `netmod lab`), default nmlab.
NETMOD_LAB="${NETMOD_LAB:-nmlab}"
if ! [[ "$NETMOD_LAB" =~ ^[a-z][a-z0-9-]{0,31}$ ]] || [[ "$NETMOD_LAB" == *- ]]; then
  echo "NETMOD_LAB=$NETMOD_LAB is not a lab name (1 to 32 of a-z, 0-9 and -, starting with a letter, not ending with -)" >&2
  exit 2
fi
# Its run directory (crates/lab/src/config.rs: Instance::run_dir): the
# default lab's is /run/netmod-lab, another's /run/netmod-lab-NAME.
if [ "$NETMOD_LAB" = nmlab ]; then
  LAB_RUN_DIR=/run/netmod-lab
else
  LAB_RUN_DIR="/run/netmod-lab-$NETMOD_LAB"
fi
# The seed's slave image had the demo files under /star; the lab's is here.
STAR_DIR="$LAB_RUN_DIR/star"
# The group files fetch from the default lab's star directory.
DEFAULT_STAR_DIR=/run/netmod-lab/star
# The default lab's Marathon is on 8080; another lab's port is the
# system's choice, read from `netmod lab status` when MARATHON is unset.
if [ -z "${MARATHON:-}" ] && [ "$NETMOD_LAB" = nmlab ]; then
  MARATHON=http://127.0.0.1:8080
fi

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

# MARATHON, else the named lab's Marathon as `netmod lab status` shows it
# ("master:     Marathon http://127.0.0.1:PORT/  Mesos ...").
need_marathon() {
  if [ -n "${MARATHON:-}" ]; then return; fi
  MARATHON="$("$NETMOD" lab --name "$NETMOD_LAB" status 2>/dev/null |
    sed -n 's|^master: *Marathon \(http://127\.0\.0\.1:[0-9]*\)/ .*|\1|p' | head -n 1)" || true
  if [ -z "$MARATHON" ]; then
    echo "cannot find the lab $NETMOD_LAB's Marathon (is it up? \`netmod lab --name $NETMOD_LAB status\`);" \
      "set MARATHON=http://127.0.0.1:PORT" >&2
    exit 1
  fi
}

# PUT a group definition to Marathon, its file:// URIs pointed at this
# lab's star directory.
put_group() {
  local id="$1" file="$2"
  need_marathon
  echo "Launching group '$id' ($file)"
  sed "s|file://$DEFAULT_STAR_DIR/|file://$STAR_DIR/|g" "$file" |
    curl -sS --fail-with-body -X PUT -H "Content-Type: application/json" \
      "$MARATHON/v2/groups/$id" --data-binary @-
  echo
}

delete_group() {
  local id="$1"
  need_marathon
  echo "Stopping group '$id'"
  curl -sS --fail-with-body -X DELETE "$MARATHON/v2/groups/$id"
  echo
}
