//! The net-modules IPAM commands through the real `netmod mesos` process.

mod common;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn with_pool() -> TestStore {
    let s = TestStore::new();
    assert!(s
        .netmod(&["pool", "add", "192.168.0.0/16"])
        .status
        .success());
    assert!(s.netmod(&["pool", "add", "fd00:77::/64"]).status.success());
    s
}

fn allocate(host: &str, uid: &str, v4: u32, v6: u32) -> Vec<u8> {
    json!({"command": "allocate", "args": {"hostname": host, "num_ipv4": v4, "num_ipv6": v6, "uid": uid}})
        .to_string()
        .into_bytes()
}

#[test]
fn every_bad_request_gets_a_clear_error_and_changes_nothing() {
    let s = with_pool();
    // Something already held, so "unchanged" means more than "empty".
    let (code, _) = s.mesos(&allocate("h", "held", 1, 1));
    assert_eq!(code, 0);
    let before = s.dump();
    let garbage: Vec<u8> = (0..(1 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{bad json".to_vec(),
        garbage,
        br#"{"args": {}}"#.to_vec(),
        br#"{"command": "frobnicate", "args": {}}"#.to_vec(),
        br#"{"command": "allocate"}"#.to_vec(),
        br#"{"command":"allocate","args":{"num_ipv4":1,"num_ipv6":0,"uid":"u"}}"#.to_vec(),
        br#"{"command":"allocate","args":{"hostname":"h","num_ipv6":0,"uid":"u"}}"#.to_vec(),
        br#"{"command":"allocate","args":{"hostname":"h","num_ipv4":1,"uid":"u"}}"#.to_vec(),
        br#"{"command":"allocate","args":{"hostname":"h","num_ipv4":1,"num_ipv6":0}}"#.to_vec(),
        br#"{"command":"allocate","args":{"hostname":"h","num_ipv4":1.5,"num_ipv6":0,"uid":"u"}}"#.to_vec(),
        br#"{"command":"allocate","args":{"hostname":"h","num_ipv4":-2,"num_ipv6":0,"uid":"u"}}"#.to_vec(),
        br#"{"command":"allocate","args":{"hostname":"h","num_ipv4":70000,"num_ipv6":0,"uid":"u"}}"#.to_vec(),
        br#"{"command":"allocate","args":{"hostname":"h","num_ipv4":1,"num_ipv6":0,"uid":"u","labels":[{"key":"ipv4_addrs","value":"['10.0.0.1']"}]}}"#.to_vec(),
        br#"{"command":"reserve","args":{"uid":"u","ipv4_addrs":["192.168.1.1"]}}"#.to_vec(),
        br#"{"command":"reserve","args":{"hostname":"h","ipv4_addrs":["192.168.1.1"]}}"#.to_vec(),
        br#"{"command":"reserve","args":{"hostname":"h","uid":"u","ipv4_addrs":["192.168.1.1","1.1.1.1.1"]}}"#.to_vec(),
        br#"{"command":"reserve","args":{"hostname":"h","uid":"u","ipv4_addrs":["192.168.1.1","fe80::fe80::"]}}"#.to_vec(),
        br#"{"command":"reserve","args":{"hostname":"h","uid":"u","ipv4_addrs":["fd00:77::5"]}}"#.to_vec(),
        br#"{"command":"release","args":{}}"#.to_vec(),
        br#"{"command":"release","args":{"uid":"held","ips":["192.168.0.1"]}}"#.to_vec(),
        br#"{"command":"release","args":{"ips":["1.1.1.1.1"]}}"#.to_vec(),
        br#"{"command":"release","args":{"uid":12}}"#.to_vec(),
        br#"{"command":"release","args":{"ips":["10.9.9.9"]}}"#.to_vec(),
        br#"{"command":"isolate","args":{"hostname":"h","pid":1,"ipv4_addrs":["192.168.0.9"]}}"#.to_vec(),
        br#"{"command":"isolate","args":{"container_id":"c","pid":1,"ipv4_addrs":["192.168.0.9"]}}"#.to_vec(),
        br#"{"command":"isolate","args":{"hostname":"h","container_id":"c","ipv4_addrs":["192.168.0.9"]}}"#.to_vec(),
    ];
    for case in &cases {
        let (code, reply) = s.mesos(case);
        let shown = String::from_utf8_lossy(&case[..case.len().min(120)]).into_owned();
        assert_eq!(code, 1, "{shown}: exit status");
        let msg = reply["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{shown}: no error string in {reply}"));
        assert!(
            msg.len() > 10 && msg.len() < 400,
            "{shown}: unclear error {msg:?}"
        );
        assert_eq!(
            reply.as_object().unwrap().len(),
            1,
            "{shown}: only the error"
        );
        assert_eq!(s.dump(), before, "{shown}: the store changed");
    }
}

#[test]
fn allocate_reserve_release_round_trip() {
    let s = with_pool();
    let (code, r) = s.mesos(&allocate("slave-1", "task-1", 2, 1));
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["error"], Value::Null);
    assert_eq!(r["ipv4"].as_array().unwrap().len(), 2);
    assert_eq!(r["ipv6"].as_array().unwrap().len(), 1);
    // Static address through the Calico label convention, in both label forms.
    let req = json!({"command":"allocate","args":{"hostname":"slave-1","num_ipv4":1,"num_ipv6":0,
        "uid":"collect","netgroups":["star-1","public"],
        "labels":[{"key":"ipv4_addrs","value":"['192.168.255.253']"}]}});
    let (code, r) = s.mesos(req.to_string().as_bytes());
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["ipv4"], json!(["192.168.255.253"]));
    // Reserve the same address for someone else: refused, naming the address.
    let req = json!({"command":"reserve","args":{"hostname":"slave-2","uid":"other",
        "ipv4_addrs":["192.168.255.252","192.168.255.253"]}});
    let (code, r) = s.mesos(req.to_string().as_bytes());
    assert_eq!(code, 1);
    assert!(
        r["error"].as_str().unwrap().contains("192.168.255.253"),
        "{r}"
    );
    let req = json!({"command":"reserve","args":{"hostname":"slave-2","uid":"other","ipv4_addrs":["192.168.255.252"]}});
    assert_eq!(s.mesos(req.to_string().as_bytes()).0, 0);
    // Release by uid and by address.
    let (code, _) = s.mesos(br#"{"command":"release","args":{"uid":"task-1"}}"#);
    assert_eq!(code, 0);
    // Again (cleanup may already have released it): still fine, nothing held.
    let (code, r) = s.mesos(br#"{"command":"release","args":{"uid":"task-1"}}"#);
    assert_eq!(code, 0, "{r}");
    let (code, _) =
        s.mesos(br#"{"command":"release","args":{"ips":["192.168.255.252","192.168.255.253"]}}"#);
    assert_eq!(code, 0);
    let out = s.netmod(&["-o", "json", "ipam", "show"]);
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    let used: u64 = usage["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["used"].as_u64().unwrap())
        .sum();
    let quarantined: u64 = usage["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["quarantined"].as_u64().unwrap())
        .sum();
    assert_eq!(used, 0);
    assert_eq!(quarantined, 5);
}

fn addrs_of(reply: &Value) -> Vec<String> {
    ["ipv4", "ipv6"]
        .iter()
        .flat_map(|f| reply[f].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sixty_four_processes_at_once_never_share_an_address() {
    let s = with_pool();
    let mut children: Vec<_> = (0..64)
        .map(|i| {
            s.spawn_mesos(&allocate(
                &format!("host-{}", i % 4),
                &format!("c{i}"),
                1,
                1,
            ))
        })
        .collect();
    let mut seen = BTreeSet::new();
    for child in &mut children {
        let out = wait(child);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["error"], Value::Null);
        for a in addrs_of(&reply) {
            assert!(seen.insert(a.clone()), "{a} handed out twice");
        }
    }
    assert_eq!(seen.len(), 128);
    let ipam_store = s.open();
    assert!(netmod_ipam::Ipam::new(&ipam_store)
        .check_consistency()
        .unwrap()
        .is_empty());
}

#[test]
fn overlapping_reserves_have_exactly_one_winner_per_address() {
    let s = with_pool();
    // 32 processes, each reserving a window of 4 addresses out of 35: windows overlap.
    let mut children: Vec<_> = (0..32)
        .map(|i| {
            let addrs: Vec<String> = (i..i + 4).map(|k| format!("192.168.7.{}", k + 1)).collect();
            let req = json!({"command":"reserve","args":{"hostname":format!("host-{}", i % 4),"uid":format!("r{i}"),"ipv4_addrs":addrs}});
            (addrs, s.spawn_mesos(req.to_string().as_bytes()))
        })
        .collect();
    let mut owner = std::collections::BTreeMap::new();
    let mut winners = 0;
    for (i, (addrs, child)) in children.iter_mut().enumerate() {
        let out = wait(child);
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        if out.status.success() {
            winners += 1;
            for a in addrs.iter() {
                assert!(owner.insert(a.clone(), i).is_none(), "{a} won twice");
            }
        } else {
            assert!(
                reply["error"].as_str().unwrap().contains("already in use"),
                "{reply}"
            );
        }
    }
    assert!(winners >= 1);
    // What the store says agrees with the winners, address by address.
    let store = s.open();
    let ipam = netmod_ipam::Ipam::new(&store);
    let handles = ipam.handles().unwrap();
    let held: usize = handles.iter().map(|h| h.addrs.len()).sum();
    assert_eq!(held, owner.len(), "losers hold nothing");
    for h in handles {
        let i: usize = h.handle[1..].parse().unwrap();
        for a in h.addrs {
            assert_eq!(owner[&a.to_string()], i);
        }
    }
}

#[test]
fn kill_nine_never_leaves_the_store_half_written() {
    let s = with_pool();
    let trials = 220;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for i in 0..trials {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay_us = rng % 6000;
        let mut child = s.spawn_mesos(&allocate(
            &format!("host-{}", i % 3),
            &format!("k{i}"),
            40,
            8,
        ));
        std::thread::sleep(std::time::Duration::from_micros(delay_us));
        // SAFETY: kill(2) on a child we spawned and have not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }
    let store = s.open();
    let ipam = netmod_ipam::Ipam::new(&store);
    let problems = ipam.check_consistency().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    for h in ipam.handles().unwrap() {
        assert_eq!(h.addrs.len(), 48, "handle {} is all or nothing", h.handle);
    }
    common::require_tools(&[("sqlite3", "sqlite3")]);
    let out = std::process::Command::new("sqlite3")
        .arg(s.path())
        .arg("PRAGMA integrity_check;")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    // And the store still works afterwards.
    assert_eq!(s.mesos(&allocate("host-0", "after", 1, 0)).0, 0);
}
