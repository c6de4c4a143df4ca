//! `netmod policy apply/list/get/delete` through the binary against real
//! SQLite stores, and labels arriving through the CNI door.

mod common;
use common::TestStore;
use netmod_calico::parse_policies;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Output, Stdio};

/// Calico's documentation example, unchanged (shared/reference/calico-policy.md),
/// in examples/calico/ (a comment header, then the example).
const CALICO_EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/calico/allow-tcp-6379.yaml"
));

/// A second, valid policy, to show that a bad file stores nothing of itself.
const FRESH: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: fresh-one
spec:
  order: 10
  selector: has(netgroup.netmod.io/web)
  ingress:
    - action: Allow
      protocol: UDP
      destination:
        ports: [53, \"8000:8080\"]
";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn write(store: &TestStore, name: &str, text: &str) -> String {
    let path = store.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `netmod ARGS` with `input` on stdin.
fn with_stdin(store: &TestStore, args: &[&str], input: &str) -> Output {
    let mut child = store
        .cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn calicos_example_applies_lists_gets_and_deletes() {
    let s = TestStore::new();
    let file = write(&s, "example.yaml", CALICO_EXAMPLE);
    let out = ok(s.netmod(&["policy", "apply", "-f", &file]));
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["allow-tcp-6379", "created"])),
        "{out}"
    );
    // The same file again: unchanged, and the store is byte-identical.
    let before = s.dump();
    assert_eq!(
        before
            .iter()
            .filter(|(k, _)| k.starts_with("policies/"))
            .count(),
        1
    );
    let out = ok(s.netmod(&["-o", "json", "policy", "apply", "-f", &file]));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!([{"name": "allow-tcp-6379", "result": "unchanged"}])
    );
    assert_eq!(s.dump(), before, "applying the same file changed the store");

    // list: the table and Calico's list form.
    let out = ok(s.netmod(&["policy", "list"]));
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ORDER",
            "SELECTOR",
            "TYPES",
            "INGRESS RULES",
            "EGRESS RULES"
        ]
    );
    let row = lines.next().unwrap();
    for cell in ["allow-tcp-6379", "role == 'database'", "Ingress,Egress"] {
        assert!(row.contains(cell), "{cell} missing from {row}");
    }
    let counts: Vec<&str> = row.split_whitespace().rev().take(2).collect();
    assert_eq!(counts, ["1", "1"], "{row}");
    assert_eq!(row.split_whitespace().nth(1), Some("-"), "no order: {row}");
    let list: Value =
        serde_json::from_str(&ok(s.netmod(&["policy", "list", "-o", "json"]))).unwrap();
    assert_eq!(list["kind"], "GlobalNetworkPolicyList");
    assert_eq!(list["items"][0]["metadata"]["name"], "allow-tcp-6379");
    let yaml_list = ok(s.netmod(&["policy", "list", "-o", "yaml"]));
    assert_eq!(
        parse_policies(&yaml_list).unwrap(),
        parse_policies(CALICO_EXAMPLE).unwrap()
    );

    // get: YAML by default and with -o yaml, JSON with -o json; each parses
    // back to the same policy.
    let original = parse_policies(CALICO_EXAMPLE).unwrap();
    let default = ok(s.netmod(&["policy", "get", "allow-tcp-6379"]));
    let yaml = ok(s.netmod(&["policy", "get", "allow-tcp-6379", "-o", "yaml"]));
    assert_eq!(default, yaml);
    assert!(yaml.contains("kind: GlobalNetworkPolicy"), "{yaml}");
    assert_eq!(parse_policies(&yaml).unwrap(), original);
    let js = ok(s.netmod(&["-o", "json", "policy", "get", "allow-tcp-6379"]));
    assert_eq!(
        serde_json::from_str::<Value>(&js).unwrap()["spec"]["ingress"][0]["destination"]["ports"],
        json!([6379])
    );
    assert_eq!(parse_policies(&js).unwrap(), original);
    // What `get` prints applies back as unchanged (from stdin).
    let out = with_stdin(&s, &["policy", "apply", "-f", "-"], &yaml);
    assert!(ok(out).contains("unchanged"));
    assert_eq!(s.dump(), before);

    // A changed policy is updated; a new one in the same file is created.
    let changed = format!("{}---\n{FRESH}", CALICO_EXAMPLE.replace("- 6379", "- 6380"));
    let out = ok(with_stdin(
        &s,
        &["-o", "json", "policy", "apply", "-f", "-"],
        &changed,
    ));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!([{"name": "allow-tcp-6379", "result": "updated"},
               {"name": "fresh-one", "result": "created"}])
    );
    // Evaluation order: fresh-one (order 10) first.
    let out = ok(s.netmod(&["policy", "list"]));
    let names: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(names, ["fresh-one", "allow-tcp-6379"]);
    assert!(out.contains("has(netgroup.netmod.io/web)"), "{out}");

    // delete, then the policy is gone for get, delete and list.
    let out = ok(s.netmod(&["policy", "delete", "allow-tcp-6379"]));
    assert!(out.contains("deleted"), "{out}");
    let out = s.netmod(&["policy", "get", "allow-tcp-6379"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no policy named allow-tcp-6379"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    let before = s.dump();
    let out = s.netmod(&["policy", "delete", "allow-tcp-6379"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing to delete"),
        "{}",
        stderr(&out)
    );
    let out = ok(s.netmod(&["policy", "delete", "allow-tcp-6379", "--ignore-not-found"]));
    assert!(out.contains("nothing to delete"), "{out}");
    assert_eq!(s.dump(), before);
    let list: Value =
        serde_json::from_str(&ok(s.netmod(&["-o", "json", "policy", "list"]))).unwrap();
    let items: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["fresh-one"]);
    let out = ok(s.netmod(&["-o", "json", "policy", "delete", "fresh-one"]));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"name": "fresh-one", "deleted": true})
    );
    let out = ok(s.netmod(&["policy", "list"]));
    assert_eq!(out.lines().count(), 1, "only the header: {out}");
}

#[test]
fn bad_policy_files_store_nothing_and_say_where() {
    let s = TestStore::new();
    let file = write(&s, "example.yaml", CALICO_EXAMPLE);
    ok(s.netmod(&["policy", "apply", "-f", &file]));
    let with_ingress_rule = |extra: &str| {
        CALICO_EXAMPLE.replace(
            "      destination:\n",
            &format!("{extra}      destination:\n"),
        )
    };
    // (what, file text, words the error must contain)
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "serviceAccounts",
            CALICO_EXAMPLE.replace(
                "        selector: role == 'frontend'\n",
                "        selector: role == 'frontend'\n        serviceAccounts:\n          names: [api]\n",
            ),
            vec!["document 2 (allow-tcp-6379)", "spec.ingress[0].source.serviceAccounts", "not supported"],
        ),
        (
            "http",
            with_ingress_rule("      http:\n        methods: [GET]\n"),
            vec!["document 2 (allow-tcp-6379)", "spec.ingress[0].http", "not supported", "HTTP"],
        ),
        (
            "bad selector",
            CALICO_EXAMPLE.replace("selector: role == 'database'", "selector: role == 'database"),
            vec!["document 2 (allow-tcp-6379)", "spec.selector", "bad selector", "at byte"],
        ),
        (
            "bad port range",
            CALICO_EXAMPLE.replace("- 6379", "- \"7000:6000\""),
            vec!["document 2 (allow-tcp-6379)", "spec.ingress[0].destination.ports[0]", "7000 is greater than 6000"],
        ),
        (
            "port out of range",
            CALICO_EXAMPLE.replace("- 6379", "- 70000"),
            vec!["spec.ingress[0].destination.ports[0]", "70000"],
        ),
        (
            "wrong apiVersion",
            CALICO_EXAMPLE.replace("projectcalico.org/v3", "projectcalico.org/v2"),
            vec!["document 2 (allow-tcp-6379)", "apiVersion", "projectcalico.org/v2"],
        ),
        (
            "wrong kind",
            CALICO_EXAMPLE.replace("kind: GlobalNetworkPolicy", "kind: NetworkPolicy"),
            vec!["document 2 (allow-tcp-6379)", "kind", "NetworkPolicy"],
        ),
        (
            "duplicate names",
            format!("{CALICO_EXAMPLE}---\n{CALICO_EXAMPLE}"),
            vec!["document 3 (allow-tcp-6379)", "metadata.name", "document 2"],
        ),
        ("not YAML", "spec: [unclosed\n".to_string(), vec!["not valid YAML"]),
        ("empty", "---\n".to_string(), vec!["holds no policy"]),
    ];
    for (what, bad, words) in cases {
        // The valid `fresh-one` first, then the bad document: neither is stored.
        let text = if matches!(what, "not YAML" | "empty") {
            bad
        } else {
            format!("{FRESH}---\n{bad}")
        };
        let path = write(&s, "bad.yaml", &text);
        let before = s.dump();
        for fmt in ["table", "json"] {
            let out = s.netmod(&["-o", fmt, "policy", "apply", "-f", &path]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{what}: {err}");
            assert!(stdout(&out).is_empty(), "{what}: {}", stdout(&out));
            let first = err.lines().next().unwrap_or_default();
            assert!(
                first.starts_with(&format!("netmod: error: {path}: ")),
                "{what}: {err}"
            );
            assert!(first.ends_with("nothing was applied"), "{what}: {err}");
            for w in &words {
                assert!(err.contains(w), "{what}: {w:?} missing from {err}");
            }
            assert_eq!(s.dump(), before, "{what}: the store changed");
        }
        let out = with_stdin(&s, &["policy", "apply", "-f", "-"], &text);
        assert_eq!(out.status.code(), Some(1), "{what}");
        assert!(
            stderr(&out).starts_with("netmod: error: stdin: "),
            "{what}: {}",
            stderr(&out)
        );
        assert_eq!(s.dump(), before, "{what}: the store changed (stdin)");
    }
    // The selector error shows the selector and a caret under the position.
    let text = CALICO_EXAMPLE.replace("role == 'frontend'", "role == 'frontend' &&");
    let out = with_stdin(&s, &["policy", "apply", "-f", "-"], &text);
    let err = stderr(&out);
    assert!(err.contains("spec.ingress[0].source.selector"), "{err}");
    assert!(
        err.contains("role == 'frontend' &&") && err.contains('^'),
        "{err}"
    );
    // An unreadable file: an error that names it.
    let out = s.netmod(&["policy", "apply", "-f", "/nonexistent/policy.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/policy.yaml"),
        "{}",
        stderr(&out)
    );
    // Bad names for get and delete, and -o yaml where it means nothing.
    for args in [
        &["policy", "get", "Not_A_Name"][..],
        &["policy", "delete", "a/b"],
        &["-o", "yaml", "endpoints"],
        &["-o", "yaml", "pool", "list"],
    ] {
        let out = s.netmod(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).starts_with("netmod: error: "),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn read_only_policy_commands_never_create_a_store() {
    let s = TestStore::new();
    for args in [
        &["policy", "list"][..],
        &["policy", "get", "allow-tcp-6379"],
        &["policy", "delete", "allow-tcp-6379"],
    ] {
        let out = s.netmod(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!s.path.exists(), "{args:?} created the store");
    }
    // Nor does an output format a command does not have.
    for args in [
        &["-o", "yaml", "pool", "add", "10.99.0.0/24"][..],
        &["-o", "yaml", "policy", "apply", "-f", "-"],
    ] {
        let out = s.netmod(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains("-o yaml"), "{}", stderr(&out));
        assert!(!s.path.exists(), "{args:?} created the store");
    }
    // A refused file does not create it either; an accepted one does.
    let bad = write(&s, "bad.yaml", &CALICO_EXAMPLE.replace("Allow", "Permit"));
    let out = s.netmod(&["policy", "apply", "-f", &bad]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!s.path.exists(), "a refused apply created the store");
    let good = write(&s, "good.yaml", CALICO_EXAMPLE);
    ok(s.netmod(&["policy", "apply", "-f", &good]));
    assert!(s.path.exists());
}

/// Labels through the CNI door: `args.labels` (a list), `args.cni.labels`,
/// `runtimeConfig.labels` (an object) and Mesos's NetworkInfo labels, merged
/// into the endpoint's labels, which `netmod endpoints -o json` shows.
#[test]
fn cni_labels_reach_the_endpoint_record() {
    use common::lab::*;
    require_lab();
    let f = Fabric::new(1, "10.141.0.0/16");
    let sb = f.sandbox("h1");
    let netns = format!("/proc/{}/ns/net", sb.id());
    let env = [
        ("CNI_CONTAINERID", "labelled"),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let conf = json!({
        "cniVersion": "1.0.0", "name": "nmnet", "type": "netmod", "hostname": "h1",
        "netgroups": ["web"],
        "args": {
            "org.apache.mesos": {"network_info": {"name": "nmnet",
                "labels": {"labels": [{"key": "app", "value": "from-mesos"}, {"key": "task", "value": "t1"}]}}},
            "labels": [{"key": "app", "value": "shop"}, {"key": "tier", "value": "front"}],
            "cni": {"labels": [{"key": "team", "value": "blue"}]}
        },
        "runtimeConfig": {"labels": {"role": "frontend", "tier": "edge", "cni.network": "spoof"}}
    });
    // A reserved netgroup label is refused, and nothing is left behind.
    let before = f.store.dump();
    let mut bad = conf.clone();
    bad["runtimeConfig"]["labels"]["netgroup.netmod.io/db"] = json!("");
    let (code, v) = f.cni("h1", "ADD", &env, &bad);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["code"], 7, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("reserved"), "{v}");
    assert_eq!(f.store.dump(), before);

    let (code, v) = f.cni("h1", "ADD", &env, &conf);
    assert_eq!(code, 0, "{v}");
    let out = f.store.netmod(&["-o", "json", "endpoints"]);
    let eps: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eps.as_array().unwrap().len(), 1, "{eps}");
    assert_eq!(
        eps[0]["labels"],
        json!({
            "app": "shop", "cni.network": "nmnet", "role": "frontend",
            "task": "t1", "team": "blue", "tier": "edge"
        }),
        "{eps}"
    );
    assert_eq!(eps[0]["netgroups"], json!(["web"]));
    let (code, v) = f.cni("h1", "DEL", &env, &conf);
    assert_eq!(code, 0, "{v}");
    kill_child(sb);
}
