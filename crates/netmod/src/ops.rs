//! Operator commands: pools and address usage.

use crate::output::{self, Format};
use crate::CliError;
use ipnet::IpNet;
use netmod_ipam::Ipam;
use netmod_store::Store;
use std::net::IpAddr;

#[derive(Debug, clap::Subcommand)]
pub enum PoolCmd {
    /// Add an address pool.
    Add {
        /// The pool's range, e.g. 192.168.0.0/16 or fd00:10::/48.
        cidr: IpNet,
        /// Prefix length of the blocks hosts claim (default /26 for IPv4, /122 for IPv6).
        #[arg(long)]
        block_size: Option<u8>,
        /// Seconds a released address waits before it is handed out again.
        #[arg(long, default_value_t = netmod_ipam::DEFAULT_QUARANTINE_SECS)]
        quarantine: u64,
    },
    /// List pools with their usage.
    List,
    /// Remove a pool (refused while it has live allocations, unless --force).
    Rm {
        /// The pool's range, exactly as it was added.
        cidr: IpNet,
        /// Remove it even with live allocations (they are dropped with it).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum IpamCmd {
    /// Used, free and quarantined addresses per pool, block and host.
    Show,
    /// Release addresses by handle or by address ("nothing was held" is not an error either way).
    Release {
        /// The allocation handle: the Mesos uid or the CNI container id.
        #[arg(long, conflicts_with = "ip", required_unless_present = "ip")]
        handle: Option<String>,
        /// An address to release, whoever holds it (repeatable).
        #[arg(long)]
        ip: Vec<IpAddr>,
    },
}

pub fn pool(store: &dyn Store, cmd: PoolCmd, fmt: Format) -> Result<(), CliError> {
    let ipam = Ipam::new(store);
    match cmd {
        PoolCmd::Add {
            cidr,
            block_size,
            quarantine,
        } => {
            let pool = ipam.add_pool(cidr, block_size, quarantine)?;
            match fmt {
                Format::Json => output::json(&pool),
                Format::Table => println!(
                    "pool {} added (blocks /{}, quarantine {} s)",
                    pool.cidr, pool.block_prefix, pool.quarantine_secs
                ),
            }
        }
        PoolCmd::List => {
            let usage = ipam.usage()?;
            match fmt {
                Format::Json => output::json(&usage.pools),
                Format::Table => output::table(
                    &[
                        "POOL",
                        "BLOCK",
                        "QUARANTINE",
                        "USED",
                        "QUARANTINED",
                        "FREE",
                        "BLOCKS",
                    ],
                    &usage
                        .pools
                        .iter()
                        .map(|p| {
                            vec![
                                p.cidr.to_string(),
                                format!("/{}", p.block_prefix),
                                format!("{}s", p.quarantine_secs),
                                p.used.to_string(),
                                p.quarantined.to_string(),
                                p.free.to_string(),
                                p.blocks_claimed.to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        PoolCmd::Rm { cidr, force } => {
            let dropped = ipam.remove_pool(cidr, force)?;
            match fmt {
                Format::Json => output::json(
                    &serde_json::json!({"removed": cidr, "allocations_dropped": dropped}),
                ),
                Format::Table => println!("pool {cidr} removed ({dropped} allocation(s) dropped)"),
            }
        }
    }
    Ok(())
}

pub fn ipam(store: &dyn Store, cmd: IpamCmd, fmt: Format) -> Result<(), CliError> {
    let ipam = Ipam::new(store);
    match cmd {
        IpamCmd::Show => {
            let usage = ipam.usage()?;
            if fmt == Format::Json {
                output::json(&usage);
                return Ok(());
            }
            output::table(
                &["POOL", "USED", "QUARANTINED", "FREE"],
                &usage
                    .pools
                    .iter()
                    .map(|p| {
                        vec![
                            p.cidr.to_string(),
                            p.used.to_string(),
                            p.quarantined.to_string(),
                            p.free.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            println!();
            output::table(
                &["BLOCK", "HOST", "USED", "QUARANTINED", "FREE"],
                &usage
                    .blocks
                    .iter()
                    .map(|b| {
                        vec![
                            b.cidr.to_string(),
                            b.host.clone().unwrap_or_else(|| "-".into()),
                            b.used.to_string(),
                            b.quarantined.to_string(),
                            b.free.to_string(),
                        ]
                    })
                    .collect::<Vec<_>>(),
            );
            println!();
            output::table(
                &["HOST", "BLOCKS", "USED"],
                &usage
                    .hosts
                    .iter()
                    .map(|h| vec![h.host.clone(), h.blocks.to_string(), h.used.to_string()])
                    .collect::<Vec<_>>(),
            );
        }
        IpamCmd::Release { handle, ip } => {
            let released: Vec<IpAddr> = match handle {
                // As with --ip: a handle that holds nothing releases nothing.
                Some(h) => match ipam.release_handle(&h) {
                    Err(netmod_ipam::IpamError::UnknownHandle(_)) => Vec::new(),
                    other => other?,
                },
                None => ipam
                    .release_addrs(&ip)?
                    .into_iter()
                    .map(|(a, _)| a)
                    .collect(),
            };
            match fmt {
                Format::Json => output::json(&serde_json::json!({ "released": released })),
                Format::Table => {
                    for a in &released {
                        println!("released {a}");
                    }
                    if released.is_empty() {
                        println!("nothing was held");
                    }
                }
            }
        }
    }
    Ok(())
}
