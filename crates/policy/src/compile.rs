//! Calico policies → nftables objects, with flat endpoint cost.
//!
//! Shape (every host, whatever its endpoints):
//! - `from_endpoint` jumps to `policy_egress` after the conntrack rules,
//!   `to_endpoint` to `policy_ingress`. These dispatch chains hold one
//!   `jump` per policy (in Calico's order) and end with the default deny:
//!   an address in `selected_<dir>_v4/v6` (selected by some policy of that
//!   direction) that no policy decided is dropped; others return to the
//!   netgroup profiles, exactly as without policies.
//! - One chain per policy and direction (`pe_<name>`, `pi_<name>`); it
//!   returns at once when the endpoint is not in the policy selector's set,
//!   then holds the policy's rules in order: Allow, Deny, Pass and Log.
//! - Egress Allow is `goto egress_allowed`, which still sends a packet to a
//!   local endpoint through `to_endpoint` (the receiver's ingress) before
//!   accepting it; ingress Allow accepts. Pass is `goto pass_egress` /
//!   `goto pass_ingress`, the netgroup profiles as final verdicts, so that
//!   it leaves every remaining policy behind. Log logs (`log group`,
//!   rate-limited) and the next rule follows.
//! - Each distinct selector (a policy's own, every rule's) is one set per
//!   family (`sel_<hash>_v4/v6`) of the addresses of every endpoint in the
//!   cluster that it matches. Endpoints coming and going change elements
//!   only, whatever the number of policies. Nets and ports (merged first)
//!   become one rule per alternative: a policy change's cost, never an
//!   endpoint's.

use netmod_calico::{
    policy_order, Action, Direction, EntityRule, GlobalNetworkPolicy, IpVersion, Selector,
};
use netmod_model::nft::*;
use netmod_model::{Endpoint, HOST_IFACE_PREFIX};
use std::collections::{BTreeMap, BTreeSet};

pub const CHAIN_POLICY_EGRESS: &str = "policy_egress";
pub const CHAIN_POLICY_INGRESS: &str = "policy_ingress";
pub const CHAIN_EGRESS_ALLOWED: &str = "egress_allowed";
pub const CHAIN_PASS_EGRESS: &str = "pass_egress";
pub const CHAIN_PASS_INGRESS: &str = "pass_ingress";
/// Name prefixes of one policy's chains and of selector sets.
pub const POLICY_EGRESS_CHAIN_PREFIX: &str = "pe_";
pub const POLICY_INGRESS_CHAIN_PREFIX: &str = "pi_";
pub const SELECTOR_SET_PREFIX: &str = "sel_";

/// The NFLOG group of `Log` rules.
pub const POLICY_LOG_GROUP: u16 = 7;
/// Packets per second a `Log` rule logs at most.
pub const POLICY_LOG_RATE: u64 = 10;

/// nf_tables names hold 255 bytes; comments and log prefixes 127.
const NAME_MAX: usize = 200;
const COMMENT_MAX: usize = 127;

/// Stable 64-bit FNV-1a: set and chain names must not depend on the
/// compiler's hasher.
fn fnv(text: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The set of the addresses of the endpoints a selector matches.
pub fn selector_set_name(sel: &Selector, f: Family) -> String {
    format!(
        "{SELECTOR_SET_PREFIX}{:016x}_{}",
        fnv(&sel.canonical()),
        f.suffix()
    )
}

/// Local endpoints selected by at least one policy of this direction.
pub fn selected_set_name(d: Direction, f: Family) -> String {
    format!("selected_{}_{}", dir_word(d), f.suffix())
}

fn dir_word(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// The chain of one policy for one direction.
pub fn policy_chain_name(policy: &str, d: Direction) -> String {
    let prefix = match d {
        Direction::Ingress => POLICY_INGRESS_CHAIN_PREFIX,
        Direction::Egress => POLICY_EGRESS_CHAIN_PREFIX,
    };
    if policy.len() <= NAME_MAX {
        format!("{prefix}{policy}")
    } else {
        format!("{prefix}{}_{:016x}", &policy[..NAME_MAX - 20], fnv(policy))
    }
}

fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The comment of a compiled Calico rule: `policy P ingress[2]`.
pub fn rule_comment(policy: &str, d: Direction, index: usize) -> String {
    let tail = format!(" {}[{index}]", dir_word(d));
    let head = clip(format!("policy {policy}"), COMMENT_MAX - tail.len());
    format!("{head}{tail}")
}

fn rule(matches: Vec<Match>, verdict: Verdict, comment: &str) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.to_string(),
    }
}

fn fam(v: IpVersion) -> Family {
    match v {
        IpVersion::V4 => Family::V4,
        IpVersion::V6 => Family::V6,
    }
}

fn net_family(n: &ipnet::IpNet) -> Family {
    match n {
        ipnet::IpNet::V4(_) => Family::V4,
        ipnet::IpNet::V6(_) => Family::V6,
    }
}

/// Merge overlapping or adjacent port ranges.
fn merge_ports(ranges: &[netmod_calico::PortRange]) -> Vec<(u16, u16)> {
    let mut v: Vec<(u16, u16)> = ranges.iter().map(|r| (r.first, r.last)).collect();
    v.sort();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// One OR-list: every alternative extends every partial conjunction.
fn product(alts: Vec<Vec<Match>>, choices: Vec<Vec<Match>>) -> Vec<Vec<Match>> {
    if choices.is_empty() {
        return alts;
    }
    let mut out = Vec::new();
    for a in &alts {
        for c in &choices {
            let mut m = a.clone();
            m.extend(c.iter().cloned());
            out.push(m);
        }
    }
    out
}

/// The conjunctions (nft rules) one Calico rule becomes; none when it can
/// never match.
pub fn rule_alternatives(r: &netmod_calico::Rule) -> Vec<Vec<Match>> {
    let has_addr = |e: &EntityRule| {
        !e.nets.is_empty()
            || !e.not_nets.is_empty()
            || e.selector.is_some()
            || e.not_selector.is_some()
    };
    let icmp_family = r.icmp.or(r.not_icmp).and(r.protocol).map(|p| {
        if p.number() == 58 {
            Family::V6
        } else {
            Family::V4
        }
    });
    let families: Vec<Option<Family>> = match (r.ip_version, icmp_family) {
        (Some(v), Some(f)) if fam(v) != f => vec![],
        (Some(v), _) => vec![Some(fam(v))],
        (None, Some(f)) => vec![Some(f)],
        (None, None) if has_addr(&r.source) || has_addr(&r.destination) => {
            vec![Some(Family::V4), Some(Family::V6)]
        }
        (None, None) => vec![None],
    };
    let mut out = Vec::new();
    for f in families {
        let mut alts = vec![Vec::new()];
        let mut any_addr = false;
        for (source, e) in [(true, &r.source), (false, &r.destination)] {
            let Some(f) = f else { break };
            if !e.nets.is_empty() {
                let nets: Vec<ipnet::IpNet> = e
                    .nets
                    .iter()
                    .filter(|n| net_family(n) == f)
                    .copied()
                    .collect();
                if nets.is_empty() {
                    alts.clear(); // no net of this family: never matches
                    break;
                }
                let choices = ipnet::IpNet::aggregate(&nets)
                    .into_iter()
                    .map(|net| {
                        if net.prefix_len() == 0 {
                            // Every address of the family.
                            return vec![Match::NfProto(f)];
                        }
                        vec![Match::AddrInNet {
                            source,
                            net,
                            negate: false,
                        }]
                    })
                    .collect();
                alts = product(alts, choices);
                any_addr = true;
            }
            let not_nets: Vec<ipnet::IpNet> = e
                .not_nets
                .iter()
                .filter(|n| net_family(n) == f)
                .copied()
                .collect();
            let not_nets = ipnet::IpNet::aggregate(&not_nets);
            if not_nets.iter().any(|n| n.prefix_len() == 0) {
                alts.clear(); // not in every address: never matches
                break;
            }
            let mut and = Vec::new();
            for net in not_nets {
                and.push(Match::AddrInNet {
                    source,
                    net,
                    negate: true,
                });
            }
            if let Some(s) = &e.selector {
                let set = selector_set_name(s, f);
                and.push(if source {
                    Match::SaddrIn { set, family: f }
                } else {
                    Match::DaddrIn { set, family: f }
                });
            }
            if let Some(s) = &e.not_selector {
                and.push(Match::AddrNotIn {
                    source,
                    set: selector_set_name(s, f),
                    family: f,
                });
            }
            any_addr |= !and.is_empty();
            alts = product(alts, vec![and]);
        }
        if alts.is_empty() {
            continue;
        }
        let mut l4 = Vec::new();
        let icmp_given = icmp_family.is_some();
        if let (Some(f), false) = (f, any_addr || icmp_given) {
            l4.push(Match::NfProto(f));
        }
        let icmp_f = icmp_family.unwrap_or(Family::V4);
        match (r.protocol, r.icmp) {
            (_, Some(m)) => l4.push(Match::Icmp {
                family: icmp_f,
                icmp_type: m.icmp_type,
                code: m.code,
                negate: false,
            }),
            // notICMP's match carries the protocol itself.
            (Some(_), None) if r.not_icmp.is_some() => {}
            (Some(p), None) => l4.push(Match::L4Proto {
                proto: p.number(),
                negate: false,
            }),
            (None, None) => {}
        }
        if let Some(p) = r.not_protocol {
            l4.push(Match::L4Proto {
                proto: p.number(),
                negate: true,
            });
        }
        alts = product(alts, vec![l4]);
        if let Some(m) = r.not_icmp {
            let not_type = Match::Icmp {
                family: icmp_f,
                icmp_type: m.icmp_type,
                code: None,
                negate: true,
            };
            let choices = match m.code {
                None => vec![vec![not_type]],
                // not (type T and code C): another type, or type T with another code
                Some(c) => vec![
                    vec![not_type],
                    vec![Match::Icmp {
                        family: icmp_f,
                        icmp_type: m.icmp_type,
                        code: Some(c),
                        negate: true,
                    }],
                ],
            };
            alts = product(alts, choices);
        }
        for (source, e) in [(true, &r.source), (false, &r.destination)] {
            if !e.ports.is_empty() {
                let choices = merge_ports(&e.ports)
                    .into_iter()
                    .map(|(first, last)| {
                        vec![Match::Port {
                            source,
                            first,
                            last,
                            negate: false,
                        }]
                    })
                    .collect();
                alts = product(alts, choices);
            }
            let and = merge_ports(&e.not_ports)
                .into_iter()
                .map(|(first, last)| Match::Port {
                    source,
                    first,
                    last,
                    negate: true,
                })
                .collect();
            alts = product(alts, vec![and]);
        }
        out.extend(alts);
    }
    out
}

/// The rules of one policy's chain for one direction.
fn policy_chain(p: &GlobalNetworkPolicy, d: Direction) -> ChainDef {
    let mut rules = Vec::new();
    for f in Family::BOTH {
        rules.push(rule(
            vec![Match::AddrNotIn {
                source: d == Direction::Egress,
                set: selector_set_name(&p.selector, f),
                family: f,
            }],
            Verdict::Return,
            &clip(format!("policy {}: not selected", p.name), COMMENT_MAX),
        ));
    }
    for (i, r) in p.rules(d).iter().enumerate() {
        let comment = rule_comment(&p.name, d, i);
        let (verdict, extra) = match (r.action, d) {
            (Action::Allow, Direction::Egress) => {
                (Verdict::Goto(CHAIN_EGRESS_ALLOWED.into()), None)
            }
            (Action::Allow, Direction::Ingress) => (Verdict::Accept, None),
            (Action::Deny, _) => (Verdict::Drop, None),
            (Action::Pass, Direction::Egress) => (Verdict::Goto(CHAIN_PASS_EGRESS.into()), None),
            (Action::Pass, Direction::Ingress) => (Verdict::Goto(CHAIN_PASS_INGRESS.into()), None),
            (Action::Log, _) => (
                Verdict::Continue,
                Some(vec![
                    Match::Limit {
                        per_second: POLICY_LOG_RATE,
                    },
                    Match::Log {
                        prefix: clip(format!("netmod {comment}: "), COMMENT_MAX),
                        group: POLICY_LOG_GROUP,
                    },
                ]),
            ),
        };
        for mut alt in rule_alternatives(r) {
            alt.extend(extra.iter().flatten().cloned());
            rules.push(rule(alt, verdict.clone(), &comment));
        }
    }
    ChainDef {
        name: policy_chain_name(&p.name, d),
        hook: None,
        rules,
    }
}

/// The policy sets one endpoint's addresses belong to (selector sets and
/// `selected_*`), as (set, family, addresses): what a plugin adds when it
/// plugs the endpoint in, so that its policies hold before its first
/// packet, and removes when it unplugs it. The same membership the node
/// computes for the whole table.
pub fn endpoint_policy_sets(
    ep: &Endpoint,
    policies: &[GlobalNetworkPolicy],
    labels: &BTreeMap<String, String>,
) -> Vec<(String, Family, Vec<std::net::IpAddr>)> {
    let mut selectors: BTreeSet<&Selector> = BTreeSet::new();
    for p in policies {
        selectors.extend(p.selectors());
    }
    let mut out = Vec::new();
    for f in Family::BOTH {
        let addrs: Vec<std::net::IpAddr> = ep.addrs().filter(|a| Family::of(a) == f).collect();
        if addrs.is_empty() {
            continue;
        }
        for s in selectors.iter().filter(|s| s.matches(labels)) {
            out.push((selector_set_name(s, f), f, addrs.clone()));
        }
        for d in [Direction::Egress, Direction::Ingress] {
            if policies.iter().any(|p| p.applies_to(labels, d)) {
                out.push((selected_set_name(d, f), f, addrs.clone()));
            }
        }
    }
    out
}

/// What a plugin needs of the policies to put a new endpoint into their
/// sets: every distinct selector, and whether some policy of each direction
/// has it as its own selector. Far smaller than the policies (no rules), so
/// the per-isolate cost barely grows with their number; `policy apply` and
/// `delete` keep it beside them in the datastore.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SelectorIndex {
    pub selectors: Vec<IndexedSelector>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexedSelector {
    pub selector: Selector,
    /// A policy with Ingress in its types selects with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ingress: bool,
    /// A policy with Egress in its types selects with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress: bool,
}

impl SelectorIndex {
    pub fn of(policies: &[GlobalNetworkPolicy]) -> SelectorIndex {
        let mut all: BTreeMap<&Selector, (bool, bool)> = BTreeMap::new();
        for p in policies {
            for s in p.selectors() {
                all.entry(s).or_default();
            }
            let e = all.entry(&p.selector).or_default();
            e.0 |= p.types.has(Direction::Ingress);
            e.1 |= p.types.has(Direction::Egress);
        }
        SelectorIndex {
            selectors: all
                .into_iter()
                .map(|(s, (ingress, egress))| IndexedSelector {
                    selector: s.clone(),
                    ingress,
                    egress,
                })
                .collect(),
        }
    }

    /// The policy sets an endpoint's addresses belong to, as
    /// [`endpoint_policy_sets`] computes them from the policies.
    pub fn endpoint_sets(
        &self,
        ep: &Endpoint,
        labels: &BTreeMap<String, String>,
    ) -> Vec<(String, Family, Vec<std::net::IpAddr>)> {
        let matched: Vec<&IndexedSelector> = self
            .selectors
            .iter()
            .filter(|s| s.selector.matches(labels))
            .collect();
        let mut out = Vec::new();
        for f in Family::BOTH {
            let addrs: Vec<std::net::IpAddr> = ep.addrs().filter(|a| Family::of(a) == f).collect();
            if addrs.is_empty() {
                continue;
            }
            for s in &matched {
                out.push((selector_set_name(&s.selector, f), f, addrs.clone()));
            }
            for (d, selects) in [
                (Direction::Egress, matched.iter().any(|s| s.egress)),
                (Direction::Ingress, matched.iter().any(|s| s.ingress)),
            ] {
                if selects {
                    out.push((selected_set_name(d, f), f, addrs.clone()));
                }
            }
        }
        out
    }
}

/// The chains and sets the policies add to a host's table. `labels` gives
/// an endpoint's labels as selectors see them.
pub(crate) fn policy_objects(
    endpoints: &[Endpoint],
    policies: &[GlobalNetworkPolicy],
    labels: &dyn Fn(&Endpoint) -> BTreeMap<String, String>,
    sets: &mut BTreeMap<String, SetDef>,
) -> Vec<ChainDef> {
    let mut ordered: Vec<&GlobalNetworkPolicy> = policies.iter().collect();
    ordered.sort_by(|a, b| policy_order(a, b));
    let mut selectors: BTreeSet<&Selector> = BTreeSet::new();
    for p in &ordered {
        selectors.extend(p.selectors());
    }
    let empty = |sets: &mut BTreeMap<String, SetDef>, name: String, family| {
        sets.entry(name.clone()).or_insert_with(|| SetDef {
            name,
            family,
            elements: BTreeSet::new(),
        });
    };
    for f in Family::BOTH {
        for d in [Direction::Egress, Direction::Ingress] {
            empty(sets, selected_set_name(d, f), f);
        }
        for s in &selectors {
            empty(sets, selector_set_name(s, f), f);
        }
    }
    for ep in endpoints {
        let l = labels(ep);
        let matched: Vec<&&Selector> = selectors.iter().filter(|s| s.matches(&l)).collect();
        if matched.is_empty() {
            continue;
        }
        let selected = |d| ordered.iter().any(|p| p.applies_to(&l, d));
        for a in ep.addrs() {
            let f = Family::of(&a);
            for s in &matched {
                if let Some(set) = sets.get_mut(&selector_set_name(s, f)) {
                    set.elements.insert(a);
                }
            }
            for d in [Direction::Egress, Direction::Ingress] {
                if selected(d) {
                    if let Some(set) = sets.get_mut(&selected_set_name(d, f)) {
                        set.elements.insert(a);
                    }
                }
            }
        }
    }
    let (mut dispatchers, mut chains) = (Vec::new(), Vec::new());
    for d in [Direction::Egress, Direction::Ingress] {
        let mut dispatch = Vec::new();
        for p in ordered.iter().filter(|p| p.types.has(d)) {
            let chain = policy_chain(p, d);
            dispatch.push(rule(
                vec![],
                Verdict::Jump(chain.name.clone()),
                &clip(format!("policy {}", p.name), COMMENT_MAX),
            ));
            chains.push(chain);
        }
        for f in Family::BOTH {
            let set = selected_set_name(d, f);
            dispatch.push(rule(
                vec![if d == Direction::Egress {
                    Match::SaddrIn { set, family: f }
                } else {
                    Match::DaddrIn { set, family: f }
                }],
                Verdict::Drop,
                &format!(
                    "default deny: selected by {} policies, allowed by none",
                    dir_word(d)
                ),
            ));
        }
        dispatchers.push(ChainDef {
            name: match d {
                Direction::Egress => CHAIN_POLICY_EGRESS,
                Direction::Ingress => CHAIN_POLICY_INGRESS,
            }
            .into(),
            hook: None,
            rules: dispatch,
        });
    }
    dispatchers.extend(chains);
    dispatchers
}

/// The chains every host has for policies, whatever the policies: where
/// egress Allow and Pass go.
pub(crate) fn verdict_chains(
    profile_egress: Vec<Rule>,
    profile_ingress: Vec<Rule>,
) -> Vec<ChainDef> {
    vec![
        ChainDef {
            name: CHAIN_EGRESS_ALLOWED.into(),
            hook: None,
            rules: vec![
                rule(
                    vec![Match::OifPrefix(HOST_IFACE_PREFIX.into())],
                    Verdict::Goto(CHAIN_TO_ENDPOINT.into()),
                    "egress allowed: the local receiver's ingress decides",
                ),
                rule(vec![], Verdict::Accept, "egress allowed"),
            ],
        },
        ChainDef {
            name: CHAIN_PASS_EGRESS.into(),
            hook: None,
            rules: profile_egress,
        },
        ChainDef {
            name: CHAIN_PASS_INGRESS.into(),
            hook: None,
            rules: profile_ingress,
        },
    ]
}
