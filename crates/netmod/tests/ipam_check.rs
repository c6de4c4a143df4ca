//! `netmod ipam check [--repair]` through the binary, in a network namespace
//! of its own (so it sees only the interfaces the test makes), against a
//! SQLite store holding records made for the purpose.

mod common;
use common::lab::{must, require_lab, sh};
use common::*;
use netmod_core::registry::{endpoint_key, Registry};
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::{host_iface_name, AllocAttrs, Endpoint};
use serde_json::Value;
use std::process::{Command, Output};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("nmtest-{}-{tag}", std::process::id());
        let _ = sh(&format!("ip netns del {name}"));
        must(&format!(
            "ip netns add {name} && ip -n {name} link set lo up"
        ));
        Ns(name)
    }

    /// A host-side interface as attach makes it: a veth whose peer is `p-…`.
    fn add_link(&self, name: &str) {
        must(&format!(
            "ip -n {ns} link add {name} type veth peer name p{tail} && ip -n {ns} link set {name} up",
            ns = self.0,
            tail = &name[3..10]
        ));
    }

    fn links(&self) -> Vec<String> {
        let out = must(&format!("ip -n {} -j link show", self.0));
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut names: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .filter(|n| netmod_model::is_host_iface_name(n))
            .collect();
        names.sort();
        names
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.0));
    }
}

fn endpoint(host: &str, cid: &str, addr: &str, handle: Option<&str>) -> Endpoint {
    Endpoint {
        host: host.into(),
        container_id: cid.into(),
        iface: host_iface_name(cid, "eth0"),
        container_iface: "eth0".into(),
        mac: "0e:6e:00:00:00:01".into(),
        ipv4: vec![addr.parse().unwrap()],
        ipv6: vec![],
        netgroups: vec!["web".into()],
        labels: Default::default(),
        netns: "/proc/1/ns/net".into(),
        source: "mesos".into(),
        handle: handle.map(str::to_string),
    }
}

fn check(s: &TestStore, ns: &Ns, args: &[&str]) -> (i32, Output) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, NETMOD, "--store"])
        .arg(s.path())
        .args(["ipam", "check", "--hostname", "chk"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), out)
}

fn problems(out: &Output) -> Vec<(String, String, bool)> {
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["kind"].as_str().unwrap().to_string(),
                p["subject"].as_str().unwrap().to_string(),
                p["repaired"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn alloc(ipam: &Ipam, handle: &str, host: &str) -> String {
    ipam.allocate(&AllocRequest {
        handle: handle.into(),
        attrs: AllocAttrs {
            host: host.into(),
            ..Default::default()
        },
        num_ipv4: 1,
        ..Default::default()
    })
    .unwrap()
    .ipv4[0]
        .to_string()
}

#[test]
fn check_finds_and_repair_fixes_leaks_stale_records_and_orphan_links() {
    require_lab();
    let ns = Ns::new("check");
    let s = TestStore::new();
    Ipam::new(&s.open())
        .add_pool("10.63.0.0/16".parse().unwrap(), None, 60)
        .unwrap();
    let (ok_link, gone_link, orphan_link) = (
        host_iface_name("c-ok", "eth0"),
        host_iface_name("c-gone", "eth0"),
        host_iface_name("c-orphan", "eth0"),
    );
    {
        let store = s.open();
        let ipam = Ipam::new(&store);
        let registry = Registry::new(&store);
        // A healthy container: its handle, its record, its interface.
        let ok_addr = alloc(&ipam, "used", "chk");
        registry
            .create_endpoint(&endpoint("chk", "c-ok", &ok_addr, Some("used")))
            .unwrap();
        ns.add_link(&ok_link);
        // A container whose interface is gone: a stale record.
        let gone_addr = alloc(&ipam, "gone", "chk");
        registry
            .create_endpoint(&endpoint("chk", "c-gone", &gone_addr, Some("gone")))
            .unwrap();
        // Another host's record: not this host's business.
        let other_addr = alloc(&ipam, "elsewhere", "other");
        registry
            .create_endpoint(&endpoint("other", "c-else", &other_addr, None))
            .unwrap();
        // An allocation nobody uses: leaked.
        alloc(&ipam, "leak", "chk");
        // An interface with netmod's name shape and no record.
        ns.add_link(&orphan_link);
    }
    let links_before = ns.links();
    let dump_before = s.dump();

    // Within the grace period the unused allocation is a task about to start.
    let (code, out) = check(&s, &ns, &["-o", "json"]);
    assert_eq!(code, 3, "{}", String::from_utf8_lossy(&out.stderr));
    let found = problems(&out);
    assert_eq!(
        found,
        [
            (
                "record-without-link".to_string(),
                endpoint_key("chk", "c-gone", "eth0")["endpoints/".len()..].to_string(),
                false
            ),
            (
                "link-without-record".to_string(),
                orphan_link.clone(),
                false
            ),
        ],
        "{found:?}"
    );
    // Past it, the leak is reported too; without --repair nothing changes.
    let (code, out) = check(&s, &ns, &["-o", "json", "--grace", "0"]);
    assert_eq!(code, 3);
    let kinds: Vec<(String, String)> = problems(&out)
        .into_iter()
        .map(|(k, subject, _)| (k, subject))
        .collect();
    assert!(
        kinds.contains(&("leaked-allocation".into(), "handle leak".into())),
        "{kinds:?}"
    );
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert_eq!(
        s.dump(),
        dump_before,
        "a check without --repair changed the store"
    );
    assert_eq!(
        ns.links(),
        links_before,
        "a check without --repair changed the links"
    );
    // The table says the same, and how to repair.
    let (code, out) = check(&s, &ns, &["--grace", "0"]);
    assert_eq!(code, 3);
    let table = String::from_utf8_lossy(&out.stdout);
    for word in [
        "leaked-allocation",
        "record-without-link",
        "link-without-record",
        "--repair",
    ] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }

    // --repair puts each right; exit status 3 (problems were found).
    let (code, out) = check(&s, &ns, &["-o", "json", "--grace", "0", "--repair"]);
    assert_eq!(code, 3, "{}", String::from_utf8_lossy(&out.stderr));
    let repaired = problems(&out);
    assert_eq!(repaired.len(), 3);
    assert!(repaired.iter().all(|(_, _, r)| *r), "{repaired:?}");
    assert_eq!(
        ns.links(),
        std::slice::from_ref(&ok_link),
        "the orphan interface is gone, the healthy one stays"
    );
    {
        let store = s.open();
        let ipam = Ipam::new(&store);
        let registry = Registry::new(&store);
        assert!(
            ipam.handle("leak").unwrap().is_none(),
            "leaked allocation released"
        );
        assert!(
            ipam.handle("gone").unwrap().is_none(),
            "the stale record's handle released"
        );
        assert!(ipam.handle("used").unwrap().is_some());
        assert!(ipam.handle("elsewhere").unwrap().is_some());
        assert!(registry
            .endpoint("chk", "c-gone", "eth0")
            .unwrap()
            .is_none());
        assert!(registry.endpoint("chk", "c-ok", "eth0").unwrap().is_some());
        assert!(registry
            .endpoint("other", "c-else", "eth0")
            .unwrap()
            .is_some());
        let keys: Vec<String> = s.dump().into_iter().map(|(k, _)| k).collect();
        let gone_ip = "addrs/10.63.0.2";
        assert!(
            !keys
                .iter()
                .any(|k| k == gone_ip || k == "netgroups/web/10.63.0.2"),
            "the stale record's index keys remain: {keys:?}"
        );
        assert!(keys.iter().any(|k| k == "addrs/10.63.0.1"), "{keys:?}");
        assert!(ipam.check_consistency().unwrap().is_empty());
    }
    // Now it is clean: exit status 0.
    let (code, out) = check(&s, &ns, &["--grace", "0"]);
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no problems"));
    let _ = gone_link;
}

#[test]
fn check_on_a_missing_store_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("none.db");
    let out = Command::new(NETMOD)
        .arg("--store")
        .arg(&db)
        .args(["ipam", "check", "--hostname", "h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no datastore") && err.contains("netmod pool add"),
        "{err}"
    );
    assert!(!db.exists());
}
