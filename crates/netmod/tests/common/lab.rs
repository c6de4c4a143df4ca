//! A tiny test fabric: fake hosts are network namespaces on a bridge that
//! lives in a namespace of its own; containers are namespaces with a process
//! in them. Everything is named `nmtest-<pid>-<n>-*` and removed on drop.
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
    pub node: Option<Child>,
}

pub struct Container {
    pub name: String,
    pub host: String,
    pub pid: u32,
    pub process: Child,
    pub addr: String,
    pub groups: Vec<String>,
    pub server: Option<Child>,
}

pub struct Fabric {
    pub prefix: String,
    pub store: TestStore,
    pub hosts: Vec<FakeHost>,
    pub containers: Vec<Container>,
    pub subnet: String,
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
        let id = NEXT.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("nmtest-{}-{id}", std::process::id());
        let subnet = format!("10.250.{}", 10 + id % 200);
        let store = TestStore::new();
        assert!(store
            .netmod(&["pool", "add", pool, "--quarantine", "1"])
            .status
            .success());
        let fab = format!("{prefix}-fab");
        must(&format!("ip netns add {fab}"));
        must(&format!(
            "ip -n {fab} link add br0 type bridge && ip -n {fab} link set br0 up && ip -n {fab} addr add {subnet}.254/24 dev br0 && ip -n {fab} link set lo up"
        ));
        let mut fabric = Fabric {
            prefix,
            store,
            hosts: Vec::new(),
            containers: Vec::new(),
            subnet: subnet.clone(),
        };
        for i in 1..=n {
            let name = format!("h{i}");
            let ns = format!("{}-{name}", fabric.prefix);
            let ip = format!("{subnet}.{i}");
            must(&format!("ip netns add {ns}"));
            must(&format!(
                "ip -n {fab} link add {name} type veth peer name eth0 netns {ns} && \
                 ip -n {fab} link set {name} master br0 up && \
                 ip -n {ns} addr add {ip}/24 dev eth0 && ip -n {ns} link set eth0 up && ip -n {ns} link set lo up && \
                 ip -n {ns} route add default via {subnet}.254"
            ));
            fabric.hosts.push(FakeHost {
                name,
                ns,
                ip,
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
        let child = Command::new("ip")
            .args(["netns", "exec", &h.ns, NETMOD, "--store"])
            .arg(&self.store.path)
            .args([
                "node",
                "--hostname",
                &h.name,
                "--host-ip",
                &h.ip,
                "--lease-ttl",
                "3",
                "--resync-interval",
                "5",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
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
            .arg(&self.store.path)
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
            &json!({"command":"allocate","args":{"hostname":host,"num_ipv4":1,"num_ipv6":0,"uid":uid,"netgroups":groups}}),
        );
        assert_eq!(code, 0, "allocate: {reply}");
        let addr = reply["ipv4"][0].as_str().unwrap().to_string();
        let (code, reply) = self.mesos(
            host,
            &json!({"command":"isolate","args":{"hostname":host,"container_id":uid,"pid":pid,
                "ipv4_addrs":[addr],"netgroups":groups,"labels":{"task":name}}}),
        );
        assert_eq!(code, 0, "isolate: {reply}");
        let server = Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["python3", "-c", SERVER, &addr, "9000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut server = server;
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        self.containers.push(Container {
            name: name.into(),
            host: host.into(),
            pid,
            process,
            addr,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            server: Some(server),
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
        let dst = &self.container(to).addr;
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
    for child in [Some(&mut c.process), c.server.as_mut()]
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
        for h in &self.hosts {
            let _ = sh(&format!("ip netns del {}", h.ns));
        }
        let _ = sh(&format!("ip netns del {}-fab", self.prefix));
    }
}

pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Root, `ip`, `nft`, python3, nsenter: what these tests need.
pub fn have_requirements() -> bool {
    let tools = ["ip", "nft", "python3", "nsenter", "unshare", "curl"]
        .iter()
        .all(|t| sh(&format!("command -v {t}")).status.success());
    require(is_root(), "root") && require(tools, "ip, nft, python3, nsenter, unshare, curl")
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
            .env("NETMOD_STORE", &self.store.path);
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
