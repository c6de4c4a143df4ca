//! The HTTP side of both binaries: a tiny_http server whose requests are
//! answered by a plain [`Handler`] (method, path, body → [`Reply`]), so the
//! routing can be unit-tested without sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use serde::Serialize;
use socket2::{Socket, Type};

use crate::flags::Flags;
use crate::Error;

/// Largest request body accepted.
const MAX_REQUEST_BODY: u64 = 64 * 1024;
/// Threads answering requests.
const WORKERS: usize = 4;

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Methods for an `Allow` header (405 answers).
    pub allow: Option<&'static str>,
}

impl Reply {
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Reply {
        let body = serde_json::to_vec(value).expect("serialising plain data cannot fail");
        Reply::raw_json(status, body)
    }

    /// `{key: value}`, keeping `value`'s own field order.
    pub fn wrapped<T: Serialize + ?Sized>(status: u16, key: &str, value: &T) -> Reply {
        Reply::json(status, &std::collections::BTreeMap::from([(key, value)]))
    }

    /// A reply with an already serialised JSON body.
    pub fn raw_json(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: body.into(),
            allow: None,
        }
    }

    pub fn html(body: &'static str) -> Reply {
        Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: body.as_bytes().to_vec(),
            allow: None,
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, &serde_json::json!({ "error": message.into() }))
    }

    pub fn not_found() -> Reply {
        Reply::error(404, "not found")
    }

    pub fn method_not_allowed(allow: &'static str) -> Reply {
        Reply {
            allow: Some(allow),
            ..Reply::error(405, "method not allowed")
        }
    }

    /// The body as JSON (for tests).
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("reply body is JSON")
    }
}

/// Answers requests. `path` has no query string; `HEAD` arrives as `GET`.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, method: &str, path: &str, body: &[u8]) -> Reply;
}

/// Where a server listens, as the command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `--http-address`, `--http-port`: bind these (port 0: any free port).
    Bind { address: String, port: u16 },
    /// `--http-listen-fd`: serve on this listening TCP socket, which the
    /// parent process handed down. Only for a descriptor that this process
    /// inherited and holds nowhere else.
    Fd(RawFd),
}

impl Listen {
    /// Reads `--http-address` (default `0.0.0.0`), `--http-port` (default
    /// `default_port`) and `--http-listen-fd`, which excludes the other two.
    pub fn from_flags(flags: &Flags, default_port: u16) -> Result<Listen, Error> {
        let Some(fd) = flags.get("http-listen-fd") else {
            return Ok(Listen::Bind {
                address: flags.string("http-address", "0.0.0.0"),
                port: flags.port("http-port", default_port)?,
            });
        };
        if flags.get("http-address").is_some() || flags.get("http-port").is_some() {
            return Err(Error::Flag(
                "--http-listen-fd excludes --http-address and --http-port".to_string(),
            ));
        }
        match fd.trim().parse::<RawFd>() {
            Ok(fd) if fd > 2 => Ok(Listen::Fd(fd)),
            _ => Err(Error::Flag(format!(
                "--http-listen-fd: {fd:?} is not an inherited file descriptor (3 or more)"
            ))),
        }
    }

    /// Binds, or takes over the inherited socket (once per process).
    pub fn open(&self) -> Result<Listener, Error> {
        match self {
            Listen::Bind { address, port } => bind(address, *port),
            Listen::Fd(fd) => {
                static TAKEN: AtomicBool = AtomicBool::new(false);
                if TAKEN.swap(true, Ordering::SeqCst) {
                    return Err(Error::Listen {
                        address: format!("inherited descriptor {fd}"),
                        reason: "an inherited socket was taken already".to_string(),
                    });
                }
                // SAFETY: `Listen::Fd` names a descriptor that the command
                // line says this process inherited, to serve on, and holds
                // nowhere else; it is taken at most once (`TAKEN`).
                unsafe { inherit(*fd) }
            }
        }
    }
}

/// A bound, listening server socket.
pub struct Listener {
    server: tiny_http::Server,
    /// The address it is bound to: with port 0, the port the system chose.
    pub addr: SocketAddr,
}

/// Binds the listening socket; `address` is an IP address or a host name.
/// Port 0 binds a port the system chooses (see [`Listener::addr`]).
pub fn bind(address: &str, port: u16) -> Result<Listener, Error> {
    let shown = if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    };
    let fail = |reason: String| Error::Listen {
        address: shown.clone(),
        reason,
    };
    let addr = (address, port)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("address resolved to nothing".to_string()))?;
    let listener = TcpListener::bind(addr).map_err(|e| fail(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let server =
        tiny_http::Server::from_listener(listener, None).map_err(|e| fail(e.to_string()))?;
    Ok(Listener { server, addr })
}

/// Takes over the listening TCP socket that the parent process handed down
/// as descriptor `fd` (bound and listening already, so nothing can take its
/// port while this program starts).
///
/// # Safety
/// If `fd` is open, nothing else in this process may own it or use it
/// afterwards: the returned listener owns it and closes it.
unsafe fn inherit(fd: RawFd) -> Result<Listener, Error> {
    let fail = |reason: String| Error::Listen {
        address: format!("inherited descriptor {fd}"),
        reason,
    };
    if fd <= 2 {
        return Err(fail("0, 1 and 2 are standard input and output".to_string()));
    }
    // SAFETY: fcntl(F_GETFD) only reads the flags of one entry of this
    // process's descriptor table; any number is a valid argument (an unused
    // one gives EBADF).
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(fail(std::io::Error::last_os_error().to_string()));
    }
    // SAFETY: `fd` is open (checked just above), and the caller guarantees
    // that nothing else owns it: the `OwnedFd` made here is its one owner.
    let socket = Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let is_stream = socket.r#type().map_err(|e| fail(e.to_string()))? == Type::STREAM;
    let addr = socket
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .as_socket();
    let (true, Some(addr)) = (is_stream, addr) else {
        return Err(fail("not a TCP socket".to_string()));
    };
    if !socket.is_listener().map_err(|e| fail(e.to_string()))? {
        return Err(fail("the socket is not listening".to_string()));
    }
    // Keep it from children this program might start.
    socket.set_cloexec(true).map_err(|e| fail(e.to_string()))?;
    let server = tiny_http::Server::from_listener(TcpListener::from(socket), None)
        .map_err(|e| fail(e.to_string()))?;
    Ok(Listener { server, addr })
}

/// Tells on stdout that `program` listens on `addr`: one line,
/// `<program> listening on <ip>:<port>` (`[<ipv6>]:<port>`), printed once
/// the socket accepts connections. Scripts and tests started with
/// `--http-port 0` read the port from it.
pub fn announce(program: &str, addr: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    // Nobody may be reading stdout: that is no reason to stop.
    let _ = writeln!(stdout, "{program} listening on {addr}");
    let _ = stdout.flush();
}

/// Answers requests on `listener` forever.
pub fn serve(listener: Listener, handler: Arc<dyn Handler>) {
    let server = Arc::new(listener.server);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let server = Arc::clone(&server);
            let handler = Arc::clone(&handler);
            thread::spawn(move || loop {
                match server.recv() {
                    Ok(request) => answer(request, handler.as_ref()),
                    Err(e) => crate::logln!("receiving a request failed: {e}"),
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.join();
    }
}

fn answer(mut request: tiny_http::Request, handler: &dyn Handler) {
    let method = match request.method() {
        tiny_http::Method::Head => "GET".to_string(),
        m => m.as_str().to_ascii_uppercase(),
    };
    let path = request
        .url()
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let mut body = Vec::new();
    let read = request
        .as_reader()
        .take(MAX_REQUEST_BODY + 1)
        .read_to_end(&mut body);
    let reply = match read {
        Err(e) => Reply::error(400, format!("cannot read request body: {e}")),
        Ok(_) if body.len() as u64 > MAX_REQUEST_BODY => {
            Reply::error(413, "request body too large")
        }
        Ok(_) => handler.handle(&method, &path, &body),
    };
    let mut response = tiny_http::Response::from_data(reply.body)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", reply.content_type))
        .with_header(header("Cache-Control", "no-store"));
    if let Some(allow) = reply.allow {
        response = response.with_header(header("Allow", allow));
    }
    if let Err(e) = request.respond(response) {
        crate::logln!("answering {method} {path} failed: {e}");
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("static header names and values are valid")
}

/// The non-empty segments of `path`, percent-decoded.
pub fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_decodes_paths() {
        assert_eq!(segments("/"), Vec::<String>::new());
        assert_eq!(segments("/resources/"), vec!["resources"]);
        assert_eq!(
            segments("/resources/probe%2Da"),
            vec!["resources", "probe-a"]
        );
        assert_eq!(segments("/a%20b/%zz/%4"), vec!["a b", "%zz", "%4"]);
        assert_eq!(segments("/x%41"), vec!["xA"]);
    }
}
