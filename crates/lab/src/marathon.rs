//! Marathon app and group definitions: parsed and validated before anything
//! changes, with Marathon-style violations (`path` + `errors`) for a 422.
//!
//! Fields the lab acts on: `id`, `cmd`, `cpus`, `mem`, `instances`, `uris`,
//! `env`, `labels`, `ports`, `requirePorts`, `ipAddress` (`groups`,
//! `labels`, `discovery.ports`), `constraints` (on `hostname`: `UNIQUE`,
//! `CLUSTER`, `LIKE`, `UNLIKE`), `backoffSeconds`, `backoffFactor`,
//! `maxLaunchDelaySeconds`. Other fields are kept and shown, not acted on.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// One validation failure, Marathon-style.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub path: String,
    pub error: String,
}

fn violation(path: &str, error: impl Into<String>) -> Violation {
    Violation {
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        error: error.into(),
    }
}

/// The 422 body for a list of violations.
pub fn violations_json(v: &[Violation]) -> Value {
    json!({
        "message": "Object is not valid",
        "details": v.iter().map(|x| json!({"path": x.path, "errors": [x.error]})).collect::<Vec<_>>(),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryPort {
    pub name: String,
    pub number: u16,
    pub protocol: String,
}

/// `ipAddress`: the task gets its own address.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IpAddressDef {
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub discovery_ports: Vec<DiscoveryPort>,
}

/// A placement constraint on the agent's host name.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    Unique,
    Cluster(String),
    Like(String),
    Unlike(String),
}

impl Constraint {
    /// Whether a task may go to `host`, given the hosts of the app's live tasks.
    pub fn allows(&self, host: &str, app_hosts: &[&str]) -> bool {
        match self {
            Constraint::Unique => !app_hosts.contains(&host),
            Constraint::Cluster(v) => host == v,
            Constraint::Like(re) => full_match(re, host),
            Constraint::Unlike(re) => !full_match(re, host),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Constraint::Unique => "hostname UNIQUE".into(),
            Constraint::Cluster(v) => format!("hostname CLUSTER {v}"),
            Constraint::Like(v) => format!("hostname LIKE {v}"),
            Constraint::Unlike(v) => format!("hostname UNLIKE {v}"),
        }
    }
}

/// A validated app.
#[derive(Debug, Clone, PartialEq)]
pub struct AppDef {
    /// Absolute: `/star/probe-a`.
    pub id: String,
    pub cmd: String,
    pub cpus: f64,
    pub mem: f64,
    pub instances: u32,
    pub uris: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The app's labels: the tasks' Mesos labels, and so (as the lab's
    /// isolator passes them on) their endpoints' labels.
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<u16>,
    pub require_ports: bool,
    pub ip_address: Option<IpAddressDef>,
    pub constraints: Vec<Constraint>,
    pub backoff_seconds: f64,
    pub backoff_factor: f64,
    pub max_launch_delay_seconds: f64,
    /// The definition as given, with `id` made absolute.
    pub raw: Map<String, Value>,
}

impl AppDef {
    /// The definition without `instances`: what a change of forces a restart.
    pub fn shape(&self) -> Value {
        let mut m = self.raw.clone();
        m.remove("instances");
        m.remove("version");
        Value::Object(m)
    }

    /// The Mesos task name: `/star/probe-b` → `probe-b.star`.
    pub fn task_name(&self) -> String {
        task_name(&self.id)
    }
}

/// `/star/probe-b` → `probe-b.star`.
pub fn task_name(app_id: &str) -> String {
    let parts: Vec<&str> = app_id.split('/').filter(|s| !s.is_empty()).collect();
    parts.into_iter().rev().collect::<Vec<_>>().join(".")
}

/// Marathon's task id prefix: `/star/probe-b` → `star_probe-b`.
pub fn task_id_prefix(app_id: &str) -> String {
    app_id.trim_start_matches('/').replace('/', "_")
}

fn valid_segment(s: &str) -> bool {
    // ^(([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])\.)*([a-z0-9]|[a-z0-9][a-z0-9\-]*[a-z0-9])$
    !s.is_empty()
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// Makes `id` absolute against the group `base` (`/` for none), resolving
/// `.` and `..`; checks every segment.
pub fn absolute_id(id: &str, base: &str) -> Result<String, String> {
    let joined = if id.starts_with('/') {
        id.to_string()
    } else {
        format!("{}/{id}", base.trim_end_matches('/'))
    };
    let mut out: Vec<&str> = Vec::new();
    for seg in joined.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(format!("the path {id:?} leaves the root group"));
                }
            }
            s if valid_segment(s) => out.push(s),
            s => {
                return Err(format!(
                    "{s:?} is not a valid identifier: use lowercase letters, digits, hyphens \
                     and dots, starting and ending with a letter or digit"
                ))
            }
        }
    }
    Ok(format!("/{}", out.join("/")))
}

// ---------------------------------------------------------------- fields

struct Fields<'a> {
    obj: &'a Map<String, Value>,
    path: String,
    errors: Vec<Violation>,
}

impl<'a> Fields<'a> {
    fn at(&self, key: &str) -> String {
        format!("{}/{key}", self.path)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn number(&mut self, key: &str, default: f64, min: f64) -> f64 {
        match self.get(key) {
            None => default,
            Some(v) => match v.as_f64() {
                Some(n) if n.is_finite() && n >= min => n,
                Some(n) => {
                    let e = violation(
                        &self.at(key),
                        format!("got {n:?}, expected {min:?} or more"),
                    );
                    self.errors.push(e);
                    default
                }
                None => {
                    let e = violation(&self.at(key), "must be a number");
                    self.errors.push(e);
                    default
                }
            },
        }
    }

    fn string(&mut self, key: &str) -> Option<String> {
        match self.get(key) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                let e = violation(&self.at(key), "must be a string");
                self.errors.push(e);
                None
            }
        }
    }

    fn bool(&mut self, key: &str) -> bool {
        match self.get(key) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                let e = violation(&self.at(key), "must be true or false");
                self.errors.push(e);
                false
            }
        }
    }

    fn strings(&mut self, key: &str) -> Vec<String> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect(),
            Some(_) => {
                let e = violation(&self.at(key), "must be a list of strings");
                self.errors.push(e);
                Vec::new()
            }
        }
    }

    fn string_map(&mut self, key: &str) -> BTreeMap<String, String> {
        match self.get(key) {
            None => BTreeMap::new(),
            Some(Value::Object(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    match v.as_str() {
                        Some(s) => {
                            out.insert(k.clone(), s.to_string());
                        }
                        None => {
                            let e = violation(&format!("{}/{k}", self.at(key)), "must be a string");
                            self.errors.push(e);
                        }
                    }
                }
                out
            }
            Some(_) => {
                let e = violation(&self.at(key), "must be an object of strings");
                self.errors.push(e);
                BTreeMap::new()
            }
        }
    }
}

/// Parses and validates one app. `base` is the enclosing group's id, `path`
/// the JSON path used in violations (`""` for a bare app, `/apps(0)` in a group).
pub fn parse_app(v: &Value, base: &str, path: &str) -> Result<AppDef, Vec<Violation>> {
    let Some(obj) = v.as_object() else {
        return Err(vec![violation(path, "an app must be a JSON object")]);
    };
    let mut f = Fields {
        obj,
        path: path.to_string(),
        errors: Vec::new(),
    };
    let id = match f.string("id") {
        None if !f.errors.is_empty() => String::new(),
        None => {
            let e = violation(&f.at("id"), "error.path.missing");
            f.errors.push(e);
            String::new()
        }
        Some(raw) => match absolute_id(&raw, base) {
            Ok(id) if id == "/" => {
                let e = violation(&f.at("id"), "an app id cannot be the root group");
                f.errors.push(e);
                String::new()
            }
            Ok(id) => id,
            Err(msg) => {
                let e = violation(&f.at("id"), msg);
                f.errors.push(e);
                String::new()
            }
        },
    };
    if base != "/" && !id.is_empty() && !id.starts_with(&format!("{base}/")) {
        let e = violation(
            &f.at("id"),
            format!("the app {id} is not inside the group {base}"),
        );
        f.errors.push(e);
    }
    let cmd = f.string("cmd").unwrap_or_default();
    if cmd.trim().is_empty() && f.get("cmd").is_none_or(Value::is_string) {
        let e = violation(
            path,
            "AppDefinition must either contain one of 'cmd' or 'args', and/or a 'container'.",
        );
        f.errors.push(e);
    }
    let cpus = f.number("cpus", 1.0, 0.0);
    let mem = f.number("mem", 128.0, 0.0);
    let _disk = f.number("disk", 0.0, 0.0);
    let instances = f.number("instances", 1.0, 0.0);
    if instances.fract() != 0.0 {
        let e = violation(&f.at("instances"), "must be a whole number");
        f.errors.push(e);
    }
    let uris = f.strings("uris");
    let env = f.string_map("env");
    let labels = f.string_map("labels");
    let require_ports = f.bool("requirePorts");
    let backoff_seconds = f.number("backoffSeconds", 1.0, 0.0);
    let backoff_factor = f.number("backoffFactor", 1.15, 1.0);
    let max_launch_delay_seconds = f.number("maxLaunchDelaySeconds", 3600.0, 0.0);

    let ip_address = match f.get("ipAddress") {
        None => None,
        Some(Value::Object(ipa)) => Some(parse_ip_address(ipa, &f.at("ipAddress"), &mut f.errors)),
        Some(_) => {
            let e = violation(&f.at("ipAddress"), "must be an object");
            f.errors.push(e);
            None
        }
    };

    let ports = match f.get("ports") {
        None if ip_address.is_some() => Vec::new(),
        None => vec![0],
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for (i, p) in a.iter().enumerate() {
                match p.as_u64().filter(|n| *n <= 65535) {
                    Some(n) => out.push(n as u16),
                    None => {
                        let e = violation(
                            &format!("{}({i})", f.at("ports")),
                            "must be a port number (0-65535)",
                        );
                        f.errors.push(e);
                    }
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for p in out.iter().filter(|p| **p != 0) {
                if !seen.insert(*p) {
                    let e = violation(&f.at("ports"), format!("port {p} appears twice"));
                    f.errors.push(e);
                }
            }
            out
        }
        Some(_) => {
            let e = violation(&f.at("ports"), "must be a list of port numbers");
            f.errors.push(e);
            Vec::new()
        }
    };
    if ip_address.is_some() && !ports.is_empty() {
        let e = violation(
            &f.at("ports"),
            "IP address (ipAddress) and ports are not allowed at the same time",
        );
        f.errors.push(e);
    }
    if require_ports && ports.contains(&0) {
        let e = violation(
            &f.at("requirePorts"),
            "requirePorts needs fixed, non-zero ports",
        );
        f.errors.push(e);
    }

    let constraints = parse_constraints(f.get("constraints"), &f.at("constraints"), &mut f.errors);

    if !f.errors.is_empty() {
        return Err(f.errors);
    }
    let mut raw = obj.clone();
    raw.insert("id".into(), Value::String(id.clone()));
    Ok(AppDef {
        id,
        cmd,
        cpus,
        mem,
        instances: instances as u32,
        uris,
        env,
        labels,
        ports,
        require_ports,
        ip_address,
        constraints,
        backoff_seconds,
        backoff_factor,
        max_launch_delay_seconds,
        raw,
    })
}

fn parse_ip_address(
    ipa: &Map<String, Value>,
    path: &str,
    errors: &mut Vec<Violation>,
) -> IpAddressDef {
    let mut f = Fields {
        obj: ipa,
        path: path.to_string(),
        errors: Vec::new(),
    };
    let groups = f.strings("groups");
    let labels = f.string_map("labels");
    let mut discovery_ports = Vec::new();
    match f.get("discovery") {
        None => {}
        Some(Value::Object(d)) => match d.get("ports") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ports)) => {
                for (i, p) in ports.iter().enumerate() {
                    let at = format!("{path}/discovery/ports({i})");
                    let number = p["number"].as_u64().filter(|n| (1..=65535).contains(n));
                    let name = p["name"].as_str().unwrap_or("");
                    let protocol = p["protocol"].as_str().unwrap_or("tcp");
                    match number {
                        Some(n) if !name.is_empty() && matches!(protocol, "tcp" | "udp") => {
                            discovery_ports.push(DiscoveryPort {
                                name: name.into(),
                                number: n as u16,
                                protocol: protocol.into(),
                            })
                        }
                        _ => f.errors.push(violation(
                            &at,
                            "a discovery port needs a name, a number (1-65535) and protocol tcp or udp",
                        )),
                    }
                }
            }
            Some(_) => f.errors.push(violation(
                &format!("{path}/discovery/ports"),
                "must be a list",
            )),
        },
        Some(_) => f
            .errors
            .push(violation(&format!("{path}/discovery"), "must be an object")),
    }
    errors.append(&mut f.errors);
    IpAddressDef {
        groups,
        labels,
        discovery_ports,
    }
}

fn parse_constraints(
    v: Option<&Value>,
    path: &str,
    errors: &mut Vec<Violation>,
) -> Vec<Constraint> {
    let Some(v) = v else { return Vec::new() };
    let Some(list) = v.as_array() else {
        errors.push(violation(
            path,
            "must be a list of [field, operator, value?]",
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let at = format!("{path}({i})");
        let parts: Vec<&str> = c
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let parsed = match parts.as_slice() {
            ["hostname", "UNIQUE"] => Some(Constraint::Unique),
            ["hostname", "CLUSTER", v] => Some(Constraint::Cluster(v.to_string())),
            ["hostname", "LIKE", v] => Some(Constraint::Like(v.to_string())),
            ["hostname", "UNLIKE", v] => Some(Constraint::Unlike(v.to_string())),
            _ => None,
        };
        match parsed {
            Some(c) => out.push(c),
            None => errors.push(violation(
                &at,
                "the lab supports constraints on hostname: UNIQUE, CLUSTER v, LIKE re, UNLIKE re",
            )),
        }
    }
    out
}

/// A validated group: its id, the ids of every group in it (itself
/// included), and every app in it and its subgroups.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupDef {
    pub id: String,
    pub groups: Vec<String>,
    pub apps: Vec<AppDef>,
}

/// Parses and validates a group for `PUT /v2/groups/<id>`.
pub fn parse_group(v: &Value, id: &str) -> Result<GroupDef, Vec<Violation>> {
    let id = absolute_id(id, "/").map_err(|e| vec![violation("/id", e)])?;
    let mut out = GroupDef {
        id: id.clone(),
        groups: Vec::new(),
        apps: Vec::new(),
    };
    let mut errors = Vec::new();
    collect_group(v, &id, "", &mut out, &mut errors);
    let mut seen = std::collections::BTreeSet::new();
    for a in &out.apps {
        if !seen.insert(a.id.clone()) {
            errors.push(violation(
                "/apps",
                format!("the app {} appears twice", a.id),
            ));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn collect_group(v: &Value, id: &str, path: &str, out: &mut GroupDef, errors: &mut Vec<Violation>) {
    let Some(obj) = v.as_object() else {
        errors.push(violation(path, "a group must be a JSON object"));
        return;
    };
    out.groups.push(id.to_string());
    match obj.get("apps") {
        None | Some(Value::Null) => {}
        Some(Value::Array(apps)) => {
            for (i, a) in apps.iter().enumerate() {
                match parse_app(a, id, &format!("{path}/apps({i})")) {
                    Ok(app) => out.apps.push(app),
                    Err(mut e) => errors.append(&mut e),
                }
            }
        }
        Some(_) => errors.push(violation(&format!("{path}/apps"), "must be a list of apps")),
    }
    match obj.get("groups") {
        None | Some(Value::Null) => {}
        Some(Value::Array(groups)) => {
            for (i, g) in groups.iter().enumerate() {
                let at = format!("{path}/groups({i})");
                match g["id"].as_str().map(|gid| absolute_id(gid, id)) {
                    Some(Ok(gid)) if gid.starts_with(&format!("{id}/")) => {
                        collect_group(g, &gid, &at, out, errors)
                    }
                    Some(Ok(gid)) => errors.push(violation(
                        &format!("{at}/id"),
                        format!("the group {gid} is not inside {id}"),
                    )),
                    Some(Err(e)) => errors.push(violation(&format!("{at}/id"), e)),
                    None => errors.push(violation(&format!("{at}/id"), "error.path.missing")),
                }
            }
        }
        Some(_) => errors.push(violation(
            &format!("{path}/groups"),
            "must be a list of groups",
        )),
    }
}

/// A tiny full-match regex for LIKE/UNLIKE: literals, `.`, postfix `*`,
/// top-level `|`.
pub fn full_match(re: &str, s: &str) -> bool {
    fn m(p: &[u8], s: &[u8]) -> bool {
        if p.is_empty() {
            return s.is_empty();
        }
        let star = p.len() > 1 && p[1] == b'*';
        let first = !s.is_empty() && (p[0] == b'.' || p[0] == s[0]);
        if star {
            m(&p[2..], s) || (first && m(p, &s[1..]))
        } else {
            first && m(&p[1..], &s[1..])
        }
    }
    re.split('|').any(|alt| m(alt.as_bytes(), s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(v: Value) -> Vec<String> {
        match parse_app(&v, "/", "") {
            Ok(_) => vec![],
            Err(e) => e
                .into_iter()
                .map(|x| format!("{} {}", x.path, x.error))
                .collect(),
        }
    }

    #[test]
    fn ids_and_names() {
        assert_eq!(absolute_id("probe-a", "/star").unwrap(), "/star/probe-a");
        assert_eq!(absolute_id("/x/y/", "/star").unwrap(), "/x/y");
        assert_eq!(absolute_id("../b", "/star/a").unwrap(), "/star/b");
        assert!(absolute_id("Probe", "/").is_err());
        assert!(absolute_id("a_b", "/").is_err());
        assert!(absolute_id("-a", "/").is_err());
        assert!(absolute_id("../..", "/a").is_err());
        assert_eq!(task_name("/star/probe-b"), "probe-b.star");
        assert_eq!(task_id_prefix("/star/probe-b"), "star_probe-b");
    }

    #[test]
    fn a_seed_app_parses_with_defaults() {
        let a = parse_app(
            &json!({"id": "probe-a", "cmd": "star-probe", "cpus": 0.1, "mem": 64.0,
                    "ports": [9000], "requirePorts": true, "env": {"A": "1"},
                    "uris": ["file:///x/y.json"]}),
            "/star",
            "",
        )
        .unwrap();
        assert_eq!(a.id, "/star/probe-a");
        assert_eq!(a.instances, 1);
        assert_eq!(a.ports, vec![9000]);
        assert!(a.require_ports && a.ip_address.is_none());
        assert_eq!(a.task_name(), "probe-a.star");
        let b = parse_app(&json!({"id": "/b", "cmd": "x"}), "/", "").unwrap();
        assert_eq!((b.ports.clone(), b.cpus, b.mem), (vec![0], 1.0, 128.0));
        assert!(b.labels.is_empty());
        let l = parse_app(
            &json!({"id": "/l", "cmd": "x", "labels": {"team": "net"}}),
            "/",
            "",
        )
        .unwrap();
        assert_eq!(l.labels["team"], "net");
        let c = parse_app(
            &json!({"id": "/c", "cmd": "x", "ipAddress": {"groups": ["public"],
                    "labels": {"ipv4_addrs": "['192.168.255.253']"},
                    "discovery": {"ports": [{"name": "http", "number": 9001, "protocol": "tcp"}]}}}),
            "/",
            "",
        )
        .unwrap();
        let ipa = c.ip_address.unwrap();
        assert!(c.ports.is_empty());
        assert_eq!(ipa.groups, vec!["public"]);
        assert_eq!(ipa.discovery_ports[0].number, 9001);
    }

    #[test]
    fn invalid_apps_are_explained() {
        assert_eq!(errs(json!({"cmd": "x"})), vec!["/id error.path.missing"]);
        assert_eq!(
            errs(json!({"id": "a", "cmd": "x", "cpus": -1})),
            vec!["/cpus got -1.0, expected 0.0 or more"]
        );
        assert!(errs(json!({"id": "a"}))[0].contains("'cmd'"));
        assert!(errs(json!({"id": "a", "cmd": "x", "mem": "lots"}))[0]
            .contains("/mem must be a number"));
        assert!(errs(json!({"id": "a", "cmd": "x", "instances": 1.5}))[0].contains("whole"));
        assert!(errs(json!({"id": "a", "cmd": "x", "ports": [9000, 9000]}))[0].contains("twice"));
        assert!(errs(json!({"id": "a", "cmd": "x", "ports": [70000]}))[0].contains("/ports(0)"));
        assert!(
            errs(json!({"id": "a", "cmd": "x", "ports": [9000], "ipAddress": {}}))[0]
                .contains("not allowed at the same time")
        );
        assert!(
            errs(json!({"id": "a", "cmd": "x", "constraints": [["rack", "GROUP_BY"]]}))[0]
                .contains("constraints(0)")
        );
        assert!(errs(json!([1]))[0].contains("JSON object"));
        assert_eq!(
            errs(json!({"id": "a", "cmd": "x", "labels": {"team": 7}})),
            vec!["/labels/team must be a string"]
        );
        assert!(errs(json!({"id": "a", "cmd": "x", "labels": ["x"]}))[0]
            .contains("/labels must be an object of strings"));
    }

    #[test]
    fn groups_flatten_with_paths() {
        let g = parse_group(
            &json!({"id": "/star", "apps": [{"id": "a", "cmd": "x"}],
                    "groups": [{"id": "inner", "apps": [{"id": "b", "cmd": "y"}]}]}),
            "star",
        )
        .unwrap();
        assert_eq!(g.groups, vec!["/star", "/star/inner"]);
        let ids: Vec<_> = g.apps.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, vec!["/star/a", "/star/inner/b"]);
        let e = parse_group(
            &json!({"apps": [{"id": "a", "cmd": "x"}, {"id": "b", "cpus": -2, "cmd": "x"}]}),
            "/s",
        )
        .unwrap_err();
        assert_eq!(e[0].path, "/apps(1)/cpus");
        let e = parse_group(&json!({"apps": [{"id": "/other/a", "cmd": "x"}]}), "/s").unwrap_err();
        assert!(e[0].error.contains("not inside the group"));
    }

    #[test]
    fn constraints_match() {
        assert!(full_match("nmlab-agent-1", "nmlab-agent-1"));
        assert!(full_match("nmlab-agent-.*", "nmlab-agent-7"));
        assert!(full_match("a|b", "b"));
        assert!(!full_match("a", "ab"));
        assert!(Constraint::Unique.allows("h1", &["h2"]));
        assert!(!Constraint::Unique.allows("h1", &["h1"]));
    }
}
