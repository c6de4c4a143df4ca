//! Allocations per second on etcd with 1, 4 and 16 concurrent allocators,
//! each on a host of its own, against SQLite on one machine as the reference;
//! and what an allocation leaves in etcd (keys and bytes under the prefix).
//!
//! `cargo run --release -p netmod-ipam --example etcd_bench -- [ALLOCATIONS]`
//! Uses the etcd at `NETMOD_BENCH_ETCD` (HOST:PORT) if set, else starts one on
//! loopback with its data in the temp directory (on disk: etcd fsyncs every
//! commit, as in production). Prints markdown.

use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::AllocAttrs;
use netmod_store::etcd_server::EtcdServer;
use netmod_store::Store;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct Row {
    backend: &'static str,
    allocators: usize,
    allocations: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// `allocators` threads, each with its own store handle and host, share
/// `total` allocations from one fresh pool.
fn run(backend: &'static str, addr: &str, allocators: usize, total: usize) -> Row {
    let admin = netmod_store::open(addr).expect("open store");
    Ipam::new(&*admin)
        .add_pool("10.30.0.0/16".parse().unwrap(), None, 60)
        .expect("add pool");
    let barrier = Arc::new(Barrier::new(allocators + 1));
    let workers: Vec<_> = (0..allocators)
        .map(|a| {
            let (addr, barrier) = (addr.to_string(), barrier.clone());
            std::thread::spawn(move || {
                let store = netmod_store::open(&addr).expect("open store");
                let ipam = Ipam::new(&*store);
                barrier.wait();
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
                        ipam.allocate(&req).expect("allocate");
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut latencies: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("allocator"))
        .collect();
    let elapsed = start.elapsed();
    latencies.sort();
    Row {
        backend,
        allocators,
        allocations: latencies.len(),
        elapsed,
        latencies,
    }
}

/// Keys and bytes (key + value) a store holds after its allocations.
fn footprint(store: &dyn Store) -> (usize, usize) {
    let (kvs, _) = store.range("").expect("range");
    let bytes = kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
    (kvs.len(), bytes)
}

/// A membership change written once, seen by `watchers` simulated node
/// daemons, each with its own store handle and watch: the time from the
/// start of the write until each watcher has the event, over `rounds` changes.
fn fan_out(addr: &str, watchers: usize, rounds: usize) -> Vec<Duration> {
    let writer = netmod_store::open(addr).expect("open store");
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Instant)>();
    let ready = Arc::new(Barrier::new(watchers + 1));
    let threads: Vec<_> = (0..watchers)
        .map(|_| {
            let (addr, tx, ready) = (addr.to_string(), tx.clone(), ready.clone());
            std::thread::spawn(move || {
                let store = netmod_store::open(&addr).expect("open store");
                let mut last = store.revision().expect("revision");
                // Open the watch before the first change.
                store
                    .changes("members/", last, Duration::ZERO)
                    .expect("changes");
                ready.wait();
                loop {
                    for e in store
                        .changes("members/", last, Duration::from_secs(5))
                        .expect("changes")
                    {
                        last = e.revision();
                        let netmod_store::Event::Put(kv) = e else {
                            continue;
                        };
                        let round: usize =
                            String::from_utf8_lossy(&kv.value).parse().expect("round");
                        if round == usize::MAX || tx.send((round, Instant::now())).is_err() {
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    ready.wait();
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let t0 = Instant::now();
        writer
            .txn(
                &[],
                &[netmod_store::Op::put("members/host-x", round.to_string())],
            )
            .expect("write");
        for _ in 0..watchers {
            let (r, seen) = rx
                .recv_timeout(Duration::from_secs(10))
                .expect("every watcher sees the change");
            assert_eq!(r, round);
            latencies.push(seen - t0);
        }
    }
    writer
        .txn(
            &[],
            &[netmod_store::Op::put(
                "members/host-x",
                usize::MAX.to_string(),
            )],
        )
        .expect("write");
    for t in threads {
        t.join().expect("watcher");
    }
    latencies.sort();
    latencies
}

/// What a short-lived plugin process pays before its first answer.
fn cold_start(addr: &str) -> f64 {
    let mut times: Vec<Duration> = (0..30)
        .map(|_| {
            let t = Instant::now();
            let s = netmod_store::open(addr).expect("open store");
            s.get("ipam/pools/none").expect("get");
            t.elapsed()
        })
        .collect();
    times.sort();
    percentile(&times, 0.5)
}

fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("ALLOCATIONS is a number"))
        .unwrap_or(1600);
    let (_server, endpoint) = match std::env::var("NETMOD_BENCH_ETCD") {
        Ok(ep) if !ep.is_empty() => (None, ep),
        _ => {
            let server = EtcdServer::start(&std::env::temp_dir()).expect("start etcd");
            let ep = server.endpoint.clone();
            (Some(server), ep)
        }
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let run_id = std::process::id();
    let etcd_addr = |n: usize| format!("etcd://{endpoint}?prefix=/netmod-bench/{run_id}-{n}/");
    let sqlite_addr = |n: usize| dir.path().join(format!("b{n}.db")).display().to_string();

    let mut rows = Vec::new();
    let mut sizes = Vec::new();
    for (n, allocators) in [1, 4, 16].into_iter().enumerate() {
        for (backend, addr) in [("sqlite", sqlite_addr(n)), ("etcd", etcd_addr(n))] {
            let row = run(backend, &addr, allocators, total);
            if allocators == 16 {
                let store = netmod_store::open(&addr).expect("open store");
                sizes.push((backend, row.allocations, footprint(&*store)));
            }
            rows.push(row);
        }
    }

    println!("## IPAM on etcd\n");
    println!(
        "Each allocator is a thread with its own store handle, on a host of its own, \
         allocating one IPv4 address at a time from one /16 pool (/26 blocks). \
         etcd {} (single member, loopback, data on disk); SQLite file on the same disk.\n",
        endpoint
    );
    println!("| backend | allocators | allocations | seconds | allocations/s | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    rows.sort_by_key(|r| (r.backend != "sqlite", r.allocators));
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} |",
            r.backend,
            r.allocators,
            r.allocations,
            r.elapsed.as_secs_f64(),
            r.allocations as f64 / r.elapsed.as_secs_f64(),
            percentile(&r.latencies, 0.5),
            percentile(&r.latencies, 0.99),
        );
    }
    println!("\n### What the allocations leave in the store (16 allocators)\n");
    println!("| backend | allocations | keys | keys/allocation | bytes | bytes/allocation |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (backend, n, (keys, bytes)) in sizes {
        println!(
            "| {backend} | {n} | {keys} | {:.2} | {bytes} | {:.0} |",
            keys as f64 / n as f64,
            bytes as f64 / n as f64
        );
    }
    println!(
        "\nBytes are key + value under the cluster's prefix (etcd adds its own \
         per-revision history and bbolt overhead on top)."
    );
    println!("\n### A membership change reaching the other hosts' watches\n");
    println!(
        "One write; each simulated node daemon has its own store handle and watch. \
         Time from the start of the write to each watcher having the event, over 20 changes.\n"
    );
    println!("| backend | watchers | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for watchers in [10, 100] {
        for (backend, addr) in [
            ("sqlite", sqlite_addr(10)),
            ("etcd", etcd_addr(10 + watchers)),
        ] {
            let l = fan_out(&addr, watchers, 20);
            println!(
                "| {backend} | {watchers} | {:.2} | {:.2} | {:.2} |",
                percentile(&l, 0.5),
                percentile(&l, 0.99),
                l.last().unwrap().as_secs_f64() * 1e3
            );
        }
    }
    println!("\n### Cold start: open a store and answer one read (p50 of 30)\n");
    println!("| backend | ms |");
    println!("|---|---:|");
    println!("| sqlite | {:.2} |", cold_start(&sqlite_addr(0)));
    println!("| etcd | {:.2} |", cold_start(&etcd_addr(0)));
}
