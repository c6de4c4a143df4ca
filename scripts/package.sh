#!/usr/bin/env bash
# Build the Debian package: target/debian/netmod_<version>-1_<arch>.deb.
# Installs cargo-deb (from crates.io) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo-deb >/dev/null; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "package: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi
# Every binary the package carries, built once for the whole workspace.
cargo build --workspace --release --quiet
cargo deb -p netmod --no-build --quiet
ls -1 target/debian/netmod_*.deb | tail -1
