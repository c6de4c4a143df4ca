//! Many machines on etcd: fake hosts (network namespaces on a bridge) that
//! share nothing but an etcd server running inside the fabric namespace on
//! the bridge address, so every host reaches it over the fabric as a real
//! host would. The seed's isolated scenario across three hosts, and the
//! faults of issue 5: etcd stopped, a host that dies, a host cut off from
//! etcd, and the change feed compacted behind a node's back.

mod common;
use common::lab::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Root, the namespace tools and etcd: the test fails when one is missing.
fn requirements() {
    require_lab();
    common::require(
        std::path::Path::new(ETCD).exists(),
        "/usr/bin/etcd (Debian package etcd-server)",
    );
    common::require_tools(&[("setpriv", "util-linux")]);
}

fn etcd_fabric(n: usize, pool: &str, lease_ttl: u64, resync_interval: u64) -> Fabric {
    Fabric::with_options(
        n,
        pool,
        FabricOptions {
            backend: Backend::Etcd,
            lease_ttl,
            resync_interval,
            ..FabricOptions::default()
        },
    )
}

/// The node logs, for failure messages.
fn logs(f: &Fabric) -> String {
    f.hosts
        .iter()
        .map(|h| format!("--- node {} ---\n{}", h.name, f.node_log(&h.name)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A value from the fabric etcd's own /metrics.
fn etcd_metric(f: &Fabric, name: &str) -> f64 {
    let etcd = f.etcd.as_ref().unwrap();
    let out = must(&format!(
        "ip netns exec {} curl -sf -m 2 http://{}/metrics",
        f.fab_ns(),
        etcd.endpoint
    ));
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("etcd has no metric {name}"))
}

fn has_elem(f: &Fabric, host: &str, addr: &str) -> bool {
    f.set_elements(host).iter().any(|(_, e)| e == addr)
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "collect", "e"];

/// The seed's isolated scenario: A,B in star-1; C,D in star-2; the
/// collector in star-1, star-2 and public; E in no netgroup.
fn expected(from: &str, to: &str) -> bool {
    let star1 = ["a", "b", "collect"];
    let star2 = ["c", "d", "collect"];
    from != to
        && ((star1.contains(&from) && star1.contains(&to))
            || (star2.contains(&from) && star2.contains(&to)))
}

#[test]
fn isolated_scenario_across_three_hosts_on_etcd() {
    requirements();
    let mut f = etcd_fabric(3, "10.141.0.0/16", 3, 5);
    // Spread so that every netgroup spans hosts.
    f.launch("h1", "a", &["star-1"]);
    f.launch("h1", "d", &["star-2"]);
    f.launch("h2", "b", &["star-1"]);
    f.launch("h2", "collect", &["star-1", "star-2", "public"]);
    f.launch("h3", "c", &["star-2"]);
    f.launch("h3", "e", &[]);
    let t = Instant::now();
    for from in NAMES {
        for to in NAMES {
            if expected(from, to) {
                let ok = wait_until(Duration::from_secs(15), || f.connects(from, to, 0.5));
                assert!(ok.is_some(), "{from} -> {to} never connected\n{}", logs(&f));
            }
        }
    }
    eprintln!("converged {:?} after the last launch", t.elapsed());
    let mut measured = Vec::new();
    for from in NAMES {
        for to in NAMES {
            if from != to {
                measured.push((from, to, f.connects(from, to, 0.7)));
            }
        }
    }
    let wrong: Vec<_> = measured
        .iter()
        .filter(|(a, b, ok)| *ok != expected(a, b))
        .collect();
    assert!(wrong.is_empty(), "measured matrix differs: {wrong:?}");
    let allowed = measured.iter().filter(|m| m.2).count();
    eprintln!(
        "matrix: {allowed} allowed, {} dropped, as expected",
        measured.len() - allowed
    );

    // Each host reaches its own containers, not another host's isolated ones.
    for c in &f.containers {
        for h in ["h1", "h2", "h3"] {
            let own = c.host == h;
            let public = c.groups.iter().any(|g| g == "public");
            assert_eq!(
                f.connects(h, &c.name, 0.7),
                own || public,
                "{h} -> {} (on {})",
                c.name,
                c.host
            );
        }
    }

    // `netmod explain`, reading etcd, agrees with the measurement.
    for (from, to, ok) in &measured {
        let to_addr = f.container(to).addr.clone();
        let out = f.netmod(&["explain", &f.uid(from), &to_addr, "--port", "9000/tcp"]);
        assert_eq!(
            out.status.code() == Some(0),
            *ok,
            "explain {from} -> {to}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A netgroup set holds the same members on every host that has it
    // (a host has the sets of the netgroups of its own tasks).
    let sets = |h: &str| {
        let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (s, e) in f.set_elements(h) {
            if s.starts_with("g_") {
                m.entry(s).or_default().push(e);
            }
        }
        m
    };
    let all: Vec<_> = ["h1", "h2", "h3"].map(sets).into_iter().collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            for (set, members) in a {
                if let Some(other) = b.get(set) {
                    assert_eq!(members, other, "{set} differs between hosts");
                }
            }
        }
    }
    assert!(
        all[1].len() == 2,
        "h2 has the star-1 and star-2 sets: {all:?}"
    );

    // Cleanup leaves nothing in etcd but pools, blocks and hosts.
    for name in NAMES {
        f.stop(name);
    }
    for h in ["h1", "h2", "h3"] {
        let ok = wait_until(Duration::from_secs(10), || f.set_elements(h).is_empty());
        assert!(ok.is_some(), "{h}: {:?}", f.set_elements(h));
        let links = f.ns_json(h, "link");
        assert!(
            !links
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["ifname"].as_str().unwrap().starts_with("nm")),
            "{h}: {links}"
        );
    }
    let left: Vec<String> = f
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            ["endpoints/", "addrs/", "netgroups/"]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let out = f.netmod(&["-o", "json", "ipam", "show"]);
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(usage["pools"][0]["used"], json!(0), "{usage}");
}

/// A sandbox on `host` with an address allocated for it (etcd up), ready to isolate.
fn prepared_task(f: &Fabric, host: &str, uid: &str) -> (std::process::Child, String) {
    let sandbox = f.sandbox(host);
    let (code, reply) = f.mesos(
        host,
        &json!({"command":"allocate","args":{"hostname":host,"num_ipv4":1,"num_ipv6":0,"uid":uid,"netgroups":["star-1"]}}),
    );
    assert_eq!(code, 0, "allocate: {reply}");
    let addr = reply["ipv4"][0].as_str().unwrap().to_string();
    (sandbox, addr)
}

/// `isolate` for a prepared task: (exit code, reply, how long it took).
fn isolate(f: &Fabric, host: &str, uid: &str, pid: u32, addr: &str) -> (i32, Value, Duration) {
    let t = Instant::now();
    let (code, reply) = f.mesos(
        host,
        &json!({"command":"isolate","args":{"hostname":host,"container_id":uid,"pid":pid,
            "ipv4_addrs":[addr],"netgroups":["star-1"]}}),
    );
    (code, reply, t.elapsed())
}

/// A CNI ADD on `host` that cannot reach etcd: refused within the bound
/// with a CNI error naming the endpoint, leaving the host as it was.
fn cni_add_is_refused(f: &Fabric, host: &str, endpoint: &str) {
    let sandbox = f.sandbox(host);
    let netns = format!("/proc/{}/ns/net", sandbox.id());
    let before = f.kernel_state(host);
    let conf = json!({"cniVersion": "1.0.0", "name": "nmnet", "type": "netmod",
        "hostname": host, "netgroups": ["star-1"]});
    let env = [
        ("CNI_CONTAINERID", "nmtest-cni-refused"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let t = Instant::now();
    let (code, v) = f.cni(host, "ADD", &env, &conf);
    let took = t.elapsed();
    eprintln!("CNI ADD without etcd: {took:?}: {v}");
    assert_ne!(code, 0, "{v}");
    assert!(took < Duration::from_secs(5), "CNI ADD took {took:?}");
    let msg = format!("{} {}", v["msg"], v["details"]);
    assert!(
        msg.contains(endpoint),
        "the CNI error names the endpoint: {v}"
    );
    assert_eq!(f.kernel_state(host), before, "a refused ADD changed {host}");
    kill_child(sandbox);
}

#[test]
fn etcd_down_keeps_the_dataplane_fails_new_work_cleanly_and_nodes_resync() {
    requirements();
    // No periodic resync: recovery must come from the nodes noticing.
    let mut f = etcd_fabric(2, "10.142.0.0/16", 3, 600);
    f.launch("h1", "a", &["star-1"]);
    f.launch("h1", "c", &["star-2"]);
    f.launch("h2", "b", &["star-1"]);
    f.launch("h2", "d", &["star-2"]);
    for (from, to) in [("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")] {
        let ok = wait_until(Duration::from_secs(15), || f.connects(from, to, 0.5));
        assert!(ok.is_some(), "{from} -> {to}\n{}", logs(&f));
    }
    let uid = format!("{}-late", f.prefix);
    let (sandbox, addr) = prepared_task(&f, "h1", &uid);
    // Host records are the nodes' own (liveness, applied revision): they
    // move on by themselves; everything else must stay as it was.
    let records = |f: &Fabric| -> Vec<(String, String)> {
        f.dump()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("hosts/"))
            .collect()
    };
    let before_store = records(&f);
    let before = [f.kernel_state("h1"), f.kernel_state("h2")];
    let resyncs_before = ["h1", "h2"].map(|h| f.metric(h, "netmod_resyncs_total").unwrap());

    f.etcd().stop();
    let endpoint = f.etcd.as_ref().unwrap().endpoint.clone();
    // A new isolate fails within the bound, naming the endpoint, and does nothing.
    let (code, reply, took) = isolate(&f, "h1", &uid, sandbox.id(), &addr);
    eprintln!("isolate with etcd down: {took:?}: {reply}");
    assert_eq!(code, 1, "{reply}");
    assert!(took < Duration::from_secs(5), "isolate took {took:?}");
    let err = reply["error"].as_str().unwrap();
    assert!(
        err.contains(&endpoint),
        "the error names the endpoint: {err}"
    );
    assert!(err.contains("cannot reach the datastore"), "{err}");
    cni_add_is_refused(&f, "h1", &endpoint);
    // Running tasks keep their connectivity, and isolation, for longer than the lease.
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(5) {
        for (from, to, want) in [("a", "b", true), ("d", "c", true), ("a", "d", false)] {
            assert_eq!(
                f.connects(from, to, 0.5),
                want,
                "{from} -> {to} with etcd down"
            );
        }
    }
    assert_eq!(
        [f.kernel_state("h1"), f.kernel_state("h2")],
        before,
        "the dataplane changed while etcd was down (or the failed isolate left something)"
    );

    // etcd back: the nodes resync on their own, without a restart.
    f.etcd().start();
    let back = Instant::now();
    let resynced = wait_until(Duration::from_secs(15), || {
        ["h1", "h2"]
            .iter()
            .zip(resyncs_before)
            .all(|(h, n)| f.metric(h, "netmod_resyncs_total").is_some_and(|m| m > n))
    });
    assert!(resynced.is_some(), "the nodes never resynced\n{}", logs(&f));
    eprintln!(
        "both nodes resynced {:?} after etcd came back",
        resynced.unwrap()
    );
    // Nothing half-written by the failed isolate.
    assert_eq!(
        records(&f),
        before_store,
        "the failed isolate left keys in etcd"
    );
    // A membership change made now reaches the other host.
    f.launch("h2", "g", &["star-1"]);
    let applied = wait_until(Duration::from_secs(15), || f.connects("a", "g", 0.5));
    assert!(
        applied.is_some(),
        "a -> g after etcd came back\n{}",
        logs(&f)
    );
    eprintln!(
        "a change after etcd returned applied on h1: reachable {:?} after launch ({:?} after etcd restart)",
        applied.unwrap(),
        back.elapsed()
    );
    assert!(f.connects("a", "b", 1.0) && f.connects("c", "d", 1.0));
    assert!(!f.connects("c", "g", 0.7), "isolation still holds");
    // And the task that could not be isolated can be now.
    let (code, reply, _) = isolate(&f, "h1", &uid, sandbox.id(), &addr);
    assert_eq!(code, 0, "{reply}");
    kill_child(sandbox);
    assert!(
        logs(&f).contains("the dataplane stays as it is"),
        "{}",
        logs(&f)
    );
}

#[test]
fn a_dead_host_is_withdrawn_within_the_lease_plus_one_second() {
    requirements();
    let lease = 3;
    let mut f = etcd_fabric(3, "10.143.0.0/16", lease, 600);
    f.launch("h1", "a", &["star-1"]);
    f.launch("h2", "b", &["star-1"]);
    f.launch("h3", "x", &["star-1"]);
    for (from, to) in [("a", "x"), ("b", "x"), ("x", "a"), ("a", "b")] {
        let ok = wait_until(Duration::from_secs(15), || f.connects(from, to, 0.5));
        assert!(ok.is_some(), "{from} -> {to}\n{}", logs(&f));
    }
    let h3_ip = f.host("h3").ip.clone();
    let x = f.container("x").addr.clone();
    for h in ["h1", "h2"] {
        assert!(f.routes_via(h).iter().any(|(_, via)| *via == h3_ip), "{h}");
        assert!(has_elem(&f, h, &x), "{h}");
    }
    // Watch etcd for the host record's expiry, from inside the fabric.
    let t0 = Instant::now();
    let expired = {
        let addr = f.addr.clone();
        let fab = f.fab_ns();
        std::thread::spawn(move || {
            in_netns(&fab, move || {
                let s = netmod_store::open(&addr).unwrap();
                while s.get("hosts/h3").unwrap().is_some() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                t0.elapsed()
            })
        })
    };
    f.kill_node(2);
    let killed = t0.elapsed();
    let mut withdrawn = [None, None];
    while withdrawn.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(15) {
        for (i, h) in ["h1", "h2"].into_iter().enumerate() {
            if withdrawn[i].is_none()
                && !f.routes_via(h).iter().any(|(_, via)| *via == h3_ip)
                && !has_elem(&f, h, &x)
            {
                withdrawn[i] = Some(t0.elapsed() - killed);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let expired = expired.join().unwrap() - killed;
    eprintln!(
        "h3 killed; its lease expired after {expired:?}; withdrawn on h1 after {:?}, on h2 after {:?}",
        withdrawn[0], withdrawn[1]
    );
    let bound = Duration::from_secs(lease + 1);
    for (h, w) in ["h1", "h2"].iter().zip(withdrawn) {
        let w = w.unwrap_or_else(|| panic!("{h} never withdrew h3\n{}", logs(&f)));
        assert!(w <= bound, "{h} withdrew h3 after {w:?} (bound {bound:?})");
    }
    assert!(!f.connects("a", "x", 0.7), "h3's tasks are unreachable");
    assert!(f.connects("a", "b", 1.0), "the live hosts still talk");
    // The host comes back: it is routed to again.
    f.start_node(2);
    let ok = wait_until(Duration::from_secs(15), || f.connects("a", "x", 0.5));
    assert!(ok.is_some(), "h3 back\n{}", logs(&f));
}

#[test]
fn a_host_cut_off_from_etcd_keeps_its_dataplane_refuses_work_and_converges() {
    requirements();
    let mut f = etcd_fabric(2, "10.144.0.0/16", 3, 600);
    f.launch("h1", "a", &["star-1"]);
    f.launch("h1", "a2", &["star-1"]);
    f.launch("h1", "c", &["star-2"]);
    f.launch("h2", "b", &["star-1"]);
    for (from, to) in [("a", "b"), ("b", "a"), ("a", "a2")] {
        let ok = wait_until(Duration::from_secs(15), || f.connects(from, to, 0.5));
        assert!(ok.is_some(), "{from} -> {to}\n{}", logs(&f));
    }
    let uid = format!("{}-late", f.prefix);
    let (sandbox, addr) = prepared_task(&f, "h1", &uid);
    let before = f.kernel_state("h1");
    let errors = f.metric("h1", "netmod_apply_errors_total").unwrap();

    f.partition("h1");
    let cut = Instant::now();
    // New work is refused within the bound, with an error naming etcd.
    let endpoint = f.etcd.as_ref().unwrap().endpoint.clone();
    let (code, reply, took) = isolate(&f, "h1", &uid, sandbox.id(), &addr);
    eprintln!("isolate while cut off: {took:?}: {reply}");
    assert_eq!(code, 1, "{reply}");
    assert!(took < Duration::from_secs(5), "isolate took {took:?}");
    let err = reply["error"].as_str().unwrap();
    assert!(
        err.contains("cannot reach the datastore") && err.contains(&endpoint),
        "{err}"
    );
    cni_add_is_refused(&f, "h1", &endpoint);
    // A membership change elsewhere while h1 cannot see it.
    f.launch("h2", "g", &["star-1"]);
    let g = f.container("g").addr.clone();
    // h1 keeps its dataplane (local traffic flows, isolation holds) until
    // its node has noticed that etcd is gone: its watch stalls silently
    // until the connection's keepalive gives up (10 s + 5 s).
    let noticed = loop {
        assert!(f.connects("a", "a2", 0.5), "a -> a2 while cut off");
        assert!(f.connects("h1", "a", 0.5), "h1 -> a while cut off");
        assert!(!f.connects("c", "a", 0.5), "isolation holds while cut off");
        if f.metric("h1", "netmod_datastore_up") == Some(0.0)
            || f.metric("h1", "netmod_apply_errors_total").unwrap() > errors
        {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(40),
            "h1's node never noticed the partition\n{}",
            logs(&f)
        );
    };
    eprintln!("h1's node noticed the partition after {noticed:?}");
    // Its heartbeat tells within a lease period: 1 s beats, 3 s request timeout.
    assert!(
        noticed < Duration::from_secs(8),
        "noticed only after {noticed:?}"
    );
    let health = sh(&format!(
        "ip netns exec {} curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:9190/healthz",
        f.host("h1").ns
    ));
    assert_eq!(
        String::from_utf8_lossy(&health.stdout),
        "503",
        "/healthz while cut off"
    );
    // Its kernel state (interfaces, routes to h2, set members) is as it was.
    assert_eq!(
        f.kernel_state("h1"),
        before,
        "h1's dataplane changed while cut off"
    );
    assert!(!has_elem(&f, "h1", &g));
    // h1's lease ran out meanwhile: h2 treats it as a dead host.
    let h1_ip = f.host("h1").ip.clone();
    assert!(
        !f.routes_via("h2").iter().any(|(_, via)| *via == h1_ip),
        "h2 still routes to the cut-off h1 after its lease expired"
    );

    let cut_for = cut.elapsed();
    f.heal("h1");
    let converged = wait_until(Duration::from_secs(30), || {
        has_elem(&f, "h1", &g)
            && f.connects("a", "g", 0.5)
            && f.connects("g", "a", 0.5)
            && f.connects("b", "a", 0.5)
    });
    assert!(
        converged.is_some(),
        "h1 did not converge after the partition healed\n{}",
        logs(&f)
    );
    eprintln!(
        "converged {:?} after the partition healed (cut off for {:?})",
        converged.unwrap(),
        cut_for
    );
    let (code, reply, _) = isolate(&f, "h1", &uid, sandbox.id(), &addr);
    assert_eq!(code, 0, "isolate after healing: {reply}");
    kill_child(sandbox);
}

#[test]
fn compaction_behind_a_nodes_back_is_noticed_and_resynced() {
    requirements();
    // Long lease and no periodic resync: only the compaction path can
    // bring h2 up to date.
    let mut f = etcd_fabric(2, "10.145.0.0/16", 30, 600);
    f.launch("h1", "a", &["star-1"]);
    f.launch("h2", "b", &["star-1"]);
    let ok = wait_until(Duration::from_secs(15), || f.connects("b", "a", 0.5));
    assert!(ok.is_some(), "b -> a\n{}", logs(&f));
    let resyncs = f.metric("h2", "netmod_resyncs_total").unwrap();

    f.signal_node(1, libc::SIGSTOP);
    // Enough changes under the cluster prefix that etcd can no longer push
    // them to the stopped node's watch: it falls behind (a slow watcher,
    // which etcd will serve from its history)...
    let mut written = 0;
    while etcd_metric(&f, "etcd_debugging_mvcc_slow_watcher_total") < 1.0 {
        assert!(
            written < 10_000,
            "the stopped node's watch never fell behind"
        );
        f.with_store(move |s| {
            for i in written..written + 100 {
                let key = format!("nmtest-junk/{i}");
                s.txn(&[], &[netmod_store::Op::put(key, vec![b'x'; 10_000])])
                    .unwrap();
            }
        });
        written += 100;
    }
    // ...then a membership change, and the history compacted away.
    f.launch("h1", "g", &["star-1"]);
    let g = f.container("g").addr.clone();
    let compacted_at = f.with_store(|s| {
        let rev = s.revision().unwrap();
        s.compact(rev).unwrap();
        rev
    });
    eprintln!("wrote {written} keys, then compacted at revision {compacted_at}");
    f.signal_node(1, libc::SIGCONT);

    let t = Instant::now();
    let applied = wait_until(Duration::from_secs(20), || has_elem(&f, "h2", &g));
    assert!(applied.is_some(), "h2 never learnt of g\n{}", logs(&f));
    eprintln!("h2 applied the change {:?} after SIGCONT", t.elapsed());
    assert!(
        f.metric("h2", "netmod_resyncs_total").unwrap() > resyncs,
        "h2 did not resync\n{}",
        logs(&f)
    );
    assert!(
        f.node_log("h2").contains("compacted"),
        "h2 did not notice the compaction\n{}",
        logs(&f)
    );
    let ok = wait_until(Duration::from_secs(10), || f.connects("b", "g", 0.5));
    assert!(ok.is_some(), "b -> g\n{}", logs(&f));
}
