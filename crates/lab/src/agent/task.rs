//! One task's life on an agent, in the order Mesos and its network isolator
//! module go through it:
//!
//! 0. a container id for the task (every task has one, as in Mesos; it is
//!    in every status from TASK_STARTING on, and netmod knows the task's
//!    network by it);
//! 1. sandbox, `file://` URIs fetched into it, a `resolv.conf` for the task;
//! 2. for a task with its own address: `reserve` (addresses asked by value)
//!    and `allocate` (the rest; static ones through the `ipv4_addrs` label);
//! 3. the task forked into fresh namespaces (mount, and network if it has
//!    its own address) and held there;
//! 4. `isolate` with its pid and its labels (see [`endpoint_labels`]); only
//!    after the reply is it released to exec;
//! 5. RUNNING, with its addresses; wait for it to end (or be killed);
//! 6. `release` of its addresses, then `cleanup` of the container.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};

use super::netmod::labels_json;
use super::Agent;
use crate::agent::shim::GO_FD;
use crate::util::{unix_now, uuid};
use crate::wire::{self, NetworkSpec, TaskSpec, TaskStatus};

/// SIGTERM first; SIGKILL this long after.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// What was set up for the task's network, to undo at the end.
struct Net {
    addrs: Vec<String>,
    isolated: bool,
}

/// The labels of the task's endpoint, sent with `isolate`: its names —
/// `task` (the Mesos task name, `probe-a.star`, also its Mesos-DNS name)
/// and `app` (the Marathon app id, `/star/probe-a`), the keys `netmod
/// endpoints` and `netmod explain` name endpoints by — then the app's
/// `labels` (Mesos TaskInfo labels), then `ipAddress.labels` (the
/// NetworkInfo's, which Mesos hands the isolator as they are). A user's
/// label wins over the lab's name of the same key; the NetworkInfo's wins
/// over the app's.
pub fn endpoint_labels(spec: &TaskSpec, net: &NetworkSpec) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("task".to_string(), spec.name.clone()),
        ("app".to_string(), spec.app_id.clone()),
    ]);
    labels.extend(spec.labels.clone());
    labels.extend(net.labels.clone());
    labels
}

/// Starts the task's life on its own thread.
pub fn launch(agent: Arc<Agent>, spec: TaskSpec) {
    let name = format!("task {}", spec.task_id);
    let _ = thread::Builder::new().name(name).spawn(move || {
        let id = spec.task_id.clone();
        let end = run(&agent, &spec);
        agent.report(end);
        agent.forget_pid(&id);
    });
}

/// One task's container: its id and sandbox, what every status carries.
struct Container<'a> {
    spec: &'a TaskSpec,
    id: String,
    sandbox: PathBuf,
}

impl Container<'_> {
    fn status(&self, state: &str, msg: Option<String>, net: Option<&Net>) -> TaskStatus {
        TaskStatus {
            task_id: self.spec.task_id.clone(),
            state: state.into(),
            message: msg,
            ip_addresses: net.map(|n| n.addrs.clone()).unwrap_or_default(),
            container_id: Some(self.id.clone()),
            sandbox: Some(self.sandbox.display().to_string()),
            timestamp: unix_now(),
        }
    }
}

/// The task from start to end; returns its terminal status.
fn run(agent: &Agent, spec: &TaskSpec) -> TaskStatus {
    let c = Container {
        spec,
        id: uuid(),
        sandbox: agent.sandbox(&spec.task_id),
    };
    let sandbox = c.sandbox.as_path();
    agent.report(c.status(wire::STARTING, None, None));
    if let Err(e) = prepare_sandbox(agent, spec, sandbox) {
        return c.status(wire::FAILED, Some(e), None);
    }
    // Networking through the plugin, before the task exists.
    let own_net = match (&spec.network, agent.cfg.isolator) {
        (Some(n), true) => Some(n),
        _ => None,
    };
    let mut net = None;
    if let Some(ns) = own_net {
        match assign(agent, ns, &c.id) {
            Ok(n) => net = Some(n),
            Err(e) => return c.status(wire::FAILED, Some(e), None),
        }
    }
    if agent.kill_requested(&spec.task_id) {
        let m = teardown(agent, &c.id, net.as_ref());
        return c.status(wire::KILLED, m, net.as_ref());
    }
    // The task, held in its fresh namespaces.
    let (mut child, go) = match spawn_held(agent, spec, sandbox, net.as_ref(), own_net.is_some()) {
        Ok(x) => x,
        Err(e) => {
            let m = teardown(agent, &c.id, net.as_ref());
            return c.status(wire::FAILED, Some(join(e, m)), net.as_ref());
        }
    };
    let pid = child.id();
    agent.set_pid(&spec.task_id, pid);
    // isolate(pid): plug the task's eth0 in and apply its policy.
    if let (Some(n), Some(ns)) = (net.as_mut(), own_net) {
        let req = json!({
            "hostname": agent.host.name,
            "container_id": c.id,
            "pid": pid,
            "ipv4_addrs": n.addrs,
            "netgroups": ns.groups,
            "labels": labels_json(&endpoint_labels(spec, ns)),
        });
        match agent.netmod.call("isolate", req) {
            Ok(_) => n.isolated = true,
            Err(e) => {
                drop(go); // the shim exits without running the task
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait();
                let m = teardown(agent, &c.id, net.as_ref());
                let msg = join(format!("netmod mesos isolate failed: {e}"), m);
                return c.status(wire::FAILED, Some(msg), net.as_ref());
            }
        }
    }
    if agent.kill_requested(&spec.task_id) {
        drop(go);
        kill_group(pid, libc::SIGKILL);
        let _ = child.wait();
        let m = teardown(agent, &c.id, net.as_ref());
        return c.status(wire::KILLED, m, net.as_ref());
    }
    // Release it: the shim execs the command.
    // SAFETY: `go` is the open write end of the pipe, owned here.
    let wrote = unsafe { libc::write(go.as_raw_fd(), b"g".as_ptr().cast(), 1) };
    drop(go);
    if wrote != 1 {
        kill_group(pid, libc::SIGKILL);
    }
    agent.report(c.status(wire::RUNNING, None, net.as_ref()));
    let exit = child.wait();
    agent.forget_pid(&spec.task_id);
    // Whatever it left behind in its process group goes too.
    kill_group(pid, libc::SIGKILL);
    let m = teardown(agent, &c.id, net.as_ref());
    let (state, why) = if agent.kill_requested(&spec.task_id) {
        (wire::KILLED, "killed on request".to_string())
    } else {
        match exit {
            Ok(st) if st.success() => (wire::FINISHED, "exited with status 0".to_string()),
            Ok(st) => {
                let how = match (st.code(), st.signal()) {
                    (Some(c), _) => format!("exited with status {c}"),
                    (_, Some(s)) => format!("killed by signal {s}"),
                    _ => "ended".to_string(),
                };
                let tail = last_line(&sandbox.join("stderr"));
                (
                    wire::FAILED,
                    if tail.is_empty() {
                        how
                    } else {
                        format!("{how}: {tail}")
                    },
                )
            }
            Err(e) => (wire::FAILED, format!("lost the task's process: {e}")),
        }
    };
    c.status(state, Some(join(why, m)), net.as_ref())
}

fn join(a: String, b: Option<String>) -> String {
    match b {
        Some(b) => format!("{a}; {b}"),
        None => a,
    }
}

fn last_line(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    line.chars().take(200).collect()
}

/// The sandbox: the fetched URIs and the task's resolv.conf.
fn prepare_sandbox(agent: &Agent, spec: &TaskSpec, sandbox: &Path) -> Result<(), String> {
    fs::create_dir_all(sandbox)
        .map_err(|e| format!("cannot create the sandbox {}: {e}", sandbox.display()))?;
    for uri in &spec.uris {
        let path = uri.strip_prefix("file://").unwrap_or(uri);
        if !path.starts_with('/') {
            return Err(format!(
                "cannot fetch {uri}: the lab fetches file:// URIs and absolute paths only"
            ));
        }
        let name = Path::new(path)
            .file_name()
            .ok_or_else(|| format!("cannot fetch {uri}: no file name"))?;
        fs::copy(path, sandbox.join(name)).map_err(|e| format!("cannot fetch {uri}: {e}"))?;
    }
    let resolv = format!(
        "# Written by the netmod lab agent {}: names resolve through its Mesos-DNS.\n\
         nameserver {}\noptions timeout:1 attempts:2\n",
        agent.host.name, agent.host.ip
    );
    fs::write(sandbox.join("resolv.conf"), resolv)
        .map_err(|e| format!("cannot write resolv.conf: {e}"))?;
    Ok(())
}

/// `reserve` for the addresses asked by value, `allocate` for the rest.
/// The IPAM calls carry the NetworkInfo's labels (`ipAddress.labels`), as
/// Mesos's module sends them; the handle is the container id.
fn assign(agent: &Agent, ns: &NetworkSpec, container_id: &str) -> Result<Net, String> {
    let by_value: Vec<String> = ns.ip_addresses.iter().flatten().cloned().collect();
    let any = ns
        .ip_addresses
        .iter()
        .filter(|a| a.is_none())
        .count()
        .max(usize::from(by_value.is_empty()));
    let common = |extra: Value| {
        let mut v = json!({
            "hostname": agent.host.name,
            "uid": container_id,
            "netgroups": ns.groups,
            "labels": labels_json(&ns.labels),
        });
        for (k, x) in extra.as_object().into_iter().flatten() {
            v[k] = x.clone();
        }
        v
    };
    let mut addrs = Vec::new();
    if !by_value.is_empty() {
        agent
            .netmod
            .call("reserve", common(json!({ "ipv4_addrs": by_value })))
            .map_err(|e| format!("netmod mesos reserve failed: {e}"))?;
        addrs.extend(by_value);
    }
    if any > 0 {
        let reply = agent.netmod.call(
            "allocate",
            common(json!({ "num_ipv4": any, "num_ipv6": 0 })),
        );
        match reply {
            Ok(r) => addrs.extend(
                r["ipv4"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_string)),
            ),
            Err(e) => {
                if !addrs.is_empty() {
                    let _ = agent.netmod.call("release", json!({ "ips": addrs }));
                }
                return Err(format!("netmod mesos allocate failed: {e}"));
            }
        }
    }
    Ok(Net {
        addrs,
        isolated: false,
    })
}

/// `release` of the addresses, then `cleanup` of the container (the order
/// the module uses); returns what failed, if anything.
fn teardown(agent: &Agent, container_id: &str, net: Option<&Net>) -> Option<String> {
    let net = net?;
    let mut problems = Vec::new();
    if !net.addrs.is_empty() {
        if let Err(e) = agent.netmod.call("release", json!({ "ips": net.addrs })) {
            problems.push(format!("release failed: {e}"));
        }
    }
    if net.isolated {
        let req = json!({"hostname": agent.host.name, "container_id": container_id});
        if let Err(e) = agent.netmod.call("cleanup", req) {
            problems.push(format!("cleanup failed: {e}"));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn task_env(
    agent: &Agent,
    spec: &TaskSpec,
    sandbox: &Path,
    net: Option<&Net>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".to_string(),
        format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            agent.cfg.star_dir.display()
        ),
    );
    for k in ["LANG", "TZ"] {
        if let Ok(v) = std::env::var(k) {
            env.insert(k.to_string(), v);
        }
    }
    env.extend(spec.env.clone());
    let ip = net
        .and_then(|n| n.addrs.first().cloned())
        .unwrap_or_else(|| agent.host.ip.to_string());
    env.insert("LIBPROCESS_IP".into(), ip);
    env.insert("HOST".into(), agent.host.name.clone());
    env.insert("MESOS_SANDBOX".into(), sandbox.display().to_string());
    env.insert("MESOS_TASK_ID".into(), spec.task_id.clone());
    env.insert("MESOS_AGENT_ID".into(), agent.agent_id());
    env.insert("HOME".into(), sandbox.display().to_string());
    env
}

/// Forks the shim into fresh namespaces; returns it and the write end of
/// the pipe that releases it.
fn spawn_held(
    agent: &Agent,
    spec: &TaskSpec,
    sandbox: &Path,
    net: Option<&Net>,
    own_netns: bool,
) -> Result<(std::process::Child, OwnedFd), String> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!(
            "cannot make a pipe: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let stdout = fs::File::create(sandbox.join("stdout"))
        .map_err(|e| format!("cannot create stdout: {e}"))?;
    let stderr = fs::File::create(sandbox.join("stderr"))
        .map_err(|e| format!("cannot create stderr: {e}"))?;
    let mut cmd = Command::new(&agent.cfg.lab_exe);
    cmd.args(["lab", "task-shim", "--resolv"])
        .arg(sandbox.join("resolv.conf"))
        .arg("--hide")
        .arg(crate::config::token_file());
    if own_netns {
        cmd.arg("--net");
    }
    cmd.args(["--", "/bin/sh", "-c", &spec.cmd])
        .env_clear()
        .envs(task_env(agent, spec, sandbox, net))
        .current_dir(sandbox)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    let flags = libc::CLONE_NEWNS | if own_netns { libc::CLONE_NEWNET } else { 0 };
    let go_read = read_end.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed. It makes exactly three such
    // system calls — unshare, dup2, fcntl — on plain integers captured by
    // copy; it allocates nothing, takes no lock and touches no other memory.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(flags) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if go_read == GO_FD {
                // dup2 onto itself keeps close-on-exec: clear it.
                if libc::fcntl(GO_FD, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(go_read, GO_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the task: {e}"))?;
    drop(read_end);
    Ok((child, write_end))
}

/// Signals the task's whole process group.
pub fn kill_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: killpg has no memory-safety preconditions; the group is the
    // task's own (it was started as a group leader).
    unsafe {
        libc::killpg(pgid as libc::pid_t, sig);
    }
}

/// The sandbox directory of a task on an agent.
pub fn sandbox_dir(root: &Path, host: &str, task_id: &str) -> PathBuf {
    root.join(host).join(task_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_named_after_their_task_and_app() {
        let mut spec = TaskSpec {
            task_id: "star_probe-a.1".into(),
            name: "probe-a.star".into(),
            app_id: "/star/probe-a".into(),
            app_version: "v".into(),
            cmd: "x".into(),
            env: BTreeMap::new(),
            uris: vec![],
            host_ports: vec![],
            cpus: 0.1,
            mem: 8.0,
            labels: BTreeMap::from([("team".into(), "net".into()), ("tier".into(), "app".into())]),
            network: None,
        };
        let net = NetworkSpec {
            groups: vec!["public".into()],
            labels: BTreeMap::from([
                ("tier".into(), "probe".into()),
                ("ipv4_addrs".into(), "['192.168.255.253']".into()),
            ]),
            ip_addresses: vec![None],
        };
        let l = endpoint_labels(&spec, &net);
        assert_eq!(l["task"], "probe-a.star");
        assert_eq!(l["app"], "/star/probe-a");
        assert_eq!(l["team"], "net");
        assert_eq!(
            l["tier"], "probe",
            "the NetworkInfo's label wins over the app's"
        );
        assert_eq!(l["ipv4_addrs"], "['192.168.255.253']");
        // A user's own name for the task wins over the lab's.
        spec.labels.insert("task".into(), "web".into());
        assert_eq!(endpoint_labels(&spec, &net)["task"], "web");
        // On the wire: the list of {key, value} Mesos's module sends.
        let wire = labels_json(&endpoint_labels(&spec, &net));
        assert!(wire
            .as_array()
            .unwrap()
            .contains(&json!({"key": "app", "value": "/star/probe-a"})));
    }
}
