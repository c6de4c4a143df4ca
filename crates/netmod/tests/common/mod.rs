//! Helpers shared by netmod's integration tests: run the real binary against a
//! store in a temporary directory and look at what it left behind.
#![allow(dead_code)]

pub mod calico_examples;
pub mod hostile;
pub mod lab;

use netmod_store::{SqliteStore, Store};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub const NETMOD: &str = env!("CARGO_BIN_EXE_netmod");

pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TestStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netmod.db");
        TestStore { dir, path }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(NETMOD);
        c.arg("--store").arg(&self.path);
        c
    }

    pub fn netmod(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `netmod mesos` with this request on stdin: (exit status, reply JSON).
    pub fn mesos(&self, request: &[u8]) -> (i32, serde_json::Value) {
        let mut child = self.spawn_mesos(request);
        let out = wait(&mut child);
        let reply = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "reply is not JSON ({e}): {:?} / {:?}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), reply)
    }

    pub fn spawn_mesos(&self, request: &[u8]) -> Child {
        let mut child = self
            .cmd()
            .arg("mesos")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(request);
        drop(stdin);
        child
    }

    pub fn open(&self) -> SqliteStore {
        SqliteStore::open(&self.path).unwrap()
    }

    /// Every key and value in the store, for before/after comparisons.
    pub fn dump(&self) -> Vec<(String, String)> {
        let s = self.open();
        let (kvs, _) = s.range("").unwrap();
        kvs.into_iter()
            .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
            .collect()
    }

    /// `dump` without the host records, which running nodes rewrite on
    /// their own (heartbeat, applied revision).
    pub fn dump_records(&self) -> Vec<(String, String)> {
        self.dump()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("hosts/"))
            .collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn wait(child: &mut Child) -> Output {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// How to get what the tests need on a fresh Debian 12 machine.
pub const INSTALL_HINT: &str =
    "run `bash scripts/setup.sh` as root (it installs every package the tests use), \
     then run the tests as root";

/// A test whose requirement is missing fails, with or without `CI` set: a
/// run that skips is not a run that passed. The message names what is
/// missing and how to get it.
pub fn require(ok: bool, what: &str) {
    assert!(
        ok,
        "this test needs {what}, which is missing on this machine: {INSTALL_HINT}"
    );
}

/// Fails the test unless every command in `tools` (name, Debian package)
/// is on PATH, naming each missing one and its package.
pub fn require_tools(tools: &[(&str, &str)]) {
    let missing: Vec<String> = tools
        .iter()
        .filter(|(t, _)| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(t, pkg)| format!("`{t}` (Debian package {pkg})"))
        .collect();
    require(missing.is_empty(), &missing.join(", "));
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
