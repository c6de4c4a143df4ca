//! The reference evaluator: Calico's policy semantics written as plainly as
//! possible, as the oracle for differential tests of what the dataplane
//! installs and for `explain`.
//!
//! For one packet, egress is evaluated on the source endpoint and ingress on
//! the destination endpoint, each independently:
//! - the policies that select the endpoint and have that direction in
//!   `spec.types` are taken in Calico's order (`order`, absent last, then
//!   name);
//! - in each, the rules of that direction are tried in order: the first
//!   `Allow` or `Deny` that matches decides; a matching `Log` is noted and
//!   evaluation goes on; a matching `Pass` leaves the policies and the
//!   endpoint's profiles decide;
//! - if at least one policy selected the endpoint and none decided, the
//!   packet is denied; if none selected it, the profiles decide.
//!
//! An end outside the cluster (an address without labels) has no policies
//! of its own: that direction is [`Decision::NotAnEndpoint`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::model::*;
use crate::selector::Selector;

/// One end of a packet: an address, and the labels of the cluster endpoint
/// that owns it (`None` for an address outside the cluster).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    pub labels: Option<BTreeMap<String, String>>,
}

impl Peer {
    /// A cluster endpoint with these labels.
    pub fn endpoint(address: IpAddr, labels: BTreeMap<String, String>) -> Peer {
        Peer {
            address,
            labels: Some(labels),
        }
    }

    /// An address outside the cluster.
    pub fn external(address: IpAddr) -> Peer {
        Peer {
            address,
            labels: None,
        }
    }
}

/// What the packet carries above IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP, UDP, SCTP, UDPLite: source and destination ports.
    Ports { source: u16, destination: u16 },
    /// ICMP or ICMPv6: type and code.
    Icmp { icmp_type: u8, code: u8 },
    /// Anything else.
    Other,
}

/// The packet's protocol and transport header; its IP version is that of
/// the peers' addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    /// The IP protocol number.
    pub protocol: u8,
    pub transport: Transport,
}

impl Packet {
    pub fn tcp(source: u16, destination: u16) -> Packet {
        Packet::ports(6, source, destination)
    }
    pub fn udp(source: u16, destination: u16) -> Packet {
        Packet::ports(17, source, destination)
    }
    pub fn sctp(source: u16, destination: u16) -> Packet {
        Packet::ports(132, source, destination)
    }
    /// A protocol with ports (6, 17, 132, 136).
    pub fn ports(protocol: u8, source: u16, destination: u16) -> Packet {
        Packet {
            protocol,
            transport: Transport::Ports {
                source,
                destination,
            },
        }
    }
    /// ICMP (IPv4).
    pub fn icmp(icmp_type: u8, code: u8) -> Packet {
        Packet {
            protocol: 1,
            transport: Transport::Icmp { icmp_type, code },
        }
    }
    /// ICMPv6.
    pub fn icmpv6(icmp_type: u8, code: u8) -> Packet {
        Packet {
            protocol: 58,
            transport: Transport::Icmp { icmp_type, code },
        }
    }
    /// Another protocol, without a transport header the rules can look at.
    pub fn other(protocol: u8) -> Packet {
        Packet {
            protocol,
            transport: Transport::Other,
        }
    }
}

/// A packet between two peers. The two addresses should be of one family;
/// the source's family is taken as the packet's IP version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub source: Peer,
    pub destination: Peer,
    pub packet: Packet,
}

impl Flow {
    pub fn ip_version(&self) -> IpVersion {
        IpVersion::of(self.source.address)
    }
}

/// A rule of a policy: the policy's name, the direction and the rule's
/// 0-based index in that direction's list.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}[{}]",
            self.policy,
            self.direction.as_str().to_lowercase(),
            self.index
        )
    }
}

/// How one direction was decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An `Allow` rule matched.
    Allow(RuleRef),
    /// A `Deny` rule matched.
    Deny(RuleRef),
    /// A `Pass` rule matched: the endpoint's profiles decide.
    Pass(RuleRef),
    /// No policy selects the endpoint for this direction: the profiles decide.
    NoPolicy,
    /// Policies selected the endpoint and none decided: denied.
    DefaultDeny,
    /// This end is outside the cluster: it has no policies.
    NotAnEndpoint,
}

impl Decision {
    /// `Some(true)` for allowed, `Some(false)` for denied, `None` when the
    /// profiles decide (Pass, no policy) or the end is outside the cluster.
    pub fn verdict(&self) -> Option<bool> {
        match self {
            Decision::Allow(_) => Some(true),
            Decision::Deny(_) | Decision::DefaultDeny => Some(false),
            Decision::Pass(_) | Decision::NoPolicy | Decision::NotAnEndpoint => None,
        }
    }

    /// Whether the endpoint's profiles decide (after a Pass, or with no policy).
    pub fn profiles_decide(&self) -> bool {
        matches!(self, Decision::Pass(_) | Decision::NoPolicy)
    }

    /// The rule that decided, if one did.
    pub fn rule(&self) -> Option<&RuleRef> {
        match self {
            Decision::Allow(r) | Decision::Deny(r) | Decision::Pass(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow(r) => write!(f, "allowed by {r}"),
            Decision::Deny(r) => write!(f, "denied by {r}"),
            Decision::Pass(r) => write!(f, "passed to the profiles by {r}"),
            Decision::NoPolicy => f.write_str("no policy applies: profiles decide"),
            Decision::DefaultDeny => f.write_str("denied: selected by policies, none allowed it"),
            Decision::NotAnEndpoint => f.write_str("not a cluster endpoint"),
        }
    }
}

/// The evaluation of one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionVerdict {
    pub decision: Decision,
    /// The policies that applied, in evaluation order (up to the one that decided).
    pub policies: Vec<String>,
    /// The `Log` rules that matched on the way, in order.
    pub logged: Vec<RuleRef>,
}

/// Both directions of one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// On the source endpoint.
    pub egress: DirectionVerdict,
    /// On the destination endpoint.
    pub ingress: DirectionVerdict,
}

/// Evaluates a packet against all policies (in any order; they are sorted
/// here into Calico's order).
pub fn evaluate(policies: &[GlobalNetworkPolicy], flow: &Flow) -> Verdict {
    let mut ordered: Vec<&GlobalNetworkPolicy> = policies.iter().collect();
    ordered.sort_by(|a, b| policy_order(a, b));
    Verdict {
        egress: evaluate_direction(&ordered, flow, Direction::Egress),
        ingress: evaluate_direction(&ordered, flow, Direction::Ingress),
    }
}

/// Evaluates one direction; `ordered` must already be in Calico's order
/// (see [`policy_order`]).
pub fn evaluate_direction(
    ordered: &[&GlobalNetworkPolicy],
    flow: &Flow,
    direction: Direction,
) -> DirectionVerdict {
    let endpoint = match direction {
        Direction::Egress => &flow.source,
        Direction::Ingress => &flow.destination,
    };
    let mut verdict = DirectionVerdict {
        decision: Decision::NoPolicy,
        policies: Vec::new(),
        logged: Vec::new(),
    };
    let Some(labels) = &endpoint.labels else {
        verdict.decision = Decision::NotAnEndpoint;
        return verdict;
    };
    for policy in ordered.iter().filter(|p| p.applies_to(labels, direction)) {
        verdict.policies.push(policy.name.clone());
        for (index, rule) in policy.rules(direction).iter().enumerate() {
            if !rule_matches(rule, flow) {
                continue;
            }
            let at = RuleRef {
                policy: policy.name.clone(),
                direction,
                index,
            };
            match rule.action {
                Action::Log => verdict.logged.push(at),
                Action::Allow => {
                    verdict.decision = Decision::Allow(at);
                    return verdict;
                }
                Action::Deny => {
                    verdict.decision = Decision::Deny(at);
                    return verdict;
                }
                Action::Pass => {
                    verdict.decision = Decision::Pass(at);
                    return verdict;
                }
            }
        }
    }
    if !verdict.policies.is_empty() {
        verdict.decision = Decision::DefaultDeny;
    }
    verdict
}

/// Whether every criterion of the rule matches the packet.
pub fn rule_matches(rule: &Rule, flow: &Flow) -> bool {
    let packet = &flow.packet;
    if rule.ip_version.is_some_and(|v| v != flow.ip_version()) {
        return false;
    }
    if rule.protocol.is_some_and(|p| p.number() != packet.protocol) {
        return false;
    }
    if rule
        .not_protocol
        .is_some_and(|p| p.number() == packet.protocol)
    {
        return false;
    }
    let icmp = match packet.transport {
        Transport::Icmp { icmp_type, code } => Some((icmp_type, code)),
        _ => None,
    };
    if let Some(m) = &rule.icmp {
        if !icmp.is_some_and(|(t, c)| m.matches(t, c)) {
            return false;
        }
    }
    if let Some(m) = &rule.not_icmp {
        if icmp.is_some_and(|(t, c)| m.matches(t, c)) {
            return false;
        }
    }
    let (source_port, destination_port) = match packet.transport {
        Transport::Ports {
            source,
            destination,
        } => (Some(source), Some(destination)),
        _ => (None, None),
    };
    entity_matches(&rule.source, &flow.source, source_port)
        && entity_matches(&rule.destination, &flow.destination, destination_port)
}

/// Whether one end of the packet matches a rule's `source` or `destination`.
pub fn entity_matches(entity: &EntityRule, peer: &Peer, port: Option<u16>) -> bool {
    let addr = peer.address;
    if !entity.nets.is_empty() && !entity.nets.iter().any(|n| n.contains(&addr)) {
        return false;
    }
    if entity.not_nets.iter().any(|n| n.contains(&addr)) {
        return false;
    }
    // A selector matches cluster endpoints only; notSelector matches
    // everything else, addresses outside the cluster included.
    let selected = |s: &Selector| peer.labels.as_ref().is_some_and(|l| s.matches(l));
    if entity.selector.as_ref().is_some_and(|s| !selected(s)) {
        return false;
    }
    if entity.not_selector.as_ref().is_some_and(selected) {
        return false;
    }
    if !entity.ports.is_empty() && !port.is_some_and(|p| entity.ports.iter().any(|r| r.contains(p)))
    {
        return false;
    }
    if !entity.not_ports.is_empty() {
        // A packet without ports cannot be shown to avoid them.
        let Some(p) = port else { return false };
        if entity.not_ports.iter().any(|r| r.contains(p)) {
            return false;
        }
    }
    true
}
