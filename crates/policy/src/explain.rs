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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub accepted: bool,
    /// The chain and rule that decided (`None`: the base chain's policy).
    pub chain: String,
    pub rule: Option<String>,
    /// The deciding rule's comment: which profile allowed or dropped it.
    pub reason: String,
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
    match m {
        Match::IifPrefix(p) => pkt.iif.starts_with(p.as_str()),
        Match::OifPrefix(p) => pkt.oif.starts_with(p.as_str()),
        // A new connection; replies are accepted by the kernel's conntrack.
        Match::CtEstablishedOrRelated => false,
        // The first packet of a new connection is tracked, never invalid.
        Match::CtInvalid => false,
        // Explained packets are connections (TCP, UDP), not ICMP messages.
        Match::IcmpType { .. } => false,
        // The packets explained carry their sender's own address.
        Match::SourceNotRoutedViaIif => false,
        Match::SaddrIn { set, family } => in_set(set, *family, &pkt.saddr),
        Match::DaddrIn { set, family } => in_set(set, *family, &pkt.daddr),
    }
}

fn walk(rs: &Ruleset, chain: &str, pkt: &Packet, depth: usize) -> Outcome {
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
        let decided = |accepted| {
            Outcome::Final(Decision {
                accepted,
                chain: chain.to_string(),
                rule: Some(rule.to_string()),
                reason: rule.comment.clone(),
            })
        };
        match &rule.verdict {
            Verdict::Accept => return decided(true),
            Verdict::Drop => return decided(false),
            Verdict::Return => return Outcome::Return,
            Verdict::Jump(target) => {
                if let Outcome::Final(d) = walk(rs, target, pkt, depth + 1) {
                    return Outcome::Final(d);
                }
            }
        }
    }
    if let Some(hook) = &def.hook {
        return Outcome::Final(Decision {
            accepted: hook.accept_by_default,
            chain: chain.to_string(),
            rule: None,
            reason: "not netmod's traffic: base chain policy".into(),
        });
    }
    Outcome::Return
}

/// The fate of a packet in one host's forward hook.
pub fn explain(rs: &Ruleset, pkt: &Packet) -> Decision {
    match walk(rs, CHAIN_FORWARD, pkt, 0) {
        Outcome::Final(d) => d,
        Outcome::Return => Decision {
            accepted: true,
            chain: CHAIN_FORWARD.into(),
            rule: None,
            reason: "base chain policy".into(),
        },
    }
}
