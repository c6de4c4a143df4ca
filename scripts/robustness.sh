#!/usr/bin/env bash
# The long robustness runs, recorded in bench/results/robustness.md:
#
#   - crash trials (crates/netmod/tests/crash.rs): kill -9 inside isolate,
#     cleanup, CNI ADD, CNI DEL and the node's apply, then convergence and an
#     oracle over the store; NETMOD_CRASH_TRIALS (default 1002: 167 of each
#     of the six kinds);
#   - fuzzing (crates/netmod/src/fuzz.rs in-process, tests/fuzz.rs through
#     the binary): NETMOD_FUZZ_CASES per property (default 100000, over a
#     million cases in all).
#
# The normal test run (scripts/test.sh) runs the same tests with small
# counts. Run as root on Debian 12 (the crash trials make network
# namespaces). Takes about half an hour on 2 cores. Exits non-zero when a
# run failed; the report says which and why either way.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=bench/results/robustness.md
trials=${NETMOD_CRASH_TRIALS:-1002}
cases=${NETMOD_FUZZ_CASES:-100000}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ "$(id -u)" != 0 ]; then
  echo "robustness.sh: run as root (the crash trials make network namespaces)" >&2
  exit 1
fi
for tool in ip nft python3 nsenter unshare curl; do
  command -v "$tool" >/dev/null || { echo "robustness.sh: $tool is missing: run bash scripts/setup.sh" >&2; exit 1; }
done

# Build once, then run the test executables directly: no cargo lock is held
# while they run, and nothing is rebuilt half way.
echo "== building the tests"
cargo test -p netmod --bin netmod --test crash --test fuzz --no-run --message-format=json 2>"$work/build.log" >"$work/build.json" || {
  cat "$work/build.log" >&2
  exit 1
}
exe() { # $1: the test target's name ("netmod" for the binary's unit tests)
  python3 - "$work/build.json" "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and m["target"]["name"] == sys.argv[2]:
        print(m["executable"])
EOF
}
crash_exe=$(exe crash)
fuzz_exe=$(exe fuzz)
unit_exe=$(exe netmod)
[ -n "$crash_exe" ] && [ -n "$fuzz_exe" ] && [ -n "$unit_exe" ] || {
  echo "robustness.sh: test executables not found" >&2
  exit 1
}

status=0
started=$(date -u '+%Y-%m-%d %H:%M UTC')

# ROBUSTNESS_ONLY=crash or =fuzz runs one part and keeps the other's section
# of the report as it was.
only=${ROBUSTNESS_ONLY:-}
crash_rc=skip
fuzz_rc=skip

if [ "$only" != fuzz ]; then
  echo "== crash trials: $trials"
  (cd crates/netmod && NETMOD_CRASH_TRIALS=$trials NETMOD_CRASH_REPORT="$work/crash.txt" \
    "$crash_exe" --nocapture --test-threads 1) >"$work/crash.log" 2>&1
  crash_rc=$?
  [ $crash_rc = 0 ] || status=1
  tail -25 "$work/crash.log"
fi

if [ "$only" != crash ]; then
  echo "== fuzzing: $cases cases per property"
  (cd crates/netmod && NETMOD_FUZZ_CASES=$cases NETMOD_FUZZ_REPORT="$work/fuzz.txt" \
    "$unit_exe" fuzz --nocapture --test-threads 2) >"$work/fuzz-unit.log" 2>&1
  fuzz_rc=$?
  (cd crates/netmod && NETMOD_FUZZ_CASES=$cases NETMOD_FUZZ_REPORT="$work/fuzz.txt" \
    "$fuzz_exe" --nocapture --test-threads 1) >"$work/fuzz-process.log" 2>&1
  [ $? = 0 ] || fuzz_rc=1
  [ $fuzz_rc = 0 ] || status=1
  grep -h '^fuzz ' "$work/fuzz-unit.log" "$work/fuzz-process.log"
fi

# Notes below the marker in the existing report are kept.
marker='<!-- notes: kept across runs of scripts/robustness.sh -->'
notes=""
[ -f "$out" ] && notes=$(awk -v m="$marker" 'found || $0 == m { found = 1; print }' "$out")

cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
mem=$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit, modified"

python3 - "$work" "$out" "$crash_rc" "$fuzz_rc" "$started" "$(nproc)" "$cpu" "$mem" \
  "$(uname -r)" "$commit" "$trials" "$cases" "$notes" <<'EOF'
import os, re, sys
work, out, crash_rc, fuzz_rc, started, cores, cpu, mem, kernel, commit, trials, cases, notes = sys.argv[1:]
old = open(out).read() if os.path.exists(out) else ""

def old_section(title):
    # The section of the previous report that starts with this title.
    m = re.search(r"^## " + re.escape(title) + r".*?(?=^## |^<!-- notes|\Z)", old, re.S | re.M)
    return m.group(0).rstrip("\n") + "\n" if m else f"## {title}\n\nNot measured yet.\n"

measured = (f"Measured {started} on {cores} cores ({cpu}, {mem}), kernel {kernel}, debug build, "
            f"git {commit}.")
L = []
L.append("# Robustness: crash trials and fuzzing\n")
L.append("`bash scripts/robustness.sh` runs both parts (`ROBUSTNESS_ONLY=crash` or `=fuzz` runs one "
         "and keeps the other's section); the normal test run (`scripts/test.sh`) runs the same "
         "tests with 40 trials and 2,000 cases per property.\n")

CRASH = "Crash trials: kill -9 inside every operation"
FUZZ = "Fuzzing: every parser that takes outside input"
if crash_rc == "skip":
    L.append(old_section(CRASH))
else:
    L.append(f"## {CRASH}\n")
    L.append(f"{measured} NETMOD_CRASH_TRIALS={trials}.\n")
    crash = {}
    kinds = []
    path = os.path.join(work, "crash.txt")
    if os.path.exists(path):
        for line in open(path):
            k, _, v = line.rstrip("\n").partition(" ")
            if k == "kind":
                kinds.append(v.split("|"))
            elif k == "typical":
                crash.setdefault("typical", []).append(v)
            else:
                crash[k] = v
    if crash_rc == "0" and kinds:
        L.append(f"**Passed**: {crash['trials']} trials (seed {crash['seed']}, {int(crash['elapsed_s'])//60} min "
                 f"{int(crash['elapsed_s'])%60} s), no failure.\n")
        L.append("| operation killed | trials | kill landed inside | killed before any effect | "
                 "finished before the kill | killed after the node had applied all | recovery calls that failed too | "
                 "kernel matched the records after (mean / max) |")
        L.append("|---|---|---|---|---|---|---|---|")
        for name, n, inside, before, done, after, retries, mean, mx in kinds:
            L.append(f"| {name} | {n} | {inside} | {before} | {done} | {after} | {retries} | {mean} / {mx} ms |")
        t = crash["total"].split("|")
        share = 100 * int(t[1]) / max(1, int(t[0]))
        L.append(f"| **all** | **{t[0]}** | **{t[1]}** ({share:.0f} %) | {t[2]} | {t[3]} | {t[4]} | | |\n")
        typ = ", ".join(f"{w.rsplit(' ', 1)[0]} {w.rsplit(' ', 1)[1]} ms" for w in crash.get("typical", []))
        L.append(f"Typical (median, unkilled) durations the kill delays were drawn against, uniformly in "
                 f"[0, 1.5 x]: {typ}.\n")
    else:
        log = open(os.path.join(work, "crash.log"), errors="replace").read()
        m = re.search(r"panicked at .*?\n(.*?)(\nstack backtrace|\nnote:|$)", log, re.S)
        msg = (m.group(1) if m else log[-3000:]).strip()
        L.append(f"**FAILED** (exit {crash_rc}):\n\n```\n{msg[:6000]}\n```\n")

    L.append(re.sub(r"(?m)^    ", "", """What one trial does (two fake hosts in network namespaces, one SQLite store, each `netmod
    node` with a 1 s resync and a 3 s stale-record grace; `crates/netmod/tests/crash.rs`):

    - **isolate / CNI ADD**: a fresh container namespace (and, for isolate, its `allocate`); the
      operation's process is SIGKILLed after a random delay. The kill landed *inside* when some of
      its effects (endpoint record, allocation, interface, set elements) are visible and the caller
      got no reply. The allocation the caller was told of must survive a killed isolate. A completed
      one must hold its address everywhere: allocation, endpoint record, host interface, `eth0` in the
      container. A failed one gets what the caller does: Mesos runs cleanup (retried until it succeeds)
      and release; a CNI runtime runs DEL until it succeeds. Afterwards nothing of it may be left.
    - **cleanup / CNI DEL** of a running container (Mesos: release before or after, at random): the
      kill landed inside when the state differs from before the call; the caller retries until
      success; then nothing may be left.
    - **node apply, following changes**: the node of one host is killed at a random moment while
      containers come and go on the other host (its netgroup sets and routes change); inside = its
      kernel at the kill is neither as before nor as it must end. Then it is restarted.
    - **node apply, first resync**: a node is killed; while it is down containers come and go on both
      hosts, and it gets leftovers to clean (10-30 interfaces of netmod's shape that no record names,
      and two times in three no netmod table and no routes to the other host); it is started and
      killed again at a random moment of its start; inside = its kernel at the kill is neither as
      before nor as it must end. Then it is started for good.

    After every trial: an oracle in the test reads every key of the SQLite store and checks blocks
    against handles (every address held once, by the handle that lists it), every endpoint record
    against its address and netgroup index keys and its handle, affinity keys against blocks, and
    the records against the test's own model of which containers run (no allocation and no record
    without a live container, every live container with exactly the address its caller was told).
    Then each host's kernel must come to equal what the records imply, within 20 s: the `nmv*`
    interfaces, the routes of protocol 110 (host routes, other hosts' blocks), and every set and
    element of the `inet netmod` table (also checked against the netgroup semantics written out in
    the test); and `netmod ipam check --hostname <host>` must exit 0 on both hosts.
    """))

if fuzz_rc == "skip":
    L.append(old_section(FUZZ))
else:
    L.append(f"## {FUZZ}\n")
    L.append(f"{measured} NETMOD_FUZZ_CASES={cases}.\n")
    rows = []
    path = os.path.join(work, "fuzz.txt")
    if os.path.exists(path):
        for line in open(path):
            parts = line.split()
            if len(parts) >= 2:
                rows.append((parts[0], int(parts[1]), parts[2] if len(parts) > 2 else ""))
    total = sum(r[1] for r in rows)
    if fuzz_rc == "0":
        L.append(f"**Passed**: {total:,} cases in all, no failure (proptest, stable Rust).\n")
    else:
        msgs = []
        for f in ("fuzz-unit.log", "fuzz-process.log"):
            log = open(os.path.join(work, f), errors="replace").read()
            msgs += re.findall(r"property .*? failed: .*?(?:\n\n|$)", log, re.S)
        L.append(f"**FAILED** after {total:,} cases:\n\n```\n" + "\n".join(msgs)[:6000] + "\n```\n")
    what = {
        "mesos_request_raw_bytes": "net-modules request: random bytes and real requests with bytes changed, cut or added",
        "mesos_request_structured": "net-modules request: valid envelopes, every field a plausible or random value of any type; accepted requests checked against their invariants",
        "mesos_request_oversized_and_blank": "net-modules request: empty, blank and over-size (1 MiB) input",
        "mesos_labels": "labels as `[{key, value}]` or an object: accepted exactly when the test's oracle accepts, with the same map",
        "ipv4_addrs_label": "the `ipv4_addrs` label: JSON, Python and bare lists round-trip; any other text is an error or addresses found in it",
        "netgroup_names": "netgroup names: accepted exactly by the rule; set names one-to-one and within the kernel's limit",
        "cni_environment": "CNI environment: `CNI_ARGS`, `CNI_CONTAINERID`, `CNI_IFNAME` (errors are code 4)",
        "cni_configuration": "CNI configuration with that environment: errors are codes 1, 6, 7; accepted netgroups equal the test's own merge of the four sources",
        "store_addresses": "store addresses: etcd://, sqlite://, other schemes, paths; every error is `BadAddress`",
        "store_addresses_round_trip": "etcd addresses built from parts (the prefix %-escaped) parse back to the parts",
        "store_open": "`open` / `open_existing` on odd SQLite paths and etcd addresses (in an empty network namespace): clean errors, `open_existing` creates nothing",
        "mesos_door_store_unchanged": "the net-modules door end to end in-process against SQLite: every rejected request leaves every key, value, revision and lease as it was; allocated addresses are held; blocks and handles agree",
        "cni_door_process": "the CNI plugin process (command, environment, configuration) in a namespace of its own: a CNI error object and exit 1, or exit 0; a failure leaves the store as it was",
        "mesos_door_process": "`netmod mesos` as a process: one JSON line, exit 0 or 1; a failure leaves the store as it was",
    }
    L.append("| property | cases | seconds | what it checks |")
    L.append("|---|---|---|---|")
    for name, n, secs in rows:
        L.append(f"| `{name}` | {n:,} | {secs} | {what.get(name, '')} |")
    L.append(f"| **all** | **{total:,}** | | |\n")
    L.append(re.sub(r"(?m)^    ", "", """Every property: no panic; every rejection is an error value with a message (for the doors:
    the wire format's error reply); generators make structured-but-wrong input (valid JSON skeletons
    with random fields, values and types; near-valid requests aimed at small pools, so that many fail
    in execution, after parsing: addresses in use or in quarantine, handles asked again for more,
    exhausted pools) as well as raw bytes. Nothing that is executed can reach a live namespace: pids
    past any pid_max, namespace paths that do not exist, and every in-process door and store case runs
    on a thread with a network namespace of its own.
    """))
if notes:
    L.append(notes.rstrip("\n") + "\n")
else:
    L.append("<!-- notes: kept across runs of scripts/robustness.sh -->\n")
open(out, "w").write("\n".join(L))
EOF
echo "== wrote $out"
exit $status
