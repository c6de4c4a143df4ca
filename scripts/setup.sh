#!/usr/bin/env bash
# Install everything netmod's build, tests, benchmarks and demo need on a fresh
# Debian 12 machine (as root), then build. Safe to run again: it installs only
# what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  pkg-config libnftnl-dev libmnl-dev nftables iproute2 iputils-ping procps psmisc
  util-linux systemd python3 conntrack
  sqlite3 curl jq
  containernetworking-plugins iperf3 busybox-static
  podman runc
  chromium
  etcd-server etcd-client protobuf-compiler libprotobuf-dev
  bird2
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# netmod node --bgp runs its own BIRD (or one systemd runs, configured to
# use netmod's file: docs/routing.md); Debian's default bird.service would
# hold port 179 with a configuration of its own.
if systemctl is-enabled --quiet bird.service 2>/dev/null; then
  systemctl disable --now bird.service >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }

# The Debian package is built with cargo-deb (scripts/package.sh).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "setup: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

# Our own (debug) binaries are what the tests run; release ones serve the demo and benches.
cargo build --workspace --release --quiet
