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
# A port picked as free can be taken before etcd binds it: then etcd exits
# with "address already in use" and we try other ports. Ready means etcd's
# own log says it serves on our port, never merely that something answers.
etcd_dir=$(mktemp -d -p "$([ -d /dev/shm ] && echo /dev/shm || echo /tmp)" netmod-test-etcd.XXXXXX)
etcd_pid=
trap '[ -n "$etcd_pid" ] && { kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; }; rm -rf "$etcd_dir"' EXIT
start_etcd() {
  local ports client peer
  ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
  read -r client peer <<<"$ports"
  rm -rf "$etcd_dir/data"
  /usr/bin/etcd --name=default --data-dir="$etcd_dir/data" \
    --listen-client-urls="http://127.0.0.1:$client" --advertise-client-urls="http://127.0.0.1:$client" \
    --listen-peer-urls="http://127.0.0.1:$peer" --initial-advertise-peer-urls="http://127.0.0.1:$peer" \
    --initial-cluster="default=http://127.0.0.1:$peer" >"$etcd_dir/etcd.log" 2>&1 &
  etcd_pid=$!
  for _ in $(seq 200); do
    if ! kill -0 "$etcd_pid" 2>/dev/null; then
      wait "$etcd_pid" 2>/dev/null || true
      etcd_pid=
      grep -q "address already in use" "$etcd_dir/etcd.log" && return 2
      tail -5 "$etcd_dir/etcd.log" >&2
      return 1
    fi
    if grep -q "client requests on 127.0.0.1:$client" "$etcd_dir/etcd.log"; then
      etcd_port=$client
      return 0
    fi
    sleep 0.1
  done
  tail -5 "$etcd_dir/etcd.log" >&2
  return 1
}
etcd_port=
for attempt in 1 2 3 4 5 6 7 8; do
  rc=0
  start_etcd || rc=$?
  [ "$rc" = 0 ] && break
  [ "$rc" = 2 ] || { echo "test: etcd did not start" >&2; exit 1; }
  echo "test: an etcd port was taken (attempt $attempt), trying others"
done
[ -n "$etcd_port" ] || { echo "test: etcd did not start" >&2; exit 1; }
export NETMOD_TEST_ETCD="127.0.0.1:$etcd_port"
echo "== etcd for tests at $NETMOD_TEST_ETCD"

echo "== the Debian package"
bash scripts/package.sh

echo "== cargo test"
# Namespace-heavy tests share one machine: keep parallelism modest.
# Every failing test binary is reported, not only the first.
cargo test --workspace --no-fail-fast -- --test-threads="${NETMOD_TEST_THREADS:-4}"
