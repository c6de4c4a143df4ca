//! A hostile container against its host and its neighbours ("What holds
//! against a hostile container" in the README). Each attack is made from
//! inside a container, as a task could, and must fail; beside each, a
//! control shows the same kind of traffic passing when it is legitimate.

mod common;
use common::hostile::*;
use common::lab::*;
use common::require_tools;
use serde_json::{json, Value};
use std::time::Duration;

/// A counter per kind of packet an endpoint sends its host, in a table of
/// the test's own whose input chain runs after netmod's (priority 10): a
/// packet netmod drops never reaches it.
fn count_after_netmod(f: &Fabric, host: &str, iface: &str) {
    let rules = [
        ("ra", "icmpv6 type nd-router-advert"),
        ("redirect6", "icmpv6 type nd-redirect"),
        ("redirect4", "icmp type redirect"),
        ("echo4", "icmp type echo-request"),
        ("echo6", "icmpv6 type echo-request"),
    ];
    let mut nft = String::from("table inet nmtest_seen {\n");
    for (name, _) in &rules {
        nft.push_str(&format!("  counter {name} {{ }}\n"));
    }
    nft.push_str("  chain input {\n    type filter hook input priority 10; policy accept;\n");
    for (name, m) in &rules {
        nft.push_str(&format!(
            "    iifname \"{iface}\" {m} counter name \"{name}\"\n"
        ));
    }
    nft.push_str("  }\n}\n");
    must(&format!(
        "ip netns exec {} nft -f - <<'EOF'\n{nft}EOF",
        f.host(host).ns
    ));
}

fn seen_after_netmod(f: &Fabric, host: &str, counter: &str) -> u64 {
    let out = in_host(
        f,
        host,
        &format!("nft -j list counter inet nmtest_seen {counter}"),
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i.get("counter")?["packets"].as_u64())
        .unwrap()
}

/// Where a router advertisement or redirect would show: IPv6 routes learnt
/// from a router advertisement or through `gateway`, addresses in the
/// advertised prefix, and where the host sends the redirects' destinations.
struct HostView {
    ra_routes: Vec<String>,
    slaac_addrs: Vec<String>,
    route4: String,
    route6: String,
}

const RA_PREFIX: &str = "2001:db8:bad::";
const REDIRECTED4: &str = "198.51.100.1";
const REDIRECTED6: &str = "2001:db8:99::1";
const NEW_GW4: &str = "198.18.0.7";
const NEW_GW6: &str = "fe80::bad";

fn host_view(prefix: &str, gateway_ll: &str) -> HostView {
    let routes: Value = serde_json::from_str(&must(&format!("{prefix} ip -6 -j route"))).unwrap();
    let ra_routes = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["protocol"] == json!("ra")
                || r["dst"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("2001:db8:bad:"))
                || (r["dst"] == json!("default") && r["gateway"] == json!(gateway_ll))
        })
        .map(|r| r.to_string())
        .collect();
    let addrs: Value = serde_json::from_str(&must(&format!("{prefix} ip -6 -j addr"))).unwrap();
    let slaac_addrs = addrs
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .filter(|a| a.starts_with("2001:db8:bad:"))
        .collect();
    HostView {
        ra_routes,
        slaac_addrs,
        route4: must(&format!("{prefix} ip route get {REDIRECTED4}")),
        route6: must(&format!("{prefix} ip -6 route get {REDIRECTED6}")),
    }
}

/// The three packets, sent from `prefix` (a namespace) over `dev`.
fn send_hostile_packets(prefix: &str, dev: &str, own4: &str, host4: &str, ll: &str, mac: &str) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "taskset -c 0 {prefix} python3 -c \"$P\" {}",
                args.join(" ")
            ))
            .env("P", CRAFT)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["ra", dev, ll, mac, RA_PREFIX]);
    run(&["redirect6", dev, ll, "ff02::1", NEW_GW6, REDIRECTED6, mac]);
    run(&["redirect4", own4, host4, NEW_GW4, REDIRECTED4]);
}

/// Routes on the host that make the redirects meaningful: the host reaches
/// the redirects' destinations through the sender (a redirect is obeyed
/// only from the current gateway), and the new IPv4 gateway is resolved.
fn route_through(prefix: &str, dev: &str, via4: &str, via6: &str, mac: &str) {
    must(&format!(
        "{prefix} ip route add 198.51.100.0/24 via {via4} dev {dev} onlink && \
         {prefix} ip neigh replace {NEW_GW4} lladdr {mac} dev {dev} nud permanent && \
         {prefix} ip -6 route add 2001:db8:99::/64 via {via6} dev {dev}"
    ));
}

/// Control for the attack itself: over a plain veth between two namespaces
/// of the test (no netmod), the same three packets do reconfigure the
/// receiving side. So their absence of effect on a netmod host is netmod's
/// doing, not a malformed packet.
fn the_packets_work_against_an_unprotected_host(f: &Fabric) {
    let (victim, attacker) = (scratch_name(f, "victim"), scratch_name(f, "attacker"));
    let _ns = ScratchNetns::new(&[victim.clone(), attacker.clone()]);
    must(&format!(
        "ip -n {victim} link add vv0 type veth peer name aa0 netns {attacker} && \
         ip -n {victim} link set lo up && ip -n {victim} link set vv0 up && \
         ip -n {attacker} link set lo up && ip -n {attacker} link set aa0 up && \
         ip -n {victim} addr add 10.9.0.1/24 dev vv0 && ip -n {attacker} addr add 10.9.0.2/24 dev aa0"
    ));
    let (vp, ap) = (
        format!("ip netns exec {victim}"),
        format!("ip netns exec {attacker}"),
    );
    let ll = link_local(&ap, "aa0");
    let _ = link_local(&vp, "vv0");
    let mac = mac_of(&ap, "aa0");
    route_through(&vp, "vv0", "10.9.0.2", &ll, &mac);
    send_hostile_packets(&ap, "aa0", "10.9.0.2", "10.9.0.1", &ll, &mac);
    let took = wait_until(Duration::from_secs(5), || {
        let v = host_view(&vp, &ll);
        !v.ra_routes.is_empty()
            && !v.slaac_addrs.is_empty()
            && v.route4.contains(NEW_GW4)
            && v.route6.contains(NEW_GW6)
    });
    let v = host_view(&vp, &ll);
    assert!(
        took.is_some(),
        "control: the hostile packets must reconfigure an unprotected namespace, or the \
         test proves nothing: routes {:?}, addresses {:?}, {} / {}",
        v.ra_routes,
        v.slaac_addrs,
        v.route4,
        v.route6
    );
}

#[test]
fn router_advertisements_and_redirects_from_a_container_change_nothing_on_its_host() {
    require_lab();
    require_tools(&[("taskset", "util-linux"), ("ping", "iputils-ping")]);
    let mut f = dual_stack(
        2,
        "10.131.0.0/16",
        "fd00:131::/48",
        FabricOptions::default(),
    );
    // h1 has only IPv4 endpoints, so its host-side interfaces do not
    // forward IPv6: there the kernel's defaults obey router advertisements
    // and ICMPv6 redirects. h2's endpoint is dual-stack. (Hosts forward
    // IPv4, which turns `all.accept_redirects` off, so an IPv4 redirect has
    // no effect to look for on either: the counter after netmod's input
    // chain and the interface's sysctl are what show it is refused.)
    f.launch_with("h1", "x4", &["star-1"], 1, 0);
    f.launch_with("h2", "x6", &["star-1"], 1, 1);
    the_packets_work_against_an_unprotected_host(&f);

    let mut problems = Vec::new();
    for (host, name) in [("h1", "x4"), ("h2", "x6")] {
        let iface = host_iface(&f, name);
        let c = f.container(name);
        let (cp, hp) = (in_pid(c.pid), format!("ip netns exec {}", f.host(host).ns));
        let ll = link_local(&cp, "eth0");
        let host_ll = link_local(&hp, &iface);
        let mac = mac_of(&cp, "eth0");
        count_after_netmod(&f, host, &iface);
        route_through(&hp, &iface, &c.addr, &ll, &mac);
        send_hostile_packets(&cp, "eth0", &c.addr, &f.host(host).ip, &ll, &mac);

        // Controls, on the same path right after the attack: echo requests
        // to the host over IPv4 and IPv6 are answered.
        let ping = |args: &str| {
            wait_until(Duration::from_secs(10), || {
                sh(&format!("taskset -c 0 {cp} ping -c 1 -W 1 {args}"))
                    .status
                    .success()
            })
            .is_some()
        };
        let host4 = f.host(host).ip.clone();
        if !ping(&host4) {
            problems.push(format!(
                "control: {name} gets no echo reply from {host} ({host4})"
            ));
        }
        let host6 = match &c.addr6 {
            Some(_) => f.host(host).ip6.clone().unwrap(),
            None => format!("{host_ll}%eth0"),
        };
        if !ping(&format!("-6 {host6}")) {
            problems.push(format!(
                "control: {name} gets no ICMPv6 echo reply from {host} ({host6})"
            ));
        }
        for (counter, want_seen) in [
            ("echo4", true),
            ("echo6", true),
            ("ra", false),
            ("redirect6", false),
            ("redirect4", false),
        ] {
            let n = seen_after_netmod(&f, host, counter);
            if (n > 0) != want_seen {
                problems.push(format!(
                    "{host}: {n} {counter} packet(s) from {name} got past netmod's input chain \
                     (want {})",
                    if want_seen { "some" } else { "none" }
                ));
            }
        }

        let v = host_view(&hp, &ll);
        if !v.ra_routes.is_empty() {
            problems.push(format!(
                "{host} took routes from {name}'s router advertisement: {:?}",
                v.ra_routes
            ));
        }
        if !v.slaac_addrs.is_empty() {
            problems.push(format!(
                "{host} configured addresses from {name}'s prefix: {:?}",
                v.slaac_addrs
            ));
        }
        if v.route4.contains(NEW_GW4) || !v.route4.contains(&c.addr) {
            problems.push(format!(
                "{host} follows {name}'s ICMP redirect: {}",
                v.route4.trim()
            ));
        }
        if v.route6.contains(NEW_GW6) || !v.route6.contains(&ll) {
            problems.push(format!(
                "{host} follows {name}'s ICMPv6 redirect: {}",
                v.route6.trim()
            ));
        }

        // The host-side interface ignores router advertisements and
        // redirects whatever the host's defaults (set before it came up).
        for (key, want) in [
            (format!("net/ipv6/conf/{iface}/accept_ra"), "0"),
            (format!("net/ipv6/conf/{iface}/autoconf"), "0"),
            (format!("net/ipv6/conf/{iface}/accept_redirects"), "0"),
            (format!("net/ipv4/conf/{iface}/accept_redirects"), "0"),
        ] {
            let have = sysctl(&f, host, &key);
            if have.as_deref() != Some(want) {
                problems.push(format!("{host}: sysctl {key} is {have:?}, want {want}"));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// A (star-1) keeps a UDP flow and an ICMP echo flow going to B (star-1) on
/// another host. B ends; its address goes to W, in star-2, on B's host. A's
/// packets must not reach W: the flows were B's, and A is not in W's
/// netgroup. conntrack holds no flow of B's after B's cleanup.
#[test]
fn an_address_handed_to_a_new_task_inherits_no_flow_of_the_old_one() {
    require_lab();
    require_tools(&[("conntrack", "conntrack"), ("taskset", "util-linux")]);
    let mut f = Fabric::new(2, "10.132.0.0/16");
    f.launch("h1", "a", &["star-1"]);
    f.launch("h2", "b", &["star-1"]);
    f.launch("h1", "v", &["star-2"]);
    let a_addr = f.container("a").addr.clone();
    let b_addr = f.container("b").addr.clone();
    wait_for(Duration::from_secs(15), "a reaches b", || {
        f.connects("a", "b", 0.5)
    });

    let b_server = udp_server(&f, "b", &b_addr, 9001, true);
    let flow = Lines::start(
        python_in(
            f.container("a").pid,
            FLOW,
            &[&a_addr, "40002", &b_addr, "9001"],
        ),
        None,
    );
    // Control: B receives A's flow and answers it, over UDP and ICMP.
    let answered = |what: &str| {
        let prefix = format!("{what} {b_addr} ");
        flow.wait_line(Duration::from_secs(15), |l| l.starts_with(&prefix))
    };
    assert!(
        answered("udp-reply"),
        "control: b answers a's UDP flow: {:?}",
        flow.lines()
    );
    assert!(
        answered("icmp-reply"),
        "control: b answers a's pings: {:?}",
        flow.lines()
    );
    assert!(
        b_server
            .lines()
            .iter()
            .any(|l| l.starts_with(&format!("{a_addr} 40002 flow-"))),
        "control: b received a's flow: {:?}",
        b_server.lines()
    );
    // Both hosts track both flows, answered.
    for host in ["h1", "h2"] {
        let entries = conntrack_entries(&f, host, &b_addr);
        for proto in ["udp", "icmp"] {
            assert!(
                entries
                    .iter()
                    .any(|e| e.replied && e.line.starts_with(proto)),
                "control: {host} tracks a's {proto} flow to b as answered: {entries:#?}"
            );
        }
    }

    f.stop("b");
    drop(b_server);
    // Every entry of B's flows is gone from both hosts: nothing with B's
    // address is tracked as answered any more. (A keeps sending, so its
    // packets since are tracked again, as new flows nobody answered; the
    // kernel may even give such an entry the id the deleted one had.)
    for host in ["h1", "h2"] {
        let gone = wait_until(Duration::from_secs(5), || {
            conntrack_entries(&f, host, &b_addr)
                .iter()
                .all(|e| !e.replied)
        });
        assert!(
            gone.is_some(),
            "{host} still tracks flows of b's address {b_addr} after its cleanup: {:#?}",
            conntrack_entries(&f, host, &b_addr)
        );
    }
    let replies_before_w = (flow.count("udp-reply"), flow.count("icmp-reply"));

    // W (star-2) gets B's address, on B's host; a counter in its namespace
    // sees every packet from A that arrives there, from before its eth0 exists.
    let count_from_a = format!(
        "table inet nmtest_w {{\n  counter from_a {{ }}\n  chain pre {{\n    \
         type filter hook prerouting priority -400; policy accept;\n    \
         ip saddr {a_addr} counter name \"from_a\"\n  }}\n}}"
    );
    launch_reserved(
        &mut f,
        "h2",
        "w",
        &["star-2"],
        &b_addr,
        Duration::from_secs(20),
        |pid| {
            must(&format!(
                "{} nft -f - <<'EOF'\n{count_from_a}\nEOF",
                in_pid(pid)
            ));
        },
    );
    let w_server = udp_server(&f, "w", &b_addr, 9001, false);
    // Control: W is reachable from its own netgroup.
    wait_for(Duration::from_secs(15), "v (star-2) reaches w", || {
        f.connects("v", "w", 0.5)
    });
    // A goes on sending: 20 more datagrams and echo requests after W is
    // reachable from v.
    let sent = flow.count("sent");
    assert!(
        flow.wait_line(Duration::from_secs(10), |l| l
            == format!("sent {}", sent + 20)),
        "a's flow stopped sending: {:?}",
        flow.lines().last()
    );
    let out = in_container(&f, "w", "nft -j list counter inet nmtest_w from_a");
    let v: Value = serde_json::from_str(&out).unwrap();
    let from_a = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i.get("counter")?["packets"].as_u64())
        .unwrap();
    assert_eq!(
        from_a,
        0,
        "{from_a} packet(s) of a's flows to b's old address reached w (star-2); \
         w's UDP listener got {:?}",
        w_server.lines()
    );
    let received: Vec<String> = w_server
        .lines()
        .into_iter()
        .filter(|l| l != "ready")
        .collect();
    assert!(
        received.is_empty(),
        "w received a's datagrams: {received:?}"
    );
    assert_eq!(
        (flow.count("udp-reply"), flow.count("icmp-reply")),
        replies_before_w,
        "a got answers from b's old address after w took it: {:?}",
        flow.lines()
    );
}

/// A and B (star-1) have an established UDP flow. E, with no netgroup, on
/// A's host or on B's, forges A's address and port: B must receive none of
/// it, while A's own datagrams in the same flow arrive. Over IPv4 and IPv6,
/// to B on the other host and to B1 on A's host.
#[test]
fn a_forged_packet_never_rides_on_an_established_flow() {
    require_lab();
    require_tools(&[("taskset", "util-linux")]);
    let mut f = dual_stack(
        2,
        "10.133.0.0/16",
        "fd00:133::/48",
        FabricOptions::default(),
    );
    f.launch_with("h1", "a", &["star-1"], 1, 1);
    f.launch_with("h2", "b", &["star-1"], 1, 1);
    f.launch_with("h1", "b1", &["star-1"], 1, 1);
    f.launch_with("h1", "e1", &[], 1, 1);
    f.launch_with("h2", "e2", &[], 1, 1);
    for to in ["b", "b1"] {
        wait_for(Duration::from_secs(15), &format!("a reaches {to}"), || {
            f.connects("a", to, 0.5) && f.connects6("a", to, 0.5)
        });
    }

    let mut problems = Vec::new();
    let mut sport = 41000;
    for v6 in [false, true] {
        let addr = |n: &str| {
            let c = f.container(n);
            if v6 {
                canonical_ipv6(c.addr6.as_deref().unwrap())
            } else {
                c.addr.clone()
            }
        };
        let a = addr("a");
        for (to, attacker) in [("b", "e1"), ("b", "e2"), ("b1", "e1")] {
            sport += 1;
            let dst = addr(to);
            let server = udp_server(&f, to, &dst, 9001, true);
            // The flow: A's datagram is answered, so every host on the path
            // tracks it as established.
            let established = wait_until(Duration::from_secs(10), || {
                udp_one(&f, "a", (&a, sport), (&dst, 9001), "hello", 0.5).is_some()
            });
            assert!(
                established.is_some(),
                "a's flow to {to} ({dst}) is never answered"
            );
            for round in 0..3 {
                udp_one(
                    &f,
                    attacker,
                    (&a, sport),
                    (&dst, 9001),
                    &format!("forged-{round}"),
                    0.0,
                );
                let control = format!("control-{round}");
                let arrived = wait_until(Duration::from_secs(10), || {
                    udp_one(&f, "a", (&a, sport), (&dst, 9001), &control, 0.0);
                    server.wait_line(Duration::from_millis(200), |l| {
                        l == format!("{a} {sport} {control}")
                    })
                });
                assert!(
                    arrived.is_some(),
                    "control: a's own datagram in the flow never reached {to}: {:?}",
                    server.lines()
                );
            }
            let forged: Vec<String> = server
                .lines()
                .into_iter()
                .filter(|l| l.contains("forged"))
                .collect();
            if !forged.is_empty() {
                problems.push(format!(
                    "{attacker} (no netgroup, on {}) forging a's {a}:{sport} reached {to} \
                     (on {}) on a's established flow: {forged:?}",
                    f.container(attacker).host,
                    f.container(to).host
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// `star-1` and `star_1_5f7f` once mapped to the same kernel set. They are
/// two netgroups: members of one do not reach members of the other.
#[test]
fn netgroups_whose_names_differ_only_in_punctuation_stay_apart() {
    require_lab();
    let mut f = Fabric::new(2, "10.134.0.0/16");
    f.launch("h1", "p1", &["star-1"]);
    f.launch("h2", "p2", &["star-1"]);
    f.launch("h1", "q1", &["star_1_5f7f"]);
    f.launch("h2", "q2", &["star_1_5f7f"]);
    // Controls: each reaches the other member of its own netgroup.
    for (from, to) in [("p1", "p2"), ("p2", "p1"), ("q1", "q2"), ("q2", "q1")] {
        wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
            f.connects(from, to, 0.5)
        });
    }
    let mut crossed = Vec::new();
    for from in ["p1", "p2"] {
        for to in ["q1", "q2"] {
            for (x, y) in [(from, to), (to, from)] {
                if f.connects(x, y, 0.7) {
                    crossed.push(format!("{x} -> {y}"));
                }
            }
        }
    }
    assert!(crossed.is_empty(), "across the two netgroups: {crossed:?}");

    // One set per netgroup and family, named as the README says, each
    // holding exactly its own members.
    let addr = |n: &str| f.container(n).addr.clone();
    for host in ["h1", "h2"] {
        let groups: Vec<String> = set_names(&f, host)
            .into_iter()
            .filter(|s| s.starts_with("g_"))
            .collect();
        assert_eq!(
            groups,
            [
                "g_star_2d1_v4",
                "g_star_2d1_v6",
                "g_star_5f1_5f5f7f_v4",
                "g_star_5f1_5f5f7f_v6"
            ],
            "{host}'s netgroup sets"
        );
        let elements = f.set_elements(host);
        let members = |set: &str| {
            let mut m: Vec<String> = elements
                .iter()
                .filter(|(s, _)| s == set)
                .map(|(_, e)| e.clone())
                .collect();
            m.sort();
            m
        };
        let mut p = vec![addr("p1"), addr("p2")];
        let mut q = vec![addr("q1"), addr("q2")];
        p.sort();
        q.sort();
        assert_eq!(members("g_star_2d1_v4"), p, "{host}: star-1");
        assert_eq!(members("g_star_5f1_5f5f7f_v4"), q, "{host}: star_1_5f7f");
    }
}

/// Store contents that a refused request must not change (host records
/// change with every heartbeat).
fn records(f: &Fabric) -> Vec<(String, String)> {
    f.dump()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("hosts/"))
        .collect()
}

#[test]
fn netgroup_names_the_kernel_cannot_carry_are_refused_at_the_door() {
    require_lab();
    let mut f = Fabric::new(1, "10.135.0.0/16");
    let too_long = "a".repeat(65);
    let bad = [too_long.as_str(), "star 1", "star/1"];
    let sandbox = KillOnDrop(f.sandbox("h1"));
    let pid = sandbox.0.id();
    let uid = f.uid("t");
    for g in bad {
        let before = records(&f);
        let (code, reply) = f.mesos(
            "h1",
            &json!({"command":"allocate","args":{"hostname":"h1","num_ipv4":1,"num_ipv6":0,
                "uid":uid,"netgroups":["star-1", g]}}),
        );
        assert_eq!(code, 1, "allocate with netgroup {g:?}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("{g:?}")),
            "allocate's error must name netgroup {g:?}: {reply}"
        );
        assert_eq!(records(&f), before, "a refused allocate changed the store");
    }

    // Isolate: the addresses are allocated, the netgroup is not acceptable.
    let (code, reply) = f.mesos(
        "h1",
        &json!({"command":"allocate","args":{"hostname":"h1","num_ipv4":1,"num_ipv6":0,"uid":uid}}),
    );
    assert_eq!(code, 0, "allocate: {reply}");
    let addr = reply["ipv4"][0].as_str().unwrap().to_string();
    for g in bad {
        let before = records(&f);
        let (code, reply) = f.mesos(
            "h1",
            &json!({"command":"isolate","args":{"hostname":"h1","container_id":uid,"pid":pid,
                "ipv4_addrs":[addr],"netgroups":[g]}}),
        );
        assert_eq!(code, 1, "isolate with netgroup {g:?}: {reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("{g:?}")),
            "isolate's error must name netgroup {g:?}: {reply}"
        );
        assert_eq!(records(&f), before, "a refused isolate changed the store");
        assert!(
            !link_names(&f, "h1").iter().any(|l| l.starts_with("nmv")),
            "a refused isolate left an interface: {:?}",
            link_names(&f, "h1")
        );
        assert_eq!(
            links_in_pid(pid),
            ["lo"],
            "a refused isolate plugged the container"
        );
        assert!(
            !f.set_elements("h1").iter().any(|(_, e)| *e == addr),
            "a refused isolate left {addr} in a set: {:?}",
            f.set_elements("h1")
        );
    }
    drop(sandbox);

    // Control: the longest name allowed works end to end.
    let longest = "x-".repeat(32);
    f.launch("h1", "long", &[&longest]);
    f.launch("h1", "long2", &[&longest]);
    let set = format!("g_{}_v4", "x_2d".repeat(32));
    let members: Vec<String> = f
        .set_elements("h1")
        .into_iter()
        .filter(|(s, _)| *s == set)
        .map(|(_, e)| e)
        .collect();
    assert_eq!(members.len(), 2, "set {set}: {:?}", f.set_elements("h1"));
    assert!(
        f.connects("long", "long2", 1.0),
        "members of {longest} reach each other"
    );
}
