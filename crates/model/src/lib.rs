//! Plain data types shared by every netmod part. No I/O lives here.

pub mod nft;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The netgroup every endpoint may reach and be reached from.
pub const PUBLIC_NETGROUP: &str = "public";

/// Prefix of every host-side interface netmod creates (`nmv` + 11 hex chars
/// of a hash). Specific enough that the policy's `iifname "nmv*"` match never
/// takes in someone else's interface (NetworkManager's are `nm-…`).
pub const HOST_IFACE_PREFIX: &str = "nmv";

/// Route protocol number on every route netmod installs, so a restart can find its own.
pub const ROUTE_PROTOCOL: u8 = 0x6e; // 110, 'n'

/// The gateway every container routes through (answered by proxy ARP on the host side).
pub const GATEWAY_V4: &str = "169.254.1.1";
/// The IPv6 gateway: a fixed link-local address the host side of every veth carries.
pub const GATEWAY_V6: &str = "fe80::1";

/// An address pool, carved into host-affine blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub cidr: IpNet,
    /// Prefix length of the blocks hosts claim from this pool.
    pub block_prefix: u8,
    /// Seconds a released address is held back before it can be handed out again.
    pub quarantine_secs: u64,
    /// How hosts carry this pool's traffic to each other.
    #[serde(default, skip_serializing_if = "VxlanMode::is_never")]
    pub vxlan_mode: VxlanMode,
    /// Traffic from the pool to destinations outside every pool leaves with
    /// the host's address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nat_outgoing: bool,
    /// No new allocations; existing ones stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

/// Calico's `vxlanMode`: when a pool's traffic to another host is
/// encapsulated in VXLAN.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum VxlanMode {
    /// Routed directly: every host on one L2 segment (or BGP).
    #[default]
    Never,
    /// Always encapsulated.
    Always,
    /// Encapsulated only to hosts on another subnet.
    CrossSubnet,
}

impl VxlanMode {
    pub fn is_never(&self) -> bool {
        *self == VxlanMode::Never
    }
}

impl std::fmt::Display for VxlanMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VxlanMode::Never => "Never",
            VxlanMode::Always => "Always",
            VxlanMode::CrossSubnet => "CrossSubnet",
        })
    }
}

impl std::str::FromStr for VxlanMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Never" => Ok(VxlanMode::Never),
            "Always" => Ok(VxlanMode::Always),
            "CrossSubnet" => Ok(VxlanMode::CrossSubnet),
            other => Err(format!(
                "unknown VXLAN mode {other:?} (Always, CrossSubnet or Never)"
            )),
        }
    }
}

impl Pool {
    pub fn default_block_prefix(cidr: &IpNet) -> u8 {
        match cidr {
            IpNet::V4(_) => 26,
            IpNet::V6(_) => 122,
        }
    }
}

/// Who holds an address and why: the attributes recorded with every allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocAttrs {
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub netgroups: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A host running `netmod node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<IpAddr>,
    /// The datastore revision up to which this host's node has applied every
    /// change (removals included: flows forgotten). Quarantine of released
    /// addresses counts from the moment every live host is past the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<u64>,
    /// The IPv4 network of the interface that holds `ip`: hosts in another
    /// one are "cross-subnet" (VXLAN `CrossSubnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    /// The host's VXLAN tunnel endpoint, once its node has the vxlan device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep: Option<Vtep>,
}

/// Where other hosts send this host's VXLAN traffic: the outer destination
/// (the host's address) and the inner destination MAC (its vxlan device's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vtep {
    pub ip: IpAddr,
    pub mac: String,
}

/// A container plugged into the network on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub container_id: String,
    /// Host-side interface name.
    pub iface: String,
    /// Interface name inside the container (`eth0` for net-modules).
    #[serde(default = "default_container_iface")]
    pub container_iface: String,
    pub mac: String,
    #[serde(default)]
    pub ipv4: Vec<std::net::Ipv4Addr>,
    #[serde(default)]
    pub ipv6: Vec<std::net::Ipv6Addr>,
    #[serde(default)]
    pub netgroups: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The namespace path the endpoint was plugged into.
    #[serde(default)]
    pub netns: String,
    /// Which door created it: "mesos" or "cni".
    #[serde(default)]
    pub source: String,
    /// Allocation handle holding the endpoint's addresses, when the door knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

fn default_container_iface() -> String {
    "eth0".to_string()
}

impl Endpoint {
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .iter()
            .map(|a| IpAddr::V4(*a))
            .chain(self.ipv6.iter().map(|a| IpAddr::V6(*a)))
    }

    /// A task name, when the cluster manager gave one as a label.
    pub fn task_name(&self) -> Option<&str> {
        self.labels.get("task").map(|s| s.as_str())
    }
}

/// Deterministic host-side interface name for a container: fixed prefix plus a hash,
/// at most 15 bytes (IFNAMSIZ - 1).
pub fn host_iface_name(container_id: &str, container_iface: &str) -> String {
    let mut hash: u64 = 0xcbf29ce484222325; // FNV-1a: stable across releases and machines
    for b in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(container_iface.bytes())
    {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{HOST_IFACE_PREFIX}{:011x}", hash & 0xfff_ffff_ffff)
}

/// Whether an interface name has exactly the shape netmod gives host-side
/// interfaces, so cleanup never touches someone else's `nm…` interface.
pub fn is_host_iface_name(name: &str) -> bool {
    name.len() == HOST_IFACE_PREFIX.len() + 11
        && name.starts_with(HOST_IFACE_PREFIX)
        && name[HOST_IFACE_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Deterministic MAC for the container side (locally administered, unicast).
pub fn container_mac(container_id: &str, container_iface: &str) -> [u8; 6] {
    let name = host_iface_name(container_id, container_iface);
    let hex = &name[HOST_IFACE_PREFIX.len()..];
    let v = u64::from_str_radix(hex, 16).unwrap_or(0);
    [
        0x0e,
        0x6e,
        (v >> 24) as u8,
        (v >> 16) as u8,
        (v >> 8) as u8,
        v as u8,
    ]
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iface_names_are_short_stable_and_distinct() {
        let a = host_iface_name("task-1", "eth0");
        assert_eq!(a, host_iface_name("task-1", "eth0"));
        assert_ne!(a, host_iface_name("task-2", "eth0"));
        assert_ne!(a, host_iface_name("task-1", "eth1"));
        assert!(a.len() <= 15 && a.starts_with(HOST_IFACE_PREFIX));
        assert!(is_host_iface_name(&a));
        assert!(!is_host_iface_name("nmlab-br0"));
        assert!(!is_host_iface_name("nmtestref0"));
    }
}
