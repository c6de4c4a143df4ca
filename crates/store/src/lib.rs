//! The datastore: one `Store` trait (a revisioned key-value space with
//! compare-and-swap transactions, a change feed and leases) and its backends.
//!
//! Only this crate talks to the datastore. Its semantics follow etcd v3 so that
//! the SQLite backend (one machine) and the etcd backend (many) are
//! interchangeable; `conformance` holds the suite both must pass.

pub mod conformance;
mod etcd;
pub mod etcd_server;
mod sqlite;

pub use etcd::{EtcdAddress, EtcdStore};
pub use sqlite::SqliteStore;

use std::time::Duration;

/// A store-wide revision. Every successful write transaction gets a new one.
pub type Revision = i64;
pub type LeaseId = i64;

/// Where the embedded store lives unless `--store` / `NETMOD_STORE` says otherwise.
pub const DEFAULT_STORE_PATH: &str = "/var/lib/netmod/netmod.db";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub lease: LeaseId,
}

/// A condition a transaction checks before writing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod revision equals this; 0 means "the key does not exist".
    ModRevision { key: String, revision: Revision },
}

impl Compare {
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::ModRevision {
            key: key.into(),
            revision: 0,
        }
    }
    pub fn unchanged(kv: &KeyValue) -> Self {
        Compare::ModRevision {
            key: kv.key.clone(),
            revision: kv.mod_revision,
        }
    }
    /// Unchanged since read, or still absent when it was absent.
    pub fn as_read(key: &str, read: Option<&KeyValue>) -> Self {
        Compare::ModRevision {
            key: key.to_string(),
            revision: read.map_or(0, |kv| kv.mod_revision),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// False when a compare failed; then nothing was written.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, revision: Revision },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach the datastore at {endpoints}: {reason}")]
    Unavailable { endpoints: String, reason: String },
    #[error("the datastore at {path} has schema version {found}, newer than this netmod understands ({supported}); upgrade netmod")]
    SchemaTooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("revision {requested} has been compacted (oldest kept: {compacted}); resync from a full read")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("lease {0} not found or expired")]
    LeaseNotFound(LeaseId),
    #[error("transaction conflicted {attempts} times in a row; the datastore is too busy")]
    TooMuchContention { attempts: u32 },
    #[error("datastore error: {context}")]
    Backend {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("stored value at {key} is not valid: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid store address {0:?}")]
    BadAddress(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A revisioned key-value store with etcd v3 semantics.
pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// Every key starting with `prefix`, sorted by key, and the revision they were read at.
    fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)>;
    /// The keys (only) starting with `prefix`, sorted.
    fn keys(&self, prefix: &str) -> Result<Vec<String>>;
    /// Check every compare; if all hold, apply every op atomically under one new revision.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome>;
    /// Changes to keys under `prefix` after revision `after`, waiting up to `wait`
    /// for the first one. `Compacted` when `after` is older than the kept history.
    fn changes(&self, prefix: &str, after: Revision, wait: Duration) -> Result<Vec<Event>>;
    fn revision(&self) -> Result<Revision>;
    /// Drop history at or below `revision`.
    fn compact(&self, revision: Revision) -> Result<()>;
    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId>;
    fn lease_keepalive(&self, lease: LeaseId) -> Result<()>;
    /// Revoke a lease and delete its keys. Revoking an unknown lease is not an error.
    fn lease_revoke(&self, lease: LeaseId) -> Result<()>;
    /// A human description ("sqlite /var/lib/netmod/netmod.db").
    fn describe(&self) -> String;
}

/// Read a JSON value.
pub fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(&kv.value).map_err(|source| StoreError::Corrupt {
        key: kv.key.clone(),
        source,
    })
}

pub fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("plain data serialises")
}

/// The store named by `--store`, `NETMOD_STORE`, or the default path.
pub fn store_address(flag: Option<&str>) -> String {
    flag.map(str::to_string)
        .or_else(|| std::env::var("NETMOD_STORE").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| DEFAULT_STORE_PATH.to_string())
}

/// Which backend an address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAddress {
    Sqlite(std::path::PathBuf),
    Etcd(EtcdAddress),
}

pub fn parse_address(addr: &str) -> Result<StoreAddress> {
    if addr.starts_with("etcd://") {
        Ok(StoreAddress::Etcd(EtcdAddress::parse(addr)?))
    } else {
        let path = addr.strip_prefix("sqlite://").unwrap_or(addr);
        if path.is_empty() {
            return Err(StoreError::BadAddress(addr.to_string()));
        }
        Ok(StoreAddress::Sqlite(path.into()))
    }
}

/// Open the store an address names.
pub fn open(addr: &str) -> Result<Box<dyn Store>> {
    match parse_address(addr)? {
        StoreAddress::Sqlite(path) => Ok(Box::new(SqliteStore::open(&path)?)),
        StoreAddress::Etcd(etcd) => Ok(Box::new(EtcdStore::open(etcd)?)),
    }
}

/// Run a read-modify-write closure until its transaction commits (bounded).
pub fn retry_txn<T>(
    mut attempt: impl FnMut() -> Result<Option<T>>,
    max_attempts: u32,
) -> Result<T> {
    for n in 0..max_attempts {
        if let Some(v) = attempt()? {
            return Ok(v);
        }
        if n > 4 {
            std::thread::sleep(Duration::from_micros(200 * u64::from(n)));
        }
    }
    Err(StoreError::TooMuchContention {
        attempts: max_attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        match parse_address("etcd://127.0.0.1:2379,127.0.0.1:22379").unwrap() {
            StoreAddress::Etcd(a) => {
                assert_eq!(a.endpoints, ["127.0.0.1:2379", "127.0.0.1:22379"]);
                assert_eq!(a.prefix, "/netmod/");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_address("/tmp/x.db").unwrap(),
            StoreAddress::Sqlite("/tmp/x.db".into())
        );
        assert!(parse_address("etcd://").is_err());
        assert!(parse_address("").is_err());
    }
}
