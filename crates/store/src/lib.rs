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

/// Most events one `changes` call returns unless a single revision has more
/// (a revision is never split across calls); see [`Store::set_feed_page`].
pub const DEFAULT_FEED_PAGE: usize = 20_000;

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
    #[error("invalid store address {0}")]
    BadAddress(String),
    #[error("no datastore at {path}: {reason}")]
    NotFound { path: String, reason: String },
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
    ///
    /// Whole revisions only: the events of one transaction are all in one
    /// answer, so a reader that resumes after the last revision it got never
    /// misses the rest of a transaction. An answer holds at most the feed page
    /// ([`DEFAULT_FEED_PAGE`] events) unless its one revision alone is larger.
    fn changes(&self, prefix: &str, after: Revision, wait: Duration) -> Result<Vec<Event>>;
    /// Set the feed page (see `changes`); tests make it small to exercise paging.
    fn set_feed_page(&self, events: usize);
    /// The most operations one transaction may carry (etcd's default: 128).
    fn max_txn_ops(&self) -> usize;
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

/// A record that could not be read (a newer version's record during an
/// upgrade, or damage): reported and skipped, never fatal to a whole scan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Undecodable {
    pub key: String,
    pub error: String,
}

impl std::fmt::Display for Undecodable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.error)
    }
}

/// Decode every record that can be decoded, in order, each with its
/// key-value; report the others (key and why) instead of failing the lot.
pub fn decode_all<T: serde::de::DeserializeOwned>(
    kvs: &[KeyValue],
) -> (Vec<(&KeyValue, T)>, Vec<Undecodable>) {
    let mut good = Vec::with_capacity(kvs.len());
    let mut bad = Vec::new();
    for kv in kvs {
        match serde_json::from_slice(&kv.value) {
            Ok(v) => good.push((kv, v)),
            Err(e) => bad.push(Undecodable {
                key: kv.key.clone(),
                error: e.to_string(),
            }),
        }
    }
    (good, bad)
}

/// How many of `events` (ordered by revision, whole revisions only) one feed
/// page takes: at most `page`, cut at a revision boundary, or the whole first
/// revision when it alone has more than `page` events.
pub(crate) fn page_len(events: &[Event], page: usize) -> usize {
    let page = page.max(1);
    if events.len() <= page {
        return events.len();
    }
    let next = events[page].revision();
    if events[page - 1].revision() < next {
        return page;
    }
    match events.partition_point(|e| e.revision() < next) {
        0 => events.partition_point(|e| e.revision() <= next),
        cut => cut,
    }
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

/// What a store address may look like, for error messages.
const ADDRESS_FORMS: &str = "a store is a file path, sqlite://PATH, or \
etcd://HOST:PORT[,HOST:PORT...][?prefix=P&ca=FILE&cert=FILE&key=FILE] (TLS is etcd:// with ca=)";

pub fn parse_address(addr: &str) -> Result<StoreAddress> {
    if addr.starts_with("etcd://") {
        return Ok(StoreAddress::Etcd(EtcdAddress::parse(addr)?));
    }
    if let Some(path) = addr.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::BadAddress(format!(
                "{addr:?}: no path after sqlite://"
            )));
        }
        return Ok(StoreAddress::Sqlite(path.into()));
    }
    if let Some((scheme, _)) = addr.split_once("://") {
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme {
            return Err(StoreError::BadAddress(format!(
                "{addr:?}: unknown scheme {scheme}:// ({ADDRESS_FORMS})"
            )));
        }
    }
    if addr.is_empty() {
        return Err(StoreError::BadAddress(format!(
            "\"\": empty ({ADDRESS_FORMS})"
        )));
    }
    Ok(StoreAddress::Sqlite(addr.into()))
}

/// Open the store an address names, creating a SQLite file that does not
/// exist yet (for commands that write). Its directory must exist, except the
/// default path's (`/var/lib/netmod`), which is created: a typo in `--store`
/// is an error, never a new directory tree.
pub fn open(addr: &str) -> Result<Box<dyn Store>> {
    match parse_address(addr)? {
        StoreAddress::Sqlite(path) => {
            if path == std::path::Path::new(DEFAULT_STORE_PATH) {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend {
                        context: format!("creating {}", dir.display()),
                        source: Box::new(e),
                    })?;
                }
            }
            Ok(Box::new(SqliteStore::open(&path)?))
        }
        StoreAddress::Etcd(etcd) => Ok(Box::new(EtcdStore::open(etcd)?)),
    }
}

/// Open a store that must already exist (for commands that only read, or
/// that make sense only on an existing store): never creates a file or a
/// directory. A missing SQLite file is `NotFound`, saying how to create one.
pub fn open_existing(addr: &str) -> Result<Box<dyn Store>> {
    match parse_address(addr)? {
        StoreAddress::Sqlite(path) => Ok(Box::new(SqliteStore::open_existing(&path)?)),
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
        assert_eq!(
            parse_address("sqlite:///tmp/x.db").unwrap(),
            StoreAddress::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            parse_address("./odd/a://b").unwrap(),
            StoreAddress::Sqlite("./odd/a://b".into()),
            "a path with :// inside is still a path"
        );
        assert!(parse_address("etcd://").is_err());
        assert!(parse_address("").is_err());
        assert!(parse_address("sqlite://").is_err());
        for bad in [
            "http://10.0.0.1:2379",
            "etcds://h:2379",
            "https://x",
            "file:///tmp/x.db",
        ] {
            let err = parse_address(bad).unwrap_err().to_string();
            assert!(err.contains("unknown scheme"), "{bad}: {err}");
            assert!(err.contains("etcd://HOST:PORT"), "{bad}: {err}");
        }
    }

    fn ev(key: &str, rev: Revision) -> Event {
        Event::Delete {
            key: key.into(),
            revision: rev,
        }
    }

    #[test]
    fn a_page_ends_at_a_revision_boundary() {
        let revs = [1, 1, 2, 2, 2, 3, 4, 4];
        let events: Vec<Event> = revs.iter().map(|r| ev("k", *r)).collect();
        assert_eq!(page_len(&events, 100), 8, "everything fits");
        assert_eq!(
            page_len(&events, 2),
            2,
            "the page ends where revision 1 does"
        );
        assert_eq!(
            page_len(&events, 3),
            2,
            "revision 2 is not cut: fewer events"
        );
        assert_eq!(page_len(&events, 4), 2);
        assert_eq!(page_len(&events, 5), 5);
        assert_eq!(page_len(&events, 6), 6);
        assert_eq!(page_len(&events, 7), 6, "revision 4 is not cut");
        assert_eq!(
            page_len(&events[2..], 1),
            3,
            "one revision larger than the page comes whole"
        );
        assert_eq!(page_len(&events, 0), 2, "a zero page still makes progress");
        assert_eq!(page_len(&[], 5), 0);
    }

    #[test]
    fn decode_all_keeps_the_good_and_names_the_bad() {
        let kv = |key: &str, value: &str| KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            lease: 0,
        };
        let kvs = [kv("a", "1"), kv("b", "{\"v\": 2}"), kv("c", "3")];
        let (good, bad) = decode_all::<u32>(&kvs);
        let good: Vec<(&str, u32)> = good.iter().map(|(kv, v)| (kv.key.as_str(), *v)).collect();
        assert_eq!(good, [("a", 1), ("c", 3)]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].key, "b");
        assert!(
            bad[0].to_string().starts_with("b: invalid type"),
            "{}",
            bad[0]
        );
    }
}
