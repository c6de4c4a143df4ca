//! Blocking `GET` of `http://` URLs on [`ureq`], with one hard deadline per
//! request covering name resolution, connecting, sending and reading the
//! whole answer.
//!
//! What this module adds to ureq's defaults, and why:
//! * a hard deadline: `timeout_global` (ureq sets none by default);
//! * a resolver that runs the system lookup on a helper thread and gives up
//!   at the deadline, and says when it was the lookup that failed or timed
//!   out (ureq's own resolver reports a failed lookup as a bare I/O error);
//! * no proxy: ureq picks up `HTTP_PROXY` and friends from the environment,
//!   but a probe must reach its target itself, not a proxy;
//! * no redirects, no pooled connections (`Connection: close`): every probe
//!   opens one fresh connection to the target and reports what it answered;
//! * any status is an answer (ureq turns 4xx/5xx into errors by default);
//! * size limits on the response head and body.
//!
//! The resolver uses ureq's `unversioned` API, which may change in a minor
//! ureq release; such a change shows up as a compile error here.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use ureq::http::Uri;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::Agent;

use crate::Error;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// How many resolved addresses ureq can take (its `ResolvedSocketAddrs`).
const MAX_ADDRS: usize = 16;

/// A parsed `http://` URL, keeping the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    original: String,
    /// Host for the resolver: a name or an address, IPv6 without brackets.
    host: String,
    port: u16,
    /// Path and query, at least `/`.
    target: String,
    /// What is requested: the URL without its fragment.
    uri: Uri,
}

impl HttpUrl {
    /// The URL exactly as it was given.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The request target: path and query.
    pub fn target(&self) -> &str {
        &self.target
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl serde::Serialize for HttpUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.original)
    }
}

impl FromStr for HttpUrl {
    type Err = Error;

    /// Stricter than `http::Uri`, which accepts `http://a:99999/` (and then
    /// requests port 80), `http://a:x/` and user information.
    fn from_str(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("contains whitespace or control characters"));
        }
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => return Err(bad("only http:// URLs are supported")),
            None => return Err(bad("expected http://host[:port][/path]")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port, bracketed) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (host, None, true),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port), true),
                    None => return Err(bad("unexpected text after ']'")),
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port), false),
                None => (authority, None, false),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let explicit_port = port.filter(|p| !p.is_empty());
        let port = match explicit_port {
            None => 80,
            Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
        };
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        // The authority as written, less an empty port ("host:").
        let request_authority = match (explicit_port, bracketed) {
            (Some(_), _) => authority.to_string(),
            (None, true) => format!("[{host}]"),
            (None, false) => host.to_string(),
        };
        let uri = Uri::builder()
            .scheme("http")
            .authority(request_authority)
            .path_and_query(target.as_str())
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(HttpUrl {
            original: url.to_string(),
            host: host.to_string(),
            port,
            target,
            uri,
        })
    }
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve host: {0}")]
    Resolve(#[source] io::Error),
    #[error("host resolved to no address")]
    NoAddress,
    #[error("name resolution timed out after {0:?}")]
    ResolveTimeout(Duration),
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a complete answer")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
    #[error("invalid HTTP response: {0}")]
    Invalid(String),
    #[error("response too large: {0}")]
    TooLarge(&'static str),
    #[error("HTTP client error: {0}")]
    Client(#[source] ureq::Error),
}

impl FetchError {
    /// Sorts ureq's errors into ours; `timeout` is the request's deadline.
    fn from_ureq(e: ureq::Error, timeout: Duration) -> FetchError {
        match e {
            ureq::Error::Timeout(_) => FetchError::Timeout(timeout),
            ureq::Error::Io(e) => match e.kind() {
                // What a connect(2) answers; ureq tries each address in turn
                // and reports the last failure.
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::NetworkDown
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::PermissionDenied => FetchError::Connect(e),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FetchError::Timeout(timeout),
                io::ErrorKind::UnexpectedEof => FetchError::Closed,
                _ => FetchError::Io(e),
            },
            ureq::Error::Protocol(e) => FetchError::Invalid(e.to_string()),
            ureq::Error::LargeResponseHeader(..) => FetchError::TooLarge("head over 64 KiB"),
            ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge("body over 8 MiB"),
            ureq::Error::HostNotFound => FetchError::NoAddress,
            // What our resolver said.
            ureq::Error::Other(e) => match e.downcast::<FetchError>() {
                Ok(ours) => *ours,
                Err(other) => FetchError::Client(ureq::Error::Other(other)),
            },
            e => FetchError::Client(e),
        }
    }
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET url`, reading the whole response within `timeout`.
pub fn get(url: &HttpUrl, timeout: Duration) -> Result<Response, FetchError> {
    get_with(agent(), url, timeout)
}

/// `GET url`, reading only the response head within `timeout`: enough to
/// know that an HTTP server answered. The body is not waited for.
pub fn status(url: &HttpUrl, timeout: Duration) -> Result<u16, FetchError> {
    status_with(agent(), url, timeout)
}

fn get_with(agent: &Agent, url: &HttpUrl, timeout: Duration) -> Result<Response, FetchError> {
    let response = call(agent, url, timeout)?;
    let status = response.status().as_u16();
    // The deadline keeps running while the body is read.
    let body = response
        .into_body()
        .with_config()
        .limit(MAX_BODY as u64)
        .read_to_vec()
        .map_err(|e| FetchError::from_ureq(e, timeout))?;
    Ok(Response { status, body })
}

fn status_with(agent: &Agent, url: &HttpUrl, timeout: Duration) -> Result<u16, FetchError> {
    // Dropping the response closes the connection without reading the body.
    Ok(call(agent, url, timeout)?.status().as_u16())
}

fn call(
    agent: &Agent,
    url: &HttpUrl,
    timeout: Duration,
) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
    agent
        .get(url.uri.clone())
        .header("Connection", "close")
        .config()
        .timeout_global(Some(timeout))
        .build()
        .call()
        .map_err(|e| FetchError::from_ureq(e, timeout))
}

/// The agent every request goes through, resolving with the system resolver.
fn agent() -> &'static Agent {
    static AGENT: OnceLock<Agent> = OnceLock::new();
    AGENT.get_or_init(|| agent_with(system_lookup))
}

/// An agent configured as described in the module docs, resolving with
/// `lookup`.
fn agent_with(lookup: Lookup) -> Agent {
    let config = Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .max_idle_connections(0)
        .max_idle_connections_per_host(0)
        .max_response_header_size(MAX_HEAD)
        .user_agent(concat!("star/", env!("CARGO_PKG_VERSION")))
        .build();
    Agent::with_parts(config, DefaultConnector::new(), DeadlineResolver { lookup })
}

/// A blocking name lookup: host (IPv6 without brackets) and port to addresses.
type Lookup = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

/// The system resolver (`getaddrinfo`), which takes no timeout.
fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Resolves with `lookup` on a helper thread and stops waiting for it when
/// the request's time is up. A lookup that hangs keeps its thread until the
/// system resolver gives up by itself; the request does not wait for it.
/// Addresses in the URL are not looked up.
#[derive(Debug)]
struct DeadlineResolver {
    lookup: Lookup,
}

impl Resolver for DeadlineResolver {
    fn resolve(
        &self,
        uri: &Uri,
        _config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri
            .host()
            .ok_or_else(|| ureq::Error::BadUri(format!("no host in {uri}")))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addrs = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => lookup_within(self.lookup, host, port, *timeout.after)
                .map_err(|e| ureq::Error::Other(Box::new(e)))?,
        };
        let mut resolved = self.empty();
        for addr in addrs.into_iter().take(MAX_ADDRS) {
            resolved.push(addr);
        }
        if resolved.is_empty() {
            return Err(ureq::Error::Other(Box::new(FetchError::NoAddress)));
        }
        Ok(resolved)
    }
}

/// Runs `lookup(host, port)` on its own thread, waiting at most `within`.
fn lookup_within(
    lookup: Lookup,
    host: &str,
    port: u16,
    within: Duration,
) -> Result<Vec<SocketAddr>, FetchError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let name = host.to_string();
    thread::Builder::new()
        .name("resolve".to_string())
        .spawn(move || {
            // The receiver is gone when the request gave up: nothing to do.
            let _ = tx.send(lookup(&name, port));
        })
        .map_err(FetchError::Resolve)?;
    match rx.recv_timeout(within) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(e)) => Err(FetchError::Resolve(e)),
        Err(RecvTimeoutError::Timeout) => Err(FetchError::ResolveTimeout(within)),
        Err(RecvTimeoutError::Disconnected) => Err(FetchError::Resolve(io::Error::other(
            "the lookup thread ended without an answer",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    fn url(s: &str) -> HttpUrl {
        s.parse().unwrap()
    }

    #[test]
    fn parses_urls() {
        let u = url("http://probe-b:9000/status");
        assert_eq!(
            (u.host(), u.port(), u.target(), u.as_str()),
            ("probe-b", 9000, "/status", "http://probe-b:9000/status")
        );
        assert_eq!(u.uri.to_string(), "http://probe-b:9000/status");
        let u = url("HTTP://10.0.0.1");
        assert_eq!((u.host(), u.port(), u.target()), ("10.0.0.1", 80, "/"));
        assert_eq!(u.uri.to_string(), "http://10.0.0.1/");
        let u = url("http://[::1]:8080?x=1#frag");
        assert_eq!((u.host(), u.port(), u.target()), ("::1", 8080, "/?x=1"));
        assert_eq!(u.uri.to_string(), "http://[::1]:8080/?x=1");
        let u = url("http://[fe80::1]/a/b?c");
        assert_eq!((u.host(), u.port(), u.target()), ("fe80::1", 80, "/a/b?c"));
        assert_eq!(u.uri.to_string(), "http://[fe80::1]/a/b?c");
        let u = url("http://localhost:/x");
        assert_eq!(u.port(), 80);
        assert_eq!(u.uri.to_string(), "http://localhost/x");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "https://a/",
            "a:9000/status",
            "http://",
            "http:///x",
            "http://a:99999/",
            "http://a:x/",
            "http://u@a/",
            "http://[::1/",
            "http://[::1]x/",
            "http://a b/",
            "http://a/x`y",
            "",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad:?} accepted");
        }
    }

    /// Serves one connection on loopback: reads the request head, writes
    /// `reply`, then holds the connection until the client closes it.
    /// Returns the URL and, on join, the request that was received.
    fn serve_once(reply: impl Into<Vec<u8>>) -> (HttpUrl, thread::JoinHandle<String>) {
        let reply = reply.into();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let request = read_head(&mut s);
            // The client may close before it has read everything.
            let _ = s.write_all(&reply);
            let _ = s.read_to_end(&mut Vec::new());
            request
        });
        (url(&format!("http://127.0.0.1:{port}/status?x=1")), handle)
    }

    fn read_head(s: &mut TcpStream) -> String {
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            match s.read(&mut b).unwrap() {
                0 => break,
                _ => req.push(b[0]),
            }
        }
        String::from_utf8(req).unwrap()
    }

    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn gets_with_content_length() {
        let (u, h) =
            serve_once(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more"[..]);
        let r = get(&u, LONG).unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: b"hello".to_vec()
            }
        );
        let req = h.join().unwrap().to_ascii_lowercase();
        assert!(req.starts_with("get /status?x=1 http/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", u.port())),
            "{req}"
        );
        assert!(req.contains("\r\nconnection: close\r\n"), "{req}");
        assert!(req.contains("\r\nuser-agent: star/"), "{req}");
    }

    #[test]
    fn gets_chunked_and_until_close() {
        let (u, h) = serve_once(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
        );
        let r = get(&u, LONG).unwrap();
        assert_eq!(
            r,
            Response {
                status: 503,
                body: b"abc".to_vec()
            }
        );
        h.join().unwrap();

        // HTTP/1.0 without a length: the body ends when the server closes.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = url(&format!("http://{}/", listener.local_addr().unwrap()));
        let h = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            read_head(&mut s);
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\n{\"a\":1}").unwrap();
        });
        let r = get(&u, LONG).unwrap();
        assert_eq!(r.body, b"{\"a\":1}");
        h.join().unwrap();
    }

    #[test]
    fn redirects_are_answers_not_followed() {
        let (u, h) = serve_once(
            &b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n"[..],
        );
        assert_eq!(get(&u, LONG).unwrap().status, 302);
        h.join().unwrap();
    }

    #[test]
    fn status_does_not_wait_for_the_body() {
        // A head promising a body that never comes: status() answers at
        // once, get() runs into the deadline.
        let reply = &b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 100000\r\n\r\n"[..];
        let (u, h) = serve_once(reply);
        let start = Instant::now();
        assert_eq!(status(&u, Duration::from_secs(30)).unwrap(), 418);
        assert!(start.elapsed() < Duration::from_secs(10));
        h.join().unwrap();

        let (u, h) = serve_once(reply);
        let start = Instant::now();
        let err = get(&u, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, FetchError::Timeout(_)), "{err:?}");
        let took = start.elapsed();
        assert!(took < LONG, "took {took:?}");
        h.join().unwrap();
    }

    #[test]
    fn not_http_is_invalid() {
        let (u, h) = serve_once(&b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..]);
        let err = status(&u, LONG).unwrap_err();
        assert!(matches!(err, FetchError::Invalid(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("invalid HTTP response"),
            "{err}"
        );
        h.join().unwrap();

        // Closed after half a head.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = url(&format!("http://{}/", listener.local_addr().unwrap()));
        let h = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            read_head(&mut s);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-").unwrap();
        });
        let err = status(&u, LONG).unwrap_err();
        assert!(matches!(err, FetchError::Closed), "{err:?}");
        h.join().unwrap();
    }

    #[test]
    fn size_limits() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        head.extend(format!("X-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD)).bytes());
        let (u, h) = serve_once(head);
        let err = status(&u, LONG).unwrap_err();
        assert!(matches!(err, FetchError::TooLarge(_)), "{err:?}");
        h.join().unwrap();

        let mut big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        )
        .into_bytes();
        big.resize(big.len() + MAX_BODY + 1, b'x');
        let (u, h) = serve_once(big);
        let err = get(&u, Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, FetchError::TooLarge(_)), "{err:?}");
        h.join().unwrap();
    }

    #[test]
    fn every_request_opens_its_own_connection() {
        // Two answers that keep the connection open; a client that reused
        // the first connection would never reach the second accept.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = url(&format!("http://{}/", listener.local_addr().unwrap()));
        let h = thread::spawn(move || {
            let mut open = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                read_head(&mut s);
                s.write_all(
                    b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                )
                .unwrap();
                open.push(s);
            }
        });
        for _ in 0..2 {
            assert_eq!(get(&u, LONG).unwrap().body, b"ok");
        }
        h.join().unwrap();
    }

    /// A loopback TCP socket that is bound but not listening: connections
    /// to its port are refused for as long as it lives, and no one else can
    /// take the port meanwhile.
    fn refusing_port() -> (Socket, u16) {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        (socket, port)
    }

    #[test]
    fn refused_connection() {
        let (_closed, port) = refusing_port();
        let u = url(&format!("http://127.0.0.1:{port}/"));
        let err = status(&u, LONG).unwrap_err();
        match &err {
            FetchError::Connect(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().starts_with("connect failed: "), "{err}");
    }

    #[test]
    fn silent_server_runs_into_the_deadline() {
        // Bound and listening for the whole test; connections complete in
        // the backlog and are never accepted or answered.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = url(&format!("http://{}/", silent.local_addr().unwrap()));
        for request in [
            (|u, t| status(u, t).map(drop)) as fn(&HttpUrl, Duration) -> Result<(), FetchError>,
            |u, t| get(u, t).map(drop),
        ] {
            let start = Instant::now();
            let err = request(&u, Duration::from_millis(200)).unwrap_err();
            assert!(matches!(err, FetchError::Timeout(_)), "{err:?}");
            let took = start.elapsed();
            assert!(took < LONG, "took {took:?}");
        }
    }

    #[test]
    fn host_names_are_resolved_and_each_address_tried() {
        // "localhost" may resolve to ::1 first, where nothing listens.
        let (u, h) = serve_once(&b"HTTP/1.1 204 No Content\r\n\r\n"[..]);
        let by_name = url(&format!("http://localhost:{}/status", u.port()));
        assert_eq!(status(&by_name, LONG).unwrap(), 204);
        h.join().unwrap();
    }

    #[test]
    fn the_deadline_covers_name_resolution() {
        fn hanging(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            thread::sleep(Duration::from_secs(60));
            Ok(vec![])
        }
        let agent = agent_with(hanging);
        let u = url("http://probe-b.star.example:9000/status");
        let start = Instant::now();
        let err = get_with(&agent, &u, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, FetchError::ResolveTimeout(_)), "{err:?}");
        let took = start.elapsed();
        assert!(took < LONG, "took {took:?}");
        let err = status_with(&agent, &u, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, FetchError::ResolveTimeout(_)), "{err:?}");
        assert!(
            err.to_string().contains("name resolution timed out"),
            "{err}"
        );
    }

    #[test]
    fn lookup_failures_are_told_apart() {
        fn failing(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            Err(io::Error::other("Name or service not known"))
        }
        fn empty(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            Ok(vec![])
        }
        let u = url("http://probe-b.star.example:9000/status");
        let err = status_with(&agent_with(failing), &u, LONG).unwrap_err();
        assert!(matches!(err, FetchError::Resolve(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "cannot resolve host: Name or service not known"
        );
        let err = status_with(&agent_with(empty), &u, LONG).unwrap_err();
        assert!(matches!(err, FetchError::NoAddress), "{err:?}");
    }

    #[test]
    fn addresses_are_not_looked_up() {
        fn never(host: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            panic!("looked up {host}")
        }
        let (u, h) = serve_once(&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..]);
        assert_eq!(status_with(&agent_with(never), &u, LONG).unwrap(), 200);
        h.join().unwrap();
    }
}
