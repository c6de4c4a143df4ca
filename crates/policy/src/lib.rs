//! Policy, pure: from endpoints, netgroups and Calico policies, the
//! nftables objects one host needs, the changes that move one ruleset to
//! another, and an evaluator that explains a packet's fate from the very
//! same objects.
//!
//! Shape (see `ruleset` and `compile`): a fixed set of chains whose rules
//! never change for endpoints, only for netgroups and policies. Adding or
//! removing an endpoint, here or on another host, touches set elements only
//! (netgroup sets, and one set per distinct selector and family), whatever
//! the number of policies; a netgroup seen for the first time adds one set
//! and one accept rule per family, and never a jump. A policy change is
//! installed as a whole, atomic table ([`needs_replace`]).

mod compile;
mod explain;
mod hostnet;
mod ruleset;

pub use compile::{
    endpoint_policy_sets, policy_chain_name, rule_alternatives, rule_comment, selected_set_name,
    selector_set_name, IndexedSelector, SelectorIndex, CHAIN_EGRESS_ALLOWED, CHAIN_PASS_EGRESS,
    CHAIN_PASS_INGRESS, CHAIN_POLICY_EGRESS, CHAIN_POLICY_INGRESS, POLICY_LOG_GROUP,
    POLICY_LOG_RATE,
};
pub use explain::{explain, Decision, Hop, Packet, L4};
pub use hostnet::{
    add_host_routing, hosts_set_name, HostRouting, CHAIN_NAT_OUTGOING, CHAIN_VXLAN_IN,
};
pub use ruleset::{
    diff, group_rule, group_set_name, is_policy_chain, is_policy_set, needs_replace, ruleset,
    ruleset_with_policies, validate_netgroup, BaseSets, CHAIN_NETGROUPS, ICMP_TYPES_NEVER_TO_HOST,
    NETGROUP_MAX_LEN,
};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_policies;
