//! Walk a packet through a host's ruleset, as the kernel would for a new
//! connection, and say which rule decided. `netmod explain` uses it on the
//! very rulesets the dataplane installs.

use netmod_model::nft::*;
use serde::Serialize;
use std::net::IpAddr;

/// A new connection's first packet, as the forward hook of one host sees it.
#[derive(Debug, Clone)]
pub struct Packet {
    pub iif: String,
    pub oif: String,
    pub saddr: IpAddr,
    pub daddr: IpAddr,
    pub l4: L4,
}

/// What the packet carries above IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum L4 {
    /// Not said: a rule that looks at the protocol, ports or ICMP type
    /// does not match (only the profiles and address rules can decide).
    Unknown,
    /// TCP, UDP, SCTP, UDPLite (by protocol number) with ports.
    Ports { proto: u8, sport: u16, dport: u16 },
    /// ICMP (1) or ICMPv6 (58).
    Icmp { proto: u8, icmp_type: u8, code: u8 },
}

impl L4 {
    fn proto(&self) -> Option<u8> {
        match self {
            L4::Unknown => None,
            L4::Ports { proto, .. } | L4::Icmp { proto, .. } => Some(*proto),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub accepted: bool,
    /// The chain and rule that decided (`None`: the base chain's policy).
    pub chain: String,
    pub rule: Option<String>,
    /// The deciding rule's comment: which profile or policy rule
    /// (`policy P ingress[2]`) allowed or dropped it.
    pub reason: String,
    /// Comments of the rules that sent the packet on (jumps, gotos) or
    /// logged it, in order: the policies it went through, a Pass.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub trail: Vec<String>,
}

/// One host's verdict on the way.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub host: String,
    pub hook: String,
    pub decision: Decision,
}

enum Outcome {
    Final(Decision),
    Return,
}

fn matches(m: &Match, pkt: &Packet, rs: &Ruleset) -> bool {
    let in_set = |set: &str, family: Family, addr: &IpAddr| {
        Family::of(addr) == family && rs.sets.get(set).is_some_and(|s| s.elements.contains(addr))
    };
    let addr = |source: bool| if source { pkt.saddr } else { pkt.daddr };
    let family = Family::of(&pkt.saddr);
    match m {
        Match::IifPrefix(p) => pkt.iif.starts_with(p.as_str()),
        Match::OifPrefix(p) => pkt.oif.starts_with(p.as_str()),
        // A new connection; replies are accepted by the kernel's conntrack.
        Match::CtEstablishedOrRelated => false,
        // The first packet of a new connection is tracked, never invalid.
        Match::CtInvalid => false,
        Match::IcmpType {
            family: f,
            icmp_type: t,
        } => matches!(pkt.l4, L4::Icmp { proto, icmp_type, .. }
            if *f == family && icmp_type == *t && proto == if *f == Family::V4 { 1 } else { 58 }),
        // The packets explained carry their sender's own address.
        Match::SourceNotRoutedViaIif => false,
        Match::SaddrIn { set, family } => in_set(set, *family, &pkt.saddr),
        Match::DaddrIn { set, family } => in_set(set, *family, &pkt.daddr),
        Match::AddrNotIn {
            source,
            set,
            family: f,
        } => *f == family && !in_set(set, *f, &addr(*source)),
        Match::NfProto(f) => *f == family,
        Match::L4Proto { proto, negate } => {
            pkt.l4.proto().is_some_and(|p| (p == *proto) != *negate)
        }
        Match::Port {
            source,
            first,
            last,
            negate,
        } => match pkt.l4 {
            L4::Ports { sport, dport, .. } => {
                let p = if *source { sport } else { dport };
                (*first <= p && p <= *last) != *negate
            }
            _ => false,
        },
        Match::Icmp {
            family: f,
            icmp_type: t,
            code,
            negate,
        } => {
            let want = if *f == Family::V4 { 1 } else { 58 };
            match pkt.l4 {
                L4::Icmp {
                    proto,
                    icmp_type,
                    code: c,
                } if proto == want && *f == family => match code {
                    None => (icmp_type == *t) != *negate,
                    Some(code) => icmp_type == *t && ((c == *code) != *negate),
                },
                _ => false,
            }
        }
        Match::AddrInNet {
            source,
            net,
            negate,
        } => {
            let a = addr(*source);
            Family::of(&a) == Family::of(&net.addr()) && (net.contains(&a) != *negate)
        }
        // The first packet of a connection is within any rate.
        Match::Limit { .. } => true,
        // A statement: it logs, and the rule goes on.
        Match::Log { .. } => true,
        // Raw transport bits check VXLAN's inner frame on the underlay,
        // which an endpoint's packet never is.
        Match::TransportBits { .. } => false,
    }
}

fn walk(rs: &Ruleset, chain: &str, pkt: &Packet, depth: usize, trail: &mut Vec<String>) -> Outcome {
    let Some(def) = rs.chains.iter().find(|c| c.name == chain) else {
        return Outcome::Return;
    };
    if depth > 16 {
        return Outcome::Return;
    }
    for rule in &def.rules {
        if !rule.matches.iter().all(|m| matches(m, pkt, rs)) {
            continue;
        }
        let decided = |accepted, trail: &mut Vec<String>| {
            Outcome::Final(Decision {
                accepted,
                chain: chain.to_string(),
                rule: Some(rule.to_string()),
                reason: rule.comment.clone(),
                trail: std::mem::take(trail),
            })
        };
        let note = |trail: &mut Vec<String>, what: &str| {
            if !rule.comment.is_empty() {
                trail.push(format!("{}{what}", rule.comment));
            }
        };
        match &rule.verdict {
            Verdict::Accept => return decided(true, trail),
            Verdict::Drop => return decided(false, trail),
            // NAT, then on like accept.
            Verdict::Masquerade => return decided(true, trail),
            Verdict::Return => return Outcome::Return,
            Verdict::Continue => {
                if rule.matches.iter().any(|m| matches!(m, Match::Log { .. })) {
                    note(trail, " (logged)");
                }
            }
            Verdict::Jump(target) => {
                let before = trail.len();
                note(trail, "");
                let noted = trail.len();
                if let Outcome::Final(d) = walk(rs, target, pkt, depth + 1, trail) {
                    return Outcome::Final(d);
                }
                // A chain that returned without logging anything is no news.
                if trail.len() == noted {
                    trail.truncate(before);
                }
            }
            // The target's return goes to this chain's caller.
            Verdict::Goto(target) => {
                note(trail, "");
                return walk(rs, target, pkt, depth + 1, trail);
            }
        }
    }
    if let Some(hook) = &def.hook {
        return Outcome::Final(Decision {
            accepted: hook.accept_by_default,
            chain: chain.to_string(),
            rule: None,
            reason: "not netmod's traffic: base chain policy".into(),
            trail: std::mem::take(trail),
        });
    }
    Outcome::Return
}

/// The fate of a packet in one host's forward hook.
pub fn explain(rs: &Ruleset, pkt: &Packet) -> Decision {
    let mut trail = Vec::new();
    match walk(rs, CHAIN_FORWARD, pkt, 0, &mut trail) {
        Outcome::Final(d) => d,
        Outcome::Return => Decision {
            accepted: true,
            chain: CHAIN_FORWARD.into(),
            rule: None,
            reason: "base chain policy".into(),
            trail,
        },
    }
}
