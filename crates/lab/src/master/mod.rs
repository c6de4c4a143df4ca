//! The master: Marathon's API and page on 127.0.0.1:8080, the Mesos-like
//! state and page on 127.0.0.1:5050 (and on the bridge address, where the
//! agents register, report and read state for DNS), and the scheduler that
//! turns apps into tasks on agents.

pub mod api;
pub mod pages;
pub mod placement;
pub mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::config::{LabConfig, MARATHON_PORT, MESOS_PORT};
use crate::error::LabError;
use crate::http::{self, Handler};
use crate::util::{self, unix_now};
use state::{Action, State};

/// The master's state behind one lock, and a condition that wakes the
/// scheduler and long-polls on every change.
pub struct Master {
    state: Mutex<State>,
    changed: Condvar,
}

impl Default for Master {
    fn default() -> Self {
        Self::new()
    }
}

impl Master {
    pub fn new() -> Master {
        Master {
            state: Mutex::new(State::new(unix_now())),
            changed: Condvar::new(),
        }
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
    let m = Arc::new(Master::new());
    let marathon: Handler = {
        let m = m.clone();
        Arc::new(move |r| api::marathon(&m, r))
    };
    let mesos: Handler = {
        let m = m.clone();
        Arc::new(move |r| api::mesos(&m, r))
    };
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    http::serve(local(MARATHON_PORT), marathon).map_err(LabError::new)?;
    http::serve(local(MESOS_PORT), mesos.clone()).map_err(LabError::new)?;
    let fabric = SocketAddr::new(cfg.bridge_ip.into(), MESOS_PORT);
    http::serve(fabric, mesos).map_err(LabError::new)?;
    eprintln!(
        "master: Marathon on http://127.0.0.1:{MARATHON_PORT}/, Mesos on http://127.0.0.1:{MESOS_PORT}/ and {fabric}"
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
    match action {
        Action::Launch { agent_url, spec } => {
            let body = serde_json::to_value(&spec).expect("plain data");
            let url = format!("{agent_url}/tasks");
            let result = http::send_json("POST", &url, &body, Duration::from_secs(5));
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
            if let Err(e) = http::request("DELETE", &url, None, Duration::from_secs(5)) {
                eprintln!("master: kill {task_id}: {e}");
            }
        }
    }
}
