//! Policies back to Calico's format, for `netmod policy get NAME -o yaml|json`.
//! What is printed parses back to an equal policy. `spec.types` is always
//! printed (with Calico's default filled in, as `calicoctl get` does);
//! selectors are printed as they were written.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::model::*;
use crate::selector::Selector;

#[derive(Serialize)]
struct WirePolicy<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    metadata: WireMeta<'a>,
    spec: WireSpec<'a>,
}

#[derive(Serialize)]
struct WireMeta<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct WireSpec<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<Order>,
    #[serde(skip_serializing_if = "str::is_empty")]
    selector: &'a str,
    types: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ingress: Vec<WireRule<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    egress: Vec<WireRule<'a>>,
    #[serde(rename = "performanceHints", skip_serializing_if = "Vec::is_empty")]
    performance_hints: &'a Vec<String>,
}

/// An order prints as an integer when it is one (`order: 100`).
struct Order(f64);

impl Serialize for Order {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        if self.0.fract() == 0.0
            && self.0.abs() < EXACT
            && !(self.0 == 0.0 && self.0.is_sign_negative())
        {
            s.serialize_i64(self.0 as i64)
        } else {
            s.serialize_f64(self.0)
        }
    }
}

#[derive(Serialize)]
struct WireRule<'a> {
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<WireRuleMeta<'a>>,
    #[serde(rename = "ipVersion", skip_serializing_if = "Option::is_none")]
    ip_version: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<WireProtocol>,
    #[serde(rename = "notProtocol", skip_serializing_if = "Option::is_none")]
    not_protocol: Option<WireProtocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp: Option<WireIcmp>,
    #[serde(rename = "notICMP", skip_serializing_if = "Option::is_none")]
    not_icmp: Option<WireIcmp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<WireEntity<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<WireEntity<'a>>,
}

#[derive(Serialize)]
struct WireRuleMeta<'a> {
    annotations: &'a BTreeMap<String, String>,
}

struct WireProtocol(Protocol);

impl Serialize for WireProtocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.name() {
            Some(name) => s.serialize_str(name),
            None => s.serialize_u8(self.0.number()),
        }
    }
}

#[derive(Serialize)]
struct WireIcmp {
    #[serde(rename = "type")]
    icmp_type: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u8>,
}

#[derive(Serialize)]
struct WireEntity<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nets: Vec<String>,
    #[serde(rename = "notNets", skip_serializing_if = "Vec::is_empty")]
    not_nets: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    selector: Option<&'a str>,
    #[serde(rename = "notSelector", skip_serializing_if = "Option::is_none")]
    not_selector: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<WirePort>,
    #[serde(rename = "notPorts", skip_serializing_if = "Vec::is_empty")]
    not_ports: Vec<WirePort>,
}

/// A single port prints as a number, a range as `"from:to"`.
struct WirePort(PortRange);

impl Serialize for WirePort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.first == self.0.last {
            s.serialize_u16(self.0.first)
        } else {
            s.collect_str(&self.0)
        }
    }
}

/// A rule's selector as written; a blank one (possible only in a policy
/// built in code) is `all()`, which is what it means there.
fn rule_selector(s: &Selector) -> &str {
    if s.source().trim().is_empty() {
        "all()"
    } else {
        s.source()
    }
}

fn wire_entity(e: &EntityRule) -> Option<WireEntity<'_>> {
    if e.is_empty() {
        return None;
    }
    let nets = |n: &Vec<ipnet::IpNet>| n.iter().map(ToString::to_string).collect();
    let ports = |p: &Vec<PortRange>| p.iter().copied().map(WirePort).collect();
    Some(WireEntity {
        nets: nets(&e.nets),
        not_nets: nets(&e.not_nets),
        selector: e.selector.as_ref().map(rule_selector),
        not_selector: e.not_selector.as_ref().map(rule_selector),
        ports: ports(&e.ports),
        not_ports: ports(&e.not_ports),
    })
}

fn wire_rule(r: &Rule) -> WireRule<'_> {
    let icmp = |m: &Option<IcmpMatch>| {
        m.map(|m| WireIcmp {
            icmp_type: m.icmp_type,
            code: m.code,
        })
    };
    WireRule {
        action: r.action.as_str(),
        metadata: (!r.annotations.is_empty()).then_some(WireRuleMeta {
            annotations: &r.annotations,
        }),
        ip_version: r.ip_version.map(IpVersion::number),
        protocol: r.protocol.map(WireProtocol),
        not_protocol: r.not_protocol.map(WireProtocol),
        icmp: icmp(&r.icmp),
        not_icmp: icmp(&r.not_icmp),
        source: wire_entity(&r.source),
        destination: wire_entity(&r.destination),
    }
}

fn wire(p: &GlobalNetworkPolicy) -> WirePolicy<'_> {
    let mut types = Vec::new();
    if p.types.ingress {
        types.push(Direction::Ingress.as_str());
    }
    if p.types.egress {
        types.push(Direction::Egress.as_str());
    }
    WirePolicy {
        api_version: API_VERSION,
        kind: KIND,
        metadata: WireMeta {
            name: &p.name,
            labels: &p.labels,
            annotations: &p.annotations,
        },
        spec: WireSpec {
            order: p.order.map(Order),
            selector: p.selector.source().trim(),
            types,
            ingress: p.ingress.iter().map(wire_rule).collect(),
            egress: p.egress.iter().map(wire_rule).collect(),
            performance_hints: &p.performance_hints,
        },
    }
}

impl Serialize for GlobalNetworkPolicy {
    /// Calico's resource form (`apiVersion`, `kind`, `metadata`, `spec`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        wire(self).serialize(s)
    }
}

#[derive(Serialize)]
struct WireList<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    items: &'a [GlobalNetworkPolicy],
}

fn list(policies: &[GlobalNetworkPolicy]) -> WireList<'_> {
    WireList {
        api_version: API_VERSION,
        kind: LIST_KIND,
        items: policies,
    }
}

impl GlobalNetworkPolicy {
    /// The policy as one YAML document (without `---`).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a policy always serialises")
    }

    /// The policy as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a policy always serialises")
    }

    /// The policy as a JSON value (what [`GlobalNetworkPolicy::from_json_value`] reads).
    pub fn to_json_value(&self) -> Value {
        serde_json::to_value(self).expect("a policy always serialises")
    }
}

/// Several policies as a `GlobalNetworkPolicyList` in YAML (as
/// `calicoctl get globalnetworkpolicies -o yaml` prints them).
pub fn list_to_yaml(policies: &[GlobalNetworkPolicy]) -> String {
    serde_norway::to_string(&list(policies)).expect("a policy list always serialises")
}

/// Several policies as a `GlobalNetworkPolicyList` in pretty-printed JSON.
pub fn list_to_json(policies: &[GlobalNetworkPolicy]) -> String {
    serde_json::to_string_pretty(&list(policies)).expect("a policy list always serialises")
}
