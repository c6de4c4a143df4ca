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
use netmod_store::{decode, encode, retry_txn, Compare, KeyValue, Op, Store, StoreError};
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

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("no free {family} address in pool(s) {pools}{}", quarantine_note(*quarantined, *until_ms))]
    Exhausted {
        family: &'static str,
        pools: String,
        quarantined: usize,
        until_ms: i64,
    },
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
    #[error("invalid pool: {0}")]
    InvalidPool(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn quarantine_note(quarantined: usize, until_ms: i64) -> String {
    if quarantined == 0 {
        return String::new();
    }
    let secs = ((until_ms - netmod_now_ms()).max(0) + 999) / 1000;
    format!(
        "; {quarantined} released address(es) are in quarantine, the first free again in {secs} s"
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
    /// Ordinal → unix ms until which it must not be handed out.
    #[serde(default)]
    pub quarantine: BTreeMap<u32, i64>,
}

/// What a handle holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleRecord {
    pub handle: String,
    pub attrs: AllocAttrs,
    pub addrs: Vec<IpAddr>,
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

pub struct Ipam<'a> {
    store: &'a dyn Store,
    /// Pools as last read, with their revisions: every transaction checks them,
    /// so a stale copy can only cost a retry, never a wrong allocation.
    pools: std::cell::RefCell<Option<std::rc::Rc<PoolSnapshot>>>,
}

struct PoolSnapshot {
    pools: Vec<Pool>,
    compares: Vec<Compare>,
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

    pub fn pools(&self) -> Result<Vec<Pool>> {
        let (kvs, _) = self.store.range(POOLS)?;
        let mut pools: Vec<Pool> = kvs.iter().map(decode).collect::<Result<_, _>>()?;
        pools.sort_by_key(|p| p.cidr);
        Ok(pools)
    }

    pub fn add_pool(
        &self,
        cidr: IpNet,
        block_prefix: Option<u8>,
        quarantine_secs: u64,
    ) -> Result<Pool> {
        if cidr.trunc() != cidr {
            return Err(IpamError::InvalidPool(format!(
                "{cidr} has host bits set; did you mean {}?",
                cidr.trunc()
            )));
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
        };
        for other in self.pools()? {
            if other.cidr.contains(&cidr.network()) || cidr.contains(&other.cidr.network()) {
                if other == pool {
                    return Ok(pool); // adding the same pool again changes nothing
                }
                return Err(IpamError::PoolOverlap(cidr, other.cidr));
            }
        }
        let key = pool_key(&cidr);
        let out = self
            .store
            .txn(&[Compare::absent(&key)], &[Op::put(&key, encode(&pool))])?;
        if !out.succeeded {
            // Added concurrently: the same pool is fine, another is not.
            return match self.store.get(&key)? {
                Some(kv) if decode::<Pool>(&kv)? == pool => Ok(pool),
                _ => Err(IpamError::PoolOverlap(cidr, cidr)),
            };
        }
        Ok(pool)
    }

    /// Remove a pool. Refused while it has live allocations, unless `force`,
    /// which also drops those allocations from their handles.
    pub fn remove_pool(&self, cidr: IpNet, force: bool) -> Result<usize> {
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
                for kv in &blocks {
                    let block: Block = decode(kv)?;
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
            let mut got = Allocated::default();
            for addr in &req.static_addrs {
                plan.take_specific(*addr, &req.handle)?;
                got.push(*addr);
            }
            for _ in static_v4..req.num_ipv4 {
                got.push(plan.take_next(false, &req.attrs.host, &req.handle, req.pool)?);
            }
            for _ in static_v6..req.num_ipv6 {
                got.push(plan.take_next(true, &req.attrs.host, &req.handle, req.pool)?);
            }
            plan.hold(
                &req.handle,
                &req.attrs,
                got.ipv4
                    .iter()
                    .map(|a| IpAddr::V4(*a))
                    .chain(got.ipv6.iter().map(|a| IpAddr::V6(*a))),
            )?;
            Ok(got)
        })
    }

    /// Reserve exactly these addresses for a handle. If any is taken, none is.
    pub fn reserve(&self, handle: &str, attrs: &AllocAttrs, addrs: &[IpAddr]) -> Result<()> {
        validate_handle(handle)?;
        validate_host(&attrs.host)?;
        if addrs.is_empty() {
            return Err(IpamError::Invalid("no address to reserve".into()));
        }
        self.run(|plan| {
            for addr in addrs {
                plan.take_specific(*addr, handle)?;
            }
            plan.hold(handle, attrs, addrs.iter().copied())
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
                return Err(IpamError::OutsidePools(*a));
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
            Some(kv) => Some(decode(&kv)?),
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

    pub fn handles(&self) -> Result<Vec<HandleRecord>> {
        let (kvs, _) = self.store.range(HANDLES)?;
        Ok(kvs.iter().map(decode).collect::<Result<_, _>>()?)
    }

    pub fn blocks(&self) -> Result<Vec<Block>> {
        let (kvs, _) = self.store.range(BLOCKS)?;
        let mut blocks: Vec<Block> = kvs.iter().map(decode).collect::<Result<_, _>>()?;
        blocks.sort_by_key(|b| b.cidr);
        Ok(blocks)
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
        let blocks = self.blocks()?;
        let handles = self.handles()?;
        let mut problems = Vec::new();
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
        if listed != held.len() {
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
        let mut pools: Vec<Pool> = kvs.iter().map(decode).collect::<Result<_, _>>()?;
        pools.sort_by_key(|p| p.cidr);
        let snap = std::rc::Rc::new(PoolSnapshot {
            pools,
            compares: kvs.iter().map(Compare::unchanged).collect(),
        });
        *self.pools.borrow_mut() = Some(snap.clone());
        Ok(snap)
    }

    fn run<T>(&self, mut f: impl FnMut(&mut Plan) -> Result<T>) -> Result<T> {
        for attempt in 0..MAX_ATTEMPTS {
            let snap = self.pool_snapshot()?;
            let mut plan = Plan::new(self.store, &snap.pools);
            let value = f(&mut plan)?;
            let (mut compares, ops) = plan.into_txn();
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
    Ok(decode(kv)?)
}

#[cfg(test)]
mod tests;
