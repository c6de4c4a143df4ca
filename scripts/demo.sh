#!/usr/bin/env bash
# The seed's demo, end to end, on this machine. Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec ./target/release/netmod demo "$@"
