//! The nftables objects netmod wants in the kernel, as plain data.
//!
//! `policy` computes these; `dataplane` renders them into netlink messages. The
//! `Display` impls print nft syntax, for snapshot tests and for humans.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// The one table netmod owns, in family `inet`.
pub const TABLE: &str = "netmod";
pub const CHAIN_FORWARD: &str = "forward";
pub const CHAIN_FROM_ENDPOINT: &str = "from_endpoint";
pub const CHAIN_TO_ENDPOINT: &str = "to_endpoint";
pub const CHAIN_INPUT: &str = "input";
pub const CHAIN_ENDPOINT_TO_HOST: &str = "endpoint_to_host";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];
}

/// A named set of addresses of one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDef {
    pub name: String,
    pub family: Family,
    pub elements: BTreeSet<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Match {
    /// `iifname "<prefix>*"`
    IifPrefix(String),
    /// `oifname "<prefix>*"`
    OifPrefix(String),
    /// `ct state established,related`
    CtEstablishedOrRelated,
    /// `ct state invalid`
    CtInvalid,
    /// `icmp type N` (V4) / `icmpv6 type N` (V6)
    IcmpType { family: Family, icmp_type: u8 },
    /// `fib saddr . iif oif missing`: the source does not route back out of the
    /// interface it came in on (strict reverse-path check: anti-spoofing).
    SourceNotRoutedViaIif,
    /// `ip saddr @set` / `ip6 saddr @set`
    SaddrIn { set: String, family: Family },
    /// `ip daddr @set` / `ip6 daddr @set`
    DaddrIn { set: String, family: Family },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    /// Stored as the rule's comment; says which profile the rule belongs to.
    pub comment: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HookKind {
    Forward,
    Input,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseHook {
    pub kind: HookKind,
    pub priority: i32,
    /// Base chain policy: true = accept (netmod filters only its own interfaces).
    pub accept_by_default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainDef {
    pub name: String,
    pub hook: Option<BaseHook>,
    pub rules: Vec<Rule>,
}

/// The whole table as netmod wants it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub chains: Vec<ChainDef>,
    pub sets: BTreeMap<String, SetDef>,
}

/// One step of an incremental update. A list of changes is applied as one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Create a set (empty or with elements). Fails with "exists" if it does.
    CreateSet(SetDef),
    /// Append a rule to a chain.
    AppendRule { chain: String, rule: Rule },
    AddElements {
        set: String,
        family: Family,
        elements: Vec<IpAddr>,
    },
    DeleteElements {
        set: String,
        family: Family,
        elements: Vec<IpAddr>,
    },
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::IifPrefix(p) => write!(f, "iifname \"{p}*\""),
            Match::OifPrefix(p) => write!(f, "oifname \"{p}*\""),
            Match::CtEstablishedOrRelated => write!(f, "ct state established,related"),
            Match::CtInvalid => write!(f, "ct state invalid"),
            Match::IcmpType {
                family: Family::V4,
                icmp_type,
            } => write!(f, "icmp type {icmp_type}"),
            Match::IcmpType {
                family: Family::V6,
                icmp_type,
            } => write!(f, "icmpv6 type {icmp_type}"),
            Match::SourceNotRoutedViaIif => write!(f, "fib saddr . iif oif missing"),
            Match::SaddrIn { set, family } => write!(f, "{} saddr @{set}", family.keyword()),
            Match::DaddrIn { set, family } => write!(f, "{} daddr @{set}", family.keyword()),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => write!(f, "accept"),
            Verdict::Drop => write!(f, "drop"),
            Verdict::Return => write!(f, "return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        write!(f, "{}", self.verdict)?;
        if !self.comment.is_empty() {
            write!(f, " comment \"{}\"", self.comment)?;
        }
        Ok(())
    }
}

impl fmt::Display for Ruleset {
    /// nft syntax; `nft -f` accepts it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table inet {TABLE} {{")?;
        for set in self.sets.values() {
            let ty = match set.family {
                Family::V4 => "ipv4_addr",
                Family::V6 => "ipv6_addr",
            };
            write!(f, "\tset {} {{\n\t\ttype {ty}\n", set.name)?;
            if !set.elements.is_empty() {
                let elems: Vec<String> = set.elements.iter().map(|e| e.to_string()).collect();
                writeln!(f, "\t\telements = {{ {} }}", elems.join(", "))?;
            }
            writeln!(f, "\t}}")?;
        }
        for chain in &self.chains {
            writeln!(f, "\tchain {} {{", chain.name)?;
            if let Some(hook) = &chain.hook {
                let kind = match hook.kind {
                    HookKind::Forward => "forward",
                    HookKind::Input => "input",
                };
                let policy = if hook.accept_by_default {
                    "accept"
                } else {
                    "drop"
                };
                writeln!(
                    f,
                    "\t\ttype filter hook {kind} priority {}; policy {policy};",
                    hook.priority
                )?;
            }
            for rule in &chain.rules {
                writeln!(f, "\t\t{rule}")?;
            }
            writeln!(f, "\t}}")?;
        }
        writeln!(f, "}}")
    }
}
