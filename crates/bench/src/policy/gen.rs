//! Synthetic Calico policies and endpoint labels.
//!
//! Policy `k` selects endpoints by label (`app == 'a<k % 100>'`, or a
//! selector the caller gives) and has 10 rules that mix protocols, ports,
//! port ranges, nets, negated nets, source selectors, ICMP, and every action
//! (Allow, Deny, Log, Pass): 7 ingress, 3 egress. The only rules that can
//! decide a TCP connection between two endpoints without `tier` labels and
//! without `app` labels of the `a<n>` kind are the last ingress and the last
//! egress rule, which allow TCP to port `9000 + k`: so a new connection to
//! port `9000 + k` walks every chain of the policies before `k`.

use crate::BenchError;
use netmod_calico::GlobalNetworkPolicy;
use std::collections::BTreeMap;

/// Distinct `app` label values.
pub const APPS: usize = 100;
/// Distinct `tier` label values.
pub const TIERS: usize = 5;
/// Rules per policy.
pub const RULES: usize = 10;

/// The port policy `k` allows (its last ingress and egress rules).
pub fn allowed_port(k: usize) -> u16 {
    9000 + k as u16
}

pub fn name(prefix: &str, k: usize) -> String {
    format!("{prefix}-{k:04}")
}

/// The YAML of policy `k` (a Calico GlobalNetworkPolicy document).
pub fn policy_yaml(name: &str, k: usize, selector: &str) -> String {
    let next_app = (k + 1) % APPS;
    let tier = k % TIERS;
    let octet = k % 256;
    let port = allowed_port(k);
    format!(
        r#"apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: {name}
spec:
  order: {k}
  selector: "{selector}"
  types: [Ingress, Egress]
  ingress:
    - action: Allow
      protocol: TCP
      source:
        selector: "app == 'a{next_app}'"
      destination:
        ports: [80, 443, "8000:8099"]
    - action: Deny
      protocol: UDP
      source:
        nets: ["10.200.{octet}.0/24"]
      destination:
        ports: [53]
    - action: Log
      protocol: TCP
      destination:
        ports: [22]
    - action: Allow
      protocol: ICMP
      icmp:
        type: 8
    - action: Pass
      source:
        selector: "tier == 't{tier}'"
    - action: Deny
      protocol: TCP
      source:
        nets: ["10.98.0.0/16", "10.99.{octet}.0/24"]
    - action: Allow
      protocol: TCP
      destination:
        ports: [{port}]
  egress:
    - action: Deny
      protocol: UDP
      destination:
        nets: ["10.97.0.0/16"]
    - action: Allow
      protocol: UDP
      destination:
        notNets: ["10.0.0.0/8"]
        ports: ["5000:5999"]
    - action: Allow
      protocol: TCP
      destination:
        ports: [{port}]
"#
    )
}

/// `count` policies named `<prefix>-<k>`; `selector(k)` says whom policy `k` selects.
pub fn policies(
    prefix: &str,
    count: usize,
    selector: &dyn Fn(usize) -> String,
) -> Result<Vec<GlobalNetworkPolicy>, BenchError> {
    let text: Vec<String> = (0..count)
        .map(|k| policy_yaml(&name(prefix, k), k, &selector(k)))
        .collect();
    parse(&text.join("---\n"))
}

pub fn parse(yaml: &str) -> Result<Vec<GlobalNetworkPolicy>, BenchError> {
    netmod_calico::parse_policies(yaml)
        .map_err(|e| BenchError::Other(format!("the synthetic policies do not parse: {e}")))
}

/// Policy `k` selects the endpoints with `app == 'a<k % 100>'`.
pub fn by_app(k: usize) -> String {
    format!("app == 'a{}'", k % APPS)
}

/// The labels of synthetic endpoint `i`.
pub fn labels(i: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app".to_string(), format!("a{}", i % APPS)),
        ("tier".to_string(), format!("t{}", i % TIERS)),
    ])
}
