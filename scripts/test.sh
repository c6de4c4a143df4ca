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

echo "== cargo test"
# Namespace-heavy tests share one machine: keep parallelism modest.
cargo test --workspace -- --test-threads="${NETMOD_TEST_THREADS:-4}"
