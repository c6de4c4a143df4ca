//! Crash trials: kill -9 at random moments inside isolate, cleanup, CNI ADD,
//! CNI DEL and the node's apply (while it follows changes, and during its
//! first resync), then act as the caller would and check that nothing is
//! lost or left behind.
//!
//! One fabric of two fake hosts on one SQLite store; each node runs with a
//! 1 s resync and a 3 s stale-record grace. Each trial:
//!
//! 1. runs the operation's process and SIGKILLs it after a delay drawn
//!    uniformly from [0, 1.5 × its typical duration] (measured first);
//! 2. reads the reply, if the process finished; looks at the store and the
//!    kernel right after the kill, to show whether the kill landed inside
//!    the operation (some of its effects are there, not all — or all of them
//!    but no reply);
//! 3. acts as the caller does: Mesos runs cleanup after a failed isolate and
//!    retries a lost cleanup, then releases; a CNI runtime runs DEL after a
//!    failed ADD and retries DEL until it succeeds. An address the caller
//!    was told it holds must be held (in the store, on the host, in the
//!    container);
//! 4. settles: an oracle written here checks the store (every allocation,
//!    endpoint record and index against the test's own model of which
//!    containers live, and every address in exactly one place), the kernel
//!    of each host (links `nmv*`, routes of protocol 110, every nftables set
//!    and element) must come to equal what the records imply, and
//!    `netmod ipam check` must find nothing.
//!
//! `NETMOD_CRASH_TRIALS` (default 40) sets the number of trials, spread
//! evenly over the six kinds; `NETMOD_CRASH_SEED` fixes the random seed;
//! `NETMOD_CRASH_REPORT` names a file for the counts (scripts/robustness.sh).

mod common;

use common::lab::*;
use common::*;
use netmod_model::{host_iface_name, Endpoint, Host};
use netmod_store::{SqliteStore, Store};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const POOL: &str = "10.97.0.0/16";
const NETWORK: &str = "crashnet";
const GROUPS: &[&str] = &["g1", "g2", "public"];
/// Live containers of one kind kept at most; older ones end normally.
const MAX_LIVE: usize = 5;

// ---------------------------------------------------------------------------
// Randomness: SplitMix64, seeded from the environment or the clock.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    /// Uniform in [0, max].
    fn delay(&mut self, max: Duration) -> Duration {
        let f = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        max.mul_f64(f)
    }
    fn groups(&mut self) -> Vec<String> {
        match self.below(6) {
            0 => Vec::new(),
            1 => vec!["g1".into(), "public".into()],
            n => vec![GROUPS[(n as usize) % GROUPS.len()].to_string()],
        }
    }
}

// ---------------------------------------------------------------------------
// The model: which containers the callers believe are running.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Mesos,
    Cni,
}

struct Live {
    door: Door,
    host: String,
    cid: String,
    handle: String,
    addr: Ipv4Addr,
    groups: Vec<String>,
    sandbox: Child,
    /// Never ended by a trial: keeps netgroup sets on both hosts non-empty.
    resident: bool,
}

impl Live {
    fn iface(&self) -> String {
        host_iface_name(&self.cid, "eth0")
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.sandbox.id() as i32, libc::SIGKILL) };
        let _ = self.sandbox.wait();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Isolate,
    Cleanup,
    CniAdd,
    CniDel,
    NodeFollow,
    NodeResync,
}

const KINDS: [Kind; 6] = [
    Kind::Isolate,
    Kind::Cleanup,
    Kind::CniAdd,
    Kind::CniDel,
    Kind::NodeFollow,
    Kind::NodeResync,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Isolate => "mesos isolate",
            Kind::Cleanup => "mesos cleanup",
            Kind::CniAdd => "CNI ADD",
            Kind::CniDel => "CNI DEL",
            Kind::NodeFollow => "node apply (following changes)",
            Kind::NodeResync => "node apply (first resync)",
        }
    }
}

#[derive(Default, Clone)]
struct Counts {
    trials: u64,
    /// The process finished and replied before the kill.
    completed: u64,
    /// Killed, with some of the operation's effects visible (or all of them
    /// and no reply): the kill landed inside the operation.
    inside: u64,
    /// Killed before any effect was visible.
    before: u64,
    /// Node trials: killed after everything was applied.
    after: u64,
    /// Retries the caller needed (cleanup / DEL again).
    retries: u64,
    /// The settle step: how long the kernel took to match (ms, summed / max).
    settle_ms_sum: u64,
    settle_ms_max: u64,
}

struct Crash {
    f: Fabric,
    rng: Rng,
    live: Vec<Live>,
    next_id: u64,
    counts: BTreeMap<Kind, Counts>,
    /// Typical (median) durations of each operation, measured unkilled.
    typical: BTreeMap<&'static str, Duration>,
    durations: BTreeMap<&'static str, Vec<Duration>>,
}

// ---------------------------------------------------------------------------
// Processes.

/// What a finished (or killed) process left: its status and stdout.
struct Outcome {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    elapsed: Duration,
}

impl Outcome {
    fn killed(&self) -> bool {
        self.status.signal() == Some(libc::SIGKILL)
    }
    fn ok(&self) -> bool {
        self.status.code() == Some(0)
    }
    fn reply(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or(Value::Null)
    }
    fn describe(&self) -> String {
        format!(
            "{} after {:?}: {} {}",
            self.status,
            self.elapsed,
            String::from_utf8_lossy(&self.stdout).trim(),
            String::from_utf8_lossy(&self.stderr).trim()
        )
    }
}

/// Run a child to its end, or SIGKILL it `kill_after` after it started.
fn finish(mut child: Child, started: Instant, kill_after: Option<Duration>) -> Outcome {
    if let Some(d) = kill_after {
        let left = d.saturating_sub(started.elapsed());
        std::thread::sleep(left);
        // SAFETY: kill(2) on our own child, not yet reaped (a zombie at worst).
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    }
    let out = wait(&mut child);
    Outcome {
        status: out.status,
        stdout: out.stdout,
        stderr: out.stderr,
        elapsed: started.elapsed(),
    }
}

impl Crash {
    fn ns(&self, host: &str) -> String {
        self.f.host(host).ns.clone()
    }

    /// `netmod mesos` on a host with this request, as the agent runs it.
    fn spawn_mesos(&self, host: &str, req: &Value) -> (Child, Instant) {
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), NETMOD, "--store"])
            .arg(&self.f.addr)
            .arg("mesos")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(req.to_string().as_bytes());
        drop(stdin);
        (child, started)
    }

    fn cni_conf(groups: &[String]) -> Value {
        json!({"cniVersion": "1.0.0", "name": NETWORK, "type": "netmod", "netgroups": groups})
    }

    /// `netmod` as a CNI plugin on a host, as a runtime runs it.
    fn spawn_cni(&self, host: &str, command: &str, live: &CniTarget) -> (Child, Instant) {
        let started = Instant::now();
        let netns = format!("/proc/{}/ns/net", live.pid);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(host), NETMOD])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &live.cid)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env("NETMOD_STORE", &self.f.addr)
            .env("NETMOD_HOSTNAME", host)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(Self::cni_conf(&live.groups).to_string().as_bytes());
        drop(stdin);
        (child, started)
    }

    fn mesos(&mut self, what: &'static str, host: &str, req: &Value) -> Outcome {
        let (child, started) = self.spawn_mesos(host, req);
        let out = finish(child, started, None);
        self.durations.entry(what).or_default().push(out.elapsed);
        out
    }

    fn cni(&mut self, what: &'static str, host: &str, command: &str, t: &CniTarget) -> Outcome {
        let (child, started) = self.spawn_cni(host, command, t);
        let out = finish(child, started, None);
        self.durations.entry(what).or_default().push(out.elapsed);
        out
    }

    fn kill_delay(&mut self, what: &str) -> Duration {
        let typical = self.typical[what];
        self.rng.delay(typical.mul_f64(1.5))
    }

    fn new_id(&mut self, what: &str) -> String {
        self.next_id += 1;
        format!("{}-{what}{}", self.f.prefix, self.next_id)
    }
}

/// What a CNI invocation names: the container and its namespace.
struct CniTarget {
    cid: String,
    pid: u32,
    groups: Vec<String>,
}

// ---------------------------------------------------------------------------
// Nodes: started with the flags these trials need.

fn spawn_node(f: &mut Fabric, i: usize) -> Instant {
    let h = &f.hosts[i];
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(f.node_log_path(&h.name))
        .unwrap();
    let started = Instant::now();
    let child = Command::new("ip")
        .args(["netns", "exec", &h.ns, NETMOD, "--store"])
        .arg(&f.addr)
        .args(["node", "--hostname", &h.name, "--host-ip", &h.ip])
        .args(["--lease-ttl", "3", "--resync-interval", "1"])
        .args(["--stale-record-grace", "3"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    f.hosts[i].node = Some(child);
    started
}

fn healthy(f: &Fabric, i: usize) -> bool {
    sh(&format!(
        "ip netns exec {} curl -sf -m 1 http://127.0.0.1:9190/healthz",
        f.hosts[i].ns
    ))
    .status
    .success()
}

/// Start a host's node and wait until its first resync is done.
fn start_node(f: &mut Fabric, i: usize) -> Duration {
    let started = spawn_node(f, i);
    let ok = wait_until(Duration::from_secs(20), || healthy(f, i));
    assert!(
        ok.is_some(),
        "node on {} not healthy after 20 s: {}",
        f.hosts[i].name,
        tail(&f.node_log(&f.hosts[i].name))
    );
    started.elapsed()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

// ---------------------------------------------------------------------------
// The store, read directly, and the oracle.

struct Records {
    endpoints: BTreeMap<String, Endpoint>,
    addrs: BTreeMap<String, String>,
    members: BTreeSet<String>,
    handles: BTreeMap<String, netmod_ipam::HandleRecord>,
    blocks: Vec<(String, netmod_ipam::Block)>,
    hosts: BTreeMap<String, Host>,
    affinity: BTreeSet<String>,
    other: Vec<String>,
}

fn read_records(path: &std::path::Path) -> Records {
    let store = SqliteStore::open_existing(path).expect("the store");
    let (kvs, _) = store.range("").expect("reading the store");
    let mut r = Records {
        endpoints: BTreeMap::new(),
        addrs: BTreeMap::new(),
        members: BTreeSet::new(),
        handles: BTreeMap::new(),
        blocks: Vec::new(),
        hosts: BTreeMap::new(),
        affinity: BTreeSet::new(),
        other: Vec::new(),
    };
    for kv in kvs {
        let text = || String::from_utf8(kv.value.clone()).expect("UTF-8 value");
        let k = kv.key.as_str();
        if k.starts_with("endpoints/") {
            r.endpoints
                .insert(k.to_string(), netmod_store::decode(&kv).expect("endpoint"));
        } else if let Some(a) = k.strip_prefix("addrs/") {
            r.addrs.insert(a.to_string(), text());
        } else if let Some(m) = k.strip_prefix("netgroups/") {
            r.members.insert(m.to_string());
        } else if let Some(h) = k.strip_prefix("ipam/handles/") {
            r.handles
                .insert(h.to_string(), netmod_store::decode(&kv).expect("handle"));
        } else if k.starts_with("ipam/blocks/") {
            r.blocks
                .push((k.to_string(), netmod_store::decode(&kv).expect("block")));
        } else if k.starts_with("hosts/") {
            let h: Host = netmod_store::decode(&kv).expect("host");
            r.hosts.insert(h.name.clone(), h);
        } else if k.starts_with("ipam/affinity/") || k.starts_with("ipam/affinity-full/") {
            r.affinity.insert(k.to_string());
        } else if !k.starts_with("ipam/pools/") {
            r.other.push(k.to_string());
        }
    }
    r
}

/// `endpoints/<host>/<container>/<iface>` with `%` and `/` escaped.
fn endpoint_key(host: &str, cid: &str, iface: &str) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('/', "%2F");
    format!("endpoints/{}/{}/{}", esc(host), esc(cid), esc(iface))
}

/// Blocks affine to each host, from the affinity keys.
fn host_blocks(r: &Records) -> BTreeMap<String, Vec<ipnet::IpNet>> {
    let mut out: BTreeMap<String, Vec<ipnet::IpNet>> = BTreeMap::new();
    for k in &r.affinity {
        let rest = k
            .strip_prefix("ipam/affinity-full/")
            .or_else(|| k.strip_prefix("ipam/affinity/"))
            .unwrap();
        let (host, cidr) = rest.rsplit_once('/').unwrap();
        out.entry(host.to_string())
            .or_default()
            .push(cidr.replacen('-', "/", 1).parse().unwrap());
    }
    out
}

/// The store agrees with itself and with the model. Every problem, in words.
fn store_problems(r: &Records, live: &[Live]) -> Vec<String> {
    let mut p = Vec::new();
    // Blocks: every held slot inside its block, held once.
    let mut held: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (key, b) in &r.blocks {
        let want_key = format!("ipam/blocks/{}", b.cidr.to_string().replace('/', "-"));
        if *key != want_key {
            p.push(format!("block {} under key {key}", b.cidr));
        }
        for (ord, h) in &b.slots {
            let a = netmod_ipam::nth(&b.cidr, *ord);
            if !b.cidr.contains(&a) {
                p.push(format!("slot {ord} of {} is outside it", b.cidr));
            }
            if b.quarantine.contains_key(ord) || b.released.contains_key(ord) {
                p.push(format!("{a} is both held by {h} and quarantined"));
            }
            if let Some(other) = held.insert(a, h.clone()) {
                p.push(format!("{a} held twice: {other} and {h}"));
            }
        }
        // Affinity: a block of a host has exactly one affinity key.
        if let Some(host) = &b.host {
            let esc = b.cidr.to_string().replace('/', "-");
            let n = [
                format!("ipam/affinity/{host}/{esc}"),
                format!("ipam/affinity-full/{host}/{esc}"),
            ]
            .iter()
            .filter(|k| r.affinity.contains(*k))
            .count();
            if n != 1 {
                p.push(format!("block {} of {host} has {n} affinity keys", b.cidr));
            }
        }
    }
    for k in &r.affinity {
        let rest = k
            .strip_prefix("ipam/affinity-full/")
            .or_else(|| k.strip_prefix("ipam/affinity/"))
            .unwrap();
        let (host, cidr) = rest.rsplit_once('/').unwrap();
        let ok = r.blocks.iter().any(|(_, b)| {
            b.host.as_deref() == Some(host) && b.cidr.to_string().replace('/', "-") == cidr
        });
        if !ok {
            p.push(format!("affinity key {k} names no block of {host}"));
        }
    }
    // Handles: exactly what the blocks say.
    let mut listed: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (h, rec) in &r.handles {
        if rec.handle != *h {
            p.push(format!("handle record {h} names {}", rec.handle));
        }
        if rec.addrs.is_empty() {
            p.push(format!("handle {h} holds nothing"));
        }
        for a in &rec.addrs {
            if let Some(other) = listed.insert(*a, h.clone()) {
                p.push(format!("{a} listed by two handles: {other} and {h}"));
            }
        }
    }
    if held != listed {
        p.push(format!(
            "blocks and handles disagree: held {held:?}, listed {listed:?}"
        ));
    }
    // Endpoints: indexed, held by their handle.
    let mut on_endpoint: BTreeMap<IpAddr, String> = BTreeMap::new();
    for (key, ep) in &r.endpoints {
        if *key != endpoint_key(&ep.host, &ep.container_id, &ep.container_iface) {
            p.push(format!("endpoint {} under key {key}", ep.container_id));
        }
        if ep.iface != host_iface_name(&ep.container_id, &ep.container_iface) {
            p.push(format!("endpoint {key} names interface {}", ep.iface));
        }
        for a in ep.addrs() {
            if let Some(other) = on_endpoint.insert(a, key.clone()) {
                p.push(format!("{a} on two endpoints: {other} and {key}"));
            }
            if r.addrs.get(&a.to_string()) != Some(key) {
                p.push(format!("addrs/{a} does not point at {key}"));
            }
            for g in &ep.netgroups {
                if !r.members.contains(&format!("{g}/{a}")) {
                    p.push(format!("netgroups/{g}/{a} missing for {key}"));
                }
            }
            match (&ep.handle, held.get(&a)) {
                (Some(h), Some(holder)) if h == holder => {}
                (h, holder) => p.push(format!("{a} of {key} (handle {h:?}) is held by {holder:?}")),
            }
        }
    }
    for (a, key) in &r.addrs {
        let ok = r
            .endpoints
            .get(key)
            .is_some_and(|ep| ep.addrs().any(|x| x.to_string() == *a));
        if !ok {
            p.push(format!("addrs/{a} points at {key}, which does not hold it"));
        }
    }
    for m in &r.members {
        let (g, a) = m.rsplit_once('/').unwrap();
        let ok = r.endpoints.values().any(|ep| {
            ep.netgroups.iter().any(|x| x == g) && ep.addrs().any(|x| x.to_string() == a)
        });
        if !ok {
            p.push(format!("netgroups/{m} has no endpoint"));
        }
    }
    // The model: exactly the live containers, each with its one address.
    let want_eps: BTreeSet<String> = live
        .iter()
        .map(|l| endpoint_key(&l.host, &l.cid, "eth0"))
        .collect();
    let have_eps: BTreeSet<String> = r.endpoints.keys().cloned().collect();
    if want_eps != have_eps {
        p.push(format!(
            "endpoint records {:?} but live containers {:?}",
            have_eps.difference(&want_eps).collect::<Vec<_>>(),
            want_eps.difference(&have_eps).collect::<Vec<_>>()
        ));
    }
    let want_handles: BTreeSet<&str> = live.iter().map(|l| l.handle.as_str()).collect();
    let have_handles: BTreeSet<&str> = r.handles.keys().map(String::as_str).collect();
    if want_handles != have_handles {
        p.push(format!(
            "allocations {:?} that no live container has; live containers without one: {:?}",
            have_handles.difference(&want_handles).collect::<Vec<_>>(),
            want_handles.difference(&have_handles).collect::<Vec<_>>()
        ));
    }
    for l in live {
        let key = endpoint_key(&l.host, &l.cid, "eth0");
        if let Some(ep) = r.endpoints.get(&key) {
            if ep.ipv4 != [l.addr] || !ep.ipv6.is_empty() {
                p.push(format!(
                    "{key} holds {:?}, the caller was told {}",
                    ep.ipv4, l.addr
                ));
            }
            let mut want = l.groups.clone();
            want.sort();
            let mut have = ep.netgroups.clone();
            have.sort();
            if want != have {
                p.push(format!("{key} is in {have:?}, asked for {want:?}"));
            }
        }
        if let Some(h) = r.handles.get(&l.handle) {
            if h.addrs != [IpAddr::V4(l.addr)] {
                p.push(format!("{} holds {:?}, not {}", l.handle, h.addrs, l.addr));
            }
        }
    }
    if !r.other.is_empty() {
        p.push(format!("unexpected keys: {:?}", r.other));
    }
    p
}

// ---------------------------------------------------------------------------
// The kernel, as it is and as the records say it must be.

#[derive(Debug, Clone, PartialEq, Eq)]
struct Kernel {
    links: BTreeSet<String>,
    /// (destination, "dev X" or "via Y").
    routes: BTreeSet<(String, String)>,
    /// Every set of the netmod table and its elements (absent: no table).
    sets: Option<BTreeMap<String, BTreeSet<String>>>,
}

fn kernel(ns: &str) -> Kernel {
    let links: Value =
        serde_json::from_str(&must(&format!("ip -n {ns} -j link show"))).unwrap_or(Value::Null);
    let links = links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("nmv"))
        .map(str::to_string)
        .collect();
    let routes: Value =
        serde_json::from_str(&must(&format!("ip -n {ns} -j -4 route show proto 110")))
            .unwrap_or(Value::Null);
    let routes = routes
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let dst = r["dst"].as_str().unwrap_or("?");
            let dst = if dst.contains('/') {
                dst.to_string()
            } else {
                format!("{dst}/32")
            };
            let how = match r["gateway"].as_str() {
                _ if r["type"] == "blackhole" => "blackhole".to_string(),
                Some(gw) => format!("via {gw}"),
                None => format!("dev {}", r["dev"].as_str().unwrap_or("?")),
            };
            (dst, how)
        })
        .collect();
    let out = sh(&format!("ip netns exec {ns} nft -j list table inet netmod"));
    let sets = out.status.success().then(|| {
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut sets = BTreeMap::new();
        for item in v["nftables"].as_array().into_iter().flatten() {
            if let Some(set) = item.get("set") {
                let elems = set["elem"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| match e.as_str() {
                        Some(s) => s.to_string(),
                        None => e.to_string(),
                    })
                    .collect();
                sets.insert(set["name"].as_str().unwrap_or("?").to_string(), elems);
            }
        }
        sets
    });
    Kernel {
        links,
        routes,
        sets,
    }
}

/// What host `host`'s kernel must hold, from the records alone: its own
/// endpoints' links and host routes, routes to every other live host's
/// blocks (and to their endpoints outside those blocks), and the netmod
/// table the policy derives from the endpoints of live hosts.
fn expected_kernel(r: &Records, host: &str) -> Kernel {
    let local: Vec<&Endpoint> = r.endpoints.values().filter(|e| e.host == host).collect();
    let links = local.iter().map(|e| e.iface.clone()).collect();
    let mut routes = BTreeSet::new();
    for e in &local {
        for a in &e.ipv4 {
            routes.insert((format!("{a}/32"), format!("dev {}", e.iface)));
        }
    }
    let blocks = host_blocks(r);
    // The host's own blocks are blackholed (their free addresses go nowhere).
    for b in blocks.get(host).into_iter().flatten() {
        if b.addr().is_ipv4() {
            routes.insert((b.to_string(), "blackhole".to_string()));
        }
    }
    for (name, h) in &r.hosts {
        if name == host || !h.ip.is_ipv4() {
            continue;
        }
        let theirs = blocks.get(name).cloned().unwrap_or_default();
        for b in theirs.iter().filter(|b| b.addr().is_ipv4()) {
            routes.insert((b.to_string(), format!("via {}", h.ip)));
        }
        for e in r.endpoints.values().filter(|e| e.host == *name) {
            for a in &e.ipv4 {
                if !theirs.iter().any(|b| b.contains(&IpAddr::V4(*a))) {
                    routes.insert((format!("{a}/32"), format!("via {}", h.ip)));
                }
            }
        }
    }
    let live: Vec<Endpoint> = r
        .endpoints
        .values()
        .filter(|e| e.host == host || r.hosts.contains_key(&e.host))
        .cloned()
        .collect();
    let ruleset = netmod_policy::ruleset(host, &live);
    let sets = ruleset
        .sets
        .values()
        .map(|s| {
            (
                s.name.clone(),
                s.elements.iter().map(IpAddr::to_string).collect(),
            )
        })
        .collect();
    Kernel {
        links,
        routes,
        sets: Some(sets),
    }
}

/// The membership sets' elements, from the netgroup semantics written out
/// here (independently of the policy crate): local grouped and public
/// endpoints, and every live member of each netgroup with a local member.
fn expected_members(r: &Records, host: &str) -> BTreeSet<(String, String)> {
    let mut want = BTreeSet::new();
    let local: Vec<&Endpoint> = r.endpoints.values().filter(|e| e.host == host).collect();
    for e in &local {
        for a in &e.ipv4 {
            if !e.netgroups.is_empty() {
                want.insert(("grouped_v4".to_string(), a.to_string()));
            }
            if e.netgroups.iter().any(|g| g == "public") {
                want.insert(("public_v4".to_string(), a.to_string()));
            }
        }
    }
    let groups: BTreeSet<&str> = local
        .iter()
        .flat_map(|e| e.netgroups.iter().map(String::as_str))
        .filter(|g| *g != "public")
        .collect();
    for e in r.endpoints.values() {
        if e.host != host && !r.hosts.contains_key(&e.host) {
            continue;
        }
        for g in e.netgroups.iter().filter(|g| groups.contains(g.as_str())) {
            for a in &e.ipv4 {
                want.insert((format!("g_{g}_v4"), a.to_string()));
            }
        }
    }
    want
}

fn members_of(k: &Kernel) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (name, elems) in k.sets.iter().flatten() {
        if is_membership_set(name) && name.ends_with("_v4") {
            for e in elems {
                out.insert((name.clone(), e.clone()));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Settling: the store is right, the kernel comes to match, ipam check agrees.

impl Crash {
    fn records(&self) -> Records {
        read_records(&self.f.store.path)
    }

    /// Returns how long the kernel took to match.
    fn settle(&mut self, kind: Kind, trial: u64, context: &str) -> Duration {
        let r = self.records();
        let problems = store_problems(&r, &self.live);
        assert!(
            problems.is_empty(),
            "trial {trial} ({}; {context}): the store is wrong:\n  {}",
            kind.name(),
            problems.join("\n  ")
        );
        let started = Instant::now();
        let hosts: Vec<String> = self.f.hosts.iter().map(|h| h.name.clone()).collect();
        let mut last = String::new();
        let converged = wait_until(Duration::from_secs(20), || {
            let r = self.records();
            for h in &hosts {
                let have = kernel(&self.ns(h));
                let want = expected_kernel(&r, h);
                if have != want {
                    last = format!("{h}: kernel {have:#?}\nrecords say {want:#?}");
                    return false;
                }
                let (hm, wm) = (members_of(&have), expected_members(&r, h));
                if hm != wm {
                    last = format!("{h}: members {hm:?}, the netgroups say {wm:?}");
                    return false;
                }
            }
            true
        });
        let Some(took) = converged else {
            panic!(
                "trial {trial} ({}; {context}): the kernel did not come to match the records in 20 s:\n{last}\nnode logs:\n{}",
                kind.name(),
                hosts
                    .iter()
                    .map(|h| format!("{h}: {}", tail(&self.f.node_log(h))))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        };
        let _ = started;
        for h in &hosts {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.ns(h), NETMOD, "--store"])
                .arg(&self.f.addr)
                .args(["ipam", "check", "--hostname", h])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "trial {trial} ({}; {context}): `netmod ipam check --hostname {h}` says:\n{}{}",
                kind.name(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        took
    }

    /// The caller was told `addr` is this container's: the store, the host
    /// and the container all say so.
    fn assert_held(&self, l: &Live, trial: u64, what: &str) {
        let r = self.records();
        let key = endpoint_key(&l.host, &l.cid, "eth0");
        let ep = r.endpoints.get(&key).unwrap_or_else(|| {
            panic!(
                "trial {trial} ({what}): the caller holds {} but {key} is gone",
                l.addr
            )
        });
        assert_eq!(ep.ipv4, [l.addr], "trial {trial} ({what}): {key}");
        let held = r.handles.get(&l.handle).map(|h| h.addrs.clone());
        assert_eq!(
            held,
            Some(vec![IpAddr::V4(l.addr)]),
            "trial {trial} ({what}): {} must hold {}",
            l.handle,
            l.addr
        );
        assert!(
            kernel(&self.ns(&l.host)).links.contains(&l.iface()),
            "trial {trial} ({what}): {} has no interface {}",
            l.cid,
            l.iface()
        );
        let inside = must(&format!(
            "nsenter --net=/proc/{}/ns/net ip -j -4 addr show dev eth0",
            l.sandbox.id()
        ));
        assert!(
            inside.contains(&format!("\"local\":\"{}\"", l.addr)),
            "trial {trial} ({what}): {} is not on eth0 in the container: {inside}",
            l.addr
        );
    }
}

// ---------------------------------------------------------------------------
// What a container's state looks like from outside, for "did the kill land
// inside the operation?".

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    allocation: bool,
    record: bool,
    link: bool,
    in_sets: bool,
}

impl Crash {
    fn seen(&self, host: &str, cid: &str, handle: &str, addr: Option<Ipv4Addr>) -> Seen {
        let r = self.records();
        let k = kernel(&self.ns(host));
        let in_sets = match addr {
            Some(a) => k
                .sets
                .iter()
                .flatten()
                .any(|(_, e)| e.contains(&a.to_string())),
            None => false,
        };
        Seen {
            allocation: r.handles.contains_key(handle),
            record: r.endpoints.contains_key(&endpoint_key(host, cid, "eth0")),
            link: k.links.contains(&host_iface_name(cid, "eth0")),
            in_sets,
        }
    }

    fn host_name(&mut self) -> String {
        let i = self.rng.below(self.f.hosts.len() as u64) as usize;
        self.f.hosts[i].name.clone()
    }

    fn pick_live(&mut self, door: Door, host: Option<&str>) -> Option<usize> {
        let candidates: Vec<usize> = self
            .live
            .iter()
            .enumerate()
            .filter(|(_, l)| l.door == door && !l.resident && host.is_none_or(|h| l.host == h))
            .map(|(i, _)| i)
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.below(candidates.len() as u64) as usize])
    }
}

// ---------------------------------------------------------------------------
// Normal (unkilled) operations: launching and ending containers.

impl Crash {
    fn allocate(&mut self, host: &str, uid: &str, groups: &[String]) -> Ipv4Addr {
        let out = self.mesos(
            "allocate",
            host,
            &json!({"command": "allocate", "args": {"hostname": host, "uid": uid,
                "num_ipv4": 1, "num_ipv6": 0, "netgroups": groups}}),
        );
        assert!(out.ok(), "allocate: {}", out.describe());
        out.reply()["ipv4"][0].as_str().unwrap().parse().unwrap()
    }

    fn isolate_request(
        host: &str,
        uid: &str,
        pid: u32,
        addr: Ipv4Addr,
        groups: &[String],
    ) -> Value {
        json!({"command": "isolate", "args": {"hostname": host, "container_id": uid,
            "pid": pid, "ipv4_addrs": [addr.to_string()], "netgroups": groups,
            "labels": {"task": uid}}})
    }

    fn launch_mesos(&mut self, host: &str, groups: Vec<String>, resident: bool) {
        let sandbox = self.f.sandbox(host);
        let uid = self.new_id("m");
        let addr = self.allocate(host, &uid, &groups);
        let req = Self::isolate_request(host, &uid, sandbox.id(), addr, &groups);
        let out = self.mesos("isolate", host, &req);
        assert!(out.ok(), "isolate: {}", out.describe());
        self.live.push(Live {
            door: Door::Mesos,
            host: host.into(),
            handle: uid.clone(),
            cid: uid,
            addr,
            groups,
            sandbox,
            resident,
        });
    }

    fn launch_cni(&mut self, host: &str, groups: Vec<String>) {
        let sandbox = self.f.sandbox(host);
        let cid = self.new_id("c");
        let t = CniTarget {
            cid: cid.clone(),
            pid: sandbox.id(),
            groups: groups.clone(),
        };
        let out = self.cni("CNI ADD", host, "ADD", &t);
        assert!(out.ok(), "CNI ADD: {}", out.describe());
        let addr = cni_addr(&out.reply()).expect("an address in the result");
        self.live.push(Live {
            door: Door::Cni,
            host: host.into(),
            handle: format!("cni/{NETWORK}/{cid}/eth0"),
            cid,
            addr,
            groups,
            sandbox,
            resident: false,
        });
    }

    /// End a live container as its caller does (release, then cleanup; or DEL).
    fn end(&mut self, i: usize) {
        let l = self.live.remove(i);
        match l.door {
            Door::Mesos => {
                let out = self.mesos(
                    "release",
                    &l.host,
                    &json!({"command": "release", "args": {"uid": l.handle}}),
                );
                assert!(out.ok(), "release: {}", out.describe());
                let out = self.mesos(
                    "cleanup",
                    &l.host,
                    &json!({"command": "cleanup", "args": {"hostname": l.host, "container_id": l.cid}}),
                );
                assert!(out.ok(), "cleanup: {}", out.describe());
            }
            Door::Cni => {
                let t = CniTarget {
                    cid: l.cid.clone(),
                    pid: l.sandbox.id(),
                    groups: l.groups.clone(),
                };
                let out = self.cni("CNI DEL", &l.host, "DEL", &t);
                assert!(out.ok(), "CNI DEL: {}", out.describe());
            }
        }
    }

    /// Keep at most MAX_LIVE containers of a door: end the oldest.
    fn trim(&mut self, door: Door) {
        while self
            .live
            .iter()
            .filter(|l| l.door == door && !l.resident)
            .count()
            > MAX_LIVE
        {
            let i = self
                .live
                .iter()
                .position(|l| l.door == door && !l.resident)
                .unwrap();
            self.end(i);
        }
    }
}

fn cni_addr(result: &Value) -> Option<Ipv4Addr> {
    let ip = result["ips"][0]["address"].as_str()?;
    ip.split('/').next()?.parse().ok()
}

// ---------------------------------------------------------------------------
// The trials.

impl Crash {
    fn trial(&mut self, kind: Kind, n: u64) {
        self.counts.entry(kind).or_default().trials += 1;
        let context = match kind {
            Kind::Isolate => self.trial_isolate(n),
            Kind::Cleanup => self.trial_cleanup(n),
            Kind::CniAdd => self.trial_cni_add(n),
            Kind::CniDel => self.trial_cni_del(n),
            Kind::NodeFollow => self.trial_node_follow(n),
            Kind::NodeResync => self.trial_node_resync(n),
        };
        let took = self.settle(kind, n, &context).as_millis() as u64;
        let c = self.counts.entry(kind).or_default();
        c.settle_ms_sum += took;
        c.settle_ms_max = c.settle_ms_max.max(took);
    }

    fn count(&mut self, kind: Kind, out: &Outcome, inside: bool) {
        let c = self.counts.entry(kind).or_default();
        if out.killed() {
            if inside {
                c.inside += 1;
            } else {
                c.before += 1;
            }
        } else {
            c.completed += 1;
        }
    }

    /// Mesos retries a cleanup that did not say it succeeded.
    fn cleanup_until_done(&mut self, kind: Kind, host: &str, cid: &str) {
        let req = json!({"command": "cleanup", "args": {"hostname": host, "container_id": cid}});
        for attempt in 0..5 {
            let out = self.mesos("cleanup", host, &req);
            if out.ok() {
                assert!(out.reply()["error"].is_null(), "{}", out.describe());
                return;
            }
            self.counts.entry(kind).or_default().retries += 1;
            eprintln!("cleanup attempt {attempt} failed: {}", out.describe());
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cleanup of {cid} never succeeded");
    }

    fn release_until_done(&mut self, host: &str, uid: &str) {
        let out = self.mesos(
            "release",
            host,
            &json!({"command": "release", "args": {"uid": uid}}),
        );
        assert!(out.ok(), "release {uid}: {}", out.describe());
    }

    /// A runtime retries DEL until it succeeds.
    fn del_until_done(&mut self, kind: Kind, host: &str, t: &CniTarget) {
        for attempt in 0..5 {
            let out = self.cni("CNI DEL", host, "DEL", t);
            if out.ok() {
                return;
            }
            self.counts.entry(kind).or_default().retries += 1;
            eprintln!("DEL attempt {attempt} failed: {}", out.describe());
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("DEL of {} never succeeded", t.cid);
    }

    fn trial_isolate(&mut self, n: u64) -> String {
        let host = self.host_name();
        let groups = self.rng.groups();
        let sandbox = self.f.sandbox(&host);
        let uid = self.new_id("m");
        let addr = self.allocate(&host, &uid, &groups);
        let req = Self::isolate_request(&host, &uid, sandbox.id(), addr, &groups);
        let delay = self.kill_delay("isolate");
        let (child, started) = self.spawn_mesos(&host, &req);
        let out = finish(child, started, Some(delay));
        let seen = self.seen(&host, &uid, &uid, Some(addr));
        // Whatever happened, the allocation the caller was told of stands.
        assert!(
            seen.allocation,
            "trial {n}: isolate killed after {delay:?} lost {uid}'s allocation of {addr}"
        );
        let effects = seen.record || seen.link || seen.in_sets;
        let inside = out.killed() && effects;
        self.count(Kind::Isolate, &out, inside);
        let live = Live {
            door: Door::Mesos,
            host: host.clone(),
            handle: uid.clone(),
            cid: uid.clone(),
            addr,
            groups,
            sandbox,
            resident: false,
        };
        if out.ok() {
            assert!(out.reply()["error"].is_null(), "{}", out.describe());
            self.assert_held(&live, n, "isolate replied");
            self.live.push(live);
            self.trim(Door::Mesos);
        } else {
            assert!(
                out.killed(),
                "trial {n}: isolate failed without a kill: {}",
                out.describe()
            );
            // The module saw isolate fail: the containerizer cleans up, then
            // the task's addresses are released.
            self.cleanup_until_done(Kind::Isolate, &host, &uid);
            self.release_until_done(&host, &uid);
            drop(live); // kills the sandbox
        }
        format!("kill after {delay:?}: {}; seen {seen:?}", out.status)
    }

    fn trial_cleanup(&mut self, n: u64) -> String {
        let i = match self.pick_live(Door::Mesos, None) {
            Some(i) => i,
            None => {
                let host = self.host_name();
                let groups = self.rng.groups();
                self.launch_mesos(&host, groups, false);
                self.live.len() - 1
            }
        };
        let l = self.live.remove(i);
        let release_first = self.rng.chance(0.5);
        if release_first {
            self.release_until_done(&l.host, &l.handle);
        }
        let pre = self.seen(&l.host, &l.cid, &l.handle, Some(l.addr));
        let rev0 = SqliteStore::open_existing(&self.f.store.path)
            .unwrap()
            .revision()
            .unwrap();
        let req =
            json!({"command": "cleanup", "args": {"hostname": l.host, "container_id": l.cid}});
        let delay = self.kill_delay("cleanup");
        let (child, started) = self.spawn_mesos(&l.host, &req);
        let out = finish(child, started, Some(delay));
        let seen = self.seen(&l.host, &l.cid, &l.handle, Some(l.addr));
        let inside = out.killed() && seen != pre;
        self.count(Kind::Cleanup, &out, inside);
        if out.ok() {
            assert!(out.reply()["error"].is_null(), "{}", out.describe());
        } else {
            assert!(
                out.killed(),
                "trial {n}: cleanup failed: {}",
                out.describe()
            );
            self.cleanup_until_done(Kind::Cleanup, &l.host, &l.cid);
        }
        if !release_first {
            self.release_until_done(&l.host, &l.handle);
        }
        let gone = self.seen(&l.host, &l.cid, &l.handle, Some(l.addr));
        assert!(
            !gone.allocation && !gone.record && !gone.link,
            "trial {n}: after cleanup and release {} is still there: {gone:?}",
            l.cid
        );
        // The address may go to another task only after every host has
        // applied the removal of this endpoint: its quarantine must count
        // from the record's deletion or later, not from an earlier release.
        let key = endpoint_key(&l.host, &l.cid, "eth0");
        let deleted = deleted_at(&self.f.store.path, &key, rev0)
            .unwrap_or_else(|| panic!("trial {n}: no deletion of {key} in the change feed"));
        let since = quarantined_since(&self.f.store.path, l.addr);
        if since.is_none_or(|r| r < deleted) {
            let msg = format!(
                "trial {n}: {} is in quarantine since revision {since:?}, before its endpoint \
                 record went at revision {deleted} (release first: {release_first}, cleanup \
                 {}, killed after {delay:?})",
                l.addr, out.status
            );
            panic!("{msg}");
        }
        format!(
            "release first: {release_first}; kill after {delay:?}: {}; before {pre:?}, after the kill {seen:?}",
            out.status
        )
    }

    fn trial_cni_add(&mut self, n: u64) -> String {
        let host = self.host_name();
        let groups = self.rng.groups();
        let sandbox = self.f.sandbox(&host);
        let cid = self.new_id("c");
        let handle = format!("cni/{NETWORK}/{cid}/eth0");
        let t = CniTarget {
            cid: cid.clone(),
            pid: sandbox.id(),
            groups: groups.clone(),
        };
        let delay = self.kill_delay("CNI ADD");
        let (child, started) = self.spawn_cni(&host, "ADD", &t);
        let out = finish(child, started, Some(delay));
        let seen = self.seen(&host, &cid, &handle, None);
        let inside = out.killed() && (seen.allocation || seen.record || seen.link);
        self.count(Kind::CniAdd, &out, inside);
        if out.ok() {
            let addr = cni_addr(&out.reply()).unwrap_or_else(|| {
                panic!(
                    "trial {n}: ADD succeeded without an address: {}",
                    out.describe()
                )
            });
            let live = Live {
                door: Door::Cni,
                host,
                cid,
                handle,
                addr,
                groups,
                sandbox,
                resident: false,
            };
            self.assert_held(&live, n, "ADD replied");
            self.live.push(live);
            self.trim(Door::Cni);
        } else {
            assert!(out.killed(), "trial {n}: ADD failed: {}", out.describe());
            self.del_until_done(Kind::CniAdd, &host, &t);
            let gone = self.seen(&host, &cid, &handle, None);
            assert!(
                !gone.allocation && !gone.record && !gone.link,
                "trial {n}: after DEL, {cid} is still there: {gone:?}"
            );
            let mut sandbox = sandbox;
            kill_child_ref(&mut sandbox);
        }
        format!("kill after {delay:?}: {}; seen {seen:?}", out.status)
    }

    fn trial_cni_del(&mut self, n: u64) -> String {
        let i = match self.pick_live(Door::Cni, None) {
            Some(i) => i,
            None => {
                let host = self.host_name();
                let groups = self.rng.groups();
                self.launch_cni(&host, groups);
                self.live.len() - 1
            }
        };
        let l = self.live.remove(i);
        let t = CniTarget {
            cid: l.cid.clone(),
            pid: l.sandbox.id(),
            groups: l.groups.clone(),
        };
        let pre = self.seen(&l.host, &l.cid, &l.handle, Some(l.addr));
        let delay = self.kill_delay("CNI DEL");
        let (child, started) = self.spawn_cni(&l.host, "DEL", &t);
        let out = finish(child, started, Some(delay));
        let seen = self.seen(&l.host, &l.cid, &l.handle, Some(l.addr));
        let inside = out.killed() && seen != pre;
        self.count(Kind::CniDel, &out, inside);
        if !out.ok() {
            assert!(out.killed(), "trial {n}: DEL failed: {}", out.describe());
            self.del_until_done(Kind::CniDel, &l.host, &t);
        }
        let gone = self.seen(&l.host, &l.cid, &l.handle, Some(l.addr));
        assert!(
            !gone.allocation && !gone.record && !gone.link,
            "trial {n}: after DEL, {} is still there: {gone:?}",
            l.cid
        );
        format!(
            "kill after {delay:?}: {}; before {pre:?}, after the kill {seen:?}",
            out.status
        )
    }

    /// Membership changes on one host: two containers join (one through
    /// each door), one leaves.
    fn churn(&mut self, host: &str) {
        let groups = vec!["g1".to_string()];
        self.launch_mesos(host, groups.clone(), false);
        self.launch_cni(host, groups);
        if let Some(i) = self.pick_live(Door::Mesos, Some(host)) {
            self.end(i);
        }
        self.trim(Door::Mesos);
        self.trim(Door::Cni);
    }

    /// Kill one host's node at a random moment while the other host's
    /// containers come and go; restart it. Inside: the kernel at the kill
    /// is neither as it was nor as it must end.
    fn trial_node_follow(&mut self, _n: u64) -> String {
        let victim = self.rng.below(2) as usize;
        let vhost = self.f.hosts[victim].name.clone();
        let other = self.f.hosts[1 - victim].name.clone();
        let ns = self.ns(&vhost);
        let pre = kernel(&ns);
        let pid = self.f.hosts[victim].node.as_ref().unwrap().id();
        let delay = self.kill_delay("churn");
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: kill(2) on our own child (the node), not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            // Nothing else changes this host's kernel while its node is dead.
            std::thread::sleep(Duration::from_millis(20));
            kernel(&ns)
        });
        let started = Instant::now();
        self.churn(&other);
        let churn_took = started.elapsed();
        let at_kill = killer.join().unwrap();
        self.f.kill_node(victim); // reap it
        let want = expected_kernel(&self.records(), &vhost);
        let c = self.counts.entry(Kind::NodeFollow).or_default();
        let landed = if at_kill == want {
            c.after += 1;
            "after everything was applied"
        } else if at_kill == pre {
            // Killed before it applied anything of this churn (possibly
            // with changes pending).
            c.before += 1;
            "before any change was applied"
        } else {
            c.inside += 1;
            "inside: some changes applied, not all"
        };
        start_node(&mut self.f, victim);
        format!(
            "node of {vhost} killed after {delay:?} of a {churn_took:?} churn on {other}: {landed}"
        )
    }

    /// Kill one host's node; while it is down, containers come and go on
    /// both hosts; start it and kill it again at a random moment of its
    /// first resync; start it for good. Inside: the kernel at the second
    /// kill is neither as it was nor as it must end.
    fn trial_node_resync(&mut self, n: u64) -> String {
        let _ = n;
        let victim = self.rng.below(2) as usize;
        let vhost = self.f.hosts[victim].name.clone();
        let other = self.f.hosts[1 - victim].name.clone();
        self.f.kill_node(victim);
        self.churn(&other);
        // A change on the node's own host too, made by the plugin alone.
        if self.rng.chance(0.5) {
            if let Some(i) = self.pick_live(Door::Cni, Some(&vhost)) {
                self.end(i);
            }
        } else {
            let groups = self.rng.groups();
            self.launch_cni(&vhost.clone(), groups);
            self.trim(Door::Cni);
        }
        let ns = self.ns(&vhost);
        self.make_leftovers(&ns);
        let pre = kernel(&ns);
        let delay = self.kill_delay("node start");
        let started = spawn_node(&mut self.f, victim);
        std::thread::sleep(delay.saturating_sub(started.elapsed()));
        self.f.kill_node(victim);
        let at_kill = kernel(&ns);
        let want = expected_kernel(&self.records(), &vhost);
        let c = self.counts.entry(Kind::NodeResync).or_default();
        let landed = if at_kill == want {
            c.after += 1;
            "after the resync"
        } else if at_kill == pre {
            c.before += 1;
            "before the resync changed anything"
        } else {
            c.inside += 1;
            "inside the resync"
        };
        start_node(&mut self.f, victim);
        format!("node of {vhost} killed {delay:?} into its start: {landed}")
    }
}

impl Crash {
    /// What a node finds after a crash or a reboot: interfaces of netmod's
    /// shape that no record names (a plug that outlived its record), and —
    /// two times in three — no netmod table and no routes to other hosts.
    /// Its first resync removes, installs and adds them one at a time.
    fn make_leftovers(&mut self, ns: &str) {
        let n = 10 + self.rng.below(20);
        let batch: String = (0..n)
            .map(|_| {
                let id = self.rng.next() & 0xfff_ffff_ffff;
                format!("link add nmv{id:011x} type veth peer name nml{id:011x}\n")
            })
            .collect();
        must(&format!("printf '{batch}' | ip -n {ns} -batch -"));
        if self.rng.below(3) < 2 {
            let _ = sh(&format!("ip netns exec {ns} nft delete table inet netmod"));
            let routes = kernel(ns).routes;
            for (dst, how) in routes {
                if how.starts_with("via ") {
                    must(&format!("ip -n {ns} route del {dst} proto 110"));
                }
            }
        }
    }
}

/// The revision at which `key` was deleted, after revision `after`.
fn deleted_at(path: &std::path::Path, key: &str, after: i64) -> Option<i64> {
    let store = SqliteStore::open_existing(path).unwrap();
    let events = store.changes(key, after, Duration::ZERO).unwrap();
    events.iter().rev().find_map(|e| match e {
        netmod_store::Event::Delete { key: k, revision } if k == key => Some(*revision),
        _ => None,
    })
}

/// The revision from which an address's quarantine counts (its release, or
/// the last restart of its quarantine); `None` when it is not in quarantine.
fn quarantined_since(path: &std::path::Path, addr: Ipv4Addr) -> Option<i64> {
    let store = SqliteStore::open_existing(path).unwrap();
    let (kvs, _) = store.range("ipam/blocks/").unwrap();
    let addr = IpAddr::V4(addr);
    kvs.iter().find_map(|kv| {
        let b: netmod_ipam::Block = netmod_store::decode(kv).unwrap();
        if !b.cidr.contains(&addr) {
            return None;
        }
        let ord = netmod_ipam::ordinal(&b.cidr, &addr);
        b.released
            .get(&ord)
            .map(|r| r.revision.unwrap_or(kv.mod_revision))
    })
}

fn kill_child_ref(c: &mut Child) {
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    let _ = c.wait();
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------

#[test]
fn kill_minus_nine_inside_every_operation_converges() {
    require_lab();
    let trials: u64 = std::env::var("NETMOD_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let seed: u64 = std::env::var("NETMOD_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash trials: {trials}, seed {seed} (NETMOD_CRASH_SEED={seed} repeats the draw)");
    let run_started = Instant::now();
    let f = Fabric::with_options(
        2,
        POOL,
        FabricOptions {
            resync_interval: 1,
            ..FabricOptions::default()
        },
    );
    let mut c = Crash {
        f,
        rng: Rng(seed),
        live: Vec::new(),
        next_id: 0,
        counts: BTreeMap::new(),
        typical: BTreeMap::new(),
        durations: BTreeMap::new(),
    };
    // Small blocks, so that containers coming and going claim new blocks
    // and the nodes' routes change too.
    let fab = c.f.fab_ns();
    for args in [
        vec!["pool", "rm", POOL],
        vec![
            "pool",
            "add",
            POOL,
            "--block-size",
            "29",
            "--quarantine",
            "1",
        ],
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", &fab, NETMOD, "--store", &c.f.addr])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The nodes, with the flags these trials need.
    for i in 0..c.f.hosts.len() {
        c.f.kill_node(i);
        start_node(&mut c.f, i);
    }
    // Residents: a g1 member on each host, so that each host's g1 set holds
    // members of the other.
    for h in ["h1", "h2"] {
        c.launch_mesos(h, vec!["g1".into()], true);
    }
    // Typical durations, unkilled.
    for _ in 0..3 {
        for h in ["h1", "h2"] {
            let g = c.rng.groups();
            c.launch_mesos(h, g.clone(), false);
            c.launch_cni(h, g);
        }
    }
    for _ in 0..2 {
        for door in [Door::Mesos, Door::Cni] {
            let i = c.pick_live(door, None).unwrap();
            c.end(i);
        }
    }
    let mut churns = Vec::new();
    for h in ["h1", "h2"] {
        let started = Instant::now();
        c.churn(h);
        churns.push(started.elapsed());
    }
    let mut starts = Vec::new();
    for _ in 0..2 {
        for i in 0..c.f.hosts.len() {
            c.f.kill_node(i);
            let ns = c.f.hosts[i].ns.clone();
            c.make_leftovers(&ns);
            starts.push(start_node(&mut c.f, i));
        }
    }
    for what in ["isolate", "cleanup", "CNI ADD", "CNI DEL"] {
        let d = median(&c.durations[what]);
        c.typical.insert(what, d);
    }
    c.typical.insert("churn", median(&churns));
    c.typical.insert("node start", median(&starts));
    eprintln!("typical durations: {:?}", c.typical);
    c.settle(Kind::Isolate, 0, "after the warm-up");

    for n in 1..=trials {
        let kind = KINDS[((n - 1) % KINDS.len() as u64) as usize];
        c.trial(kind, n);
        if n % 50 == 0 {
            eprintln!("{n} trials done in {:?}", run_started.elapsed());
        }
    }

    // End everything as the callers would, and check once more.
    while let Some(i) = c.live.iter().position(|l| !l.resident) {
        c.end(i);
    }
    c.settle(Kind::Isolate, trials + 1, "after ending every container");

    let mut report = format!(
        "trials {trials}\nseed {seed}\nelapsed_s {}\n",
        run_started.elapsed().as_secs()
    );
    for (what, d) in &c.typical {
        report.push_str(&format!("typical {what} {}\n", d.as_millis()));
    }
    let mut total = Counts::default();
    for kind in KINDS {
        let k = c.counts.get(&kind).cloned().unwrap_or_default();
        let mean = k.settle_ms_sum / k.trials.max(1);
        report.push_str(&format!(
            "kind {}|{}|{}|{}|{}|{}|{}|{}|{}\n",
            kind.name(),
            k.trials,
            k.inside,
            k.before,
            k.completed,
            k.after,
            k.retries,
            mean,
            k.settle_ms_max
        ));
        total.trials += k.trials;
        total.inside += k.inside;
        total.before += k.before;
        total.completed += k.completed;
        total.after += k.after;
    }
    report.push_str(&format!(
        "total {}|{}|{}|{}|{}\nfailures 0\n",
        total.trials, total.inside, total.before, total.completed, total.after
    ));
    eprintln!("{report}");
    if let Ok(path) = std::env::var("NETMOD_CRASH_REPORT") {
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    // The kills must land inside the operations in a good share of trials,
    // or these trials show little (about a third do; the bound leaves room
    // for chance in a short run).
    let share = if total.trials >= 200 { 5 } else { 10 };
    assert!(
        total.inside * share >= total.trials,
        "only {} of {} kills landed inside an operation",
        total.inside,
        total.trials
    );
}
