//! The CNI door: `netmod` run with `CNI_COMMAND` set is a CNI 1.1 plugin
//! (ADD, DEL, CHECK, STATUS, VERSION, GC) over the same ipam, policy and
//! dataplane code as `netmod mesos`.

pub(crate) mod config;
mod result;

use config::{Env, NetConf};
use netmod_core::attach::{attach, detach, AttachRequest};
use netmod_core::registry::Registry;
use netmod_ipam::{AllocRequest, Ipam, IpamError};
use netmod_model::{AllocAttrs, Endpoint};
use netmod_store::Store;
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;

/// A CNI error object: a spec error code, a message and details.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    pub fn version(msg: impl Into<String>) -> Self {
        Self::new(1, msg)
    }
    pub fn container(msg: impl Into<String>) -> Self {
        Self::new(3, msg)
    }
    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(4, msg)
    }
    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(6, msg)
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(7, msg)
    }
    pub fn try_later(msg: impl Into<String>) -> Self {
        Self::new(11, msg)
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        Self::new(50, msg)
    }
    /// Plugin-specific failures (codes 100 and up).
    pub fn plugin(msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code: 100,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Run one CNI command from the environment and stdin; return the exit status.
pub fn main() -> i32 {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = Vec::new();
    let _ = std::io::stdin()
        .take(MAX_CONFIG_BYTES)
        .read_to_end(&mut stdin);
    let version = config::peek_version(&stdin);
    match run(&command, &stdin) {
        Ok(Some(out)) => {
            println!("{out}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            println!(
                "{}",
                json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details})
            );
            1
        }
    }
}

fn run(command: &str, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if command == "VERSION" {
        return Ok(Some(json!({
            "cniVersion": "1.1.0",
            "supportedVersions": config::SUPPORTED,
        })));
    }
    if !matches!(command, "ADD" | "DEL" | "CHECK" | "STATUS" | "GC") {
        return Err(CniError::env(format!(
            "CNI_COMMAND {command:?} is not one of ADD, DEL, CHECK, STATUS, VERSION, GC"
        )));
    }
    let env = Env::from_process()?;
    let conf = config::parse(stdin, &env)?;
    let store = open_store(&conf)?;
    let host = hostname(&conf)?;
    let ctx = Ctx {
        store: &*store,
        conf: &conf,
        env: &env,
        host,
    };
    match command {
        "ADD" => ctx.add().map(Some),
        "DEL" => ctx.del().map(|_| None),
        "CHECK" => ctx.check().map(|_| None),
        "STATUS" => ctx.status().map(|_| None),
        _ => ctx.gc().map(|_| None),
    }
}

fn open_store(conf: &NetConf) -> Result<Box<dyn Store>, CniError> {
    let addr = netmod_store::store_address(conf.store.as_deref());
    netmod_store::open(&addr).map_err(|e| match e {
        // A store that cannot be (a typo in "store") is the config's fault.
        netmod_store::StoreError::BadAddress(_) | netmod_store::StoreError::NotFound { .. } => {
            CniError::config(format!("datastore: {e}"))
        }
        e => CniError::try_later(format!("datastore: {e}")),
    })
}

fn hostname(conf: &NetConf) -> Result<String, CniError> {
    if let Some(h) = conf
        .hostname
        .clone()
        .or_else(|| std::env::var("NETMOD_HOSTNAME").ok())
    {
        return Ok(h);
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .map_err(|e| CniError::new(5, format!("reading the hostname: {e}")))
}

struct Ctx<'a> {
    store: &'a dyn Store,
    conf: &'a NetConf,
    env: &'a Env,
    host: String,
}

impl Ctx<'_> {
    fn handle(&self, container_id: &str, ifname: &str) -> String {
        format!("cni/{}/{container_id}/{ifname}", self.conf.name)
    }

    fn add(&self) -> Result<Value, CniError> {
        let cid = self.env.require_container()?;
        let ifname = self.env.require_ifname()?;
        let netns = self
            .env
            .netns
            .as_deref()
            .ok_or_else(|| CniError::env("CNI_NETNS is not set"))?;
        if !netns.exists() {
            return Err(CniError::container(format!(
                "the container's network namespace {} does not exist",
                netns.display()
            )));
        }
        let registry = Registry::new(self.store);
        // ADD again for a live attachment: the same answer, nothing new.
        if let Some(ep) = registry
            .endpoint(&self.host, cid, ifname)
            .map_err(store_err)?
        {
            if Path::new(&ep.netns) == netns {
                return Ok(result::render(&self.conf.cni_version, &ep));
            }
            return Err(CniError::plugin(
                format!(
                    "container {cid} already has {ifname} on network {} in another namespace",
                    self.conf.name
                ),
                format!("recorded namespace {}", ep.netns),
            ));
        }
        let ipam = Ipam::new(self.store);
        if let Some(pool) = self.conf.pool {
            let known = ipam.pools().map_err(ipam_err)?;
            if !known.iter().any(|p| p.cidr == pool) {
                let forbidden = crate::ops::host_networks(&pool)
                    .map_err(|e| CniError::plugin(e.to_string(), ""))?;
                ipam.add_pool_checked(pool, None, netmod_ipam::DEFAULT_QUARANTINE_SECS, &forbidden)
                    .map_err(ipam_err)?;
            }
        }
        let handle = self.handle(cid, ifname);
        let attrs = AllocAttrs {
            host: self.host.clone(),
            netgroups: self.conf.netgroups.clone(),
            labels: self.conf.labels.clone(),
        };
        let got = ipam
            .allocate(&AllocRequest {
                handle: handle.clone(),
                attrs,
                num_ipv4: u32::from(self.conf.ipv4),
                num_ipv6: u32::from(self.conf.ipv6),
                static_addrs: Vec::new(),
                pool: self.conf.pool,
            })
            .map_err(ipam_err)?;
        let req = AttachRequest {
            host: self.host.clone(),
            container_id: cid.to_string(),
            container_iface: ifname.to_string(),
            netns: netns.to_path_buf(),
            ipv4: got.ipv4,
            ipv6: got.ipv6,
            netgroups: self.conf.netgroups.clone(),
            labels: self.conf.labels.clone(),
            source: "cni",
            handle: Some(handle.clone()),
        };
        match attach(self.store, &req) {
            Ok(ep) => Ok(result::render(&self.conf.cni_version, &ep)),
            Err(e) => {
                let _ = ipam.release_handle(&handle);
                Err(CniError::plugin(
                    format!("attaching {cid} failed while {}", e.step),
                    e.reason,
                ))
            }
        }
    }

    fn del(&self) -> Result<(), CniError> {
        let cid = self.env.require_container()?;
        let ifname = self.env.require_ifname()?;
        detach(self.store, &self.host, cid, ifname).map_err(|errs| {
            CniError::plugin(
                format!("detaching {cid} left something behind"),
                errs.join("; "),
            )
        })?;
        match Ipam::new(self.store).release_handle(&self.handle(cid, ifname)) {
            Ok(_) | Err(IpamError::UnknownHandle(_)) => Ok(()),
            Err(e) => Err(ipam_err(e)),
        }
    }

    /// Verify the attachment against its record; say what differs.
    fn check(&self) -> Result<(), CniError> {
        let cid = self.env.require_container()?;
        let ifname = self.env.require_ifname()?;
        let Some(ep) = Registry::new(self.store)
            .endpoint(&self.host, cid, ifname)
            .map_err(store_err)?
        else {
            return Err(CniError::container(format!(
                "no attachment of {cid} {ifname} on {}",
                self.host
            )));
        };
        let problems = netmod_core::attach::verify(&ep);
        if problems.is_empty() {
            return Ok(());
        }
        Err(CniError::plugin(
            format!("attachment of {cid} {ifname} differs from its record"),
            problems.join("; "),
        ))
    }

    fn status(&self) -> Result<(), CniError> {
        let pools = Ipam::new(self.store)
            .pools()
            .map_err(|e| CniError::unavailable(format!("datastore: {e}")))?;
        if pools.is_empty() && self.conf.pool.is_none() {
            return Err(CniError::unavailable(
                "no address pool is configured (add one with `netmod pool add`, or set \"pool\")",
            ));
        }
        Ok(())
    }

    /// Release whatever no valid attachment holds on this network and host.
    fn gc(&self) -> Result<(), CniError> {
        let Some(valid) = &self.conf.valid_attachments else {
            return Err(CniError::config("GC needs \"cni.dev/valid-attachments\""));
        };
        let is_valid = |cid: &str, ifname: &str| valid.iter().any(|(c, i)| c == cid && i == ifname);
        let mine = |ep: &Endpoint| {
            ep.host == self.host
                && ep.source == "cni"
                && ep.labels.get("cni.network") == Some(&self.conf.name)
        };
        let registry = Registry::new(self.store);
        let mut errors = Vec::new();
        for ep in registry.endpoints().map_err(store_err)? {
            if mine(&ep) && !is_valid(&ep.container_id, &ep.container_iface) {
                if let Err(errs) = detach(
                    self.store,
                    &self.host,
                    &ep.container_id,
                    &ep.container_iface,
                ) {
                    errors.extend(errs);
                }
            }
        }
        let ipam = Ipam::new(self.store);
        let prefix = format!("cni/{}/", self.conf.name);
        for rec in ipam.handles().map_err(ipam_err)? {
            let Some(rest) = rec.handle.strip_prefix(&prefix) else {
                continue;
            };
            let Some((cid, ifname)) = rest.rsplit_once('/') else {
                continue;
            };
            if rec.attrs.host == self.host && !is_valid(cid, ifname) {
                if let Err(e) = ipam.release_handle(&rec.handle) {
                    errors.push(e.to_string());
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(CniError::plugin(
                "garbage collection was incomplete",
                errors.join("; "),
            ))
        }
    }
}

fn store_err(e: netmod_store::StoreError) -> CniError {
    CniError::try_later(format!("datastore: {e}"))
}

fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Store(e) => store_err(e),
        other => CniError::plugin(other.to_string(), ""),
    }
}
