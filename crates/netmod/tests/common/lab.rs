//! A tiny test fabric: fake hosts are network namespaces on a bridge that
//! lives in a namespace of its own; containers are namespaces with a process
//! in them. Everything is named `nmtest-<pid>-<n>-*` and removed on drop.
//! The hosts share one SQLite file (`Fabric::new`), or an etcd server that
//! runs inside the fabric namespace on the bridge address
//! (`Fabric::with_options` with `Backend::Etcd`), which they reach over the
//! fabric as real hosts would; each node's stderr goes to a log file.
#![allow(dead_code)]

use super::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

pub fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

pub fn must(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct FakeHost {
    pub name: String,
    pub ns: String,
    pub ip: String,
    /// The host's IPv6 address on the fabric (`FabricOptions::ipv6`).
    pub ip6: Option<String>,
    pub node: Option<Child>,
}

pub struct Container {
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub process: Child,
    /// The IPv4 address (empty when the container has none).
    pub addr: String,
    /// The IPv6 address, when the container has one.
    pub addr6: Option<String>,
    pub groups: Vec<String>,
    pub server: Option<Child>,
    /// The listener on the IPv6 address.
    pub server6: Option<Child>,
}

pub struct Fabric {
    pub prefix: String,
    /// The SQLite store (for an etcd fabric, only its directory is used: node logs).
    pub store: TestStore,
    pub hosts: Vec<FakeHost>,
    pub containers: Vec<Container>,
    pub subnet: String,
    /// The fabric's IPv6 prefix (`<subnet6>::/64`), used when `opts.ipv6`.
    pub subnet6: String,
    /// What every `--store` on this fabric says: the SQLite path or `etcd://…`.
    pub addr: String,
    /// The etcd server inside the fabric namespace, when the fabric uses etcd.
    pub etcd: Option<FabricEtcd>,
    pub opts: FabricOptions,
}

/// Which datastore the fake hosts share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file (every fake host is on this machine).
    Sqlite,
    /// An etcd server inside the fabric namespace, on the bridge address:
    /// the hosts reach it over the fabric, as real hosts would.
    Etcd,
}

#[derive(Debug, Clone, Copy)]
pub struct FabricOptions {
    pub backend: Backend,
    /// `netmod node --lease-ttl`.
    pub lease_ttl: u64,
    /// `netmod node --resync-interval`.
    pub resync_interval: u64,
    /// Hosts get an IPv6 address on the fabric too, and their nodes are
    /// told it (`--host-ipv6`).
    pub ipv6: bool,
    /// `netmod node --stale-record-grace`, when set (else the node's default).
    pub stale_record_grace: Option<u64>,
    /// Hosts from this one on (1-based) sit on a second subnet, behind the
    /// fabric namespace as a router that knows nothing of the pools.
    pub second_subnet_from: Option<usize>,
    /// Extra flags of the fabric's `pool add` (e.g. `--vxlan-mode Always`).
    pub pool_flags: &'static [&'static str],
    /// Extra flags of every `netmod node` (e.g. `--bgp`); `{host}` becomes
    /// the host's name and `{dir}` the fabric's temporary directory.
    pub node_args: &'static [&'static str],
}

impl Default for FabricOptions {
    fn default() -> Self {
        FabricOptions {
            backend: Backend::Sqlite,
            lease_ttl: 3,
            resync_interval: 5,
            ipv6: false,
            stale_record_grace: None,
            second_subnet_from: None,
            pool_flags: &[],
            node_args: &[],
        }
    }
}

/// Where Debian's etcd-server puts the binary.
pub const ETCD: &str = "/usr/bin/etcd";
/// Client and peer ports of the fabric's etcd (never etcd's defaults).
pub const ETCD_CLIENT_PORT: u16 = 12379;
pub const ETCD_PEER_PORT: u16 = 12380;

/// etcd running in the fabric namespace, listening on the bridge address.
/// Its data lives in a temporary directory; it dies with the thread that
/// started it (setpriv --pdeathsig) or when dropped.
pub struct FabricEtcd {
    pub ip: String,
    pub port: u16,
    /// `IP:PORT`.
    pub endpoint: String,
    fab_ns: String,
    data: tempfile::TempDir,
    child: Option<Child>,
}

impl FabricEtcd {
    fn start_in(fab_ns: &str, ip: &str) -> FabricEtcd {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            tempfile::Builder::new()
                .prefix("nmtest-etcd-")
                .tempdir_in("/dev/shm")
        } else {
            tempfile::Builder::new().prefix("nmtest-etcd-").tempdir()
        };
        let mut etcd = FabricEtcd {
            ip: ip.to_string(),
            port: ETCD_CLIENT_PORT,
            endpoint: format!("{ip}:{ETCD_CLIENT_PORT}"),
            fab_ns: fab_ns.to_string(),
            data: base.unwrap(),
            child: None,
        };
        etcd.start();
        etcd
    }

    /// Start (again) on the same address and data.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let client = format!("http://{}", self.endpoint);
        let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("etcd.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.fab_ns])
            .args(["/usr/bin/setpriv", "--pdeathsig", "KILL", "--", ETCD])
            .arg("--name=nmtest")
            .arg(format!(
                "--data-dir={}",
                self.data.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=nmtest={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let health = format!(
            "ip netns exec {} curl -sf -m 1 http://{}/health",
            self.fab_ns, self.endpoint
        );
        let start = Instant::now();
        loop {
            let out = sh(&health);
            if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("true") {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited with {status}: {}", self.log_tail());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd not healthy after 20 s: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kill etcd as a crash would (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for FabricEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Python one-liners: a TCP server that answers every connection, a client
/// that exits 0 when it connects.
pub const SERVER: &str = r#"
import socket, sys, threading
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
print('ready', flush=True)
def serve(c):
    try:
        while True:
            d = c.recv(1024)
            if not d: break
            c.sendall(d)
    except OSError: pass
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

pub const CONNECT: &str = r#"
import socket, sys
src = sys.argv[3] if len(sys.argv) > 3 else None
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]) if len(sys.argv) > 4 else 1.0, source_address=(src, 0) if src else None)
    s.sendall(b'x'); ok = s.recv(1) == b'x'
    sys.exit(0 if ok else 1)
except OSError:
    sys.exit(1)
"#;

impl Fabric {
    /// A fabric with `n` hosts, each running `netmod node`, and a pool.
    pub fn new(n: usize, pool: &str) -> Fabric {
        Fabric::with_options(n, pool, FabricOptions::default())
    }

    /// A fabric on the datastore (and with the node settings) `opts` names.
    pub fn with_options(n: usize, pool: &str, opts: FabricOptions) -> Fabric {
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("nmtest-{}-{id}", std::process::id());
        let subnet = format!("10.250.{}", 10 + id % 200);
        let subnet6 = format!("fdfa:0:{:x}:{}", std::process::id() & 0xffff, id % 10000);
        let store = TestStore::new();
        let fab = format!("{prefix}-fab");
        must(&format!("ip netns add {fab}"));
        must(&format!(
            "ip -n {fab} link add br0 type bridge && ip -n {fab} link set br0 up && ip -n {fab} addr add {subnet}.254/24 dev br0 && ip -n {fab} link set lo up"
        ));
        if opts.ipv6 {
            must(&format!(
                "ip -n {fab} addr add {subnet6}::254/64 dev br0 nodad"
            ));
        }
        let (subnet_b, subnet6_b) = (
            format!("10.251.{}", 10 + id % 200),
            format!("fdfb:0:{:x}:{}", std::process::id() & 0xffff, id % 10000),
        );
        if opts.second_subnet_from.is_some() {
            // The fabric namespace routes between the two subnets, and
            // only between them: it holds no route to any pool.
            must(&format!(
                "ip -n {fab} link add br1 type bridge && ip -n {fab} link set br1 up && \
                 ip -n {fab} addr add {subnet_b}.254/24 dev br1 && \
                 ip netns exec {fab} sysctl -qw net.ipv4.ip_forward=1"
            ));
            if opts.ipv6 {
                must(&format!(
                    "ip -n {fab} addr add {subnet6_b}::254/64 dev br1 nodad && \
                     ip netns exec {fab} sysctl -qw net.ipv6.conf.all.forwarding=1"
                ));
            }
            // Beyond the router, "outside" the cluster: a namespace with an
            // address outside every pool (TEST-NET-2) and no route to any
            // pool (it answers the hosts' addresses, through the router).
            let out = format!("{prefix}-out");
            must(&format!(
                "ip netns add {out} && ip -n {fab} link add out type veth peer name eth0 netns {out} && \
                 ip -n {fab} addr add {OUTSIDE_ROUTER}/24 dev out && ip -n {fab} link set out up && \
                 ip -n {out} addr add {OUTSIDE_ADDR}/24 dev eth0 && ip -n {out} link set eth0 up && \
                 ip -n {out} link set lo up && ip -n {out} route add default via {OUTSIDE_ROUTER}"
            ));
        }
        let (addr, etcd) = match opts.backend {
            Backend::Sqlite => (store.path.display().to_string(), None),
            Backend::Etcd => {
                let etcd = FabricEtcd::start_in(&fab, &format!("{subnet}.254"));
                let addr = format!("etcd://{}?prefix=/{prefix}/", etcd.endpoint);
                (addr, Some(etcd))
            }
        };
        let mut fabric = Fabric {
            prefix,
            store,
            hosts: Vec::new(),
            containers: Vec::new(),
            subnet: subnet.clone(),
            subnet6: subnet6.clone(),
            addr,
            etcd,
            opts,
        };
        // Inside the fabric's namespace: `pool add` refuses pools that overlap
        // the routes where it runs, and the machine's own routes (a lab's,
        // say) are none of this fabric's business.
        let out = Command::new("ip")
            .args(["netns", "exec", &fab, NETMOD, "--store", &fabric.addr])
            .args(["pool", "add", pool, "--quarantine", "1"])
            .args(opts.pool_flags)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pool add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for i in 1..=n {
            let name = format!("h{i}");
            let ns = format!("{}-{name}", fabric.prefix);
            let second = opts.second_subnet_from.is_some_and(|k| i >= k);
            let (net, net6, bridge) = if second {
                (&subnet_b, &subnet6_b, "br1")
            } else {
                (&subnet, &subnet6, "br0")
            };
            let ip = format!("{net}.{i}");
            must(&format!("ip netns add {ns}"));
            must(&format!(
                "ip -n {fab} link add {name} type veth peer name eth0 netns {ns} && \
                 ip -n {fab} link set {name} master {bridge} up && \
                 ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up && \
                 ip -n {ns} route add default via {net}.254"
            ));
            let ip6 = opts.ipv6.then(|| canonical_ipv6(&format!("{net6}::{i}")));
            if let Some(ip6) = &ip6 {
                must(&format!("ip -n {ns} addr add {ip6}/64 dev eth0 nodad"));
                if opts.second_subnet_from.is_some() {
                    must(&format!("ip -n {ns} -6 route add default via {net6}::254"));
                }
            }
            fabric.hosts.push(FakeHost {
                name,
                ns,
                ip,
                ip6,
                node: None,
            });
        }
        for i in 0..n {
            fabric.start_node(i);
        }
        fabric
    }

    pub fn host(&self, name: &str) -> &FakeHost {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }

    pub fn start_node(&mut self, i: usize) {
        let h = &self.hosts[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.node_log_path(&h.name))
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, NETMOD, "--store"])
            .arg(&self.addr)
            .args([
                "node",
                "--hostname",
                &h.name,
                "--host-ip",
                &h.ip,
                "--lease-ttl",
                &self.opts.lease_ttl.to_string(),
                "--resync-interval",
                &self.opts.resync_interval.to_string(),
            ]);
        if let Some(ip6) = &h.ip6 {
            cmd.args(["--host-ipv6", ip6]);
        }
        if let Some(grace) = self.opts.stale_record_grace {
            cmd.args(["--stale-record-grace", &grace.to_string()]);
        }
        let dir = self.store.dir.path().display().to_string();
        cmd.args(
            self.opts
                .node_args
                .iter()
                .map(|a| a.replace("{host}", &h.name).replace("{dir}", &dir)),
        );
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.hosts[i].node = Some(child);
        let ns = self.hosts[i].ns.clone();
        wait_for(
            Duration::from_secs(10),
            &format!("node on {ns} healthy"),
            || {
                sh(&format!(
                    "ip netns exec {ns} curl -sf http://127.0.0.1:9190/healthz"
                ))
                .status
                .success()
            },
        );
    }

    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.hosts[i].node.take() {
            // SAFETY: kill(2) on our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// `netmod mesos` run on a host, as the agent there would.
    pub fn mesos(&self, host: &str, req: &Value) -> (i32, Value) {
        let h = self.host(host);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &h.ns, NETMOD, "--store"])
            .arg(&self.addr)
            .arg("mesos")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(req.to_string().as_bytes())
            .unwrap();
        let out = wait(&mut child);
        let reply: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code().unwrap_or(-1), reply)
    }

    /// Start a container process (a fresh network namespace), allocate its
    /// address and isolate it, exactly as the Mesos module would.
    pub fn launch(&mut self, host: &str, name: &str, groups: &[&str]) -> &Container {
        self.launch_with(host, name, groups, 1, 0)
    }

    /// `launch` with `num_ipv4` / `num_ipv6` addresses (at most one of
    /// each), and a TCP echo server on port 9000 of each.
    pub fn launch_with(
        &mut self,
        host: &str,
        name: &str,
        groups: &[&str],
        num_ipv4: u32,
        num_ipv6: u32,
    ) -> &Container {
        assert!(num_ipv4 <= 1 && num_ipv6 <= 1 && num_ipv4 + num_ipv6 > 0);
        let h = self.host(host);
        let process = Command::new("ip")
            .args([
                "netns", "exec", &h.ns, "unshare", "--net", "--", "sleep", "100000",
            ])
            .spawn()
            .unwrap();
        let pid = process.id();
        // The pid becomes `sleep` once unshare has made the new namespace.
        wait_for(Duration::from_secs(5), "container namespace", || {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.to_string_lossy().ends_with("sleep"))
        });
        let uid = format!("{}-{name}", self.prefix);
        let (code, reply) = self.mesos(
            host,
            &json!({"command":"allocate","args":{"hostname":host,"num_ipv4":num_ipv4,"num_ipv6":num_ipv6,"uid":uid,"netgroups":groups}}),
        );
        assert_eq!(code, 0, "allocate: {reply}");
        let v4: Vec<Value> = reply["ipv4"].as_array().cloned().unwrap_or_default();
        let v6: Vec<Value> = reply["ipv6"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            (v4.len(), v6.len()),
            (num_ipv4 as usize, num_ipv6 as usize),
            "allocate: {reply}"
        );
        let addr = v4
            .first()
            .map(|a| a.as_str().unwrap().to_string())
            .unwrap_or_default();
        let addr6 = v6.first().map(|a| a.as_str().unwrap().to_string());
        let (code, reply) = self.mesos(
            host,
            &json!({"command":"isolate","args":{"hostname":host,"container_id":uid,"pid":pid,
                "ipv4_addrs":v4,"ipv6_addrs":v6,"netgroups":groups,"labels":{"task":name}}}),
        );
        assert_eq!(code, 0, "isolate: {reply}");
        let server = (!addr.is_empty()).then(|| serve_in(pid, &addr));
        let server6 = addr6.as_deref().map(|a| serve_in(pid, a));
        self.containers.push(Container {
            name: name.into(),
            host: host.into(),
            pid,
            process,
            addr,
            addr6,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            server,
            server6,
        });
        self.containers.last().unwrap()
    }

    pub fn container(&self, name: &str) -> &Container {
        self.containers.iter().find(|c| c.name == name).unwrap()
    }

    pub fn uid(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// release then cleanup, as the module does when a task ends.
    pub fn stop(&mut self, name: &str) {
        let c = self.containers.iter().position(|c| c.name == name).unwrap();
        let uid = self.uid(name);
        let host = self.containers[c].host.clone();
        let (code, reply) = self.mesos(&host, &json!({"command":"release","args":{"uid":uid}}));
        assert_eq!(code, 0, "release: {reply}");
        let (code, reply) = self.mesos(
            &host,
            &json!({"command":"cleanup","args":{"hostname":host,"container_id":uid}}),
        );
        assert_eq!(code, 0, "cleanup: {reply}");
        let mut c = self.containers.remove(c);
        kill(&mut c);
    }

    /// Can a TCP connection be made from a container (by name) or host (by
    /// host name) to a container's port 9000?
    pub fn connects(&self, from: &str, to: &str, timeout: f64) -> bool {
        self.connects_addr(from, &self.container(to).addr, timeout)
    }

    /// `connects`, to the container's IPv6 address.
    pub fn connects6(&self, from: &str, to: &str, timeout: f64) -> bool {
        let c = self.container(to);
        let dst = c
            .addr6
            .as_deref()
            .unwrap_or_else(|| panic!("{to} has no IPv6 address"));
        self.connects_addr(from, dst, timeout)
    }

    /// Can a container (by name) or host (by host name) open a TCP
    /// connection to `dst` port 9000 (and get its byte echoed)?
    pub fn connects_addr(&self, from: &str, dst: &str, timeout: f64) -> bool {
        let cmd = match self.containers.iter().find(|c| c.name == from) {
            Some(c) => format!(
                "nsenter --net=/proc/{}/ns/net python3 -c \"$P\" {dst} 9000 '' {timeout}",
                c.pid
            ),
            None => format!(
                "ip netns exec {} python3 -c \"$P\" {dst} 9000 '' {timeout}",
                self.host(from).ns
            ),
        };
        Command::new("sh")
            .arg("-c")
            .arg(cmd.replace("''", "\"\""))
            .env("P", CONNECT)
            .status()
            .unwrap()
            .success()
    }

    pub fn ns_json(&self, host: &str, what: &str) -> Value {
        let out = must(&format!("ip -n {} -j {what}", self.host(host).ns));
        serde_json::from_str(&out).unwrap()
    }

    pub fn nft_json(&self, host: &str) -> Value {
        let out = sh(&format!(
            "ip netns exec {} nft -j list table inet netmod",
            self.host(host).ns
        ));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Every element of every set in a host's netmod table.
    pub fn set_elements(&self, host: &str) -> Vec<(String, String)> {
        let v = self.nft_json(host);
        let mut out = Vec::new();
        for item in v["nftables"].as_array().cloned().unwrap_or_default() {
            if let Some(set) = item.get("set") {
                for e in set["elem"].as_array().cloned().unwrap_or_default() {
                    out.push((
                        set["name"].as_str().unwrap().to_string(),
                        e.as_str().unwrap_or("?").to_string(),
                    ));
                }
            }
        }
        out.sort();
        out
    }
}

fn kill(c: &mut Container) {
    for child in [Some(&mut c.process), c.server.as_mut(), c.server6.as_mut()]
        .into_iter()
        .flatten()
    {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        for c in &mut self.containers {
            kill(c);
        }
        for i in 0..self.hosts.len() {
            self.kill_node(i);
        }
        if let Some(etcd) = &mut self.etcd {
            etcd.stop();
        }
        for h in &self.hosts {
            let _ = sh(&format!("ip netns del {}", h.ns));
        }
        let _ = sh(&format!("ip netns del {}-fab", self.prefix));
        if self.opts.second_subnet_from.is_some() {
            let _ = sh(&format!("ip netns del {}", self.outside_ns()));
        }
    }
}

/// The routed fabric's "outside" namespace: its address, and the router's
/// address on that link.
pub const OUTSIDE_ADDR: &str = "198.51.100.1";
pub const OUTSIDE_ROUTER: &str = "198.51.100.254";

pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What every fabric test needs: root and the tools the fabric runs.
/// Fails the test (never skips it) when something is missing.
pub fn require_lab() {
    require(
        is_root(),
        "root (it creates network namespaces and nftables tables)",
    );
    require_tools(&[
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("python3", "python3"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("sleep", "coreutils"),
        ("curl", "curl"),
    ]);
}

impl Fabric {
    /// A process in a fresh network namespace on a host, with nothing plugged in.
    pub fn sandbox(&self, host: &str) -> Child {
        let h = self.host(host);
        let process = Command::new("ip")
            .args([
                "netns", "exec", &h.ns, "unshare", "--net", "--", "sleep", "100000",
            ])
            .spawn()
            .unwrap();
        let pid = process.id();
        wait_for(Duration::from_secs(5), "sandbox namespace", || {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|p| p.to_string_lossy().ends_with("sleep"))
        });
        process
    }

    /// Run `netmod` as a CNI plugin on a host: (exit status, stdout JSON or Null).
    pub fn cni(
        &self,
        host: &str,
        command: &str,
        env: &[(&str, &str)],
        conf: &Value,
    ) -> (i32, Value) {
        let h = self.host(host);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, NETMOD])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", "/opt/cni/bin")
            .env("NETMOD_STORE", &self.addr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = wait(&mut child);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), v)
    }
}

/// A TCP echo server on port 9000 inside a process's network namespace.
pub fn serve_in(pid: u32, addr: &str) -> Child {
    let mut server = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["python3", "-c", SERVER, addr, "9000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    server
}

/// Can the namespace of `pid` open a TCP connection to addr:9000?
pub fn connects_from(pid: u32, addr: &str, timeout: f64) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "nsenter --net=/proc/{pid}/ns/net python3 -c \"$P\" {addr} 9000 \"\" {timeout}"
        ))
        .env("P", CONNECT)
        .status()
        .unwrap()
        .success()
}

pub fn kill_child(mut c: Child) {
    // SAFETY: kill(2) on our own child process.
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    let _ = c.wait();
}

/// Run `f` on a thread of its own that has entered the network namespace
/// `ns` (by `ip netns` name): whatever it connects to is seen from there.
/// Threads that `f` starts (a store's runtime) inherit the namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on a valid namespace fd; it only changes this
        // thread, which ends when `f` returns.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

impl Fabric {
    /// The routed fabric's namespace outside the cluster (`OUTSIDE_ADDR`).
    pub fn outside_ns(&self) -> String {
        format!("{}-out", self.prefix)
    }

    pub fn fab_ns(&self) -> String {
        format!("{}-fab", self.prefix)
    }

    pub fn host_index(&self, name: &str) -> usize {
        self.hosts.iter().position(|h| h.name == name).unwrap()
    }

    pub fn node_log_path(&self, host: &str) -> std::path::PathBuf {
        self.store.dir.path().join(format!("node-{host}.log"))
    }

    /// What a host's `netmod node` wrote to stderr so far.
    pub fn node_log(&self, host: &str) -> String {
        std::fs::read_to_string(self.node_log_path(host)).unwrap_or_default()
    }

    /// `netmod --store <this fabric's store> ARGS`, run where the store is
    /// reachable (for etcd: inside the fabric namespace).
    pub fn netmod(&self, args: &[&str]) -> std::process::Output {
        match self.etcd {
            None => self.store.netmod(args),
            Some(_) => Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.fab_ns(),
                    NETMOD,
                    "--store",
                    &self.addr,
                ])
                .args(args)
                .output()
                .unwrap(),
        }
    }

    /// Run `f` against this fabric's store (for etcd: from inside the fabric
    /// namespace, on a store opened and dropped there).
    pub fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn netmod_store::Store) -> T + Send + 'static,
    ) -> T {
        let addr = self.addr.clone();
        let open = move || {
            let store = netmod_store::open(&addr).unwrap();
            f(&*store)
        };
        match self.etcd {
            None => open(),
            Some(_) => in_netns(&self.fab_ns(), open),
        }
    }

    /// Every key and value under the fabric's store (prefix), sorted.
    pub fn dump(&self) -> Vec<(String, String)> {
        self.with_store(|s| {
            let (kvs, _) = s.range("").unwrap();
            kvs.into_iter()
                .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
                .collect()
        })
    }

    pub fn etcd(&mut self) -> &mut FabricEtcd {
        self.etcd.as_mut().expect("an etcd fabric")
    }

    /// Send a signal to a host's `netmod node` (SIGSTOP, SIGCONT, …).
    pub fn signal_node(&self, i: usize, sig: i32) {
        let pid = self.hosts[i].node.as_ref().expect("node running").id();
        // SAFETY: kill(2) on our own child process.
        assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
    }

    /// The node's /metrics page, as name -> value.
    pub fn metrics(&self, host: &str) -> std::collections::BTreeMap<String, f64> {
        let out = sh(&format!(
            "ip netns exec {} curl -sf -m 2 http://127.0.0.1:9190/metrics",
            self.host(host).ns
        ));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    pub fn metric(&self, host: &str, name: &str) -> Option<f64> {
        self.metrics(host).get(name).copied()
    }

    /// A host's routes through a gateway, as (destination, gateway).
    pub fn routes_via(&self, host: &str) -> Vec<(String, String)> {
        let routes = self.ns_json(host, "route");
        let mut out: Vec<(String, String)> = routes
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["dst"] != json!("default"))
            .filter_map(|r| {
                Some((
                    r["dst"].as_str()?.to_string(),
                    r["gateway"].as_str()?.to_string(),
                ))
            })
            .collect();
        out.sort();
        out
    }

    /// Everything the dataplane holds on a host: links, routes, set elements.
    pub fn kernel_state(&self, host: &str) -> (Value, Value, Vec<(String, String)>) {
        (
            self.ns_json(host, "link"),
            self.ns_json(host, "route"),
            self.set_elements(host),
        )
    }

    /// Cut a host off from etcd: drop its traffic to and from the etcd
    /// endpoint inside the host's namespace (a table of the test's own).
    pub fn partition(&self, host: &str) {
        let etcd = self.etcd.as_ref().expect("an etcd fabric");
        let (ip, port) = (&etcd.ip, etcd.port);
        must(&format!(
            "ip netns exec {} nft -f - <<'EOF'\n\
             table inet nmtest_partition {{\n\
               chain out {{ type filter hook output priority -10; policy accept; ip daddr {ip} tcp dport {port} drop; }}\n\
               chain in {{ type filter hook input priority -10; policy accept; ip saddr {ip} tcp sport {port} drop; }}\n\
             }}\nEOF",
            self.host(host).ns
        ));
    }

    pub fn heal(&self, host: &str) {
        must(&format!(
            "ip netns exec {} nft delete table inet nmtest_partition",
            self.host(host).ns
        ));
    }
}

/// A UDP listener: prints `ready`, then one line `<source address> <payload>`
/// per datagram it receives.
pub const UDP_SINK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    d, a = s.recvfrom(2048)
    print(a[0], d.decode(errors='replace'), flush=True)
"#;

/// Sends one UDP datagram from `src` (which need not be an address of this
/// namespace: IP_TRANSPARENT / IPV6_TRANSPARENT) to `dst`:`port`.
pub const UDP_SEND: &str = r#"
import socket, sys
dst, port, src, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
v6 = ':' in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(41 if v6 else 0, 75 if v6 else 19, 1)
s.bind((src, 0))
s.sendto(payload.encode(), (dst, port))
"#;

/// The UDP port the sinks listen on, inside container namespaces the test made.
pub const UDP_PORT: u16 = 9001;

/// A `UDP_SINK` in a process's network namespace, and what it received.
pub struct UdpSink {
    child: Child,
    rx: std::sync::mpsc::Receiver<(String, String)>,
    /// Every datagram received so far: (source address, payload).
    pub seen: Vec<(String, String)>,
}

impl UdpSink {
    pub fn start(pid: u32, addr: &str) -> UdpSink {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["python3", "-c", UDP_SINK, addr, &UDP_PORT.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        use std::io::BufRead;
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "UDP sink on {addr}");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if let Some((src, payload)) = line.split_once(' ') {
                    if tx.send((src.to_string(), payload.to_string())).is_err() {
                        break;
                    }
                }
            }
        });
        UdpSink {
            child,
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `limit` for a datagram carrying `payload`; keeps
    /// everything that arrives meanwhile in `seen`.
    pub fn wait_for(&mut self, payload: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.seen.iter().any(|(_, p)| p == payload) {
                return true;
            }
            let left = limit.saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(d) => self.seen.push(d),
                Err(_) => return false,
            }
        }
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// One UDP datagram from the namespace of `pid`, with source address `src`.
pub fn send_udp(pid: u32, src: &str, dst: &str, payload: &str) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args([
            "python3",
            "-c",
            UDP_SEND,
            dst,
            &UDP_PORT.to_string(),
            src,
            payload,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "send from {src} to {dst}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Fabric {
    /// Container `from` sends UDP datagrams to `to_addr` (an address of
    /// container `to`) with the forged source address `forged`, each one
    /// followed by a control datagram from its own address (`own`) along
    /// the same path. Every control must arrive (so the listener, the path
    /// and the policy let such a packet through, and a forged datagram sent
    /// before it had every chance to arrive first). Returns the forged
    /// datagrams that arrived.
    pub fn forged_datagrams_received(
        &self,
        from: &str,
        own: &str,
        forged: &str,
        to: &str,
        to_addr: &str,
    ) -> Vec<(String, String)> {
        let from_pid = self.container(from).pid;
        let mut sink = UdpSink::start(self.container(to).pid, to_addr);
        for round in 0..3 {
            send_udp(from_pid, forged, to_addr, &format!("forged-{round}"));
            let control = format!("control-{round}");
            let start = Instant::now();
            loop {
                send_udp(from_pid, own, to_addr, &control);
                if sink.wait_for(&control, Duration::from_millis(200)) {
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "control datagram {from} ({own}) -> {to} ({to_addr}) never arrived, \
                     so this check could not see a forged one either; received: {:?}",
                    sink.seen
                );
            }
        }
        for (src, payload) in &sink.seen {
            if payload.starts_with("control") {
                assert_eq!(src, own, "a control arrived with another source");
            }
        }
        sink.seen
            .iter()
            .filter(|(_, p)| p.starts_with("forged"))
            .cloned()
            .collect()
    }
}

/// A child process that is killed when this is dropped, so that a failing
/// assertion does not leave it running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// A TCP echo server on `addr`:`port` in a host's namespace (by `ip netns`
/// name), killed when dropped.
pub fn serve_in_netns(ns: &str, addr: &str, port: u16) -> KillOnDrop {
    let mut server = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", SERVER, addr])
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "server on {addr}:{port} in {ns}");
    KillOnDrop(server)
}

/// Can a process run by `prefix` (`nsenter --net=…` or `ip netns exec …`)
/// open a TCP connection to `addr`:`port` and get its byte echoed?
pub fn connects_with(prefix: &str, addr: &str, port: u16, timeout: f64) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{prefix} python3 -c \"$P\" {addr} {port} \"\" {timeout}"
        ))
        .env("P", CONNECT)
        .status()
        .unwrap()
        .success()
}

impl Container {
    /// The container's addresses: IPv4 (if any), then IPv6 (if any).
    pub fn addrs(&self) -> Vec<String> {
        let v4 = Some(self.addr.clone()).filter(|a| !a.is_empty());
        v4.into_iter().chain(self.addr6.clone()).collect()
    }
}

/// The sets `expected_set_elements` describes.
pub fn is_membership_set(name: &str) -> bool {
    ["grouped_", "public_", "g_"]
        .iter()
        .any(|p| name.starts_with(p))
}

impl Fabric {
    /// The elements of a host's membership sets (`is_membership_set`), as
    /// `expected_set_elements` says them.
    pub fn membership_elements(&self, host: &str) -> Vec<(String, String)> {
        let mut all = self.set_elements(host);
        all.retain(|(set, _)| is_membership_set(set));
        all
    }
}

/// The set elements a host's netmod table must hold for the fabric's
/// running containers, from the policy's semantics: its own containers
/// that have a netgroup (`grouped_*`), its own `public` ones (`public_*`),
/// and every member, on any host, of each netgroup (other than `public`)
/// that one of its own containers is in (`g_<netgroup>_*`). Sorted as
/// `Fabric::set_elements` returns them.
pub fn expected_set_elements(f: &Fabric, host: &str) -> Vec<(String, String)> {
    use netmod_model::nft::Family;
    use netmod_policy::{group_set_name, BaseSets};
    let family = |a: &str| {
        if a.contains(':') {
            Family::V6
        } else {
            Family::V4
        }
    };
    let local: Vec<&Container> = f.containers.iter().filter(|c| c.host == host).collect();
    let mut want = std::collections::BTreeSet::new();
    for c in &local {
        for a in c.addrs() {
            if !c.groups.is_empty() {
                want.insert((BaseSets::grouped(family(&a)), a.clone()));
            }
            if c.groups.iter().any(|g| g == "public") {
                want.insert((BaseSets::public(family(&a)), a.clone()));
            }
        }
    }
    let groups: std::collections::BTreeSet<&str> = local
        .iter()
        .flat_map(|c| c.groups.iter().map(String::as_str))
        .filter(|g| *g != "public")
        .collect();
    for c in &f.containers {
        for g in c.groups.iter().filter(|g| groups.contains(g.as_str())) {
            for a in c.addrs() {
                want.insert((group_set_name(g, family(&a)), a));
            }
        }
    }
    want.into_iter().collect()
}

/// Polls `ok` until it holds (Some(how long it took)) or `limit` has
/// passed (None).
pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if ok() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// An IPv6 address as `ip -j` and netmod print it (RFC 5952).
pub fn canonical_ipv6(addr: &str) -> String {
    addr.parse::<std::net::Ipv6Addr>()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .to_string()
}
