//! `netmod lab task-shim`: the first program a task runs.
//!
//! The agent forks it with `unshare(CLONE_NEWNS [| CLONE_NEWNET])` already
//! done (in `pre_exec`), so by the time the agent knows its pid, the task's
//! fresh namespaces exist. The shim then, inside them:
//! 1. makes every mount private and bind-mounts the task's `resolv.conf`
//!    (pointing at the agent's DNS) over `/etc/resolv.conf`, and `/dev/null`
//!    over each file the task must not read (the lab's control token);
//! 2. brings `lo` up (in a fresh network namespace);
//! 3. waits for one byte on fd 3: the agent writes it once `isolate` has
//!    replied (EOF instead means the agent gave up: exit without running);
//! 4. execs the task's command, keeping its pid: the process the agent
//!    isolated is the task.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use crate::error::{fail, LabError};

/// The fd the agent hands the "go" pipe on.
pub const GO_FD: i32 = 3;

#[derive(clap::Args, Debug)]
pub struct ShimArgs {
    /// The resolv.conf to bind over /etc/resolv.conf.
    #[arg(long)]
    resolv: PathBuf,
    /// The task has its own network namespace: bring lo up.
    #[arg(long)]
    net: bool,
    /// A file the task must not read: `/dev/null` is bound over it in the
    /// task's mount namespace (repeatable).
    #[arg(long)]
    hide: Vec<PathBuf>,
    /// The task's command.
    #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
    argv: Vec<String>,
}

fn mount(src: Option<&str>, target: &str, flags: libc::c_ulong) -> Result<(), LabError> {
    let src_c = src.map(|s| CString::new(s).expect("no NUL in paths"));
    let target_c = CString::new(target).expect("no NUL in paths");
    // SAFETY: every pointer is either null or a valid NUL-terminated string
    // that outlives the call.
    let rc = unsafe {
        libc::mount(
            src_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            target_c.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return fail(format!(
            "mount {} on {target}: {}",
            src.unwrap_or("(none)"),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Runs the shim; returns only on failure (success is an exec).
pub fn run(args: ShimArgs) -> Result<(), LabError> {
    // SAFETY: fd 3 was set up by the agent for this process alone; we take
    // ownership once, here.
    let mut go = unsafe { File::from_raw_fd(GO_FD) };
    mount(None, "/", libc::MS_REC | libc::MS_PRIVATE)?;
    let resolv = args.resolv.to_string_lossy().into_owned();
    mount(Some(&resolv), "/etc/resolv.conf", libc::MS_BIND)?;
    for path in &args.hide {
        if path.exists() {
            mount(Some("/dev/null"), &path.to_string_lossy(), libc::MS_BIND)?;
        }
    }
    if args.net {
        let st = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        if !st.is_ok_and(|s| s.success()) {
            return fail("cannot bring lo up in the task's network namespace");
        }
    }
    let mut byte = [0u8; 1];
    match go.read(&mut byte) {
        Ok(1) => {}
        _ => {
            return fail(
                "the agent did not release this task (isolation failed or the agent stopped)",
            )
        }
    }
    drop(go);
    let err = Command::new(&args.argv[0]).args(&args.argv[1..]).exec();
    fail(format!("cannot run {}: {err}", args.argv[0]))
}
