//! Endpoint and host records in the datastore, with the indexes that keep
//! addresses unique across the cluster and netgroup membership cheap to read.
//!
//! Keys:
//! - `endpoints/<host>/<container id>/<iface>` → Endpoint
//! - `addrs/<ip>` → the endpoint key holding that address (uniqueness)
//! - `netgroups/<group>/<ip>` → "" (members of a netgroup, on every host)
//! - `hosts/<name>` → Host, under the node's lease (liveness)

use netmod_model::{Endpoint, Host};
use netmod_store::{decode, encode, Compare, LeaseId, Op, Store, StoreError};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const ENDPOINTS: &str = "endpoints/";
pub const ADDRS: &str = "addrs/";
pub const NETGROUPS: &str = "netgroups/";
pub const HOSTS: &str = "hosts/";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("container {container_id} already has {iface} on host {host}; clean it up first")]
    AlreadyAttached {
        host: String,
        container_id: String,
        iface: String,
    },
    #[error("address {addr} is already on endpoint {holder}")]
    AddressInUse { addr: IpAddr, holder: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Keys must not be split by a `/` inside an id.
fn esc(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

pub fn endpoint_key(host: &str, container_id: &str, iface: &str) -> String {
    format!(
        "{ENDPOINTS}{}/{}/{}",
        esc(host),
        esc(container_id),
        esc(iface)
    )
}

fn addr_key(addr: &IpAddr) -> String {
    format!("{ADDRS}{addr}")
}

fn member_key(group: &str, addr: &IpAddr) -> String {
    format!("{NETGROUPS}{group}/{addr}")
}

pub fn host_key(name: &str) -> String {
    format!("{HOSTS}{}", esc(name))
}

pub struct Registry<'a> {
    pub store: &'a dyn Store,
}

impl<'a> Registry<'a> {
    pub fn new(store: &'a dyn Store) -> Self {
        Registry { store }
    }

    /// Record a new endpoint, atomically with its address and netgroup
    /// indexes. Refused if the container already has this interface or an
    /// address is on another endpoint.
    pub fn create_endpoint(&self, ep: &Endpoint) -> Result<(), RegistryError> {
        let key = endpoint_key(&ep.host, &ep.container_id, &ep.container_iface);
        let mut compares = vec![Compare::absent(&key)];
        let mut ops = vec![Op::put(&key, encode(ep))];
        for a in ep.addrs() {
            compares.push(Compare::absent(addr_key(&a)));
            ops.push(Op::put(addr_key(&a), key.clone()));
            for g in &ep.netgroups {
                ops.push(Op::put(member_key(g, &a), Vec::new()));
            }
        }
        if self.store.txn(&compares, &ops)?.succeeded {
            return Ok(());
        }
        if self.store.get(&key)?.is_some() {
            return Err(RegistryError::AlreadyAttached {
                host: ep.host.clone(),
                container_id: ep.container_id.clone(),
                iface: ep.container_iface.clone(),
            });
        }
        for a in ep.addrs() {
            if let Some(kv) = self.store.get(&addr_key(&a))? {
                return Err(RegistryError::AddressInUse {
                    addr: a,
                    holder: String::from_utf8_lossy(&kv.value)
                        .trim_start_matches(ENDPOINTS)
                        .to_string(),
                });
            }
        }
        // It changed under us and changed back: one more try.
        if self.store.txn(&compares, &ops)?.succeeded {
            return Ok(());
        }
        Err(StoreError::TooMuchContention { attempts: 2 }.into())
    }

    /// Remove an endpoint record and its indexes (only index entries that still
    /// point at this endpoint).
    pub fn delete_endpoint(&self, ep: &Endpoint) -> Result<(), StoreError> {
        let ops = self.delete_endpoint_ops(ep)?;
        self.store.txn(&[], &ops)?;
        Ok(())
    }

    /// The operations that remove an endpoint record and its indexes, for a
    /// caller that commits them together with its own (see `attach::detach_then`).
    pub fn delete_endpoint_ops(&self, ep: &Endpoint) -> Result<Vec<Op>, StoreError> {
        let key = endpoint_key(&ep.host, &ep.container_id, &ep.container_iface);
        let mut ops = vec![Op::delete(&key)];
        for a in ep.addrs() {
            if let Some(kv) = self.store.get(&addr_key(&a))? {
                if kv.value == key.as_bytes() {
                    ops.push(Op::delete(addr_key(&a)));
                }
            }
            for g in &ep.netgroups {
                ops.push(Op::delete(member_key(g, &a)));
            }
        }
        Ok(ops)
    }

    pub fn endpoint(
        &self,
        host: &str,
        container_id: &str,
        iface: &str,
    ) -> Result<Option<Endpoint>, StoreError> {
        match self.store.get(&endpoint_key(host, container_id, iface))? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every endpoint record. One that cannot be read (a newer version's,
    /// during an upgrade) is reported on stderr and skipped, never failing
    /// the whole list.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let (kvs, _) = self.store.range(ENDPOINTS)?;
        let (good, bad) = netmod_store::decode_all::<Endpoint>(&kvs);
        for b in bad {
            eprintln!("netmod: skipping an unreadable endpoint record: {b}");
        }
        Ok(good.into_iter().map(|(_, e)| e).collect())
    }

    /// Addresses of a netgroup's members, on every host.
    pub fn group_members(&self, group: &str) -> Result<Vec<IpAddr>, StoreError> {
        let prefix = format!("{NETGROUPS}{group}/");
        Ok(self
            .store
            .keys(&prefix)?
            .iter()
            .filter_map(|k| k[prefix.len()..].parse().ok())
            .collect())
    }

    pub fn hosts(&self) -> Result<BTreeMap<String, Host>, StoreError> {
        let (kvs, _) = self.store.range(HOSTS)?;
        kvs.iter()
            .map(|kv| decode::<Host>(kv).map(|h| (h.name.clone(), h)))
            .collect()
    }

    /// Announce a live host under a lease.
    pub fn register_host(&self, host: &Host, lease: LeaseId) -> Result<(), StoreError> {
        self.store.txn(
            &[],
            &[Op::Put {
                key: host_key(&host.name),
                value: encode(host),
                lease: Some(lease),
            }],
        )?;
        Ok(())
    }
}
