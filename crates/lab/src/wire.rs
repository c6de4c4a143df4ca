//! Messages between the master and the agents (JSON over HTTP on the fabric).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the master asks an agent to run (Mesos's TaskInfo, reduced).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskSpec {
    pub task_id: String,
    /// Mesos task name: the app id's path reversed, dot-joined (`probe-b.star`).
    pub name: String,
    pub app_id: String,
    pub app_version: String,
    pub cmd: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub uris: Vec<String>,
    /// Host ports given to the task (host-network tasks only).
    #[serde(default)]
    pub host_ports: Vec<u16>,
    pub cpus: f64,
    pub mem: f64,
    /// Mesos TaskInfo labels: the Marathon app's `labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The task's NetworkInfo when the app asked for its own address.
    #[serde(default)]
    pub network: Option<NetworkSpec>,
}

/// Mesos NetworkInfo as Marathon 0.14 fills it from `ipAddress`: the
/// netgroups, the labels, and one address request (empty: "any").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NetworkSpec {
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// One entry per address wanted: `Some(addr)` asks for that address by
    /// value, `None` for any.
    #[serde(default)]
    pub ip_addresses: Vec<Option<String>>,
}

/// Mesos task states the lab uses.
pub const STAGING: &str = "TASK_STAGING";
pub const STARTING: &str = "TASK_STARTING";
pub const RUNNING: &str = "TASK_RUNNING";
pub const FINISHED: &str = "TASK_FINISHED";
pub const FAILED: &str = "TASK_FAILED";
pub const KILLED: &str = "TASK_KILLED";
pub const LOST: &str = "TASK_LOST";

pub fn is_terminal(state: &str) -> bool {
    matches!(state, FINISHED | FAILED | KILLED | LOST)
}

/// A task status update from an agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskStatus {
    pub task_id: String,
    pub state: String,
    #[serde(default)]
    pub message: Option<String>,
    /// The task's own addresses (the hook's `network_infos[].ip_addresses[]`).
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// The container the agent made for the task (reported from
    /// TASK_STARTING on); the one netmod knows it by.
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub sandbox: Option<String>,
    pub timestamp: f64,
}

/// An agent introduces itself (and repeats it as a heartbeat).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Register {
    pub hostname: String,
    pub ip: String,
    pub port: u16,
    pub cpus: f64,
    pub mem: f64,
    pub ports: Vec<(u16, u16)>,
    /// The latest status of every task the agent knows.
    #[serde(default)]
    pub tasks: Vec<TaskStatus>,
}

/// The master's answer to a heartbeat: tasks the agent must kill (unknown
/// to the master, or already asked to die).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RegisterReply {
    pub agent_id: String,
    #[serde(default)]
    pub kill: Vec<String>,
}
