//! netmod's core, called by every door (net-modules, CNI) and the CLI:
//!
//! - [`attach`]: plug a container in and out, undoing every step on failure;
//! - [`registry`]: endpoint and host records, with the indexes that keep
//!   addresses unique across the cluster;
//! - [`node`]: the per-host daemon's resync-and-diff loop;
//! - [`explain`]: why a packet is allowed or dropped, from the rulesets the
//!   dataplane installs.
//!
//! Wire formats (net-modules JSON, CNI results), argument parsing and output
//! formatting live in the `netmod` binary crate, not here.

pub mod attach;
pub mod bgp;
pub mod check;
pub mod explain;
pub mod labels;
pub mod node;
pub mod policies;
pub mod registry;
pub mod routing;

/// An error from the core, with its cause chained in.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] netmod_store::StoreError),
    #[error(transparent)]
    Ipam(#[from] netmod_ipam::IpamError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("dataplane: {0}")]
    Dataplane(#[from] netmod_dataplane::Error),
    #[error(
        "this node runs as host {hostname:?}, but interfaces here belong to endpoints recorded for another host name: {}; start the node with the name the cluster manager uses for this host (see \"Host names\" in the README)", links.join(", ")
    )]
    HostnameMismatch {
        hostname: String,
        links: Vec<String>,
    },
    #[error("{0}")]
    Other(String),
}
