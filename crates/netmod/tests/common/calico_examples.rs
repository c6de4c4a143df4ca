//! Calico's own documentation examples of GlobalNetworkPolicy (verbatim,
//! from `examples/calico/`),
//! and the harness the policy tests (`policy_features.rs`,
//! `policy_differential.rs`) measure any policy with: listeners in every
//! container, one concurrent prober per source namespace, `netmod explain`
//! for every attempt, and waiting until every node applied a change.
#![allow(dead_code)]

use super::lab::*;
use super::NETMOD;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

// ---------------------------------------------------------------------------
// Calico's documentation examples, unchanged: each one's only copy is
// `examples/calico/<name>.yaml`, a comment header naming its page of
// Calico's docs, then the text of the code block.
// ---------------------------------------------------------------------------

/// `pub const NAME: &str`, the text of `examples/calico/<file>.yaml`.
macro_rules! examples {
    ($($(#[$doc:meta])* $const:ident = $file:literal;)*) => {$(
        $(#[$doc])*
        pub const $const: &str = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"), "/../../examples/calico/", $file, ".yaml"
        ));
    )*};
}

examples! {
    /// The GlobalNetworkPolicy reference's "Sample YAML": TCP from frontends to
    /// port 6379 of databases, with a rule annotation.
    ALLOW_TCP_6379 = "allow-tcp-6379-rule-metadata";

    /// calico-network-policy ("Control traffic to/from endpoints independent of
    /// namespace").
    DENY_BLUE = "deny-blue";

    /// Same page: a rule's namespaceSelector (netmod has no namespaces:
    /// refused at `spec.ingress[0].source.namespaceSelector`).
    DENY_CIRCLE_BLUE = "deny-circle-blue";

    /// kubernetes-default-deny.
    DEFAULT_DENY = "default-deny";

    /// Same page: a policy-level namespaceSelector (refused at
    /// `spec.namespaceSelector`).
    DENY_APP_POLICY = "deny-app-policy";

    /// icmp-ping ("Use ICMP/ping rules in policy"): deny all ICMP.
    BLOCK_ICMP = "block-icmp";

    /// Same page: allow ping (ICMP type 8, ICMPv6 type 128) from every endpoint.
    ALLOW_PING_IN_CLUSTER = "allow-ping-in-cluster";

    /// Same page: only ICMP host unreachable (type 3 code 1) to Kubernetes pods.
    ALLOW_HOST_UNREACHABLE = "allow-host-unreachable";

    /// log-rules ("Logging an unprotected cluster"): log everything (and, as
    /// Calico's page warns, with no Allow after it the end of the policies
    /// denies).
    LOG_EVERYTHING_IN_CLUSTER = "log-everything-in-cluster";

    /// external-ips-policy: host endpoint options netmod does not implement
    /// (refused at `spec.doNotTrack` or `spec.applyOnForward`).
    FORWARD_DEFAULT_ALLOW_AND_IP_PROTECT = "ip-protect";

    /// calico-network-policy: the namespaced kind (refused: netmod takes
    /// GlobalNetworkPolicy only).
    NAMESPACED_ALLOW_TCP_6379 = "namespaced-allow-tcp-6379";
}

// ---------------------------------------------------------------------------
// The harness.
// ---------------------------------------------------------------------------

/// Listens on every given TCP and UDP port (UDP echoes), IPv4 and IPv6
/// wildcard, in the namespace it runs in; prints `ready`.
pub const LISTENERS: &str = r#"
import socket, sys, select
tcp = [int(p) for p in sys.argv[1].split(',') if p]
udp = [int(p) for p in sys.argv[2].split(',') if p]
socks = []
for fam, any_ in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
    for p in tcp:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((any_, p)); s.listen(256); s.setblocking(False)
        socks.append(('tcp', s))
    for p in udp:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((any_, p)); s.setblocking(False)
        socks.append(('udp', s))
print('ready', flush=True)
kind = {s: k for k, s in socks}
while True:
    r, _, _ = select.select(list(kind), [], [])
    for s in r:
        try:
            if kind[s] == 'tcp':
                c, _ = s.accept(); c.close()
            else:
                d, a = s.recvfrom(2048); s.sendto(d, a)
        except OSError:
            pass
"#;

/// Tries every target at once (`PROTO,ADDR,PORT,SPORT`; PROTO tcp, udp or
/// icmp, where PORT is the ICMP type and only echo requests can be
/// answered) with non-blocking sockets, for at most TIMEOUT seconds; prints
/// one line per target, in order: `ok`, `no` or `refused`.
pub const PROBE: &str = r#"
import os, select, socket, struct, sys, time
timeout = float(sys.argv[1])
targets = [t.split(',') for t in sys.argv[2:]]
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
res = ['no'] * len(targets)
pending = {}
base = (os.getpid() * 977) & 0xffff
for i, (proto, addr, port, sport) in enumerate(targets):
    v6 = ':' in addr
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    try:
        if proto == 'tcp':
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setblocking(False)
            if int(sport): s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::' if v6 else '0.0.0.0', int(sport)))
            s.connect_ex((addr, int(port)))
            pending[s] = (i, 'tcp', None)
        elif proto == 'udp':
            s = socket.socket(fam, socket.SOCK_DGRAM)
            s.setblocking(False)
            if int(sport): s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('::' if v6 else '0.0.0.0', int(sport)))
            s.connect((addr, int(port)))
            s.send(b'probe-%d' % i)
            pending[s] = (i, 'udp', None)
        else:
            s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP)
            s.setblocking(False)
            s.connect((addr, 0))
            ident = (base + i) & 0xffff
            body = struct.pack('!HH', ident, 1) + b'netmod-probe'
            t = int(port)
            if v6:
                s.send(struct.pack('!BBH', t, 0, 0) + body)
            else:
                s.send(struct.pack('!BBH', t, 0, csum(struct.pack('!BBH', t, 0, 0) + body)) + body)
            pending[s] = (i, 'icmp', (ident, v6))
    except OSError as e:
        res[i] = 'error:' + str(e)
deadline = time.monotonic() + timeout
while pending:
    left = deadline - time.monotonic()
    if left <= 0: break
    rd = [s for s, (_, k, _) in pending.items() if k != 'tcp']
    wr = [s for s, (_, k, _) in pending.items() if k == 'tcp']
    r, w, _ = select.select(rd, wr, [], left)
    for s in w:
        i, _, _ = pending.pop(s)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        res[i] = 'ok' if err == 0 else ('refused' if err == 111 else 'no')
        s.close()
    for s in r:
        i, k, extra = pending[s]
        try:
            d = s.recv(4096)
        except ConnectionRefusedError:
            res[i] = 'refused'; pending.pop(s); continue
        except OSError:
            continue
        if k == 'udp':
            res[i] = 'ok'; pending.pop(s); continue
        ident, v6 = extra
        if not v6: d = d[(d[0] & 0xf) * 4:]
        if len(d) >= 8 and d[0] == (129 if v6 else 0) and struct.unpack('!H', d[4:6])[0] == ident:
            res[i] = 'ok'; pending.pop(s)
for r in res:
    print(r)
"#;

/// Reads NFLOG group ARGV[1] in the namespace it runs in (NETLINK_NETFILTER,
/// NFULNL); prints `ready` once bound, then per logged packet
/// `PREFIX|SRC|DST|PROTO|DPORT`.
pub const NFLOG_READER: &str = r#"
import socket, struct, sys
group = int(sys.argv[1])
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.bind((0, 0))
def msg(mtype, family, res_id, attrs, seq):
    body = struct.pack('!BBH', family, 0, res_id)
    for t, v in attrs:
        a = struct.pack('=HH', 4 + len(v), t) + v
        body += a + b'\0' * ((4 - len(a) % 4) % 4)
    return struct.pack('=IHHII', 16 + len(body), mtype, 1 | 4, seq, 0) + body
def ack(seq):
    d = s.recv(65536)
    length, mtype, flags, rseq, pid = struct.unpack('=IHHII', d[:16])
    if mtype == 2:
        err = struct.unpack('=i', d[16:20])[0]
        if err != 0:
            sys.exit('nflog config failed: %d' % err)
CONFIG = (4 << 8) | 1
s.send(msg(CONFIG, 0, group, [(1, struct.pack('B', 1))], 1)); ack(1)
s.send(msg(CONFIG, 0, group, [(2, struct.pack('!IBB', 256, 2, 0))], 2)); ack(2)
print('ready', flush=True)
while True:
    d = s.recv(262144)
    off = 0
    while off + 16 <= len(d):
        length, mtype, flags, seq, pid = struct.unpack('=IHHII', d[off:off + 16])
        if length < 16: break
        m = d[off:off + length]
        off += (length + 3) & ~3
        if mtype != (4 << 8):
            continue
        family = m[16]
        p = 20
        prefix, payload = '', b''
        while p + 4 <= len(m):
            alen, atype = struct.unpack('=HH', m[p:p + 4])
            if alen < 4: break
            v = m[p + 4:p + alen]
            atype &= 0x7fff
            if atype == 10: prefix = v.rstrip(b'\0').decode(errors='replace')
            if atype == 9: payload = v
            p += (alen + 3) & ~3
        src = dst = '?'; proto = -1; dport = 0
        if payload and payload[0] >> 4 == 4:
            ihl = (payload[0] & 0xf) * 4
            proto = payload[9]
            src = socket.inet_ntop(socket.AF_INET, payload[12:16]); dst = socket.inet_ntop(socket.AF_INET, payload[16:20])
            l4 = payload[ihl:]
        elif payload and payload[0] >> 4 == 6:
            proto = payload[6]
            src = socket.inet_ntop(socket.AF_INET6, payload[8:24]); dst = socket.inet_ntop(socket.AF_INET6, payload[24:40])
            l4 = payload[40:]
        else:
            l4 = b''
        if proto in (6, 17) and len(l4) >= 4:
            dport = struct.unpack('!H', l4[2:4])[0]
        elif proto in (1, 58) and len(l4) >= 1:
            dport = l4[0]
        print('%s|%s|%s|%d|%d' % (prefix, src, dst, proto, dport), flush=True)
"#;

/// TCP ports every container (and host) listens on.
pub const TCP_PORTS: [u16; 5] = [6379, 7001, 7002, 7003, 9001];
/// UDP ports every container (and host) listens on, echoing.
pub const UDP_PORTS: [u16; 2] = [7001, 7002];

/// What an attempt sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp(u16),
    Udp(u16),
    /// An ICMP (ICMPv6 toward an IPv6 address) message of this type; only
    /// echo requests are measured in the kernel.
    Icmp(u8),
}

impl L4 {
    /// `netmod explain --port`.
    pub fn explain_port(&self, v6: bool) -> String {
        match self {
            L4::Tcp(p) => format!("{p}/tcp"),
            L4::Udp(p) => format!("{p}/udp"),
            L4::Icmp(t) => format!("{}/{t}", if v6 { "icmpv6" } else { "icmp" }),
        }
    }
}

/// One connection attempt: from a container or host (by name) to an address.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub from: String,
    /// The destination's name (for messages): a container, host or address.
    pub to: String,
    pub addr: String,
    pub l4: L4,
    /// Source port to bind (0: an ephemeral one).
    pub sport: u16,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} ({}) {}",
            self.from,
            self.to,
            self.addr,
            self.l4.explain_port(self.addr.contains(':'))
        )
    }
}

/// The echo request type of the attempt's address family.
pub fn ping(addr: &str) -> L4 {
    L4::Icmp(if addr.contains(':') { 128 } else { 8 })
}

/// How a process gets into the namespace of a container or host (by name).
pub fn ns_prefix(f: &Fabric, who: &str) -> Vec<String> {
    match f.containers.iter().find(|c| c.name == who) {
        Some(c) => vec!["nsenter".into(), format!("--net=/proc/{}/ns/net", c.pid)],
        None => vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            f.host(who).ns.clone(),
        ],
    }
}

/// Start `LISTENERS` in the namespace of every container and host named.
pub fn start_listeners(f: &Fabric, who: &[&str]) -> Vec<KillOnDrop> {
    let tcp: Vec<String> = TCP_PORTS.iter().map(u16::to_string).collect();
    let udp: Vec<String> = UDP_PORTS.iter().map(u16::to_string).collect();
    who.iter()
        .map(|w| {
            let p = ns_prefix(f, w);
            let mut child = Command::new(&p[0])
                .args(&p[1..])
                .args(["python3", "-c", LISTENERS, &tcp.join(","), &udp.join(",")])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut line = String::new();
            use std::io::BufRead;
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready", "listeners in {w}");
            KillOnDrop(child)
        })
        .collect()
}

/// Measure every attempt in the kernel, concurrently: one prober per
/// source. True when it got through (and its answer came back).
pub fn measure(f: &Fabric, attempts: &[Attempt], timeout: f64) -> Vec<bool> {
    let mut by_source: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, a) in attempts.iter().enumerate() {
        by_source.entry(a.from.as_str()).or_default().push(i);
    }
    let children: Vec<(Vec<usize>, std::process::Child)> = by_source
        .into_iter()
        .map(|(from, idx)| {
            let p = ns_prefix(f, from);
            let targets: Vec<String> = idx
                .iter()
                .map(|&i| {
                    let a = &attempts[i];
                    let (proto, port) = match a.l4 {
                        L4::Tcp(p) => ("tcp", p as u32),
                        L4::Udp(p) => ("udp", p as u32),
                        L4::Icmp(t) => ("icmp", t as u32),
                    };
                    format!("{proto},{},{port},{}", a.addr, a.sport)
                })
                .collect();
            let child = Command::new(&p[0])
                .args(&p[1..])
                .args(["python3", "-c", PROBE, &timeout.to_string()])
                .args(&targets)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (idx, child)
        })
        .collect();
    let mut out = vec![false; attempts.len()];
    for (idx, child) in children {
        let o = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            o.status.success() && lines.len() == idx.len(),
            "prober failed: {} / {}",
            text,
            String::from_utf8_lossy(&o.stderr)
        );
        for (&i, l) in idx.iter().zip(lines) {
            assert!(
                l == "ok" || l == "no",
                "{}: the prober says {l:?} (a listener is missing: the test is broken)",
                attempts[i]
            );
            out[i] = l == "ok";
        }
    }
    out
}

/// `netmod explain` of one attempt: (allowed, its JSON).
pub fn explain(f: &Fabric, a: &Attempt) -> (bool, serde_json::Value) {
    let from = match f.containers.iter().find(|c| c.name == a.from) {
        Some(_) => f.uid(&a.from),
        None => a.from.clone(),
    };
    let port = a.l4.explain_port(a.addr.contains(':'));
    let out = f.netmod(&["-o", "json", "explain", &from, &a.addr, "--port", &port]);
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "explain {a}: exit {code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "explain {a}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["allowed"].as_bool(), Some(code == 0), "explain {a}: {v}");
    (code == 0, v)
}

/// `explain` of every attempt, a few at a time.
pub fn explain_all(f: &Fabric, attempts: &[Attempt]) -> Vec<(bool, serde_json::Value)> {
    let mut out: Vec<Option<(bool, serde_json::Value)>> = vec![None; attempts.len()];
    let chunk = attempts.len().div_ceil(4).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = attempts
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(|a| explain(f, a)).collect::<Vec<_>>()))
            .collect();
        let mut i = 0;
        for h in handles {
            for r in h.join().unwrap() {
                out[i] = Some(r);
                i += 1;
            }
        }
    });
    out.into_iter().map(Option::unwrap).collect()
}

/// Replace every stored policy by those of `yaml` (empty: none), and wait
/// until every node has applied the change.
pub fn set_policies(f: &Fabric, yaml: &str) {
    let policies = if yaml.trim().is_empty() {
        Vec::new()
    } else {
        netmod_calico::parse_policies(yaml)
            .unwrap_or_else(|e| panic!("policies do not parse: {e}\n{yaml}"))
    };
    f.with_store(move |s| {
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
        let (kvs, _) = s.range(netmod_core::policies::POLICIES).unwrap();
        let stale: Vec<netmod_store::Op> = kvs
            .iter()
            .filter(|kv| {
                !names
                    .iter()
                    .any(|n| kv.key == netmod_core::policies::policy_key(n))
            })
            .map(|kv| netmod_store::Op::delete(&kv.key))
            .collect();
        if !stale.is_empty() {
            s.txn(&[], &stale).unwrap();
        }
        netmod_core::policies::apply(s, &policies).unwrap();
    });
    wait_applied(f);
}

/// Set labels of containers (by name), keeping `task`, in one transaction;
/// wait until every node applied it.
pub fn set_labels(f: &Fabric, labels: &[(&str, Vec<(String, String)>)]) {
    let want: BTreeMap<String, Vec<(String, String)>> =
        labels.iter().map(|(n, l)| (f.uid(n), l.clone())).collect();
    f.with_store(move |s| {
        let (kvs, _) = s.range("endpoints/").unwrap();
        let mut ops = Vec::new();
        for kv in &kvs {
            let mut v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
            let Some(l) = v["container_id"].as_str().and_then(|c| want.get(c)) else {
                continue;
            };
            let task = v["labels"]["task"].clone();
            let mut m = serde_json::Map::new();
            m.insert("task".into(), task);
            for (k, val) in l {
                m.insert(k.clone(), val.clone().into());
            }
            v["labels"] = serde_json::Value::Object(m);
            ops.push(netmod_store::Op::put(
                &kv.key,
                serde_json::to_vec(&v).unwrap(),
            ));
        }
        assert_eq!(ops.len(), want.len(), "an endpoint record is missing");
        s.txn(&[], &ops).unwrap();
    });
    wait_applied(f);
}

/// Wait until every host's node reports (`hosts/<name>`, `applied_revision`)
/// that it applied the store as it is now.
pub fn wait_applied(f: &Fabric) {
    let rev = f.with_store(|s| s.range("").unwrap().1);
    let names: Vec<String> = f.hosts.iter().map(|h| h.name.clone()).collect();
    let applied = || {
        let names = names.clone();
        f.with_store(move |s| {
            names
                .iter()
                .map(|n| {
                    s.get(&format!("hosts/{n}"))
                        .unwrap()
                        .and_then(|kv| serde_json::from_slice::<serde_json::Value>(&kv.value).ok())
                        .and_then(|v| v["applied_revision"].as_i64())
                })
                .collect::<Vec<_>>()
        })
    };
    if wait_until(Duration::from_secs(20), || {
        applied().iter().all(|a| a.is_some_and(|a| a >= rev))
    })
    .is_none()
    {
        let logs: Vec<String> = names
            .iter()
            .map(|n| {
                let log = f.node_log(n);
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- node {n}, last lines:\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect();
        panic!(
            "the nodes did not apply revision {rev} in 20 s (applied: {:?})\n{}",
            applied(),
            logs.join("\n")
        );
    }
}

/// `NFLOG_READER` in a host's namespace, on the policy log group.
pub fn nflog(f: &Fabric, host: &str) -> super::hostile::Lines {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &f.host(host).ns, "python3", "-c"])
        .arg(NFLOG_READER)
        .arg(netmod_policy::POLICY_LOG_GROUP.to_string());
    super::hostile::Lines::start(cmd, Some("ready"))
}

/// The binary, for messages.
pub fn netmod_bin() -> &'static str {
    NETMOD
}
