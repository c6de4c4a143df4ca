//! 3. TCP throughput container → container across two fake hosts with 100
//!    policies of 10 rules each selecting the pair, against the same path
//!    with no table and with a conntrack-only table.

use super::gen;
use crate::dataplane::fabric::{
    containers, group, in_ns, load_table, other, record, synthetic_addr, synthetic_endpoint,
    Fabric, HostNs, Procs,
};
use crate::dataplane::throughput::{conntrack_only, iperf_client, OTHER_ENDPOINTS};
use crate::BenchError;
use crate::{bench_dir, time_process};
use netmod_core::registry::Registry;
use netmod_dataplane as dp;
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::{AllocAttrs, Endpoint};
use netmod_store::SqliteStore;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Policies selecting the pair.
pub const POLICIES: usize = 100;
/// The pair's netgroup.
const PAIR_GROUP: usize = 49;

pub struct Throughput {
    pub seconds: u32,
    /// The port iperf3 uses: only the last policy's rules allow it.
    pub port: u16,
    pub rules: usize,
    /// Gbit/s, in run order.
    pub with_table: Vec<f64>,
    pub without_table: Vec<f64>,
    pub conntrack_only: Vec<f64>,
    /// A connection to a port no policy allows was refused with the table.
    pub refused_elsewhere: bool,
}

/// Policy `k` selects `app == 'a<k>'` endpoints and the pair (`role == 'iperf'`).
fn selector(k: usize) -> String {
    format!("app == 'a{}' || role == 'iperf'", k % gen::APPS)
}

pub fn measure(fabric: &mut Fabric, exe: &Path, seconds: u32) -> Result<Throughput, BenchError> {
    let h1 = fabric.host("pt1")?;
    let h2 = fabric.host("pt2")?;
    let dir = bench_dir()?;
    let db = dir.path().join("policy-throughput.db");
    let db_arg = db.to_str().ok_or_else(|| other("non UTF-8 temp path"))?;
    let store = SqliteStore::open(&db)?;
    let ipam = Ipam::new(&store);
    ipam.add_pool("10.124.0.0/16".parse().expect("cidr"), None, 0)?;
    let registry = Registry::new(&store);
    let policies = gen::policies("nmb-t", POLICIES, &selector)?;
    netmod_core::policies::apply(&store, &policies)?;
    let port = gen::allowed_port(POLICIES - 1);
    let hosts = ["pt1", "pt2", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8"];
    for i in 0..OTHER_ENDPOINTS {
        let mut ep = synthetic_endpoint(
            hosts[i % 10],
            &format!("synth-{i}"),
            synthetic_addr(i),
            &group(i / 10),
        );
        ep.labels = gen::labels(i);
        record(&registry, &ep)?;
    }
    let load = |h: &HostNs, endpoints: &[Endpoint]| {
        let rs = netmod_policy::ruleset_with_policies(
            &h.name,
            endpoints,
            &policies,
            &netmod_core::labels::endpoint_labels,
        );
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
    let labels = BTreeMap::from([("role".to_string(), "iperf".to_string())]);
    let mut addrs = Vec::new();
    for (i, h) in [&h1, &h2].into_iter().enumerate() {
        let uid = format!("{}-ptput-{i}", fabric.prefix);
        let got = ipam.allocate(&AllocRequest {
            handle: uid.clone(),
            attrs: AllocAttrs {
                host: h.name.clone(),
                netgroups: vec![group(PAIR_GROUP)],
                labels: labels.clone(),
            },
            num_ipv4: 1,
            ..Default::default()
        })?;
        let addr = got.ipv4[0];
        let req = json!({"command":"isolate","args":{"hostname":h.name,"container_id":uid,
            "pid":cts.pid(i),"ipv4_addrs":[addr],"netgroups":[group(PAIR_GROUP)],
            "labels":labels}})
        .to_string();
        in_ns(&h.path(), || {
            let mut cmd = Command::new(exe);
            cmd.args(["--store", db_arg, "mesos"]);
            time_process(cmd, req.as_bytes())
        })
        .map_err(|e| other(format!("isolate for the throughput test: {e}")))?;
        addrs.push(addr);
    }
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
    let rules = netmod_policy::ruleset_with_policies(
        &h1.name,
        &endpoints,
        &policies,
        &netmod_core::labels::endpoint_labels,
    )
    .chains
    .iter()
    .map(|c| c.rules.len())
    .sum();

    // Two servers: on the port the last policy allows, and on iperf3's
    // default port, which no policy allows (a selected endpoint that no
    // policy decides for is dropped).
    let mut servers = Procs::default();
    for p in [port, crate::dataplane::throughput::IPERF_PORT] {
        let server = in_ns(&cts.netns(1), || {
            Command::new("iperf3")
                .args(["-s", "-B", &addrs[1].to_string(), "-p", &p.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| other(format!("starting iperf3 -s: {e}")))
        })?;
        servers.0.push(server);
    }
    let client_ns = cts.netns(0);
    let iperf = |secs: u32| iperf_client(&client_ns, addrs[1], port, secs);

    load(&h1, &endpoints)?;
    load(&h2, &endpoints)?;
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
            "container {} cannot reach {}:{port} across the fake hosts with {POLICIES} policies: {}",
            addrs[0],
            addrs[1],
            iperf(1).err().map_or(String::new(), |e| e.to_string())
        )));
    }
    // The policies are in force: the default port is refused (iperf3 gives
    // up after its connect timeout).
    let refused_elsewhere = in_ns(&client_ns, || {
        Ok(Command::new("iperf3")
            .args(["-c", &addrs[1].to_string(), "-p"])
            .arg(crate::dataplane::throughput::IPERF_PORT.to_string())
            .args(["-t", "1", "--connect-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| other(format!("running iperf3 -c: {e}")))?
            .success())
    })
    .map(|ok: bool| !ok)?;

    let mut out = Throughput {
        seconds,
        port,
        rules,
        with_table: Vec::new(),
        without_table: Vec::new(),
        conntrack_only: Vec::new(),
        refused_elsewhere,
    };
    let ct_only = conntrack_only();
    for round in 0..2 {
        for mode in 0..3 {
            let what = match mode {
                0 => {
                    load(&h1, &endpoints)?;
                    load(&h2, &endpoints)?;
                    "netmod table with policies"
                }
                1 => {
                    unload(&h1)?;
                    unload(&h2)?;
                    "no table"
                }
                _ => {
                    for h in [&h1, &h2] {
                        in_ns(&h.path(), || {
                            dp::nft_replace_all(&ct_only)
                                .map_err(|e| other(format!("loading the conntrack table: {e}")))
                        })?;
                    }
                    "conntrack-only table"
                }
            };
            eprintln!(
                "bench policy: iperf3 {seconds} s, {what} (round {})",
                round + 1
            );
            let gbits = iperf(seconds)?;
            match mode {
                0 => out.with_table.push(gbits),
                1 => out.without_table.push(gbits),
                _ => out.conntrack_only.push(gbits),
            }
        }
    }
    unload(&h1)?;
    unload(&h2)?;
    drop(servers);
    drop(cts);
    Ok(out)
}
