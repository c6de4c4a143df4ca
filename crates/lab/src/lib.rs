//! The lab: a local stand-in for Mesos master + agents + Marathon + Mesos-DNS,
//! built from network namespaces on one machine.
//!
//! Built as its own binary, `netmod-lab`, which `netmod lab …` and
//! `netmod demo …` run. It talks to netmod only through netmod's command
//! line, exactly as Mesos does: `netmod mesos` (one JSON request per process) for addresses and
//! isolation, `netmod node` as the per-host daemon, `netmod pool add` once.
//!
//! | part | module |
//! |---|---|
//! | fabric: bridge, one namespace per agent host, routes | [`fabric`] |
//! | the lab's processes and pid files | [`procs`] |
//! | `lab up` / `status` / `down` | [`lab`] |
//! | the control token between master and agents | [`auth`] |
//! | Marathon app and group definitions | [`marathon`] |
//! | master: scheduler, Marathon API, pages | [`master`] |
//! | Mesos-like state JSON | [`mesos_state`] |
//! | agent: task launch through the isolator lifecycle | [`agent`] |
//! | DNS for `*.marathon.mesos` | [`dns`] |
//! | `netmod demo` | [`demo`] |

pub mod agent;
pub mod auth;
pub mod config;
pub mod demo;
pub mod dns;
pub mod error;
pub mod fabric;
pub mod http;
pub mod lab;
pub mod marathon;
pub mod master;
pub mod mesos_state;
pub mod procs;
pub mod util;
pub mod wire;

use clap::{Parser, Subcommand};

pub use error::LabError;

#[derive(Parser)]
#[command(
    name = "netmod lab",
    about = "The local lab: Mesos + Marathon + Mesos-DNS stand-ins in network namespaces"
)]
struct LabCli {
    #[command(flatten)]
    instance: InstanceArg,
    #[command(subcommand)]
    cmd: LabCmd,
}

/// Which lab: several can share a machine, each with its own namespaces,
/// interfaces, run directory, store and master ports.
#[derive(clap::Args, Debug, Clone)]
struct InstanceArg {
    /// The lab's name: it prefixes every namespace, interface and directory
    /// the lab makes (default: the demo's lab, `nmlab`, on ports 8080 and 5050).
    #[arg(long, global = true, env = config::NAME_ENV, default_value = config::DEFAULT_NAME)]
    name: String,
}

impl InstanceArg {
    /// Checks the name and makes it this process's lab.
    fn select(&self) -> Result<(), LabError> {
        config::select(config::Instance::new(&self.name)?)
    }
}

#[derive(Subcommand)]
enum LabCmd {
    /// Create the fabric and the agent hosts, start the master, the agents and `netmod node`.
    Up(lab::UpArgs),
    /// Show what the lab has: fabric, processes, agents, tasks.
    Status(lab::StatusArgs),
    /// Remove everything the lab made: processes, namespaces, links, routes, its store.
    Down,
    /// The master (started by `lab up`; runs in the machine's namespace).
    #[command(hide = true)]
    Master,
    /// One agent (started by `lab up` inside its host namespace).
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        index: u32,
    },
    /// The outside's web server (started by `lab up --topology routed`, in
    /// the outside namespace).
    #[command(hide = true)]
    Outside {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// `GET URL`, printing the body (the demo runs it inside a task's
    /// network namespace).
    #[command(hide = true)]
    Fetch { url: String },
    /// Holds a task until the agent has isolated it, then execs it (internal).
    #[command(hide = true)]
    TaskShim(agent::shim::ShimArgs),
}

/// `netmod lab ARGS...`; returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    let cli = match LabCli::try_parse_from(std::iter::once("netmod lab".to_string()).chain(args)) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if let Err(e) = cli.instance.select() {
        return report(Err(e));
    }
    let result = match cli.cmd {
        LabCmd::Up(args) => lab::up(&args),
        LabCmd::Status(args) => lab::status(&args),
        LabCmd::Down => lab::down(),
        LabCmd::Master => master::run(),
        LabCmd::Agent { index } => agent::run(index),
        LabCmd::Outside { listen } => lab::outside_server(listen),
        LabCmd::Fetch { url } => demo::fetch(&url),
        LabCmd::TaskShim(args) => agent::shim::run(args),
    };
    report(result)
}

#[derive(Parser)]
#[command(
    name = "netmod demo",
    about = "The seed's demo story, unattended: before, per-task IPs, isolated"
)]
struct DemoCli {
    #[command(flatten)]
    instance: InstanceArg,
    #[command(flatten)]
    args: demo::DemoArgs,
}

/// `netmod demo ARGS...`; returns the exit status.
pub fn demo(args: Vec<String>) -> i32 {
    let cli = match DemoCli::try_parse_from(std::iter::once("netmod demo".to_string()).chain(args))
    {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if let Err(e) = cli.instance.select() {
        return report(Err(e));
    }
    report(demo::run(&cli.args))
}

/// One exit point: an error becomes one clear sentence (and its causes) on stderr.
fn report(result: Result<(), LabError>) -> i32 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("netmod: error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            1
        }
    }
}
