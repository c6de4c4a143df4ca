//! Calico policies in real namespaces: two fake hosts, `netmod node` on
//! each, Calico's allow-tcp-6379 example stored in the datastore, measured
//! by real TCP connects, and `netmod explain` agreeing with each result.

mod common;
use common::lab::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Calico's allow-tcp-6379 example, in examples/calico/.
const ALLOW_6379: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/calico/allow-tcp-6379.yaml"
));

/// Give a launched container the label `role` (what a cluster manager's
/// labels would carry), by rewriting its endpoint record.
fn label(f: &Fabric, name: &str, role: &str) {
    let uid = f.uid(name);
    let role = role.to_string();
    f.with_store(move |s| {
        let (kvs, _) = s.range("endpoints/").unwrap();
        let kv = kvs
            .iter()
            .find(|kv| {
                serde_json::from_slice::<serde_json::Value>(&kv.value).unwrap()["container_id"]
                    == uid.as_str()
            })
            .expect("endpoint record");
        let mut v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        v["labels"]["role"] = role.into();
        s.txn(
            &[],
            &[netmod_store::Op::put(
                &kv.key,
                serde_json::to_vec(&v).unwrap(),
            )],
        )
        .unwrap();
    });
}

fn netns_of(f: &Fabric, name: &str) -> String {
    format!("nsenter --net=/proc/{}/ns/net", f.container(name).pid)
}

/// A TCP echo server on `port` of a container's address.
fn serve(f: &Fabric, name: &str, port: u16) -> KillOnDrop {
    let c = f.container(name);
    let mut server = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", c.pid))
        .args(["python3", "-c", SERVER, &c.addr, &port.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    KillOnDrop(server)
}

fn reaches(f: &Fabric, from: &str, to: &str, port: u16) -> bool {
    connects_with(&netns_of(f, from), &f.container(to).addr, port, 0.7)
}

/// A connection kept open, echoing a byte every 50 ms; the process prints
/// "up" once connected, and when an echo does not come back within a
/// second, "cut <wall-clock time of the last echo that came back>".
const KEEP: &str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.0)
s.sendall(b'x'); assert s.recv(1) == b'x'
last = time.time()
print('up', flush=True)
while True:
    time.sleep(0.05)
    try:
        s.sendall(b'x')
        if s.recv(1) != b'x': break
        last = time.time()
    except OSError:
        break
print('cut %.6f' % last, flush=True)
"#;

/// An open connection and what it prints.
struct Flow {
    child: KillOnDrop,
    out: BufReader<std::process::ChildStdout>,
}

impl Flow {
    fn exited(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_some()
    }

    /// When the last echo came back (wall clock), once the flow is cut.
    fn last_echo(&mut self) -> std::time::SystemTime {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let secs: f64 = line
            .trim()
            .strip_prefix("cut ")
            .unwrap_or_else(|| panic!("flow said {line:?}"))
            .parse()
            .unwrap();
        std::time::UNIX_EPOCH + Duration::from_secs_f64(secs)
    }
}

fn keep(f: &Fabric, from: &str, to: &str, port: u16) -> Flow {
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/proc/{}/ns/net", f.container(from).pid))
        .args([
            "python3",
            "-c",
            KEEP,
            &f.container(to).addr,
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "up",
        "{from} -> {to}:{port} connects before the policy"
    );
    Flow {
        child: KillOnDrop(child),
        out,
    }
}

/// `netmod explain` says what was measured (exit 0 allowed, 3 dropped).
fn explain_agrees(f: &Fabric, from: &str, to: &str, port: u16, measured: bool) {
    let out = f.netmod(&[
        "explain",
        &f.uid(from),
        &f.container(to).addr,
        "--port",
        &format!("{port}/tcp"),
    ]);
    let code = out.status.code().unwrap();
    assert!(
        code == 0 || code == 3,
        "explain {from} -> {to}:{port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        code == 0,
        measured,
        "explain {from} -> {to}:{port} disagrees with the measurement ({measured}): {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn calico_allow_tcp_6379_between_two_hosts() {
    require_lab();
    let mut f = Fabric::new(2, "10.124.0.0/16");
    // h1: the database, a frontend beside it, and a task no policy selects.
    f.launch("h1", "database", &["shop"]);
    f.launch("h1", "frontend1", &["shop"]);
    f.launch("h1", "other", &["shop"]);
    // h2: a frontend, a web task (not a frontend), a task no policy selects.
    f.launch("h2", "frontend2", &["shop"]);
    f.launch("h2", "web", &["shop"]);
    f.launch("h2", "plain", &["shop"]);
    f.launch("h2", "alone", &[]);
    label(&f, "database", "database");
    label(&f, "frontend1", "frontend");
    label(&f, "frontend2", "frontend");
    label(&f, "web", "web");
    let _servers = [serve(&f, "database", 6379), serve(&f, "database", 6380)];

    // Before any policy: the netgroup shop decides.
    for from in ["frontend1", "frontend2", "web", "other"] {
        wait_for(
            Duration::from_secs(15),
            &format!("{from} -> database"),
            || reaches(&f, from, "database", 6379),
        );
    }
    // Connections open before the policy: one it allows, one it forbids.
    let mut allowed_flow = keep(&f, "frontend2", "database", 6379);
    let mut forbidden_flow = keep(&f, "web", "database", 6379);

    let policies = netmod_calico::parse_policies(ALLOW_6379).unwrap();
    let applied_at = Instant::now();
    let stored_at = std::time::SystemTime::now();
    f.with_store(move |s| netmod_core::policies::apply(s, &policies).unwrap());

    // The policy is in force once web (not a frontend) is refused.
    wait_for(Duration::from_secs(10), "web refused by the policy", || {
        !reaches(&f, "web", "database", 6379)
    });
    // Live tightening: the forbidden flow stops carrying data within a
    // second of the policy being stored; the allowed one carries on.
    let cut = wait_until(Duration::from_secs(5), || forbidden_flow.exited());
    assert!(
        cut.is_some(),
        "web's open connection to the database survived the policy"
    );
    let last_echo = forbidden_flow.last_echo();
    let carried_data_for = last_echo.duration_since(stored_at).unwrap_or_default();
    eprintln!(
        "forbidden flow: last echo {} after the policy was stored \
         (the probe noticed {:?} after)",
        match last_echo.duration_since(stored_at) {
            Ok(d) => format!("{d:?}"),
            Err(e) => format!("-{:?}", e.duration()),
        },
        applied_at.elapsed()
    );
    assert!(
        carried_data_for < Duration::from_secs(1),
        "the forbidden flow carried data {carried_data_for:?} after the policy was stored"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !allowed_flow.exited(),
        "frontend2's open connection on 6379 was cut, though the policy allows it"
    );

    // (from, to, port, expected)
    let cases = [
        ("frontend2", "database", 6379, true), // other host
        ("frontend2", "database", 6380, false),
        ("frontend1", "database", 6379, true), // same host: egress then ingress
        ("frontend1", "database", 6380, false),
        ("web", "database", 6379, false),
        ("other", "database", 6379, false),
        ("plain", "database", 6379, false),
        ("alone", "database", 6379, false),
        // The database's egress: Allow, then the receiver's own rules.
        ("database", "other", 9000, true), // same host, profile shop
        ("database", "plain", 9000, true), // other host, profile shop
        ("database", "alone", 9000, false), // alone's profile: no netgroup
        // Endpoints no policy selects keep the netgroup behaviour.
        ("other", "plain", 9000, true),
        ("plain", "other", 9000, true),
        ("web", "frontend1", 9000, true),
        ("alone", "plain", 9000, false),
        ("plain", "alone", 9000, false),
    ];
    let mut wrong = Vec::new();
    for (from, to, port, want) in cases {
        let got = reaches(&f, from, to, port);
        if got != want {
            wrong.push(format!(
                "{from} -> {to}:{port}: measured {got}, expected {want}"
            ));
        }
        explain_agrees(&f, from, to, port, got);
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // explain names the deciding policy rule.
    let out = f.netmod(&[
        "-o",
        "json",
        "explain",
        &f.uid("frontend2"),
        &f.container("database").addr,
        "--port",
        "6379/tcp",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["hops"][1]["decision"]["reason"], "policy allow-tcp-6379 ingress[0]",
        "{v}"
    );
    // Junk in --port is an error (exit 1), not a verdict.
    let out = f.netmod(&[
        "explain",
        &f.uid("frontend2"),
        &f.container("database").addr,
        "--port",
        "6379/xyz",
    ]);
    assert_eq!(out.status.code(), Some(1));
    drop(allowed_flow);
    drop(forbidden_flow);
}

/// A new endpoint that a policy selects is in the policy's sets the moment
/// isolate returns, before any node has seen it: a Deny policy holds from
/// its first packet. (Its host's node is stopped, so only the plugin can
/// have put it there.)
#[test]
fn a_new_endpoint_is_in_its_policies_sets_before_the_node_sees_it() {
    let mut f = Fabric::new(1, "10.147.0.0/16");
    let policies = netmod_calico::parse_policies(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: quarantine-victims
spec:
  selector: task == 'victim'
  ingress:
    - action: Deny
",
    )
    .unwrap();
    f.with_store(move |s| netmod_core::policies::apply(s, &policies).unwrap());
    // The node compiles the policy: its selector set appears.
    let h1 = f.host("h1").ns.clone();
    let selector_sets = || {
        let out = sh(&format!("ip netns exec {h1} nft -j list sets inet"));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nftables"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.get("set"))
            .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("sel_")))
            .map(|s| {
                let elems: Vec<String> = s["elem"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect();
                (s["name"].as_str().unwrap().to_string(), elems)
            })
            .collect::<Vec<_>>()
    };
    wait_for(Duration::from_secs(10), "the policy's sets", || {
        !selector_sets().is_empty()
    });
    f.kill_node(0);
    let victim = f.launch("h1", "victim", &["web"]).addr.clone();
    let bystander = f.launch("h1", "bystander", &["web"]).addr.clone();
    let sets = selector_sets();
    assert!(
        sets.iter().any(|(_, e)| e.contains(&victim)),
        "{victim} is in no selector set: {sets:?}"
    );
    assert!(
        sets.iter().all(|(_, e)| !e.contains(&bystander)),
        "{bystander} is selected by no policy, yet in {sets:?}"
    );
    // And it holds: the bystander (same netgroup) cannot reach the victim.
    assert!(!f.connects("bystander", "victim", 1.0));
    let other = f.launch("h1", "other", &["web"]).addr.clone();
    assert!(!other.is_empty());
    assert!(
        f.connects("bystander", "other", 2.0),
        "control: web members reach each other"
    );
}

/// Every object of host `ns`'s netmod table with its kernel handle, as
/// ("chain NAME" | "set NAME" | "rule CHAIN#HANDLE" | "table", handle).
fn handles(ns: &str) -> std::collections::BTreeMap<String, u64> {
    let out = sh(&format!(
        "ip netns exec {ns} nft -a -j list table inet netmod"
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut map = std::collections::BTreeMap::new();
    for item in v["nftables"].as_array().unwrap() {
        let (key, obj) = if let Some(o) = item.get("table") {
            ("table".to_string(), o)
        } else if let Some(o) = item.get("chain") {
            (format!("chain {}", o["name"].as_str().unwrap()), o)
        } else if let Some(o) = item.get("set") {
            (format!("set {}", o["name"].as_str().unwrap()), o)
        } else if let Some(o) = item.get("rule") {
            (
                format!("rule {}#{}", o["chain"].as_str().unwrap(), o["handle"]),
                o,
            )
        } else {
            continue;
        };
        map.insert(key, obj["handle"].as_u64().unwrap());
    }
    map
}

/// Applying a second policy, changing it and deleting it, with the first
/// in force: the nodes change only the second policy's chains and sets and
/// the dispatch chains (kernel handles of everything else stay, so nothing
/// else was replaced), the table is never installed whole, and the first
/// policy keeps deciding throughout.
#[test]
fn a_policy_change_touches_only_its_own_objects_in_the_kernel() {
    require_lab();
    let mut f = Fabric::new(1, "10.148.0.0/16");
    f.launch("h1", "database", &["shop"]);
    f.launch("h1", "frontend", &["shop"]);
    f.launch("h1", "web", &["shop"]);
    label(&f, "database", "database");
    label(&f, "frontend", "frontend");
    label(&f, "web", "web");
    let _server = serve(&f, "database", 6379);
    let first = netmod_calico::parse_policies(ALLOW_6379).unwrap();
    f.with_store(move |s| netmod_core::policies::apply(s, &first).unwrap());
    let h1 = f.host("h1").ns.clone();
    let has_chain = |name: &str| handles(&h1).contains_key(&format!("chain {name}"));
    wait_for(Duration::from_secs(10), "the first policy's chain", || {
        has_chain("pi_allow-tcp-6379")
    });
    wait_for(Duration::from_secs(10), "web refused", || {
        !reaches(&f, "web", "database", 6379)
    });
    let second = |port: u16| {
        format!(
            "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: web-out
spec:
  order: 5
  selector: role == 'web'
  egress:
    - action: Deny
      protocol: TCP
      destination:
        ports: [{port}]
    - action: Allow
"
        )
    };
    // Objects the second policy may touch: its chains, its selector's sets,
    // the dispatch chains (their jumps) and the "selected" sets.
    let its_own = |key: &str| {
        key.contains("pe_web-out")
            || key.contains("pi_web-out")
            || key.contains("policy_egress")
            || key.contains("policy_ingress")
            || key.starts_with("set sel_")
            || key.starts_with("set selected_")
    };
    let mut before = handles(&h1);
    for (step, yaml) in [
        ("apply", Some(second(25))),
        ("change", Some(second(26))),
        ("delete", None),
    ] {
        match yaml {
            Some(y) => {
                let p = netmod_calico::parse_policies(&y).unwrap();
                f.with_store(move |s| netmod_core::policies::apply(s, &p).unwrap());
            }
            None => {
                f.with_store(|s| assert!(netmod_core::policies::delete(s, "web-out").unwrap()));
            }
        }
        let expect_chain = step != "delete";
        wait_for(Duration::from_secs(10), step, || {
            let h = handles(&h1);
            let rules_of_pe = h
                .keys()
                .filter(|k| k.starts_with("rule pe_web-out#"))
                .count();
            h.contains_key("chain pe_web-out") == expect_chain && (!expect_chain || rules_of_pe > 2)
        });
        let after = handles(&h1);
        let changed: Vec<&String> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .filter(|k| !its_own(k))
            .collect();
        assert!(
            changed.is_empty(),
            "{step}: objects outside the policy's own changed: {changed:?}"
        );
        assert_eq!(before["table"], after["table"], "{step}: table replaced");
        // The first policy still decides.
        assert!(reaches(&f, "frontend", "database", 6379), "{step}");
        assert!(!reaches(&f, "web", "database", 6379), "{step}");
        before = after;
    }
    let log = f.node_log("h1");
    assert_eq!(
        log.matches("installing the netmod table").count(),
        1,
        "only the node's first resync installs the whole table: {log}"
    );
}
