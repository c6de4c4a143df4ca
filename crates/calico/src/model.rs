//! The validated policy model: what a `GlobalNetworkPolicy` means once its
//! text has been checked. Values of these types come from [`crate::parse`]
//! (or [`GlobalNetworkPolicy::from_json_value`]) and always satisfy the
//! validation rules documented there.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use crate::selector::Selector;

/// Calico's API group and version.
pub const API_VERSION: &str = "projectcalico.org/v3";
/// The kind of a global network policy.
pub const KIND: &str = "GlobalNetworkPolicy";
/// The kind of a list of them, as `calicoctl get -o yaml` prints it.
pub const LIST_KIND: &str = "GlobalNetworkPolicyList";

/// One Calico global network policy.
#[derive(Clone, Debug, PartialEq)]
pub struct GlobalNetworkPolicy {
    /// `metadata.name`: a DNS-1123 subdomain, at most 253 characters.
    pub name: String,
    /// `metadata.labels`: kept and printed back; no effect on behaviour.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`: kept and printed back; no effect on behaviour.
    pub annotations: BTreeMap<String, String>,
    /// `spec.order`: lower applies first; `None` applies after every ordered policy.
    pub order: Option<f64>,
    /// `spec.selector`: the endpoints the policy applies to (empty = `all()`).
    pub selector: Selector,
    /// `spec.types`, with Calico's default filled in when it was absent:
    /// Egress alone for a policy with egress rules and no ingress rules,
    /// both for a policy with both, Ingress otherwise.
    pub types: Types,
    /// `spec.ingress`: checked in order on traffic to a selected endpoint.
    pub ingress: Vec<Rule>,
    /// `spec.egress`: checked in order on traffic from a selected endpoint.
    pub egress: Vec<Rule>,
    /// `spec.performanceHints`: kept and printed back; hints never change
    /// enforcement.
    pub performance_hints: Vec<String>,
}

/// The directions a policy applies to (`spec.types`). At least one is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Types {
    pub ingress: bool,
    pub egress: bool,
}

impl Types {
    /// Calico's default for a policy without `types`.
    pub fn default_for(has_ingress_rules: bool, has_egress_rules: bool) -> Types {
        match (has_ingress_rules, has_egress_rules) {
            (false, true) => Types {
                ingress: false,
                egress: true,
            },
            (true, true) => Types {
                ingress: true,
                egress: true,
            },
            _ => Types {
                ingress: true,
                egress: false,
            },
        }
    }

    /// Whether the policy applies in this direction.
    pub fn has(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress,
            Direction::Egress => self.egress,
        }
    }
}

/// A direction of traffic relative to an endpoint; also the values of
/// `spec.types`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic to the endpoint; checked against the destination endpoint.
    Ingress,
    /// Traffic from the endpoint; checked against the source endpoint.
    Egress,
}

impl Direction {
    /// The spelling in `spec.types`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl GlobalNetworkPolicy {
    /// The rules for one direction.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy applies to an endpoint with these labels for this
    /// direction.
    pub fn applies_to(&self, labels: &BTreeMap<String, String>, direction: Direction) -> bool {
        self.types.has(direction) && self.selector.matches(labels)
    }

    /// Every distinct selector the policy uses: its own and each rule's
    /// `selector`/`notSelector`, in canonical order.
    pub fn selectors(&self) -> std::collections::BTreeSet<&Selector> {
        let mut out = std::collections::BTreeSet::new();
        out.insert(&self.selector);
        for rule in self.ingress.iter().chain(&self.egress) {
            for entity in [&rule.source, &rule.destination] {
                out.extend(entity.selector.iter());
                out.extend(entity.not_selector.iter());
            }
        }
        out
    }
}

/// Calico's order of application: by `order` (absent = after every ordered
/// policy), then by name.
pub fn policy_order(a: &GlobalNetworkPolicy, b: &GlobalNetworkPolicy) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let by_order = match (a.order, b.order) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_order.then_with(|| a.name.cmp(&b.name))
}

/// Sorts policies into the order Calico applies them.
pub fn sort_policies(policies: &mut [GlobalNetworkPolicy]) {
    policies.sort_by(policy_order);
}

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Accept; no further rule or policy is consulted.
    Allow,
    /// Drop; no further rule or policy is consulted.
    Deny,
    /// Note the packet and go on with the next rule.
    Log,
    /// Skip the remaining policies; the endpoint's profiles decide.
    Pass,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
            Action::Log => "Log",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP version (`ipVersion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    pub fn of(addr: std::net::IpAddr) -> IpVersion {
        if addr.is_ipv4() {
            IpVersion::V4
        } else {
            IpVersion::V6
        }
    }

    pub fn of_net(net: &IpNet) -> IpVersion {
        match net {
            IpNet::V4(_) => IpVersion::V4,
            IpNet::V6(_) => IpVersion::V6,
        }
    }

    /// 4 or 6.
    pub fn number(self) -> u8 {
        match self {
            IpVersion::V4 => 4,
            IpVersion::V6 => 6,
        }
    }
}

/// A protocol as written (`protocol`/`notProtocol`): a name or a number
/// 1–255. Two spellings of one protocol (`TCP` and `6`) compare unequal but
/// have the same [`Protocol::number`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    IcmpV6,
    Sctp,
    UdpLite,
    /// A protocol number, 1–255.
    Number(u8),
}

impl Protocol {
    /// The names Calico accepts, as it spells them.
    pub const NAMES: [&'static str; 6] = ["TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite"];

    /// Parses one of [`Protocol::NAMES`] (case-sensitive).
    pub fn from_name(name: &str) -> Option<Protocol> {
        Some(match name {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "ICMP" => Protocol::Icmp,
            "ICMPv6" => Protocol::IcmpV6,
            "SCTP" => Protocol::Sctp,
            "UDPLite" => Protocol::UdpLite,
            _ => return None,
        })
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmp => 1,
            Protocol::IcmpV6 => 58,
            Protocol::Sctp => 132,
            Protocol::UdpLite => 136,
            Protocol::Number(n) => n,
        }
    }

    /// The name, for the named forms.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Icmp => "ICMP",
            Protocol::IcmpV6 => "ICMPv6",
            Protocol::Sctp => "SCTP",
            Protocol::UdpLite => "UDPLite",
            Protocol::Number(_) => return None,
        })
    }

    /// TCP, UDP or SCTP (by number): the protocols a rule may name ports for.
    pub fn has_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132)
    }

    /// ICMP or ICMPv6 (by number): the protocols a rule may give `icmp` for.
    pub fn is_icmp(self) -> bool {
        matches!(self.number(), 1 | 58)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.number()),
        }
    }
}

/// `icmp`/`notICMP`: an ICMP type (0–254) and optionally a code (0–255).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

impl IcmpMatch {
    /// Whether an ICMP message of this type and code matches.
    pub fn matches(&self, icmp_type: u8, code: u8) -> bool {
        self.icmp_type == icmp_type && self.code.is_none_or(|c| c == code)
    }
}

/// A port or an inclusive range of ports (`80`, `"6040:6050"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// One rule. Every criterion given must match (AND); the entries of one
/// list are alternatives (OR).
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub action: Action,
    /// `metadata.annotations` of the rule: kept and printed back.
    pub annotations: BTreeMap<String, String>,
    pub ip_version: Option<IpVersion>,
    pub protocol: Option<Protocol>,
    pub not_protocol: Option<Protocol>,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
    pub source: EntityRule,
    pub destination: EntityRule,
}

impl Rule {
    /// A rule with this action and no criteria (it matches every packet).
    pub fn new(action: Action) -> Rule {
        Rule {
            action,
            annotations: BTreeMap::new(),
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
        }
    }
}

/// `source`/`destination` criteria of a rule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntityRule {
    /// The address is in one of these networks.
    pub nets: Vec<IpNet>,
    /// The address is in none of these networks.
    pub not_nets: Vec<IpNet>,
    /// The address is a cluster endpoint's and its labels match (`None`:
    /// no restriction; an empty selector in the text is `None` too).
    pub selector: Option<Selector>,
    /// Not (the address is a cluster endpoint's whose labels match): matches
    /// addresses outside the cluster too.
    pub not_selector: Option<Selector>,
    /// The port is in one of these ranges.
    pub ports: Vec<PortRange>,
    /// The port is in none of these ranges.
    pub not_ports: Vec<PortRange>,
}

impl EntityRule {
    /// True when the entity rule restricts nothing.
    pub fn is_empty(&self) -> bool {
        self == &EntityRule::default()
    }
}
