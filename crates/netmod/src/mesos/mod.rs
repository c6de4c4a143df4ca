//! The net-modules door: `netmod mesos` reads one JSON request on stdin and
//! writes one JSON reply on stdout, as Mesos's network isolator module expects.

pub mod protocol;

use netmod_core::attach::{attach, detach_then, AttachRequest};
use netmod_ipam::{AllocRequest, Ipam};
use netmod_model::AllocAttrs;
use protocol::{Invalid, Release, Request};
use serde_json::{json, Value};
use std::io::Read;
use std::net::IpAddr;

/// Run one request from stdin; print the reply; return the exit status.
pub fn main(store_flag: Option<&str>) -> i32 {
    let mut input = Vec::new();
    let limit = protocol::MAX_REQUEST_BYTES as u64 + 1;
    let reply = match std::io::stdin().take(limit).read_to_end(&mut input) {
        Err(e) => Err(format!("cannot read the request from stdin: {e}")),
        Ok(_) => protocol::parse(&input)
            .map_err(|Invalid(msg)| msg)
            .and_then(|req| execute(&*open_store(store_flag)?, req)),
    };
    match reply {
        Ok(mut value) => {
            value["error"] = Value::Null;
            println!("{value}");
            0
        }
        Err(msg) => {
            println!("{}", json!({ "error": msg }));
            1
        }
    }
}

fn open_store(flag: Option<&str>) -> Result<Box<dyn netmod_store::Store>, String> {
    netmod_store::open(&netmod_store::store_address(flag)).map_err(|e| e.to_string())
}

/// One request, end to end, against an open store: the reply `main` prints
/// (without its `"error": null`), or the error message. (The fuzz tests drive
/// the door through this.)
#[cfg_attr(not(test), allow(dead_code))]
pub fn respond(input: &[u8], store: &dyn netmod_store::Store) -> Result<Value, String> {
    let req = protocol::parse(input).map_err(|Invalid(msg)| msg)?;
    execute(store, req)
}

fn execute(store: &dyn netmod_store::Store, req: Request) -> Result<Value, String> {
    let ipam = Ipam::new(store);
    match req {
        Request::Allocate(a) => {
            let got = ipam
                .allocate(&AllocRequest {
                    handle: a.uid,
                    attrs: AllocAttrs {
                        host: a.hostname,
                        netgroups: a.netgroups,
                        labels: a.labels,
                    },
                    num_ipv4: a.num_ipv4,
                    num_ipv6: a.num_ipv6,
                    static_addrs: a.static_ipv4.into_iter().map(IpAddr::V4).collect(),
                    pool: None,
                })
                .map_err(|e| e.to_string())?;
            Ok(json!({ "ipv4": got.ipv4, "ipv6": got.ipv6 }))
        }
        Request::Reserve(r) => {
            let attrs = AllocAttrs {
                host: r.hostname,
                netgroups: r.netgroups,
                labels: r.labels,
            };
            ipam.reserve(&r.uid, &attrs, &r.addrs)
                .map_err(|e| e.to_string())?;
            Ok(json!({}))
        }
        Request::Release(Release::Uid(uid)) => {
            // The module's release and cleanup may come in either order, and
            // cleanup releases too: a handle already gone is not an error.
            match ipam.release_handle(&uid) {
                Ok(_) | Err(netmod_ipam::IpamError::UnknownHandle(_)) => Ok(json!({})),
                Err(e) => Err(e.to_string()),
            }
        }
        Request::Release(Release::Ips(ips)) => {
            ipam.release_addrs(&ips).map_err(|e| e.to_string())?;
            Ok(json!({}))
        }
        Request::Isolate(i) => {
            let addrs: Vec<IpAddr> = i
                .ipv4
                .iter()
                .map(|a| IpAddr::V4(*a))
                .chain(i.ipv6.iter().map(|a| IpAddr::V6(*a)))
                .collect();
            // Only pool addresses get a /32 on the host: anything else (a
            // typo, the host's own gateway) could take over a host route.
            for a in &addrs {
                if !ipam.in_pool(a).map_err(|e| e.to_string())? {
                    return Err(format!(
                        "address {a} is outside every pool; allocate or reserve it first"
                    ));
                }
            }
            let handle = match addrs.first() {
                Some(a) => ipam.holder(a).map_err(|e| e.to_string())?,
                None => None,
            };
            let req = AttachRequest {
                host: i.hostname,
                container_id: i.container_id,
                container_iface: "eth0".into(),
                netns: i.netns.path().into(),
                ipv4: i.ipv4,
                ipv6: i.ipv6,
                netgroups: i.netgroups,
                labels: i.labels,
                source: "mesos",
                handle,
            };
            attach(store, &req).map_err(|e| format!("isolate failed while {e}"))?;
            Ok(json!({}))
        }
        Request::Cleanup(c) => {
            // The module sends `release` before `cleanup`: then the addresses'
            // quarantine started before the endpoint left the hosts' sets. It
            // starts again in the very transaction that deletes the record,
            // so that every host applies the removal first, and a cleanup
            // killed at any point leaves either both done or neither.
            let forget = |ep: &netmod_model::Endpoint, ops: Vec<netmod_store::Op>| {
                let released_before = match &ep.handle {
                    Some(handle) => ipam.handle(handle).map_err(|e| e.to_string())?.is_none(),
                    None => true,
                };
                if released_before {
                    let addrs: Vec<IpAddr> = ep.addrs().collect();
                    ipam.restart_quarantine_with(&addrs, &ops)
                        .map(|_| ())
                        .map_err(|e| format!("quarantining {addrs:?} again: {e}"))
                } else {
                    store.txn(&[], &ops).map(|_| ()).map_err(|e| e.to_string())
                }
            };
            let ep = detach_then(store, &c.hostname, &c.container_id, "eth0", &forget)
                .map_err(|errs| format!("cleanup incomplete: {}", errs.join("; ")))?;
            let Some(ep) = ep else {
                return Ok(json!({}));
            };
            // Release what the container's handle still holds, unless `release` came first.
            if let Some(handle) = &ep.handle {
                match ipam.release_handle(handle) {
                    Ok(_) | Err(netmod_ipam::IpamError::UnknownHandle(_)) => {}
                    Err(e) => return Err(format!("cleanup could not release {handle}: {e}")),
                }
            }
            Ok(json!({}))
        }
    }
}
