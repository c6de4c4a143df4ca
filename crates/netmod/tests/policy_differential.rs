//! Differential test: random Calico policies and random connection
//! attempts; what the kernel does must equal what `netmod explain` says,
//! every time.
//!
//! Seeded (`NETMOD_POLICY_SEED`, else a fixed seed; printed), with
//! `NETMOD_POLICY_CASES` attempts (default 300) in rounds of
//! `ATTEMPTS_PER_ROUND`: each round draws new labels for every container and
//! 1-4 new policies over a small universe (labels role and tier, TCP and UDP
//! ports 7001-7002, ICMP echo, nets covering endpoints, hosts and the pool,
//! every action, orders with ties, types, selectors with has(), in {},
//! notSelector), waits until every node applied them, measures all the
//! round's attempts at once and asks explain about each. With
//! `NETMOD_POLICY_REPORT=FILE` it writes the outcome there (markdown):
//! `scripts/policy-differential.sh` is the bench command.

mod common;
use common::calico_examples::*;
use common::lab::*;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

const ATTEMPTS_PER_ROUND: usize = 30;
const POOL: &str = "10.156.0.0/16";

/// splitmix64: small, deterministic, good enough to draw cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `p` percent.
    fn chance(&mut self, p: u64) -> bool {
        self.next() % 100 < p
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// (host, name, netgroups) of the universe's containers.
const CONTAINERS: [(&str, &str, &[&str]); 5] = [
    ("h1", "c1", &["red"]),
    ("h1", "c2", &["blue"]),
    ("h1", "c5", &[]),
    ("h2", "c3", &["red"]),
    ("h2", "c4", &["public"]),
];
const HOSTS: [&str; 2] = ["h1", "h2"];

fn selector_atom(r: &mut Rng) -> String {
    let role = *r.pick(&["web", "db", "cache"]);
    let tier = *r.pick(&["front", "back"]);
    match r.below(11) {
        0 => format!("role == '{role}'"),
        1 => format!("role != '{role}'"),
        2 => "has(role)".into(),
        3 => "!has(tier)".into(),
        4 => format!("role in {{'{role}', 'db'}}"),
        5 => format!("tier not in {{'{tier}'}}"),
        6 => "all()".into(),
        7 => format!(
            "has(netgroup.netmod.io/{})",
            r.pick(&["red", "blue", "public"])
        ),
        8 => format!("task == '{}'", r.pick(&CONTAINERS).1),
        9 => format!("tier == '{tier}'"),
        _ => format!("has(tier) && role == '{role}'"),
    }
}

fn selector(r: &mut Rng) -> String {
    let a = selector_atom(r);
    match r.below(10) {
        0 | 1 => format!("{a} && {}", selector_atom(r)),
        2 => format!("{a} || {}", selector_atom(r)),
        3 => format!("!({a})"),
        _ => a,
    }
}

/// Networks worth matching: endpoints, hosts, a host's block, the pool,
/// the hosts' subnet, everything.
fn net(r: &mut Rng, f: &Fabric) -> String {
    match r.below(6) {
        0 | 1 => format!("{}/32", f.container(r.pick(&CONTAINERS).1).addr),
        2 => {
            let h: &str = HOSTS[r.below(HOSTS.len())];
            format!("{}/32", f.host(h).ip)
        }
        3 => {
            let a: std::net::Ipv4Addr = f.container(r.pick(&CONTAINERS).1).addr.parse().unwrap();
            let block = u32::from(a) & !0x3f;
            format!("{}/26", std::net::Ipv4Addr::from(block))
        }
        4 => POOL.into(),
        _ => {
            if r.chance(50) {
                format!("{}.0/24", f.subnet)
            } else {
                "0.0.0.0/0".into()
            }
        }
    }
}

fn entity(r: &mut Rng, f: &Fabric, ports_ok: bool) -> String {
    let mut e = String::new();
    if r.chance(25) {
        let _ = writeln!(e, "      selector: \"{}\"", selector(r));
    }
    if r.chance(10) {
        let _ = writeln!(e, "      notSelector: \"{}\"", selector(r));
    }
    if r.chance(15) {
        let n: Vec<String> = (0..1 + r.below(2)).map(|_| net(r, f)).collect();
        let _ = writeln!(e, "      nets: [{}]", n.join(", "));
    }
    if r.chance(10) {
        // notNets of the whole space is refused at parse (it never matches).
        let n = net(r, f);
        if n != "0.0.0.0/0" {
            let _ = writeln!(e, "      notNets: [{n}]");
        }
    }
    if ports_ok {
        let port = |r: &mut Rng| {
            r.pick(&["7001", "7002", "'7001:7002'", "'7002:7003'", "9001"])
                .to_string()
        };
        if r.chance(40) {
            let p: Vec<String> = (0..1 + r.below(2)).map(|_| port(r)).collect();
            let _ = writeln!(e, "      ports: [{}]", p.join(", "));
        }
        if r.chance(15) {
            let _ = writeln!(e, "      notPorts: [{}]", port(r));
        }
    }
    e
}

fn rule(r: &mut Rng, f: &Fabric) -> String {
    let action = match r.below(20) {
        0..=6 => "Allow",
        7..=12 => "Deny",
        13..=15 => "Pass",
        _ => "Log",
    };
    let mut s = format!("  - action: {action}\n");
    let proto = match r.below(10) {
        0..=3 => None,
        4 | 5 => Some("TCP"),
        6 | 7 => Some("UDP"),
        8 => Some("ICMP"),
        _ => Some(*r.pick(&["6", "17", "1"])),
    };
    if let Some(p) = proto {
        let _ = writeln!(s, "    protocol: {p}");
    }
    if r.chance(10) {
        let _ = writeln!(s, "    notProtocol: {}", r.pick(&["TCP", "UDP", "ICMP"]));
    }
    if r.chance(5) {
        s.push_str("    ipVersion: 4\n");
    }
    if proto == Some("ICMP") {
        if r.chance(40) {
            let _ = writeln!(s, "    icmp:\n      type: {}", r.pick(&[8, 0, 3]));
        } else if r.chance(20) {
            let _ = writeln!(s, "    notICMP:\n      type: {}", r.pick(&[8, 0]));
        }
    }
    let ports_ok = matches!(proto, Some("TCP") | Some("UDP"));
    for side in ["source", "destination"] {
        // Ports on the source would be the random ephemeral port: only on
        // the destination.
        let e = entity(r, f, ports_ok && side == "destination");
        if !e.is_empty() {
            let _ = write!(s, "    {side}:\n{e}");
        }
    }
    s
}

fn policies(r: &mut Rng, f: &Fabric) -> String {
    let n = 1 + r.below(4);
    let mut docs = Vec::new();
    for i in 0..n {
        let mut s = format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p{i}\nspec:\n"
        );
        if !r.chance(25) {
            let _ = writeln!(s, "  order: {}", r.pick(&["10", "20", "20", "30", "5.5"]));
        }
        if r.chance(85) {
            let _ = writeln!(s, "  selector: \"{}\"", selector(r));
        }
        // Rules only for the directions `types` names (netmod refuses
        // rules that would never apply).
        let dirs: &[&str] = match r.below(4) {
            0 => &["ingress", "egress"],
            1 => {
                s.push_str("  types: [Ingress]\n");
                &["ingress"]
            }
            2 => {
                s.push_str("  types: [Egress]\n");
                &["egress"]
            }
            _ => {
                s.push_str("  types: [Ingress, Egress]\n");
                &["ingress", "egress"]
            }
        };
        for dir in dirs {
            let k = r.below(4);
            if k > 0 {
                let _ = writeln!(s, "  {dir}:");
                for _ in 0..k {
                    s.push_str(&rule(r, f));
                }
            }
        }
        docs.push(s);
    }
    docs.join("---\n")
}

fn labels(r: &mut Rng) -> Vec<(&'static str, Vec<(String, String)>)> {
    CONTAINERS
        .iter()
        .map(|(_, name, _)| {
            let mut l = Vec::new();
            if let Some(role) = r.pick(&[Some("web"), Some("db"), Some("cache"), None]) {
                l.push(("role".to_string(), role.to_string()));
            }
            if let Some(tier) = r.pick(&[Some("front"), Some("back"), None]) {
                l.push(("tier".to_string(), tier.to_string()));
            }
            (*name, l)
        })
        .collect()
}

fn attempts(r: &mut Rng, f: &Fabric, n: usize, sport: &mut u16) -> Vec<Attempt> {
    let mut out = Vec::new();
    while out.len() < n {
        let from_host = r.chance(12);
        let to_host = r.chance(12);
        if from_host && to_host {
            continue;
        }
        let from = if from_host {
            r.pick(&HOSTS).to_string()
        } else {
            r.pick(&CONTAINERS).1.to_string()
        };
        let (to, addr) = if to_host {
            let h = *r.pick(&HOSTS);
            (h.to_string(), f.host(h).ip.clone())
        } else {
            let c = r.pick(&CONTAINERS).1;
            (c.to_string(), f.container(c).addr.clone())
        };
        if from == to {
            continue;
        }
        let l4 = *r.pick(&[
            L4::Tcp(7001),
            L4::Tcp(7002),
            L4::Udp(7001),
            L4::Udp(7002),
            L4::Icmp(8),
        ]);
        // Fresh UDP source ports: no attempt rides on an earlier flow.
        *sport = if *sport >= 29999 { 20000 } else { *sport + 1 };
        out.push(Attempt {
            from,
            to,
            addr,
            l4,
            sport: if matches!(l4, L4::Udp(_)) { *sport } else { 0 },
        });
    }
    out
}

#[test]
fn kernel_equals_explain_on_random_policies() {
    require_lab();
    let seed: u64 = std::env::var("NETMOD_POLICY_SEED")
        .ok()
        .map(|s| s.parse().expect("NETMOD_POLICY_SEED: a number"))
        // A fixed seed in the test run (the same cases every time);
        // `scripts/policy-differential.sh` draws new ones.
        .unwrap_or(20_261_130);
    let cases: usize = std::env::var("NETMOD_POLICY_CASES")
        .ok()
        .map(|s| s.parse().expect("NETMOD_POLICY_CASES: a number"))
        .unwrap_or(300);
    eprintln!("policy differential: NETMOD_POLICY_SEED={seed} NETMOD_POLICY_CASES={cases}");
    let started = Instant::now();
    let mut f = Fabric::new(2, POOL);
    for (h, n, g) in CONTAINERS {
        f.launch(h, n, g);
    }
    let names: Vec<&str> = CONTAINERS
        .iter()
        .map(|c| c.1)
        .chain(HOSTS.iter().copied())
        .collect();
    let _listeners = start_listeners(&f, &names);
    wait_applied(&f);
    wait_for(
        Duration::from_secs(15),
        "red members reach each other",
        || {
            let a = Attempt {
                from: "c1".into(),
                to: "c3".into(),
                addr: f.container("c3").addr.clone(),
                l4: L4::Tcp(7001),
                sport: 0,
            };
            measure(&f, &[a], 1.0)[0]
        },
    );

    let mut rng = Rng(seed);
    let mut sport = 20000u16;
    let (mut done, mut allowed, mut round) = (0usize, 0usize, 0usize);
    let mut mismatches: Vec<String> = Vec::new();
    while done < cases {
        round += 1;
        let n = ATTEMPTS_PER_ROUND.min(cases - done);
        let labels = labels(&mut rng);
        let yaml = policies(&mut rng, &f);
        let attempts = attempts(&mut rng, &f, n, &mut sport);
        set_labels(&f, &labels);
        set_policies(&f, &yaml);
        let mut got = measure(&f, &attempts, 0.5);
        let explained = explain_all(&f, &attempts);
        // Slow is not dropped: what explain allows and did not get
        // through is tried again with more time (and a new source port).
        let again: Vec<usize> = (0..n).filter(|&i| !got[i] && explained[i].0).collect();
        if !again.is_empty() {
            let retry: Vec<Attempt> = again
                .iter()
                .map(|&i| Attempt {
                    sport: 0,
                    ..attempts[i].clone()
                })
                .collect();
            for (k, ok) in measure(&f, &retry, 2.0).into_iter().enumerate() {
                got[again[k]] |= ok;
            }
        }
        for i in 0..n {
            allowed += usize::from(got[i]);
            if got[i] != explained[i].0 {
                mismatches.push(format!(
                    "seed {seed}, round {round}: {}: the kernel {}, explain says {}\n\
                     labels: {labels:?}\npolicies:\n{yaml}\nexplain: {}\n",
                    attempts[i],
                    if got[i] {
                        "let it through"
                    } else {
                        "dropped it"
                    },
                    if explained[i].0 { "allowed" } else { "dropped" },
                    explained[i].1
                ));
            }
        }
        done += n;
    }
    let wall = started.elapsed();
    eprintln!(
        "policy differential: {done} cases in {round} rounds, {allowed} allowed, {} dropped, {} mismatches, {:.1} s (NETMOD_POLICY_SEED={seed})",
        done - allowed,
        mismatches.len(),
        wall.as_secs_f64()
    );
    if let Ok(path) = std::env::var("NETMOD_POLICY_REPORT") {
        let mut md = String::new();
        let _ = writeln!(md, "# Policy differential: kernel vs `netmod explain`\n");
        let _ = writeln!(
            md,
            "Random Calico policies and random connection attempts on a 2-host fabric \
             (`crates/netmod/tests/policy_differential.rs`, run by \
             `scripts/policy-differential.sh`).\n"
        );
        let _ = writeln!(
            md,
            "| cases | rounds | seed | allowed | dropped | mismatches | wall time |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        let _ = writeln!(
            md,
            "| {done} | {round} | {seed} | {allowed} | {} | {} | {:.1} s |",
            done - allowed,
            mismatches.len(),
            wall.as_secs_f64()
        );
        for m in &mismatches {
            let _ = writeln!(md, "\n```\n{m}```");
        }
        std::fs::write(&path, md).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    assert!(
        mismatches.is_empty(),
        "{} of {done} attempts: the kernel and explain disagree (NETMOD_POLICY_SEED={seed}):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // A run where everything passes, or nothing does, compares nothing.
    assert!(
        allowed * 10 >= done && (done - allowed) * 10 >= done,
        "the cases are lopsided ({allowed} of {done} allowed): the generator is broken (NETMOD_POLICY_SEED={seed})"
    );
}
