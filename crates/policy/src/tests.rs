use super::*;
use crate::explain::{explain, Packet, L4};
use netmod_model::nft::*;
use netmod_model::Endpoint;

fn ep(host: &str, id: &str, ip: &str, groups: &[&str]) -> Endpoint {
    Endpoint {
        host: host.into(),
        container_id: id.into(),
        iface: netmod_model::host_iface_name(id, "eth0"),
        container_iface: "eth0".into(),
        mac: String::new(),
        ipv4: vec![ip.parse().unwrap()],
        ipv6: vec![],
        netgroups: groups.iter().map(|g| g.to_string()).collect(),
        labels: Default::default(),
        netns: String::new(),
        source: "mesos".into(),
        handle: None,
    }
}

/// The seed's isolated scenario on two hosts.
fn seed() -> Vec<Endpoint> {
    vec![
        ep("h1", "a", "192.168.0.1", &["star-1"]),
        ep("h1", "c", "192.168.0.2", &["star-2"]),
        ep(
            "h1",
            "collect",
            "192.168.255.252",
            &["star-1", "star-2", "public"],
        ),
        ep("h2", "b", "192.168.0.65", &["star-1"]),
        ep("h2", "d", "192.168.0.66", &["star-2"]),
        ep("h2", "e", "192.168.0.67", &[]),
    ]
}

#[test]
fn snapshot_of_host_one() {
    let rs = ruleset("h1", &seed());
    let text = rs.to_string();
    let expected = include_str!("snapshots/h1.nft");
    if text != expected {
        std::fs::write(
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/snapshots/h1.nft.new"),
            &text,
        )
        .unwrap();
        panic!("ruleset differs from src/snapshots/h1.nft (new version in h1.nft.new):\n{text}");
    }
}

#[test]
fn group_set_names_are_plain_and_one_to_one() {
    assert_eq!(group_set_name("web", Family::V4), "g_web_v4");
    let a = group_set_name("star-1", Family::V4);
    let b = group_set_name("star_1", Family::V4);
    let c = group_set_name("star.1", Family::V4);
    assert!(
        a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "{a}"
    );
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_ne!(b, c);
    // The collision found on the old mapping (plain name + short hash).
    assert_ne!(
        group_set_name("star-1", Family::V4),
        group_set_name("star_1_5f7f", Family::V4)
    );
    assert_eq!(group_set_name("star-1", Family::V6), "g_star_2d1_v6");
}

/// Injective over every name the doors accept: decoding gives the name back.
#[test]
fn group_set_names_decode_to_their_netgroup() {
    fn decode(set: &str) -> String {
        let body = set
            .strip_prefix("g_")
            .and_then(|s| s.strip_suffix("_v4"))
            .unwrap();
        let (mut out, mut bytes) = (Vec::new(), body.bytes());
        while let Some(b) = bytes.next() {
            if b == b'_' {
                let hex: String = [bytes.next().unwrap(), bytes.next().unwrap()]
                    .iter()
                    .map(|&c| c as char)
                    .collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            } else {
                out.push(b);
            }
        }
        String::from_utf8(out).unwrap()
    }
    let alphabet = ["a", "Z", "0", "-", "_", "."];
    let mut names = vec![String::new()];
    for _ in 0..4 {
        names = names
            .iter()
            .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
            .collect();
        for n in &names {
            assert!(validate_netgroup(n).is_ok(), "{n}");
            assert_eq!(&decode(&group_set_name(n, Family::V4)), n);
        }
    }
    let longest = "-".repeat(NETGROUP_MAX_LEN);
    assert!(group_set_name(&longest, Family::V6).len() <= 255);
    assert!(validate_netgroup(&format!("{longest}x")).is_err());
    for bad in ["", "a b", "a/b", "é", "a\0"] {
        assert!(validate_netgroup(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn endpoint_churn_changes_only_elements() {
    let mut eps = seed();
    let before = ruleset("h1", &eps);
    // A new member of an existing group on another host, and a local one leaving.
    eps.push(ep("h2", "f", "192.168.0.68", &["star-2"]));
    eps.retain(|e| e.container_id != "a");
    let after = ruleset("h1", &eps);
    let changes = diff(&before, &after);
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
    assert_eq!(
        before.chains, after.chains,
        "no rule changes for endpoint churn"
    );
    // Applying the diff to the "kernel" gives the desired sets.
    let mut kernel = before.clone();
    apply(&mut kernel, &changes);
    assert_eq!(kernel.sets, after.sets);
}

#[test]
fn a_new_netgroup_adds_a_set_and_an_accept_rule_never_a_jump() {
    let eps = seed();
    let before = ruleset("h1", &eps);
    let mut more = eps.clone();
    more.push(ep("h1", "g", "192.168.0.3", &["db"]));
    let after = ruleset("h1", &more);
    let changes = diff(&before, &after);
    let rules: Vec<&Rule> = changes
        .iter()
        .filter_map(|c| match c {
            Change::AppendRule { rule, .. } => Some(rule),
            _ => None,
        })
        .collect();
    assert_eq!(rules.len(), 2, "one per family");
    assert!(rules.iter().all(|r| r.verdict == Verdict::Accept));
    let mut kernel = before.clone();
    apply(&mut kernel, &changes);
    assert_eq!(kernel.sets, after.sets);
}

fn apply(rs: &mut Ruleset, changes: &[Change]) {
    for c in changes {
        match c {
            Change::CreateSet(s) => {
                rs.sets.insert(s.name.clone(), s.clone());
            }
            Change::AppendRule { chain, rule } => {
                rs.chains
                    .iter_mut()
                    .find(|c| &c.name == chain)
                    .unwrap()
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
            other => panic!("netgroup changes need no {other:?}"),
        }
    }
}

/// Evaluate the whole seed matrix the way packets travel: the source host's
/// forward hook (when the source is an endpoint), then the destination's.
fn reachable(eps: &[Endpoint], from: &Endpoint, to: &Endpoint) -> bool {
    let h_from = ruleset(&from.host, eps);
    let h_to = ruleset(&to.host, eps);
    let saddr = from.addrs().next().unwrap();
    let daddr = to.addrs().next().unwrap();
    if from.host == to.host {
        let p = Packet {
            iif: from.iface.clone(),
            oif: to.iface.clone(),
            saddr,
            daddr,
            l4: L4::Unknown,
        };
        return explain(&h_from, &p).accepted;
    }
    let out = Packet {
        iif: from.iface.clone(),
        oif: "eth0".into(),
        saddr,
        daddr,
        l4: L4::Unknown,
    };
    let inn = Packet {
        iif: "eth0".into(),
        oif: to.iface.clone(),
        saddr,
        daddr,
        l4: L4::Unknown,
    };
    explain(&h_from, &out).accepted && explain(&h_to, &inn).accepted
}

#[test]
fn seed_isolated_matrix() {
    let eps = seed();
    let name = |e: &Endpoint| e.container_id.clone();
    let expected_pairs = [
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
    for from in &eps {
        for to in &eps {
            if from.container_id == to.container_id {
                continue;
            }
            let want = expected_pairs.contains(&(name(from).as_str(), name(to).as_str()));
            assert_eq!(
                reachable(&eps, from, to),
                want,
                "{} -> {}",
                name(from),
                name(to)
            );
        }
    }
}

#[test]
fn explain_names_the_profile() {
    let eps = seed();
    let rs = ruleset("h2", &eps);
    let a_to_b = Packet {
        iif: "eth0".into(),
        oif: eps[3].iface.clone(),
        saddr: "192.168.0.1".parse().unwrap(),
        daddr: "192.168.0.65".parse().unwrap(),
        l4: L4::Unknown,
    };
    let d = explain(&rs, &a_to_b);
    assert!(d.accepted);
    assert_eq!(d.reason, "netgroup star-1");
    let c_to_b = Packet {
        saddr: "192.168.0.2".parse().unwrap(),
        ..a_to_b.clone()
    };
    let d = explain(&rs, &c_to_b);
    assert!(!d.accepted);
    assert_eq!(d.reason, "default: drop");
    // E has no netgroup: it cannot send beyond its host.
    let e_out = Packet {
        iif: eps[5].iface.clone(),
        oif: "eth0".into(),
        saddr: "192.168.0.67".parse().unwrap(),
        daddr: "192.168.255.252".parse().unwrap(),
        l4: L4::Unknown,
    };
    let d = explain(&rs, &e_out);
    assert!(!d.accepted);
    assert!(d.reason.starts_with("host profile"), "{}", d.reason);
}

/// A netgroup that sorts before those already on the host is one appended
/// rule, not a whole install: the order of netgroup rules means nothing.
#[test]
fn a_new_netgroup_sorting_first_is_still_an_append() {
    let eps = vec![ep("h1", "z", "192.168.0.1", &["zeta"])];
    let before = ruleset("h1", &eps);
    let mut more = eps.clone();
    more.push(ep("h1", "a", "192.168.0.2", &["alpha"]));
    let after = ruleset("h1", &more);
    assert!(!needs_replace(&before, &after));
    let changes = diff(&before, &after);
    let appended: Vec<&Change> = changes
        .iter()
        .filter(|c| matches!(c, Change::AppendRule { .. }))
        .collect();
    assert_eq!(appended.len(), 2, "one rule per family: {appended:?}");
}
