//! HTTP for the lab: a client (`ureq`, IP-literal URLs only: the lab never
//! resolves names for its own traffic, uses no proxy and follows no
//! redirect) and the server side shared by the master and the agents (a
//! plain handler: request → [`Reply`], served by `tiny_http`).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Largest request body the servers accept.
pub const MAX_BODY: u64 = 4 << 20;
/// Largest response body the client reads (the master's state with many
/// tasks is the biggest thing it fetches).
pub const MAX_RESPONSE: u64 = 64 << 20;

// ---------------------------------------------------------------- client

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("the reply is not JSON: {e}"))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Checks `http://IP[:PORT]/path`: the host must be an IP address (the lab
/// never resolves names); returns the socket address and the path.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (hostport, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = hostport
        .parse::<SocketAddr>()
        .or_else(|_| {
            // No port: 80. An IPv6 literal without a port is bracketed.
            let host = hostport.trim_start_matches('[').trim_end_matches(']');
            host.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 80))
        })
        .map_err(|_| format!("{url}: the host must be an IP address"))?;
    Ok((addr, path))
}

/// The lab's one HTTP agent: no proxy (whatever the environment says), no
/// redirects, statuses returned rather than raised, connections kept alive.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .proxy(None)
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent("netmod-lab")
            .build()
            .into()
    })
}

/// One request; the whole exchange, body included, within `timeout`.
pub fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    request_with(method, url, body, &[], timeout)
}

/// [`request`] with extra headers (the lab's control token, for one).
pub fn request_with(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, String> {
    let fail = |e: &dyn std::fmt::Display| format!("{method} {url}: {e}");
    parse_url(url)?;
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Accept", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let agent = agent();
    let result = match body {
        Some(b) => {
            let req = builder
                .header("Content-Type", "application/json")
                .body(b.to_vec())
                .map_err(|e| fail(&e))?;
            let req = agent
                .configure_request(req)
                .timeout_global(Some(timeout))
                .build();
            agent.run(req)
        }
        None => {
            let req = builder.body(()).map_err(|e| fail(&e))?;
            let req = agent
                .configure_request(req)
                .timeout_global(Some(timeout))
                .build();
            agent.run(req)
        }
    };
    let mut response = result.map_err(|e| match e {
        ureq::Error::Timeout(_) => fail(&format_args!("no complete answer within {timeout:?}")),
        e => fail(&e),
    })?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => fail(&format_args!("no complete answer within {timeout:?}")),
            e => fail(&e),
        })?;
    Ok(Response { status, body })
}

/// GET a URL and parse its JSON body (any 2xx).
pub fn get_json(url: &str, timeout: Duration) -> Result<Value, String> {
    let r = request("GET", url, None, timeout)?;
    if !(200..300).contains(&r.status) {
        return Err(format!("GET {url}: status {}: {}", r.status, r.text()));
    }
    r.json()
}

/// Sends JSON with `method`, returns status and the parsed body (Null if none).
pub fn send_json(
    method: &str,
    url: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    send_json_with(method, url, body, &[], timeout)
}

/// [`send_json`] with extra headers.
pub fn send_json_with(
    method: &str,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let r = request_with(
        method,
        url,
        Some(body.to_string().as_bytes()),
        headers,
        timeout,
    )?;
    let v = if r.body.is_empty() {
        Value::Null
    } else {
        r.json().unwrap_or(Value::String(r.text()))
    };
    Ok((r.status, v))
}

// ---------------------------------------------------------------- server

/// An answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Headers besides `Content-Type`.
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }
    pub fn html(body: String) -> Reply {
        Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            headers: Vec::new(),
        }
    }
    /// Marathon's error shape: `{"message": ...}`.
    pub fn message(status: u16, msg: impl Into<String>) -> Reply {
        Reply::json(status, &serde_json::json!({ "message": msg.into() }))
    }
    pub fn not_found() -> Reply {
        Reply::message(404, "not found")
    }
    /// The reply with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
    pub fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One request as the handlers see it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Every header as sent, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: &str, url: &str, body: &[u8]) -> Request {
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (url.to_string(), String::new()),
        };
        Request {
            method: method.to_string(),
            path: percent_decode(&path),
            query,
            headers: Vec::new(),
            body: body.to_vec(),
        }
    }

    /// The request with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The first value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's value.
    pub fn param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Binds `addr` and answers every request on its own thread (so a long-poll
/// never blocks the others). Returns once listening, with the address it
/// listens on (port 0 in `addr`: the one the system chose).
pub fn serve(addr: SocketAddr, handler: Handler) -> Result<SocketAddr, String> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("{addr}: not an IP listener"))?;
    thread::Builder::new()
        .name(format!("http {bound}"))
        .spawn(move || {
            for mut req in server.incoming_requests() {
                let handler = handler.clone();
                let _ = thread::Builder::new().spawn(move || {
                    let mut body = Vec::new();
                    let too_big = req
                        .as_reader()
                        .take(MAX_BODY + 1)
                        .read_to_end(&mut body)
                        .map(|n| n as u64 > MAX_BODY)
                        .unwrap_or(true);
                    let reply = if too_big {
                        Reply::message(413, "the request body is too large or unreadable")
                    } else {
                        let mut r = Request::new(req.method().as_str(), req.url(), &body);
                        r.headers = req
                            .headers()
                            .iter()
                            .map(|h| (h.field.to_string(), h.value.to_string()))
                            .collect();
                        handler(&r)
                    };
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        reply.content_type.as_bytes(),
                    )
                    .expect("static header");
                    let mut response = tiny_http::Response::from_data(reply.body)
                        .with_status_code(reply.status)
                        .with_header(header);
                    for (name, value) in &reply.headers {
                        if let Ok(h) =
                            tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                        {
                            response.add_header(h);
                        }
                    }
                    let _ = req.respond(response);
                });
            }
        })
        .map_err(|e| format!("cannot start the server thread: {e}"))?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Mutex;

    #[test]
    fn urls() {
        let (a, p) = parse_url("http://127.0.0.1:8080/v2/apps?x=1").unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:8080");
        assert_eq!(p, "/v2/apps?x=1");
        assert_eq!(parse_url("http://10.0.0.1").unwrap().1, "/");
        assert_eq!(parse_url("http://10.0.0.1?a=b").unwrap().1, "/?a=b");
        assert_eq!(parse_url("http://[::1]:81/x").unwrap().0.port(), 81);
        assert!(parse_url("http://example.com/").is_err());
        assert!(parse_url("http://localhost:8080/").is_err());
        assert!(parse_url("https://1.2.3.4/").is_err());
    }

    /// A server on a port the system picks, answering with `handler`.
    fn server(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> String {
        let addr = serve("127.0.0.1:0".parse().unwrap(), Arc::new(handler)).unwrap();
        assert_ne!(addr.port(), 0);
        format!("http://{addr}")
    }

    #[test]
    fn the_client_talks_to_the_server() {
        let base = server(|r| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/json") => Reply::json(200, &serde_json::json!({"q": r.param("q")})),
            ("PUT", "/echo") => Reply::json(201, &serde_json::from_slice(&r.body).unwrap()),
            ("DELETE", "/gone") => Reply::text(204, ""),
            _ => Reply::not_found(),
        });
        let t = Duration::from_secs(10);
        assert_eq!(
            get_json(&format!("{base}/json?q=a%20b"), t).unwrap(),
            serde_json::json!({"q": "a b"})
        );
        let (status, body) = send_json(
            "PUT",
            &format!("{base}/echo"),
            &serde_json::json!([1, 2]),
            t,
        )
        .unwrap();
        assert_eq!((status, body), (201, serde_json::json!([1, 2])));
        let r = request("DELETE", &format!("{base}/gone"), None, t).unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        // Statuses are answers, not errors; get_json wants a 2xx.
        assert_eq!(
            request("GET", &format!("{base}/x"), None, t)
                .unwrap()
                .status,
            404
        );
        let e = get_json(&format!("{base}/x"), t).unwrap_err();
        assert!(e.contains("status 404"), "{e}");
        // Many requests on the kept-alive connections.
        for i in 0..50 {
            let v = get_json(&format!("{base}/json?q={i}"), t).unwrap();
            assert_eq!(v["q"], i.to_string());
        }
    }

    #[test]
    fn headers_travel_both_ways() {
        let base = server(|r| {
            Reply::text(200, r.header("x-token").unwrap_or("none").to_string())
                .with_header("X-Answer", "42")
        });
        let t = Duration::from_secs(10);
        let r = request_with("GET", &format!("{base}/"), None, &[("X-Token", "abc")], t).unwrap();
        assert_eq!(r.text(), "abc");
        assert_eq!(
            request("GET", &format!("{base}/"), None, t).unwrap().text(),
            "none"
        );
        let (status, body) = send_json_with(
            "POST",
            &format!("{base}/"),
            &serde_json::json!({}),
            &[("x-TOKEN", "def")],
            t,
        )
        .unwrap();
        assert_eq!((status, body), (200, Value::String("def".into())));
        let out = std::process::Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", &format!("{base}/")])
            .output()
            .expect("curl");
        let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(head.contains("x-answer: 42"), "{head}");
    }

    #[test]
    fn a_request_ends_at_its_deadline() {
        // The handler holds the answer until the test lets it go.
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let base = server(move |_| {
            let _ = held.lock().unwrap().recv();
            Reply::text(200, "late")
        });
        let e = request(
            "GET",
            &format!("{base}/slow"),
            None,
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(e.contains("no complete answer within"), "{e}");
        release.send(()).unwrap();
    }

    #[test]
    fn refused_urls_and_connections_are_clear_errors() {
        let t = Duration::from_secs(5);
        let e = request("GET", "http://example.com/", None, t).unwrap_err();
        assert!(e.contains("must be an IP address"), "{e}");
        // A peer that hangs up without answering.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let rude = thread::spawn(move || drop(listener.accept()));
        let e = request("GET", &url, None, t).unwrap_err();
        assert!(e.starts_with(&format!("GET {url}: ")), "{e}");
        rude.join().unwrap();
    }

    #[test]
    fn requests_decode() {
        let r = Request::new("GET", "/v2/apps/%2Fstar%2Fa?embed=x&wait=3", b"");
        assert_eq!(r.path, "/v2/apps//star/a");
        assert_eq!(r.param("wait").as_deref(), Some("3"));
        assert_eq!(r.param("nope"), None);
        assert_eq!(Request::new("GET", "/a%2", b"").path, "/a%2");
    }
}
