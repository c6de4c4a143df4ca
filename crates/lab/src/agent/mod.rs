//! An agent: runs inside its host's namespace (`ip netns exec <lab>-agent-N
//! netmod-lab lab --name <lab> agent --index N`), registers with the master over the fabric,
//! launches and kills tasks on request (see [`task`]), reports their
//! statuses, and answers DNS for `*.marathon.mesos` on its fabric address.

pub mod netmod;
pub mod shim;
pub mod task;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::auth::{self, Token};
use crate::config::{self, sandbox_root, AgentHost, LabConfig, AGENT_PORT, PORT_RANGE};
use crate::dns;
use crate::error::LabError;
use crate::http::{self, Reply, Request};
use crate::util::{self, unix_now};
use crate::wire::{self, Register, RegisterReply, TaskSpec, TaskStatus};

/// Heartbeats (with every task's status) this often.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Ended tasks are reported this long, then forgotten.
const KEEP_ENDED: f64 = 60.0;

struct Entry {
    status: TaskStatus,
    pid: Option<u32>,
    kill_requested: bool,
}

pub struct Agent {
    pub cfg: LabConfig,
    pub host: AgentHost,
    pub netmod: netmod::Netmod,
    master: String,
    /// The lab's control token: wanted on every request to the control
    /// port, sent with every report to the master.
    token: Token,
    agent_id: Mutex<String>,
    tasks: Mutex<BTreeMap<String, Entry>>,
}

impl Agent {
    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn agent_id(&self) -> String {
        self.agent_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn sandbox(&self, task_id: &str) -> PathBuf {
        task::sandbox_dir(&sandbox_root(), &self.host.name, task_id)
    }

    /// Records a status and sends it to the master at once (best effort:
    /// the next heartbeat carries it again).
    pub fn report(&self, st: TaskStatus) {
        if let Some(e) = self.entries().get_mut(&st.task_id) {
            e.status = st.clone();
        }
        let url = format!("{}/lab/agents/{}/status", self.master, self.host.name);
        let body = serde_json::to_value(&st).expect("plain data");
        let auth = self.token.authorization();
        let headers = [(auth::HEADER, auth.as_str())];
        match http::send_json_with("POST", &url, &body, &headers, Duration::from_secs(3)) {
            Ok((200, _)) => {}
            Ok((status, reply)) => eprintln!(
                "agent: status of {} refused now ({status}): {reply}",
                st.task_id
            ),
            Err(e) => eprintln!("agent: status of {} not delivered now: {e}", st.task_id),
        }
    }

    pub fn set_pid(&self, task_id: &str, pid: u32) {
        if let Some(e) = self.entries().get_mut(task_id) {
            e.pid = Some(pid);
        }
    }

    pub fn forget_pid(&self, task_id: &str) {
        if let Some(e) = self.entries().get_mut(task_id) {
            e.pid = None;
        }
    }

    pub fn kill_requested(&self, task_id: &str) -> bool {
        self.entries()
            .get(task_id)
            .is_some_and(|e| e.kill_requested)
    }

    /// Asks a task to end: SIGTERM to its group now, SIGKILL after the grace.
    pub fn kill(self: &Arc<Self>, task_id: &str) -> bool {
        let pid = {
            let mut tasks = self.entries();
            let Some(e) = tasks.get_mut(task_id) else {
                return false;
            };
            e.kill_requested = true;
            e.pid
        };
        if let Some(pid) = pid {
            task::kill_group(pid, libc::SIGTERM);
            let (id, me) = (task_id.to_string(), self.clone());
            thread::spawn(move || {
                thread::sleep(task::KILL_GRACE);
                // Only if the task still runs (its pid is forgotten once reaped).
                if me.entries().get(&id).and_then(|e| e.pid) == Some(pid) {
                    task::kill_group(pid, libc::SIGKILL);
                }
            });
        }
        true
    }

    fn launch(self: &Arc<Self>, spec: TaskSpec) -> Reply {
        {
            let mut tasks = self.entries();
            if tasks.contains_key(&spec.task_id) {
                return Reply::json(200, &json!({"accepted": spec.task_id}));
            }
            tasks.insert(
                spec.task_id.clone(),
                Entry {
                    status: TaskStatus {
                        task_id: spec.task_id.clone(),
                        state: wire::STAGING.into(),
                        message: None,
                        ip_addresses: vec![],
                        container_id: None,
                        sandbox: None,
                        timestamp: unix_now(),
                    },
                    pid: None,
                    kill_requested: false,
                },
            );
        }
        let id = spec.task_id.clone();
        task::launch(self.clone(), spec);
        Reply::json(202, &json!({"accepted": id}))
    }

    fn handle(self: &Arc<Self>, req: &Request) -> Reply {
        // The master's, and nobody else's: without the token, nothing is
        // read, run or killed.
        if !self.token.admits(req) {
            return auth::unauthorized();
        }
        let path = req.path.trim_end_matches('/');
        match (req.method.as_str(), path) {
            ("GET", "/health") => Reply::text(200, "ok"),
            ("GET", "/tasks") => {
                let list: Vec<TaskStatus> =
                    self.entries().values().map(|e| e.status.clone()).collect();
                Reply::json(200, &json!({ "tasks": list }))
            }
            ("POST", "/tasks") => match serde_json::from_slice::<TaskSpec>(&req.body) {
                Ok(spec) => self.launch(spec),
                Err(e) => Reply::message(400, format!("bad task: {e}")),
            },
            ("DELETE", p) if p.starts_with("/tasks/") => {
                if self.kill(&p["/tasks/".len()..]) {
                    Reply::json(202, &json!({}))
                } else {
                    Reply::message(404, "no such task")
                }
            }
            _ => Reply::not_found(),
        }
    }

    fn register(&self) -> Register {
        let now = unix_now();
        let mut tasks = self.entries();
        tasks.retain(|_, e| {
            !(wire::is_terminal(&e.status.state) && now - e.status.timestamp > KEEP_ENDED)
        });
        Register {
            hostname: self.host.name.clone(),
            ip: self.host.ip.to_string(),
            port: AGENT_PORT,
            cpus: self.cfg.agent_cpus,
            mem: self.cfg.agent_mem,
            ports: vec![PORT_RANGE],
            tasks: tasks.values().map(|e| e.status.clone()).collect(),
        }
    }

    fn heartbeat(self: &Arc<Self>) -> Result<(), String> {
        let body = serde_json::to_value(self.register()).expect("plain data");
        let url = format!("{}/lab/agents/heartbeat", self.master);
        let auth = self.token.authorization();
        let headers = [(auth::HEADER, auth.as_str())];
        let (status, reply) =
            http::send_json_with("POST", &url, &body, &headers, Duration::from_secs(5))?;
        if status != 200 {
            return Err(format!("the master answered {status}: {reply}"));
        }
        let reply: RegisterReply = serde_json::from_value(reply).map_err(|e| e.to_string())?;
        *self.agent_id.lock().unwrap_or_else(|e| e.into_inner()) = reply.agent_id;
        for id in reply.kill {
            self.kill(&id);
        }
        Ok(())
    }

    fn live(&self) -> usize {
        self.entries()
            .values()
            .filter(|e| !wire::is_terminal(&e.status.state))
            .count()
    }
}

/// `netmod lab agent --index N`.
pub fn run(index: u32) -> Result<(), LabError> {
    util::catch_termination();
    let cfg = LabConfig::load()?;
    let host = cfg
        .agent(index)
        .cloned()
        .ok_or_else(|| LabError::new(format!("the lab has no agent {index}")))?;
    let token = Token::load(&config::token_file())?;
    let agent = Arc::new(Agent {
        token,
        netmod: netmod::Netmod {
            exe: cfg.netmod.clone(),
            store: cfg.store.clone(),
        },
        master: cfg.master_url()?,
        host: host.clone(),
        cfg,
        agent_id: Mutex::new(String::new()),
        tasks: Mutex::new(BTreeMap::new()),
    });
    let records = Arc::new(RwLock::new(dns::Records::new()));
    dns::serve(SocketAddr::new(host.ip.into(), 53), records.clone()).map_err(LabError::new)?;
    dns::follow(agent.master.clone(), records);
    let handler: http::Handler = {
        let a = agent.clone();
        Arc::new(move |r| a.handle(r))
    };
    http::serve(SocketAddr::new(host.ip.into(), AGENT_PORT), handler).map_err(LabError::new)?;
    eprintln!(
        "agent {}: tasks API on {}:{AGENT_PORT} (the master's only), DNS on {}:53",
        host.name, host.ip, host.ip
    );
    let mut next = Instant::now();
    let mut reported_error = false;
    while !util::terminating() {
        if Instant::now() >= next {
            match agent.heartbeat() {
                Ok(()) => reported_error = false,
                Err(e) if !reported_error => {
                    eprintln!("agent {}: heartbeat failed: {e}", host.name);
                    reported_error = true;
                }
                Err(_) => {}
            }
            next = Instant::now() + HEARTBEAT;
        }
        thread::sleep(Duration::from_millis(100));
    }
    // Stop every task, letting each one release its addresses and clean up.
    eprintln!("agent {}: stopping {} task(s)", host.name, agent.live());
    let ids: Vec<String> = agent.entries().keys().cloned().collect();
    for id in ids {
        agent.kill(&id);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent.live() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    let _ = agent.heartbeat();
    Ok(())
}
