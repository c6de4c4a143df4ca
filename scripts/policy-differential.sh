#!/usr/bin/env bash
# The long policy differential run (the bench command of
# crates/netmod/tests/policy_differential.rs): random Calico policies and
# random connection attempts on a 2-host fabric in network namespaces; the
# kernel's verdict must equal `netmod explain`'s for every attempt.
#
#   NETMOD_POLICY_CASES  attempts (default here 3000; the normal test run: 300)
#   NETMOD_POLICY_SEED   seed (default here: from the clock, so each run draws new
#                        cases; the normal test run uses a fixed seed)
#
# Writes bench/results/policy-differential.md (cases, seed, mismatches, wall
# time, and every mismatch with its policies and explain's JSON). Run as root
# on Debian 12. Exits non-zero when the kernel and explain disagreed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=bench/results/policy-differential.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "$(id -u)" != 0 ]; then
  echo "policy-differential.sh: run as root (the test makes network namespaces)" >&2
  exit 1
fi
for tool in ip nft python3 nsenter unshare curl; do
  command -v "$tool" >/dev/null || { echo "policy-differential.sh: $tool is missing: run bash scripts/setup.sh" >&2; exit 1; }
done
export NETMOD_POLICY_CASES=${NETMOD_POLICY_CASES:-3000}
export NETMOD_POLICY_SEED=${NETMOD_POLICY_SEED:-$(( $(date +%s%N) % 1000000007 ))}
export NETMOD_POLICY_REPORT="$work/report.md"
start=$(date +%s)
cargo test -p netmod --test policy_differential -- --nocapture 2>&1 | tee "$work/log"
status=${PIPESTATUS[0]}
wall=$(( $(date +%s) - start ))
rev=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || rev="$rev, modified"
{
  echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores, kernel $(uname -r), debug build, git $rev."
  echo "Command: \`bash scripts/policy-differential.sh\` (NETMOD_POLICY_CASES=$NETMOD_POLICY_CASES); whole run including the build: ${wall} s; test exit status $status."
  echo
  if [ -s "$NETMOD_POLICY_REPORT" ]; then
    cat "$NETMOD_POLICY_REPORT"
  else
    echo "**The test wrote no report** (it failed before the end); the last lines of its output:"
    echo
    echo '```'
    tail -40 "$work/log"
    echo '```'
  fi
} >"$out.tmp"
python3 - "$out.tmp" "$out" <<'PY'
import sys
text = open(sys.argv[1]).read().splitlines()
title = next((l for l in text if l.startswith('# ')), '# Policy differential: kernel vs `netmod explain`')
rest = [l for l in text if l != title]
open(sys.argv[2], 'w').write(title + '\n\n' + '\n'.join(rest).strip() + '\n')
PY
rm -f "$out.tmp"
echo "policy-differential.sh: wrote $out"
exit "$status"
