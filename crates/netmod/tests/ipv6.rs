//! IPv6 isolation with real traffic. Dual-stack containers (an IPv4 and an
//! IPv6 pool, `num_ipv6: 1` in the net-modules allocate, both families in
//! isolate), each with a TCP listener on both addresses; the seed's
//! isolated matrix measured over IPv6 (and IPv4), on one host and across
//! two hosts whose fabric carries IPv6 as well.

mod common;
use common::lab::*;
use serde_json::Value;
use std::time::Duration;

/// The seed's isolated scenario: A,B in star-1; C,D in star-2; the
/// collector in star-1, star-2 and public; E in no netgroup.
const SEED: [(&str, &[&str]); 6] = [
    ("a", &["star-1"]),
    ("b", &["star-1"]),
    ("c", &["star-2"]),
    ("d", &["star-2"]),
    ("collect", &["star-1", "star-2", "public"]),
    ("e", &[]),
];

/// Same netgroup reaches, other netgroups are dropped, `public` (the
/// collector) is reached by every member of a netgroup, and E (no
/// netgroup) reaches nobody.
fn expected(from: &str, to: &str) -> bool {
    let star1 = ["a", "b", "collect"];
    let star2 = ["c", "d", "collect"];
    from != to
        && ((star1.contains(&from) && star1.contains(&to))
            || (star2.contains(&from) && star2.contains(&to)))
}

/// A fabric whose hosts have IPv6 addresses too, with an IPv4 and an IPv6 pool.
fn dual_stack_fabric(hosts: usize, pool4: &str, pool6: &str) -> Fabric {
    require_lab();
    let f = Fabric::with_options(
        hosts,
        pool4,
        FabricOptions {
            ipv6: true,
            ..FabricOptions::default()
        },
    );
    let out = f.netmod(&["pool", "add", pool6, "--quarantine", "1"]);
    assert!(
        out.status.success(),
        "pool add {pool6}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f
}

/// Launch the seed's containers, dual-stack, on the hosts `placement` names.
fn launch_seed(f: &mut Fabric, placement: &[(&str, &str)]) {
    for (name, groups) in SEED {
        let host = placement.iter().find(|(n, _)| *n == name).unwrap().1;
        let c = f.launch_with(host, name, groups, 1, 1);
        let v6 = c.addr6.clone().unwrap();
        assert!(v6.parse::<std::net::Ipv6Addr>().is_ok(), "{name}: {v6}");
        assert!(!c.addr.is_empty(), "{name} has an IPv4 address too");
    }
}

/// Who reaches whom over one family: (from, to, connected), every ordered
/// pair of containers. Waits first (bounded) until every allowed pair
/// connects, so that the nodes have converged.
fn measure(f: &Fabric, v6: bool) -> Vec<(String, String, bool)> {
    let names: Vec<&str> = SEED.iter().map(|(n, _)| *n).collect();
    let connects = |from: &str, to: &str, t: f64| {
        if v6 {
            f.connects6(from, to, t)
        } else {
            f.connects(from, to, t)
        }
    };
    let _ = wait_until(Duration::from_secs(15), || {
        names.iter().all(|from| {
            names
                .iter()
                .filter(|to| expected(from, to))
                .all(|to| connects(from, to, 0.5))
        })
    });
    let mut m = Vec::new();
    for from in &names {
        for to in &names {
            if from != to {
                m.push((from.to_string(), to.to_string(), connects(from, to, 0.7)));
            }
        }
    }
    m
}

fn wrong(m: &[(String, String, bool)]) -> Vec<String> {
    m.iter()
        .filter(|(a, b, ok)| *ok != expected(a, b))
        .map(|(a, b, ok)| {
            let want = if expected(a, b) {
                "reach"
            } else {
                "be dropped"
            };
            format!("{a} -> {b} should {want} (connected: {ok})")
        })
        .collect()
}

/// Each host reaches its own containers and the `public` collector, and no
/// other host's isolated ones (over the family `v6` says).
fn hosts_wrong(f: &Fabric, v6: bool) -> Vec<String> {
    let mut out = Vec::new();
    for h in &f.hosts {
        for c in &f.containers {
            let want = c.host == h.name || c.groups.iter().any(|g| g == "public");
            let dst = if v6 {
                c.addr6.clone().unwrap()
            } else {
                c.addr.clone()
            };
            let got = f.connects_addr(&h.name, &dst, if want { 1.0 } else { 0.7 });
            if got != want {
                out.push(format!(
                    "{} -> {} (on {}, {dst}): connected {got}, expected {want}",
                    h.name, c.name, c.host
                ));
            }
        }
    }
    out
}

/// What a failure needs to be understood: each host's IPv6 routes and the
/// host records (which carry each host's IPv6 address).
fn ipv6_diagnostics(f: &Fabric) -> String {
    let mut s = String::new();
    for h in &f.hosts {
        let routes = sh(&format!("ip -n {} -6 route show proto 110", h.ns));
        s.push_str(&format!(
            "{} (fabric address {}): netmod's IPv6 routes: [{}]\n",
            h.name,
            h.ip6.as_deref().unwrap_or("none"),
            String::from_utf8_lossy(&routes.stdout)
                .trim()
                .replace('\n', "; ")
        ));
    }
    let records = f.with_store(|s| {
        let (kvs, _) = s.range("hosts/").unwrap();
        kvs.into_iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .collect::<Vec<_>>()
    });
    s.push_str(&format!("host records: {records:?}\n"));
    s
}

/// Every endpoint is dual-stack on one host: the isolated matrix holds over
/// IPv6 as over IPv4, the host reaches its containers over IPv6, the sets
/// hold both families, and a forged IPv6 source address is dropped.
#[test]
fn ipv6_isolation_within_one_host() {
    let mut f = dual_stack_fabric(1, "10.127.0.0/16", "fd00:127::/48");
    let placement: Vec<(&str, &str)> = SEED.iter().map(|(n, _)| (*n, "h1")).collect();
    launch_seed(&mut f, &placement);

    let m6 = measure(&f, true);
    let w6 = wrong(&m6);
    assert!(w6.is_empty(), "IPv6 matrix on one host differs: {w6:#?}");
    let m4 = measure(&f, false);
    let w4 = wrong(&m4);
    assert!(w4.is_empty(), "IPv4 matrix (dual-stack) differs: {w4:#?}");
    let wh = hosts_wrong(&f, true);
    assert!(wh.is_empty(), "host -> container over IPv6: {wh:#?}");

    // The sets carry the IPv6 members (exactly what the policy says).
    let want = expected_set_elements(&f, "h1");
    assert!(want.iter().any(|(s, _)| s.ends_with("_v6")), "{want:?}");
    let _ = wait_until(Duration::from_secs(10), || {
        f.membership_elements("h1") == want
    });
    assert_eq!(f.membership_elements("h1"), want, "h1's sets");

    // Anti-spoofing over IPv6: a sends as the collector (star-1, like b).
    let a6 = f.container("a").addr6.clone().unwrap();
    let collect6 = f.container("collect").addr6.clone().unwrap();
    let b6 = f.container("b").addr6.clone().unwrap();
    let forged = f.forged_datagrams_received("a", &a6, &collect6, "b", &b6);
    assert!(
        forged.is_empty(),
        "a's IPv6 datagrams forged as the collector reached b: {forged:?}"
    );

    // `netmod explain`, from IPv6 address to IPv6 address, agrees with the
    // IPv6 measurement.
    for (from, to, ok) in &m6 {
        let from6 = f.container(from).addr6.clone().unwrap();
        let to6 = f.container(to).addr6.clone().unwrap();
        let out = f.netmod(&["explain", &from6, &to6, "--port", "9000/tcp"]);
        assert_eq!(
            out.status.code() == Some(0),
            *ok,
            "explain {from6} ({from}) -> {to6} ({to}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Cleanup takes the IPv6 side away too.
    for (name, _) in SEED {
        f.stop(name);
    }
    wait_for(Duration::from_secs(10), "h1's sets emptied", || {
        f.set_elements("h1").is_empty()
    });
    let routes = f.ns_json("h1", "-6 route");
    let ours: Vec<&Value> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dev"].as_str().is_some_and(|d| d.starts_with("nm")))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
}

/// The seed's scenario across two hosts, over IPv6: every netgroup spans
/// both hosts, so each allowed pair but collect's star-1/star-2 peers on h1
/// crosses the fabric. Needs each host's IPv6 blocks routed through its
/// IPv6 fabric address.
#[test]
fn ipv6_isolated_scenario_across_two_hosts() {
    let mut f = dual_stack_fabric(2, "10.128.0.0/16", "fd00:128::/48");
    launch_seed(
        &mut f,
        &[
            ("a", "h1"),
            ("c", "h1"),
            ("collect", "h1"),
            ("b", "h2"),
            ("d", "h2"),
            ("e", "h2"),
        ],
    );
    // IPv4 first: the nodes have converged once it matches (the sets of
    // both families change in the same transactions).
    let m4 = measure(&f, false);
    let w4 = wrong(&m4);
    assert!(w4.is_empty(), "IPv4 matrix (dual-stack) differs: {w4:#?}");

    let m6 = measure(&f, true);
    let mut problems = wrong(&m6);
    problems.extend(hosts_wrong(&f, true));
    // Each host's record carries its IPv6 address...
    for h in &f.hosts {
        let key = format!("hosts/{}", h.name);
        let record = f.with_store(move |s| s.get(&key).unwrap().map(|kv| kv.value));
        let record: Value = serde_json::from_slice(&record.unwrap_or_default()).unwrap_or_default();
        let ipv6 = record["ipv6"]
            .as_str()
            .and_then(|a| a.parse::<std::net::Ipv6Addr>().ok());
        if ipv6.map(|a| a.to_string()) != h.ip6 {
            problems.push(format!(
                "{}'s host record has no IPv6 address {:?}: {record}",
                h.name, h.ip6
            ));
        }
    }
    // ...and each host routes the other's IPv6 block through it.
    for (here, there, task) in [("h1", "h2", "b"), ("h2", "h1", "a")] {
        let addr: std::net::Ipv6Addr = f.container(task).addr6.clone().unwrap().parse().unwrap();
        let via: std::net::Ipv6Addr = f.host(there).ip6.clone().unwrap().parse().unwrap();
        let routes = f.ns_json(here, "-6 route show proto 110");
        let routed = routes.as_array().unwrap().iter().any(|r| {
            r["gateway"].as_str().and_then(|g| g.parse().ok()) == Some(via)
                && r["dst"]
                    .as_str()
                    .and_then(|d| d.parse::<ipnet::Ipv6Net>().ok())
                    .is_some_and(|n| n.contains(&addr))
        });
        if !routed {
            problems.push(format!(
                "{here} has no route to {there}'s IPv6 block (holding {task}'s {addr}) via {via}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "IPv6 across two hosts: {problems:#?}\n{}",
        ipv6_diagnostics(&f)
    );
}
