//! DNS for tasks, as Mesos-DNS served it: every agent answers A queries for
//! `<task>.marathon.mesos` on its fabric address (UDP 53), from records it
//! derives from the master's state. Names outside `.mesos` are refused at
//! once: nothing is forwarded anywhere.
//!
//! A task named `probe-b.star` is published as `probe-b-star.marathon.mesos`
//! and, when it has discovery info, also as `probe-b.star.marathon.mesos`.
//! Its address: the task's own (`network_infos[].ip_addresses[]`) if it has
//! one, else its agent's.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Name (lowercase, no trailing dot) → addresses.
pub type Records = BTreeMap<String, Vec<Ipv4Addr>>;

/// The zone the agents are authoritative for.
pub const ZONE: &str = "mesos";
pub const TTL: u32 = 5;
/// Answers kept within a plain 512-byte UDP reply.
const MAX_ANSWERS: usize = 25;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;

/// One DNS label made RFC 1123-safe, as Mesos-DNS does: lowercase; dots,
/// underscores and other characters become hyphens; no hyphen at the ends.
pub fn label(s: &str) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '-'
            }
        })
        .collect();
    mapped.trim_matches('-').chars().take(63).collect()
}

/// The records for a master state (`/master/state.json`), running tasks only.
pub fn records_from_state(state: &Value) -> Records {
    let mut agent_ip: BTreeMap<&str, Ipv4Addr> = BTreeMap::new();
    for s in state["slaves"].as_array().into_iter().flatten() {
        let ip = s["pid"]
            .as_str()
            .and_then(|p| p.split_once('@'))
            .and_then(|(_, hp)| hp.split(':').next())
            .and_then(|h| h.parse().ok());
        if let (Some(id), Some(ip)) = (s["id"].as_str(), ip) {
            agent_ip.insert(id, ip);
        }
    }
    let mut out = Records::new();
    for fw in state["frameworks"].as_array().into_iter().flatten() {
        let fw_name = label(fw["name"].as_str().unwrap_or(""));
        if fw_name.is_empty() {
            continue;
        }
        for t in fw["tasks"].as_array().into_iter().flatten() {
            if t["state"].as_str() != Some("TASK_RUNNING") {
                continue;
            }
            let Some(addr) = netinfo_address(t).or_else(|| {
                t["slave_id"]
                    .as_str()
                    .and_then(|id| agent_ip.get(id).copied())
            }) else {
                continue;
            };
            let name = t["name"].as_str().unwrap_or("");
            let mut names = vec![label(name)];
            if let Some(d) = t["discovery"]["name"].as_str() {
                let raw: Vec<String> = d.split('.').map(label).filter(|l| !l.is_empty()).collect();
                names.push(raw.join("."));
            }
            for n in names.into_iter().filter(|n| !n.is_empty()) {
                let e = out.entry(format!("{n}.{fw_name}.{ZONE}")).or_default();
                if !e.contains(&addr) {
                    e.push(addr);
                }
            }
        }
    }
    out
}

/// The first IPv4 address in the latest status that has network infos.
fn netinfo_address(task: &Value) -> Option<Ipv4Addr> {
    let statuses = task["statuses"].as_array()?;
    statuses.iter().rev().find_map(|st| {
        st["container_status"]["network_infos"]
            .as_array()?
            .iter()
            .flat_map(|ni| ni["ip_addresses"].as_array().cloned().unwrap_or_default())
            .find_map(|a| a["ip_address"].as_str()?.parse::<Ipv4Addr>().ok())
    })
}

// ---------------------------------------------------------------- codec

/// A parsed query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub id: u16,
    pub flags: u16,
    /// The name as asked, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// The question section's bytes, echoed in the reply.
    question: Vec<u8>,
}

/// Parses a query; `Err(Some(id))` for one too broken to answer beyond FORMERR.
pub fn parse_query(buf: &[u8]) -> Result<Query, Option<u16>> {
    if buf.len() < 12 {
        return Err(None);
    }
    let id = u16::from_be_bytes([buf[0], buf[1]]);
    let flags = u16::from_be_bytes([buf[2], buf[3]]);
    let qdcount = u16::from_be_bytes([buf[4], buf[5]]);
    if flags & 0x8000 != 0 {
        return Err(None); // a response: ignore
    }
    if qdcount != 1 {
        return Err(Some(id));
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *buf.get(i).ok_or(Some(id))? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            return Err(Some(id)); // compression has no place in a question
        }
        let l = buf.get(i + 1..i + 1 + len).ok_or(Some(id))?;
        labels.push(String::from_utf8_lossy(l).into_owned());
        i += 1 + len;
        if i > 12 + 255 {
            return Err(Some(id));
        }
    }
    let tail = buf.get(i..i + 4).ok_or(Some(id))?;
    let qtype = u16::from_be_bytes([tail[0], tail[1]]);
    let qclass = u16::from_be_bytes([tail[2], tail[3]]);
    Ok(Query {
        id,
        flags,
        name: labels.join("."),
        qtype,
        qclass,
        question: buf[12..i + 4].to_vec(),
    })
}

fn header(id: u16, query_flags: u16, aa: bool, rcode: u8, qd: u16, an: u16) -> Vec<u8> {
    let opcode = query_flags & 0x7800;
    let rd = query_flags & 0x0100;
    let flags = 0x8000 | opcode | if aa { 0x0400 } else { 0 } | rd | rcode as u16;
    let mut out = Vec::with_capacity(512);
    for v in [id, flags, qd, an, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// A reply echoing the question, with A answers.
pub fn reply(q: &Query, aa: bool, rcode: u8, answers: &[Ipv4Addr]) -> Vec<u8> {
    let answers = &answers[..answers.len().min(MAX_ANSWERS)];
    let mut out = header(q.id, q.flags, aa, rcode, 1, answers.len() as u16);
    out.extend_from_slice(&q.question);
    for a in answers {
        out.extend_from_slice(&[0xC0, 0x0C]); // the name: pointer to the question
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&a.octets());
    }
    out
}

/// The answer to one datagram (None: ignore it).
pub fn answer(buf: &[u8], records: &Records) -> Option<Vec<u8>> {
    let q = match parse_query(buf) {
        Ok(q) => q,
        Err(Some(id)) => return Some(header(id, 0, false, FORMERR, 0, 0)),
        Err(None) => return None,
    };
    if q.flags & 0x7800 != 0 {
        return Some(reply(&q, false, NOTIMP, &[]));
    }
    let name = q.name.trim_end_matches('.').to_ascii_lowercase();
    let in_zone = name == ZONE || name.ends_with(&format!(".{ZONE}"));
    if !in_zone || q.qclass != 1 {
        return Some(reply(&q, false, REFUSED, &[]));
    }
    match records.get(&name) {
        None => Some(reply(&q, true, NXDOMAIN, &[])),
        Some(addrs) if q.qtype == TYPE_A || q.qtype == TYPE_ANY => {
            Some(reply(&q, true, NOERROR, addrs))
        }
        // The name exists, but has no records of that type.
        Some(_) => Some(reply(&q, true, NOERROR, &[])),
    }
}

/// Builds a query (for tests and the demo's checks).
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [id, 0x0100, 1, 0, 0, 0] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    for l in name.trim_end_matches('.').split('.') {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out
}

/// Reads a reply: (rcode, A addresses).
pub fn parse_reply(buf: &[u8]) -> Option<(u8, Vec<Ipv4Addr>)> {
    if buf.len() < 12 {
        return None;
    }
    let rcode = buf[3] & 0x0f;
    let an = u16::from_be_bytes([buf[6], buf[7]]) as usize;
    let mut i = 12;
    while *buf.get(i)? != 0 {
        i += 1 + buf[i] as usize;
    }
    i += 5;
    let mut out = Vec::new();
    for _ in 0..an {
        i += 2; // name pointer
        let t = u16::from_be_bytes([*buf.get(i)?, *buf.get(i + 1)?]);
        let len = u16::from_be_bytes([*buf.get(i + 8)?, *buf.get(i + 9)?]) as usize;
        let data = buf.get(i + 10..i + 10 + len)?;
        if t == TYPE_A && len == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    Some((rcode, out))
}

// ---------------------------------------------------------------- server

/// Serves `records` on UDP `addr` on its own thread.
pub fn serve(addr: SocketAddr, records: Arc<RwLock<Records>>) -> Result<(), String> {
    let sock =
        UdpSocket::bind(addr).map_err(|e| format!("cannot listen for DNS on {addr}: {e}"))?;
    thread::Builder::new()
        .name("dns".into())
        .spawn(move || {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let out = {
                    let r = records.read().unwrap_or_else(|e| e.into_inner());
                    answer(&buf[..n], &r)
                };
                if let Some(out) = out {
                    let _ = sock.send_to(&out, from);
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Keeps `records` current from the master's state, long-polling
/// `/master/state.json?wait_version=N` so changes arrive at once.
pub fn follow(master_url: String, records: Arc<RwLock<Records>>) {
    let _ = thread::Builder::new()
        .name("dns-follow".into())
        .spawn(move || {
            let mut version = 0u64;
            loop {
                let url =
                    format!("{master_url}/master/state.json?wait_version={version}&timeout=25");
                match crate::http::get_json(&url, Duration::from_secs(35)) {
                    Ok(state) => {
                        version = state["lab_version"].as_u64().unwrap_or(0);
                        let fresh = records_from_state(&state);
                        *records.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    }
                    Err(_) => thread::sleep(Duration::from_secs(1)),
                }
            }
        });
}

/// Asks `server` for `name` (A), within `timeout`.
pub fn resolve(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<(u8, Vec<Ipv4Addr>), String> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let id = (std::process::id() & 0xffff) as u16;
    sock.send_to(&query(id, name, TYPE_A), server)
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock
        .recv_from(&mut buf)
        .map_err(|e| format!("no DNS answer from {server}: {e}"))?;
    parse_reply(&buf[..n]).ok_or_else(|| "unreadable DNS answer".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> Value {
        json!({
            "slaves": [{"id": "S1", "pid": "slave(1)@10.234.0.11:5051"}],
            "frameworks": [{"name": "marathon", "tasks": [
                {"name": "probe-b.star", "state": "TASK_RUNNING", "slave_id": "S1",
                 "discovery": {"name": "probe-b.star"},
                 "statuses": [{"state": "TASK_STAGING"}, {"state": "TASK_RUNNING", "container_status":
                    {"network_infos": [{"ip_addresses": [{"ip_address": "192.168.0.5", "protocol": "IPv4"}]}]}}]},
                {"name": "probe-a.star_before", "state": "TASK_RUNNING", "slave_id": "S1", "statuses": []},
                {"name": "probe-c.star", "state": "TASK_STAGING", "slave_id": "S1", "statuses": []}
            ]}]
        })
    }

    #[test]
    fn records_follow_mesos_dns() {
        let r = records_from_state(&state());
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(r["probe-b-star.marathon.mesos"], vec![ip("192.168.0.5")]);
        assert_eq!(r["probe-b.star.marathon.mesos"], vec![ip("192.168.0.5")]);
        assert_eq!(
            r["probe-a-star-before.marathon.mesos"],
            vec![ip("10.234.0.11")]
        );
        assert!(
            !r.contains_key("probe-c-star.marathon.mesos"),
            "not running"
        );
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn answers() {
        let r = records_from_state(&state());
        let ask =
            |name: &str, t: u16| parse_reply(&answer(&query(7, name, t), &r).unwrap()).unwrap();
        assert_eq!(
            ask("probe-b.star.marathon.mesos", TYPE_A),
            (NOERROR, vec!["192.168.0.5".parse().unwrap()])
        );
        assert_eq!(ask("PROBE-B-STAR.marathon.mesos.", TYPE_A).1.len(), 1);
        assert_eq!(
            ask("probe-b.star.marathon.mesos", TYPE_AAAA),
            (NOERROR, vec![])
        );
        assert_eq!(ask("nope.marathon.mesos", TYPE_A).0, NXDOMAIN);
        assert_eq!(ask("example.com", TYPE_A).0, REFUSED);
        assert_eq!(ask("mesos.example.com", TYPE_A).0, REFUSED);
        // Echoes the id and the question; AA set for the zone.
        let raw = answer(&query(0xBEEF, "nope.marathon.mesos", TYPE_A), &r).unwrap();
        assert_eq!(&raw[0..2], &[0xBE, 0xEF]);
        assert_eq!(raw[2] & 0x84, 0x84);
        // Broken input.
        assert!(answer(&[1, 2, 3], &r).is_none());
        let mut two = query(1, "a.mesos", TYPE_A);
        two[5] = 2;
        assert_eq!(answer(&two, &r).unwrap()[3] & 0x0f, FORMERR);
        let truncated = &query(1, "a.mesos", TYPE_A)[..14];
        assert_eq!(answer(truncated, &r).unwrap()[3] & 0x0f, FORMERR);
        let mut iquery = query(1, "a.mesos", TYPE_A);
        iquery[2] |= 0x08;
        assert_eq!(answer(&iquery, &r).unwrap()[3] & 0x0f, NOTIMP);
    }

    #[test]
    fn many_answers_fit_a_datagram() {
        let mut r = Records::new();
        r.insert(
            "x.marathon.mesos".into(),
            (0..60).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect(),
        );
        let out = answer(&query(1, "x.marathon.mesos", TYPE_A), &r).unwrap();
        assert!(out.len() <= 512, "{}", out.len());
        assert_eq!(parse_reply(&out).unwrap().1.len(), MAX_ANSWERS);
    }

    #[test]
    fn labels() {
        assert_eq!(label("probe-b.star"), "probe-b-star");
        assert_eq!(label("A_b"), "a-b");
        assert_eq!(label("-x-"), "x");
    }
}
