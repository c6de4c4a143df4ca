//! The master's state and every change to it, without I/O: apps and groups
//! (Marathon), agents and tasks (Mesos), and the scheduler's plan — which
//! tasks to launch where, which to kill, and why the others wait.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::{json, Value};

use super::placement::{self, Need, Offer};
use crate::marathon::{self, AppDef, GroupDef};
use crate::util;
use crate::wire::{self, NetworkSpec, Register, RegisterReply, TaskSpec, TaskStatus};

/// An agent silent this long is taken as gone; its tasks are lost.
pub const AGENT_TIMEOUT: f64 = 15.0;
/// A staged task the agent still does not report after this long is lost.
pub const STAGING_GRACE: f64 = 10.0;
/// Kill requests are repeated this often until the task ends.
pub const KILL_RETRY: f64 = 5.0;
/// Completed tasks kept for the pages.
pub const COMPLETED_KEPT: usize = 500;

#[derive(Debug, Clone)]
pub struct App {
    pub def: AppDef,
    pub version: String,
    /// Unexpected task ends in a row (for the launch delay).
    pub failures: u32,
    /// No launch before this time (unix seconds).
    pub delay_until: f64,
    pub last_failure: Option<String>,
}

impl App {
    fn new(def: AppDef, now: f64) -> App {
        App {
            def,
            version: util::iso(now),
            failures: 0,
            delay_until: 0.0,
            last_failure: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub app_id: String,
    pub name: String,
    pub app_version: String,
    pub agent: String,
    pub state: String,
    pub host_ports: Vec<u16>,
    pub ip_addresses: Vec<String>,
    pub cpus: f64,
    pub mem: f64,
    /// Mesos TaskInfo labels (the app's `labels`).
    pub labels: BTreeMap<String, String>,
    pub network: Option<NetworkSpec>,
    /// Discovery info (apps with `ipAddress`): the task name and its ports.
    pub discovery_ports: Vec<marathon::DiscoveryPort>,
    pub staged_at: f64,
    pub started_at: Option<f64>,
    pub message: Option<String>,
    pub sandbox: Option<String>,
    pub container_id: Option<String>,
    pub kill_requested: bool,
    pub kill_sent_at: Option<f64>,
    /// (state, unix time) in order.
    pub statuses: Vec<(String, f64)>,
}

impl Task {
    pub fn is_live(&self) -> bool {
        !wire::is_terminal(&self.state)
    }
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub hostname: String,
    pub ip: String,
    pub port: u16,
    pub cpus: f64,
    pub mem: f64,
    pub ports: Vec<(u16, u16)>,
    pub registered_at: f64,
    pub last_seen: f64,
    pub active: bool,
}

/// Why an app has fewer tasks than it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    pub count: u32,
    pub reason: String,
}

/// Something the scheduler must do outside the lock.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Launch {
        agent_url: String,
        spec: Box<TaskSpec>,
    },
    Kill {
        agent_url: String,
        task_id: String,
    },
}

/// An API error: status and message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub body: Value,
}

impl ApiError {
    pub fn message(status: u16, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({ "message": msg.into() }),
        }
    }
}

#[derive(Debug)]
pub struct State {
    pub master_id: String,
    pub framework_id: String,
    pub started_at: f64,
    pub apps: BTreeMap<String, App>,
    /// Groups that exist (explicitly put, or implied by an app).
    pub groups: BTreeSet<String>,
    pub tasks: BTreeMap<String, Task>,
    pub completed: VecDeque<Task>,
    pub agents: BTreeMap<String, Agent>,
    pub waiting: BTreeMap<String, Waiting>,
    /// Rises on every change (long-polls wait on it).
    pub version: u64,
    seed: u64,
}

/// Order of task states: a status never moves a task backwards.
fn rank(state: &str) -> u8 {
    match state {
        wire::STAGING => 0,
        wire::STARTING => 1,
        wire::RUNNING => 2,
        _ => 3,
    }
}

/// A deployment answer: `{"version", "deploymentId"}`.
pub fn deployment(now: f64) -> Value {
    json!({ "version": util::iso(now), "deploymentId": util::uuid() })
}

impl State {
    pub fn new(now: f64) -> State {
        let master_id = util::uuid();
        State {
            framework_id: format!("{master_id}-0000"),
            master_id,
            started_at: now,
            apps: BTreeMap::new(),
            groups: BTreeSet::new(),
            tasks: BTreeMap::new(),
            completed: VecDeque::new(),
            agents: BTreeMap::new(),
            waiting: BTreeMap::new(),
            version: 1,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn changed(&mut self) {
        self.version += 1;
    }

    // ------------------------------------------------------------ Marathon

    /// `PUT /v2/groups/<id>`: the group becomes exactly `def`. Unchanged
    /// apps keep their tasks; changed ones restart; missing ones go.
    pub fn put_group(&mut self, def: GroupDef, now: f64) -> Value {
        let prefix = format!("{}/", def.id);
        let keep: BTreeSet<&str> = def.apps.iter().map(|a| a.id.as_str()).collect();
        let gone: Vec<String> = self
            .apps
            .keys()
            .filter(|id| id.starts_with(&prefix) && !keep.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.remove_app(&id);
        }
        self.groups
            .retain(|g| g != &def.id && !g.starts_with(&prefix));
        self.groups.extend(def.groups.iter().cloned());
        for app in def.apps {
            self.upsert_app(app, now);
        }
        self.changed();
        deployment(now)
    }

    /// `DELETE /v2/groups/<id>`: the group and everything in it.
    pub fn delete_group(&mut self, id: &str, now: f64) -> Result<Value, ApiError> {
        let id = marathon::absolute_id(id, "/").map_err(|e| ApiError::message(422, e))?;
        let prefix = if id == "/" {
            "/".to_string()
        } else {
            format!("{id}/")
        };
        let apps: Vec<String> = self
            .apps
            .keys()
            .filter(|a| a.starts_with(&prefix))
            .cloned()
            .collect();
        if id != "/" && !self.groups.contains(&id) && apps.is_empty() {
            return Err(ApiError::message(
                404,
                format!("Group '{id}' does not exist"),
            ));
        }
        for a in apps {
            self.remove_app(&a);
        }
        self.groups.retain(|g| g != &id && !g.starts_with(&prefix));
        self.changed();
        Ok(deployment(now))
    }

    /// `POST /v2/apps`.
    pub fn post_app(&mut self, def: AppDef, now: f64) -> Result<(), ApiError> {
        if self.apps.contains_key(&def.id) {
            return Err(ApiError::message(
                409,
                format!("An app with id [{}] already exists.", def.id),
            ));
        }
        self.upsert_app(def, now);
        self.changed();
        Ok(())
    }

    /// `PUT /v2/apps/<id>`: creates or updates (scaling when only
    /// `instances` changes).
    pub fn put_app(&mut self, def: AppDef, now: f64) -> Value {
        self.upsert_app(def, now);
        self.changed();
        deployment(now)
    }

    /// `DELETE /v2/apps/<id>`.
    pub fn delete_app(&mut self, id: &str, now: f64) -> Result<Value, ApiError> {
        if !self.apps.contains_key(id) {
            return Err(ApiError::message(404, format!("App '{id}' does not exist")));
        }
        self.remove_app(id);
        self.changed();
        Ok(deployment(now))
    }

    fn upsert_app(&mut self, def: AppDef, now: f64) {
        // Every enclosing group exists.
        let segs: Vec<&str> = def.id.split('/').filter(|s| !s.is_empty()).collect();
        for i in 1..segs.len() {
            self.groups.insert(format!("/{}", segs[..i].join("/")));
        }
        match self.apps.get_mut(&def.id) {
            Some(app) if app.def.shape() == def.shape() => {
                app.def = def;
            }
            Some(app) => {
                // A new definition: the old tasks make way for new ones.
                let id = def.id.clone();
                *app = App::new(def, now);
                for t in self.tasks.values_mut().filter(|t| t.app_id == id) {
                    t.kill_requested = true;
                }
            }
            None => {
                self.apps.insert(def.id.clone(), App::new(def, now));
            }
        }
    }

    fn remove_app(&mut self, id: &str) {
        self.apps.remove(id);
        self.waiting.remove(id);
        for t in self.tasks.values_mut().filter(|t| t.app_id == id) {
            t.kill_requested = true;
        }
    }

    /// Live tasks of an app that count toward its instances.
    pub fn app_tasks(&self, app_id: &str) -> Vec<&Task> {
        self.tasks
            .values()
            .filter(|t| t.app_id == app_id && t.is_live() && !t.kill_requested)
            .collect()
    }

    // ------------------------------------------------------------ agents

    /// A registration or heartbeat: records the agent and its tasks'
    /// statuses; answers which tasks it must kill.
    pub fn heartbeat(&mut self, reg: Register, now: f64) -> RegisterReply {
        let n = self.agents.len();
        let master_id = self.master_id.clone();
        let agent = self
            .agents
            .entry(reg.hostname.clone())
            .or_insert_with(|| Agent {
                id: format!("{master_id}-S{n}"),
                hostname: reg.hostname.clone(),
                ip: reg.ip.clone(),
                port: reg.port,
                cpus: reg.cpus,
                mem: reg.mem,
                ports: reg.ports.clone(),
                registered_at: now,
                last_seen: now,
                active: true,
            });
        let was_active = agent.active;
        agent.last_seen = now;
        agent.active = true;
        agent.ip = reg.ip.clone();
        agent.port = reg.port;
        let agent_id = agent.id.clone();
        if !was_active {
            self.changed();
        }
        let reported: BTreeSet<String> = reg.tasks.iter().map(|t| t.task_id.clone()).collect();
        let mut kill = Vec::new();
        for st in reg.tasks {
            let wanted = self
                .tasks
                .get(&st.task_id)
                .is_some_and(|t| t.agent == reg.hostname && !t.kill_requested);
            if !wire::is_terminal(&st.state) && !wanted {
                kill.push(st.task_id.clone());
            }
            self.apply_status(&reg.hostname, st, now);
        }
        let lost: Vec<String> = self
            .tasks
            .values()
            .filter(|t| {
                t.agent == reg.hostname
                    && t.is_live()
                    && !reported.contains(&t.id)
                    && now - t.staged_at > STAGING_GRACE
            })
            .map(|t| t.id.clone())
            .collect();
        for id in lost {
            self.end_task(
                &id,
                wire::LOST,
                "the agent does not know this task".into(),
                now,
            );
        }
        RegisterReply { agent_id, kill }
    }

    /// A status update from the agent `host`.
    pub fn apply_status(&mut self, host: &str, st: TaskStatus, now: f64) {
        let Some(t) = self.tasks.get_mut(&st.task_id) else {
            return;
        };
        // Another host's word, or an older status overtaking a newer one
        // (a heartbeat composed before the last push): ignored.
        if t.agent != host || rank(&st.state) < rank(&t.state) {
            return;
        }
        let same = t.state == st.state
            && t.ip_addresses == st.ip_addresses
            && t.message == st.message
            && t.sandbox == st.sandbox
            && (st.container_id.is_none() || t.container_id == st.container_id);
        if same {
            return;
        }
        if wire::is_terminal(&st.state) {
            if let Some(sb) = st.sandbox {
                t.sandbox = Some(sb);
            }
            if let Some(c) = st.container_id {
                t.container_id = Some(c);
            }
            t.ip_addresses = st.ip_addresses;
            let msg = st.message.unwrap_or_default();
            self.end_task(&st.task_id, &st.state, msg, now);
            return;
        }
        if t.state != st.state {
            t.statuses.push((st.state.clone(), st.timestamp));
        }
        if st.state == wire::RUNNING && t.started_at.is_none() {
            t.started_at = Some(st.timestamp);
        }
        t.state = st.state;
        t.ip_addresses = st.ip_addresses;
        t.message = st.message;
        t.container_id = st.container_id.or(t.container_id.take());
        t.sandbox = st.sandbox.or(t.sandbox.take());
        self.changed();
    }

    /// Moves a task to the completed list; an unexpected end delays the
    /// app's next launch (exponential backoff).
    fn end_task(&mut self, id: &str, state: &str, message: String, now: f64) {
        let Some(mut t) = self.tasks.remove(id) else {
            return;
        };
        t.statuses.push((state.to_string(), now));
        t.state = state.to_string();
        if !message.is_empty() {
            t.message = Some(message.clone());
        }
        if !t.kill_requested {
            if let Some(app) = self.apps.get_mut(&t.app_id) {
                let ran_long = t.started_at.is_some_and(|s| now - s >= 10.0);
                app.failures = if ran_long { 1 } else { app.failures + 1 };
                let d = &app.def;
                let delay = (d.backoff_seconds * d.backoff_factor.powi(app.failures as i32 - 1))
                    .min(d.max_launch_delay_seconds);
                app.delay_until = now + delay;
                let why = if message.is_empty() {
                    state.to_string()
                } else {
                    message
                };
                app.last_failure = Some(format!("{} {why}", t.id));
            }
        }
        self.completed.push_front(t);
        self.completed.truncate(COMPLETED_KEPT);
        self.changed();
    }

    // ------------------------------------------------------------ scheduler

    fn offers(&self) -> Vec<Offer> {
        self.agents
            .values()
            .filter(|a| a.active)
            .map(|a| {
                let mine: Vec<&Task> = self
                    .tasks
                    .values()
                    .filter(|t| t.agent == a.hostname && t.is_live())
                    .collect();
                Offer {
                    hostname: a.hostname.clone(),
                    cpus_free: a.cpus - mine.iter().map(|t| t.cpus).sum::<f64>(),
                    mem_free: a.mem - mine.iter().map(|t| t.mem).sum::<f64>(),
                    ranges: a.ports.clone(),
                    used_ports: mine
                        .iter()
                        .flat_map(|t| t.host_ports.iter().copied())
                        .collect(),
                    tasks: mine.len(),
                }
            })
            .collect()
    }

    fn next_seed(&mut self) -> u64 {
        self.seed = self
            .seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.seed
    }

    /// What to do now: lost agents, kills, scale-down, launches (each
    /// launch is recorded as a staged task before it is sent), and the
    /// reason every app short of instances waits.
    pub fn plan(&mut self, now: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        // Agents that stopped answering: their tasks are lost.
        let silent: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.active && now - a.last_seen > AGENT_TIMEOUT)
            .map(|a| a.hostname.clone())
            .collect();
        for host in silent {
            if let Some(a) = self.agents.get_mut(&host) {
                a.active = false;
            }
            let ids: Vec<String> = self
                .tasks
                .values()
                .filter(|t| t.agent == host)
                .map(|t| t.id.clone())
                .collect();
            for id in ids {
                let msg = format!("agent {host} stopped answering");
                self.end_task(&id, wire::LOST, msg, now);
            }
            self.changed();
        }
        // Scale down: the newest surplus tasks go.
        let app_ids: Vec<String> = self.apps.keys().cloned().collect();
        for id in &app_ids {
            let want = self.apps[id].def.instances as usize;
            let mut live: Vec<(f64, String)> = self
                .app_tasks(id)
                .iter()
                .map(|t| (t.staged_at, t.id.clone()))
                .collect();
            if live.len() > want {
                live.sort_by(|a, b| b.0.total_cmp(&a.0));
                for (_, tid) in live.into_iter().take(self.app_tasks(id).len() - want) {
                    if let Some(t) = self.tasks.get_mut(&tid) {
                        t.kill_requested = true;
                    }
                }
                self.changed();
            }
        }
        // Kills (repeated until the task ends).
        for t in self.tasks.values_mut() {
            if t.kill_requested && t.kill_sent_at.is_none_or(|at| now - at >= KILL_RETRY) {
                if let Some(a) = self.agents.get(&t.agent) {
                    t.kill_sent_at = Some(now);
                    actions.push(Action::Kill {
                        agent_url: format!("http://{}:{}", a.ip, a.port),
                        task_id: t.id.clone(),
                    });
                }
            }
        }
        // Launches.
        let mut waiting = BTreeMap::new();
        for id in &app_ids {
            let have = self.app_tasks(id).len() as u32;
            let want = self.apps[id].def.instances;
            if have >= want {
                continue;
            }
            let app = &self.apps[id];
            if app.delay_until > now {
                let reason = format!(
                    "delayed {}s after a failed task ({})",
                    (app.delay_until - now).ceil(),
                    app.last_failure.clone().unwrap_or_default()
                );
                waiting.insert(
                    id.clone(),
                    Waiting {
                        count: want - have,
                        reason,
                    },
                );
                continue;
            }
            for k in 0..(want - have) {
                match self.launch_one(id, now) {
                    Ok(action) => actions.push(action),
                    Err(reason) => {
                        waiting.insert(
                            id.clone(),
                            Waiting {
                                count: want - have - k,
                                reason,
                            },
                        );
                        break;
                    }
                }
            }
        }
        if waiting != self.waiting {
            self.waiting = waiting;
            self.changed();
        }
        actions
    }

    fn launch_one(&mut self, app_id: &str, now: f64) -> Result<Action, String> {
        let offers = self.offers();
        let seed = self.next_seed();
        let app = &self.apps[app_id];
        let def = &app.def;
        let app_hosts: Vec<String> = self
            .app_tasks(app_id)
            .iter()
            .map(|t| t.agent.clone())
            .collect();
        let need = Need {
            cpus: def.cpus,
            mem: def.mem,
            ports: &def.ports,
            require_ports: def.require_ports,
            constraints: &def.constraints,
            app_hosts: &app_hosts,
        };
        let (i, host_ports) = placement::place(&need, &offers, seed)?;
        let agent = &self.agents[&offers[i].hostname];
        let task_id = format!("{}.{}", marathon::task_id_prefix(app_id), util::uuid());
        let mut env = def.env.clone();
        env.insert("MARATHON_APP_ID".into(), def.id.clone());
        env.insert("MARATHON_APP_VERSION".into(), app.version.clone());
        for (k, p) in host_ports.iter().enumerate() {
            env.insert(format!("PORT{k}"), p.to_string());
        }
        if let Some(p) = host_ports.first() {
            env.insert("PORT".into(), p.to_string());
        }
        if !host_ports.is_empty() {
            let all: Vec<String> = host_ports.iter().map(u16::to_string).collect();
            env.insert("PORTS".into(), all.join(","));
        }
        let network = def.ip_address.as_ref().map(|ipa| NetworkSpec {
            groups: ipa.groups.clone(),
            labels: ipa.labels.clone(),
            ip_addresses: vec![None],
        });
        let spec = TaskSpec {
            task_id: task_id.clone(),
            name: def.task_name(),
            app_id: def.id.clone(),
            app_version: app.version.clone(),
            cmd: def.cmd.clone(),
            env,
            uris: def.uris.clone(),
            host_ports: host_ports.clone(),
            cpus: def.cpus,
            mem: def.mem,
            labels: def.labels.clone(),
            network: network.clone(),
        };
        let task = Task {
            id: task_id,
            app_id: def.id.clone(),
            name: def.task_name(),
            app_version: app.version.clone(),
            agent: agent.hostname.clone(),
            state: wire::STAGING.into(),
            host_ports,
            ip_addresses: Vec::new(),
            cpus: def.cpus,
            mem: def.mem,
            labels: def.labels.clone(),
            network,
            discovery_ports: def
                .ip_address
                .as_ref()
                .map(|i| i.discovery_ports.clone())
                .unwrap_or_default(),
            staged_at: now,
            started_at: None,
            message: None,
            sandbox: None,
            container_id: None,
            kill_requested: false,
            kill_sent_at: None,
            statuses: vec![(wire::STAGING.into(), now)],
        };
        let agent_url = format!("http://{}:{}", agent.ip, agent.port);
        self.tasks.insert(task.id.clone(), task);
        self.changed();
        Ok(Action::Launch {
            agent_url,
            spec: Box::new(spec),
        })
    }

    /// The agent refused or never got a launch.
    pub fn launch_failed(&mut self, task_id: &str, why: String, now: f64) {
        self.end_task(task_id, wire::FAILED, why, now);
    }

    /// A task by id, live or completed.
    pub fn find_task(&self, id: &str) -> Option<&Task> {
        self.tasks
            .get(id)
            .or_else(|| self.completed.iter().find(|t| t.id == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marathon::parse_group;

    fn agent(s: &mut State, host: &str, now: f64) {
        s.heartbeat(
            Register {
                hostname: host.into(),
                ip: "10.234.0.11".into(),
                port: 5051,
                cpus: 4.0,
                mem: 4096.0,
                ports: vec![(9000, 31100)],
                tasks: vec![],
            },
            now,
        );
    }

    fn before_group() -> GroupDef {
        let probe = |id: &str| json!({"id": id, "cmd": "star-probe", "cpus": 0.1, "mem": 64, "ports": [9000], "requirePorts": true});
        parse_group(
            &json!({"id": "/star", "apps": [
                {"id": "collect", "cmd": "star-collect", "cpus": 0.2, "mem": 64, "ports": [9001], "requirePorts": true},
                probe("probe-a"), probe("probe-b"), probe("probe-c"), probe("probe-d")]}),
            "/star",
        )
        .unwrap()
    }

    fn running(s: &mut State, actions: &[Action], now: f64) {
        for a in actions {
            if let Action::Launch { spec, .. } = a {
                let host = s.tasks[&spec.task_id].agent.clone();
                s.apply_status(
                    &host,
                    TaskStatus {
                        task_id: spec.task_id.clone(),
                        state: wire::RUNNING.into(),
                        message: None,
                        ip_addresses: vec![],
                        container_id: None,
                        sandbox: None,
                        timestamp: now,
                    },
                    now,
                );
            }
        }
    }

    #[test]
    fn before_demo_two_probes_wait_for_port_9000() {
        let mut s = State::new(0.0);
        agent(&mut s, "nmlab-agent-1", 0.0);
        agent(&mut s, "nmlab-agent-2", 0.0);
        s.put_group(before_group(), 1.0);
        let actions = s.plan(1.0);
        assert_eq!(actions.len(), 3, "{actions:?}");
        let probes = s
            .tasks
            .values()
            .filter(|t| t.app_id.contains("probe"))
            .count();
        assert_eq!(probes, 2);
        let hosts: BTreeSet<_> = s
            .tasks
            .values()
            .filter(|t| t.app_id.contains("probe"))
            .map(|t| t.agent.clone())
            .collect();
        assert_eq!(hosts.len(), 2, "one probe per agent");
        assert_eq!(s.waiting.len(), 2);
        for w in s.waiting.values() {
            assert_eq!(w.reason, "no agent offers port 9000");
            assert_eq!(w.count, 1);
        }
        running(&mut s, &actions, 2.0);
        // Nothing more to do; putting the same group again changes nothing.
        assert!(s.plan(3.0).is_empty());
        s.put_group(before_group(), 4.0);
        assert!(s.plan(4.0).is_empty());
        assert_eq!(s.tasks.values().filter(|t| t.kill_requested).count(), 0);
        // PORT0 given to the task.
        if let Action::Launch { spec, .. } = &actions[1] {
            assert_eq!(spec.env["PORT0"], spec.host_ports[0].to_string());
        }
    }

    #[test]
    fn failures_restart_with_backoff_and_scale() {
        let mut s = State::new(0.0);
        agent(&mut s, "h1", 0.0);
        let g = parse_group(
            &json!({"apps": [{"id": "a", "cmd": "x", "cpus": 0.1, "mem": 16, "ipAddress": {}}]}),
            "/g",
        )
        .unwrap();
        s.put_group(g, 0.0);
        let a = s.plan(0.0);
        let Action::Launch { spec, .. } = &a[0] else {
            panic!()
        };
        assert!(spec.host_ports.is_empty() && spec.network.is_some());
        let id = spec.task_id.clone();
        s.apply_status(
            "h1",
            TaskStatus {
                task_id: id.clone(),
                state: wire::FAILED.into(),
                message: Some("exited with status 1".into()),
                ip_addresses: vec![],
                container_id: None,
                sandbox: None,
                timestamp: 1.0,
            },
            1.0,
        );
        assert!(s.tasks.is_empty());
        assert_eq!(s.completed[0].state, wire::FAILED);
        assert!(s.plan(1.5).is_empty(), "delayed");
        assert!(
            s.waiting["/g/a"].reason.starts_with("delayed 1s"),
            "{:?}",
            s.waiting
        );
        assert_eq!(s.plan(2.1).len(), 1, "relaunched after the delay");
        // Scale to 3, then down to 1.
        let mut def = s.apps["/g/a"].def.clone();
        def.instances = 3;
        def.raw.insert("instances".into(), json!(3));
        s.put_app(def.clone(), 3.0);
        assert_eq!(s.plan(3.0).len(), 2);
        def.instances = 1;
        s.put_app(def, 4.0);
        let kills = s.plan(4.0);
        assert_eq!(
            kills
                .iter()
                .filter(|a| matches!(a, Action::Kill { .. }))
                .count(),
            2
        );
    }

    #[test]
    fn deleting_and_errors() {
        let mut s = State::new(0.0);
        assert_eq!(s.delete_group("/nope", 0.0).unwrap_err().status, 404);
        assert_eq!(s.delete_app("/nope", 0.0).unwrap_err().status, 404);
        agent(&mut s, "h1", 0.0);
        s.put_group(before_group(), 0.0);
        s.plan(0.0);
        assert!(s.groups.contains("/star"));
        s.delete_group("star", 1.0).unwrap();
        assert!(s.apps.is_empty() && s.groups.is_empty());
        assert!(s.tasks.values().all(|t| t.kill_requested));
        let kills = s.plan(1.0);
        assert_eq!(kills.len(), 2);
    }

    #[test]
    fn heartbeats_reconcile() {
        let mut s = State::new(0.0);
        agent(&mut s, "h1", 0.0);
        s.put_group(before_group(), 0.0);
        s.plan(0.0);
        let stranger = TaskStatus {
            task_id: "x.1".into(),
            state: wire::RUNNING.into(),
            message: None,
            ip_addresses: vec![],
            container_id: None,
            sandbox: None,
            timestamp: 0.0,
        };
        let reply = s.heartbeat(
            Register {
                hostname: "h1".into(),
                ip: "10.234.0.11".into(),
                port: 5051,
                cpus: 4.0,
                mem: 4096.0,
                ports: vec![(9000, 31100)],
                tasks: vec![stranger],
            },
            20.0,
        );
        assert_eq!(reply.kill, vec!["x.1"]);
        assert!(
            s.tasks.is_empty(),
            "staged long ago and unknown to the agent: lost"
        );
        assert!(s.completed.iter().all(|t| t.state == wire::LOST));
        // Silent agent.
        s.plan(100.0);
        assert!(!s.agents["h1"].active);
    }
    #[test]
    fn statuses_never_go_backwards() {
        let mut s = State::new(0.0);
        agent(&mut s, "h1", 0.0);
        s.put_group(before_group(), 0.0);
        let actions = s.plan(0.0);
        running(&mut s, &actions, 1.0);
        let id = s.tasks.keys().next().unwrap().clone();
        let st = |state: &str| TaskStatus {
            task_id: id.clone(),
            state: state.into(),
            message: None,
            ip_addresses: vec![],
            container_id: None,
            sandbox: None,
            timestamp: 2.0,
        };
        s.apply_status("h1", st(wire::STARTING), 2.0);
        assert_eq!(s.tasks[&id].state, wire::RUNNING);
        s.apply_status("other-host", st(wire::FAILED), 2.0);
        assert_eq!(s.tasks[&id].state, wire::RUNNING);
        s.apply_status("h1", st(wire::KILLED), 3.0);
        assert!(!s.tasks.contains_key(&id));
    }
}
