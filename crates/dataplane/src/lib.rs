//! netmod-dataplane: the only part of netmod that touches the kernel.
//!
//! - [`plug`] / [`unplug`]: a veth per container, its peer created directly
//!   inside the container's network namespace, addresses, routes, sysctls.
//! - routes to other hosts' blocks ([`route_replace`], [`owned_routes`],
//!   blackholes, onlink routes over the overlay; the older [`add_route`],
//!   [`list_routes`], ...), all carrying `model::ROUTE_PROTOCOL` so a
//!   restart can find its own.
//! - the overlay between hosts (`overlay`): a VXLAN device
//!   ([`ensure_vxlan`]), its forwarding database ([`fdb_replace`]) and
//!   permanent neighbours ([`neighbour_replace`]); per-interface sysctls
//!   ([`set_iface_sysctl`]).
//! - nftables ([`nft_replace_all`], [`nft_apply`], ...): the one table
//!   `inet netmod`, each call one atomic transaction.
//!
//! Everything is synchronous and speaks netlink directly through one small
//! socket (`nl`): rtnetlink messages are `netlink-packet-route` types, the
//! nf_tables messages our own codec (no crate covers what we use), so there
//! is no C library to build against and no `nft`/`ip` process. Sockets are
//! opened in the calling thread's current network namespace; [`in_netns`]
//! runs code in another one on a dedicated thread. Each thread keeps one
//! nftables socket per namespace for reuse (closing one after a deletion
//! waits for the kernel, see `nft`).
//!
//! Containers reach their gateway (169.254.1.1 / fe80::1) through a
//! permanent neighbour entry and the host side's own link-local address, so
//! they work on a host without a default route too.
//!
//! Kernel requirement: >= 6.3 (`DeleteElements` uses NFT_MSG_DESTROYSETELEM).

mod conntrack;
mod error;
mod hostnet;
mod link;
mod monitor;
mod netns;
mod nft;
mod nl;
mod overlay;
mod rtnl;

pub use conntrack::conntrack_forget;
pub use error::{Error, Result};
pub use hostnet::{host_addresses, host_routes, HostRoute};
pub use link::{
    add_route, del_route, del_routes_not_in, link_exists, list_links_with_prefix, list_routes,
    owned_routes, plug, route_delete, route_replace, set_iface_sysctl, unplug, LinkInfo,
    OwnedRoute, PlugSpec, Plugged, RouteInfo, RouteTarget,
};
pub use monitor::{NftChanges, NftMonitor};
pub use netns::{in_netns, in_netns_fd, open_netns};
pub use nft::{
    nft_apply, nft_delete_table, nft_list_set_elements, nft_list_sets, nft_replace_all,
    nft_set_exists, nft_table_exists,
};
pub use overlay::{
    delete_link, ensure_vxlan, fdb_delete, fdb_entries, fdb_replace, neighbour_delete,
    neighbour_replace, neighbours, VxlanSpec,
};
