//! nftables against the real kernel, inside test namespaces, checked with
//! `nft -j` (structure, not text).

mod common;

use common::{make_host, prerequisites, TestNs};
use netmod_dataplane::{self as dp, Error, PlugSpec};
use netmod_model::nft::{
    BaseHook, ChainDef, Change, Family, HookKind, Match, Rule, Ruleset, SetDef, Verdict,
    CHAIN_FORWARD, CHAIN_FROM_ENDPOINT, CHAIN_TO_ENDPOINT,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Barrier;
use std::time::Instant;

fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

fn set_def(name: &str, family: Family, elements: &[&str]) -> SetDef {
    SetDef {
        name: name.into(),
        family,
        elements: addrs(elements),
    }
}

fn rule(matches: Vec<Match>, verdict: Verdict, comment: &str) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.into(),
    }
}

fn group_rule(set: &str, family: Family) -> Rule {
    let m = vec![
        Match::SaddrIn {
            set: set.into(),
            family,
        },
        Match::DaddrIn {
            set: set.into(),
            family,
        },
    ];
    rule(m, Verdict::Accept, &format!("netgroup {set}"))
}

/// A ruleset shaped like the one policy computes: forward dispatches to two
/// per-direction chains; netgroup sets per family.
fn sample_ruleset(web: &[&str]) -> Ruleset {
    let ct = || rule(vec![Match::CtEstablishedOrRelated], Verdict::Accept, "");
    let forward = ChainDef {
        name: CHAIN_FORWARD.into(),
        hook: Some(BaseHook {
            kind: HookKind::Forward,
            priority: 0,
            accept_by_default: true,
        }),
        rules: vec![
            rule(
                vec![Match::IifPrefix("nm".into())],
                Verdict::Jump(CHAIN_FROM_ENDPOINT.into()),
                "",
            ),
            rule(
                vec![Match::OifPrefix("nm".into())],
                Verdict::Jump(CHAIN_TO_ENDPOINT.into()),
                "",
            ),
        ],
    };
    let from = ChainDef {
        name: CHAIN_FROM_ENDPOINT.into(),
        hook: None,
        rules: vec![
            rule(
                vec![Match::SourceNotRoutedViaIif],
                Verdict::Drop,
                "anti-spoofing",
            ),
            ct(),
            rule(vec![Match::OifPrefix("nm".into())], Verdict::Return, ""),
            rule(vec![], Verdict::Accept, "to outside"),
        ],
    };
    let to = ChainDef {
        name: CHAIN_TO_ENDPOINT.into(),
        hook: None,
        rules: vec![
            ct(),
            group_rule("g_web_v4", Family::V4),
            group_rule("g_web_v6", Family::V6),
            rule(
                vec![Match::DaddrIn {
                    set: "public_v4".into(),
                    family: Family::V4,
                }],
                Verdict::Accept,
                "public",
            ),
            rule(vec![], Verdict::Drop, "default deny"),
        ],
    };
    let v4: Vec<&str> = web.iter().copied().filter(|a| !a.contains(':')).collect();
    let v6: Vec<&str> = web.iter().copied().filter(|a| a.contains(':')).collect();
    let sets = [
        set_def("g_web_v4", Family::V4, &v4),
        set_def("g_web_v6", Family::V6, &v6),
        set_def("public_v4", Family::V4, &[]),
    ];
    Ruleset {
        chains: vec![forward, from, to],
        sets: sets.into_iter().map(|s| (s.name.clone(), s)).collect(),
    }
}

/// `nft -j` output without what differs between equal tables: handles,
/// metainfo, and the (hash) order of set elements.
fn normalize(v: Value) -> Vec<Value> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                if let Some(Value::Array(elems)) = m.get_mut("elem") {
                    elems.sort_by_key(|e| e.to_string());
                }
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut items: Vec<Value> = v["nftables"].as_array().unwrap().clone();
    items.retain(|i| i.get("metainfo").is_none());
    items.iter_mut().for_each(strip);
    items
}

fn objects(ns: &TestNs, kind: &str) -> Vec<Value> {
    let items = normalize(ns.nft_json().expect("table exists"));
    items
        .into_iter()
        .filter_map(|i| i.get(kind).cloned())
        .collect()
}

fn set_elems(ns: &TestNs, name: &str) -> BTreeSet<String> {
    let set = objects(ns, "set")
        .into_iter()
        .find(|s| s["name"] == name)
        .unwrap();
    let elems = set
        .get("elem")
        .and_then(|e| e.as_array().cloned())
        .unwrap_or_default();
    elems
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn replace_all_matches_what_nft_makes_of_the_same_ruleset() {
    if !prerequisites() {
        return;
    }
    let rs = sample_ruleset(&["10.251.0.5", "10.251.0.6", "fd4e:6d74::6"]);
    let (ours, reference) = (TestNs::new(), TestNs::new());
    ours.run(|| dp::nft_replace_all(&rs)).expect("replace_all");
    let file = std::env::temp_dir().join(format!("{}.nft", reference.name));
    std::fs::write(&file, rs.to_string()).unwrap();
    let out = reference.exec(&["nft", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (a, b) = (ours.nft_json().unwrap(), reference.nft_json().unwrap());
    assert_eq!(normalize(a), normalize(b));

    // A few facts spelled out, so a shared misreading cannot hide.
    let chains = objects(&ours, "chain");
    assert_eq!(
        chains[0],
        json!({"family": "inet", "table": "netmod", "name": "forward", "type": "filter",
               "hook": "forward", "prio": 0, "policy": "accept"})
    );
    let rules = objects(&ours, "rule");
    assert_eq!(rules.len(), 11);
    assert_eq!(rules[2]["comment"], "anti-spoofing");
    assert_eq!(
        rules[2]["expr"][0]["match"]["left"],
        json!({"fib": {"result": "oif", "flags": ["saddr", "iif"]}})
    );
    assert_eq!(rules[0]["expr"][0]["match"]["right"], "nm*");
    assert_eq!(
        set_elems(&ours, "g_web_v4"),
        ["10.251.0.5", "10.251.0.6"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

/// Every match and verdict a compiled policy uses, in one chain.
fn policy_ruleset() -> Ruleset {
    let mut rs = sample_ruleset(&["10.251.0.5", "fd4e:6d74::6"]);
    let net = |s: &str, source, negate| Match::AddrInNet {
        source,
        net: s.parse().unwrap(),
        negate,
    };
    let port = |first, last, source, negate| Match::Port {
        source,
        first,
        last,
        negate,
    };
    let icmp = |family, icmp_type, code, negate| Match::Icmp {
        family,
        icmp_type,
        code,
        negate,
    };
    let tcp = Match::L4Proto {
        proto: 6,
        negate: false,
    };
    let rules = vec![
        rule(
            vec![Match::AddrNotIn {
                source: false,
                set: "g_web_v4".into(),
                family: Family::V4,
            }],
            Verdict::Return,
            "policy p: not selected",
        ),
        rule(
            vec![
                tcp.clone(),
                port(6379, 6379, false, false),
                Match::SaddrIn {
                    set: "public_v4".into(),
                    family: Family::V4,
                },
            ],
            Verdict::Accept,
            "policy p ingress[0]",
        ),
        rule(
            vec![
                Match::L4Proto {
                    proto: 17,
                    negate: true,
                },
                port(1000, 2000, false, false),
                port(5, 6, true, true),
                port(53, 53, true, true),
            ],
            Verdict::Drop,
            "ranges",
        ),
        rule(
            vec![icmp(Family::V4, 8, Some(0), false)],
            Verdict::Accept,
            "",
        ),
        rule(
            vec![icmp(Family::V4, 8, Some(3), true)],
            Verdict::Accept,
            "",
        ),
        rule(vec![icmp(Family::V6, 128, None, true)], Verdict::Accept, ""),
        rule(
            vec![
                net("10.0.0.0/8", true, false),
                net("192.168.0.0/23", false, true),
                net("10.1.2.3/32", false, false),
            ],
            Verdict::Accept,
            "",
        ),
        rule(
            vec![
                net("fd00:1:2::/60", true, false),
                net("fd00::/8", false, true),
            ],
            Verdict::Drop,
            "",
        ),
        rule(
            vec![Match::NfProto(Family::V6)],
            Verdict::Goto("sub".into()),
            "",
        ),
        rule(
            vec![
                Match::Limit { per_second: 10 },
                Match::Log {
                    prefix: "netmod p ingress[1]: ".into(),
                    group: 7,
                },
            ],
            Verdict::Continue,
            "policy p ingress[1]",
        ),
        rule(vec![], Verdict::Jump("sub".into()), ""),
    ];
    rs.chains.push(ChainDef {
        name: "pol".into(),
        hook: None,
        rules,
    });
    rs.chains.push(ChainDef {
        name: "sub".into(),
        hook: None,
        rules: vec![rule(vec![], Verdict::Return, "")],
    });
    rs
}

/// The bytecode nft prints for the table (`--debug=netlink`), without handles.
fn bytecode(ns: &TestNs) -> String {
    let out = ns.exec(&["nft", "--debug=netlink", "list", "table", "inet", "netmod"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn policy_matches_are_what_nft_makes_of_the_same_rules() {
    if !prerequisites() {
        return;
    }
    let rs = policy_ruleset();
    let (ours, reference) = (TestNs::new(), TestNs::new());
    ours.run(|| dp::nft_replace_all(&rs)).expect("replace_all");
    let file = std::env::temp_dir().join(format!("{}.nft", reference.name));
    std::fs::write(&file, rs.to_string()).unwrap();
    let out = reference.exec(&["nft", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}\n{rs}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (ours.nft_json().unwrap(), reference.nft_json().unwrap());
    assert_eq!(normalize(a), normalize(b));
    assert_eq!(bytecode(&ours), bytecode(&reference));
}

/// A host's table as the policy compiler makes it from Calico policies
/// (every kind of rule criterion), installed by us and by `nft -f`.
/// An endpoint on h1 in netgroup shop with label `role`.
fn policy_endpoint(id: &str, ip: &str, role: &str) -> netmod_model::Endpoint {
    netmod_model::Endpoint {
        host: "h1".into(),
        container_id: id.into(),
        iface: netmod_model::host_iface_name(id, "eth0"),
        container_iface: "eth0".into(),
        mac: String::new(),
        ipv4: vec![ip.parse().unwrap()],
        ipv6: vec![],
        netgroups: vec!["shop".into()],
        labels: [("role".to_string(), role.to_string())].into(),
        netns: String::new(),
        source: "cni".into(),
        handle: None,
    }
}

#[test]
fn compiled_policies_are_what_nft_makes_of_them() {
    if !prerequisites() {
        return;
    }
    // Calico's allow-tcp-6379 example (in examples/calico/), then one
    // policy with every kind of match.
    let policies = netmod_calico::parse_policies(
        &[
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/calico/allow-tcp-6379.yaml"
            )),
            "---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: web.front
spec:
  order: 5
  selector: has(role) && role != 'database'
  ingress:
    - action: Log
      protocol: TCP
    - action: Deny
      source:
        nets: [10.9.0.0/16, 10.9.1.0/24, 10.20.0.0/15]
        notNets: [10.9.3.0/25]
    - action: Pass
      protocol: UDP
      destination:
        ports: [53, '1000:2000']
      source:
        notPorts: ['1:1023']
    - action: Allow
      protocol: TCP
      source:
        notSelector: role == 'web'
    - action: Allow
      protocol: ICMP
      icmp: {type: 8, code: 0}
    - action: Deny
      protocol: ICMPv6
      notICMP: {type: 128, code: 0}
    - action: Allow
      notProtocol: 17
      ipVersion: 6
      destination:
        nets: ['fd00:1::/63']
  egress:
    - action: Deny
      protocol: TCP
      destination:
        ports: [25]
",
        ]
        .concat(),
    )
    .expect("policies");
    let ep = policy_endpoint;
    let eps = [
        ep("db", "10.251.0.1", "database"),
        ep("fe", "10.251.0.2", "frontend"),
        ep("web", "10.251.0.3", "web"),
    ];
    let rs = netmod_policy::ruleset_with_policies("h1", &eps, &policies, &|e| e.labels.clone());
    let (ours, reference) = (TestNs::new(), TestNs::new());
    ours.run(|| dp::nft_replace_all(&rs)).expect("replace_all");
    let file = std::env::temp_dir().join(format!("{}.nft", reference.name));
    std::fs::write(&file, rs.to_string()).unwrap();
    let out = reference.exec(&["nft", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}\n{rs}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (ours.nft_json().unwrap(), reference.nft_json().unwrap());
    assert_eq!(normalize(a), normalize(b));
    assert_eq!(bytecode(&ours), bytecode(&reference));
}

#[test]
fn replace_all_replaces_the_previous_table_whole() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| dp::nft_replace_all(&sample_ruleset(&["10.251.0.5"])))
        .unwrap();
    let mut second = sample_ruleset(&["10.251.0.7"]);
    second.sets.remove("g_web_v6");
    second.chains[2].rules.remove(2); // the rule using g_web_v6
    ns.run(|| dp::nft_replace_all(&second)).unwrap();
    let names: Vec<Value> = objects(&ns, "set")
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("g_web_v4"), json!("public_v4")]);
    assert_eq!(
        set_elems(&ns, "g_web_v4"),
        ["10.251.0.7".to_string()].into()
    );
    assert_eq!(objects(&ns, "rule").len(), 10);
}

#[test]
fn a_failed_replace_leaves_the_previous_table_in_force() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| dp::nft_replace_all(&sample_ruleset(&["10.251.0.5"])))
        .unwrap();
    let before = normalize(ns.nft_json().unwrap());
    let mut broken = sample_ruleset(&["10.251.0.9"]);
    broken.sets.remove("public_v4"); // a rule still uses it
    let err = ns.run(|| dp::nft_replace_all(&broken)).unwrap_err();
    assert!(err.to_string().contains("public"), "{err}");
    assert_eq!(normalize(ns.nft_json().unwrap()), before);
}

#[test]
fn apply_adds_and_removes_elements_idempotently() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| dp::nft_replace_all(&sample_ruleset(&["10.251.0.5"])))
        .unwrap();
    let add = |elements: &[&str]| Change::AddElements {
        set: "g_web_v4".into(),
        family: Family::V4,
        elements: addrs(elements).into_iter().collect(),
    };
    let del = |elements: &[&str]| Change::DeleteElements {
        set: "g_web_v4".into(),
        family: Family::V4,
        elements: addrs(elements).into_iter().collect(),
    };
    let listed = ns.run(|| {
        dp::nft_apply(&[add(&["10.251.0.6", "10.251.0.7"])]).unwrap();
        dp::nft_apply(&[add(&["10.251.0.6"])]).expect("adding a present element");
        dp::nft_apply(&[del(&["10.251.0.5", "10.251.0.99"])]).expect("deleting a missing element");
        dp::nft_list_set_elements("g_web_v4", Family::V4).unwrap()
    });
    assert_eq!(listed, addrs(&["10.251.0.6", "10.251.0.7"]));
    assert_eq!(
        set_elems(&ns, "g_web_v4"),
        ["10.251.0.6", "10.251.0.7"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );

    // Wrong family is refused before anything is sent.
    let wrong = Change::AddElements {
        set: "g_web_v4".into(),
        family: Family::V4,
        elements: vec!["fd4e::1".parse().unwrap()],
    };
    let err = ns.run(|| dp::nft_apply(&[wrong])).unwrap_err();
    assert!(matches!(err.root(), Error::Invalid { .. }), "{err}");
}

#[test]
fn a_failed_apply_changes_nothing() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| dp::nft_replace_all(&sample_ruleset(&[])))
        .unwrap();
    let changes = [
        Change::AddElements {
            set: "g_web_v4".into(),
            family: Family::V4,
            elements: vec!["10.251.0.8".parse().unwrap()],
        },
        Change::AppendRule {
            chain: "no_such_chain".into(),
            rule: rule(vec![], Verdict::Accept, ""),
        },
    ];
    let err = ns.run(|| dp::nft_apply(&changes)).unwrap_err();
    assert!(err.to_string().contains("no_such_chain"), "{err}");
    assert_eq!(err.os_error(), Some(libc::ENOENT));
    let left = ns
        .run(|| dp::nft_list_set_elements("g_web_v4", Family::V4))
        .unwrap();
    assert!(left.is_empty());
}

fn create_group(name: &str, member: &str) -> Vec<Change> {
    vec![
        Change::CreateSet(set_def(name, Family::V4, &[member])),
        Change::AppendRule {
            chain: CHAIN_TO_ENDPOINT.into(),
            rule: group_rule(name, Family::V4),
        },
    ]
}

#[test]
fn create_set_is_exclusive_and_the_loser_changes_nothing() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| dp::nft_replace_all(&sample_ruleset(&[])))
        .unwrap();
    let rules_before = objects(&ns, "rule").len();
    ns.run(|| dp::nft_apply(&create_group("g_db_v4", "10.251.0.20")))
        .expect("first create");
    let err = ns
        .run(|| dp::nft_apply(&create_group("g_db_v4", "10.251.0.21")))
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { what } if what == "set g_db_v4"),
        "{err}"
    );
    assert_eq!(objects(&ns, "rule").len(), rules_before + 1);
    assert_eq!(
        set_elems(&ns, "g_db_v4"),
        ["10.251.0.20".to_string()].into()
    );

    // The retry without the creation succeeds.
    let retry = Change::AddElements {
        set: "g_db_v4".into(),
        family: Family::V4,
        elements: vec!["10.251.0.21".parse().unwrap()],
    };
    ns.run(|| dp::nft_apply(&[retry])).unwrap();
    assert_eq!(set_elems(&ns, "g_db_v4").len(), 2);
}

#[test]
fn racing_creators_of_one_set_exactly_one_wins() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    ns.run(|| dp::nft_replace_all(&sample_ruleset(&[])))
        .unwrap();
    let rounds = 20;
    for round in 0..rounds {
        let name = format!("g_race{round}_v4");
        let barrier = Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2)
                .map(|i| {
                    let (name, barrier, path) = (&name, &barrier, ns.path());
                    s.spawn(move || {
                        dp::in_netns(&path, || {
                            barrier.wait();
                            dp::nft_apply(&create_group(name, &format!("10.251.1.{i}")))
                        })
                        .unwrap()
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let wins = results.iter().filter(|r| r.is_ok()).count();
        let lost = results
            .iter()
            .filter(|r| matches!(r, Err(Error::AlreadyExists { .. })));
        assert_eq!((wins, lost.count()), (1, 1), "round {round}: {results:?}");
    }
    assert_eq!(objects(&ns, "rule").len(), 11 + rounds);
}

#[test]
fn existence_checks_and_table_deletion() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    let seen = ns.run(|| {
        let before = (
            dp::nft_table_exists().unwrap(),
            dp::nft_set_exists("g_web_v4").unwrap(),
        );
        let deleted_absent = dp::nft_delete_table().unwrap();
        dp::nft_replace_all(&sample_ruleset(&[])).unwrap();
        let after = (
            dp::nft_table_exists().unwrap(),
            dp::nft_set_exists("g_web_v4").unwrap(),
            dp::nft_set_exists("g_nope_v4").unwrap(),
        );
        let deleted = dp::nft_delete_table().unwrap();
        (
            before,
            deleted_absent,
            after,
            deleted,
            dp::nft_table_exists().unwrap(),
        )
    });
    assert_eq!(
        seen,
        ((false, false), false, (true, true, false), true, false)
    );
    assert!(ns.nft_json().is_none());
}

#[test]
fn fifty_thousand_elements_in_one_transaction() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    let mut rs = sample_ruleset(&[]);
    let v4 = (0..50_000u32).map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
    let v6 = (0..50_000u128).map(|i| IpAddr::from((0xfd4e_u128 << 112 | i).to_be_bytes()));
    rs.sets.get_mut("g_web_v4").unwrap().elements = v4.collect();
    rs.sets.get_mut("g_web_v6").unwrap().elements = v6.collect();
    let (took, n4, n6, one) = ns.run(|| {
        let start = Instant::now();
        dp::nft_replace_all(&rs).unwrap();
        let took = start.elapsed();
        let n4 = dp::nft_list_set_elements("g_web_v4", Family::V4).unwrap();
        let n6 = dp::nft_list_set_elements("g_web_v6", Family::V6).unwrap();
        let start = Instant::now();
        dp::nft_apply(&[Change::AddElements {
            set: "g_web_v4".into(),
            family: Family::V4,
            elements: vec!["10.251.9.9".parse().unwrap()],
        }])
        .unwrap();
        (took, n4, n6, start.elapsed())
    });
    eprintln!("replace_all with 100,000 elements: {took:?}; one more element: {one:?}");
    assert_eq!(n4, rs.sets["g_web_v4"].elements);
    assert_eq!(n6, rs.sets["g_web_v6"].elements);
    let listed = set_elems(&ns, "g_web_v6");
    assert_eq!(listed.len(), 50_000);
}

/// Many small messages (300 netgroups: 600 sets and 600 rules) need room for
/// their acks even though the batch itself is small.
#[test]
fn many_netgroups_in_one_transaction() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    let mut rs = sample_ruleset(&[]);
    let chain = rs
        .chains
        .iter()
        .position(|c| c.name == "to_endpoint")
        .unwrap();
    for g in 0..300 {
        for (family, member) in [
            (Family::V4, format!("10.77.{}.{}", g / 200, g % 200 + 1)),
            (Family::V6, format!("fd77::{g:x}")),
        ] {
            let name = format!("g_n{g}_{}", family.suffix());
            rs.sets
                .insert(name.clone(), set_def(&name, family, &[member.as_str()]));
            rs.chains[chain].rules.insert(0, group_rule(&name, family));
        }
    }
    let listed = ns.run(|| {
        dp::nft_replace_all(&rs).unwrap();
        dp::nft_list_set_elements("g_n299_v4", Family::V4).unwrap()
    });
    assert_eq!(listed, addrs(&["10.77.1.100"]));
}

/// The rules do what they say: two containers on one host reach each other
/// only once both are in the same netgroup set.
#[test]
fn rules_filter_forwarded_traffic_between_containers() {
    if !prerequisites() {
        return;
    }
    let (host, c1, c2) = (TestNs::new(), TestNs::new(), TestNs::new());
    make_host(&host);
    let plug = |iface: &str, cont: &TestNs, addr: &str| PlugSpec {
        host_iface: iface.into(),
        container_iface: "eth0".into(),
        netns: cont.path(),
        container_mac: netmod_model::container_mac(iface, "eth0"),
        ipv4: vec![addr.parse().unwrap()],
        ipv6: vec![],
        mtu: None,
    };
    host.run(|| {
        dp::plug(&plug("nmtc1", &c1, "10.251.2.1")).unwrap();
        dp::plug(&plug("nmtc2", &c2, "10.251.2.2")).unwrap();
        dp::nft_replace_all(&sample_ruleset(&["10.251.2.1"])).unwrap();
    });
    let _listener = c2.listen("10.251.2.2:9000");
    assert!(
        !c1.can_connect("10.251.2.2:9000"),
        "dropped while c2 is not in the group"
    );
    let join = Change::AddElements {
        set: "g_web_v4".into(),
        family: Family::V4,
        elements: vec!["10.251.2.2".parse().unwrap()],
    };
    host.run(|| dp::nft_apply(&[join])).unwrap();
    assert!(
        c1.can_connect("10.251.2.2:9000"),
        "allowed once both are in the group"
    );
    // From the host itself (not forwarded) is never filtered by this table.
    assert!(host.can_connect("10.251.2.2:9000"));
}

/// The node hears of changes to its table made by others (`nft`), and not
/// of its own.
#[test]
fn the_monitor_reports_foreign_changes_to_the_table_and_not_our_own() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    let (own, foreign_chain, foreign_delete, other_table) = ns.run(|| {
        dp::nft_replace_all(&sample_ruleset(&["10.0.0.1"])).unwrap();
        let mut monitor = dp::NftMonitor::open().unwrap();
        let drain = |m: &mut dp::NftMonitor| {
            let mut foreign = false;
            for _ in 0..5 {
                foreign |= m
                    .wait(std::time::Duration::from_millis(100))
                    .unwrap()
                    .foreign;
            }
            foreign
        };
        // Our own changes, structural ones included, are not foreign.
        dp::nft_replace_all(&sample_ruleset(&["10.0.0.2"])).unwrap();
        dp::nft_apply(&[Change::AddElements {
            set: "g_web_v4".into(),
            family: Family::V4,
            elements: vec!["10.0.0.3".parse().unwrap()],
        }])
        .unwrap();
        let own = drain(&mut monitor);
        let nft = |args: &[&str]| {
            let out = std::process::Command::new("nft")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "nft {args:?}: {out:?}");
        };
        nft(&["add", "chain", "inet", "netmod", "intruder"]);
        let foreign_chain = drain(&mut monitor);
        nft(&["delete", "table", "inet", "netmod"]);
        let foreign_delete = drain(&mut monitor);
        // Someone else's table is none of our business.
        nft(&["add", "table", "inet", "elsewhere"]);
        nft(&["add", "chain", "inet", "elsewhere", "c"]);
        let other_table = drain(&mut monitor);
        (own, foreign_chain, foreign_delete, other_table)
    });
    assert!(!own, "our own changes were reported as foreign");
    assert!(foreign_chain, "a chain added by nft went unnoticed");
    assert!(foreign_delete, "the table deleted by nft went unnoticed");
    assert!(!other_table, "another table's changes were reported");
}

/// The table as comparable data: chains and sets by name, each chain's
/// rules in their order (the kernel lists chains in order of creation,
/// which means nothing to a packet).
fn by_object(ns: &TestNs) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut out: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for item in normalize(ns.nft_json().expect("table exists")) {
        if let Some(rule) = item.get("rule") {
            let chain = rule["chain"].as_str().unwrap().to_string();
            out.entry(format!("rules of {chain}"))
                .or_default()
                .push(rule.clone());
        } else if let Some(chain) = item.get("chain") {
            out.insert(
                format!("chain {}", chain["name"].as_str().unwrap()),
                vec![chain.clone()],
            );
        } else if let Some(set) = item.get("set") {
            out.insert(
                format!("set {}", set["name"].as_str().unwrap()),
                vec![set.clone()],
            );
        }
    }
    out
}

/// A policy added, changed or deleted among others, applied as a diff in
/// one transaction, leaves the kernel exactly where a whole install of the
/// new policies would: the flushes, chain and set deletions are accepted
/// in the order the diff gives them.
#[test]
fn a_policy_diff_leaves_what_a_whole_install_would() {
    if !prerequisites() {
        return;
    }
    let policy = |name: &str, order: u32, role: &str, port: u16| {
        netmod_calico::parse_policies(&format!(
            "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: {name}
spec:
  order: {order}
  selector: role == '{role}'
  types: [Ingress, Egress]
  ingress:
    - action: Log
      protocol: TCP
    - action: Allow
      protocol: TCP
      source:
        selector: role == 'client-of-{role}'
      destination:
        ports: [{port}, '9000:9100']
  egress:
    - action: Deny
      destination:
        nets: [10.9.0.0/16]
    - action: Allow
"
        ))
        .unwrap()
        .remove(0)
    };
    let ep = policy_endpoint;
    let eps = [
        ep("db", "10.251.0.1", "db"),
        ep("fe", "10.251.0.2", "client-of-db"),
        ep("web", "10.251.0.3", "web"),
        ep("cache", "10.251.0.4", "cache"),
    ];
    let all = vec![
        policy("db", 1, "db", 5432),
        policy("web", 2, "web", 80),
        policy("cache", 3, "cache", 6379),
    ];
    let table = |p: &[netmod_calico::GlobalNetworkPolicy]| {
        netmod_policy::ruleset_with_policies("h1", &eps, p, &|e| e.labels.clone())
    };
    let cases: Vec<(&str, Vec<netmod_calico::GlobalNetworkPolicy>)> = vec![
        ("add one", {
            let mut p = all.clone();
            p.push(policy("new", 0, "client-of-db", 1234));
            p
        }),
        ("change one", {
            let mut p = all.clone();
            p[1] = policy("web", 2, "db", 8080);
            p
        }),
        ("delete one", all[..2].to_vec()),
        ("delete all", vec![]),
    ];
    for (what, after) in cases {
        let (ours, reference) = (TestNs::new(), TestNs::new());
        let (before, want) = (table(&all), table(&after));
        assert!(!netmod_policy::needs_replace(&before, &want), "{what}");
        let changes = netmod_policy::diff(&before, &want);
        ours.run(|| dp::nft_replace_all(&before))
            .expect("replace_all");
        ours.run(|| dp::nft_apply(&changes))
            .unwrap_or_else(|e| panic!("{what}: {e}\n{changes:#?}"));
        reference
            .run(|| dp::nft_replace_all(&want))
            .expect("replace_all");
        assert_eq!(by_object(&ours), by_object(&reference), "{what}");
    }
}

/// What the overlay needs: raw transport-header bits (VXLAN's inner frame:
/// ethertype, IPv4/IPv6 source prefixes, also unaligned and odd lengths) in
/// an input chain, and `masquerade` in a nat postrouting chain.
fn overlay_ruleset() -> Ruleset {
    let bits = |offset, len, value: &[u8]| Match::TransportBits {
        offset,
        len,
        value: value.to_vec(),
    };
    let udp = Match::L4Proto {
        proto: 17,
        negate: false,
    };
    let vxlan = Match::Port {
        source: false,
        first: 4789,
        last: 4789,
        negate: false,
    };
    let v6_src: Vec<u8> = "fd4e:6d74:1::"
        .parse::<std::net::Ipv6Addr>()
        .unwrap()
        .octets()[..7]
        .to_vec();
    let input = ChainDef {
        name: "input".into(),
        hook: Some(BaseHook {
            kind: HookKind::Input,
            priority: 0,
            accept_by_default: true,
        }),
        rules: vec![
            rule(
                vec![
                    udp.clone(),
                    vxlan.clone(),
                    bits(224, 16, &[0x08, 0x00]),
                    bits(336, 16, &[10, 244]),
                ],
                Verdict::Accept,
                "inner ipv4 /16",
            ),
            rule(
                vec![bits(224, 16, &[0x08, 0x00]), bits(336, 12, &[10, 0xf0])],
                Verdict::Accept,
                "inner ipv4 /12",
            ),
            rule(
                vec![bits(224, 16, &[0x86, 0xdd]), bits(304, 56, &v6_src)],
                Verdict::Accept,
                "inner ipv6 /56",
            ),
            rule(
                vec![bits(304, 50, &[0xfd, 0x4e, 0x6d, 0x74, 0, 1, 0xc0])],
                Verdict::Accept,
                "inner ipv6 /50",
            ),
            rule(
                vec![bits(304, 128, &[0xfd; 16])],
                Verdict::Accept,
                "128 bits",
            ),
            rule(vec![bits(3, 5, &[0xa8])], Verdict::Drop, "unaligned"),
            rule(
                vec![bits(12, 16, &[0xab, 0xcd])],
                Verdict::Drop,
                "unaligned 16",
            ),
            rule(vec![bits(336, 1, &[0x80])], Verdict::Drop, "one bit"),
            rule(vec![udp, vxlan], Verdict::Drop, "other vxlan"),
        ],
    };
    let postrouting = ChainDef {
        name: "postrouting".into(),
        hook: Some(BaseHook {
            kind: HookKind::Postrouting,
            priority: 100,
            accept_by_default: true,
        }),
        rules: vec![
            rule(
                vec![
                    Match::AddrInNet {
                        source: true,
                        net: "10.244.0.0/16".parse().unwrap(),
                        negate: false,
                    },
                    Match::AddrInNet {
                        source: false,
                        net: "10.244.0.0/16".parse().unwrap(),
                        negate: true,
                    },
                ],
                Verdict::Masquerade,
                "nat outgoing",
            ),
            rule(
                vec![Match::OifPrefix("eth".into())],
                Verdict::Masquerade,
                "",
            ),
        ],
    };
    Ruleset {
        chains: vec![input, postrouting],
        sets: Default::default(),
    }
}

#[test]
fn overlay_matches_and_masquerade_are_what_nft_makes_of_them() {
    if !prerequisites() {
        return;
    }
    let rs = overlay_ruleset();
    let (ours, reference) = (TestNs::new(), TestNs::new());
    ours.run(|| dp::nft_replace_all(&rs)).expect("replace_all");
    let file = std::env::temp_dir().join(format!("{}.nft", reference.name));
    std::fs::write(&file, rs.to_string()).unwrap();
    let out = reference.exec(&["nft", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}\n{rs}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (a, b) = (ours.nft_json().unwrap(), reference.nft_json().unwrap());
    assert_eq!(normalize(a), normalize(b), "{rs}");
    assert_eq!(bytecode(&ours), bytecode(&reference), "{rs}");
    let chains = objects(&ours, "chain");
    assert_eq!(
        chains[1],
        json!({"family": "inet", "table": "netmod", "name": "postrouting", "type": "nat",
               "hook": "postrouting", "prio": 100, "policy": "accept"})
    );
    let text = bytecode(&ours);
    assert!(text.contains("[ masq ]"), "{text}");
    assert!(
        text.contains("[ payload load 2b @ transport header + 28 => reg 1 ]"),
        "{text}"
    );
}

#[test]
fn bad_transport_bits_are_refused() {
    let bad = |offset, len, value: &[u8]| Ruleset {
        chains: vec![ChainDef {
            name: "c".into(),
            hook: None,
            rules: vec![rule(
                vec![Match::TransportBits {
                    offset,
                    len,
                    value: value.to_vec(),
                }],
                Verdict::Drop,
                "",
            )],
        }],
        sets: Default::default(),
    };
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    for rs in [
        bad(0, 0, &[]),
        bad(0, 129, &[0; 17]),
        bad(0, 12, &[0xff, 0xff]), // bits past 12 set
        bad(0, 16, &[0xff]),       // too short
        bad(4, 128, &[0; 16]),     // spans 17 bytes
    ] {
        let e = ns.run(|| dp::nft_replace_all(&rs)).unwrap_err();
        assert!(matches!(e.root(), Error::Invalid { .. }), "{e}");
        assert!(ns.nft_json().is_none(), "nothing reached the kernel");
    }
}
