//! Helpers for the lab's end-to-end tests: a lab instance of each test's
//! own, driven as a user would (the demo scripts; curl for Marathon's API),
//! looks inside its namespaces, headless Chromium.
//!
//! Hermetic: every test brings up its own lab (`--name`, unique per run)
//! with its own namespaces, interfaces, run directory and store, its own
//! fabric range, and master ports the system chooses (read back from `lab
//! status --json`). Only the tests that need the demo's address pool
//! (`192.168.0.0/16`, a machine-wide route: the demo's collectors have fixed
//! addresses in it) take [`demo_pool`] first. Requirements (root, iproute2,
//! nftables, curl, nsenter, chromium, etcd, the netmod and star binaries beside
//! netmod-lab) are checked up front, and a missing one fails the test with
//! the reason, under CI or not.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const LAB_EXE: &str = env!("CARGO_BIN_EXE_netmod-lab");
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const ETCD: &str = "/usr/bin/etcd";
/// The demo's pool: its group files give the collectors fixed addresses in it.
pub const DEMO_POOL: &str = "192.168.0.0/16";

static POOL: Mutex<()> = Mutex::new(());

/// The demo's address pool is a route of the whole machine: one lab at a
/// time may have it.
pub fn demo_pool() -> MutexGuard<'static, ()> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Where screenshots go: `docs/img/` (used by the READMEs) when
/// `NETMOD_UPDATE_SCREENSHOTS` is set, else `target/debug/lab-screenshots/`.
pub fn shots() -> PathBuf {
    if std::env::var_os("NETMOD_UPDATE_SCREENSHOTS").is_some() {
        repo().join("docs/img")
    } else {
        Path::new(LAB_EXE).parent().unwrap().join("lab-screenshots")
    }
}

pub fn netmod() -> PathBuf {
    Path::new(LAB_EXE).with_file_name("netmod")
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Checks what the lab tests need; a gap fails the test, saying what is
/// missing and how to get it.
pub fn requirements(browser: bool) {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (the lab makes namespaces and routes)".to_string());
    }
    for (p, pkg) in [
        ("ip", "iproute2"),
        ("curl", "curl"),
        ("nsenter", "util-linux"),
        ("bash", "bash"),
        ("timeout", "coreutils"),
        ("nft", "nftables"),
    ] {
        if !have(p) {
            missing.push(format!("{p} (apt-get install {pkg})"));
        }
    }
    if browser && !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    if !netmod().is_file() {
        missing.push(format!("{} (cargo build -p netmod)", netmod().display()));
    }
    for b in ["star-probe", "star-collect"] {
        let p = Path::new(LAB_EXE).with_file_name(b);
        if !p.is_file() {
            missing.push(format!("{} (cargo build -p star)", p.display()));
        }
    }
    assert!(
        missing.is_empty(),
        "the lab tests need: {}",
        missing.join(", ")
    );
}

/// The lab's `--store etcd` needs Debian's etcd server.
pub fn etcd_requirement() {
    assert!(
        Path::new(ETCD).is_file(),
        "this test needs {ETCD} (apt-get install etcd-server)"
    );
}

/// `netmod ARGS` (this build).
pub fn netmod_cmd(args: &[&str]) -> Output {
    Command::new(netmod()).args(args).output().unwrap()
}

/// curl as a user would; returns (status, body).
pub fn curl(
    method: &str,
    url: &str,
    body_file: Option<&Path>,
    body: Option<&str>,
) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "-m", "10", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(f) = body_file {
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", f.display()));
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = c.arg(url).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

pub fn get(url: &str) -> Value {
    let (code, body) = curl("GET", url, None, None);
    assert_eq!(code, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// Polls `f` until it returns Ok, or fails with the last `why`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    let mut why = String::new();
    while Instant::now() < deadline {
        match f() {
            Ok(v) => return v,
            Err(e) => why = e,
        }
        thread::sleep(Duration::from_millis(300));
    }
    panic!("timed out after {limit:?} waiting for {what}: {why}");
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A lab of the test's own. Taken down (best effort) when dropped, so a
/// failing test leaves nothing behind either.
pub struct Lab {
    pub name: String,
    pub fabric: String,
    /// `lab status --json` from when it came up: names, addresses, ports.
    cfg: Option<Value>,
}

impl Lab {
    /// A lab named `t-<tag>-<random>` (unique per run) on its own fabric.
    pub fn new(tag: &str, fabric: &str) -> Lab {
        Lab {
            name: format!("t{tag}{}", netmod_lab::util::random_hex(3)),
            fabric: fabric.to_string(),
            cfg: None,
        }
    }

    /// `netmod-lab lab --name <name> ARGS`.
    pub fn lab(&self, args: &[&str]) -> Output {
        Command::new(LAB_EXE)
            .args(["lab", "--name", &self.name])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a demo script against this lab as a user would: `NETMOD` is
    /// this build and `NETMOD_LAB` names the lab; the scripts find the
    /// lab's star directory and its Marathon themselves (`MARATHON` unset).
    pub fn script(&self, name: &str, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(repo().join("demo").join(name))
            .args(args)
            .env("NETMOD", netmod())
            .env("NETMOD_LAB", &self.name)
            .env_remove("MARATHON")
            .env_remove("NETMOD_STORE")
            .output()
            .unwrap()
    }

    /// A demo script that must succeed.
    pub fn script_ok(&self, name: &str, args: &[&str]) -> String {
        let out = self.script(name, args);
        assert!(out.status.success(), "demo/{name} failed:\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Brings the lab up with a demo script (`launch-cluster*.sh`), on its
    /// own fabric; reads back what it built. Returns what `lab up` printed.
    pub fn up_with(&mut self, script: &str, args: &[&str]) -> String {
        let all = [
            &["--name", self.name.as_str(), "--fabric", &self.fabric],
            args,
        ]
        .concat();
        let out = self.script(script, &all);
        assert!(
            out.status.success(),
            "{script} {all:?} failed:\n{}",
            text(&out)
        );
        self.adopt();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Reads back a lab something else brought up (`netmod demo --keep`).
    pub fn adopt(&mut self) {
        self.cfg = Some(self.status());
    }

    /// `lab status --json`.
    pub fn status(&self) -> Value {
        let out = self.lab(&["status", "--json"]);
        assert!(out.status.success(), "lab status: {}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn cfg(&self) -> &Value {
        self.cfg.as_ref().expect("the lab is up")
    }

    pub fn marathon(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.cfg()["ports"]["marathon"])
    }

    pub fn mesos(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.cfg()["ports"]["mesos"])
    }

    /// Agent hosts' names and fabric addresses.
    pub fn agents(&self) -> Vec<(String, String)> {
        self.cfg()["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["name"].as_str().unwrap().to_string(),
                    a["ip"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn agent_ip(&self, host: &str) -> String {
        self.agents()
            .into_iter()
            .find(|(n, _)| n == host)
            .unwrap_or_else(|| panic!("no agent {host} in {:?}", self.agents()))
            .1
    }

    pub fn store(&self) -> String {
        self.cfg()["store"].as_str().unwrap().to_string()
    }

    pub fn star_dir(&self) -> PathBuf {
        PathBuf::from(self.cfg()["star_dir"].as_str().unwrap())
    }

    pub fn run_dir(&self) -> PathBuf {
        PathBuf::from(self.cfg()["run_dir"].as_str().unwrap())
    }

    /// The lab's control token, as the master and the agents read it.
    pub fn token(&self) -> String {
        let path = self.run_dir().join("control-token");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Marathon's tasks of one group, running.
    pub fn running_tasks(&self, group: &str) -> Vec<Value> {
        let v = get(&self.marathon("/v2/tasks"));
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| {
                t["appId"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("/{group}/"))
                    && t["state"] == "TASK_RUNNING"
            })
            .cloned()
            .collect()
    }

    /// Waits until `n` tasks of the group run.
    pub fn wait_running(&self, group: &str, n: usize) -> Vec<Value> {
        wait_for(
            &format!("{n} running tasks in /{group}"),
            Duration::from_secs(90),
            || {
                let t = self.running_tasks(group);
                if t.len() == n {
                    Ok(t)
                } else {
                    Err(format!("{} running: {t:?}", t.len()))
                }
            },
        )
    }

    /// `lab down` through the demo script (the lab named by `NETMOD_LAB`),
    /// asserting it left nothing.
    pub fn down(&mut self, script: &str, store: Option<&Path>) {
        self.script_ok(script, &[]);
        let left = self.leftovers(store);
        assert_eq!(left, Vec::<String>::new(), "lab down left something");
        self.cfg = None;
    }

    /// Everything of this lab that could be left behind; empty when it left
    /// nothing. Found independently of the lab's own bookkeeping: by its
    /// name, the interfaces it recorded, its run directory and processes.
    pub fn leftovers(&self, store: Option<&Path>) -> Vec<String> {
        let mut left = Vec::new();
        let ns_prefix = format!("{}-", self.name);
        let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for l in String::from_utf8_lossy(&ns.stdout).lines() {
            if l.starts_with(&ns_prefix) {
                left.push(format!("namespace {l}"));
            }
        }
        let mut links: Vec<String> = Vec::new();
        if let Some(cfg) = &self.cfg {
            links.push(cfg["bridge"].as_str().unwrap().to_string());
            for a in cfg["agents"].as_array().unwrap() {
                links.push(a["root_veth"].as_str().unwrap().to_string());
            }
            let if_prefix = links[0].trim_end_matches("-br0").to_string();
            links.push(format!("{if_prefix}-setcd"));
            links.push(format!("{if_prefix}-rtr"));
        }
        let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let name = l
                .split(": ")
                .nth(1)
                .unwrap_or("")
                .split('@')
                .next()
                .unwrap();
            if links.iter().any(|x| x == name) {
                left.push(format!("link {l}"));
            }
        }
        let routes = Command::new("ip")
            .args(["-4", "route", "show", "table", "all"])
            .output()
            .unwrap();
        for l in String::from_utf8_lossy(&routes.stdout).lines() {
            let dev = l.split(" dev ").nth(1).and_then(|r| r.split(' ').next());
            if dev.is_some_and(|d| links.iter().any(|x| x == d)) {
                left.push(format!("route {l}"));
            }
        }
        let run_dir = format!("/run/netmod-lab-{}", self.name);
        let marker = format!(" lab --name {} ", self.name);
        let node = format!(" node --hostname {}-agent-", self.name);
        let sandbox = format!("MESOS_SANDBOX={run_dir}/");
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'));
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let task = String::from_utf8_lossy(&env).contains(&sandbox);
            let daemon = cmd.contains(&marker)
                || cmd.contains(&node)
                || cmd.contains(&format!("{run_dir}/"));
            let mine = pid == std::process::id();
            if !zombie && !mine && (task || daemon) {
                left.push(format!("process {pid}: {cmd}"));
            }
        }
        if Path::new(&run_dir).exists() {
            left.push(run_dir);
        }
        if let Some(store) = store {
            let out = netmod_cmd(&[
                "--store",
                &store.display().to_string(),
                "-o",
                "json",
                "ipam",
                "show",
            ]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            for p in v["pools"].as_array().into_iter().flatten() {
                if p["used"].as_u64().unwrap_or(0) > 0 {
                    left.push(format!("allocations in {}: {p}", store.display()));
                }
            }
        }
        left
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.cfg.is_some() || Path::new(&format!("/run/netmod-lab-{}", self.name)).exists() {
            let out = self.lab(&["down"]);
            if !out.status.success() {
                eprintln!("lab {} down after the test: {}", self.name, text(&out));
            }
        }
    }
}

/// The `export NETMOD_STORE=…` line a command printed: its last line
/// that starts so.
pub fn store_export_line(output: &str) -> String {
    output
        .lines()
        .rev()
        .find(|l| l.starts_with("export NETMOD_STORE="))
        .unwrap_or_else(|| panic!("no `export NETMOD_STORE=` line in:\n{output}"))
        .to_string()
}

/// `netmod -o json endpoints` in a shell that has only `eval`'d `line`
/// (no `--store`, no `NETMOD_STORE` of its own): the endpoints it lists.
pub fn endpoints_after_eval(line: &str) -> Vec<Value> {
    let out = Command::new("bash")
        .args([
            "-c",
            "eval \"$1\" && exec \"$2\" -o json endpoints",
            "sh",
            line,
        ])
        .arg(netmod())
        .env_remove("NETMOD_STORE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "eval {line:?}; netmod endpoints:\n{}",
        text(&out)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("netmod endpoints: not JSON ({e}):\n{}", text(&out)));
    v.as_array().cloned().unwrap_or_else(|| panic!("{v}"))
}

/// Whether a route to `dst` exists on the machine (any table but local).
pub fn has_route(dst: &str) -> bool {
    let out = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with(&format!("{dst} ")))
}

pub fn task_of<'a>(tasks: &'a [Value], app: &str) -> &'a Value {
    tasks
        .iter()
        .find(|t| t["appId"] == app)
        .unwrap_or_else(|| panic!("no running task of {app}"))
}

/// A process of the task (found the way an operator would: its environment
/// carries `MESOS_TASK_ID`); prefers the task's own program over its shell.
pub fn task_pid(task_id: &str) -> u32 {
    let marker = format!("MESOS_TASK_ID={task_id}");
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push((comm.trim().starts_with("star-"), pid));
        }
    }
    found.sort();
    found
        .last()
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no process of task {task_id}"))
}

/// From inside the network namespace of process `pid`: does an HTTP request
/// to `ip:port` get any answer within 2 s?
pub fn reaches(pid: u32, ip: &str, port: u16) -> bool {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args([
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "2",
        ])
        .arg(format!("http://{ip}:{port}/status"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout);
    code.trim() != "000" && !code.trim().is_empty()
}

/// Asks an agent's DNS (from the machine, over the fabric).
pub fn dig(server: &str, name: &str) -> (u8, Vec<String>) {
    let addr = format!("{server}:53").parse().unwrap();
    let (rcode, ips) = netmod_lab::dns::resolve(addr, name, Duration::from_secs(2)).unwrap();
    (rcode, ips.iter().map(|i| i.to_string()).collect())
}

/// The reachable edges a page drew: (from, to).
pub fn dom_edges(dom: &str, class: &str) -> BTreeSet<(String, String)> {
    let needle = format!("class=\"edge {class}\" data-from=\"");
    dom.match_indices(&needle)
        .map(|(i, _)| {
            let rest = &dom[i + needle.len()..];
            let from = rest.split('"').next().unwrap().to_string();
            let to = rest
                .split("data-to=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string();
            (from, to)
        })
        .collect()
}

/// The container ids a lab page shows.
pub fn page_container_ids(html: &str) -> BTreeSet<String> {
    let needle = "<code class=\"container-id\">";
    html.match_indices(needle)
        .map(|(i, _)| {
            html[i + needle.len()..]
                .split('<')
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

fn chromium(args: &[String]) -> String {
    let profile = std::env::temp_dir().join(format!(
        "nmlab-chromium-{}",
        netmod_lab::util::random_hex(6)
    ));
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--window-size=1300,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let mut stdout = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "chromium failed: {st}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(&profile);
    reader.join().unwrap()
}

/// The page's DOM after 5 s of virtual time.
pub fn dump_dom(url: &str) -> String {
    chromium(&[
        "--virtual-time-budget=5000".into(),
        "--dump-dom".into(),
        url.into(),
    ])
}

/// Saves a screenshot of the page (for the docs).
pub fn screenshot(url: &str, path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    chromium(&[
        "--virtual-time-budget=5000".into(),
        format!("--screenshot={}", path.display()),
        url.into(),
    ]);
    assert!(path.is_file(), "no screenshot at {}", path.display());
}
