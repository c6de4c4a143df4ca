//! HTTP for the lab: a tiny client (IP-literal URLs only: the lab never
//! resolves names for its own traffic) and the server side shared by the
//! master and the agents (a plain handler: request → [`Reply`]).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Largest request body the servers accept.
pub const MAX_BODY: u64 = 4 << 20;

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

/// Splits `http://IP:PORT/path` into the socket address and the path.
pub fn parse_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = if hostport.contains(':') {
        hostport.parse::<SocketAddr>()
    } else {
        format!("{hostport}:80").parse::<SocketAddr>()
    }
    .map_err(|_| format!("{url}: the host must be an IP address"))?;
    Ok((addr, path))
}

/// One request with `Connection: close`; the whole exchange within `timeout`.
pub fn request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, String> {
    let (addr, path) = parse_url(url)?;
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(3)))
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    let io = |e: std::io::Error| format!("{method} {url}: {e}");
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(head.as_bytes()).map_err(io)?;
    if let Some(b) = body {
        stream.write_all(b).map_err(io)?;
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{method} {url}: no complete answer within {timeout:?}"
            ));
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        }
    }
    parse_response(&raw).map_err(|e| format!("{method} {url}: {e}"))
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete header")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("the answer has no status line")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
        }
    }
    let mut body = raw[end + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(n) = length {
        if body.len() < n {
            return Err(format!("the body ended after {} of {n} bytes", body.len()));
        }
        body.truncate(n);
    }
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunked body")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
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
    let r = request(method, url, Some(body.to_string().as_bytes()), timeout)?;
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
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }
    pub fn html(body: String) -> Reply {
        Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: body.into_bytes(),
        }
    }
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
    /// Marathon's error shape: `{"message": ...}`.
    pub fn message(status: u16, msg: impl Into<String>) -> Reply {
        Reply::json(status, &serde_json::json!({ "message": msg.into() }))
    }
    pub fn not_found() -> Reply {
        Reply::message(404, "not found")
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
            body: body.to_vec(),
        }
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
/// never blocks the others). Returns once listening.
pub fn serve(addr: SocketAddr, handler: Handler) -> Result<(), String> {
    let server =
        tiny_http::Server::http(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    thread::Builder::new()
        .name(format!("http {addr}"))
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
                        let r = Request::new(req.method().as_str(), req.url(), &body);
                        handler(&r)
                    };
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        reply.content_type.as_bytes(),
                    )
                    .expect("static header");
                    let response = tiny_http::Response::from_data(reply.body)
                        .with_status_code(reply.status)
                        .with_header(header);
                    let _ = req.respond(response);
                });
            }
        })
        .map_err(|e| format!("cannot start the server thread: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let (a, p) = parse_url("http://127.0.0.1:8080/v2/apps?x=1").unwrap();
        assert_eq!(a.to_string(), "127.0.0.1:8080");
        assert_eq!(p, "/v2/apps?x=1");
        assert_eq!(parse_url("http://10.0.0.1").unwrap().1, "/");
        assert!(parse_url("http://example.com/").is_err());
        assert!(parse_url("https://1.2.3.4/").is_err());
    }

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}xx").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
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
