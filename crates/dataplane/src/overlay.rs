//! The overlay between hosts: a VXLAN device, its forwarding database (which
//! host's underlay address has which inner MAC) and permanent neighbours
//! (which inner IP has which inner MAC), so no flooding or learning is needed.
//!
//! All calls act on the caller's network namespace and are idempotent:
//! `*_replace` creates or overwrites, `*_delete` says whether there was
//! anything to delete.

use crate::error::{Context, Error, Result};
use crate::link::check_ifname;
use crate::nl;
use crate::rtnl::Rtnl;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo as LinkKind,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourHeader, NeighbourMessage,
    NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::{IpAddr, Ipv4Addr};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWNEIGH: u16 = 28;
const IFINFOMSG_LEN: usize = 16;
const NDMSG_LEN: usize = 12;
const IFLA_ADDRESS: u16 = 1;
const IFLA_MTU: u16 = 4;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const IFLA_VXLAN_ID: u16 = 1;
const IFLA_VXLAN_LOCAL: u16 = 4;
const IFLA_VXLAN_LEARNING: u16 = 7;
const IFLA_VXLAN_PORT: u16 = 15;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_PERMANENT: u16 = 0x80;

/// A VXLAN device: VNI, UDP port and the local underlay address it sends
/// from; no underlay device (the kernel routes the outer packet), no
/// learning (the FDB is programmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    /// None: the kernel's choice (1450 over a 1500 underlay) or whatever
    /// an existing device has.
    pub mtu: Option<u32>,
}

impl VxlanSpec {
    fn validate(&self) -> Result<()> {
        check_ifname(&self.name)?;
        if self.vni >= 1 << 24 {
            return Err(Error::invalid(format!("VNI {}", self.vni), "need 24 bits"));
        }
        if self.port == 0 {
            return Err(Error::invalid("VXLAN port 0", "need a UDP port"));
        }
        if self.mtu.is_some_and(|m| !(68..=65535).contains(&m)) {
            return Err(Error::invalid(
                format!("MTU {:?} of {}", self.mtu, self.name),
                "need 68-65535",
            ));
        }
        Ok(())
    }
}

/// What a link of the spec's name is now, as far as the spec cares.
#[derive(Debug, Default)]
struct Existing {
    vxlan: bool,
    vni: Option<u32>,
    local: Option<Ipv4Addr>,
    port: Option<u16>,
    learning: Option<bool>,
    mtu: Option<u32>,
    up: bool,
    mac: Option<[u8; 6]>,
}

impl Existing {
    fn matches(&self, spec: &VxlanSpec) -> bool {
        self.vxlan
            && self.vni == Some(spec.vni)
            && self.local == Some(spec.local)
            && self.port == Some(spec.port)
            && self.learning == Some(false)
            && spec.mtu.is_none_or(|m| self.mtu == Some(m))
    }
}

/// Reads the link `name` attribute by attribute (nothing else is decoded).
fn existing(rtnl: &mut Rtnl, name: &str) -> Result<Option<Existing>> {
    let mut m = LinkMessage::default();
    m.attributes = vec![
        LinkAttribute::IfName(name.into()),
        LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]),
    ];
    let mut found = None;
    let res = rtnl.request(
        "RTM_GETLINK",
        0,
        RouteNetlinkMessage::GetLink(m),
        |ty, p| {
            if ty == RTM_NEWLINK && p.len() >= IFINFOMSG_LEN {
                found = Some(parse_link(p));
            }
            Ok(())
        },
    );
    match res {
        Ok(()) => Ok(found),
        Err(e) if e.os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_link(payload: &[u8]) -> Existing {
    let flags = u32::from_ne_bytes(payload[8..12].try_into().unwrap());
    let attrs = &payload[IFINFOMSG_LEN..];
    let mut e = Existing {
        up: flags & libc::IFF_UP as u32 != 0,
        mac: nl::attr(attrs, IFLA_ADDRESS).and_then(|m| m.try_into().ok()),
        mtu: nl::attr(attrs, IFLA_MTU)
            .and_then(|m| m.try_into().ok())
            .map(u32::from_ne_bytes),
        ..Existing::default()
    };
    if let Some(info) = nl::attr(attrs, IFLA_LINKINFO) {
        e.vxlan = nl::attr_str(info, IFLA_INFO_KIND).as_deref() == Some("vxlan");
        if let (true, Some(data)) = (e.vxlan, nl::attr(info, IFLA_INFO_DATA)) {
            e.vni = nl::attr(data, IFLA_VXLAN_ID)
                .and_then(|v| v.try_into().ok())
                .map(u32::from_ne_bytes);
            e.local = nl::attr(data, IFLA_VXLAN_LOCAL)
                .and_then(|v| <[u8; 4]>::try_from(v).ok())
                .map(Ipv4Addr::from);
            e.port = nl::attr(data, IFLA_VXLAN_PORT)
                .and_then(|v| v.try_into().ok())
                .map(u16::from_be_bytes);
            e.learning = nl::attr(data, IFLA_VXLAN_LEARNING).map(|v| v.first() != Some(&0));
        }
    }
    e
}

/// RTM_NEWLINK for the device, up at birth.
fn vxlan_request(spec: &VxlanSpec) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes = vec![LinkAttribute::IfName(spec.name.clone())];
    if let Some(mtu) = spec.mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkKind::Kind(InfoKind::Vxlan),
        LinkKind::Data(InfoData::Vxlan(vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Local(spec.local),
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(false),
        ])),
    ]));
    m
}

/// Makes the VXLAN device exist as `spec` says, up, and returns its MAC. A
/// link of that name with other settings (or of another kind) is deleted
/// and created again; one that matches is left alone (only set up).
pub fn ensure_vxlan(spec: &VxlanSpec) -> Result<[u8; 6]> {
    spec.validate()?;
    let name = &spec.name;
    let mut rtnl = Rtnl::open()?;
    let now = existing(&mut rtnl, name).with_context(|| format!("look up {name}"))?;
    match now {
        Some(e) if e.matches(spec) => {
            if !e.up {
                rtnl.set_up(name)
                    .with_context(|| format!("set {name} up"))?;
            }
            if let Some(mac) = e.mac {
                return Ok(mac);
            }
        }
        Some(_) => {
            rtnl.del_link(name)
                .with_context(|| format!("delete {name} (other settings)"))?;
            create(&mut rtnl, spec)?;
        }
        None => create(&mut rtnl, spec)?,
    }
    existing(&mut rtnl, name)
        .with_context(|| format!("look up {name}"))?
        .and_then(|e| e.mac)
        .ok_or_else(|| Error::invalid(format!("link {name}"), "has no MAC address"))
}

fn create(rtnl: &mut Rtnl, spec: &VxlanSpec) -> Result<()> {
    let m = RouteNetlinkMessage::NewLink(vxlan_request(spec));
    rtnl.command("RTM_NEWLINK vxlan", NLM_F_CREATE | NLM_F_EXCL, m)
        .with_context(|| {
            format!(
                "create vxlan {} (vni {}, local {}, port {})",
                spec.name, spec.vni, spec.local, spec.port
            )
        })
}

/// Deletes a link of the caller's namespace; Ok(false) when there was none.
pub fn delete_link(name: &str) -> Result<bool> {
    check_ifname(name)?;
    Rtnl::open()?
        .del_link(name)
        .with_context(|| format!("delete {name}"))
}

fn index_of(rtnl: &mut Rtnl, dev: &str) -> Result<u32> {
    check_ifname(dev)?;
    rtnl.link_index(dev)
        .and_then(|i| i.ok_or_else(|| Error::errno("RTM_GETLINK", libc::ENODEV)))
        .with_context(|| format!("find {dev}"))
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// One entry of a neighbour dump: (ifindex, state, destination, lladdr).
type RawNeigh = (u32, u16, Option<IpAddr>, Option<[u8; 6]>);

/// Dumps neighbour entries of `family` (AF_BRIDGE: forwarding databases),
/// reading only the header, NDA_DST and NDA_LLADDR.
fn dump_neighbours(rtnl: &mut Rtnl, family: AddressFamily) -> Result<Vec<RawNeigh>> {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    let mut out = Vec::new();
    let m = RouteNetlinkMessage::GetNeighbour(m);
    rtnl.request("RTM_GETNEIGH dump", NLM_F_DUMP, m, |ty, p| {
        if ty == RTM_NEWNEIGH && p.len() >= NDMSG_LEN {
            let index = u32::from_ne_bytes(p[4..8].try_into().unwrap());
            let state = u16::from_ne_bytes(p[8..10].try_into().unwrap());
            let attrs = &p[NDMSG_LEN..];
            let dst = nl::attr(attrs, NDA_DST).and_then(ip_of);
            let mac = nl::attr(attrs, NDA_LLADDR).and_then(|m| m.try_into().ok());
            out.push((index, state, dst, mac));
        }
        Ok(())
    })?;
    Ok(out)
}

fn neighbour_header(family: AddressFamily, index: u32, flags: NeighbourFlags) -> NeighbourHeader {
    NeighbourHeader {
        family,
        ifindex: index,
        state: NeighbourState::Permanent,
        flags,
        kind: RouteType::Unspec,
    }
}

/// The forwarding database of a VXLAN device: (inner MAC, underlay
/// address) of every entry that has a destination, sorted.
pub fn fdb_entries(dev: &str) -> Result<Vec<([u8; 6], IpAddr)>> {
    let mut rtnl = Rtnl::open()?;
    let index = index_of(&mut rtnl, dev)?;
    let all = dump_neighbours(&mut rtnl, AddressFamily::Bridge)
        .with_context(|| format!("list the fdb of {dev}"))?;
    let mut out: Vec<([u8; 6], IpAddr)> = all
        .into_iter()
        .filter(|(i, ..)| *i == index)
        .filter_map(|(_, _, dst, mac)| Some((mac?, dst?)))
        .collect();
    out.sort();
    Ok(out)
}

/// `bridge fdb replace MAC dev DEV dst DST self permanent`: frames for MAC
/// go to the underlay address DST (whatever it said before).
pub fn fdb_replace(dev: &str, mac: [u8; 6], dst: IpAddr) -> Result<()> {
    let mut rtnl = Rtnl::open()?;
    let index = index_of(&mut rtnl, dev)?;
    let mut m = NeighbourMessage::default();
    m.header = neighbour_header(AddressFamily::Bridge, index, NeighbourFlags::Own);
    m.attributes = vec![
        NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        NeighbourAttribute::Destination(NeighbourAddress::from(dst)),
    ];
    let flags = NLM_F_CREATE | NLM_F_REPLACE;
    rtnl.command(
        "RTM_NEWNEIGH fdb",
        flags,
        RouteNetlinkMessage::NewNeighbour(m),
    )
    .with_context(|| format!("fdb {} dst {dst} on {dev}", netmod_model::format_mac(&mac)))
}

/// Deletes the fdb entry of MAC (all its destinations); Ok(false) when
/// there was none.
pub fn fdb_delete(dev: &str, mac: [u8; 6]) -> Result<bool> {
    let mut rtnl = Rtnl::open()?;
    let index = index_of(&mut rtnl, dev)?;
    let mut m = NeighbourMessage::default();
    m.header = neighbour_header(AddressFamily::Bridge, index, NeighbourFlags::Own);
    m.attributes = vec![NeighbourAttribute::LinkLayerAddress(mac.to_vec())];
    let res = rtnl.command("RTM_DELNEIGH fdb", 0, RouteNetlinkMessage::DelNeighbour(m));
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e)
            .with_context(|| format!("delete fdb {} on {dev}", netmod_model::format_mac(&mac))),
    }
}

/// The permanent neighbours (both families) of a device: (IP, MAC), sorted.
pub fn neighbours(dev: &str) -> Result<Vec<(IpAddr, [u8; 6])>> {
    let mut rtnl = Rtnl::open()?;
    let index = index_of(&mut rtnl, dev)?;
    let all = dump_neighbours(&mut rtnl, AddressFamily::Unspec)
        .with_context(|| format!("list neighbours of {dev}"))?;
    let mut out: Vec<(IpAddr, [u8; 6])> = all
        .into_iter()
        .filter(|(i, state, ..)| *i == index && state & NUD_PERMANENT != 0)
        .filter_map(|(_, _, dst, mac)| Some((dst?, mac?)))
        .collect();
    out.sort();
    Ok(out)
}

/// `ip neigh replace IP lladdr MAC dev DEV nud permanent`.
pub fn neighbour_replace(dev: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
    let mut rtnl = Rtnl::open()?;
    let index = index_of(&mut rtnl, dev)?;
    rtnl.set_permanent_neighbour(index, ip, &mac)
        .with_context(|| format!("neighbour {ip} on {dev}"))
}

/// `ip neigh del IP dev DEV`; Ok(false) when there was none.
pub fn neighbour_delete(dev: &str, ip: IpAddr) -> Result<bool> {
    let mut rtnl = Rtnl::open()?;
    let index = index_of(&mut rtnl, dev)?;
    let family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let mut m = NeighbourMessage::default();
    m.header = neighbour_header(family, index, NeighbourFlags::empty());
    m.attributes = vec![NeighbourAttribute::Destination(NeighbourAddress::from(ip))];
    let res = rtnl.command("RTM_DELNEIGH", 0, RouteNetlinkMessage::DelNeighbour(m));
    match res {
        Ok(()) => Ok(true),
        Err(e) if e.os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("delete neighbour {ip} on {dev}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn vxlan_request_carries_vni_local_port_and_no_learning() {
        let spec = VxlanSpec {
            name: "nmvx0".into(),
            vni: 4096,
            port: 4789,
            local: Ipv4Addr::new(192, 0, 2, 7),
            mtu: Some(1400),
        };
        let m = vxlan_request(&spec);
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let up = libc::IFF_UP as u32;
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), up);
        let attrs = &buf[IFINFOMSG_LEN..];
        assert_eq!(nl::attr_str(attrs, 3).as_deref(), Some("nmvx0"));
        assert_eq!(nl::attr(attrs, IFLA_MTU), Some(&1400u32.to_ne_bytes()[..]));
        let parsed = parse_link(&buf);
        assert!(parsed.vxlan);
        assert_eq!(parsed.vni, Some(4096));
        assert_eq!(parsed.local, Some(spec.local));
        assert_eq!(parsed.port, Some(4789), "port travels big-endian");
        assert_eq!(parsed.learning, Some(false));
        assert!(parsed.matches(&spec));
        let other = VxlanSpec {
            port: 8472,
            ..spec.clone()
        };
        assert!(!parsed.matches(&other));
    }

    #[test]
    fn bad_specs_are_refused() {
        let ok = VxlanSpec {
            name: "nmvx0".into(),
            vni: 1,
            port: 4789,
            local: Ipv4Addr::new(192, 0, 2, 7),
            mtu: None,
        };
        assert!(ok.validate().is_ok());
        for bad in [
            VxlanSpec {
                vni: 1 << 24,
                ..ok.clone()
            },
            VxlanSpec {
                port: 0,
                ..ok.clone()
            },
            VxlanSpec {
                name: "../x".into(),
                ..ok.clone()
            },
            VxlanSpec {
                mtu: Some(10),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
