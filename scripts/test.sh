#!/usr/bin/env bash
# Every test netmod has: format, lints, unit tests, and integration tests in
# real network namespaces, against real SQLite, nftables, etcd and Podman.
# Run as root on Debian 12. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

# One etcd for the whole run (store and IPAM tests on etcd use it through
# NETMOD_TEST_ETCD): loopback, ports of its own, a throw-away data directory.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 10000))
    ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}
etcd_dir=$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo /tmp)" netmod-test-etcd.XXXXXX)
etcd_port=$(free_port)
etcd_peer=$(free_port)
while [ "$etcd_peer" = "$etcd_port" ]; do etcd_peer=$(free_port); done
/usr/bin/etcd --name=default --data-dir="$etcd_dir/data" \
  --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
  --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
  --initial-cluster="default=http://127.0.0.1:$etcd_peer" >"$etcd_dir/etcd.log" 2>&1 &
etcd_pid=$!
trap 'kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; rm -rf "$etcd_dir"' EXIT
for _ in $(seq 100); do
  ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$etcd_port" --dial-timeout=1s endpoint health >/dev/null 2>&1 && break
  kill -0 "$etcd_pid" 2>/dev/null || { tail -5 "$etcd_dir/etcd.log" >&2; echo "test: etcd did not start" >&2; exit 1; }
  sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$etcd_port" --dial-timeout=1s endpoint health >/dev/null 2>&1 \
  || { tail -5 "$etcd_dir/etcd.log" >&2; echo "test: etcd not healthy" >&2; exit 1; }
export NETMOD_TEST_ETCD="127.0.0.1:$etcd_port"
echo "== etcd for tests at $NETMOD_TEST_ETCD"

echo "== cargo test"
# Namespace-heavy tests share one machine: keep parallelism modest.
cargo test --workspace -- --test-threads="${NETMOD_TEST_THREADS:-4}"
