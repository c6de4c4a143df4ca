//! `netmod demo`: the seed's story, unattended, on this machine.
//!
//! 1. Before — vanilla Mesos (`lab up --no-isolator`): four probes that all
//!    need host port 9000 on two agents; two run, two wait.
//! 2. Per-task IPs — `lab up` with netmod: every probe has its own address,
//!    all four listen on 9000, every pair reaches.
//! 3. Isolated — netgroups star-1 {A, B} and star-2 {C, D}: A↔B and C↔D
//!    only; the collector (both groups and public) sees all four.
//! 4. Policy — `netmod policy apply -f examples/demo-policy.yaml` against
//!    the lab's store, with every task left running: C↔D turn red (star-2's
//!    probes answer only the collector, on port 9000), A↔B stay, the probes
//!    lose the collector's page and the browser keeps it. The same tasks in
//!    the same containers before and after.
//!
//! At each step it prints what runs, what waits and why, the reachability
//! matrix read from the collector, and whether it matches the story. It
//! exits 0 only if all four match. The lab goes down at the end, on
//! failure and on Ctrl-C, unless `--keep`; the demo's policies are deleted
//! before it goes down, and stay (with the lab) under `--keep`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::{self, LabConfig, Routing, Topology, DEFAULT_FABRIC, OUTSIDE_PORT};
use crate::dns;
use crate::error::{fail, Context, LabError};
use crate::fabric;
use crate::http;
use crate::util;

/// The demo's files, the same ones `demo/` holds for the scripts.
pub const STARS_BEFORE: &str = include_str!("../../../demo/marathon/stars-before.json");
pub const STARS: &str = include_str!("../../../demo/marathon/stars.json");
pub const STARS_ISOLATED: &str = include_str!("../../../demo/marathon/stars-isolated.json");
pub const RESOURCE_FILES: [(&str, &str); 3] = [
    (
        "star-resources-before.json",
        include_str!("../../../demo/marathon/star-resources-before.json"),
    ),
    (
        "star-resources.json",
        include_str!("../../../demo/marathon/star-resources.json"),
    ),
    (
        "star-resources-isolated.json",
        include_str!("../../../demo/marathon/star-resources-isolated.json"),
    ),
];

/// The fourth scene's Calico policies, and their names.
pub const DEMO_POLICY: &str = include_str!("../../../examples/demo-policy.yaml");
pub const DEMO_POLICY_NAMES: [&str; 2] = ["demo-star-collector", "demo-star-probes"];

/// The collectors' fixed addresses in the per-task-IP scenes.
pub const COLLECTOR_ROUTED: &str = "192.168.255.253";
pub const COLLECTOR_ISOLATED: &str = "192.168.255.252";

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Leave the lab up at the end and print the visualizer URLs.
    #[arg(long)]
    pub keep: bool,
    /// Seconds to wait for each step before giving up.
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,
    /// netmod's datastore in the per-task-IP scenes: `etcd` runs the lab on
    /// an etcd server of its own (see `netmod lab up --store`).
    #[arg(long)]
    pub store: Option<String>,
    /// The fabric's range for the demo's labs (see `netmod lab up --fabric`).
    #[arg(long, default_value = DEFAULT_FABRIC)]
    pub fabric: String,
    /// `routed`: the agents on two subnets behind a router that knows no
    /// pool, with an "outside" web server beyond it (see `netmod lab up
    /// --topology`); the per-task-IP scene then also checks, from the
    /// tasks, that the outside answers (NAT), and what the router holds.
    #[arg(long, value_enum, default_value_t = Topology::Flat)]
    pub topology: Topology,
    /// With `--topology routed`: `vxlan` (default) or `bgp` (see `netmod
    /// lab up --routing`).
    #[arg(long, value_enum)]
    pub routing: Option<Routing>,
}

/// The four scenes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scene {
    Before,
    Routed,
    Isolated,
    /// Isolated, plus `examples/demo-policy.yaml`: only A↔B.
    Policy,
}

/// reach[from][to]: `None` when `from` gave the collector no answer.
pub type Matrix = BTreeMap<String, Option<BTreeMap<String, bool>>>;

/// Reads the matrix from a collector (`GET /resources` and `/responses`).
pub fn read_matrix(collector: &str) -> Result<Matrix, String> {
    let t = Duration::from_secs(3);
    let resources = http::get_json(&format!("{collector}/resources"), t)?;
    let url_to_id: BTreeMap<String, String> = resources["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["url"].as_str()?.to_string(),
                r["id"].as_str()?.to_string(),
            ))
        })
        .collect();
    let responses = http::get_json(&format!("{collector}/responses"), t)?;
    let mut m = Matrix::new();
    for id in url_to_id.values() {
        let row = responses["responses"][id]["json"]["status"]["targets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .filter_map(|x| {
                        let to = url_to_id.get(x["url"].as_str()?)?;
                        Some((to.clone(), x["reachable"].as_bool()?))
                    })
                    .collect()
            });
        m.insert(id.clone(), row);
    }
    Ok(m)
}

/// Whether a matrix tells the scene's story; the error says how it differs.
pub fn check(scene: Scene, m: &Matrix) -> Result<(), String> {
    let answering: BTreeSet<&String> = m
        .iter()
        .filter(|(_, r)| r.is_some())
        .map(|(k, _)| k)
        .collect();
    let all: BTreeSet<&String> = m.keys().collect();
    let expect = |from: &str, to: &str| -> bool {
        match scene {
            Scene::Before => answering.iter().any(|a| *a == to),
            Scene::Routed => true,
            Scene::Isolated => {
                let group = |p: &str| matches!(p, "A" | "B");
                group(from) == group(to)
            }
            // demo-star-probes hands star-1's probes back to their netgroup
            // and lets nobody but the collector reach star-2's.
            Scene::Policy => matches!(from, "A" | "B") && matches!(to, "A" | "B"),
        }
    };
    match scene {
        Scene::Before if answering.len() != 2 => {
            return Err(format!(
                "expected exactly two probes answering, got {}",
                answering.len()
            ))
        }
        Scene::Routed | Scene::Isolated | Scene::Policy if answering != all => {
            return Err(format!(
                "expected all four probes answering, got {}",
                answering
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        _ => {}
    }
    let mut wrong = Vec::new();
    for (from, row) in m {
        let Some(row) = row else { continue };
        for to in all.iter().filter(|t| **t != from) {
            let want = expect(from, to);
            match row.get(*to) {
                Some(&got) if got == want => {}
                Some(&got) => wrong.push(format!(
                    "{from}→{to} {}",
                    if got {
                        "reaches (should not)"
                    } else {
                        "does not reach (should)"
                    }
                )),
                None => wrong.push(format!("{from} does not probe {to}")),
            }
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join(", "))
    }
}

/// What differs between two matrices, one line per edge that changed
/// (`C→D ✓ → ✗`), and a line per probe that started or stopped answering.
pub fn changes(before: &Matrix, after: &Matrix) -> Vec<String> {
    let mark = |b: Option<bool>| match b {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "?",
    };
    let mut out = Vec::new();
    let ids: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for from in &ids {
        let row = |m: &Matrix| m.get(*from).cloned().flatten();
        match (row(before), row(after)) {
            (Some(b), Some(a)) => {
                for to in ids.iter().filter(|t| *t != from) {
                    let (was, is) = (b.get(*to).copied(), a.get(*to).copied());
                    if was != is {
                        out.push(format!("{from}→{to} {} → {}", mark(was), mark(is)));
                    }
                }
            }
            (Some(_), None) => out.push(format!("{from} no longer answers the collector")),
            (None, Some(_)) => out.push(format!("{from} now answers the collector")),
            (None, None) => {}
        }
    }
    out
}

/// The matrix as a small table.
pub fn render(m: &Matrix) -> String {
    let ids: Vec<&String> = m.keys().collect();
    let mut out = format!("{:>6}", "");
    for id in &ids {
        out += &format!(" {id:>2}");
    }
    out.push('\n');
    for from in &ids {
        out += &format!("{:>6}", format!("{from} →"));
        match &m[*from] {
            None => out += "   (no answer: not running)",
            Some(row) => {
                for to in &ids {
                    let c = if to == from {
                        "·"
                    } else {
                        match row.get(*to) {
                            Some(true) => "✓",
                            Some(false) => "✗",
                            None => "?",
                        }
                    };
                    out += &format!(" {c:>2}");
                }
            }
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------- running

struct Progress {
    tty: bool,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: std::io::stdout().is_terminal(),
            last: Instant::now(),
        }
    }
    /// A status line: rewritten in place on a terminal, every 5 s otherwise.
    fn tick(&mut self, started: Instant, line: &str) {
        let secs = started.elapsed().as_secs();
        if self.tty {
            print!("\r\x1b[K     … {line} [{secs}s]");
            let _ = std::io::stdout().flush();
        } else if self.last.elapsed() >= Duration::from_secs(5) {
            println!("     … {line} [{secs}s]");
            self.last = Instant::now();
        }
    }
    fn done(&self) {
        if self.tty {
            print!("\r\x1b[K");
            let _ = std::io::stdout().flush();
        }
    }
}

fn interrupted() -> Result<(), LabError> {
    if util::terminating() {
        return fail("interrupted");
    }
    Ok(())
}

/// `netmod lab [--name <lab>] ARGS`, for the demo's own lab.
fn lab_cmd(args: &[&str]) -> Result<(), LabError> {
    let lab = config::current();
    let name: &[&str] = if lab.is_default() {
        &[]
    } else {
        &["--name", lab.name()]
    };
    println!("  $ netmod lab {}", [name, args].concat().join(" "));
    let me = std::env::current_exe().context(|| "cannot find netmod-lab".into())?;
    let status = Command::new(me)
        .arg("lab")
        .args(["--name", lab.name()])
        .args(args)
        .status()
        .context(|| "cannot run netmod lab".into())?;
    if !status.success() {
        return fail(format!("netmod lab {} failed", args.join(" ")));
    }
    Ok(())
}

/// A URL of the demo lab's Marathon.
fn marathon(path: &str) -> Result<String, LabError> {
    Ok(format!("{}{path}", LabConfig::load()?.marathon_url()?))
}

/// The demo's group files name the default lab's star directory in their
/// `file://` URIs; another lab's apps fetch from that lab's own.
fn for_this_lab(body: &str, cfg: &LabConfig) -> String {
    let default_star = config::Instance::default_instance().run_dir().join("star");
    body.replace(
        &format!("file://{}/", default_star.display()),
        &format!("file://{}/", cfg.star_dir.display()),
    )
}

fn put_group(id: &str, file: &str, body: &str) -> Result<(), LabError> {
    let url = marathon(&format!("/v2/groups/{id}"))?;
    println!("  $ curl -X PUT {url} -d @demo/marathon/{file}");
    let body = for_this_lab(body, &LabConfig::load()?);
    let value: Value = serde_json::from_str(&body).context(|| format!("{file} is not JSON"))?;
    let (status, reply) =
        http::send_json("PUT", &url, &value, Duration::from_secs(10)).map_err(LabError::new)?;
    if status != 200 {
        return fail(format!("Marathon answered {status}: {reply}"));
    }
    println!("    {reply}");
    Ok(())
}

/// One app's line: what runs where, or why it waits.
struct AppView {
    id: String,
    running: usize,
    instances: u64,
    waiting: Option<String>,
    tasks: Vec<String>,
}

fn apps_view(group: &str) -> Result<Vec<AppView>, String> {
    let url = marathon("/v2/apps?embed=apps.tasks").map_err(|e| e.to_string())?;
    let v = http::get_json(&url, Duration::from_secs(3))?;
    let mut out = Vec::new();
    for a in v["apps"].as_array().into_iter().flatten() {
        let id = a["id"].as_str().unwrap_or("").to_string();
        if !id.starts_with(&format!("/{group}/")) {
            continue;
        }
        let tasks: Vec<String> = a["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let addr = match t["ipAddresses"].as_array().and_then(|l| l.first()) {
                    Some(ip) => format!("{} (own address)", ip["ipAddress"].as_str().unwrap_or("")),
                    None => format!("host ports {}", t["ports"]),
                };
                format!(
                    "{} on {}, {addr}",
                    t["state"].as_str().unwrap_or(""),
                    t["host"].as_str().unwrap_or("")
                )
            })
            .collect();
        out.push(AppView {
            running: a["tasksRunning"].as_u64().unwrap_or(0) as usize,
            instances: a["instances"].as_u64().unwrap_or(0),
            waiting: a["lab_waiting"]["reason"].as_str().map(str::to_string),
            id,
            tasks,
        });
    }
    Ok(out)
}

/// Waits until every app runs or waits for a stated reason, with
/// `want_running` tasks running; prints what runs and what waits.
fn wait_tasks(group: &str, want_running: usize, limit: Duration) -> Result<(), LabError> {
    let started = Instant::now();
    let mut p = Progress::new();
    loop {
        interrupted()?;
        let apps = apps_view(group).unwrap_or_default();
        let running: usize = apps.iter().map(|a| a.running).sum();
        let settled = apps
            .iter()
            .all(|a| a.running as u64 == a.instances || a.waiting.is_some());
        if running == want_running && settled && !apps.is_empty() {
            p.done();
            for a in &apps {
                if a.tasks.is_empty() {
                    println!(
                        "    {:<24} waits: {}",
                        a.id,
                        a.waiting.as_deref().unwrap_or("?")
                    );
                }
                for t in &a.tasks {
                    println!("    {:<24} {t}", a.id);
                }
            }
            return Ok(());
        }
        if started.elapsed() > limit {
            p.done();
            return fail(format!(
                "after {}s, {running} of the {want_running} expected tasks of /{group} run",
                limit.as_secs()
            ));
        }
        p.tick(started, &format!("{running}/{want_running} tasks running"));
        thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the collector's matrix tells the story, then confirms it a
/// full probe-and-collect round later (so "unreachable" is measured, not
/// merely "not probed yet").
fn wait_matrix(
    scene: Scene,
    collector: &str,
    limit: Duration,
) -> Result<Matrix, (String, Option<Matrix>)> {
    let started = Instant::now();
    let mut p = Progress::new();
    let mut last = None;
    let mut why = String::from("no answer from the collector yet");
    let mut matched_at: Option<Instant> = None;
    while started.elapsed() < limit {
        if util::terminating() {
            return Err(("interrupted".into(), last));
        }
        match read_matrix(collector) {
            Ok(m) => {
                match check(scene, &m) {
                    Ok(()) => {
                        let since = *matched_at.get_or_insert_with(Instant::now);
                        if since.elapsed() >= Duration::from_secs(5) {
                            p.done();
                            return Ok(m);
                        }
                        why = "matches; confirming over another probe round".into();
                    }
                    Err(e) => {
                        matched_at = None;
                        why = e;
                    }
                }
                last = Some(m);
            }
            Err(e) => why = e,
        }
        p.tick(started, &format!("reading {collector}/responses: {why}"));
        thread::sleep(Duration::from_millis(500));
    }
    p.done();
    Err((format!("after {}s: {why}", limit.as_secs()), last))
}

fn show_dns(cfg: &LabConfig, names: &[String]) {
    let Some(agent) = cfg.agents.first() else {
        return;
    };
    let server = SocketAddr::new(agent.ip.into(), 53);
    for n in names {
        match dns::resolve(server, n, Duration::from_secs(1)) {
            Ok((0, addrs)) => println!(
                "    {n} → {}",
                addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok((rcode, _)) => println!("    {n} → rcode {rcode}"),
            Err(e) => println!("    {n} → {e}"),
        }
    }
}

struct SceneSpec {
    scene: Scene,
    title: &'static str,
    story: &'static str,
    group: &'static str,
    file: &'static str,
    body: &'static str,
    running: usize,
}

fn play(spec: &SceneSpec, timeout: Duration) -> Result<(), LabError> {
    println!("\n== {}\n   {}", spec.title, spec.story);
    put_group(spec.group, spec.file, spec.body)?;
    println!("  What runs and what waits:");
    wait_tasks(spec.group, spec.running, timeout)?;
    let cfg = LabConfig::load()?;
    let collector = match spec.scene {
        Scene::Before => {
            let v = http::get_json(
                &marathon(&format!("/v2/apps/{}/collect", spec.group))?,
                Duration::from_secs(3),
            )
            .map_err(LabError::new)?;
            let host = v["app"]["tasks"][0]["host"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let ip = cfg
                .agents
                .iter()
                .find(|a| a.name == host)
                .map(|a| a.ip.to_string())
                .ok_or_else(|| LabError::new("the collector runs on no known agent"))?;
            format!("http://{ip}:9001")
        }
        Scene::Routed => format!("http://{COLLECTOR_ROUTED}:9001"),
        Scene::Isolated | Scene::Policy => format!("http://{COLLECTOR_ISOLATED}:9001"),
    };
    println!("  Names, from {}'s DNS:", cfg.agents[0].name);
    let names: Vec<String> = match spec.scene {
        Scene::Before => vec![
            "probe-a-star.marathon.mesos".into(),
            "collect-star.marathon.mesos".into(),
        ],
        _ => vec![
            format!("probe-a.{}.marathon.mesos", spec.group),
            format!("probe-c.{}.marathon.mesos", spec.group),
        ],
    };
    show_dns(&cfg, &names);
    println!("  The visualizer: {collector}/");
    println!("  Reachability (from {collector}/responses):");
    match wait_matrix(spec.scene, &collector, timeout) {
        Ok(m) => {
            for line in render(&m).lines() {
                println!("    {line}");
            }
            if spec.scene == Scene::Routed {
                if let Some(r) = &cfg.router {
                    across_the_router(&cfg, r, spec.group, timeout)?;
                }
            }
            println!("  ✔ matches the story");
            Ok(())
        }
        Err((why, last)) => {
            if let Some(m) = last {
                for line in render(&m).lines() {
                    println!("    {line}");
                }
            }
            println!("  ✘ does not match the story: {why}");
            fail(why)
        }
    }
}

/// `netmod-lab lab fetch URL`: GET, the body on stdout.
pub fn fetch(url: &str) -> Result<(), LabError> {
    let r = http::request("GET", url, None, Duration::from_secs(3)).map_err(LabError::new)?;
    if r.status != 200 {
        return fail(format!("{url} answered {}", r.status));
    }
    println!("{}", r.text());
    Ok(())
}

/// The pid of a process of a running task (found by its `MESOS_TASK_ID`
/// under the lab's sandboxes), to enter its network namespace.
fn task_pid(task_id: &str) -> Option<u32> {
    let id = format!("MESOS_TASK_ID={task_id}");
    let sandbox = format!("MESOS_SANDBOX={}/", config::sandbox_root().display());
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let vars: Vec<&[u8]> = env.split(|b| *b == 0).collect();
                vars.contains(&id.as_bytes())
                    && vars.iter().any(|v| v.starts_with(sandbox.as_bytes()))
            })
        })
        .collect();
    pids.sort();
    pids.first().copied()
}

/// What `netmod-lab lab fetch URL` gets from inside a task's network
/// namespace: the body, or why not.
fn fetch_from_task(pid: u32, url: &str) -> Result<String, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .arg(me)
        .args(["lab", "--name", config::current().name(), "fetch", url])
        .output()
        .map_err(|e| format!("cannot run nsenter: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Whether `dst` (as `ip -j route` shows it) lies inside `pool`.
fn in_pool(dst: &str, pool: &ipnet::Ipv4Net) -> bool {
    let net = if dst.contains('/') {
        dst.parse::<ipnet::Ipv4Net>()
    } else {
        format!("{dst}/32").parse()
    };
    net.is_ok_and(|n| fabric::overlaps(&n, pool))
}

/// Routed topology, after the per-task-IP scene: every probe reaches the
/// outside web server, which sees the probe's host's address (NAT); the
/// router holds no pool route (VXLAN) or exactly the hosts' blocks, from
/// BIRD (BGP).
fn across_the_router(
    cfg: &LabConfig,
    r: &config::Router,
    group: &str,
    timeout: Duration,
) -> Result<(), LabError> {
    let url = format!("http://{}:{OUTSIDE_PORT}/", r.outside_ip);
    println!("  Across the router: from each probe, {url} (outside every pool; the pool is --nat-outgoing):");
    let tasks =
        http::get_json(&marathon("/v2/tasks")?, Duration::from_secs(3)).map_err(LabError::new)?;
    let mut probes: Vec<&Value> = tasks["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["appId"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("/{group}/probe-")))
                && t["state"] == "TASK_RUNNING"
        })
        .collect();
    probes.sort_by_key(|t| t["appId"].as_str().unwrap_or("").to_string());
    if probes.len() != 4 {
        return fail(format!("expected 4 running probes, found {}", probes.len()));
    }
    let mut hosts_seen = BTreeSet::new();
    for t in probes {
        let id = t["id"].as_str().unwrap_or("");
        let host = t["host"].as_str().unwrap_or("");
        let addr = t["ipAddresses"][0]["ipAddress"].as_str().unwrap_or("?");
        let host_ip = cfg
            .agents
            .iter()
            .find(|a| a.name == host)
            .map(|a| a.ip.to_string())
            .ok_or_else(|| LabError::new(format!("{id} runs on no known agent ({host})")))?;
        let pid = task_pid(id).ok_or_else(|| LabError::new(format!("no process of {id}")))?;
        let body = fetch_from_task(pid, &url)
            .map_err(|e| LabError::new(format!("{id} ({addr} on {host}) → {url}: {e}")))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|_| LabError::new(format!("{url} answered {body:?}")))?;
        let you = v["you"].as_str().unwrap_or("");
        println!(
            "    {:<12} {addr:<16} on {host:<20} → {body}",
            t["appId"].as_str().unwrap_or("").trim_start_matches('/')
        );
        if you != host_ip {
            return fail(format!(
                "the outside saw {id} as {you:?}, not as its host {host_ip} (no NAT?)"
            ));
        }
        hosts_seen.insert(host.to_string());
    }
    println!(
        "    the outside sees each probe as its host's address (NAT), from {} host(s) on both sides of the router",
        hosts_seen.len()
    );
    let pool: ipnet::Ipv4Net = cfg
        .pool
        .as_deref()
        .unwrap_or("0.0.0.0/0")
        .parse()
        .map_err(|_| LabError::new("the lab's pool is not an IPv4 CIDR"))?;
    let show = |routes: &[Value]| -> Vec<String> {
        routes
            .iter()
            .map(|x| {
                let mut line = x["dst"].as_str().unwrap_or("").to_string();
                if let Some(gw) = x["gateway"].as_str() {
                    line += &format!(" via {gw}");
                }
                if let Some(p) = x["protocol"].as_str() {
                    line += &format!(" proto {p}");
                }
                line
            })
            .collect()
    };
    match r.routing {
        Routing::Vxlan => {
            let routes = fabric::routes_in(&r.ns)?;
            println!("  The router's routes ({}):", r.ns);
            for l in show(&routes) {
                println!("    {l}");
            }
            let pooled: Vec<String> = show(
                &routes
                    .iter()
                    .filter(|x| in_pool(x["dst"].as_str().unwrap_or(""), &pool))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            if !pooled.is_empty() {
                return fail(format!("the router routes the pool: {pooled:?}"));
            }
            println!("    no route into {pool}: the pool crossed it inside VXLAN");
        }
        Routing::Bgp => {
            // The hosts' blocks (netmod's blackholes on each host), and the
            // addresses of their tasks outside those blocks (the collectors'
            // fixed ones), which each host announces one by one.
            let blocks = || -> Result<BTreeMap<String, String>, LabError> {
                let mut out = BTreeMap::new();
                for a in &cfg.agents {
                    let routes = fabric::routes_in(&a.name)?;
                    let own: Vec<ipnet::Ipv4Net> = routes
                        .iter()
                        .filter(|x| x["type"] == "blackhole")
                        .filter_map(|x| x["dst"].as_str()?.parse().ok())
                        .filter(|b: &ipnet::Ipv4Net| pool.contains(b))
                        .collect();
                    for b in &own {
                        out.insert(b.to_string(), a.ip.to_string());
                    }
                    for x in &routes {
                        let dst = x["dst"].as_str().unwrap_or("");
                        let stray = x["dev"].as_str().is_some_and(|d| d.starts_with("nmv"))
                            && dst.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| {
                                pool.contains(&ip) && !own.iter().any(|b| b.contains(&ip))
                            });
                        if stray {
                            out.insert(dst.to_string(), a.ip.to_string());
                        }
                    }
                }
                Ok(out)
            };
            let learned = || -> Result<(BTreeMap<String, String>, Vec<String>), LabError> {
                let routes = fabric::routes_in(&r.ns)?;
                let mut bird = BTreeMap::new();
                let mut other = Vec::new();
                for x in routes
                    .iter()
                    .filter(|x| in_pool(x["dst"].as_str().unwrap_or(""), &pool))
                {
                    if x["protocol"] == "bird" {
                        bird.insert(
                            x["dst"].as_str().unwrap_or("").to_string(),
                            x["gateway"].as_str().unwrap_or("").to_string(),
                        );
                    } else {
                        other.extend(show(std::slice::from_ref(x)));
                    }
                }
                Ok((bird, other))
            };
            let started = Instant::now();
            let (want, (have, other)) = loop {
                let (want, got) = (blocks()?, learned()?);
                if (want == got.0 && got.1.is_empty()) || started.elapsed() > timeout {
                    break (want, got);
                }
                thread::sleep(Duration::from_millis(500));
            };
            println!("  The router's pool routes ({}), from BIRD:", r.ns);
            for (dst, gw) in &have {
                println!("    {dst} via {gw} proto bird");
            }
            if !other.is_empty() {
                return fail(format!("the router routes the pool otherwise: {other:?}"));
            }
            if have != want {
                return fail(format!(
                    "the router holds {have:?}, the hosts' blocks and addresses outside them are {want:?} (→ host)"
                ));
            }
            println!(
                "    exactly the hosts' {} block(s) and addresses outside them, each via its host: learned by BGP",
                want.len()
            );
        }
    }
    Ok(())
}

/// `netmod --store <the lab's store> ARGS` (the netmod the lab runs), the
/// command printed first when `show`; its exit status and output.
fn netmod_in(cfg: &LabConfig, show: bool, args: &[&str]) -> Result<(i32, String), LabError> {
    if show {
        println!(
            "  $ netmod --store {} {}",
            crate::lab::shell_quote(&cfg.store),
            args.join(" ")
        );
    }
    let out = Command::new(&cfg.netmod)
        .arg("--store")
        .arg(&cfg.store)
        .args(args)
        .output()
        .context(|| format!("cannot run {}", cfg.netmod.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

fn print_indented(text: &str) {
    for line in text.trim_end().lines() {
        println!("    {line}");
    }
}

fn netmod(cfg: &LabConfig, args: &[&str]) -> Result<(i32, String), LabError> {
    netmod_in(cfg, true, args)
}

/// Deletes those of the demo's policies the lab's store holds (a store the
/// user named outlives the lab, and the next demo's isolated scene must not
/// start with them).
fn delete_demo_policies(cfg: &LabConfig, why: &str) -> Result<(), LabError> {
    let mut said = false;
    for name in DEMO_POLICY_NAMES {
        if netmod_in(cfg, false, &["policy", "get", name])?.0 != 0 {
            continue;
        }
        if !std::mem::replace(&mut said, true) {
            println!("  {why}");
        }
        let (code, out) = netmod(cfg, &["policy", "delete", name])?;
        print_indented(&out);
        if code != 0 {
            return fail(format!("netmod policy delete {name} failed"));
        }
    }
    Ok(())
}

/// One running task as Marathon and Mesos see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TaskRef {
    task: String,
    started: String,
    container: String,
}

/// App id → its running task (Marathon's task id and start time) and the
/// container Mesos runs it in, for every app of `/group`.
fn running_tasks(group: &str) -> Result<BTreeMap<String, TaskRef>, LabError> {
    let t = Duration::from_secs(3);
    let cfg = LabConfig::load()?;
    let state = http::get_json(&format!("{}/master/state.json", cfg.mesos_url()?), t)
        .map_err(LabError::new)?;
    let containers: BTreeMap<&str, &str> = state["frameworks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|f| f["tasks"].as_array().into_iter().flatten())
        .filter_map(|t| Some((t["id"].as_str()?, t["container_id"].as_str()?)))
        .collect();
    let apps = http::get_json(&marathon("/v2/apps?embed=apps.tasks")?, t).map_err(LabError::new)?;
    let mut out = BTreeMap::new();
    for a in apps["apps"].as_array().into_iter().flatten() {
        let id = a["id"].as_str().unwrap_or("");
        if !id.starts_with(&format!("/{group}/")) {
            continue;
        }
        for task in a["tasks"].as_array().into_iter().flatten() {
            if task["state"] != "TASK_RUNNING" {
                continue;
            }
            let task_id = task["id"].as_str().unwrap_or("").to_string();
            out.insert(
                id.to_string(),
                TaskRef {
                    container: containers.get(task_id.as_str()).unwrap_or(&"?").to_string(),
                    started: task["startedAt"].as_str().unwrap_or("").to_string(),
                    task: task_id,
                },
            );
        }
    }
    Ok(out)
}

/// The fourth scene: Calico policy applied to the running isolated scene.
fn play_policy(title: &str, timeout: Duration) -> Result<(), LabError> {
    let group = "star-isolated";
    let collector = format!("http://{COLLECTOR_ISOLATED}:9001");
    println!("\n== {title}");
    println!(
        "   Two Calico GlobalNetworkPolicies, applied while every task keeps running: the \
         collector may reach the probes only on their probe port (9000), the probes may not \
         open the collector's page (9001), star-1's probes keep their netgroup and star-2's \
         answer only the collector. A↔B stay, C↔D turn red; the page stays yours."
    );
    let cfg = LabConfig::load()?;
    let tasks_before = running_tasks(group)?;
    if tasks_before.len() != 5 {
        return fail(format!(
            "expected the isolated scene's 5 tasks running, found {}",
            tasks_before.len()
        ));
    }
    let before = read_matrix(&collector).map_err(LabError::new)?;
    let file = cfg.run_dir.join("demo-policy.yaml");
    std::fs::write(&file, DEMO_POLICY).context(|| format!("cannot write {}", file.display()))?;
    println!("  examples/demo-policy.yaml, as {}:", file.display());
    let (code, out) = netmod(
        &cfg,
        &["policy", "apply", "-f", &file.display().to_string()],
    )?;
    print_indented(&out);
    if code != 0 {
        return fail("netmod policy apply failed");
    }
    println!("  The visualizer (no reload needed): {collector}/");
    println!("  Reachability (from {collector}/responses):");
    let after = match wait_matrix(Scene::Policy, &collector, timeout) {
        Ok(m) => m,
        Err((why, last)) => {
            if let Some(m) = last {
                for line in render(&m).lines() {
                    println!("    {line}");
                }
            }
            println!("  ✘ does not match the story: {why}");
            return fail(why);
        }
    };
    for line in render(&after).lines() {
        println!("    {line}");
    }
    println!("  What changed since the isolated scene:");
    let changed = changes(&before, &after);
    if changed.is_empty() {
        println!("    nothing");
    }
    for c in &changed {
        println!("    {c}");
    }
    println!("  Why, from the policies:");
    let why = [
        ("probe-c", "probe-d", "9000/tcp", false),
        ("probe-a", "probe-b", "9000/tcp", true),
        ("collect", "probe-c", "9000/tcp", true),
        ("probe-a", "collect", "9001/tcp", false),
    ];
    for (from, to, port, allowed) in why {
        let (code, out) = netmod(
            &cfg,
            &[
                "explain",
                &format!("{from}.{group}"),
                &format!("{to}.{group}"),
                "--port",
                port,
            ],
        )?;
        // The verdict line; the rest (the hops) is `netmod explain`'s to show.
        print_indented(out.lines().next().unwrap_or(""));
        if code != if allowed { 0 } else { 3 } {
            print_indented(out.split_once('\n').map_or("", |(_, rest)| rest));
            return fail(format!(
                "netmod explain {from} {to} --port {port}: exit status {code}, expected {}",
                if allowed {
                    "0 (allowed)"
                } else {
                    "3 (dropped)"
                }
            ));
        }
    }
    let page = http::request(
        "GET",
        &format!("{collector}/"),
        None,
        Duration::from_secs(3),
    )
    .map_err(LabError::new)?;
    if page.status != 200 {
        return fail(format!(
            "{collector}/ answered {} to this machine",
            page.status
        ));
    }
    println!(
        "  {collector}/ still answers this machine (your browser): {}",
        page.status
    );
    let tasks_after = running_tasks(group)?;
    if tasks_after != tasks_before {
        return fail(format!(
            "tasks changed under the policy: before {tasks_before:?}, after {tasks_after:?}"
        ));
    }
    println!("  No task restarted: the same tasks in the same containers:");
    for (app, t) in &tasks_after {
        println!(
            "    {app:<24} {} (container {}, since {})",
            t.task, t.container, t.started
        );
    }
    println!("  ✔ matches the story");
    Ok(())
}

/// `netmod demo`.
pub fn run(args: &DemoArgs) -> Result<(), LabError> {
    if !util::is_root() {
        return fail("the demo builds network namespaces: run it as root");
    }
    if LabConfig::path().exists() {
        return fail("a lab is already up; the demo builds its own: run `netmod lab down` first");
    }
    util::catch_termination();
    let timeout = Duration::from_secs(args.timeout);
    println!(
        "netmod demo: the seed's story on this machine — before, per-task IPs, isolated — \
         then Calico policy on the running tasks."
    );
    let urls = || -> String {
        LabConfig::load()
            .and_then(|c| {
                Ok(format!(
                    "Marathon: {}/   Mesos: {}/",
                    c.marathon_url()?,
                    c.mesos_url()?
                ))
            })
            .unwrap_or_else(|e| e.to_string())
    };
    let scenes = [
        SceneSpec {
            scene: Scene::Before,
            title: "1/4 Before: vanilla Mesos, host ports only",
            story: "Four probes must each listen on port 9000; two agents. Without a network \
                    isolator only one fits per agent: two run, two wait, and the two that run \
                    reach each other.",
            group: "star",
            file: "stars-before.json",
            body: STARS_BEFORE,
            running: 3,
        },
        SceneSpec {
            scene: Scene::Routed,
            title: "2/4 Per-task IPs: netmod gives every task its own address",
            story: "All four probes get addresses from 192.168.0.0/16 and all listen on 9000, two \
                    per agent; all are in netgroup public, so every pair reaches. The collector \
                    has the fixed address 192.168.255.253.",
            group: "star",
            file: "stars.json",
            body: STARS,
            running: 5,
        },
        SceneSpec {
            scene: Scene::Isolated,
            title: "3/4 Isolated: netgroups decide who reaches whom",
            story: "A,B in star-1, C,D in star-2; the collector (192.168.255.252) in star-1, \
                    star-2 and public. A↔B and C↔D only; the collector reaches all four.",
            group: "star-isolated",
            file: "stars-isolated.json",
            body: STARS_ISOLATED,
            running: 5,
        },
    ];
    const POLICY_TITLE: &str = "4/4 Policy: Calico GlobalNetworkPolicy on the running tasks";
    let mut results: Vec<(&str, Result<(), String>)> = Vec::new();
    let outcome = (|| -> Result<(), LabError> {
        let topology = match args.topology {
            Topology::Flat => "flat",
            Topology::Routed => "routed",
        };
        let routing = args.routing.map(|r| r.to_string());
        let mut shape: Vec<&str> = vec!["--fabric", &args.fabric, "--topology", topology];
        if args.topology == Topology::Routed {
            println!(
                "\nThe fabric is routed: agent 1 on the bridge's subnet, agent 2 on a second \
                 subnet behind a router that holds no pool route ({}), and an outside web \
                 server beyond the router.",
                match args.routing.unwrap_or_default() {
                    Routing::Vxlan => "VXLAN carries the pool across it",
                    Routing::Bgp => "it learns the hosts' blocks by BGP",
                }
            );
        }
        println!("\n-- the \"before\" cluster");
        lab_cmd(&[&["up", "--no-isolator"], shape.as_slice()].concat())?;
        println!("  {}", urls());
        let r = play(&scenes[0], timeout);
        results.push((
            scenes[0].title,
            r.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        ));
        interrupted()?;
        lab_cmd(&["down"])?;
        println!("\n-- the cluster with netmod");
        if let Some(r) = &routing {
            shape.extend(["--routing", r.as_str()]);
        }
        if let Some(store) = args.store.as_deref() {
            shape.extend(["--store", store]);
        }
        lab_cmd(&[&["up"], shape.as_slice()].concat())?;
        println!("  {}", urls());
        // A store the user named may hold the policies of a kept demo.
        delete_demo_policies(
            &LabConfig::load()?,
            "The store holds the demo's policies (a kept demo's): the scenes start without them.",
        )?;
        for s in &scenes[1..] {
            interrupted()?;
            let r = play(s, timeout);
            results.push((s.title, r.map_err(|e| e.to_string())));
        }
        interrupted()?;
        let r = play_policy(POLICY_TITLE, timeout);
        results.push((POLICY_TITLE, r.map_err(|e| e.to_string())));
        Ok(())
    })();
    let kept = args.keep && Path::new(&LabConfig::path()).exists();
    if kept {
        println!("\nThe lab stays up (--keep):");
        println!("  {}", urls());
        println!("  visualizer http://{COLLECTOR_ROUTED}:9001/   (per-task IPs)");
        println!(
            "  visualizer http://{COLLECTOR_ISOLATED}:9001/   (isolated, with the demo's policies)"
        );
        println!(
            "  the isolated scene again: netmod policy delete {}; netmod policy delete {}",
            DEMO_POLICY_NAMES[0], DEMO_POLICY_NAMES[1]
        );
        let lab = config::current();
        if lab.is_default() {
            println!("  remove it with: netmod lab down");
        } else {
            println!("  remove it with: netmod lab --name {} down", lab.name());
        }
    } else {
        println!();
        if let Ok(cfg) = LabConfig::load() {
            if cfg.isolator {
                if let Err(e) =
                    delete_demo_policies(&cfg, "The demo's policies go before the lab does.")
                {
                    eprintln!("netmod demo: {e}");
                }
            }
        }
        if let Err(e) = lab_cmd(&["down"]) {
            eprintln!("netmod demo: {e}");
        }
    }
    println!("\nSummary:");
    for (title, r) in &results {
        match r {
            Ok(()) => println!("  ✔ {title}"),
            Err(e) => println!("  ✘ {title}: {e}"),
        }
    }
    let verdict = if util::terminating() {
        fail("interrupted")
    } else if let Err(e) = outcome {
        Err(e)
    } else if results.len() == 4 && results.iter().all(|(_, r)| r.is_ok()) {
        println!("All four scenes match the story (the seed's three, then the policy).");
        Ok(())
    } else {
        fail("the demo does not match the seed's story (see above)")
    };
    // The kept lab's store, last: `eval` the line and every netmod command
    // sees the lab's endpoints.
    if kept {
        if let Ok(cfg) = LabConfig::load() {
            println!();
            crate::lab::print_store_export(&cfg);
        }
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row<'a> = (&'a str, Option<&'a [(&'a str, bool)]>);

    fn m(rows: &[Row]) -> Matrix {
        rows.iter()
            .map(|(k, r)| {
                (
                    k.to_string(),
                    r.map(|r| r.iter().map(|(t, b)| (t.to_string(), *b)).collect()),
                )
            })
            .collect()
    }

    #[test]
    fn stories() {
        let before = m(&[
            ("A", Some(&[("B", true), ("C", false), ("D", false)])),
            ("B", Some(&[("A", true), ("C", false), ("D", false)])),
            ("C", None),
            ("D", None),
        ]);
        assert!(check(Scene::Before, &before).is_ok());
        assert!(check(Scene::Routed, &before)
            .unwrap_err()
            .contains("all four"));
        let all = |b: bool| {
            let ids = ["A", "B", "C", "D"];
            ids.iter()
                .map(|f| {
                    let row = ids
                        .iter()
                        .filter(|t| *t != f)
                        .map(|t| {
                            (
                                t.to_string(),
                                b || (matches!(*f, "A" | "B") == matches!(*t, "A" | "B")),
                            )
                        })
                        .collect();
                    (f.to_string(), Some(row))
                })
                .collect::<Matrix>()
        };
        assert!(check(Scene::Routed, &all(true)).is_ok());
        assert!(check(Scene::Isolated, &all(false)).is_ok());
        let e = check(Scene::Isolated, &all(true)).unwrap_err();
        assert!(e.contains("A→C reaches (should not)"), "{e}");
        assert!(check(Scene::Routed, &all(false))
            .unwrap_err()
            .contains("A→C does not reach"));
        let r = render(&before);
        assert!(r.contains("A →  ·  ✓  ✗  ✗"), "{r}");
        assert!(r.contains("(no answer"));
    }

    /// A matrix of all four probes, answering, `reach(from, to)` per edge.
    fn full(reach: impl Fn(&str, &str) -> bool) -> Matrix {
        let ids = ["A", "B", "C", "D"];
        ids.iter()
            .map(|f| {
                let row = ids
                    .iter()
                    .filter(|t| *t != f)
                    .map(|t| (t.to_string(), reach(f, t)))
                    .collect();
                (f.to_string(), Some(row))
            })
            .collect()
    }

    #[test]
    fn the_policy_scene_keeps_only_a_and_b() {
        let star1 = |p: &str| matches!(p, "A" | "B");
        let isolated = full(|f, t| star1(f) == star1(t));
        let policy = full(|f, t| star1(f) && star1(t));
        assert!(check(Scene::Policy, &policy).is_ok());
        assert!(check(Scene::Isolated, &policy).is_err());
        // The isolated matrix is what the policy scene starts from: C↔D
        // must turn red before it matches.
        let e = check(Scene::Policy, &isolated).unwrap_err();
        assert_eq!(e, "C→D reaches (should not), D→C reaches (should not)");
        // A↔B must stay: the policy hands star-1 back to its netgroup.
        let e = check(Scene::Policy, &full(|_, _| false)).unwrap_err();
        assert_eq!(
            e,
            "A→B does not reach (should), B→A does not reach (should)"
        );
        // Nothing the netgroups forbid may open up.
        let e = check(
            Scene::Policy,
            &full(|f, t| (star1(f) && star1(t)) || (f, t) == ("C", "A")),
        )
        .unwrap_err();
        assert_eq!(e, "C→A reaches (should not)");
        // A probe the collector can no longer read is a failure, not red.
        let mut silent = policy.clone();
        silent.insert("C".into(), None);
        assert!(check(Scene::Policy, &silent)
            .unwrap_err()
            .contains("all four"));
        // What changed, as the demo prints it.
        assert_eq!(changes(&isolated, &policy), ["C→D ✓ → ✗", "D→C ✓ → ✗"]);
        assert!(changes(&policy, &policy).is_empty());
        assert_eq!(
            changes(&policy, &silent),
            ["C no longer answers the collector"]
        );
    }

    #[test]
    fn the_demo_policy_file_names_its_policies_and_the_lab_labels() {
        for name in DEMO_POLICY_NAMES {
            assert!(DEMO_POLICY.contains(&format!("  name: {name}\n")), "{name}");
        }
        assert_eq!(DEMO_POLICY.matches("kind: GlobalNetworkPolicy").count(), 2);
        // The lab's labels: `app` is the Marathon app id of the isolated
        // scene's group.
        assert!(DEMO_POLICY.contains("app == '/star-isolated/collect'"));
        assert!(DEMO_POLICY.contains("app starts with '/star-isolated/probe-'"));
        let g: Value = serde_json::from_str(STARS_ISOLATED).unwrap();
        let ids: Vec<&str> = g["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["collect", "probe-a", "probe-b", "probe-c", "probe-d"]);
        assert_eq!(g["id"], "/star-isolated");
    }

    #[test]
    fn another_lab_fetches_from_its_own_star_directory() {
        let mut cfg: LabConfig = serde_json::from_value(serde_json::json!({
            "name": "t1", "run_id": "x", "run_dir": "/run/netmod-lab-t1", "fabric": "10.9.0.0/24",
            "bridge": "t1-br0", "bridge_ip": "10.9.0.1", "agents": [], "pool": null,
            "isolator": false, "store": "s", "store_owned": true, "netmod": "/n", "lab_exe": "/l",
            "star_dir": "/run/netmod-lab-t1/star", "agent_cpus": 1.0, "agent_mem": 1.0,
            "created_at": 0.0, "listen": {"marathon": 0, "mesos": 0, "fabric": 0}, "ports": null
        }))
        .unwrap();
        let body = for_this_lab(STARS, &cfg);
        assert!(body.contains("\"file:///run/netmod-lab-t1/star/star-resources.json\""));
        assert!(!body.contains("/run/netmod-lab/"));
        cfg.star_dir = "/run/netmod-lab/star".into();
        assert_eq!(for_this_lab(STARS, &cfg), STARS);
    }

    #[test]
    fn embedded_files_are_the_seed_shape() {
        for body in [STARS_BEFORE, STARS, STARS_ISOLATED] {
            let v: Value = serde_json::from_str(body).unwrap();
            let g = crate::marathon::parse_group(&v, v["id"].as_str().unwrap()).unwrap();
            assert_eq!(g.apps.len(), 5);
        }
        for (_, text) in RESOURCE_FILES {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(v.as_array().unwrap().len(), 4);
        }
    }
}
