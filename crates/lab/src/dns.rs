//! DNS for tasks, as Mesos-DNS served it: every agent answers A (and AAAA)
//! queries for `<task>.marathon.mesos` on its fabric address (UDP 53), from
//! records it derives from the master's state. Names outside `.mesos` are
//! refused at once: nothing is forwarded anywhere.
//!
//! A task named `probe-b.star` is published as `probe-b-star.marathon.mesos`
//! and, when it has discovery info, also as `probe-b.star.marathon.mesos`.
//! Its addresses: the task's own (`network_infos[].ip_addresses[]`) if it
//! has any, else its agent's.
//!
//! The message codec is `hickory-proto`'s (`op::Message` over
//! `serialize::binary`); this module only decides what to answer.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use serde_json::Value;

/// Name (lowercase, no trailing dot) → addresses.
pub type Records = BTreeMap<String, Vec<IpAddr>>;

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
    let mut agent_ip: BTreeMap<&str, IpAddr> = BTreeMap::new();
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
            // The first source that has addresses: netinfo, then the agent.
            let mut addrs = netinfo_addresses(t);
            if addrs.is_empty() {
                let agent = t["slave_id"].as_str().and_then(|id| agent_ip.get(id));
                addrs.extend(agent.copied());
            }
            if addrs.is_empty() {
                continue;
            }
            let name = t["name"].as_str().unwrap_or("");
            let mut names = vec![label(name)];
            if let Some(d) = t["discovery"]["name"].as_str() {
                let raw: Vec<String> = d.split('.').map(label).filter(|l| !l.is_empty()).collect();
                names.push(raw.join("."));
            }
            for n in names.into_iter().filter(|n| !n.is_empty()) {
                let e = out.entry(format!("{n}.{fw_name}.{ZONE}")).or_default();
                for a in &addrs {
                    if !e.contains(a) {
                        e.push(*a);
                    }
                }
            }
        }
    }
    out
}

/// The addresses in the latest status that has network infos.
fn netinfo_addresses(task: &Value) -> Vec<IpAddr> {
    let statuses = task["statuses"].as_array().into_iter().flatten();
    statuses
        .rev()
        .map(|st| {
            st["container_status"]["network_infos"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|ni| ni["ip_addresses"].as_array().into_iter().flatten())
                .filter_map(|a| a["ip_address"].as_str()?.parse::<IpAddr>().ok())
                .collect::<Vec<_>>()
        })
        .find(|addrs| !addrs.is_empty())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- codec

/// The zone the agents are authoritative for.
pub const ZONE: &str = "mesos";
pub const TTL: u32 = 5;
/// Replies are kept within a plain (non-EDNS) UDP datagram.
pub const MAX_REPLY: usize = 512;

/// Response codes, as numbers (what a resolver's caller compares).
pub const NOERROR: u8 = 0;
pub const FORMERR: u8 = 1;
pub const NXDOMAIN: u8 = 3;
pub const NOTIMP: u8 = 4;
pub const REFUSED: u8 = 5;

/// The answer to one datagram (None: ignore it — too short to carry an id
/// to answer, or itself a response).
pub fn answer(buf: &[u8], records: &Records) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(buf)).ok()?;
    let asked = header.metadata;
    if asked.message_type == MessageType::Response {
        return None;
    }
    let query = match Message::from_vec(buf) {
        Ok(m) => m,
        Err(_) => return Some(error_reply(&asked, ResponseCode::FormErr)),
    };
    if asked.op_code != OpCode::Query {
        return Some(error_reply(&asked, ResponseCode::NotImp));
    }
    let [q] = query.queries.as_slice() else {
        return Some(error_reply(&asked, ResponseCode::FormErr));
    };
    let mut reply = Message::response(asked.id, OpCode::Query);
    reply.metadata.recursion_desired = asked.recursion_desired;
    reply.add_query(q.clone());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_REPLY as u16);
        reply.set_edns(edns);
    }
    let name = q
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let in_zone = name == ZONE || name.ends_with(&format!(".{ZONE}"));
    if !in_zone || q.query_class() != DNSClass::IN {
        // Not ours: refused at once, never forwarded.
        reply.metadata.response_code = ResponseCode::Refused;
        return encode(&reply);
    }
    reply.metadata.authoritative = true;
    let Some(addrs) = records.get(&name) else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return encode(&reply);
    };
    // The name exists; a type it has no records of gets an empty NOERROR.
    let wanted = |a: &IpAddr| match q.query_type() {
        RecordType::A => a.is_ipv4(),
        RecordType::AAAA => a.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    };
    for a in addrs.iter().filter(|a| wanted(a)) {
        let data = match a {
            IpAddr::V4(v4) => RData::A(A(*v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
        };
        reply.add_answer(Record::from_rdata(q.name().clone(), TTL, data));
    }
    // As many answers as fit in one datagram (a resolver asking again over
    // TCP would find no one there).
    loop {
        let out = reply.to_vec().ok()?;
        if out.len() <= MAX_REPLY || reply.answers.is_empty() {
            return Some(out);
        }
        reply.answers.pop();
    }
}

/// A reply that only echoes the header: for queries too broken (or too
/// strange) to answer.
fn error_reply(asked: &Metadata, code: ResponseCode) -> Vec<u8> {
    let mut reply = Message::error_msg(asked.id, asked.op_code, code);
    reply.metadata.recursion_desired = asked.recursion_desired;
    encode(&reply).unwrap_or_default()
}

fn encode(m: &Message) -> Option<Vec<u8>> {
    m.to_vec().ok()
}

/// Builds a query (for the demo's checks and the tests).
pub fn query(id: u16, name: &str, qtype: RecordType) -> Result<Vec<u8>, String> {
    let name = Name::from_ascii(name).map_err(|e| format!("{name:?} is not a DNS name: {e}"))?;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name, qtype));
    m.to_vec().map_err(|e| e.to_string())
}

/// Reads a reply: its id, rcode and addresses (A and AAAA answers).
pub fn parse_reply(buf: &[u8]) -> Option<(u16, u8, Vec<IpAddr>)> {
    let m = Message::from_vec(buf).ok()?;
    if m.metadata.message_type != MessageType::Response {
        return None;
    }
    let addrs = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    Some((m.metadata.id, m.metadata.response_code.low(), addrs))
}

// ---------------------------------------------------------------- server

/// Serves `records` on UDP `addr` on its own thread; returns the address it
/// listens on (port 0 in `addr`: the one the system chose).
pub fn serve(addr: SocketAddr, records: Arc<RwLock<Records>>) -> Result<SocketAddr, String> {
    let sock =
        UdpSocket::bind(addr).map_err(|e| format!("cannot listen for DNS on {addr}: {e}"))?;
    let bound = sock.local_addr().map_err(|e| e.to_string())?;
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
    Ok(bound)
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

/// Asks `server` for the A records of `name`, within `timeout`: (rcode,
/// addresses).
pub fn resolve(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<(u8, Vec<IpAddr>), String> {
    resolve_type(server, name, RecordType::A, timeout)
}

/// Asks `server` for `name` with type `qtype`, within `timeout`.
pub fn resolve_type(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    timeout: Duration,
) -> Result<(u8, Vec<IpAddr>), String> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).map_err(|e| e.to_string())?;
    let id = u16::from_str_radix(&crate::util::random_hex(2), 16).unwrap_or(0);
    sock.send_to(&query(id, name, qtype)?, server)
        .map_err(|e| format!("cannot ask {server}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no DNS answer from {server} within {timeout:?}"));
        }
        sock.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        let (n, from) = sock
            .recv_from(&mut buf)
            .map_err(|e| format!("no DNS answer from {server}: {e}"))?;
        // Anything else (another sender, a stale id) is not our answer.
        if from != server {
            continue;
        }
        match parse_reply(&buf[..n]) {
            Some((got, rcode, addrs)) if got == id => return Ok((rcode, addrs)),
            Some(_) => continue,
            None => return Err(format!("unreadable DNS answer from {server}")),
        }
    }
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
                {"name": "probe-e.star", "state": "TASK_RUNNING", "slave_id": "S1",
                 "discovery": {"name": "probe-e.star"},
                 "statuses": [{"state": "TASK_RUNNING", "container_status":
                    {"network_infos": [{"ip_addresses": [
                        {"ip_address": "192.168.0.6", "protocol": "IPv4"},
                        {"ip_address": "fd00::6", "protocol": "IPv6"}]}]}}]},
                {"name": "probe-a.star_before", "state": "TASK_RUNNING", "slave_id": "S1", "statuses": []},
                {"name": "probe-c.star", "state": "TASK_STAGING", "slave_id": "S1", "statuses": []}
            ]}]
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Asks through the codec: (rcode, addresses).
    fn ask(r: &Records, name: &str, t: RecordType) -> (u8, Vec<IpAddr>) {
        let out = answer(&query(7, name, t).unwrap(), r).unwrap();
        let (id, rcode, addrs) = parse_reply(&out).unwrap();
        assert_eq!(id, 7);
        (rcode, addrs)
    }

    #[test]
    fn records_follow_mesos_dns() {
        let r = records_from_state(&state());
        assert_eq!(r["probe-b-star.marathon.mesos"], vec![ip("192.168.0.5")]);
        assert_eq!(r["probe-b.star.marathon.mesos"], vec![ip("192.168.0.5")]);
        assert_eq!(
            r["probe-e.star.marathon.mesos"],
            vec![ip("192.168.0.6"), ip("fd00::6")]
        );
        assert_eq!(
            r["probe-a-star-before.marathon.mesos"],
            vec![ip("10.234.0.11")]
        );
        assert!(
            !r.contains_key("probe-c-star.marathon.mesos"),
            "not running"
        );
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn answers() {
        let r = records_from_state(&state());
        // Both name forms, any case, with or without the final dot.
        assert_eq!(
            ask(&r, "probe-b.star.marathon.mesos", RecordType::A),
            (NOERROR, vec![ip("192.168.0.5")])
        );
        assert_eq!(
            ask(&r, "PROBE-B-STAR.marathon.mesos.", RecordType::A),
            (NOERROR, vec![ip("192.168.0.5")])
        );
        // AAAA when the task has an IPv6 address; an empty NOERROR otherwise.
        assert_eq!(
            ask(&r, "probe-e-star.marathon.mesos", RecordType::AAAA),
            (NOERROR, vec![ip("fd00::6")])
        );
        assert_eq!(
            ask(&r, "probe-e.star.marathon.mesos", RecordType::A),
            (NOERROR, vec![ip("192.168.0.6")])
        );
        assert_eq!(
            ask(&r, "probe-b.star.marathon.mesos", RecordType::AAAA),
            (NOERROR, vec![])
        );
        assert_eq!(
            ask(&r, "probe-b.star.marathon.mesos", RecordType::MX),
            (NOERROR, vec![])
        );
        // Unknown in the zone; outside it; a look-alike outside it.
        assert_eq!(ask(&r, "nope.marathon.mesos", RecordType::A).0, NXDOMAIN);
        assert_eq!(ask(&r, "example.com", RecordType::A).0, REFUSED);
        assert_eq!(ask(&r, "mesos.example.com", RecordType::A).0, REFUSED);
        assert_eq!(ask(&r, "xmesos", RecordType::A).0, REFUSED);
        // The reply echoes the id and the question; AA set in the zone only.
        let raw = answer(
            &query(0xBEEF, "nope.marathon.mesos", RecordType::A).unwrap(),
            &r,
        )
        .unwrap();
        let m = Message::from_vec(&raw).unwrap();
        assert_eq!(m.metadata.id, 0xBEEF);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(m.queries[0].name().to_ascii(), "nope.marathon.mesos.");
        let raw = answer(&query(1, "example.com", RecordType::A).unwrap(), &r).unwrap();
        assert!(!Message::from_vec(&raw).unwrap().metadata.authoritative);
    }

    #[test]
    fn malformed_packets_get_formerr_or_nothing_and_never_a_panic() {
        let r = records_from_state(&state());
        let good = query(0x1234, "probe-b.star.marathon.mesos", RecordType::A).unwrap();
        let rcode = |out: Option<Vec<u8>>| -> Option<(u16, u8)> {
            let m = Message::from_vec(&out?).expect("every reply decodes");
            Some((m.metadata.id, m.metadata.response_code.low()))
        };
        // Too short for a header: no id to answer to.
        for n in 0..12 {
            assert_eq!(answer(&good[..n], &r), None, "{n} bytes");
        }
        // Every cut of the question: FORMERR, with the query's id.
        for n in 12..good.len() {
            assert_eq!(
                rcode(answer(&good[..n], &r)),
                Some((0x1234, FORMERR)),
                "{n} bytes"
            );
        }
        // Two questions, no question.
        let mut two = good.clone();
        two[5] = 2;
        two.extend_from_slice(&good[12..]);
        assert_eq!(rcode(answer(&two, &r)), Some((0x1234, FORMERR)));
        let mut none = good[..12].to_vec();
        none[5] = 0;
        assert_eq!(rcode(answer(&none, &r)), Some((0x1234, FORMERR)));
        // A question count the packet cannot hold.
        let mut many = good.clone();
        many[4] = 0xff;
        many[5] = 0xff;
        assert_eq!(rcode(answer(&many, &r)), Some((0x1234, FORMERR)));
        // A label longer than 63, a name pointer to itself, a pointer forward.
        let mut long = good[..12].to_vec();
        long.push(64);
        long.extend_from_slice(&[b'a'; 64]);
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(rcode(answer(&long, &r)), Some((0x1234, FORMERR)));
        let mut self_ptr = good[..12].to_vec();
        self_ptr.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        assert_eq!(rcode(answer(&self_ptr, &r)), Some((0x1234, FORMERR)));
        let mut fwd_ptr = good[..12].to_vec();
        fwd_ptr.extend_from_slice(&[0xC0, 40, 0, 1, 0, 1]);
        assert_eq!(rcode(answer(&fwd_ptr, &r)), Some((0x1234, FORMERR)));
        // A response is never answered (no reflection loops).
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(answer(&response, &r), None);
        // Another opcode (an inverse query): NOTIMP.
        let mut iquery = good.clone();
        iquery[2] |= 0x08;
        assert_eq!(rcode(answer(&iquery, &r)), Some((0x1234, NOTIMP)));
        // Garbage: whatever comes back is a well-formed reply.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..5000 {
            let len = i % 80;
            let pkt: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            if let Some(out) = answer(&pkt, &r) {
                assert!(out.len() <= MAX_REPLY);
                let m = Message::from_vec(&out).expect("a reply that decodes");
                assert_eq!(m.metadata.message_type, MessageType::Response);
            }
            // The question with random bytes flipped.
            let mut flipped = good.clone();
            let at = 2 + (seed as usize) % (flipped.len() - 2);
            flipped[at] ^= (seed >> 8) as u8 | 1;
            if let Some(out) = answer(&flipped, &r) {
                Message::from_vec(&out).expect("a reply that decodes");
            }
        }
    }

    #[test]
    fn many_answers_fit_a_datagram() {
        let mut r = Records::new();
        r.insert(
            "x.marathon.mesos".into(),
            (0..60)
                .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)))
                .chain(
                    (0..60)
                        .map(|i| IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i))),
                )
                .collect(),
        );
        for t in [RecordType::A, RecordType::AAAA] {
            let out = answer(&query(1, "x.marathon.mesos", t).unwrap(), &r).unwrap();
            assert!(out.len() <= MAX_REPLY, "{}", out.len());
            let (_, rcode, addrs) = parse_reply(&out).unwrap();
            assert_eq!(rcode, NOERROR);
            assert!(addrs.len() >= 10, "{t}: {}", addrs.len());
            // As many as fit: one more would not.
            let mut m = Message::from_vec(&out).unwrap();
            let extra = m.answers[0].clone();
            m.add_answer(extra);
            assert!(m.to_vec().unwrap().len() > MAX_REPLY, "{t}");
        }
    }

    #[test]
    fn a_server_answers_over_udp() {
        let records = Arc::new(RwLock::new(records_from_state(&state())));
        let addr = serve("127.0.0.1:0".parse().unwrap(), records).unwrap();
        assert_ne!(addr.port(), 0);
        let t = Duration::from_secs(5);
        assert_eq!(
            resolve(addr, "probe-b.star.marathon.mesos", t).unwrap(),
            (NOERROR, vec![ip("192.168.0.5")])
        );
        assert_eq!(
            resolve_type(addr, "probe-e.star.marathon.mesos", RecordType::AAAA, t).unwrap(),
            (NOERROR, vec![ip("fd00::6")])
        );
        assert_eq!(resolve(addr, "example.com", t).unwrap().0, REFUSED);
        assert!(resolve(addr, "bad..name", t).is_err());
    }

    #[test]
    fn labels() {
        assert_eq!(label("probe-b.star"), "probe-b-star");
        assert_eq!(label("A_b"), "a-b");
        assert_eq!(label("-x-"), "x");
    }
}
