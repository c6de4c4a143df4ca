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
