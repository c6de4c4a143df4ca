//! ADD results in the format of the configuration's cniVersion.

use netmod_model::{Endpoint, GATEWAY_V4, GATEWAY_V6};
use serde_json::{json, Value};

/// 0.1.0 and 0.2.0: `ip4` / `ip6` (what Mesos ≥ 1.0 reads); later: `interfaces` + `ips`.
pub fn render(version: &str, ep: &Endpoint) -> Value {
    match version {
        "0.1.0" | "0.2.0" => legacy(version, ep),
        _ => current(version, ep),
    }
}

fn legacy(version: &str, ep: &Endpoint) -> Value {
    let mut out = json!({ "cniVersion": version, "dns": {} });
    if let Some(a) = ep.ipv4.first() {
        out["ip4"] = json!({
            "ip": format!("{a}/32"),
            "gateway": GATEWAY_V4,
            "routes": [{"dst": "0.0.0.0/0", "gw": GATEWAY_V4}],
        });
    }
    if let Some(a) = ep.ipv6.first() {
        out["ip6"] = json!({
            "ip": format!("{a}/128"),
            "gateway": GATEWAY_V6,
            "routes": [{"dst": "::/0", "gw": GATEWAY_V6}],
        });
    }
    out
}

fn current(version: &str, ep: &Endpoint) -> Value {
    // 0.3.x and 0.4.0 carry "version" in each IP; 1.0.0 dropped it.
    let with_version = matches!(version, "0.3.0" | "0.3.1" | "0.4.0");
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for a in &ep.ipv4 {
        let mut ip = json!({"address": format!("{a}/32"), "gateway": GATEWAY_V4, "interface": 1});
        if with_version {
            ip["version"] = json!("4");
        }
        ips.push(ip);
    }
    for a in &ep.ipv6 {
        let mut ip = json!({"address": format!("{a}/128"), "gateway": GATEWAY_V6, "interface": 1});
        if with_version {
            ip["version"] = json!("6");
        }
        ips.push(ip);
    }
    if !ep.ipv4.is_empty() {
        routes.push(json!({"dst": "0.0.0.0/0", "gw": GATEWAY_V4}));
    }
    if !ep.ipv6.is_empty() {
        routes.push(json!({"dst": "::/0", "gw": GATEWAY_V6}));
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": ep.iface},
            {"name": ep.container_iface, "mac": ep.mac, "sandbox": ep.netns},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> Endpoint {
        Endpoint {
            host: "h".into(),
            container_id: "c".into(),
            iface: "nm0123456789a".into(),
            container_iface: "eth0".into(),
            mac: "0e:6e:00:00:00:01".into(),
            ipv4: vec!["10.1.0.5".parse().unwrap()],
            ipv6: vec!["fd00::5".parse().unwrap()],
            netgroups: vec![],
            labels: Default::default(),
            netns: "/var/run/netns/x".into(),
            source: "cni".into(),
            handle: None,
        }
    }

    /// The shape each version of the spec defines (SPEC.md of that version).
    #[test]
    fn every_version_has_its_shape() {
        for v in ["0.1.0", "0.2.0"] {
            let r = render(v, &ep());
            assert_eq!(r["cniVersion"], v);
            assert_eq!(r["ip4"]["ip"], "10.1.0.5/32");
            assert_eq!(r["ip4"]["gateway"], "169.254.1.1");
            assert_eq!(r["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
            assert_eq!(r["ip6"]["ip"], "fd00::5/128");
            assert!(r.get("ips").is_none() && r.get("interfaces").is_none());
        }
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let r = render(v, &ep());
            assert_eq!(r["cniVersion"], v);
            assert_eq!(r["interfaces"][1]["name"], "eth0");
            assert_eq!(r["interfaces"][1]["sandbox"], "/var/run/netns/x");
            assert_eq!(r["ips"][0]["address"], "10.1.0.5/32");
            assert_eq!(r["ips"][0]["interface"], 1);
            assert_eq!(r["ips"][1]["address"], "fd00::5/128");
            let has_version = r["ips"][0].get("version").is_some();
            assert_eq!(has_version, v.starts_with("0."), "{v}");
            assert!(r.get("ip4").is_none());
        }
    }
}
