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
    /// `ip saddr != @set` (`source`) / `ip daddr != @set`: also true for
    /// addresses of no set at all (outside the cluster), never for packets
    /// of the other family.
    AddrNotIn {
        source: bool,
        set: String,
        family: Family,
    },
    /// `meta nfproto ipv4` / `meta nfproto ipv6`
    NfProto(Family),
    /// `meta l4proto N` / `meta l4proto != N`
    L4Proto { proto: u8, negate: bool },
    /// `th dport 80`, `th sport 1000-2000`, `th dport != 80`: the transport
    /// header's port (TCP, UDP, SCTP, UDPLite keep it at the same offset).
    Port {
        source: bool,
        first: u16,
        last: u16,
        negate: bool,
    },
    /// `icmp type T` / `icmp type != T`, or with a code `icmp type T icmp
    /// code C` / `icmp type T icmp code != C` (negate applies to the code
    /// then); `icmpv6 …` for V6. Only ever true for ICMP of that family.
    Icmp {
        family: Family,
        icmp_type: u8,
        code: Option<u8>,
        negate: bool,
    },
    /// `ip saddr 10.0.0.0/8` / `ip6 daddr != fd00::/8`: the address (of the
    /// family of `net`) is in the network, or (negate) is not.
    AddrInNet {
        source: bool,
        net: ipnet::IpNet,
        negate: bool,
    },
    /// `limit rate N/second`: false once over the rate (burst 5 packets).
    Limit { per_second: u64 },
    /// `log prefix "…" group N`: a statement, not a test; the rule goes on.
    Log { prefix: String, group: u16 },
    /// `@th,OFFSET,LEN VALUE`: LEN bits (1..=128) of the transport header
    /// from bit OFFSET equal `value`, which holds them left-aligned in
    /// network order (`ceil(LEN/8)` bytes, bits past LEN zero). For VXLAN
    /// (UDP header + 8 bytes of VXLAN header + inner Ethernet): the inner
    /// ethertype is `@th,224,16`, the inner IPv4 source `@th,336,32`, the
    /// inner IPv6 source `@th,304,128`.
    TransportBits {
        offset: u32,
        len: u32,
        value: Vec<u8>,
    },
}

/// The burst nft gives `limit rate N/second` when none is written.
pub const LIMIT_BURST: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
    /// `goto chain`: a `return` there returns to this chain's caller.
    Goto(String),
    /// No verdict: the next rule follows (a rule that only logs).
    Continue,
    /// `masquerade`: source NAT to the address of the outgoing interface;
    /// only in a `HookKind::Postrouting` (nat) chain. Ends the rule's chain
    /// like `accept`.
    Masquerade,
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
    /// `type nat hook postrouting`, for `masquerade` (priority 100 is
    /// nft's `srcnat`).
    Postrouting,
}

impl HookKind {
    /// The nft chain type: `filter`, or `nat` for postrouting.
    pub fn chain_type(self) -> &'static str {
        match self {
            HookKind::Forward | HookKind::Input => "filter",
            HookKind::Postrouting => "nat",
        }
    }

    pub fn hook_name(self) -> &'static str {
        match self {
            HookKind::Forward => "forward",
            HookKind::Input => "input",
            HookKind::Postrouting => "postrouting",
        }
    }
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
    /// Create a regular chain (no hook); nothing happens if it exists.
    CreateChain(String),
    /// Delete every rule of a chain.
    FlushChain(String),
    /// Delete an empty chain that no rule jumps to.
    DeleteChain(String),
    /// Delete a set that no rule uses.
    DeleteSet(String),
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
            Match::AddrNotIn {
                source,
                set,
                family,
            } => write!(f, "{} {} != @{set}", family.keyword(), addr_dir(*source)),
            Match::NfProto(family) => match family {
                Family::V4 => write!(f, "meta nfproto ipv4"),
                Family::V6 => write!(f, "meta nfproto ipv6"),
            },
            Match::L4Proto { proto, negate } => {
                write!(f, "meta l4proto {}{proto}", neq(*negate))
            }
            Match::Port {
                source,
                first,
                last,
                negate,
            } => {
                let dir = if *source { "sport" } else { "dport" };
                write!(f, "th {dir} {}{first}", neq(*negate))?;
                if last != first {
                    write!(f, "-{last}")?;
                }
                Ok(())
            }
            Match::Icmp {
                family,
                icmp_type,
                code,
                negate,
            } => {
                let kw = match family {
                    Family::V4 => "icmp",
                    Family::V6 => "icmpv6",
                };
                match code {
                    None => write!(f, "{kw} type {}{icmp_type}", neq(*negate)),
                    Some(c) => write!(f, "{kw} type {icmp_type} {kw} code {}{c}", neq(*negate)),
                }
            }
            Match::AddrInNet {
                source,
                net,
                negate,
            } => {
                let family = match net {
                    ipnet::IpNet::V4(_) => Family::V4,
                    ipnet::IpNet::V6(_) => Family::V6,
                };
                write!(
                    f,
                    "{} {} {}{net}",
                    family.keyword(),
                    addr_dir(*source),
                    neq(*negate)
                )
            }
            Match::Limit { per_second } => write!(f, "limit rate {per_second}/second"),
            Match::Log { prefix, group } => write!(f, "log prefix \"{prefix}\" group {group}"),
            // nft reads the value as a LEN-bit integer: right-aligned.
            Match::TransportBits { offset, len, value } => {
                write!(f, "@th,{offset},{len} 0x{:x}", bits_value(*len, value))
            }
        }
    }
}

/// The first `len` bits of `value` (left-aligned, network order) as an
/// integer; bytes past 16 are ignored.
fn bits_value(len: u32, value: &[u8]) -> u128 {
    let n = value.len().min(16);
    let whole = value[..n]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    let spare = (n as u32 * 8).saturating_sub(len);
    whole.checked_shr(spare).unwrap_or(0)
}

fn addr_dir(source: bool) -> &'static str {
    if source {
        "saddr"
    } else {
        "daddr"
    }
}

fn neq(negate: bool) -> &'static str {
    if negate {
        "!= "
    } else {
        ""
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Accept => write!(f, "accept"),
            Verdict::Drop => write!(f, "drop"),
            Verdict::Return => write!(f, "return"),
            Verdict::Jump(c) => write!(f, "jump {c}"),
            Verdict::Goto(c) => write!(f, "goto {c}"),
            Verdict::Continue => Ok(()),
            Verdict::Masquerade => write!(f, "masquerade"),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.matches.iter().map(|m| m.to_string()).collect();
        if self.verdict != Verdict::Continue {
            parts.push(self.verdict.to_string());
        }
        write!(f, "{}", parts.join(" "))?;
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
                let (ty, kind) = (hook.kind.chain_type(), hook.kind.hook_name());
                let policy = if hook.accept_by_default {
                    "accept"
                } else {
                    "drop"
                };
                writeln!(
                    f,
                    "\t\ttype {ty} hook {kind} priority {}; policy {policy};",
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
