//! Test namespaces: every test builds its own `nmtest-dp-*` namespaces and
//! runs dataplane calls inside them, so nothing touches the machine's own.
#![allow(dead_code)]

use serde_json::Value;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// True when the tests can run (root, `ip` and `nft` present). Otherwise
/// the test fails, with or without `CI`: a run must not pass by skipping.
pub fn prerequisites() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let has = |tool: &str| Command::new(tool).arg("-V").output().is_ok();
    let missing = match (root, has("ip"), has("nft")) {
        (false, _, _) => "root",
        (_, false, _) => "the ip command",
        (_, _, false) => "the nft command",
        _ => return true,
    };
    panic!("dataplane tests need {missing}: run scripts/setup.sh as root");
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace made for one test, deleted on drop (also on panic).
pub struct TestNs {
    pub name: String,
}

impl TestNs {
    pub fn new() -> TestNs {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            sweep_dead_runs();
        }
        let name = format!("nmtest-dp-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name]);
        let ns = TestNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` inside this namespace (on a dedicated thread).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        netmod_dataplane::in_netns(&self.path(), f).expect("enter test namespace")
    }

    /// `ip -n <ns> <args>`, which must succeed.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// `ip -j -n <ns> <args>` as JSON.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let out = self.ip(&full);
        serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).expect("ip -j output")
    }

    /// `ip netns exec <ns> <cmd...>`, whatever its outcome.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("run ip netns exec")
    }

    pub fn sysctl(&self, key: &str) -> String {
        let out = self.exec(&["cat", &format!("/proc/sys/{key}")]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A TCP listener bound inside this namespace. Nobody needs to accept:
    /// the kernel completes handshakes into the backlog.
    pub fn listen(&self, addr: &str) -> TcpListener {
        let addr: SocketAddr = addr.parse().unwrap();
        self.run(|| TcpListener::bind(addr))
            .expect("listen in test namespace")
    }

    /// Whether a TCP connection from this namespace to `addr` succeeds.
    pub fn can_connect(&self, addr: &str) -> bool {
        let addr: SocketAddr = addr.parse().unwrap();
        self.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
    }

    /// `nft -j list table inet netmod`, None when the table is missing.
    pub fn nft_json(&self) -> Option<Value> {
        let out = self.exec(&["nft", "-j", "list", "table", "inet", "netmod"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("nft -j output"))
    }

    /// A link that leads nowhere: `dummy`, or on kernels built without the
    /// dummy driver a veth whose peer (`x<name>`) stays in the same
    /// namespace. (Not `ifb`: loading that module creates ifb0 and ifb1 in
    /// the machine's own namespace.) Left up.
    pub fn add_dummy(&self, name: &str) {
        let dummy = ["-n", &self.name, "link", "add", name, "type", "dummy"];
        if !Command::new("ip")
            .args(dummy)
            .output()
            .unwrap()
            .status
            .success()
        {
            let peer = format!("x{name}");
            run(&[
                "ip", "-n", &self.name, "link", "add", name, "type", "veth", "peer", "name", &peer,
            ]);
            self.ip(&["link", "set", &peer, "up"]);
        }
        self.ip(&["link", "set", name, "up"]);
    }

    /// Names of links whose name starts with `prefix`.
    pub fn links(&self, prefix: &str) -> Vec<String> {
        let links = self.ip_json(&["link", "show"]);
        links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Deletes namespaces left by earlier test runs whose process is gone.
fn sweep_dead_runs() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("nmtest-dp-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gives a host namespace what a real host has: an address of its own and a
/// default route out of another interface (a dummy, so nothing leaves the
/// namespace). Proxy ARP for the containers' gateway needs that route.
pub fn make_host(ns: &TestNs) {
    ns.add_dummy("uplink0");
    ns.ip(&["addr", "add", "10.251.255.1/32", "dev", "lo"]);
    ns.ip(&["addr", "add", "fd4e:6d74:ffff::1/128", "dev", "lo"]);
    ns.ip(&["route", "add", "default", "dev", "uplink0"]);
    ns.ip(&["-6", "route", "add", "default", "dev", "uplink0"]);
}
