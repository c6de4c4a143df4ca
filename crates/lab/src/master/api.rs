//! The master's HTTP routes: Marathon (`/v2/...` on 8080), Mesos-like state
//! (5050), the agents' registration and status reports, task logs.

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::state::{ApiError, App, State, Task};
use super::{pages, Master};
use crate::auth;
use crate::config::sandbox_root;
use crate::http::{Reply, Request};
use crate::marathon::{self, violations_json};
use crate::mesos_state;
use crate::util::{iso, unix_now};
use crate::wire::{self, Register, TaskStatus};

/// Log bytes shown at most (the tail).
const LOG_TAIL: u64 = 256 * 1024;

fn err(e: ApiError) -> Reply {
    Reply::json(e.status, &e.body)
}

fn parse_body(req: &Request) -> Result<Value, Reply> {
    serde_json::from_slice(&req.body).map_err(|e| {
        Reply::json(
            400,
            &json!({"message": format!("Invalid JSON: {e}"), "details": [{"path": "/", "errors": ["error.expected.jsobject"]}]}),
        )
    })
}

/// Marathon on 127.0.0.1:8080.
pub fn marathon(m: &Master, req: &Request) -> Reply {
    let path = req.path.trim_end_matches('/');
    let method = req.method.as_str();
    if let Some(r) = logs(m, req) {
        return r;
    }
    match (method, path) {
        ("GET", "") => Reply::html(pages::marathon(&m.lock(), &m.ports())),
        ("GET", "/ping") => Reply::text(200, "pong"),
        ("GET", "/v2/info") => Reply::json(
            200,
            &json!({"name": "marathon", "version": "0.14.0 (netmod lab)", "frameworkId": m.lock().framework_id}),
        ),
        ("GET", "/v2/apps") => {
            let s = m.lock();
            let embed = req.query.contains("embed=apps.tasks");
            let apps: Vec<Value> = s.apps.values().map(|a| app_json(&s, a, embed)).collect();
            Reply::json(200, &json!({ "apps": apps }))
        }
        ("POST", "/v2/apps") => post_app(m, req),
        ("GET", "/v2/tasks") => {
            let s = m.lock();
            let tasks: Vec<Value> = s.tasks.values().map(|t| task_json(&s, t)).collect();
            Reply::json(200, &json!({ "tasks": tasks }))
        }
        ("GET", "/v2/queue") => Reply::json(200, &queue_json(&m.lock())),
        ("GET", "/v2/deployments") => Reply::json(200, &json!([])),
        ("GET", "/v2/groups") => Reply::json(200, &group_json(&m.lock(), "/")),
        ("POST", "/v2/groups") => match parse_body(req) {
            Err(r) => r,
            Ok(body) => match body["id"].as_str().map(str::to_string) {
                None => Reply::json(
                    422,
                    &violations_json(&[marathon::Violation {
                        path: "/id".into(),
                        error: "error.path.missing".into(),
                    }]),
                ),
                Some(id) => put_group(m, &id, &body, 201),
            },
        },
        _ => {
            if let Some(id) = path.strip_prefix("/v2/groups") {
                let id = if id.is_empty() { "/" } else { id };
                return match method {
                    "GET" => {
                        let s = m.lock();
                        match marathon::absolute_id(id, "/") {
                            Ok(gid) if gid == "/" || s.groups.contains(&gid) => {
                                Reply::json(200, &group_json(&s, &gid))
                            }
                            _ => Reply::message(404, format!("Group '{id}' does not exist")),
                        }
                    }
                    "PUT" => match parse_body(req) {
                        Err(r) => r,
                        Ok(body) => put_group(m, id, &body, 200),
                    },
                    "DELETE" => match m.with(|s| s.delete_group(id, unix_now())) {
                        Ok(v) => Reply::json(200, &v),
                        Err(e) => err(e),
                    },
                    _ => Reply::message(405, "method not allowed"),
                };
            }
            if let Some(id) = path.strip_prefix("/v2/apps") {
                return app_route(m, req, method, id);
            }
            Reply::not_found()
        }
    }
}

fn put_group(m: &Master, id: &str, body: &Value, ok_status: u16) -> Reply {
    if id == "/" {
        return Reply::message(422, "the lab does not replace the root group");
    }
    match marathon::parse_group(body, id) {
        Err(v) => Reply::json(422, &violations_json(&v)),
        Ok(def) => {
            let v = m.with(|s| s.put_group(def, unix_now()));
            Reply::json(ok_status, &v)
        }
    }
}

fn post_app(m: &Master, req: &Request) -> Reply {
    let body = match parse_body(req) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let def = match marathon::parse_app(&body, "/", "") {
        Ok(d) => d,
        Err(v) => return Reply::json(422, &violations_json(&v)),
    };
    let id = def.id.clone();
    match m.with(|s| s.post_app(def, unix_now())) {
        Err(e) => err(e),
        Ok(()) => {
            let s = m.lock();
            Reply::json(201, &app_json(&s, &s.apps[&id], false))
        }
    }
}

fn app_route(m: &Master, req: &Request, method: &str, id: &str) -> Reply {
    let (id, tasks_only) = match id.strip_suffix("/tasks") {
        Some(base) if m.lock().apps.contains_key(base) => (base, true),
        _ => (id, false),
    };
    let id = match marathon::absolute_id(id, "/") {
        Ok(id) => id,
        Err(e) => return Reply::message(404, format!("App '{id}' does not exist: {e}")),
    };
    match (method, tasks_only) {
        ("GET", true) => {
            let s = m.lock();
            let tasks: Vec<Value> = s
                .tasks
                .values()
                .filter(|t| t.app_id == id)
                .map(|t| task_json(&s, t))
                .collect();
            Reply::json(200, &json!({ "tasks": tasks }))
        }
        ("GET", false) => {
            let s = m.lock();
            match s.apps.get(&id) {
                Some(a) => Reply::json(200, &json!({ "app": app_json(&s, a, true) })),
                None => Reply::message(404, format!("App '{id}' does not exist")),
            }
        }
        ("PUT", false) => {
            let body = match parse_body(req) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let Some(patch) = body.as_object() else {
                return Reply::message(422, "an app update must be a JSON object");
            };
            // Marathon merges an update into the current definition.
            let mut merged: Map<String, Value> = m
                .lock()
                .apps
                .get(&id)
                .map(|a| a.def.raw.clone())
                .unwrap_or_default();
            for (k, v) in patch {
                merged.insert(k.clone(), v.clone());
            }
            merged.insert("id".into(), Value::String(id.clone()));
            match marathon::parse_app(&Value::Object(merged), "/", "") {
                Err(v) => Reply::json(422, &violations_json(&v)),
                Ok(def) => Reply::json(200, &m.with(|s| s.put_app(def, unix_now()))),
            }
        }
        ("DELETE", false) => match m.with(|s| s.delete_app(&id, unix_now())) {
            Ok(v) => Reply::json(200, &v),
            Err(e) => err(e),
        },
        _ => Reply::message(405, "method not allowed"),
    }
}

/// The Mesos-like side on 5050 (and the bridge address).
pub fn mesos(m: &Master, req: &Request) -> Reply {
    let path = req.path.trim_end_matches('/');
    if let Some(r) = logs(m, req) {
        return r;
    }
    // Registrations and statuses decide where launches (and the token with
    // them) go: the lab's agents only.
    if path.starts_with("/lab/") && !m.from_agent(req) {
        return auth::unauthorized();
    }
    match (req.method.as_str(), path) {
        ("GET", "") => Reply::html(pages::mesos(&m.lock(), &m.ports())),
        ("GET", "/health") => Reply::text(200, "ok"),
        ("GET", "/master/state.json" | "/master/state" | "/state.json" | "/state") => {
            let timeout = req
                .param("timeout")
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or(25.0)
                .clamp(0.0, 30.0);
            let s = match req
                .param("wait_version")
                .and_then(|v| v.parse::<u64>().ok())
            {
                Some(seen) => m.wait_change(seen, Duration::from_secs_f64(timeout)),
                None => m.lock(),
            };
            Reply::json(200, &mesos_state::state_json(&s, m.ports().mesos))
        }
        ("GET", "/master/slaves") => {
            let s = m.lock();
            let agents: Vec<Value> = s
                .agents
                .values()
                .map(|a| mesos_state::agent_json(&s, a))
                .collect();
            Reply::json(200, &json!({ "slaves": agents }))
        }
        ("POST", "/lab/agents/heartbeat") => match serde_json::from_slice::<Register>(&req.body) {
            Ok(reg) => {
                let reply = m.with(|s| s.heartbeat(reg, unix_now()));
                Reply::json(200, &serde_json::to_value(reply).expect("plain data"))
            }
            Err(e) => Reply::message(400, format!("bad heartbeat: {e}")),
        },
        ("POST", p) if p.starts_with("/lab/agents/") && p.ends_with("/status") => {
            let host = &p["/lab/agents/".len()..p.len() - "/status".len()];
            match serde_json::from_slice::<TaskStatus>(&req.body) {
                Ok(st) => {
                    m.with(|s| s.apply_status(host, st, unix_now()));
                    Reply::json(200, &json!({}))
                }
                Err(e) => Reply::message(400, format!("bad status: {e}")),
            }
        }
        _ => Reply::not_found(),
    }
}

/// `GET /tasks/<id>/stdout|stderr`: the tail of a task's output, read from
/// its sandbox.
fn logs(m: &Master, req: &Request) -> Option<Reply> {
    let rest = req.path.strip_prefix("/tasks/")?;
    let (id, which) = rest.rsplit_once('/')?;
    if req.method != "GET" || !matches!(which, "stdout" | "stderr") {
        return None;
    }
    let sandbox = m.lock().find_task(id).and_then(|t| t.sandbox.clone());
    let Some(sandbox) = sandbox else {
        return Some(Reply::text(
            404,
            format!("no sandbox known for task {id}\n"),
        ));
    };
    let path = std::path::Path::new(&sandbox).join(which);
    if !path.starts_with(sandbox_root()) {
        return Some(Reply::text(403, "outside the lab's sandboxes\n"));
    }
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return Some(Reply::text(404, format!("{}: {e}\n", path.display()))),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut out = Vec::new();
    let _ = file.take(LOG_TAIL).read_to_end(&mut out);
    Some(Reply::text(200, out))
}

// ---------------------------------------------------------------- JSON

/// A task as Marathon's `/v2/tasks` shows it.
pub fn task_json(s: &State, t: &Task) -> Value {
    let slave_id = s.agents.get(&t.agent).map(|a| a.id.clone());
    json!({
        "id": t.id,
        "appId": t.app_id,
        "host": t.agent,
        "ports": t.host_ports,
        "servicePorts": [],
        "stagedAt": iso(t.staged_at),
        "startedAt": t.started_at.map(iso),
        "version": t.app_version,
        "slaveId": slave_id,
        "state": t.state,
        "ipAddresses": t.ip_addresses.iter().map(|ip| json!({"ipAddress": ip, "protocol": "IPv4"})).collect::<Vec<_>>(),
        "message": t.message,
    })
}

/// An app as `/v2/apps` shows it: the definition with Marathon's defaults,
/// the version and the task counts.
pub fn app_json(s: &State, app: &App, embed_tasks: bool) -> Value {
    let d = &app.def;
    let mut v = Map::new();
    for (k, val) in &d.raw {
        v.insert(k.clone(), val.clone());
    }
    let ip = d.ip_address.as_ref().map(|ipa| {
        json!({"groups": ipa.groups, "labels": ipa.labels, "discovery": {"ports":
            ipa.discovery_ports.iter().map(|p| json!({"name": p.name, "number": p.number, "protocol": p.protocol})).collect::<Vec<_>>()}})
    });
    let fields = json!({
        "id": d.id, "cmd": d.cmd, "cpus": d.cpus, "mem": d.mem, "instances": d.instances,
        "uris": d.uris, "env": d.env, "labels": d.labels, "ports": d.ports, "requirePorts": d.require_ports,
        "ipAddress": ip, "backoffSeconds": d.backoff_seconds, "backoffFactor": d.backoff_factor,
        "maxLaunchDelaySeconds": d.max_launch_delay_seconds, "version": app.version,
    });
    for (k, val) in fields.as_object().expect("object") {
        v.insert(k.clone(), val.clone());
    }
    let live: Vec<&Task> = s.tasks.values().filter(|t| t.app_id == d.id).collect();
    let running = live.iter().filter(|t| t.state == wire::RUNNING).count();
    v.insert("tasksRunning".into(), json!(running));
    v.insert("tasksStaged".into(), json!(live.len() - running));
    v.insert("tasksHealthy".into(), json!(0));
    v.insert("tasksUnhealthy".into(), json!(0));
    v.insert("deployments".into(), json!([]));
    if let Some(w) = s.waiting.get(&d.id) {
        v.insert(
            "lab_waiting".into(),
            json!({"count": w.count, "reason": w.reason}),
        );
    }
    if let Some(f) = &app.last_failure {
        v.insert("lastTaskFailure".into(), json!({"message": f}));
    }
    if embed_tasks {
        v.insert(
            "tasks".into(),
            Value::Array(live.iter().map(|t| task_json(s, t)).collect()),
        );
    }
    Value::Object(v)
}

fn group_json(s: &State, id: &str) -> Value {
    let prefix = if id == "/" {
        "/".to_string()
    } else {
        format!("{id}/")
    };
    let depth = id.matches('/').count() + usize::from(id != "/");
    let apps: Vec<Value> = s
        .apps
        .values()
        .filter(|a| a.def.id.starts_with(&prefix) && a.def.id.matches('/').count() == depth)
        .map(|a| app_json(s, a, false))
        .collect();
    let groups: Vec<Value> = s
        .groups
        .iter()
        .filter(|g| g.starts_with(&prefix) && g.matches('/').count() == depth)
        .map(|g| group_json(s, g))
        .collect();
    json!({"id": id, "apps": apps, "groups": groups, "dependencies": [], "version": iso(s.started_at)})
}

fn queue_json(s: &State) -> Value {
    let now = unix_now();
    let queue: Vec<Value> = s
        .waiting
        .iter()
        .map(|(id, w)| {
            let left = s
                .apps
                .get(id)
                .map(|a| (a.delay_until - now).max(0.0))
                .unwrap_or(0.0);
            json!({"app": {"id": id}, "count": w.count,
                   "delay": {"timeLeftSeconds": left.ceil(), "overdue": left <= 0.0},
                   "reason": w.reason})
        })
        .collect();
    json!({ "queue": queue })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Register;

    fn call(m: &Master, method: &str, url: &str, body: &str) -> Reply {
        let r = Request::new(method, url, body.as_bytes());
        if url.starts_with("/master") || url.starts_with("/lab") {
            mesos(m, &r)
        } else {
            marathon(m, &r)
        }
    }

    fn master() -> Master {
        Master::new(crate::auth::Token::generate().unwrap())
    }

    fn register(host: &str) -> String {
        serde_json::to_string(&Register {
            hostname: host.into(),
            ip: "10.234.0.99".into(),
            port: 5051,
            cpus: 4.0,
            mem: 4096.0,
            ports: vec![(9000, 31100)],
            tasks: vec![],
        })
        .unwrap()
    }

    #[test]
    fn only_the_labs_agents_register_and_report() {
        let m = master();
        let token = m.token.clone();
        let other = crate::auth::Token::generate().unwrap();
        assert_eq!(call(&m, "PUT", "/v2/groups/star", group()).status, 200);
        let hb = register("evil");
        let lab_call = |auth: Option<String>, url: &str, body: &str| {
            let r = Request::new("POST", url, body.as_bytes());
            let r = match auth {
                Some(a) => r.with_header("Authorization", &a),
                None => r,
            };
            mesos(&m, &r)
        };
        let status = serde_json::to_string(&TaskStatus {
            task_id: "x".into(),
            state: wire::RUNNING.into(),
            message: None,
            ip_addresses: vec![],
            container_id: None,
            sandbox: None,
            timestamp: 0.0,
        })
        .unwrap();
        let before = dump(&m);
        for auth in [
            None,
            Some(other.authorization()),
            Some("Bearer ".into()),
            Some(token.authorization().replace("Bearer", "Basic")),
        ] {
            let r = lab_call(auth.clone(), "/lab/agents/heartbeat", &hb);
            assert_eq!(r.status, 401, "{auth:?}");
            let r = lab_call(auth.clone(), "/lab/agents/evil/status", &status);
            assert_eq!(r.status, 401, "{auth:?}");
            assert!(m.lock().agents.is_empty(), "{auth:?} registered an agent");
            assert_eq!(dump(&m), before);
        }
        // Reading the state needs nothing (Mesos-DNS reads it).
        assert_eq!(call(&m, "GET", "/master/state.json", "").status, 200);
        // The control: with the token, the agent registers.
        let r = lab_call(Some(token.authorization()), "/lab/agents/heartbeat", &hb);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(m.lock().agents.contains_key("evil"));
        let r = lab_call(
            Some(token.authorization()),
            "/lab/agents/evil/status",
            &status,
        );
        assert_eq!(r.status, 200);
    }

    fn group() -> &'static str {
        r#"{"id": "/star", "apps": [
            {"id": "probe-a", "cmd": "star-probe", "cpus": 0.1, "mem": 64,
             "ipAddress": {"groups": ["public"], "discovery": {"ports": [{"name": "status", "number": 9000, "protocol": "tcp"}]}}},
            {"id": "collect", "cmd": "star-collect", "cpus": 0.2, "mem": 64, "ports": [9001], "requirePorts": true}]}"#
    }

    fn dump(m: &Master) -> String {
        let s = m.lock();
        format!(
            "{:?} {:?} {:?}",
            s.apps,
            s.groups,
            s.tasks.keys().collect::<Vec<_>>()
        )
    }

    #[test]
    fn bad_input_gets_marathon_errors_and_changes_nothing() {
        let m = master();
        assert_eq!(call(&m, "PUT", "/v2/groups/star", group()).status, 200);
        let before = dump(&m);
        let cases = [
            ("PUT", "/v2/groups/star", "{not json", 400),
            ("POST", "/v2/apps", "[1,", 400),
            ("POST", "/v2/apps", r#"{"cmd": "x"}"#, 422),
            (
                "POST",
                "/v2/apps",
                r#"{"id": "x", "cmd": "x", "cpus": -1}"#,
                422,
            ),
            (
                "PUT",
                "/v2/groups/star",
                r#"{"apps": [{"id": "a", "cmd": "x", "cpus": -0.5}]}"#,
                422,
            ),
            ("PUT", "/v2/groups/star", r#"{"apps": [{"cmd": "x"}]}"#, 422),
            ("DELETE", "/v2/groups/nope", "", 404),
            ("DELETE", "/v2/apps/nope", "", 404),
            ("GET", "/v2/apps/nope", "", 404),
            (
                "POST",
                "/v2/apps",
                r#"{"id": "/star/collect", "cmd": "x"}"#,
                409,
            ),
            ("PUT", "/v2/apps/star/collect", r#"{"mem": "x"}"#, 422),
        ];
        for (method, url, body, status) in cases {
            let r = call(&m, method, url, body);
            assert_eq!(
                r.status,
                status,
                "{method} {url} {body}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert!(r.body_json()["message"].is_string(), "{method} {url}");
            assert_eq!(dump(&m), before, "{method} {url} {body} changed the state");
        }
        let r = call(
            &m,
            "POST",
            "/v2/apps",
            r#"{"id": "x", "cmd": "x", "cpus": -1}"#,
        );
        assert_eq!(r.body_json()["details"][0]["path"], "/cpus");
    }

    #[test]
    fn groups_apps_and_tasks() {
        let m = master();
        let r = call(&m, "PUT", "/v2/groups/star", group());
        assert!(r.body_json()["deploymentId"].is_string());
        let g = call(&m, "GET", "/v2/groups/star", "").body_json();
        assert_eq!(g["apps"].as_array().unwrap().len(), 2);
        let root = call(&m, "GET", "/v2/groups", "").body_json();
        assert_eq!(root["groups"][0]["id"], "/star");
        let a = call(&m, "GET", "/v2/apps/star/probe-a", "").body_json();
        assert_eq!(a["app"]["ipAddress"]["groups"][0], "public");
        assert_eq!(a["app"]["ports"], json!([]));
        // Scale through PUT of an app.
        assert_eq!(
            call(&m, "PUT", "/v2/apps/star/probe-a", r#"{"instances": 3}"#).status,
            200
        );
        assert_eq!(m.lock().apps["/star/probe-a"].def.instances, 3);
        // An agent; the scheduler plans; the tasks show.
        m.with(|s| {
            s.heartbeat(
                Register {
                    hostname: "h1".into(),
                    ip: "10.234.0.11".into(),
                    port: 5051,
                    cpus: 4.0,
                    mem: 4096.0,
                    ports: vec![(9000, 31100)],
                    tasks: vec![],
                },
                unix_now(),
            );
            s.plan(unix_now())
        });
        let t = call(&m, "GET", "/v2/tasks", "").body_json();
        assert_eq!(t["tasks"].as_array().unwrap().len(), 4);
        let st = call(&m, "GET", "/master/state.json", "").body_json();
        assert_eq!(st["slaves"][0]["resources"]["ports"], "[9000-31100]");
        assert_eq!(st["frameworks"][0]["tasks"].as_array().unwrap().len(), 4);
        assert!(String::from_utf8_lossy(&call(&m, "GET", "/", "").body).contains("/star/probe-a"));
        assert_eq!(call(&m, "DELETE", "/v2/groups/star", "").status, 200);
        assert!(call(&m, "GET", "/v2/apps", "").body_json()["apps"]
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(call(&m, "GET", "/v2/groups/star", "").status, 404);
    }

    #[test]
    fn pages_and_state_show_container_ids_and_labels() {
        let m = master();
        let app = r#"{"id": "/star/probe-a", "cmd": "star-probe", "cpus": 0.1, "mem": 64,
            "labels": {"team": "net"}, "ipAddress": {"groups": ["public"]}}"#;
        assert_eq!(call(&m, "POST", "/v2/apps", app).status, 201);
        let now = unix_now();
        let actions = m.with(|s| {
            s.heartbeat(
                Register {
                    hostname: "h1".into(),
                    ip: "10.234.0.11".into(),
                    port: 5051,
                    cpus: 4.0,
                    mem: 4096.0,
                    ports: vec![(9000, 31100)],
                    tasks: vec![],
                },
                now,
            );
            s.plan(now)
        });
        let Some(super::super::state::Action::Launch { spec, .. }) = actions.first() else {
            panic!("no launch: {actions:?}")
        };
        // The app's labels travel with the task (Mesos TaskInfo labels).
        assert_eq!(spec.labels["team"], "net");
        let status = TaskStatus {
            task_id: spec.task_id.clone(),
            state: wire::RUNNING.into(),
            message: None,
            ip_addresses: vec!["192.168.0.7".into()],
            container_id: Some("c0ffee-1".into()),
            sandbox: None,
            timestamp: now,
        };
        m.with(|s| s.apply_status("h1", status, now));
        for page in ["/", "/master/state.json"] {
            let r = call(&m, "GET", page, "");
            assert_eq!(r.status, 200);
        }
        let marathon_page = String::from_utf8(call(&m, "GET", "/", "").body).unwrap();
        let mesos_page = pages::mesos(&m.lock(), &m.ports());
        for page in [&marathon_page, &mesos_page] {
            assert!(
                page.contains("<code class=\"container-id\">c0ffee-1</code>"),
                "{page}"
            );
        }
        let st = call(&m, "GET", "/master/state.json", "").body_json();
        let t = &st["frameworks"][0]["tasks"][0];
        assert_eq!(t["labels"], json!([{"key": "team", "value": "net"}]));
        assert_eq!(t["container_id"], "c0ffee-1");
        let running = t["statuses"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            running["container_status"]["container_id"]["value"],
            "c0ffee-1"
        );
        // Ended, it keeps its container id on both pages.
        let ended = TaskStatus {
            task_id: spec.task_id.clone(),
            state: wire::FAILED.into(),
            message: Some("exited with status 1".into()),
            ip_addresses: vec![],
            container_id: Some("c0ffee-1".into()),
            sandbox: None,
            timestamp: now,
        };
        m.with(|s| s.apply_status("h1", ended, now));
        assert_eq!(
            m.lock().completed[0].container_id.as_deref(),
            Some("c0ffee-1")
        );
        let mesos_page = pages::mesos(&m.lock(), &m.ports());
        assert!(mesos_page.contains("<code class=\"container-id\">c0ffee-1</code>"));
    }
}
