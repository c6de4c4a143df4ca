//! Routing between hosts, behind one seam: from host records, pools and
//! blocks, the routes and VXLAN entries one host wants (pure, here), which
//! the node then applies with its resync-and-diff discipline.
//!
//! Per remote host and block, the pool's mode decides:
//! - direct: `<block> via <host address>` (hosts on one segment);
//! - VXLAN (`Always`, or `CrossSubnet` to a host outside this host's
//!   subnet): `<block> via <host address> dev vxlan.netmod onlink`, with a
//!   neighbour entry (that address → the remote vxlan device's MAC) and a
//!   forwarding-database entry (that MAC → the remote host's address);
//! - BGP: nothing from the node; BIRD learns the route from the host that
//!   announces it.
//!
//! The host's own blocks get blackhole routes in every mode: an unassigned
//! address in them is dropped here, never sent to the default route (and
//! with BGP, the blackhole is what BIRD announces).

use ipnet::IpNet;
use netmod_dataplane as dp;
use netmod_model::{Host, Pool, VxlanMode};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The host's one vxlan device (Calico's is `vxlan.calico`).
pub const VXLAN_DEVICE: &str = "vxlan.netmod";
/// Calico's VNI and the IANA port.
pub const VXLAN_VNI: u32 = 4096;
pub const VXLAN_PORT: u16 = 4789;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// Where a route sends its traffic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// Straight to the host that holds the block.
    Via(IpAddr),
    /// Through the vxlan device, to the remote host's address as gateway.
    Vxlan(IpAddr),
    /// Dropped here.
    Blackhole,
}

/// What one host wants in its routing table and vxlan device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: BTreeMap<IpNet, Target>,
    /// Whether the host needs its vxlan device: some pool is encapsulated
    /// (to another host, or from one: it must receive too).
    pub vxlan: bool,
    /// Forwarding database of the vxlan device: remote device MAC → the
    /// remote host's (outer) address.
    pub fdb: BTreeMap<String, IpAddr>,
    /// Neighbours on the vxlan device: gateway address → remote device MAC.
    pub neighbours: BTreeMap<IpAddr, String>,
    /// Per remote VXLAN host (outer address): the networks whose inner
    /// sources it may send (its blocks and stray addresses).
    pub vxlan_sources: BTreeMap<IpAddr, BTreeSet<IpNet>>,
}

/// Everything the plan depends on.
pub struct Input<'a> {
    pub me: &'a str,
    /// Live hosts, this one included.
    pub hosts: &'a BTreeMap<String, Host>,
    pub pools: &'a [Pool],
    /// Each live host's blocks.
    pub blocks: &'a BTreeMap<String, Vec<IpNet>>,
    /// Endpoint addresses outside their host's blocks (borrowed, or asked
    /// by value), with their host.
    pub strays: &'a [(IpAddr, String)],
    /// Routes between hosts come from BGP: the node adds none for pools
    /// that are not encapsulated.
    pub bgp: bool,
}

/// Whether traffic of `pool` from `me` to `remote` is encapsulated.
pub fn encapsulated(pool: &Pool, me: &Host, remote: &Host) -> bool {
    match pool.vxlan_mode {
        VxlanMode::Never => false,
        VxlanMode::Always => true,
        // Direct only when the remote host is on this host's subnet.
        VxlanMode::CrossSubnet => !me.subnet.is_some_and(|s| s.contains(&remote.ip)),
    }
}

/// The remote host's address of a destination's family (the gateway).
fn gateway_for(dst: &IpNet, remote: &Host) -> Option<IpAddr> {
    match dst {
        IpNet::V4(_) => Some(remote.ip).filter(IpAddr::is_ipv4),
        IpNet::V6(_) => remote.ipv6.or(Some(remote.ip).filter(IpAddr::is_ipv6)),
    }
}

pub fn plan(input: &Input) -> Plan {
    let mut out = Plan::default();
    let Some(me) = input.hosts.get(input.me) else {
        return out;
    };
    let pool_of = |net: &IpNet| input.pools.iter().find(|p| p.cidr.contains(&net.network()));
    out.vxlan = input.pools.iter().any(|p| p.vxlan_mode != VxlanMode::Never);
    for block in input.blocks.get(input.me).into_iter().flatten() {
        out.routes.insert(*block, Target::Blackhole);
    }
    let mut wanted: Vec<(IpNet, &Host)> = Vec::new();
    for (name, blocks) in input.blocks {
        if name == input.me {
            continue;
        }
        if let Some(remote) = input.hosts.get(name) {
            wanted.extend(blocks.iter().map(|b| (*b, remote)));
        }
    }
    for (addr, host) in input.strays {
        if host == input.me {
            continue;
        }
        if let Some(remote) = input.hosts.get(host) {
            wanted.push((IpNet::from(*addr), remote));
        }
    }
    for (dst, remote) in wanted {
        let Some(pool) = pool_of(&dst) else {
            continue; // no pool: nothing to route (a stale block)
        };
        // What the remote host may send us through the overlay: by its
        // view of the pool's mode too (its idea of our subnet may differ).
        if let Some(vtep) = &remote.vtep {
            if encapsulated(pool, me, remote) || encapsulated(pool, remote, me) {
                out.vxlan_sources.entry(vtep.ip).or_default().insert(dst);
            }
        }
        if !encapsulated(pool, me, remote) {
            if let (false, Some(gateway)) = (input.bgp, gateway_for(&dst, remote)) {
                out.routes.insert(dst, Target::Via(gateway));
            }
            continue;
        }
        // Until the remote node has its vxlan device there is no way there.
        let Some(vtep) = &remote.vtep else {
            continue;
        };
        // IPv6 goes to the remote device's link-local address: the kernel
        // refuses an onlink gateway that another interface's prefix covers
        // (the remote host's own address, on a shared subnet), and the
        // remote host needs no IPv6 address of its own.
        let gateway = match dst {
            IpNet::V4(_) => match gateway_for(&dst, remote) {
                Some(g) => g,
                None => continue,
            },
            IpNet::V6(_) => match link_local_of(&vtep.mac) {
                Some(g) => g,
                None => continue,
            },
        };
        out.routes.insert(dst, Target::Vxlan(gateway));
        out.fdb.insert(vtep.mac.clone(), vtep.ip);
        out.neighbours.insert(gateway, vtep.mac.clone());
    }
    out
}

/// The EUI-64 link-local address of a MAC (`fe80::` + the MAC with its
/// universal/local bit flipped and `ff:fe` in the middle).
pub fn link_local_of(mac: &str) -> Option<IpAddr> {
    let m = parse_mac(mac)?;
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..11].copy_from_slice(&[m[0] ^ 0x02, m[1], m[2]]);
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13..16].copy_from_slice(&m[3..6]);
    Some(IpAddr::from(a))
}

/// `aa:bb:…` of a MAC.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

/// What applying a plan left in the kernel.
pub(crate) struct Applied {
    /// The vxlan device's MAC, when the host has one now.
    pub vtep_mac: Option<String>,
    /// Routes netmod keeps to other hosts' blocks and blackholes.
    pub routes: usize,
}

/// Bring the host's vxlan device, its forwarding database and neighbours,
/// and netmod's routes between hosts to what `plan` says (the containers'
/// own host routes are attach's, and left alone). `local` is the host's
/// outer (underlay) address.
pub(crate) fn apply(plan: &Plan, local: IpAddr) -> Result<Applied, dp::Error> {
    let mut vtep_mac = None;
    let vxlan = match local {
        IpAddr::V4(local) if plan.vxlan => Some(local),
        _ => None,
    };
    if let Some(local) = vxlan {
        let mac = dp::ensure_vxlan(&dp::VxlanSpec {
            name: VXLAN_DEVICE.into(),
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local,
            mtu: None,
        })?;
        vtep_mac = Some(mac_text(mac));
        forward_ipv6_from(VXLAN_DEVICE)?;
        let want_fdb: BTreeMap<[u8; 6], IpAddr> = plan
            .fdb
            .iter()
            .filter_map(|(m, ip)| Some((parse_mac(m)?, *ip)))
            .collect();
        let have_fdb: BTreeMap<[u8; 6], IpAddr> =
            dp::fdb_entries(VXLAN_DEVICE)?.into_iter().collect();
        for (mac, dst) in &want_fdb {
            if have_fdb.get(mac) != Some(dst) {
                dp::fdb_replace(VXLAN_DEVICE, *mac, *dst)?;
            }
        }
        for mac in have_fdb.keys().filter(|m| !want_fdb.contains_key(*m)) {
            dp::fdb_delete(VXLAN_DEVICE, *mac)?;
        }
        let want_neigh: BTreeMap<IpAddr, [u8; 6]> = plan
            .neighbours
            .iter()
            .filter_map(|(ip, m)| Some((*ip, parse_mac(m)?)))
            .collect();
        let have_neigh: BTreeMap<IpAddr, [u8; 6]> =
            dp::neighbours(VXLAN_DEVICE)?.into_iter().collect();
        for (ip, mac) in &want_neigh {
            if have_neigh.get(ip) != Some(mac) {
                dp::neighbour_replace(VXLAN_DEVICE, *ip, *mac)?;
            }
        }
        for ip in have_neigh.keys().filter(|i| !want_neigh.contains_key(*i)) {
            dp::neighbour_delete(VXLAN_DEVICE, *ip)?;
        }
    }
    let want: BTreeMap<IpNet, dp::RouteTarget> = plan
        .routes
        .iter()
        .filter_map(|(dst, t)| {
            let target = match t {
                Target::Via(gw) => dp::RouteTarget::Via(*gw),
                Target::Vxlan(gateway) => {
                    vxlan?;
                    dp::RouteTarget::OnlinkVia {
                        gateway: *gateway,
                        dev: VXLAN_DEVICE.into(),
                    }
                }
                Target::Blackhole => dp::RouteTarget::Blackhole,
            };
            Some((*dst, target))
        })
        .collect();
    // The containers' routes (`dev nmv…`) are not ours to judge here.
    let have: BTreeMap<IpNet, dp::RouteTarget> = dp::owned_routes()?
        .into_iter()
        .filter(|r| !matches!(r.target, dp::RouteTarget::Dev(_)))
        .map(|r| (r.dst, r.target))
        .collect();
    for (dst, target) in &want {
        if have.get(dst) != Some(target) {
            dp::route_replace(&dp::OwnedRoute {
                dst: *dst,
                target: target.clone(),
            })?;
        }
    }
    for dst in have.keys().filter(|d| !want.contains_key(*d)) {
        dp::route_delete(dst)?;
    }
    if vxlan.is_none() {
        dp::delete_link(VXLAN_DEVICE)?;
    }
    Ok(Applied {
        vtep_mac,
        routes: want.len(),
    })
}

/// Forward IPv6 that enters by `iface` (`force_forwarding`, kernel 6.17
/// on), leaving `all.forwarding` alone: an uplink stays a host that takes
/// its default route from router advertisements. On older kernels the
/// plugin sets `all.forwarding` instead.
pub fn forward_ipv6_from(iface: &str) -> Result<(), dp::Error> {
    let key = format!("/proc/sys/net/ipv6/conf/{iface}/force_forwarding");
    if std::path::Path::new(&key).exists() {
        dp::set_iface_sysctl(
            netmod_model::nft::Family::V6,
            iface,
            "force_forwarding",
            "1",
        )?;
    }
    Ok(())
}

/// The interfaces holding any of `addrs` (the host's uplinks).
pub fn interfaces_holding(addrs: &[IpAddr]) -> Vec<String> {
    let mut out: Vec<String> = dp::host_addresses()
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, a)| addrs.contains(a))
        .map(|(i, _)| i)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The IPv4 network of the interface holding `ip` (its connected route),
/// if the host has one.
pub fn subnet_of(ip: IpAddr) -> Option<IpNet> {
    let holder = dp::host_addresses()
        .ok()?
        .into_iter()
        .find(|(_, a)| *a == ip)
        .map(|(iface, _)| iface)?;
    dp::host_routes()
        .ok()?
        .into_iter()
        .filter(|r| r.via.is_none() && !r.reject && r.dev.as_deref() == Some(holder.as_str()))
        .filter(|r| r.dst.contains(&ip) && r.dst.prefix_len() < r.dst.max_prefix_len())
        .max_by_key(|r| r.dst.prefix_len())
        .map(|r| r.dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmod_model::Vtep;

    fn host(name: &str, ip: &str, subnet: &str, mac: Option<&str>) -> Host {
        Host {
            name: name.into(),
            ip: ip.parse().unwrap(),
            ipv6: Some(
                format!("fd00:ff::{}", &ip[ip.rfind('.').unwrap() + 1..])
                    .parse()
                    .unwrap(),
            ),
            applied_revision: None,
            subnet: Some(subnet.parse().unwrap()),
            vtep: mac.map(|m| Vtep {
                ip: ip.parse().unwrap(),
                mac: m.into(),
            }),
        }
    }

    fn pool(cidr: &str, mode: VxlanMode) -> Pool {
        Pool {
            cidr: cidr.parse().unwrap(),
            block_prefix: 26,
            quarantine_secs: 0,
            vxlan_mode: mode,
            nat_outgoing: false,
            disabled: false,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// h1 and h2 share 10.0.1.0/24; h3 is on 10.0.2.0/24. Every host has a
    /// vxlan device.
    fn hosts() -> BTreeMap<String, Host> {
        [
            host("h1", "10.0.1.1", "10.0.1.0/24", Some("02:00:00:00:00:01")),
            host("h2", "10.0.1.2", "10.0.1.0/24", Some("02:00:00:00:00:02")),
            host("h3", "10.0.2.3", "10.0.2.0/24", Some("02:00:00:00:00:03")),
        ]
        .into_iter()
        .map(|h| (h.name.clone(), h))
        .collect()
    }

    fn blocks() -> BTreeMap<String, Vec<IpNet>> {
        [
            ("h1", vec![net("192.168.0.0/26"), net("fd10::/122")]),
            ("h2", vec![net("192.168.0.64/26"), net("fd10::40/122")]),
            ("h3", vec![net("192.168.0.128/26"), net("fd10::80/122")]),
        ]
        .into_iter()
        .map(|(h, b)| (h.to_string(), b))
        .collect()
    }

    fn plan_for(mode: VxlanMode, bgp: bool, strays: &[(IpAddr, String)]) -> Plan {
        let (hosts, blocks) = (hosts(), blocks());
        let pools = [pool("192.168.0.0/16", mode), pool("fd10::/64", mode)];
        plan(&Input {
            me: "h1",
            hosts: &hosts,
            pools: &pools,
            blocks: &blocks,
            strays,
            bgp,
        })
    }

    #[test]
    fn direct_routes_through_each_hosts_address_of_the_family() {
        let p = plan_for(VxlanMode::Never, false, &[]);
        assert!(!p.vxlan);
        assert_eq!(
            p.routes[&net("192.168.0.64/26")],
            Target::Via(ip("10.0.1.2"))
        );
        assert_eq!(
            p.routes[&net("192.168.0.128/26")],
            Target::Via(ip("10.0.2.3"))
        );
        assert_eq!(
            p.routes[&net("fd10::80/122")],
            Target::Via(ip("fd00:ff::3"))
        );
        // Own blocks: blackholes.
        assert_eq!(p.routes[&net("192.168.0.0/26")], Target::Blackhole);
        assert_eq!(p.routes[&net("fd10::/122")], Target::Blackhole);
        assert!(p.fdb.is_empty() && p.neighbours.is_empty());
    }

    #[test]
    fn always_encapsulates_to_every_host() {
        let p = plan_for(VxlanMode::Always, false, &[]);
        assert!(p.vxlan);
        assert_eq!(
            p.routes[&net("192.168.0.64/26")],
            Target::Vxlan(ip("10.0.1.2"))
        );
        assert_eq!(
            p.routes[&net("fd10::40/122")],
            Target::Vxlan(ip("fe80::ff:fe00:2"))
        );
        assert_eq!(p.fdb["02:00:00:00:00:03"], ip("10.0.2.3"));
        assert_eq!(p.neighbours[&ip("10.0.2.3")], "02:00:00:00:00:03");
        assert_eq!(p.neighbours[&ip("fe80::ff:fe00:3")], "02:00:00:00:00:03");
        assert_eq!(
            p.vxlan_sources[&ip("10.0.2.3")],
            [net("192.168.0.128/26"), net("fd10::80/122")].into()
        );
        assert_eq!(p.routes[&net("192.168.0.0/26")], Target::Blackhole);
    }

    #[test]
    fn cross_subnet_encapsulates_only_to_another_subnet() {
        let p = plan_for(VxlanMode::CrossSubnet, false, &[]);
        assert_eq!(
            p.routes[&net("192.168.0.64/26")],
            Target::Via(ip("10.0.1.2"))
        );
        assert_eq!(
            p.routes[&net("192.168.0.128/26")],
            Target::Vxlan(ip("10.0.2.3"))
        );
        assert_eq!(p.fdb.len(), 1);
        assert!(p.vxlan, "the device receives from h3 too");
    }

    #[test]
    fn bgp_leaves_unencapsulated_routes_to_bird_and_keeps_blackholes() {
        let p = plan_for(VxlanMode::Never, true, &[]);
        assert_eq!(
            p.routes,
            [
                (net("192.168.0.0/26"), Target::Blackhole),
                (net("fd10::/122"), Target::Blackhole)
            ]
            .into()
        );
        let p = plan_for(VxlanMode::CrossSubnet, true, &[]);
        assert_eq!(
            p.routes[&net("192.168.0.128/26")],
            Target::Vxlan(ip("10.0.2.3"))
        );
        assert!(!p.routes.contains_key(&net("192.168.0.64/26")));
    }

    #[test]
    fn a_host_without_its_vxlan_device_yet_gets_no_route() {
        let mut hosts = hosts();
        hosts.get_mut("h3").unwrap().vtep = None;
        let blocks = blocks();
        let pools = [pool("192.168.0.0/16", VxlanMode::Always)];
        let p = plan(&Input {
            me: "h1",
            hosts: &hosts,
            pools: &pools,
            blocks: &blocks,
            strays: &[],
            bgp: false,
        });
        assert!(!p.routes.contains_key(&net("192.168.0.128/26")));
        assert!(!p.fdb.values().any(|a| *a == ip("10.0.2.3")));
        // Blocks of no pool (a stale record) are not routed either.
        assert!(!p.routes.contains_key(&net("fd10::80/122")));
    }

    #[test]
    fn stray_addresses_follow_their_hosts_mode() {
        let strays = [
            (ip("192.168.0.200"), "h3".to_string()),
            (ip("192.168.0.5"), "h1".to_string()),
        ];
        let p = plan_for(VxlanMode::CrossSubnet, false, &strays);
        assert_eq!(
            p.routes[&net("192.168.0.200/32")],
            Target::Vxlan(ip("10.0.2.3"))
        );
        assert!(
            !p.routes.contains_key(&net("192.168.0.5/32")),
            "local: the endpoint's own route"
        );
        assert!(p.vxlan_sources[&ip("10.0.2.3")].contains(&net("192.168.0.200/32")));
    }

    #[test]
    fn an_unknown_subnet_counts_as_another() {
        let mut hosts = hosts();
        hosts.get_mut("h1").unwrap().subnet = None;
        let blocks = blocks();
        let pools = [pool("192.168.0.0/16", VxlanMode::CrossSubnet)];
        let p = plan(&Input {
            me: "h1",
            hosts: &hosts,
            pools: &pools,
            blocks: &blocks,
            strays: &[],
            bgp: false,
        });
        assert_eq!(
            p.routes[&net("192.168.0.64/26")],
            Target::Vxlan(ip("10.0.1.2"))
        );
    }
}
