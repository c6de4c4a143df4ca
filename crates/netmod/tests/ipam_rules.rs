//! IPAM rules through the real binary: which pools may be added, retried
//! allocations, and quarantine for addresses asked for by value.

mod common;
use common::lab::{must, require_lab, sh, Fabric};
use common::*;
use serde_json::{json, Value};
use std::process::Output;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit status 1, one line on stderr naming every word, and nothing on stdout.
fn refused(out: &Output, words: &[&str], what: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}{}", stdout(out));
    assert_eq!(err.trim().lines().count(), 1, "{what}: {err}");
    for w in words {
        assert!(err.contains(w), "{what}: {w:?} missing from {err}");
    }
}

/// `netmod --store S ARGS` inside a network namespace, so that the host's
/// networks a pool is checked against are the namespace's, not the machine's.
fn netmod_in(ns: &str, s: &TestStore, args: &[&str]) -> Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, NETMOD, "--store"])
        .arg(s.path())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn pools_that_overlap_reserved_ranges_or_other_pools_are_refused() {
    require_lab();
    // An empty namespace: no host network is in the way.
    let ns = format!("nmtest-{}-reserved", std::process::id());
    let _ = sh(&format!("ip netns del {ns}"));
    must(&format!("ip netns add {ns}"));
    let _guard = HostNs(ns.clone());
    let s = TestStore::new();
    let netmod = |args: &[&str]| netmod_in(&ns, &s, args);
    assert!(netmod(&["pool", "add", "10.60.0.0/16"]).status.success());
    let before = s.dump();
    for (cidr, what) in [
        ("127.0.0.0/8", "the loopback range 127.0.0.0/8"),
        ("224.0.0.0/4", "the multicast range 224.0.0.0/4"),
        ("239.1.0.0/16", "the multicast range 224.0.0.0/4"),
        ("169.254.0.0/16", "the link-local range 169.254.0.0/16"),
        ("0.0.0.0/8", "the unspecified range 0.0.0.0/8"),
        ("255.255.255.255/32", "the broadcast address"),
        ("::1/128", "the loopback address ::1"),
        ("fe80::/64", "the link-local range fe80::/10"),
        ("ff02::/16", "the multicast range ff00::/8"),
        ("10.60.5.0/24", "pool 10.60.0.0/16"),
        ("10.0.0.0/8", "pool 10.60.0.0/16"),
    ] {
        let out = netmod(&["pool", "add", cidr]);
        refused(&out, &[&format!("pool {cidr} overlaps {what}")], cidr);
        assert_eq!(s.dump(), before, "{cidr}: the store changed");
    }
    // The same pool again: a message, exit 0, nothing written.
    let out = netmod(&["pool", "add", "10.60.0.0/16"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "pool 10.60.0.0/16 already exists, unchanged"
    );
    let out = netmod(&["-o", "json", "pool", "add", "10.60.0.0/16"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "unchanged");
    assert_eq!(s.dump(), before);
    // The same range with other settings is an error.
    let out = netmod(&["pool", "add", "10.60.0.0/16", "--block-size", "24"]);
    refused(
        &out,
        &["pool 10.60.0.0/16 already exists with blocks /26 and quarantine 60 s"],
        "other block size",
    );
    assert_eq!(s.dump(), before);
    // The help says what re-adding does.
    let help = stdout(&netmod(&["pool", "add", "--help"]));
    assert!(
        help.contains("already exists, unchanged") && help.contains("exits 0"),
        "{help}"
    );
}

/// A network namespace of its own: an "eth" with 10.77.1.5/24 and
/// fd77:1::5/64, and a route 10.78.0.0/16 via 10.77.1.1.
struct HostNs(String);

impl HostNs {
    fn new(tag: &str) -> HostNs {
        let name = format!("nmtest-{}-{tag}", std::process::id());
        let _ = sh(&format!("ip netns del {name}"));
        must(&format!(
            "ip netns add {name} && ip -n {name} link set lo up && \
             ip -n {name} link add v0 type veth peer name v1 && \
             ip -n {name} link set v0 up && ip -n {name} link set v1 up && \
             ip -n {name} addr add 10.77.1.5/24 dev v0 && \
             ip -n {name} addr add fd77:1::5/64 dev v0 nodad && \
             ip -n {name} route add 10.78.0.0/16 via 10.77.1.1"
        ));
        HostNs(name)
    }
}

impl Drop for HostNs {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {}", self.0));
    }
}

#[test]
fn pools_that_overlap_this_hosts_networks_are_refused() {
    require_lab();
    let ns = HostNs::new("pools");
    let s = TestStore::new();
    let add = |cidr: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ns.0, NETMOD, "--store"])
            .arg(s.path())
            .args(["pool", "add", cidr])
            .output()
            .unwrap()
    };
    assert!(
        add("10.79.0.0/16").status.success(),
        "a pool away from the host's networks"
    );
    let before = s.dump();
    for (cidr, what) in [
        ("10.77.0.0/16", "this host's address 10.77.1.5 on v0"),
        ("10.0.0.0/8", "this host's address 10.77.1.5 on v0"),
        ("10.77.1.128/25", "this host's route 10.77.1.0/24 via v0"),
        (
            "10.78.4.0/24",
            "this host's route 10.78.0.0/16 via 10.77.1.1 dev v0",
        ),
        ("fd77:1::/48", "this host's address fd77:1::5 on v0"),
        (
            "fd77:1:0:0:8000::/65",
            "this host's route fd77:1::/64 via v0",
        ),
    ] {
        let out = add(cidr);
        refused(&out, &[&format!("pool {cidr} overlaps {what}")], cidr);
        assert_eq!(s.dump(), before, "{cidr}: the store changed");
    }
    // A route to exactly the pool through a gateway is the pool routed into
    // the cluster: fine.
    let out = add("10.78.0.0/16");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Pools added directly (these tests are not about which pools the machine
/// allows).
fn add_pools(s: &TestStore, pools: &[(&str, u64)]) {
    let store = s.open();
    let ipam = netmod_ipam::Ipam::new(&store);
    for (cidr, quarantine) in pools {
        ipam.add_pool(cidr.parse().unwrap(), None, *quarantine)
            .unwrap();
    }
}

fn allocate(uid: &str, v4: u32, v6: u32) -> Vec<u8> {
    json!({"command": "allocate", "args": {"hostname": "h1", "num_ipv4": v4, "num_ipv6": v6, "uid": uid}})
        .to_string()
        .into_bytes()
}

fn used(s: &TestStore) -> u64 {
    let out = s.netmod(&["-o", "json", "ipam", "show"]);
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    usage["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["used"].as_u64().unwrap())
        .sum()
}

#[test]
fn a_retried_allocate_returns_the_same_addresses() {
    let s = TestStore::new();
    add_pools(&s, &[("10.61.0.0/16", 60), ("fd00:61::/64", 60)]);
    let (code, first) = s.mesos(&allocate("task-1", 2, 1));
    assert_eq!(code, 0, "{first}");
    // The agent lost the reply and asks again.
    let (code, again) = s.mesos(&allocate("task-1", 2, 1));
    assert_eq!(code, 0, "{again}");
    assert_eq!(again, first);
    assert_eq!(used(&s), 3, "nothing more held");
    // Another shape under the same uid: an error naming what it holds.
    let before = s.dump();
    let (code, reply) = s.mesos(&allocate("task-1", 1, 0));
    assert_eq!(code, 1);
    let msg = reply["error"].as_str().unwrap();
    let held = first["ipv4"][0].as_str().unwrap();
    assert!(
        msg.contains("\"task-1\"") && msg.contains(held) && msg.contains("2 IPv4 + 1 IPv6"),
        "{msg}"
    );
    assert_eq!(s.dump(), before, "the error changed the store");
}

#[test]
fn a_retried_cni_add_returns_the_same_address() {
    require_lab();
    let f = Fabric::new(1, "10.134.0.0/16");
    let sandbox = f.sandbox("h1");
    let netns = format!("/proc/{}/ns/net", sandbox.id());
    let conf = json!({"cniVersion": "1.0.0", "name": "retry", "type": "netmod", "hostname": "h1"});
    // An ADD that allocated and was killed before it plugged anything in.
    let leaked = f.with_store(|store| {
        netmod_ipam::Ipam::new(store)
            .allocate(&netmod_ipam::AllocRequest {
                handle: "cni/retry/c-retry/eth0".into(),
                attrs: netmod_model::AllocAttrs {
                    host: "h1".into(),
                    ..Default::default()
                },
                num_ipv4: 1,
                ..Default::default()
            })
            .unwrap()
            .ipv4[0]
    });
    let env = [
        ("CNI_CONTAINERID", "c-retry"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let (code, result) = f.cni("h1", "ADD", &env, &conf);
    assert_eq!(code, 0, "{result}");
    assert_eq!(
        result["ips"][0]["address"],
        format!("{leaked}/32"),
        "the runtime's retry gets what the first ADD allocated"
    );
    // ADD again for the live attachment: the same answer.
    let (code, again) = f.cni("h1", "ADD", &env, &conf);
    assert_eq!(code, 0, "{again}");
    assert_eq!(again, result);
    let handles = f.with_store(|s| netmod_ipam::Ipam::new(s).handles().unwrap());
    let held: usize = handles.iter().map(|h| h.addrs.len()).sum();
    assert_eq!(held, 1, "{handles:?}");
    let (code, out) = f.cni("h1", "DEL", &env, &conf);
    assert_eq!(code, 0, "{out}");
    common::lab::kill_child(sandbox);
}

#[test]
fn addresses_asked_for_by_value_wait_out_their_quarantine() {
    let s = TestStore::new();
    add_pools(&s, &[("10.62.0.0/16", 600)]);
    let reserve = |uid: &str, addr: &str| {
        json!({"command":"reserve","args":{"hostname":"h1","uid":uid,"ipv4_addrs":[addr]}})
            .to_string()
            .into_bytes()
    };
    assert_eq!(s.mesos(&reserve("old", "10.62.0.9")).0, 0);
    assert_eq!(
        s.mesos(br#"{"command":"release","args":{"uid":"old"}}"#).0,
        0
    );
    // reserve by value: refused, saying until when.
    let (code, reply) = s.mesos(&reserve("new", "10.62.0.9"));
    assert_eq!(code, 1, "{reply}");
    let msg = reply["error"].as_str().unwrap();
    assert!(
        msg.contains("10.62.0.9") && msg.contains("quarantined until ") && msg.contains("UTC"),
        "{msg}"
    );
    // The Calico label on allocate is by value too.
    let labelled = json!({"command":"allocate","args":{"hostname":"h1","num_ipv4":1,"num_ipv6":0,
        "uid":"new","labels":[{"key":"ipv4_addrs","value":"['10.62.0.9']"}]}});
    let (code, reply) = s.mesos(labelled.to_string().as_bytes());
    assert_eq!(code, 1, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("quarantined"),
        "{reply}"
    );
    assert_eq!(used(&s), 0, "nothing held");
    // The operator's command refuses too, unless told to ignore the quarantine.
    let out = s.netmod(&[
        "ipam",
        "reserve",
        "--ip",
        "10.62.0.9",
        "--handle",
        "ops",
        "--hostname",
        "h1",
    ]);
    refused(
        &out,
        &["10.62.0.9", "quarantined until", "--ignore-quarantine"],
        "ipam reserve",
    );
    assert_eq!(used(&s), 0);
    let out = s.netmod(&[
        "ipam",
        "reserve",
        "--ip",
        "10.62.0.9",
        "--handle",
        "ops",
        "--hostname",
        "h1",
        "--ignore-quarantine",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "reserved 10.62.0.9 for ops");
    assert_eq!(used(&s), 1);
    let store = s.open();
    let ipam = netmod_ipam::Ipam::new(&store);
    assert_eq!(
        ipam.holder(&"10.62.0.9".parse().unwrap())
            .unwrap()
            .as_deref(),
        Some("ops")
    );
}

#[test]
fn a_release_before_cleanup_quarantines_from_the_cleanup() {
    // net-modules sends `release` and then `cleanup`: the quarantine must
    // wait for the hosts to apply the endpoint's removal, which comes after.
    require_lab();
    let mut f = Fabric::new(1, "10.135.0.0/16");
    let start = f.with_store(|s| s.revision().unwrap());
    let addr: std::net::IpAddr = f.launch("h1", "victim", &["web"]).addr.parse().unwrap();
    f.stop("victim");
    let (removed_at, release) = f.with_store(move |s| {
        let removed_at = s
            .changes("endpoints/", start, std::time::Duration::ZERO)
            .unwrap()
            .iter()
            .filter(|e| matches!(e, netmod_store::Event::Delete { .. }))
            .map(|e| e.revision())
            .max()
            .expect("the endpoint record was deleted");
        let blocks = netmod_ipam::Ipam::new(s).blocks().unwrap();
        let block = blocks.iter().find(|b| b.cidr.contains(&addr)).unwrap();
        let ord = netmod_ipam::ordinal(&block.cidr, &addr);
        (removed_at, block.released.get(&ord).cloned())
    });
    let release = release.expect("the released address is in quarantine");
    // The same transaction deletes the record and restarts the quarantine:
    // a host that applied that revision has forgotten the endpoint.
    assert!(
        release.revision.unwrap() >= removed_at,
        "quarantine from revision {:?}, but the endpoint left at {removed_at}",
        release.revision
    );
    assert_eq!(release.confirmed_ms, None);
}
