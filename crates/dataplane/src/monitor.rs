//! Watching netmod's table through nftables' own events: a table deleted by
//! `nft flush ruleset` (an nftables.service reload), or chains, rules or
//! sets changed by anyone else, must be noticed at once, not at the next
//! periodic resync.

use crate::error::Result;
use crate::nl::{self, Socket};
use netmod_model::nft::TABLE;
use std::time::Duration;

/// NFNLGRP_NFTABLES: the multicast group of nf_tables change events.
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_DESTROYTABLE: u16 = 26;
const NFT_MSG_DESTROYCHAIN: u16 = 27;
const NFT_MSG_DESTROYRULE: u16 = 28;
const NFT_MSG_DESTROYSET: u16 = 29;
/// The table attribute sits first in table, chain, rule and set messages.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_GEN_PROC_PID: u16 = 2;
const NFTA_GEN_PROC_NAME: u16 = 3;

/// Events about netmod's table (its chains, rules and sets, not their
/// elements, which change with every endpoint).
pub struct NftMonitor {
    sock: Socket,
    /// Structural changes to our table seen since the last generation.
    pending: bool,
}

/// What one wait saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NftChanges {
    /// Another process changed netmod's table's structure (or events were
    /// lost and it may have): the table must be checked and restored.
    pub foreign: bool,
}

impl NftMonitor {
    /// Subscribe in the calling thread's network namespace.
    pub fn open() -> Result<NftMonitor> {
        let sock = Socket::open(libc::NETLINK_NETFILTER)?;
        sock.grow_buffers(4 << 20);
        sock.join_group(NFNLGRP_NFTABLES)?;
        Ok(NftMonitor {
            sock,
            pending: false,
        })
    }

    /// Wait up to `timeout` for events. A change counts as foreign when the
    /// transaction that made it (its NEWGEN message names the process) came
    /// from a process other than netmod's own: this one, or a `netmod`
    /// plugin process adding a netgroup's set and rule.
    pub fn wait(&mut self, timeout: Duration) -> Result<NftChanges> {
        let mut seen = NftChanges::default();
        for (ty, payload) in self.sock.recv_events(timeout)? {
            if ty == 0 {
                // Events were lost: assume the worst.
                seen.foreign = true;
                continue;
            }
            if ty >> 8 != NFNL_SUBSYS_NFTABLES {
                continue;
            }
            let body = payload.get(4..).unwrap_or_default();
            match ty & 0xff {
                NFT_MSG_NEWGEN => {
                    let pid = nl::attr(body, NFTA_GEN_PROC_PID)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map(u32::from_be_bytes);
                    let name = nl::attr_str(body, NFTA_GEN_PROC_NAME);
                    // The kernel names the thread that committed: one of
                    // ours if this process has a task of that id.
                    let own_thread = pid.is_some_and(|p| {
                        std::path::Path::new(&format!("/proc/self/task/{p}")).exists()
                    });
                    let ours = own_thread || name.as_deref() == Some("netmod");
                    if self.pending && !ours {
                        seen.foreign = true;
                    }
                    self.pending = false;
                }
                NFT_MSG_NEWTABLE | NFT_MSG_DELTABLE | NFT_MSG_DESTROYTABLE | NFT_MSG_NEWCHAIN
                | NFT_MSG_DELCHAIN | NFT_MSG_DESTROYCHAIN | NFT_MSG_NEWRULE | NFT_MSG_DELRULE
                | NFT_MSG_DESTROYRULE | NFT_MSG_NEWSET | NFT_MSG_DELSET | NFT_MSG_DESTROYSET => {
                    let family = payload.first().copied();
                    let table = nl::attr_str(body, NFTA_TABLE_NAME);
                    if family == Some(libc::NFPROTO_INET as u8) && table.as_deref() == Some(TABLE) {
                        self.pending = true;
                    }
                }
                _ => {}
            }
        }
        Ok(seen)
    }
}
