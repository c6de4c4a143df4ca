//! Plugging containers in (veth pair, addresses, routes, per-interface
//! settings) and the route/link queries the node daemon needs.

use crate::error::{Context, Error, Result};
use crate::netns::{in_netns_fd, open_netns};
use crate::rtnl::{RouteReq, Rtnl};
use ipnet::IpNet;
use netmod_model::nft::Family;
use netmod_model::{format_mac, ROUTE_PROTOCOL};
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::PathBuf;

pub use crate::rtnl::LinkInfo;

/// The container gateway (`model::GATEWAY_V4`), answered by proxy ARP on the host side.
const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway (`model::GATEWAY_V6`), carried by the host side of every veth.
const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// What to plug: one veth between the caller's namespace and `netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlugSpec {
    /// Host-side interface name (created in the caller's namespace).
    pub host_iface: String,
    /// Interface name inside the container (`eth0`).
    pub container_iface: String,
    /// The container's network namespace (`/proc/<pid>/ns/net`, `/run/netns/x`).
    pub netns: PathBuf,
    pub container_mac: [u8; 6],
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// Both ends' MTU (None: the kernel's default): lower than the
    /// uplink's when traffic may leave the host in a tunnel.
    pub mtu: Option<u32>,
}

/// What `plug` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugged {
    pub host_ifindex: u32,
    /// The container side's MAC, `aa:bb:cc:dd:ee:ff`.
    pub container_mac: String,
}

/// A route carrying netmod's protocol number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteInfo {
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
}

impl PlugSpec {
    fn validate(&self) -> Result<()> {
        check_ifname(&self.host_iface)?;
        check_ifname(&self.container_iface)?;
        if self.container_mac[0] & 1 != 0 {
            return Err(Error::invalid(
                "container MAC",
                format!("{} is a multicast address", format_mac(&self.container_mac)),
            ));
        }
        Ok(())
    }

    fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        let v4 = self.ipv4.iter().map(|a| IpAddr::V4(*a));
        v4.chain(self.ipv6.iter().map(|a| IpAddr::V6(*a)))
    }
}

pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.bytes().any(|b| b == b'/' || b == b':' || b <= b' ');
    if bad {
        return Err(Error::invalid(
            format!("interface name {name:?}"),
            "need 1-15 bytes without '/', ':' or whitespace",
        ));
    }
    Ok(())
}

/// Creates the veth pair for a container and configures both ends. The peer
/// is created directly inside the container namespace. On any failure the
/// host side (and with it the peer and its routes) is deleted again, and the
/// error names the step that failed. An existing host interface of the same
/// name is never touched: that is `Error::AlreadyExists`.
pub fn plug(spec: &PlugSpec) -> Result<Plugged> {
    spec.validate()?;
    let ns = open_netns(&spec.netns).context("open container netns")?;
    let mut cont = in_netns_fd(ns.as_fd(), Rtnl::open)
        .and_then(|r| r)
        .context("open netlink socket in container netns")?;
    let mut host = Rtnl::open()?;
    let created = host.create_veth(
        &spec.host_iface,
        &spec.container_iface,
        ns.as_fd(),
        &spec.container_mac,
        spec.mtu,
    );
    if let Err(e) = created {
        return Err(explain_create_failure(&mut host, spec, e));
    }
    configure(&mut host, &mut cont, spec).map_err(|e| match host.del_link(&spec.host_iface) {
        Ok(_) => e,
        Err(undo) => Error::Step {
            step: format!("{e}; undo (delete {}) also failed", spec.host_iface),
            source: Box::new(undo),
        },
    })
}

fn explain_create_failure(host: &mut Rtnl, spec: &PlugSpec, e: Error) -> Error {
    if e.os_error() != Some(libc::EEXIST) {
        return Error::Step {
            step: format!(
                "create veth {} (peer {} in {})",
                spec.host_iface,
                spec.container_iface,
                spec.netns.display()
            ),
            source: Box::new(e),
        };
    }
    let what = match host.link_index(&spec.host_iface) {
        Ok(Some(_)) => format!("host interface {}", spec.host_iface),
        _ => format!(
            "interface {} in {}",
            spec.container_iface,
            spec.netns.display()
        ),
    };
    Error::AlreadyExists { what }
}

fn configure(host: &mut Rtnl, cont: &mut Rtnl, spec: &PlugSpec) -> Result<Plugged> {
    let ci = &spec.container_iface;
    // The host side never learns from its container: no router
    // advertisements, no autoconfiguration, no redirects. Set while the
    // container's end is still down, so no packet can come first.
    host_sysctls(spec)?;
    cont.set_up("lo").context("set lo up in container")?;
    cont.set_up(ci)
        .with_context(|| format!("set {ci} up in container"))?;
    let cidx = cont
        .link_index(ci)
        .and_then(|i| i.ok_or_else(|| Error::errno("RTM_GETLINK", libc::ENODEV)))
        .with_context(|| format!("find {ci} in container"))?;
    for addr in spec.addrs() {
        let (len, nodad) = if addr.is_ipv4() {
            (32, false)
        } else {
            (128, true)
        };
        cont.add_addr(cidx, addr, len, nodad)
            .with_context(|| format!("address {addr}/{len} on {ci} in container"))?;
    }
    for r in container_routes(spec, cidx) {
        let what = describe(&r, ci);
        cont.add_route(&r)
            .with_context(|| format!("route {what} in container"))?;
    }

    let hi = &spec.host_iface;
    let hidx = host
        .link_index(hi)
        .and_then(|i| i.ok_or_else(|| Error::errno("RTM_GETLINK", libc::ENODEV)))
        .with_context(|| format!("find {hi}"))?;
    // The container knows its gateway's MAC outright: proxy ARP answers for
    // 169.254.1.1 only when the host has a route to it elsewhere (its default
    // route, usually), and a host without one would leave its containers
    // cut off even from itself.
    if !spec.ipv4.is_empty() {
        let mac = host
            .link_mac(hi)
            .and_then(|m| m.ok_or_else(|| Error::errno("RTM_GETLINK", libc::ENODEV)))
            .with_context(|| format!("read the MAC of {hi}"))?;
        cont.set_permanent_neighbour(cidx, IpAddr::V4(GATEWAY_V4), &mac)
            .with_context(|| format!("neighbour {GATEWAY_V4} on {ci} in container"))?;
    }
    if !spec.ipv6.is_empty() {
        host.add_addr(hidx, GATEWAY_V6.into(), 64, true)
            .with_context(|| format!("address {GATEWAY_V6}/64 on {hi}"))?;
    }
    for addr in spec.addrs() {
        let r = route(IpNet::from(addr), None, Some(hidx));
        host.add_route(&r)
            .with_context(|| format!("route {} dev {hi}", r.dst))?;
    }
    Ok(Plugged {
        host_ifindex: hidx,
        container_mac: format_mac(&spec.container_mac),
    })
}

fn route(dst: IpNet, gateway: Option<IpAddr>, oif: Option<u32>) -> RouteReq {
    RouteReq {
        dst,
        gateway,
        oif,
        onlink: false,
        protocol: ROUTE_PROTOCOL,
        replace: false,
        blackhole: false,
    }
}

/// `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1 dev eth0 onlink`,
/// `default via fe80::1 dev eth0`, as the container's addresses need them.
fn container_routes(spec: &PlugSpec, cidx: u32) -> Vec<RouteReq> {
    let mut routes = Vec::new();
    if !spec.ipv4.is_empty() {
        let gw = IpAddr::V4(GATEWAY_V4);
        routes.push(route(IpNet::from(gw), None, Some(cidx)));
        let mut default = route("0.0.0.0/0".parse().unwrap(), Some(gw), Some(cidx));
        default.onlink = true;
        routes.push(default);
    }
    if !spec.ipv6.is_empty() {
        let gw = IpAddr::V6(GATEWAY_V6);
        routes.push(route("::/0".parse().unwrap(), Some(gw), Some(cidx)));
    }
    routes
}

fn describe(r: &RouteReq, dev: &str) -> String {
    match r.gateway {
        Some(gw) => format!("{} via {gw} dev {dev}", r.dst),
        None => format!("{} dev {dev}", r.dst),
    }
}

/// Proxy ARP answers for the gateway (and forwarding) on the host side, and
/// the host side ignores whatever would let a container reconfigure its host.
/// `proxy_delay=0`: by default proxied ARP replies wait up to 0.8 s.
fn host_sysctls(spec: &PlugSpec) -> Result<()> {
    let hi = &spec.host_iface;
    let mut keys = vec![(format!("net/ipv4/conf/{hi}/accept_redirects"), "0")];
    // Whatever the endpoint's families: a container can send RAs regardless.
    if std::path::Path::new(&format!("/proc/sys/net/ipv6/conf/{hi}")).exists() {
        keys.push((format!("net/ipv6/conf/{hi}/accept_ra"), "0"));
        keys.push((format!("net/ipv6/conf/{hi}/autoconf"), "0"));
        keys.push((format!("net/ipv6/conf/{hi}/accept_redirects"), "0"));
    }
    if !spec.ipv4.is_empty() {
        keys.push((format!("net/ipv4/conf/{hi}/proxy_arp"), "1"));
        keys.push((format!("net/ipv4/neigh/{hi}/proxy_delay"), "0"));
        keys.push((format!("net/ipv4/conf/{hi}/forwarding"), "1"));
        keys.push(("net/ipv4/ip_forward".to_string(), "1"));
    }
    if !spec.ipv6.is_empty() {
        keys.push((format!("net/ipv6/conf/{hi}/proxy_ndp"), "1"));
        keys.push((format!("net/ipv6/conf/{hi}/forwarding"), "1"));
        // Forward what the container sends, without all.forwarding: that
        // would make every interface a router, and the uplink would drop
        // its router-advertised default route. Kernels before 6.17 have no
        // per-interface switch.
        if std::path::Path::new(&format!("/proc/sys/net/ipv6/conf/{hi}/force_forwarding")).exists()
        {
            keys.push((format!("net/ipv6/conf/{hi}/force_forwarding"), "1"));
        } else {
            keys.push(("net/ipv6/conf/all/forwarding".to_string(), "1"));
        }
    }
    keys.iter().try_for_each(|(k, v)| sysctl(k, v))
}

/// Sets a sysctl of the caller's namespace; writes only when the value differs.
fn sysctl(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{key}");
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| Error::io(format!("sysctl {key}={value}"), e))
}

/// Deletes a host-side interface (its peer and routes go with it).
/// Ok(false) when it was already gone.
pub fn unplug(host_iface: &str) -> Result<bool> {
    check_ifname(host_iface)?;
    Rtnl::open()?
        .del_link(host_iface)
        .with_context(|| format!("delete {host_iface}"))
}

/// Links of the caller's namespace whose name starts with `prefix`.
pub fn list_links_with_prefix(prefix: &str) -> Result<Vec<LinkInfo>> {
    let mut links = Rtnl::open()?.links().context("list links")?;
    links.retain(|l| l.name.starts_with(prefix));
    Ok(links)
}

pub fn link_exists(name: &str) -> Result<bool> {
    check_ifname(name)?;
    let index = Rtnl::open()?.link_index(name);
    Ok(index.with_context(|| format!("look up {name}"))?.is_some())
}

/// `ip route replace <dst> via <via> proto netmod`.
pub fn add_route(dst: IpNet, via: IpAddr) -> Result<()> {
    let mut r = route(dst.trunc(), Some(via), None);
    r.replace = true;
    Rtnl::open()?
        .add_route(&r)
        .with_context(|| format!("route {} via {via}", r.dst))
}

/// Deletes netmod's route to `dst`; Ok(false) when there was none.
pub fn del_route(dst: IpNet) -> Result<bool> {
    let dst = dst.trunc();
    Rtnl::open()?
        .del_route(&dst, ROUTE_PROTOCOL)
        .with_context(|| format!("delete route {dst}"))
}

/// Every route of the main table with netmod's protocol number, both families.
pub fn list_routes() -> Result<Vec<RouteInfo>> {
    let mut rtnl = Rtnl::open()?;
    let ours = rtnl.routes(ROUTE_PROTOCOL).context("list routes")?;
    let names: HashMap<u32, String> = if ours.iter().any(|r| r.oif.is_some()) {
        let links = rtnl.links().context("list links")?;
        links.into_iter().map(|l| (l.index, l.name)).collect()
    } else {
        HashMap::new()
    };
    // Blackholes only in `owned_routes`: callers of this listing know only
    // routes with a gateway or an interface.
    let mut routes: Vec<RouteInfo> = ours
        .into_iter()
        .filter(|r| !r.blackhole)
        .map(|r| RouteInfo {
            dst: r.dst,
            via: r.gateway,
            dev: r.oif.and_then(|i| names.get(&i).cloned()),
        })
        .collect();
    routes.sort();
    Ok(routes)
}

/// Where a route netmod owns sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteTarget {
    /// `via GATEWAY`: the kernel finds the interface (the gateway must be
    /// reachable by another route).
    Via(IpAddr),
    /// `via GATEWAY dev DEV onlink`: the gateway is taken to be on DEV's
    /// link, with no route to it (another host's VXLAN address).
    OnlinkVia { gateway: IpAddr, dev: String },
    /// `blackhole`: dropped here, never sent anywhere (a block's
    /// unassigned addresses; more specific routes still win).
    Blackhole,
    /// `dev DEV` (scope link for IPv4): a directly attached destination.
    Dev(String),
}

/// A route of the main table carrying netmod's protocol number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnedRoute {
    pub dst: IpNet,
    pub target: RouteTarget,
}

impl std::fmt::Display for OwnedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            RouteTarget::Via(gw) => write!(f, "{} via {gw}", self.dst),
            RouteTarget::OnlinkVia { gateway, dev } => {
                write!(f, "{} via {gateway} dev {dev} onlink", self.dst)
            }
            RouteTarget::Blackhole => write!(f, "blackhole {}", self.dst),
            RouteTarget::Dev(dev) => write!(f, "{} dev {dev}", self.dst),
        }
    }
}

/// Every route of the main table with netmod's protocol number (110), both
/// families, sorted: other hosts' blocks, blackholes, and the containers'
/// host routes (`Dev`). A route through an interface whose name cannot be
/// found any more is left out.
pub fn owned_routes() -> Result<Vec<OwnedRoute>> {
    let mut rtnl = Rtnl::open()?;
    let ours = rtnl.routes(ROUTE_PROTOCOL).context("list routes")?;
    let names: HashMap<u32, String> = if ours.iter().any(|r| r.oif.is_some()) {
        let links = rtnl.links().context("list links")?;
        links.into_iter().map(|l| (l.index, l.name)).collect()
    } else {
        HashMap::new()
    };
    let dev = |oif: Option<u32>| oif.and_then(|i| names.get(&i).cloned());
    let mut routes: Vec<OwnedRoute> = ours
        .into_iter()
        .filter_map(|r| {
            let target = match (r.blackhole, r.gateway, r.onlink) {
                (true, _, _) => RouteTarget::Blackhole,
                (false, Some(gateway), true) => RouteTarget::OnlinkVia {
                    gateway,
                    dev: dev(r.oif)?,
                },
                (false, Some(gw), false) => RouteTarget::Via(gw),
                (false, None, _) => RouteTarget::Dev(dev(r.oif)?),
            };
            Some(OwnedRoute { dst: r.dst, target })
        })
        .collect();
    routes.sort();
    Ok(routes)
}

/// `ip route replace DST ... proto 110`: creates the route, or replaces the
/// main table's route to DST (same metric) whatever it was.
pub fn route_replace(r: &OwnedRoute) -> Result<()> {
    let dst = r.dst.trunc();
    let mut rtnl = Rtnl::open()?;
    let mut index = |dev: &str| -> Result<u32> {
        check_ifname(dev)?;
        rtnl.link_index(dev)
            .and_then(|i| i.ok_or_else(|| Error::errno("RTM_GETLINK", libc::ENODEV)))
            .with_context(|| format!("find {dev}"))
    };
    let mut req = route(dst, None, None);
    req.replace = true;
    match &r.target {
        RouteTarget::Via(gw) => req.gateway = Some(*gw),
        RouteTarget::OnlinkVia { gateway, dev } => {
            req.gateway = Some(*gateway);
            req.oif = Some(index(dev)?);
            req.onlink = true;
        }
        RouteTarget::Blackhole => req.blackhole = true,
        RouteTarget::Dev(dev) => req.oif = Some(index(dev)?),
    }
    rtnl.add_route(&req).with_context(|| format!("route {r}"))
}

/// Deletes netmod's route (protocol 110) to `dst`, whatever its kind;
/// Ok(false) when there was none. Other routes to `dst` are left alone.
pub fn route_delete(dst: &IpNet) -> Result<bool> {
    del_route(*dst)
}

/// Sets `/proc/sys/net/ipv4|ipv6/conf/IFACE/KEY` in the caller's namespace
/// (written only when the value differs). `iface` may also be `all` or
/// `default`; names with '/' or "..", or keys with '/' are refused.
pub fn set_iface_sysctl(family: Family, iface: &str, key: &str, value: &str) -> Result<()> {
    check_ifname(iface)?;
    let bad_key = key.is_empty() || key.contains('/') || key.contains("..") || key.contains('\0');
    if bad_key {
        return Err(Error::invalid(
            format!("sysctl key {key:?}"),
            "need a single name without '/' or \"..\"",
        ));
    }
    if value.contains('\n') || value.contains('\0') {
        return Err(Error::invalid(
            format!("sysctl value {value:?}"),
            "need one line",
        ));
    }
    let ip = match family {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    };
    sysctl(&format!("net/{ip}/conf/{iface}/{key}"), value)
}

/// Deletes every netmod route whose destination is not in `keep`; returns
/// the destinations removed. `keep` must hold the containers' host routes
/// (`<addr>/32`, `/128`) as well as the blocks of other hosts: both are ours.
pub fn del_routes_not_in(keep: &BTreeSet<IpNet>) -> Result<Vec<IpNet>> {
    let mut removed = Vec::new();
    for r in list_routes()? {
        if !keep.contains(&r.dst) && del_route(r.dst)? {
            removed.push(r.dst);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_match_the_model() {
        assert_eq!(GATEWAY_V4.to_string(), netmod_model::GATEWAY_V4);
        assert_eq!(GATEWAY_V6.to_string(), netmod_model::GATEWAY_V6);
    }

    #[test]
    fn bad_names_and_macs_are_refused_before_any_change() {
        let mut spec = PlugSpec {
            host_iface: "nm0123456789ab".into(),
            container_iface: "eth0".into(),
            netns: "/nonexistent".into(),
            container_mac: [0x0e, 0x6e, 0, 0, 0, 1],
            ipv4: vec![],
            ipv6: vec![],
            mtu: None,
        };
        assert!(spec.validate().is_ok());
        spec.host_iface = "much-too-long-name".into();
        assert!(matches!(spec.validate(), Err(Error::Invalid { .. })));
        spec.host_iface = "nm1".into();
        spec.container_mac[0] = 1;
        assert!(matches!(spec.validate(), Err(Error::Invalid { .. })));
    }
}
