//! The lab's long-running processes: started detached (own session, output
//! to a log file), tracked by pid files under `/run/netmod-lab/pids/`, and
//! stopped by pid — never by name.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::{log_dir, pid_dir, sandbox_root};
use crate::error::{Context, LabError};

/// Starts `argv` detached, as `name`: its own session (no terminal signal
/// reaches it), stdin from /dev/null, stdout and stderr to `logs/<name>.log`.
/// Writes `pids/<name>.pid`.
pub fn spawn_daemon(name: &str, argv: &[String]) -> Result<u32, LabError> {
    let log_path = log_dir().join(format!("{name}.log"));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .context(|| format!("cannot open {}", log_path.display()))?;
    let err = log
        .try_clone()
        .context(|| "cannot duplicate a file".into())?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours; it
    // runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .context(|| format!("cannot start {name} ({})", argv.join(" ")))?;
    let pid = child.id();
    let pid_path = pid_file(name);
    fs::write(&pid_path, format!("{pid}\n"))
        .context(|| format!("cannot write {}", pid_path.display()))?;
    Ok(pid)
}

pub fn pid_file(name: &str) -> PathBuf {
    pid_dir().join(format!("{name}.pid"))
}

pub fn log_file(name: &str) -> PathBuf {
    log_dir().join(format!("{name}.log"))
}

/// The last `lines` lines of a process's log, for error messages.
pub fn log_tail(name: &str, lines: usize) -> String {
    let text = fs::read_to_string(log_file(name)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The pid recorded for `name`, if any.
pub fn read_pid(name: &str) -> Option<u32> {
    fs::read_to_string(pid_file(name)).ok()?.trim().parse().ok()
}

/// Every (name, pid) recorded.
pub fn recorded() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    if let Ok(dir) = fs::read_dir(pid_dir()) {
        for e in dir.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = file.strip_suffix(".pid") {
                if let Some(pid) = read_pid(name) {
                    out.push((name.to_string(), pid));
                }
            }
        }
    }
    out.sort();
    out
}

/// A process's command line, arguments joined by spaces.
pub fn cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether `pid` is still the lab process we started (guards against a
/// recycled pid): its command line runs netmod and contains `marker`.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    cmdline(pid).is_some_and(|c| c.contains("netmod") && c.contains(marker))
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL. True if it is gone.
pub fn stop_pid(pid: u32, grace: Duration) -> bool {
    if !alive(pid) {
        return true;
    }
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    signal(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Stops the process recorded as `name` if it is still ours; removes its pid
/// file. True if nothing of it runs any more.
pub fn stop(name: &str, marker: &str, grace: Duration) -> bool {
    let Some(pid) = read_pid(name) else {
        return true;
    };
    let gone = if alive(pid) && is_ours(pid, marker) {
        stop_pid(pid, grace)
    } else {
        true
    };
    if gone {
        let _ = fs::remove_file(pid_file(name));
    }
    gone
}

/// Pids of task processes the lab's agents started: their environment has
/// `MESOS_SANDBOX` under the lab's sandbox directory.
pub fn task_pids() -> Vec<u32> {
    let marker = format!("MESOS_SANDBOX={}/", sandbox_root().display());
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = fs::read(format!("/proc/{pid}/environ")) {
            if env
                .split(|b| *b == 0)
                .any(|kv| kv.starts_with(marker.as_bytes()))
                && alive(pid)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// Pids of every process in network namespace `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL to each pid (used only on processes inside the lab's own
/// namespaces or with the lab's task marker).
pub fn kill_all(pids: &[u32]) {
    for &pid in pids {
        signal(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Resident memory (KiB) and CPU time (clock ticks) of one process.
pub fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    // Fields after the command: state is [0]; utime and stime are [11], [12].
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

/// Clock ticks per second.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}
