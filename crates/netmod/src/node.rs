//! `netmod node`: flags for the per-host daemon, which lives in the core.

use crate::CliError;
use netmod_core::node::{self, NodeConfig};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// This host's name, as the cluster manager calls it (see "Host names" in the README).
    #[arg(long, env = "NETMOD_HOSTNAME", required_unless_present = "uninstall")]
    pub hostname: Option<String>,
    /// The address other hosts route this host's blocks through.
    #[arg(long, env = "NETMOD_HOST_IP", required_unless_present = "uninstall")]
    pub host_ip: Option<IpAddr>,
    /// Where /healthz and /metrics listen (loopback).
    #[arg(long, env = "NETMOD_METRICS_ADDR", default_value = "127.0.0.1:9190")]
    pub metrics_addr: String,
    /// Seconds the host record lives without a heartbeat.
    #[arg(long, default_value_t = 10)]
    pub lease_ttl: u64,
    /// Seconds between full desired-vs-actual checks.
    #[arg(long, default_value_t = 30)]
    pub resync_interval: u64,
    /// Remove everything netmod created on this host (table, interfaces, routes), then exit.
    #[arg(long)]
    pub uninstall: bool,
}

pub fn run(store_flag: Option<&str>, args: NodeArgs) -> Result<(), CliError> {
    if args.uninstall {
        let gone = node::uninstall()?;
        println!(
            "removed: {} table, {} interface(s), {} route(s)",
            if gone.table { "the netmod" } else { "no" },
            gone.interfaces,
            gone.routes
        );
        return Ok(());
    }
    let store: Arc<dyn netmod_store::Store> = crate::open(store_flag)?.into();
    let config = NodeConfig {
        hostname: args.hostname.expect("required by clap"),
        host_ip: args.host_ip.expect("required by clap"),
        metrics_addr: args.metrics_addr,
        lease_ttl: Duration::from_secs(args.lease_ttl),
        resync_interval: Duration::from_secs(args.resync_interval),
    };
    Ok(node::run(store, config)?)
}
