//! 2. From a new host's first heartbeat until every other host routes its
//!    tasks: N-1 real `netmod node` processes in fake hosts on one subnet
//!    (direct routes), then a new host's node started with a container
//!    already isolated there. Baseline: a new endpoint on an existing host,
//!    from its record until every host has its address in its sets.

use super::watch::{Target, Watch};
use super::{node_cmd, tail, NodeOpts};
use crate::dataplane::fabric::{
    containers, in_ns, other, synthetic_endpoint, Fabric, HostNs, Procs,
};
use crate::{bench_dir, time_process, BenchError};
use netmod_core::registry::{host_key, Registry};
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::AllocAttrs;
use netmod_store::{Op, SqliteStore, Store};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const POOL: &str = "10.127.0.0/16";
pub const GROUP: &str = "nmbc";
/// The TCP port the new host's container listens on.
const PORT: u16 = 7070;
/// Hosts (first, middle, last) whose container checks the new one by TCP.
pub const CHECKERS: usize = 3;

pub struct Convergence {
    pub hosts: usize,
    /// First heartbeat of the new host → the last of the N-1 others has the route.
    pub route: Vec<Duration>,
    /// The same, to the first of the others (the fastest).
    pub route_first: Vec<Duration>,
    /// New endpoint record on an existing host → the last of the N-1 hosts
    /// has its address in the netmod table's sets (baseline).
    pub endpoint: Vec<Duration>,
    /// Node started → its first heartbeat (the host record appears).
    pub spawn_to_heartbeat: Vec<Duration>,
    /// First heartbeat → a TCP connection from a checker container to the
    /// new host's container succeeded, per checker and round.
    pub tcp: Vec<Duration>,
    /// Start of the N-1 nodes → all their host records are there.
    pub started_in: Duration,
    /// `ip route` line found on a host after the untimed round.
    pub route_seen: String,
}

pub fn measure(exe: &Path, hosts: usize, rounds: usize) -> Result<Convergence, BenchError> {
    let mut fabric = Fabric::new()?;
    let existing = hosts - 1;
    let dir = bench_dir()?;
    let db = dir.path().join(format!("convergence-{hosts}.db"));
    let db_arg = db.to_str().ok_or_else(|| other("non UTF-8 temp path"))?;
    let store = SqliteStore::open(&db)?;
    let ipam = Ipam::new(&store);
    let registry = Registry::new(&store);
    ipam.add_pool(POOL.parse().expect("cidr"), None, 0)?;

    eprintln!("bench routing: starting {existing} netmod node processes");
    let mut fake = Vec::new();
    for i in 0..existing {
        fake.push(fabric.host(&format!("k{hosts}-{i}"))?);
    }
    // Checker containers on the first, a middle and the last host.
    let checkers: Vec<usize> = {
        let mut v = vec![0, existing / 2, existing - 1];
        v.dedup();
        v.truncate(CHECKERS);
        v
    };
    // A container in the netgroup on every host: a host holds a netgroup's
    // set only while one of its own containers is a member.
    let host_cts = containers(existing)?;
    for (i, h) in fake.iter().enumerate() {
        isolate(exe, db_arg, &ipam, h, "ct", host_cts.pid(i))?;
    }
    let log_path = dir.path().join("nodes.log");
    let log = std::fs::File::create(&log_path).map_err(other)?;
    let opts = NodeOpts {
        lease_ttl: 10,
        bgp_dir: None,
    };
    let mut nodes = Procs::default();
    let started = Instant::now();
    for h in &fake {
        nodes.0.push(spawn_node(exe, db_arg, h, &opts, &log)?);
    }
    let names: Vec<String> = fake.iter().map(|h| h.name.clone()).collect();
    loop {
        let live = registry.hosts()?;
        if names.iter().all(|n| live.contains_key(n)) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            return Err(other(format!(
                "not every node wrote its host record within 120 s (node log: {})",
                tail(&log_path)
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let started_in = started.elapsed();
    eprintln!(
        "bench routing: {existing} nodes live in {:.0} ms",
        started_in.as_secs_f64() * 1000.0
    );
    let paths: Vec<PathBuf> = fake.iter().map(HostNs::path).collect();
    let mut routes = Watch::routes(&paths)?;
    let mut sets = Watch::nftables(&paths)?;
    // Let the first syncs' last events pass.
    std::thread::sleep(Duration::from_secs(1));

    let mut out = Convergence {
        hosts,
        route: Vec::new(),
        route_first: Vec::new(),
        endpoint: Vec::new(),
        spawn_to_heartbeat: Vec::new(),
        tcp: Vec::new(),
        started_in,
        route_seen: String::new(),
    };
    // One untimed round first (warm-up), then `rounds`.
    for round in 0..rounds + 1 {
        // A new host, with a container already isolated on it.
        let h = fabric.host(&format!("k{hosts}-n{round}"))?;
        let ct = containers(1)?;
        let addr = isolate(exe, db_arg, &ipam, &h, "new", ct.pid(0))?;
        let block = ipam
            .host_blocks(&h.name)?
            .into_iter()
            .find(|b| b.contains(&IpAddr::V4(addr)))
            .ok_or_else(|| other("the new container's block is not its host's"))?;
        let (net, len) = block
            .to_string()
            .split_once('/')
            .and_then(|(n, l)| Some((n.parse::<Ipv4Addr>().ok()?, l.parse::<u8>().ok()?)))
            .ok_or_else(|| other(format!("block {block} is no IPv4 network")))?;
        let listener = in_ns(&ct.netns(0), || {
            TcpListener::bind((addr, PORT)).map_err(|e| other(format!("listening: {e}")))
        })?;
        let target = Target::Route {
            dst: net,
            len,
            via: h.ip,
        };
        routes.drain()?;
        let mut hits = vec![None; existing];
        let spawned = Instant::now();
        let node = Procs(vec![spawn_node(exe, db_arg, &h, &opts, &log)?]);
        let key = host_key(&h.name);
        let mut heartbeat = None;
        let deadline = spawned + Duration::from_secs(60);
        while heartbeat.is_none() || hits.iter().any(Option::is_none) {
            routes.poll(1, target, &mut hits)?;
            if heartbeat.is_none() && store.get(&key)?.is_some() {
                heartbeat = Some(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(other(format!(
                    "{} of {existing} hosts had no route to {block} via {} 60 s after its node started (heartbeat seen: {}; node log: {})",
                    hits.iter().filter(|h| h.is_none()).count(),
                    h.ip,
                    heartbeat.is_some(),
                    tail(&log_path)
                )));
            }
        }
        let hb = heartbeat.expect("loop ends with it");
        let since = |t: Instant| t.saturating_duration_since(hb);
        let last = hits.iter().flatten().max().copied().expect("all hit");
        let first = hits.iter().flatten().min().copied().expect("all hit");
        // Reach by TCP from each checker container.
        let mut tcp = Vec::new();
        for k in 0..checkers.len() {
            let took = connect_until(&host_cts.netns(checkers[k]), addr, Duration::from_secs(10))
                .map_err(|e| {
                other(format!(
                    "checker on {}: {e} (node log: {})",
                    fake[checkers[k]].name,
                    tail(&log_path)
                ))
            })?;
            tcp.push(since(took));
        }
        if round == 0 {
            let i = checkers[checkers.len() - 1];
            out.route_seen = format!(
                "{}: `{}`",
                fake[i].name,
                crate::dataplane::fabric::run_cmd(
                    "ip",
                    &["-n", &fake[i].ns, "route", "show", &block.to_string()]
                )?
                .trim()
            );
        } else {
            out.route.push(since(last));
            out.route_first.push(since(first));
            out.spawn_to_heartbeat.push(hb - spawned);
            out.tcp.extend(tcp);
        }
        eprintln!(
            "bench routing: {hosts} hosts, round {round}: heartbeat {:.0} ms after start, all routes {:.1} ms after it",
            (hb - spawned).as_secs_f64() * 1000.0,
            since(last).as_secs_f64() * 1000.0
        );
        // The new host goes away: node killed, its record removed (as its
        // lease running out would), so that N stays N.
        drop(node);
        drop(listener);
        store.txn(&[], &[Op::delete(key)])?;
        drop(ct);

        // Baseline: a new endpoint on an existing host (a checker host: it
        // holds a block), from its record until every host has its address.
        let owner = &fake[checkers[round % checkers.len()]];
        let uid = format!("{}-ep-{hosts}-{round}", fabric.prefix);
        let got = ipam.allocate(&AllocRequest {
            handle: uid.clone(),
            attrs: AllocAttrs {
                host: owner.name.clone(),
                netgroups: vec![GROUP.into()],
                ..Default::default()
            },
            num_ipv4: 1,
            ..Default::default()
        })?;
        let ep_addr = got.ipv4[0];
        let ep = synthetic_endpoint(&owner.name, &uid, ep_addr, GROUP);
        settle(round);
        sets.drain()?;
        let mut hits = vec![None; existing];
        let start = Instant::now();
        registry
            .create_endpoint(&ep)
            .map_err(|e| other(format!("recording the endpoint: {e}")))?;
        while hits.iter().any(Option::is_none) {
            sets.poll(5, Target::SetElem(ep_addr), &mut hits)?;
            if start.elapsed() > Duration::from_secs(60) {
                return Err(other(format!(
                    "{} of {existing} hosts had not added {ep_addr} to their sets after 60 s",
                    hits.iter().filter(|h| h.is_none()).count()
                )));
            }
        }
        let last = hits.iter().flatten().max().copied().expect("all hit");
        if round > 0 {
            out.endpoint.push(last - start);
        }
        let ops = registry.delete_endpoint_ops(&ep)?;
        store.txn(&[], &ops)?;
        ipam.release_handle(&uid)?;
        settle(round + 1);
    }
    drop(nodes);
    drop(host_cts);
    Ok(out)
}

fn spawn_node(
    exe: &Path,
    db: &str,
    h: &HostNs,
    opts: &NodeOpts,
    log: &std::fs::File,
) -> Result<std::process::Child, BenchError> {
    let log = log.try_clone().map_err(other)?;
    in_ns(&h.path(), || {
        node_cmd(exe, db, h, opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| other(format!("starting netmod node: {e}")))
    })
}

/// Allocates an address on `h` in the netgroup and isolates the container
/// of `pid` there with `netmod mesos isolate` (in the host's namespace).
fn isolate(
    exe: &Path,
    db: &str,
    ipam: &Ipam,
    h: &HostNs,
    what: &str,
    pid: u32,
) -> Result<Ipv4Addr, BenchError> {
    let uid = format!("nmbench-{}-{}-{what}", std::process::id(), h.name);
    let got = ipam.allocate(&AllocRequest {
        handle: uid.clone(),
        attrs: AllocAttrs {
            host: h.name.clone(),
            netgroups: vec![GROUP.into()],
            ..Default::default()
        },
        num_ipv4: 1,
        ..Default::default()
    })?;
    let addr = got.ipv4[0];
    let req = json!({"command":"isolate","args":{"hostname":h.name,"container_id":uid,
        "pid":pid,"ipv4_addrs":[addr],"netgroups":[GROUP]}})
    .to_string();
    in_ns(&h.path(), || {
        let mut cmd = Command::new(exe);
        cmd.args(["--store", db, "mesos"]);
        time_process(cmd, req.as_bytes())
    })
    .map_err(|e| other(format!("isolate on {}: {e}", h.name)))?;
    Ok(addr)
}

/// Connects from the container's namespace until it works; when it did.
fn connect_until(netns: &Path, addr: Ipv4Addr, limit: Duration) -> Result<Instant, BenchError> {
    let start = Instant::now();
    let to = SocketAddr::from((addr, PORT));
    loop {
        let ok = in_ns(netns, || {
            Ok(TcpStream::connect_timeout(&to, Duration::from_millis(200)).is_ok())
        })?;
        if ok {
            return Ok(Instant::now());
        }
        if start.elapsed() > limit {
            return Err(other(format!(
                "no TCP connection to {to} within {} s",
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A pause that does not line up with the heartbeat period.
fn settle(n: usize) {
    std::thread::sleep(Duration::from_millis(200 + (n as u64 * 137) % 400));
}
