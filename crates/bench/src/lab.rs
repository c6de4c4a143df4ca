//! `netmod bench lab`: the lab measured, written to `bench/results/lab.md`.
//!
//! - time from `PUT /v2/groups/star` (the per-task-IP demo group) to all
//!   five tasks running, and to every pair reachable as the collector sees it;
//! - time to scale one `ipAddress` app from 1 to N instances (all running,
//!   each with its own address), against the same app on host networking in
//!   a lab without the isolator (the baseline: what netmod adds per launch);
//! - memory and CPU of the lab's processes while idle with those tasks up.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use netmod_lab::config::{LabConfig, MARATHON_PORT};
use netmod_lab::demo::{check, read_matrix, Scene, STARS};
use netmod_lab::error::{fail, Context, LabError};
use netmod_lab::http;
use netmod_lab::procs;
use netmod_lab::util;

#[derive(Debug)]
pub struct BenchArgs {
    /// Where to write the results.
    pub out: PathBuf,
    /// Instances to scale the ipAddress app to.
    pub scale: u32,
    /// Seconds of idle sampling for memory and CPU.
    pub idle_secs: u64,
}

fn marathon(path: &str) -> String {
    format!("http://127.0.0.1:{MARATHON_PORT}{path}")
}

fn lab(args: &[&str]) -> Result<(), LabError> {
    // The default lab, run by the netmod-lab binary installed beside us.
    let me = std::env::current_exe()
        .context(|| "cannot find netmod-bench".into())?
        .with_file_name("netmod-lab");
    let out = Command::new(me)
        .arg("lab")
        .args(args)
        .output()
        .context(|| "cannot run netmod lab".into())?;
    if !out.status.success() {
        return fail(format!(
            "netmod lab {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn running(prefix: &str) -> Vec<Value> {
    http::get_json(&marathon("/v2/tasks"), Duration::from_secs(5))
        .map(|v| {
            v["tasks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|t| {
                    t["appId"].as_str().is_some_and(|a| a.starts_with(prefix))
                        && t["state"] == "TASK_RUNNING"
                })
                .collect()
        })
        .unwrap_or_default()
}

fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, LabError> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Ok(v);
        }
        thread::sleep(Duration::from_millis(20));
    }
    fail(format!(
        "timed out after {}s waiting for {what}",
        limit.as_secs()
    ))
}

fn put(path: &str, body: &Value) -> Result<(), LabError> {
    let (status, reply) = http::send_json("PUT", &marathon(path), body, Duration::from_secs(10))
        .map_err(LabError::new)?;
    if status != 200 {
        return fail(format!("PUT {path}: {status} {reply}"));
    }
    Ok(())
}

/// Scales an app from 1 to `n`; returns (seconds, per-task staged→running
/// p50 and max in ms).
fn scale(app: &Value, n: u32, own_ip: bool) -> Result<(f64, f64, f64), LabError> {
    let id = app["id"].as_str().unwrap_or("/bench/scale").to_string();
    put(&format!("/v2/apps{id}"), app)?;
    wait("the first instance", Duration::from_secs(60), || {
        (running(&id).len() == 1).then_some(())
    })?;
    let t0 = Instant::now();
    put(&format!("/v2/apps{id}"), &json!({ "instances": n }))?;
    let tasks = wait(
        &format!("{n} instances running"),
        Duration::from_secs(180),
        || {
            let t = running(&id);
            (t.len() == n as usize).then_some(t)
        },
    )?;
    let secs = t0.elapsed().as_secs_f64();
    if own_ip {
        let addrs: BTreeSet<String> = tasks
            .iter()
            .filter_map(|t| {
                t["ipAddresses"][0]["ipAddress"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        if addrs.len() != n as usize {
            return fail(format!("{} distinct addresses for {n} tasks", addrs.len()));
        }
    }
    let mut lat: Vec<f64> = tasks
        .iter()
        .filter_map(|t| {
            let staged = parse_iso(t["stagedAt"].as_str()?)?;
            let started = parse_iso(t["startedAt"].as_str()?)?;
            Some((started - staged) * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let p50 = lat.get(lat.len() / 2).copied().unwrap_or(0.0);
    let max = lat.last().copied().unwrap_or(0.0);
    Ok((secs, p50, max))
}

/// `2026-11-25T12:00:00.123Z` → unix seconds (the lab's own format).
fn parse_iso(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

/// (name, pid) of the lab's daemons.
fn daemons() -> Vec<(String, u32)> {
    procs::recorded()
}

/// Samples RSS and CPU of the daemons and of the tasks over `secs`.
fn idle(secs: u64) -> Vec<(String, u64, f64)> {
    let tick = procs::ticks_per_second() as f64;
    let mut groups: Vec<(String, Vec<u32>)> =
        daemons().into_iter().map(|(n, p)| (n, vec![p])).collect();
    groups.push(("tasks (all)".into(), procs::task_pids()));
    let before: Vec<u64> = groups
        .iter()
        .map(|(_, ps)| {
            ps.iter()
                .filter_map(|p| procs::usage(*p))
                .map(|u| u.1)
                .sum()
        })
        .collect();
    thread::sleep(Duration::from_secs(secs));
    groups
        .iter()
        .zip(before)
        .map(|((name, ps), b)| {
            let (rss, ticks) = ps
                .iter()
                .filter_map(|p| procs::usage(*p))
                .fold((0, 0), |acc, u| (acc.0 + u.0, acc.1 + u.1));
            let cpu = (ticks.saturating_sub(b)) as f64 / tick / secs as f64 * 100.0;
            (format!("{name} ({} process(es))", ps.len()), rss, cpu)
        })
        .collect()
}

fn machine() -> String {
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let build = if std::env::current_exe()
        .map(|p| p.display().to_string().contains("/release/"))
        .unwrap_or(false)
    {
        "release"
    } else {
        "debug"
    };
    format!(
        "Measured {} UTC on {cores} cores, kernel {}, {build} build.",
        &util::iso(util::unix_now())[..16].replace('T', " "),
        kernel.trim()
    )
}

fn scale_app(id: &str, own_ip: bool) -> Value {
    let mut app = json!({
        "id": id, "cmd": "exec sleep 100000", "cpus": 0.01, "mem": 8, "instances": 1,
    });
    if own_ip {
        app["ipAddress"] = json!({"groups": ["bench"]});
    } else {
        app["ports"] = json!([0]);
    }
    app
}

/// `netmod bench lab`.
pub fn run(args: &BenchArgs) -> Result<(), LabError> {
    if LabConfig::path().exists() {
        return fail("a lab is up: the benchmark builds its own (run `netmod lab down` first)");
    }
    let result = measure(args);
    let _ = lab(&["down"]);
    let report = result?;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, &report)
        .context(|| format!("cannot write {}", args.out.display()))?;
    print!("{report}");
    println!("\nwritten to {}", args.out.display());
    Ok(())
}

fn measure(args: &BenchArgs) -> Result<String, LabError> {
    let n = args.scale;
    // Baseline: the same scale-up on host networking, no isolator.
    println!("baseline: lab without the isolator, scaling a host-network app to {n}");
    let t = Instant::now();
    lab(&["up", "--no-isolator"])?;
    let up_plain = t.elapsed().as_secs_f64();
    let (base_secs, base_p50, base_max) = scale(&scale_app("/bench/scale", false), n, false)?;
    let t = Instant::now();
    lab(&["down"])?;
    let down_plain = t.elapsed().as_secs_f64();

    println!("lab with netmod: the per-task-IP demo group");
    let t = Instant::now();
    lab(&["up"])?;
    let up_netmod = t.elapsed().as_secs_f64();
    let group: Value = serde_json::from_str(STARS).expect("embedded JSON");
    let t0 = Instant::now();
    put("/v2/groups/star", &group)?;
    wait("five tasks running", Duration::from_secs(60), || {
        (running("/star/").len() == 5).then_some(())
    })?;
    let to_running = t0.elapsed().as_secs_f64();
    wait("every pair reachable", Duration::from_secs(60), || {
        read_matrix("http://192.168.255.253:9001")
            .ok()
            .filter(|m| check(Scene::Routed, m).is_ok())
    })?;
    let to_reachable = t0.elapsed().as_secs_f64();
    println!("idle with the five tasks up: sampling {}s", args.idle_secs);
    let idle5 = idle(args.idle_secs);

    println!("scaling an ipAddress app from 1 to {n}");
    let (secs, p50, max) = scale(&scale_app("/bench/scale", true), n, true)?;
    println!("idle with {} tasks up: sampling {}s", n + 5, args.idle_secs);
    let idle_n = idle(args.idle_secs);
    let t = Instant::now();
    lab(&["down"])?;
    let down_netmod = t.elapsed().as_secs_f64();

    let mut md = String::new();
    let _ = writeln!(md, "# Lab benchmark\n\n{}\n", machine());
    let _ = writeln!(
        md,
        "| measurement | lab with netmod | baseline | ratio |\n|---|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| `PUT /v2/groups/star` → all 5 tasks running | {to_running:.2} s | - | - |"
    );
    let _ = writeln!(
        md,
        "| `PUT /v2/groups/star` → every pair reachable (collector's view; probes every 2 s, collector every 2 s) | {to_reachable:.2} s | - | - |"
    );
    let _ = writeln!(
        md,
        "| scale one app 1 → {n}, all running (own addresses, all distinct) | {secs:.2} s | host network, no isolator: {base_secs:.2} s | {:.2}x |",
        secs / base_secs.max(1e-9)
    );
    let _ = writeln!(
        md,
        "| per task, staged → running, p50 (while scaling) | {p50:.0} ms | {base_p50:.0} ms | {:.2}x |",
        p50 / base_p50.max(1e-9)
    );
    let _ = writeln!(
        md,
        "| per task, staged → running, max (while scaling) | {max:.0} ms | {base_max:.0} ms | {:.2}x |",
        max / base_max.max(1e-9)
    );
    let _ = writeln!(
        md,
        "| `lab up` (2 agents) | {up_netmod:.2} s | no isolator: {up_plain:.2} s | {:.2}x |",
        up_netmod / up_plain.max(1e-9)
    );
    let _ = writeln!(md, "| `lab down` (after the runs above) | {down_netmod:.2} s | no isolator: {down_plain:.2} s | {:.2}x |", down_netmod / down_plain.max(1e-9));
    for (title, rows) in [
        ("Idle, with the five demo tasks up", &idle5),
        (&*format!("Idle, with {} tasks up", n + 5), &idle_n),
    ] {
        let _ = writeln!(
            md,
            "\n## {title} ({}s sample)\n\n| process | RSS | CPU |\n|---|---|---|",
            args.idle_secs
        );
        for (name, rss, cpu) in rows {
            let _ = writeln!(
                md,
                "| {name} | {:.1} MiB | {cpu:.2} % |",
                *rss as f64 / 1024.0
            );
        }
    }
    let _ = writeln!(
        md,
        "\nEach launch of a task with its own address runs `netmod mesos allocate`, then \
         `isolate` with the held task's pid, each as its own process, as Mesos's isolator \
         module does; the baseline launches the same task on host networking. Staged → \
         running per task includes queueing behind the other launches of the scale-up on \
         2 cores. \"Every pair reachable\" is what the collector reports, so it includes a \
         probe round and a collector round (2 s intervals each). `netmod bench lab` \
         reproduces this file."
    );
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip() {
        for t in [0.0, 951_782_400.5, 1_764_072_000.123] {
            let back = parse_iso(&util::iso(t)).unwrap();
            assert!((back - t).abs() < 0.001, "{t} {back}");
        }
    }
}
