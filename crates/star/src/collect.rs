//! star-collect: fetches each resource's URL (a probe's `/status`) every
//! interval, keeps the last answer, and serves resources, answers and the
//! web view.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use crate::client::{self, HttpUrl};
use crate::flags::{Flags, Parsed};
use crate::server::{segments, Handler, Listen, Reply};
use crate::Error;

pub const USAGE: &str = "\
Usage: star-collect [--resources-file=<path>] [--http-address=<addr>] [--http-port=<port>]
                    [--http-listen-fd=<fd>] [--http-request-seconds=<secs>] [--logfile=<path>]

Fetches every resource's URL each interval and serves the answers and a live
web view of who reaches whom (GET /).

  --resources-file         JSON array of {\"id\": ..., \"url\": ...} to start with
  --http-address           address to listen on             [default: 0.0.0.0]
  --http-port              port to listen on, 0 for any     [default: 9001]
  --http-listen-fd         serve on this inherited listening socket instead
  --http-request-seconds   seconds between fetches          [default: 5]
  --logfile                append log lines here instead of stderr
Flags take --flag=value or --flag value. Once listening, prints
\"star-collect listening on <address>:<port>\" on stdout.";

const FLAGS: &[&str] = &[
    "http-address",
    "http-port",
    "http-listen-fd",
    "http-request-seconds",
    "resources-file",
    "logfile",
];

/// `/responses/example` is fixed sample data, so no resource may take that id.
const RESERVED_ID: &str = "example";

/// The web view, served at `/`.
pub const INDEX_HTML: &str = include_str!("web/index.html");
/// The fixed sample served at `/responses/example`.
pub const EXAMPLE_JSON: &str = include_str!("web/example.json");

/// star-collect's validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectConfig {
    pub listen: Listen,
    pub interval: Duration,
    pub resources_file: Option<PathBuf>,
    pub logfile: Option<PathBuf>,
}

impl CollectConfig {
    /// Parses the command line (without the program name).
    pub fn from_args<I, S>(args: I) -> Result<Parsed<CollectConfig>, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let Some(flags) = Flags::parse(args, FLAGS)? else {
            return Ok(Parsed::Help);
        };
        Ok(Parsed::Run(CollectConfig {
            listen: Listen::from_flags(&flags, 9001)?,
            interval: flags.seconds("http-request-seconds", 5)?,
            resources_file: flags.get("resources-file").map(PathBuf::from),
            logfile: flags.get("logfile").map(PathBuf::from),
        }))
    }
}

/// A thing to fetch: an id and an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub id: String,
    pub url: HttpUrl,
}

impl Resource {
    /// Checks `{"id": "...", "url": "http://..."}`; the message says what is wrong.
    pub fn from_json(value: &Value) -> Result<Resource, String> {
        let field = |name: &str| match value.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(format!("field {name:?} must be a string")),
            None => Err(format!("missing field {name:?}")),
        };
        if !value.is_object() {
            return Err("expected an object {\"id\": ..., \"url\": ...}".to_string());
        }
        let id = field("id")?;
        let url = field("url")?;
        if id.is_empty() {
            return Err("field \"id\" must not be empty".to_string());
        }
        if id == RESERVED_ID {
            return Err(format!("id {RESERVED_ID:?} is reserved"));
        }
        let url = url.parse::<HttpUrl>().map_err(|e| e.to_string())?;
        Ok(Resource { id, url })
    }
}

/// Reads a resources file: a JSON array of `{"id", "url"}` with unique ids.
pub fn load_resources(path: &Path) -> Result<Vec<Resource>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ResourcesRead {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| Error::ResourcesInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let value: Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let items = value
        .as_array()
        .ok_or_else(|| invalid("expected a JSON array of {\"id\", \"url\"}".to_string()))?;
    let mut resources: Vec<Resource> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let resource = Resource::from_json(item).map_err(|e| invalid(format!("item {i}: {e}")))?;
        if resources.iter().any(|r| r.id == resource.id) {
            return Err(invalid(format!("item {i}: duplicate id {:?}", resource.id)));
        }
        resources.push(resource);
    }
    Ok(resources)
}

/// The last good answer from a resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fetched {
    pub url: String,
    #[serde(rename = "statusCode")]
    pub status_code: u16,
    pub json: Value,
}

/// Requests `url` and keeps the answer if its body is JSON.
pub fn fetch(url: &HttpUrl, timeout: Duration) -> Result<Fetched, String> {
    let response = client::get(url, timeout).map_err(|e| e.to_string())?;
    let json = serde_json::from_slice(&response.body)
        .map_err(|e| format!("HTTP {}, body is not JSON: {e}", response.status))?;
    Ok(Fetched {
        url: url.as_str().to_string(),
        status_code: response.status,
        json,
    })
}

#[derive(Default)]
struct State {
    /// In the order they were added.
    resources: Vec<Resource>,
    /// By id; `None` until a fetch succeeds, and after one fails.
    responses: HashMap<String, Option<Fetched>>,
}

impl State {
    fn resource(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.id == id)
    }

    fn response(&self, id: &str) -> Option<&Fetched> {
        self.responses.get(id).and_then(Option::as_ref)
    }
}

/// `{"<id>": <response> | null, ...}` in resource order.
struct ResponsesMap<'a>(&'a State);

impl Serialize for ResponsesMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let state = self.0;
        let mut map = serializer.serialize_map(Some(state.resources.len()))?;
        for r in &state.resources {
            map.serialize_entry(&r.id, &state.response(&r.id))?;
        }
        map.end()
    }
}

/// Why a resource was not added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    Duplicate(String),
}

/// The collector: its resources, their last answers, and (when polling) one
/// fetching thread per resource.
pub struct Collect {
    state: Arc<Mutex<State>>,
    /// `None`: never fetch (for tests that feed answers by hand).
    interval: Option<Duration>,
}

impl Collect {
    /// A collector for `resources`; with `interval`, each resource is fetched
    /// at once and then every interval.
    pub fn new(resources: Vec<Resource>, interval: Option<Duration>) -> Arc<Collect> {
        let collect = Arc::new(Collect {
            state: Arc::default(),
            interval,
        });
        for resource in resources {
            if let Err(AddError::Duplicate(id)) = collect.add(resource) {
                crate::logln!("ignoring duplicate resource {id:?}");
            }
        }
        collect
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a resource (its answer is `null` until fetched) and starts
    /// fetching it.
    pub fn add(&self, resource: Resource) -> Result<(), AddError> {
        {
            let mut state = self.lock();
            if state.resource(&resource.id).is_some() {
                return Err(AddError::Duplicate(resource.id));
            }
            state.responses.insert(resource.id.clone(), None);
            state.resources.push(resource.clone());
        }
        crate::logln!("resource {:?} added: {}", resource.id, resource.url);
        if let Some(interval) = self.interval {
            let state = Arc::clone(&self.state);
            thread::Builder::new()
                .name(format!("fetch-{}", resource.id))
                .spawn(move || poll(&state, &resource, interval))
                .expect("spawning a fetch thread");
        }
        Ok(())
    }

    /// Records the outcome of a fetch of resource `id`.
    pub fn record(&self, id: &str, response: Option<Fetched>) {
        record(&self.state, id, response);
    }

    fn add_from_body(&self, body: &[u8]) -> Reply {
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Reply::error(400, format!("body is not valid JSON: {e}")),
        };
        let resource = match Resource::from_json(&value) {
            Ok(r) => r,
            Err(e) => return Reply::error(400, e),
        };
        match self.add(resource.clone()) {
            Ok(()) => Reply::wrapped(201, "resource", &resource),
            Err(AddError::Duplicate(id)) => {
                Reply::error(409, format!("a resource with id {id:?} already exists"))
            }
        }
    }
}

fn record(state: &Mutex<State>, id: &str, response: Option<Fetched>) {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.responses.insert(id.to_string(), response);
}

/// Fetches `resource` now and then every `interval`, forever.
fn poll(state: &Mutex<State>, resource: &Resource, interval: Duration) -> ! {
    let timeout = crate::request_timeout(interval);
    let mut last_ok: Option<bool> = None;
    loop {
        let started = Instant::now();
        let result = fetch(&resource.url, timeout);
        if last_ok != Some(result.is_ok()) {
            match &result {
                Ok(f) => crate::logln!("{}: answering (HTTP {})", resource.id, f.status_code),
                Err(e) => crate::logln!(
                    "{}: no usable answer from {}: {e}",
                    resource.id,
                    resource.url
                ),
            }
            last_ok = Some(result.is_ok());
        }
        record(state, &resource.id, result.ok());
        crate::sleep_until(started + interval);
    }
}

impl Handler for Collect {
    fn handle(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let segments = segments(path);
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match (method, segments.as_slice()) {
            ("GET", []) => Reply::html(INDEX_HTML),
            ("GET", ["resources"]) => {
                let state = self.lock();
                Reply::wrapped(200, "resources", &state.resources)
            }
            ("POST", ["resources"]) => self.add_from_body(body),
            ("GET", ["resources", id]) => match self.lock().resource(id) {
                Some(r) => Reply::wrapped(200, "resource", r),
                None => Reply::error(404, format!("no resource with id {id:?}")),
            },
            ("GET", ["responses"]) => Reply::wrapped(200, "responses", &ResponsesMap(&self.lock())),
            ("GET", ["responses", RESERVED_ID]) => Reply::raw_json(200, EXAMPLE_JSON),
            ("GET", ["responses", id]) => {
                let state = self.lock();
                match state.resource(id) {
                    Some(_) => Reply::wrapped(200, "response", &state.response(id)),
                    None => Reply::error(404, format!("no resource with id {id:?}")),
                }
            }
            (_, [] | ["resources", _] | ["responses"] | ["responses", _]) => {
                Reply::method_not_allowed("GET, HEAD")
            }
            (_, ["resources"]) => Reply::method_not_allowed("GET, HEAD, POST"),
            _ => Reply::not_found(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(id: &str, url: &str) -> Resource {
        Resource::from_json(&json!({"id": id, "url": url})).unwrap()
    }

    fn collector() -> Arc<Collect> {
        Collect::new(
            vec![
                resource("probe-b", "http://b:9000/status"),
                resource("probe-a", "http://a:9000/status"),
            ],
            None,
        )
    }

    fn config(args: &[&str]) -> CollectConfig {
        match CollectConfig::from_args(args.iter().copied()).unwrap() {
            Parsed::Run(c) => c,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn flags() {
        assert_eq!(
            config(&[]),
            CollectConfig {
                listen: Listen::Bind {
                    address: "0.0.0.0".into(),
                    port: 9001,
                },
                interval: Duration::from_secs(5),
                resources_file: None,
                logfile: None,
            }
        );
        let c = config(&[
            "--resources-file",
            "/r.json",
            "--http-port=1234",
            "--http-request-seconds",
            "1",
            "--http-address=::1",
            "--logfile",
            "/l",
        ]);
        assert_eq!(c.resources_file, Some(PathBuf::from("/r.json")));
        assert_eq!(
            c.listen,
            Listen::Bind {
                address: "::1".into(),
                port: 1234
            }
        );
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.logfile, Some(PathBuf::from("/l")));
        assert!(CollectConfig::from_args(["--urls=x"]).is_err());
        assert!(CollectConfig::from_args(["--http-request-seconds=-2"]).is_err());
        assert_eq!(config(&["--http-listen-fd=5"]).listen, Listen::Fd(5));
        assert!(CollectConfig::from_args(["--http-listen-fd=5", "--http-port=1"]).is_err());
        assert_eq!(CollectConfig::from_args(["-h"]).unwrap(), Parsed::Help);
    }

    #[test]
    fn resource_validation() {
        for (body, msg) in [
            (json!([]), "expected an object"),
            (json!({"url": "http://a/"}), "missing field \"id\""),
            (json!({"id": "a"}), "missing field \"url\""),
            (json!({"id": 1, "url": "http://a/"}), "must be a string"),
            (json!({"id": "", "url": "http://a/"}), "must not be empty"),
            (json!({"id": "example", "url": "http://a/"}), "reserved"),
            (json!({"id": "a", "url": "ftp://a/"}), "only http://"),
        ] {
            let err = Resource::from_json(&body).unwrap_err();
            assert!(err.contains(msg), "{body}: {err}");
        }
    }

    #[test]
    fn resources_file() {
        let dir = std::env::temp_dir().join(format!("star-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ok = write(
            "ok.json",
            r#"[{"id":"b","url":"http://b:9000/status"},{"id":"a","url":"http://a:9000/status","extra":1}]"#,
        );
        let ids: Vec<_> = load_resources(&ok)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["b", "a"]);
        let dup = write(
            "dup.json",
            r#"[{"id":"a","url":"http://a/"},{"id":"a","url":"http://b/"}]"#,
        );
        assert!(load_resources(&dup)
            .unwrap_err()
            .to_string()
            .contains("duplicate id"));
        let obj = write("obj.json", r#"{"id":"a","url":"http://a/"}"#);
        assert!(load_resources(&obj)
            .unwrap_err()
            .to_string()
            .contains("JSON array"));
        let junk = write("junk.json", "not json");
        assert!(matches!(
            load_resources(&junk),
            Err(Error::ResourcesInvalid { .. })
        ));
        assert!(matches!(
            load_resources(&dir.join("missing.json")),
            Err(Error::ResourcesRead { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resources_routes() {
        let c = collector();
        let r = c.handle("GET", "/resources", b"");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.body_json(),
            json!({"resources": [
                {"id": "probe-b", "url": "http://b:9000/status"},
                {"id": "probe-a", "url": "http://a:9000/status"},
            ]})
        );
        let r = c.handle(
            "POST",
            "/resources",
            br#"{"id":"probe-c","url":"http://c:9000/status"}"#,
        );
        assert_eq!(r.status, 201);
        assert_eq!(
            r.body_json(),
            json!({"resource": {"id": "probe-c", "url": "http://c:9000/status"}})
        );
        assert_eq!(
            c.handle("GET", "/resources/probe-c", b"").body_json(),
            json!({"resource": {"id": "probe-c", "url": "http://c:9000/status"}})
        );
        let r = c.handle(
            "POST",
            "/resources",
            br#"{"id":"probe-c","url":"http://x/"}"#,
        );
        assert_eq!(r.status, 409);
        assert!(r.body_json()["error"].is_string());
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"id":"x"}"#,
            br#"{"url":"http://x/"}"#,
        ] {
            let r = c.handle("POST", "/resources", bad);
            assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(bad));
            assert!(r.body_json()["error"].is_string());
        }
        assert_eq!(
            c.handle("GET", "/resources", b"").body_json()["resources"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(c.handle("GET", "/resources/nope", b"").status, 404);
        assert_eq!(c.handle("DELETE", "/resources/probe-a", b"").status, 405);
        assert_eq!(c.handle("PUT", "/resources", b"").status, 405);
    }

    #[test]
    fn responses_routes() {
        let c = collector();
        assert_eq!(
            c.handle("GET", "/responses", b"").body_json(),
            json!({"responses": {"probe-b": null, "probe-a": null}})
        );
        let fetched = Fetched {
            url: "http://a:9000/status".into(),
            status_code: 200,
            json: json!({"status": {"targets": []}}),
        };
        c.record("probe-a", Some(fetched));
        let r = c.handle("GET", "/responses", b"");
        assert_eq!(r.content_type, "application/json");
        // Resource order, and the original's field names.
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"responses":{"probe-b":null,"probe-a":{"url":"http://a:9000/status","statusCode":200,"json":{"status":{"targets":[]}}}}}"#
        );
        assert_eq!(
            c.handle("GET", "/responses/probe-a", b"").body_json(),
            json!({"response": {"url": "http://a:9000/status", "statusCode": 200, "json": {"status": {"targets": []}}}})
        );
        assert_eq!(
            c.handle("GET", "/responses/probe-b", b"").body_json(),
            json!({"response": null})
        );
        assert_eq!(c.handle("GET", "/responses/nope", b"").status, 404);
        assert_eq!(c.handle("POST", "/responses", b"").status, 405);
        assert_eq!(c.handle("GET", "/nope", b"").status, 404);
        assert_eq!(c.handle("GET", "/responses/a/b", b"").status, 404);
    }

    #[test]
    fn example_has_the_responses_shape() {
        let c = collector();
        let r = c.handle("GET", "/responses/example", b"");
        assert_eq!(r.status, 200);
        let v = r.body_json();
        let responses = v["responses"].as_object().unwrap();
        assert!(responses.len() >= 3);
        let mut unreachable = 0;
        for (id, entry) in responses {
            if entry.is_null() {
                continue;
            }
            let keys: Vec<_> = entry.as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys, ["json", "statusCode", "url"], "{id}");
            for t in entry["json"]["status"]["targets"].as_array().unwrap() {
                assert!(t["url"].is_string());
                unreachable += usize::from(!t["reachable"].as_bool().unwrap());
            }
        }
        assert!(unreachable > 0);
        assert!(responses.values().any(Value::is_null));
    }

    #[test]
    fn index_is_self_contained_html() {
        let c = collector();
        let r = c.handle("GET", "/", b"");
        assert_eq!(r.status, 200);
        assert!(r.content_type.starts_with("text/html"));
        let html = String::from_utf8(r.body).unwrap();
        assert!(html.contains("<title>Star — reachability</title>"));
        assert!(html.contains("id=\"toggle-unreachable\""));
        assert!(!html.contains("src=\"http"), "no external scripts");
        assert!(!html.contains("href=\"http"), "no external assets");
    }
}
