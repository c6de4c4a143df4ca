//! A throw-away etcd server on loopback, for tests, benchmarks and the lab:
//! `/usr/bin/etcd` on two free (never the default) ports with a data
//! directory of its own, killed and removed when the guard is dropped.

use crate::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where Debian's `etcd-server` puts the binary.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// TLS material for a server started with [`EtcdServer::start_tls`].
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct EtcdServer {
    child: Child,
    /// How to start it again on the same ports and data (`restart`).
    command: Vec<String>,
    data_dir: PathBuf,
    /// `127.0.0.1:PORT`, the client address.
    pub endpoint: String,
}

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{tag}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn launch(args: &[String], data_dir: &Path) -> Result<Child, StoreError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("etcd.log"))
        .map_err(io_err(format!("creating {}/etcd.log", data_dir.display())))?;
    // setpriv ties etcd's life to the thread that starts it (the kernel's
    // parent-death signal is per thread): a test runner killed mid-run
    // leaves no etcd behind. Start it from a thread that outlives its use.
    let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
        let mut c = Command::new("/usr/bin/setpriv");
        c.args(["--pdeathsig", "KILL", "--", ETCD_BINARY]);
        c
    } else {
        Command::new(ETCD_BINARY)
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(io_err(format!("starting {ETCD_BINARY}")))
}

/// Two distinct loopback ports that were free a moment ago. Another process
/// may take one before etcd binds it: `spawn` sees etcd fail to bind and
/// tries other ports, and only ever trusts etcd's own log that it serves.
fn free_ports() -> std::io::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::Backend {
        context,
        source: Box::new(e),
    }
}

impl EtcdServer {
    /// Start a plain-HTTP etcd with its data under `base` (e.g. `/dev/shm` for
    /// tests that need no durability) and wait until it answers. It dies
    /// with the thread that started it (see `launch`), or when dropped.
    pub fn start(base: &Path) -> Result<Self, StoreError> {
        Self::spawn(base, None)
    }

    /// Start an etcd that serves clients over TLS and requires client certificates.
    pub fn start_tls(base: &Path, tls: &ServerTls) -> Result<Self, StoreError> {
        Self::spawn(base, Some(tls))
    }

    fn spawn(base: &Path, tls: Option<&ServerTls>) -> Result<Self, StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::spawn_once(base, tls) {
                Err(Started::PortTaken(e)) if attempt < 8 => {
                    eprintln!("etcd: a port was taken before etcd bound it, trying others: {e}");
                }
                Err(Started::PortTaken(e)) | Err(Started::Failed(e)) => return Err(e),
                Ok(server) => return Ok(server),
            }
        }
    }

    fn spawn_once(base: &Path, tls: Option<&ServerTls>) -> Result<Self, Started> {
        let data_dir = base.join(unique("netmod-etcd"));
        std::fs::create_dir_all(&data_dir)
            .map_err(io_err(format!("creating {}", data_dir.display())))?;
        let (client, peer) = free_ports().map_err(io_err("finding free ports".into()))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = vec![
            "--name=default".to_string(),
            format!("--data-dir={}", data_dir.join("data").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
        ];
        if let Some(t) = tls {
            command.extend([
                format!("--trusted-ca-file={}", t.ca.display()),
                format!("--cert-file={}", t.cert.display()),
                format!("--key-file={}", t.key.display()),
                "--client-cert-auth".to_string(),
            ]);
        }
        let child = launch(&command, &data_dir)?;
        let mut server = EtcdServer {
            child,
            command,
            data_dir,
            endpoint: format!("127.0.0.1:{client}"),
        };
        match server.wait_ready(Duration::from_secs(20), 0) {
            Ok(()) => Ok(server),
            Err(e) if server.log().contains("address already in use") => Err(Started::PortTaken(e)),
            Err(e) => Err(Started::Failed(e)),
        }
    }

    /// Kill etcd (as a crash would), keeping its data.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start it again after `stop`, on the same ports and data.
    pub fn restart(&mut self) -> Result<(), StoreError> {
        self.stop();
        let log_from = self.log().len();
        self.child = launch(&self.command, &self.data_dir)?;
        self.wait_ready(Duration::from_secs(20), log_from)
    }

    /// Wait until this etcd says it serves clients on its port (a single
    /// member elects itself at once). Connecting to the port would not do:
    /// another process may hold it.
    fn wait_ready(&mut self, limit: Duration, log_from: usize) -> Result<(), StoreError> {
        let deadline = Instant::now() + limit;
        let serving = format!("client requests on {}", self.endpoint);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.failed(format!("etcd exited with {status}")));
            }
            // A restart appends to the same log: only this run's lines count.
            let log = self.log();
            let newest = log.get(log_from..).unwrap_or("");
            if newest.contains("ready to serve client requests") && newest.contains(&serving) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.failed(format!("etcd not listening after {limit:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("etcd.log")).unwrap_or_default()
    }

    fn failed(&self, what: String) -> StoreError {
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        StoreError::Unavailable {
            endpoints: self.endpoint.clone(),
            reason: format!("{what}; log ends: {}", tail.join(" | ")),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// Why a start failed: a port taken under etcd's feet is worth another try.
enum Started {
    PortTaken(StoreError),
    Failed(StoreError),
}

impl From<StoreError> for Started {
    fn from(e: StoreError) -> Self {
        Started::Failed(e)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The etcd a test should use: `NETMOD_TEST_ETCD` (`HOST:PORT`) when set,
/// else one started here for the caller (dropped with the returned guard).
/// Without an etcd binary it panics: a test must not pass by skipping.
/// Tests in one process that share `NETMOD_TEST_ETCD` take turns, so that
/// one's writes do not move the revision under another's feet.
pub struct TestEtcd {
    pub endpoint: String,
    _server: Option<EtcdServer>,
    _turn: Option<std::sync::MutexGuard<'static, ()>>,
}

static SHARED_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TestEtcd {
    pub fn get(test: &str) -> Option<TestEtcd> {
        if let Ok(ep) = std::env::var("NETMOD_TEST_ETCD") {
            if !ep.is_empty() {
                let turn = SHARED_TURN.lock().unwrap_or_else(|e| e.into_inner());
                return Some(TestEtcd {
                    endpoint: ep,
                    _server: None,
                    _turn: Some(turn),
                });
            }
        }
        if !Path::new(ETCD_BINARY).exists() {
            panic!("{test}: {ETCD_BINARY} is missing (run scripts/setup.sh, or apt-get install etcd-server)");
        }
        let server = EtcdServer::start(&fast_tmp()).expect("start a test etcd");
        Some(TestEtcd {
            endpoint: server.endpoint.clone(),
            _server: Some(server),
            _turn: None,
        })
    }

    /// A store address with a fresh key prefix of its own on this etcd.
    pub fn fresh_address(&self) -> String {
        format!(
            "etcd://{}?prefix=/netmod-test/{}/",
            self.endpoint,
            unique("t")
        )
    }

    /// A fresh, empty store on this etcd.
    pub fn fresh_store(&self) -> Box<dyn Store> {
        crate::open(&self.fresh_address()).expect("open a test etcd store")
    }
}

/// A tmpfs when there is one (etcd fsyncs every write; tests need no durability).
pub fn fast_tmp() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
