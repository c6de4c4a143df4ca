//! One IPAM operation in the making: the blocks and handles it read, what it
//! changed, and the compare-and-swap transaction that commits it.

use crate::*;

struct Cached<T> {
    read: Option<KeyValue>,
    value: Option<T>,
    dirty: bool,
    /// For blocks: how many slots were held when read.
    held_when_read: usize,
    /// The record exists but this version cannot read it: never written over.
    unreadable: Option<Undecodable>,
}

impl<T> Cached<T> {
    fn absent() -> Self {
        Cached {
            read: None,
            value: None,
            dirty: false,
            held_when_read: 0,
            unreadable: None,
        }
    }
}

/// The live hosts, as far as quarantine cares: how far each has applied.
pub(crate) struct Hosts {
    /// (name, applied revision) of every host record.
    applied: Vec<(String, Option<i64>)>,
    /// Host records that cannot be read: live hosts we know nothing about.
    unreadable: Vec<String>,
}

/// The part of a `hosts/<name>` record quarantine reads: written by `netmod
/// node` as `netmod_model::Host`, whose other fields do not matter here.
#[derive(Deserialize)]
struct HostProgress {
    name: String,
    #[serde(default)]
    applied_revision: Option<u64>,
}

impl Hosts {
    pub(crate) fn read(store: &dyn Store) -> Result<Hosts> {
        let (kvs, _) = store.range(HOSTS_PREFIX)?;
        let (good, bad) = decode_all::<HostProgress>(&kvs);
        Ok(Hosts {
            applied: good
                .into_iter()
                .map(|(_, h)| {
                    let applied = h
                        .applied_revision
                        .map(|r| i64::try_from(r).unwrap_or(i64::MAX));
                    (h.name, applied)
                })
                .collect(),
            unreadable: bad.into_iter().map(|b| b.key).collect(),
        })
    }

    /// The live hosts that have not applied `revision` yet, described. Empty
    /// when every live host has (and when there are none).
    pub(crate) fn behind(&self, revision: i64) -> Vec<String> {
        let mut out: Vec<String> = self
            .applied
            .iter()
            .filter(|(_, applied)| applied.is_none_or(|a| a < revision))
            .map(|(name, applied)| match applied {
                Some(a) => format!("{name} at revision {a} of {revision}"),
                None => format!("{name} reports no applied revision"),
            })
            .collect();
        out.extend(
            self.unreadable
                .iter()
                .map(|key| format!("{key} (record unreadable)")),
        );
        out
    }
}

/// Where a slot of a block stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Held,
    Free,
    /// Released; free again at this time (unix ms).
    Quarantined(i64),
    /// Released at this revision, which some live host has not applied
    /// (as far as the block records).
    Awaiting(i64),
}

/// A slot's state by what the block records (confirmations already applied).
pub(crate) fn slot_state(block: &Block, ord: u32, now: i64) -> SlotState {
    if block.slots.contains_key(&ord) {
        return SlotState::Held;
    }
    if let Some(rel) = block.released.get(&ord) {
        return match rel.confirmed_ms {
            Some(t) if t + rel.quarantine_ms > now => SlotState::Quarantined(t + rel.quarantine_ms),
            Some(_) => SlotState::Free,
            None => SlotState::Awaiting(rel.revision.unwrap_or(i64::MAX)),
        };
    }
    match block.quarantine.get(&ord) {
        Some(until) if *until > now => SlotState::Quarantined(*until),
        _ => SlotState::Free,
    }
}

/// Record `now` as the confirmation of every release in `block` that every
/// live host has applied; returns the ordinals confirmed.
pub(crate) fn confirm_releases(block: &mut Block, hosts: &Hosts, now: i64) -> Vec<u32> {
    let mut confirmed = Vec::new();
    for (ord, rel) in block.released.iter_mut() {
        if rel.confirmed_ms.is_none() && hosts.behind(rel.revision.unwrap_or(i64::MAX)).is_empty() {
            rel.confirmed_ms = Some(now);
            confirmed.push(*ord);
        }
    }
    for ord in &confirmed {
        let until = now + block.released[ord].quarantine_ms;
        block.quarantine.insert(*ord, until);
    }
    confirmed
}

pub(crate) struct Plan<'s> {
    store: &'s dyn Store,
    snap: &'s PoolSnapshot,
    pools: &'s [Pool],
    blocks: BTreeMap<IpNet, Cached<Block>>,
    all_blocks_loaded: bool,
    affinity_loaded: Vec<String>,
    new_affinity: Vec<(String, IpNet)>,
    handles: BTreeMap<String, Cached<HandleRecord>>,
    hosts: Option<Hosts>,
    /// Releases confirmed by this plan, per block: (ordinal, time).
    confirmed: BTreeMap<IpNet, Vec<u32>>,
    now: i64,
}

impl<'s> Plan<'s> {
    pub(crate) fn new(store: &'s dyn Store, snap: &'s PoolSnapshot) -> Self {
        Plan {
            store,
            snap,
            pools: &snap.pools,
            blocks: BTreeMap::new(),
            all_blocks_loaded: false,
            affinity_loaded: Vec::new(),
            new_affinity: Vec::new(),
            handles: BTreeMap::new(),
            hosts: None,
            confirmed: BTreeMap::new(),
            now: netmod_now_ms(),
        }
    }

    fn pool_of(&self, addr: &IpAddr) -> Result<&'s Pool> {
        self.pools
            .iter()
            .find(|p| p.cidr.contains(addr))
            .ok_or_else(|| self.snap.outside(*addr))
    }

    fn hosts(&mut self) -> Result<&Hosts> {
        if self.hosts.is_none() {
            self.hosts = Some(Hosts::read(self.store)?);
        }
        Ok(self.hosts.as_ref().expect("read above"))
    }

    fn cache_block(&mut self, cidr: IpNet, kv: Option<KeyValue>) {
        let mut entry = Cached::absent();
        if let Some(kv) = kv {
            match read::<Block>(&kv) {
                Ok(block) => {
                    entry.held_when_read = block.slots.len();
                    entry.value = Some(resolve_releases(block, &kv));
                }
                Err(IpamError::Unreadable(bad)) => entry.unreadable = Some(bad),
                Err(_) => unreachable!("read only fails as Unreadable"),
            }
            entry.read = Some(kv);
        }
        self.blocks.insert(cidr, entry);
    }

    /// Read a block (once): absent, readable, or unreadable (recorded).
    fn load_block(&mut self, cidr: IpNet) -> Result<()> {
        if !self.blocks.contains_key(&cidr) {
            let read = self.store.get(&block_key(&cidr))?;
            self.cache_block(cidr, read);
        }
        Ok(())
    }

    /// A block this operation must read or change: an unreadable one is an error.
    fn need_block(&mut self, cidr: IpNet) -> Result<()> {
        self.load_block(cidr)?;
        match &self.blocks[&cidr].unreadable {
            Some(bad) => Err(IpamError::Unreadable(bad.clone())),
            None => Ok(()),
        }
    }

    fn load_all_blocks(&mut self) -> Result<()> {
        if self.all_blocks_loaded {
            return Ok(());
        }
        let (kvs, _) = self.store.range(BLOCKS)?;
        for kv in kvs {
            // Blocks we cannot read are skipped (their keys still count as
            // claimed); the rest of the pool stays usable.
            if let Some(cidr) = key_cidr(&kv.key, BLOCKS) {
                if !self.blocks.contains_key(&cidr) {
                    self.cache_block(cidr, Some(kv));
                }
            }
        }
        self.all_blocks_loaded = true;
        Ok(())
    }

    /// Every block that exists, by key only (no values read).
    fn claimed_blocks(&self) -> Result<std::collections::BTreeSet<IpNet>> {
        Ok(self
            .store
            .keys(BLOCKS)?
            .iter()
            .filter_map(|k| key_cidr(k, BLOCKS))
            .collect())
    }

    fn load_affinity(&mut self, host: &str) -> Result<()> {
        if self.affinity_loaded.iter().any(|h| h == host) {
            return Ok(());
        }
        let prefix = format!("{AFFINITY}{host}/");
        for key in self.store.keys(&prefix)? {
            if let Some(cidr) = key_cidr(&key, &prefix) {
                self.load_block(cidr)?;
            }
        }
        self.affinity_loaded.push(host.to_string());
        Ok(())
    }

    /// A new block, affine to `host` (or to no host: a block opened only to
    /// hold an address asked for by value).
    fn claim(&mut self, pool: &Pool, cidr: IpNet, host: Option<&str>) {
        self.blocks.insert(
            cidr,
            Cached {
                value: Some(Block {
                    cidr,
                    pool: pool.cidr,
                    host: host.map(str::to_string),
                    slots: BTreeMap::new(),
                    quarantine: BTreeMap::new(),
                    released: BTreeMap::new(),
                }),
                dirty: true,
                ..Cached::absent()
            },
        );
        if let Some(host) = host {
            self.new_affinity.push((host.to_string(), cidr));
        }
    }

    /// Confirm the releases of a loaded block that every live host has
    /// applied (reading the hosts only when the block has one to confirm).
    fn confirm_in(&mut self, cidr: IpNet) -> Result<()> {
        let pending = self.blocks[&cidr]
            .value
            .as_ref()
            .is_some_and(|b| b.released.values().any(|r| r.confirmed_ms.is_none()));
        if !pending {
            return Ok(());
        }
        self.hosts()?;
        let now = self.now;
        let hosts = self.hosts.as_ref().expect("read above");
        let entry = self.blocks.get_mut(&cidr).expect("loaded");
        let block = entry.value.as_mut().expect("checked above");
        let confirmed = confirm_releases(block, hosts, now);
        if !confirmed.is_empty() {
            entry.dirty = true;
            self.confirmed.entry(cidr).or_default().extend(confirmed);
        }
        Ok(())
    }

    /// Why a slot is not free, as an error for an address asked for by value.
    fn quarantined(&mut self, addr: IpAddr, state: SlotState) -> Result<IpamError> {
        Ok(match state {
            SlotState::Quarantined(until) => IpamError::Quarantined {
                addr,
                until_ms: Some(until),
                waiting_for: Vec::new(),
            },
            _ => {
                let revision = match state {
                    SlotState::Awaiting(r) => r,
                    _ => i64::MAX,
                };
                IpamError::Quarantined {
                    addr,
                    until_ms: None,
                    waiting_for: self.hosts()?.behind(revision),
                }
            }
        })
    }

    /// Hold one given address for `handle`. A quarantined address is refused
    /// unless `ignore_quarantine` (an operator's explicit override).
    pub(crate) fn take_specific(
        &mut self,
        addr: IpAddr,
        handle: &str,
        ignore_quarantine: bool,
    ) -> Result<()> {
        let pool = self.pool_of(&addr)?;
        if is_reserved(pool, &addr) {
            return Err(IpamError::Invalid(format!(
                "{addr} is the network or broadcast address of pool {}",
                pool.cidr
            )));
        }
        let cidr = IpNet::new(addr, pool.block_prefix)
            .expect("prefix checked when the pool was added")
            .trunc();
        self.need_block(cidr)?;
        if self.blocks[&cidr].value.is_none() {
            self.claim(pool, cidr, None);
        }
        self.confirm_in(cidr)?;
        let ord = ordinal(&cidr, &addr);
        let now = self.now;
        let block = self.blocks[&cidr].value.as_ref().expect("present");
        match block.slots.get(&ord) {
            Some(h) if h == handle => return Ok(()),
            Some(h) => {
                return Err(IpamError::InUse {
                    addr,
                    holder: format!("handle {h:?}"),
                })
            }
            None => {}
        }
        if pool.disabled {
            return Err(IpamError::PoolDisabled(pool.cidr));
        }
        let state = slot_state(block, ord, now);
        if state != SlotState::Free && !ignore_quarantine {
            return Err(self.quarantined(addr, state)?);
        }
        let entry = self.blocks.get_mut(&cidr).expect("loaded above");
        let block = entry.value.as_mut().expect("present");
        block.quarantine.remove(&ord);
        block.released.remove(&ord);
        block.slots.insert(ord, handle.to_string());
        entry.dirty = true;
        Ok(())
    }

    /// Hold the next free address of a family for `handle`: the host's own
    /// blocks first, then a newly claimed block, then any block with room.
    pub(crate) fn take_next(
        &mut self,
        v6: bool,
        host: &str,
        handle: &str,
        only: Option<IpNet>,
    ) -> Result<IpAddr> {
        let pools: Vec<&Pool> = self
            .pools
            .iter()
            .filter(|p| p.cidr.network().is_ipv6() == v6)
            .filter(|p| only.is_none_or(|o| o.network().is_ipv6() != v6 || o == p.cidr))
            .collect();
        if pools.is_empty() {
            return Err(IpamError::NoPool(family_name(v6)));
        }
        // Disabled pools hand out nothing new; what they hold stays.
        let pools: Vec<&Pool> = match pools.iter().copied().filter(|p| !p.disabled).collect() {
            enabled if Vec::is_empty(&enabled) => {
                return Err(IpamError::PoolDisabled(pools[0].cidr))
            }
            enabled => enabled,
        };
        self.load_affinity(host)?;
        let in_pool = |b: &Block| pools.iter().any(|p| p.cidr == b.pool);
        let own = |b: &Block| b.host.as_deref() == Some(host) && in_pool(b);
        if let Some(addr) = self.take_in(v6, handle, own)? {
            return Ok(addr);
        }
        let claimed = self.claimed_blocks()?;
        for pool in &pools {
            let free = pool
                .cidr
                .subnets(pool.block_prefix)
                .expect("prefix checked when the pool was added")
                .find(|c| {
                    !claimed.contains(c)
                        && self
                            .blocks
                            .get(c)
                            .is_none_or(|b| b.value.is_none() && b.unreadable.is_none())
                });
            if let Some(cidr) = free {
                self.claim(pool, cidr, Some(host));
                if let Some(addr) = self.take_in(v6, handle, |b| b.cidr == cidr)? {
                    return Ok(addr);
                }
            }
        }
        self.load_all_blocks()?;
        if let Some(addr) = self.take_in(v6, handle, in_pool)? {
            return Ok(addr);
        }
        let now = self.now;
        let (mut quarantined, mut awaiting) = (0, 0);
        let mut until_ms = i64::MAX;
        let mut oldest_awaiting = i64::MAX;
        for b in self.blocks.values().filter_map(|c| c.value.as_ref()) {
            if b.cidr.network().is_ipv6() != v6 || !in_pool(b) {
                continue;
            }
            let ords = b.released.keys().chain(b.quarantine.keys());
            let ords: std::collections::BTreeSet<u32> = ords.copied().collect();
            for ord in ords {
                match slot_state(b, ord, now) {
                    SlotState::Quarantined(until) => {
                        quarantined += 1;
                        until_ms = until_ms.min(until);
                    }
                    SlotState::Awaiting(rev) => {
                        awaiting += 1;
                        oldest_awaiting = oldest_awaiting.min(rev);
                    }
                    _ => {}
                }
            }
        }
        let waiting_for = if awaiting > 0 {
            self.hosts()?.behind(oldest_awaiting)
        } else {
            Vec::new()
        };
        Err(IpamError::Exhausted {
            family: family_name(v6),
            pools: pools
                .iter()
                .map(|p| p.cidr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            quarantined,
            until_ms,
            awaiting,
            waiting_for,
        })
    }

    fn take_in(
        &mut self,
        v6: bool,
        handle: &str,
        choose: impl Fn(&Block) -> bool,
    ) -> Result<Option<IpAddr>> {
        let now = self.now;
        let candidates: Vec<IpNet> = self
            .blocks
            .iter()
            .filter_map(|(cidr, entry)| {
                let block = entry.value.as_ref()?;
                (block.cidr.network().is_ipv6() == v6 && choose(block)).then_some(*cidr)
            })
            .collect();
        for cidr in candidates {
            let Some(pool) = self
                .pools
                .iter()
                .find(|p| Some(p.cidr) == self.blocks[&cidr].value.as_ref().map(|b| b.pool))
            else {
                continue;
            };
            let has_room = self.blocks[&cidr]
                .value
                .as_ref()
                .is_some_and(|b| (b.slots.len() as u32) < block_size(b));
            if !has_room {
                continue;
            }
            self.confirm_in(cidr)?;
            let entry = self.blocks.get_mut(&cidr).expect("listed above");
            let block = entry.value.as_mut().expect("listed above");
            if let Some(ord) = free_ordinal(block, pool, now) {
                block.slots.insert(ord, handle.to_string());
                block.quarantine.remove(&ord);
                block.released.remove(&ord);
                entry.dirty = true;
                return Ok(Some(nth(&block.cidr, ord)));
            }
        }
        Ok(None)
    }

    /// Free one address (if `only_for` is given, only when that handle holds it).
    /// Returns the handle that held it.
    pub(crate) fn free(&mut self, addr: IpAddr, only_for: Option<&str>) -> Result<Option<String>> {
        let pool = self.pool_of(&addr)?;
        let cidr = IpNet::new(addr, pool.block_prefix)
            .expect("prefix checked when the pool was added")
            .trunc();
        self.need_block(cidr)?;
        let now = self.now;
        let entry = self.blocks.get_mut(&cidr).expect("loaded above");
        let Some(block) = entry.value.as_mut() else {
            return Ok(None);
        };
        let ord = ordinal(&cidr, &addr);
        match block.slots.get(&ord) {
            Some(h) if only_for.is_none_or(|want| want == h) => {}
            _ => return Ok(None),
        }
        let holder = block.slots.remove(&ord);
        if pool.quarantine_secs > 0 {
            let quarantine_ms = pool.quarantine_secs as i64 * 1000;
            block.quarantine.insert(ord, now + quarantine_ms);
            block.released.insert(
                ord,
                Release {
                    revision: None,
                    confirmed_ms: None,
                    quarantine_ms,
                },
            );
        }
        entry.dirty = true;
        Ok(holder)
    }

    /// Start a quarantined address's quarantine again from this write.
    pub(crate) fn restart_quarantine(&mut self, addr: IpAddr) -> Result<bool> {
        let Some(pool) = self.pools.iter().find(|p| p.cidr.contains(&addr)) else {
            return Ok(false);
        };
        let cidr = IpNet::new(addr, pool.block_prefix)
            .expect("prefix checked when the pool was added")
            .trunc();
        self.need_block(cidr)?;
        let now = self.now;
        let entry = self.blocks.get_mut(&cidr).expect("loaded above");
        let Some(block) = entry.value.as_mut() else {
            return Ok(false);
        };
        let ord = ordinal(&cidr, &addr);
        let quarantine_ms = match slot_state(block, ord, now) {
            SlotState::Quarantined(_) | SlotState::Awaiting(_) => block
                .released
                .get(&ord)
                .map_or(pool.quarantine_secs as i64 * 1000, |r| r.quarantine_ms),
            SlotState::Held | SlotState::Free => return Ok(false),
        };
        block.quarantine.insert(ord, now + quarantine_ms);
        block.released.insert(
            ord,
            Release {
                revision: None,
                confirmed_ms: None,
                quarantine_ms,
            },
        );
        entry.dirty = true;
        Ok(true)
    }

    pub(crate) fn handle(&mut self, handle: &str) -> Result<Option<HandleRecord>> {
        if !self.handles.contains_key(handle) {
            let found = self.store.get(&handle_key(handle))?;
            let value = found.as_ref().map(read::<HandleRecord>).transpose()?;
            self.handles.insert(
                handle.to_string(),
                Cached {
                    read: found,
                    value,
                    ..Cached::absent()
                },
            );
        }
        Ok(self.handles[handle].value.clone())
    }

    /// Record that `handle` holds these addresses (added to what it holds).
    pub(crate) fn hold(
        &mut self,
        handle: &str,
        attrs: &AllocAttrs,
        addrs: impl Iterator<Item = IpAddr>,
    ) -> Result<()> {
        self.handle(handle)?;
        let now = self.now;
        let entry = self.handles.get_mut(handle).expect("loaded above");
        let rec = entry.value.get_or_insert_with(|| HandleRecord {
            handle: handle.to_string(),
            attrs: attrs.clone(),
            addrs: Vec::new(),
            allocation: None,
            created_ms: Some(now),
        });
        rec.attrs = attrs.clone();
        for a in addrs {
            if !rec.addrs.contains(&a) {
                rec.addrs.push(a);
            }
        }
        entry.dirty = true;
        Ok(())
    }

    /// Remember what `allocate` asked and got (after `hold`).
    pub(crate) fn record_allocation(&mut self, handle: &str, allocation: AllocationRecord) {
        if let Some(rec) = self.handles.get_mut(handle).and_then(|e| e.value.as_mut()) {
            rec.allocation = Some(allocation);
        }
    }

    pub(crate) fn unhold(&mut self, handle: &str, addr: IpAddr) -> Result<()> {
        self.handle(handle)?;
        let entry = self.handles.get_mut(handle).expect("loaded above");
        if let Some(rec) = entry.value.as_mut() {
            // The allocation record stays: a retry of that allocate is then
            // refused ("partly released") rather than answered with more.
            rec.addrs.retain(|a| *a != addr);
            entry.dirty = true;
        }
        Ok(())
    }

    pub(crate) fn drop_handle(&mut self, handle: &str) {
        if let Some(entry) = self.handles.get_mut(handle) {
            entry.value = None;
            entry.dirty = true;
        }
    }

    /// For an operation that failed: only the confirmations it made, each on
    /// the block as it was read.
    pub(crate) fn confirmations_txn(&self) -> (Vec<Compare>, Vec<Op>) {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for (cidr, ords) in &self.confirmed {
            let Some(kv) = self.blocks.get(cidr).and_then(|e| e.read.as_ref()) else {
                continue;
            };
            let Ok(block) = read::<Block>(kv) else {
                continue;
            };
            let mut block = resolve_releases(block, kv);
            for ord in ords {
                if let Some(rel) = block.released.get_mut(ord) {
                    rel.confirmed_ms = Some(self.now);
                    let until = self.now + rel.quarantine_ms;
                    block.quarantine.insert(*ord, until);
                }
            }
            compares.push(Compare::unchanged(kv));
            ops.push(Op::put(&kv.key, encode(&block)));
        }
        (compares, ops)
    }

    /// The compares (everything read that we change is unchanged) and the writes.
    pub(crate) fn into_txn(self) -> (Vec<Compare>, Vec<Op>) {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let now = self.now;
        let pools = self.pools;
        for (cidr, entry) in self.blocks {
            if !entry.dirty {
                continue;
            }
            let key = block_key(&cidr);
            compares.push(Compare::as_read(&key, entry.read.as_ref()));
            let Some(mut block) = entry.value else {
                continue;
            };
            block.quarantine.retain(|_, until| *until > now);
            block
                .released
                .retain(|_, r| r.confirmed_ms.is_none_or(|t| t + r.quarantine_ms > now));
            if let (Some(host), Some(pool)) =
                (&block.host, pools.iter().find(|p| p.cidr == block.pool))
            {
                let was_full = entry.read.is_some() && is_full(&block, pool, entry.held_when_read);
                let full = is_full(&block, pool, block.slots.len());
                let is_new = entry.read.is_none()
                    && self
                        .new_affinity
                        .iter()
                        .any(|(h, c)| h == host && *c == cidr);
                if is_new || was_full != full {
                    ops.push(Op::delete(affinity_key(host, &cidr, !full)));
                    ops.push(Op::put(affinity_key(host, &cidr, full), Vec::new()));
                }
            }
            ops.push(Op::put(key, encode(&block)));
        }
        for (handle, entry) in self.handles {
            if !entry.dirty {
                continue;
            }
            let key = handle_key(&handle);
            compares.push(Compare::as_read(&key, entry.read.as_ref()));
            match entry.value {
                Some(rec) if !rec.addrs.is_empty() => ops.push(Op::put(key, encode(&rec))),
                _ => {
                    if entry.read.is_some() {
                        ops.push(Op::delete(key))
                    }
                }
            }
        }
        (compares, ops)
    }
}

/// Never handed out: an IPv4 pool's network and broadcast addresses, an IPv6
/// pool's subnet-router anycast address.
fn is_reserved(pool: &Pool, addr: &IpAddr) -> bool {
    match pool.cidr {
        IpNet::V4(n) if n.prefix_len() < 31 => {
            *addr == IpAddr::V4(n.network()) || *addr == IpAddr::V4(n.broadcast())
        }
        IpNet::V6(n) if n.prefix_len() < 127 => *addr == IpAddr::V6(n.network()),
        _ => false,
    }
}

fn block_size(block: &Block) -> u32 {
    1 << (block.cidr.max_prefix_len() - block.cidr.prefix_len())
}

/// Every slot that can be handed out is held (when `held` slots are).
fn is_full(block: &Block, pool: &Pool, held: usize) -> bool {
    let size = block_size(block);
    let reserved = (0..size.min(2))
        .chain(size.saturating_sub(1)..size)
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .filter(|ord| is_reserved(pool, &nth(&block.cidr, *ord)))
        .count() as u32;
    held as u32 + reserved >= size
}

fn free_ordinal(block: &Block, pool: &Pool, now: i64) -> Option<u32> {
    let size = block_size(block);
    if block.slots.len() as u32 >= size {
        return None;
    }
    (0..size).find(|ord| {
        slot_state(block, *ord, now) == SlotState::Free
            && !is_reserved(pool, &nth(&block.cidr, *ord))
    })
}
