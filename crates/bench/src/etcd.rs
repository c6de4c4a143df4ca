//! `netmod bench etcd`: the etcd datastore against SQLite on one machine.
//!
//! - allocations per second with 1, 4 and 16 concurrent allocators, each a
//!   thread with its own store handle on a host of its own;
//! - the time for a membership change on one host to be applied on 10 and
//!   100 other hosts: simulated node daemons, each with its own store handle
//!   and watch, that fold the change into their endpoint view and recompute
//!   their desired ruleset and its diff (everything `netmod node` does but
//!   touch the kernel), timed from the start of the write;
//! - etcd keys and bytes per endpoint, after allocating and recording
//!   endpoints through the real IPAM and registry.
//!
//! It starts its own etcd (`/usr/bin/etcd`, Debian's etcd-server) on
//! loopback on free ports with its data on disk in the temp directory (etcd
//! fsyncs every commit, as in production), and removes it at the end.

use super::{percentile, render, Row};
use crate::BenchError;
use netmod_core::registry::Registry;
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::{container_mac, format_mac, host_iface_name, AllocAttrs, Endpoint};
use netmod_store::etcd_server::{EtcdServer, ETCD_BINARY};
use netmod_store::{Event, Store};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

/// Allocations per allocator-count run (shared by the allocators).
const ALLOCATIONS: usize = 2000;
/// Membership changes timed per fan-out size.
const ROUNDS: usize = 50;
/// Endpoints recorded for the footprint.
const ENDPOINTS: usize = 500;
const POOL: &str = "10.30.0.0/16";

fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

/// The two backends, each run against a fresh key space per measurement.
/// Dropped in field order: etcd stops before its directory goes.
struct Backends {
    _server: EtcdServer,
    endpoint: String,
    dir: super::tempfile_dir::Dir,
}

impl Backends {
    fn etcd(&self, name: &str) -> String {
        format!(
            "etcd://{}?prefix=/nmbench-{}-{name}/",
            self.endpoint,
            std::process::id()
        )
    }
    fn sqlite(&self, name: &str) -> String {
        self.dir
            .path()
            .join(format!("nmbench-{name}.db"))
            .display()
            .to_string()
    }
    fn both(&self, name: &str) -> [(&'static str, String); 2] {
        [("sqlite", self.sqlite(name)), ("etcd", self.etcd(name))]
    }
}

pub fn run(_args: &super::BenchArgs) -> Result<String, BenchError> {
    if !std::path::Path::new(ETCD_BINARY).exists() {
        return Err(BenchError::Other(format!(
            "{ETCD_BINARY} is missing (apt-get install etcd-server)"
        )));
    }
    // On disk (the temp directory), not tmpfs: etcd's commit cost includes
    // its fsync. etcd's data and the SQLite files share one directory.
    let dir = super::tempfile_dir::Dir::new("nmbench-etcd").map_err(other)?;
    let server = EtcdServer::start(dir.path())?;
    let b = Backends {
        endpoint: server.endpoint.clone(),
        _server: server,
        dir,
    };

    let mut allocs = Vec::new();
    for allocators in [1, 4, 16] {
        for (backend, addr) in b.both(&format!("alloc{allocators}")) {
            eprintln!("bench etcd: {allocators} allocator(s) on {backend}");
            allocs.push((
                backend,
                allocators,
                allocate(&addr, allocators, ALLOCATIONS)?,
            ));
        }
    }
    let mut fan = Vec::new();
    for hosts in [10, 100] {
        for (backend, addr) in b.both(&format!("fan{hosts}")) {
            eprintln!("bench etcd: a change applied on {hosts} hosts, {backend}");
            fan.push((backend, hosts, fan_out(&addr, hosts, ROUNDS)?));
        }
    }
    let mut sizes = BTreeMap::new();
    for (backend, addr) in b.both("footprint") {
        eprintln!("bench etcd: footprint of {ENDPOINTS} endpoints on {backend}");
        let db_before = etcd_db_in_use(&b.endpoint);
        let size = footprint(&addr, ENDPOINTS)?;
        let db_growth = (backend == "etcd")
            .then(|| Some(etcd_db_in_use(&b.endpoint)? - db_before?))
            .flatten();
        sizes.insert(backend, (size, db_growth));
    }
    let cold: Vec<(&str, Duration)> = b
        .both("cold")
        .into_iter()
        .map(|(backend, addr)| Ok((backend, cold_start(&addr)?)))
        .collect::<Result<_, BenchError>>()?;

    Ok(report(&b.endpoint, &allocs, &fan, &sizes, &cold))
}

struct Allocs {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Allocs {
    fn per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// `allocators` threads, each with its own store handle and host, share
/// `total` allocations from one fresh pool.
fn allocate(addr: &str, allocators: usize, total: usize) -> Result<Allocs, BenchError> {
    let admin = netmod_store::open(addr)?;
    Ipam::new(&*admin).add_pool(POOL.parse().expect("cidr"), None, 60)?;
    let barrier = Arc::new(Barrier::new(allocators + 1));
    let workers: Vec<_> = (0..allocators)
        .map(|a| {
            let (addr, barrier) = (addr.to_string(), barrier.clone());
            std::thread::spawn(move || -> Result<Vec<Duration>, BenchError> {
                let store = netmod_store::open(&addr);
                barrier.wait();
                let store = store?;
                let ipam = Ipam::new(&*store);
                (0..total / allocators)
                    .map(|i| {
                        let req = AllocRequest {
                            handle: format!("a{a}-{i}"),
                            attrs: AllocAttrs {
                                host: format!("host{a}"),
                                ..Default::default()
                            },
                            num_ipv4: 1,
                            ..Default::default()
                        };
                        let t = Instant::now();
                        ipam.allocate(&req)?;
                        Ok(t.elapsed())
                    })
                    .collect()
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.join().map_err(|_| other("an allocator panicked"))??);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let got: Vec<IpAddr> = Ipam::new(&*admin)
        .handles()?
        .into_iter()
        .flat_map(|h| h.addrs)
        .collect();
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != got.len() || got.len() != latencies.len() {
        return Err(other(format!(
            "{addr}: {} allocations, {} addresses held, {} distinct",
            latencies.len(),
            got.len(),
            unique.len()
        )));
    }
    Ok(Allocs { elapsed, latencies })
}

fn endpoint(host: &str, id: &str, addr: IpAddr, groups: &[&str]) -> Endpoint {
    let IpAddr::V4(v4) = addr else {
        unreachable!("the bench pool is IPv4")
    };
    Endpoint {
        host: host.to_string(),
        container_id: id.to_string(),
        iface: host_iface_name(id, "eth0"),
        container_iface: "eth0".into(),
        mac: format_mac(&container_mac(id, "eth0")),
        ipv4: vec![v4],
        ipv6: Vec::new(),
        netgroups: groups.iter().map(|g| g.to_string()).collect(),
        labels: BTreeMap::from([("task".to_string(), format!("task-{id}"))]),
        netns: format!("/proc/4242/ns/net#{id}"),
        source: "mesos".into(),
        handle: Some(id.to_string()),
    }
}

/// Allocate an address and record its endpoint, as `isolate` does (without the kernel).
fn isolate(
    store: &dyn Store,
    host: &str,
    id: &str,
    groups: &[&str],
) -> Result<Endpoint, BenchError> {
    let got = Ipam::new(store).allocate(&AllocRequest {
        handle: id.to_string(),
        attrs: AllocAttrs {
            host: host.to_string(),
            netgroups: groups.iter().map(|g| g.to_string()).collect(),
            labels: BTreeMap::from([("task".to_string(), format!("task-{id}"))]),
        },
        num_ipv4: 1,
        ..Default::default()
    })?;
    let ep = endpoint(host, id, IpAddr::V4(got.ipv4[0]), groups);
    Registry::new(store)
        .create_endpoint(&ep)
        .map_err(|e| other(format!("recording {id}: {e}")))?;
    Ok(ep)
}

/// A change a simulated node applied: container id, when its watch
/// delivered it, when the node had recomputed its ruleset.
type Applied = (String, Instant, Instant);

/// One simulated node daemon: its own store handle and watch over the whole
/// cluster prefix, an endpoint view, and the desired ruleset it recomputes
/// and diffs after every change, as `netmod node` does before the kernel.
struct SimNode {
    host: String,
    store: Box<dyn Store>,
    endpoints: BTreeMap<String, Endpoint>,
    applied: netmod_model::nft::Ruleset,
    revision: i64,
}

impl SimNode {
    fn start(addr: &str, host: String) -> Result<SimNode, BenchError> {
        let store = netmod_store::open(addr)?;
        let (kvs, revision) = store.range(netmod_core::registry::ENDPOINTS)?;
        let endpoints: BTreeMap<String, Endpoint> = kvs
            .iter()
            .map(|kv| netmod_store::decode(kv).map(|e| (kv.key.clone(), e)))
            .collect::<Result<_, _>>()?;
        let eps: Vec<Endpoint> = endpoints.values().cloned().collect();
        let applied = netmod_policy::ruleset(&host, &eps);
        // Open the watch before the first change.
        store.changes("", revision, Duration::ZERO)?;
        Ok(SimNode {
            host,
            store,
            endpoints,
            applied,
            revision,
        })
    }

    /// Follow the feed; for each endpoint change applied, send its container id.
    fn follow(&mut self, tx: &mpsc::Sender<Applied>) -> Result<bool, BenchError> {
        let events = self
            .store
            .changes("", self.revision, Duration::from_secs(5))?;
        let seen = Instant::now();
        let mut changed = Vec::new();
        for e in &events {
            self.revision = self.revision.max(e.revision());
            if !e.key().starts_with(netmod_core::registry::ENDPOINTS) {
                continue;
            }
            match e {
                Event::Put(kv) => {
                    let ep: Endpoint = netmod_store::decode(kv)?;
                    changed.push(ep.container_id.clone());
                    self.endpoints.insert(kv.key.clone(), ep);
                }
                Event::Delete { key, .. } => {
                    if let Some(ep) = self.endpoints.remove(key) {
                        changed.push(ep.container_id);
                    }
                }
            }
        }
        if changed.is_empty() {
            return Ok(true);
        }
        let eps: Vec<Endpoint> = self.endpoints.values().cloned().collect();
        let desired = netmod_policy::ruleset(&self.host, &eps);
        let diff = netmod_policy::diff(&self.applied, &desired);
        std::hint::black_box(&diff);
        self.applied = desired;
        let applied = Instant::now();
        for id in changed {
            if id == "stop" || tx.send((id, seen, applied)).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A membership change (a task joins netgroup `bench` on host `writer`),
/// written once and applied by `hosts` simulated node daemons, each of which
/// has a task of its own in that netgroup: the time from the start of the
/// write until each daemon has recomputed its ruleset, over `rounds` changes.
fn fan_out(addr: &str, hosts: usize, rounds: usize) -> Result<FanOut, BenchError> {
    let writer = netmod_store::open(addr)?;
    Ipam::new(&*writer).add_pool(POOL.parse().expect("cidr"), None, 60)?;
    for h in 0..hosts {
        isolate(
            &*writer,
            &format!("sim{h}"),
            &format!("local-{h}"),
            &["bench"],
        )?;
    }
    let (tx, rx) = mpsc::channel::<Applied>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), BenchError>>();
    let threads: Vec<_> = (0..hosts)
        .map(|h| {
            let (addr, tx, ready_tx) = (addr.to_string(), tx.clone(), ready_tx.clone());
            std::thread::spawn(move || {
                let mut node = match SimNode::start(&addr, format!("sim{h}")) {
                    Ok(n) => {
                        let _ = ready_tx.send(Ok(()));
                        n
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(true) = node.follow(&tx) {}
            })
        })
        .collect();
    drop(tx);
    for _ in 0..hosts {
        ready_rx
            .recv()
            .map_err(|_| other("a simulated node died"))??;
    }
    // Let every watch settle before the first change.
    std::thread::sleep(Duration::from_millis(500));
    let mut applied = Vec::with_capacity(hosts * rounds);
    let mut seen = Vec::with_capacity(hosts * rounds);
    let mut result = Ok(());
    for round in 0..rounds {
        let id = format!("change-{round}");
        let t0 = Instant::now();
        isolate(&*writer, "writer", &id, &["bench"])?;
        for _ in 0..hosts {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok((got, seen_at, applied_at)) if got == id => {
                    seen.push(seen_at - t0);
                    applied.push(applied_at - t0);
                }
                Ok((got, ..)) => {
                    result = Err(other(format!("expected {id}, a node applied {got}")));
                }
                Err(_) => result = Err(other(format!("{id} did not reach every node in 10 s"))),
            }
        }
        if result.is_err() {
            break;
        }
    }
    // Stop the simulated nodes.
    isolate(&*writer, "writer", "stop", &["bench"])?;
    drop(rx);
    for t in threads {
        let _ = t.join();
    }
    result?;
    seen.sort();
    applied.sort();
    Ok(FanOut { seen, applied })
}

/// Times from the start of the write, sorted.
struct FanOut {
    seen: Vec<Duration>,
    applied: Vec<Duration>,
}

/// Keys and bytes (key + value) added by `n` endpoints recorded on 4 hosts
/// in 2 netgroups each, through the real IPAM and registry.
fn footprint(addr: &str, n: usize) -> Result<(f64, f64), BenchError> {
    let store = netmod_store::open(addr)?;
    Ipam::new(&*store).add_pool(POOL.parse().expect("cidr"), None, 60)?;
    let count = |s: &dyn Store| -> Result<(usize, usize), BenchError> {
        let (kvs, _) = s.range("")?;
        Ok((
            kvs.len(),
            kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum(),
        ))
    };
    let (keys0, bytes0) = count(&*store)?;
    for i in 0..n {
        let groups = [["web", "public"], ["db", "web"]][i % 2];
        isolate(
            &*store,
            &format!("host{}", i % 4),
            &format!("task-{i:05}"),
            &groups,
        )?;
    }
    let (keys, bytes) = count(&*store)?;
    Ok((
        (keys - keys0) as f64 / n as f64,
        (bytes - bytes0) as f64 / n as f64,
    ))
}

/// etcd's bbolt bytes in use (with its revision history), from its /metrics.
fn etcd_db_in_use(endpoint: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(endpoint).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: {endpoint}\r\n\r\n").ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).ok()?;
    body.lines().find_map(|l| {
        l.strip_prefix("etcd_mvcc_db_total_size_in_use_in_bytes ")?
            .trim()
            .parse()
            .ok()
    })
}

/// What a short-lived plugin process pays before its first answer: open a
/// store and read one key (p50 of 30).
fn cold_start(addr: &str) -> Result<Duration, BenchError> {
    let mut times = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let s = netmod_store::open(addr)?;
        s.get("ipam/pools/none")?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(percentile(&times, 0.5))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "n/a".into()
    } else {
        format!("{:.2}x", a / b)
    }
}

type Sizes = BTreeMap<&'static str, ((f64, f64), Option<f64>)>;

fn report(
    endpoint: &str,
    allocs: &[(&str, usize, Allocs)],
    fan: &[(&str, usize, FanOut)],
    sizes: &Sizes,
    cold: &[(&str, Duration)],
) -> String {
    let find_alloc = |backend: &str, n: usize| {
        allocs
            .iter()
            .find(|(b, a, _)| *b == backend && *a == n)
            .map(|(_, _, r)| r)
            .expect("measured")
    };
    let find_fan = |backend: &str, n: usize| {
        fan.iter()
            .find(|(b, h, _)| *b == backend && *h == n)
            .map(|(_, _, l)| l.applied.as_slice())
            .expect("measured")
    };
    let mut rows = Vec::new();
    for n in [1, 4, 16] {
        let (e, s) = (find_alloc("etcd", n), find_alloc("sqlite", n));
        rows.push(Row {
            what: format!(
                "allocations/s, {n} allocator{} on {n} host{}",
                if n == 1 { "" } else { "s" },
                if n == 1 { "" } else { "s" }
            ),
            value: format!("{:.0}/s", e.per_sec()),
            baseline: format!("SQLite {:.0}/s", s.per_sec()),
            ratio: ratio(e.per_sec(), s.per_sec()),
        });
    }
    for hosts in [10, 100] {
        let (e, s) = (find_fan("etcd", hosts), find_fan("sqlite", hosts));
        for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
            let (pe, ps) = (percentile(e, p), percentile(s, p));
            rows.push(Row {
                what: format!("membership change applied on {hosts} other hosts, {name}"),
                value: ms(pe),
                baseline: format!("SQLite {}", ms(ps)),
                ratio: ratio(pe.as_secs_f64(), ps.as_secs_f64()),
            });
        }
    }
    let ((ek, eb), growth) = sizes["etcd"];
    let ((sk, sb), _) = sizes["sqlite"];
    rows.push(Row {
        what: "keys per endpoint".into(),
        value: format!("{ek:.2}"),
        baseline: format!("SQLite {sk:.2}"),
        ratio: ratio(ek, sk),
    });
    rows.push(Row {
        what: "bytes per endpoint (key + value)".into(),
        value: format!("{eb:.0} B"),
        baseline: format!("SQLite {sb:.0} B"),
        ratio: ratio(eb, sb),
    });
    if let Some(g) = growth {
        rows.push(Row {
            what: "etcd database growth per endpoint (bbolt, with history)".into(),
            value: format!("{:.0} B", g / ENDPOINTS as f64),
            baseline: "-".into(),
            ratio: format!("{} of key + value", ratio(g / ENDPOINTS as f64, eb)),
        });
    }
    let c = |b: &str| cold.iter().find(|(n, _)| *n == b).expect("measured").1;
    rows.push(Row {
        what: "open a store and answer one read (plugin cold start), p50".into(),
        value: ms(c("etcd")),
        baseline: format!("SQLite {}", ms(c("sqlite"))),
        ratio: ratio(c("etcd").as_secs_f64(), c("sqlite").as_secs_f64()),
    });

    let mut notes = format!(
        "netmod = the etcd backend: a single-member etcd {} started by the bench on \
         loopback ({endpoint}), data on disk in the temp directory (etcd fsyncs every \
         commit). Baseline = SQLite, one file on the same disk, shared by every \
         allocator and watcher of the run (one machine). Ratios are etcd / SQLite.\n\n",
        etcd_version()
    );
    notes += &format!(
        "**Allocations**: {ALLOCATIONS} one-address allocations per run from a fresh /16 \
         pool (/26 blocks); each allocator is a thread with its own store handle on a host \
         of its own; every address was checked to be held once.\n\n\
         | backend | allocators | allocations/s | p50 | p99 |\n|---|---:|---:|---:|---:|\n"
    );
    for (backend, n, r) in allocs {
        notes += &format!(
            "| {backend} | {n} | {:.0} | {} | {} |\n",
            r.per_sec(),
            ms(percentile(&r.latencies, 0.5)),
            ms(percentile(&r.latencies, 0.99))
        );
    }
    notes += &format!(
        "\n**Membership change**: a task joins netgroup `bench` on one host (IPAM \
         allocation + endpoint record, as `isolate` writes them); every other host is a \
         simulated node daemon (a thread with its own store handle and its own watch on \
         the cluster prefix, with a task of its own in `bench`) that folds the event into \
         its endpoint view and recomputes its desired ruleset and the diff, as `netmod \
         node` does before touching the kernel. Time from the start of the write to each \
         daemon having the diff (applied), and to its watch delivering the event (seen), \
         over {ROUNDS} changes. All the simulated hosts share this machine's {} cores, so \
         at 100 hosts the times include 100 recomputations queued on them and one etcd \
         sending 100 watch responses. SQLite's change feed polls every 10 ms.\n\n\
         | backend | hosts | seen p50 | seen p99 | applied p50 | applied p99 | applied max |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (backend, hosts, l) in fan {
        notes += &format!(
            "| {backend} | {hosts} | {} | {} | {} | {} | {} |\n",
            ms(percentile(&l.seen, 0.5)),
            ms(percentile(&l.seen, 0.99)),
            ms(percentile(&l.applied, 0.5)),
            ms(percentile(&l.applied, 0.99)),
            ms(l.applied.last().copied().unwrap_or_default())
        );
    }
    notes += &format!(
        "\n**Footprint**: {ENDPOINTS} endpoints (allocation + endpoint record, 2 netgroups \
         each) on 4 hosts; keys and bytes counted under the cluster's prefix after them, \
         less what the pool alone held. Per endpoint: its endpoint record, its address \
         index, one member key per netgroup, its IPAM handle; block records are shared by \
         64 addresses. etcd's own database also keeps every revision of every key \
         until compaction (the IPAM block record is rewritten on each allocation).\n"
    );
    render("etcd datastore benchmark", &notes, &rows)
}

fn etcd_version() -> String {
    std::process::Command::new(ETCD_BINARY)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.replace("etcd Version: ", ""))
        })
        .unwrap_or_default()
}
