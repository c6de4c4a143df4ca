//! Address management: pools carved into host-affine blocks, allocations held
//! by handles, released addresses quarantined before reuse.
//!
//! Every operation reads what it needs, plans in memory, and commits one
//! compare-and-swap transaction over every block and handle it touched, so an
//! operation either happens whole or not at all, and two allocators never hand
//! out the same address.

mod plan;
pub mod usage;

use ipnet::IpNet;
use netmod_model::{AllocAttrs, Pool};
use netmod_store::{
    decode, decode_all, encode, retry_txn, Compare, KeyValue, Op, Store, StoreError, Undecodable,
};
use plan::Plan;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use usage::{BlockUsage, PoolUsage, Usage};

pub const DEFAULT_QUARANTINE_SECS: u64 = 60;
const MAX_ATTEMPTS: u32 = 200;

pub(crate) const POOLS: &str = "ipam/pools/";
pub(crate) const BLOCKS: &str = "ipam/blocks/";
/// Blocks affine to a host that still have a free slot, one key each, so an
/// allocation finds room without reading the host's full blocks.
pub(crate) const AFFINITY: &str = "ipam/affinity/";
/// Blocks affine to a host that are full.
pub(crate) const AFFINITY_FULL: &str = "ipam/affinity-full/";
pub(crate) const HANDLES: &str = "ipam/handles/";
/// Where live hosts announce themselves (`hosts/<name>`, under the node's
/// lease): the same prefix as `netmod_core::registry::HOSTS`. IPAM reads only
/// `applied_revision` from these records (see [`Release`]).
pub const HOSTS_PREFIX: &str = "hosts/";

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free {family} address in pool(s) {pools}{}", quarantine_note(*quarantined, *until_ms, *awaiting, waiting_for))]
    Exhausted {
        family: &'static str,
        pools: String,
        /// Released addresses whose quarantine is counting down...
        quarantined: usize,
        /// ...the first of which is free again at this time (unix ms).
        until_ms: i64,
        /// Released addresses some live host has not applied the release of yet.
        awaiting: usize,
        /// Those hosts, described.
        waiting_for: Vec<String>,
    },
    #[error("address {addr} was released recently and is quarantined {}; an operator may override with `netmod ipam reserve --ignore-quarantine`", quarantine_until(*until_ms, waiting_for))]
    Quarantined {
        addr: IpAddr,
        /// When it is free again; `None` while some live host has not applied its release.
        until_ms: Option<i64>,
        waiting_for: Vec<String>,
    },
    #[error("handle {handle:?} already holds {} ({held}); this request asks for {asked}: release the handle first, or use another one", list(holds))]
    HandleConflict {
        handle: String,
        holds: Vec<IpAddr>,
        /// What the handle's allocation was, described.
        held: String,
        asked: String,
    },
    #[error("pool {cidr} overlaps {what}")]
    PoolForbidden { cidr: IpNet, what: String },
    #[error("pool {0} already exists with blocks /{1} and quarantine {2} s; remove it first (`netmod pool rm`) to change those (`netmod pool set` changes its routing, NAT and whether it is disabled)")]
    PoolDiffers(IpNet, u8, u64),
    #[error("the record {0} cannot be read by this netmod (a newer version's record, or damage); upgrade netmod, or remove the record")]
    Unreadable(Undecodable),
    #[error("no {0} pool is configured (add one with `netmod pool add CIDR`)")]
    NoPool(&'static str),
    #[error("address {0} is outside every pool")]
    OutsidePools(IpAddr),
    #[error("address {addr} is already in use by {holder}")]
    InUse { addr: IpAddr, holder: String },
    #[error("unknown handle {0:?}: it holds no addresses")]
    UnknownHandle(String),
    #[error("pool {0} overlaps pool {1}")]
    PoolOverlap(IpNet, IpNet),
    #[error("pool {pool} still has {live} live allocation(s); release them first or use --force")]
    PoolInUse { pool: IpNet, live: usize },
    #[error("no pool {0}")]
    NoSuchPool(IpNet),
    #[error("pool {0} is disabled: it hands out no new addresses (`netmod pool set {0} --disabled false`)")]
    PoolDisabled(IpNet),
    #[error("invalid pool: {0}")]
    InvalidPool(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn quarantine_note(quarantined: usize, until_ms: i64, awaiting: usize, hosts: &[String]) -> String {
    let mut note = String::new();
    if quarantined > 0 {
        let secs = ((until_ms - netmod_now_ms()).max(0) + 999) / 1000;
        note = format!(
            "; {quarantined} released address(es) are in quarantine, the first free again in {secs} s"
        );
    }
    if awaiting > 0 {
        note.push_str(&format!(
            "; {awaiting} released address(es) wait for every live host to apply their release (behind: {})",
            hosts.join(", ")
        ));
    }
    note
}

fn quarantine_until(until_ms: Option<i64>, hosts: &[String]) -> String {
    match until_ms {
        Some(until) => format!(
            "until {} ({} s from now)",
            utc(until),
            ((until - netmod_now_ms()).max(0) + 999) / 1000
        ),
        None => format!(
            "until every live host has applied its release and the pool's quarantine has passed after that (behind: {})",
            hosts.join(", ")
        ),
    }
}

fn list(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A unix time in ms as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;

/// One block of a pool: which ordinals are held by which handle, which are quarantined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub cidr: IpNet,
    pub pool: IpNet,
    /// The host this block is affine to.
    pub host: Option<String>,
    /// Ordinal within the block → handle.
    #[serde(default)]
    pub slots: BTreeMap<u32, String>,
    /// Ordinal → unix ms until which it must not be handed out, by the wall
    /// clock. What versions before `released` read; this one reads `released`
    /// first and keeps this in step for them.
    #[serde(default)]
    pub quarantine: BTreeMap<u32, i64>,
    /// Ordinal → its release, while it is quarantined (see [`Release`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub released: BTreeMap<u32, Release>,
}

/// A released address on its way out of quarantine.
///
/// The quarantine keeps a released address from being handed to a new
/// container while some host still lets the old one's netgroups reach it.
/// So it counts from the moment every live host (every `hosts/<name>`
/// record, which a host's lease keeps alive) reports an `applied_revision`
/// at or past the release's revision; a host that reports none (an older
/// node) has not applied it. The first allocation that sees every live host
/// past the release records `confirmed_ms` in the same transaction, and the
/// address is free `quarantine_ms` after that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The store revision of the release. Absent in the record written by the
    /// release itself, whose revision is not known until it commits: the
    /// block's mod revision stands for it when read (the same revision, or a
    /// later one, which only waits longer), and the next write of the block
    /// stores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// When every live host was first seen past `revision` (unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_ms: Option<i64>,
    /// The pool's quarantine when the address was released, in ms.
    pub quarantine_ms: i64,
}

/// What a handle holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleRecord {
    pub handle: String,
    pub attrs: AllocAttrs,
    pub addrs: Vec<IpAddr>,
    /// What `allocate` asked for and handed out for this handle, so that a
    /// retry (the reply was lost) gets the same answer instead of more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationRecord>,
    /// When the handle was created (unix ms); absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ms: Option<i64>,
}

/// One `allocate` of a handle: the request's shape and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRecord {
    pub num_ipv4: u32,
    pub num_ipv6: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_addrs: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<IpNet>,
    /// The addresses handed out, in the order of the reply.
    pub addrs: Vec<IpAddr>,
}

impl AllocationRecord {
    fn describe(&self) -> String {
        let mut s = format!("{} IPv4 + {} IPv6", self.num_ipv4, self.num_ipv6);
        if !self.static_addrs.is_empty() {
            s.push_str(&format!(" with {}", list(&self.static_addrs)));
        }
        if let Some(p) = self.pool {
            s.push_str(&format!(" from pool {p}"));
        }
        s
    }
}

/// A network a pool must not overlap, and how to name it in the error
/// ("this host's route 10.1.0.0/16 via eth0").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    pub net: IpNet,
    pub what: String,
}

/// Ranges no pool may overlap on any host: loopback, link-local (the
/// containers' gateway lives there), multicast, unspecified, broadcast.
pub fn reserved_networks() -> Vec<Forbidden> {
    [
        ("0.0.0.0/8", "the unspecified range 0.0.0.0/8"),
        ("127.0.0.0/8", "the loopback range 127.0.0.0/8"),
        ("169.254.0.0/16", "the link-local range 169.254.0.0/16"),
        ("224.0.0.0/4", "the multicast range 224.0.0.0/4"),
        (
            "255.255.255.255/32",
            "the broadcast address 255.255.255.255",
        ),
        ("::/128", "the unspecified address ::"),
        ("::1/128", "the loopback address ::1"),
        ("::ffff:0:0/96", "the IPv4-mapped range ::ffff:0:0/96"),
        ("fe80::/10", "the link-local range fe80::/10"),
        ("ff00::/8", "the multicast range ff00::/8"),
    ]
    .into_iter()
    .map(|(net, what)| Forbidden {
        net: net.parse().expect("a valid network"),
        what: what.to_string(),
    })
    .collect()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Allocated {
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl Allocated {
    fn push(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(a) => self.ipv4.push(a),
            IpAddr::V6(a) => self.ipv6.push(a),
        }
    }
}

/// An allocation request: `static_addrs` are reserved by value and count toward the totals.
#[derive(Debug, Clone, Default)]
pub struct AllocRequest {
    pub handle: String,
    pub attrs: AllocAttrs,
    pub num_ipv4: u32,
    pub num_ipv6: u32,
    pub static_addrs: Vec<IpAddr>,
    /// Allocate only from this pool (for its family); any pool when `None`.
    pub pool: Option<IpNet>,
}

/// How a pool add went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolAdded {
    Added,
    /// The same pool (same range, block size and quarantine) was there already.
    Unchanged,
}

/// Routing and NAT options of a new pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolOptions {
    pub vxlan_mode: netmod_model::VxlanMode,
    pub nat_outgoing: bool,
    pub disabled: bool,
}

/// What `pool set` changes (None: keep).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolChanges {
    pub vxlan_mode: Option<netmod_model::VxlanMode>,
    pub nat_outgoing: Option<bool>,
    pub disabled: Option<bool>,
}

pub struct Ipam<'a> {
    store: &'a dyn Store,
    /// Pools as last read, with their revisions: every transaction checks them,
    /// so a stale copy can only cost a retry, never a wrong allocation.
    pools: std::cell::RefCell<Option<std::rc::Rc<PoolSnapshot>>>,
}

struct PoolSnapshot {
    pools: Vec<Pool>,
    compares: Vec<Compare>,
    /// Pool records this version cannot read, with the range their key names.
    unreadable: Vec<(Option<IpNet>, Undecodable)>,
}

pub(crate) fn esc(net: &IpNet) -> String {
    net.to_string().replace('/', "-")
}

pub(crate) fn netmod_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn block_key(cidr: &IpNet) -> String {
    format!("{BLOCKS}{}", esc(cidr))
}
pub fn handle_key(handle: &str) -> String {
    format!("{HANDLES}{handle}")
}
fn pool_key(cidr: &IpNet) -> String {
    format!("{POOLS}{}", esc(cidr))
}
/// The range a pool or block key names (`ipam/blocks/10.0.0.0-26`).
pub(crate) fn key_cidr(key: &str, prefix: &str) -> Option<IpNet> {
    key.strip_prefix(prefix)?.replacen('-', "/", 1).parse().ok()
}
pub(crate) fn affinity_key(host: &str, block: &IpNet, full: bool) -> String {
    let prefix = if full { AFFINITY_FULL } else { AFFINITY };
    format!("{prefix}{host}/{}", esc(block))
}

fn family_name(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

impl<'a> Ipam<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Ipam {
            store,
            pools: Default::default(),
        }
    }

    /// Every pool this version can read (see [`Ipam::pools_checked`]).
    pub fn pools(&self) -> Result<Vec<Pool>> {
        Ok(self.pools_checked()?.0)
    }

    /// Every pool, and the pool records that cannot be read (skipped).
    pub fn pools_checked(&self) -> Result<(Vec<Pool>, Vec<Undecodable>)> {
        let (kvs, _) = self.store.range(POOLS)?;
        let (good, bad) = decode_all::<Pool>(&kvs);
        let mut pools: Vec<Pool> = good.into_iter().map(|(_, p)| p).collect();
        pools.sort_by_key(|p| p.cidr);
        Ok((pools, bad))
    }

    /// Add a pool that overlaps no reserved range (see [`reserved_networks`])
    /// and no other pool. Adding the same pool again changes nothing.
    pub fn add_pool(
        &self,
        cidr: IpNet,
        block_prefix: Option<u8>,
        quarantine_secs: u64,
    ) -> Result<Pool> {
        Ok(self
            .add_pool_checked(cidr, block_prefix, quarantine_secs, &[])?
            .0)
    }

    /// `add_pool`, also refusing a pool that overlaps any of `forbidden`
    /// (the caller's: this host's addresses and routes), and saying whether
    /// the pool was added or was there already, unchanged.
    pub fn add_pool_checked(
        &self,
        cidr: IpNet,
        block_prefix: Option<u8>,
        quarantine_secs: u64,
        forbidden: &[Forbidden],
    ) -> Result<(Pool, PoolAdded)> {
        self.add_pool_with(
            cidr,
            block_prefix,
            quarantine_secs,
            PoolOptions::default(),
            forbidden,
        )
    }

    /// `add_pool_checked` with routing and NAT options.
    pub fn add_pool_with(
        &self,
        cidr: IpNet,
        block_prefix: Option<u8>,
        quarantine_secs: u64,
        options: PoolOptions,
        forbidden: &[Forbidden],
    ) -> Result<(Pool, PoolAdded)> {
        if cidr.trunc() != cidr {
            return Err(IpamError::InvalidPool(format!(
                "{cidr} has host bits set; did you mean {}?",
                cidr.trunc()
            )));
        }
        for f in reserved_networks() {
            if overlaps(&cidr, &f.net) {
                return Err(IpamError::PoolForbidden { cidr, what: f.what });
            }
        }
        let block_prefix = block_prefix.unwrap_or_else(|| Pool::default_block_prefix(&cidr));
        if block_prefix < cidr.prefix_len() || block_prefix > cidr.max_prefix_len() {
            return Err(IpamError::InvalidPool(format!(
                "block size /{block_prefix} must be between /{} and /{}",
                cidr.prefix_len(),
                cidr.max_prefix_len()
            )));
        }
        if cidr.max_prefix_len() - block_prefix > 16 {
            return Err(IpamError::InvalidPool(format!(
                "block size /{block_prefix} is too large (at most 65536 addresses per block)"
            )));
        }
        let pool = Pool {
            cidr,
            block_prefix,
            quarantine_secs,
            vxlan_mode: options.vxlan_mode,
            nat_outgoing: options.nat_outgoing,
            disabled: options.disabled,
        };
        let (pools, unreadable) = self.pools_checked()?;
        if let Some(same) = pools.iter().find(|p| p.cidr == cidr) {
            if *same == pool {
                return Ok((pool, PoolAdded::Unchanged));
            }
            return Err(IpamError::PoolDiffers(
                cidr,
                same.block_prefix,
                same.quarantine_secs,
            ));
        }
        for f in forbidden {
            if overlaps(&cidr, &f.net) {
                return Err(IpamError::PoolForbidden {
                    cidr,
                    what: f.what.clone(),
                });
            }
        }
        for other in &pools {
            if overlaps(&cidr, &other.cidr) {
                return Err(IpamError::PoolOverlap(cidr, other.cidr));
            }
        }
        for bad in &unreadable {
            match key_cidr(&bad.key, POOLS) {
                Some(other) if !overlaps(&cidr, &other) => {}
                _ => return Err(IpamError::Unreadable(bad.clone())),
            }
        }
        let key = pool_key(&cidr);
        // The pools this handle cached are no longer all there are.
        *self.pools.borrow_mut() = None;
        let out = self
            .store
            .txn(&[Compare::absent(&key)], &[Op::put(&key, encode(&pool))])?;
        if !out.succeeded {
            // Added concurrently: the same pool is fine, another is not.
            return match self.store.get(&key)? {
                Some(kv) if decode::<Pool>(&kv)? == pool => Ok((pool, PoolAdded::Unchanged)),
                Some(kv) => {
                    let other: Pool = decode(&kv)?;
                    Err(IpamError::PoolDiffers(
                        cidr,
                        other.block_prefix,
                        other.quarantine_secs,
                    ))
                }
                None => Err(IpamError::PoolOverlap(cidr, cidr)),
            };
        }
        Ok((pool, PoolAdded::Added))
    }

    /// Change a pool's routing, NAT or disabled flag (what `changes` gives;
    /// the range, block size and quarantine stay). Returns the pool as it
    /// is now. Nodes follow through the change feed.
    pub fn set_pool(&self, cidr: IpNet, changes: PoolChanges) -> Result<Pool> {
        *self.pools.borrow_mut() = None;
        retry_txn(
            || {
                let key = pool_key(&cidr);
                let Some(kv) = self.store.get(&key)? else {
                    return Err(IpamError::NoSuchPool(cidr).into_store_passthrough());
                };
                let mut pool: Pool = decode(&kv)?;
                if let Some(m) = changes.vxlan_mode {
                    pool.vxlan_mode = m;
                }
                if let Some(n) = changes.nat_outgoing {
                    pool.nat_outgoing = n;
                }
                if let Some(d) = changes.disabled {
                    pool.disabled = d;
                }
                let ops = [Op::put(&key, encode(&pool))];
                Ok(self
                    .store
                    .txn(&[Compare::unchanged(&kv)], &ops)?
                    .succeeded
                    .then_some(pool))
            },
            MAX_ATTEMPTS,
        )
        .map_err(IpamError::from_store_passthrough)
    }

    /// Remove a pool. Refused while it has live allocations, unless `force`,
    /// which also drops those allocations from their handles.
    pub fn remove_pool(&self, cidr: IpNet, force: bool) -> Result<usize> {
        *self.pools.borrow_mut() = None;
        retry_txn(
            || {
                let key = pool_key(&cidr);
                let Some(pool_kv) = self.store.get(&key)? else {
                    return Err(IpamError::NoSuchPool(cidr).into_store_passthrough());
                };
                let (blocks, _) = self.store.range(BLOCKS)?;
                let mut compares = vec![Compare::unchanged(&pool_kv)];
                let mut ops = vec![Op::delete(&key)];
                let mut live = 0;
                let mut by_handle: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
                let (blocks, unreadable) = decode_all::<Block>(&blocks);
                for bad in unreadable {
                    // A block of this pool that we cannot read could hold anything.
                    if key_cidr(&bad.key, BLOCKS).is_none_or(|b| overlaps(&b, &cidr)) {
                        return Err(IpamError::Unreadable(bad).into_store_passthrough());
                    }
                }
                for (kv, block) in &blocks {
                    if block.pool != cidr {
                        continue;
                    }
                    live += block.slots.len();
                    for (ord, h) in &block.slots {
                        by_handle
                            .entry(h.clone())
                            .or_default()
                            .push(nth(&block.cidr, *ord));
                    }
                    compares.push(Compare::unchanged(kv));
                    ops.push(Op::delete(&kv.key));
                    if let Some(host) = &block.host {
                        ops.push(Op::delete(affinity_key(host, &block.cidr, false)));
                        ops.push(Op::delete(affinity_key(host, &block.cidr, true)));
                    }
                }
                if live > 0 && !force {
                    return Err(IpamError::PoolInUse { pool: cidr, live }.into_store_passthrough());
                }
                for (h, addrs) in by_handle {
                    let hkey = handle_key(&h);
                    if let Some(hkv) = self.store.get(&hkey)? {
                        let mut rec: HandleRecord = decode(&hkv)?;
                        rec.addrs.retain(|a| !addrs.contains(a));
                        if let Some(a) = &rec.allocation {
                            if a.addrs.iter().any(|x| addrs.contains(x)) {
                                rec.allocation = None;
                            }
                        }
                        compares.push(Compare::unchanged(&hkv));
                        ops.push(if rec.addrs.is_empty() {
                            Op::delete(&hkey)
                        } else {
                            Op::put(&hkey, encode(&rec))
                        });
                    }
                }
                Ok(self.store.txn(&compares, &ops)?.succeeded.then_some(live))
            },
            MAX_ATTEMPTS,
        )
        .map_err(IpamError::from_store_passthrough)
    }

    /// Allocate `num_ipv4` + `num_ipv6` addresses for a handle (the static ones
    /// by value, the rest from the host's blocks). All or nothing.
    pub fn allocate(&self, req: &AllocRequest) -> Result<Allocated> {
        validate_handle(&req.handle)?;
        validate_host(&req.attrs.host)?;
        let static_v4 = req.static_addrs.iter().filter(|a| a.is_ipv4()).count() as u32;
        let static_v6 = req.static_addrs.len() as u32 - static_v4;
        if static_v4 > req.num_ipv4 || static_v6 > req.num_ipv6 {
            return Err(IpamError::Invalid(format!(
                "{} static address(es) requested but num_ipv4 is {} and num_ipv6 is {}",
                req.static_addrs.len(),
                req.num_ipv4,
                req.num_ipv6
            )));
        }
        self.run(|plan| {
            if let Some(rec) = plan.handle(&req.handle)? {
                if let Some(done) = &rec.allocation {
                    return same_allocation(&rec, done, req);
                }
            }
            let mut got = Allocated::default();
            for addr in &req.static_addrs {
                plan.take_specific(*addr, &req.handle, false)?;
                got.push(*addr);
            }
            for _ in static_v4..req.num_ipv4 {
                got.push(plan.take_next(false, &req.attrs.host, &req.handle, req.pool)?);
            }
            for _ in static_v6..req.num_ipv6 {
                got.push(plan.take_next(true, &req.attrs.host, &req.handle, req.pool)?);
            }
            let addrs: Vec<IpAddr> = got
                .ipv4
                .iter()
                .map(|a| IpAddr::V4(*a))
                .chain(got.ipv6.iter().map(|a| IpAddr::V6(*a)))
                .collect();
            plan.hold(&req.handle, &req.attrs, addrs.iter().copied())?;
            plan.record_allocation(
                &req.handle,
                AllocationRecord {
                    num_ipv4: req.num_ipv4,
                    num_ipv6: req.num_ipv6,
                    static_addrs: req.static_addrs.clone(),
                    pool: req.pool,
                    addrs,
                },
            );
            Ok(got)
        })
    }

    /// Reserve exactly these addresses for a handle. If any is taken, none is.
    /// A quarantined address is refused (see [`Release`]).
    pub fn reserve(&self, handle: &str, attrs: &AllocAttrs, addrs: &[IpAddr]) -> Result<()> {
        self.reserve_with(handle, attrs, addrs, false)
    }

    /// `reserve`; with `ignore_quarantine`, also addresses still in
    /// quarantine. For operators only (`netmod ipam reserve
    /// --ignore-quarantine`): the doors never pass it.
    pub fn reserve_with(
        &self,
        handle: &str,
        attrs: &AllocAttrs,
        addrs: &[IpAddr],
        ignore_quarantine: bool,
    ) -> Result<()> {
        validate_handle(handle)?;
        validate_host(&attrs.host)?;
        if addrs.is_empty() {
            return Err(IpamError::Invalid("no address to reserve".into()));
        }
        self.run(|plan| {
            for addr in addrs {
                plan.take_specific(*addr, handle, ignore_quarantine)?;
            }
            plan.hold(handle, attrs, addrs.iter().copied())
        })
    }

    /// Start these addresses' quarantine again from now, if they are in
    /// quarantine: for a container removed after its addresses were released
    /// (net-modules may send `release` before `cleanup`), so that hosts must
    /// apply the removal itself before the addresses go to anyone else.
    /// Addresses held, free, or outside every pool are left alone.
    pub fn restart_quarantine(&self, addrs: &[IpAddr]) -> Result<usize> {
        self.restart_quarantine_with(addrs, &[])
    }

    /// `restart_quarantine`, committed in one transaction with `extra` (the
    /// deletion of the endpoint record that held the addresses): a crash can
    /// never leave the record gone and the quarantine not restarted.
    pub fn restart_quarantine_with(&self, addrs: &[IpAddr], extra: &[Op]) -> Result<usize> {
        self.run_with(extra, |plan| {
            let mut n = 0;
            for addr in addrs {
                if plan.restart_quarantine(*addr)? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// Release everything a handle holds; the addresses go into quarantine.
    pub fn release_handle(&self, handle: &str) -> Result<Vec<IpAddr>> {
        self.run(|plan| {
            let Some(rec) = plan.handle(handle)? else {
                return Err(IpamError::UnknownHandle(handle.to_string()));
            };
            for addr in &rec.addrs {
                plan.free(*addr, Some(handle))?;
            }
            plan.drop_handle(handle);
            Ok(rec.addrs)
        })
    }

    /// Release these addresses whoever holds them. Returns (address, former handle)
    /// for those that were held; addresses in a pool but not held are skipped.
    pub fn release_addrs(&self, addrs: &[IpAddr]) -> Result<Vec<(IpAddr, String)>> {
        let snap = self.pool_snapshot()?;
        for a in addrs {
            if !snap.pools.iter().any(|p| p.cidr.contains(a)) {
                return Err(snap.outside(*a));
            }
        }
        self.run(|plan| {
            let mut released = Vec::new();
            for addr in addrs {
                if let Some(h) = plan.free(*addr, None)? {
                    plan.unhold(&h, *addr)?;
                    released.push((*addr, h));
                }
            }
            Ok(released)
        })
    }

    pub fn handle(&self, handle: &str) -> Result<Option<HandleRecord>> {
        Ok(match self.store.get(&handle_key(handle))? {
            Some(kv) => Some(read(&kv)?),
            None => None,
        })
    }

    /// Whether an address lies in some pool (from the pool list this
    /// `Ipam` already read, so calling it before `holder` costs no extra read).
    pub fn in_pool(&self, addr: &IpAddr) -> Result<bool> {
        Ok(self
            .pool_snapshot()?
            .pools
            .iter()
            .any(|p| p.cidr.contains(addr)))
    }

    /// The handle holding an address, if any.
    pub fn holder(&self, addr: &IpAddr) -> Result<Option<String>> {
        let snap = self.pool_snapshot()?;
        let Some(pool) = snap.pools.iter().find(|p| p.cidr.contains(addr)) else {
            return Ok(None);
        };
        let cidr = IpNet::new(*addr, pool.block_prefix)
            .expect("prefix checked when the pool was added")
            .trunc();
        Ok(match self.store.get(&block_key(&cidr))? {
            Some(kv) => read::<Block>(&kv)?
                .slots
                .get(&ordinal(&cidr, addr))
                .cloned(),
            None => None,
        })
    }

    /// Every handle this version can read (see [`Ipam::handles_checked`]).
    pub fn handles(&self) -> Result<Vec<HandleRecord>> {
        Ok(self.handles_checked()?.0)
    }

    /// Every handle, and the handle records that cannot be read (skipped).
    pub fn handles_checked(&self) -> Result<(Vec<HandleRecord>, Vec<Undecodable>)> {
        let (kvs, _) = self.store.range(HANDLES)?;
        let (good, bad) = decode_all(&kvs);
        Ok((good.into_iter().map(|(_, h)| h).collect(), bad))
    }

    /// Every block this version can read (see [`Ipam::blocks_checked`]).
    pub fn blocks(&self) -> Result<Vec<Block>> {
        Ok(self.blocks_checked()?.0)
    }

    /// Every block, and the block records that cannot be read (skipped).
    pub fn blocks_checked(&self) -> Result<(Vec<Block>, Vec<Undecodable>)> {
        let (kvs, _) = self.store.range(BLOCKS)?;
        let (good, bad) = decode_all::<Block>(&kvs);
        let mut blocks: Vec<Block> = good
            .into_iter()
            .map(|(kv, b)| resolve_releases(b, kv))
            .collect();
        blocks.sort_by_key(|b| b.cidr);
        Ok((blocks, bad))
    }

    /// Blocks affine to a host: the routes other hosts need to reach its tasks.
    pub fn host_blocks(&self, host: &str) -> Result<Vec<IpNet>> {
        let mut blocks = Vec::new();
        for prefix in [AFFINITY, AFFINITY_FULL] {
            for key in self.store.keys(&format!("{prefix}{host}/"))? {
                let tail = key.rsplit('/').next().unwrap_or_default();
                if let Ok(cidr) = tail.replacen('-', "/", 1).parse() {
                    blocks.push(cidr);
                }
            }
        }
        blocks.sort();
        Ok(blocks)
    }

    /// Every inconsistency between blocks and handles (empty when all is well).
    pub fn check_consistency(&self) -> Result<Vec<String>> {
        let (blocks, bad_blocks) = self.blocks_checked()?;
        let (handles, bad_handles) = self.handles_checked()?;
        let mut problems: Vec<String> = bad_blocks
            .iter()
            .chain(&bad_handles)
            .map(|bad| format!("unreadable record {bad}"))
            .collect();
        let mut held: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for b in &blocks {
            for (ord, h) in &b.slots {
                held.insert(nth(&b.cidr, *ord), h);
            }
        }
        let mut listed = 0;
        for rec in &handles {
            if rec.addrs.is_empty() {
                problems.push(format!("handle {} holds nothing", rec.handle));
            }
            for a in &rec.addrs {
                listed += 1;
                match held.get(a) {
                    Some(h) if *h == rec.handle => {}
                    Some(h) => {
                        problems.push(format!("{a}: handle {} but block says {h}", rec.handle))
                    }
                    None => {
                        problems.push(format!("{a}: handle {} but block slot free", rec.handle))
                    }
                }
            }
        }
        if listed != held.len() && bad_blocks.is_empty() && bad_handles.is_empty() {
            problems.push(format!(
                "{} block slots held but {listed} addresses in handles",
                held.len()
            ));
        }
        Ok(problems)
    }

    /// Run a plan to completion, retrying when another writer got there first.
    fn pool_snapshot(&self) -> Result<std::rc::Rc<PoolSnapshot>> {
        if let Some(snap) = self.pools.borrow().as_ref() {
            return Ok(snap.clone());
        }
        let (kvs, _) = self.store.range(POOLS)?;
        let (good, bad) = decode_all::<Pool>(&kvs);
        let mut pools: Vec<Pool> = good.into_iter().map(|(_, p)| p).collect();
        pools.sort_by_key(|p| p.cidr);
        let snap = std::rc::Rc::new(PoolSnapshot {
            pools,
            compares: kvs.iter().map(Compare::unchanged).collect(),
            unreadable: bad
                .into_iter()
                .map(|b| (key_cidr(&b.key, POOLS), b))
                .collect(),
        });
        *self.pools.borrow_mut() = Some(snap.clone());
        Ok(snap)
    }

    fn run<T>(&self, f: impl FnMut(&mut Plan) -> Result<T>) -> Result<T> {
        self.run_with(&[], f)
    }

    /// `run`, with `extra` operations committed in the same transaction.
    fn run_with<T>(&self, extra: &[Op], mut f: impl FnMut(&mut Plan) -> Result<T>) -> Result<T> {
        for attempt in 0..MAX_ATTEMPTS {
            let snap = self.pool_snapshot()?;
            let mut plan = Plan::new(self.store, &snap);
            let value = match f(&mut plan) {
                Ok(v) => v,
                Err(e) => {
                    // What the failed operation learnt about releases every
                    // host has applied is kept: the quarantine counts from
                    // the first time anyone saw it.
                    let (compares, ops) = plan.confirmations_txn();
                    if !ops.is_empty() {
                        let _ = self.store.txn(&compares, &ops);
                    }
                    return Err(e);
                }
            };
            let (mut compares, mut ops) = plan.into_txn();
            ops.extend(extra.iter().cloned());
            if ops.is_empty() {
                return Ok(value);
            }
            compares.extend(snap.compares.iter().cloned());
            if self.store.txn(&compares, &ops)?.succeeded {
                return Ok(value);
            }
            // Someone else wrote first (or the pools changed): read afresh.
            *self.pools.borrow_mut() = None;
            if attempt > 4 {
                std::thread::sleep(std::time::Duration::from_micros(100 * attempt as u64));
            }
        }
        Err(StoreError::TooMuchContention {
            attempts: MAX_ATTEMPTS,
        }
        .into())
    }
}

impl PoolSnapshot {
    /// Why an address is in no pool we know: outside every pool, or in one
    /// whose record this version cannot read.
    fn outside(&self, addr: IpAddr) -> IpamError {
        match self
            .unreadable
            .iter()
            .find(|(cidr, _)| cidr.is_none_or(|c| c.contains(&addr)))
        {
            Some((_, bad)) => IpamError::Unreadable(bad.clone()),
            None => IpamError::OutsidePools(addr),
        }
    }
}

impl IpamError {
    /// Carry an IPAM error through `retry_txn`, which speaks `StoreError`.
    fn into_store_passthrough(self) -> StoreError {
        StoreError::Backend {
            context: "ipam".into(),
            source: Box::new(PassThrough(self)),
        }
    }
    fn from_store_passthrough(e: StoreError) -> IpamError {
        match e {
            StoreError::Backend { source, context } => match source.downcast::<PassThrough>() {
                Ok(p) => p.0,
                Err(source) => IpamError::Store(StoreError::Backend { context, source }),
            },
            other => IpamError::Store(other),
        }
    }
}

#[derive(Debug)]
struct PassThrough(IpamError);
impl std::fmt::Display for PassThrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for PassThrough {}

fn validate_handle(handle: &str) -> Result<()> {
    if handle.is_empty() || handle.len() > 512 || handle.chars().any(|c| c.is_control()) {
        return Err(IpamError::Invalid(format!(
            "handle {handle:?} must be 1 to 512 printable characters"
        )));
    }
    Ok(())
}

fn validate_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !ok {
        return Err(IpamError::Invalid(format!(
            "hostname {host:?} must be 1 to 253 letters, digits, '-', '.' or '_'"
        )));
    }
    Ok(())
}

/// The `ord`th address of a block.
pub fn nth(cidr: &IpNet, ord: u32) -> IpAddr {
    match cidr {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + ord)),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + ord as u128)),
    }
}

/// The ordinal of an address within a block.
pub fn ordinal(cidr: &IpNet, addr: &IpAddr) -> u32 {
    match (cidr, addr) {
        (IpNet::V4(n), IpAddr::V4(a)) => u32::from(*a) - u32::from(n.network()),
        (IpNet::V6(n), IpAddr::V6(a)) => (u128::from(*a) - u128::from(n.network())) as u32,
        _ => u32::MAX,
    }
}

pub(crate) fn read<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|e| {
        IpamError::Unreadable(Undecodable {
            key: kv.key.clone(),
            error: e.to_string(),
        })
    })
}

/// A block as read: a release recorded by the write that stored it (no
/// revision yet) gets that write's revision, the block's mod revision.
pub(crate) fn resolve_releases(mut block: Block, kv: &KeyValue) -> Block {
    for rel in block.released.values_mut() {
        rel.revision.get_or_insert(kv.mod_revision);
    }
    block
}

/// A retried allocate: the same answer as the first time, or why not.
fn same_allocation(
    rec: &HandleRecord,
    done: &AllocationRecord,
    req: &AllocRequest,
) -> Result<Allocated> {
    let mut want_static = req.static_addrs.clone();
    want_static.sort();
    want_static.dedup();
    let mut had_static = done.static_addrs.clone();
    had_static.sort();
    had_static.dedup();
    let same = done.num_ipv4 == req.num_ipv4
        && done.num_ipv6 == req.num_ipv6
        && had_static == want_static
        && done.pool == req.pool
        && rec.attrs.host == req.attrs.host
        && done.addrs.iter().all(|a| rec.addrs.contains(a));
    if !same {
        let mut asked = AllocationRecord {
            num_ipv4: req.num_ipv4,
            num_ipv6: req.num_ipv6,
            static_addrs: req.static_addrs.clone(),
            pool: req.pool,
            addrs: Vec::new(),
        }
        .describe();
        let mut held = format!("allocated as {}", done.describe());
        if rec.attrs.host != req.attrs.host {
            held.push_str(&format!(" on host {}", rec.attrs.host));
            asked.push_str(&format!(" on host {}", req.attrs.host));
        }
        if !done.addrs.iter().all(|a| rec.addrs.contains(a)) {
            held.push_str(", since partly released");
        }
        return Err(IpamError::HandleConflict {
            handle: rec.handle.clone(),
            holds: rec.addrs.clone(),
            held,
            asked,
        });
    }
    let mut got = Allocated::default();
    for a in &done.addrs {
        got.push(*a);
    }
    Ok(got)
}

#[cfg(test)]
mod tests;
