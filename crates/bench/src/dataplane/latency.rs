//! 1. Process-level `netmod mesos isolate` / `cleanup` against the CNI
//!    reference plugins `bridge` + `host-local` ADD / DEL, started the same
//!    way from the same thread inside the same fake host.

use super::fabric::{containers, in_ns, other, Fabric};
use crate::BenchError;
use crate::{bench_dir, time_process};
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::AllocAttrs;
use netmod_store::SqliteStore;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub const CNI_BRIDGE: &str = "/usr/lib/cni/bridge";
pub const CNI_HOST_LOCAL: &str = "/usr/lib/cni/host-local";
/// Untimed first containers: one per netgroup (so no timed isolate creates a
/// netgroup's set and rule), and the CNI bridge's creation.
pub const WARMUP: usize = 10;
pub const GROUPS: usize = 10;

pub struct Latency {
    pub containers: usize,
    pub isolate: Vec<Duration>,
    pub cleanup: Vec<Duration>,
    pub cni_add: Vec<Duration>,
    pub cni_del: Vec<Duration>,
    /// `/bin/true`, the bare cost of starting a process.
    pub floor: Vec<Duration>,
    /// `netmod --version`: starting the netmod binary, doing nothing.
    pub netmod_floor: Vec<Duration>,
}

/// Calls of one kind in a row.
pub const BLOCK: usize = 25;

fn blocks(from: usize, to: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    (from..to)
        .step_by(BLOCK)
        .map(move |s| s..(s + BLOCK).min(to))
}

pub fn measure(fabric: &mut Fabric, exe: &Path, n: usize) -> Result<Latency, BenchError> {
    // Two identical fake hosts, one per plugin, so that each host holds only
    // its own plugin's interfaces (a bridge with hundreds of ports in the
    // same namespace would slow netmod's calls down too, and vice versa).
    let host = fabric.host("lat")?;
    let cni_host = fabric.host("latcni")?;
    let dir = bench_dir()?;
    let db = dir.path().join("latency.db");
    let db_arg = db.to_str().ok_or_else(|| other("non UTF-8 temp path"))?;
    // A connection stays open, as `netmod node` holds one on every host.
    let store = SqliteStore::open(&db)?;
    let ipam = Ipam::new(&store);
    ipam.add_pool("10.124.0.0/16".parse().expect("cidr"), None, 60)?;

    let total = n + WARMUP;
    eprintln!(
        "bench: isolate latency: starting {} container processes",
        2 * total
    );
    let nm_ct = containers(total)?;
    let cni_ct = containers(total)?;

    // Allocate first (not timed), as Mesos calls `allocate` before `isolate`.
    let mut isolate = Vec::with_capacity(total);
    let mut cleanup = Vec::with_capacity(total);
    for i in 0..total {
        let uid = format!("{}-lat-{i}", fabric.prefix);
        let group = format!("nmb{:02}", i % GROUPS);
        let got = ipam.allocate(&AllocRequest {
            handle: uid.clone(),
            attrs: AllocAttrs {
                host: host.name.clone(),
                netgroups: vec![group.clone()],
                ..Default::default()
            },
            num_ipv4: 1,
            ..Default::default()
        })?;
        isolate.push(
            json!({"command":"isolate","args":{"hostname":host.name,"container_id":uid,
                "pid":nm_ct.pid(i),"ipv4_addrs":got.ipv4,"netgroups":[group],
                "labels":{"task":format!("bench-{i}")}}})
            .to_string(),
        );
        cleanup.push(
            json!({"command":"cleanup","args":{"hostname":host.name,"container_id":uid}})
                .to_string(),
        );
    }
    let cni_conf = json!({
        "cniVersion": "0.4.0",
        "name": "nmbench",
        "type": "bridge",
        "bridge": "nmbench-br",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "subnet": "10.125.0.0/16",
            "dataDir": dir.path().join("cni").display().to_string(),
        },
    })
    .to_string();
    let netmod = |req: &str| {
        let mut cmd = Command::new(exe);
        cmd.args(["--store", db_arg, "mesos"]);
        time_process(cmd, req.as_bytes())
    };
    let cni = |command: &str, i: usize| {
        let mut cmd = Command::new(CNI_BRIDGE);
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", format!("{}-cni-{i}", fabric.prefix))
            .env("CNI_NETNS", cni_ct.netns(i))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni");
        time_process(cmd, cni_conf.as_bytes())
    };

    eprintln!("bench: isolate latency: {n} containers each (+{WARMUP} warm-up)");
    let mut lat = Latency {
        containers: n,
        isolate: Vec::new(),
        cleanup: Vec::new(),
        cni_add: Vec::new(),
        cni_del: Vec::new(),
        floor: Vec::new(),
        netmod_floor: Vec::new(),
    };
    let (nm_ns, cni_ns) = (host.path(), cni_host.path());
    // One block of calls of one kind, spawned from a thread inside that
    // kind's host namespace.
    let netmod_block = |reqs: &[String]| {
        in_ns(&nm_ns, || {
            reqs.iter()
                .map(|r| netmod(r))
                .collect::<Result<Vec<_>, _>>()
        })
    };
    let cni_block = |command: &str, range: std::ops::Range<usize>| {
        in_ns(&cni_ns, || {
            range
                .map(|i| cni(command, i))
                .collect::<Result<Vec<_>, _>>()
        })
    };
    netmod_block(&isolate[..WARMUP])?;
    cni_block("ADD", 0..WARMUP)?;
    // In blocks of BLOCK calls of one kind, the kind going first alternating,
    // so that drift and other load on the machine land on both alike.
    for (b, block) in blocks(WARMUP, total).enumerate() {
        for netmod_pass in [b % 2 == 0, b % 2 != 0] {
            if netmod_pass {
                lat.isolate.extend(netmod_block(&isolate[block.clone()])?);
            } else {
                lat.cni_add.extend(cni_block("ADD", block.clone())?);
            }
        }
    }
    netmod_block(&cleanup[..WARMUP])?;
    cni_block("DEL", 0..WARMUP)?;
    for (b, block) in blocks(WARMUP, total).enumerate() {
        for netmod_pass in [b % 2 == 0, b % 2 != 0] {
            if netmod_pass {
                lat.cleanup.extend(netmod_block(&cleanup[block.clone()])?);
            } else {
                lat.cni_del.extend(cni_block("DEL", block.clone())?);
            }
        }
    }
    in_ns(&nm_ns, || {
        for _ in 0..200 {
            lat.floor
                .push(time_process(Command::new("/bin/true"), b"")?);
            let mut version = Command::new(exe);
            version.arg("--version");
            lat.netmod_floor.push(time_process(version, b"")?);
        }
        Ok(())
    })?;
    drop(nm_ct);
    drop(cni_ct);
    drop(store);
    Ok(lat)
}
