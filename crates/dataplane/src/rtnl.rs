//! Typed rtnetlink calls: links, addresses, routes. Callers never build packets.
//!
//! The messages are `netlink-packet-route` types (netavark's choice); sending,
//! acks and the kernel's error text stay with our socket (`nl::Socket`).

use crate::error::{Error, Result};
use crate::nl::Socket;
use ipnet::IpNet;
use netlink_packet_core::{
    DecodeError, Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, Parseable,
    ParseableParametrized, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkExtentMask, LinkFlags, LinkHeader,
    LinkInfo as LinkKind, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourHeader, NeighbourMessage,
    NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

// Numbers of what we read from replies (the crate keeps its own private).
const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;

fn family(addr: &IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
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
    /// RTN_BLACKHOLE (no gateway, no interface) instead of RTN_UNICAST.
    pub blackhole: bool,
}

/// A route from a dump of the main table.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RawRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// RTNH_F_ONLINK: the gateway is taken to be on `oif`'s link.
    pub onlink: bool,
    pub blackhole: bool,
}

/// An rtnetlink socket, bound to the namespace it was opened in.
pub(crate) struct Rtnl(Socket);

impl Rtnl {
    pub fn open() -> Result<Rtnl> {
        Socket::open(libc::NETLINK_ROUTE).map(Rtnl)
    }

    /// Sends `msg` asking for an ack and hands each data reply, as (type,
    /// payload), to `on_reply`, which decodes what it needs. The first reply
    /// it fails to decode fails the call, once the kernel has answered.
    pub(crate) fn request(
        &mut self,
        what: &str,
        flags: u16,
        msg: RouteNetlinkMessage,
        mut on_reply: impl FnMut(u16, &[u8]) -> Result<(), DecodeError>,
    ) -> Result<()> {
        let seq = self.0.next_seq();
        let wire = encode(flags, seq, msg);
        let mut undecoded = None;
        self.0.exchange(what, seq, &wire, |ty, payload| {
            if undecoded.is_none() {
                undecoded = on_reply(ty, payload).err();
            }
        })?;
        match undecoded {
            None => Ok(()),
            Some(e) => Err(Error::invalid(format!("{what} reply"), e.to_string())),
        }
    }

    /// A request whose only answer is the ack.
    pub(crate) fn command(
        &mut self,
        what: &str,
        flags: u16,
        msg: RouteNetlinkMessage,
    ) -> Result<()> {
        self.request(what, flags, msg, |_, _| Ok(()))
    }

    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>> {
        let mut m = LinkMessage::default();
        m.attributes = vec![LinkAttribute::IfName(name.into()), skip_stats()];
        let mut index = None;
        let m = RouteNetlinkMessage::GetLink(m);
        let res = self.request("RTM_GETLINK", 0, m, |ty, payload| {
            if ty == RTM_NEWLINK {
                index = Some(LinkHeader::parse(payload)?.index);
            }
            Ok(())
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
        mtu: Option<u32>,
    ) -> Result<()> {
        let m = veth_request(name, peer, peer_ns.as_raw_fd(), peer_mac, mtu);
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.command("RTM_NEWLINK veth", flags, RouteNetlinkMessage::NewLink(m))
    }

    pub fn set_up(&mut self, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes = vec![LinkAttribute::IfName(name.into())];
        self.command("RTM_SETLINK up", 0, RouteNetlinkMessage::SetLink(m))
    }

    /// Ok(false) when there was no such link.
    pub fn del_link(&mut self, name: &str) -> Result<bool> {
        let mut m = LinkMessage::default();
        m.attributes = vec![LinkAttribute::IfName(name.into())];
        match self.command("RTM_DELLINK", 0, RouteNetlinkMessage::DelLink(m)) {
            Ok(()) => Ok(true),
            Err(e) if e.os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        let mut m = LinkMessage::default();
        m.attributes = vec![skip_stats()];
        let mut links = Vec::new();
        let m = RouteNetlinkMessage::GetLink(m);
        self.request("RTM_GETLINK dump", NLM_F_DUMP, m, |ty, payload| {
            if ty == RTM_NEWLINK {
                links.extend(link_info(payload)?);
            }
            Ok(())
        })?;
        Ok(links)
    }

    /// Adds `addr/prefix` on link `index`; fails with EEXIST if present.
    /// The link-layer address of one of our own links (None: no such link).
    pub fn link_mac(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        let mut m = LinkMessage::default();
        m.attributes = vec![LinkAttribute::IfName(name.into()), skip_stats()];
        let mut mac = None;
        let m = RouteNetlinkMessage::GetLink(m);
        let res = self.request("RTM_GETLINK", 0, m, |ty, payload| {
            if ty == RTM_NEWLINK {
                let header = LinkHeader::parse(payload)?;
                let attrs = payload.get(header.buffer_len()..).unwrap_or_default();
                for nla in NlasIterator::new(attrs) {
                    let nla = nla?;
                    if nla.kind() == IFLA_ADDRESS {
                        mac = Some(nla.value().to_vec());
                    }
                }
            }
            Ok(())
        });
        match res {
            Ok(()) => Ok(mac),
            Err(e) if e.os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `ip neigh replace ADDR lladdr MAC dev INDEX nud permanent`.
    pub fn set_permanent_neighbour(&mut self, index: u32, addr: IpAddr, mac: &[u8]) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header = NeighbourHeader {
            family: family(&addr),
            ifindex: index,
            state: NeighbourState::Permanent,
            flags: NeighbourFlags::empty(),
            kind: RouteType::Unicast,
        };
        let dst = match addr {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        };
        m.attributes = vec![
            NeighbourAttribute::Destination(dst),
            NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        ];
        let flags = NLM_F_CREATE | NLM_F_REPLACE;
        self.command("RTM_NEWNEIGH", flags, RouteNetlinkMessage::NewNeighbour(m))
    }

    pub fn add_addr(&mut self, index: u32, addr: IpAddr, prefix: u8, nodad: bool) -> Result<()> {
        let m = address_request(index, addr, prefix, nodad);
        let flags = NLM_F_CREATE | NLM_F_EXCL;
        self.command("RTM_NEWADDR", flags, RouteNetlinkMessage::NewAddress(m))
    }

    pub fn add_route(&mut self, r: &RouteReq) -> Result<()> {
        let m = route_request(r)?;
        let flags = NLM_F_CREATE | if r.replace { NLM_F_REPLACE } else { NLM_F_EXCL };
        self.command("RTM_NEWROUTE", flags, RouteNetlinkMessage::NewRoute(m))
    }

    /// Deletes the route to `dst` with protocol `protocol` from the main table,
    /// whatever its type and scope (as `ip route del` asks); Ok(false) when
    /// there was none.
    pub fn del_route(&mut self, dst: &IpNet, protocol: u8) -> Result<bool> {
        let mut m = RouteMessage::default();
        m.header = route_header(dst, protocol, RouteScope::NoWhere, RouteFlags::empty());
        m.header.kind = RouteType::Unspec;
        m.attributes = vec![RouteAttribute::Destination(dst.addr().into())];
        match self.command("RTM_DELROUTE", 0, RouteNetlinkMessage::DelRoute(m)) {
            Ok(()) => Ok(true),
            Err(e) if e.os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Unicast and blackhole routes of the main table with protocol
    /// `protocol`, both families.
    pub fn routes(&mut self, protocol: u8) -> Result<Vec<RawRoute>> {
        let m = RouteNetlinkMessage::GetRoute(RouteMessage::default());
        let mut routes = Vec::new();
        self.request("RTM_GETROUTE dump", NLM_F_DUMP, m, |ty, payload| {
            if ty == RTM_NEWROUTE {
                routes.extend(main_route(payload, protocol)?);
            }
            Ok(())
        })?;
        Ok(routes)
    }
}

/// The wire bytes of one request numbered `seq` that asks for an ack.
fn encode(flags: u16, seq: u32, msg: RouteNetlinkMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut wire = vec![0; packet.buffer_len()];
    packet.serialize(&mut wire);
    wire
}

/// Statistics are most of a link message and we never read them.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

/// RTM_NEWLINK for a veth, up, whose peer is born in the namespace `peer_ns`
/// (IFLA_NET_NS_FD inside VETH_INFO_PEER) with its name and MAC.
fn veth_request(
    name: &str,
    peer: &str,
    peer_ns: RawFd,
    peer_mac: &[u8; 6],
    mtu: Option<u32>,
) -> LinkMessage {
    let mut peer_msg = LinkMessage::default();
    peer_msg.attributes = vec![
        LinkAttribute::IfName(peer.into()),
        LinkAttribute::NetNsFd(peer_ns),
        LinkAttribute::Address(peer_mac.to_vec()),
    ];
    peer_msg.attributes.extend(mtu.map(LinkAttribute::Mtu));
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes = vec![
        LinkAttribute::IfName(name.into()),
        LinkAttribute::LinkInfo(vec![
            LinkKind::Kind(InfoKind::Veth),
            LinkKind::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]),
    ];
    m.attributes.extend(mtu.map(LinkAttribute::Mtu));
    m
}

fn address_request(index: u32, addr: IpAddr, prefix: u8, nodad: bool) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = family(&addr);
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes = vec![
        AddressAttribute::Local(addr),
        AddressAttribute::Address(addr),
    ];
    if nodad {
        m.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m
}

fn route_request(r: &RouteReq) -> Result<RouteMessage> {
    if r.blackhole && (r.gateway.is_some() || r.oif.is_some() || r.onlink) {
        return Err(Error::invalid(
            format!("blackhole route {}", r.dst),
            "a blackhole route has no gateway and no interface",
        ));
    }
    // An IPv4 route without a gateway is `scope link`, as `ip route` makes it
    // (a blackhole stays `scope global`).
    let scope = if r.gateway.is_none() && r.dst.addr().is_ipv4() && !r.blackhole {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    let flags = if r.onlink {
        RouteFlags::Onlink
    } else {
        RouteFlags::empty()
    };
    let mut m = RouteMessage::default();
    m.header = route_header(&r.dst, r.protocol, scope, flags);
    if r.blackhole {
        m.header.kind = RouteType::BlackHole;
    }
    m.attributes = vec![RouteAttribute::Destination(r.dst.addr().into())];
    if let Some(gw) = r.gateway {
        if family(&gw) != family(&r.dst.addr()) {
            return Err(Error::invalid(
                format!("route {} via {gw}", r.dst),
                "gateway and destination differ in address family",
            ));
        }
        m.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    Ok(m)
}

fn route_header(dst: &IpNet, protocol: u8, scope: RouteScope, flags: RouteFlags) -> RouteHeader {
    RouteHeader {
        address_family: family(&dst.addr()),
        destination_prefix_length: dst.prefix_len(),
        table: RouteHeader::RT_TABLE_MAIN,
        protocol: RouteProtocol::from(protocol),
        scope,
        kind: RouteType::Unicast,
        flags,
        ..RouteHeader::default()
    }
}

/// Name, index and state of a link from an RTM_NEWLINK payload; None for a
/// link without a name. Only the name attribute is decoded: an attribute
/// that this crate version misreads on a newer kernel (of some other
/// driver's link, say) must not fail a listing that never looks at it.
fn link_info(payload: &[u8]) -> Result<Option<LinkInfo>, DecodeError> {
    let header = LinkHeader::parse(payload)?;
    let attrs = payload.get(header.buffer_len()..).unwrap_or_default();
    for nla in NlasIterator::new(attrs) {
        let nla = nla?;
        if nla.kind() != IFLA_IFNAME {
            continue;
        }
        if let LinkAttribute::IfName(name) =
            LinkAttribute::parse_with_param(&nla, header.interface_family)?
        {
            return Ok(Some(LinkInfo {
                name,
                index: header.index,
                up: header.flags.contains(LinkFlags::Up),
            }));
        }
    }
    Ok(None)
}

fn ip(addr: &RouteAddress) -> Result<IpAddr, DecodeError> {
    match addr {
        RouteAddress::Inet(a) => Ok(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Ok(IpAddr::V6(*a)),
        other => Err(format!("not an IP address: {other:?}").into()),
    }
}

/// The route in an RTM_NEWROUTE payload if it is a unicast or blackhole
/// route of the main table with protocol `protocol` (IPv4 or IPv6). Other
/// routes are judged by their header alone, so only ours must decode whole.
fn main_route(payload: &[u8], protocol: u8) -> Result<Option<RawRoute>, DecodeError> {
    let h = RouteHeader::parse(payload)?;
    let unspecified = match h.address_family {
        AddressFamily::Inet => IpAddr::from([0u8; 4]),
        AddressFamily::Inet6 => IpAddr::from([0u8; 16]),
        _ => return Ok(None),
    };
    let blackhole = h.kind == RouteType::BlackHole;
    if u8::from(h.protocol) != protocol || !(h.kind == RouteType::Unicast || blackhole) {
        return Ok(None);
    }
    let route = RouteMessage::parse(payload)?;
    // RTA_TABLE carries table ids above 255; the header's byte then says 252.
    let mut table = u32::from(h.table);
    let (mut dst, mut gateway, mut oif) = (unspecified, None, None);
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = ip(a)?,
            RouteAttribute::Gateway(a) => gateway = Some(ip(a)?),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return Ok(None);
    }
    let dst = IpNet::new(dst, h.destination_prefix_length)
        .map_err(|e| DecodeError::from(format!("route destination: {e}")))?;
    // A blackhole's nexthop is `lo` (IPv6) or nothing: it has no interface.
    if blackhole {
        (gateway, oif) = (None, None);
    }
    Ok(Some(RawRoute {
        dst,
        gateway,
        oif,
        onlink: h.flags.contains(RouteFlags::Onlink),
        blackhole,
    }))
}

#[cfg(test)]
mod tests {
    //! The requests are checked twice: through the crate's own decoder, and
    //! field by field as the kernel reads them (with `nl`'s independent
    //! attribute reader), so a crate change in layout cannot slip through.

    use super::*;
    use crate::nl;

    const IFLA_ADDRESS: u16 = 1;
    const IFLA_MTU: u16 = 4;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_NET_NS_FD: u16 = 28;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_INFO_DATA: u16 = 2;
    const VETH_INFO_PEER: u16 = 1;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const IFA_FLAGS: u16 = 8;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;

    /// (type, flags, seq, body after the netlink header) of one message.
    fn split(wire: &[u8]) -> (u16, u16, u32, &[u8]) {
        let len = u32::from_ne_bytes(wire[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, wire.len(), "length field covers the whole message");
        let ty = u16::from_ne_bytes(wire[4..6].try_into().unwrap());
        let flags = u16::from_ne_bytes(wire[6..8].try_into().unwrap());
        let seq = u32::from_ne_bytes(wire[8..12].try_into().unwrap());
        (ty, flags, seq, &wire[16..])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn round_trips(wire: &[u8], msg: RouteNetlinkMessage) {
        let decoded = NetlinkMessage::<RouteNetlinkMessage>::deserialize(wire).unwrap();
        assert_eq!(decoded.payload, NetlinkPayload::InnerMessage(msg));
    }

    #[test]
    fn veth_request_creates_the_peer_in_the_namespace_by_fd() {
        let mac = [0x0e, 0x6e, 1, 2, 3, 4];
        let msg = RouteNetlinkMessage::NewLink(veth_request("nmv0a1b2", "eth0", 7, &mac, None));
        let wire = encode(NLM_F_CREATE | NLM_F_EXCL, 42, msg.clone());
        round_trips(&wire, msg);

        let (ty, flags, seq, body) = split(&wire);
        assert_eq!((ty, seq), (RTM_NEWLINK, 42));
        let want = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        assert_eq!(flags, want);
        let up = libc::IFF_UP as u32;
        assert_eq!((u32_at(body, 8), u32_at(body, 12)), (up, up), "host end up");
        let attrs = &body[16..];
        assert_eq!(
            nl::attr_str(attrs, IFLA_IFNAME).as_deref(),
            Some("nmv0a1b2")
        );
        let info = nl::attr(attrs, IFLA_LINKINFO).unwrap();
        assert_eq!(nl::attr_str(info, IFLA_INFO_KIND).as_deref(), Some("veth"));
        let data = nl::attr(info, IFLA_INFO_DATA).unwrap();
        let peer = nl::attr(data, VETH_INFO_PEER).unwrap();
        assert_eq!(&peer[..16], &[0u8; 16], "the peer's ifinfomsg comes first");
        let peer_attrs = &peer[16..];
        assert_eq!(
            nl::attr_str(peer_attrs, IFLA_IFNAME).as_deref(),
            Some("eth0")
        );
        assert_eq!(
            nl::attr(peer_attrs, IFLA_NET_NS_FD),
            Some(&7i32.to_ne_bytes()[..])
        );
        assert_eq!(nl::attr(peer_attrs, IFLA_ADDRESS), Some(&mac[..]));
    }

    #[test]
    fn route_request_carries_protocol_table_scope_and_onlink() {
        let default = RouteReq {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some("169.254.1.1".parse().unwrap()),
            oif: Some(5),
            onlink: true,
            protocol: 110,
            replace: false,
            blackhole: false,
        };
        let msg = RouteNetlinkMessage::NewRoute(route_request(&default).unwrap());
        let wire = encode(NLM_F_CREATE | NLM_F_EXCL, 1, msg.clone());
        round_trips(&wire, msg);
        let (ty, _, _, body) = split(&wire);
        assert_eq!(ty, RTM_NEWROUTE);
        // family, dst_len, src_len, tos, table, protocol, scope, type
        let rtmsg = [libc::AF_INET as u8, 0, 0, 0, 254, 110, 0, 1];
        assert_eq!(&body[..8], &rtmsg);
        assert_eq!(u32_at(body, 8), 4, "RTNH_F_ONLINK");
        let attrs = &body[12..];
        assert_eq!(nl::attr(attrs, RTA_DST), Some(&[0u8; 4][..]));
        assert_eq!(nl::attr(attrs, RTA_GATEWAY), Some(&[169, 254, 1, 1][..]));
        assert_eq!(nl::attr(attrs, RTA_OIF), Some(&5u32.to_ne_bytes()[..]));

        let host_route = RouteReq {
            dst: "10.0.0.5/32".parse().unwrap(),
            gateway: None,
            onlink: false,
            ..default
        };
        let m = route_request(&host_route).unwrap();
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.flags, RouteFlags::empty());
        let mixed = RouteReq {
            gateway: Some("fe80::1".parse().unwrap()),
            ..host_route
        };
        assert!(matches!(route_request(&mixed), Err(Error::Invalid { .. })));
    }

    #[test]
    fn blackhole_request_is_typed_global_and_has_no_nexthop() {
        let r = RouteReq {
            dst: "fd4e:6d74:1::/122".parse().unwrap(),
            gateway: None,
            oif: None,
            onlink: false,
            protocol: 110,
            replace: true,
            blackhole: true,
        };
        let msg = RouteNetlinkMessage::NewRoute(route_request(&r).unwrap());
        let wire = encode(NLM_F_CREATE | NLM_F_REPLACE, 1, msg.clone());
        round_trips(&wire, msg);
        let (_, flags, _, body) = split(&wire);
        assert_ne!(flags & NLM_F_REPLACE, 0);
        // family, dst_len, src_len, tos, table, protocol, scope, type
        let rtmsg = [libc::AF_INET6 as u8, 122, 0, 0, 254, 110, 0, 6];
        assert_eq!(&body[..8], &rtmsg);
        let v4 = RouteReq {
            dst: "10.99.0.0/26".parse().unwrap(),
            ..r
        };
        let m = route_request(&v4).unwrap();
        assert_eq!(m.header.scope, RouteScope::Universe, "not scope link");
        let with_gw = RouteReq {
            gateway: Some("10.0.0.1".parse().unwrap()),
            ..v4
        };
        assert!(matches!(
            route_request(&with_gw),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn address_request_is_a_nodad_host_address() {
        let addr: IpAddr = "fd4e:6d74:7::1".parse().unwrap();
        let msg = RouteNetlinkMessage::NewAddress(address_request(9, addr, 128, true));
        let wire = encode(NLM_F_CREATE | NLM_F_EXCL, 3, msg.clone());
        round_trips(&wire, msg);
        let (_, _, _, body) = split(&wire);
        assert_eq!(&body[..4], &[libc::AF_INET6 as u8, 128, 0, 0]);
        assert_eq!(u32_at(body, 4), 9, "ifindex");
        let attrs = &body[8..];
        let octets = match addr {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(_) => unreachable!(),
        };
        assert_eq!(nl::attr(attrs, IFA_LOCAL), Some(&octets[..]));
        assert_eq!(nl::attr(attrs, IFA_ADDRESS), Some(&octets[..]));
        assert_eq!(nl::attr(attrs, IFA_FLAGS), Some(&2u32.to_ne_bytes()[..]));
    }

    /// An emitted message body with one more attribute whose value has a
    /// length the crate refuses (2 bytes where it wants 4).
    fn with_misread_attr(msg: &impl Emitable, ty: u16) -> Vec<u8> {
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        buf.extend_from_slice(&6u16.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&[0, 5, 0, 0]);
        buf
    }

    #[test]
    fn a_link_listing_reads_only_the_name_attribute() {
        let mut link = LinkMessage::default();
        link.header.index = 12;
        link.header.flags = LinkFlags::Up;
        link.attributes = vec![LinkAttribute::IfName("nmvfeed".into())];
        let payload = with_misread_attr(&link, IFLA_MTU);
        assert!(
            LinkMessage::parse(&payload[..]).is_err(),
            "strict decoding fails"
        );
        let info = link_info(&payload).unwrap().unwrap();
        assert_eq!(
            info,
            LinkInfo {
                name: "nmvfeed".into(),
                index: 12,
                up: true
            }
        );
    }

    #[test]
    fn a_route_listing_decodes_only_routes_with_our_protocol() {
        let ours = RouteReq {
            dst: "10.99.0.0/26".parse().unwrap(),
            gateway: Some("192.0.2.10".parse().unwrap()),
            oif: Some(3),
            onlink: false,
            protocol: 110,
            replace: false,
            blackhole: false,
        };
        let mut route = route_request(&ours).unwrap();
        let mut payload = vec![0; route.buffer_len()];
        route.emit(&mut payload);
        let want = RawRoute {
            dst: ours.dst,
            gateway: ours.gateway,
            oif: Some(3),
            onlink: false,
            blackhole: false,
        };
        assert_eq!(main_route(&payload, 110).unwrap(), Some(want));

        // Someone else's route: never decoded past its header.
        route.header.protocol = RouteProtocol::Boot;
        let foreign = with_misread_attr(&route, RTA_OIF);
        assert!(
            RouteMessage::parse(&foreign[..]).is_err(),
            "strict decoding fails"
        );
        assert_eq!(main_route(&foreign, 110).unwrap(), None);
        // Ours in another table (ids above 255 travel in RTA_TABLE).
        route.header.protocol = RouteProtocol::from(110);
        route.attributes.push(RouteAttribute::Table(1000));
        let mut payload = vec![0; route.buffer_len()];
        route.emit(&mut payload);
        assert_eq!(main_route(&payload, 110).unwrap(), None);
    }
}
