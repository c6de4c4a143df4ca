//! 1. iperf3 container → container across two fake hosts running real
//!    `netmod node`, over each way hosts carry a pool: direct routes (one
//!    subnet), VXLAN and BGP-learned routes (two subnets behind a router),
//!    each with netmod's table and with the table deleted on both hosts.

use super::{node_cmd, wait_healthy, wait_no_process_under, NodeOpts};
use crate::dataplane::fabric::{
    containers, fabric_ip, in_ns, other, run_cmd, second_ip, Fabric, HostNs, Procs,
};
use crate::dataplane::throughput::{iperf_client, IPERF_PORT};
use crate::{bench_dir, time_process, BenchError};
use netmod_dataplane as dp;
use netmod_ipam::{AllocRequest, Ipam, PoolOptions};
use netmod_model::{AllocAttrs, VxlanMode};
use netmod_store::SqliteStore;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Direct,
    Vxlan,
    Bgp,
}

impl Way {
    pub fn what(self) -> &'static str {
        match self {
            Way::Direct => "direct routes (pool `--vxlan-mode Never`, hosts on one subnet)",
            Way::Vxlan => {
                "VXLAN (pool `--vxlan-mode Always`, hosts on two subnets behind a router)"
            }
            Way::Bgp => {
                "BGP-learned routes (`netmod node --bgp`, hosts on two subnets, BIRD on the router)"
            }
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Way::Direct => "d",
            Way::Vxlan => "v",
            Way::Bgp => "b",
        }
    }
    fn pool(self) -> &'static str {
        match self {
            Way::Direct => "10.124.0.0/16",
            Way::Vxlan => "10.125.0.0/16",
            Way::Bgp => "10.126.0.0/16",
        }
    }
}

pub struct Path_ {
    pub way: Way,
    /// Gbit/s with the nodes' tables, in run order.
    pub with_table: Vec<f64>,
    /// Gbit/s with netmod's table deleted on both hosts (nodes stopped).
    pub without_table: Vec<f64>,
    /// The client host's route to the server's block (`ip route get`).
    pub route: String,
    /// Rules in the client host's table (`nft list table inet netmod`).
    pub rules: usize,
}

/// Private AS of the router (the hosts use the node's default, 64512).
const ROUTER_AS: &str = "64513";

pub fn measure(
    fabric: &mut Fabric,
    exe: &Path,
    way: Way,
    seconds: u32,
) -> Result<Path_, BenchError> {
    let tag = way.tag();
    let a = fabric.host_on(&format!("{tag}1"), false)?;
    let b = fabric.host_on(&format!("{tag}2"), way != Way::Direct)?;
    let dir = bench_dir()?;
    let db = dir.path().join(format!("routing-{tag}.db"));
    let db_arg = db.to_str().ok_or_else(|| other("non UTF-8 temp path"))?;
    let store = SqliteStore::open(&db)?;
    let ipam = Ipam::new(&store);
    ipam.add_pool_with(
        way.pool().parse().expect("cidr"),
        None,
        0,
        PoolOptions {
            vxlan_mode: if way == Way::Vxlan {
                VxlanMode::Always
            } else {
                VxlanMode::Never
            },
            ..Default::default()
        },
        &[],
    )?;

    let mut router = Procs::default();
    if way == Way::Bgp {
        // The router (the fabric namespace) runs BIRD in another AS, one
        // eBGP session per host on the host's subnet, and installs what it
        // learns (as crates/netmod/tests/bgp.rs's top-of-rack test).
        let conf = dir.path().join("router.conf");
        let mut sessions = String::new();
        for (h, local) in [(&a, fabric_ip(254)), (&b, second_ip(254))] {
            sessions.push_str(&format!(
                "protocol bgp {name} {{ local {local} as {ROUTER_AS}; neighbor {ip} as 64512; \
                 hold time 3; keepalive time 1; connect retry time 1; graceful restart off; \
                 ipv4 {{ import all; export all; }}; }}\n",
                name = h.name,
                ip = h.ip
            ));
        }
        std::fs::write(
            &conf,
            format!(
                "log stderr all;\nrouter id {};\nprotocol device {{}}\n\
                 protocol kernel {{ ipv4 {{ import none; export all; }}; }}\n{sessions}",
                fabric_ip(254)
            ),
        )
        .map_err(|e| other(format!("writing the router's BIRD file: {e}")))?;
        let log = std::fs::File::create(dir.path().join("router.log")).map_err(other)?;
        let fab = fabric.fab_ns().to_string();
        let ns = Path::new("/run/netns").join(&fab);
        let child = in_ns(&ns, || {
            Command::new("bird")
                .arg("-f")
                .arg("-c")
                .arg(&conf)
                .arg("-s")
                .arg(dir.path().join("router.ctl"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| other(format!("starting BIRD on the router: {e}")))
        })?;
        router.0.push(child);
        for r in [fabric_ip(254), second_ip(254)] {
            run_cmd(
                exe.to_str().unwrap_or("netmod"),
                &[
                    "--store",
                    db_arg,
                    "bgp",
                    "peer",
                    "add",
                    &r.to_string(),
                    "--as",
                    ROUTER_AS,
                    "--description",
                    "nmbench-router",
                ],
            )?;
        }
    }

    // The nodes: a long lease, so that they may stay stopped for a
    // measurement without their hosts expiring.
    let log_path = dir.path().join("nodes.log");
    let log = std::fs::File::create(&log_path).map_err(other)?;
    let mut nodes = Procs::default();
    for h in [&a, &b] {
        let opts = NodeOpts {
            lease_ttl: 60,
            bgp_dir: (way == Way::Bgp).then(|| dir.path().to_path_buf()),
        };
        let log = log.try_clone().map_err(other)?;
        let child = in_ns(&h.path(), || {
            node_cmd(exe, db_arg, h, &opts)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| other(format!("starting netmod node: {e}")))
        })?;
        nodes.0.push(child);
    }
    for h in [&a, &b] {
        wait_healthy(h, Duration::from_secs(20))
            .map_err(|e| other(format!("{e} (node log: {})", tail(&log_path))))?;
    }

    // One container on each host, in one netgroup.
    let cts = containers(2)?;
    let mut addrs = Vec::new();
    for (i, h) in [&a, &b].into_iter().enumerate() {
        let uid = format!("{}-route-{tag}{i}", fabric.prefix);
        let got = ipam.allocate(&AllocRequest {
            handle: uid.clone(),
            attrs: AllocAttrs {
                host: h.name.clone(),
                netgroups: vec!["nmbr".into()],
                ..Default::default()
            },
            num_ipv4: 1,
            ..Default::default()
        })?;
        let addr = got.ipv4[0];
        let req = json!({"command":"isolate","args":{"hostname":h.name,"container_id":uid,
            "pid":cts.pid(i),"ipv4_addrs":[addr],"netgroups":["nmbr"]}})
        .to_string();
        in_ns(&h.path(), || {
            let mut cmd = Command::new(exe);
            cmd.args(["--store", db_arg, "mesos"]);
            time_process(cmd, req.as_bytes())
        })
        .map_err(|e| other(format!("isolate for the routing throughput test: {e}")))?;
        addrs.push(addr);
    }
    let server = in_ns(&cts.netns(1), || {
        Command::new("iperf3")
            .args([
                "-s",
                "-B",
                &addrs[1].to_string(),
                "-p",
                &IPERF_PORT.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| other(format!("starting iperf3 -s: {e}")))
    })?;
    let _server = Procs(vec![server]);
    let client_ns = cts.netns(0);
    let iperf = |secs: u32| iperf_client(&client_ns, addrs[1], IPERF_PORT, secs);

    // The nodes route (or BIRD learns), the path opens.
    let started = Instant::now();
    loop {
        if iperf(1).is_ok() {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(other(format!(
                "{}: container {} cannot reach {} after 60 s: {} (node log: {})",
                way.what(),
                addrs[0],
                addrs[1],
                iperf(1).err().map_or(String::new(), |e| e.to_string()),
                tail(&log_path)
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The client host's route to the server's block, as the kernel lists it
    // (with its protocol: 110 is netmod's, `bird` BIRD's).
    let block = ipam
        .host_blocks(&b.name)?
        .into_iter()
        .find(|n| n.contains(&std::net::IpAddr::V4(addrs[1])))
        .ok_or_else(|| other("the server container's block is not its host's"))?;
    let route = run_cmd("ip", &["-n", &a.ns, "route", "show", &block.to_string()])?
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let listed = table_text(&a).ok_or_else(|| other("no netmod table on the client host"))?;
    let rules = count_rules(&listed);

    let mut out = Path_ {
        way,
        with_table: Vec::new(),
        without_table: Vec::new(),
        route,
        rules,
    };
    let pids: Vec<i32> = (0..2).map(|i| nodes.pid(i) as i32).collect();
    for round in 0..2 {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for with in order {
            if with {
                // The nodes go on, and put their tables back themselves
                // (they watch the table); wait until both have.
                for p in &pids {
                    signal(*p, libc::SIGCONT);
                }
                wait_until(Duration::from_secs(20), || {
                    [&a, &b]
                        .iter()
                        .all(|h| table_text(h).is_some_and(|t| count_rules(&t) == rules))
                })
                .map_err(|_| {
                    other(format!(
                        "{}: the nodes did not restore their tables within 20 s",
                        way.what()
                    ))
                })?;
            } else {
                // Stopped first, so that they do not restore the table.
                for p in &pids {
                    signal(*p, libc::SIGSTOP);
                }
                for h in [&a, &b] {
                    in_ns(&h.path(), || {
                        dp::nft_delete_table()
                            .map(|_| ())
                            .map_err(|e| other(format!("deleting the table: {e}")))
                    })?;
                    if table_text(h).is_some() {
                        return Err(other(format!(
                            "{}: the netmod table is still there",
                            h.name
                        )));
                    }
                }
            }
            // Both hosts settle after the switch.
            std::thread::sleep(Duration::from_millis(300));
            eprintln!(
                "bench routing: iperf3 {seconds} s, {}, {} (round {})",
                way.tag(),
                if with { "netmod table" } else { "no table" },
                round + 1
            );
            let gbits = iperf(seconds)?;
            if with {
                out.with_table.push(gbits);
            } else {
                out.without_table.push(gbits);
            }
        }
    }
    for p in &pids {
        signal(*p, libc::SIGCONT);
    }
    drop(cts);
    // Nodes die (their BIRDs follow them: PR_SET_PDEATHSIG), then the router's.
    drop(nodes);
    drop(router);
    wait_no_process_under(dir.path(), Duration::from_secs(5))?;
    Ok(out)
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a child process of ours.
    unsafe { libc::kill(pid, sig) };
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), ()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(())
}

/// `nft list table inet netmod` in the host's namespace (None: no table).
fn table_text(h: &HostNs) -> Option<String> {
    run_cmd(
        "ip",
        &[
            "netns", "exec", &h.ns, "nft", "list", "table", "inet", "netmod",
        ],
    )
    .ok()
}

/// Rules in an `nft list` text: lines ending in a verdict or a statement
/// inside a chain (every line that is no declaration, brace or element list).
fn count_rules(listing: &str) -> usize {
    let mut in_chain = false;
    let mut n = 0;
    for l in listing.lines().map(str::trim) {
        if l.starts_with("chain ") {
            in_chain = true;
        } else if l == "}" {
            in_chain = false;
        } else if in_chain && !l.is_empty() && !l.starts_with("type ") && !l.starts_with("policy ")
        {
            n += 1;
        }
    }
    n
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
