//! Routing between hosts through BGP, spoken by BIRD 2 (`netmod node
//! --bgp`), in real namespaces: a full mesh of hosts on one subnet, a
//! top-of-rack router (BIRD in the fabric namespace) between two subnets,
//! and `--uninstall`. The node programs no route to another host's block:
//! every such route in these tests is BIRD's (`proto bird`).

mod common;
use common::lab::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every node gets its own BIRD file and socket in the fabric's directory.
const BGP_ARGS: &[&str] = &[
    "--bgp",
    "--bird-config",
    "{dir}/bird-{host}.conf",
    "--bird-socket",
    "{dir}/bird-{host}.ctl",
];

fn require_bird() {
    common::require_tools(&[("bird", "bird2"), ("birdc", "bird2")]);
}

/// A namespace's routes of both families, as `ip -j route` gives them.
fn routes_in(ns: &str) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for family in ["-4", "-6"] {
        let out = must(&format!("ip -n {ns} -j {family} route show"));
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

fn canonical_dst(r: &serde_json::Value) -> String {
    let dst = r["dst"].as_str().unwrap_or_default();
    match dst.parse::<ipnet::IpNet>() {
        Ok(n) => n.to_string(),
        // A host route is printed without its length.
        Err(_) => dst
            .parse::<std::net::IpAddr>()
            .map(|a| ipnet::IpNet::from(a).to_string())
            .unwrap_or_else(|_| dst.to_string()),
    }
}

/// The blocks a host holds: its netmod blackholes.
fn blocks_of(f: &Fabric, host: &str) -> BTreeSet<String> {
    routes_in(&f.host(host).ns)
        .iter()
        .filter(|r| r["type"] == "blackhole" && r["protocol"] == "110")
        .map(canonical_dst)
        .collect()
}

/// BIRD's routes in a namespace: destination → gateway.
fn bird_routes(ns: &str) -> Vec<(String, String)> {
    routes_in(ns)
        .iter()
        .filter(|r| r["protocol"] == "bird")
        .map(|r| {
            (
                canonical_dst(r),
                r["gateway"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn in_pools(dst: &str, pools: &[&str]) -> bool {
    let Ok(net) = dst.parse::<ipnet::IpNet>() else {
        return false;
    };
    pools
        .iter()
        .any(|p| p.parse::<ipnet::IpNet>().unwrap().contains(&net))
}

/// What each host, its BIRD and its node log say, for a failure's message.
fn bgp_state(f: &Fabric) -> String {
    let dir = f.store.dir.path().display().to_string();
    let mut out = String::new();
    for h in &f.hosts {
        let ns = &h.ns;
        for cmd in [
            format!("ip -n {ns} route show"),
            format!("ip -n {ns} -6 route show"),
            format!(
                "ip netns exec {ns} birdc -s {dir}/bird-{}.ctl show protocols",
                h.name
            ),
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

/// The seed's isolation by real TCP: `open` pairs connect, `closed` ones
/// do not, over IPv4 and, with `v6`, IPv6.
fn assert_matrix(f: &Fabric, v6: bool, open: &[(&str, &str)], closed: &[(&str, &str)]) {
    let families: &[bool] = if v6 { &[false, true] } else { &[false] };
    for (from, to) in open {
        for &six in families {
            let ok = wait_until(Duration::from_secs(15), || {
                if six {
                    f.connects6(from, to, 1.0)
                } else {
                    f.connects(from, to, 1.0)
                }
            });
            assert!(
                ok.is_some(),
                "{from} -> {to} (IPv6: {six}) never connected\n{}",
                bgp_state(f)
            );
        }
    }
    for (from, to) in closed {
        assert!(!f.connects(from, to, 0.7), "{from} -> {to} over IPv4");
        if v6 {
            assert!(!f.connects6(from, to, 0.7), "{from} -> {to} over IPv6");
        }
    }
}

/// Every host has BIRD's route to every other host's blocks, through a
/// gateway `gateway(me, other host, IPv6, gateway)` accepts, and no route
/// of netmod's own to them.
fn wait_for_learned(f: &Fabric, hosts: &[&str], gateway: impl Fn(&str, &str, bool, &str) -> bool) {
    for me in hosts {
        for other in hosts.iter().filter(|o| *o != me) {
            let blocks = blocks_of(f, other);
            assert!(!blocks.is_empty(), "{other} holds no block");
            for b in &blocks {
                let ok = wait_until(Duration::from_secs(20), || {
                    bird_routes(&f.host(me).ns)
                        .iter()
                        .any(|(dst, gw)| dst == b && gateway(me, other, b.contains(':'), gw))
                });
                assert!(
                    ok.is_some(),
                    "{me} never learned {other}'s block {b} by the right gateway\n{}",
                    bgp_state(f)
                );
            }
        }
        // The node leaves routes between hosts to BIRD.
        let ours: Vec<serde_json::Value> = routes_in(&f.host(me).ns)
            .into_iter()
            .filter(|r| r["protocol"] == "110" && r["type"] != "blackhole")
            .filter(|r| r["dev"].as_str().is_none_or(|d| !d.starts_with("nmv")))
            .collect();
        assert!(
            ours.is_empty(),
            "{me}: netmod routed other hosts itself: {ours:?}"
        );
    }
}

fn bird_running(ns: &str, socket: &str) -> bool {
    sh(&format!("ip netns exec {ns} birdc -s {socket} show status"))
        .status
        .success()
}

#[test]
fn full_mesh_learns_every_hosts_blocks_and_withdraws_a_dead_hosts() {
    require_lab();
    require_bird();
    let (pool4, pool6) = ("10.161.0.0/16", "fd00:161::/48");
    let mut f = Fabric::with_options(
        3,
        pool4,
        FabricOptions {
            ipv6: true,
            node_args: BGP_ARGS,
            ..FabricOptions::default()
        },
    );
    let out = f.netmod(&["pool", "add", pool6, "--quarantine", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    f.launch_with("h1", "a", &["star-1"], 1, 1);
    f.launch_with("h2", "b", &["star-1"], 1, 1);
    f.launch_with("h2", "c", &["star-2"], 1, 1);
    f.launch_with("h3", "d", &["star-1"], 1, 1);
    let ip = |h: &str, v6: bool| {
        let h = f.host(h);
        if v6 {
            h.ip6.clone().unwrap()
        } else {
            h.ip.clone()
        }
    };
    wait_for_learned(&f, &["h1", "h2", "h3"], |_, other, v6, gw| {
        gw == ip(other, v6)
    });
    assert_matrix(
        &f,
        true,
        &[("a", "b"), ("b", "a"), ("d", "a"), ("b", "d")],
        &[("a", "c"), ("c", "a"), ("c", "d")],
    );
    // A node that dies takes its BIRD along: its blocks leave every other
    // host within the lease time and a second.
    let h3_blocks = blocks_of(&f, "h3");
    let started = Instant::now();
    f.kill_node(2);
    let limit = Duration::from_secs(f.opts.lease_ttl + 1);
    let gone = wait_until(limit, || {
        ["h1", "h2"].iter().all(|h| {
            bird_routes(&f.host(h).ns)
                .iter()
                .all(|(dst, _)| !h3_blocks.contains(dst))
        })
    });
    assert!(
        gone.is_some(),
        "h3's blocks {h3_blocks:?} still routed {:?} after its node died\n{}",
        started.elapsed(),
        bgp_state(&f)
    );
    eprintln!("h3's routes withdrawn after {:?}", started.elapsed());
    let dir = f.store.dir.path().display().to_string();
    assert!(
        wait_until(Duration::from_secs(3), || !bird_running(
            &f.host("h3").ns,
            &format!("{dir}/bird-h3.ctl")
        ))
        .is_some(),
        "h3's BIRD outlived its node"
    );
    // The others still reach each other.
    assert_matrix(&f, true, &[("a", "b")], &[]);
}

#[test]
fn a_top_of_rack_router_carries_the_matrix_between_subnets() {
    require_lab();
    require_bird();
    let (pool4, pool6) = ("10.162.0.0/16", "fd00:162::/48");
    let mut f = Fabric::with_options(
        2,
        pool4,
        FabricOptions {
            ipv6: true,
            second_subnet_from: Some(2),
            node_args: BGP_ARGS,
            ..FabricOptions::default()
        },
    );
    let out = f.netmod(&["pool", "add", pool6, "--quarantine", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The router's address on each host's subnet: `.254`, `::254`.
    let host_ips: Vec<(String, String, String)> = f
        .hosts
        .iter()
        .map(|h| (h.name.clone(), h.ip.clone(), h.ip6.clone().unwrap()))
        .collect();
    let router_on = move |h: &str, v6: bool| {
        let (_, ip, ip6) = host_ips.iter().find(|(n, _, _)| n == h).unwrap();
        if v6 {
            format!("{}::254", &ip6[..ip6.rfind("::").unwrap()])
        } else {
            format!("{}.254", &ip[..ip.rfind('.').unwrap()])
        }
    };
    // The router (the fabric namespace) runs BIRD in AS 64513, with one
    // eBGP session per host and family, on each host's subnet; it installs
    // what it learns and passes it on.
    let dir = f.store.dir.path().to_path_buf();
    let conf = dir.join("router.conf");
    let mut sessions = String::new();
    for h in ["h1", "h2"] {
        for v6 in [false, true] {
            let (fam, neighbor) = if v6 {
                ("ipv6", f.host(h).ip6.clone().unwrap())
            } else {
                ("ipv4", f.host(h).ip.clone())
            };
            sessions.push_str(&format!(
                "protocol bgp {h}_{fam} {{ local {} as 64513; neighbor {neighbor} as 64512; \
                 hold time 3; keepalive time 1; connect retry time 1; graceful restart off; \
                 {fam} {{ import all; export all; }}; }}\n",
                router_on(h, v6)
            ));
        }
    }
    std::fs::write(
        &conf,
        format!(
            "log stderr all;\nrouter id {};\nprotocol device {{}}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\
             protocol kernel {{ ipv6 {{ import none; export all; }}; }}\n{sessions}",
            router_on("h1", false)
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("router.log")).unwrap();
    let _router = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &f.fab_ns(), "bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(dir.join("router.ctl"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let peers: Vec<String> = ["h1", "h2"]
        .iter()
        .flat_map(|h| [router_on(h, false), router_on(h, true)])
        .collect();
    for r in &peers {
        let out = f.netmod(&[
            "bgp",
            "peer",
            "add",
            r,
            "--as",
            "64513",
            "--description",
            "tor",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = f.netmod(&["-o", "json", "bgp", "peer", "list"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed}");
    f.launch_with("h1", "a", &["star-1"], 1, 1);
    f.launch_with("h2", "b", &["star-1"], 1, 1);
    f.launch_with("h2", "c", &["star-2"], 1, 1);
    let router_state = || {
        format!(
            "{}\n# router log\n{}",
            bgp_state(&f),
            std::fs::read_to_string(dir.join("router.log")).unwrap_or_default()
        )
    };
    // Each host learns the other's blocks from the router: IPv4 through the
    // router's address on its own subnet, IPv6 through the router's
    // address or its link-local one.
    wait_for_learned(&f, &["h1", "h2"], |me, _, v6, gw| {
        gw == router_on(me, v6) || (v6 && gw.starts_with("fe80:"))
    });
    // The router holds exactly the hosts' blocks, the IPv4 ones through
    // their host's address.
    let mut want: BTreeSet<String> = BTreeSet::new();
    for h in ["h1", "h2"] {
        want.extend(blocks_of(&f, h));
    }
    let pools = [pool4, pool6];
    let have = || -> Vec<(String, String)> {
        bird_routes(&f.fab_ns())
            .into_iter()
            .filter(|(dst, _)| in_pools(dst, &pools))
            .collect()
    };
    let dsts = |routes: &[(String, String)]| -> BTreeSet<String> {
        routes.iter().map(|(d, _)| d.clone()).collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || dsts(&have()) == want).is_some(),
        "the router holds {:?}, the hosts' blocks are {want:?}\n{}",
        have(),
        router_state()
    );
    for h in ["h1", "h2"] {
        for b in blocks_of(&f, h).iter().filter(|b| !b.contains(':')) {
            assert!(
                have().contains(&(b.clone(), f.host(h).ip.clone())),
                "the router routes {b} elsewhere than {h}: {:?}",
                have()
            );
        }
    }
    let strays: Vec<serde_json::Value> = routes_in(&f.fab_ns())
        .into_iter()
        .filter(|r| r["protocol"] != "bird" && in_pools(&canonical_dst(r), &pools))
        .collect();
    assert!(
        strays.is_empty(),
        "the router routes the pools otherwise: {strays:?}"
    );
    assert_matrix(
        &f,
        true,
        &[("a", "b"), ("b", "a")],
        &[("a", "c"), ("c", "a")],
    );
    // Without the peers, the hosts go back to a full mesh (whose next hops
    // on another subnet do not resolve): the router's routes go.
    for r in &peers {
        let out = f.netmod(&["bgp", "peer", "rm", r]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || have().is_empty()).is_some(),
        "the router still holds {:?} after the peers were removed\n{}",
        have(),
        router_state()
    );
}

#[test]
fn uninstall_removes_birds_configuration_and_stops_bird() {
    require_lab();
    require_bird();
    let mut f = Fabric::with_options(
        1,
        "10.163.0.0/16",
        FabricOptions {
            node_args: BGP_ARGS,
            ..FabricOptions::default()
        },
    );
    let dir = f.store.dir.path().display().to_string();
    let (conf, sock) = (format!("{dir}/bird-h1.conf"), format!("{dir}/bird-h1.ctl"));
    let ns = f.host("h1").ns.clone();
    f.launch("h1", "a", &["star-1"]);
    wait_for(Duration::from_secs(10), "BIRD running with a block", || {
        bird_running(&ns, &sock)
            && std::fs::read_to_string(&conf).is_ok_and(|t| t.contains("route 10.163."))
    });
    // BIRD dies with the node (and the node starts it again if it exits).
    let pid = must(&format!("pgrep -f '[b]ird .*-s {sock}'"));
    let pid: i32 = pid.trim().parse().unwrap();
    // SAFETY: kill(2) on BIRD, a child of the node this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(
        Duration::from_secs(5),
        "BIRD started again by the node",
        || bird_running(&ns, &sock),
    );
    f.kill_node(0);
    wait_for(Duration::from_secs(5), "BIRD gone with its node", || {
        !bird_running(&ns, &sock)
    });
    // A BIRD left running on the node's socket (say, the node's process
    // was replaced) is stopped by --uninstall, and the file goes.
    must(&format!("ip netns exec {ns} bird -c {conf} -s {sock}"));
    assert!(bird_running(&ns, &sock));
    let out = must(&format!(
        "ip netns exec {ns} {} node --uninstall --bird-config {conf} --bird-socket {sock}",
        common::NETMOD
    ));
    assert!(
        out.contains("BIRD's configuration") && out.contains("BIRD stopped"),
        "{out}"
    );
    assert!(!std::path::Path::new(&conf).exists());
    assert!(!bird_running(&ns, &sock));
    assert!(sh(&format!("pgrep -f '[b]ird .*-s {sock}'"))
        .stdout
        .is_empty());
    // Nothing left to do the second time.
    let out = must(&format!(
        "ip netns exec {ns} {} node --uninstall --bird-config {conf} --bird-socket {sock}",
        common::NETMOD
    ));
    assert!(!out.contains("BIRD"), "{out}");
}

#[test]
fn peer_commands_validate_and_store_nothing_on_bad_input() {
    let s = common::TestStore::new();
    for args in [
        &["bgp", "peer", "add", "10.0.0.1", "--as", "0"][..],
        &["bgp", "peer", "add", "10.0.0.1", "--as", "23456"],
        &["bgp", "peer", "add", "10.0.0.1", "--as", "4294967296"],
        &["bgp", "peer", "add", "127.0.0.1", "--as", "64513"],
        &["bgp", "peer", "add", "not-an-address", "--as", "64513"],
        &[
            "bgp",
            "peer",
            "add",
            "10.0.0.1",
            "--as",
            "64513",
            "--description",
            "a\"b",
        ],
    ] {
        let out = s.netmod(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
    }
    assert!(!s.path.exists(), "bad input created the store");
    let out = s.netmod(&["bgp", "peer", "add", "fd00::1", "--as", "64513"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("added"));
    let out = s.netmod(&["bgp", "peer", "add", "fd00::1", "--as", "64514"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("replaced"));
    let out = s.netmod(&["-o", "json", "bgp", "peer", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, serde_json::json!([{"address": "fd00::1", "as": 64514}]));
    assert_eq!(
        s.dump()
            .iter()
            .filter(|(k, _)| k.starts_with("bgp/peers/"))
            .count(),
        1
    );
    let out = s.netmod(&["bgp", "peer", "rm", "fd00::1"]);
    assert!(out.status.success());
    let out = s.netmod(&["bgp", "peer", "rm", "fd00::1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no BGP peer fd00::1"));
}

#[test]
fn with_bird_external_the_node_only_writes_and_reloads() {
    require_lab();
    require_bird();
    let mut f = Fabric::with_options(
        1,
        "10.164.0.0/16",
        FabricOptions {
            node_args: &[
                "--bgp",
                "--bird-external",
                "--bird-config",
                "{dir}/bird-{host}.conf",
                "--bird-socket",
                "{dir}/bird-{host}.ctl",
            ],
            ..FabricOptions::default()
        },
    );
    let dir = f.store.dir.path().display().to_string();
    let (conf, sock) = (format!("{dir}/bird-h1.conf"), format!("{dir}/bird-h1.ctl"));
    let ns = f.host("h1").ns.clone();
    // The node is healthy (the fabric waited for it) without any BIRD, and
    // starts none; the file is there for the one systemd runs.
    wait_for(Duration::from_secs(5), "the node's BIRD file", || {
        std::path::Path::new(&conf).exists()
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!bird_running(&ns, &sock), "the node started BIRD itself");
    // "systemd" starts BIRD on that file and socket.
    let _bird = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns, "bird", "-f", "-c", &conf, "-s", &sock])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(5), "BIRD up", || {
        bird_running(&ns, &sock)
    });
    // A new block reaches the running BIRD through `birdc configure`.
    f.launch("h1", "a", &["star-1"]);
    let block = blocks_of(&f, "h1").into_iter().next().expect("a block");
    let shown = || {
        String::from_utf8_lossy(
            &sh(&format!(
                "ip netns exec {ns} birdc -s {sock} show route protocol netmod_blocks4"
            ))
            .stdout,
        )
        .into_owned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || shown().contains(&block)).is_some(),
        "BIRD never announced {block}: {}\n{}",
        shown(),
        f.node_log("h1")
    );
    // --uninstall with --bird-external removes the file and leaves BIRD be.
    f.kill_node(0);
    let out = must(&format!(
        "ip netns exec {ns} {} node --uninstall --bird-external --bird-config {conf} --bird-socket {sock}",
        common::NETMOD
    ));
    assert!(
        out.contains("BIRD's configuration") && !out.contains("BIRD stopped"),
        "{out}"
    );
    assert!(
        bird_running(&ns, &sock),
        "--uninstall stopped systemd's BIRD"
    );
}
