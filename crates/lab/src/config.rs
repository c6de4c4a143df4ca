//! What `lab up` decided, written to `/run/netmod-lab/lab.json` so that the
//! master, the agents, `lab status` and `lab down` all read the same facts.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Context, LabError};

/// Everything the lab keeps on disk lives under here (tmpfs).
pub const RUN_DIR: &str = "/run/netmod-lab";
/// The prefix of every kernel object the lab creates.
pub const PREFIX: &str = "nmlab-";
/// The fabric bridge in the machine's namespace.
pub const BRIDGE: &str = "nmlab-br0";
/// An agent host's fabric interface, inside its namespace (which is the
/// lab's own). Not `nm…`: inside a host, names starting with `nm` belong to
/// netmod, whose node removes the ones it does not know.
pub const HOST_IF: &str = "eth0";
/// Default fabric range (`--fabric`).
pub const DEFAULT_FABRIC: &str = "10.234.0.0/24";
/// Default address pool (`--pool`), the seed's.
pub const DEFAULT_POOL: &str = "192.168.0.0/16";
/// Marathon's API and page.
pub const MARATHON_PORT: u16 = 8080;
/// The Mesos-like state API and page.
pub const MESOS_PORT: u16 = 5050;
/// Each agent's API, on its fabric address.
pub const AGENT_PORT: u16 = 5051;
/// `netmod node --metrics-addr` inside each agent namespace.
pub const NODE_METRICS_PORT: u16 = 9102;
/// Host ports each agent offers: `ports(*):[9000-31100]`.
pub const PORT_RANGE: (u16, u16) = (9000, 31100);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentHost {
    pub index: u32,
    /// Namespace name, also the host name given to netmod: `nmlab-agent-N`.
    pub name: String,
    pub ip: Ipv4Addr,
    /// The veth end in the machine's namespace, on the bridge.
    pub root_veth: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabConfig {
    pub run_id: String,
    pub fabric: String,
    pub bridge_ip: Ipv4Addr,
    pub agents: Vec<AgentHost>,
    /// The pool routed into the fabric (None with `--no-isolator`).
    pub pool: Option<String>,
    pub isolator: bool,
    /// `--store` value handed to every netmod command.
    pub store: String,
    /// Whether the lab made the store (and so removes it on `down`).
    pub store_owned: bool,
    /// The `netmod` executable: `mesos`, `node`, `pool` (what Mesos would run).
    pub netmod: PathBuf,
    /// The `netmod-lab` executable: the lab's own processes (master, agents,
    /// task shims).
    pub lab_exe: PathBuf,
    /// The seed's `/star` directory: star binaries and staged files.
    pub star_dir: PathBuf,
    pub agent_cpus: f64,
    pub agent_mem: f64,
    pub created_at: f64,
}

impl LabConfig {
    pub fn path() -> PathBuf {
        Path::new(RUN_DIR).join("lab.json")
    }

    pub fn load() -> Result<LabConfig, LabError> {
        let path = Self::path();
        let text = std::fs::read_to_string(&path)
            .context(|| format!("no lab is up ({} is unreadable)", path.display()))?;
        serde_json::from_str(&text).context(|| format!("{} is not a lab config", path.display()))
    }

    pub fn save(&self) -> Result<(), LabError> {
        let path = Self::path();
        let text = serde_json::to_string_pretty(self).expect("plain data");
        std::fs::write(&path, text).context(|| format!("cannot write {}", path.display()))
    }

    pub fn agent(&self, index: u32) -> Option<&AgentHost> {
        self.agents.iter().find(|a| a.index == index)
    }

    pub fn master_url(&self) -> String {
        format!("http://{}:{MESOS_PORT}", self.bridge_ip)
    }
}

pub fn run_dir() -> PathBuf {
    PathBuf::from(RUN_DIR)
}
pub fn pid_dir() -> PathBuf {
    run_dir().join("pids")
}
pub fn log_dir() -> PathBuf {
    run_dir().join("logs")
}
pub fn sandbox_root() -> PathBuf {
    run_dir().join("sandboxes")
}
/// The default store: the lab's own SQLite file.
pub fn default_store() -> PathBuf {
    run_dir().join("netmod.db")
}
