//! 4. Memory of `netmod node` once synced, with 5,000 endpoints in the store
//!    against none.

use super::fabric::{fabric_ip, group, in_ns, other, record, synthetic_endpoint, Fabric, Procs};
use crate::bench_dir;
use crate::BenchError;
use netmod_core::registry::Registry;
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::{AllocAttrs, Host};
use netmod_store::{SqliteStore, Store};
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const ENDPOINTS: usize = 5_000;
const HOSTS: usize = 10;

/// What the kernel says about the node's memory, and what the node says about its sync.
pub struct NodeMemory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub set_elements: u64,
    pub routes: u64,
    /// From spawn to `/healthz` answering 200 (first full sync done).
    pub ready_after: Duration,
}

pub struct Memory {
    pub empty: NodeMemory,
    pub full: NodeMemory,
}

pub fn measure(fabric: &mut Fabric, exe: &Path) -> Result<Memory, BenchError> {
    let host = fabric.host("mem")?;
    let dir = bench_dir()?;
    let mut results = Vec::new();
    for (run, endpoints) in [0, ENDPOINTS].into_iter().enumerate() {
        let db = dir.path().join(format!("memory-{endpoints}.db"));
        let store = SqliteStore::open(&db)?;
        let ipam = Ipam::new(&store);
        ipam.add_pool("10.126.0.0/16".parse().expect("cidr"), None, 60)?;
        if endpoints > 0 {
            populate(&store, &ipam, &host.name, endpoints)?;
        }
        let metrics = format!("127.0.0.1:{}", 9190 + run);
        eprintln!("bench: netmod node with {endpoints} endpoints");
        let log_path = dir.path().join(format!("node-{endpoints}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| other(format!("creating {}: {e}", log_path.display())))?;
        let node = in_ns(&host.path(), || {
            Command::new(exe)
                .arg("--store")
                .arg(&db)
                .args(["node", "--hostname", &host.name, "--host-ip"])
                .arg(host.ip.to_string())
                .args(["--metrics-addr", &metrics])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| other(format!("starting netmod node: {e}")))
        })?;
        let node = Procs(vec![node]);
        let pid = node.pid(0);
        let spawned = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let healthy = in_ns(&host.path(), || Ok(http_get(&metrics, "/healthz")))?;
            if healthy.is_some_and(|(code, _)| code == 200) {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(other(format!(
                    "netmod node with {endpoints} endpoints not healthy after 60 s; it said: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let ready_after = spawned.elapsed();
        // Settled: read the kernel's view of its memory after a quiet second.
        std::thread::sleep(Duration::from_secs(1));
        let (rss_kib, hwm_kib) = vm(pid)?;
        let body = in_ns(&host.path(), || Ok(http_get(&metrics, "/metrics")))?
            .map(|(_, b)| b)
            .unwrap_or_default();
        let gauge = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("netmod_{name} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        results.push(NodeMemory {
            rss_kib,
            hwm_kib,
            set_elements: gauge("nft_set_elements") as u64,
            routes: gauge("routes") as u64,
            ready_after,
        });
        drop(node);
        drop(store);
    }
    let full = results.pop().expect("two runs");
    let empty = results.pop().expect("two runs");
    Ok(Memory { empty, full })
}

/// `endpoints` endpoints over `HOSTS` hosts (this one among them) in 50
/// netgroups, with their allocations (so other hosts have blocks to route
/// to) and live host records for the other hosts.
fn populate(
    store: &SqliteStore,
    ipam: &Ipam,
    this: &str,
    endpoints: usize,
) -> Result<(), BenchError> {
    let lease = store.lease_grant(Duration::from_secs(600))?;
    let registry = Registry::new(store);
    let mut names = vec![this.to_string()];
    for k in 1..HOSTS {
        let name = format!("o{k}");
        registry.register_host(
            &Host {
                name: name.clone(),
                ip: IpAddr::V4(fabric_ip(100 + k as u8)),
                ipv6: None,
                applied_revision: None,
                subnet: None,
                vtep: None,
            },
            lease,
        )?;
        names.push(name);
    }
    for i in 0..endpoints {
        let host = &names[i % HOSTS];
        let id = format!("synth-{i}");
        let g = group(i / HOSTS);
        let got = ipam.allocate(&AllocRequest {
            handle: id.clone(),
            attrs: AllocAttrs {
                host: host.clone(),
                netgroups: vec![g.clone()],
                ..Default::default()
            },
            num_ipv4: 1,
            ..Default::default()
        })?;
        record(&registry, &synthetic_endpoint(host, &id, got.ipv4[0], &g))?;
    }
    Ok(())
}

/// VmRSS and VmHWM in KiB.
fn vm(pid: u32) -> Result<(u64, u64), BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| other(format!("reading /proc/{pid}/status: {e}")))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| other(format!("no {name} in /proc/{pid}/status (did it exit?)")))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A plain HTTP/1.0 GET on loopback (run inside the host's namespace).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_string()))
}
