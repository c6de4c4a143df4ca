//! `netmod bgp peer …`: the BGP peers every `netmod node --bgp` sessions
//! with (route reflectors, top-of-rack routers). With none stored, the
//! nodes peer with each other in a full mesh.

use crate::output::{self, Format};
use crate::CliError;
use netmod_core::bgp::{self, Peer};
use std::net::IpAddr;

#[derive(Debug, clap::Subcommand)]
pub enum BgpCmd {
    /// BGP peers of every host: with any stored, hosts peer with those only; with none, in a full mesh.
    #[command(subcommand)]
    Peer(PeerCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum PeerCmd {
    /// Add (or replace) a peer every `netmod node --bgp` sessions with.
    Add {
        /// The peer's address (IPv4 or IPv6); it carries routes of its own family.
        address: IpAddr,
        /// The peer's AS number (the hosts' own is `netmod node --bgp-as`, default 64512): the same AS is iBGP (e.g. a route reflector), another is eBGP (e.g. a top-of-rack router on the hosts' subnet).
        #[arg(long = "as", value_name = "N")]
        asn: u32,
        /// A note for people and BIRD's `show protocols all` (no quotes or backslashes).
        #[arg(long)]
        description: Option<String>,
    },
    /// List the stored peers.
    List,
    /// Remove a peer. A missing peer is an error (exit status 1).
    Rm {
        /// The peer's address, as added.
        address: IpAddr,
    },
}

pub fn run(store_flag: Option<&str>, cmd: BgpCmd, fmt: Format) -> Result<(), CliError> {
    let BgpCmd::Peer(cmd) = cmd;
    match cmd {
        PeerCmd::Add {
            address,
            asn,
            description,
        } => {
            let peer = Peer {
                address,
                asn,
                description,
            };
            // Validated before the store is opened (or created).
            bgp::check_peer(&peer)?;
            let created = bgp::add_peer(&*crate::open(store_flag)?, &peer)?;
            let result = if created { "added" } else { "replaced" };
            match fmt {
                Format::Json => output::json(&serde_json::json!({
                    "address": address, "as": asn, "result": result
                })),
                Format::Table => println!("peer {address} (AS {asn}) {result}"),
            }
            Ok(())
        }
        PeerCmd::List => {
            let peers = bgp::list_peers(&*crate::open_existing(store_flag)?)?;
            match fmt {
                Format::Json => output::json(&peers),
                Format::Table => output::table(
                    &["ADDRESS", "AS", "DESCRIPTION"],
                    &peers
                        .iter()
                        .map(|p| {
                            vec![
                                p.address.to_string(),
                                p.asn.to_string(),
                                p.description.clone().unwrap_or_default(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            Ok(())
        }
        PeerCmd::Rm { address } => {
            if !bgp::remove_peer(&*crate::open_existing(store_flag)?, &address)? {
                return Err(CliError::Other(format!("no BGP peer {address}")));
            }
            match fmt {
                Format::Json => output::json(&serde_json::json!({
                    "address": address, "result": "removed"
                })),
                Format::Table => println!("peer {address} removed"),
            }
            Ok(())
        }
    }
}
