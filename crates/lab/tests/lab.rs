//! The seed's three scenes end to end, driven as a user would: the demo
//! scripts and curl with the demo's JSON files, checked from the
//! collector's `/responses`, from our own connections inside the tasks'
//! namespaces, and from the page a headless Chromium draws. Also: DNS in
//! both name forms, addresses in `/v2/tasks`, a killed task restarted with
//! its address released and its interface gone, bad Marathon input, and
//! `lab down` leaving nothing.
//!
//! Needs root, iproute2, curl, nsenter, Chromium, and `netmod` + the star
//! binaries built beside `netmod-lab` (`cargo build -p netmod -p star`).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use netmod_lab::demo::{check, read_matrix, render, Scene};
use serde_json::Value;

const PROBES: [&str; 4] = ["A", "B", "C", "D"];

fn app_letter(app_id: &str) -> String {
    app_id.rsplit("probe-").next().unwrap().to_uppercase()
}

/// Waits until the collector's matrix tells the scene's story and still
/// does a full probe round later.
fn wait_story(scene: Scene, collector: &str) -> netmod_lab::demo::Matrix {
    let m = wait_for(
        &format!("{scene:?} story at {collector}"),
        Duration::from_secs(60),
        || {
            let m = read_matrix(collector)?;
            check(scene, &m)
                .map(|_| m.clone())
                .map_err(|e| format!("{e}\n{}", render(&m)))
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let again = read_matrix(collector).unwrap();
    check(scene, &again)
        .unwrap_or_else(|e| panic!("{scene:?} no longer holds: {e}\n{}", render(&again)));
    let _ = m;
    again
}

fn expected_edges(scene: Scene, running: &BTreeSet<String>) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for f in PROBES {
        for t in PROBES {
            let ok = f != t
                && match scene {
                    Scene::Before => running.contains(f) && running.contains(t),
                    Scene::Routed => true,
                    Scene::Isolated => matches!(f, "A" | "B") == matches!(t, "A" | "B"),
                };
            if ok {
                out.insert((f.to_string(), t.to_string()));
            }
        }
    }
    out
}

fn check_page(url: &str, scene: Scene, running: &BTreeSet<String>, shot: &str) {
    let want = expected_edges(scene, running);
    let mut dom = dump_dom(url);
    // The page may have drawn before the last probe round: give it one more.
    if dom_edges(&dom, "reachable") != want {
        std::thread::sleep(Duration::from_secs(3));
        dom = dump_dom(url);
    }
    assert_eq!(
        dom_edges(&dom, "reachable"),
        want,
        "{url}: reachable edges drawn"
    );
    let unreachable = dom_edges(&dom, "unreachable");
    assert!(unreachable.is_disjoint(&want), "{url}: {unreachable:?}");
    screenshot(url, &shots().join(shot));
}

#[test]
fn before_two_probes_run_two_wait_for_port_9000() {
    if !requirements(true) {
        return;
    }
    let _slot = lab_slot();
    clean_slate();
    script("launch-cluster-before.sh");
    // Marathon lists no apps; Mesos shows two agents, no tasks.
    assert_eq!(
        get("http://127.0.0.1:8080/v2/apps")["apps"],
        serde_json::json!([])
    );
    let state = get("http://127.0.0.1:5050/master/state.json");
    assert_eq!(state["activated_slaves"], 2);
    assert_eq!(state["slaves"][0]["resources"]["ports"], "[9000-31100]");

    script("launch-probes-before.sh");
    let tasks = wait_running("star", 3);
    let queue = wait_for("two probes waiting", Duration::from_secs(10), || {
        let q = get("http://127.0.0.1:8080/v2/queue");
        let n = q["queue"].as_array().unwrap().len();
        if n == 2 {
            Ok(q)
        } else {
            Err(format!("{q}"))
        }
    });
    for item in queue["queue"].as_array().unwrap() {
        assert_eq!(item["reason"], "no agent offers port 9000", "{item}");
    }
    let apps = get("http://127.0.0.1:8080/v2/apps")["apps"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(apps.len(), 5, "Marathon lists the five apps");
    let page = curl("GET", "http://127.0.0.1:8080/", None, None).1;
    assert!(
        page.contains("no agent offers port 9000"),
        "the page says why they wait"
    );
    let state = get("http://127.0.0.1:5050/master/state.json");
    assert_eq!(
        state["frameworks"][0]["tasks"].as_array().unwrap().len(),
        3,
        "three active tasks"
    );

    // The two running probes: one per agent, each on host port 9000.
    let probes: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["appId"] != "/star/collect")
        .collect();
    assert_eq!(probes.len(), 2);
    assert_ne!(probes[0]["host"], probes[1]["host"]);
    let agent_ip = |host: &str| -> String {
        let n = host.rsplit('-').next().unwrap().parse::<u32>().unwrap();
        format!("10.234.0.{}", 10 + n)
    };
    for p in &probes {
        assert_eq!(p["ports"], serde_json::json!([9000]));
        // DNS, the RFC 1123 form, from each agent: the agent's address.
        let name = format!(
            "probe-{}-star.marathon.mesos",
            app_letter(p["appId"].as_str().unwrap()).to_lowercase()
        );
        for server in ["10.234.0.11", "10.234.0.12"] {
            assert_eq!(
                dig(server, &name),
                (0, vec![agent_ip(p["host"].as_str().unwrap())]),
                "{name}"
            );
        }
    }
    assert_eq!(
        dig("10.234.0.11", "probe-zz-star.marathon.mesos").0,
        3,
        "NXDOMAIN"
    );
    assert_eq!(dig("10.234.0.11", "example.com").0, 5, "REFUSED");

    // The collector's view, then our own connections from inside.
    let collect = task_of(&tasks, "/star/collect");
    let collector = format!(
        "http://{}:9001",
        agent_ip(collect["host"].as_str().unwrap())
    );
    let m = wait_story(Scene::Before, &collector);
    let running: BTreeSet<String> = m
        .iter()
        .filter(|(_, r)| r.is_some())
        .map(|(k, _)| k.clone())
        .collect();
    let expected: BTreeSet<String> = probes
        .iter()
        .map(|p| app_letter(p["appId"].as_str().unwrap()))
        .collect();
    assert_eq!(running, expected);
    let (a, b) = (probes[0], probes[1]);
    let pid_a = task_pid(a["id"].as_str().unwrap());
    let pid_b = task_pid(b["id"].as_str().unwrap());
    assert!(reaches(pid_a, &agent_ip(b["host"].as_str().unwrap()), 9000));
    assert!(reaches(pid_b, &agent_ip(a["host"].as_str().unwrap()), 9000));

    check_page(
        &format!("{collector}/"),
        Scene::Before,
        &running,
        "before.png",
    );
    screenshot(
        "http://127.0.0.1:8080/",
        &shots().join("marathon-before.png"),
    );
    screenshot("http://127.0.0.1:5050/", &shots().join("mesos-before.png"));

    script("stop-cluster-before.sh");
    assert_eq!(
        leftovers(None),
        Vec::<String>::new(),
        "lab down left something"
    );
}

#[test]
fn per_task_ips_then_isolation_then_a_killed_task() {
    if !requirements(true) {
        return;
    }
    let _slot = lab_slot();
    clean_slate();
    // A store outside the lab, so that after `lab down` we can see that no
    // allocation is left in it.
    let dir = std::env::temp_dir().join(format!("nmlab-test-{}", netmod_lab::util::random_hex(4)));
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("netmod.db");
    let out = script_output(
        "launch-cluster.sh",
        &["--store", &store.display().to_string()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --- per-task IPs: four probes on two agents, all on port 9000.
    script("launch-probes.sh");
    let tasks = wait_running("star", 5);
    let hosts: BTreeSet<&str> = tasks.iter().map(|t| t["host"].as_str().unwrap()).collect();
    assert_eq!(hosts.len(), 2, "both agents run tasks");
    let mut addrs = BTreeSet::new();
    for t in &tasks {
        let ips = t["ipAddresses"].as_array().unwrap();
        assert_eq!(ips.len(), 1, "/v2/tasks carries the task's address: {t}");
        let ip = ips[0]["ipAddress"].as_str().unwrap().to_string();
        assert!(ip.starts_with("192.168."), "{ip}");
        assert_eq!(t["ports"], serde_json::json!([]), "no host ports");
        addrs.insert(ip);
    }
    assert_eq!(addrs.len(), 5, "every task its own address");
    let ip_of = |tasks: &[Value], app: &str| -> String {
        task_of(tasks, app)["ipAddresses"][0]["ipAddress"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(
        ip_of(&tasks, "/star/collect"),
        "192.168.255.253",
        "the static address by label"
    );
    // DNS: both name forms give the task's own address.
    for l in ["a", "b", "c", "d"] {
        let ip = ip_of(&tasks, &format!("/star/probe-{l}"));
        assert_eq!(
            dig("10.234.0.12", &format!("probe-{l}.star.marathon.mesos")),
            (0, vec![ip.clone()])
        );
        assert_eq!(
            dig("10.234.0.11", &format!("probe-{l}-star.marathon.mesos")),
            (0, vec![ip])
        );
    }
    wait_story(Scene::Routed, "http://192.168.255.253:9001");
    for f in PROBES {
        let pid = task_pid(
            task_of(&tasks, &format!("/star/probe-{}", f.to_lowercase()))["id"]
                .as_str()
                .unwrap(),
        );
        for t in PROBES.iter().filter(|t| **t != f) {
            let ip = ip_of(&tasks, &format!("/star/probe-{}", t.to_lowercase()));
            assert!(reaches(pid, &ip, 9000), "{f} → {t} ({ip}) from inside {f}");
        }
    }
    let all: BTreeSet<String> = PROBES.iter().map(|s| s.to_string()).collect();
    check_page(
        "http://192.168.255.253:9001/",
        Scene::Routed,
        &all,
        "per-task-ips.png",
    );

    // --- isolated: A,B in star-1; C,D in star-2; the collector in both.
    script("launch-probes-isolated.sh");
    let iso = wait_running("star-isolated", 5);
    assert_eq!(ip_of(&iso, "/star-isolated/collect"), "192.168.255.252");
    wait_story(Scene::Isolated, "http://192.168.255.252:9001");
    for f in PROBES {
        let pid = task_pid(
            task_of(&iso, &format!("/star-isolated/probe-{}", f.to_lowercase()))["id"]
                .as_str()
                .unwrap(),
        );
        for t in PROBES.iter().filter(|t| **t != f) {
            let ip = ip_of(&iso, &format!("/star-isolated/probe-{}", t.to_lowercase()));
            let want = matches!(f, "A" | "B") == matches!(*t, "A" | "B");
            assert_eq!(
                reaches(pid, &ip, 9000),
                want,
                "{f} → {t} ({ip}) from inside {f}"
            );
        }
    }
    let collector_pid = task_pid(
        task_of(&iso, "/star-isolated/collect")["id"]
            .as_str()
            .unwrap(),
    );
    for t in PROBES {
        let ip = ip_of(&iso, &format!("/star-isolated/probe-{}", t.to_lowercase()));
        assert!(
            reaches(collector_pid, &ip, 9000),
            "the collector reaches {t}"
        );
    }
    check_page(
        "http://192.168.255.252:9001/",
        Scene::Isolated,
        &all,
        "isolated.png",
    );
    screenshot("http://127.0.0.1:8080/", &shots().join("marathon.png"));
    screenshot("http://127.0.0.1:5050/", &shots().join("mesos.png"));

    // --- a killed task: restarted, its old address released, its interface gone.
    let victim = task_of(&iso, "/star-isolated/probe-a").clone();
    let old_id = victim["id"].as_str().unwrap().to_string();
    let old_ip = ip_of(&iso, "/star-isolated/probe-a");
    let host = victim["host"].as_str().unwrap().to_string();
    let pid = task_pid(&old_id);
    // SAFETY: kill has no memory preconditions; the pid is the task's.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let fresh = wait_for("probe-a restarted", Duration::from_secs(30), || {
        let t = running_tasks("star-isolated");
        match t.iter().find(|t| t["appId"] == "/star-isolated/probe-a") {
            Some(t) if t["id"] != old_id.as_str() => Ok(t.clone()),
            _ => Err("not yet".into()),
        }
    });
    let new_ip = fresh["ipAddresses"][0]["ipAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        new_ip, old_ip,
        "a quarantined address is not reused at once"
    );
    let state = get("http://127.0.0.1:5050/master/state.json");
    let ended = state["frameworks"][0]["completed_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == old_id.as_str())
        .cloned()
        .expect("the killed task is among the completed");
    assert_eq!(ended["state"], "TASK_FAILED", "{ended}");
    wait_for("the old address released", Duration::from_secs(10), || {
        let out = netmod_cmd(&[
            "--store",
            &store.display().to_string(),
            "-o",
            "json",
            "endpoints",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(&format!("\"{old_ip}")) {
            Err(text)
        } else {
            Ok(())
        }
    });
    let routes = std::process::Command::new("ip")
        .args(["-n", &host, "route", "show", &old_ip])
        .output()
        .unwrap();
    assert!(
        routes.stdout.is_empty(),
        "a route to the old address is left: {}",
        String::from_utf8_lossy(&routes.stdout)
    );
    // Its interface went with it: the host has one netmod veth per task
    // with its own address that runs there.
    wait_for(
        "one veth per own-address task",
        Duration::from_secs(10),
        || {
            let tasks = [running_tasks("star"), running_tasks("star-isolated")].concat();
            let here = tasks.iter().filter(|t| t["host"] == host.as_str()).count();
            let links = std::process::Command::new("ip")
                .args(["-n", &host, "-o", "link"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&links.stdout).into_owned();
            let veths = text
                .lines()
                .filter(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with("nm")))
                .count();
            if veths == here {
                Ok(())
            } else {
                Err(format!("{veths} veths, {here} tasks on {host}:\n{text}"))
            }
        },
    );
    // Its story still holds with the new A.
    wait_story(Scene::Isolated, "http://192.168.255.252:9001");

    // --- stop the probes, then the cluster: nothing left, no allocation.
    script("stop-probes.sh");
    script("stop-probes-isolated.sh");
    wait_for("all tasks gone", Duration::from_secs(30), || {
        let n = get("http://127.0.0.1:8080/v2/tasks")["tasks"]
            .as_array()
            .unwrap()
            .len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} tasks"))
        }
    });
    script("stop-cluster.sh");
    assert_eq!(
        leftovers(Some(&store)),
        Vec::<String>::new(),
        "lab down left something"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn marathon_api_rejects_bad_input_and_changes_nothing() {
    if !requirements(false) {
        return;
    }
    let _slot = lab_slot();
    clean_slate();
    script("launch-cluster-before.sh");
    let files = repo().join("demo/marathon");
    let (code, _) = curl(
        "PUT",
        "http://127.0.0.1:8080/v2/groups/star",
        Some(&files.join("stars-before.json")),
        None,
    );
    assert_eq!(code, 200);
    wait_running("star", 3);
    let snapshot = || {
        let mut apps = get("http://127.0.0.1:8080/v2/apps")["apps"].clone();
        for a in apps.as_array_mut().unwrap() {
            for k in ["tasksRunning", "tasksStaged", "lab_waiting"] {
                a.as_object_mut().unwrap().remove(k);
            }
        }
        let tasks: BTreeSet<String> = get("http://127.0.0.1:8080/v2/tasks")["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        (apps, get("http://127.0.0.1:8080/v2/groups"), tasks)
    };
    let before = snapshot();
    let cases: [(&str, &str, Option<&str>, u16); 8] = [
        (
            "PUT",
            "/v2/groups/star",
            Some("{\"apps\": [ {\"id\": "),
            400,
        ),
        ("POST", "/v2/apps", Some("not json"), 400),
        (
            "POST",
            "/v2/apps",
            Some(r#"{"cmd": "sleep 100", "cpus": 0.1}"#),
            422,
        ),
        (
            "POST",
            "/v2/apps",
            Some(r#"{"id": "x", "cmd": "sleep 100", "cpus": -1}"#),
            422,
        ),
        (
            "PUT",
            "/v2/groups/star",
            Some(r#"{"apps": [{"id": "probe-a", "cmd": "x", "cpus": -0.1}]}"#),
            422,
        ),
        ("PUT", "/v2/apps/star/probe-a", Some(r#"{"cpus": -3}"#), 422),
        ("DELETE", "/v2/groups/no-such-group", None, 404),
        ("DELETE", "/v2/apps/no/such/app", None, 404),
    ];
    for (method, path, body, want) in cases {
        let (code, reply) = curl(method, &format!("http://127.0.0.1:8080{path}"), None, body);
        assert_eq!(code, want, "{method} {path} {body:?}: {reply}");
        let v: Value = serde_json::from_str(&reply)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {reply}"));
        assert!(v["message"].is_string(), "{reply}");
        if want == 422 {
            assert!(v["details"][0]["path"].is_string(), "{reply}");
        }
        assert_eq!(
            snapshot(),
            before,
            "{method} {path} {body:?} changed something"
        );
    }
    // Scaling through PUT of an app, and back.
    let (code, _) = curl(
        "PUT",
        "http://127.0.0.1:8080/v2/apps/star/collect",
        None,
        Some(r#"{"instances": 2}"#),
    );
    assert_eq!(code, 200);
    wait_running("star", 4);
    let (code, _) = curl(
        "PUT",
        "http://127.0.0.1:8080/v2/apps/star/collect",
        None,
        Some(r#"{"instances": 1}"#),
    );
    assert_eq!(code, 200);
    wait_running("star", 3);
    // A second `lab up` is refused while one is up.
    let again = std::process::Command::new(LAB_EXE)
        .args(["lab", "up"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));
    // Task output is reachable from the page.
    let t = &running_tasks("star")[0];
    let (code, out) = curl(
        "GET",
        &format!(
            "http://127.0.0.1:8080/tasks/{}/stderr",
            t["id"].as_str().unwrap()
        ),
        None,
        None,
    );
    assert_eq!(code, 200);
    assert!(out.contains("listening"), "{out}");
    script("stop-cluster-before.sh");
    assert_eq!(leftovers(None), Vec::<String>::new());
}

#[test]
fn lab_up_refuses_ranges_that_overlap_the_machines_routes() {
    if !requirements(false) {
        return;
    }
    let _slot = lab_slot();
    clean_slate();
    // A range this machine routes already (its own network).
    let routes = std::process::Command::new("ip")
        .args(["-4", "-j", "route"])
        .output()
        .unwrap();
    let routes: Value = serde_json::from_slice(&routes.stdout).unwrap();
    let taken = routes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["dst"].as_str())
        .find(|d| *d != "default" && d.contains('/'))
        .expect("the machine has a network route")
        .to_string();
    for flag in ["--pool", "--fabric"] {
        let out = std::process::Command::new(LAB_EXE)
            .args(["lab", "up", flag, &taken])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("overlaps the route") && err.contains(flag),
            "{err}"
        );
        assert!(
            leftovers(None).is_empty(),
            "a refused `lab up` built something"
        );
    }
    let _ = Path::new("");
}

/// The lab on etcd: `lab up --store etcd` starts an etcd server in a
/// namespace of its own on the fabric, every host uses only it, and the
/// whole demo story passes unchanged; `lab down` leaves nothing.
#[test]
fn the_demo_story_on_etcd() {
    if !requirements(false) || !common_etcd_present() {
        return;
    }
    let _slot = lab_slot();
    clean_slate();
    let out = netmod_cmd(&["demo", "--store", "etcd"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo on etcd failed:\n{text}");
    assert!(text.contains("in the store etcd://"), "{text}");
    assert!(
        text.contains("All three scenes match the seed's story."),
        "{text}"
    );
    assert!(leftovers(None).is_empty(), "{:?}", leftovers(None));
}

fn common_etcd_present() -> bool {
    let ok = Path::new("/usr/bin/etcd").exists();
    if !ok && std::env::var_os("CI").is_some() {
        panic!("/usr/bin/etcd is missing (apt-get install etcd-server)");
    }
    ok
}
