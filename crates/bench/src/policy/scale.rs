//! 1. One new endpoint with 10, 100 and 1,000 policies in force and 10 …
//!    5,000 endpoints: the nftables transaction alone (in-process) and the
//!    whole `netmod mesos isolate` process.

use super::gen;
use crate::dataplane::fabric::{
    containers, group, in_ns, load_table, other, record, synthetic_addr, synthetic_endpoint, Fabric,
};
use crate::BenchError;
use crate::{bench_dir, time_process};
use netmod_calico::GlobalNetworkPolicy;
use netmod_core::registry::Registry;
use netmod_dataplane as dp;
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::nft::{Change, Family, Ruleset};
use netmod_model::{AllocAttrs, Endpoint};
use netmod_policy::{group_set_name, BaseSets};
use netmod_store::SqliteStore;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

pub const POLICY_COUNTS: [usize; 3] = [10, 100, 1_000];
pub const ENDPOINT_COUNTS: [usize; 4] = [10, 100, 1_000, 5_000];
/// Synthetic endpoints are spread round-robin over this many hosts, this
/// one among them (one in ten is local).
pub const HOSTS: usize = 10;
const TX_WARMUP: usize = 20;
pub const TX_REPS: usize = 400;
/// The netgroup the measured endpoints join (it exists in every case).
const JOIN: usize = 0;
/// The measured endpoints' labels: synthetic endpoint 0's (`app=a0`,
/// `tier=t0`), so policies 0, 100, 200, … select them.
const NEW_LABELS: usize = 0;

pub struct Case {
    pub policies: usize,
    pub endpoints: usize,
    /// Rules and sets in the host's table.
    pub rules: usize,
    pub sets: usize,
    /// Policies that select the new endpoint.
    pub selecting: usize,
    /// Changes (set element additions) in the new endpoint's transaction.
    pub changes: usize,
    /// Loading the whole table (untimed part of the setup, shown for scale).
    pub load: Duration,
    pub nft: Vec<Duration>,
    pub isolate: Vec<Duration>,
}

pub fn measure(
    fabric: &mut Fabric,
    exe: &Path,
    isolate_reps: usize,
) -> Result<Vec<Case>, BenchError> {
    let host = fabric.host("pscale")?;
    let dir = bench_dir()?;
    let mut out = Vec::new();
    for &npol in &POLICY_COUNTS {
        let db = dir.path().join(format!("scale-{npol}.db"));
        let db_arg = db.to_str().ok_or_else(|| other("non UTF-8 temp path"))?;
        let store = SqliteStore::open(&db)?;
        let ipam = Ipam::new(&store);
        ipam.add_pool("10.124.0.0/16".parse().expect("cidr"), None, 0)?;
        let registry = Registry::new(&store);
        let policies = gen::policies("nmb-p", npol, &gen::by_app)?;
        netmod_core::policies::apply(&store, &policies)?;
        let mut have = 0;
        for &size in &ENDPOINT_COUNTS {
            while have < size {
                let h = if have % HOSTS == 0 {
                    host.name.clone()
                } else {
                    format!("r{}", have % HOSTS)
                };
                let mut ep = synthetic_endpoint(
                    &h,
                    &format!("synth-{have}"),
                    synthetic_addr(have),
                    &group(have),
                );
                ep.labels = gen::labels(have);
                record(&registry, &ep)?;
                have += 1;
            }
            eprintln!("bench policy: {npol} policies, {size} endpoints");
            let endpoints = registry.endpoints()?;
            let ruleset = netmod_policy::ruleset_with_policies(
                &host.name,
                &endpoints,
                &policies,
                &netmod_core::labels::endpoint_labels,
            );
            let cts = containers(isolate_reps)?;
            let mut isolate = Vec::new();
            let mut cleanup = Vec::new();
            let labels = gen::labels(NEW_LABELS);
            for i in 0..isolate_reps {
                let uid = format!("{}-pscale-{npol}-{size}-{i}", fabric.prefix);
                let got = ipam.allocate(&AllocRequest {
                    handle: uid.clone(),
                    attrs: AllocAttrs {
                        host: host.name.clone(),
                        netgroups: vec![group(JOIN)],
                        labels: labels.clone(),
                    },
                    num_ipv4: 1,
                    ..Default::default()
                })?;
                isolate.push(
                    json!({"command":"isolate","args":{"hostname":host.name,"container_id":uid,
                        "pid":cts.pid(i),"ipv4_addrs":got.ipv4,"netgroups":[group(JOIN)],
                        "labels":labels}})
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
            let probe = new_endpoint(&host.name, Ipv4Addr::new(10, 159, 0, 0));
            let plist = probe_changes(&probe, &policies, &ruleset, false);
            let case = in_ns(&host.path(), || {
                let started = Instant::now();
                load_table(&ruleset).map_err(|e| {
                    other(format!(
                        "loading the table with {npol} policies and {size} endpoints: {e}"
                    ))
                })?;
                let load = started.elapsed();
                let nft = transactions(&host.name, &policies, &ruleset)?;
                let mut iso = Vec::new();
                for i in 0..isolate_reps {
                    iso.push(netmod(&isolate[i])?);
                    // Back to the same size for the next one (not timed).
                    netmod(&cleanup[i])?;
                }
                Ok(Case {
                    policies: npol,
                    endpoints: size,
                    rules: ruleset.chains.iter().map(|c| c.rules.len()).sum(),
                    sets: ruleset.sets.len(),
                    selecting: policies
                        .iter()
                        .filter(|p| {
                            let l = netmod_core::labels::endpoint_labels(&probe);
                            p.selector.matches(&l)
                        })
                        .count(),
                    changes: plist.len(),
                    load,
                    nft,
                    isolate: iso,
                })
            })?;
            drop(cts);
            out.push(case);
        }
    }
    Ok(out)
}

/// The record a new endpoint would have: netgroup `JOIN`, labels of synthetic endpoint 0.
fn new_endpoint(host: &str, addr: Ipv4Addr) -> Endpoint {
    let mut ep = synthetic_endpoint(host, &format!("new-{addr}"), addr, &group(JOIN));
    ep.labels = gen::labels(NEW_LABELS);
    ep
}

/// The change list `attach` sends for a new endpoint in an existing
/// netgroup: its address joins `grouped_v4`, its netgroup's set, and the
/// policy sets (`netmod_policy::endpoint_policy_sets`) that exist in the
/// table (attach asks the kernel which exist; here the ruleset says).
fn probe_changes(
    ep: &Endpoint,
    policies: &[GlobalNetworkPolicy],
    ruleset: &Ruleset,
    delete: bool,
) -> Vec<Change> {
    let f = Family::V4;
    let addrs: Vec<IpAddr> = ep.addrs().collect();
    let mut sets: Vec<(String, Family, Vec<IpAddr>)> = vec![
        (BaseSets::grouped(f), f, addrs.clone()),
        (group_set_name(&group(JOIN), f), f, addrs),
    ];
    let labels = netmod_core::labels::endpoint_labels(ep);
    sets.extend(
        netmod_policy::endpoint_policy_sets(ep, policies, &labels)
            .into_iter()
            .filter(|(set, _, _)| ruleset.sets.contains_key(set)),
    );
    sets.into_iter()
        .map(|(set, family, elements)| {
            if delete {
                Change::DeleteElements {
                    set,
                    family,
                    elements,
                }
            } else {
                Change::AddElements {
                    set,
                    family,
                    elements,
                }
            }
        })
        .collect()
}

/// Times `nft_apply` of one new endpoint's changes, each removed again
/// (not timed) so the size stays put. Runs in the host's namespace.
fn transactions(
    host: &str,
    policies: &[GlobalNetworkPolicy],
    ruleset: &Ruleset,
) -> Result<Vec<Duration>, BenchError> {
    let mut took = Vec::with_capacity(TX_REPS);
    for i in 0..TX_WARMUP + TX_REPS {
        // Fresh addresses, in none of the sets (10.159.x.y).
        let addr = Ipv4Addr::from(u32::from_be_bytes([10, 159, 0, 0]) + i as u32);
        let ep = new_endpoint(host, addr);
        let add = probe_changes(&ep, policies, ruleset, false);
        let del = probe_changes(&ep, policies, ruleset, true);
        let start = Instant::now();
        dp::nft_apply(&add).map_err(|e| other(format!("adding elements: {e}")))?;
        let t = start.elapsed();
        dp::nft_apply(&del).map_err(|e| other(format!("deleting elements: {e}")))?;
        if i >= TX_WARMUP {
            took.push(t);
        }
    }
    Ok(took)
}
