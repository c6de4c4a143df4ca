//! The seed's three scenes end to end, driven as a user would: the demo
//! scripts (`launch-cluster*.sh`, `launch-probes*.sh`, `stop-*.sh`, for a
//! lab of the test's own named by `NETMOD_LAB`), checked from the
//! collector's `/responses`, from our own connections inside the tasks'
//! namespaces, and from the page a headless Chromium draws. Also: DNS in
//! both name forms, addresses in `/v2/tasks`, container ids on the pages
//! and in netmod's endpoints, endpoints named after their task and app, a
//! killed task restarted with its address released and its interface gone,
//! bad Marathon input, bad `lab up` input, two labs side by side, the
//! demo across a router (`--topology routed`, VXLAN and BGP), the demo on etcd with
//! its fourth scene (Calico policy on the running tasks,
//! checked from inside them and on the page, then deleted live), the
//! `export NETMOD_STORE=…` line, tasks forging launches to the agents'
//! control ports (nothing runs), and `lab down` leaving nothing.
//!
//! Every test runs its own lab (see `common::Lab`): they run in parallel,
//! except the two that need the demo's address pool.
//!
//! Needs root, iproute2, nftables, curl, nsenter, Chromium, etcd, and `netmod` + the
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
                    Scene::Policy => matches!(f, "A" | "B") && matches!(t, "A" | "B"),
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

    lab.script_ok("launch-probes-before.sh", &[]);
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
    let up = lab.up_with("launch-cluster.sh", &["--store", &store]);
    assert!(has_route(DEMO_POOL), "the pool is routed into the fabric");
    // `lab up` ends with the line that points netmod at the lab's store;
    // `lab status` shows the same line.
    let export = store_export_line(&up);
    assert_eq!(up.trim_end().lines().last(), Some(export.as_str()), "{up}");
    assert_eq!(export, format!("export NETMOD_STORE={store}"));
    let status = lab.lab(&["status"]);
    assert_eq!(
        store_export_line(&String::from_utf8_lossy(&status.stdout)),
        export
    );

    // --- per-task IPs: four probes on two agents, all on port 9000.
    lab.script_ok("launch-probes.sh", &[]);
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
    // The printed line, eval'd, is all `netmod endpoints` needs.
    let seen = endpoints_after_eval(&export);
    let ids = |eps: &[Value]| -> BTreeSet<String> {
        eps.iter()
            .map(|e| e["container_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&seen), ids(&eps), "{seen:?}");
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
    lab.script_ok("launch-probes-isolated.sh", &[]);
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
    lab.script_ok("launch-probes-before.sh", &[]);
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
    // A pool of this test's own: the demo's (the default) may be routed by a
    // lab test running beside this one, and would be refused first.
    let own_pool = "10.237.107.0/24";
    // Routing is for the routed topology, BGP needs netmod, and a routed
    // fabric is split in two subnets.
    refused(
        &[
            "up",
            "--fabric",
            &lab.fabric,
            "--pool",
            own_pool,
            "--routing",
            "bgp",
        ],
        "--routing bgp is for --topology routed",
    );
    refused(
        &[
            "up",
            "--fabric",
            &lab.fabric,
            "--pool",
            own_pool,
            "--topology",
            "routed",
            "--routing",
            "bgp",
            "--no-isolator",
        ],
        "--routing bgp needs netmod",
    );
    refused(
        &[
            "up",
            "--fabric",
            "10.234.107.0/26",
            "--pool",
            own_pool,
            "--topology",
            "routed",
        ],
        "too small for --topology routed",
    );
    // A port another program holds (this test holds it while it asks).
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    refused(
        &[
            "up",
            "--fabric",
            &lab.fabric,
            "--pool",
            own_pool,
            "--marathon-port",
            &port,
        ],
        "is taken by another program",
    );
    drop(holder);
    refused(
        &["up", "--fabric", "not-a-range", "--pool", own_pool],
        "not an IPv4 CIDR",
    );
    refused(
        &[
            "up",
            "--fabric",
            &lab.fabric,
            "--pool",
            own_pool,
            "--agents",
            "0",
        ],
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
/// whole demo story passes unchanged. With `--keep` it ends by printing the
/// `export NETMOD_STORE=…` line that, eval'd, shows netmod the kept lab's
/// endpoints; `lab down` leaves nothing.
///
/// The fourth scene (Calico policy on the running isolated scene) stays
/// applied under `--keep`: checked here by our own connections from inside
/// the tasks' namespaces, on the page, and undone live with `netmod policy
/// delete` — the isolated story again, with the same tasks throughout.
#[test]
fn the_demo_story_on_etcd() {
    requirements(true);
    etcd_requirement();
    let _pool = demo_pool();
    let mut lab = Lab::new("e", "10.234.104.0/24");
    let out = std::process::Command::new(netmod())
        .args([
            "demo",
            "--name",
            &lab.name,
            "--fabric",
            &lab.fabric,
            "--store",
            "etcd",
            "--keep",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo on etcd failed:\n{text}");
    assert!(text.contains("in the store etcd://"), "{text}");
    assert!(
        text.contains("All four scenes match the story (the seed's three, then the policy)."),
        "{text}"
    );
    for line in [
        "policy apply -f ",
        "demo-star-collector  created",
        "demo-star-probes     created",
        "C→D ✓ → ✗",
        "D→C ✓ → ✗",
        "No task restarted",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    lab.adopt();
    // The last line: the kept lab's store, the etcd server on the fabric.
    let export = store_export_line(&stdout);
    assert_eq!(stdout.trim_end().lines().last(), Some(export.as_str()));
    assert_eq!(
        export,
        format!("export NETMOD_STORE='{}'", lab.store()),
        "quoted for the shell (the URL has a `?`)"
    );
    assert!(lab.store().starts_with("etcd://"), "{}", lab.store());
    let eps = endpoints_after_eval(&export);
    let tasks: BTreeSet<String> = eps
        .iter()
        .map(|e| e["labels"]["task"].as_str().unwrap_or("").to_string())
        .collect();
    let want: BTreeSet<String> = ["star", "star-isolated"]
        .iter()
        .flat_map(|g| {
            ["probe-a", "probe-b", "probe-c", "probe-d", "collect"].map(|t| format!("{t}.{g}"))
        })
        .collect();
    assert_eq!(tasks, want, "{eps:?}");

    // --- the fourth scene, kept: the demo's policies are in the lab's store.
    let store = lab.store();
    let (code, v) = netmod_json(&store, &["policy", "list"]);
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        (code, names),
        (0, netmod_lab::demo::DEMO_POLICY_NAMES.to_vec()),
        "{v}"
    );
    let iso = lab.wait_running("star-isolated", 5);
    let task_ids = |tasks: &[Value]| -> BTreeSet<String> {
        tasks
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let ip = |app: &str| -> String {
        task_of(&iso, &format!("/star-isolated/{app}"))["ipAddresses"][0]["ipAddress"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let pid = |app: &str| {
        task_pid(
            task_of(&iso, &format!("/star-isolated/{app}"))["id"]
                .as_str()
                .unwrap(),
        )
    };
    let probe = |p: &str| format!("probe-{}", p.to_lowercase());
    let collector = "http://192.168.255.252:9001";
    // Our own connections, from inside the tasks: what the policy says.
    let inside = |scene: Scene| {
        for f in PROBES {
            for t in PROBES.iter().filter(|t| **t != f) {
                let want = expected_edges(scene, &PROBES.iter().map(|s| s.to_string()).collect())
                    .contains(&(f.to_string(), t.to_string()));
                assert_eq!(
                    reaches(pid(&probe(f)), &ip(&probe(t)), 9000),
                    want,
                    "{scene:?}: {f} → {t} from inside {f}"
                );
            }
            assert!(
                reaches(pid("collect"), &ip(&probe(f)), 9000),
                "{scene:?}: the collector reaches {f} on its probe port"
            );
        }
    };
    wait_story(Scene::Policy, collector);
    inside(Scene::Policy);
    for f in PROBES {
        assert!(
            !reaches(pid(&probe(f)), "192.168.255.252", 9001),
            "{f} may not open the collector's page"
        );
    }
    // The page stays the user's: this machine (the browser) still gets it,
    // and draws the policy's matrix.
    let (status, page) = curl("GET", &format!("{collector}/"), None, None);
    assert_eq!(status, 200, "{page}");
    let all: BTreeSet<String> = PROBES.iter().map(|s| s.to_string()).collect();
    check_page(&format!("{collector}/"), Scene::Policy, &all, "policy.png");
    // Undone live: the isolated story again, the probes reach the page
    // again, and not one task was restarted by either change.
    for name in netmod_lab::demo::DEMO_POLICY_NAMES {
        let (code, v) = netmod_json(&store, &["policy", "delete", name]);
        assert_eq!(code, 0, "{v}");
    }
    wait_story(Scene::Isolated, collector);
    inside(Scene::Isolated);
    assert!(reaches(pid("probe-c"), "192.168.255.252", 9001));
    assert_eq!(
        task_ids(&lab.wait_running("star-isolated", 5)),
        task_ids(&iso),
        "no task restarted"
    );
    lab.down("stop-cluster.sh", None);
    assert!(!has_route(DEMO_POOL));
}

/// `netmod demo --topology routed ...`, the lab kept when `keep`: its
/// output, after asserting the whole story passed and the routed scene's
/// extra checks (the outside answers every probe as its host's address)
/// were printed.
fn routed_demo(lab: &Lab, routing: &str, keep: bool) -> String {
    let mut args = vec![
        "demo",
        "--name",
        &lab.name,
        "--fabric",
        &lab.fabric,
        "--topology",
        "routed",
        "--routing",
        routing,
    ];
    if keep {
        args.push("--keep");
    }
    let out = std::process::Command::new(netmod())
        .args(&args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo {args:?} failed:\n{text}");
    for line in [
        "The fabric is routed",
        "--topology routed",
        "All four scenes match the story (the seed's three, then the policy).",
        "Across the router: from each probe, http://198.51.100.1:80/",
        "the outside sees each probe as its host's address (NAT), from 2 host(s)",
        "C→D ✓ → ✗",
        "No task restarted",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    // The outside saw probes of both agents, each as its own host.
    let fabric: ipnet::Ipv4Net = lab.fabric.parse().unwrap();
    let halves: Vec<ipnet::Ipv4Net> = fabric.subnets(fabric.prefix_len() + 1).unwrap().collect();
    let (agent1, agent2) = (
        format!("{}", ipnet_host(&halves[0], 11)),
        format!("{}", ipnet_host(&halves[1], 12)),
    );
    for (n, ip) in [(1, &agent1), (2, &agent2)] {
        let host = format!("{}-agent-{n} ", lab.name);
        let seen = format!("→ {{\"server\":\"outside\",\"you\":\"{ip}\"}}");
        assert!(
            text.lines()
                .any(|l| l.contains(&host) && l.trim_end().ends_with(&seen)),
            "no probe on {host}seen as {ip} in:\n{text}"
        );
    }
    text
}

fn ipnet_host(net: &ipnet::Ipv4Net, n: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(net.network()) + n)
}

/// The IPv4 routes of a namespace (`ip -4 route`), one per line.
fn routes_of(ns: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-4", "route", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {ns} route");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The demo across two subnets with VXLAN (`--topology routed`): agent 1 on
/// the bridge's subnet, agent 2 behind a router namespace that holds no
/// pool route, an outside web server beyond it. The whole story passes
/// (the machine reads the collectors through agent 1, which hands its
/// packets into the overlay), every probe reaches the outside as its host
/// (NAT), and, kept: the router routes no pool address, the outside cannot
/// reach a task, the tasks reach the outside from both subnets, and `lab
/// down` removes the router, the outside and their routes too.
#[test]
fn the_demo_story_across_a_router_with_vxlan() {
    requirements(false);
    let _pool = demo_pool();
    let mut lab = Lab::new("rv", "10.234.109.0/24");
    let text = routed_demo(&lab, "vxlan", true);
    assert!(
        text.contains("no route into 192.168.0.0/16: the pool crossed it inside VXLAN"),
        "{text}"
    );
    assert!(
        text.contains("pool: 192.168.0.0/16 (--vxlan-mode Always --nat-outgoing)"),
        "{text}"
    );
    lab.adopt();
    let cfg = lab.cfg().clone();
    assert_eq!(cfg["topology"], "routed", "{cfg}");
    let router = &cfg["router"];
    assert_eq!(router["routing"], "vxlan", "{cfg}");
    let (router_ns, outside_ns) = (
        router["ns"].as_str().unwrap().to_string(),
        router["outside_ns"].as_str().unwrap().to_string(),
    );
    assert_eq!(router_ns, format!("{}-router", lab.name));
    assert_eq!(outside_ns, format!("{}-outside", lab.name));
    // Two subnets: agent 1 on the bridge's, agent 2 behind the router.
    assert_eq!(
        lab.agent_ip(&format!("{}-agent-1", lab.name)),
        "10.234.109.11"
    );
    assert_eq!(
        lab.agent_ip(&format!("{}-agent-2", lab.name)),
        "10.234.109.140"
    );
    let agent2 = format!("{}-agent-2", lab.name);
    assert!(
        routes_of(&agent2)
            .iter()
            .any(|r| r.starts_with("default via 10.234.109.129 ")),
        "{:?}",
        routes_of(&agent2)
    );
    // The router knows the two subnets and the outside, and no pool.
    let rr = routes_of(&router_ns);
    assert_eq!(rr.len(), 3, "{rr:?}");
    assert!(
        rr.iter().all(|r| !r.starts_with("192.168.")),
        "the router routes the pool: {rr:?}"
    );
    // The machine: the second subnet via the router, the pool via agent 1.
    assert!(has_route("10.234.109.128/25"));
    assert!(has_route(DEMO_POOL));
    // The tasks of both subnets reach the outside; the outside reaches no task.
    let iso = lab.wait_running("star-isolated", 5);
    let mut hosts = BTreeSet::new();
    for t in &iso {
        let pid = task_pid(t["id"].as_str().unwrap());
        assert!(
            reaches(pid, "198.51.100.1", 80),
            "{} does not reach the outside",
            t["id"]
        );
        hosts.insert(t["host"].as_str().unwrap().to_string());
        let ip = t["ipAddresses"][0]["ipAddress"].as_str().unwrap();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &outside_ns, "curl", "-s", "-m", "2"])
            .arg(format!("http://{ip}:9000/status"))
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "the outside reaches {ip}: no NAT inbound, no pool route"
        );
    }
    assert_eq!(hosts.len(), 2, "{iso:?}");
    lab.down("stop-cluster.sh", None);
    assert!(!has_route(DEMO_POOL));
    assert!(!has_route("10.234.109.128/25"));
}

/// The same across the router with BGP: every `netmod node --bgp`, the
/// router runs BIRD and peers with each host; it holds exactly the hosts'
/// blocks, learned by BGP, and the machine routes the pool to it.
#[test]
fn the_demo_story_across_a_router_with_bgp() {
    requirements(false);
    let _pool = demo_pool();
    let lab = Lab::new("rb", "10.234.110.0/24");
    let text = routed_demo(&lab, "bgp", false);
    for line in [
        "pool: 192.168.0.0/16 (--vxlan-mode Never --nat-outgoing)",
        "bgp: every host peers with the router (10.234.110.2 and 10.234.110.129, AS 64513",
        "route: 192.168.0.0/16 via 10.234.110.2 (the router, which learns every host's blocks)",
        "each via its host: learned by BGP",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    // The demo took the lab down: nothing of it is left.
    assert_eq!(lab.leftovers(None), Vec::<String>::new());
    assert!(!has_route(DEMO_POOL));
}

/// The script the attacking tasks run. Each round (when the test creates
/// `go-N` in the shared directory), for each agent: a forged launch to its
/// control port — without a token, with a made-up one, and with whatever
/// the task reads from the lab's token file — whose command would create
/// `forged-<attacker>-<agent>-<variant>`; and a forged registration with
/// the master. Prints `RESULT <target> <variant> <HTTP code>` (000: no
/// HTTP answer at all), then `DONE N`; then waits for the next round.
const ATTACK: &str = r#"#!/bin/sh
me=$1 dir=$2 token_file=$3 master=$4; shift 4
echo "TOKEN_BYTES $(wc -c < "$token_file")"
echo "MASTER_HEALTH $(curl -s -o /dev/null -m 3 -w '%{http_code}' "$master/health")"
for round in 1 2; do
  while [ ! -e "$dir/go-$round" ]; do sleep 0.2; done
  for target in "$@"; do
    for variant in none made-up read; do
      case $variant in
        none) auth="X-Nothing: 1" ;;
        made-up) auth="Authorization: Bearer 0000000000000000000000000000000000000000000000000000000000000000" ;;
        read) auth="Authorization: Bearer $(cat "$token_file")" ;;
      esac
      mark="$dir/forged-$me-$target-$variant"
      spec="{\"task_id\":\"forged-$me-$round-$target-$variant\",\"name\":\"forged\",\"app_id\":\"/forged\",\"app_version\":\"x\",\"cmd\":\"touch $mark\",\"cpus\":0.01,\"mem\":8}"
      code=$(curl -s -o /dev/null -m 3 -w '%{http_code}' -X POST -H "$auth" \
        -H 'Content-Type: application/json' --data-binary "$spec" "http://$target:5051/tasks")
      echo "RESULT $target $variant $code"
    done
  done
  hb="{\"hostname\":\"forged-$me\",\"ip\":\"127.0.0.1\",\"port\":5051,\"cpus\":64,\"mem\":65536,\"ports\":[[9000,31100]],\"tasks\":[]}"
  echo "RESULT master heartbeat $(curl -s -o /dev/null -m 3 -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' --data-binary "$hb" "$master/lab/agents/heartbeat")"
  echo "DONE $round"
done
exec sleep 1000
"#;

/// A task's stdout, through Marathon (as the page links it).
fn task_stdout(lab: &Lab, task_id: &str) -> String {
    curl(
        "GET",
        &lab.marathon(&format!("/tasks/{task_id}/stdout")),
        None,
        None,
    )
    .1
}

/// (target, variant) → the HTTP code an attacker got.
type Results = BTreeMap<(String, String), String>;

/// The `RESULT` lines of one round.
fn round_results(out: &str, round: u32) -> Results {
    let start = if round == 1 {
        0
    } else {
        out.find(&format!("DONE {}", round - 1)).unwrap()
    };
    let end = out.find(&format!("DONE {round}")).unwrap();
    out[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            ((f[0].to_string(), f[1].to_string()), f[2].to_string())
        })
        .collect()
}

/// An agent's control port takes launches from the lab's master only. A
/// task — one with its own address in a netgroup (it reaches its host and
/// the fabric) and a host-network one (it shares its agent's namespace) —
/// POSTs launches to its own agent's and the other agent's control port,
/// and a registration to the master: nothing runs. First both guards
/// stand: the agents' firewall resets the connections (no HTTP answer) and
/// the master answers 401; then, with the firewall taken away, the token
/// alone still turns every launch away with 401. The controls: the
/// attackers themselves ran (the master's launches work), they reach the
/// master's fabric port, and a launch with the lab's token from the
/// master's address runs and creates its marker file.
#[test]
fn tasks_cannot_make_an_agent_run_anything() {
    requirements(false);
    let mut lab = Lab::new("x", "10.234.108.0/24");
    let up = lab.up_with("launch-cluster.sh", &["--pool", "10.235.108.0/24"]);
    let agents = lab.agents();
    assert_eq!(agents.len(), 2);
    let (a1, a2) = (agents[0].clone(), agents[1].clone());
    // The token: private to root, 64 hex characters, not in `lab.json`.
    let token_path = lab.run_dir().join("control-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let token = lab.token();
    assert_eq!(token.len(), 64, "{token}");
    assert!(!lab.status().to_string().contains(&token));

    let dir =
        std::env::temp_dir().join(format!("nmlab-attack-{}", netmod_lab::util::random_hex(4)));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("attack.sh");
    std::fs::write(&script, ATTACK).unwrap();
    let master = format!(
        "http://{}:{}",
        lab.cfg()["bridge_ip"].as_str().unwrap(),
        lab.cfg()["ports"]["fabric"]
    );
    let cmd = |me: &str| {
        format!(
            "exec sh {} {me} {} {} {master} {} {}",
            script.display(),
            dir.display(),
            token_path.display(),
            a1.1,
            a2.1
        )
    };
    // A task with its own address, in a netgroup, on agent 1; a
    // host-network task on agent 2. Launched by the master: the legitimate
    // path.
    let apps = serde_json::json!({"id": "/attack", "apps": [
        {"id": "own-ip", "cmd": cmd("own-ip"), "cpus": 0.1, "mem": 32,
         "constraints": [["hostname", "CLUSTER", a1.0]],
         "ipAddress": {"groups": ["attackers"]}},
        {"id": "host-net", "cmd": cmd("host-net"), "cpus": 0.1, "mem": 32,
         "constraints": [["hostname", "CLUSTER", a2.0]]}
    ]});
    let (code, body) = curl(
        "PUT",
        &lab.marathon("/v2/groups/attack"),
        None,
        Some(&apps.to_string()),
    );
    assert_eq!(code, 200, "{body}");
    let tasks = lab.wait_running("attack", 2);
    let own_ip = task_of(&tasks, "/attack/own-ip");
    let host_net = task_of(&tasks, "/attack/host-net");
    assert_eq!(own_ip["host"], a1.0.as_str());
    assert_eq!(host_net["host"], a2.0.as_str());
    assert!(
        own_ip["ipAddresses"][0]["ipAddress"]
            .as_str()
            .unwrap()
            .starts_with("10.235.108."),
        "{own_ip}"
    );
    // The line `lab up` ends with shows netmod the attacker's endpoint.
    let eps = endpoints_after_eval(&store_export_line(&up));
    assert!(
        eps.iter().any(|e| e["labels"]["task"] == "own-ip.attack"),
        "{eps:?}"
    );
    let attackers = [
        ("own-ip", own_ip["id"].as_str().unwrap().to_string()),
        ("host-net", host_net["id"].as_str().unwrap().to_string()),
    ];
    let forged = || -> Vec<String> {
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("forged-"))
            .collect()
    };
    let run_round = |round: u32| -> Vec<(String, Results)> {
        std::fs::write(dir.join(format!("go-{round}")), "").unwrap();
        attackers
            .iter()
            .map(|(me, id)| {
                let out = wait_for(
                    &format!("{me}'s round {round}"),
                    Duration::from_secs(60),
                    || {
                        let out = task_stdout(&lab, id);
                        if out.contains(&format!("DONE {round}")) {
                            Ok(out)
                        } else {
                            Err(out)
                        }
                    },
                );
                // The task reads the token file as empty: /dev/null is
                // bound over it in the task's mount namespace.
                assert!(out.contains("TOKEN_BYTES 0\n"), "{me}: {out}");
                // It reaches the fabric: the master's fabric port answers it.
                assert!(out.contains("MASTER_HEALTH 200\n"), "{me}: {out}");
                (me.to_string(), round_results(&out, round))
            })
            .collect()
    };
    let agent_status = |ip: &str, auth: Option<&str>| -> (u16, String) {
        let mut c = std::process::Command::new("curl");
        c.args(["-sS", "-m", "5", "-w", "\n%{http_code}"]);
        if let Some(a) = auth {
            c.args(["-H", &format!("Authorization: Bearer {a}")]);
        }
        let out = c.arg(format!("http://{ip}:5051/tasks")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    };
    let nothing_forged_ran = |when: &str| {
        // Long enough for a launched `touch` to have run.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            forged(),
            Vec::<String>::new(),
            "{when}: a forged launch ran"
        );
        for (_, ip) in [&a1, &a2] {
            let (code, body) = agent_status(ip, Some(&token));
            assert_eq!(code, 200, "{body}");
            assert!(!body.contains("forged-"), "{when}: {ip} took {body}");
        }
        let state = get(&lab.mesos("/master/state.json"));
        assert_eq!(state["activated_slaves"], 2, "{when}: {state}");
        assert!(!state.to_string().contains("forged-"), "{when}: {state}");
    };

    // --- Round 1: the firewall and the token both stand.
    for (me, results) in run_round(1) {
        assert_eq!(results.len(), 7, "{me}: {results:?}");
        for ((target, variant), code) in &results {
            let want = if target == "master" { "401" } else { "000" };
            assert_eq!(code, want, "{me} → {target} ({variant})");
        }
    }
    nothing_forged_ran("with the firewall");
    // From the machine — the bridge's address, the master's, which the
    // firewall lets through — the token decides: without it, 401.
    for (_, ip) in [&a1, &a2] {
        assert_eq!(agent_status(ip, None).0, 401, "{ip}");
        assert_eq!(agent_status(ip, Some(&"0".repeat(64))).0, 401, "{ip}");
    }

    // --- Round 2: the firewall gone, the token alone turns them away.
    for (name, _) in [&a1, &a2] {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                name,
                "nft",
                "delete",
                "table",
                "inet",
                "netmod_lab",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (me, results) in run_round(2) {
        assert_eq!(results.len(), 7, "{me}: {results:?}");
        for ((target, variant), code) in &results {
            assert_eq!(code, "401", "{me} → {target} ({variant}), token alone");
        }
    }
    nothing_forged_ran("with the token alone");

    // --- The control: the master's kind of launch (its token, from the
    // bridge address) runs, and its marker appears. (The master, which did
    // not send it, may have the agent kill it before it starts: then again.)
    let marker = dir.join("legit-marker");
    let legit = |attempt: u32| -> String {
        let spec = serde_json::json!({
            "task_id": format!("legit-{attempt}"), "name": "legit", "app_id": "/legit",
            "app_version": "x", "cmd": format!("touch {}", marker.display()),
            "cpus": 0.01, "mem": 8
        });
        let out = std::process::Command::new("curl")
            .args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args([
                "-X",
                "POST",
                "-H",
                &format!("Authorization: Bearer {token}"),
            ])
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(spec.to_string())
            .arg(format!("http://{}:5051/tasks", a1.1))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ran = (1..=3).any(|attempt| {
        assert_eq!(legit(attempt), "202", "the agent takes the master's launch");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if marker.exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
    assert!(ran, "a launch with the lab's token never ran");

    lab.down("stop-cluster.sh", None);
    let _ = std::fs::remove_dir_all(&dir);
}
