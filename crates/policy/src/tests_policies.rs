//! Calico policies compiled into the host's table: shape, flat endpoint
//! cost, and agreement with the reference evaluator (`netmod_calico`).

use crate::explain::{explain, Packet, L4};
use crate::*;
use netmod_calico::{evaluate, parse_policies, Decision as CDecision, Flow, GlobalNetworkPolicy};
use netmod_model::nft::*;
use netmod_model::Endpoint;
use std::collections::BTreeMap;

fn ep(host: &str, id: &str, ip: &str, groups: &[&str], labels: &[(&str, &str)]) -> Endpoint {
    Endpoint {
        host: host.into(),
        container_id: id.into(),
        iface: netmod_model::host_iface_name(id, "eth0"),
        container_iface: "eth0".into(),
        mac: String::new(),
        ipv4: vec![ip.parse().unwrap()],
        ipv6: vec![],
        netgroups: groups.iter().map(|g| g.to_string()).collect(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        netns: String::new(),
        source: "cni".into(),
        handle: None,
    }
}

/// As `netmod_core::labels::endpoint_labels`.
fn labels(e: &Endpoint) -> BTreeMap<String, String> {
    let mut l = e.labels.clone();
    for g in &e.netgroups {
        l.insert(format!("netgroup.netmod.io/{g}"), String::new());
    }
    l
}

/// Calico's allow-tcp-6379 example, in examples/calico/.
const ALLOW_6379: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/calico/allow-tcp-6379.yaml"
));

const MORE: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: web
spec:
  order: 10
  selector: role == 'web'
  ingress:
    - action: Log
      protocol: TCP
    - action: Deny
      source:
        nets: [10.9.0.0/16]
    - action: Pass
      protocol: UDP
      destination:
        ports: [53, '1000:2000']
    - action: Allow
      protocol: TCP
      source:
        notSelector: role == 'web'
      destination:
        notPorts: [22]
    - action: Allow
      protocol: ICMP
      icmp:
        type: 8
  egress:
    - action: Deny
      protocol: TCP
      destination:
        ports: [25]
    - action: Allow
      destination:
        selector: has(netgroup.netmod.io/shop)
";

fn policies() -> Vec<GlobalNetworkPolicy> {
    let mut p = parse_policies(ALLOW_6379).unwrap();
    p.extend(parse_policies(MORE).unwrap());
    p
}

fn cluster() -> Vec<Endpoint> {
    vec![
        ep(
            "h1",
            "db",
            "192.168.0.1",
            &["shop"],
            &[("role", "database")],
        ),
        ep(
            "h1",
            "fe",
            "192.168.0.2",
            &["shop"],
            &[("role", "frontend")],
        ),
        ep("h1", "web", "192.168.0.3", &["public"], &[("role", "web")]),
        ep(
            "h1",
            "other",
            "192.168.0.4",
            &["shop"],
            &[("role", "other")],
        ),
        ep("h2", "fe2", "192.168.0.65", &[], &[("role", "frontend")]),
        ep("h2", "web2", "192.168.0.66", &["shop"], &[("role", "web")]),
        ep("h2", "plain", "192.168.0.67", &["shop"], &[]),
        ep("h2", "alone", "192.168.0.68", &[], &[]),
    ]
}

fn rs(host: &str, eps: &[Endpoint], p: &[GlobalNetworkPolicy]) -> Ruleset {
    ruleset_with_policies(host, eps, p, &labels)
}

#[test]
fn snapshot_of_host_one_with_two_policies() {
    let text = rs("h1", &cluster(), &policies()).to_string();
    let expected = include_str!("snapshots/h1_policies.nft");
    if text != expected {
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/snapshots/h1_policies.nft.new"
            ),
            &text,
        )
        .unwrap();
        panic!("ruleset differs from src/snapshots/h1_policies.nft (new version in .new):\n{text}");
    }
}

/// Ten policies; endpoints come and go, locally and elsewhere: elements only.
#[test]
fn endpoint_churn_with_ten_policies_changes_only_elements() {
    let mut p = Vec::new();
    for i in 0..10 {
        let text = ALLOW_6379
            .replace("allow-tcp-6379", &format!("p{i}"))
            .replace("'frontend'", &format!("'frontend{i}'"));
        p.extend(parse_policies(&text).unwrap());
    }
    let before = cluster();
    let mut after = before.clone();
    after.push(ep("h1", "db2", "192.168.0.9", &[], &[("role", "database")]));
    after.push(ep(
        "h2",
        "fe3",
        "192.168.0.70",
        &[],
        &[("role", "frontend3")],
    ));
    after.retain(|e| e.container_id != "fe" && e.container_id != "web2");
    let (a, b) = (rs("h1", &before, &p), rs("h1", &after, &p));
    assert_eq!(a.chains, b.chains, "rules and chains stay");
    assert!(!needs_replace(&a, &b));
    let changes = diff(&a, &b);
    assert!(!changes.is_empty());
    for c in &changes {
        assert!(
            matches!(
                c,
                Change::AddElements { .. } | Change::DeleteElements { .. }
            ),
            "{c:?}"
        );
    }
    // The new database is in the policy's selector set and "selected".
    let db_set = selector_set_name(&p[0].selector, Family::V4);
    assert!(changes.iter().any(|c| matches!(c,
        Change::AddElements { set, elements, .. } if *set == db_set
            && elements == &["192.168.0.9".parse::<std::net::IpAddr>().unwrap()])));
    // A policy change is more than elements, yet still a diff.
    assert!(!needs_replace(&a, &rs("h1", &before, &p[1..])));
}

/// What the kernel does with a change list, on the model: chains keep
/// their order of creation, as nf_tables lists them.
fn apply_changes(rs: &mut Ruleset, changes: &[Change]) {
    for c in changes {
        match c {
            Change::CreateSet(s) => {
                assert!(rs.sets.insert(s.name.clone(), s.clone()).is_none(), "{c:?}");
            }
            Change::DeleteSet(name) => {
                let used = rs.chains.iter().flat_map(|c| &c.rules).any(|r| {
                    r.matches.iter().any(|m| match m {
                        Match::SaddrIn { set, .. }
                        | Match::DaddrIn { set, .. }
                        | Match::AddrNotIn { set, .. } => set == name,
                        _ => false,
                    })
                });
                assert!(!used, "set {name} deleted while a rule uses it");
                assert!(rs.sets.remove(name).is_some(), "{c:?}");
            }
            Change::CreateChain(name) => {
                if !rs.chains.iter().any(|c| &c.name == name) {
                    rs.chains.push(ChainDef {
                        name: name.clone(),
                        hook: None,
                        rules: vec![],
                    });
                }
            }
            Change::FlushChain(name) => {
                rs.chains
                    .iter_mut()
                    .find(|c| &c.name == name)
                    .expect("flushed chain exists")
                    .rules
                    .clear();
            }
            Change::DeleteChain(name) => {
                let jumped = rs.chains.iter().flat_map(|c| &c.rules).any(
                    |r| matches!(&r.verdict, Verdict::Jump(t) | Verdict::Goto(t) if t == name),
                );
                assert!(!jumped, "chain {name} deleted while a rule jumps to it");
                let i = rs.chains.iter().position(|c| &c.name == name).unwrap();
                assert!(rs.chains[i].rules.is_empty(), "{name} deleted with rules");
                rs.chains.remove(i);
            }
            Change::AppendRule { chain, rule } => {
                for m in &rule.matches {
                    if let Match::SaddrIn { set, .. }
                    | Match::DaddrIn { set, .. }
                    | Match::AddrNotIn { set, .. } = m
                    {
                        assert!(rs.sets.contains_key(set), "rule uses missing set {set}");
                    }
                }
                if let Verdict::Jump(t) | Verdict::Goto(t) = &rule.verdict {
                    assert!(
                        rs.chains.iter().any(|c| &c.name == t),
                        "jump to missing {t}"
                    );
                }
                rs.chains
                    .iter_mut()
                    .find(|c| &c.name == chain)
                    .expect("chain exists")
                    .rules
                    .push(rule.clone());
            }
            Change::AddElements { set, elements, .. } => {
                rs.sets
                    .get_mut(set)
                    .unwrap()
                    .elements
                    .extend(elements.iter().copied());
            }
            Change::DeleteElements { set, elements, .. } => {
                let s = rs.sets.get_mut(set).unwrap();
                for e in elements {
                    s.elements.remove(e);
                }
            }
        }
    }
}

/// Chains compared by name (the kernel's order of chains means nothing).
fn by_name(rs: &Ruleset) -> BTreeMap<String, ChainDef> {
    rs.chains
        .iter()
        .map(|c| (c.name.clone(), c.clone()))
        .collect()
}

/// Objects a change list names.
fn touched(changes: &[Change]) -> std::collections::BTreeSet<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::CreateSet(s) => s.name.clone(),
            Change::DeleteSet(n)
            | Change::CreateChain(n)
            | Change::FlushChain(n)
            | Change::DeleteChain(n) => n.clone(),
            Change::AppendRule { chain, .. } => chain.clone(),
            Change::AddElements { set, .. } | Change::DeleteElements { set, .. } => set.clone(),
        })
        .collect()
}

/// Adding, changing and deleting one policy among many: the diff brings the
/// table to exactly what a whole install would hold, and names only that
/// policy's chains and sets, the dispatch chains (its jump) and the
/// `selected_*` sets (endpoints it newly selects or no longer does).
#[test]
fn one_policy_change_touches_only_that_policys_objects() {
    let mut many = Vec::new();
    for i in 0..20 {
        let text = MORE
            .replace("name: web", &format!("name: p{i}"))
            .replace("order: 10", &format!("order: {i}"))
            .replace("role == 'web'", &format!("role == 'r{i}'"));
        many.extend(parse_policies(&text).unwrap());
    }
    let eps = cluster();
    let base = rs("h1", &eps, &many);
    let added = parse_policies(
        &ALLOW_6379
            .replace("allow-tcp-6379", "new-one")
            .replace("'frontend'", "'frontend-new'"),
    )
    .unwrap();
    let mut with_new = many.clone();
    with_new.extend(added.clone());
    let mut changed = many.clone();
    changed[7] = parse_policies(
        &MORE
            .replace("name: web", "name: p7")
            .replace("order: 10", "order: 7")
            .replace("[25]", "[26, 27]")
            .replace("role == 'web'", "role == 'database'"),
    )
    .unwrap()
    .remove(0);
    let mut removed = many.clone();
    removed.remove(3);
    for (what, policy, after) in [
        ("add", "new-one", with_new),
        ("change", "p7", changed),
        ("delete", "p3", removed),
    ] {
        let want = rs("h1", &eps, &after);
        assert!(!needs_replace(&base, &want), "{what}");
        let changes = diff(&base, &want);
        let mut kernel = base.clone();
        apply_changes(&mut kernel, &changes);
        assert_eq!(by_name(&kernel), by_name(&want), "{what}: chains");
        assert_eq!(kernel.sets, want.sets, "{what}: sets");
        let names = touched(&changes);
        let ok = |name: &String| {
            name == CHAIN_POLICY_EGRESS
                || name == CHAIN_POLICY_INGRESS
                || name.starts_with("selected_")
                || name.starts_with("sel_")
                || *name == policy_chain_name(policy, netmod_calico::Direction::Egress)
                || *name == policy_chain_name(policy, netmod_calico::Direction::Ingress)
        };
        assert!(names.iter().all(ok), "{what} touched {names:?}");
        // Selector sets it touches are ones only it uses (p-others share none
        // with it except role selectors of their own).
        for n in names.iter().filter(|n| n.starts_with("sel_")) {
            let others_use = base
                .chains
                .iter()
                .chain(want.chains.iter())
                .filter(|c| {
                    c.name != policy_chain_name(policy, netmod_calico::Direction::Egress)
                        && c.name != policy_chain_name(policy, netmod_calico::Direction::Ingress)
                })
                .flat_map(|c| &c.rules)
                .any(|r| {
                    r.matches.iter().any(|m| {
                        matches!(m,
                    Match::SaddrIn { set, .. } | Match::DaddrIn { set, .. }
                    | Match::AddrNotIn { set, .. } if set == n)
                    })
                });
            assert!(!others_use, "{what}: touched {n}, which other policies use");
        }
        // Other policies' chains are not flushed, refilled or deleted.
        for c in &changes {
            if let Change::FlushChain(n) | Change::DeleteChain(n) = c {
                assert!(ok(n), "{what}: {c:?}");
            }
        }
    }
}

/// A netgroup leaving the host still installs the whole table; a policy
/// change alone never does.
#[test]
fn only_a_netgroup_leaving_needs_a_whole_install() {
    let eps = cluster();
    let p = policies();
    let a = rs("h1", &eps, &p);
    let mut fewer = eps.clone();
    fewer.retain(|e| e.container_id != "web"); // the only "public" on h1
    let gone_public = rs("h1", &fewer, &p);
    // public is a base set; drop a netgroup instead: shop lives on h1 via
    // db, fe, other.
    let mut no_shop = eps.clone();
    no_shop.retain(|e| e.host != "h1" || !e.netgroups.iter().any(|g| g == "shop"));
    let b = rs("h1", &no_shop, &p);
    assert!(needs_replace(&a, &b));
    assert!(!needs_replace(&a, &gone_public));
    assert!(!needs_replace(&a, &rs("h1", &eps, &p[..1])));
    assert!(!needs_replace(&a, &rs("h1", &eps, &[])));
}

/// What Calico's semantics plus netmod's profiles say about one packet.
fn oracle(
    eps: &[Endpoint],
    p: &[GlobalNetworkPolicy],
    from: &Endpoint,
    to: &Endpoint,
    pkt: netmod_calico::Packet,
) -> bool {
    let peer = |e: &Endpoint| netmod_calico::Peer::endpoint(e.addrs().next().unwrap(), labels(e));
    let v = evaluate(
        p,
        &Flow {
            source: peer(from),
            destination: peer(to),
            packet: pkt,
        },
    );
    let _ = eps;
    let egress = match v.egress.decision {
        CDecision::Allow(_) => true,
        CDecision::Deny(_) | CDecision::DefaultDeny => false,
        _ => !from.netgroups.is_empty(),
    };
    let ingress = match v.ingress.decision {
        CDecision::Allow(_) => true,
        CDecision::Deny(_) | CDecision::DefaultDeny => false,
        _ => {
            to.netgroups.iter().any(|g| g == "public")
                || from
                    .netgroups
                    .iter()
                    .any(|g| g != "public" && to.netgroups.contains(g))
        }
    };
    egress && ingress
}

/// The packet through the compiled tables: the sender's host, then the
/// receiver's (once, through both chains, when they share a host).
fn walked(
    eps: &[Endpoint],
    p: &[GlobalNetworkPolicy],
    from: &Endpoint,
    to: &Endpoint,
    l4: L4,
) -> bool {
    let (saddr, daddr) = (from.addrs().next().unwrap(), to.addrs().next().unwrap());
    let pkt = |iif: &str, oif: &str| Packet {
        iif: iif.into(),
        oif: oif.into(),
        saddr,
        daddr,
        l4,
    };
    if from.host == to.host {
        return explain(&rs(&from.host, eps, p), &pkt(&from.iface, &to.iface)).accepted;
    }
    explain(&rs(&from.host, eps, p), &pkt(&from.iface, "eth0")).accepted
        && explain(&rs(&to.host, eps, p), &pkt("eth0", &to.iface)).accepted
}

/// The same cluster on IPv6 addresses only.
fn cluster6() -> Vec<Endpoint> {
    cluster()
        .into_iter()
        .map(|mut e| {
            let last = e.ipv4[0].octets()[3];
            e.ipv4.clear();
            e.ipv6 = vec![format!("fd00:10::{last:x}").parse().unwrap()];
            e
        })
        .collect()
}

#[test]
fn compiled_tables_agree_with_the_reference_evaluator() {
    agree(&cluster());
}

#[test]
fn compiled_tables_agree_with_the_reference_evaluator_on_ipv6() {
    agree(&cluster6());
}

fn agree(eps: &[Endpoint]) {
    let eps = eps.to_vec();
    let p = policies();
    let packets = [
        (
            netmod_calico::Packet::tcp(40000, 6379),
            L4::Ports {
                proto: 6,
                sport: 40000,
                dport: 6379,
            },
        ),
        (
            netmod_calico::Packet::tcp(40000, 80),
            L4::Ports {
                proto: 6,
                sport: 40000,
                dport: 80,
            },
        ),
        (
            netmod_calico::Packet::tcp(40000, 22),
            L4::Ports {
                proto: 6,
                sport: 40000,
                dport: 22,
            },
        ),
        (
            netmod_calico::Packet::tcp(40000, 25),
            L4::Ports {
                proto: 6,
                sport: 40000,
                dport: 25,
            },
        ),
        (
            netmod_calico::Packet::udp(40000, 53),
            L4::Ports {
                proto: 17,
                sport: 40000,
                dport: 53,
            },
        ),
        (
            netmod_calico::Packet::udp(40000, 1500),
            L4::Ports {
                proto: 17,
                sport: 40000,
                dport: 1500,
            },
        ),
        (
            netmod_calico::Packet::udp(40000, 99),
            L4::Ports {
                proto: 17,
                sport: 40000,
                dport: 99,
            },
        ),
        (
            netmod_calico::Packet::icmp(8, 0),
            L4::Icmp {
                proto: 1,
                icmp_type: 8,
                code: 0,
            },
        ),
        (
            netmod_calico::Packet::icmp(0, 0),
            L4::Icmp {
                proto: 1,
                icmp_type: 0,
                code: 0,
            },
        ),
    ];
    let mut checked = 0;
    for from in &eps {
        for to in &eps {
            if from.container_id == to.container_id {
                continue;
            }
            // ICMP belongs to IPv4, ICMPv6 to IPv6 (as Calico renders
            // them; its reference evaluator compares protocol numbers only).
            let v6 = from.ipv4.is_empty();
            for (cp, l4) in packets {
                if matches!(l4, L4::Icmp { proto, .. } if (proto == 58) != v6) {
                    continue;
                }
                let want = oracle(&eps, &p, from, to, cp);
                let got = walked(&eps, &p, from, to, l4);
                assert_eq!(
                    got, want,
                    "{} -> {} {cp:?}: compiled {got}, reference {want}",
                    from.container_id, to.container_id
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8 * 7 * (packets.len() - 2), "{checked}");
}

#[test]
fn explain_names_the_deciding_policy_rule() {
    let eps = cluster();
    let p = policies();
    let (fe, db) = (&eps[1], &eps[0]);
    let pkt = |dport| Packet {
        iif: fe.iface.clone(),
        oif: db.iface.clone(),
        saddr: fe.addrs().next().unwrap(),
        daddr: db.addrs().next().unwrap(),
        l4: L4::Ports {
            proto: 6,
            sport: 40000,
            dport,
        },
    };
    let d = explain(&rs("h1", &eps, &p), &pkt(6379));
    assert!(d.accepted);
    assert_eq!(d.reason, "policy allow-tcp-6379 ingress[0]");
    let d = explain(&rs("h1", &eps, &p), &pkt(6380));
    assert!(!d.accepted);
    assert!(d.reason.starts_with("default deny"), "{}", d.reason);
}

#[test]
fn nets_and_ports_are_merged_before_they_become_rules() {
    let p = parse_policies(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: m
spec:
  ingress:
    - action: Allow
      protocol: TCP
      source:
        nets: [10.0.0.0/9, 10.128.0.0/9, 10.1.0.0/16]
      destination:
        ports: [80, '79:81', 443]
",
    )
    .unwrap();
    let alts = rule_alternatives(&p[0].ingress[0]);
    assert_eq!(alts.len(), 2, "{alts:?}"); // 10.0.0.0/8, ports 79-81 or 443
}

/// What a plugin would add for one endpoint is exactly where the compiled
/// table has its addresses, among the policy sets.
#[test]
fn an_endpoints_policy_sets_are_those_the_table_puts_it_in() {
    let eps = cluster();
    let p = policies();
    let table = rs("h1", &eps, &p);
    for e in &eps {
        let mut want: Vec<String> = table
            .sets
            .values()
            .filter(|s| s.name.starts_with("sel_") || s.name.starts_with("selected_"))
            .filter(|s| e.addrs().any(|a| s.elements.contains(&a)))
            .map(|s| s.name.clone())
            .collect();
        let mut got: Vec<String> = endpoint_policy_sets(e, &p, &labels(e))
            .into_iter()
            .map(|(set, _, _)| set)
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{}", e.container_id);
    }
}

/// `0.0.0.0/0` is every IPv4 address: as `nets` the family alone decides
/// (the kernel refuses a zero-length address match, so none is made).
#[test]
fn the_whole_address_space_as_nets_and_not_nets() {
    let rule = |text: &str| {
        let p = parse_policies(&format!(
            "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: p
spec:
  selector: all()
  ingress:
    - action: Allow
      source:
        {text}
"
        ))
        .unwrap();
        rule_alternatives(&p[0].ingress[0])
    };
    assert_eq!(
        rule("nets: [0.0.0.0/0]"),
        vec![vec![Match::NfProto(Family::V4)]]
    );
    assert_eq!(
        rule("nets: ['::/0']"),
        vec![vec![Match::NfProto(Family::V6)]]
    );
    // As notNets, Calico's parser already refuses it (the rule could never
    // match); the compiler would drop the family's alternatives.
    assert!(parse_policies(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: p
spec:
  ingress:
    - action: Allow
      source:
        notNets: [0.0.0.0/0]
"
    )
    .is_err());
}

/// The selector index gives a new endpoint the same sets as the policies
/// themselves, also after a trip through JSON (as the datastore keeps it).
#[test]
fn the_selector_index_puts_endpoints_in_the_same_sets_as_the_policies() {
    let p = policies();
    let index = SelectorIndex::of(&p);
    let text = serde_json::to_string(&index).unwrap();
    let stored: SelectorIndex = serde_json::from_str(&text).unwrap();
    assert_eq!(stored, index);
    let mut eps = cluster();
    eps.push(ep("h1", "nolabels", "192.168.0.90", &[], &[]));
    let mut both = ep("h1", "dual", "192.168.0.91", &["shop"], &[("role", "web")]);
    both.ipv6 = vec!["fd00::91".parse().unwrap()];
    eps.push(both);
    let mut nonempty = 0;
    for e in &eps {
        let l = labels(e);
        let mut want = endpoint_policy_sets(e, &p, &l);
        let mut got = stored.endpoint_sets(e, &l);
        want.sort();
        got.sort();
        assert_eq!(got, want, "{}", e.container_id);
        nonempty += usize::from(!got.is_empty());
    }
    assert!(nonempty >= 4, "the cases put endpoints in sets");
}
