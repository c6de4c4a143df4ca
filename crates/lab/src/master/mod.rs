//! The master: Marathon's API and page on 127.0.0.1 (port 8080 in the
//! default lab), the Mesos-like state and page on 127.0.0.1 (5050) and on the
//! bridge address, where the agents register, report and read state for
//! DNS; and the scheduler that turns apps into tasks on agents. Once it
//! listens it writes the ports it got to `master-ports.json` in the lab's
//! run directory: the ports may be the system's choice.

pub mod api;
pub mod pages;
pub mod placement;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Duration;

use crate::auth::{self, Token};
use crate::config::{self, LabConfig, MasterPorts};
use crate::error::LabError;
use crate::http::{self, Handler};
use crate::util::{self, unix_now};
use state::{Action, State};

/// The master's state behind one lock, and a condition that wakes the
/// scheduler and long-polls on every change.
pub struct Master {
    state: Mutex<State>,
    changed: Condvar,
    /// Where it listens (for the pages' links), once it does.
    ports: OnceLock<MasterPorts>,
    /// The lab's control token: sent to the agents, wanted from them.
    token: Token,
}

impl Master {
    pub fn new(token: Token) -> Master {
        Master {
            state: Mutex::new(State::new(unix_now())),
            changed: Condvar::new(),
            ports: OnceLock::new(),
            token,
        }
    }

    /// Whether a request comes from one of the lab's agents (carries the
    /// lab's control token).
    pub fn from_agent(&self, req: &http::Request) -> bool {
        self.token.admits(req)
    }

    /// Where the master listens; zeros before it does (and in unit tests).
    pub fn ports(&self) -> MasterPorts {
        self.ports.get().copied().unwrap_or(MasterPorts {
            marathon: 0,
            mesos: 0,
            fabric: 0,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state; wakes the waiters if it changed anything.
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.lock();
        let before = s.version;
        let r = f(&mut s);
        if s.version != before {
            self.changed.notify_all();
        }
        r
    }

    /// Waits until the state's version exceeds `seen` or `timeout` passes.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> MutexGuard<'_, State> {
        let s = self.lock();
        self.changed
            .wait_timeout_while(s, timeout, |s| s.version <= seen)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0)
    }
}

/// `netmod lab master`.
pub fn run() -> Result<(), LabError> {
    util::catch_termination();
    let cfg = LabConfig::load()?;
    let token = Token::load(&config::token_file())?;
    let m = Arc::new(Master::new(token));
    let marathon: Handler = {
        let m = m.clone();
        Arc::new(move |r| api::marathon(&m, r))
    };
    let mesos: Handler = {
        let m = m.clone();
        Arc::new(move |r| api::mesos(&m, r))
    };
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let marathon_at = http::serve(local(cfg.listen.marathon), marathon).map_err(LabError::new)?;
    let mesos_at = http::serve(local(cfg.listen.mesos), mesos.clone()).map_err(LabError::new)?;
    let fabric = SocketAddr::new(cfg.bridge_ip.into(), cfg.listen.fabric);
    let fabric_at = http::serve(fabric, mesos).map_err(LabError::new)?;
    let ports = MasterPorts {
        marathon: marathon_at.port(),
        mesos: mesos_at.port(),
        fabric: fabric_at.port(),
    };
    let _ = m.ports.set(ports);
    let text = serde_json::to_string(&ports).expect("plain data");
    config::write_atomic(&config::master_ports_file(), text.as_bytes())?;
    eprintln!(
        "master: Marathon on http://{marathon_at}/, Mesos on http://{mesos_at}/ and {fabric_at}"
    );
    let sched = m.clone();
    thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || scheduler(&sched))
        .map_err(|e| LabError::new(format!("cannot start the scheduler: {e}")))?;
    while !util::terminating() {
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!("master: stopping");
    Ok(())
}

/// Plans, carries out the plan (HTTP to agents, outside the lock), and waits
/// for the next change (or half a second, for timers).
fn scheduler(m: &Master) {
    loop {
        let (actions, seen) = m.with(|s| (s.plan(unix_now()), s.version));
        for a in actions {
            execute(m, a);
        }
        drop(m.wait_change(seen, Duration::from_millis(500)));
    }
}

fn execute(m: &Master, action: Action) {
    let authorization = m.token.authorization();
    let auth = [(auth::HEADER, authorization.as_str())];
    match action {
        Action::Launch { agent_url, spec } => {
            let body = serde_json::to_value(&spec).expect("plain data");
            let url = format!("{agent_url}/tasks");
            let result = http::send_json_with("POST", &url, &body, &auth, Duration::from_secs(5));
            let failure = match result {
                Ok((200..=202, _)) => None,
                Ok((status, body)) => {
                    Some(format!("the agent refused the task ({status}): {body}"))
                }
                Err(e) => Some(format!("the agent did not take the task: {e}")),
            };
            if let Some(why) = failure {
                eprintln!("master: launch {}: {why}", spec.task_id);
                m.with(|s| s.launch_failed(&spec.task_id, why, unix_now()));
            }
        }
        Action::Kill { agent_url, task_id } => {
            let url = format!("{agent_url}/tasks/{task_id}");
            match http::request_with("DELETE", &url, None, &auth, Duration::from_secs(5)) {
                Ok(r) if (200..300).contains(&r.status) || r.status == 404 => {}
                Ok(r) => eprintln!("master: kill {task_id}: the agent answered {}", r.status),
                Err(e) => eprintln!("master: kill {task_id}: {e}"),
            }
        }
    }
}
