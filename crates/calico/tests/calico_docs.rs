//! Calico's own documentation examples of GlobalNetworkPolicy, applied
//! unchanged (except where a test says otherwise), evaluated against what
//! the documentation says they do.
//!
//! Sources: shared/reference/calico-policy.md; Calico's docs (tigera/docs):
//! reference/resources/globalnetworkpolicy, network-policy/policy-rules/
//! icmp-ping, log-rules, external-ips-policy, get-started/
//! kubernetes-default-deny and calico-policy/calico-network-policy. Each
//! example's one copy is `examples/calico/<name>.yaml` (its header names
//! the page); the tests read it with `include_str!`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netmod_calico::*;

fn policies(text: &str) -> Vec<GlobalNetworkPolicy> {
    parse_policies(text).unwrap_or_else(|e| panic!("{e}"))
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

fn endpoint(addr: &str, pairs: &[(&str, &str)]) -> Peer {
    Peer::endpoint(ip(addr), labels(pairs))
}

fn flow(source: Peer, destination: Peer, packet: Packet) -> Flow {
    Flow {
        source,
        destination,
        packet,
    }
}

fn rule(policy: &str, direction: Direction, index: usize) -> RuleRef {
    RuleRef {
        policy: policy.to_string(),
        direction,
        index,
    }
}

use Direction::{Egress, Ingress};

/// One of Calico's documentation examples, as netmod keeps it:
/// `examples/calico/<name>.yaml` (a comment naming its page, then the YAML).
macro_rules! example {
    ($name:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/calico/",
            $name,
            ".yaml"
        ))
    };
}

const ALLOW_TCP_6379: &str = example!("allow-tcp-6379");

#[test]
fn allow_tcp_6379_the_reference_example() {
    let ps = policies(ALLOW_TCP_6379);
    let frontend = endpoint("10.0.0.1", &[("role", "frontend")]);
    let database = endpoint("10.0.0.2", &[("role", "database")]);
    let other = endpoint("10.0.0.3", &[("role", "batch")]);
    let outside = Peer::external(ip("203.0.113.9"));

    // "allows TCP traffic from frontend endpoints to port 6379 on database endpoints"
    let v = evaluate(
        &ps,
        &flow(frontend.clone(), database.clone(), Packet::tcp(40000, 6379)),
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Allow(rule("allow-tcp-6379", Ingress, 0))
    );
    assert_eq!(v.ingress.policies, vec!["allow-tcp-6379"]);
    // The frontend is not selected by the policy: its profiles decide egress.
    assert_eq!(v.egress.decision, Decision::NoPolicy);
    assert!(v.egress.policies.is_empty());

    // Anything else into a database endpoint is denied: the policy selects
    // it for ingress and no rule allows.
    for f in [
        flow(frontend.clone(), database.clone(), Packet::tcp(40000, 6380)),
        flow(frontend.clone(), database.clone(), Packet::udp(40000, 6379)),
        flow(frontend.clone(), database.clone(), Packet::icmp(8, 0)),
        flow(other.clone(), database.clone(), Packet::tcp(40000, 6379)),
        // Outside the cluster: a selector matches cluster endpoints only.
        flow(outside.clone(), database.clone(), Packet::tcp(40000, 6379)),
    ] {
        let v = evaluate(&ps, &f);
        assert_eq!(v.ingress.decision, Decision::DefaultDeny, "{f:?}");
    }
    let v = evaluate(
        &ps,
        &flow(outside.clone(), database.clone(), Packet::tcp(1, 6379)),
    );
    assert_eq!(v.egress.decision, Decision::NotAnEndpoint);

    // "egress: - action: Allow": the database may send anything.
    let v = evaluate(
        &ps,
        &flow(database.clone(), outside.clone(), Packet::udp(5, 53)),
    );
    assert_eq!(
        v.egress.decision,
        Decision::Allow(rule("allow-tcp-6379", Egress, 0))
    );
    assert_eq!(v.ingress.decision, Decision::NotAnEndpoint);
    let v = evaluate(
        &ps,
        &flow(database.clone(), frontend.clone(), Packet::tcp(6379, 40000)),
    );
    assert_eq!(
        v.egress.decision,
        Decision::Allow(rule("allow-tcp-6379", Egress, 0))
    );
    assert_eq!(v.ingress.decision, Decision::NoPolicy);

    // Other endpoints are untouched.
    let v = evaluate(
        &ps,
        &flow(other.clone(), frontend.clone(), Packet::tcp(1, 2)),
    );
    assert_eq!(v.egress.decision, Decision::NoPolicy);
    assert_eq!(v.ingress.decision, Decision::NoPolicy);
}

#[test]
fn reference_sample_with_rule_metadata_means_the_same() {
    let with_meta = example!("allow-tcp-6379-rule-metadata");
    let a = policies(ALLOW_TCP_6379);
    let b = policies(with_meta);
    assert_ne!(a, b, "annotations are kept");
    let f = flow(
        endpoint("10.0.0.1", &[("role", "frontend")]),
        endpoint("10.0.0.2", &[("role", "database")]),
        Packet::tcp(1, 6379),
    );
    assert_eq!(evaluate(&a, &f), evaluate(&b, &f));
}

const BLOCK_ICMP: &str = example!("block-icmp");

const ALLOW_PING_IN_CLUSTER: &str = example!("allow-ping-in-cluster");

const ALLOW_HOST_UNREACHABLE: &str = example!("allow-host-unreachable");

#[test]
fn block_icmp_denies_icmp_both_ways_and_everything_else_by_default() {
    let ps = policies(BLOCK_ICMP);
    let a = endpoint("10.0.0.1", &[]);
    let b = endpoint("10.0.0.2", &[]);
    let v = evaluate(&ps, &flow(a.clone(), b.clone(), Packet::icmp(8, 0)));
    assert_eq!(
        v.egress.decision,
        Decision::Deny(rule("block-icmp", Egress, 0))
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Deny(rule("block-icmp", Ingress, 0))
    );
    let a6 = endpoint("fd00::1", &[]);
    let b6 = endpoint("fd00::2", &[]);
    let v = evaluate(&ps, &flow(a6, b6, Packet::icmpv6(128, 0)));
    assert_eq!(
        v.egress.decision,
        Decision::Deny(rule("block-icmp", Egress, 1))
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Deny(rule("block-icmp", Ingress, 1))
    );
    // "It enables a default deny for all workloads and host endpoints".
    let v = evaluate(&ps, &flow(a, b, Packet::tcp(1, 80)));
    assert_eq!(v.egress.decision, Decision::DefaultDeny);
    assert_eq!(v.ingress.decision, Decision::DefaultDeny);
}

#[test]
fn allow_ping_in_cluster() {
    let ps = policies(ALLOW_PING_IN_CLUSTER);
    let a = endpoint("10.0.0.1", &[("app", "x")]);
    let b = endpoint("10.0.0.2", &[]);
    let v = evaluate(&ps, &flow(a.clone(), b.clone(), Packet::icmp(8, 0)));
    assert_eq!(
        v.ingress.decision,
        Decision::Allow(rule("allow-ping-in-cluster", Ingress, 0))
    );
    // "Egress traffic is not affected, and default deny is not enforced for egress."
    assert_eq!(v.egress.decision, Decision::NoPolicy);
    let v = evaluate(
        &ps,
        &flow(
            endpoint("fd00::1", &[]),
            endpoint("fd00::2", &[]),
            Packet::icmpv6(128, 0),
        ),
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Allow(rule("allow-ping-in-cluster", Ingress, 1))
    );
    // Pings "that come from other workloads and host endpoints": not from outside.
    let v = evaluate(
        &ps,
        &flow(
            Peer::external(ip("198.51.100.1")),
            b.clone(),
            Packet::icmp(8, 0),
        ),
    );
    assert_eq!(v.ingress.decision, Decision::DefaultDeny);
    // Only echo requests; "If traffic is not explicitly allowed, it will be denied by default."
    for p in [Packet::icmp(0, 0), Packet::tcp(1, 80), Packet::icmpv6(8, 0)] {
        let v = evaluate(&ps, &flow(a.clone(), b.clone(), p));
        assert_eq!(v.ingress.decision, Decision::DefaultDeny, "{p:?}");
    }
}

#[test]
fn block_icmp_comes_before_allow_ping_by_order() {
    let ps = policies(&format!("{BLOCK_ICMP}---\n{ALLOW_PING_IN_CLUSTER}"));
    let v = evaluate(
        &ps,
        &flow(
            endpoint("10.0.0.1", &[]),
            endpoint("10.0.0.2", &[]),
            Packet::icmp(8, 0),
        ),
    );
    // order 200 applies before a policy without order.
    assert_eq!(
        v.ingress.decision,
        Decision::Deny(rule("block-icmp", Ingress, 0))
    );
    assert_eq!(v.ingress.policies, vec!["block-icmp"]);
}

#[test]
fn allow_host_unreachable_matches_type_and_code() {
    let ps = policies(ALLOW_HOST_UNREACHABLE);
    let pod = endpoint(
        "10.0.0.2",
        &[("projectcalico.org/orchestrator", "kubernetes")],
    );
    let src = endpoint("10.0.0.1", &[]);
    let v = evaluate(&ps, &flow(src.clone(), pod.clone(), Packet::icmp(3, 1)));
    assert_eq!(
        v.ingress.decision,
        Decision::Allow(rule("allow-host-unreachable", Ingress, 0))
    );
    // No source restriction: from outside the cluster too.
    let v = evaluate(
        &ps,
        &flow(
            Peer::external(ip("192.0.2.1")),
            pod.clone(),
            Packet::icmp(3, 1),
        ),
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Allow(rule("allow-host-unreachable", Ingress, 0))
    );
    for p in [Packet::icmp(3, 0), Packet::icmp(3, 3), Packet::icmp(8, 1)] {
        assert_eq!(
            evaluate(&ps, &flow(src.clone(), pod.clone(), p))
                .ingress
                .decision,
            Decision::DefaultDeny
        );
    }
    // Endpoints without the label are not selected.
    let vm = endpoint(
        "10.0.0.3",
        &[("projectcalico.org/orchestrator", "openstack")],
    );
    assert_eq!(
        evaluate(&ps, &flow(src, vm, Packet::icmp(3, 0)))
            .ingress
            .decision,
        Decision::NoPolicy
    );
}

#[test]
fn default_deny_for_everything() {
    let ps = policies(example!("default-deny"));
    let v = evaluate(
        &ps,
        &flow(
            endpoint("10.0.0.1", &[]),
            endpoint("10.0.0.2", &[("a", "b")]),
            Packet::udp(1, 53),
        ),
    );
    assert_eq!(v.egress.decision, Decision::DefaultDeny);
    assert_eq!(v.ingress.decision, Decision::DefaultDeny);
    assert_eq!(v.ingress.decision.verdict(), Some(false));
}

const LOG_EVERYTHING: &str = example!("log-everything-in-cluster");

#[test]
fn log_everything_logs_and_then_the_tier_default_denies() {
    // "Always pair a log action with an explicit Allow rule immediately after
    // it. Otherwise, traffic may be denied due to the tier's implicit default
    // action."
    let ps = policies(LOG_EVERYTHING);
    let v = evaluate(
        &ps,
        &flow(
            endpoint("10.0.0.1", &[]),
            endpoint("10.0.0.2", &[]),
            Packet::tcp(1, 80),
        ),
    );
    assert_eq!(
        v.egress.logged,
        vec![rule("log-everything-in-cluster", Egress, 0)]
    );
    assert_eq!(v.egress.decision, Decision::DefaultDeny);
    assert_eq!(
        v.ingress.logged,
        vec![rule("log-everything-in-cluster", Ingress, 0)]
    );
    assert_eq!(v.ingress.decision, Decision::DefaultDeny);
}

#[test]
fn log_everything_with_allow_tcp_6379() {
    // The logging policy (order 100000) comes before the unordered one, logs,
    // and the later policy still decides.
    let ps = policies(&format!("{LOG_EVERYTHING}---\n{ALLOW_TCP_6379}"));
    let v = evaluate(
        &ps,
        &flow(
            endpoint("10.0.0.1", &[("role", "frontend")]),
            endpoint("10.0.0.2", &[("role", "database")]),
            Packet::tcp(40000, 6379),
        ),
    );
    assert_eq!(
        v.ingress.logged,
        vec![rule("log-everything-in-cluster", Ingress, 0)]
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Allow(rule("allow-tcp-6379", Ingress, 0))
    );
    assert_eq!(
        v.ingress.policies,
        vec!["log-everything-in-cluster", "allow-tcp-6379"]
    );
    // The frontend is selected by the logging policy only: logged, then denied.
    assert_eq!(
        v.egress.logged,
        vec![rule("log-everything-in-cluster", Egress, 0)]
    );
    assert_eq!(v.egress.decision, Decision::DefaultDeny);
}

#[test]
fn deny_blue() {
    let ps = policies(example!("deny-blue"));
    // No types: Ingress only, as the policy has ingress rules only.
    assert!(ps[0].types.ingress && !ps[0].types.egress);
    let red = endpoint("10.0.0.1", &[("color", "red")]);
    let blue = endpoint("10.0.0.2", &[("color", "blue")]);
    let green = endpoint("10.0.0.3", &[("color", "green")]);
    // "incoming TCP traffic to any pods with label color: red is denied if it comes from a pod with color: blue"
    let v = evaluate(&ps, &flow(blue.clone(), red.clone(), Packet::tcp(1, 80)));
    assert_eq!(
        v.ingress.decision,
        Decision::Deny(rule("deny-blue", Ingress, 0))
    );
    // Other traffic to red: selected, no rule decides: denied by default.
    let v = evaluate(&ps, &flow(green.clone(), red.clone(), Packet::tcp(1, 80)));
    assert_eq!(v.ingress.decision, Decision::DefaultDeny);
    // Red's own egress is not governed.
    let v = evaluate(&ps, &flow(red, blue, Packet::tcp(1, 80)));
    assert_eq!(v.egress.decision, Decision::NoPolicy);
}

#[test]
fn doc_examples_that_use_unsupported_fields_are_refused_with_the_field() {
    // get-started: namespaceSelector in a rule.
    let deny_circle_blue = example!("deny-circle-blue");
    assert_eq!(
        parse_policies(deny_circle_blue).unwrap_err().to_string(),
        "document 1 (deny-circle-blue): spec.ingress[0].source.namespaceSelector: not supported by netmod: namespace selection (netmod has no namespaces); match endpoints with selector"
    );
    // kubernetes-default-deny: a policy-level namespaceSelector.
    let deny_app_policy = example!("deny-app-policy");
    let e = parse_policies(deny_app_policy).unwrap_err();
    assert_eq!(e.path(), "spec.namespaceSelector");
    assert!(matches!(e.kind(), ErrorKind::Unsupported(_)));
    // external-ips-policy: doNotTrack / applyOnForward (host endpoints).
    let e = parse_policies(IP_PROTECT).unwrap_err();
    assert_eq!(
        e.to_string(),
        "document 1 (forward-default-allow): spec.applyOnForward: not supported by netmod: host-endpoint policy options (only `false` is accepted)"
    );
}

const IP_PROTECT: &str = example!("ip-protect");

#[test]
fn ip_protect_without_its_host_endpoint_options() {
    // The same two policies without doNotTrack/applyOnForward: order 0
    // denies the deny-listed sources, order 1000 allows the rest. (Calico
    // labels a GlobalNetworkSet with ip-deny-list; here an endpoint carries
    // the label, as netmod has no network sets.)
    let text = IP_PROTECT
        .replace("  doNotTrack: true\n", "")
        .replace("  applyOnForward: true\n", "");
    let ps = policies(&text);
    let protected = endpoint("10.0.0.1", &[("apply-ip-protect", "true")]);
    let bad = endpoint("10.0.0.2", &[("ip-deny-list", "true")]);
    let namespaced = endpoint(
        "10.0.0.3",
        &[
            ("ip-deny-list", "true"),
            ("projectcalico.org/namespace", "x"),
        ],
    );
    let v = evaluate(&ps, &flow(bad, protected.clone(), Packet::tcp(1, 22)));
    assert_eq!(
        v.ingress.decision,
        Decision::Deny(rule("ip-protect", Ingress, 0))
    );
    let v = evaluate(
        &ps,
        &flow(namespaced, protected.clone(), Packet::tcp(1, 22)),
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Allow(rule("forward-default-allow", Ingress, 0))
    );
    assert_eq!(
        v.ingress.policies,
        vec!["ip-protect", "forward-default-allow"]
    );
    let v = evaluate(
        &ps,
        &flow(
            Peer::external(ip("192.0.2.55")),
            protected,
            Packet::tcp(1, 22),
        ),
    );
    assert_eq!(
        v.ingress.decision,
        Decision::Allow(rule("forward-default-allow", Ingress, 0))
    );
}
