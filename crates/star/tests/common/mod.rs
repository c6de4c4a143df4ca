//! Helpers for the integration tests: start the real binaries on loopback
//! ports and talk to them with a tiny independent HTTP client.
//!
//! Every address used here is on 127.0.0.0/8. No port is picked and then
//! hoped to stay free: a server binds port 0 and says which port it got, or
//! serves on a listening socket the test bound and hands down; a port where
//! nothing may listen is held by a bound, non-listening socket.

#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use socket2::{Domain, Socket, Type};

pub const PROBE: &str = env!("CARGO_BIN_EXE_star-probe");
pub const COLLECT: &str = env!("CARGO_BIN_EXE_star-collect");

/// A listening loopback socket on a port the system chose. Hand it to a
/// server with [`Server::probe_on`] / [`Server::collect_on`] when its URL
/// must be known before the server starts, or must outlive one server.
pub fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// The port of a socket from [`listener`].
pub fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().unwrap().port()
}

/// A loopback port where nothing listens, kept so for as long as this
/// value lives: a TCP socket is bound to it without listening, so
/// connections are refused and no other socket can take the port.
pub struct ClosedPort {
    socket: Socket,
    pub port: u16,
}

impl ClosedPort {
    /// The socket's descriptor (to hand down a socket that does not listen).
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

pub fn closed_port() -> ClosedPort {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    ClosedPort { socket, port }
}

/// Lets the child started by `command` inherit descriptor `fd` (which Rust
/// opens close-on-exec), under the same number.
pub fn inherit_fd(command: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the forked child just before exec. It
    // only calls fcntl, which is async-signal-safe, allocates nothing and
    // touches no lock or memory shared with the parent.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A fresh, empty scratch directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "star-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running binary, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    stderr: PathBuf,
}

impl Server {
    /// Starts `bin` with `args` plus `--http-address 127.0.0.1 --http-port
    /// 0`, and takes the port it got from the line it prints once it
    /// listens.
    pub fn start(bin: &str, args: &[&str]) -> Server {
        let mut command = Command::new(bin);
        command
            .args(args)
            .args(["--http-address", "127.0.0.1", "--http-port", "0"]);
        Server::spawn(command, None)
    }

    /// Starts `bin` with `args`, serving on `listener`, which it inherits.
    /// The caller keeps its own handle: once this server is gone, the port
    /// stays taken, and connections to it wait unanswered.
    pub fn start_on(bin: &str, listener: &TcpListener, args: &[&str]) -> Server {
        let fd = listener.as_raw_fd();
        let mut command = Command::new(bin);
        command.args(args).arg(format!("--http-listen-fd={fd}"));
        inherit_fd(&mut command, fd);
        Server::spawn(command, Some(port_of(listener)))
    }

    pub fn probe(args: &[&str]) -> Server {
        Server::start(PROBE, args)
    }

    pub fn collect(args: &[&str]) -> Server {
        Server::start(COLLECT, args)
    }

    pub fn probe_on(listener: &TcpListener, args: &[&str]) -> Server {
        Server::start_on(PROBE, listener, args)
    }

    pub fn collect_on(listener: &TcpListener, args: &[&str]) -> Server {
        Server::start_on(COLLECT, listener, args)
    }

    /// Spawns `command` and waits for its "<name> listening on <addr>"
    /// line on stdout (and, with `expected_port`, checks the port).
    fn spawn(mut command: Command, expected_port: Option<u16>) -> Server {
        let program = Path::new(command.get_program())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let stderr = scratch_dir("server").join("stderr.log");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        // Read stdout to its end, so the server never blocks on it.
        let stdout = child.stdout.take().unwrap();
        let (lines, announced) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines.send(line);
            }
        });
        let mut server = Server {
            child,
            port: 0,
            stderr,
        };
        let prefix = format!("{program} listening on ");
        let deadline = Instant::now() + Duration::from_secs(15);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match announced.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix(&prefix) {
                        break addr
                            .parse::<SocketAddr>()
                            .unwrap_or_else(|e| panic!("{line:?}: {e}"));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = server.child.wait().unwrap();
                    panic!(
                        "{program} exited early with {status}: {}",
                        server.stderr_text()
                    );
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{program} did not say it listens within 15 s: {}",
                    server.stderr_text()
                ),
            }
        };
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{program}");
        if let Some(port) = expected_port {
            assert_eq!(
                addr.port(),
                port,
                "{program} is not on the socket it was given"
            );
        }
        server.port = addr.port();
        server
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Reply {
        request(self.port, "GET", path, None).unwrap()
    }

    pub fn get_json(&self, path: &str) -> Value {
        let reply = self.get(path);
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        reply.json()
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        request(self.port, "POST", path, Some(body)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Header lines as (lower-case name, value).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port` with `Connection: close`.
pub fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw).map_err(std::io::Error::other)?;
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no end of head in {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = rest.to_string();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// Polls `check` every 100 ms until it returns `Some` or `within` passes.
pub fn wait_for<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback listener that completes TCP handshakes (and accepts the
/// connections) but never sends a byte: a blackholed HTTP server.
pub fn silent_listener() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The status URL of a probe on `port`.
pub fn status_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/status")
}
