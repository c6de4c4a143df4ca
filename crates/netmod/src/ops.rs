//! Operator commands: pools, address usage, reservations, and the IPAM check.

use crate::output::{self, Format};
use crate::CliError;
use ipnet::IpNet;
use netmod_core::check::{self, CheckOptions};
use netmod_ipam::{Forbidden, Ipam, PoolAdded};
use netmod_model::{AllocAttrs, Pool, VxlanMode};
use netmod_store::Store;
use std::net::IpAddr;
use std::time::Duration;

const POOL_ADD_HELP: &str = "Add an address pool.

A pool may not overlap another pool, the loopback, link-local, multicast,
unspecified or broadcast ranges, or this host's own networks: its addresses
and the routes of its main table (read from the kernel of the namespace
netmod runs in). Two kinds of route do not count: netmod's own (to other
hosts' blocks and to containers), and a route to exactly the pool through a
gateway (the pool routed into the cluster). Each refusal names the conflict
and changes nothing.

Adding a pool that exists with the same block size and quarantine prints
\"pool CIDR already exists, unchanged\" and exits 0; the same range with
other settings is an error (remove it first).";

#[derive(Debug, clap::Subcommand)]
pub enum PoolCmd {
    /// Add an address pool (refused when it overlaps another pool, a reserved range or this host's networks).
    #[command(long_about = POOL_ADD_HELP)]
    Add {
        /// The pool's range, e.g. 192.168.0.0/16 or fd00:10::/48.
        cidr: IpNet,
        /// Prefix length of the blocks hosts claim (default /26 for IPv4, /122 for IPv6).
        #[arg(long)]
        block_size: Option<u8>,
        /// Seconds a released address waits before it is handed out again.
        #[arg(long, default_value_t = netmod_ipam::DEFAULT_QUARANTINE_SECS)]
        quarantine: u64,
        /// When hosts encapsulate this pool's traffic to each other in VXLAN: Always, CrossSubnet (only to hosts on another subnet) or Never (routed directly, or by BGP).
        #[arg(long, default_value = "Never")]
        vxlan_mode: VxlanMode,
        /// Traffic from this pool to destinations outside every pool leaves with the host's address.
        #[arg(long)]
        nat_outgoing: bool,
        /// Hand out no addresses from this pool (yet).
        #[arg(long)]
        disabled: bool,
    },
    /// Change a pool's routing, NAT or disabled flag, live (its range, block size and quarantine stay).
    Set {
        /// The pool's range, exactly as it was added.
        cidr: IpNet,
        /// Always, CrossSubnet or Never.
        #[arg(long)]
        vxlan_mode: Option<VxlanMode>,
        /// true or false (alone: true).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        nat_outgoing: Option<bool>,
        /// true: no new allocations (existing ones stay); false: allocate again (alone: true).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        disabled: Option<bool>,
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

impl PoolCmd {
    /// Whether the command may create the store (only `pool add`).
    pub fn creates_store(&self) -> bool {
        matches!(self, PoolCmd::Add { .. })
    }
}

const CHECK_HELP: &str =
    "Check that allocations, endpoint records and this host's interfaces agree.

Reports (as `calicoctl ipam check` does):
  leaked-allocation    a handle that no endpoint record uses, older than --grace
  record-without-link  an endpoint record of this host whose interface is gone
  link-without-record  an interface of netmod's (nmv...) that no record names
  link-of-another-host an interface here that another host's record names (wrong --hostname?)
  ipam-inconsistent    blocks and handles that disagree
  unreadable           a record this netmod cannot read (never repaired)

With --repair: releases leaked allocations, deletes records whose interface is
gone (with their address and netgroup index keys, releasing their handle) and
removes orphan interfaces, each only if it is still so after a short pause.
Interfaces are those of the network namespace netmod runs in.";

#[derive(Debug, clap::Subcommand)]
pub enum IpamCmd {
    /// Used, free and quarantined addresses per pool, block and host.
    Show,
    /// Reserve these addresses for a handle: all or none. Quarantined addresses are refused unless --ignore-quarantine.
    Reserve {
        /// The allocation handle that will hold them (e.g. a Mesos uid).
        #[arg(long)]
        handle: String,
        /// An address to reserve (repeatable).
        #[arg(long, required = true)]
        ip: Vec<IpAddr>,
        /// The host the addresses are for, recorded with the allocation.
        #[arg(long, env = "NETMOD_HOSTNAME")]
        hostname: Option<String>,
        /// Also reserve addresses still in quarantine (released too recently for every host to have forgotten them). For operators who know the old holder is gone everywhere; the Mesos and CNI doors never do this.
        #[arg(long)]
        ignore_quarantine: bool,
    },
    /// Find leaked allocations, records without interfaces and orphan interfaces; exit status 0 when clean, 3 when problems were found, 1 on an error.
    #[command(
        long_about = CHECK_HELP,
        after_help = "Exit status: 0 when everything agrees, 3 when problems were found (repaired or \
not), 1 on an error (an unreadable datastore, no access to the kernel)."
    )]
    Check {
        /// This host's name: its endpoint records are checked against the interfaces here (default: $NETMOD_HOSTNAME, else the kernel's host name).
        #[arg(long, env = "NETMOD_HOSTNAME")]
        hostname: Option<String>,
        /// Seconds an allocation may go without an endpoint record before it counts as leaked (a task between allocate and isolate has none yet).
        #[arg(long, default_value_t = check::DEFAULT_GRACE.as_secs())]
        grace: u64,
        /// Put right what was found (see above).
        #[arg(long)]
        repair: bool,
    },
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
            vxlan_mode,
            nat_outgoing,
            disabled,
        } => {
            let forbidden = host_networks(&cidr)?;
            let options = netmod_ipam::PoolOptions {
                vxlan_mode,
                nat_outgoing,
                disabled,
            };
            let (pool, added) =
                ipam.add_pool_with(cidr, block_size, quarantine, options, &forbidden)?;
            match fmt {
                Format::Json => {
                    let mut v = pool_json(&pool);
                    v["status"] = match added {
                        PoolAdded::Added => "added",
                        PoolAdded::Unchanged => "unchanged",
                    }
                    .into();
                    output::json(&v)
                }
                Format::Table => match added {
                    PoolAdded::Added => println!(
                        "pool {} added (blocks /{}, quarantine {} s, {})",
                        pool.cidr,
                        pool.block_prefix,
                        pool.quarantine_secs,
                        pool_options_text(&pool)
                    ),
                    PoolAdded::Unchanged => {
                        println!("pool {} already exists, unchanged", pool.cidr)
                    }
                },
            }
        }
        PoolCmd::Set {
            cidr,
            vxlan_mode,
            nat_outgoing,
            disabled,
        } => {
            let changes = netmod_ipam::PoolChanges {
                vxlan_mode,
                nat_outgoing,
                disabled,
            };
            let pool = ipam.set_pool(cidr, changes)?;
            match fmt {
                Format::Json => output::json(&pool_json(&pool)),
                Format::Table => println!("pool {} now: {}", pool.cidr, pool_options_text(&pool)),
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
                        "VXLAN",
                        "NAT",
                        "STATE",
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
                                p.vxlan_mode.to_string(),
                                if p.nat_outgoing { "outgoing" } else { "-" }.to_string(),
                                if p.disabled { "disabled" } else { "enabled" }.to_string(),
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

/// A pool with every setting spelled out (the stored record leaves
/// defaults out).
fn pool_json(p: &Pool) -> serde_json::Value {
    serde_json::json!({
        "cidr": p.cidr,
        "block_prefix": p.block_prefix,
        "quarantine_secs": p.quarantine_secs,
        "vxlan_mode": p.vxlan_mode,
        "nat_outgoing": p.nat_outgoing,
        "disabled": p.disabled,
    })
}

/// A pool's routing, NAT and state in words.
fn pool_options_text(p: &Pool) -> String {
    format!(
        "VXLAN {}, NAT outgoing {}, {}",
        p.vxlan_mode,
        if p.nat_outgoing { "on" } else { "off" },
        if p.disabled { "disabled" } else { "enabled" }
    )
}

/// Run an `ipam` command; false when `ipam check` found problems.
pub fn ipam(store: &dyn Store, cmd: IpamCmd, fmt: Format) -> Result<bool, CliError> {
    let ipam = Ipam::new(store);
    match cmd {
        IpamCmd::Show => {
            let usage = ipam.usage()?;
            for bad in &usage.unreadable {
                eprintln!("netmod: warning: skipped a record this netmod cannot read: {bad}");
            }
            if fmt == Format::Json {
                output::json(&usage);
                return Ok(true);
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
        IpamCmd::Reserve {
            handle,
            ip,
            hostname,
            ignore_quarantine,
        } => {
            let attrs = AllocAttrs {
                host: match hostname {
                    Some(h) => h,
                    None => crate::node::kernel_hostname()?,
                },
                ..Default::default()
            };
            ipam.reserve_with(&handle, &attrs, &ip, ignore_quarantine)?;
            match fmt {
                Format::Json => {
                    output::json(&serde_json::json!({ "handle": handle, "reserved": ip }))
                }
                Format::Table => {
                    for a in &ip {
                        println!("reserved {a} for {handle}");
                    }
                }
            }
        }
        IpamCmd::Check {
            hostname,
            grace,
            repair,
        } => {
            let mut opts = CheckOptions::new(match hostname {
                Some(h) => h,
                None => crate::node::kernel_hostname()?,
            });
            opts.grace = Duration::from_secs(grace);
            opts.repair = repair;
            let report = check::check(store, &opts)?;
            print_check(&report, fmt);
            return Ok(report.clean());
        }
    }
    Ok(true)
}

fn print_check(report: &check::Report, fmt: Format) {
    if fmt == Format::Json {
        output::json(report);
        return;
    }
    if !report.problems.is_empty() {
        let mut header = vec!["PROBLEM", "SUBJECT", "DETAIL"];
        if report.repair {
            header.push("REPAIR");
        }
        output::table(
            &header,
            &report
                .problems
                .iter()
                .map(|p| {
                    let mut row = vec![
                        p.kind.as_str().to_string(),
                        p.subject.clone(),
                        p.detail.clone(),
                    ];
                    if report.repair {
                        row.push(p.action.clone().unwrap_or_else(|| "-".into()));
                    }
                    row
                })
                .collect::<Vec<_>>(),
        );
        println!();
    }
    let summary = format!(
        "checked {} allocation(s), {} endpoint record(s) ({} on {}), {} interface(s)",
        report.allocations, report.endpoints, report.local_endpoints, report.hostname, report.links
    );
    if report.problems.is_empty() {
        println!("{summary}: no problems");
    } else {
        let repaired = report.problems.iter().filter(|p| p.repaired).count();
        println!(
            "{summary}: {} problem(s){}",
            report.problems.len(),
            if report.repair {
                format!(", {repaired} repaired")
            } else {
                " (netmod ipam check --repair puts them right)".into()
            }
        );
    }
}

/// This host's networks a pool must not overlap: its addresses and the
/// routes of its main table, from the kernel of the namespace we run in.
/// Left out: netmod's own routes and interfaces, default routes, and a route
/// to exactly `pool` through a gateway (the pool routed into the cluster).
pub(crate) fn host_networks(pool: &IpNet) -> Result<Vec<Forbidden>, CliError> {
    let kernel = |what: &str, e: &dyn std::fmt::Display| {
        CliError::Other(format!(
            "cannot read this host's {what} to check the pool against them: {e}"
        ))
    };
    let ours: Vec<IpNet> = netmod_dataplane::list_routes()
        .map_err(|e| kernel("routes", &e))?
        .into_iter()
        .map(|r| r.dst)
        .collect();
    let mut out = Vec::new();
    for (dev, addr) in netmod_dataplane::host_addresses().map_err(|e| kernel("addresses", &e))? {
        if netmod_model::is_host_iface_name(&dev) {
            continue;
        }
        out.push(Forbidden {
            net: IpNet::from(addr),
            what: format!("this host's address {addr} on {dev}"),
        });
    }
    for r in netmod_dataplane::host_routes().map_err(|e| kernel("routes", &e))? {
        let ours = ours.contains(&r.dst)
            || r.dev
                .as_deref()
                .is_some_and(netmod_model::is_host_iface_name);
        let into_cluster = r.dst == *pool && r.via.is_some();
        if r.dst.prefix_len() == 0 || r.reject || ours || into_cluster {
            continue;
        }
        let mut what = format!("this host's route {}", r.dst);
        match (&r.via, &r.dev) {
            (Some(via), Some(dev)) => what.push_str(&format!(" via {via} dev {dev}")),
            (Some(via), None) => what.push_str(&format!(" via {via}")),
            (None, Some(dev)) => what.push_str(&format!(" via {dev}")),
            (None, None) => {}
        }
        out.push(Forbidden { net: r.dst, what });
    }
    Ok(out)
}
