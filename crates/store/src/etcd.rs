//! The etcd v3 backend: one etcd (cluster) shared by many machines.
//!
//! The trait is synchronous; each store owns a small tokio runtime (one
//! worker, which also keeps watch streams drained between calls) and blocks
//! on it. Nothing touches the network until the first call. Every call is
//! bounded: a store that cannot reach etcd answers `Unavailable`, naming the
//! endpoints and what each did, within `CALL_TIMEOUT` (4.5 s).
//!
//! Every key gets the address's prefix (default `/netmod/`), so several
//! clusters can share one etcd. Revisions, compaction and lease ids are
//! etcd's own and so are shared by everything on that etcd: `revision()` also
//! moves when another cluster writes, and `compact` drops every cluster's
//! history.

use crate::*;
use etcd_client as ec;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;
use tonic::Code;

pub const DEFAULT_PREFIX: &str = "/netmod/";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One request to one endpoint, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// One call, every endpoint it tries included.
const CALL_TIMEOUT: Duration = Duration::from_millis(4500);
/// A watch that starts in the past gets its history from etcd's watcher sync
/// loop, which runs every 100 ms; a fresh feed waits this long for it.
const HISTORY_GRACE: Duration = Duration::from_millis(300);
/// History kept for the change feed, in revisions (as the SQLite backend).
const HISTORY: Revision = 20_000;
/// Large enough for a range over every block of a big pool.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// `etcd://HOST:PORT[,HOST:PORT…][?prefix=P&ca=FILE&cert=FILE&key=FILE]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAddress {
    pub endpoints: Vec<String>,
    /// Prepended to every key; always ends with `/`.
    pub prefix: String,
    /// TLS: the CA that signed the server's certificate...
    pub ca: Option<PathBuf>,
    /// ...and the client's certificate and key, when etcd asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl EtcdAddress {
    pub fn parse(addr: &str) -> Result<Self> {
        let bad = |why: &str| StoreError::BadAddress(format!("{addr}: {why}"));
        let rest = addr
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("not an etcd:// address"))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let endpoints: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(bad("no HOST:PORT"));
        }
        for ep in &endpoints {
            let port = ep.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            if ep.contains('/') || !matches!(port, Some(Ok(_))) {
                return Err(bad(&format!("endpoint {ep:?} is not HOST:PORT")));
            }
        }
        let mut a = EtcdAddress {
            endpoints,
            prefix: DEFAULT_PREFIX.into(),
            ca: None,
            cert: None,
            key: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| bad("bad %-escape"))?;
            match name {
                "prefix" => a.prefix = value,
                "ca" => a.ca = Some(value.into()),
                "cert" => a.cert = Some(value.into()),
                "key" => a.key = Some(value.into()),
                other => {
                    return Err(bad(&format!(
                        "unknown option {other:?} (known: prefix, ca, cert, key)"
                    )))
                }
            }
        }
        if !a.prefix.ends_with('/') {
            a.prefix.push('/');
        }
        if a.cert.is_some() != a.key.is_some() {
            return Err(bad("cert and key go together"));
        }
        if a.cert.is_some() && a.ca.is_none() {
            return Err(bad("a client cert needs ca= too"));
        }
        Ok(a)
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

pub struct EtcdStore {
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    addr: EtcdAddress,
    /// One client per endpoint, each connecting on first use. Calls go to
    /// `current` and move on to the next endpoint when it cannot be reached.
    clients: Vec<ec::Client>,
    current: AtomicUsize,
    /// One watch per prefix that `changes` was asked about, kept across calls.
    feeds: Mutex<HashMap<String, Arc<Mutex<Option<Feed>>>>>,
    /// Most events per `changes` answer (whole revisions always).
    feed_page: AtomicUsize,
}

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

fn backend(context: String, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend {
        context,
        source: Box::new(e),
    }
}

impl EtcdStore {
    /// Set up the client; no connection is made until the first call.
    pub fn open(addr: EtcdAddress) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("netmod-etcd")
            .enable_all()
            .build()
            .map_err(|e| backend("starting the etcd client runtime".into(), e))?;
        let mut options = ec::ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if let Some(ca) = &addr.ca {
            let read = |p: &PathBuf, what: &str| {
                std::fs::read(p)
                    .map_err(|e| backend(format!("reading the TLS {what} {}", p.display()), e))
            };
            let mut tls =
                ec::TlsOptions::new().ca_certificate(ec::Certificate::from_pem(read(ca, "CA")?));
            if let (Some(cert), Some(key)) = (&addr.cert, &addr.key) {
                tls = tls.identity(ec::Identity::from_pem(
                    read(cert, "certificate")?,
                    read(key, "key")?,
                ));
            }
            options = options.with_tls(tls);
        }
        let clients = addr
            .endpoints
            .iter()
            .map(|ep| {
                rt.block_on(ec::Client::connect([ep], Some(options.clone())))
                    .map_err(|e| backend(format!("setting up the etcd client for {ep}"), e))
            })
            .collect::<Result<_>>()?;
        Ok(EtcdStore {
            rt: Some(rt),
            addr,
            clients,
            current: AtomicUsize::new(0),
            feeds: Mutex::default(),
            feed_page: AtomicUsize::new(DEFAULT_FEED_PAGE),
        })
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the store")
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.addr.prefix)
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::Unavailable {
            endpoints: self.addr.endpoints.join(","),
            reason,
        }
    }

    /// Run one request against etcd. The outer error says etcd could not be
    /// reached; the inner one is etcd's answer, for the caller to interpret
    /// or pass to `fail`. A request that never left (no connection) moves on
    /// to the next endpoint; anything else is answered as it is, since a
    /// transaction whose answer was lost may have been applied.
    fn call<T, Fut>(
        &self,
        what: &str,
        f: impl Fn(ec::Client) -> Fut,
    ) -> Result<Result<T, ec::Error>>
    where
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        let n = self.clients.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        let attempts = async {
            for at in (first..first + n).map(|i| i % n) {
                let endpoint = &self.addr.endpoints[at];
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, f(self.clients[at].clone()));
                self.current.store((at + 1) % n, Ordering::Relaxed);
                match answer.await {
                    Ok(Err(e)) if never_sent(&e) => {
                        failures.push(format!("{endpoint}: {}", describe(&e)))
                    }
                    Ok(answer) => {
                        // An etcd that answers "unavailable" (no leader) is
                        // not retried here, but the next call starts elsewhere.
                        let unhealthy = matches!(&answer,
                            Err(ec::Error::GRpcStatus(s)) if s.code() == Code::Unavailable);
                        if !unhealthy {
                            self.current.store(at, Ordering::Relaxed);
                        }
                        return Some(answer);
                    }
                    Err(_) => {
                        let secs = REQUEST_TIMEOUT.as_secs();
                        failures.push(format!("{endpoint}: no answer within {secs} s"));
                        break;
                    }
                }
            }
            None
        };
        let answer = self
            .rt()
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, attempts).await });
        match answer {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(self.unavailable(format!("{what}: {}", failures.join("; ")))),
            Err(_) => Err(self.unavailable(format!(
                "{what}: no answer within {:.1} s ({})",
                CALL_TIMEOUT.as_secs_f64(),
                failures.join("; ")
            ))),
        }
    }

    /// `call`, with etcd's errors turned into ours.
    fn run<T, Fut>(&self, what: &str, f: impl Fn(ec::Client) -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T, ec::Error>>,
    {
        self.call(what, f)?.map_err(|e| self.fail(what, e))
    }

    fn fail(&self, what: &str, e: ec::Error) -> StoreError {
        // A status that etcd did not send (it has a cause on our side: the
        // connection broke, TLS failed) means etcd could not be talked to.
        let unreachable = match &e {
            ec::Error::GRpcStatus(s) => {
                matches!(
                    s.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
                ) || std::error::Error::source(s).is_some()
            }
            ec::Error::TransportError(_) | ec::Error::IoError(_) => true,
            _ => false,
        };
        if unreachable {
            return self.unavailable(format!("{what}: {}", describe(&e)));
        }
        let context = format!(
            "{what} (etcd {}): {}",
            self.addr.endpoints.join(","),
            describe(&e)
        );
        backend(context, e)
    }

    fn open_feed(&self, prefix: &str, start: Revision) -> Result<Feed> {
        let key = &self.full(prefix);
        let (stream, now) = self.run(&format!("watching {key}"), |c| async move {
            let options = ec::WatchOptions::new()
                .with_prefix()
                .with_start_revision(start);
            // A response holds whole revisions (up to 1000 of them when
            // catching up), so it may be far larger than gRPC's default 4 MiB.
            let mut watch = c
                .watch_client()
                .max_decoding_message_size(MAX_RESPONSE_BYTES);
            let mut stream = watch.watch(key.as_str(), Some(options)).await?;
            match stream.message().await? {
                Some(r) if r.created() => Ok((stream, r.header().map_or(0, |h| h.revision()))),
                _ => Err(ec::Error::WatchError(
                    "etcd did not confirm the watch".into(),
                )),
            }
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = self.rt().spawn(pump(stream, self.addr.prefix.clone(), tx));
        Ok(Feed {
            rx,
            task,
            from: start,
            buffer: Vec::new(),
            settle_until: (start <= now).then(|| Instant::now() + HISTORY_GRACE),
        })
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The error inside etcd-client's (which does not expose it as a source).
fn inner(e: &ec::Error) -> Option<&(dyn std::error::Error + 'static)> {
    match e {
        ec::Error::GRpcStatus(s) => Some(s),
        ec::Error::TransportError(t) => Some(t),
        ec::Error::IoError(io) => Some(io),
        _ => None,
    }
}

/// A connection that could not be made: the request was never sent.
fn never_sent(e: &ec::Error) -> bool {
    let mut cause = inner(e);
    while let Some(c) = cause {
        if c.is::<tonic::ConnectError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// An error and the causes behind it ("tcp connect error: Connection refused").
fn describe(e: &ec::Error) -> String {
    let mut out = match e {
        ec::Error::GRpcStatus(s) => s.message().to_string(),
        e => e.to_string(),
    };
    let mut cause = inner(e).and_then(|e| e.source());
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        cause = c.source();
    }
    out
}

fn strip(prefix: &str, key: &[u8]) -> String {
    let key = String::from_utf8_lossy(key);
    key.strip_prefix(prefix).unwrap_or(&key).to_string()
}

fn to_kv(prefix: &str, kv: &ec::KeyValue) -> KeyValue {
    KeyValue {
        key: strip(prefix, kv.key()),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn header_revision(h: Option<&ec::ResponseHeader>) -> Revision {
    h.map_or(0, |h| h.revision())
}

fn is_not_found(e: &ec::Error, what: &str) -> bool {
    match e {
        ec::Error::GRpcStatus(s) => s.code() == Code::NotFound && s.message().contains(what),
        ec::Error::LeaseKeepAliveError(m) => m.contains(what),
        _ => false,
    }
}

/// etcd refuses two ops on one key in a transaction; the last one is what counts.
fn last_op_per_key(ops: &[Op]) -> impl Iterator<Item = &Op> {
    fn key(op: &Op) -> &str {
        match op {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
    ops.iter()
        .enumerate()
        .filter(|(i, op)| !ops[i + 1..].iter().any(|later| key(later) == key(op)))
        .map(|(_, op)| op)
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let full = &self.full(key);
        let resp = self.run(&format!("reading {full}"), |mut c| async move {
            c.get(full.as_str(), None).await
        })?;
        Ok(resp.kvs().first().map(|kv| to_kv(&self.addr.prefix, kv)))
    }

    fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let full = &self.full(prefix);
        let resp = self.run(&format!("reading {full}*"), |c| async move {
            let mut kv = c.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
            let options = ec::GetOptions::new().with_prefix();
            kv.get(full.as_str(), Some(options)).await
        })?;
        let kvs = resp.kvs().iter().map(|kv| to_kv(&self.addr.prefix, kv));
        Ok((kvs.collect(), header_revision(resp.header())))
    }

    fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let full = &self.full(prefix);
        let resp = self.run(&format!("listing {full}*"), |c| async move {
            let mut kv = c.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES);
            let options = ec::GetOptions::new().with_prefix().with_keys_only();
            kv.get(full.as_str(), Some(options)).await
        })?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| strip(&self.addr.prefix, kv.key()))
            .collect())
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<TxnOutcome> {
        // A key that does not exist compares as mod revision 0, as in our trait.
        let when: Vec<ec::Compare> = compares
            .iter()
            .map(|Compare::ModRevision { key, revision }| {
                ec::Compare::mod_revision(self.full(key), ec::CompareOp::Equal, *revision)
            })
            .collect();
        let mut lease_used = 0;
        let then: Vec<ec::TxnOp> = last_op_per_key(ops)
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let options = lease.map(|l| {
                        lease_used = l;
                        ec::PutOptions::new().with_lease(l)
                    });
                    ec::TxnOp::put(self.full(key), value.clone(), options)
                }
                Op::Delete { key } => ec::TxnOp::delete(self.full(key), None),
            })
            .collect();
        let txn = ec::Txn::new().when(when).and_then(then);
        let what = "committing a transaction";
        let resp = match self.call(what, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })? {
            Ok(resp) => resp,
            Err(e) if is_not_found(&e, "lease not found") => {
                return Err(StoreError::LeaseNotFound(lease_used))
            }
            Err(e) => return Err(self.fail(what, e)),
        };
        let outcome = TxnOutcome {
            succeeded: resp.succeeded(),
            revision: header_revision(resp.header()),
        };
        // Keep history bounded as the SQLite backend does; best effort.
        if outcome.succeeded && outcome.revision % 1000 == 0 && outcome.revision > HISTORY {
            let _ = self.compact(outcome.revision - HISTORY);
        }
        Ok(outcome)
    }

    fn changes(&self, prefix: &str, after: Revision, wait: Duration) -> Result<Vec<Event>> {
        let deadline = Instant::now() + wait;
        let slot = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            feeds.entry(prefix.to_string()).or_default().clone()
        };
        let mut feed = slot.lock().unwrap_or_else(|e| e.into_inner());
        // A feed cannot go back before where it started.
        if feed.as_ref().is_some_and(|f| after + 1 < f.from) {
            *feed = None;
        }
        let mut fresh = false;
        loop {
            if feed.is_none() {
                *feed = Some(self.open_feed(prefix, after + 1)?);
                fresh = true;
            }
            let f = feed.as_mut().expect("a feed is open");
            let page = self.feed_page.load(Ordering::Relaxed);
            match self.rt().block_on(f.next(after, deadline, page)) {
                Ok(events) => return Ok(events),
                Err(FeedEnd::Compacted(first_kept)) => {
                    *feed = None;
                    return Err(StoreError::Compacted {
                        requested: after,
                        compacted: first_kept - 1,
                    });
                }
                // A watch that broke while idle (etcd restarted) gets one
                // fresh start from where the caller is.
                Err(FeedEnd::Broken(why)) => {
                    *feed = None;
                    if fresh {
                        return Err(self.unavailable(format!("watching {prefix}: {why}")));
                    }
                }
            }
        }
    }

    fn set_feed_page(&self, events: usize) {
        self.feed_page.store(events.max(1), Ordering::Relaxed);
    }

    fn max_txn_ops(&self) -> usize {
        MAX_TXN_OPS
    }

    fn revision(&self) -> Result<Revision> {
        let key = self.addr.prefix.as_str();
        let resp = self.run("reading the revision", |mut c| async move {
            c.get(key, Some(ec::GetOptions::new().with_count_only()))
                .await
        })?;
        Ok(header_revision(resp.header()))
    }

    fn compact(&self, revision: Revision) -> Result<()> {
        // etcd's compact(r) keeps r itself; ours drops it. etcd refuses a
        // future revision, so at the very head one revision more is kept.
        let at = (revision + 1).min(self.revision()?);
        if at <= 1 {
            return Ok(());
        }
        let what = format!("compacting at {at}");
        match self.call(&what, |mut c| async move { c.compact(at, None).await })? {
            Ok(_) => Ok(()),
            // Already compacted at or past `at`.
            Err(ec::Error::GRpcStatus(s)) if s.message().contains("has been compacted") => Ok(()),
            Err(e) => Err(self.fail(&what, e)),
        }
    }

    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = (ttl.as_millis().div_ceil(1000) as i64).max(1);
        let resp = self.run("granting a lease", |mut c| async move {
            c.lease_grant(secs, None).await
        })?;
        if !resp.error().is_empty() {
            return Err(backend(
                "granting a lease".into(),
                ec::Error::Internal(resp.error().to_string()),
            ));
        }
        Ok(resp.id())
    }

    fn lease_keepalive(&self, lease: LeaseId) -> Result<()> {
        let what = format!("renewing lease {lease:x}");
        match self.call(
            &what,
            |mut c| async move { c.lease_keep_alive(lease).await },
        )? {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e, "lease not found") => Err(StoreError::LeaseNotFound(lease)),
            Err(e) => Err(self.fail(&what, e)),
        }
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<()> {
        let what = format!("revoking lease {lease:x}");
        match self.call(&what, |mut c| async move { c.lease_revoke(lease).await })? {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e, "lease not found") => Ok(()),
            Err(e) => Err(self.fail(&what, e)),
        }
    }

    fn describe(&self) -> String {
        format!(
            "etcd {} prefix {}",
            self.addr.endpoints.join(","),
            self.addr.prefix
        )
    }
}

/// The change feed of one prefix: a watch whose responses a task on the
/// store's runtime keeps reading into a channel, so that etcd never waits
/// on us between `changes` calls.
struct Feed {
    rx: mpsc::UnboundedReceiver<FeedMsg>,
    task: tokio::task::JoinHandle<()>,
    /// Every event at or after this revision is in `buffer` or still to come.
    from: Revision,
    /// Events after the caller's last `after`, oldest first.
    buffer: Vec<Event>,
    /// While etcd may still be replaying history into a fresh watch.
    settle_until: Option<Instant>,
}

enum FeedMsg {
    Events(Vec<Event>),
    /// etcd compacted past the watch's start; this is its first kept revision.
    Compacted(Revision),
    Ended(String),
}

enum FeedEnd {
    Compacted(Revision),
    Broken(String),
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feed {
    /// The events after `after`, waiting until `deadline` for the first: at
    /// most `page` of them, or one whole revision when it alone has more.
    /// etcd never splits a revision across watch responses (its documented
    /// "atomic" guarantee; we never ask for fragments), so the buffer holds
    /// whole revisions and a page cut at a revision boundary does too.
    async fn next(
        &mut self,
        after: Revision,
        deadline: Instant,
        page: usize,
    ) -> Result<Vec<Event>, FeedEnd> {
        self.buffer.retain(|e| e.revision() > after);
        self.from = self.from.max(after + 1);
        loop {
            while let Ok(msg) = self.rx.try_recv() {
                self.absorb(msg, after)?;
            }
            if !self.buffer.is_empty() {
                let take = page_len(&self.buffer, page);
                return Ok(self.buffer[..take].to_vec());
            }
            let until = match self.settle_until {
                Some(settle) if settle > deadline => settle,
                _ => deadline,
            };
            match tokio::time::timeout_at(until.into(), self.rx.recv()).await {
                Err(_) => return Ok(Vec::new()),
                Ok(Some(msg)) => self.absorb(msg, after)?,
                Ok(None) => return Err(FeedEnd::Broken("the watch task ended".into())),
            }
        }
    }

    fn absorb(&mut self, msg: FeedMsg, after: Revision) -> Result<(), FeedEnd> {
        match msg {
            FeedMsg::Events(events) => {
                self.settle_until = None;
                let new = events.into_iter().filter(|e| e.revision() > after);
                self.buffer.extend(new);
                Ok(())
            }
            FeedMsg::Compacted(first_kept) => Err(FeedEnd::Compacted(first_kept)),
            FeedMsg::Ended(why) => Err(FeedEnd::Broken(why)),
        }
    }
}

async fn pump(mut stream: ec::WatchStream, prefix: String, tx: mpsc::UnboundedSender<FeedMsg>) {
    let end = loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.compact_revision() > 0 {
                    break FeedMsg::Compacted(resp.compact_revision());
                }
                if resp.canceled() {
                    break FeedMsg::Ended(format!(
                        "etcd ended the watch: {}",
                        resp.cancel_reason()
                    ));
                }
                let events: Vec<Event> = resp
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = e.kv()?;
                        Some(match e.event_type() {
                            ec::EventType::Put => Event::Put(to_kv(&prefix, kv)),
                            ec::EventType::Delete => Event::Delete {
                                key: strip(&prefix, kv.key()),
                                revision: kv.mod_revision(),
                            },
                        })
                    })
                    .collect();
                if !events.is_empty() && tx.send(FeedMsg::Events(events)).is_err() {
                    return;
                }
            }
            Ok(None) => break FeedMsg::Ended("etcd closed the watch".into()),
            Err(e) => break FeedMsg::Ended(e.to_string()),
        }
    };
    let _ = tx.send(end);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd_server::TestEtcd;

    #[test]
    fn addresses_parse() {
        let a = EtcdAddress::parse(
            "etcd://127.0.0.1:2379,10.0.0.2:2379?prefix=/netmod/cluster-a&ca=/p/ca.pem&cert=/p/c.pem&key=/p/k%20x.pem",
        )
        .unwrap();
        assert_eq!(a.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(a.prefix, "/netmod/cluster-a/", "a prefix ends with a slash");
        assert_eq!(a.ca.as_deref(), Some(std::path::Path::new("/p/ca.pem")));
        assert_eq!(a.key.as_deref(), Some(std::path::Path::new("/p/k x.pem")));
        assert_eq!(
            EtcdAddress::parse("etcd://h:1").unwrap().prefix,
            DEFAULT_PREFIX
        );
        for bad in [
            "etcd://",
            "etcd://h",
            "etcd://http://h:1",
            "etcd://h:1?colour=red",
            "etcd://h:1?cert=/c.pem",
            "etcd://h:1?ca=/a&cert=/c&",
            "etcd://h:1?prefix=%zz",
        ] {
            let err = EtcdAddress::parse(bad).unwrap_err();
            assert!(matches!(err, StoreError::BadAddress(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn ops_on_one_key_keep_the_last() {
        let ops = [Op::put("a", "1"), Op::put("b", "1"), Op::delete("a")];
        let kept: Vec<&Op> = last_op_per_key(&ops).collect();
        assert_eq!(kept, [&ops[1], &ops[2]]);
    }

    #[test]
    fn etcd_passes_conformance() {
        let Some(etcd) = TestEtcd::get("etcd_passes_conformance") else {
            return;
        };
        crate::conformance::run_all(&mut || etcd.fresh_store());
    }

    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// Every kind of call fails within the bound, naming the endpoint.
    fn assert_unavailable(s: &dyn Store, endpoint: &str) {
        let calls: [(&str, &dyn Fn() -> Result<()>); 4] = [
            ("get", &|| s.get("x").map(drop)),
            ("txn", &|| s.txn(&[], &[Op::put("x", "1")]).map(drop)),
            ("changes", &|| {
                s.changes("x", 0, Duration::from_secs(1)).map(drop)
            }),
            ("lease", &|| s.lease_grant(Duration::from_secs(5)).map(drop)),
        ];
        for (name, call) in calls {
            let t = Instant::now();
            let err = call().expect_err(name);
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{name} took {:?}",
                t.elapsed()
            );
            assert!(
                matches!(err, StoreError::Unavailable { .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains(endpoint), "{name}: {err}");
        }
    }

    #[test]
    fn a_closed_port_is_unavailable_at_once() {
        let ep = format!("127.0.0.1:{}", closed_port());
        let s = crate::open(&format!("etcd://{ep}")).unwrap();
        assert_unavailable(&*s, &ep);
        let err = s.get("x").unwrap_err().to_string();
        assert!(err.contains("Connection refused"), "{err}");
    }

    #[test]
    fn a_silent_server_is_unavailable_within_the_bound() {
        // Accepts TCP (the kernel's backlog) but never speaks.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = silent.local_addr().unwrap().to_string();
        let s = crate::open(&format!("etcd://{ep}")).unwrap();
        let t = Instant::now();
        let err = s.get("x").unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
        assert!(err.to_string().contains(&ep), "{err}");
    }

    #[test]
    fn a_dead_endpoint_is_skipped() {
        let Some(etcd) = TestEtcd::get("a_dead_endpoint_is_skipped") else {
            return;
        };
        let dead = format!("127.0.0.1:{}", closed_port());
        for eps in [
            format!("{dead},{}", etcd.endpoint),
            format!("{},{dead}", etcd.endpoint),
        ] {
            let prefix = etcd.fresh_address();
            let prefix = prefix.split_once('?').unwrap().1;
            let s = crate::open(&format!("etcd://{eps}?{prefix}")).unwrap();
            let start = s.revision().unwrap();
            for i in 0..20 {
                s.txn(&[], &[Op::put(format!("k{i}"), "v")]).unwrap();
                assert!(s.get(&format!("k{i}")).unwrap().is_some());
            }
            let events = s.changes("k", start, Duration::from_secs(2)).unwrap();
            assert_eq!(events.len(), 20);
        }
    }

    #[test]
    fn prefixes_keep_clusters_apart() {
        let Some(etcd) = TestEtcd::get("prefixes_keep_clusters_apart") else {
            return;
        };
        let (a, b) = (etcd.fresh_store(), etcd.fresh_store());
        assert!(a
            .describe()
            .starts_with(&format!("etcd {} prefix /netmod-test/", etcd.endpoint)));
        let start = a.revision().unwrap();
        a.txn(&[], &[Op::put("k", "a")]).unwrap();
        b.txn(&[], &[Op::put("k", "b")]).unwrap();
        assert_eq!(a.get("k").unwrap().unwrap().value, b"a");
        assert_eq!(b.get("k").unwrap().unwrap().value, b"b");
        assert_eq!(a.keys("").unwrap(), ["k"]);
        let seen = a.changes("", start, Duration::from_secs(1)).unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].key(), "k");
    }

    #[test]
    fn the_feed_is_reused_and_resumes() {
        let Some(etcd) = TestEtcd::get("the_feed_is_reused_and_resumes") else {
            return;
        };
        let s = EtcdStore::open(EtcdAddress::parse(&etcd.fresh_address()).unwrap()).unwrap();
        let mut last = s.revision().unwrap();
        let mut got = Vec::new();
        for i in 0..50 {
            s.txn(&[], &[Op::put(format!("f/{i}"), "v")]).unwrap();
            if i % 7 == 0 {
                for e in s.changes("f/", last, Duration::from_secs(2)).unwrap() {
                    last = e.revision();
                    got.push(e.key().to_string());
                }
            }
        }
        while got.len() < 50 {
            let events = s.changes("f/", last, Duration::from_secs(2)).unwrap();
            assert!(!events.is_empty(), "missing events after {got:?}");
            for e in events {
                last = e.revision();
                got.push(e.key().to_string());
            }
        }
        let want: Vec<String> = (0..50).map(|i| format!("f/{i}")).collect();
        assert_eq!(got, want, "every change once, in order");
        assert_eq!(s.feeds.lock().unwrap().len(), 1, "one watch for the prefix");
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, by openssl.
    fn make_certs(dir: &std::path::Path) -> bool {
        let script = r#"set -e
            q() { "$@" >/dev/null 2>&1; }
            q openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
              -subj /CN=netmod-test-ca -keyout ca.key -out ca.pem
            printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > ext
            for n in server client; do
              q openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
                -subj /CN=$n -keyout $n.key -out $n.csr
              q openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                -days 2 -extfile ext -out $n.pem
            done"#;
        std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir)
            .status()
            .is_ok_and(|s| s.success())
    }

    #[test]
    fn tls_with_client_certificates() {
        let Some(_) = TestEtcd::get("tls_with_client_certificates") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        if !make_certs(d) {
            assert!(
                std::env::var_os("CI").is_none(),
                "openssl could not make test certificates"
            );
            eprintln!("SKIPPED tls_with_client_certificates: no openssl");
            return;
        }
        let tls = crate::etcd_server::ServerTls {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
        };
        let server = crate::etcd_server::EtcdServer::start_tls(d, &tls).unwrap();
        let ep = &server.endpoint;
        let (ca, cert, key) = (d.join("ca.pem"), d.join("client.pem"), d.join("client.key"));
        let base = format!(
            "etcd://{ep}?ca={}&cert={}&key={}",
            ca.display(),
            cert.display(),
            key.display()
        );
        let mut n = 0;
        crate::conformance::run_all(&mut || {
            n += 1;
            crate::open(&format!("{base}&prefix=/tls-{n}/")).unwrap()
        });
        // Without a client certificate, or without TLS, etcd does not serve us.
        for addr in [
            format!("etcd://{ep}?ca={}", ca.display()),
            format!("etcd://{ep}"),
        ] {
            let t = Instant::now();
            let err = crate::open(&addr).unwrap().get("x").unwrap_err();
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{addr}: {:?}",
                t.elapsed()
            );
            assert!(
                matches!(err, StoreError::Unavailable { .. }),
                "{addr}: {err}"
            );
            assert!(err.to_string().contains(ep.as_str()), "{addr}: {err}");
        }
        // A missing file is named at open.
        let err = crate::open(&format!("etcd://{ep}?ca=/nonexistent/ca.pem"))
            .err()
            .unwrap();
        assert!(
            format!("{err}").contains("reading the TLS CA /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn an_etcd_restart_is_survived_without_reopening() {
        if TestEtcd::get("an_etcd_restart_is_survived_without_reopening").is_none() {
            return;
        }
        let mut server =
            crate::etcd_server::EtcdServer::start(&crate::etcd_server::fast_tmp()).unwrap();
        let s = crate::open(&format!("etcd://{}", server.endpoint)).unwrap();
        let first = s.txn(&[], &[Op::put("r/1", "v")]).unwrap().revision;
        assert_eq!(s.changes("r/", first - 1, Duration::ZERO).unwrap().len(), 1);
        server.stop();
        let t = Instant::now();
        let err = s.changes("r/", first, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
        assert_unavailable(&*s, &server.endpoint);
        assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
        server.restart().unwrap();
        let second = s.txn(&[], &[Op::put("r/2", "v")]).unwrap().revision;
        let events = s.changes("r/", first, Duration::from_secs(2)).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!((events[0].key(), events[0].revision()), ("r/2", second));
    }
}
