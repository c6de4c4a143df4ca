//! The net-modules wire protocol: one JSON request in, parsed and validated
//! completely into a typed request before anything is touched.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The module reads at most 40 KiB of reply; requests are small. Anything
/// larger than this is refused without parsing it.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Allocate(Allocate),
    Reserve(Reserve),
    Release(Release),
    Isolate(Isolate),
    Cleanup(Cleanup),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocate {
    pub hostname: String,
    pub uid: String,
    pub num_ipv4: u32,
    pub num_ipv6: u32,
    pub netgroups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// From the `ipv4_addrs` label: reserved by value, counted in `num_ipv4`.
    pub static_ipv4: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserve {
    pub hostname: String,
    pub uid: String,
    pub addrs: Vec<IpAddr>,
    pub netgroups: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    Uid(String),
    Ips(Vec<IpAddr>),
}

/// Where the container's network namespace is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    Pid(u32),
    Path(String),
}

impl Netns {
    pub fn path(&self) -> String {
        match self {
            Netns::Pid(pid) => format!("/proc/{pid}/ns/net"),
            Netns::Path(p) => p.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolate {
    pub hostname: String,
    pub container_id: String,
    pub netns: Netns,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    pub netgroups: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleanup {
    pub hostname: String,
    pub container_id: String,
}

/// A request the plugin refuses; the message is one clear sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

type Result<T> = std::result::Result<T, Invalid>;

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Invalid(msg.into()))
}

pub fn parse(input: &[u8]) -> Result<Request> {
    if input.len() > MAX_REQUEST_BYTES {
        return invalid(format!(
            "request is {} bytes, more than the {MAX_REQUEST_BYTES} a request may be",
            input.len()
        ));
    }
    if input.iter().all(u8::is_ascii_whitespace) {
        return invalid("empty request: expected one JSON object on stdin");
    }
    let value: Value = serde_json::from_slice(input)
        .map_err(|e| Invalid(format!("request is not valid JSON: {e}")))?;
    let Value::Object(envelope) = value else {
        return invalid("request must be a JSON object with \"command\" and \"args\"");
    };
    let command = match envelope.get("command") {
        None | Some(Value::Null) => return invalid("missing \"command\""),
        Some(Value::String(c)) => c.as_str(),
        Some(_) => return invalid("\"command\" must be a string"),
    };
    let args = match envelope.get("args") {
        None | Some(Value::Null) => return invalid(format!("missing \"args\" for {command}")),
        Some(Value::Object(a)) => Args(a),
        Some(_) => return invalid("\"args\" must be a JSON object"),
    };
    match command {
        "allocate" => parse_allocate(&args).map(Request::Allocate),
        "reserve" => parse_reserve(&args).map(Request::Reserve),
        "release" => parse_release(&args).map(Request::Release),
        "isolate" => parse_isolate(&args).map(Request::Isolate),
        "cleanup" => Ok(Request::Cleanup(Cleanup {
            hostname: args.string("hostname")?,
            container_id: args.id("container_id")?,
        })),
        other => invalid(format!(
            "unknown command {other:?}: expected allocate, reserve, release, isolate or cleanup"
        )),
    }
}

struct Args<'a>(&'a Map<String, Value>);

impl Args<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn string(&self, name: &str) -> Result<String> {
        match self.get(name) {
            None => invalid(format!("missing \"{name}\"")),
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => invalid(format!("\"{name}\" must not be empty")),
            Some(_) => invalid(format!("\"{name}\" must be a string")),
        }
    }

    /// An identifier: a non-empty string of printable characters.
    fn id(&self, name: &str) -> Result<String> {
        let s = self.string(name)?;
        if s.len() > 512 || s.chars().any(|c| c.is_control()) {
            return invalid(format!(
                "\"{name}\" must be at most 512 printable characters"
            ));
        }
        Ok(s)
    }

    /// A count: a non-negative integer, or a string of one.
    fn count(&self, name: &str) -> Result<u32> {
        let bad = || Invalid(format!("\"{name}\" must be a non-negative integer"));
        match self.get(name) {
            None => invalid(format!("missing \"{name}\"")),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad),
            Some(Value::String(s)) => s.trim().parse::<u32>().map_err(|_| bad()),
            Some(_) => Err(bad()),
        }
    }

    fn netgroups(&self) -> Result<Vec<String>> {
        let Some(v) = self.get("netgroups") else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = v else {
            return invalid("\"netgroups\" must be a list of names");
        };
        let mut groups = Vec::new();
        for item in items {
            let Value::String(g) = item else {
                return invalid("\"netgroups\" must be a list of names");
            };
            validate_netgroup(g)?;
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        Ok(groups)
    }

    /// Labels as a protobuf list `[{"key","value"}]` or a plain object.
    fn labels(&self) -> Result<BTreeMap<String, String>> {
        let mut labels = BTreeMap::new();
        match self.get("labels") {
            None => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let key = item.get("key").and_then(Value::as_str);
                    let value = match item.get("value") {
                        None | Some(Value::Null) => Some(""),
                        Some(v) => v.as_str(),
                    };
                    match (key, value) {
                        (Some(k), Some(v)) => {
                            labels.insert(k.to_string(), v.to_string());
                        }
                        _ => {
                            return invalid(
                                "each label must be {\"key\": string, \"value\": string}",
                            )
                        }
                    }
                }
            }
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    let Value::String(v) = v else {
                        return invalid(format!("label {k:?} must have a string value"));
                    };
                    labels.insert(k.clone(), v.clone());
                }
            }
            Some(_) => return invalid("\"labels\" must be a list of {key, value} or an object"),
        }
        Ok(labels)
    }

    fn addr_list(&self, name: &str) -> Result<Vec<IpAddr>> {
        let Some(v) = self.get(name) else {
            return Ok(Vec::new());
        };
        let Value::Array(items) = v else {
            return invalid(format!("\"{name}\" must be a list of addresses"));
        };
        items
            .iter()
            .map(|item| match item {
                Value::String(s) => s
                    .parse::<IpAddr>()
                    .map_err(|_| Invalid(format!("{s:?} in \"{name}\" is not an IP address"))),
                _ => invalid(format!("\"{name}\" must be a list of address strings")),
            })
            .collect()
    }

    fn v4_list(&self, name: &str) -> Result<Vec<Ipv4Addr>> {
        self.addr_list(name)?
            .into_iter()
            .map(|a| match a {
                IpAddr::V4(a) => Ok(a),
                IpAddr::V6(a) => invalid(format!("{a} in \"{name}\" is an IPv6 address")),
            })
            .collect()
    }

    fn v6_list(&self, name: &str) -> Result<Vec<Ipv6Addr>> {
        self.addr_list(name)?
            .into_iter()
            .map(|a| match a {
                IpAddr::V6(a) => Ok(a),
                IpAddr::V4(a) => invalid(format!("{a} in \"{name}\" is an IPv4 address")),
            })
            .collect()
    }
}

pub fn validate_netgroup(g: &str) -> Result<()> {
    netmod_policy::validate_netgroup(g).map_err(Invalid)
}

/// The Calico plugin's `ipv4_addrs` label: a JSON or Python-style list of
/// address strings, e.g. `"['192.168.255.253']"`. Parsed as data, never evaluated.
pub fn parse_addr_label(value: &str) -> Result<Vec<Ipv4Addr>> {
    let inner = value.trim();
    let inner = inner
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(inner);
    inner
        .split(',')
        .map(|item| item.trim().trim_matches(|c| c == '\'' || c == '"').trim())
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<Ipv4Addr>()
                .map_err(|_| Invalid(format!("label ipv4_addrs: {item:?} is not an IPv4 address")))
        })
        .collect()
}

fn parse_allocate(args: &Args) -> Result<Allocate> {
    let hostname = args.string("hostname")?;
    let uid = args.id("uid")?;
    let num_ipv4 = args.count("num_ipv4")?;
    let num_ipv6 = args.count("num_ipv6")?;
    let netgroups = args.netgroups()?;
    let labels = args.labels()?;
    let static_ipv4 = match labels.get("ipv4_addrs") {
        Some(v) => parse_addr_label(v)?,
        None => Vec::new(),
    };
    if static_ipv4.len() as u32 > num_ipv4 {
        return invalid(format!(
            "label ipv4_addrs names {} address(es) but num_ipv4 is {num_ipv4}",
            static_ipv4.len()
        ));
    }
    if num_ipv4 == 0 && num_ipv6 == 0 {
        return invalid("num_ipv4 and num_ipv6 are both 0: nothing to allocate");
    }
    Ok(Allocate {
        hostname,
        uid,
        num_ipv4,
        num_ipv6,
        netgroups,
        labels,
        static_ipv4,
    })
}

fn parse_reserve(args: &Args) -> Result<Reserve> {
    let hostname = args.string("hostname")?;
    let uid = args.id("uid")?;
    let mut addrs: Vec<IpAddr> = args
        .v4_list("ipv4_addrs")?
        .into_iter()
        .map(IpAddr::V4)
        .collect();
    addrs.extend(args.v6_list("ipv6_addrs")?.into_iter().map(IpAddr::V6));
    if addrs.is_empty() {
        return invalid("reserve needs at least one address in \"ipv4_addrs\" or \"ipv6_addrs\"");
    }
    Ok(Reserve {
        hostname,
        uid,
        addrs,
        netgroups: args.netgroups()?,
        labels: args.labels()?,
    })
}

fn parse_release(args: &Args) -> Result<Release> {
    match (args.get("uid"), args.get("ips")) {
        (Some(_), Some(_)) => invalid("release takes \"uid\" or \"ips\", not both"),
        (None, None) => invalid("release needs \"uid\" or \"ips\""),
        (Some(Value::String(_)), None) => Ok(Release::Uid(args.id("uid")?)),
        (Some(_), None) => invalid("\"uid\" must be a string"),
        (None, Some(_)) => {
            let ips = args.addr_list("ips")?;
            if ips.is_empty() {
                return invalid("\"ips\" is empty: nothing to release");
            }
            Ok(Release::Ips(ips))
        }
    }
}

fn parse_isolate(args: &Args) -> Result<Isolate> {
    let hostname = args.string("hostname")?;
    let container_id = args.id("container_id")?;
    let netns = match (args.get("netns"), args.get("pid")) {
        (Some(Value::String(p)), _) if p.starts_with('/') => Netns::Path(p.clone()),
        (Some(_), _) => return invalid("\"netns\" must be an absolute path"),
        (None, Some(Value::Number(n))) => match n.as_u64() {
            Some(pid) if pid > 0 && pid <= u32::MAX as u64 => Netns::Pid(pid as u32),
            _ => return invalid("\"pid\" must be a positive integer"),
        },
        (None, Some(Value::String(s))) => match s.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Netns::Pid(pid),
            _ => return invalid("\"pid\" must be a positive integer"),
        },
        (None, Some(_)) => return invalid("\"pid\" must be a positive integer"),
        (None, None) => return invalid("missing \"pid\""),
    };
    let ipv4 = args.v4_list("ipv4_addrs")?;
    let ipv6 = args.v6_list("ipv6_addrs")?;
    if ipv4.is_empty() && ipv6.is_empty() {
        return invalid("isolate needs at least one address in \"ipv4_addrs\" or \"ipv6_addrs\"");
    }
    Ok(Isolate {
        hostname,
        container_id,
        netns,
        ipv4,
        ipv6,
        netgroups: args.netgroups()?,
        labels: args.labels()?,
    })
}

#[cfg(test)]
mod tests;
