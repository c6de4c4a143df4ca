//! `netmod node`: the per-host daemon. Announces the host under a lease,
//! resyncs the kernel with the datastore at start (removing leftovers it
//! recognises by name), then follows the change feed: netgroup sets complete
//! with members on every host, routes to the blocks of other live hosts.

use crate::registry::{Registry, ENDPOINTS, HOSTS};
use crate::CliError;
use ipnet::IpNet;
use netmod_dataplane as dp;
use netmod_ipam::Ipam;
use netmod_model::nft::Ruleset;
use netmod_model::{is_host_iface_name, Endpoint, Host, HOST_IFACE_PREFIX};
use netmod_store::{Revision, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// This host's name, as the cluster manager calls it.
    #[arg(long, required_unless_present = "uninstall")]
    pub hostname: Option<String>,
    /// The address other hosts route this host's blocks through.
    #[arg(long, required_unless_present = "uninstall")]
    pub host_ip: Option<IpAddr>,
    /// Where /healthz and /metrics listen (loopback).
    #[arg(long, default_value = "127.0.0.1:9190")]
    pub metrics_addr: String,
    /// Seconds the host record lives without a heartbeat.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Seconds between full desired-vs-actual checks.
    #[arg(long, default_value_t = 30)]
    pub resync_interval: u64,
    /// Remove everything netmod created on this host, then exit.
    #[arg(long)]
    pub uninstall: bool,
}

#[derive(Default)]
struct Metrics {
    ready: AtomicBool,
    /// The heartbeat reaches the datastore (it knows first when it does not).
    datastore_down: AtomicBool,
    endpoints: AtomicU64,
    sets: AtomicU64,
    elements: AtomicU64,
    routes: AtomicU64,
    last_apply_us: AtomicU64,
    applies: AtomicU64,
    apply_errors: AtomicU64,
    resyncs: AtomicU64,
}

impl Metrics {
    fn render(&self) -> String {
        let g = |name: &str, help: &str, kind: &str, v: u64| {
            format!("# HELP netmod_{name} {help}\n# TYPE netmod_{name} {kind}\nnetmod_{name} {v}\n")
        };
        [
            g("endpoints", "Local endpoints.", "gauge", self.endpoints.load(Ordering::Relaxed)),
            g("nft_sets", "Sets in the netmod table.", "gauge", self.sets.load(Ordering::Relaxed)),
            g("nft_set_elements", "Elements in all netmod sets.", "gauge", self.elements.load(Ordering::Relaxed)),
            g("routes", "Routes to other hosts.", "gauge", self.routes.load(Ordering::Relaxed)),
            format!(
                "# HELP netmod_last_apply_seconds Duration of the last dataplane update.\n# TYPE netmod_last_apply_seconds gauge\nnetmod_last_apply_seconds {:.6}\n",
                self.last_apply_us.load(Ordering::Relaxed) as f64 / 1e6
            ),
            g("applies_total", "Dataplane updates applied.", "counter", self.applies.load(Ordering::Relaxed)),
            g("apply_errors_total", "Dataplane updates that failed.", "counter", self.apply_errors.load(Ordering::Relaxed)),
            g("resyncs_total", "Full resyncs.", "counter", self.resyncs.load(Ordering::Relaxed)),
            g(
                "datastore_up",
                "1 while the heartbeat reaches the datastore.",
                "gauge",
                u64::from(!self.datastore_down.load(Ordering::Relaxed)),
            ),
        ]
        .concat()
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("netmod node: {msg}");
}

pub fn run(store_flag: Option<&str>, args: NodeArgs) -> Result<(), CliError> {
    if args.uninstall {
        return uninstall();
    }
    let hostname = args.hostname.clone().expect("required by clap");
    let host_ip = args.host_ip.expect("required by clap");
    let store: Arc<dyn Store> = crate::open(store_flag)?.into();
    let metrics = Arc::new(Metrics::default());
    serve_metrics(&args.metrics_addr, metrics.clone())?;
    let host = Host {
        name: hostname.clone(),
        ip: host_ip,
        ipv6: None,
    };
    let lease_ttl = Duration::from_secs(args.lease_ttl.max(2));
    spawn_heartbeat(store.clone(), host, lease_ttl, metrics.clone());

    let mut node = Node {
        hostname,
        store,
        metrics,
        applied: None,
        endpoints: BTreeMap::new(),
        hosts: BTreeMap::new(),
        revision: 0,
    };
    let resync_every = Duration::from_secs(args.resync_interval.max(1));
    loop {
        if let Err(e) = node.resync() {
            log(format!("resync failed, retrying in 1 s: {e}"));
            node.metrics.apply_errors.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        node.metrics.ready.store(true, Ordering::Relaxed);
        let last_full = Instant::now();
        loop {
            match node.follow(Duration::from_millis(500)) {
                Ok(()) => {}
                Err(StoreError::Compacted { .. }) => {
                    log("change feed compacted behind us: full resync");
                    break;
                }
                Err(e) => {
                    log(format!("datastore: {e}; the dataplane stays as it is"));
                    node.metrics.apply_errors.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_secs(1));
                    break;
                }
            }
            if last_full.elapsed() >= resync_every {
                break;
            }
        }
    }
}

struct Node {
    hostname: String,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// What we last put in the kernel (None: unknown, replace everything).
    applied: Option<Ruleset>,
    endpoints: BTreeMap<String, Endpoint>,
    hosts: BTreeMap<String, Host>,
    revision: Revision,
}

impl Node {
    /// Read everything, compare with the kernel, fix what differs.
    fn resync(&mut self) -> Result<(), CliError> {
        let started = Instant::now();
        // Links before records: attach records an endpoint before it plugs
        // the interface, so every link listed here has its record below.
        let links = dp::list_links_with_prefix(HOST_IFACE_PREFIX).map_err(dp_err)?;
        let (kvs, rev) = self.store.range(ENDPOINTS)?;
        self.endpoints = kvs
            .iter()
            .map(|kv| netmod_store::decode(kv).map(|e| (kv.key.clone(), e)))
            .collect::<Result<_, _>>()?;
        self.hosts = Registry::new(&*self.store).hosts()?;
        self.revision = rev;
        self.metrics.resyncs.fetch_add(1, Ordering::Relaxed);
        // Interfaces with our prefix and no endpoint are leftovers of a crash.
        let mine: BTreeSet<String> = self.local().map(|e| e.iface.clone()).collect();
        for link in links {
            if is_host_iface_name(&link.name) && !mine.contains(&link.name) {
                log(format!("removing leftover interface {}", link.name));
                dp::unplug(&link.name).map_err(dp_err)?;
            }
        }
        let desired = self.desired();
        // The first resync after start installs the whole table: sets of
        // netgroups that left this host while no node ran would otherwise
        // linger with stale members. (Atomic; established flows keep going.)
        let actual = if self.applied.is_none() {
            None
        } else {
            self.actual(&desired)?
        };
        match actual {
            Some(actual) => {
                let changes = netmod_policy::diff(&actual, &desired);
                if !changes.is_empty() {
                    log(format!(
                        "resync: {} change(s) to the netmod table",
                        changes.len()
                    ));
                    dp::nft_apply(&changes).map_err(dp_err)?;
                }
            }
            None => {
                log("resync: installing the netmod table");
                dp::nft_replace_all(&desired).map_err(dp_err)?;
            }
        }
        self.applied = Some(desired);
        self.sync_routes()?;
        self.record_apply(started);
        Ok(())
    }

    /// The kernel's sets, if the table has every set we want (None otherwise).
    fn actual(&self, desired: &Ruleset) -> Result<Option<Ruleset>, CliError> {
        if !dp::nft_table_exists().map_err(dp_err)? {
            return Ok(None);
        }
        let mut actual = Ruleset {
            chains: desired.chains.clone(),
            sets: BTreeMap::new(),
        };
        for (name, set) in &desired.sets {
            if !dp::nft_set_exists(name).map_err(dp_err)? {
                return Ok(None);
            }
            let mut have = set.clone();
            have.elements = dp::nft_list_set_elements(name, set.family).map_err(dp_err)?;
            actual.sets.insert(name.clone(), have);
        }
        Ok(Some(actual))
    }

    fn local(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values().filter(|e| e.host == self.hostname)
    }

    /// Endpoints that count: ours, and those of hosts that are alive.
    fn live_endpoints(&self) -> Vec<Endpoint> {
        self.endpoints
            .values()
            .filter(|e| e.host == self.hostname || self.hosts.contains_key(&e.host))
            .cloned()
            .collect()
    }

    fn desired(&self) -> Ruleset {
        netmod_policy::ruleset(&self.hostname, &self.live_endpoints())
    }

    /// Apply the changes since the last revision seen.
    fn follow(&mut self, wait: Duration) -> Result<(), StoreError> {
        let events = self.store.changes("", self.revision, wait)?;
        if events.is_empty() {
            return Ok(());
        }
        let mut relevant = false;
        for ev in &events {
            self.revision = self.revision.max(ev.revision());
            let key = ev.key();
            if key.starts_with(ENDPOINTS) {
                relevant = true;
                match ev {
                    netmod_store::Event::Put(kv) => {
                        if let Ok(e) = netmod_store::decode::<Endpoint>(kv) {
                            self.endpoints.insert(key.to_string(), e);
                        }
                    }
                    netmod_store::Event::Delete { .. } => {
                        self.endpoints.remove(key);
                    }
                }
            } else if key.starts_with(HOSTS) || key.starts_with("ipam/affinity") {
                relevant = true;
                if key.starts_with(HOSTS) {
                    self.hosts = Registry::new(&*self.store).hosts()?;
                }
            }
        }
        if relevant {
            let started = Instant::now();
            if let Err(e) = self.apply_increment() {
                log(format!("apply failed, full resync next: {e}"));
                self.metrics.apply_errors.fetch_add(1, Ordering::Relaxed);
                self.applied = None;
                return Err(StoreError::Compacted {
                    requested: self.revision,
                    compacted: self.revision,
                });
            }
            self.record_apply(started);
        }
        Ok(())
    }

    fn apply_increment(&mut self) -> Result<(), CliError> {
        let desired = self.desired();
        match &self.applied {
            Some(applied) => {
                let changes = netmod_policy::diff(applied, &desired);
                match dp::nft_apply(&changes) {
                    Ok(()) => {}
                    // A plugin on this host created a netgroup set first (it
                    // does so before replying to isolate): diff against what
                    // the kernel really holds instead.
                    Err(e) if e.is_already_exists() => match self.actual(&desired)? {
                        Some(actual) => dp::nft_apply(&netmod_policy::diff(&actual, &desired))
                            .map_err(dp_err)?,
                        None => dp::nft_replace_all(&desired).map_err(dp_err)?,
                    },
                    Err(e) => return Err(dp_err(e)),
                }
            }
            None => dp::nft_replace_all(&desired).map_err(dp_err)?,
        }
        self.applied = Some(desired);
        self.sync_routes()
    }

    /// Routes to every other live host's blocks, and /32s for their endpoints
    /// whose address lies outside those blocks (borrowed or asked by value).
    fn sync_routes(&mut self) -> Result<(), CliError> {
        let ipam = Ipam::new(&*self.store);
        let mut want: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
        let mut blocks_of: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();
        for (name, host) in &self.hosts {
            if *name == self.hostname {
                continue;
            }
            let blocks = ipam.host_blocks(name)?;
            for b in &blocks {
                // A block is routed through the host's address of its own family.
                let via = match b {
                    IpNet::V4(_) if host.ip.is_ipv4() => Some(host.ip),
                    IpNet::V6(_) => host.ipv6.or(Some(host.ip).filter(IpAddr::is_ipv6)),
                    _ => None,
                };
                if let Some(via) = via {
                    want.insert(*b, via);
                }
            }
            blocks_of.insert(name, blocks);
        }
        for ep in self.endpoints.values() {
            let Some(blocks) = blocks_of.get(ep.host.as_str()) else {
                continue;
            };
            let via = self.hosts[&ep.host].ip;
            for a in ep.addrs() {
                if !blocks.iter().any(|b| b.contains(&a)) && a.is_ipv4() == via.is_ipv4() {
                    want.insert(IpNet::from(a), via);
                }
            }
        }
        let have: BTreeMap<IpNet, IpAddr> = dp::list_routes()
            .map_err(dp_err)?
            .into_iter()
            .filter_map(|r| r.via.map(|v| (r.dst, v)))
            .collect();
        for (dst, via) in &want {
            if have.get(dst) != Some(via) {
                dp::add_route(*dst, *via).map_err(dp_err)?;
            }
        }
        for dst in have.keys() {
            if !want.contains_key(dst) {
                dp::del_route(*dst).map_err(dp_err)?;
            }
        }
        self.metrics
            .routes
            .store(want.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn record_apply(&self, started: Instant) {
        let m = &self.metrics;
        m.last_apply_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        m.applies.fetch_add(1, Ordering::Relaxed);
        m.endpoints
            .store(self.local().count() as u64, Ordering::Relaxed);
        if let Some(rs) = &self.applied {
            m.sets.store(rs.sets.len() as u64, Ordering::Relaxed);
            m.elements.store(
                rs.sets.values().map(|s| s.elements.len() as u64).sum(),
                Ordering::Relaxed,
            );
        }
    }
}

fn dp_err(e: dp::Error) -> CliError {
    CliError::Other(format!("dataplane: {e}"))
}

/// Keep the host record alive; re-register if the lease was lost (e.g. after
/// the datastore was unreachable for longer than the TTL).
fn spawn_heartbeat(store: Arc<dyn Store>, host: Host, ttl: Duration, metrics: Arc<Metrics>) {
    std::thread::spawn(move || {
        let mut lease = None;
        loop {
            let ok = match lease {
                Some(id) => store.lease_keepalive(id).is_ok(),
                None => false,
            };
            if !ok {
                lease = store
                    .lease_grant(ttl)
                    .and_then(|id| Registry::new(&*store).register_host(&host, id).map(|_| id))
                    .map_err(|e| log(format!("cannot register host {}: {e}", host.name)))
                    .ok();
            }
            let down = lease.is_none();
            if metrics.datastore_down.swap(down, Ordering::Relaxed) != down {
                log(if down {
                    "datastore unreachable: the dataplane stays as it is; new work is refused"
                } else {
                    "datastore reachable again"
                });
            }
            std::thread::sleep(ttl / 3);
        }
    });
}

fn serve_metrics(addr: &str, metrics: Arc<Metrics>) -> Result<(), CliError> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| CliError::Other(format!("cannot listen on {addr} for /metrics: {e}")))?;
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let (code, body) = match req.url() {
                "/healthz" if !metrics.ready.load(Ordering::Relaxed) => {
                    (503, "starting: first resync not done\n".to_string())
                }
                "/healthz" if metrics.datastore_down.load(Ordering::Relaxed) => (
                    503,
                    "datastore unreachable: dataplane kept as it is, changes not followed\n"
                        .to_string(),
                ),
                "/healthz" => (200, "ok\n".to_string()),
                "/metrics" => (200, metrics.render()),
                _ => (404, "not found\n".to_string()),
            };
            let _ = req.respond(tiny_http::Response::from_string(body).with_status_code(code));
        }
    });
    Ok(())
}

/// Remove every object netmod created on this host: the table, the
/// interfaces with our prefix, the routes with our protocol number.
fn uninstall() -> Result<(), CliError> {
    let table = dp::nft_delete_table().map_err(dp_err)?;
    let mut links = 0;
    for link in dp::list_links_with_prefix(HOST_IFACE_PREFIX).map_err(dp_err)? {
        if !is_host_iface_name(&link.name) {
            continue;
        }
        dp::unplug(&link.name).map_err(dp_err)?;
        links += 1;
    }
    let routes = dp::del_routes_not_in(&BTreeSet::new()).map_err(dp_err)?;
    println!(
        "removed: {} table, {links} interface(s), {} route(s)",
        if table { "the netmod" } else { "no" },
        routes.len()
    );
    Ok(())
}
