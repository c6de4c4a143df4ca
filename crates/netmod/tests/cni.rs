//! `netmod` as a CNI plugin, invoked exactly as runtimes invoke it.

mod common;
use common::lab::*;
use serde_json::{json, Value};
use std::time::Duration;

fn conf(version: &str, extra: Value) -> Value {
    let mut c = json!({"cniVersion": version, "name": "nmnet", "type": "netmod", "hostname": "h1"});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

#[test]
fn version_and_bad_input_get_cni_errors_and_change_nothing() {
    require_lab();
    let f = Fabric::new(1, "10.131.0.0/16");
    let sandbox = f.sandbox("h1");
    let netns = format!("/proc/{}/ns/net", sandbox.id());
    let (code, v) = f.cni("h1", "VERSION", &[], &json!({"cniVersion": "1.0.0"}));
    assert_eq!(code, 0);
    assert_eq!(
        v["supportedVersions"],
        json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let before = f.store.dump_records();
    let links = f.ns_json("h1", "link");
    let env = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    // (what, environment, configuration, expected CNI error code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Value, u64);
    let cases: Vec<Case> = vec![
        ("malformed JSON", env.to_vec(), json!("{not json"), 6),
        (
            "no cniVersion",
            env.to_vec(),
            json!({"name": "x", "type": "netmod"}),
            7,
        ),
        (
            "unsupported version",
            env.to_vec(),
            conf("9.9.9", json!({})),
            1,
        ),
        (
            "wrong type",
            env.to_vec(),
            conf("1.0.0", json!({"netgroups": "web"})),
            7,
        ),
        (
            "bad netgroup",
            env.to_vec(),
            conf("1.0.0", json!({"netgroups": ["no spaces"]})),
            7,
        ),
        (
            "bad pool",
            env.to_vec(),
            conf("1.0.0", json!({"pool": "10.0.0.0/99"})),
            7,
        ),
        (
            "no container id",
            vec![("CNI_NETNS", netns.as_str()), ("CNI_IFNAME", "eth0")],
            conf("1.0.0", json!({})),
            4,
        ),
        (
            "no ifname",
            vec![("CNI_CONTAINERID", "c1"), ("CNI_NETNS", netns.as_str())],
            conf("1.0.0", json!({})),
            4,
        ),
        (
            "missing netns",
            vec![
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/var/run/netns/nope"),
                ("CNI_IFNAME", "eth0"),
            ],
            conf("1.0.0", json!({})),
            3,
        ),
        (
            "pool overlapping another",
            env.to_vec(),
            conf("1.0.0", json!({"pool": "10.131.0.0/30"})),
            100,
        ),
    ];
    for (what, env, c, code) in cases {
        let body = if c.is_string() { json!(c) } else { c.clone() };
        let (status, v) = if let Some(s) = body.as_str() {
            raw(&f, &env, s)
        } else {
            f.cni("h1", "ADD", &env, &body)
        };
        assert_eq!(status, 1, "{what}: {v}");
        assert_eq!(v["code"], json!(code), "{what}: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| m.len() > 8),
            "{what}: {v}"
        );
        assert!(v.get("cniVersion").is_some(), "{what}");
        assert_eq!(f.store.dump_records(), before, "{what}: store changed");
        assert_eq!(f.ns_json("h1", "link"), links, "{what}: links changed");
    }
    // An exhausted pool: a clear error, and nothing held.
    assert!(f
        .store
        .netmod(&["pool", "add", "10.140.0.0/30", "--block-size", "30"])
        .status
        .success());
    let (code, _) = f.mesos(
        "h1",
        &json!({"command":"reserve","args":{"hostname":"h1","uid":"x","ipv4_addrs":["10.140.0.1","10.140.0.2"]}}),
    );
    assert_eq!(code, 0);
    let before = f.store.dump_records();
    let (status, v) = f.cni(
        "h1",
        "ADD",
        &env,
        &conf("1.0.0", json!({"pool": "10.140.0.0/30"})),
    );
    assert_eq!(status, 1);
    assert_eq!(v["code"], json!(100));
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("no free IPv4 address in pool(s) 10.140.0.0/30"),
        "{v}"
    );
    assert_eq!(f.store.dump_records(), before);
    assert_eq!(f.ns_json("h1", "link"), links);
    kill_child(sandbox);
}

fn raw(f: &Fabric, env: &[(&str, &str)], body: &str) -> (i32, Value) {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &f.host("h1").ns, common::NETMOD])
        .env("CNI_COMMAND", "ADD")
        .env("NETMOD_STORE", &f.store.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
    )
}

/// Mesos ≥ 1.0's network/cni isolator: no CNI_ARGS, the namespace as a bind
/// mount, NetworkInfo injected into args, cniVersion 0.2.0, then DEL.
#[test]
fn mesos_calling_convention() {
    require_lab();
    let f = Fabric::new(1, "10.132.0.0/16");
    let dir = tempfile::tempdir().unwrap();
    let mut pids = Vec::new();
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    let mut sandboxes = Vec::new();
    for (i, group) in ["g1", "g1", "g2"].iter().enumerate() {
        let sb = f.sandbox("h1");
        let id = format!("mesos-{i}");
        let ns = dir.path().join(format!("{id}.ns"));
        std::fs::write(&ns, "").unwrap();
        must(&format!(
            "mount --bind /proc/{}/ns/net {}",
            sb.id(),
            ns.display()
        ));
        let c = conf(
            "0.2.0",
            json!({"args": {"org.apache.mesos": {"network_info": {"name": "nmnet", "groups": [group],
                "labels": {"labels": [{"key": "app", "value": format!("probe-{i}")}]}}}}}),
        );
        let env = [
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", ns.to_str().unwrap()),
            ("CNI_IFNAME", "eth0"),
        ];
        let (code, v) = f.cni("h1", "ADD", &env, &c);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["cniVersion"], "0.2.0");
        let ip = v["ip4"]["ip"].as_str().unwrap();
        assert!(ip.ends_with("/32"), "{v}");
        assert_eq!(v["ip4"]["gateway"], "169.254.1.1");
        assert!(v.get("ips").is_none(), "0.2.0 has no ips: {v}");
        let addr = ip.trim_end_matches("/32").to_string();
        servers.push(serve_in(sb.id(), &addr));
        pids.push(sb.id());
        addrs.push(addr);
        sandboxes.push((sb, ns, c, id));
    }
    // Policy from network_info.groups: 0 and 1 share g1; 2 is alone in g2.
    wait_for(Duration::from_secs(10), "0 -> 1", || {
        connects_from(pids[0], &addrs[1], 0.5)
    });
    assert!(connects_from(pids[1], &addrs[0], 1.0));
    assert!(!connects_from(pids[0], &addrs[2], 0.7));
    assert!(!connects_from(pids[2], &addrs[1], 0.7));
    let out = f.store.netmod(&["-o", "json", "endpoints"]);
    let eps: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        eps[0]["labels"]["app"], "probe-0",
        "labels from network_info"
    );
    // DEL with the same config, then the bind mount goes away, as Mesos does.
    for (sb, ns, c, id) in sandboxes {
        let env = [
            ("CNI_CONTAINERID", id.as_str()),
            ("CNI_NETNS", ns.to_str().unwrap()),
            ("CNI_IFNAME", "eth0"),
        ];
        let (code, v) = f.cni("h1", "DEL", &env, &c);
        assert_eq!(code, 0, "{v}");
        must(&format!("umount {}", ns.display()));
        kill_child(sb);
    }
    for s in servers {
        kill_child(s);
    }
    let out = f.store.netmod(&["-o", "json", "endpoints"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!([])
    );
}

#[test]
fn add_twice_del_twice_del_without_add_check_and_gc() {
    require_lab();
    let f = Fabric::new(1, "10.133.0.0/16");
    let sb = f.sandbox("h1");
    let netns = format!("/proc/{}/ns/net", sb.id());
    let env = [
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", "IgnoreUnknown=1;NETMOD_NETGROUPS=web,db"),
    ];
    let c = conf(
        "1.0.0",
        json!({"netgroups": ["public"], "unknownKey": {"ignored": true}}),
    );
    let (code, first) = f.cni("h1", "ADD", &env, &c);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["cniVersion"], "1.0.0");
    assert_eq!(first["interfaces"][1]["name"], "eth0");
    assert_eq!(first["interfaces"][1]["sandbox"], netns.as_str());
    assert!(first["ips"][0].get("version").is_none());
    let (code, again) = f.cni("h1", "ADD", &env, &c);
    assert_eq!(code, 0);
    assert_eq!(again, first, "ADD twice gives the same attachment");
    let out = f.store.netmod(&["-o", "json", "endpoints"]);
    let eps: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 1);
    assert_eq!(
        eps[0]["netgroups"],
        json!(["public", "web", "db"]),
        "config and CNI_ARGS"
    );
    // CHECK agrees, then notices a missing route and says which.
    let (code, v) = f.cni("h1", "CHECK", &env, &c);
    assert_eq!(code, 0, "{v}");
    let addr = first["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .to_string();
    must(&format!("ip -n {} route del {addr}/32", f.host("h1").ns));
    let (code, v) = f.cni("h1", "CHECK", &env, &c);
    assert_eq!(code, 1);
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains(&format!("host route {addr}")),
        "{v}"
    );
    // DEL twice, and DEL of something never added: all succeed.
    for _ in 0..2 {
        let (code, v) = f.cni("h1", "DEL", &env, &c);
        assert_eq!(code, 0, "{v}");
    }
    let never = [("CNI_CONTAINERID", "never"), ("CNI_IFNAME", "eth0")];
    let (code, v) = f.cni("h1", "DEL", &never, &c);
    assert_eq!(code, 0, "{v}");
    // GC: two attachments, one of them no longer valid.
    let sb2 = f.sandbox("h1");
    let netns2 = format!("/proc/{}/ns/net", sb2.id());
    for (id, ns) in [("keep", netns.as_str()), ("drop", netns2.as_str())] {
        let env = [
            ("CNI_CONTAINERID", id),
            ("CNI_NETNS", ns),
            ("CNI_IFNAME", "eth0"),
        ];
        assert_eq!(f.cni("h1", "ADD", &env, &c).0, 0);
    }
    let gc = conf(
        "1.1.0",
        json!({"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}),
    );
    let (code, v) = f.cni("h1", "GC", &[], &gc);
    assert_eq!(code, 0, "{v}");
    let out = f.store.netmod(&["-o", "json", "endpoints"]);
    let eps: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 1);
    assert_eq!(eps[0]["container_id"], "keep");
    let out = f.store.netmod(&["-o", "json", "ipam", "show"]);
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        usage["pools"][0]["used"],
        json!(1),
        "drop's address released"
    );
    let (code, _) = f.cni("h1", "STATUS", &[], &c);
    assert_eq!(code, 0);
    kill_child(sb);
    kill_child(sb2);
}
