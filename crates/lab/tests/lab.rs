//! The seed's three scenes end to end, driven as a user would: the demo
//! scripts and curl with the demo's JSON files, checked from the
//! collector's `/responses`, from our own connections inside the tasks'
//! namespaces, and from the page a headless Chromium draws. Also: DNS in
//! both name forms, addresses in `/v2/tasks`, container ids on the pages
//! and in netmod's endpoints, endpoints named after their task and app, a
//! killed task restarted with its address released and its interface gone,
//! bad Marathon input, bad `lab up` input, two labs side by side, and `lab
//! down` leaving nothing.
//!
//! Every test runs its own lab (see `common::Lab`): they run in parallel,
//! except the two that need the demo's address pool.
//!
//! Needs root, iproute2, curl, nsenter, Chromium, etcd, and `netmod` + the
//! star binaries built beside `netmod-lab` (`cargo build -p netmod -p star`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
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
    wait_for(
        &format!("{scene:?} story at {collector}"),
        Duration::from_secs(60),
        || {
            let m = read_matrix(collector)?;
            check(scene, &m).map_err(|e| format!("{e}\n{}", render(&m)))
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let again = read_matrix(collector).unwrap();
    check(scene, &again)
        .unwrap_or_else(|e| panic!("{scene:?} no longer holds: {e}\n{}", render(&again)));
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

/// Task id → container id, from the Mesos state; and both pages show each
/// live task's container id.
fn container_ids(lab: &Lab) -> BTreeMap<String, String> {
    let state = get(&lab.mesos("/master/state.json"));
    let tasks = state["frameworks"][0]["tasks"].as_array().unwrap();
    let mut ids = BTreeMap::new();
    for t in tasks.iter().filter(|t| t["state"] == "TASK_RUNNING") {
        let status = t["statuses"].as_array().unwrap().last().unwrap();
        let c = status["container_status"]["container_id"]["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no container id in {status}"))
            .to_string();
        assert_eq!(t["container_id"], c.as_str(), "{t}");
        ids.insert(t["id"].as_str().unwrap().to_string(), c);
    }
    let shown: BTreeSet<String> = ids.values().cloned().collect();
    for page in [lab.marathon("/"), lab.mesos("/")] {
        let html = curl("GET", &page, None, None).1;
        let on_page = page_container_ids(&html);
        assert!(
            shown.is_subset(&on_page),
            "{page} shows {on_page:?}, not all of {shown:?}"
        );
    }
    ids
}

/// `netmod --store S -o json ARGS`: exit status and JSON.
fn netmod_json(store: &str, args: &[&str]) -> (i32, Value) {
    let out = netmod_cmd(&[&["--store", store, "-o", "json"], args].concat());
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "netmod {args:?}: no JSON:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn before_two_probes_run_two_wait_for_port_9000() {
    requirements(true);
    let mut lab = Lab::new("b", "10.234.101.0/24");
    lab.up_with("launch-cluster-before.sh", &[]);
    // Marathon lists no apps; Mesos shows two agents, no tasks.
    assert_eq!(
        get(&lab.marathon("/v2/apps"))["apps"],
        serde_json::json!([])
    );
    let state = get(&lab.mesos("/master/state.json"));
    assert_eq!(state["activated_slaves"], 2);
    assert_eq!(state["slaves"][0]["resources"]["ports"], "[9000-31100]");

    lab.put_group_ok("star", "stars-before.json");
    let tasks = lab.wait_running("star", 3);
    let queue = wait_for("two probes waiting", Duration::from_secs(10), || {
        let q = get(&lab.marathon("/v2/queue"));
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
    let apps = get(&lab.marathon("/v2/apps"))["apps"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(apps.len(), 5, "Marathon lists the five apps");
    let page = curl("GET", &lab.marathon("/"), None, None).1;
    assert!(
        page.contains("no agent offers port 9000"),
        "the page says why they wait"
    );
    let state = get(&lab.mesos("/master/state.json"));
    assert_eq!(
        state["frameworks"][0]["tasks"].as_array().unwrap().len(),
        3,
        "three active tasks"
    );
    // Every task has a container, host-network tasks too, shown on both pages.
    let containers = container_ids(&lab);
    assert_eq!(containers.len(), 3);

    // The two running probes: one per agent, each on host port 9000.
    let probes: Vec<&Value> = tasks
        .iter()
        .filter(|t| t["appId"] != "/star/collect")
        .collect();
    assert_eq!(probes.len(), 2);
    assert_ne!(probes[0]["host"], probes[1]["host"]);
    let agent_ip = |t: &Value| lab.agent_ip(t["host"].as_str().unwrap());
    let servers: Vec<String> = lab.agents().into_iter().map(|(_, ip)| ip).collect();
    for p in &probes {
        assert_eq!(p["ports"], serde_json::json!([9000]));
        // DNS, the RFC 1123 form, from each agent: the agent's address.
        let name = format!(
            "probe-{}-star.marathon.mesos",
            app_letter(p["appId"].as_str().unwrap()).to_lowercase()
        );
        for server in &servers {
            assert_eq!(dig(server, &name), (0, vec![agent_ip(p)]), "{name}");
        }
    }
    assert_eq!(
        dig(&servers[0], "probe-zz-star.marathon.mesos").0,
        3,
        "NXDOMAIN"
    );
    assert_eq!(dig(&servers[0], "example.com").0, 5, "REFUSED");

    // The collector's view, then our own connections from inside.
    let collect = task_of(&tasks, "/star/collect");
    let collector = format!("http://{}:9001", agent_ip(collect));
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
    assert!(reaches(pid_a, &agent_ip(b), 9000));
    assert!(reaches(pid_b, &agent_ip(a), 9000));

    check_page(
        &format!("{collector}/"),
        Scene::Before,
        &running,
        "before.png",
    );
    screenshot(&lab.marathon("/"), &shots().join("marathon-before.png"));
    screenshot(&lab.mesos("/"), &shots().join("mesos-before.png"));

    lab.down("stop-cluster-before.sh", None);
}

#[test]
fn per_task_ips_then_isolation_then_a_killed_task() {
    requirements(true);
    let _pool = demo_pool();
    // A store outside the lab, so that after `lab down` we can see that no
    // allocation is left in it.
    let dir = std::env::temp_dir().join(format!("nmlab-test-{}", netmod_lab::util::random_hex(4)));
    std::fs::create_dir_all(&dir).unwrap();
    let store_path = dir.join("netmod.db");
    let store = store_path.display().to_string();
    let mut lab = Lab::new("p", "10.234.102.0/24");
    lab.up_with("launch-cluster.sh", &["--store", &store]);
    assert!(has_route(DEMO_POOL), "the pool is routed into the fabric");

    // --- per-task IPs: four probes on two agents, all on port 9000.
    lab.put_group_ok("star", "stars.json");
    let tasks = lab.wait_running("star", 5);
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
    let servers: Vec<String> = lab.agents().into_iter().map(|(_, ip)| ip).collect();
    for l in ["a", "b", "c", "d"] {
        let ip = ip_of(&tasks, &format!("/star/probe-{l}"));
        assert_eq!(
            dig(&servers[1], &format!("probe-{l}.star.marathon.mesos")),
            (0, vec![ip.clone()])
        );
        assert_eq!(
            dig(&servers[0], &format!("probe-{l}-star.marathon.mesos")),
            (0, vec![ip])
        );
    }
    // netmod knows each task's network by the container id the pages show,
    // and names its endpoint after the task and the app.
    let containers = container_ids(&lab);
    let (_, eps) = netmod_json(&store, &["endpoints"]);
    let eps = eps.as_array().unwrap().clone();
    assert_eq!(eps.len(), 5, "{eps:?}");
    for t in &tasks {
        let container = &containers[t["id"].as_str().unwrap()];
        let ep = eps
            .iter()
            .find(|e| e["container_id"] == container.as_str())
            .unwrap_or_else(|| panic!("no endpoint for container {container}: {eps:?}"));
        let app = t["appId"].as_str().unwrap();
        let task_name = app.rsplit('/').next().unwrap().to_string() + ".star";
        assert_eq!(ep["labels"]["task"], task_name.as_str(), "{ep}");
        assert_eq!(ep["labels"]["app"], app, "{ep}");
        assert_eq!(ep["host"], t["host"], "{ep}");
    }
    let collect_ep = eps
        .iter()
        .find(|e| e["labels"]["app"] == "/star/collect")
        .unwrap();
    assert_eq!(
        collect_ep["labels"]["ipv4_addrs"], "['192.168.255.253']",
        "ipAddress.labels pass through"
    );
    // `netmod explain` resolves the lab's tasks by name.
    let (code, v) = netmod_json(
        &store,
        &[
            "explain",
            "probe-a.star",
            "probe-c.star",
            "--port",
            "9000/tcp",
        ],
    );
    assert_eq!((code, &v["allowed"]), (0, &Value::Bool(true)), "{v}");
    assert_eq!(
        v["from"]["addr"],
        ip_of(&tasks, "/star/probe-a").as_str(),
        "{v}"
    );
    assert_eq!(
        v["to"]["addr"],
        ip_of(&tasks, "/star/probe-c").as_str(),
        "{v}"
    );

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
    lab.put_group_ok("star-isolated", "stars-isolated.json");
    let iso = lab.wait_running("star-isolated", 5);
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
    // explain agrees: A→B allowed, A→C dropped (exit status 3).
    let explain =
        |from: &str, to: &str| netmod_json(&store, &["explain", from, to, "--port", "9000/tcp"]);
    let (code, v) = explain("probe-a.star-isolated", "probe-b.star-isolated");
    assert_eq!((code, &v["allowed"]), (0, &Value::Bool(true)), "{v}");
    let (code, v) = explain("probe-a.star-isolated", "probe-c.star-isolated");
    assert_eq!((code, &v["allowed"]), (3, &Value::Bool(false)), "{v}");
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
    screenshot(&lab.marathon("/"), &shots().join("marathon.png"));
    screenshot(&lab.mesos("/"), &shots().join("mesos.png"));

    // --- a killed task: restarted, its old address released, its interface gone.
    let victim = task_of(&iso, "/star-isolated/probe-a").clone();
    let old_id = victim["id"].as_str().unwrap().to_string();
    let old_ip = ip_of(&iso, "/star-isolated/probe-a");
    let old_container = container_ids(&lab)[&old_id].clone();
    let host = victim["host"].as_str().unwrap().to_string();
    let pid = task_pid(&old_id);
    // SAFETY: kill has no memory preconditions; the pid is the task's.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let fresh = wait_for("probe-a restarted", Duration::from_secs(30), || {
        let t = lab.running_tasks("star-isolated");
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
    let new_container = container_ids(&lab)[fresh["id"].as_str().unwrap()].clone();
    assert_ne!(new_container, old_container, "a new task, a new container");
    let state = get(&lab.mesos("/master/state.json"));
    let ended = state["frameworks"][0]["completed_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == old_id.as_str())
        .cloned()
        .expect("the killed task is among the completed");
    assert_eq!(ended["state"], "TASK_FAILED", "{ended}");
    assert_eq!(ended["container_id"], old_container.as_str(), "{ended}");
    wait_for("the old address released", Duration::from_secs(10), || {
        let (_, eps) = netmod_json(&store, &["endpoints"]);
        let text = eps.to_string();
        if text.contains(&format!("\"{old_ip}")) || text.contains(&old_container) {
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
            let tasks = [
                lab.running_tasks("star"),
                lab.running_tasks("star-isolated"),
            ]
            .concat();
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
    lab.script_ok("stop-probes.sh", &[]);
    lab.script_ok("stop-probes-isolated.sh", &[]);
    wait_for("all tasks gone", Duration::from_secs(30), || {
        let n = get(&lab.marathon("/v2/tasks"))["tasks"]
            .as_array()
            .unwrap()
            .len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} tasks"))
        }
    });
    lab.down("stop-cluster.sh", Some(&store_path));
    assert!(!has_route(DEMO_POOL), "the pool route went with the lab");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn marathon_api_rejects_bad_input_and_changes_nothing() {
    requirements(false);
    // A long name: its interfaces get a short prefix derived from it.
    let mut lab = Lab::new("-marathon-api-", "10.234.103.0/24");
    lab.up_with("launch-cluster-before.sh", &[]);
    let bridge = lab.cfg()["bridge"].as_str().unwrap().to_string();
    assert!(bridge.len() <= 15, "{bridge}");
    assert!(!bridge.starts_with(&lab.name), "{bridge}");
    lab.put_group_ok("star", "stars-before.json");
    lab.wait_running("star", 3);
    let snapshot = || {
        let mut apps = get(&lab.marathon("/v2/apps"))["apps"].clone();
        for a in apps.as_array_mut().unwrap() {
            for k in ["tasksRunning", "tasksStaged", "lab_waiting"] {
                a.as_object_mut().unwrap().remove(k);
            }
        }
        let tasks: BTreeSet<String> = get(&lab.marathon("/v2/tasks"))["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        (apps, get(&lab.marathon("/v2/groups")), tasks)
    };
    let before = snapshot();
    let cases: [(&str, &str, Option<&str>, u16); 9] = [
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
            "POST",
            "/v2/apps",
            Some(r#"{"id": "x", "cmd": "sleep 100", "labels": {"team": 1}}"#),
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
        let (code, reply) = curl(method, &lab.marathon(path), None, body);
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
        &lab.marathon("/v2/apps/star/collect"),
        None,
        Some(r#"{"instances": 2}"#),
    );
    assert_eq!(code, 200);
    lab.wait_running("star", 4);
    let (code, _) = curl(
        "PUT",
        &lab.marathon("/v2/apps/star/collect"),
        None,
        Some(r#"{"instances": 1}"#),
    );
    assert_eq!(code, 200);
    lab.wait_running("star", 3);
    // An app's labels are the tasks' Mesos labels.
    let (code, reply) = curl(
        "POST",
        &lab.marathon("/v2/apps"),
        None,
        Some(
            r#"{"id": "/labelled", "cmd": "exec sleep 1000", "cpus": 0.01, "mem": 8, "labels": {"team": "net"}}"#,
        ),
    );
    assert_eq!(code, 201, "{reply}");
    let labelled = wait_for("the labelled task", Duration::from_secs(30), || {
        let s = get(&lab.mesos("/master/state.json"));
        s["frameworks"][0]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "labelled")
            .cloned()
            .ok_or_else(|| "not yet".to_string())
    });
    assert_eq!(
        labelled["labels"],
        serde_json::json!([{"key": "team", "value": "net"}])
    );
    // A second `lab up` of the same lab is refused while it is up.
    let again = lab.lab(&["up", "--fabric", "10.234.113.0/24"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already up"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // Task output is reachable from the page.
    let t = &lab.running_tasks("star")[0];
    let (code, out) = curl(
        "GET",
        &lab.marathon(&format!("/tasks/{}/stderr", t["id"].as_str().unwrap())),
        None,
        None,
    );
    assert_eq!(code, 200);
    assert!(out.contains("listening"), "{out}");
    lab.down("stop-cluster-before.sh", None);
}

#[test]
fn lab_up_refuses_bad_input_and_builds_nothing() {
    requirements(false);
    let lab = Lab::new("r", "10.234.107.0/24");
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
    let refused = |args: &[&str], why: &str| {
        let out = lab.lab(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(why), "{args:?}: {err}");
        assert_eq!(
            lab.leftovers(None),
            Vec::<String>::new(),
            "a refused `lab up {args:?}` built something"
        );
    };
    let pool_args = [
        "up",
        "--fabric",
        lab.fabric.as_str(),
        "--pool",
        taken.as_str(),
    ];
    let fabric_args = ["up", "--no-isolator", "--fabric", taken.as_str()];
    for args in [&pool_args[..], &fabric_args[..]] {
        let flag = args[args.len() - 2];
        refused(args, "overlaps the route");
        refused(args, flag);
    }
    // A port another program holds (this test holds it while it asks).
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    refused(
        &["up", "--fabric", &lab.fabric, "--marathon-port", &port],
        "is taken by another program",
    );
    drop(holder);
    refused(&["up", "--fabric", "not-a-range"], "not an IPv4 CIDR");
    refused(
        &["up", "--fabric", &lab.fabric, "--agents", "0"],
        "--agents",
    );
    // A bad lab name.
    let out = std::process::Command::new(LAB_EXE)
        .args(["lab", "--name", "Bad_Name", "up"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a lab name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::path::Path::new("/run/netmod-lab-Bad_Name").exists());
}

#[test]
fn two_labs_side_by_side_each_down_removes_only_its_own() {
    requirements(false);
    let mut one = Lab::new("s", "10.234.105.0/24");
    let mut two = Lab::new("s", "10.234.106.0/24");
    one.up_with("launch-cluster-before.sh", &["--agents", "1"]);
    two.up_with("launch-cluster-before.sh", &["--agents", "1"]);
    assert_ne!(one.cfg()["ports"], two.cfg()["ports"]);
    for lab in [&one, &two] {
        let state = get(&lab.mesos("/master/state.json"));
        assert_eq!(state["activated_slaves"], 1, "{}", lab.name);
        assert_eq!(
            state["slaves"][0]["hostname"],
            format!("{}-agent-1", lab.name).as_str()
        );
    }
    let before = two.status();
    one.down("stop-cluster-before.sh", None);
    // The other lab is untouched: its config, its objects, its master.
    assert_eq!(two.status(), before);
    assert!(two.leftovers(None).len() >= 4, "{:?}", two.leftovers(None));
    assert_eq!(get(&two.mesos("/master/state.json"))["activated_slaves"], 1);
    two.down("stop-cluster-before.sh", None);
}

/// The lab on etcd: `netmod demo --store etcd` starts an etcd server in a
/// namespace of its own on the fabric, every host uses only it, and the
/// whole demo story passes unchanged; `lab down` leaves nothing.
#[test]
fn the_demo_story_on_etcd() {
    requirements(false);
    etcd_requirement();
    let _pool = demo_pool();
    let lab = Lab::new("e", "10.234.104.0/24");
    let out = std::process::Command::new(netmod())
        .args([
            "demo",
            "--name",
            &lab.name,
            "--fabric",
            &lab.fabric,
            "--store",
            "etcd",
        ])
        .output()
        .unwrap();
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
    assert_eq!(lab.leftovers(None), Vec::<String>::new());
    assert!(!has_route(DEMO_POOL));
}
