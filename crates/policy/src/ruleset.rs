use crate::compile::*;
use netmod_calico::GlobalNetworkPolicy;
use netmod_model::nft::*;
use netmod_model::{Endpoint, HOST_IFACE_PREFIX, PUBLIC_NETGROUP};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Holds one accept rule per netgroup and family; `to_endpoint` jumps here.
pub const CHAIN_NETGROUPS: &str = "netgroups";

/// The sets every host has, whatever its endpoints.
pub struct BaseSets;
impl BaseSets {
    /// Local endpoints with at least one netgroup: they may send beyond their host.
    pub fn grouped(f: Family) -> String {
        format!("grouped_{}", f.suffix())
    }
    /// Local endpoints in `public`: everyone may reach them.
    pub fn public(f: Family) -> String {
        format!("public_{}", f.suffix())
    }
}

/// The longest netgroup name: its set name (at most three bytes per
/// character, see [`group_set_name`]) must fit nf_tables' 255-byte names.
pub const NETGROUP_MAX_LEN: usize = 64;

/// Refuse, at the door, a netgroup name the kernel objects cannot carry.
pub fn validate_netgroup(g: &str) -> Result<(), String> {
    let ok = !g.is_empty()
        && g.len() <= NETGROUP_MAX_LEN
        && g.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "netgroup {g:?} must be 1 to {NETGROUP_MAX_LEN} letters, digits, '-', '_' or '.'"
        ))
    }
}

/// The set holding a netgroup's members (on every host). One-to-one: ASCII
/// letters and digits stay as they are and every other byte, `_` included,
/// becomes `_` and two hex digits, so no two names share a set (`star-1` is
/// `g_star_2d1_v4`, `star_2d1` is `g_star_5f2d1_v4`).
pub fn group_set_name(group: &str, f: Family) -> String {
    let mut name = String::with_capacity(group.len() * 3 + 5);
    name.push_str("g_");
    for b in group.bytes() {
        if b.is_ascii_alphanumeric() {
            name.push(b as char);
        } else {
            name.push_str(&format!("_{b:02x}"));
        }
    }
    name.push('_');
    name.push_str(f.suffix());
    name
}

fn rule(matches: Vec<Match>, verdict: Verdict, comment: &str) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.to_string(),
    }
}

/// The accept rule for one netgroup and family: both ends are members.
pub fn group_rule(group: &str, f: Family) -> Rule {
    let set = group_set_name(group, f);
    rule(
        vec![
            Match::SaddrIn {
                set: set.clone(),
                family: f,
            },
            Match::DaddrIn { set, family: f },
        ],
        Verdict::Accept,
        &format!("netgroup {group}"),
    )
}

fn base_chains() -> Vec<ChainDef> {
    let ep = HOST_IFACE_PREFIX.to_string();
    let per_family =
        |make: &dyn Fn(Family) -> Rule| Family::BOTH.iter().map(|f| make(*f)).collect::<Vec<_>>();
    // The source check comes before any accept: a forged packet must never
    // ride on someone else's established flow.
    let mut from = vec![
        anti_spoofing(),
        rule(
            vec![Match::CtInvalid],
            Verdict::Drop,
            "not part of any tracked connection",
        ),
        rule(
            vec![Match::CtEstablishedOrRelated],
            Verdict::Accept,
            "replies of allowed connections",
        ),
    ];
    from.push(rule(
        vec![],
        Verdict::Jump(CHAIN_POLICY_EGRESS.into()),
        "egress policies",
    ));
    // The egress profile: as rules of from_endpoint (a member returns to
    // the forward chain, which checks a local receiver), and as final
    // verdicts for a policy's Pass.
    let egress_profile = |member: Verdict| {
        let mut rules = per_family(&|f| {
            rule(
                vec![Match::SaddrIn {
                    set: BaseSets::grouped(f),
                    family: f,
                }],
                member.clone(),
                "netgroup member: may send beyond its host",
            )
        });
        rules.push(rule(
            vec![],
            Verdict::Drop,
            "host profile: no netgroup, reaches only its own host",
        ));
        rules
    };
    from.extend(egress_profile(Verdict::Return));
    let mut to = vec![
        rule(
            vec![Match::CtInvalid],
            Verdict::Drop,
            "not part of any tracked connection",
        ),
        rule(
            vec![Match::CtEstablishedOrRelated],
            Verdict::Accept,
            "replies of allowed connections",
        ),
    ];
    to.push(rule(
        vec![],
        Verdict::Jump(CHAIN_POLICY_INGRESS.into()),
        "ingress policies",
    ));
    let mut ingress_profile = per_family(&|f| {
        rule(
            vec![Match::DaddrIn {
                set: BaseSets::public(f),
                family: f,
            }],
            Verdict::Accept,
            "profile public",
        )
    });
    ingress_profile.push(rule(
        vec![],
        Verdict::Jump(CHAIN_NETGROUPS.into()),
        "netgroup profiles",
    ));
    ingress_profile.push(rule(vec![], Verdict::Drop, "default: drop"));
    to.extend(ingress_profile.iter().cloned());
    let mut chains = vec![
        ChainDef {
            name: CHAIN_FORWARD.into(),
            hook: Some(BaseHook {
                kind: HookKind::Forward,
                priority: 0,
                accept_by_default: true,
            }),
            rules: vec![
                rule(
                    vec![Match::IifPrefix(ep.clone())],
                    Verdict::Jump(CHAIN_FROM_ENDPOINT.into()),
                    "outbound checks of local endpoints",
                ),
                rule(
                    vec![Match::OifPrefix(ep.clone())],
                    Verdict::Jump(CHAIN_TO_ENDPOINT.into()),
                    "inbound checks of local endpoints",
                ),
            ],
        },
        ChainDef {
            name: CHAIN_INPUT.into(),
            hook: Some(BaseHook {
                kind: HookKind::Input,
                priority: 0,
                accept_by_default: true,
            }),
            rules: vec![rule(
                vec![Match::IifPrefix(ep)],
                Verdict::Jump(CHAIN_ENDPOINT_TO_HOST.into()),
                "checks of local endpoints' packets to their host",
            )],
        },
        ChainDef {
            name: CHAIN_ENDPOINT_TO_HOST.into(),
            hook: None,
            rules: endpoint_to_host(),
        },
        ChainDef {
            name: CHAIN_FROM_ENDPOINT.into(),
            hook: None,
            rules: from,
        },
        ChainDef {
            name: CHAIN_TO_ENDPOINT.into(),
            hook: None,
            rules: to,
        },
        ChainDef {
            name: CHAIN_NETGROUPS.into(),
            hook: None,
            rules: Vec::new(),
        },
    ];
    chains.extend(verdict_chains(
        egress_profile(Verdict::Goto(CHAIN_EGRESS_ALLOWED.into())),
        ingress_profile,
    ));
    chains
}

fn anti_spoofing() -> Rule {
    rule(
        vec![Match::SourceNotRoutedViaIif],
        Verdict::Drop,
        "anti-spoofing: an endpoint sends only from its own addresses",
    )
}

/// ICMP types an endpoint may never send its host: they would rewrite the
/// host's routes or addresses. (Host-side interfaces also ignore them by
/// sysctl; this keeps them from the host's stack at all.)
pub const ICMP_TYPES_NEVER_TO_HOST: [(Family, u8, &str); 3] = [
    (Family::V4, 5, "ICMP redirect"),
    (Family::V6, 134, "router advertisement"),
    (Family::V6, 137, "ICMPv6 redirect"),
];

/// Everything an endpoint sends to its own host passes, but for forged
/// sources and messages that would reconfigure the host.
fn endpoint_to_host() -> Vec<Rule> {
    let mut rules = vec![anti_spoofing()];
    for (family, icmp_type, what) in ICMP_TYPES_NEVER_TO_HOST {
        rules.push(rule(
            vec![Match::IcmpType { family, icmp_type }],
            Verdict::Drop,
            &format!("no {what} from an endpoint"),
        ));
    }
    rules
}

fn add_to(sets: &mut BTreeMap<String, SetDef>, name: String, family: Family, addr: Option<IpAddr>) {
    let set = sets.entry(name.clone()).or_insert_with(|| SetDef {
        name,
        family,
        elements: BTreeSet::new(),
    });
    if let Some(a) = addr {
        set.elements.insert(a);
    }
}

/// The whole table host `host` needs, given every live endpoint in the
/// cluster and no policies.
pub fn ruleset(host: &str, endpoints: &[Endpoint]) -> Ruleset {
    ruleset_with_policies(host, endpoints, &[], &|e| e.labels.clone())
}

/// The whole table host `host` needs, given every live endpoint in the
/// cluster and every policy; `labels` gives an endpoint's labels as
/// selectors see them (`netmod_core::labels::endpoint_labels`).
pub fn ruleset_with_policies(
    host: &str,
    endpoints: &[Endpoint],
    policies: &[GlobalNetworkPolicy],
    labels: &dyn Fn(&Endpoint) -> BTreeMap<String, String>,
) -> Ruleset {
    let mut sets = BTreeMap::new();
    for f in Family::BOTH {
        add_to(&mut sets, BaseSets::grouped(f), f, None);
        add_to(&mut sets, BaseSets::public(f), f, None);
    }
    let local: Vec<&Endpoint> = endpoints.iter().filter(|e| e.host == host).collect();
    // Netgroups used here, other than `public`, which is a profile of its own.
    let groups: BTreeSet<&str> = local
        .iter()
        .flat_map(|e| e.netgroups.iter().map(String::as_str))
        .filter(|g| *g != PUBLIC_NETGROUP)
        .collect();
    for ep in &local {
        for a in ep.addrs() {
            let f = Family::of(&a);
            if !ep.netgroups.is_empty() {
                add_to(&mut sets, BaseSets::grouped(f), f, Some(a));
            }
            if ep.netgroups.iter().any(|g| g == PUBLIC_NETGROUP) {
                add_to(&mut sets, BaseSets::public(f), f, Some(a));
            }
        }
    }
    for g in &groups {
        for f in Family::BOTH {
            add_to(&mut sets, group_set_name(g, f), f, None);
        }
    }
    for ep in endpoints {
        for g in ep.netgroups.iter().filter(|g| groups.contains(g.as_str())) {
            for a in ep.addrs() {
                let f = Family::of(&a);
                add_to(&mut sets, group_set_name(g, f), f, Some(a));
            }
        }
    }
    let mut chains = base_chains();
    let netgroups = chains
        .iter_mut()
        .find(|c| c.name == CHAIN_NETGROUPS)
        .expect("base chains include netgroups");
    for g in &groups {
        for f in Family::BOTH {
            netgroups.rules.push(group_rule(g, f));
        }
    }
    chains.extend(policy_objects(endpoints, policies, labels, &mut sets));
    Ruleset { chains, sets }
}

/// The changes that bring `current` (what the kernel holds) to `desired`, as
/// ONE transaction's worth of steps, in an order the kernel accepts:
/// 1. new sets (with their elements) and element changes of kept sets;
/// 2. one rule per new netgroup set, appended to `netgroups`;
/// 3. the policies' chains: new ones created, changed ones flushed and
///    refilled, gone ones flushed and deleted (after every chain that
///    jumped to them was refilled);
/// 4. selector sets no policy uses any more, deleted once no rule uses them.
///
/// A policy's change touches only its own chains and selector sets, plus
/// the dispatch chains' jumps when a policy comes, goes or moves in the
/// order. Netgroup sets that are no longer wanted are emptied, not deleted
/// (their rules sit among other netgroups' in `netgroups`; see
/// [`needs_replace`]).
pub fn diff(current: &Ruleset, desired: &Ruleset) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut netgroup_rules = Vec::new();
    for (name, want) in &desired.sets {
        match current.sets.get(name) {
            None => {
                changes.push(Change::CreateSet(want.clone()));
                if let Some(rule) = desired
                    .chains
                    .iter()
                    .filter(|c| c.name == CHAIN_NETGROUPS)
                    .flat_map(|c| &c.rules)
                    .find(|r| {
                        r.matches
                            .iter()
                            .any(|m| matches!(m, Match::DaddrIn { set, .. } if set == name))
                    })
                {
                    netgroup_rules.push(Change::AppendRule {
                        chain: CHAIN_NETGROUPS.into(),
                        rule: rule.clone(),
                    });
                }
            }
            Some(have) => push_element_changes(
                &mut changes,
                name,
                want.family,
                &have.elements,
                &want.elements,
            ),
        }
    }
    let mut stale_policy_sets = Vec::new();
    for (name, have) in &current.sets {
        if desired.sets.contains_key(name) {
            continue;
        }
        if is_policy_set(name) {
            stale_policy_sets.push(Change::DeleteSet(name.clone()));
        } else {
            push_element_changes(
                &mut changes,
                name,
                have.family,
                &have.elements,
                &BTreeSet::new(),
            );
        }
    }
    changes.extend(netgroup_rules);
    changes.extend(policy_chain_changes(current, desired));
    changes.extend(stale_policy_sets);
    changes
}

/// Chains that compiled Calico policies own (the two dispatch chains and
/// one chain per policy and direction), and `vxlan_in`, which changes with
/// hosts and blocks: only `netmod node` (and a whole install) writes them,
/// so a diff may flush and refill them.
pub fn is_policy_chain(name: &str) -> bool {
    name == crate::hostnet::CHAIN_VXLAN_IN
        || name == CHAIN_POLICY_EGRESS
        || name == CHAIN_POLICY_INGRESS
        || name.starts_with(POLICY_EGRESS_CHAIN_PREFIX)
        || name.starts_with(POLICY_INGRESS_CHAIN_PREFIX)
}

/// A policy selector's set (`sel_<hash>_v4/v6`).
pub fn is_policy_set(name: &str) -> bool {
    name.starts_with(SELECTOR_SET_PREFIX)
}

fn policy_chain_changes(current: &Ruleset, desired: &Ruleset) -> Vec<Change> {
    let policy_chains = |rs: &Ruleset| -> BTreeMap<String, Vec<Rule>> {
        rs.chains
            .iter()
            .filter(|c| is_policy_chain(&c.name))
            .map(|c| (c.name.clone(), c.rules.clone()))
            .collect()
    };
    let (have, want) = (policy_chains(current), policy_chains(desired));
    let mut create = Vec::new();
    let mut fill = Vec::new();
    for (name, rules) in &want {
        match have.get(name) {
            Some(old) if old == rules => continue,
            Some(_) => fill.push(Change::FlushChain(name.clone())),
            None => create.push(Change::CreateChain(name.clone())),
        }
        fill.extend(rules.iter().map(|r| Change::AppendRule {
            chain: name.clone(),
            rule: r.clone(),
        }));
    }
    let mut remove = Vec::new();
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        remove.push(Change::FlushChain(name.clone()));
    }
    for name in have.keys().filter(|n| !want.contains_key(*n)) {
        remove.push(Change::DeleteChain(name.clone()));
    }
    create.into_iter().chain(fill).chain(remove).collect()
}

/// True when moving from `current` to `desired` takes more than [`diff`]
/// does: a chain other than the policies' and `netgroups` changed, or a
/// netgroup's set is no longer wanted (its rule sits among the others in
/// `netgroups`, which plugins append to concurrently). The node then
/// installs the whole table, atomically. Policies coming, going or changing
/// never need it.
pub fn needs_replace(current: &Ruleset, desired: &Ruleset) -> bool {
    let structure = |rs: &Ruleset| -> Vec<ChainDef> {
        rs.chains
            .iter()
            .filter(|c| c.name != CHAIN_NETGROUPS && !is_policy_chain(&c.name))
            .cloned()
            .collect()
    };
    let netgroups = |rs: &Ruleset| -> Vec<Rule> {
        rs.chains
            .iter()
            .filter(|c| c.name == CHAIN_NETGROUPS)
            .flat_map(|c| c.rules.clone())
            .collect()
    };
    // `diff` only appends netgroup rules: every rule there must stay. (Their
    // order means nothing: each accepts on its own set, none drops; the
    // kernel holds them in the order they came, `desired` sorted.)
    let (have, want) = (netgroups(current), netgroups(desired));
    let appends_only = have.iter().all(|r| want.contains(r));
    has_stale_sets(current, desired) || structure(current) != structure(desired) || !appends_only
}

/// True when `current` holds netgroup sets that `desired` no longer wants
/// (a netgroup left the host): removing them means removing the rules that
/// use them, so the node installs the whole table instead of a diff.
/// Selector sets are deleted by [`diff`].
fn has_stale_sets(current: &Ruleset, desired: &Ruleset) -> bool {
    current
        .sets
        .keys()
        .any(|name| !desired.sets.contains_key(name) && !is_policy_set(name))
}

fn push_element_changes(
    changes: &mut Vec<Change>,
    set: &str,
    family: Family,
    have: &BTreeSet<IpAddr>,
    want: &BTreeSet<IpAddr>,
) {
    let add: Vec<IpAddr> = want.difference(have).copied().collect();
    let del: Vec<IpAddr> = have.difference(want).copied().collect();
    if !add.is_empty() {
        changes.push(Change::AddElements {
            set: set.to_string(),
            family,
            elements: add,
        });
    }
    if !del.is_empty() {
        changes.push(Change::DeleteElements {
            set: set.to_string(),
            family,
            elements: del,
        });
    }
}
