//! `netmod bench routing`: container → container throughput over direct
//! routes, VXLAN and BGP-learned routes, each beside the same path with no
//! netmod table; and the time from a new host's first heartbeat until every
//! other host routes to its tasks, for 10 and 100 hosts.
//!
//! Everything runs in network namespaces this run creates (`nmbench-<pid>-*`,
//! the dataplane benchmark's fake hosts, with the fabric namespace as a
//! router between two subnets where a path needs one) and is removed at the
//! end; no packet and no route touches the machine's own network.

mod convergence;
mod throughput;
mod watch;

use crate::dataplane::fabric::{in_ns, other, Fabric, HostNs};
use crate::dataplane::{div, loadavg, p50, p99, verdict, which};
use crate::{ms, render, BenchArgs, BenchError, Row};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use throughput::Way;

pub fn run(args: &BenchArgs) -> Result<String, BenchError> {
    preflight()?;
    let exe = crate::netmod_exe().map_err(|e| other(format!("finding netmod itself: {e}")))?;
    let started = Instant::now();
    let load_before = loadavg();
    let prefix = format!("nmbench-{}", std::process::id());
    let mut paths = Vec::new();
    {
        let mut fabric = Fabric::new()?;
        fabric.second_subnet()?;
        for way in [Way::Direct, Way::Vxlan, Way::Bgp] {
            eprintln!("bench routing: throughput, {}", way.what());
            paths.push(throughput::measure(
                &mut fabric,
                &exe,
                way,
                args.routing_iperf_secs,
            )?);
        }
        // The fabric drops here: processes killed, namespaces deleted.
    }
    let mut convs = Vec::new();
    for &hosts in &args.routing_hosts {
        if !(3..=200).contains(&hosts) {
            return Err(other(format!(
                "--routing-hosts {hosts}: between 3 and 200 hosts"
            )));
        }
        convs.push(convergence::measure(&exe, hosts, args.routing_rounds)?);
        // Let the kernel finish tearing down the nodes' sockets.
        std::thread::sleep(Duration::from_secs(1));
    }
    let left = Fabric::leftovers(&prefix);
    if !left.is_empty() {
        return Err(other(format!(
            "namespaces left behind: {} (remove with `ip netns del`)",
            left.join(", ")
        )));
    }
    let load = format!("{load_before} at the start, {} at the end", loadavg());
    Ok(report(args, &paths, &convs, started.elapsed(), &load))
}

fn preflight() -> Result<(), BenchError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(other(
            "the routing benchmark creates network namespaces: run it as root",
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nft", "nftables"),
        ("iperf3", "iperf3"),
        ("bird", "bird2"),
        ("birdc", "bird2"),
    ] {
        if which(tool).is_none() {
            return Err(other(format!(
                "{tool} is missing: run scripts/setup.sh (or apt-get install {package})"
            )));
        }
    }
    Ok(())
}

/// How the benchmark runs `netmod node`.
pub struct NodeOpts {
    pub lease_ttl: u64,
    /// With BGP: the directory of each host's BIRD file and socket.
    pub bgp_dir: Option<PathBuf>,
}

/// Resync interval of every node: no periodic full resync during a run.
pub const RESYNC_SECS: u64 = 600;

pub fn node_cmd(exe: &Path, db: &str, h: &HostNs, opts: &NodeOpts) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--store", db, "node", "--hostname", &h.name])
        .args(["--host-ip", &h.ip.to_string()])
        .args(["--lease-ttl", &opts.lease_ttl.to_string()])
        .args(["--resync-interval", &RESYNC_SECS.to_string()]);
    if let Some(dir) = &opts.bgp_dir {
        cmd.arg("--bgp")
            .arg("--bird-config")
            .arg(dir.join(format!("bird-{}.conf", h.name)))
            .arg("--bird-socket")
            .arg(dir.join(format!("bird-{}.ctl", h.name)));
    }
    cmd
}

/// Waits until the node in `h` answers `/healthz` with 200 (first full sync done).
pub fn wait_healthy(h: &HostNs, limit: Duration) -> Result<(), BenchError> {
    let start = Instant::now();
    loop {
        let ok = in_ns(&h.path(), || Ok(healthz("127.0.0.1:9190")))?;
        if ok {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(other(format!(
                "the node on {} was not healthy after {} s",
                h.name,
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn healthz(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace().nth(1) == Some("200")
}

/// Waits until no process mentions `dir` on its command line (the nodes'
/// BIRDs, which die with their node, and the router's).
pub fn wait_no_process_under(dir: &Path, limit: Duration) -> Result<(), BenchError> {
    let needle = dir.to_string_lossy().into_owned();
    let start = Instant::now();
    loop {
        let mut found = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str().and_then(|p| p.parse::<u32>().ok()) else {
                    continue;
                };
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    found.push(pid);
                }
            }
        }
        if found.is_empty() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(other(format!(
                "processes of this run still running: {found:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

fn report(
    args: &BenchArgs,
    paths: &[throughput::Path_],
    convs: &[convergence::Convergence],
    took: Duration,
    load: &str,
) -> String {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|g| format!("{g:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    // 1. Throughput per path.
    let direct = paths
        .iter()
        .find(|p| p.way == Way::Direct)
        .map(|p| (mean(&p.with_table), mean(&p.without_table)));
    for p in paths {
        let (with, without) = (mean(&p.with_table), mean(&p.without_table));
        let pct = 100.0 * with / without;
        targets.push(format!(
            "{}: the table keeps {pct:.1} % of the path's throughput ({} against the policy benchmark's ≥ 95 %)",
            p.way.what(),
            verdict(pct >= 95.0)
        ));
        rows.push(Row {
            what: format!(
                "iperf3 TCP container → container, {} (mean of {} × {} s)",
                p.way.what(),
                p.with_table.len(),
                args.routing_iperf_secs
            ),
            value: format!("{with:.2} Gbit/s ({})", list(&p.with_table)),
            baseline: format!("no table: {without:.2} Gbit/s ({})", list(&p.without_table)),
            ratio: format!("{pct:.1} % of the path without the table"),
        });
    }
    if let Some((dw, dn)) = direct {
        for p in paths.iter().filter(|p| p.way != Way::Direct) {
            let (with, without) = (mean(&p.with_table), mean(&p.without_table));
            rows.push(Row {
                what: format!("{} vs direct routes, with the table", p.way.what()),
                value: format!("{with:.2} Gbit/s"),
                baseline: format!("direct: {dw:.2} Gbit/s"),
                ratio: format!(
                    "{:.1} % (no table: {:.1} % of direct's {dn:.2})",
                    100.0 * with / dw,
                    100.0 * without / dn
                ),
            });
        }
    }

    // 2. Convergence.
    for c in convs {
        let (r50, r99) = (p50(&c.route), p99(&c.route));
        let (e50, e99) = (p50(&c.endpoint), p99(&c.endpoint));
        rows.push(Row {
            what: format!(
                "new host's first heartbeat → all {} other hosts have the route to its block, p50 ({} new hosts)",
                c.hosts - 1,
                c.route.len()
            ),
            value: ms(r50),
            baseline: format!(
                "new endpoint on an existing host → its address in every host's sets: {}",
                ms(e50)
            ),
            ratio: format!("{:.2}x", div(r50, e50)),
        });
        rows.push(Row {
            what: format!("the same, p99 ({} hosts)", c.hosts),
            value: ms(r99),
            baseline: format!("new endpoint: {}", ms(e99)),
            ratio: format!("{:.2}x", div(r99, e99)),
        });
        rows.push(Row {
            what: format!(
                "diagnostic, {} hosts: heartbeat → the first host has the route, p50; node start → first heartbeat, p50",
                c.hosts
            ),
            value: ms(p50(&c.route_first)),
            baseline: format!("start → heartbeat: {}", ms(p50(&c.spawn_to_heartbeat))),
            ratio: "-".into(),
        });
        rows.push(Row {
            what: format!(
                "heartbeat → TCP connect from a container on {} other hosts to the new host's container succeeds, p50 / max ({} connects)",
                convergence::CHECKERS.min(c.hosts - 1),
                c.tcp.len()
            ),
            value: format!(
                "{} / {}",
                ms(p50(&c.tcp)),
                ms(c.tcp.iter().max().copied().unwrap_or_default())
            ),
            baseline: "-".into(),
            ratio: "-".into(),
        });
    }

    let route_lines = paths
        .iter()
        .map(|p| {
            format!(
                "{}: `{}` ({} rules in the client host's table)",
                match p.way {
                    Way::Direct => "direct",
                    Way::Vxlan => "VXLAN",
                    Way::Bgp => "BGP",
                },
                p.route,
                p.rules
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let seen = convs
        .iter()
        .map(|c| format!("{} hosts: {}", c.hosts, c.route_seen))
        .collect::<Vec<_>>()
        .join("; ");
    let sync = convs
        .iter()
        .map(|c| {
            format!(
                "{} nodes were all live {:.0} ms after the first was started",
                c.hosts - 1,
                c.started_in.as_secs_f64() * 1000.0
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let notes = format!(
        "How measured. Fake hosts are network namespaces on a bridge in a fabric namespace (the \
dataplane benchmark's, `nmbench-<pid>-*`, deleted at the end), each with a default route through \
it; for the two-subnet paths the fabric namespace is also a router between 10.251.0.0/24 (bridge \
`br0`) and 10.251.1.0/24 (`br1`), with forwarding on and no route to any pool. Containers are \
fresh network namespaces with a process in them. Every node is a real `netmod node` \
(`--resync-interval {resync}`) in its host's namespace, on an SQLite store (file on disk) shared \
by the hosts of one measurement.\n\n\
1. Throughput: for each path, two fake hosts with their nodes (`--lease-ttl 60`), one container \
on each, isolated by `netmod mesos isolate` in one netgroup (the pool of the path only: \
direct 10.124.0.0/16 `Never`, both hosts on br0; VXLAN 10.125.0.0/16 `Always`, one host on each \
subnet; BGP 10.126.0.0/16 `Never`, nodes with `--bgp` and their own BIRD file and socket, one host \
on each subnet, `netmod bgp peer add` of the router's two addresses in AS 64513, and BIRD in the \
router namespace with one eBGP session per host, `import all; export all`, and a kernel protocol \
exporting what it learns, as in crates/netmod/tests/bgp.rs's top-of-rack test). The path is used \
once it carries a 1 s iperf3 run. `iperf3 -c -t {secs} -O 1` (one TCP stream, first second \
omitted) from the client container to `iperf3 -s` in the other, twice with the nodes' tables and \
twice without, alternating (table first in round 1, no table first in round 2). \"No table\": the \
same path with netmod's nftables table deleted on both hosts and the nodes stopped (SIGSTOP, so \
that they do not put it back; `nft list table inet netmod` fails on both before the run); routes, \
vxlan device and BIRD stay as they are (BIRD is the node's child and keeps running). Before a \
run with the table the nodes are continued (SIGCONT), restore their tables themselves (they watch \
it) and the benchmark waits until both hold as many rules as before. The client host's route to \
the server container and its table: {route_lines}.\n\n\
2. Convergence, for N = {ns} hosts: N-1 fake hosts on one subnet, each running its node (`--lease-ttl \
10`), pool {pool} `Never` (direct routes); one container on each of them, isolated in netgroup \
`{group}` (a host holds a netgroup's set only while one of its own containers is in it); those on \
{chk} of them (the first, a middle and the last) are the checkers. Per round a fresh host (the N-th) is made, an address allocated on \
it (so it holds a block) and a container isolated there in the same netgroup, listening on TCP; \
then its node is started. The first heartbeat is the moment the benchmark first finds the new \
host's record (`hosts/<name>`, written by the node's first heartbeat after its first sync) in the \
store, which it reads every millisecond or so; every other host is watched through a netlink \
socket in its namespace subscribed to IPv4 route events, and counts when it reports the route \
`<block> via <new host>` added (event-driven, no polling of the hosts). Time: first heartbeat → \
the last of the N-1 hosts has the route. Then each checker container connects by TCP to the new \
container (retried every 20 ms), the time since the heartbeat noted. After the round the new \
host's node is killed and its host record deleted (as its lease running out would), so N stays \
N. Baseline, in the same rounds: a new endpoint record on an existing host (an address allocated \
in its block, recorded with `Registry::create_endpoint` as isolate does, no interface), from the \
start of the write until the last of the N-1 hosts reports an nftables set element with its \
address added (netlink nftables events in each namespace); then deleted again, untimed. One \
untimed round first, then {rounds}; pauses of 200-600 ms between writes. Found after the untimed \
round: {seen}. {sync}. With 100 hosts, 99 nodes follow SQLite's change feed (each polls the file every 10 ms) and heartbeat on 2 cores: the load average climbs into the tens, a node takes hundreds of milliseconds from start to its first heartbeat, and both the route and the endpoint times measure mostly how long the last of 99 busy nodes waits for a core (the etcd backend, whose watches need no polling, was not tried here).\n\n\
Targets: this benchmark records figures and sets none of its own; for reference, each path's table cost against the policy benchmark's target (a table with conntrack keeps ≥ 95 % of a path without any, which runs no conntrack at all):\n\n{targets}\n\n\
The whole run took {took:.0} s (load average {load}; the machine is shared, and iperf3 in \
particular moves with whatever else runs). Every interface, address, route, nftables table, BIRD \
and node it made lived in its own namespaces and was removed at the end (checked with `ip netns \
list` and the process table).\n",
        resync = RESYNC_SECS,
        secs = args.routing_iperf_secs,
        ns = args
            .routing_hosts
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(" and "),
        pool = convergence::POOL,
        chk = convergence::CHECKERS,
        group = convergence::GROUP,
        rounds = args.routing_rounds,
        targets = targets
            .iter()
            .map(|t| format!("- {t}"))
            .collect::<Vec<_>>()
            .join("\n"),
        took = took.as_secs_f64(),
    );
    render("Routing benchmark", &notes, &rows)
}
