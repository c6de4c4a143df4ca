//! `netmod node`: the per-host daemon. Announces the host under a lease,
//! resyncs the kernel with the datastore at start (removing leftovers it
//! recognises by name), then follows the change feed: netgroup sets complete
//! with members on every host, routes to the blocks of other live hosts.

use crate::registry::{Registry as EndpointRegistry, ENDPOINTS, HOSTS};
use crate::CoreError;
use ipnet::IpNet;
use netmod_dataplane as dp;
use netmod_ipam::Ipam;
use netmod_model::nft::Ruleset;
use netmod_model::{is_host_iface_name, Endpoint, Host, HOST_IFACE_PREFIX};
use netmod_store::{Revision, Store, StoreError};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a node runs: what the CLI's flags (or a unit's environment) say.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This host's name, as the cluster manager calls it.
    pub hostname: String,
    /// The address other hosts route this host's blocks through.
    pub host_ip: IpAddr,
    /// Where /healthz and /metrics listen.
    pub metrics_addr: String,
    /// How long the host record lives without a heartbeat.
    pub lease_ttl: Duration,
    /// Time between full desired-vs-actual checks.
    pub resync_interval: Duration,
}

/// The node's Prometheus metrics. The registry renders them; the node and
/// its heartbeat only set values.
struct Metrics {
    registry: Registry,
    ready: AtomicBool,
    /// The heartbeat reaches the datastore (it knows first when it does not).
    datastore_down: AtomicBool,
    endpoints: Gauge,
    sets: Gauge,
    elements: Gauge,
    routes: Gauge,
    last_apply_seconds: Gauge<f64, AtomicU64>,
    applies: Counter,
    apply_errors: Counter,
    resyncs: Counter,
    datastore_up: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = prometheus_client::registry::Registry::with_prefix("netmod");
        let m = Metrics {
            registry: Registry::default(),
            ready: AtomicBool::new(false),
            datastore_down: AtomicBool::new(false),
            endpoints: Gauge::default(),
            sets: Gauge::default(),
            elements: Gauge::default(),
            routes: Gauge::default(),
            last_apply_seconds: Gauge::default(),
            applies: Counter::default(),
            apply_errors: Counter::default(),
            resyncs: Counter::default(),
            datastore_up: Gauge::default(),
        };
        registry.register("endpoints", "Local endpoints", m.endpoints.clone());
        registry.register("nft_sets", "Sets in the netmod table", m.sets.clone());
        registry.register(
            "nft_set_elements",
            "Elements in all netmod sets",
            m.elements.clone(),
        );
        registry.register("routes", "Routes to other hosts", m.routes.clone());
        registry.register(
            "last_apply_seconds",
            "Duration of the last dataplane update",
            m.last_apply_seconds.clone(),
        );
        registry.register("applies", "Dataplane updates applied", m.applies.clone());
        registry.register(
            "apply_errors",
            "Dataplane updates that failed",
            m.apply_errors.clone(),
        );
        registry.register("resyncs", "Full resyncs", m.resyncs.clone());
        registry.register(
            "datastore_up",
            "1 while the heartbeat reaches the datastore",
            m.datastore_up.clone(),
        );
        m.datastore_up.set(1);
        Metrics { registry, ..m }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("netmod node: {msg}");
}

/// Run the node until the process ends: heartbeat, first resync, then the
/// change feed, with a full resync every `resync_interval`.
pub fn run(store: Arc<dyn Store>, config: NodeConfig) -> Result<(), CoreError> {
    let metrics = Arc::new(Metrics::new());
    serve_metrics(&config.metrics_addr, metrics.clone())?;
    let host = Host {
        name: config.hostname.clone(),
        ip: config.host_ip,
        ipv6: None,
    };
    let lease_ttl = config.lease_ttl.max(Duration::from_secs(2));
    spawn_heartbeat(store.clone(), host, lease_ttl, metrics.clone());

    let mut node = Node {
        hostname: config.hostname,
        store,
        metrics,
        applied: None,
        endpoints: BTreeMap::new(),
        hosts: BTreeMap::new(),
        revision: 0,
    };
    let resync_every = config.resync_interval.max(Duration::from_secs(1));
    loop {
        if let Err(e) = node.resync() {
            log(format!("resync failed, retrying in 1 s: {e}"));
            node.metrics.apply_errors.inc();
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
                    node.metrics.apply_errors.inc();
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
    fn resync(&mut self) -> Result<(), CoreError> {
        let started = Instant::now();
        // Links before records: attach records an endpoint before it plugs
        // the interface, so every link listed here has its record below.
        let links = dp::list_links_with_prefix(HOST_IFACE_PREFIX)?;
        let (kvs, rev) = self.store.range(ENDPOINTS)?;
        self.endpoints = kvs
            .iter()
            .map(|kv| netmod_store::decode(kv).map(|e| (kv.key.clone(), e)))
            .collect::<Result<_, _>>()?;
        self.hosts = EndpointRegistry::new(&*self.store).hosts()?;
        self.revision = rev;
        self.metrics.resyncs.inc();
        // Interfaces with our prefix and no endpoint are leftovers of a crash.
        let mine: BTreeSet<String> = self.local().map(|e| e.iface.clone()).collect();
        for link in links {
            if is_host_iface_name(&link.name) && !mine.contains(&link.name) {
                log(format!("removing leftover interface {}", link.name));
                dp::unplug(&link.name)?;
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
                    dp::nft_apply(&changes)?;
                }
            }
            None => {
                log("resync: installing the netmod table");
                dp::nft_replace_all(&desired)?;
            }
        }
        self.applied = Some(desired);
        self.sync_routes()?;
        self.record_apply(started);
        Ok(())
    }

    /// The kernel's sets, if the table has every set we want (None otherwise).
    fn actual(&self, desired: &Ruleset) -> Result<Option<Ruleset>, CoreError> {
        if !dp::nft_table_exists()? {
            return Ok(None);
        }
        let mut actual = Ruleset {
            chains: desired.chains.clone(),
            sets: BTreeMap::new(),
        };
        for (name, set) in &desired.sets {
            if !dp::nft_set_exists(name)? {
                return Ok(None);
            }
            let mut have = set.clone();
            have.elements = dp::nft_list_set_elements(name, set.family)?;
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
                    self.hosts = EndpointRegistry::new(&*self.store).hosts()?;
                }
            }
        }
        if relevant {
            let started = Instant::now();
            if let Err(e) = self.apply_increment() {
                log(format!("apply failed, full resync next: {e}"));
                self.metrics.apply_errors.inc();
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

    fn apply_increment(&mut self) -> Result<(), CoreError> {
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
                        Some(actual) => dp::nft_apply(&netmod_policy::diff(&actual, &desired))?,
                        None => dp::nft_replace_all(&desired)?,
                    },
                    Err(e) => return Err(e.into()),
                }
            }
            None => dp::nft_replace_all(&desired)?,
        }
        self.applied = Some(desired);
        self.sync_routes()
    }

    /// Routes to every other live host's blocks, and /32s for their endpoints
    /// whose address lies outside those blocks (borrowed or asked by value).
    fn sync_routes(&mut self) -> Result<(), CoreError> {
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
        let have: BTreeMap<IpNet, IpAddr> = dp::list_routes()?
            .into_iter()
            .filter_map(|r| r.via.map(|v| (r.dst, v)))
            .collect();
        for (dst, via) in &want {
            if have.get(dst) != Some(via) {
                dp::add_route(*dst, *via)?;
            }
        }
        for dst in have.keys() {
            if !want.contains_key(dst) {
                dp::del_route(*dst)?;
            }
        }
        self.metrics.routes.set(want.len() as i64);
        Ok(())
    }

    fn record_apply(&self, started: Instant) {
        let m = &self.metrics;
        m.last_apply_seconds.set(started.elapsed().as_secs_f64());
        m.applies.inc();
        m.endpoints.set(self.local().count() as i64);
        if let Some(rs) = &self.applied {
            m.sets.set(rs.sets.len() as i64);
            m.elements
                .set(rs.sets.values().map(|s| s.elements.len() as i64).sum());
        }
    }
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
                    .and_then(|id| {
                        EndpointRegistry::new(&*store)
                            .register_host(&host, id)
                            .map(|_| id)
                    })
                    .map_err(|e| log(format!("cannot register host {}: {e}", host.name)))
                    .ok();
            }
            let down = lease.is_none();
            metrics.datastore_up.set(i64::from(!down));
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

fn serve_metrics(addr: &str, metrics: Arc<Metrics>) -> Result<(), CoreError> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| CoreError::Other(format!("cannot listen on {addr} for /metrics: {e}")))?;
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

/// What `uninstall` removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Uninstalled {
    pub table: bool,
    pub interfaces: usize,
    pub routes: usize,
}

/// Remove every object netmod created on this host: the table, the
/// interfaces with our prefix, the routes with our protocol number.
pub fn uninstall() -> Result<Uninstalled, CoreError> {
    let table = dp::nft_delete_table()?;
    let mut interfaces = 0;
    for link in dp::list_links_with_prefix(HOST_IFACE_PREFIX)? {
        if !is_host_iface_name(&link.name) {
            continue;
        }
        dp::unplug(&link.name)?;
        interfaces += 1;
    }
    let routes = dp::del_routes_not_in(&BTreeSet::new())?.len();
    Ok(Uninstalled {
        table,
        interfaces,
        routes,
    })
}
