//! `netmod node`: flags for the per-host daemon, which lives in the core.

use crate::CliError;
use netmod_core::node::{self, NodeConfig};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// This host's name, exactly as the cluster manager sends it (default: $NETMOD_HOSTNAME, else the kernel's host name; see "Host names" in the README).
    #[arg(long, env = "NETMOD_HOSTNAME")]
    pub hostname: Option<String>,
    /// The address other hosts route this host's blocks through.
    #[arg(long, env = "NETMOD_HOST_IP", required_unless_present = "uninstall")]
    pub host_ip: Option<IpAddr>,
    /// This host's IPv6 address, through which other hosts route its IPv6 blocks (dual stack).
    #[arg(long, env = "NETMOD_HOST_IPV6")]
    pub host_ipv6: Option<std::net::Ipv6Addr>,
    /// Where /healthz and /metrics listen (loopback).
    #[arg(long, env = "NETMOD_METRICS_ADDR", default_value = "127.0.0.1:9190")]
    pub metrics_addr: String,
    /// Seconds the host record lives without a heartbeat.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Seconds between full desired-vs-actual checks.
    #[arg(long, default_value_t = 30)]
    pub resync_interval: u64,
    /// Seconds a record of this host may name a missing interface before the node removes it and releases its addresses.
    #[arg(long, default_value_t = netmod_core::node::STALE_RECORD_GRACE.as_secs())]
    pub stale_record_grace: u64,
    /// Remove everything netmod created on this host (table, interfaces, routes; with BGP, BIRD's configuration, and the BIRD the node started), then exit.
    #[arg(long)]
    pub uninstall: bool,
    /// Route between hosts through BGP: the node writes BIRD 2's configuration (this host's blocks, the peers of `netmod bgp peer`, else a full mesh) and reloads it on change; no direct routes for pools without VXLAN.
    #[arg(long, env = "NETMOD_BGP")]
    pub bgp: bool,
    /// The hosts' AS number (every host the same).
    #[arg(long, value_name = "N", default_value_t = netmod_core::bgp::DEFAULT_AS)]
    pub bgp_as: u32,
    /// Where the node writes BIRD's configuration.
    #[arg(long, value_name = "PATH", default_value = netmod_core::bgp::DEFAULT_CONFIG)]
    pub bird_config: std::path::PathBuf,
    /// BIRD's control socket (`bird -s`, `birdc -s`).
    #[arg(long, value_name = "PATH", default_value = netmod_core::bgp::DEFAULT_SOCKET)]
    pub bird_socket: std::path::PathBuf,
    /// BIRD is run by systemd (or another supervisor) with --bird-config and --bird-socket; the node only writes the file and runs `birdc configure` (and --uninstall leaves BIRD running).
    #[arg(long)]
    pub bird_external: bool,
}

pub fn run(store_flag: Option<&str>, args: NodeArgs) -> Result<(), CliError> {
    let bgp = netmod_core::bgp::BgpSettings {
        local_as: args.bgp_as,
        config: args.bird_config,
        socket: args.bird_socket,
        external: args.bird_external,
    };
    if args.uninstall {
        let gone = node::uninstall()?;
        let bird = netmod_core::bgp::uninstall(&bgp)?;
        println!(
            "removed: {} table, {} interface(s), {} route(s){}{}",
            if gone.table { "the netmod" } else { "no" },
            gone.interfaces,
            gone.routes,
            if bird.config {
                ", BIRD's configuration"
            } else {
                ""
            },
            if bird.bird_stopped {
                ", BIRD stopped"
            } else {
                ""
            },
        );
        return Ok(());
    }
    if args.bgp {
        netmod_core::bgp::check_asn(args.bgp_as)?;
    }
    let store: Arc<dyn netmod_store::Store> = crate::open(store_flag)?.into();
    let config = NodeConfig {
        hostname: match args.hostname {
            Some(h) => h,
            None => kernel_hostname()?,
        },
        host_ip: args.host_ip.expect("required by clap"),
        host_ipv6: args.host_ipv6.map(IpAddr::V6),
        metrics_addr: args.metrics_addr,
        lease_ttl: Duration::from_secs(args.lease_ttl),
        resync_interval: Duration::from_secs(args.resync_interval),
        stale_record_grace: Duration::from_secs(args.stale_record_grace),
        bgp: args.bgp.then_some(bgp),
    };
    Ok(node::run(store, config)?)
}

/// The kernel's host name (`uname -n`): the default on every door.
pub fn kernel_hostname() -> Result<String, CliError> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| CliError::Other(format!("reading the host name: {e}")))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(CliError::Other(
            "the kernel has no host name: pass --hostname".into(),
        ));
    }
    Ok(name.to_string())
}
