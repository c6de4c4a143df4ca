//! The benchmark's own little world: fake hosts are network namespaces on a
//! bridge that lives in a namespace of its own (as in the integration tests);
//! containers are fresh network namespaces with a process in them.
//!
//! Everything is named `nmbench-<pid>-*` and removed on drop. Namespaces left
//! by a benchmark run that died (its pid is gone) are removed at start.

use crate::BenchError;
use netmod_core::registry::Registry;
use netmod_dataplane as dp;
use netmod_model::nft::{Match, Ruleset};
use netmod_model::{container_mac, format_mac, host_iface_name, Endpoint};
use netmod_policy::CHAIN_NETGROUPS;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fabric's /24 (inside the fabric namespace only): the bridge is `.254`,
/// fake hosts are `.1`, `.2`, ...; `.101`... serve as addresses of hosts that
/// exist only as records.
pub const FABRIC: [u8; 3] = [10, 251, 0];
/// Addresses of synthetic endpoints: records and set elements only, never
/// routed anywhere (`10.160.0.0/12`).
const SYNTHETIC_BASE: u32 = u32::from_be_bytes([10, 160, 0, 0]);

pub fn other(e: impl std::fmt::Display) -> BenchError {
    BenchError::Other(e.to_string())
}

pub fn fabric_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(FABRIC[0], FABRIC[1], FABRIC[2], last)
}

/// The second subnet's /24, behind the fabric namespace as a router (only
/// with [`Fabric::second_subnet`]); its router address is `.254`.
pub const SECOND: [u8; 3] = [10, 251, 1];

pub fn second_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(SECOND[0], SECOND[1], SECOND[2], last)
}

/// Runs a setup command (not timed) and returns its stdout.
pub fn run_cmd(prog: &str, args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| other(format!("running {prog}: {e}")))?;
    if !out.status.success() {
        return Err(other(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, BenchError> {
    run_cmd("ip", args)
}

/// Runs `f` on a dedicated thread inside the namespace at `path`. Processes
/// spawned by `f` start inside that namespace too (a child inherits the
/// namespaces of the thread that forks it), with no `ip netns exec` or
/// `nsenter` in between.
pub fn in_ns<T, F>(path: &Path, f: F) -> Result<T, BenchError>
where
    F: FnOnce() -> Result<T, BenchError> + Send,
    T: Send,
{
    dp::in_netns(path, f).map_err(|e| other(format!("entering {}: {e}", path.display())))?
}

/// Child processes killed (and reaped) on drop.
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

impl Procs {
    pub fn pid(&self, i: usize) -> u32 {
        self.0[i].id()
    }
    pub fn netns(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid(i)))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// `n` containers: each a fresh network namespace with a process in it. The
/// process ends by itself after 15 minutes should this run be killed.
pub fn containers(n: usize) -> Result<Procs, BenchError> {
    let mut procs = Procs::default();
    for _ in 0..n {
        let child = Command::new("unshare")
            .args(["--net", "--", "sleep", "900"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| other(format!("starting a container process (unshare): {e}")))?;
        procs.0.push(child);
    }
    // The pid becomes `sleep` once unshare has made the new namespace.
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in &procs.0 {
        let exe = PathBuf::from(format!("/proc/{}/exe", c.id()));
        while !std::fs::read_link(&exe).is_ok_and(|p| p.to_string_lossy().ends_with("sleep")) {
            if Instant::now() > deadline {
                return Err(other("container processes did not start within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(procs)
}

/// A fake host: a namespace on the fabric bridge with a default route
/// through it (proxy ARP for the containers' gateway needs one).
pub struct HostNs {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

impl HostNs {
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.ns)
    }
}

pub struct Fabric {
    pub prefix: String,
    fab: String,
    /// Every namespace this run created, in creation order.
    namespaces: Vec<String>,
    /// Long-running processes (servers, daemons), killed before the namespaces go.
    pub procs: Procs,
    hosts: u8,
}

impl Fabric {
    pub fn new() -> Result<Fabric, BenchError> {
        sweep_stale();
        let prefix = format!("nmbench-{}", std::process::id());
        let fab = format!("{prefix}-fab");
        let mut f = Fabric {
            prefix,
            fab: fab.clone(),
            namespaces: Vec::new(),
            procs: Procs::default(),
            hosts: 0,
        };
        f.add_ns(&fab)?;
        let gw = format!("{}/24", fabric_ip(254));
        ip(&["-n", &fab, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &fab, "addr", "add", &gw, "dev", "br0"])?;
        ip(&["-n", &fab, "link", "set", "br0", "up"])?;
        ip(&["-n", &fab, "link", "set", "lo", "up"])?;
        Ok(f)
    }

    fn add_ns(&mut self, ns: &str) -> Result<(), BenchError> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        Ok(())
    }

    /// A new fake host called `name` (at most 15 bytes: it names its port on the bridge).
    pub fn host(&mut self, name: &str) -> Result<HostNs, BenchError> {
        self.host_on(name, false)
    }

    /// The fabric namespace becomes a router between the first subnet and a
    /// second one ([`SECOND`], on bridge `br1`): it forwards between them and
    /// holds no route to any pool.
    pub fn second_subnet(&mut self) -> Result<(), BenchError> {
        let fab = self.fab.clone();
        let gw = format!("{}/24", second_ip(254));
        ip(&["-n", &fab, "link", "add", "br1", "type", "bridge"])?;
        ip(&["-n", &fab, "addr", "add", &gw, "dev", "br1"])?;
        ip(&["-n", &fab, "link", "set", "br1", "up"])?;
        run_cmd(
            "ip",
            &[
                "netns",
                "exec",
                &fab,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        )?;
        Ok(())
    }

    /// The fabric namespace's name (the router with [`Fabric::second_subnet`]).
    pub fn fab_ns(&self) -> &str {
        &self.fab
    }

    /// A new fake host on the first subnet, or (`second`) on the second one
    /// behind the router; its default route goes through the fabric namespace.
    pub fn host_on(&mut self, name: &str, second: bool) -> Result<HostNs, BenchError> {
        if self.hosts >= 250 {
            return Err(other("a fabric holds at most 250 fake hosts"));
        }
        self.hosts += 1;
        let ns = format!("{}-{name}", self.prefix);
        let (addr, gw, bridge) = if second {
            (second_ip(self.hosts), second_ip(254), "br1")
        } else {
            (fabric_ip(self.hosts), fabric_ip(254), "br0")
        };
        self.add_ns(&ns)?;
        let fab = self.fab.clone();
        ip(&[
            "-n", &fab, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &fab, "link", "set", name, "master", bridge, "up"])?;
        let cidr = format!("{addr}/24");
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        let gw = gw.to_string();
        ip(&["-n", &ns, "route", "add", "default", "via", &gw])?;
        Ok(HostNs {
            name: name.to_string(),
            ns,
            ip: addr,
        })
    }

    /// Namespaces of this run that still exist (empty after drop).
    pub fn leftovers(prefix: &str) -> Vec<String> {
        netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{prefix}-")))
            .collect()
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.procs = Procs::default(); // kills and reaps them
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn netns_list() -> Vec<String> {
    ip(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Remove `nmbench-<pid>-*` namespaces whose run is gone (killed midway).
fn sweep_stale() {
    for ns in netns_list() {
        let Some(rest) = ns.strip_prefix("nmbench-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("bench: removing namespace {ns} left by an earlier run");
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// The n-th synthetic address (records and set elements only).
pub fn synthetic_addr(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(SYNTHETIC_BASE + n as u32)
}

pub fn group(n: usize) -> String {
    format!("nmb{:02}", n % 50)
}

/// A synthetic endpoint record: what isolate would have recorded, without
/// an interface behind it.
pub fn synthetic_endpoint(host: &str, id: &str, addr: Ipv4Addr, group: &str) -> Endpoint {
    Endpoint {
        host: host.to_string(),
        container_id: id.to_string(),
        iface: host_iface_name(id, "eth0"),
        container_iface: "eth0".into(),
        mac: format_mac(&container_mac(id, "eth0")),
        ipv4: vec![addr],
        ipv6: Vec::new(),
        netgroups: vec![group.to_string()],
        labels: BTreeMap::new(),
        netns: String::new(),
        source: "bench".into(),
        handle: None,
    }
}

pub fn record(registry: &Registry, ep: &Endpoint) -> Result<(), BenchError> {
    registry
        .create_endpoint(ep)
        .map_err(|e| other(format!("recording synthetic endpoint: {e}")))
}

/// Loads `ruleset` into the current namespace's netmod table, ending in
/// exactly the state `nft_replace_all(ruleset)` gives: the base table in one
/// transaction, then each netgroup's sets and rules in transactions of a few
/// dozen messages. A table with policies goes with the base table (its
/// chains and selector sets) in that first transaction.
///
/// Why not one `nft_replace_all`: the kernel answers every message of a
/// batch with its own ack (about 0.7-1 KiB of receive buffer each), and
/// `nft_replace_all` enlarges the socket's receive buffer only for batches
/// above 128 KiB, so a batch of some 270+ small messages (100 endpoints in 50
/// netgroups is enough) fails with ENOBUFS on the default 208 KiB buffer.
pub fn load_table(ruleset: &Ruleset) -> Result<(), BenchError> {
    // Netgroup sets (those the netgroup rules name) come later; every other
    // set (the base sets, and a policy table's selector sets) goes with the
    // base table, whose chains use them.
    let group_sets: BTreeSet<String> = ruleset
        .chains
        .iter()
        .filter(|c| c.name == CHAIN_NETGROUPS)
        .flat_map(|c| &c.rules)
        .flat_map(|r| &r.matches)
        .filter_map(|m| match m {
            Match::SaddrIn { set, .. } | Match::DaddrIn { set, .. } => Some(set.clone()),
            _ => None,
        })
        .collect();
    let mut base = ruleset.clone();
    base.sets.retain(|name, _| !group_sets.contains(name));
    for chain in &mut base.chains {
        if chain.name == CHAIN_NETGROUPS {
            chain.rules.clear();
        }
    }
    dp::nft_replace_all(&base).map_err(|e| other(format!("loading the base table: {e}")))?;
    let changes = netmod_policy::diff(&base, ruleset);
    for chunk in changes.chunks(32) {
        dp::nft_apply(chunk).map_err(|e| other(format!("loading netgroup sets: {e}")))?;
    }
    Ok(())
}
