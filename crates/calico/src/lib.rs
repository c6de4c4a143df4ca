//! Calico's policy model for netmod, pure: no I/O, no kernel, no store.
//!
//! - [`parse_policies`]: a file's text (YAML documents or JSON) →
//!   validated [`GlobalNetworkPolicy`] values; anything netmod does not
//!   implement is refused with an [`Error`] naming the document and the
//!   field path. [`GlobalNetworkPolicy::to_yaml`]/[`to_json`](GlobalNetworkPolicy::to_json)
//!   print a policy back in the same format.
//! - [`Selector`]: Calico's label selectors, with a canonical `Display` so
//!   that two spellings of one selector share one kernel set.
//! - [`evaluate`]: the reference semantics (which policy and rule decides a
//!   packet, in each direction), the oracle for differential tests.
//!
//! ```
//! use std::collections::BTreeMap;
//! use netmod_calico::{evaluate, parse_policies, Decision, Flow, Packet, Peer};
//!
//! let policies = parse_policies(
//!     "apiVersion: projectcalico.org/v3
//! kind: GlobalNetworkPolicy
//! metadata:
//!   name: allow-tcp-6379
//! spec:
//!   selector: role == 'database'
//!   ingress:
//!     - action: Allow
//!       protocol: TCP
//!       source:
//!         selector: role == 'frontend'
//!       destination:
//!         ports: [6379]
//! ",
//! )?;
//! let labels = |role: &str| BTreeMap::from([("role".to_string(), role.to_string())]);
//! let flow = Flow {
//!     source: Peer::endpoint("10.0.0.1".parse().unwrap(), labels("frontend")),
//!     destination: Peer::endpoint("10.0.0.2".parse().unwrap(), labels("database")),
//!     packet: Packet::tcp(40000, 6379),
//! };
//! let verdict = evaluate(&policies, &flow);
//! assert!(matches!(verdict.ingress.decision, Decision::Allow(_)));
//! assert_eq!(verdict.egress.decision, Decision::NoPolicy); // the frontend's profiles decide
//! # Ok::<(), netmod_calico::Error>(())
//! ```
//!
//! Field-by-field semantics: `shared/reference/calico-policy.md`, and
//! Calico's own API (`api/pkg/apis/projectcalico/v3/policy_common.go`).

mod emit;
mod error;
mod eval;
mod model;
mod parse;
pub mod selector;

pub use emit::{list_to_json, list_to_yaml};
pub use error::{DocumentRef, Error, ErrorKind, ListForm};
pub use eval::{
    entity_matches, evaluate, evaluate_direction, rule_matches, Decision, DirectionVerdict, Flow,
    Packet, Peer, RuleRef, Transport, Verdict,
};
pub use model::{
    policy_order, sort_policies, Action, Direction, EntityRule, GlobalNetworkPolicy, IcmpMatch,
    IpVersion, PortRange, Protocol, Rule, Types, API_VERSION, KIND, LIST_KIND,
};
pub use parse::{parse_policies, valid_name};
pub use selector::{Expr, Selector, SelectorError};
