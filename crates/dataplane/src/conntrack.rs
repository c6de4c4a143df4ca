//! Connection tracking over ctnetlink: forget every flow to or from given
//! addresses, so that an address handed to a new endpoint inherits no
//! established flow of the old one (the ruleset accepts established flows
//! before any profile).
//!
//! The kernel deletes one entry per request, named by its original tuple, so
//! this dumps the table once, picks the entries that touch the addresses, and
//! deletes them in one batch. An entry already gone (ENOENT) is not an error.

use crate::error::Result;
use crate::nl::{self, Msg, Socket, NLM_F_DUMP};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

fn ct_msg(ty: u16, flags: u16, family: u8) -> Msg {
    // nfgenmsg: family, version 0, resource id 0.
    Msg::new((NFNL_SUBSYS_CTNETLINK << 8) | ty, flags, &[family, 0, 0, 0]).flag_nests()
}

/// The addresses of one tuple (CTA_TUPLE_ORIG or CTA_TUPLE_REPLY body).
fn tuple_addrs(tuple: &[u8]) -> Vec<IpAddr> {
    let Some(ip) = nl::attr(tuple, CTA_TUPLE_IP) else {
        return Vec::new();
    };
    nl::attrs(ip)
        .filter_map(|(ty, data)| match ty {
            CTA_IP_V4_SRC | CTA_IP_V4_DST => <[u8; 4]>::try_from(data)
                .ok()
                .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            CTA_IP_V6_SRC | CTA_IP_V6_DST => <[u8; 16]>::try_from(data)
                .ok()
                .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        })
        .collect()
}

/// One entry to delete: its family and the attributes that name it.
struct Doomed {
    family: u8,
    orig: Vec<u8>,
    zone: Option<Vec<u8>>,
}

/// Delete every conntrack entry whose original or reply tuple has one of
/// `addrs` as source or destination, in the calling thread's namespace.
/// Returns how many entries were deleted.
pub fn conntrack_forget(addrs: &[IpAddr]) -> Result<usize> {
    if addrs.is_empty() {
        return Ok(0);
    }
    let wanted: BTreeSet<IpAddr> = addrs.iter().copied().collect();
    let mut sock = Socket::open(libc::NETLINK_NETFILTER)?;
    sock.grow_buffers(4 << 20);
    let mut doomed = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        if !wanted
            .iter()
            .any(|a| a.is_ipv4() == (family == libc::AF_INET as u8))
        {
            continue;
        }
        let dump = ct_msg(IPCTNL_MSG_CT_GET, NLM_F_DUMP, family);
        sock.request("dump conntrack", dump, |_, payload| {
            let body = payload.get(4..).unwrap_or_default();
            let touches = [CTA_TUPLE_ORIG, CTA_TUPLE_REPLY]
                .iter()
                .filter_map(|t| nl::attr(body, *t))
                .flat_map(tuple_addrs)
                .any(|a| wanted.contains(&a));
            if let (true, Some(orig)) = (touches, nl::attr(body, CTA_TUPLE_ORIG)) {
                doomed.push(Doomed {
                    family,
                    orig: orig.to_vec(),
                    zone: nl::attr(body, CTA_ZONE).map(<[u8]>::to_vec),
                });
            }
        })?;
    }
    let mut deleted = 0;
    for d in &doomed {
        let mut m = ct_msg(IPCTNL_MSG_CT_DELETE, 0, d.family);
        m.nested_raw(CTA_TUPLE_ORIG, &d.orig);
        if let Some(zone) = &d.zone {
            m.attr(CTA_ZONE, zone);
        }
        match sock.request("delete conntrack entry", m, |_, _| {}) {
            Ok(()) => deleted += 1,
            // Gone meanwhile (it timed out, or another host's node got it).
            Err(e) if e.os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}
