//! The CNI network configuration and environment, validated completely into
//! a typed request before anything is touched.

use super::CniError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub const SUPPORTED: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// Where per-attachment netgroups may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSource {
    /// Mesos's `args["org.apache.mesos"]["network_info"]["groups"]`.
    Mesos,
    /// `CNI_ARGS` key `NETMOD_NETGROUPS=a,b` (or `K8S`-style `netgroups=`).
    CniArgs,
    /// `runtimeConfig.netgroups` (a capability the runtime fills in).
    RuntimeConfig,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub store: Option<String>,
    pub hostname: Option<String>,
    pub pool: Option<ipnet::IpNet>,
    pub ipv4: bool,
    pub ipv6: bool,
    pub netgroups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub valid_attachments: Option<Vec<(String, String)>>,
}

#[derive(Debug, Clone)]
pub struct Env {
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: BTreeMap<String, String>,
}

impl Env {
    pub fn from_process() -> Result<Env, CniError> {
        Env::from_lookup(|k| std::env::var(k).ok())
    }

    /// The environment as `lookup` reports it (`from_process`: the process's).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let var = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let mut args = BTreeMap::new();
        if let Some(raw) = var("CNI_ARGS") {
            for pair in raw.split(';').filter(|p| !p.is_empty()) {
                let Some((k, v)) = pair.split_once('=') else {
                    return Err(CniError::env(format!(
                        "CNI_ARGS item {pair:?} is not KEY=VALUE"
                    )));
                };
                args.insert(k.to_string(), v.to_string());
            }
        }
        Ok(Env {
            container_id: var("CNI_CONTAINERID"),
            netns: var("CNI_NETNS").map(PathBuf::from),
            ifname: var("CNI_IFNAME"),
            args,
        })
    }

    pub fn require_container(&self) -> Result<&str, CniError> {
        let id = self
            .container_id
            .as_deref()
            .ok_or_else(|| CniError::env("CNI_CONTAINERID is not set"))?;
        if id.len() > 256 || id.chars().any(|c| c.is_control() || c == '/') {
            return Err(CniError::env(
                "CNI_CONTAINERID must be printable, without '/'",
            ));
        }
        Ok(id)
    }

    pub fn require_ifname(&self) -> Result<&str, CniError> {
        let name = self
            .ifname
            .as_deref()
            .ok_or_else(|| CniError::env("CNI_IFNAME is not set"))?;
        let ok = !name.is_empty()
            && name.len() <= 15
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(CniError::env(format!(
                "CNI_IFNAME {name:?} is not a valid interface name"
            )));
        }
        Ok(name)
    }
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::config(msg)
}

fn string_list(v: &Value, what: &str) -> Result<Vec<String>, CniError> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("{what} must be a list of strings")))
            })
            .collect(),
        _ => Err(bad(format!("{what} must be a list of strings"))),
    }
}

/// The label every CNI endpoint carries: the network's name (GC finds the
/// network's endpoints by it, so no source of labels may set it).
pub const NETWORK_LABEL: &str = "cni.network";

/// Merge labels given as a list of `{"key", "value"}` objects (a missing or
/// null value is "") or as an object of strings. Keys under
/// `netgroup.netmod.io/` are refused: policy selectors read them as netgroup
/// membership, which only netgroups may grant.
fn merge_labels(
    labels: &mut BTreeMap<String, String>,
    v: &Value,
    what: &str,
) -> Result<(), CniError> {
    let mut put = |k: &str, v: String| -> Result<(), CniError> {
        if k.starts_with(netmod_core::labels::NETGROUP_LABEL_PREFIX) {
            return Err(bad(format!(
                "{what}: label {k:?} is reserved: keys under {} say which netgroups an endpoint is in; give netgroups with \"netgroups\" instead",
                netmod_core::labels::NETGROUP_LABEL_PREFIX
            )));
        }
        if k != NETWORK_LABEL {
            labels.insert(k.to_string(), v);
        }
        Ok(())
    };
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for item in items {
                match (item.get("key").and_then(Value::as_str), item.get("value")) {
                    (Some(k), Some(Value::String(v))) => put(k, v.clone())?,
                    (Some(k), None | Some(Value::Null)) => put(k, String::new())?,
                    _ => {
                        return Err(bad(format!(
                            "each label of {what} must be {{\"key\": string, \"value\": string}}"
                        )))
                    }
                }
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let Value::String(v) = v else {
                    return Err(bad(format!("{what}: label {k:?} must have a string value")));
                };
                put(k, v.clone())?;
            }
        }
        _ => {
            return Err(bad(format!(
                "{what} must be a list of {{\"key\", \"value\"}} or an object of strings"
            )))
        }
    }
    Ok(())
}

fn opt_str<'a>(conf: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match conf.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad(format!("\"{key}\" must be a string"))),
    }
}

fn opt_bool(conf: &Map<String, Value>, key: &str, default: bool) -> Result<bool, CniError> {
    match conf.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("\"{key}\" must be true or false"))),
    }
}

/// The cniVersion a config asks for, read leniently so that errors about the
/// rest of the config can still be answered in that version.
pub fn peek_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string())
}

pub fn parse(stdin: &[u8], env: &Env) -> Result<NetConf, CniError> {
    let value: Value = serde_json::from_slice(stdin)
        .map_err(|e| CniError::decode(format!("network configuration is not valid JSON: {e}")))?;
    let Value::Object(conf) = value else {
        return Err(CniError::decode(
            "network configuration must be a JSON object",
        ));
    };
    let cni_version = opt_str(&conf, "cniVersion")?
        .ok_or_else(|| bad("missing \"cniVersion\""))?
        .to_string();
    if !SUPPORTED.contains(&cni_version.as_str()) {
        return Err(CniError::version(format!(
            "cniVersion {cni_version} is not supported (supported: {})",
            SUPPORTED.join(", ")
        )));
    }
    let name = opt_str(&conf, "name")?
        .ok_or_else(|| bad("missing \"name\""))?
        .to_string();
    let pool = match opt_str(&conf, "pool")? {
        Some(p) => Some(
            p.parse::<ipnet::IpNet>()
                .map_err(|_| bad(format!("\"pool\" {p:?} is not a CIDR")))?,
        ),
        None => None,
    };
    let ipv4 = opt_bool(&conf, "ipv4", true)?;
    let ipv6 = opt_bool(&conf, "ipv6", false)?;
    if !ipv4 && !ipv6 {
        return Err(bad(
            "\"ipv4\" and \"ipv6\" are both false: nothing to allocate",
        ));
    }
    let sources = match conf.get("netgroupSources") {
        None | Some(Value::Null) => vec![
            GroupSource::Mesos,
            GroupSource::CniArgs,
            GroupSource::RuntimeConfig,
        ],
        Some(v) => string_list(v, "\"netgroupSources\"")?
            .iter()
            .map(|s| match s.as_str() {
                "mesos" => Ok(GroupSource::Mesos),
                "cni_args" => Ok(GroupSource::CniArgs),
                "runtime_config" => Ok(GroupSource::RuntimeConfig),
                other => Err(bad(format!(
                    "unknown netgroup source {other:?} (mesos, cni_args, runtime_config)"
                ))),
            })
            .collect::<Result<_, _>>()?,
    };
    let mut netgroups = string_list(
        conf.get("netgroups").unwrap_or(&Value::Null),
        "\"netgroups\"",
    )?;
    let mut labels = BTreeMap::new();
    let mesos = conf
        .get("args")
        .and_then(|a| a.get("org.apache.mesos"))
        .and_then(|m| m.get("network_info"));
    if let Some(info) = mesos.filter(|_| sources.contains(&GroupSource::Mesos)) {
        if !info.is_object() {
            return Err(bad(
                "args[\"org.apache.mesos\"][\"network_info\"] must be an object",
            ));
        }
        netgroups.extend(string_list(
            info.get("groups").unwrap_or(&Value::Null),
            "network_info.groups",
        )?);
        if let Some(items) = info.get("labels").and_then(|l| l.get("labels")) {
            if !items.is_array() {
                return Err(bad("network_info.labels.labels must be a list"));
            }
            merge_labels(&mut labels, items, "network_info.labels.labels")?;
        }
    }
    // Labels for policy selectors from the other places runtimes put them:
    // `args.labels` and `args.cni.labels` (CNI's conventions), then
    // `runtimeConfig.labels`; a later source wins for the same key.
    let args = conf.get("args").filter(|a| !a.is_null());
    if let Some(args) = args {
        if !args.is_object() {
            return Err(bad("\"args\" must be an object"));
        }
        if let Some(v) = args.get("labels") {
            merge_labels(&mut labels, v, "args.labels")?;
        }
        if let Some(v) = args.get("cni").and_then(|c| c.get("labels")) {
            merge_labels(&mut labels, v, "args.cni.labels")?;
        }
    }
    if let Some(rc) = conf.get("runtimeConfig").filter(|rc| !rc.is_null()) {
        if !rc.is_object() {
            return Err(bad("\"runtimeConfig\" must be an object"));
        }
        if let Some(v) = rc.get("labels") {
            merge_labels(&mut labels, v, "runtimeConfig.labels")?;
        }
    }
    // The network's own label is netmod's: GC finds its endpoints by it.
    labels.insert(NETWORK_LABEL.to_string(), name.clone());
    if sources.contains(&GroupSource::CniArgs) {
        if let Some(groups) = env.args.get("NETMOD_NETGROUPS") {
            netgroups.extend(
                groups
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(str::to_string),
            );
        }
    }
    if let Some(rc) = conf
        .get("runtimeConfig")
        .filter(|_| sources.contains(&GroupSource::RuntimeConfig))
    {
        if !rc.is_object() && !rc.is_null() {
            return Err(bad("\"runtimeConfig\" must be an object"));
        }
        netgroups.extend(string_list(
            rc.get("netgroups").unwrap_or(&Value::Null),
            "runtimeConfig.netgroups",
        )?);
    }
    let mut seen = Vec::new();
    for g in netgroups {
        crate::mesos::protocol::validate_netgroup(&g).map_err(|e| bad(e.0))?;
        if !seen.contains(&g) {
            seen.push(g);
        }
    }
    let valid_attachments = match conf.get("cni.dev/valid-attachments") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| {
                    let id = i.get("containerID").and_then(Value::as_str);
                    let ifname = i.get("ifname").and_then(Value::as_str);
                    match (id, ifname) {
                        (Some(id), Some(ifname)) => Ok((id.to_string(), ifname.to_string())),
                        _ => Err(bad(
                            "each valid attachment needs \"containerID\" and \"ifname\"",
                        )),
                    }
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err(bad("\"cni.dev/valid-attachments\" must be a list")),
    };
    Ok(NetConf {
        cni_version,
        name,
        store: opt_str(&conf, "store")?.map(str::to_string),
        hostname: opt_str(&conf, "hostname")?.map(str::to_string),
        pool,
        ipv4,
        ipv6,
        netgroups: seen,
        labels,
        valid_attachments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Env {
        Env::from_lookup(|_| None).unwrap()
    }

    fn labels_of(extra: Value) -> Result<BTreeMap<String, String>, CniError> {
        let mut conf = json!({"cniVersion": "1.0.0", "name": "net1", "type": "netmod"});
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        parse(conf.to_string().as_bytes(), &env()).map(|c| c.labels)
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_from_args_and_runtime_config_merge_later_sources_winning() {
        let got = labels_of(json!({
            "args": {
                "org.apache.mesos": {"network_info": {"name": "net1",
                    "labels": {"labels": [{"key": "app", "value": "mesos"}, {"key": "m"}]}}},
                "labels": [{"key": "app", "value": "args"}, {"key": "tier", "value": "web"}],
                "cni": {"labels": [{"key": "conv", "value": "yes"}]}
            },
            "runtimeConfig": {"labels": {"tier": "db", "role": "database"}}
        }))
        .unwrap();
        assert_eq!(
            got,
            map(&[
                ("app", "args"),
                ("cni.network", "net1"),
                ("conv", "yes"),
                ("m", ""),
                ("role", "database"),
                ("tier", "db"),
            ])
        );
        // args.labels as an object, runtimeConfig.labels as a list.
        let got = labels_of(json!({
            "args": {"labels": {"role": "frontend"}},
            "runtimeConfig": {"labels": [{"key": "zone", "value": "a"}]}
        }))
        .unwrap();
        assert_eq!(
            got,
            map(&[("cni.network", "net1"), ("role", "frontend"), ("zone", "a")])
        );
    }

    #[test]
    fn the_network_label_is_netmods_and_netgroup_labels_are_refused() {
        let got = labels_of(json!({"args": {"labels": {"cni.network": "other"}},
            "runtimeConfig": {"labels": {"cni.network": "other"}}}))
        .unwrap();
        assert_eq!(got, map(&[("cni.network", "net1")]));
        let mesos = json!({"org.apache.mesos": {"network_info": {
            "labels": {"labels": [{"key": "cni.network", "value": "x"}]}}}});
        assert_eq!(
            labels_of(json!({ "args": mesos })).unwrap(),
            map(&[("cni.network", "net1")])
        );
        for extra in [
            json!({"args": {"labels": {"netgroup.netmod.io/db": ""}}}),
            json!({"runtimeConfig": {"labels": [{"key": "netgroup.netmod.io/db", "value": ""}]}}),
            json!({"args": {"org.apache.mesos": {"network_info": {
                "labels": {"labels": [{"key": "netgroup.netmod.io/db"}]}}}}}),
        ] {
            let e = labels_of(extra.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{extra}");
            assert!(
                e.msg.contains("netgroup.netmod.io/db") && e.msg.contains("reserved"),
                "{}",
                e.msg
            );
        }
    }

    #[test]
    fn malformed_labels_are_configuration_errors() {
        for (extra, words) in [
            (
                json!({"args": {"labels": "app=x"}}),
                "args.labels must be a list",
            ),
            (
                json!({"args": {"labels": [{"value": "x"}]}}),
                "each label of args.labels",
            ),
            (
                json!({"args": {"labels": [{"key": "a", "value": 3}]}}),
                "each label of args.labels",
            ),
            (
                json!({"runtimeConfig": {"labels": {"a": 1}}}),
                "runtimeConfig.labels: label \"a\" must have a string value",
            ),
            (
                json!({"runtimeConfig": {"labels": true}}),
                "runtimeConfig.labels must be",
            ),
            (json!({"args": []}), "\"args\" must be an object"),
            (
                json!({"runtimeConfig": 1}),
                "\"runtimeConfig\" must be an object",
            ),
        ] {
            let e = labels_of(extra.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{extra}");
            assert!(e.msg.contains(words), "{extra}: {}", e.msg);
        }
        assert_eq!(
            labels_of(json!({"args": null, "runtimeConfig": {"labels": null}})).unwrap(),
            map(&[("cni.network", "net1")])
        );
    }
}
