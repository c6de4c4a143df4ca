//! isolate/cleanup and `netmod node` in real namespaces: two fake hosts on a
//! bridge, three containers each, the seed's isolated scenario, measured by
//! real TCP connects.

mod common;
use common::lab::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The seed's isolated scenario: A,B in star-1; C,D in star-2; the collector
/// in star-1, star-2 and public; E with no netgroup.
fn seed() -> Fabric {
    require_lab();
    let mut f = Fabric::new(2, "10.123.0.0/16");
    f.launch("h1", "a", &["star-1"]);
    f.launch("h1", "c", &["star-2"]);
    f.launch("h1", "collect", &["star-1", "star-2", "public"]);
    f.launch("h2", "b", &["star-1"]);
    f.launch("h2", "d", &["star-2"]);
    f.launch("h2", "e", &[]);
    f
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "collect", "e"];

fn expected(from: &str, to: &str) -> bool {
    let pairs = [
        ("a", "b"),
        ("b", "a"),
        ("c", "d"),
        ("d", "c"),
        ("collect", "a"),
        ("collect", "b"),
        ("collect", "c"),
        ("collect", "d"),
        ("a", "collect"),
        ("b", "collect"),
        ("c", "collect"),
        ("d", "collect"),
    ];
    pairs.contains(&(from, to))
}

/// Every allowed pair connects (allowing for the nodes to converge), then
/// every pair is measured once more and must match exactly.
fn measured_matrix(f: &Fabric) -> Vec<(String, String, bool)> {
    for from in NAMES {
        for to in NAMES {
            if from != to && expected(from, to) {
                wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
                    f.connects(from, to, 0.5)
                });
            }
        }
    }
    let mut m = Vec::new();
    for from in NAMES {
        for to in NAMES {
            if from != to {
                m.push((from.to_string(), to.to_string(), f.connects(from, to, 0.7)));
            }
        }
    }
    m
}

#[test]
fn isolated_scenario_across_two_hosts() {
    let mut f = seed();
    let m = measured_matrix(&f);
    let wrong: Vec<_> = m
        .iter()
        .filter(|(a, b, ok)| *ok != expected(a, b))
        .collect();
    assert!(wrong.is_empty(), "measured matrix differs: {wrong:?}");

    // Hosts reach their own containers (and are reached by them); not the other host's isolated ones.
    for c in ["a", "c", "collect"] {
        assert!(f.connects("h1", c, 1.0), "h1 -> {c}");
    }
    for c in ["b", "d", "e"] {
        assert!(f.connects("h2", c, 1.0), "h2 -> {c}");
        assert!(
            !f.connects("h1", c, 0.7),
            "h1 must not reach h2's isolated {c}"
        );
    }
    // E (no netgroup) reaches its own host, and nothing beyond it: each
    // host runs a listener on its own address, port 9100.
    let (h1, h2) = (f.host("h1"), f.host("h2"));
    let servers = [
        serve_in_netns(&h1.ns, &h1.ip, 9100),
        serve_in_netns(&h2.ns, &h2.ip, 9100),
    ];
    let from_container =
        |name: &str| format!("nsenter --net=/proc/{}/ns/net", f.container(name).pid);
    let from_host = |h: &FakeHost| format!("ip netns exec {}", h.ns);
    assert!(
        connects_with(&from_container("e"), &h2.ip, 9100, 1.0),
        "e reaches its own host"
    );
    // h1's listener is up and reachable from e's host, and from a task on
    // e's host that policy lets out (b, in star-1): only e's policy differs.
    assert!(
        connects_with(&from_host(h2), &h1.ip, 9100, 1.0),
        "control: h2 reaches h1's listener"
    );
    assert!(
        connects_with(&from_container("b"), &h1.ip, 9100, 1.0),
        "control: b (star-1, on e's host) reaches h1's listener"
    );
    assert!(
        !connects_with(&from_container("e"), &h1.ip, 9100, 0.7),
        "e (no netgroup) must not reach another host"
    );
    drop(servers);

    // `netmod explain` agrees with what was measured, pair by pair.
    for (from, to, ok) in &m {
        let out = f.store.netmod(&[
            "explain",
            &f.uid(from),
            &f.container(to).addr.clone(),
            "--port",
            "9000/tcp",
        ]);
        let code = out.status.code().unwrap();
        assert_eq!(
            code == 0,
            *ok,
            "explain {from} -> {to}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(code == 0 || code == 3);
    }
    let out = f.store.netmod(&["-o", "json", "explain", "c", "b"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], json!(false));
    assert_eq!(v["hops"][1]["decision"]["reason"], json!("default: drop"));

    // Anti-spoofing, seen at the receiver: A sends UDP with the source
    // address of a neighbour on its own host whose packets the receiver's
    // policy would accept. Nothing forged arrives, while the same datagram
    // from A's own address does (A and the receiver share star-1).
    let addr = |n: &str| f.container(n).addr.clone();
    // To B on the other host, as the collector (star-1, like B).
    let forged = f.forged_datagrams_received("a", &addr("a"), &addr("collect"), "b", &addr("b"));
    assert!(
        forged.is_empty(),
        "a's datagrams forged as the collector reached b: {forged:?}"
    );
    // To the collector on the same host, as C (star-2, like the collector).
    let forged =
        f.forged_datagrams_received("a", &addr("a"), &addr("c"), "collect", &addr("collect"));
    assert!(
        forged.is_empty(),
        "a's datagrams forged as c reached the collector: {forged:?}"
    );
    assert!(
        f.connects("a", "collect", 1.0),
        "and the real one still works"
    );

    // Cleanup leaves nothing: no interface, container route, set element,
    // endpoint record or allocation.
    for name in NAMES {
        f.stop(name);
    }
    for host in ["h1", "h2"] {
        let links = f.ns_json(host, "link");
        let ours: Vec<_> = links
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"].as_str().unwrap().starts_with("nm"))
            .collect();
        assert!(ours.is_empty(), "{host}: {ours:?}");
        let routes = f.ns_json(host, "route");
        let dev_routes: Vec<_> = routes
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dev"].as_str().is_some_and(|d| d.starts_with("nm")))
            .collect();
        assert!(dev_routes.is_empty(), "{host}: {dev_routes:?}");
        wait_for(Duration::from_secs(10), "sets emptied", || {
            f.set_elements(host).is_empty()
        });
    }
    let out = f.store.netmod(&["-o", "json", "endpoints"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!([])
    );
    let out = f.store.netmod(&["-o", "json", "ipam", "show"]);
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(usage["pools"][0]["used"], json!(0));
    // A second cleanup of the same container succeeds quietly.
    let (code, _) = f.mesos(
        "h1",
        &json!({"command":"cleanup","args":{"hostname":"h1","container_id":f.uid("a")}}),
    );
    assert_eq!(code, 0);
}

#[test]
fn node_restart_converges_and_keeps_established_connections() {
    require_lab();
    let mut f = Fabric::new(2, "10.124.0.0/16");
    f.launch("h1", "a", &["star-1"]);
    f.launch("h1", "c", &["star-2"]);
    f.launch("h2", "b", &["star-1"]);
    f.launch("h2", "d", &["star-2"]);
    wait_for(Duration::from_secs(15), "a -> b", || {
        f.connects("a", "b", 0.5)
    });
    // An established connection a -> b, held open by a client that echoes lines.
    let a = f.container("a").pid;
    let b_addr = f.container("b").addr.clone();
    let mut client = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{a}/ns/net"))
        .args(["python3", "-c", "import socket,sys\ns=socket.create_connection((sys.argv[1],9000),timeout=3)\nfor l in sys.stdin:\n    s.sendall(l.encode()); print(s.recv(100).decode().strip(), flush=True)", &b_addr])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut echo = |word: &str| {
        use std::io::{BufRead, Write};
        writeln!(stdin, "{word}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(echo("before"), "before");

    // kill -9 h2's node; change membership while it is down.
    f.kill_node(1);
    let c_addr = f.container("c").addr.clone();
    f.stop("c");
    f.launch("h1", "f", &["star-2"]);
    assert_eq!(
        echo("during"),
        "during",
        "the dataplane stays while the node is down"
    );
    f.start_node(1);
    // It converges: f (new, star-2 on h1) reaches d; h2's sets hold exactly
    // the members they should (f's address in, c's address out).
    wait_for(Duration::from_secs(15), "f -> d after restart", || {
        f.connects("f", "d", 0.5)
    });
    let want = expected_set_elements(&f, "h2");
    let f_addr = f.container("f").addr.clone();
    assert!(want.iter().any(|(_, e)| *e == f_addr), "{want:?}");
    assert!(!want.iter().any(|(_, e)| *e == c_addr), "{want:?}");
    let _ = wait_until(Duration::from_secs(15), || {
        f.membership_elements("h2") == want
    });
    let elems = f.membership_elements("h2");
    assert!(
        !elems.iter().any(|(_, e)| *e == c_addr),
        "c's address {c_addr} is still in h2's sets after the restart: {elems:?}"
    );
    assert_eq!(elems, want, "h2's sets after the restart");
    assert_eq!(
        echo("after"),
        "after",
        "established connection survives the restart"
    );
    drop(stdin);
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn failed_isolate_leaves_nothing_behind() {
    require_lab();
    let mut f = Fabric::new(1, "10.125.0.0/16");
    f.launch("h1", "a", &["star-1"]);
    let before_links = f.ns_json("h1", "link");
    let before_routes = f.ns_json("h1", "route");
    let before_sets = f.set_elements("h1");
    let before_store = f.store.dump_records();
    // The namespace vanished: the process is gone.
    let (code, reply) = f.mesos(
        "h1",
        &json!({"command":"isolate","args":{"hostname":"h1","container_id":"gone","pid":999999,"ipv4_addrs":["10.125.0.77"],"netgroups":["star-1"]}}),
    );
    assert_eq!(code, 1);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("network namespace"),
        "{reply}"
    );
    // A pid still in the host's own namespace (here: the node's): refused.
    let node_pid = f.hosts[0].node.as_ref().unwrap().id();
    let (code, reply) = f.mesos(
        "h1",
        &json!({"command":"isolate","args":{"hostname":"h1","container_id":"host","pid":node_pid,"ipv4_addrs":["10.125.0.79"]}}),
    );
    assert_eq!(code, 1);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("this host's own network namespace"),
        "{reply}"
    );
    // An address already on another endpoint.
    let a_addr = f.container("a").addr.clone();
    let sleeper = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &f.host("h1").ns,
            "unshare",
            "--net",
            "--",
            "sleep",
            "1000",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (code, reply) = f.mesos(
        "h1",
        &json!({"command":"isolate","args":{"hostname":"h1","container_id":"dup","pid":sleeper.id(),"ipv4_addrs":[a_addr],"netgroups":["star-1"]}}),
    );
    assert_eq!(code, 1);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains(&format!("{a_addr} is already on endpoint")),
        "{reply}"
    );
    // A second isolate of a live container.
    let (code, reply) = f.mesos(
        "h1",
        &json!({"command":"isolate","args":{"hostname":"h1","container_id":f.uid("a"),"pid":sleeper.id(),"ipv4_addrs":["10.125.0.78"]}}),
    );
    assert_eq!(code, 1);
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("already has eth0"),
        "{reply}"
    );
    let mut sleeper = sleeper;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(f.ns_json("h1", "link"), before_links);
    assert_eq!(f.ns_json("h1", "route"), before_routes);
    assert_eq!(f.set_elements("h1"), before_sets);
    assert_eq!(f.store.dump_records(), before_store);
}

#[test]
fn metrics_and_uninstall() {
    require_lab();
    let mut f = Fabric::new(2, "10.126.0.0/16");
    f.launch("h1", "a", &["web"]);
    f.launch("h2", "b", &["web"]);
    wait_for(Duration::from_secs(15), "a -> b", || {
        f.connects("a", "b", 0.5)
    });
    let ns = f.host("h1").ns.clone();
    let metrics = must(&format!(
        "ip netns exec {ns} curl -sf http://127.0.0.1:9190/metrics"
    ));
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert_eq!(value("netmod_endpoints"), 1.0);
    assert!(value("netmod_nft_sets") >= 6.0);
    assert_eq!(
        value("netmod_routes"),
        2.0,
        "one block on the other host, and the blackhole of its own"
    );
    assert!(value("netmod_applies_total") >= 1.0);
    let log = f.node_log("h1");
    assert_eq!(value("netmod_apply_errors_total"), 0.0, "node log:\n{log}");
    assert!(metrics.contains("netmod_last_apply_seconds"));

    // --uninstall removes every object netmod created on the host, and only those.
    f.kill_node(0);
    let out = must(&format!(
        "ip netns exec {ns} {} node --uninstall",
        common::NETMOD
    ));
    assert!(
        out.contains("removed: the netmod table, 1 interface(s)"),
        "{out}"
    );
    assert!(f.nft_json("h1").is_null(), "table gone");
    let links = f.ns_json("h1", "link");
    assert!(!links
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["ifname"].as_str().unwrap().starts_with("nm")));
    let routes = f.ns_json("h1", "route");
    assert!(
        !routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["protocol"] == json!("110") || r["protocol"] == json!(110)),
        "{routes}"
    );
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "default"),
        "foreign routes stay"
    );
}
