//! Running code inside another network namespace.
//!
//! `setns` only ever happens on a freshly spawned OS thread that exits when
//! the closure returns, so no pooled or async thread changes namespace and
//! nothing needs restoring. Sockets opened by the closure stay bound to that
//! namespace and can be used afterwards from any thread.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

/// Runs `f` on a dedicated thread inside the network namespace at `netns`
/// (`/proc/<pid>/ns/net`, `/run/netns/<name>`, ...) and returns its result.
/// A panic in `f` is passed on to the caller.
pub fn in_netns<T, F>(netns: &Path, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let file = open_netns(netns)?;
    in_netns_fd(file.as_fd(), f)
}

/// Opens a namespace file for [`in_netns_fd`] or for a veth peer.
pub fn open_netns(netns: &Path) -> Result<File> {
    File::open(netns).map_err(|e| Error::io(format!("open netns {}", netns.display()), e))
}

/// Like [`in_netns`], with an already open namespace file descriptor.
pub fn in_netns_fd<T, F>(netns: BorrowedFd<'_>, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let fd = netns.as_raw_fd();
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netmod-netns".into())
            .spawn_scoped(scope, move || {
                // SAFETY: `fd` stays open for the whole scope (it is borrowed by
                // the caller), and setns only changes this thread, which runs
                // `f` and then exits, so no other code ever sees the switch.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::last_os("enter network namespace (setns)"));
                }
                Ok(f())
            })
            .map_err(|e| Error::io("spawn namespace thread", e))?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
