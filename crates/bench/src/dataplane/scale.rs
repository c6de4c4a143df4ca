//! 2. The cost of adding one endpoint's policy as the host and the cluster
//!    grow: the nftables transaction alone (in-process) and the whole
//!    `netmod mesos isolate` process.

use super::fabric::{
    containers, group, in_ns, load_table, other, record, synthetic_addr, synthetic_endpoint, Fabric,
};
use crate::BenchError;
use crate::{bench_dir, time_process};
use netmod_core::registry::Registry;
use netmod_dataplane as dp;
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::nft::{Change, Family};
use netmod_model::AllocAttrs;
use netmod_policy::{group_set_name, BaseSets};
use netmod_store::SqliteStore;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const LOCAL_SIZES: [usize; 4] = [10, 100, 1_000, 5_000];
pub const REMOTE_SIZES: [usize; 5] = [10, 100, 1_000, 10_000, 50_000];
/// Local endpoints of the "other hosts" series: one per netgroup, so that
/// every netgroup's set exists here and holds its members elsewhere.
pub const REMOTE_SERIES_LOCAL: usize = 50;
const TX_WARMUP: usize = 20;
const TX_REPS: usize = 400;
const ISOLATE_REPS: usize = 40;
/// The netgroup the measured endpoints join (it exists in every case).
const JOIN: usize = 0;

pub struct Case {
    /// Endpoints already there (on this host, or on other hosts).
    pub size: usize,
    pub nft: Vec<Duration>,
    pub isolate: Vec<Duration>,
}

pub struct Scale {
    pub local: Vec<Case>,
    pub remote: Vec<Case>,
}

#[derive(Clone, Copy, PartialEq)]
enum Series {
    Local,
    Remote,
}

pub fn measure(fabric: &mut Fabric, exe: &Path) -> Result<Scale, BenchError> {
    let host = fabric.host("pol")?;
    let dir = bench_dir()?;
    let mut out = Scale {
        local: Vec::new(),
        remote: Vec::new(),
    };
    for series in [Series::Local, Series::Remote] {
        let db = dir.path().join(match series {
            Series::Local => "scale-local.db",
            Series::Remote => "scale-remote.db",
        });
        let db_arg = db.to_str().ok_or_else(|| other("non UTF-8 temp path"))?;
        let store = SqliteStore::open(&db)?;
        let ipam = Ipam::new(&store);
        ipam.add_pool("10.124.0.0/16".parse().expect("cidr"), None, 0)?;
        let registry = Registry::new(&store);
        let mut synthetic = 0;
        let mut add = |host_name: &str, n: usize| -> Result<(), BenchError> {
            let id = format!("synth-{synthetic}");
            let ep = synthetic_endpoint(host_name, &id, synthetic_addr(synthetic), &group(n));
            synthetic += 1;
            record(&registry, &ep)
        };
        if series == Series::Remote {
            for i in 0..REMOTE_SERIES_LOCAL {
                add(&host.name, i)?;
            }
        }
        let sizes: &[usize] = match series {
            Series::Local => &LOCAL_SIZES,
            Series::Remote => &REMOTE_SIZES,
        };
        let mut have = 0;
        for &size in sizes {
            while have < size {
                match series {
                    Series::Local => add(&host.name, have)?,
                    Series::Remote => add(&format!("r{}", have % 10), have)?,
                }
                have += 1;
            }
            let where_ = match series {
                Series::Local => "on this host",
                Series::Remote => "on other hosts",
            };
            eprintln!("bench: policy cost with {size} endpoints {where_}");
            let ruleset = netmod_policy::ruleset(&host.name, &registry.endpoints()?);
            let cts = containers(ISOLATE_REPS)?;
            let mut isolate = Vec::new();
            let mut cleanup = Vec::new();
            for i in 0..ISOLATE_REPS {
                let uid = format!("{}-pol-{size}-{i}", fabric.prefix);
                let got = ipam.allocate(&AllocRequest {
                    handle: uid.clone(),
                    attrs: AllocAttrs {
                        host: host.name.clone(),
                        netgroups: vec![group(JOIN)],
                        ..Default::default()
                    },
                    num_ipv4: 1,
                    ..Default::default()
                })?;
                isolate.push(
                    json!({"command":"isolate","args":{"hostname":host.name,"container_id":uid,
                        "pid":cts.pid(i),"ipv4_addrs":got.ipv4,"netgroups":[group(JOIN)]}})
                    .to_string(),
                );
                cleanup.push(
                    json!({"command":"cleanup","args":{"hostname":host.name,"container_id":uid}})
                        .to_string(),
                );
            }
            let netmod = |req: &str| {
                let mut cmd = Command::new(exe);
                cmd.args(["--store", db_arg, "mesos"]);
                time_process(cmd, req.as_bytes())
            };
            let case = in_ns(&host.path(), || {
                load_table(&ruleset)?;
                let nft = transactions()?;
                let mut iso = Vec::new();
                for i in 0..ISOLATE_REPS {
                    iso.push(netmod(&isolate[i])?);
                    // Back to the same size for the next one (not timed).
                    netmod(&cleanup[i])?;
                }
                Ok(Case {
                    size,
                    nft,
                    isolate: iso,
                })
            })?;
            drop(cts);
            match series {
                Series::Local => out.local.push(case),
                Series::Remote => out.remote.push(case),
            }
        }
    }
    Ok(out)
}

/// The change list `attach` sends for a new endpoint in an existing netgroup:
/// its address joins the "grouped" set and the netgroup's set.
fn endpoint_changes(addr: IpAddr, delete: bool) -> Vec<Change> {
    let f = Family::V4;
    [BaseSets::grouped(f), group_set_name(&group(JOIN), f)]
        .into_iter()
        .map(|set| {
            let elements = vec![addr];
            if delete {
                Change::DeleteElements {
                    set,
                    family: f,
                    elements,
                }
            } else {
                Change::AddElements {
                    set,
                    family: f,
                    elements,
                }
            }
        })
        .collect()
}

/// Times `nft_apply` of one new endpoint's changes, each removed again
/// (not timed) so the size stays put. Runs in the host's namespace.
fn transactions() -> Result<Vec<Duration>, BenchError> {
    let mut took = Vec::with_capacity(TX_REPS);
    for i in 0..TX_WARMUP + TX_REPS {
        // Fresh addresses, in none of the sets (10.159.x.y).
        let addr = IpAddr::V4(Ipv4Addr::from(
            u32::from_be_bytes([10, 159, 0, 0]) + i as u32,
        ));
        let add = endpoint_changes(addr, false);
        let start = Instant::now();
        dp::nft_apply(&add).map_err(|e| other(format!("adding elements: {e}")))?;
        let t = start.elapsed();
        dp::nft_apply(&endpoint_changes(addr, true))
            .map_err(|e| other(format!("deleting elements: {e}")))?;
        if i >= TX_WARMUP {
            took.push(t);
        }
    }
    Ok(took)
}
