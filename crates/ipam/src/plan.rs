//! One IPAM operation in the making: the blocks and handles it read, what it
//! changed, and the compare-and-swap transaction that commits it.

use crate::*;

struct Cached<T> {
    read: Option<KeyValue>,
    value: Option<T>,
    dirty: bool,
    /// For blocks: how many slots were held when read.
    held_when_read: usize,
}

pub(crate) struct Plan<'s> {
    store: &'s dyn Store,
    pools: &'s [Pool],
    blocks: BTreeMap<IpNet, Cached<Block>>,
    all_blocks_loaded: bool,
    affinity_loaded: Vec<String>,
    new_affinity: Vec<(String, IpNet)>,
    handles: BTreeMap<String, Cached<HandleRecord>>,
    now: i64,
}

impl<'s> Plan<'s> {
    pub(crate) fn new(store: &'s dyn Store, pools: &'s [Pool]) -> Self {
        Plan {
            store,
            pools,
            blocks: BTreeMap::new(),
            all_blocks_loaded: false,
            affinity_loaded: Vec::new(),
            new_affinity: Vec::new(),
            handles: BTreeMap::new(),
            now: netmod_now_ms(),
        }
    }

    fn pool_of(&self, addr: &IpAddr) -> Result<&'s Pool> {
        self.pools
            .iter()
            .find(|p| p.cidr.contains(addr))
            .ok_or(IpamError::OutsidePools(*addr))
    }

    fn load_block(&mut self, cidr: IpNet) -> Result<()> {
        if !self.blocks.contains_key(&cidr) {
            let read = self.store.get(&block_key(&cidr))?;
            let value = read.as_ref().map(read_block).transpose()?;
            let held_when_read = value.as_ref().map_or(0, |b: &Block| b.slots.len());
            self.blocks.insert(
                cidr,
                Cached {
                    read,
                    value,
                    dirty: false,
                    held_when_read,
                },
            );
        }
        Ok(())
    }

    fn load_all_blocks(&mut self) -> Result<()> {
        if self.all_blocks_loaded {
            return Ok(());
        }
        let (kvs, _) = self.store.range(BLOCKS)?;
        for kv in kvs {
            let block = read_block(&kv)?;
            self.blocks.entry(block.cidr).or_insert(Cached {
                read: Some(kv),
                held_when_read: block.slots.len(),
                value: Some(block),
                dirty: false,
            });
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
            .filter_map(|k| k[BLOCKS.len()..].replacen('-', "/", 1).parse().ok())
            .collect())
    }

    fn load_affinity(&mut self, host: &str) -> Result<()> {
        if self.affinity_loaded.iter().any(|h| h == host) {
            return Ok(());
        }
        let prefix = format!("{AFFINITY}{host}/");
        for key in self.store.keys(&prefix)? {
            let tail = &key[prefix.len()..];
            if let Ok(cidr) = tail.replacen('-', "/", 1).parse::<IpNet>() {
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
                read: None,
                value: Some(Block {
                    cidr,
                    pool: pool.cidr,
                    host: host.map(str::to_string),
                    slots: BTreeMap::new(),
                    quarantine: BTreeMap::new(),
                }),
                dirty: true,
                held_when_read: 0,
            },
        );
        if let Some(host) = host {
            self.new_affinity.push((host.to_string(), cidr));
        }
    }

    /// Hold one given address for `handle`.
    pub(crate) fn take_specific(&mut self, addr: IpAddr, handle: &str) -> Result<()> {
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
        self.load_block(cidr)?;
        if self.blocks[&cidr].value.is_none() {
            self.claim(pool, cidr, None);
        }
        let entry = self.blocks.get_mut(&cidr).expect("loaded above");
        let block = entry.value.as_mut().expect("present");
        let ord = ordinal(&cidr, &addr);
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
        // Asked for by value: the quarantine guards against accidental reuse only.
        block.quarantine.remove(&ord);
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
        self.load_affinity(host)?;
        let now = self.now;
        let in_pool = |b: &Block| pools.iter().any(|p| p.cidr == b.pool);
        let own = |b: &Block| b.host.as_deref() == Some(host) && in_pool(b);
        if let Some(addr) = self.take_in(v6, handle, now, own) {
            return Ok(addr);
        }
        let claimed = self.claimed_blocks()?;
        for pool in &pools {
            let free = pool
                .cidr
                .subnets(pool.block_prefix)
                .expect("prefix checked when the pool was added")
                .find(|c| {
                    !claimed.contains(c) && self.blocks.get(c).is_none_or(|b| b.value.is_none())
                });
            if let Some(cidr) = free {
                self.claim(pool, cidr, Some(host));
                if let Some(addr) = self.take_in(v6, handle, now, |b| b.cidr == cidr) {
                    return Ok(addr);
                }
            }
        }
        self.load_all_blocks()?;
        if let Some(addr) = self.take_in(v6, handle, now, in_pool) {
            return Ok(addr);
        }
        let mut quarantined = 0;
        let mut until_ms = i64::MAX;
        for b in self.blocks.values().filter_map(|c| c.value.as_ref()) {
            if b.cidr.network().is_ipv6() == v6 {
                for until in b.quarantine.values().filter(|u| **u > now) {
                    quarantined += 1;
                    until_ms = until_ms.min(*until);
                }
            }
        }
        Err(IpamError::Exhausted {
            family: family_name(v6),
            pools: pools
                .iter()
                .map(|p| p.cidr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            quarantined,
            until_ms,
        })
    }

    fn take_in(
        &mut self,
        v6: bool,
        handle: &str,
        now: i64,
        choose: impl Fn(&Block) -> bool,
    ) -> Option<IpAddr> {
        let pools = self.pools;
        for entry in self.blocks.values_mut() {
            let Some(block) = entry.value.as_mut() else {
                continue;
            };
            if block.cidr.network().is_ipv6() != v6 || !choose(block) {
                continue;
            }
            let pool = pools.iter().find(|p| p.cidr == block.pool)?;
            if let Some(ord) = free_ordinal(block, pool, now) {
                block.slots.insert(ord, handle.to_string());
                block.quarantine.remove(&ord);
                entry.dirty = true;
                return Some(nth(&block.cidr, ord));
            }
        }
        None
    }

    /// Free one address (if `only_for` is given, only when that handle holds it).
    /// Returns the handle that held it.
    pub(crate) fn free(&mut self, addr: IpAddr, only_for: Option<&str>) -> Result<Option<String>> {
        let pool = self.pool_of(&addr)?;
        let cidr = IpNet::new(addr, pool.block_prefix)
            .expect("prefix checked when the pool was added")
            .trunc();
        self.load_block(cidr)?;
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
            block
                .quarantine
                .insert(ord, self.now + pool.quarantine_secs as i64 * 1000);
        }
        entry.dirty = true;
        Ok(holder)
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
                    dirty: false,
                    held_when_read: 0,
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
        let entry = self.handles.get_mut(handle).expect("loaded above");
        let rec = entry.value.get_or_insert_with(|| HandleRecord {
            handle: handle.to_string(),
            attrs: attrs.clone(),
            addrs: Vec::new(),
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

    pub(crate) fn unhold(&mut self, handle: &str, addr: IpAddr) -> Result<()> {
        self.handle(handle)?;
        let entry = self.handles.get_mut(handle).expect("loaded above");
        if let Some(rec) = entry.value.as_mut() {
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

fn read_block(kv: &KeyValue) -> Result<Block> {
    read(kv)
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

/// Every slot that can be handed out is held (when `held` slots are).
fn is_full(block: &Block, pool: &Pool, held: usize) -> bool {
    let size: u32 = 1 << (block.cidr.max_prefix_len() - block.cidr.prefix_len());
    let reserved = (0..size.min(2))
        .chain(size.saturating_sub(1)..size)
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .filter(|ord| is_reserved(pool, &nth(&block.cidr, *ord)))
        .count() as u32;
    held as u32 + reserved >= size
}

fn free_ordinal(block: &Block, pool: &Pool, now: i64) -> Option<u32> {
    let size: u32 = 1 << (block.cidr.max_prefix_len() - block.cidr.prefix_len());
    if block.slots.len() as u32 >= size {
        return None;
    }
    (0..size).find(|ord| {
        !block.slots.contains_key(ord)
            && block.quarantine.get(ord).is_none_or(|until| *until <= now)
            && !is_reserved(pool, &nth(&block.cidr, *ord))
    })
}
