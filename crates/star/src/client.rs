//! A small blocking HTTP/1.1 client for `http://` URLs, with one hard
//! deadline per request covering name resolution, connecting, sending and
//! reading. No TLS, no redirects, no keep-alive (`Connection: close`).
//!
//! Name resolution uses the system resolver (`ToSocketAddrs`), which cannot
//! be given a timeout; callers run each target on its own thread so that a
//! slow lookup delays only that target.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::Error;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// A parsed `http://` URL, keeping the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    original: String,
    /// Host for the resolver: a name or an address, IPv6 without brackets.
    host: String,
    port: u16,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    /// Path and query, at least `/`.
    target: String,
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
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(bad("unexpected text after ']'")),
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
        };
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        Ok(HttpUrl {
            original: url.to_string(),
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            target,
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
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("I/O error: {0}")]
    Io(#[source] io::Error),
    #[error("invalid HTTP response: {0}")]
    Invalid(&'static str),
    #[error("response too large")]
    TooLarge,
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `GET url`, reading the whole response within `timeout`.
pub fn get(url: &HttpUrl, timeout: Duration) -> Result<Response, FetchError> {
    let mut conn = Conn::open(url, Instant::now() + timeout)?;
    let head = conn.read_head()?;
    let body = conn.read_body(&head)?;
    Ok(Response {
        status: head.status,
        body,
    })
}

/// `GET url`, reading only the status line within `timeout`: enough to know
/// that an HTTP server answered.
pub fn status(url: &HttpUrl, timeout: Duration) -> Result<u16, FetchError> {
    let mut conn = Conn::open(url, Instant::now() + timeout)?;
    loop {
        if let Some(end) = find(&conn.buf, b"\n") {
            return parse_status_line(&conn.buf[..end]);
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(FetchError::TooLarge);
        }
        if conn.fill()? == 0 {
            return Err(FetchError::Invalid(
                "connection closed before a status line",
            ));
        }
    }
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
}

struct Conn {
    stream: TcpStream,
    deadline: Instant,
    buf: Vec<u8>,
}

impl Conn {
    /// Resolves, connects (trying each address in turn) and sends the request.
    fn open(url: &HttpUrl, deadline: Instant) -> Result<Conn, FetchError> {
        let addrs = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(FetchError::Resolve)?;
        let mut last = FetchError::NoAddress;
        let mut stream = None;
        for addr in addrs {
            let remaining = remaining(deadline)?;
            match TcpStream::connect_timeout(&addr, remaining) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) if is_timeout(&e) => last = FetchError::Timeout,
                Err(e) => last = FetchError::Connect(e),
            }
        }
        let mut stream = stream.ok_or(last)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: star/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            url.target,
            url.authority,
            env!("CARGO_PKG_VERSION")
        );
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(FetchError::Io)?;
        stream.write_all(request.as_bytes()).map_err(io_error)?;
        Ok(Conn {
            stream,
            deadline,
            buf: Vec::new(),
        })
    }

    /// Reads more bytes into `buf`; returns how many (0 at end of stream).
    fn fill(&mut self) -> Result<usize, FetchError> {
        let remaining = remaining(self.deadline)?;
        self.stream
            .set_read_timeout(Some(remaining))
            .map_err(FetchError::Io)?;
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e)),
            }
        }
    }

    /// Reads the response head (skipping any 1xx interim responses) and
    /// leaves the bytes after it in `buf`.
    fn read_head(&mut self) -> Result<Head, FetchError> {
        loop {
            let end = loop {
                if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                    break end;
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(FetchError::TooLarge);
                }
                if self.fill()? == 0 {
                    return Err(FetchError::Invalid("connection closed inside the head"));
                }
            };
            let head = parse_head(&self.buf[..end])?;
            self.buf.drain(..end + 4);
            if !(100..200).contains(&head.status) {
                return Ok(head);
            }
        }
    }

    fn read_body(&mut self, head: &Head) -> Result<Vec<u8>, FetchError> {
        if head.status == 204 || head.status == 304 {
            return Ok(Vec::new());
        }
        if head.chunked {
            loop {
                if let Some(body) = decode_chunked(&self.buf)? {
                    return Ok(body);
                }
                if self.buf.len() > MAX_BODY + MAX_HEAD {
                    return Err(FetchError::TooLarge);
                }
                if self.fill()? == 0 {
                    return Err(FetchError::Invalid("connection closed inside a chunk"));
                }
            }
        }
        if let Some(len) = head.content_length {
            if len > MAX_BODY {
                return Err(FetchError::TooLarge);
            }
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(FetchError::Invalid("connection closed inside the body"));
                }
            }
            self.buf.truncate(len);
            return Ok(std::mem::take(&mut self.buf));
        }
        // No length given: the body runs to the end of the connection.
        while self.fill()? > 0 {
            if self.buf.len() > MAX_BODY {
                return Err(FetchError::TooLarge);
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }
}

fn remaining(deadline: Instant) -> Result<Duration, FetchError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(FetchError::Timeout)
    } else {
        Ok(left)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn io_error(e: io::Error) -> FetchError {
    if is_timeout(&e) {
        FetchError::Timeout
    } else {
        FetchError::Io(e)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses `HTTP/1.x NNN reason` (with or without the line ending).
fn parse_status_line(line: &[u8]) -> Result<u16, FetchError> {
    let line = std::str::from_utf8(line).map_err(|_| FetchError::Invalid("status line"))?;
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(FetchError::Invalid("status line"));
    }
    let code = parts.next().unwrap_or_default();
    match code.parse::<u16>() {
        Ok(code) if code.to_string().len() == 3 && code >= 100 => Ok(code),
        _ => Err(FetchError::Invalid("status code")),
    }
}

fn parse_head(head: &[u8]) -> Result<Head, FetchError> {
    let text = std::str::from_utf8(head).map_err(|_| FetchError::Invalid("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or_default().as_bytes())?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(FetchError::Invalid("header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let len = value
                .parse::<usize>()
                .map_err(|_| FetchError::Invalid("Content-Length"))?;
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(Head {
        status,
        content_length,
        chunked,
    })
}

/// Decodes a chunked body; `Ok(None)` while it is still incomplete.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, FetchError> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let size_text =
            std::str::from_utf8(&data[..eol]).map_err(|_| FetchError::Invalid("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| FetchError::Invalid("chunk size"))?;
        data = &data[eol + 2..];
        if size == 0 {
            // Trailers (ignored) end with an empty line.
            if data.starts_with(b"\r\n") || find(data, b"\r\n\r\n").is_some() {
                return Ok(Some(body));
            }
            return Ok(None);
        }
        if body.len() + size > MAX_BODY {
            return Err(FetchError::TooLarge);
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        if &data[size..size + 2] != b"\r\n" {
            return Err(FetchError::Invalid("chunk not followed by CRLF"));
        }
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

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
        let u = url("HTTP://10.0.0.1");
        assert_eq!((u.host(), u.port(), u.target()), ("10.0.0.1", 80, "/"));
        let u = url("http://[::1]:8080?x=1#frag");
        assert_eq!((u.host(), u.port(), u.target()), ("::1", 8080, "/?x=1"));
        assert_eq!(u.authority, "[::1]:8080");
        let u = url("http://[fe80::1]/a/b?c");
        assert_eq!((u.host(), u.port(), u.target()), ("fe80::1", 80, "/a/b?c"));
        let u = url("http://localhost:/x");
        assert_eq!(u.port(), 80);
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
            "",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn chunked_decoding() {
        assert_eq!(
            decode_chunked(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            Some(b"Wikipedia".to_vec())
        );
        assert_eq!(decode_chunked(b"4\r\nWiki\r\n5\r\nped").unwrap(), None);
        assert_eq!(decode_chunked(b"4\r\nWiki\r\n0\r\n").unwrap(), None);
        assert_eq!(
            decode_chunked(b"0\r\nX-Trailer: 1\r\n\r\n").unwrap(),
            Some(Vec::new())
        );
        assert!(decode_chunked(b"zz\r\n").is_err());
        assert!(decode_chunked(b"2\r\nabcd").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r").unwrap(), 200);
        assert_eq!(parse_status_line(b"HTTP/1.0 404").unwrap(), 404);
        assert!(parse_status_line(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status_line(b"HTTP/1.1 20 OK").is_err());
    }

    /// Serves one connection on loopback with `reply`, returning the URL and
    /// the request that was received.
    fn serve_once(reply: &'static [u8]) -> (HttpUrl, thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while find(&req, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(reply).unwrap();
            String::from_utf8(req).unwrap()
        });
        (url(&format!("http://127.0.0.1:{port}/status?x=1")), handle)
    }

    #[test]
    fn gets_with_content_length() {
        let (u, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more");
        let r = get(&u, Duration::from_secs(5)).unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: b"hello".to_vec()
            }
        );
        let req = h.join().unwrap();
        assert!(req.starts_with("GET /status?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("\r\nHost: 127.0.0.1:{}\r\n", u.port())),
            "{req}"
        );
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[test]
    fn gets_chunked_and_until_close() {
        let (u, h) = serve_once(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        );
        let r = get(&u, Duration::from_secs(5)).unwrap();
        assert_eq!(
            r,
            Response {
                status: 503,
                body: b"abc".to_vec()
            }
        );
        h.join().unwrap();
        let (u, h) = serve_once(b"HTTP/1.0 200 OK\r\n\r\n{\"a\":1}");
        let r = get(&u, Duration::from_secs(5)).unwrap();
        assert_eq!(r.body, b"{\"a\":1}");
        h.join().unwrap();
    }

    #[test]
    fn status_only_needs_the_status_line() {
        let (u, h) = serve_once(b"HTTP/1.1 418 I'm a teapot\r\n");
        assert_eq!(status(&u, Duration::from_secs(5)).unwrap(), 418);
        h.join().unwrap();
    }

    #[test]
    fn refused_and_silent_peers_fail_fast() {
        let closed = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let u = url(&format!("http://127.0.0.1:{port}/"));
        assert!(matches!(
            status(&u, Duration::from_secs(5)),
            Err(FetchError::Connect(_))
        ));

        // Accepts (via the backlog) but never answers.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let u = url(&format!("http://{}/", silent.local_addr().unwrap()));
        let start = Instant::now();
        assert!(matches!(
            get(&u, Duration::from_millis(200)),
            Err(FetchError::Timeout)
        ));
        let took = start.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}
