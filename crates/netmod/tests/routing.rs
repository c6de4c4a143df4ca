//! Routing between hosts on different subnets, in real namespaces: the
//! fabric namespace is a router between two subnets that knows nothing of
//! the pools; the hosts carry the pools' traffic in VXLAN (Always, or
//! CrossSubnet), block their own blocks' unassigned addresses, and the
//! seed's isolation holds across the overlay, IPv4 and IPv6.

mod common;
use common::hostile::*;
use common::lab::*;
use std::time::Duration;

/// Every route of a namespace, as `ip -j route` gives them (both families).
fn routes_in(ns: &str) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for family in ["-4", "-6"] {
        let out = must(&format!("ip -n {ns} -j {family} route show table all"));
        all.extend(
            serde_json::from_str::<serde_json::Value>(&out)
                .unwrap()
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    all
}

fn overlaps(dst: &str, pool: &ipnet::IpNet) -> bool {
    match dst
        .parse::<ipnet::IpNet>()
        .or_else(|_| dst.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
    {
        Ok(net) => net.contains(&pool.network()) || pool.contains(&net.network()),
        Err(_) => false, // "default"
    }
}

/// A routed fabric: h1 (and h2, with `two_on_first`) on one subnet, the
/// last host on another; both pools with `mode`.
fn routed(mode: &'static str, hosts: usize, pool4: &str, pool6: &str) -> Fabric {
    let flags: &'static [&'static str] = match mode {
        "Always" => &["--vxlan-mode", "Always"],
        "CrossSubnet" => &["--vxlan-mode", "CrossSubnet"],
        _ => &[],
    };
    let f = Fabric::with_options(
        hosts,
        pool4,
        FabricOptions {
            ipv6: true,
            second_subnet_from: Some(hosts),
            pool_flags: flags,
            ..FabricOptions::default()
        },
    );
    let mut args = vec!["pool", "add", pool6, "--quarantine", "1"];
    args.extend_from_slice(flags);
    let out = f.netmod(&args);
    assert!(
        out.status.success(),
        "pool add {pool6}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f
}

/// The seed's isolation, by real TCP in both families: `pairs` that must
/// connect, and those that must not.
fn assert_matrix(f: &Fabric, open: &[(&str, &str)], closed: &[(&str, &str)]) {
    for (from, to) in open {
        for v6 in [false, true] {
            let ok = wait_until(Duration::from_secs(15), || {
                if v6 {
                    f.connects6(from, to, 1.0)
                } else {
                    f.connects(from, to, 1.0)
                }
            });
            assert!(
                ok.is_some(),
                "{from} -> {to} (IPv6: {v6}) never connected\n{}",
                overlay_state(f)
            );
        }
    }
    for (from, to) in closed {
        assert!(!f.connects(from, to, 0.7), "{from} -> {to} over IPv4");
        assert!(!f.connects6(from, to, 0.7), "{from} -> {to} over IPv6");
    }
}

/// Each host's routes, vxlan neighbours and forwarding entries, for a
/// failure's message.
fn overlay_state(f: &Fabric) -> String {
    let mut out = String::new();
    for h in &f.hosts {
        let ns = &h.ns;
        for cmd in [
            format!("ip -n {ns} route show table all proto 110"),
            format!("ip -n {ns} -6 route show table all"),
            format!("ip -n {ns} neigh show dev vxlan.netmod"),
            format!("bridge -n {ns} fdb show dev vxlan.netmod"),
        ] {
            let o = sh(&cmd);
            out.push_str(&format!(
                "# {}: {cmd}\n{}{}",
                h.name,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        out.push_str(&format!("# {} node log\n{}", h.name, f.node_log(&h.name)));
    }
    out
}

/// The fabric's router has no route into any pool: what crosses it is
/// host-to-host (VXLAN) traffic only.
fn router_knows_no_pool(f: &Fabric, pools: &[&str]) {
    for r in routes_in(&f.fab_ns()) {
        let dst = r["dst"].as_str().unwrap_or_default();
        for p in pools {
            assert!(
                !overlaps(dst, &p.parse().unwrap()),
                "the router holds a route into pool {p}: {r}"
            );
        }
    }
}

/// A 64 KiB echo through the overlay comes back whole.
fn big_echo(f: &Fabric, from: &str, to: &str) {
    let script = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 9000), timeout=5)
data = bytes(range(256)) * 256
s.sendall(data)
got = b''
while len(got) < len(data):
    chunk = s.recv(65536)
    if not chunk: break
    got += chunk
sys.exit(0 if got == data else 1)
"#;
    for addr in [
        f.container(to).addr.clone(),
        f.container(to).addr6.clone().unwrap(),
    ] {
        let out = python_in(f.container(from).pid, script, &[&addr])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "64 KiB {from} -> {to} ({addr}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn vxlan_always_carries_the_isolated_matrix_across_subnets() {
    require_lab();
    let (pool4, pool6) = ("10.157.0.0/16", "fd00:157::/48");
    let mut f = routed("Always", 2, pool4, pool6);
    f.launch_with("h1", "a", &["star-1"], 1, 1);
    f.launch_with("h2", "b", &["star-1"], 1, 1);
    f.launch_with("h2", "c", &["star-2"], 1, 1);
    assert_matrix(&f, &[("a", "b"), ("b", "a")], &[("a", "c"), ("c", "a")]);
    router_knows_no_pool(&f, &[pool4, pool6]);
    big_echo(&f, "a", "b");
    // Each host record carries its VTEP; each host has the device, the
    // other's forwarding entry and a route through the device.
    let records = f.dump();
    for h in ["h1", "h2"] {
        let (_, rec) = records
            .iter()
            .find(|(k, _)| k == &format!("hosts/{h}"))
            .expect("host record");
        let rec: serde_json::Value = serde_json::from_str(rec).unwrap();
        assert_eq!(rec["vtep"]["ip"], f.host(h).ip.as_str(), "{rec}");
        assert!(
            rec["vtep"]["mac"].as_str().is_some_and(|m| m.len() == 17),
            "{rec}"
        );
        let ns = &f.host(h).ns;
        let link = must(&format!("ip -n {ns} -d -j link show vxlan.netmod"));
        assert!(link.contains("\"vxlan\""), "{link}");
    }
    let (h1, h2) = (f.host("h1").ns.clone(), f.host("h2").ns.clone());
    let fdb = must(&format!("bridge -n {h1} -j fdb show dev vxlan.netmod"));
    assert!(
        fdb.contains(&format!("\"dst\":\"{}\"", f.host("h2").ip)),
        "{fdb}"
    );
    let onlink: Vec<serde_json::Value> = routes_in(&h1)
        .into_iter()
        .filter(|r| r["dev"] == "vxlan.netmod")
        .collect();
    // IPv4 through h2's address, IPv6 through its device's link-local one.
    assert!(
        onlink
            .iter()
            .any(|r| r["gateway"] == f.host("h2").ip.as_str())
            && onlink.iter().any(|r| {
                r["gateway"]
                    .as_str()
                    .is_some_and(|g| g.starts_with("fe80:"))
                    && r["dst"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("fd00:157:"))
            }),
        "{onlink:?}"
    );
    // The host's own blocks are blackholed: an unassigned address there
    // goes nowhere, not out of the default route.
    let own_block = routes_in(&h2)
        .into_iter()
        .find(|r| {
            r["type"] == "blackhole"
                && overlaps(r["dst"].as_str().unwrap(), &pool4.parse().unwrap())
        })
        .expect("a blackhole for h2's block");
    let block: ipnet::IpNet = own_block["dst"].as_str().unwrap().parse().unwrap();
    let unassigned = block.hosts().last().unwrap();
    let out = sh(&format!("ip -n {h2} route get {unassigned}"));
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout).contains("blackhole"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !f.connects_addr("a", &unassigned.to_string(), 0.7),
        "an unassigned address answered"
    );
    // --uninstall on h1 removes the device, its routes and blackholes.
    f.kill_node(0);
    let out = sh(&format!(
        "ip netns exec {h1} {} node --uninstall",
        env!("CARGO_BIN_EXE_netmod")
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sh(&format!("ip -n {h1} link show vxlan.netmod"))
        .status
        .success());
    let left: Vec<serde_json::Value> = routes_in(&h1)
        .into_iter()
        .filter(|r| {
            r["protocol"] == "110"
                || r["protocol"].as_u64() == Some(110)
                || r["type"] == "blackhole"
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn vxlan_cross_subnet_encapsulates_only_to_the_other_subnet() {
    require_lab();
    let (pool4, pool6) = ("10.158.0.0/16", "fd00:158::/48");
    let mut f = routed("CrossSubnet", 3, pool4, pool6);
    f.launch_with("h1", "a", &["star-1"], 1, 1);
    f.launch_with("h2", "b", &["star-1"], 1, 1);
    f.launch_with("h3", "c", &["star-1"], 1, 1);
    f.launch_with("h3", "d", &["star-2"], 1, 1);
    assert_matrix(
        &f,
        &[("a", "b"), ("b", "a"), ("a", "c"), ("c", "b")],
        &[("a", "d"), ("d", "b"), ("d", "a")],
    );
    router_knows_no_pool(&f, &[pool4, pool6]);
    // h1 reaches h2 (same subnet) directly, h3 through the device.
    let h1 = f.host("h1").ns.clone();
    let routes = routes_in(&h1);
    let via = |gw: &str| {
        routes
            .iter()
            .filter(|r| r["gateway"] == gw)
            .cloned()
            .collect::<Vec<_>>()
    };
    let to_h2 = via(&f.host("h2").ip);
    let to_h3 = via(&f.host("h3").ip);
    assert!(
        !to_h2.is_empty() && to_h2.iter().all(|r| r["dev"] != "vxlan.netmod"),
        "{to_h2:?}"
    );
    assert!(
        !to_h3.is_empty() && to_h3.iter().all(|r| r["dev"] == "vxlan.netmod"),
        "{to_h3:?}"
    );
    big_echo(&f, "a", "c");
}

/// VXLAN datagrams that do not come from a known host, or carry an inner
/// source outside the sender's blocks, are dropped before decapsulation;
/// an endpoint may not send VXLAN to any host. Control: the same frame
/// from the right host with its own block's source is delivered.
#[test]
fn forged_vxlan_is_dropped() {
    require_lab();
    let (pool4, pool6) = ("10.159.0.0/16", "fd00:159::/48");
    let mut f = routed("Always", 3, pool4, pool6);
    f.launch_with("h1", "victim", &["star-1"], 1, 1);
    f.launch_with("h2", "friend", &["star-1"], 1, 1);
    f.launch_with("h3", "attacker", &["star-1"], 1, 1);
    assert_matrix(&f, &[("friend", "victim"), ("attacker", "victim")], &[]);
    let victim = f.container("victim").addr.clone();
    let friend = f.container("friend").addr.clone();
    let attacker = f.container("attacker").addr.clone();
    let h1 = f.host("h1");
    let h1_ip = h1.ip.clone();
    let h1_mac = {
        let records = f.dump();
        let rec = &records.iter().find(|(k, _)| k == "hosts/h1").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(rec).unwrap();
        v["vtep"]["mac"].as_str().unwrap().to_string()
    };
    let mut sink = UdpSink::start(f.container("victim").pid, &victim);
    // A VXLAN datagram to h1 carrying UDP inner_src -> victim with
    // `payload`, sent from namespace `ns`.
    let inject = |ns: &str, inner_src: &str, payload: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "python3", "-c", INJECT])
            .args([
                &h1_ip,
                &h1_mac,
                inner_src,
                &victim,
                payload,
                &UDP_PORT.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let h2ns = f.host("h2").ns.clone();
    // Control: h2 with an inner source of its own block is delivered.
    inject(&h2ns, &friend, "from-h2-as-friend");
    assert!(
        sink.wait_for("from-h2-as-friend", Duration::from_secs(3)),
        "control frame lost"
    );
    // h2 claiming h3's container as inner source: dropped.
    inject(&h2ns, &attacker, "from-h2-as-attacker");
    // The router (not a host) sending a valid-looking frame: dropped.
    inject(&f.fab_ns(), &friend, "from-router");
    // An endpoint sending VXLAN to h1 (through its own host, with NAT or not).
    let out = std::process::Command::new("nsenter")
        .arg(format!(
            "--net=/proc/{}/ns/net",
            f.container("attacker").pid
        ))
        .args([
            "python3",
            "-c",
            INJECT,
            &h1_ip,
            &h1_mac,
            &friend,
            &victim,
            "from-endpoint",
        ])
        .arg(UDP_PORT.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let delivered: Vec<&str> = ["from-h2-as-attacker", "from-router", "from-endpoint"]
        .into_iter()
        .filter(|forged| sink.wait_for(forged, Duration::from_millis(10)))
        .collect();
    assert!(
        delivered.is_empty(),
        "forged frames delivered: {delivered:?}"
    );
}

/// Build and send one VXLAN datagram to argv[1]:4789: inner Ethernet to
/// MAC argv[2], IPv4/UDP from argv[3] to argv[4]:argv[6] carrying argv[5].
const INJECT: &str = r#"
import socket, struct, sys
dst, mac, src, to, payload, port = sys.argv[1:7]
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b)//2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
data = payload.encode()
udp = struct.pack('!HHHH', 40000, int(port), 8 + len(data), 0) + data
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                 socket.inet_aton(src), socket.inet_aton(to))
ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
eth = bytes.fromhex(mac.replace(':', '')) + bytes.fromhex('020000000001') + b'\x08\x00'
vxlan = struct.pack('!II', 0x08000000, 4096 << 8)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(vxlan + eth + ip + udp, (dst, 4789))
"#;

/// Sends router advertisements (router lifetime 1800 s, no prefix) out of
/// `dev` of namespace `ns` to ff02::1.
const SEND_RA: &str = r#"
import socket, struct, sys
dev = sys.argv[1]
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
for _ in range(3):
    s.sendto(ra, ("ff02::1", 0, 0, socket.if_nametoindex(dev)))
"#;

/// IPv6 between hosts is forwarded per interface (the containers' veths,
/// the uplink, the vxlan device), never with `all.forwarding`: the hosts'
/// uplinks keep taking their default route from router advertisements.
/// Veths leave room for the VXLAN header when a pool may be encapsulated.
#[test]
fn ipv6_is_forwarded_per_interface_and_uplinks_keep_router_advertisements() {
    require_lab();
    let (pool4, pool6) = ("10.156.0.0/16", "fd00:156::/48");
    let mut f = routed("Always", 2, pool4, pool6);
    f.launch_with("h1", "a", &["star-1"], 1, 1);
    f.launch_with("h2", "b", &["star-1"], 1, 1);
    assert_matrix(&f, &[("a", "b")], &[]);
    for h in ["h1", "h2"] {
        assert_eq!(
            sysctl(&f, h, "net/ipv6/conf/all/forwarding").as_deref(),
            Some("0"),
            "{h}: all.forwarding"
        );
        assert_eq!(
            sysctl(&f, h, "net/ipv6/conf/eth0/force_forwarding").as_deref(),
            Some("1"),
            "{h}: the uplink forwards what enters by it"
        );
        assert_eq!(
            sysctl(&f, h, "net/ipv6/conf/vxlan.netmod/force_forwarding").as_deref(),
            Some("1"),
            "{h}: the vxlan device forwards what enters by it"
        );
    }
    // The router advertises itself on h1's subnet: h1 takes the route.
    let h1 = f.host("h1").ns.clone();
    must(&format!("ip -n {h1} -6 route del default"));
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &f.fab_ns(),
            "python3",
            "-c",
            SEND_RA,
            "br0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        Duration::from_secs(5),
        "h1's default route from the RA",
        || must(&format!("ip -n {h1} -6 route show default")).contains("proto ra"),
    );
    // MTU: the veths of both ends leave room for the VXLAN header.
    let a = f.container("a");
    let inside = must(&format!(
        "nsenter --net=/proc/{}/ns/net ip -j link show eth0",
        a.pid
    ));
    assert!(inside.contains("\"mtu\":1450"), "{inside}");
    let outside = must(&format!("ip -n {h1} -j link show {}", host_iface(&f, "a")));
    assert!(outside.contains("\"mtu\":1450"), "{outside}");
}

/// A TCP server that answers each connection with the address it came from.
const WHOAMI: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
print('ready', flush=True)
while True:
    c, a = s.accept()
    c.sendall(a[0].encode()); c.close()
"#;

/// Who `addr`:`port` says we are, from a container (None: no answer).
fn seen_as(pid: u32, addr: &str, port: u16) -> Option<String> {
    let script = r#"
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    print(s.recv(100).decode())
except OSError:
    sys.exit(1)
"#;
    let out = python_in(pid, script, &[addr, &port.to_string()])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn whoami_in(prefix: &[&str], addr: &str, port: u16) -> Lines {
    let mut cmd = std::process::Command::new(prefix[0]);
    cmd.args(&prefix[1..])
        .args(["python3", "-c", WHOAMI, addr, &port.to_string()]);
    Lines::start(cmd, Some("ready"))
}

/// NAT outgoing: a task of a `--nat-outgoing` pool reaches a server outside
/// every pool, which sees its host's address; a task of a pool without it
/// is not translated (the outside has no way back to it); between the two
/// pools nobody is translated; `pool set` turns it off and on live.
#[test]
fn nat_outgoing_translates_only_traffic_leaving_every_pool() {
    require_lab();
    let mut f = Fabric::with_options(
        2,
        "10.154.0.0/16",
        FabricOptions {
            second_subnet_from: Some(2),
            pool_flags: &["--vxlan-mode", "Always", "--nat-outgoing"],
            ..FabricOptions::default()
        },
    );
    let out = f.netmod(&[
        "pool",
        "add",
        "10.155.0.0/16",
        "--vxlan-mode",
        "Always",
        "--quarantine",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.launch("h1", "natted", &["star-1"]);
    launch_reserved(
        &mut f,
        "h2",
        "plain",
        &["star-1"],
        "10.155.0.7",
        Duration::from_secs(5),
        |_| {},
    );
    let outside = f.outside_ns();
    let _server = whoami_in(&["ip", "netns", "exec", &outside], OUTSIDE_ADDR, 8080);
    let natted_pid = f.container("natted").pid;
    let h1_ip = f.host("h1").ip.clone();
    wait_for(
        Duration::from_secs(15),
        "natted reaches the outside",
        || seen_as(natted_pid, OUTSIDE_ADDR, 8080).as_deref() == Some(h1_ip.as_str()),
    );
    // No NAT for the other pool: its address is not routable outside.
    let plain_pid = f.container("plain").pid;
    assert_eq!(seen_as(plain_pid, OUTSIDE_ADDR, 8080), None);
    // Between the pools: real addresses both ways.
    let natted_addr = f.container("natted").addr.clone();
    let in_plain = format!("--net=/proc/{plain_pid}/ns/net");
    let _plain_server = whoami_in(&["nsenter", &in_plain], "10.155.0.7", 8081);
    let in_natted = format!("--net=/proc/{natted_pid}/ns/net");
    let _natted_server = whoami_in(&["nsenter", &in_natted], &natted_addr, 8081);
    wait_for(
        Duration::from_secs(10),
        "natted -> plain, untranslated",
        || seen_as(natted_pid, "10.155.0.7", 8081).as_deref() == Some(natted_addr.as_str()),
    );
    assert_eq!(
        seen_as(plain_pid, &natted_addr, 8081).as_deref(),
        Some("10.155.0.7")
    );
    // Live: off, and the outside no longer answers; on again, it does.
    let out = f.netmod(&["pool", "set", "10.154.0.0/16", "--nat-outgoing", "false"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(10), "NAT off", || {
        seen_as(natted_pid, OUTSIDE_ADDR, 8080).is_none()
    });
    let out = f.netmod(&["pool", "set", "10.154.0.0/16", "--nat-outgoing"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(10), "NAT on again", || {
        seen_as(natted_pid, OUTSIDE_ADDR, 8080).as_deref() == Some(h1_ip.as_str())
    });
}

/// The vxlan entries (fdb, neighbour, routes) of host `of` on host `on`.
fn vxlan_entries(f: &Fabric, on: &str, of: &str) -> Vec<String> {
    let ns = &f.host(on).ns;
    let ip = &f.host(of).ip;
    let mut found = Vec::new();
    let fdb = must(&format!("bridge -n {ns} fdb show dev vxlan.netmod"));
    found.extend(
        fdb.lines()
            .filter(|l| l.contains(&format!("dst {ip} ")))
            .map(String::from),
    );
    let neigh = must(&format!("ip -n {ns} neigh show dev vxlan.netmod"));
    found.extend(
        neigh
            .lines()
            .filter(|l| l.starts_with(&format!("{ip} ")))
            .map(String::from),
    );
    let routes = must(&format!("ip -n {ns} route show proto 110"));
    found.extend(
        routes
            .lines()
            .filter(|l| l.contains(&format!("via {ip} ")))
            .map(String::from),
    );
    found
}

/// A pool's mode changes live (Never → Always: hosts on two subnets start
/// to reach each other with no task restarted), `--disabled` stops new
/// allocations and keeps the old ones working, and a dead host's VXLAN
/// entries go from every other host within the lease time plus a second.
#[test]
fn pool_modes_change_live_and_a_dead_hosts_vxlan_entries_go() {
    require_lab();
    let lease = 3;
    let mut f = Fabric::with_options(
        3,
        "10.153.0.0/16",
        FabricOptions {
            backend: Backend::Etcd,
            lease_ttl: lease,
            resync_interval: 600,
            second_subnet_from: Some(3),
            ..FabricOptions::default()
        },
    );
    f.launch("h1", "a", &["star-1"]);
    f.launch("h2", "b", &["star-1"]);
    f.launch("h3", "x", &["star-1"]);
    let pids: Vec<u32> = ["a", "b", "x"].iter().map(|c| f.container(c).pid).collect();
    // Never: h1 and h2 share a subnet and reach each other directly; h3 is
    // behind a router that knows no pool.
    wait_for(Duration::from_secs(15), "a -> b, direct", || {
        f.connects("a", "b", 0.5)
    });
    assert!(
        !f.connects("a", "x", 0.7),
        "the router carried pool traffic"
    );
    let out = f.netmod(&["pool", "set", "10.153.0.0/16", "--vxlan-mode", "Always"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (from, to) in [("a", "x"), ("x", "a"), ("a", "b"), ("b", "x")] {
        let ok = wait_until(Duration::from_secs(15), || f.connects(from, to, 0.5));
        assert!(
            ok.is_some(),
            "{from} -> {to} after the switch\n{}",
            overlay_state(&f)
        );
    }
    let now: Vec<u32> = ["a", "b", "x"].iter().map(|c| f.container(c).pid).collect();
    assert_eq!(pids, now, "no task was restarted");
    // Disabled: nothing new, the old ones keep working.
    let out = f.netmod(&["pool", "set", "10.153.0.0/16", "--disabled"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, reply) = f.mesos(
        "h1",
        &serde_json::json!({"command":"allocate","args":{"hostname":"h1","num_ipv4":1,"num_ipv6":0,"uid":"late"}}),
    );
    assert_ne!(code, 0, "{reply}");
    assert!(reply.to_string().contains("disabled"), "{reply}");
    assert!(f.connects("a", "x", 1.0));
    // h3 dies: h1 and h2 drop its entries within the lease plus a second.
    for h in ["h1", "h2"] {
        assert_eq!(
            vxlan_entries(&f, h, "h3").len(),
            3,
            "{h}: fdb, neighbour, route"
        );
    }
    // Watch etcd for the host record's expiry, from inside the fabric: the
    // entries must go within a second of it (the lease is the time a host
    // may be silent before it counts as dead).
    let t0 = std::time::Instant::now();
    let expired = {
        let (addr, fab) = (f.addr.clone(), f.fab_ns());
        std::thread::spawn(move || {
            in_netns(&fab, move || {
                let s = netmod_store::open(&addr).unwrap();
                while s.get("hosts/h3").unwrap().is_some() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                t0.elapsed()
            })
        })
    };
    f.kill_node(2);
    let mut gone = [None, None];
    while gone.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(15) {
        for (i, h) in ["h1", "h2"].into_iter().enumerate() {
            if gone[i].is_none() && vxlan_entries(&f, h, "h3").is_empty() {
                gone[i] = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let expired = expired.join().unwrap();
    eprintln!(
        "h3 killed; its record expired after {expired:?}; its vxlan entries gone on h1 after {:?}, on h2 after {:?}",
        gone[0], gone[1]
    );
    for (h, g) in ["h1", "h2"].iter().zip(gone) {
        let g = g.unwrap_or_else(|| panic!("{h} kept h3's entries\n{}", overlay_state(&f)));
        assert!(
            g <= expired + Duration::from_secs(1),
            "{h} dropped h3's entries {:?} after its record expired",
            g.saturating_sub(expired)
        );
    }
    assert!(f.connects("a", "b", 1.0), "the live hosts still talk");
}
