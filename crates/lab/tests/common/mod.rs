//! Helpers for the lab's end-to-end tests: run the demo scripts and curl as
//! a user would, look inside the lab's namespaces, drive headless Chromium.
//!
//! The lab is one per machine (fixed names, ports 8080 and 5050), so every
//! test takes [`LAB`] first. Requirements (root, iproute2, curl, nsenter,
//! chromium, the netmod binary beside netmod-lab) are checked up front: a
//! missing one fails the test under CI and is reported loudly otherwise.
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

static LAB: Mutex<()> = Mutex::new(());

/// The machine's one lab slot.
pub fn lab_slot() -> MutexGuard<'static, ()> {
    LAB.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Where screenshots go: `docs/img/` (used by the READMEs) when
/// `NETMOD_UPDATE_SCREENSHOTS` is set, else `target/lab-screenshots/`.
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

/// Checks what the lab tests need. Under CI a gap fails; elsewhere the
/// test prints what is missing and returns false (the caller returns).
pub fn requirements(browser: bool) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for p in ["ip", "curl", "nsenter", "bash"] {
        if !have(p) {
            missing.push(p.to_string());
        }
    }
    if browser && !Path::new(CHROMIUM).exists() {
        missing.push(CHROMIUM.to_string());
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
    if missing.is_empty() {
        return true;
    }
    let msg = format!("the lab tests need: {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("NOT RUN: {msg}");
    false
}

/// Runs a demo script (with this build's netmod), asserting success.
pub fn script(name: &str) -> String {
    let out = script_output(name, &[]);
    assert!(
        out.status.success(),
        "demo/{name} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn script_output(name: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("demo").join(name))
        .args(args)
        .env("NETMOD", netmod())
        .output()
        .unwrap()
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

/// Polls `f` until it returns Some, or fails with the last `why`.
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

/// Marathon's tasks of one group, running.
pub fn running_tasks(group: &str) -> Vec<Value> {
    let v = get("http://127.0.0.1:8080/v2/tasks");
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
pub fn wait_running(group: &str, n: usize) -> Vec<Value> {
    wait_for(
        &format!("{n} running tasks in /{group}"),
        Duration::from_secs(60),
        || {
            let t = running_tasks(group);
            if t.len() == n {
                Ok(t)
            } else {
                Err(format!("{} running: {t:?}", t.len()))
            }
        },
    )
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

/// Everything the lab could leave behind; empty when it left nothing.
pub fn leftovers(store: Option<&Path>) -> Vec<String> {
    let mut left = Vec::new();
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    for l in String::from_utf8_lossy(&ns.stdout).lines() {
        if l.starts_with("nmlab-") {
            left.push(format!("namespace {l}"));
        }
    }
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        if l.contains(": nmlab-") {
            left.push(format!("link {l}"));
        }
    }
    let routes = Command::new("ip")
        .args(["route", "show", "table", "all"])
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&routes.stdout).lines() {
        if l.contains("nmlab-") || l.starts_with("192.168.0.0/16") {
            left.push(format!("route {l}"));
        }
    }
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
        let task = String::from_utf8_lossy(&env).contains("MESOS_SANDBOX=/run/netmod-lab/");
        let daemon = cmd.contains("netmod-lab lab master")
            || cmd.contains("netmod-lab lab agent")
            || (cmd.contains("netmod") && cmd.contains(" node --hostname nmlab-"));
        if !zombie && (task || daemon) {
            left.push(format!("process {pid}: {cmd}"));
        }
    }
    if Path::new("/run/netmod-lab").exists() {
        left.push("/run/netmod-lab".into());
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

/// Takes any lab down (tests own the machine's lab slot), asserting nothing
/// is left.
pub fn clean_slate() {
    let out = Command::new(LAB_EXE)
        .args(["lab", "down"])
        .output()
        .unwrap();
    let left = leftovers(None);
    assert!(
        left.is_empty(),
        "the machine has lab leftovers that `lab down` did not remove: {left:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
