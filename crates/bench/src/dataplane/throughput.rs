//! 3. TCP throughput container → container across two fake hosts, with the
//!    netmod table loaded (and 1,000 other endpoints in 50 netgroups in its
//!    sets) against the same path with no table.

use super::fabric::{
    containers, group, in_ns, load_table, other, record, synthetic_addr, synthetic_endpoint,
    Fabric, HostNs, Procs,
};
use crate::BenchError;
use crate::{bench_dir, time_process};
use netmod_core::registry::Registry;
use netmod_dataplane as dp;
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::nft::{
    BaseHook, ChainDef, HookKind, Match, Rule, Ruleset, Verdict, CHAIN_FORWARD,
};
use netmod_model::{AllocAttrs, Endpoint};
use netmod_store::SqliteStore;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const OTHER_ENDPOINTS: usize = 1_000;
/// The measured pair's netgroup: the last one, so a new connection walks
/// every netgroup's rule before it is accepted.
const PAIR_GROUP: usize = 49;

/// iperf3's own default port.
pub(crate) const IPERF_PORT: u16 = 5201;

pub struct Throughput {
    pub seconds: u32,
    /// Gbit/s, in run order.
    pub with_table: Vec<f64>,
    pub without_table: Vec<f64>,
    /// Diagnostic: a table holding only `ct state established,related accept`.
    pub conntrack_only: Vec<f64>,
}

#[derive(Clone, Copy)]
enum Mode {
    Table,
    NoTable,
    ConntrackOnly,
}

impl Mode {
    fn what(self) -> &'static str {
        match self {
            Mode::Table => "netmod table",
            Mode::NoTable => "no table",
            Mode::ConntrackOnly => "conntrack-only table",
        }
    }
}

pub(crate) fn conntrack_only() -> Ruleset {
    Ruleset {
        chains: vec![ChainDef {
            name: CHAIN_FORWARD.into(),
            hook: Some(BaseHook {
                kind: HookKind::Forward,
                priority: 0,
                accept_by_default: true,
            }),
            rules: vec![Rule {
                matches: vec![Match::CtEstablishedOrRelated],
                verdict: Verdict::Accept,
                comment: "bench: conntrack only".into(),
            }],
        }],
        sets: Default::default(),
    }
}

pub fn measure(fabric: &mut Fabric, exe: &Path, seconds: u32) -> Result<Throughput, BenchError> {
    let h1 = fabric.host("t1")?;
    let h2 = fabric.host("t2")?;
    let dir = bench_dir()?;
    let db = dir.path().join("throughput.db");
    let db_arg = db.to_str().ok_or_else(|| other("non UTF-8 temp path"))?;
    let store = SqliteStore::open(&db)?;
    let ipam = Ipam::new(&store);
    ipam.add_pool("10.124.0.0/16".parse().expect("cidr"), None, 0)?;
    let registry = Registry::new(&store);
    // Other endpoints: ten hosts (the two real ones among them), each with
    // members of all 50 netgroups, so every netgroup's set is on both hosts.
    let hosts = ["t1", "t2", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8"];
    for i in 0..OTHER_ENDPOINTS {
        let ep = synthetic_endpoint(
            hosts[i % 10],
            &format!("synth-{i}"),
            synthetic_addr(i),
            &group(i / 10),
        );
        record(&registry, &ep)?;
    }

    // The tables first, as `netmod node` keeps them; then the pair joins.
    let load = |h: &HostNs, endpoints: &[Endpoint]| {
        let rs = netmod_policy::ruleset(&h.name, endpoints);
        in_ns(&h.path(), || load_table(&rs))
    };
    let unload = |h: &HostNs| {
        in_ns(&h.path(), || {
            dp::nft_delete_table()
                .map(|_| ())
                .map_err(|e| other(format!("deleting the table: {e}")))
        })
    };
    let before = registry.endpoints()?;
    load(&h1, &before)?;
    load(&h2, &before)?;
    let cts = containers(2)?;
    let mut addrs = Vec::new();
    for (i, h) in [&h1, &h2].into_iter().enumerate() {
        let uid = format!("{}-tput-{i}", fabric.prefix);
        let got = ipam.allocate(&AllocRequest {
            handle: uid.clone(),
            attrs: AllocAttrs {
                host: h.name.clone(),
                netgroups: vec![group(PAIR_GROUP)],
                ..Default::default()
            },
            num_ipv4: 1,
            ..Default::default()
        })?;
        let addr = got.ipv4[0];
        let req = json!({"command":"isolate","args":{"hostname":h.name,"container_id":uid,
            "pid":cts.pid(i),"ipv4_addrs":[addr],"netgroups":[group(PAIR_GROUP)]}})
        .to_string();
        in_ns(&h.path(), || {
            let mut cmd = Command::new(exe);
            cmd.args(["--store", db_arg, "mesos"]);
            time_process(cmd, req.as_bytes())
        })
        .map_err(|e| other(format!("isolate for the throughput test: {e}")))?;
        addrs.push(addr);
    }
    // Now with each other's container in the netgroup's set, as the node's
    // change feed would add it, and routes to the other host's blocks
    // (before the first packet).
    let endpoints = registry.endpoints()?;
    for (here, there) in [(&h1, &h2), (&h2, &h1)] {
        let blocks = ipam.host_blocks(&there.name)?;
        let via = IpAddr::V4(there.ip);
        in_ns(&here.path(), || {
            for b in &blocks {
                dp::add_route(*b, via).map_err(|e| other(format!("route {b}: {e}")))?;
            }
            Ok(())
        })?;
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

    load(&h1, &endpoints)?;
    load(&h2, &endpoints)?;
    // Warm-up, and proof that the path works with the table in place.
    let mut ready = false;
    for _ in 0..50 {
        if iperf(1).is_ok() {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !ready {
        return Err(other(format!(
            "container {} cannot reach {} across the fake hosts: {}",
            addrs[0],
            addrs[1],
            iperf(1).err().map_or(String::new(), |e| e.to_string())
        )));
    }
    let mut out = Throughput {
        seconds,
        with_table: Vec::new(),
        without_table: Vec::new(),
        conntrack_only: Vec::new(),
    };
    // A diagnostic third path: a table with nothing but a forward chain
    // accepting established connections, i.e. the cost of conntrack alone.
    let ct_only = conntrack_only();
    for round in 0..2 {
        for mode in [Mode::Table, Mode::NoTable, Mode::ConntrackOnly] {
            match mode {
                Mode::Table => {
                    load(&h1, &endpoints)?;
                    load(&h2, &endpoints)?;
                }
                Mode::NoTable => {
                    unload(&h1)?;
                    unload(&h2)?;
                }
                Mode::ConntrackOnly => {
                    for h in [&h1, &h2] {
                        in_ns(&h.path(), || {
                            dp::nft_replace_all(&ct_only)
                                .map_err(|e| other(format!("loading the conntrack table: {e}")))
                        })?;
                    }
                }
            }
            eprintln!(
                "bench: iperf3 {seconds} s, {} (round {})",
                mode.what(),
                round + 1
            );
            let gbits = iperf(seconds)?;
            match mode {
                Mode::Table => out.with_table.push(gbits),
                Mode::NoTable => out.without_table.push(gbits),
                Mode::ConntrackOnly => out.conntrack_only.push(gbits),
            }
        }
    }
    unload(&h1)?;
    unload(&h2)?;
    drop(cts);
    Ok(out)
}

/// One iperf3 run from the client container; Gbit/s received.
pub(crate) fn iperf_client(
    netns: &Path,
    server: Ipv4Addr,
    port: u16,
    secs: u32,
) -> Result<f64, BenchError> {
    let out = in_ns(netns, || {
        Command::new("iperf3")
            .args([
                "-c",
                &server.to_string(),
                "-p",
                &port.to_string(),
                "-J",
                "-O",
                "1",
                "-t",
            ])
            .arg(secs.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| other(format!("running iperf3 -c: {e}")))
    })?;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        return Err(other(format!(
            "iperf3 -c {server}: {}",
            v["error"].as_str().unwrap_or("failed")
        )));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| other("iperf3 -J output has no end.sum_received.bits_per_second"))
}
