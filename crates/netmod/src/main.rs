//! `netmod`: IP-per-container networking and netgroup isolation.
//!
//! Thin entry point: parse arguments, run one subcommand, and turn any error
//! into the caller's format and a non-zero exit status in one place.

mod attach;
mod bench;
mod cni;
mod explain;
mod mesos;
mod node;
mod ops;
mod output;
mod registry;

use clap::{Parser, Subcommand};
use output::Format;

#[derive(Parser)]
#[command(
    name = "netmod",
    version,
    about = "IP-per-container networking with netgroup isolation"
)]
struct Cli {
    /// Datastore: a SQLite file path or etcd://HOST:PORT[,HOST:PORT] (default: $NETMOD_STORE or /var/lib/netmod/netmod.db).
    #[arg(long, global = true)]
    store: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The net-modules plugin: one JSON request on stdin, one JSON reply on stdout.
    Mesos,
    /// Manage address pools.
    #[command(subcommand)]
    Pool(ops::PoolCmd),
    /// Inspect and release address allocations.
    #[command(subcommand)]
    Ipam(ops::IpamCmd),
    /// The per-host daemon: keeps this host's routes and nftables policy in step with the datastore.
    Node(node::NodeArgs),
    /// List the endpoints plugged in on every host.
    Endpoints,
    /// Say whether FROM may reach TO, and which rule decides (endpoints by container id, address or task name; hosts by name or address).
    Explain {
        from: String,
        to: String,
        /// e.g. 9000/tcp
        #[arg(long)]
        port: Option<String>,
    },
    /// Measure netmod against its baselines and write bench/results/*.md.
    Bench(bench::BenchArgs),
    /// The local lab: Mesos + Marathon + Mesos-DNS stand-ins in network namespaces (`netmod lab --help`).
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The seed's demo story, unattended: before, per-task IPs, isolated (`netmod demo --help`).
    #[command(disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// An error for a human: one clear sentence, exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] netmod_store::StoreError),
    #[error(transparent)]
    Ipam(#[from] netmod_ipam::IpamError),
    #[error("{0}")]
    Other(String),
}

fn main() {
    // A CNI runtime runs the plugin with CNI_COMMAND set and no arguments.
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(cni::main());
    }
    let cli = Cli::parse();
    let store_flag = cli.store.as_deref();
    let result = match cli.cmd {
        Cmd::Mesos => std::process::exit(mesos::main(store_flag)),
        Cmd::Pool(cmd) => open(store_flag).and_then(|s| ops::pool(&*s, cmd, cli.output)),
        Cmd::Ipam(cmd) => open(store_flag).and_then(|s| ops::ipam(&*s, cmd, cli.output)),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Node(args) => node::run(store_flag, args),
        Cmd::Endpoints => open(store_flag).and_then(|s| explain::endpoints(&*s, cli.output)),
        Cmd::Explain { from, to, port } => open(store_flag).and_then(|s| {
            // Exit status 0 when allowed, 3 when dropped: scripts can branch on it.
            explain::run(&*s, &from, &to, port, cli.output).map(|allowed| {
                if !allowed {
                    std::process::exit(3)
                }
            })
        }),
        Cmd::Lab { args } => exec_lab("lab", args, store_flag),
        Cmd::Demo { args } => exec_lab("demo", args, store_flag),
    };
    if let Err(e) = result {
        eprintln!("netmod: error: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(1);
    }
}

/// The lab lives in its own binary, `netmod-lab`, installed beside `netmod`.
fn exec_lab(word: &str, mut args: Vec<String>, store: Option<&str>) -> Result<(), CliError> {
    // `--store` is netmod's global flag, so clap took it: hand it on.
    if let Some(store) = store {
        args.extend(["--store".to_string(), store.to_string()]);
    }
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().map_err(|e| CliError::Other(e.to_string()))?;
    let lab = me.with_file_name("netmod-lab");
    let err = std::process::Command::new(&lab).arg(word).args(args).exec();
    Err(CliError::Other(format!(
        "cannot run {}: {err} (build it with `cargo build -p netmod-lab`)",
        lab.display()
    )))
}

fn open(flag: Option<&str>) -> Result<Box<dyn netmod_store::Store>, CliError> {
    Ok(netmod_store::open(&netmod_store::store_address(flag))?)
}
