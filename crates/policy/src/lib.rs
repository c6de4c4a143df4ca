//! Policy, pure: from endpoints and netgroups, the nftables objects one host
//! needs, the changes that move one ruleset to another, and an evaluator that
//! explains a packet's fate from the very same objects.
//!
//! Shape (see `ruleset`): a fixed set of chains whose rules never change for
//! endpoints, only for netgroups. Adding or removing an endpoint, here or on
//! another host, touches set elements only; a netgroup seen for the first
//! time adds one set and one accept rule per family, and never a jump.

mod explain;
mod ruleset;

pub use explain::{explain, Decision, Hop, Packet};
pub use ruleset::{
    diff, group_rule, group_set_name, has_stale_sets, ruleset, validate_netgroup, BaseSets,
    CHAIN_NETGROUPS, ICMP_TYPES_NEVER_TO_HOST, NETGROUP_MAX_LEN,
};

#[cfg(test)]
mod tests;
