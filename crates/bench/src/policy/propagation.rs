//! 2. From a policy write until every host enforces it: real `netmod node`
//!    processes, each in a fake host of its own, sharing one SQLite store.
//!    A node reports the store revision it has applied to its kernel table
//!    in its host record (`hosts/<name>`, `applied_revision`).

use super::gen;
use crate::bench_dir;
use crate::dataplane::fabric::{
    group, in_ns, other, record, run_cmd, synthetic_addr, synthetic_endpoint, Fabric, HostNs, Procs,
};
use crate::BenchError;
use netmod_core::registry::{endpoint_key, Registry};
use netmod_store::{Op, Revision, SqliteStore, Store};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `netmod node --lease-ttl`: the heartbeat that writes the host record
/// runs every third of it; 2 s is the shortest the node accepts.
pub const LEASE_TTL_SECS: u64 = 2;
/// `netmod node --resync-interval`: no periodic full resync during the run.
pub const RESYNC_SECS: u64 = 600;
/// Policies in force before the measured one comes and goes.
pub const BASE_POLICIES: usize = 10;
/// Synthetic endpoints (records only, on hosts that run no node).
pub const ENDPOINTS: usize = 200;
/// How often the benchmark reads the host records.
pub const POLL: Duration = Duration::from_millis(5);
/// The measured policy.
pub const POLICY: &str = "nmb-prop";

pub struct Propagation {
    pub hosts: usize,
    /// Policy created / deleted, alternately: write start → every host record
    /// reports `applied_revision` ≥ the write's revision.
    pub policy: Vec<Duration>,
    /// The same for an endpoint record created / deleted (baseline).
    pub endpoint: Vec<Duration>,
    /// What the kernel check on a couple of hosts found.
    pub verified: Vec<String>,
    /// Start → every node reported its first full sync.
    pub started_in: Duration,
}

pub fn measure(
    fabric: &mut Fabric,
    exe: &Path,
    hosts: usize,
    rounds: usize,
) -> Result<Propagation, BenchError> {
    let dir = bench_dir()?;
    let db = dir.path().join(format!("propagation-{hosts}.db"));
    let db_arg = db.to_str().ok_or_else(|| other("non UTF-8 temp path"))?;
    let store = SqliteStore::open(&db)?;
    let registry = Registry::new(&store);
    let base = gen::policies("nmb-base", BASE_POLICIES, &gen::by_app)?;
    netmod_core::policies::apply(&store, &base)?;
    for i in 0..ENDPOINTS {
        let mut ep = synthetic_endpoint(
            &format!("r{}", i % 10),
            &format!("synth-{i}"),
            synthetic_addr(i),
            &group(i),
        );
        ep.labels = gen::labels(i);
        record(&registry, &ep)?;
    }
    // The measured policy: selects `app == 'a1'` (synthetic endpoints
    // exist with it), 10 rules like the others.
    let new_policy = gen::parse(&gen::policy_yaml(POLICY, 50, "app == 'a1'"))?;

    eprintln!("bench policy: starting {hosts} netmod node processes");
    let mut fake = Vec::new();
    for i in 0..hosts {
        fake.push(fabric.host(&format!("n{hosts}-{i}"))?);
    }
    let log = std::fs::File::create(dir.path().join("nodes.log"))
        .map_err(|e| other(format!("node log: {e}")))?;
    let mut nodes = Procs::default();
    for h in &fake {
        let log = log.try_clone().map_err(other)?;
        let child = in_ns(&h.path(), || {
            Command::new(exe)
                .args(["--store", db_arg, "node", "--hostname", &h.name])
                .args(["--host-ip", &h.ip.to_string()])
                .args(["--lease-ttl", &LEASE_TTL_SECS.to_string()])
                .args(["--resync-interval", &RESYNC_SECS.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| other(format!("starting netmod node: {e}")))
        })?;
        nodes.0.push(child);
    }
    let names: Vec<String> = fake.iter().map(|h| h.name.clone()).collect();
    let started = Instant::now();
    // Every node reports after its first full sync, whatever revision it read
    // then (host records written after it never make it report again).
    let started_in =
        wait_all(&store, &names, 0, started, Duration::from_secs(120)).map_err(|e| {
            other(format!(
                "{e} (node log: {})",
                tail(&dir.path().join("nodes.log"))
            ))
        })?;
    eprintln!(
        "bench policy: {hosts} nodes synced in {:.0} ms",
        started_in.as_secs_f64() * 1000.0
    );

    let mut out = Propagation {
        hosts,
        policy: Vec::new(),
        endpoint: Vec::new(),
        verified: Vec::new(),
        started_in,
    };
    let probe = {
        let mut ep = synthetic_endpoint("r0", "nmb-probe", synthetic_addr(ENDPOINTS), &group(0));
        ep.labels = gen::labels(1);
        ep
    };
    let probe_key = endpoint_key(&probe.host, &probe.container_id, &probe.container_iface);
    let check = [&fake[0], &fake[hosts - 1]];
    // One untimed round of each first (warm-up), then `rounds` timed.
    for round in 0..rounds + 2 {
        let create = round % 2 == 0;
        // A policy comes (or goes).
        let start = Instant::now();
        let rev = if create {
            netmod_core::policies::apply(&store, &new_policy)?;
            store
                .get(&netmod_core::policies::policy_key(POLICY))?
                .ok_or_else(|| other("the applied policy is not in the store"))?
                .mod_revision
        } else {
            store
                .txn(
                    &[],
                    &[Op::delete(netmod_core::policies::policy_key(POLICY))],
                )?
                .revision
        };
        let took = wait_all(&store, &names, rev, start, Duration::from_secs(60))?;
        if round >= 2 {
            out.policy.push(took);
        }
        if round < 2 {
            for h in check {
                out.verified.push(verify(h, create)?);
            }
        }
        settle();
        // Baseline: an endpoint record comes (or goes).
        let start = Instant::now();
        let rev = if create {
            registry
                .create_endpoint(&probe)
                .map_err(|e| other(format!("recording the probe endpoint: {e}")))?;
            store
                .get(&probe_key)?
                .ok_or_else(|| other("the probe endpoint is not in the store"))?
                .mod_revision
        } else {
            let ops = registry.delete_endpoint_ops(&probe)?;
            store.txn(&[], &ops)?.revision
        };
        let took = wait_all(&store, &names, rev, start, Duration::from_secs(60))?;
        if round >= 2 {
            out.endpoint.push(took);
        }
        settle();
    }
    drop(nodes);
    Ok(out)
}

/// A pause between writes that does not line up with the heartbeat period,
/// so that writes land at every phase of it.
fn settle() {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100 + (n * 137) % 400));
}

/// Polls the host records until every one of `names` reports
/// `applied_revision >= rev`; the time since `start`.
fn wait_all(
    store: &dyn Store,
    names: &[String],
    rev: Revision,
    start: Instant,
    limit: Duration,
) -> Result<Duration, BenchError> {
    let registry = Registry::new(store);
    loop {
        let hosts = registry.hosts()?;
        let behind = names
            .iter()
            .filter(|n| {
                hosts
                    .get(*n)
                    .and_then(|h| h.applied_revision)
                    .is_none_or(|a| (a as Revision) < rev)
            })
            .count();
        if behind == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(other(format!(
                "{behind} of {} hosts had not reported revision {rev} after {} s",
                names.len(),
                limit.as_secs()
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// The policy's chains are in the host's kernel table (or gone after a delete).
fn verify(h: &HostNs, present: bool) -> Result<String, BenchError> {
    let mut found = Vec::new();
    for chain in [format!("pe_{POLICY}"), format!("pi_{POLICY}")] {
        let listed = run_cmd(
            "ip",
            &[
                "netns", "exec", &h.ns, "nft", "list", "chain", "inet", "netmod", &chain,
            ],
        );
        if listed.is_ok() != present {
            return Err(other(format!(
                "host {}: chain {chain} {} after the host reported the revision",
                h.name,
                if present {
                    "is missing from its table"
                } else {
                    "is still in its table"
                }
            )));
        }
        if let Ok(text) = listed {
            found.push(format!(
                "{chain} ({} rules)",
                text.lines().filter(|l| l.contains("comment")).count()
            ));
        }
    }
    Ok(if present {
        format!("{}: {}", h.name, found.join(", "))
    } else {
        format!("{}: both chains gone after the delete", h.name)
    })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}
