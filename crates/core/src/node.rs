//! `netmod node`: the per-host daemon. Announces the host under a lease,
//! resyncs the kernel with the datastore at start (removing leftovers it
//! recognises by name), then follows the change feed: netgroup sets complete
//! with members on every host, routes to the blocks of other live hosts.

use crate::registry::{Registry as EndpointRegistry, ENDPOINTS, HOSTS};
use crate::CoreError;
use ipnet::IpNet;
use netmod_calico::GlobalNetworkPolicy;
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
    /// The IPv6 address other hosts route this host's IPv6 blocks through.
    pub host_ipv6: Option<IpAddr>,
    /// Where /healthz and /metrics listen.
    pub metrics_addr: String,
    /// How long the host record lives without a heartbeat.
    pub lease_ttl: Duration,
    /// Time between full desired-vs-actual checks.
    pub resync_interval: Duration,
    /// How long a record of this host may lack its interface before the
    /// node removes it ([`STALE_RECORD_GRACE`] by default).
    pub stale_record_grace: Duration,
    /// Routes between hosts through BGP (BIRD), when set.
    pub bgp: Option<crate::bgp::BgpSettings>,
}

/// The node's Prometheus metrics. The registry renders them; the node and
/// its heartbeat only set values.
struct Metrics {
    registry: Registry,
    /// The revision everything up to has been applied (for the host record).
    applied_revision: AtomicU64,
    /// Something other than host records was applied since the host record
    /// was last written: write it again (host records alone never trigger a
    /// write, or every node's write would make every node write again).
    report_applied: AtomicBool,
    ready: AtomicBool,
    /// This host's VXLAN tunnel endpoint, for the host record.
    vtep: std::sync::Mutex<Option<netmod_model::Vtep>>,
    /// Raised to have the heartbeat write the host record now (a new
    /// applied revision: quarantines and `policy apply` wait for it).
    heartbeat_due: (std::sync::Mutex<bool>, std::sync::Condvar),
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
    undecodable: Counter,
    stale_records_removed: Counter,
    flows_forgotten: Counter,
    table_restores: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = prometheus_client::registry::Registry::with_prefix("netmod");
        let m = Metrics {
            registry: Registry::default(),
            applied_revision: AtomicU64::new(0),
            report_applied: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            datastore_down: AtomicBool::new(false),
            vtep: std::sync::Mutex::new(None),
            heartbeat_due: Default::default(),
            endpoints: Gauge::default(),
            sets: Gauge::default(),
            elements: Gauge::default(),
            routes: Gauge::default(),
            last_apply_seconds: Gauge::default(),
            applies: Counter::default(),
            apply_errors: Counter::default(),
            resyncs: Counter::default(),
            datastore_up: Gauge::default(),
            undecodable: Counter::default(),
            stale_records_removed: Counter::default(),
            flows_forgotten: Counter::default(),
            table_restores: Counter::default(),
        };
        registry.register(
            "conntrack_flows_forgotten",
            "Tracked flows deleted because an address left the cluster",
            m.flows_forgotten.clone(),
        );
        registry.register(
            "table_restores",
            "Times another process changed or deleted the netmod table and the node restored it",
            m.table_restores.clone(),
        );
        registry.register(
            "undecodable_records",
            "Datastore records skipped because they could not be read",
            m.undecodable.clone(),
        );
        registry.register(
            "stale_records_removed",
            "Endpoint records of this host removed because their interface stayed gone",
            m.stale_records_removed.clone(),
        );
        registry.register("endpoints", "Local endpoints", m.endpoints.clone());
        registry.register("nft_sets", "Sets in the netmod table", m.sets.clone());
        registry.register(
            "nft_set_elements",
            "Elements in all netmod sets",
            m.elements.clone(),
        );
        registry.register(
            "routes",
            "Routes netmod keeps between hosts: to other hosts' blocks, and blackholes for its own",
            m.routes.clone(),
        );
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

    fn wake_heartbeat(&self) {
        let (due, cv) = &self.heartbeat_due;
        *due.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_one();
    }

    /// Sleep until `limit` passes or the node asks for a write.
    fn heartbeat_pause(&self, limit: Duration) {
        let (due, cv) = &self.heartbeat_due;
        let guard = due.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = cv
            .wait_timeout_while(guard, limit, |due| !*due)
            .unwrap_or_else(|e| e.into_inner());
        *guard = false;
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
        ipv6: config.host_ipv6,
        applied_revision: None,
        subnet: crate::routing::subnet_of(config.host_ip),
        vtep: None,
    };
    let me = host.clone();
    let lease_ttl = config.lease_ttl.max(Duration::from_secs(2));
    let mut heartbeat = Some((store.clone(), host, lease_ttl, metrics.clone()));

    let mut node = Node {
        hostname: config.hostname,
        forget_flows: BTreeSet::new(),
        stale_grace: config.stale_record_grace,
        missing_links: BTreeMap::new(),
        store,
        metrics,
        applied: None,
        policies: Vec::new(),
        endpoints: BTreeMap::new(),
        hosts: BTreeMap::new(),
        revision: 0,
        me,
        route_plan: crate::routing::Plan::default(),
        host_routing: netmod_policy::HostRouting::default(),
        bgp: config.bgp.map(crate::bgp::Supervisor::new),
        bgp_peers: None,
    };
    let tampered = spawn_table_watch()?;
    let resync_every = config.resync_interval.max(Duration::from_secs(1));
    loop {
        if let Err(e) = node.resync() {
            if matches!(e, CoreError::HostnameMismatch { .. }) {
                return Err(e);
            }
            log(format!("resync failed, retrying in 1 s: {e}"));
            node.metrics.apply_errors.inc();
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        // The host goes live only once the first resync has shown this node
        // runs under the right name (a misnamed node must not announce
        // itself, not even until its lease runs out).
        if let Some((store, host, ttl, metrics)) = heartbeat.take() {
            spawn_heartbeat(store, host, ttl, metrics);
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
            if tampered.swap(false, Ordering::SeqCst) {
                log("the netmod table was changed or deleted by another process: restoring it");
                node.metrics.table_restores.inc();
                node.applied = None;
                break;
            }
            if last_full.elapsed() >= resync_every {
                break;
            }
        }
    }
}

/// How long a record of this host may name an interface that does not exist
/// before the node removes it: attach records before it plugs, so a young
/// record without a link is an attach in progress.
pub const STALE_RECORD_GRACE: Duration = Duration::from_secs(60);

/// Decode every record; report and skip those we cannot read (a newer
/// version's records during an upgrade) instead of stopping.
fn decode_records(kvs: &[netmod_store::KeyValue], metrics: &Metrics) -> BTreeMap<String, Endpoint> {
    let mut out = BTreeMap::new();
    for kv in kvs {
        match netmod_store::decode::<Endpoint>(kv) {
            Ok(e) => {
                out.insert(kv.key.clone(), e);
            }
            Err(e) => {
                log(format!("skipping record {}: {e}", kv.key));
                metrics.undecodable.inc();
            }
        }
    }
    out
}

struct Node {
    hostname: String,
    /// Addresses removed since the last apply, whose flows must be forgotten.
    forget_flows: BTreeSet<IpAddr>,
    stale_grace: Duration,
    /// Records of this host whose interface was missing, and since when.
    missing_links: BTreeMap<String, Instant>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// What we last put in the kernel (None: unknown, replace everything).
    applied: Option<Ruleset>,
    /// Every stored policy, in Calico's order.
    policies: Vec<GlobalNetworkPolicy>,
    endpoints: BTreeMap<String, Endpoint>,
    hosts: BTreeMap<String, Host>,
    revision: Revision,
    /// This host's record as the node writes it (its VTEP once it has one).
    me: Host,
    /// Routes and VXLAN entries to other hosts, as last computed.
    route_plan: crate::routing::Plan,
    /// The table's part of routing between hosts (NAT, VXLAN checks).
    host_routing: netmod_policy::HostRouting,
    /// BIRD's configuration and process, with `--bgp`.
    bgp: Option<crate::bgp::Supervisor>,
    /// The configured BGP peers (`bgp/peers/`), with `--bgp` (None: to
    /// be read again).
    bgp_peers: Option<Vec<crate::bgp::Peer>>,
}

impl Node {
    /// Read everything, compare with the kernel, fix what differs.
    fn resync(&mut self) -> Result<(), CoreError> {
        let started = Instant::now();
        // Links before records: attach records an endpoint before it plugs
        // the interface, so every link listed here has its record below.
        let links = dp::list_links_with_prefix(HOST_IFACE_PREFIX)?;
        let (kvs, rev) = self.store.range(ENDPOINTS)?;
        self.endpoints = decode_records(&kvs, &self.metrics);
        self.hosts = EndpointRegistry::new(&*self.store).hosts()?;
        // Policies that changed since the last look (at start: all of them,
        // as nothing is known of what the kernel enforced before) cut the
        // tracked flows of the local endpoints they select.
        self.reload_policies()?;
        self.revision = rev;
        self.metrics.resyncs.inc();
        // An interface any record names is never ours to remove. One that a
        // record of another host name claims means this node runs under the
        // wrong name: unplugging "leftovers" would cut healthy containers off.
        let named: BTreeMap<&str, &Endpoint> = self
            .endpoints
            .values()
            .map(|e| (e.iface.as_str(), e))
            .collect();
        let mut foreign = BTreeSet::new();
        for link in &links {
            match named.get(link.name.as_str()) {
                Some(e) if e.host != self.hostname => {
                    foreign.insert(format!(
                        "{} ({} of host {:?})",
                        link.name, e.container_id, e.host
                    ));
                }
                Some(_) => {}
                None if is_host_iface_name(&link.name) => {
                    log(format!("removing leftover interface {}", link.name));
                    dp::unplug(&link.name)?;
                }
                None => {}
            }
        }
        if !foreign.is_empty() {
            return Err(CoreError::HostnameMismatch {
                hostname: self.hostname.clone(),
                links: foreign.into_iter().collect(),
            });
        }
        self.collect_stale_records(&links)?;
        self.bgp_peers = None;
        self.plan_routing()?;
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
            Some(actual) if netmod_policy::needs_replace(&actual, &desired) => {
                log("resync: sets no longer wanted: installing the netmod table");
                dp::nft_replace_all(&desired)?;
            }
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
        self.forget_removed_flows();
        self.record_apply(started);
        self.report_applied(true);
        Ok(())
    }

    /// Everything up to `self.revision` is in the kernel now.
    fn report_applied(&self, beyond_host_records: bool) {
        self.metrics
            .applied_revision
            .store(self.revision.max(0) as u64, Ordering::SeqCst);
        if beyond_host_records {
            self.metrics.report_applied.store(true, Ordering::SeqCst);
            self.metrics.wake_heartbeat();
        }
    }

    /// The kernel's sets, if the table has every set we want (None otherwise),
    /// with the chains this node last installed (the table watch restores
    /// the whole table when anyone else changes them).
    fn actual(&self, desired: &Ruleset) -> Result<Option<Ruleset>, CoreError> {
        let Some(applied) = &self.applied else {
            return Ok(None);
        };
        if !dp::nft_table_exists()? {
            return Ok(None);
        }
        let mut actual = Ruleset {
            chains: applied.chains.clone(),
            sets: BTreeMap::new(),
        };
        // Sets the kernel holds that we no longer want count too.
        for name in dp::nft_list_sets()? {
            if !desired.sets.contains_key(&name) {
                let family = if name.ends_with("_v6") {
                    netmod_model::nft::Family::V6
                } else {
                    netmod_model::nft::Family::V4
                };
                let elements = dp::nft_list_set_elements(&name, family)?;
                actual.sets.insert(
                    name.clone(),
                    netmod_model::nft::SetDef {
                        name,
                        family,
                        elements,
                    },
                );
            }
        }
        for (name, set) in &desired.sets {
            if !dp::nft_set_exists(name)? {
                // One we never installed is for the diff to create; one we
                // did has been removed behind our back: install it all.
                if applied.sets.contains_key(name) {
                    return Ok(None);
                }
                continue;
            }
            let mut have = set.clone();
            have.elements = dp::nft_list_set_elements(name, set.family)?;
            actual.sets.insert(name.clone(), have);
        }
        Ok(Some(actual))
    }

    /// Remove records of this host whose interface has been gone for longer
    /// than the grace period (a crash between record and plug, a lost
    /// cleanup), releasing what they hold. Their addresses leave every set
    /// through the change feed like any removal.
    fn collect_stale_records(&mut self, links: &[dp::LinkInfo]) -> Result<(), CoreError> {
        let present: BTreeSet<&str> = links.iter().map(|l| l.name.as_str()).collect();
        let now = Instant::now();
        let mut still_missing = BTreeMap::new();
        let mut stale = Vec::new();
        for (key, ep) in &self.endpoints {
            if ep.host != self.hostname || present.contains(ep.iface.as_str()) {
                continue;
            }
            let since = self.missing_links.get(key).copied().unwrap_or(now);
            if now.duration_since(since) >= self.stale_grace {
                stale.push(ep.clone());
            } else {
                still_missing.insert(key.clone(), since);
            }
        }
        self.missing_links = still_missing;
        for ep in stale {
            log(format!(
                "removing the record of {} ({}): its interface {} has been gone for {:?} or more",
                ep.container_id, ep.host, ep.iface, self.stale_grace
            ));
            let requarantined = crate::attach::forget_record(&*self.store, &ep)?;
            if let (false, Some(handle)) = (requarantined, &ep.handle) {
                match Ipam::new(&*self.store).release_handle(handle) {
                    Ok(_) | Err(netmod_ipam::IpamError::UnknownHandle(_)) => {}
                    Err(e) => log(format!("releasing {handle}: {e}")),
                }
            }
            self.endpoints.remove(&crate::registry::endpoint_key(
                &ep.host,
                &ep.container_id,
                &ep.container_iface,
            ));
            self.metrics.stale_records_removed.inc();
        }
        Ok(())
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
        let mut rs = netmod_policy::ruleset_with_policies(
            &self.hostname,
            &self.live_endpoints(),
            &self.policies,
            &crate::labels::endpoint_labels,
        );
        netmod_policy::add_host_routing(&mut rs, &self.host_routing);
        rs
    }

    /// Compute the routes, VXLAN entries and NAT this host needs from the
    /// pools, blocks and live hosts (applied by `sync_routes`, and through
    /// `desired` in the table).
    fn plan_routing(&mut self) -> Result<(), CoreError> {
        let ipam = Ipam::new(&*self.store);
        let pools = ipam.pools()?;
        let mut hosts = self.hosts.clone();
        hosts.insert(self.hostname.clone(), self.me.clone());
        let mut blocks: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
        for name in hosts.keys() {
            blocks.insert(name.clone(), ipam.host_blocks(name)?);
        }
        let strays: Vec<(IpAddr, String)> = self
            .endpoints
            .values()
            .filter(|ep| hosts.contains_key(&ep.host))
            .flat_map(|ep| {
                let own = &blocks[&ep.host];
                ep.addrs()
                    .filter(|a| !own.iter().any(|b| b.contains(a)))
                    .map(|a| (a, ep.host.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let plan = crate::routing::plan(&crate::routing::Input {
            me: &self.hostname,
            hosts: &hosts,
            pools: &pools,
            blocks: &blocks,
            strays: &strays,
            bgp: self.bgp.is_some(),
        });
        let mut vxlan_sources = plan.vxlan_sources.clone();
        // A remote host's own addresses may be inner sources too (traffic
        // the host itself sends into the overlay). The plan keys only remote
        // hosts with a VTEP, by their address.
        for h in hosts.values() {
            if let Some(nets) = vxlan_sources.get_mut(&h.ip) {
                nets.extend(std::iter::once(h.ip).chain(h.ipv6).map(IpNet::from));
            }
        }
        self.host_routing = netmod_policy::HostRouting {
            pools: pools.iter().map(|p| (p.cidr, p.nat_outgoing)).collect(),
            vxlan_port: (plan.vxlan && self.me.ip.is_ipv4()).then_some(crate::routing::VXLAN_PORT),
            vxlan_sources,
            host_addrs: hosts
                .values()
                .flat_map(|h| std::iter::once(h.ip).chain(h.ipv6))
                .collect(),
        };
        self.route_plan = plan;
        Ok(())
    }

    /// Re-read the policies; the addresses of local endpoints that a policy
    /// that came, went or changed selects (before or after) join the flows
    /// to forget, so that their next packet is judged as new: allowed flows
    /// carry on (conntrack picks TCP up mid-stream), forbidden ones stop.
    fn reload_policies(&mut self) -> Result<(), StoreError> {
        let new = match crate::policies::list(&*self.store) {
            Ok(p) => p,
            Err(CoreError::Store(e)) => return Err(e),
            Err(e) => {
                log(format!("reading policies: {e}"));
                return Ok(());
            }
        };
        let by_name = |list: &[GlobalNetworkPolicy]| -> BTreeMap<String, GlobalNetworkPolicy> {
            list.iter().map(|p| (p.name.clone(), p.clone())).collect()
        };
        let (old, now) = (by_name(&self.policies), by_name(&new));
        let mut changed: Vec<&GlobalNetworkPolicy> = Vec::new();
        for (name, p) in &old {
            if now.get(name) != Some(p) {
                changed.push(p);
            }
        }
        for (name, p) in &now {
            if old.get(name) != Some(p) {
                changed.push(p);
            }
        }
        let mut cut = BTreeSet::new();
        for ep in self.local() {
            let labels = crate::labels::endpoint_labels(ep);
            if changed.iter().any(|p| p.selector.matches(&labels)) {
                cut.extend(ep.addrs());
            }
        }
        self.forget_flows.extend(cut);
        self.policies = new;
        Ok(())
    }

    /// Apply the changes since the last revision seen.
    fn follow(&mut self, wait: Duration) -> Result<(), StoreError> {
        let events = self.store.changes("", self.revision, wait)?;
        if events.is_empty() {
            return Ok(());
        }
        let mut relevant = false;
        let mut policies_changed = false;
        let mut beyond_host_records = false;
        for ev in &events {
            self.revision = self.revision.max(ev.revision());
            let key = ev.key();
            beyond_host_records |= !key.starts_with(HOSTS);
            if key.starts_with(ENDPOINTS) {
                relevant = true;
                match ev {
                    netmod_store::Event::Put(kv) => match netmod_store::decode::<Endpoint>(kv) {
                        Ok(e) => {
                            if let Some(old) = self.endpoints.insert(key.to_string(), e) {
                                let kept: BTreeSet<IpAddr> = self.endpoints[key].addrs().collect();
                                self.forget_flows
                                    .extend(old.addrs().filter(|a| !kept.contains(a)));
                            }
                        }
                        Err(e) => {
                            log(format!("skipping record {key}: {e}"));
                            self.metrics.undecodable.inc();
                            // A record we cannot read holds nothing we can enforce.
                            self.endpoints.remove(key);
                        }
                    },
                    netmod_store::Event::Delete { .. } => {
                        if let Some(gone) = self.endpoints.remove(key) {
                            self.forget_flows.extend(gone.addrs());
                        }
                    }
                }
            } else if key.starts_with(crate::bgp::PEERS) {
                relevant = true;
                self.bgp_peers = None; // read again by sync_bgp
            } else if key.starts_with(crate::policies::POLICIES) {
                relevant = true;
                policies_changed = true;
            } else if key.starts_with(HOSTS) {
                // A host's heartbeat reporting its applied revision changes
                // nothing here; a host coming, going or moving its VTEP does.
                let hosts = EndpointRegistry::new(&*self.store).hosts()?;
                let routing_view = |h: &BTreeMap<String, Host>| -> Vec<Host> {
                    h.values()
                        .map(|h| Host {
                            applied_revision: None,
                            ..h.clone()
                        })
                        .collect()
                };
                relevant |= routing_view(&hosts) != routing_view(&self.hosts);
                self.hosts = hosts;
            } else if key.starts_with("ipam/affinity") || key.starts_with("ipam/pools/") {
                relevant = true;
            }
        }
        if policies_changed {
            self.reload_policies()?;
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
        self.forget_removed_flows();
        if self.forget_flows.is_empty() {
            self.report_applied(beyond_host_records);
        }
        Ok(())
    }

    /// Addresses that left the cluster carry no flow on this host any more:
    /// their conntrack entries go before the address can be handed out again
    /// (the ruleset accepts established flows before any profile).
    fn forget_removed_flows(&mut self) {
        if self.forget_flows.is_empty() {
            return;
        }
        let addrs: Vec<IpAddr> = std::mem::take(&mut self.forget_flows).into_iter().collect();
        match dp::conntrack_forget(&addrs) {
            Ok(n) => {
                self.metrics.flows_forgotten.inc_by(n as u64);
                if n > 0 {
                    log(format!("forgot {n} tracked flow(s) of removed addresses"));
                }
            }
            Err(e) => {
                log(format!("forgetting flows of {addrs:?}: {e}; retrying"));
                self.metrics.apply_errors.inc();
                self.forget_flows.extend(addrs);
            }
        }
    }

    fn apply_increment(&mut self) -> Result<(), CoreError> {
        self.plan_routing()?;
        let desired = self.desired();
        match &self.applied {
            // A netgroup left this host: its set and rule go with a whole,
            // atomic install. (Policies coming, going or changing are a
            // diff: their own chains and sets, in one transaction.)
            Some(applied) if netmod_policy::needs_replace(applied, &desired) => {
                log("netgroups changed: installing the netmod table");
                dp::nft_replace_all(&desired)?;
            }
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

    /// Routes to every other live host's blocks (direct or through the
    /// vxlan device), /32s for their endpoints whose address lies outside
    /// those blocks, blackholes for this host's own blocks; the vxlan
    /// device and its entries. A new VTEP goes into the host record.
    fn sync_routes(&mut self) -> Result<(), CoreError> {
        // What other hosts send to local endpoints enters by the uplink.
        let own: Vec<IpAddr> = std::iter::once(self.me.ip).chain(self.me.ipv6).collect();
        for uplink in crate::routing::interfaces_holding(&own) {
            crate::routing::forward_ipv6_from(&uplink)?;
        }
        let applied = crate::routing::apply(&self.route_plan, self.me.ip)?;
        let vtep = applied.vtep_mac.map(|mac| netmod_model::Vtep {
            ip: self.me.ip,
            mac,
        });
        if vtep != self.me.vtep {
            log(match &vtep {
                Some(v) => format!(
                    "vxlan device {} up, MAC {}",
                    crate::routing::VXLAN_DEVICE,
                    v.mac
                ),
                None => "no vxlan device".to_string(),
            });
            self.me.vtep = vtep.clone();
            *self.metrics.vtep.lock().unwrap_or_else(|e| e.into_inner()) = vtep;
            self.metrics.report_applied.store(true, Ordering::SeqCst);
        }
        self.metrics.routes.set(applied.routes as i64);
        self.sync_bgp()
    }

    /// With `--bgp`: BIRD's configuration from the plan (this host's
    /// blocks, the prefixes the node routes itself) and the peers.
    fn sync_bgp(&mut self) -> Result<(), CoreError> {
        let Some(sup) = &mut self.bgp else {
            return Ok(());
        };
        let peers = match self.bgp_peers.take() {
            Some(p) => p,
            None => crate::bgp::list_peers(&*self.store)?,
        };
        let local_as = sup.settings().local_as;
        let (mut blocks, mut node_routed) = (Vec::new(), Vec::new());
        for (dst, target) in &self.route_plan.routes {
            match target {
                crate::routing::Target::Blackhole => blocks.push(*dst),
                _ => node_routed.push(*dst),
            }
        }
        // Local endpoints' addresses outside this host's blocks (borrowed,
        // or asked for by value) are announced one by one, as Calico does.
        let own_blocks = blocks.clone();
        let hostname = &self.hostname;
        for ep in self.endpoints.values().filter(|e| e.host == *hostname) {
            for a in ep.addrs() {
                if !own_blocks.iter().any(|b| b.contains(&a)) {
                    blocks.push(IpNet::from(a));
                }
            }
        }
        let desired = crate::bgp::Desired {
            router_id: crate::bgp::router_id(self.me.ip),
            local_as,
            blocks,
            node_routed,
            peers: crate::bgp::sessions(&peers, &self.hosts, &self.me, local_as),
        };
        self.bgp_peers = Some(peers);
        if sup.sync(&crate::bgp::render(&desired))? {
            log(format!(
                "BIRD configured: {} block(s) announced to {} peer(s)",
                desired.blocks.len(),
                desired.peers.len()
            ));
        }
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

/// Watch nftables' events for changes to our table made by others; the
/// returned flag is raised for each. The watcher opens its socket here, in
/// the node's own namespace, before the thread starts.
fn spawn_table_watch() -> Result<Arc<AtomicBool>, CoreError> {
    let mut monitor = dp::NftMonitor::open()?;
    let flag = Arc::new(AtomicBool::new(false));
    let raised = flag.clone();
    std::thread::Builder::new()
        .name("nft-watch".into())
        .spawn(move || loop {
            match monitor.wait(Duration::from_secs(1)) {
                Ok(seen) if seen.foreign => raised.store(true, Ordering::SeqCst),
                Ok(_) => {}
                Err(e) => {
                    log(format!("watching nftables events: {e}; assuming a change"));
                    raised.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        })
        .map_err(|e| CoreError::Other(format!("starting the nftables watcher: {e}")))?;
    Ok(flag)
}

/// Keep the host record alive; re-register if the lease was lost (e.g. after
/// the datastore was unreachable for longer than the TTL).
fn spawn_heartbeat(store: Arc<dyn Store>, mut host: Host, ttl: Duration, metrics: Arc<Metrics>) {
    std::thread::spawn(move || {
        let mut lease = None;
        loop {
            let round = Instant::now();
            let mut ok = match lease {
                Some(id) => store.lease_keepalive(id).is_ok(),
                None => false,
            };
            if let (true, Some(id)) = (ok, lease) {
                if metrics.report_applied.swap(false, Ordering::SeqCst) {
                    host.applied_revision = Some(metrics.applied_revision.load(Ordering::SeqCst));
                    host.vtep = metrics
                        .vtep
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if let Err(e) = EndpointRegistry::new(&*store).register_host(&host, id) {
                        log(format!("cannot update host {}: {e}", host.name));
                        metrics.report_applied.store(true, Ordering::SeqCst);
                        ok = false;
                    }
                }
            }
            if !ok {
                if metrics.report_applied.swap(false, Ordering::SeqCst)
                    || host.applied_revision.is_some()
                {
                    host.applied_revision = Some(metrics.applied_revision.load(Ordering::SeqCst));
                }
                host.vtep = metrics
                    .vtep
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
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
            // A keepalive every third of the lease, or sooner when the node
            // has applied something new (other hosts wait on that), but not
            // more than ten writes a second.
            metrics.heartbeat_pause(ttl / 3);
            std::thread::sleep(Duration::from_millis(100).saturating_sub(round.elapsed()));
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
    pub vxlan_device: bool,
}

/// Remove every object netmod created on this host: the table, the
/// interfaces with our prefix, the routes with our protocol number (blackholes
/// and routes through the vxlan device included) and the vxlan device.
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
    let mut routes = 0;
    for r in dp::owned_routes()? {
        routes += usize::from(dp::route_delete(&r.dst)?);
    }
    let vxlan_device = dp::delete_link(crate::routing::VXLAN_DEVICE)?;
    Ok(Uninstalled {
        table,
        interfaces,
        routes,
        vxlan_device,
    })
}
