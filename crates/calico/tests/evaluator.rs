//! The reference evaluator, one rule feature at a time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netmod_calico::*;
use Direction::{Egress, Ingress};

fn policies(text: &str) -> Vec<GlobalNetworkPolicy> {
    parse_policies(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A policy named `name` with this spec (flow-style YAML fields).
fn policy(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\nspec: {{{spec}}}\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ep(addr: &str, pairs: &[(&str, &str)]) -> Peer {
    Peer::endpoint(ip(addr), labels(pairs))
}

fn ext(addr: &str) -> Peer {
    Peer::external(ip(addr))
}

fn flow(source: Peer, destination: Peer, packet: Packet) -> Flow {
    Flow {
        source,
        destination,
        packet,
    }
}

fn r(policy: &str, direction: Direction, index: usize) -> RuleRef {
    RuleRef {
        policy: policy.to_string(),
        direction,
        index,
    }
}

/// Ingress decision for a packet from `source` to a plain endpoint that one
/// policy `p` (selector all(), these ingress rules) governs.
fn ingress_with(rules: &str, source: Peer, packet: Packet) -> Decision {
    ingress_to(rules, source, ep("10.0.0.2", &[]), packet)
}

fn ingress_to(rules: &str, source: Peer, destination: Peer, packet: Packet) -> Decision {
    let ps = policies(&policy(
        "p",
        &format!("selector: all(), ingress: [{rules}]"),
    ));
    evaluate(&ps, &flow(source, destination, packet))
        .ingress
        .decision
}

fn allowed(d: &Decision) -> bool {
    matches!(d, Decision::Allow(_))
}

const A: &str = "10.0.0.1";

// --- Policy selection and order -------------------------------------------

#[test]
fn no_policies_means_the_profiles_decide() {
    let v = evaluate(
        &[],
        &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::tcp(1, 2)),
    );
    assert_eq!(v.egress.decision, Decision::NoPolicy);
    assert_eq!(v.ingress.decision, Decision::NoPolicy);
    assert!(v.egress.decision.profiles_decide());
    assert_eq!(v.ingress.decision.verdict(), None);
}

#[test]
fn order_then_name_and_unordered_last() {
    let text = [
        policy("zz-unordered", "ingress: [{action: Deny}]"),
        policy("aa-unordered", "ingress: [{action: Log}]"),
        policy("b-ten", "order: 10, ingress: [{action: Log}]"),
        policy("a-ten", "order: 10, ingress: [{action: Log}]"),
        policy("negative", "order: -5.5, ingress: [{action: Log}]"),
        policy("fraction", "order: 10.25, ingress: [{action: Log}]"),
    ]
    .concat();
    let mut ps = policies(&text);
    let v = evaluate(
        &ps,
        &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::tcp(1, 2)),
    );
    let expected = [
        "negative",
        "a-ten",
        "b-ten",
        "fraction",
        "aa-unordered",
        "zz-unordered",
    ];
    assert_eq!(v.ingress.policies, expected);
    assert_eq!(
        v.ingress
            .logged
            .iter()
            .map(|l| l.policy.as_str())
            .collect::<Vec<_>>(),
        &expected[..5]
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Deny(r("zz-unordered", Ingress, 0))
    );
    // The input order does not matter.
    ps.reverse();
    assert_eq!(
        evaluate(
            &ps,
            &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::tcp(1, 2))
        ),
        v
    );
    sort_policies(&mut ps);
    assert_eq!(
        ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        expected
    );
}

#[test]
fn a_policy_applies_only_to_selected_endpoints_and_its_types() {
    let text = [
        policy(
            "web-in",
            "selector: \"role == 'web'\", ingress: [{action: Deny}]",
        ),
        policy(
            "web-out",
            "selector: \"role == 'web'\", types: [Egress], egress: [{action: Allow}]",
        ),
    ]
    .concat();
    let ps = policies(&text);
    let web = ep(A, &[("role", "web")]);
    let db = ep("10.0.0.2", &[("role", "db")]);
    let v = evaluate(&ps, &flow(web.clone(), db.clone(), Packet::tcp(1, 5432)));
    assert_eq!(v.egress.decision, Decision::Allow(r("web-out", Egress, 0)));
    assert_eq!(v.egress.policies, vec!["web-out"]);
    assert_eq!(v.ingress.decision, Decision::NoPolicy);
    let v = evaluate(&ps, &flow(db, web, Packet::tcp(5432, 1)));
    assert_eq!(v.egress.decision, Decision::NoPolicy);
    assert_eq!(v.ingress.decision, Decision::Deny(r("web-in", Ingress, 0)));
    assert_eq!(v.ingress.policies, vec!["web-in"]);
}

#[test]
fn directions_are_evaluated_independently() {
    let text = [
        policy(
            "out",
            "selector: \"role == 'a'\", egress: [{action: Allow}]",
        ),
        policy("in", "selector: \"role == 'b'\", ingress: [{action: Deny}]"),
    ]
    .concat();
    let ps = policies(&text);
    let v = evaluate(
        &ps,
        &flow(
            ep(A, &[("role", "a")]),
            ep("10.0.0.2", &[("role", "b")]),
            Packet::udp(1, 2),
        ),
    );
    assert_eq!(v.egress.decision.verdict(), Some(true));
    assert_eq!(v.ingress.decision.verdict(), Some(false));
}

// --- Actions -----------------------------------------------------------------

#[test]
fn first_matching_allow_or_deny_decides() {
    let ps = policies(&policy(
        "p",
        "ingress: [{action: Deny, protocol: UDP}, {action: Allow}, {action: Deny}]",
    ));
    let d = |p| {
        evaluate(&ps, &flow(ep(A, &[]), ep("10.0.0.2", &[]), p))
            .ingress
            .decision
    };
    assert_eq!(d(Packet::udp(1, 2)), Decision::Deny(r("p", Ingress, 0)));
    assert_eq!(d(Packet::tcp(1, 2)), Decision::Allow(r("p", Ingress, 1)));
}

#[test]
fn a_decision_stops_later_policies() {
    let text = [
        policy("first", "order: 1, ingress: [{action: Allow}]"),
        policy("second", "order: 2, ingress: [{action: Deny}]"),
    ]
    .concat();
    let v = evaluate(
        &policies(&text),
        &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::tcp(1, 2)),
    );
    assert_eq!(v.ingress.decision, Decision::Allow(r("first", Ingress, 0)));
    assert_eq!(v.ingress.policies, vec!["first"]);
}

#[test]
fn log_notes_and_continues_across_policies() {
    let text = [
        policy("one", "order: 1, ingress: [{action: Log}, {action: Log, protocol: UDP}, {action: Log, protocol: TCP}]"),
        policy("two", "order: 2, ingress: [{action: Log}, {action: Allow}, {action: Log}]"),
    ]
    .concat();
    let v = evaluate(
        &policies(&text),
        &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::tcp(1, 2)),
    );
    assert_eq!(
        v.ingress.logged,
        vec![
            r("one", Ingress, 0),
            r("one", Ingress, 2),
            r("two", Ingress, 0)
        ]
    );
    assert_eq!(v.ingress.decision, Decision::Allow(r("two", Ingress, 1)));
}

#[test]
fn pass_leaves_the_policies_for_the_profiles() {
    let text = [
        policy(
            "first",
            "order: 1, ingress: [{action: Log}, {action: Pass, protocol: TCP}, {action: Deny}]",
        ),
        policy("second", "order: 2, ingress: [{action: Deny}]"),
    ]
    .concat();
    let ps = policies(&text);
    let v = evaluate(
        &ps,
        &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::tcp(1, 2)),
    );
    assert_eq!(v.ingress.decision, Decision::Pass(r("first", Ingress, 1)));
    assert!(v.ingress.decision.profiles_decide());
    assert_eq!(v.ingress.decision.verdict(), None);
    assert_eq!(v.ingress.logged, vec![r("first", Ingress, 0)]);
    assert_eq!(v.ingress.policies, vec!["first"]);
    // Without a match for Pass, the later Deny decides.
    let v = evaluate(
        &ps,
        &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::udp(1, 2)),
    );
    assert_eq!(v.ingress.decision, Decision::Deny(r("first", Ingress, 2)));
}

#[test]
fn selected_without_a_decision_is_denied() {
    let ps = policies(&policy("p", "ingress: [{action: Allow, protocol: TCP}]"));
    let v = evaluate(
        &ps,
        &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::udp(1, 2)),
    );
    assert_eq!(v.ingress.decision, Decision::DefaultDeny);
    assert_eq!(v.ingress.policies, vec!["p"]);
    // A policy with no rules for a direction it has still selects.
    let ps = policies(&policy("p", "types: [Ingress, Egress]"));
    let v = evaluate(
        &ps,
        &flow(ep(A, &[]), ep("10.0.0.2", &[]), Packet::udp(1, 2)),
    );
    assert_eq!(v.egress.decision, Decision::DefaultDeny);
    assert_eq!(v.ingress.decision, Decision::DefaultDeny);
}

#[test]
fn outside_ends_have_no_policies() {
    let ps = policies(&policy("p", "types: [Ingress, Egress]"));
    let v = evaluate(
        &ps,
        &flow(ext("192.0.2.1"), ext("192.0.2.2"), Packet::tcp(1, 2)),
    );
    assert_eq!(v.egress.decision, Decision::NotAnEndpoint);
    assert_eq!(v.ingress.decision, Decision::NotAnEndpoint);
    assert!(!v.ingress.decision.profiles_decide());
}

// --- Match criteria ------------------------------------------------------------

#[test]
fn protocol_and_not_protocol_by_name_or_number() {
    assert!(allowed(&ingress_with(
        "{action: Allow, protocol: TCP}",
        ep(A, &[]),
        Packet::tcp(1, 2)
    )));
    assert!(allowed(&ingress_with(
        "{action: Allow, protocol: 6}",
        ep(A, &[]),
        Packet::tcp(1, 2)
    )));
    assert!(!allowed(&ingress_with(
        "{action: Allow, protocol: TCP}",
        ep(A, &[]),
        Packet::udp(1, 2)
    )));
    assert!(allowed(&ingress_with(
        "{action: Allow, protocol: 47}",
        ep(A, &[]),
        Packet::other(47)
    )));
    assert!(allowed(&ingress_with(
        "{action: Allow, protocol: UDPLite}",
        ep(A, &[]),
        Packet::ports(136, 1, 2)
    )));
    assert!(allowed(&ingress_with(
        "{action: Allow, protocol: SCTP}",
        ep(A, &[]),
        Packet::sctp(1, 2)
    )));
    assert!(!allowed(&ingress_with(
        "{action: Allow, notProtocol: UDP}",
        ep(A, &[]),
        Packet::udp(1, 2)
    )));
    assert!(allowed(&ingress_with(
        "{action: Allow, notProtocol: 17}",
        ep(A, &[]),
        Packet::tcp(1, 2)
    )));
}

#[test]
fn ip_version() {
    let rule = "{action: Allow, ipVersion: 6}";
    assert!(allowed(&ingress_to(
        rule,
        ep("fd00::1", &[]),
        ep("fd00::2", &[]),
        Packet::tcp(1, 2)
    )));
    assert!(!allowed(&ingress_with(rule, ep(A, &[]), Packet::tcp(1, 2))));
}

#[test]
fn icmp_type_code_and_negation() {
    let rule = "{action: Allow, protocol: ICMP, icmp: {type: 3, code: 4}}";
    assert!(allowed(&ingress_with(rule, ep(A, &[]), Packet::icmp(3, 4))));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::icmp(3, 1)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::icmp(4, 4)
    )));
    let rule = "{action: Allow, protocol: ICMP, icmp: {type: 3}}";
    assert!(allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::icmp(3, 13)
    )));
    let rule = "{action: Allow, protocol: ICMP, notICMP: {type: 8}}";
    assert!(allowed(&ingress_with(rule, ep(A, &[]), Packet::icmp(0, 0))));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::icmp(8, 0)
    )));
    let rule = "{action: Allow, protocol: ICMP, notICMP: {type: 3, code: 1}}";
    assert!(allowed(&ingress_with(rule, ep(A, &[]), Packet::icmp(3, 0))));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::icmp(3, 1)
    )));
    let rule = "{action: Allow, protocol: ICMPv6, icmp: {type: 135}}";
    assert!(allowed(&ingress_to(
        rule,
        ep("fd00::1", &[]),
        ep("fd00::2", &[]),
        Packet::icmpv6(135, 0)
    )));
    assert!(!allowed(&ingress_to(
        rule,
        ep("fd00::1", &[]),
        ep("fd00::2", &[]),
        Packet::icmpv6(136, 0)
    )));
}

#[test]
fn source_and_destination_nets() {
    let rule =
        "{action: Allow, source: {nets: [10.0.0.0/24, 192.168.0.0/16], notNets: [10.0.0.128/25]}}";
    assert!(allowed(&ingress_with(
        rule,
        ep("10.0.0.5", &[]),
        Packet::tcp(1, 2)
    )));
    assert!(allowed(&ingress_with(
        rule,
        ext("192.168.77.1"),
        Packet::tcp(1, 2)
    )));
    assert!(
        !allowed(&ingress_with(
            rule,
            ep("10.0.0.200", &[]),
            Packet::tcp(1, 2)
        )),
        "notNets"
    );
    assert!(!allowed(&ingress_with(
        rule,
        ep("10.0.1.5", &[]),
        Packet::tcp(1, 2)
    )));
    let rule = "{action: Allow, destination: {nets: [10.0.0.2]}}";
    assert!(allowed(&ingress_with(rule, ep(A, &[]), Packet::tcp(1, 2))));
    assert!(!allowed(&ingress_to(
        rule,
        ep(A, &[]),
        ep("10.0.0.3", &[]),
        Packet::tcp(1, 2)
    )));
    // A net of the other family never matches; a notNet of the other family
    // never excludes (as Calico renders rules per IP version).
    let rule = "{action: Allow, source: {nets: [10.0.0.0/8]}}";
    assert!(!allowed(&ingress_to(
        rule,
        ep("fd00::1", &[]),
        ep("fd00::2", &[]),
        Packet::tcp(1, 2)
    )));
    let rule = "{action: Allow, source: {notNets: [10.0.0.0/8]}}";
    assert!(allowed(&ingress_to(
        rule,
        ep("fd00::1", &[]),
        ep("fd00::2", &[]),
        Packet::tcp(1, 2)
    )));
    let rule = "{action: Allow, source: {nets: ['fd00::/64']}}";
    assert!(allowed(&ingress_to(
        rule,
        ep("fd00::1", &[]),
        ep("fd00::2", &[]),
        Packet::tcp(1, 2)
    )));
    // Nets not strictly masked match their network.
    let rule = "{action: Allow, source: {nets: [10.0.0.77/24]}}";
    assert!(allowed(&ingress_with(
        rule,
        ep("10.0.0.5", &[]),
        Packet::tcp(1, 2)
    )));
}

#[test]
fn selector_matches_cluster_endpoints_only_and_not_selector_everything_else() {
    let rule = "{action: Allow, source: {selector: \"role == 'web'\"}}";
    assert!(allowed(&ingress_with(
        rule,
        ep(A, &[("role", "web")]),
        Packet::tcp(1, 2)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[("role", "db")]),
        Packet::tcp(1, 2)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ext("192.0.2.1"),
        Packet::tcp(1, 2)
    )));
    // all() in a rule: any cluster endpoint, nothing from outside.
    let rule = "{action: Allow, source: {selector: all()}}";
    assert!(allowed(&ingress_with(rule, ep(A, &[]), Packet::tcp(1, 2))));
    assert!(!allowed(&ingress_with(
        rule,
        ext("192.0.2.1"),
        Packet::tcp(1, 2)
    )));
    // `selector: !has(foo)` vs `notSelector: has(foo)` (Calico's EntityRule docs).
    let rule = "{action: Allow, source: {selector: '!has(foo)'}}";
    assert!(allowed(&ingress_with(rule, ep(A, &[]), Packet::tcp(1, 2))));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[("foo", "1")]),
        Packet::tcp(1, 2)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ext("192.0.2.1"),
        Packet::tcp(1, 2)
    )));
    let rule = "{action: Allow, source: {notSelector: 'has(foo)'}}";
    assert!(allowed(&ingress_with(rule, ep(A, &[]), Packet::tcp(1, 2))));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[("foo", "1")]),
        Packet::tcp(1, 2)
    )));
    assert!(allowed(&ingress_with(
        rule,
        ext("192.0.2.1"),
        Packet::tcp(1, 2)
    )));
    // Destination selectors look at the destination.
    let rule = "{action: Allow, destination: {selector: \"tier == 'gold'\"}}";
    assert!(allowed(&ingress_to(
        rule,
        ep(A, &[]),
        ep("10.0.0.2", &[("tier", "gold")]),
        Packet::tcp(1, 2)
    )));
    assert!(!allowed(&ingress_to(
        rule,
        ep(A, &[("tier", "gold")]),
        ep("10.0.0.2", &[]),
        Packet::tcp(1, 2)
    )));
}

#[test]
fn ports_and_not_ports_on_each_side() {
    let rule = "{action: Allow, protocol: TCP, destination: {ports: [80, '8000:8080']}}";
    for (port, ok) in [
        (80, true),
        (8000, true),
        (8042, true),
        (8080, true),
        (81, false),
        (8081, false),
    ] {
        assert_eq!(
            allowed(&ingress_with(rule, ep(A, &[]), Packet::tcp(40000, port))),
            ok,
            "{port}"
        );
    }
    let rule = "{action: Allow, protocol: TCP, source: {ports: ['1024:65535']}}";
    assert!(allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::tcp(40000, 80)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::tcp(1000, 80)
    )));
    let rule = "{action: Allow, protocol: UDP, destination: {notPorts: [53, '5353:5354']}}";
    assert!(allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::udp(1, 123)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::udp(1, 53)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::udp(1, 5354)
    )));
    let rule = "{action: Allow, protocol: TCP, source: {notPorts: [22]}}";
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::tcp(22, 80)
    )));
    assert!(allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::tcp(23, 22)
    )));
}

#[test]
fn all_criteria_of_a_rule_must_match() {
    let rule = "{action: Allow, protocol: TCP, ipVersion: 4, source: {nets: [10.0.0.0/8], selector: has(web)}, destination: {ports: [443]}}";
    let web = ep(A, &[("web", "")]);
    assert!(allowed(&ingress_with(
        rule,
        web.clone(),
        Packet::tcp(1, 443)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        web.clone(),
        Packet::tcp(1, 80)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        web.clone(),
        Packet::udp(1, 443)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ep(A, &[]),
        Packet::tcp(1, 443)
    )));
    assert!(!allowed(&ingress_with(
        rule,
        ep("11.0.0.1", &[("web", "")]),
        Packet::tcp(1, 443)
    )));
}

#[test]
fn rule_matches_and_entity_matches_are_usable_alone() {
    let p = &policies(&policy(
        "p",
        "ingress: [{action: Allow, protocol: TCP, source: {nets: [10.0.0.0/8]}}]",
    ))[0];
    let rule = &p.ingress[0];
    assert!(rule_matches(
        rule,
        &flow(ep(A, &[]), ext("192.0.2.1"), Packet::tcp(1, 2))
    ));
    assert!(!rule_matches(
        rule,
        &flow(ext("11.0.0.1"), ext("192.0.2.1"), Packet::tcp(1, 2))
    ));
    assert!(entity_matches(&rule.source, &ext("10.9.9.9"), None));
    assert!(entity_matches(
        &EntityRule::default(),
        &ext("192.0.2.1"),
        None
    ));
}

#[test]
fn decisions_display_and_rule_refs() {
    assert_eq!(r("p", Ingress, 2).to_string(), "p ingress[2]");
    assert_eq!(
        Decision::Allow(r("p", Egress, 0)).to_string(),
        "allowed by p egress[0]"
    );
    assert_eq!(
        Decision::Pass(r("p", Egress, 1)).rule(),
        Some(&r("p", Egress, 1))
    );
    assert_eq!(Decision::DefaultDeny.rule(), None);
    assert_eq!(Decision::DefaultDeny.verdict(), Some(false));
}

#[test]
fn policies_expose_their_distinct_selectors() {
    let p = &policies(&policy(
        "p",
        "selector: \"a == 'x'\", ingress: [{action: Allow, source: {selector: \"a=='x'\", notSelector: has(b)}}, {action: Deny, destination: {selector: has( b )}}]",
    ))[0];
    let canon: Vec<String> = p.selectors().into_iter().map(|s| s.to_string()).collect();
    assert_eq!(canon, vec!["has(b)", "a == \"x\""]);
    assert!(p.applies_to(&labels(&[("a", "x")]), Ingress));
    assert!(!p.applies_to(&labels(&[("a", "x")]), Egress));
}
