//! `netmod`: IP-per-container networking and netgroup isolation.
//!
//! Thin entry point: parse arguments, run one subcommand, and turn any error
//! into the caller's format and a non-zero exit status in one place.

mod bgp;
mod cni;
#[cfg(test)]
mod fuzz;
mod mesos;
mod node;
mod ops;
mod output;
mod policy;
mod show;

use clap::{Parser, Subcommand};
use output::OutputArg;

#[derive(Parser)]
#[command(
    name = "netmod",
    version = VERSION,
    about = "IP-per-container networking with netgroup isolation",
    after_help = "CNI plugin mode: when CNI_COMMAND is set in the environment, netmod is a CNI 1.1 \
plugin (ADD, DEL, CHECK, STATUS, VERSION, GC): it reads the network configuration on stdin and \
answers in the configuration's cniVersion. Install it, or a link to it, as `netmod` in the \
runtime's CNI plugin directory (usually /opt/cni/bin; the Debian package installs \
/opt/cni/bin/netmod) and name `\"type\": \"netmod\"` in the network configuration.\n\n\
The net-modules door for Mesos 0.26-0.28 is `netmod mesos` (see `netmod mesos --help`)."
)]
struct Cli {
    /// Datastore: a SQLite file path (or sqlite://PATH), or etcd://HOST:PORT[,HOST:PORT][?prefix=P&ca=F&cert=F&key=F] (default: $NETMOD_STORE, else /var/lib/netmod/netmod.db). Commands that only read need an existing store; `pool add` and `policy apply` create the file, never its directory (except the default's).
    #[arg(long, global = true, value_name = "PATH|URL")]
    store: Option<String>,
    /// Output format: a table for people, JSON for scripts; YAML (Calico's format) for `policy get` and `policy list` only.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputArg::Table)]
    output: OutputArg,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The net-modules door (Mesos 0.26-0.28): one JSON request on stdin, one JSON reply on stdout.
    #[command(long_about = MESOS_HELP)]
    Mesos,
    /// Manage address pools.
    #[command(subcommand)]
    Pool(ops::PoolCmd),
    /// Inspect, reserve, release and check address allocations.
    #[command(subcommand)]
    Ipam(ops::IpamCmd),
    /// Calico GlobalNetworkPolicy: apply policy files, list, get and delete policies.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// The per-host daemon: keeps this host's routes and nftables policy in step with the datastore.
    Node(node::NodeArgs),
    /// Routing between hosts through BGP (`netmod node --bgp`, BIRD 2): the peers.
    #[command(subcommand)]
    Bgp(bgp::BgpCmd),
    /// List the endpoints plugged in on every host.
    Endpoints,
    /// Say whether FROM may reach TO, and which rule decides. Exit status: 0 allowed, 3 dropped, 1 error.
    #[command(
        after_help = "Exit status: 0 when the packet is allowed, 3 when it is dropped, 1 on an error \
(an unknown endpoint, an unreachable datastore)."
    )]
    Explain {
        /// Where the packet comes from: a container id, an address, a task name, or a host's name or address.
        from: String,
        /// Where the packet goes: a container id, an address, a task name, or a host's name or address.
        to: String,
        /// The destination port and protocol, e.g. 9000/tcp.
        #[arg(long, value_name = "PORT/PROTO")]
        port: Option<String>,
    },
    /// Measure netmod against its baselines (runs `netmod-bench`, installed beside netmod).
    #[command(disable_help_flag = true)]
    Bench {
        /// Arguments for netmod-bench (`netmod bench --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The local lab: Mesos + Marathon + Mesos-DNS stand-ins in network namespaces (`netmod lab --help`).
    #[command(disable_help_flag = true)]
    Lab {
        /// Arguments for `netmod-lab lab` (`netmod lab --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The seed's demo story, unattended: before, per-task IPs, isolated, then a Calico policy applied live (`netmod demo --help`).
    #[command(disable_help_flag = true)]
    Demo {
        /// Arguments for `netmod-lab demo` (`netmod demo --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The version and the git commit it was built from (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("NETMOD_GIT_COMMIT"),
    ")"
);

const MESOS_HELP: &str = "The net-modules door, for Mesos 0.26-0.28's network isolator module \
(com_mesosphere_mesos_NetworkIsolator): point both its ipam_command and isolator_command at \
`/usr/bin/netmod mesos`.

Wire format: one JSON object on stdin,
  {\"command\": \"<command>\", \"args\": {...}}
and one JSON object on stdout: the command's fields and \"error\": null with exit status 0, or
  {\"error\": \"<one clear sentence>\"}
with exit status 1; a failed request changes nothing.

Commands:
  allocate   args: hostname, uid, num_ipv4, num_ipv6, [netgroups], [labels]
             reply: {\"ipv4\": [...], \"ipv6\": [...]}; the label ipv4_addrs names static addresses
  reserve    args: hostname, uid, ipv4_addrs and/or ipv6_addrs, [netgroups], [labels]
             reserves exactly those addresses, all or none
  release    args: exactly one of uid (everything that handle holds) or ips (these addresses)
  isolate    args: hostname, container_id, pid, ipv4_addrs/ipv6_addrs, [netgroups], [labels]
             plugs eth0 into /proc/<pid>/ns/net and applies the netgroups' policy before replying
  cleanup    args: hostname, container_id
             removes the interface, routes, policy entries and record; quiet when nothing is left

labels may be a list of {\"key\", \"value\"} objects or a plain object.
The datastore is --store, else $NETMOD_STORE, else /var/lib/netmod/netmod.db.";

/// An error for a human: one clear sentence, exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] netmod_store::StoreError),
    #[error(transparent)]
    Ipam(#[from] netmod_ipam::IpamError),
    #[error(transparent)]
    Core(#[from] netmod_core::CoreError),
    #[error(transparent)]
    Registry(#[from] netmod_core::registry::RegistryError),
    #[error("{0}")]
    Other(String),
}

fn main() {
    // A CNI runtime runs the plugin with CNI_COMMAND set and no arguments.
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(cni::main());
    }
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Mesos) {
        // SAFETY: restoring the default disposition of SIGPIPE, before any
        // thread starts: `netmod … | head` ends quietly, as other tools do,
        // instead of panicking on a closed stdout.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let store_flag = cli.store.as_deref();
    let result = match cli.cmd {
        Cmd::Mesos => std::process::exit(mesos::main(store_flag)),
        // `-o yaml` is refused before any store is opened (or created).
        Cmd::Pool(cmd) => cli.output.plain().and_then(|fmt| {
            let store = if cmd.creates_store() {
                open(store_flag)
            } else {
                open_existing(store_flag)
            };
            store.and_then(|s| ops::pool(&*s, cmd, fmt))
        }),
        Cmd::Policy(cmd) => policy::run(store_flag, cmd, cli.output),
        Cmd::Ipam(cmd) => cli.output.plain().and_then(|fmt| {
            // `ipam check`: exit status 3 when it found problems, as explain.
            ops::ipam(&*open_existing(store_flag)?, cmd, fmt).map(|clean| {
                if !clean {
                    std::process::exit(3)
                }
            })
        }),
        Cmd::Bench { args } => exec_sibling("netmod-bench", None, args, store_flag),
        Cmd::Node(args) => node::run(store_flag, args),
        Cmd::Bgp(cmd) => cli
            .output
            .plain()
            .and_then(|fmt| bgp::run(store_flag, cmd, fmt)),
        Cmd::Endpoints => cli
            .output
            .plain()
            .and_then(|fmt| show::endpoints(&*open_existing(store_flag)?, fmt)),
        Cmd::Explain { from, to, port } => cli.output.plain().and_then(|fmt| {
            // Exit status 0 when allowed, 3 when dropped: scripts can branch on it.
            show::explain(&*open_existing(store_flag)?, &from, &to, port, fmt).map(|allowed| {
                if !allowed {
                    std::process::exit(3)
                }
            })
        }),
        Cmd::Lab { args } => exec_sibling("netmod-lab", Some("lab"), args, store_flag),
        Cmd::Demo { args } => exec_sibling("netmod-lab", Some("demo"), args, store_flag),
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

/// The lab and the benchmarks live in binaries of their own, installed beside
/// `netmod`, so the product binary carries neither.
fn exec_sibling(
    binary: &str,
    word: Option<&str>,
    mut args: Vec<String>,
    store: Option<&str>,
) -> Result<(), CliError> {
    // `--store` is netmod's global flag, so clap took it: hand it on.
    if let Some(store) = store {
        args.extend(["--store".to_string(), store.to_string()]);
    }
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().map_err(|e| CliError::Other(e.to_string()))?;
    let sibling = me.with_file_name(binary);
    let err = std::process::Command::new(&sibling)
        .args(word)
        .args(args)
        .exec();
    Err(CliError::Other(format!(
        "cannot run {}: {err} (build it with `cargo build -p {binary}`)",
        sibling.display()
    )))
}

/// The store for a command that writes: a SQLite file is created if missing
/// (its directory never is, except the default path's).
fn open(flag: Option<&str>) -> Result<Box<dyn netmod_store::Store>, CliError> {
    Ok(netmod_store::open(&netmod_store::store_address(flag))?)
}

/// The store for a command that reads (or only changes what is there): it
/// must exist; nothing is created.
fn open_existing(flag: Option<&str>) -> Result<Box<dyn netmod_store::Store>, CliError> {
    Ok(netmod_store::open_existing(&netmod_store::store_address(
        flag,
    ))?)
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every flag and argument of every subcommand says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && cmd.get_long_about().is_none() {
                missing.push(format!("{path} (the command itself)"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() != "help" {
                    walk(sub, &path, missing);
                }
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn the_mesos_help_lists_the_five_commands_and_the_wire_format() {
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("mesos")
            .expect("mesos")
            .render_long_help()
            .to_string();
        for word in [
            "allocate",
            "reserve",
            "release",
            "isolate",
            "cleanup",
            "stdin",
            "stdout",
            "\"error\"",
        ] {
            assert!(help.contains(word), "{word} missing from:\n{help}");
        }
    }

    #[test]
    fn the_top_level_help_names_cni_mode_and_the_plugin_directory() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("CNI_COMMAND") && help.contains("/opt/cni/bin"),
            "{help}"
        );
        let explain = Cli::command()
            .find_subcommand_mut("explain")
            .expect("explain")
            .render_long_help()
            .to_string();
        assert!(
            explain.contains("0 when the packet is allowed, 3 when it is dropped, 1 on an error")
        );
    }

    #[test]
    fn the_version_names_the_git_commit() {
        assert!(super::VERSION.contains("git"), "{}", super::VERSION);
    }
}
