//! Fuzzing the doors through the real binary (the parsers themselves are
//! fuzzed in-process by `src/fuzz.rs`): odd CNI invocations — command,
//! environment and configuration — and odd net-modules requests, each run as
//! the runtime or the agent would, inside a network namespace of its own
//! (`unshare --net`) against a SQLite store. Every run must answer in its
//! wire format (a CNI error object or result; one JSON reply), exit 0 or 1,
//! never crash, and a run that fails must leave every key, value and
//! revision of the store as it was.
//!
//! Cases: `NETMOD_FUZZ_CASES` / 10 per door (at least 100; default 200).
//! `NETMOD_FUZZ_REPORT` names a file to append `<name> <cases> <seconds>` to.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::process::{Command, Stdio};

fn cases() -> u32 {
    let all: u32 = std::env::var("NETMOD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(2_000);
    (all / 10).max(100)
}

fn run<S: Strategy>(name: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    });
    let count = std::sync::atomic::AtomicU64::new(0);
    let started = std::time::Instant::now();
    if let Err(e) = runner.run(&strategy, |v| {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check(v)
    }) {
        panic!("property {name} failed: {e}");
    }
    let n = count.into_inner();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("fuzz {name}: {n} cases in {secs:.1} s, no failure");
    if let Ok(path) = std::env::var("NETMOD_FUZZ_REPORT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writeln!(f, "{name} {n} {secs:.1}").unwrap();
    }
}

/// Everything in the store: keys, values, revisions, leases; and its revision.
fn snapshot(store: &TestStore) -> (Vec<netmod_store::KeyValue>, i64) {
    use netmod_store::Store;
    let s = store.open();
    let (kvs, _) = s.range("").unwrap();
    (kvs, s.revision().unwrap())
}

/// A store with pools, a Mesos allocation and a CNI one to be found.
fn seeded_store() -> TestStore {
    let store = TestStore::new();
    let s = store.open();
    let ipam = netmod_ipam::Ipam::new(&s);
    ipam.add_pool("10.99.0.0/26".parse().unwrap(), Some(28), 0)
        .unwrap();
    ipam.add_pool("fd99::/120".parse().unwrap(), None, 0)
        .unwrap();
    for handle in ["t1", "cni/net1/c1/eth0"] {
        ipam.allocate(&netmod_ipam::AllocRequest {
            handle: handle.into(),
            attrs: netmod_model::AllocAttrs {
                host: "h1".into(),
                ..Default::default()
            },
            num_ipv4: 1,
            ..Default::default()
        })
        .unwrap();
    }
    store
}

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "", " ", "h1", "t1", "c1", "eth0", "net1", "public", "g1", "bad name", "a/b",
            "10.99.0.5", "fd99::5", "10.99.0.0/26", "1.2.3.4/33", "1.0.0", "0.4.0", "9.9.9",
            "\u{1}", "é", "%", ";", "=", "etcd://", "http://x",
        ])
        .prop_map(str::to_string),
        2 => "[ -~]{0,16}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (0u32..5).prop_map(|n| json!(n)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn maybe(v: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![3 => v, 1 => value()].boxed()
}

fn strings(items: Vec<&'static str>) -> BoxedStrategy<Value> {
    maybe(
        prop::collection::vec(prop::sample::select(items), 0..3)
            .prop_map(|v| json!(v))
            .boxed(),
    )
}

/// (command, environment, configuration) for one CNI invocation. The store
/// is always ours (named by NETMOD_STORE) or an address that cannot be
/// created; the namespace never exists.
/// A CNI invocation: the command, the environment, the configuration.
type CniCase = (String, Vec<(String, String)>, Vec<u8>);

fn cni_case() -> BoxedStrategy<CniCase> {
    let command = prop_oneof![
        4 => prop::sample::select(vec!["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"])
            .prop_map(str::to_string),
        1 => text(),
    ];
    let env = (
        prop::option::of(prop_oneof![
            Just("c1".to_string()),
            Just("c2".to_string()),
            text()
        ]),
        prop::option::of(prop_oneof![Just("eth0".to_string()), text()]),
        prop::option::of(prop_oneof![
            Just("/nonexistent-netmod-fuzz/ns".to_string()),
            Just(String::new())
        ]),
        prop::option::of(prop_oneof![
            Just("NETMOD_NETGROUPS=g1,public".to_string()),
            Just("IgnoreUnknown=1;NETMOD_NETGROUPS=bad name".to_string()),
            text()
        ]),
    )
        .prop_map(|(cid, ifname, netns, args)| {
            let mut env = Vec::new();
            for (k, v) in [
                ("CNI_CONTAINERID", cid),
                ("CNI_IFNAME", ifname),
                ("CNI_NETNS", netns),
                ("CNI_ARGS", args),
            ] {
                if let Some(v) = v {
                    env.push((k.to_string(), v));
                }
            }
            env
        });
    let conf = (
        prop::collection::vec(prop::bool::weighted(0.6), 10),
        (
            maybe(
                prop::sample::select(vec!["0.3.1", "0.4.0", "1.0.0", "1.1.0", "2.0"])
                    .prop_map(|v| json!(v))
                    .boxed(),
            ),
            maybe(
                prop::sample::select(vec!["net1", "net2"])
                    .prop_map(|v| json!(v))
                    .boxed(),
            ),
            maybe(
                prop::sample::select(vec!["10.99.0.0/26", "10.98.0.0/24", "x"])
                    .prop_map(|v| json!(v))
                    .boxed(),
            ),
            strings(vec!["g1", "public", "bad name", ""]),
            strings(vec!["mesos", "cni_args", "runtime_config", "k8s"]),
        ),
        (
            maybe(Just(json!("h1")).boxed()),
            maybe(Just(json!(true)).boxed()),
            maybe(
                prop::collection::vec(
                    (text(), text()).prop_map(|(c, i)| json!({"containerID": c, "ifname": i})),
                    0..3,
                )
                .prop_map(Value::Array)
                .boxed(),
            ),
            strings(vec!["g2", "-"]).prop_map(|g| json!({"netgroups": g})),
            prop::sample::select(vec![None, Some("etcd://"), Some("http://x"), Some("")]),
        ),
        any::<bool>(),
    )
        .prop_map(
            |(present, (v, name, pool, groups, sources), (host, v6, valid, rc, store), raw)| {
                let mut m = Map::new();
                let fields = [
                    ("cniVersion", v),
                    ("name", name),
                    ("pool", pool),
                    ("netgroups", groups),
                    ("netgroupSources", sources),
                    ("hostname", host),
                    ("ipv6", v6),
                    ("cni.dev/valid-attachments", valid),
                    ("runtimeConfig", rc),
                ];
                for ((k, v), on) in fields.into_iter().zip(&present) {
                    if *on || matches!(k, "cniVersion" | "name") {
                        m.insert(k.to_string(), v);
                    }
                }
                if let (Some(s), true) = (store, present[9]) {
                    m.insert("store".into(), json!(s));
                }
                m.insert("type".into(), json!("netmod"));
                let mut bytes = serde_json::to_vec(&Value::Object(m)).unwrap();
                if raw {
                    bytes.truncate(bytes.len() / 2);
                }
                bytes
            },
        );
    (command, env, conf).boxed()
}

/// Run `netmod` in a network namespace of its own.
fn run_netmod(
    args: &[&str],
    env: &[(String, String)],
    store: &TestStore,
    stdin: &[u8],
) -> std::process::Output {
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", NETMOD])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NETMOD_STORE", store.path())
        .env("NETMOD_HOSTNAME", "h1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin);
    drop(input);
    wait(&mut child)
}

#[test]
fn cni_door_answers_every_invocation_and_a_failure_changes_nothing() {
    require(
        is_root(),
        "root (each run gets a network namespace of its own)",
    );
    let store = seeded_store();
    run(
        "cni_door_process",
        cni_case(),
        |(command, mut env, conf)| {
            env.push(("CNI_COMMAND".into(), command.clone()));
            let before = snapshot(&store);
            let out = run_netmod(&[], &env, &store, &conf);
            let code = out.status.code();
            prop_assert!(
                matches!(code, Some(0 | 1)),
                "{command} exited {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            if code == Some(1) {
                let err: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
                    TestCaseError::fail(format!(
                        "{command}: error output is not JSON ({e}): {stdout}"
                    ))
                })?;
                prop_assert!(err["code"].as_u64().is_some(), "{err}");
                prop_assert!(!err["msg"].as_str().unwrap_or("").is_empty(), "{err}");
                prop_assert!(err["cniVersion"].is_string(), "{err}");
                prop_assert!(
                    snapshot(&store) == before,
                    "a failed {command} changed the store: {err}\nconf: {}",
                    String::from_utf8_lossy(&conf)
                );
            } else if !stdout.trim().is_empty() {
                let v: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
                    TestCaseError::fail(format!("{command}: output is not JSON ({e}): {stdout}"))
                })?;
                prop_assert!(v["cniVersion"].is_string(), "{v}");
            }
            Ok(())
        },
    );
}

fn mesos_case() -> BoxedStrategy<Vec<u8>> {
    let args = (
        prop::collection::vec(prop::bool::weighted(0.7), 8),
        (
            maybe(Just(json!("h1")).boxed()),
            maybe(
                prop::sample::select(vec!["t1", "t2", "cni/net1/c1/eth0"])
                    .prop_map(|u| json!(u))
                    .boxed(),
            ),
            maybe((0u32..3).prop_map(|n| json!(n)).boxed()),
            strings(vec!["10.99.0.5", "10.99.0.1", "10.99.0.70", "fd99::5", "x"]),
        ),
        (
            strings(vec!["g1", "public", "bad name"]),
            maybe(Just(json!({"ipv4_addrs": "['10.99.0.9']"})).boxed()),
            // Never a namespace that exists.
            prop_oneof![Just(json!(4_194_305u64)), Just(json!(0)), Just(json!("x"))],
            text(),
        ),
    )
        .prop_map(
            |(present, (h, uid, n, addrs), (groups, labels, pid, extra))| {
                let fields = [
                    ("hostname", h),
                    ("uid", uid.clone()),
                    ("container_id", uid),
                    ("num_ipv4", n),
                    ("ipv4_addrs", addrs),
                    ("netgroups", groups),
                    ("labels", labels),
                    ("pid", pid),
                ];
                let mut m = Map::new();
                for ((k, v), on) in fields.into_iter().zip(present) {
                    if on {
                        m.insert(k.into(), v);
                    }
                }
                m.insert(extra, json!(1));
                m.remove("netns");
                Value::Object(m)
            },
        );
    let command = prop_oneof![
        6 => prop::sample::select(vec!["allocate", "reserve", "release", "isolate", "cleanup"])
            .prop_map(|c| json!(c)),
        1 => text().prop_map(Value::String),
    ];
    prop_oneof![
        8 => (command, args).prop_map(|(c, a)| serde_json::to_vec(&json!({"command": c, "args": a})).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
    .boxed()
}

#[test]
fn mesos_door_answers_every_request_and_a_failure_changes_nothing() {
    require(
        is_root(),
        "root (each run gets a network namespace of its own)",
    );
    let store = seeded_store();
    run("mesos_door_process", mesos_case(), |request| {
        let before = snapshot(&store);
        let out = run_netmod(&["mesos"], &[], &store, &request);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let reply: Value = serde_json::from_str(stdout.trim()).map_err(|e| {
            TestCaseError::fail(format!(
                "reply is not JSON ({e}): {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        prop_assert_eq!(stdout.trim().lines().count(), 1, "one line: {}", stdout);
        match out.status.code() {
            Some(0) => prop_assert!(reply["error"].is_null(), "{reply}"),
            Some(1) => {
                prop_assert!(!reply["error"].as_str().unwrap_or("").is_empty(), "{reply}");
                prop_assert!(
                    snapshot(&store) == before,
                    "a failed request changed the store: {reply}\nrequest: {}",
                    String::from_utf8_lossy(&request)
                );
            }
            other => prop_assert!(false, "exit {other:?}: {reply}"),
        }
        Ok(())
    });
}
