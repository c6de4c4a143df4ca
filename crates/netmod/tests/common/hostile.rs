//! What the hostile-container and node-fault tests (`attacks.rs`,
//! `node_faults.rs`) need beyond the fabric: processes that keep a flow going
//! or answer it, one-shot senders with a chosen source address and port, raw
//! router advertisements and redirects, and readers of the kernel's state
//! (conntrack entries, the netmod table, sysctls).
#![allow(dead_code)]

use super::lab::*;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A UDP server on `addr` `port`: prints `ready`, then `<source> <source
/// port> <payload>` per datagram; with a third argument `echo` it sends each
/// datagram back to its sender (which makes the sender's flow established).
pub const UDP_SERVER: &str = r#"
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
echo = len(sys.argv) > 3 and sys.argv[3] == 'echo'
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, port))
print('ready', flush=True)
while True:
    d, a = s.recvfrom(2048)
    print(a[0], a[1], d.decode(errors='replace'), flush=True)
    if echo:
        s.sendto(d, a)
"#;

/// One UDP datagram from `src`:`sport` (need not be an address of this
/// namespace: IP_TRANSPARENT / IPV6_TRANSPARENT) to `dst`:`dport`. With a
/// wait > 0 it waits that long for an answer, prints `reply <payload>` and
/// exits 0 when one came, 3 when none did.
pub const UDP_ONE: &str = r#"
import socket, sys
dst, dport, src, sport, payload, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
v6 = ':' in dst
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(41 if v6 else 0, 75 if v6 else 19, 1)
s.bind((src, sport))
s.sendto(payload.encode(), (dst, dport))
if wait > 0:
    s.settimeout(wait)
    try:
        d, a = s.recvfrom(2048)
        print('reply', d.decode(errors='replace'), flush=True)
    except OSError:
        sys.exit(3)
"#;

/// A flow that goes on until killed: every 100 ms one UDP datagram
/// `flow-<n>` from `src`:`sport` to `dst`:`dport` and one ICMP echo request
/// (identifier 0x4e4d, sequence n) to `dst`. Prints `sent <n>`, and
/// `udp-reply <from> <payload>` / `icmp-reply <from> <seq>` for every answer.
pub const FLOW: &str = r#"
import os, select, socket, struct, sys, time
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
v6 = ':' in dst
fam = socket.AF_INET6 if v6 else socket.AF_INET
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
u = socket.socket(fam, socket.SOCK_DGRAM)
u.bind((src, sport))
ic = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
ic.bind((src, 0))
ident, seq, due = 0x4e4d, 0, 0.0
while True:
    now = time.monotonic()
    if now >= due:
        seq += 1
        u.sendto(('flow-%d' % seq).encode(), (dst, dport))
        if v6:
            ic.sendto(struct.pack('!BBHHH', 128, 0, 0, ident, seq & 0xffff) + b'netmod', (dst, 0))
        else:
            body = struct.pack('!HH', ident, seq & 0xffff) + b'netmod'
            ic.sendto(struct.pack('!BBH', 8, 0, csum(struct.pack('!BBH', 8, 0, 0) + body)) + body, (dst, 0))
        print('sent', seq, flush=True)
        due = now + 0.1
    ready, _, _ = select.select([u, ic], [], [], max(0.0, due - time.monotonic()))
    for s in ready:
        d, a = s.recvfrom(4096)
        if s is u:
            print('udp-reply', a[0], d.decode(errors='replace'), flush=True)
            continue
        if not v6:
            d = d[(d[0] & 0xf) * 4:]
        if len(d) >= 8 and d[0] == (129 if v6 else 0) and struct.unpack('!H', d[4:6])[0] == ident:
            print('icmp-reply', a[0], struct.unpack('!H', d[6:8])[0], flush=True)
"#;

/// Hostile packets a container can craft (run inside its namespace):
/// - `ra IFACE SRC_LL MAC PREFIX`: a router advertisement to ff02::1, hop
///   limit 255, router lifetime 1800 s, a prefix information option for
///   PREFIX/64 with the on-link and autonomous flags;
/// - `redirect6 IFACE SRC_LL DST TARGET DEST MAC`: an ICMPv6 redirect
///   ("reach DEST through TARGET"), hop limit 255;
/// - `redirect4 SRC DST NEW_GW DEST`: an ICMP host redirect ("reach DEST
///   through NEW_GW") quoting an echo reply from DST to DEST.
///
/// Sources are bound with IP(V6)_TRANSPARENT so a link-local address still
/// in duplicate address detection can send.
pub const CRAFT: &str = r#"
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def mac(m): return bytes(int(x, 16) for x in m.split(':'))
def v6sock(ifname, src):
    idx = socket.if_nametoindex(ifname)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
    s.setsockopt(socket.IPPROTO_IPV6, 75, 1)
    s.bind((src, 0, 0, idx))
    return s, idx
kind = sys.argv[1]
if kind == 'ra':
    ifname, src, lladdr, prefix = sys.argv[2:6]
    s, idx = v6sock(ifname, src)
    ra = struct.pack('!BBHBBHII', 134, 0, 0, 64, 0, 1800, 0, 0)
    ra += struct.pack('!BB', 1, 1) + mac(lladdr)
    ra += struct.pack('!BBBBIII', 3, 4, 64, 0xc0, 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, prefix)
    s.sendto(ra, ('ff02::1', 0, 0, idx))
elif kind == 'redirect6':
    ifname, src, dst, target, dest, lladdr = sys.argv[2:8]
    s, idx = v6sock(ifname, src)
    rd = struct.pack('!BBHI', 137, 0, 0, 0)
    rd += socket.inet_pton(socket.AF_INET6, target) + socket.inet_pton(socket.AF_INET6, dest)
    rd += struct.pack('!BB', 2, 1) + mac(lladdr)
    s.sendto(rd, (dst, 0, 0, idx))
elif kind == 'redirect4':
    src, dst, gw, dest = sys.argv[2:6]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(0, 19, 1)
    s.bind((src, 0))
    echo = struct.pack('!BBHHH', 0, 0, 0, 0x4e4d, 1)
    echo = struct.pack('!BBHHH', 0, 0, csum(echo), 0x4e4d, 1)
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 28, 1, 0, 64, 1, 0, socket.inet_aton(dst), socket.inet_aton(dest))
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    body = socket.inet_aton(gw) + ip + echo
    s.sendto(struct.pack('!BBH', 5, 1, csum(struct.pack('!BBH', 5, 1, 0) + body)) + body, (dst, 0))
else:
    sys.exit('unknown packet ' + kind)
"#;

/// `nsenter` into the network namespace of `pid`.
pub fn in_pid(pid: u32) -> String {
    format!("nsenter --net=/proc/{pid}/ns/net")
}

/// Run a shell command in a container's namespace; must succeed.
pub fn in_container(f: &Fabric, name: &str, cmd: &str) -> String {
    must(&format!("{} {cmd}", in_pid(f.container(name).pid)))
}

/// Run a shell command in a host's namespace; must succeed.
pub fn in_host(f: &Fabric, host: &str, cmd: &str) -> String {
    must(&format!("ip netns exec {} {cmd}", f.host(host).ns))
}

/// A python script run in the namespace of `pid` with `args`, on CPU 0:
/// packets that the tests send one after another from different processes
/// then queue on one CPU's backlog and are processed in the order sent.
pub fn python_in(pid: u32, script: &str, args: &[&str]) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0", "nsenter"])
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["python3", "-c", script])
        .args(args);
    c
}

/// A long-running child whose stdout lines are collected as they come; it
/// is killed when this is dropped.
pub struct Lines {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    /// Start `cmd`; when `ready` is set, wait for that first line.
    pub fn start(mut cmd: Command, ready: Option<&str>) -> Lines {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let l = Lines { child, lines };
        if let Some(first) = ready {
            let ok = wait_until(Duration::from_secs(10), || {
                l.lines().first().is_some_and(|x| x == first)
            });
            assert!(ok.is_some(), "no {first:?} line: {:?}", l.lines());
        }
        l
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Lines starting with `prefix`.
    pub fn with_prefix(&self, prefix: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    pub fn count(&self, prefix: &str) -> usize {
        self.with_prefix(prefix).len()
    }

    /// Waits up to `limit` for a line that `ok` accepts.
    pub fn wait_line(&self, limit: Duration, ok: impl Fn(&str) -> bool) -> bool {
        wait_until(limit, || self.lines().iter().any(|l| ok(l))).is_some()
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A `UDP_SERVER` on `addr`:`port` in a container's namespace.
pub fn udp_server(f: &Fabric, name: &str, addr: &str, port: u16, echo: bool) -> Lines {
    let port = port.to_string();
    let mut args = vec![addr, port.as_str()];
    if echo {
        args.push("echo");
    }
    Lines::start(
        python_in(f.container(name).pid, UDP_SERVER, &args),
        Some("ready"),
    )
}

/// One datagram with `UDP_ONE` from a container's namespace; with `wait`,
/// the answer's payload if one came within it.
pub fn udp_one(
    f: &Fabric,
    from: &str,
    (src, sport): (&str, u16),
    (dst, dport): (&str, u16),
    payload: &str,
    wait: f64,
) -> Option<String> {
    let out = python_in(
        f.container(from).pid,
        UDP_ONE,
        &[
            dst,
            &dport.to_string(),
            src,
            &sport.to_string(),
            payload,
            &wait.to_string(),
        ],
    )
    .output()
    .unwrap();
    match out.status.code() {
        Some(0) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("reply ").map(str::to_string)),
        Some(3) => None,
        _ => panic!(
            "sending from {from} ({src}:{sport}) to {dst}:{dport}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The host-side interface of a container's eth0.
pub fn host_iface(f: &Fabric, name: &str) -> String {
    netmod_model::host_iface_name(&f.uid(name), "eth0")
}

/// The names of a host's links.
pub fn link_names(f: &Fabric, host: &str) -> Vec<String> {
    f.ns_json(host, "link")
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// The names of the links inside the namespace of `pid`.
pub fn links_in_pid(pid: u32) -> Vec<String> {
    let out = must(&format!("{} ip -j link", in_pid(pid)));
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// `nft list table inet netmod` on a host (None: no such table).
pub fn netmod_table_text(f: &Fabric, host: &str) -> Option<String> {
    let out = sh(&format!(
        "ip netns exec {} nft list table inet netmod",
        f.host(host).ns
    ));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of the sets in a host's netmod table, sorted.
pub fn set_names(f: &Fabric, host: &str) -> Vec<String> {
    let v = f.nft_json(host);
    let mut names: Vec<String> = v["nftables"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.get("set")?["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// The comments of the rules in one chain of a host's netmod table.
pub fn rule_comments(f: &Fabric, host: &str, chain: &str) -> Vec<String> {
    let v = f.nft_json(host);
    v["nftables"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r["chain"] == json!(chain))
        .map(|r| r["comment"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A host's sysctl (`net/ipv6/conf/IFACE/accept_ra`), None if absent.
pub fn sysctl(f: &Fabric, host: &str, key: &str) -> Option<String> {
    let out = sh(&format!(
        "ip netns exec {} cat /proc/sys/{key}",
        f.host(host).ns
    ));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One conntrack entry, as `conntrack -L -o id` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    pub id: String,
    /// The whole line, for messages.
    pub line: String,
    /// The kernel has seen traffic in the reply direction (no `[UNREPLIED]`).
    pub replied: bool,
}

/// Every conntrack entry on a host whose original or reply tuple has
/// `addr` as source or destination.
pub fn conntrack_entries(f: &Fabric, host: &str, addr: &str) -> Vec<CtEntry> {
    let out = sh(&format!(
        "ip netns exec {} conntrack -L -o id",
        f.host(host).ns
    ));
    assert!(
        out.status.success(),
        "conntrack -L on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = [format!("src={addr}"), format!("dst={addr}")];
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().any(|t| want.iter().any(|w| t == w)))
        .map(|l| CtEntry {
            id: l
                .split_whitespace()
                .filter_map(|t| t.strip_prefix("id="))
                .next_back()
                .unwrap_or("")
                .to_string(),
            line: l.to_string(),
            replied: !l.contains("[UNREPLIED]"),
        })
        .collect()
}

/// The prefix a test-made namespace or link name starts with, so the fabric
/// (or the test) removes it.
pub fn scratch_name(f: &Fabric, what: &str) -> String {
    format!("{}-{what}", f.prefix)
}

/// Network namespaces a test made beside the fabric, deleted when dropped.
pub struct ScratchNetns(pub Vec<String>);

impl ScratchNetns {
    pub fn new(names: &[String]) -> ScratchNetns {
        for n in names {
            must(&format!("ip netns add {n}"));
        }
        ScratchNetns(names.to_vec())
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = sh(&format!("ip netns del {n}"));
        }
    }
}

/// The (non-tentative) link-local address of `dev`, seen by a command
/// prefix (`nsenter --net=…`, `ip netns exec …`); waits up to 10 s for
/// duplicate address detection to finish.
pub fn link_local(prefix: &str, dev: &str) -> String {
    let mut ll = None;
    wait_for(
        Duration::from_secs(10),
        &format!("a link-local address on {dev} ({prefix})"),
        || {
            let out = must(&format!("{prefix} ip -j -6 addr show dev {dev} scope link"));
            let v: Value = serde_json::from_str(&out).unwrap();
            ll = v.as_array().and_then(|a| {
                a.iter()
                    .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
                    .filter(|ai| ai["tentative"] != json!(true))
                    .filter_map(|ai| ai["local"].as_str().map(str::to_string))
                    .find(|a| a != netmod_model::GATEWAY_V6)
            });
            ll.is_some()
        },
    );
    ll.unwrap()
}

/// The MAC address of `dev`, seen by a command prefix.
pub fn mac_of(prefix: &str, dev: &str) -> String {
    let out = must(&format!("{prefix} ip -j link show dev {dev}"));
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

/// A host's netmod table with what may differ between two equal installs
/// left out (handles, the order of set elements): its sets with their
/// sorted elements, its chains, and each chain's rules in order.
pub fn table_shape(f: &Fabric, host: &str) -> Vec<String> {
    let v = f.nft_json(host);
    let mut sets = Vec::new();
    let mut rest = Vec::new();
    for item in v["nftables"].as_array().cloned().unwrap_or_default() {
        if let Some(set) = item.get("set") {
            let mut elems: Vec<String> = set["elem"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| e.to_string())
                .collect();
            elems.sort();
            sets.push(format!("set {} {} {:?}", set["name"], set["type"], elems));
        } else if let Some(chain) = item.get("chain") {
            rest.push(format!(
                "chain {} {} {} {} {}",
                chain["name"], chain["type"], chain["hook"], chain["prio"], chain["policy"]
            ));
        } else if let Some(rule) = item.get("rule") {
            rest.push(format!(
                "rule {} {} {}",
                rule["chain"], rule["expr"], rule["comment"]
            ));
        }
    }
    sets.sort();
    sets.into_iter().chain(rest).collect()
}

/// Reserve `addr` (asked for by value) for a new container on `host` and
/// isolate it there, as the Mesos module does for a task with a fixed
/// address; the reserve is retried until the address's quarantine is over
/// (at most `limit`). Starts a TCP echo server on port 9000 like `launch`.
/// `before_isolate` runs on the container's pid once its namespace exists
/// and before it is plugged in.
pub fn launch_reserved(
    f: &mut Fabric,
    host: &str,
    name: &str,
    groups: &[&str],
    addr: &str,
    limit: Duration,
    before_isolate: impl FnOnce(u32),
) {
    // Killed if anything below fails (a live child would keep the test
    // harness's output open).
    let mut process = Unclaimed(Some(f.sandbox(host)));
    let pid = process.0.as_ref().unwrap().id();
    let uid = f.uid(name);
    let start = Instant::now();
    loop {
        let (code, reply) = f.mesos(
            host,
            &json!({"command":"reserve","args":{"hostname":host,"uid":uid,
                "ipv4_addrs":[addr],"netgroups":groups}}),
        );
        if code == 0 {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "reserve {addr} for {name} still refused after {limit:?}: {reply}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    before_isolate(pid);
    let (code, reply) = f.mesos(
        host,
        &json!({"command":"isolate","args":{"hostname":host,"container_id":uid,"pid":pid,
            "ipv4_addrs":[addr],"netgroups":groups,"labels":{"task":name}}}),
    );
    assert_eq!(code, 0, "isolate {name}: {reply}");
    let server = serve_in(pid, addr);
    // The fabric kills it from now on.
    let process = process.0.take().unwrap();
    f.containers.push(Container {
        name: name.into(),
        host: host.into(),
        pid,
        process,
        addr: addr.into(),
        addr6: None,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        server: Some(server),
        server6: None,
    });
}

/// A child not yet handed to the fabric: killed if dropped before.
struct Unclaimed(Option<Child>);

impl Drop for Unclaimed {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            kill_child(c);
        }
    }
}

/// Take a container off the fabric's books without cleaning it up (its
/// processes are killed): for tests that remove its interface by hand.
pub fn forget_container(f: &mut Fabric, name: &str) -> Container {
    let i = f.containers.iter().position(|c| c.name == name).unwrap();
    let mut c = f.containers.remove(i);
    for child in [Some(&mut c.process), c.server.as_mut(), c.server6.as_mut()]
        .into_iter()
        .flatten()
    {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }
    c
}

/// A dual-stack fabric: `Fabric::with_options` with IPv6 on the hosts and
/// an IPv6 pool beside the IPv4 one.
pub fn dual_stack(hosts: usize, pool4: &str, pool6: &str, opts: FabricOptions) -> Fabric {
    let f = Fabric::with_options(hosts, pool4, FabricOptions { ipv6: true, ..opts });
    let out = f.netmod(&["pool", "add", pool6, "--quarantine", "1"]);
    assert!(
        out.status.success(),
        "pool add {pool6}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f
}

/// `ip monitor link` in a host's namespace, with markers that prove which
/// events it has seen: everything that happened between `start` and
/// `finish` is in what `finish` returns.
pub struct LinkMonitor {
    lines: Lines,
    ns: String,
    marker: String,
}

impl LinkMonitor {
    pub fn start(f: &Fabric, host: &str) -> LinkMonitor {
        let ns = f.host(host).ns.clone();
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &ns, "monitor", "link"]);
        let m = LinkMonitor {
            lines: Lines::start(cmd, None),
            ns,
            marker: "nmtmark0".into(),
        };
        m.mark();
        m
    }

    /// Create and delete a marker link and wait until the monitor saw it
    /// go: every link event before it has been read.
    fn mark(&self) {
        let before = self.lines.lines().len();
        must(&format!(
            "ip -n {ns} link add {m} type veth peer name {m}p && ip -n {ns} link del {m}",
            ns = self.ns,
            m = self.marker
        ));
        let seen = wait_until(Duration::from_secs(10), || {
            self.lines.lines()[before..]
                .iter()
                .any(|l| l.starts_with("Deleted") && l.contains(&self.marker))
        });
        assert!(seen.is_some(), "ip monitor never saw the marker link");
    }

    /// Every line the monitor printed since it started.
    pub fn finish(self) -> Vec<String> {
        self.mark();
        self.lines.lines()
    }
}
