//! The labels policy selectors see on an endpoint: those the cluster manager
//! gave it (net-modules `labels`, Marathon's `ipAddress.labels` and app
//! labels, CNI `args`/`runtimeConfig` labels), plus one label per netgroup,
//! `netgroup.netmod.io/<group>` with an empty value, so that a selector can
//! name a netgroup: `has(netgroup.netmod.io/star-1)`.

use netmod_model::Endpoint;
use std::collections::BTreeMap;

/// The key prefix of the netgroup labels.
pub const NETGROUP_LABEL_PREFIX: &str = "netgroup.netmod.io/";

/// An endpoint's labels as selectors see them.
pub fn endpoint_labels(ep: &Endpoint) -> BTreeMap<String, String> {
    let mut labels = ep.labels.clone();
    for g in &ep.netgroups {
        labels.insert(format!("{NETGROUP_LABEL_PREFIX}{g}"), String::new());
    }
    labels
}
