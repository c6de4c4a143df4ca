//! Typed rtnetlink calls: links, addresses, routes. Callers never build packets.

use crate::error::{Error, Result};
use crate::nl::{self, Msg, Socket, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use ipnet::IpNet;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_EXT_MASK: u16 = 29;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const RTEXT_FILTER_SKIP_STATS: u32 = 1 << 3;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTN_UNICAST: u8 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTNH_F_ONLINK: u32 = 4;

const IFF_UP: u32 = libc::IFF_UP as u32;

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn family(addr: &IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn octets(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn parse_addr(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family as i32 {
        libc::AF_INET => Some(IpAddr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?)),
        libc::AF_INET6 => Some(IpAddr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?)),
        _ => None,
    }
}

/// A link as seen in a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub up: bool,
}

/// A route to add.
pub(crate) struct RouteReq {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub onlink: bool,
    pub protocol: u8,
    /// Replace an existing route to `dst` instead of failing with EEXIST.
    pub replace: bool,
}

/// A route from a dump of the main table.
pub(crate) struct RawRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
}

/// An rtnetlink socket, bound to the namespace it was opened in.
pub(crate) struct Rtnl(Socket);

impl Rtnl {
    pub fn open() -> Result<Rtnl> {
        Socket::open(libc::NETLINK_ROUTE).map(Rtnl)
    }

    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut m = Msg::new(RTM_GETLINK, 0, &ifinfomsg(0, 0, 0));
        m.str(IFLA_IFNAME, name)
            .u32_ne(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        let mut index = None;
        let res = self.0.request("RTM_GETLINK", m, |_, p| {
            index = p
                .get(4..8)
                .map(|b| i32::from_ne_bytes(b.try_into().unwrap()) as u32);
        });
        match res {
            Ok(()) => Ok(index),
            Err(e) if e.os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a veth pair, the local end up; the peer is created directly
    /// inside the namespace `peer_ns` with its name and MAC (no later move).
    /// The peer cannot be brought up in the same request (veth_open says
    /// ENOTCONN before the pair is linked), so the caller sets it up.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_ns: BorrowedFd<'_>,
        peer_mac: &[u8; 6],
    ) -> Result<()> {
        let mut m = Msg::new(
            RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0, IFF_UP, IFF_UP),
        );
        m.str(IFLA_IFNAME, name).nest(IFLA_LINKINFO, |m| {
            m.str(IFLA_INFO_KIND, "veth").nest(IFLA_INFO_DATA, |m| {
                m.nest(VETH_INFO_PEER, |m| {
                    m.raw(&ifinfomsg(0, 0, 0))
                        .str(IFLA_IFNAME, peer)
                        .u32_ne(IFLA_NET_NS_FD, peer_ns.as_raw_fd() as u32)
                        .attr(IFLA_ADDRESS, peer_mac);
                });
            });
        });
        self.0.request("RTM_NEWLINK veth", m, |_, _| {})
    }

    pub fn set_up(&mut self, name: &str) -> Result<()> {
        let mut m = Msg::new(RTM_SETLINK, 0, &ifinfomsg(0, IFF_UP, IFF_UP));
        m.str(IFLA_IFNAME, name);
        self.0.request("RTM_SETLINK up", m, |_, _| {})
    }

    /// Ok(false) when there was no such link.
    pub fn del_link(&mut self, name: &str) -> Result<bool> {
        let mut m = Msg::new(RTM_DELLINK, 0, &ifinfomsg(0, 0, 0));
        m.str(IFLA_IFNAME, name);
        match self.0.request("RTM_DELLINK", m, |_, _| {}) {
            Ok(()) => Ok(true),
            Err(e) if e.os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        let mut m = Msg::new(RTM_GETLINK, NLM_F_DUMP, &ifinfomsg(0, 0, 0));
        m.u32_ne(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
        let mut links = Vec::new();
        self.0.request("RTM_GETLINK dump", m, |ty, p| {
            if ty != RTM_NEWLINK || p.len() < 16 {
                return;
            }
            let index = i32::from_ne_bytes(p[4..8].try_into().unwrap()) as u32;
            let flags = u32::from_ne_bytes(p[8..12].try_into().unwrap());
            if let Some(name) = nl::attr_str(&p[16..], IFLA_IFNAME) {
                links.push(LinkInfo {
                    name,
                    index,
                    up: flags & IFF_UP != 0,
                });
            }
        })?;
        Ok(links)
    }

    /// Adds `addr/prefix` on link `index`; fails with EEXIST if present.
    pub fn add_addr(&mut self, index: u32, addr: IpAddr, prefix: u8, nodad: bool) -> Result<()> {
        let mut hdr = [0u8; 8];
        hdr[0] = family(&addr);
        hdr[1] = prefix;
        hdr[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &hdr);
        m.attr(IFA_LOCAL, &octets(&addr))
            .attr(IFA_ADDRESS, &octets(&addr));
        if nodad {
            m.u32_ne(IFA_FLAGS, IFA_F_NODAD);
        }
        self.0.request("RTM_NEWADDR", m, |_, _| {})
    }

    pub fn add_route(&mut self, r: &RouteReq) -> Result<()> {
        let scope = if r.gateway.is_none() && r.dst.addr().is_ipv4() {
            RT_SCOPE_LINK
        } else {
            RT_SCOPE_UNIVERSE
        };
        let flags = if r.onlink { RTNH_F_ONLINK } else { 0 };
        let excl = if r.replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        let mut m = Msg::new(
            RTM_NEWROUTE,
            NLM_F_CREATE | excl,
            &rtmsg(&r.dst, r.protocol, scope, flags),
        );
        m.attr(RTA_DST, &octets(&r.dst.addr()));
        if let Some(gw) = &r.gateway {
            if family(gw) != family(&r.dst.addr()) {
                return Err(Error::invalid(
                    format!("route {} via {gw}", r.dst),
                    "gateway and destination differ in address family",
                ));
            }
            m.attr(RTA_GATEWAY, &octets(gw));
        }
        if let Some(oif) = r.oif {
            m.u32_ne(RTA_OIF, oif);
        }
        self.0.request("RTM_NEWROUTE", m, |_, _| {})
    }

    /// Deletes the route to `dst` with protocol `protocol` from the main table;
    /// Ok(false) when there was none.
    pub fn del_route(&mut self, dst: &IpNet, protocol: u8) -> Result<bool> {
        let mut m = Msg::new(RTM_DELROUTE, 0, &rtmsg(dst, protocol, RT_SCOPE_UNIVERSE, 0));
        m.attr(RTA_DST, &octets(&dst.addr()));
        match self.0.request("RTM_DELROUTE", m, |_, _| {}) {
            Ok(()) => Ok(true),
            Err(e) if e.os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Unicast routes of the main table, both families.
    pub fn routes(&mut self) -> Result<Vec<RawRoute>> {
        let m = Msg::new(RTM_GETROUTE, NLM_F_DUMP, &[0u8; 12]);
        let mut routes = Vec::new();
        self.0.request("RTM_GETROUTE dump", m, |ty, p| {
            if ty == RTM_NEWROUTE {
                routes.extend(parse_route(p));
            }
        })?;
        Ok(routes)
    }
}

fn rtmsg(dst: &IpNet, protocol: u8, scope: u8, flags: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = family(&dst.addr());
    b[1] = dst.prefix_len();
    b[4] = RT_TABLE_MAIN;
    b[5] = protocol;
    b[6] = scope;
    b[7] = RTN_UNICAST;
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b
}

fn parse_route(p: &[u8]) -> Option<RawRoute> {
    let attrs = p.get(12..)?;
    let (family, dst_len, table, protocol, rtype) = (p[0], p[1], p[4], p[5], p[7]);
    let table = nl::attr_u32(attrs, RTA_TABLE).unwrap_or(table as u32);
    if table != RT_TABLE_MAIN as u32 || rtype != RTN_UNICAST {
        return None;
    }
    let unspecified = match family as i32 {
        libc::AF_INET => IpAddr::from([0u8; 4]),
        libc::AF_INET6 => IpAddr::from([0u8; 16]),
        _ => return None,
    };
    let dst_addr = match nl::attr(attrs, RTA_DST) {
        Some(b) => parse_addr(family, b)?,
        None => unspecified,
    };
    Some(RawRoute {
        dst: IpNet::new(dst_addr, dst_len).ok()?,
        gateway: nl::attr(attrs, RTA_GATEWAY).and_then(|b| parse_addr(family, b)),
        oif: nl::attr_u32(attrs, RTA_OIF),
        protocol,
    })
}
