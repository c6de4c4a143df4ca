//! Why a packet from one endpoint (or host) to another is allowed or
//! dropped, computed from the same rulesets the dataplane installs.

use crate::registry::Registry;
use crate::CoreError;
use netmod_model::{Endpoint, Host};
use netmod_policy::{explain, Hop, Packet, L4};
use netmod_store::Store;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// A task name, from the labels a cluster manager attaches.
pub fn name_of(e: &Endpoint) -> Option<&str> {
    ["task", "name", "app"]
        .iter()
        .find_map(|k| e.labels.get(*k).map(String::as_str))
}

/// Give `side` an address of `other`'s family, if it has one and differs.
fn match_family(side: &mut Party, other: &Party, eps: &[Endpoint], hosts: &BTreeMap<String, Host>) {
    let want_v4 = other.addr().is_ipv4();
    if side.addr().is_ipv4() == want_v4 {
        return;
    }
    match side {
        Party::Endpoint {
            host,
            container_id,
            iface,
            addr,
        } => {
            if let Some(a) = eps
                .iter()
                .find(|e| &e.host == host && &e.container_id == container_id && &e.iface == iface)
                .and_then(|e| e.addrs().find(|a| a.is_ipv4() == want_v4))
            {
                *addr = a;
            }
        }
        Party::External { .. } => {}
        Party::Host { host, addr } => {
            if let Some(a) = hosts.get(host.as_str()).and_then(|h| {
                [Some(h.ip), h.ipv6]
                    .into_iter()
                    .flatten()
                    .find(|a| a.is_ipv4() == want_v4)
            }) {
                *addr = a;
            }
        }
    }
}

/// Whether `what` names this endpoint by one of its task labels: the whole
/// value, a task name's first label (`probe-a` of `probe-a.star`, as
/// Mesos-DNS names it) or an app id's last segment (`probe-a` of
/// `/star/probe-a`).
fn answers_to(e: &Endpoint, what: &str) -> bool {
    ["task", "name", "app"]
        .iter()
        .filter_map(|k| e.labels.get(*k))
        .any(|v| {
            v == what || v.split('.').next() == Some(what) || v.rsplit('/').next() == Some(what)
        })
}

/// The source port explained packets come from (an ephemeral port).
pub const EXPLAIN_SOURCE_PORT: u16 = 40000;

/// Reads `--port`: `6379/tcp` (`/udp`, `/sctp`, `/udplite`; a bare number
/// is TCP), `icmp[/TYPE[/CODE]]` or `icmpv6[/TYPE[/CODE]]` (echo request
/// when no type is given).
pub fn parse_port(text: &str) -> Result<L4, CoreError> {
    let bad = |why: &str| {
        CoreError::Other(format!(
            "--port {text:?}: {why} (expected PORT[/tcp|udp|sctp|udplite], icmp[/TYPE[/CODE]] or icmpv6[/TYPE[/CODE]])"
        ))
    };
    let lower = text.trim().to_ascii_lowercase();
    let mut parts = lower.split('/');
    let head = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    let number = |s: &str, what: &str, max: u32| -> Result<u32, CoreError> {
        match s.parse::<u32>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(bad(&format!(
                "{what} {s:?} is not a number from 0 to {max}"
            ))),
        }
    };
    if head == "icmp" || head == "icmpv6" {
        let (proto, echo) = if head == "icmp" { (1, 8) } else { (58, 128) };
        if rest.len() > 2 {
            return Err(bad("too many parts"));
        }
        let icmp_type = match rest.first() {
            Some(t) => number(t, "ICMP type", 255)? as u8,
            None => echo,
        };
        let code = match rest.get(1) {
            Some(c) => number(c, "ICMP code", 255)? as u8,
            None => 0,
        };
        return Ok(L4::Icmp {
            proto,
            icmp_type,
            code,
        });
    }
    let port = number(head, "port", 65535)? as u16;
    if port == 0 {
        return Err(bad("port 0 is not a destination"));
    }
    let proto = match rest.as_slice() {
        [] | ["tcp"] => 6,
        ["udp"] => 17,
        ["sctp"] => 132,
        ["udplite"] => 136,
        [other] => return Err(bad(&format!("unknown protocol {other:?}"))),
        _ => return Err(bad("too many parts")),
    };
    Ok(L4::Ports {
        proto,
        sport: EXPLAIN_SOURCE_PORT,
        dport: port,
    })
}

/// One side of the question: an endpoint, a host's own address, or an
/// address outside the cluster.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Party {
    Endpoint {
        host: String,
        container_id: String,
        addr: IpAddr,
        iface: String,
    },
    Host {
        host: String,
        addr: IpAddr,
    },
    /// Neither an endpoint nor a host: outside the cluster (a CIDR stands
    /// for its first address).
    External {
        addr: IpAddr,
    },
}

impl Party {
    fn host(&self) -> &str {
        match self {
            Party::Endpoint { host, .. } | Party::Host { host, .. } => host,
            Party::External { .. } => "",
        }
    }
    fn addr(&self) -> IpAddr {
        match self {
            Party::Endpoint { addr, .. } | Party::Host { addr, .. } | Party::External { addr } => {
                *addr
            }
        }
    }
}

fn resolve(
    what: &str,
    eps: &[Endpoint],
    hosts: &BTreeMap<String, Host>,
) -> Result<Party, CoreError> {
    let ip: Option<IpAddr> = what.parse().ok();
    let found: Vec<&Endpoint> = eps
        .iter()
        .filter(|e| {
            e.container_id == what
                || answers_to(e, what)
                || ip.is_some_and(|ip| e.addrs().any(|a| a == ip))
        })
        .collect();
    match found.as_slice() {
        [e] => {
            let addr = ip
                .filter(|ip| e.addrs().any(|a| a == *ip))
                .or_else(|| e.addrs().next());
            return Ok(Party::Endpoint {
                host: e.host.clone(),
                container_id: e.container_id.clone(),
                addr: addr
                    .ok_or_else(|| CoreError::Other(format!("endpoint {what} has no address")))?,
                iface: e.iface.clone(),
            });
        }
        [] => {}
        many => {
            return Err(CoreError::Other(format!(
                "{what:?} names {} endpoints ({}); use a container id or an address",
                many.len(),
                many.iter()
                    .map(|e| e.container_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
    if let Some(h) = hosts.values().find(|h| h.name == what || Some(h.ip) == ip) {
        return Ok(Party::Host {
            host: h.name.clone(),
            addr: h.ip,
        });
    }
    // An address or network of no endpoint and no host: outside the cluster.
    if let Some(addr) = ip.or_else(|| what.parse::<ipnet::IpNet>().ok().map(|n| n.network())) {
        return Ok(Party::External { addr });
    }
    Err(CoreError::Other(format!(
        "no endpoint or host {what:?} (try a container id, an address, a CIDR, a task name or a host name; `netmod endpoints` lists them)"
    )))
}

/// The answer: every hop the packet takes through a forward hook, and
/// whether all of them accept it.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub from: Party,
    pub to: Party,
    pub port: Option<String>,
    pub allowed: bool,
    pub hops: Vec<Hop>,
    pub summary: String,
}

/// The interface a packet leaves or enters a host by, toward other hosts.
const UPLINK: &str = "(uplink)";

/// Explain a packet from `from` to `to` (container ids, addresses, task
/// names or host names).
pub fn explain_path(
    store: &dyn Store,
    from: &str,
    to: &str,
    port: Option<String>,
) -> Result<Verdict, CoreError> {
    let l4 = match &port {
        Some(p) => parse_port(p)?,
        None => L4::Unknown,
    };
    let registry = Registry::new(store);
    let hosts = registry.hosts()?;
    let all = registry.endpoints()?;
    let policies = crate::policies::list(store)?;
    let given_as_ip =
        |what: &str| what.parse::<IpAddr>().is_ok() || what.parse::<ipnet::IpNet>().is_ok();
    let (from_ip, to_ip) = (given_as_ip(from), given_as_ip(to));
    let mut from = resolve(from, &all, &hosts)?;
    let mut to = resolve(to, &all, &hosts)?;
    // Both ends speak one family: an end named by id or name takes its
    // address of the other end's family; an end given as an address keeps it.
    if to_ip && !from_ip {
        match_family(&mut from, &to, &all, &hosts);
    } else if !to_ip {
        match_family(&mut to, &from, &all, &hosts);
    }
    // Only endpoints whose host is alive count, as on every node.
    let ruleset_of = |host: &str| {
        let live: Vec<Endpoint> = all
            .iter()
            .filter(|e| e.host == host || hosts.contains_key(&e.host))
            .cloned()
            .collect();
        netmod_policy::ruleset_with_policies(
            host,
            &live,
            &policies,
            &crate::labels::endpoint_labels,
        )
    };
    let (saddr, daddr) = (from.addr(), to.addr());
    // A packet through one host's forward hook, judged by that host's rules.
    let forward = |host: &str, iif: String, oif: String| Hop {
        host: host.to_string(),
        hook: "forward".into(),
        decision: explain(
            &ruleset_of(host),
            &Packet {
                iif,
                oif,
                saddr,
                daddr,
                l4,
            },
        ),
    };
    // Traffic between a host and its own endpoints is never filtered.
    let own_host = |host: &str, hook: &str, reason: &str| Hop {
        host: host.to_string(),
        hook: hook.into(),
        decision: netmod_policy::Decision {
            accepted: true,
            chain: "-".into(),
            rule: None,
            reason: format!("host profile default_{host}: {reason}"),
            trail: Vec::new(),
        },
    };
    let mut hops = Vec::new();
    match (&from, &to) {
        (
            Party::Host { .. } | Party::External { .. },
            Party::Host { .. } | Party::External { .. },
        ) => {
            return Err(CoreError::Other(
                "neither end is an endpoint: netmod filters only traffic to and from endpoints"
                    .into(),
            ))
        }
        (Party::Host { host: fh, .. }, Party::Endpoint { host, .. }) if fh == host => {
            hops.push(own_host(host, "output", "a host reaches its own endpoints"));
        }
        (Party::Endpoint { host, .. }, Party::Host { host: th, .. }) if host == th => {
            hops.push(own_host(host, "input", "an endpoint reaches its own host"));
        }
        _ => {
            let same_host = from.host() == to.host();
            if let Party::Endpoint { host, iface, .. } = &from {
                let oif = match &to {
                    Party::Endpoint { iface: t, .. } if same_host => t.clone(),
                    _ => UPLINK.into(),
                };
                hops.push(forward(host, iface.clone(), oif));
            }
            if let Party::Endpoint { host, iface, .. } = &to {
                if !same_host || !matches!(from, Party::Endpoint { .. }) {
                    hops.push(forward(host, UPLINK.into(), iface.clone()));
                }
            }
        }
    }
    let allowed = hops.iter().all(|h| h.decision.accepted);
    let decisive = hops
        .iter()
        .find(|h| !h.decision.accepted)
        .or(hops.last())
        .expect("at least one hop");
    let summary = format!(
        "{} {saddr} -> {daddr}{}: {} on {} by \"{}\"",
        if allowed { "ALLOWED" } else { "DROPPED" },
        port.as_deref()
            .map(|p| format!(" port {p}"))
            .unwrap_or_default(),
        if allowed { "accepted" } else { "dropped" },
        decisive.host,
        decisive.decision.reason
    );
    let summary = if port.is_none() && !policies.is_empty() {
        format!("{summary} (no --port: policy rules that name a protocol, ports or ICMP types did not match)")
    } else {
        summary
    };
    Ok(Verdict {
        from,
        to,
        port,
        allowed,
        hops,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::{answers_to, parse_port, EXPLAIN_SOURCE_PORT};
    use netmod_policy::L4;

    #[test]
    fn ports_protocols_and_icmp_types_are_read_and_junk_refused() {
        let ports = |proto, dport| L4::Ports {
            proto,
            sport: EXPLAIN_SOURCE_PORT,
            dport,
        };
        assert_eq!(parse_port("6379/tcp").unwrap(), ports(6, 6379));
        assert_eq!(parse_port("6379").unwrap(), ports(6, 6379));
        assert_eq!(parse_port("53/UDP").unwrap(), ports(17, 53));
        assert_eq!(parse_port("9/sctp").unwrap(), ports(132, 9));
        let icmp = |proto, icmp_type, code| L4::Icmp {
            proto,
            icmp_type,
            code,
        };
        assert_eq!(parse_port("icmp").unwrap(), icmp(1, 8, 0));
        assert_eq!(parse_port("icmp/3/1").unwrap(), icmp(1, 3, 1));
        assert_eq!(parse_port("icmpv6").unwrap(), icmp(58, 128, 0));
        for junk in [
            "",
            "tcp",
            "0/tcp",
            "70000/tcp",
            "80/xyz",
            "80/tcp/1",
            "icmp/300",
            "icmp/1/2/3",
            "-1",
        ] {
            let e = parse_port(junk).unwrap_err().to_string();
            assert!(e.contains("--port"), "{junk}: {e}");
        }
    }
    use netmod_model::Endpoint;

    fn labelled(pairs: &[(&str, &str)]) -> Endpoint {
        let mut e: Endpoint = serde_json::from_value(serde_json::json!({
            "host": "h1", "container_id": "c1", "iface": "nmv0", "mac": "00:00:00:00:00:01"
        }))
        .unwrap();
        for (k, v) in pairs {
            e.labels.insert(k.to_string(), v.to_string());
        }
        e
    }

    #[test]
    fn a_task_answers_to_its_name_its_first_label_and_its_app() {
        let e = labelled(&[("task", "probe-a.star"), ("app", "/star/probe-a")]);
        for name in ["probe-a.star", "probe-a", "/star/probe-a"] {
            assert!(answers_to(&e, name), "{name}");
        }
        for name in ["probe-b", "star", "probe", ""] {
            assert!(!answers_to(&e, name), "{name}");
        }
        assert!(!answers_to(&labelled(&[]), "probe-a"));
    }
}
