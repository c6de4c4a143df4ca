//! Routing between hosts against the real kernel, in test namespaces: the
//! VXLAN device, its fdb and neighbours, netmod's routes (onlink over the
//! overlay, blackholes), per-interface sysctls, masquerade and filtering
//! VXLAN by its inner frame. Checked with `ip -j` / `bridge -j` and traffic.

mod common;

use common::{prerequisites, run, TestNs};
use netmod_dataplane::{self as dp, Error, OwnedRoute, RouteTarget, VxlanSpec};
use netmod_model::nft::{BaseHook, ChainDef, Family, HookKind, Match, Rule, Ruleset, Verdict};
use serde_json::Value;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const VNI: u32 = 4096;
const PORT: u16 = 4789;
const DEV: &str = "nmvx";

fn spec(local: &str) -> VxlanSpec {
    VxlanSpec {
        name: DEV.into(),
        vni: VNI,
        port: PORT,
        local: local.parse().unwrap(),
        mtu: None,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac_str(mac: &[u8; 6]) -> String {
    netmod_model::format_mac(mac)
}

/// `ip -d -j link show DEV` of one link.
fn link_json(ns: &TestNs, dev: &str) -> Value {
    ns.ip_json(&["-d", "link", "show", "dev", dev])[0].clone()
}

fn ping(ns: &TestNs, args: &[&str]) -> bool {
    let mut cmd = vec!["ping", "-c1", "-W1", "-q"];
    cmd.extend_from_slice(args);
    ns.exec(&cmd).status.success()
}

/// Two "hosts" joined by a veth underlay (192.0.2.1 / 192.0.2.2, and
/// fd4e:6d74:f::1 / ::2), each with nothing else.
fn two_hosts() -> (TestNs, TestNs) {
    let (h1, h2) = (TestNs::new(), TestNs::new());
    run(&[
        "ip", "-n", &h1.name, "link", "add", "under", "type", "veth", "peer", "name", "under",
        "netns", &h2.name,
    ]);
    for (ns, n) in [(&h1, 1), (&h2, 2)] {
        ns.ip(&["addr", "add", &format!("192.0.2.{n}/24"), "dev", "under"]);
        ns.ip(&["link", "set", "under", "up"]);
    }
    (h1, h2)
}

/// Host `n` of `two_hosts` with its overlay: the VXLAN device carrying its
/// block's first address (10.244.n.0, fd4e:6d74:n::), and a test address
/// 10.244.n.5 / fd4e:6d74:n::5 on lo.
fn overlay_host(ns: &TestNs, n: u8) -> [u8; 6] {
    let mac = ns
        .run(|| dp::ensure_vxlan(&spec(&format!("192.0.2.{n}"))))
        .expect("ensure_vxlan");
    ns.ip(&["addr", "add", &format!("10.244.{n}.0/32"), "dev", DEV]);
    ns.ip(&[
        "addr",
        "add",
        &format!("fd4e:6d74:{n}::/128"),
        "dev",
        DEV,
        "nodad",
    ]);
    ns.ip(&["addr", "add", &format!("10.244.{n}.5/32"), "dev", "lo"]);
    ns.ip(&["addr", "add", &format!("fd4e:6d74:{n}::5/128"), "dev", "lo"]);
    mac
}

/// Makes `ns` reach host `peer`'s block over the overlay as the node will:
/// fdb (peer's VXLAN MAC → its underlay address), permanent neighbours for
/// the peer's VXLAN addresses, onlink routes for its blocks.
fn route_to_peer(ns: &TestNs, peer: u8, peer_mac: [u8; 6]) {
    ns.run(|| {
        dp::fdb_replace(DEV, peer_mac, ip(&format!("192.0.2.{peer}")))?;
        for (block, gw) in [
            (format!("10.244.{peer}.0/26"), format!("10.244.{peer}.0")),
            (
                format!("fd4e:6d74:{peer}::/122"),
                format!("fd4e:6d74:{peer}::"),
            ),
        ] {
            dp::neighbour_replace(DEV, ip(&gw), peer_mac)?;
            dp::route_replace(&OwnedRoute {
                dst: block.parse().unwrap(),
                target: RouteTarget::OnlinkVia {
                    gateway: ip(&gw),
                    dev: DEV.into(),
                },
            })?;
        }
        Ok::<(), Error>(())
    })
    .expect("route to peer");
}

#[test]
fn vxlan_is_created_left_alone_when_right_and_replaced_when_not() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    let mac = ns.run(|| dp::ensure_vxlan(&spec("192.0.2.1"))).unwrap();
    let link = link_json(&ns, DEV);
    assert_eq!(link["address"], mac_str(&mac));
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let data = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(data["id"], VNI);
    assert_eq!(data["local"], "192.0.2.1");
    assert_eq!(data["port"], PORT);
    assert_eq!(data["learning"], false);
    let index = link["ifindex"].clone();

    // Right already: same device (also when it was down).
    ns.ip(&["link", "set", DEV, "down"]);
    let again = ns.run(|| dp::ensure_vxlan(&spec("192.0.2.1"))).unwrap();
    assert_eq!(again, mac);
    let link = link_json(&ns, DEV);
    assert_eq!(link["ifindex"], index, "left alone");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));

    // Other settings: replaced.
    let mut other = spec("192.0.2.9");
    other.port = 8472;
    other.mtu = Some(1400);
    ns.run(|| dp::ensure_vxlan(&other)).unwrap();
    let link = link_json(&ns, DEV);
    assert_ne!(link["ifindex"], index, "replaced");
    assert_eq!(link["mtu"], 1400);
    assert_eq!(link["linkinfo"]["info_data"]["port"], 8472);
    assert_eq!(link["linkinfo"]["info_data"]["local"], "192.0.2.9");

    // A link of another kind under that name: replaced too.
    assert!(ns.run(|| dp::delete_link(DEV)).unwrap());
    ns.ip(&[
        "link", "add", DEV, "type", "veth", "peer", "name", "nmvxpeer",
    ]);
    ns.run(|| dp::ensure_vxlan(&spec("192.0.2.1"))).unwrap();
    assert_eq!(link_json(&ns, DEV)["linkinfo"]["info_kind"], "vxlan");

    assert!(ns.run(|| dp::delete_link(DEV)).unwrap());
    assert!(!ns.run(|| dp::delete_link(DEV)).unwrap(), "already gone");
    assert!(ns.links(DEV).is_empty());
}

#[test]
fn fdb_and_neighbours_are_replaced_listed_and_deleted() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| dp::ensure_vxlan(&spec("192.0.2.1"))).unwrap();
    let (m1, m2) = ([0x0e, 0x6e, 0, 0, 0, 1], [0x0e, 0x6e, 0, 0, 0, 2]);
    ns.run(|| {
        dp::fdb_replace(DEV, m1, ip("192.0.2.7"))?;
        dp::fdb_replace(DEV, m2, ip("192.0.2.8"))?;
        dp::fdb_replace(DEV, m1, ip("192.0.2.9")) // replaces, does not add
    })
    .unwrap();
    let listed = ns.run(|| dp::fdb_entries(DEV)).unwrap();
    assert_eq!(listed, vec![(m1, ip("192.0.2.9")), (m2, ip("192.0.2.8"))]);
    let fdb = run(&["bridge", "-n", &ns.name, "-j", "fdb", "show", "dev", DEV]);
    let fdb: Value = serde_json::from_str(&fdb).unwrap();
    let m1_entries: Vec<&Value> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["mac"] == mac_str(&m1))
        .collect();
    assert_eq!(m1_entries.len(), 1, "{fdb}");
    assert_eq!(m1_entries[0]["dst"], "192.0.2.9");
    assert_eq!(m1_entries[0]["state"], "permanent");
    assert!(m1_entries[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "self"));

    assert!(ns.run(|| dp::fdb_delete(DEV, m1)).unwrap());
    assert!(!ns.run(|| dp::fdb_delete(DEV, m1)).unwrap());
    let listed = ns.run(|| dp::fdb_entries(DEV)).unwrap();
    assert_eq!(listed, vec![(m2, ip("192.0.2.8"))]);

    // Neighbours, both families; a learned (non-permanent) one is not listed.
    ns.ip(&["addr", "add", "10.244.1.0/32", "dev", DEV]);
    ns.ip(&[
        "neigh",
        "add",
        "10.244.9.9",
        "lladdr",
        "0e:6e:00:00:00:09",
        "dev",
        DEV,
        "nud",
        "stale",
    ]);
    ns.run(|| {
        dp::neighbour_replace(DEV, ip("10.244.2.0"), m1)?;
        dp::neighbour_replace(DEV, ip("fd4e:6d74:2::"), m1)?;
        dp::neighbour_replace(DEV, ip("10.244.2.0"), m2)
    })
    .unwrap();
    let listed = ns.run(|| dp::neighbours(DEV)).unwrap();
    assert_eq!(
        listed,
        vec![(ip("10.244.2.0"), m2), (ip("fd4e:6d74:2::"), m1)]
    );
    let neigh = ns.ip_json(&["neigh", "show", "dev", DEV, "to", "10.244.2.0"]);
    assert_eq!(neigh[0]["lladdr"], mac_str(&m2));
    assert_eq!(neigh[0]["state"][0], "PERMANENT");
    assert!(ns
        .run(|| dp::neighbour_delete(DEV, ip("fd4e:6d74:2::")))
        .unwrap());
    assert!(!ns
        .run(|| dp::neighbour_delete(DEV, ip("fd4e:6d74:2::")))
        .unwrap());
    assert_eq!(
        ns.run(|| dp::neighbours(DEV)).unwrap(),
        vec![(ip("10.244.2.0"), m2)]
    );
    let missing = ns.run(|| dp::fdb_entries("nosuchdev")).unwrap_err();
    assert_eq!(missing.os_error(), Some(libc::ENODEV));
}

#[test]
fn the_overlay_carries_tcp_and_ping_between_two_hosts() {
    if !prerequisites() {
        return;
    }
    let (h1, h2) = two_hosts();
    let mac1 = overlay_host(&h1, 1);
    let mac2 = overlay_host(&h2, 2);
    let _l4 = h2.listen("10.244.2.5:9000");
    let _l6 = h2.listen("[fd4e:6d74:2::5]:9000");
    assert!(!h1.can_connect("10.244.2.5:9000"), "no route yet");

    route_to_peer(&h1, 2, mac2);
    route_to_peer(&h2, 1, mac1);
    assert!(h1.can_connect("10.244.2.5:9000"), "ipv4 over the overlay");
    assert!(
        h1.can_connect("[fd4e:6d74:2::5]:9000"),
        "ipv6 over the overlay"
    );
    assert!(ping(&h1, &["10.244.2.5"]));

    // The routes are netmod's, onlink over the VXLAN device, as listed.
    let routes = h1.run(dp::owned_routes).unwrap();
    let want = |dst: &str, gw: &str| OwnedRoute {
        dst: dst.parse().unwrap(),
        target: RouteTarget::OnlinkVia {
            gateway: ip(gw),
            dev: DEV.into(),
        },
    };
    assert_eq!(
        routes,
        vec![
            want("10.244.2.0/26", "10.244.2.0"),
            want("fd4e:6d74:2::/122", "fd4e:6d74:2::")
        ]
    );
    let r = h1.ip_json(&["route", "show", "10.244.2.0/26"]);
    assert_eq!(r[0]["protocol"], "110");
    assert!(r[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "onlink"));

    // Without the fdb entry the frames have nowhere to go.
    assert!(h1.run(|| dp::fdb_delete(DEV, mac2)).unwrap());
    assert!(!h1.can_connect("10.244.2.5:9000"), "fdb entry removed");
}

/// Echo requests `ns` has received, IPv4 and IPv6 (`/proc/net/snmp{,6}`).
fn echoes_received(ns: &TestNs) -> u64 {
    let read = |file: &str| {
        let out = ns.exec(&["cat", file]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let snmp = read("/proc/net/snmp");
    let icmp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Icmp:")).collect();
    let col = icmp[0]
        .split_whitespace()
        .position(|f| f == "InEchos")
        .unwrap();
    let v4: u64 = icmp[1]
        .split_whitespace()
        .nth(col)
        .unwrap()
        .parse()
        .unwrap();
    let v6: u64 = read("/proc/net/snmp6")
        .lines()
        .find_map(|l| l.strip_prefix("Icmp6InEchos"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    v4 + v6
}

/// A ping that the local stack refuses (a blackhole route: `connect:
/// Invalid argument`, exit status 2), as opposed to one without an answer.
fn refused_locally(ns: &TestNs, addr: &str) -> bool {
    let out = ns.exec(&["ping", "-c1", "-W1", "-q", addr]);
    out.status.code() == Some(2)
        && String::from_utf8_lossy(&out.stderr).contains("Invalid argument")
}

#[test]
fn a_blackhole_drops_locally_and_loses_to_more_specific_routes() {
    if !prerequisites() {
        return;
    }
    let (h1, h2) = two_hosts();
    h1.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    h1.ip(&[
        "-6",
        "addr",
        "add",
        "fd4e:6d74:f::1/64",
        "dev",
        "under",
        "nodad",
    ]);
    h2.ip(&[
        "-6",
        "addr",
        "add",
        "fd4e:6d74:f::2/64",
        "dev",
        "under",
        "nodad",
    ]);
    h1.ip(&["-6", "route", "add", "default", "via", "fd4e:6d74:f::2"]);
    h2.ip(&["addr", "add", "10.244.1.7/32", "dev", "lo"]);
    h2.ip(&["addr", "add", "fd4e:6d74:1::7/128", "dev", "lo"]);
    let before = echoes_received(&h2);
    assert!(ping(&h1, &["10.244.1.7"]), "reachable by the default route");
    assert!(
        ping(&h1, &["fd4e:6d74:1::7"]),
        "reachable by the default route"
    );
    assert_eq!(echoes_received(&h2), before + 2, "the counter counts");

    let blackhole = |dst: &str| OwnedRoute {
        dst: dst.parse().unwrap(),
        target: RouteTarget::Blackhole,
    };
    h1.run(|| {
        dp::route_replace(&blackhole("10.244.1.0/26"))?;
        dp::route_replace(&blackhole("fd4e:6d74:1::/122"))
    })
    .unwrap();
    let before = echoes_received(&h2);
    assert!(refused_locally(&h1, "10.244.1.7"), "blackholed");
    assert!(refused_locally(&h1, "fd4e:6d74:1::7"), "blackholed (ipv6)");
    assert_eq!(echoes_received(&h2), before, "nothing reached h2");
    let r = h1.ip_json(&["route", "show", "10.244.1.0/26"]);
    assert_eq!(r[0]["type"], "blackhole");
    assert_eq!(r[0]["protocol"], "110");

    // A more specific route wins over the block's blackhole.
    let host_route = |dst: &str, gw: &str| OwnedRoute {
        dst: dst.parse().unwrap(),
        target: RouteTarget::Via(ip(gw)),
    };
    h1.run(|| {
        dp::route_replace(&host_route("10.244.1.7/32", "192.0.2.2"))?;
        dp::route_replace(&host_route("fd4e:6d74:1::7/128", "fd4e:6d74:f::2"))
    })
    .unwrap();
    assert!(ping(&h1, &["10.244.1.7"]), "/32 beats the blackhole");
    assert!(ping(&h1, &["fd4e:6d74:1::7"]), "/128 beats the blackhole");

    let mut routes = h1.run(dp::owned_routes).unwrap();
    routes.sort();
    let mut want = vec![
        blackhole("10.244.1.0/26"),
        host_route("10.244.1.7/32", "192.0.2.2"),
        blackhole("fd4e:6d74:1::/122"),
        host_route("fd4e:6d74:1::7/128", "fd4e:6d74:f::2"),
    ];
    want.sort();
    assert_eq!(routes, want);
    // The older listing leaves blackholes out, as before.
    let listed = h1.run(dp::list_routes).unwrap();
    assert_eq!(listed.len(), 2);

    // Replace turns a route into another kind in place; delete only ours.
    h1.run(|| dp::route_replace(&host_route("10.244.1.0/26", "192.0.2.2")))
        .unwrap();
    let r = h1.ip_json(&["route", "show", "10.244.1.0/26"]);
    assert_eq!(r.as_array().unwrap().len(), 1);
    assert_eq!(r[0]["gateway"], "192.0.2.2");
    assert!(r[0].get("type").is_none_or(|t| t == "unicast"));
    h1.ip(&["route", "add", "10.244.3.0/26", "via", "192.0.2.2"]);
    let deleted = h1.run(|| {
        let a = dp::route_delete(&"fd4e:6d74:1::/122".parse().unwrap())?;
        let b = dp::route_delete(&"fd4e:6d74:1::/122".parse().unwrap())?;
        let c = dp::route_delete(&"10.244.3.0/26".parse().unwrap())?;
        Ok::<_, Error>((a, b, c))
    });
    assert_eq!(deleted.unwrap(), (true, false, false), "not someone else's");
    assert_eq!(
        h1.ip_json(&["route", "show", "10.244.3.0/26"])[0]["gateway"],
        "192.0.2.2"
    );
    // A Dev route, listed by its interface name.
    h1.run(|| {
        dp::route_replace(&OwnedRoute {
            dst: "10.244.4.0/26".parse().unwrap(),
            target: RouteTarget::Dev("under".into()),
        })
    })
    .unwrap();
    let routes = h1.run(dp::owned_routes).unwrap();
    assert!(routes.contains(&OwnedRoute {
        dst: "10.244.4.0/26".parse().unwrap(),
        target: RouteTarget::Dev("under".into()),
    }));
    assert_eq!(
        h1.ip_json(&["route", "show", "10.244.4.0/26"])[0]["scope"],
        "link"
    );
}

#[test]
fn interface_sysctls_are_written_and_bad_names_refused() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    ns.add_dummy("nmsys0");
    ns.run(|| {
        dp::set_iface_sysctl(Family::V4, "nmsys0", "rp_filter", "2")?;
        dp::set_iface_sysctl(Family::V6, "nmsys0", "accept_ra", "0")
    })
    .unwrap();
    assert_eq!(ns.sysctl("net/ipv4/conf/nmsys0/rp_filter"), "2");
    assert_eq!(ns.sysctl("net/ipv6/conf/nmsys0/accept_ra"), "0");
    for (iface, key) in [
        ("..", "forwarding"),
        ("a/b", "forwarding"),
        ("nmsys0", "../../ip_forward"),
        ("nmsys0", "a/b"),
        ("", "forwarding"),
    ] {
        let e = ns
            .run(|| dp::set_iface_sysctl(Family::V4, iface, key, "1"))
            .unwrap_err();
        assert!(
            matches!(e.root(), Error::Invalid { .. }),
            "{iface} {key}: {e}"
        );
    }
    let missing = ns
        .run(|| dp::set_iface_sysctl(Family::V4, "nosuchdev", "forwarding", "1"))
        .unwrap_err();
    assert_eq!(missing.os_error(), Some(libc::ENOENT));
}

/// Sends three router advertisements for `prefix`/64 (autonomous, router
/// lifetime 1800 s) out of `dev` to ff02::1, from a raw ICMPv6 socket.
fn send_ra(ns: &TestNs, dev: &str, prefix: &str) {
    let script = r#"
import socket, struct, sys
dev, prefix = sys.argv[1], socket.inet_pton(socket.AF_INET6, sys.argv[2])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
pio = struct.pack("!BBBBIII", 3, 4, 64, 0xc0, 86400, 14400, 0) + prefix
for _ in range(3):
    s.sendto(ra + pio, ("ff02::1", 0, 0, socket.if_nametoindex(dev)))
"#;
    let out = ns.exec(&["python3", "-c", script, dev, prefix]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `ns` has a default route learned from an RA on `dev`.
fn has_ra_default(ns: &TestNs, dev: &str) -> bool {
    let routes = ns.ip_json(&["-6", "route", "show", "default", "dev", dev]);
    routes
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["protocol"] == "ra")
}

/// Kernel facts the node relies on (6.17+): `force_forwarding=1` on an
/// interface forwards IPv6 that *enters* by it while `all.forwarding=0`,
/// and such an interface still accepts router advertisements with
/// `accept_ra=1` (per-interface `forwarding=1` would ignore them).
#[test]
fn ipv6_force_forwarding_is_per_ingress_interface_and_keeps_router_advertisements() {
    if !prerequisites() {
        return;
    }
    if !std::path::Path::new("/proc/sys/net/ipv6/conf/all/force_forwarding").exists() {
        panic!("kernel without net.ipv6.conf.*.force_forwarding (needs 6.17+)");
    }
    let (a, r, b) = (TestNs::new(), TestNs::new(), TestNs::new());
    run(&[
        "ip", "-n", &a.name, "link", "add", "xa", "type", "veth", "peer", "name", "xr1", "netns",
        &r.name,
    ]);
    run(&[
        "ip", "-n", &r.name, "link", "add", "xr2", "type", "veth", "peer", "name", "xb", "netns",
        &b.name,
    ]);
    for (ns, dev, addr) in [
        (&a, "xa", "fd4e:6d74:a::2/64"),
        (&r, "xr1", "fd4e:6d74:a::1/64"),
        (&r, "xr2", "fd4e:6d74:b::1/64"),
        (&b, "xb", "fd4e:6d74:b::2/64"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    a.ip(&["-6", "route", "add", "default", "via", "fd4e:6d74:a::1"]);
    b.ip(&["-6", "route", "add", "default", "via", "fd4e:6d74:b::1"]);
    assert_eq!(r.sysctl("net/ipv6/conf/all/forwarding"), "0");
    let ff = |dev: &'static str, v: &'static str| {
        r.run(move || dp::set_iface_sysctl(Family::V6, dev, "force_forwarding", v))
            .unwrap()
    };
    let echoes_at_b = || {
        let out = b.exec(&["cat", "/proc/net/snmp6"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("Icmp6InEchos"))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap()
    };
    // Neighbour discovery settles before the first forwarded packet.
    let _ = ping(&a, &["fd4e:6d74:a::1"]);
    let _ = ping(&b, &["fd4e:6d74:b::1"]);

    assert!(!ping(&a, &["fd4e:6d74:b::2"]), "no forwarding at all");
    ff("xr1", "1");
    let e0 = echoes_at_b();
    assert!(!ping(&a, &["fd4e:6d74:b::2"]), "replies enter by xr2");
    assert_eq!(
        echoes_at_b() - e0,
        1,
        "the request entering by xr1 is forwarded"
    );
    ff("xr2", "1");
    assert!(
        ping(&a, &["fd4e:6d74:b::2"]),
        "both ingress interfaces forced"
    );
    ff("xr1", "0");
    let e0 = echoes_at_b();
    assert!(!ping(&a, &["fd4e:6d74:b::2"]));
    assert_eq!(echoes_at_b() - e0, 0, "egress xr2 forced is not enough");
    ff("xr1", "1");
    assert_eq!(r.sysctl("net/ipv6/conf/xr1/forwarding"), "0");
    assert_eq!(r.sysctl("net/ipv6/conf/all/forwarding"), "0");

    // RAs: accepted on xr1 (force_forwarding=1, accept_ra=1) ...
    assert_eq!(r.sysctl("net/ipv6/conf/xr1/accept_ra"), "1");
    send_ra(&a, "xa", "2001:db8:a::");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        has_ra_default(&r, "xr1"),
        "RA accepted with force_forwarding=1"
    );
    let addrs = r.ip_json(&["-6", "addr", "show", "dev", "xr1"]);
    assert!(
        addrs.to_string().contains("2001:db8:a:"),
        "SLAAC from the RA: {addrs}"
    );
    // ... and ignored on xr2 once it has forwarding=1 (the contrast).
    r.run(|| dp::set_iface_sysctl(Family::V6, "xr2", "forwarding", "1"))
        .unwrap();
    send_ra(&b, "xb", "2001:db8:b::");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!has_ra_default(&r, "xr2"), "forwarding=1 ignores RAs");
}

fn rule(matches: Vec<Match>, verdict: Verdict, comment: &str) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.into(),
    }
}

fn base_chain(name: &str, kind: HookKind, priority: i32, rules: Vec<Rule>) -> ChainDef {
    ChainDef {
        name: name.into(),
        hook: Some(BaseHook {
            kind,
            priority,
            accept_by_default: true,
        }),
        rules,
    }
}

/// A pool address reaches the outside through a router that masquerades:
/// the outside sees the router's address, and the replies find their way.
#[test]
fn masquerade_rewrites_the_source_of_outgoing_traffic() {
    if !prerequisites() {
        return;
    }
    let (a, r, c) = (TestNs::new(), TestNs::new(), TestNs::new());
    run(&[
        "ip", "-n", &a.name, "link", "add", "eth0", "type", "veth", "peer", "name", "toa", "netns",
        &r.name,
    ]);
    run(&[
        "ip", "-n", &r.name, "link", "add", "out0", "type", "veth", "peer", "name", "eth0",
        "netns", &c.name,
    ]);
    for (ns, dev, addr) in [
        (&a, "eth0", "10.244.1.5/24"),
        (&r, "toa", "10.244.1.1/24"),
        (&r, "out0", "198.51.100.1/24"),
        (&c, "eth0", "198.51.100.2/24"),
    ] {
        ns.ip(&["addr", "add", addr, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
    }
    a.ip(&["route", "add", "default", "via", "10.244.1.1"]);
    r.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let listener = c.listen("198.51.100.2:9000");
    assert!(
        !a.can_connect("198.51.100.2:9000"),
        "c has no route back to the pool"
    );

    let nat = base_chain(
        "postrouting",
        HookKind::Postrouting,
        100,
        vec![rule(
            vec![
                Match::AddrInNet {
                    source: true,
                    net: "10.244.0.0/16".parse().unwrap(),
                    negate: false,
                },
                Match::OifPrefix("out".into()),
            ],
            Verdict::Masquerade,
            "nat outgoing",
        )],
    );
    let rs = Ruleset {
        chains: vec![nat],
        sets: Default::default(),
    };
    r.run(|| dp::nft_replace_all(&rs)).unwrap();
    // Drop what the failed attempt left in the backlog.
    listener.set_nonblocking(true).unwrap();
    while listener.accept().is_ok() {}
    listener.set_nonblocking(false).unwrap();

    let target: SocketAddr = "198.51.100.2:9000".parse().unwrap();
    let mut stream = a
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))
        .expect("connect through the masquerading router");
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(
        peer.ip(),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
        "the router's address"
    );
    use std::io::Write;
    accepted.write_all(b"pong").unwrap();
    let mut buf = [0u8; 4];
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong", "replies come back");
}

/// VXLAN packets are checked by their inner frame before decapsulation:
/// an input rule accepts inner IPv4 sources in 10.244.0.0/16 (ethertype
/// and source prefix at fixed offsets after the UDP header) and drops
/// other VXLAN.
#[test]
fn vxlan_with_an_inner_source_outside_the_allowed_prefix_is_dropped() {
    if !prerequisites() {
        return;
    }
    let (h1, h2) = two_hosts();
    let mac1 = overlay_host(&h1, 1);
    let mac2 = overlay_host(&h2, 2);
    route_to_peer(&h1, 2, mac2);
    route_to_peer(&h2, 1, mac1);
    // h1 also has an address outside the pool; h2 routes it back over the overlay.
    h1.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    h2.ip(&[
        "route",
        "add",
        "10.99.0.0/24",
        "via",
        "10.244.1.0",
        "dev",
        DEV,
        "onlink",
    ]);
    assert!(ping(&h1, &["-I", "10.244.1.5", "10.244.2.5"]));
    assert!(
        ping(&h1, &["-I", "10.99.0.1", "10.244.2.5"]),
        "passes without the rules"
    );

    let bits = |offset, len, value: &[u8]| Match::TransportBits {
        offset,
        len,
        value: value.to_vec(),
    };
    let vxlan = || {
        vec![
            Match::L4Proto {
                proto: 17,
                negate: false,
            },
            Match::Port {
                source: false,
                first: PORT,
                last: PORT,
                negate: false,
            },
        ]
    };
    let mut allowed = vxlan();
    allowed.push(bits(224, 16, &[0x08, 0x00]));
    allowed.push(bits(336, 16, &[10, 244]));
    let mut arp = vxlan();
    arp.push(bits(224, 16, &[0x08, 0x06]));
    let input = base_chain(
        "input",
        HookKind::Input,
        0,
        vec![
            rule(allowed, Verdict::Accept, "inner source in the pool"),
            rule(arp, Verdict::Accept, "inner arp"),
            rule(vxlan(), Verdict::Drop, "other vxlan"),
        ],
    );
    let rs = Ruleset {
        chains: vec![input],
        sets: Default::default(),
    };
    h2.run(|| dp::nft_replace_all(&rs)).unwrap();
    assert!(
        ping(&h1, &["-I", "10.244.1.5", "10.244.2.5"]),
        "inside the prefix"
    );
    assert!(
        !ping(&h1, &["-I", "10.99.0.1", "10.244.2.5"]),
        "outside: dropped"
    );
    // /12 (a mask on a partial byte): 10.99.x is outside 10.240.0.0/12 too.
    let mut rs = rs;
    if let Some(Match::TransportBits { len, value, .. }) = rs.chains[0].rules[0].matches.last_mut()
    {
        *len = 12;
        *value = vec![10, 0xf0];
    }
    h2.run(|| dp::nft_replace_all(&rs)).unwrap();
    assert!(
        ping(&h1, &["-I", "10.244.1.5", "10.244.2.5"]),
        "inside the /12"
    );
    assert!(
        !ping(&h1, &["-I", "10.99.0.1", "10.244.2.5"]),
        "outside the /12"
    );
}
