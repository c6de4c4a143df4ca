//! The embedded backend: one SQLite file, safe for many short-lived plugin
//! processes at once (WAL, `BEGIN IMMEDIATE`, busy timeout).
//!
//! Durability: `synchronous=NORMAL` in WAL mode. A committed transaction is in
//! the WAL before `COMMIT` returns, so a killed process (kill -9, crash) never
//! loses or half-writes it; only a power cut can lose the last transactions,
//! and never corrupts the file. The node daemon resyncs from whatever survived.

use crate::*;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SCHEMA_VERSION: i64 = 1;
/// History kept for the change feed, in revisions.
const HISTORY: Revision = 20_000;

pub struct SqliteStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    feed_page: AtomicUsize,
}

/// Operations one transaction may carry: a change's id holds its position
/// in the transaction in 16 bits.
const MAX_TXN_OPS: usize = 0xffff;

fn backend(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> StoreError {
    let context = context.into();
    move |e| StoreError::Backend {
        context,
        source: Box::new(e),
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The smallest string greater than every string with this prefix.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

impl SqliteStore {
    /// Open the store at `path`, creating the file (never its directory).
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(StoreError::NotFound {
                    path: path.display().to_string(),
                    reason: format!(
                        "the directory {} does not exist (netmod creates the datastore file, never its directory)",
                        dir.display()
                    ),
                });
            }
        }
        Self::open_with(path, true)
    }

    /// Open the store at `path`, which must exist: creates nothing.
    pub fn open_existing(path: &Path) -> Result<Self> {
        let missing = |reason: &str| {
            StoreError::NotFound {
            path: path.display().to_string(),
            reason: format!(
                "{reason} (create one with `netmod pool add CIDR`, or name another with --store or NETMOD_STORE)"
            ),
        }
        };
        if !path.is_file() {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            return Err(missing(&match dir {
                _ if path.exists() => "it is not a file".to_string(),
                Some(dir) if !dir.is_dir() => format!(
                    "the file does not exist, nor does its directory {}",
                    dir.display()
                ),
                _ => "the file does not exist".to_string(),
            }));
        }
        match Self::open_with(path, false) {
            Err(StoreError::NotFound { .. }) => Err(missing("the file is not a netmod datastore")),
            other => other,
        }
    }

    fn open_with(path: &Path, create: bool) -> Result<Self> {
        let what = format!("opening {}", path.display());
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let mut conn = Connection::open_with_flags(path, flags).map_err(backend(what.clone()))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend(what.clone()))?;
        // Before any pragma that writes: a file that is not ours stays as it is.
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(backend(what.clone()))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                path: path.display().to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        if found == 0 && !create {
            // An existing store always has a schema version; this file is
            // someone else's (or empty), and opening must not change it.
            return Err(StoreError::NotFound {
                path: path.display().to_string(),
                reason: "the file is not a netmod datastore".into(),
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend(what.clone()))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend(what.clone()))?;
        conn.pragma_update(None, "cache_size", -32_000)
            .map_err(backend(what.clone()))?;
        conn.pragma_update(None, "mmap_size", 256 << 20)
            .map_err(backend(what.clone()))?;
        // Short-lived plugin processes must not each checkpoint (and fsync) the
        // WAL on exit; checkpoints happen as the WAL grows.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(backend(what.clone()))?;
        conn.set_prepared_statement_cache_capacity(64);
        if found < SCHEMA_VERSION {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend(what.clone()))?;
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT OR IGNORE INTO meta VALUES ('compacted', 0);
                 -- Rowid tables: values (blocks) run to kilobytes, which WITHOUT ROWID handles badly.
                 CREATE TABLE IF NOT EXISTS kv (
                     key TEXT NOT NULL UNIQUE, value BLOB NOT NULL,
                     create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL,
                     lease INTEGER NOT NULL DEFAULT 0);
                 CREATE INDEX IF NOT EXISTS kv_lease ON kv(lease) WHERE lease != 0;
                 -- One row per changed key; id = revision << 16 | position in the
                 -- transaction. The newest row is never compacted away, so the
                 -- store's revision is max(id) >> 16: no extra page per commit.
                 CREATE TABLE IF NOT EXISTS changes (
                     id INTEGER PRIMARY KEY, key TEXT NOT NULL,
                     value BLOB, create_rev INTEGER NOT NULL, lease INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS leases (
                     id INTEGER PRIMARY KEY, ttl_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
                 PRAGMA user_version = 1;",
            )
            .map_err(backend("creating the schema"))?;
            tx.commit().map_err(backend("creating the schema"))?;
        }
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            feed_page: AtomicUsize::new(DEFAULT_FEED_PAGE),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Delete the keys of expired leases, as etcd does when a lease runs out.
    fn sweep_expired_leases(&self) -> Result<()> {
        let mut conn = self.lock();
        let any: Option<i64> = conn
            .prepare_cached("SELECT id FROM leases WHERE expires_ms < ?1 LIMIT 1")
            .and_then(|mut s| s.query_row([now_ms()], |r| r.get(0)).optional())
            .map_err(backend("reading leases"))?;
        if any.is_none() {
            return Ok(());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend("expiring leases"))?;
        let expired: Vec<i64> = {
            let mut stmt = tx
                .prepare_cached("SELECT id FROM leases WHERE expires_ms < ?1")
                .map_err(backend("expiring leases"))?;
            let rows = stmt
                .query_map([now_ms()], |r| r.get(0))
                .map_err(backend("expiring leases"))?;
            rows.collect::<Result<_, _>>()
                .map_err(backend("expiring leases"))?
        };
        if !expired.is_empty() {
            let rev = bump_revision(&tx)?;
            let mut seq = 0;
            for id in expired {
                delete_lease_keys(&tx, id, rev, &mut seq)?;
            }
        }
        tx.commit().map_err(backend("expiring leases"))
    }
}

const REVISION_SQL: &str = "SELECT coalesce(max(id), 0) >> 16 FROM changes";

fn current_revision(tx: &rusqlite::Transaction) -> Result<Revision> {
    tx.prepare_cached(REVISION_SQL)
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend("reading the revision"))
}

fn bump_revision(tx: &rusqlite::Transaction) -> Result<Revision> {
    Ok(current_revision(tx)? + 1)
}

fn delete_key(tx: &rusqlite::Transaction, key: &str, rev: Revision, seq: &mut i64) -> Result<()> {
    let n = tx
        .prepare_cached("DELETE FROM kv WHERE key = ?1")
        .and_then(|mut s| s.execute([key]))
        .map_err(backend(format!("deleting {key}")))?;
    if n > 0 {
        record_change(tx, rev, seq, key, None, 0, 0)?;
    }
    Ok(())
}

fn delete_lease_keys(
    tx: &rusqlite::Transaction,
    lease: LeaseId,
    rev: Revision,
    seq: &mut i64,
) -> Result<()> {
    let keys: Vec<String> = {
        let mut stmt = tx
            .prepare_cached("SELECT key FROM kv WHERE lease = ?1")
            .map_err(backend("reading lease keys"))?;
        let rows = stmt
            .query_map([lease], |r| r.get(0))
            .map_err(backend("reading lease keys"))?;
        rows.collect::<Result<_, _>>()
            .map_err(backend("reading lease keys"))?
    };
    for key in keys {
        delete_key(tx, &key, rev, seq)?;
    }
    tx.prepare_cached("DELETE FROM leases WHERE id = ?1")
        .and_then(|mut s| s.execute([lease]))
        .map_err(backend("deleting lease"))?;
    Ok(())
}

fn record_change(
    tx: &rusqlite::Transaction,
    rev: Revision,
    seq: &mut i64,
    key: &str,
    value: Option<&[u8]>,
    create_rev: Revision,
    lease: LeaseId,
) -> Result<()> {
    *seq += 1;
    if *seq > MAX_TXN_OPS as i64 {
        return Err(StoreError::Backend {
            context: "recording a change".into(),
            source: "more than 65535 operations in one transaction".into(),
        });
    }
    tx.prepare_cached("INSERT INTO changes VALUES (?1, ?2, ?3, ?4, ?5)")
        .and_then(|mut s| s.execute(params![rev << 16 | *seq, key, value, create_rev, lease]))
        .map_err(backend("recording a change"))?;
    Ok(())
}

fn row_to_kv(r: &rusqlite::Row) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        value: r.get(1)?,
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
        lease: r.get(4)?,
    })
}

impl Store for SqliteStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let conn = self.lock();
        conn.prepare_cached("SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key = ?1")
            .and_then(|mut s| s.query_row([key], row_to_kv).optional())
            .map_err(backend(format!("reading {key}")))
    }

    fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let mut conn = self.lock();
        // A read transaction so the rows and the revision are one snapshot.
        let tx = conn.transaction().map_err(backend("reading a range"))?;
        let rev: Revision = tx
            .prepare_cached(REVISION_SQL)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(backend("reading the revision"))?;
        let end = prefix_end(prefix).unwrap_or_else(|| "\u{7f}".repeat(4));
        let rows = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT key, value, create_rev, mod_rev, lease FROM kv
                     WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )
                .map_err(backend(format!("reading {prefix}*")))?;
            let rows = stmt
                .query_map([prefix, end.as_str()], row_to_kv)
                .map_err(backend(format!("reading {prefix}*")))?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(backend(format!("reading {prefix}*")))?
        };
        tx.commit().map_err(backend("reading a range"))?;
        Ok((rows, rev))
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let conn = self.lock();
        let end = prefix_end(prefix).unwrap_or_else(|| "\u{7f}".repeat(4));
        let mut stmt = conn
            .prepare_cached("SELECT key FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key")
            .map_err(backend(format!("listing {prefix}*")))?;
        let rows = stmt
            .query_map([prefix, end.as_str()], |r| r.get(0))
            .map_err(backend(format!("listing {prefix}*")))?;
        rows.collect::<Result<Vec<String>, _>>()
            .map_err(backend(format!("listing {prefix}*")))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend("starting a transaction"))?;
        for Compare::ModRevision { key, revision } in compares {
            let found: Revision = tx
                .prepare_cached("SELECT mod_rev FROM kv WHERE key = ?1")
                .and_then(|mut s| s.query_row([key], |r| r.get(0)).optional())
                .map_err(backend(format!("comparing {key}")))?
                .unwrap_or(0);
            if found != *revision {
                let rev = tx
                    .prepare_cached(REVISION_SQL)
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(backend("reading the revision"))?;
                return Ok(TxnOutcome {
                    succeeded: false,
                    revision: rev,
                });
            }
        }
        let rev = bump_revision(&tx)?;
        let mut seq = 0;
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let lease = lease.unwrap_or(0);
                    if lease != 0 {
                        let exists: Option<i64> = tx
                            .prepare_cached("SELECT id FROM leases WHERE id = ?1")
                            .and_then(|mut s| s.query_row([lease], |r| r.get(0)).optional())
                            .map_err(backend("checking a lease"))?;
                        if exists.is_none() {
                            return Err(StoreError::LeaseNotFound(lease));
                        }
                    }
                    let create_rev: Revision = tx
                        .prepare_cached(
                            "INSERT INTO kv (key, value, create_rev, mod_rev, lease) VALUES (?1, ?2, ?3, ?3, ?4)
                             ON CONFLICT(key) DO UPDATE SET value = ?2, mod_rev = ?3, lease = ?4
                             RETURNING create_rev",
                        )
                        .and_then(|mut s| {
                            s.query_row(params![key, value, rev, lease], |r| r.get(0))
                        })
                        .map_err(backend(format!("writing {key}")))?;
                    record_change(&tx, rev, &mut seq, key, Some(value), create_rev, lease)?;
                }
                Op::Delete { key } => delete_key(&tx, key, rev, &mut seq)?,
            }
        }
        if rev % 1000 == 0 && rev > HISTORY {
            compact_in(&tx, rev - HISTORY)?;
        }
        tx.commit().map_err(backend("committing"))?;
        Ok(TxnOutcome {
            succeeded: true,
            revision: rev,
        })
    }

    fn changes(&self, prefix: &str, after: Revision, wait: Duration) -> Result<Vec<Event>> {
        let deadline = Instant::now() + wait;
        let end = prefix_end(prefix).unwrap_or_else(|| "\u{7f}".repeat(4));
        let page = self.feed_page.load(Ordering::Relaxed).max(1);
        loop {
            self.sweep_expired_leases()?;
            {
                let mut conn = self.lock();
                // One read snapshot: history, the page and the rest of its
                // last revision agree.
                let tx = conn.transaction().map_err(backend("reading changes"))?;
                let events = read_changes(&tx, prefix, &end, after, page)?;
                tx.commit().map_err(backend("reading changes"))?;
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            std::thread::sleep(Duration::from_millis(10).min(wait));
        }
    }

    fn set_feed_page(&self, events: usize) {
        self.feed_page.store(events.max(1), Ordering::Relaxed);
    }

    fn max_txn_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    fn revision(&self) -> Result<Revision> {
        let conn = self.lock();
        conn.prepare_cached(REVISION_SQL)
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(backend("reading the revision"))
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend("compacting"))?;
        compact_in(&tx, revision)?;
        tx.commit().map_err(backend("compacting"))
    }

    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        let conn = self.lock();
        let ttl_ms = ttl.as_millis() as i64;
        conn.prepare_cached("INSERT INTO leases (ttl_ms, expires_ms) VALUES (?1, ?2) RETURNING id")
            .and_then(|mut s| s.query_row(params![ttl_ms, now_ms() + ttl_ms], |r| r.get(0)))
            .map_err(backend("granting a lease"))
    }

    fn lease_keepalive(&self, lease: LeaseId) -> Result<()> {
        self.sweep_expired_leases()?;
        let conn = self.lock();
        let n = conn
            .prepare_cached("UPDATE leases SET expires_ms = ?2 + ttl_ms WHERE id = ?1")
            .and_then(|mut s| s.execute(params![lease, now_ms()]))
            .map_err(backend("renewing a lease"))?;
        if n == 0 {
            return Err(StoreError::LeaseNotFound(lease));
        }
        Ok(())
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend("revoking a lease"))?;
        let rev = bump_revision(&tx)?;
        let mut seq = 0;
        delete_lease_keys(&tx, lease, rev, &mut seq)?;
        tx.commit().map_err(backend("revoking a lease"))
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}

/// The changes under a prefix after `after`: at most `page` events cut at a
/// revision boundary, or one whole revision when it alone has more.
fn read_changes(
    tx: &rusqlite::Transaction,
    prefix: &str,
    end: &str,
    after: Revision,
    page: usize,
) -> Result<Vec<Event>> {
    let compacted: Revision = tx
        .prepare_cached("SELECT value FROM meta WHERE name = 'compacted'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(backend("reading history"))?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    let query = |from_id: i64, to_id: i64, limit: i64| -> Result<Vec<Event>> {
        let mut stmt = tx
            .prepare_cached(
                "SELECT id >> 16, key, value, create_rev, lease FROM changes
                 WHERE id >= ?1 AND id < ?2 AND key >= ?3 AND key < ?4 ORDER BY id LIMIT ?5",
            )
            .map_err(backend("reading changes"))?;
        let rows = stmt
            .query_map(params![from_id, to_id, prefix, end, limit], |r| {
                let rev: Revision = r.get(0)?;
                let key: String = r.get(1)?;
                let value: Option<Vec<u8>> = r.get(2)?;
                Ok(match value {
                    Some(value) => Event::Put(KeyValue {
                        key,
                        value,
                        create_revision: r.get(3)?,
                        mod_revision: rev,
                        lease: r.get(4)?,
                    }),
                    None => Event::Delete { key, revision: rev },
                })
            })
            .map_err(backend("reading changes"))?;
        rows.collect::<Result<_, _>>()
            .map_err(backend("reading changes"))
    };
    // One event more than the page says whether the page's last revision goes on.
    let mut events = query((after + 1) << 16, i64::MAX, page as i64 + 1)?;
    if events.len() > page {
        let first = events[0].revision();
        if events[page].revision() == first {
            // One revision larger than the page: all of it, however large.
            return query(first << 16, (first + 1) << 16, -1);
        }
        events.truncate(page_len(&events, page));
    }
    Ok(events)
}

fn compact_in(tx: &rusqlite::Transaction, revision: Revision) -> Result<()> {
    tx.prepare_cached("DELETE FROM changes WHERE id < ?1 AND id < (SELECT max(id) FROM changes)")
        .and_then(|mut s| s.execute([(revision + 1) << 16]))
        .map_err(backend("compacting"))?;
    tx.prepare_cached("UPDATE meta SET value = max(value, ?1) WHERE name = 'compacted'")
        .and_then(|mut s| s.execute([revision]))
        .map_err(backend("compacting"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end("blocks/").as_deref(), Some("blocks0"));
        assert_eq!(prefix_end("").as_deref(), None);
    }

    #[test]
    fn sqlite_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = 0;
        crate::conformance::run_all(&mut || {
            n += 1;
            Box::new(SqliteStore::open(&dir.path().join(format!("c{n}.db"))).unwrap())
        });
    }

    #[test]
    fn open_never_creates_a_directory_and_open_existing_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("no/such/dir/x.db");
        let err = SqliteStore::open(&deep).err().unwrap().to_string();
        assert!(err.contains("no/such/dir does not exist"), "{err}");
        assert!(!dir.path().join("no").exists(), "no directory was made");
        let missing = dir.path().join("x.db");
        let err = SqliteStore::open_existing(&missing)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("does not exist") && err.contains("netmod pool add"),
            "{err}"
        );
        assert!(!missing.exists(), "no file was made");
        std::fs::write(&missing, b"").unwrap();
        let err = SqliteStore::open_existing(&missing)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a netmod datastore"), "{err}");
        assert_eq!(
            std::fs::metadata(&missing).unwrap().len(),
            0,
            "left as it was"
        );
        std::fs::remove_file(&missing).unwrap();
        let s = SqliteStore::open(&missing).unwrap();
        s.txn(&[], &[Op::put("k", "v")]).unwrap();
        drop(s);
        let s = SqliteStore::open_existing(&missing).unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().value, b"v");
    }

    #[test]
    fn newer_schema_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 7).unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).err().unwrap();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found: 7, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade netmod"));
    }
}
