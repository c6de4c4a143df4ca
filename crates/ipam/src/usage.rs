//! What `netmod ipam show` reports: used, free and quarantined addresses per
//! pool, block and host.

use crate::*;
use std::net::IpAddr;

#[derive(Debug, Clone, Serialize)]
pub struct PoolUsage {
    pub cidr: IpNet,
    pub block_prefix: u8,
    pub quarantine_secs: u64,
    pub vxlan_mode: netmod_model::VxlanMode,
    pub nat_outgoing: bool,
    pub disabled: bool,
    pub total: u128,
    pub used: u64,
    pub quarantined: u64,
    pub free: u128,
    pub blocks_claimed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlockUsage {
    pub cidr: IpNet,
    pub pool: IpNet,
    pub host: Option<String>,
    pub used: u64,
    pub quarantined: u64,
    pub free: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostUsage {
    pub host: String,
    pub blocks: u64,
    pub used: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub pools: Vec<PoolUsage>,
    pub blocks: Vec<BlockUsage>,
    pub hosts: Vec<HostUsage>,
    /// Pool and block records this version cannot read: left out above.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<netmod_store::Undecodable>,
}

/// Released addresses of a block not free yet: counting down, or waiting
/// for every live host to apply their release.
pub(crate) fn quarantined(b: &Block, now: i64) -> u64 {
    let ords: std::collections::BTreeSet<u32> = b
        .released
        .keys()
        .chain(b.quarantine.keys())
        .copied()
        .collect();
    ords.into_iter()
        .filter(|ord| {
            matches!(
                crate::plan::slot_state(b, *ord, now),
                crate::plan::SlotState::Quarantined(_) | crate::plan::SlotState::Awaiting(_)
            )
        })
        .count() as u64
}

fn usable(cidr: &IpNet) -> u128 {
    let bits = cidr.max_prefix_len() - cidr.prefix_len();
    let all = if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    };
    match cidr {
        IpNet::V4(_) if cidr.prefix_len() < 31 => all - 2,
        IpNet::V6(_) if cidr.prefix_len() < 127 => all - 1,
        _ => all,
    }
}

impl Ipam<'_> {
    pub fn usage(&self) -> Result<Usage> {
        let now = netmod_now_ms();
        let (pools, mut unreadable) = self.pools_checked()?;
        let (blocks, bad_blocks) = self.blocks_checked()?;
        unreadable.extend(bad_blocks);
        let mut hosts: BTreeMap<String, HostUsage> = BTreeMap::new();
        let block_usage: Vec<BlockUsage> = blocks
            .iter()
            .map(|b| {
                let used = b.slots.len() as u64;
                let quarantined = quarantined(b, now);
                let size = 1u64 << (b.cidr.max_prefix_len() - b.cidr.prefix_len());
                let pool_edges = match b.pool {
                    IpNet::V4(p) if p.prefix_len() < 31 => [p.network(), p.broadcast()]
                        .iter()
                        .filter(|a| b.cidr.contains(&IpAddr::V4(**a)))
                        .count() as u64,
                    IpNet::V6(p) if p.prefix_len() < 127 => {
                        u64::from(b.cidr.contains(&IpAddr::V6(p.network())))
                    }
                    _ => 0,
                };
                if let Some(h) = &b.host {
                    let e = hosts.entry(h.clone()).or_insert(HostUsage {
                        host: h.clone(),
                        blocks: 0,
                        used: 0,
                    });
                    e.blocks += 1;
                    e.used += used;
                }
                BlockUsage {
                    cidr: b.cidr,
                    pool: b.pool,
                    host: b.host.clone(),
                    used,
                    quarantined,
                    free: size - used - quarantined - pool_edges,
                }
            })
            .collect();
        let pool_usage = pools
            .iter()
            .map(|p| {
                let mine = block_usage.iter().filter(|b| b.pool == p.cidr);
                let (mut used, mut quarantined, mut claimed) = (0, 0, 0);
                for b in mine {
                    used += b.used;
                    quarantined += b.quarantined;
                    claimed += 1;
                }
                let total = usable(&p.cidr);
                PoolUsage {
                    cidr: p.cidr,
                    block_prefix: p.block_prefix,
                    quarantine_secs: p.quarantine_secs,
                    vxlan_mode: p.vxlan_mode,
                    nat_outgoing: p.nat_outgoing,
                    disabled: p.disabled,
                    total,
                    used,
                    quarantined,
                    free: total - used as u128 - quarantined as u128,
                    blocks_claimed: claimed,
                }
            })
            .collect();
        Ok(Usage {
            pools: pool_usage,
            blocks: block_usage,
            hosts: hosts.into_values().collect(),
            unreadable,
        })
    }
}
