//! The behaviour every `Store` backend must have. Each backend's tests call
//! `run_all` with a factory that returns a fresh, empty store.

use crate::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub type Factory<'a> = &'a mut dyn FnMut() -> Box<dyn Store>;

pub fn run_all(factory: Factory) {
    get_put_delete(factory());
    compare_and_swap(factory());
    failed_txn_writes_nothing(factory());
    range_is_sorted_and_bounded(factory());
    change_feed(factory());
    feed_returns_whole_revisions(factory());
    feed_returns_a_huge_revision_whole(factory());
    compaction(factory());
    leases(factory());
    concurrent_increments(factory().into());
}

fn put(s: &dyn Store, k: &str, v: &str) -> TxnOutcome {
    s.txn(&[], &[Op::put(k, v)]).unwrap()
}

pub fn get_put_delete(s: Box<dyn Store>) {
    assert_eq!(s.get("a").unwrap(), None);
    let r1 = put(&*s, "a", "1");
    assert!(r1.succeeded);
    let kv = s.get("a").unwrap().unwrap();
    assert_eq!(kv.value, b"1");
    assert_eq!(kv.mod_revision, r1.revision);
    assert_eq!(kv.create_revision, r1.revision);
    let r2 = put(&*s, "a", "2");
    assert!(r2.revision > r1.revision);
    let kv = s.get("a").unwrap().unwrap();
    assert_eq!(kv.value, b"2");
    assert_eq!(kv.create_revision, r1.revision, "create revision is stable");
    assert_eq!(kv.mod_revision, r2.revision);
    assert!(s.txn(&[], &[Op::delete("a")]).unwrap().succeeded);
    assert_eq!(s.get("a").unwrap(), None);
    assert!(s.revision().unwrap() >= r2.revision);
}

pub fn compare_and_swap(s: Box<dyn Store>) {
    let first = s
        .txn(&[Compare::absent("k")], &[Op::put("k", "x")])
        .unwrap();
    assert!(first.succeeded);
    let second = s
        .txn(&[Compare::absent("k")], &[Op::put("k", "y")])
        .unwrap();
    assert!(!second.succeeded, "a second create must lose");
    let kv = s.get("k").unwrap().unwrap();
    assert_eq!(kv.value, b"x");
    let ok = s
        .txn(&[Compare::unchanged(&kv)], &[Op::put("k", "z")])
        .unwrap();
    assert!(ok.succeeded);
    let stale = s
        .txn(&[Compare::unchanged(&kv)], &[Op::put("k", "w")])
        .unwrap();
    assert!(!stale.succeeded, "a stale revision must lose");
    assert_eq!(s.get("k").unwrap().unwrap().value, b"z");
}

pub fn failed_txn_writes_nothing(s: Box<dyn Store>) {
    put(&*s, "held", "1");
    let before = s.revision().unwrap();
    let out = s
        .txn(
            &[Compare::absent("free"), Compare::absent("held")],
            &[Op::put("free", "1"), Op::delete("held")],
        )
        .unwrap();
    assert!(!out.succeeded);
    assert_eq!(s.get("free").unwrap(), None);
    assert!(s.get("held").unwrap().is_some());
    assert_eq!(
        s.revision().unwrap(),
        before,
        "a failed txn takes no revision"
    );
    // Many ops in one transaction share one revision.
    let out = s
        .txn(&[], &[Op::put("m/1", "a"), Op::put("m/2", "b")])
        .unwrap();
    assert_eq!(s.get("m/1").unwrap().unwrap().mod_revision, out.revision);
    assert_eq!(s.get("m/2").unwrap().unwrap().mod_revision, out.revision);
}

pub fn range_is_sorted_and_bounded(s: Box<dyn Store>) {
    for k in ["b/2", "b/10", "b/1", "a/1", "c", "b0"] {
        put(&*s, k, "v");
    }
    let (kvs, rev) = s.range("b/").unwrap();
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["b/1", "b/10", "b/2"]);
    assert_eq!(s.keys("b/").unwrap(), ["b/1", "b/10", "b/2"]);
    assert_eq!(rev, s.revision().unwrap());
    assert_eq!(s.range("").unwrap().0.len(), 6);
    assert!(s.range("zz/").unwrap().0.is_empty());
}

pub fn change_feed(s: Box<dyn Store>) {
    let start = s.revision().unwrap();
    put(&*s, "w/a", "1");
    put(&*s, "other", "1");
    put(&*s, "w/b", "2");
    s.txn(&[], &[Op::delete("w/a")]).unwrap();
    let events = s.changes("w/", start, Duration::from_secs(1)).unwrap();
    let seen: Vec<(String, bool)> = events
        .iter()
        .map(|e| (e.key().to_string(), matches!(e, Event::Put(_))))
        .collect();
    assert_eq!(
        seen,
        [
            ("w/a".to_string(), true),
            ("w/b".to_string(), true),
            ("w/a".to_string(), false)
        ]
    );
    assert!(events.windows(2).all(|w| w[0].revision() < w[1].revision()));
    // Resuming from the last revision seen yields nothing new, after waiting.
    let last = events.last().unwrap().revision();
    let t = Instant::now();
    let none = s.changes("w/", last, Duration::from_millis(300)).unwrap();
    assert!(none.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(250), "it waits");
    // A write from another thread wakes a waiting reader.
    let s: Arc<dyn Store> = s.into();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            put(&*s, "w/c", "3");
        })
    };
    let woke = s.changes("w/", last, Duration::from_secs(5)).unwrap();
    writer.join().unwrap();
    assert_eq!(woke.len(), 1);
    assert_eq!(woke[0].key(), "w/c");
}

/// Read the feed from `after` until `want` events came, checking that every
/// answer holds whole revisions (`sizes`: revision → its number of events
/// under the prefix) and at most `page` events unless it is one revision.
fn read_whole(
    s: &dyn Store,
    prefix: &str,
    mut after: Revision,
    sizes: &std::collections::BTreeMap<Revision, usize>,
    page: usize,
) -> usize {
    let want: usize = sizes.values().sum();
    let mut got = 0;
    let mut calls = 0;
    while got < want {
        calls += 1;
        assert!(calls < 10_000, "the feed does not make progress");
        let events = s.changes(prefix, after, Duration::from_secs(5)).unwrap();
        assert!(!events.is_empty(), "events missing after revision {after}");
        let mut in_answer = std::collections::BTreeMap::<Revision, usize>::new();
        for e in &events {
            assert!(e.revision() > after, "an event at or before {after}");
            assert!(
                e.key().starts_with(prefix),
                "{} is outside {prefix}",
                e.key()
            );
            *in_answer.entry(e.revision()).or_default() += 1;
        }
        for (rev, n) in &in_answer {
            assert_eq!(
                Some(n),
                sizes.get(rev),
                "revision {rev} came split or foreign: {n} of its events in one answer, {:?} written",
                sizes.get(rev)
            );
        }
        assert!(
            events.len() <= page || in_answer.len() == 1,
            "{} events over {} revisions in one answer, page {page}",
            events.len(),
            in_answer.len()
        );
        assert!(events
            .windows(2)
            .all(|w| w[0].revision() <= w[1].revision()));
        got += events.len();
        after = events.last().unwrap().revision();
    }
    assert_eq!(got, want);
    got
}

/// A reader resuming after the last revision it got never loses the rest of
/// a transaction: each answer holds whole revisions, however the page falls.
pub fn feed_returns_whole_revisions(s: Box<dyn Store>) {
    let page = 10;
    s.set_feed_page(page);
    let start = s.revision().unwrap();
    let max_ops = s.max_txn_ops().min(120);
    let mut sizes = std::collections::BTreeMap::new();
    // Sizes around the page, a revision larger than it, and one with keys
    // outside the prefix that the feed must leave out.
    let plan = [
        3, 7, 1, 12, 25, 4, 9, 10, 11, 2, max_ops, 5, 6, 19, 1, 1, 1, 8,
    ];
    for (t, n) in plan.iter().enumerate() {
        let mut ops: Vec<Op> = (0..*n)
            .map(|i| Op::put(format!("wr/{t}/{i}"), "v"))
            .collect();
        if t % 4 == 1 {
            ops.truncate(max_ops - 1);
            ops.push(Op::put(format!("other/{t}"), "v"));
        }
        let in_prefix = ops
            .iter()
            .filter(|o| matches!(o, Op::Put { key, .. } if key.starts_with("wr/")))
            .count();
        let out = s.txn(&[], &ops).unwrap();
        assert!(out.succeeded);
        sizes.insert(out.revision, in_prefix);
    }
    // Deletes are events too, and several in one revision stay together.
    let dels: Vec<Op> = (0..13).map(|i| Op::delete(format!("wr/4/{i}"))).collect();
    let out = s.txn(&[], &dels).unwrap();
    sizes.insert(out.revision, 13);
    read_whole(&*s, "wr/", start, &sizes, page);
    // Resuming from the middle of the history gives the same whole revisions.
    let mid = *sizes.keys().nth(5).unwrap();
    let rest: std::collections::BTreeMap<_, _> = sizes
        .iter()
        .filter(|(r, _)| **r > mid)
        .map(|(r, n)| (*r, *n))
        .collect();
    read_whole(&*s, "wr/", mid, &rest, page);
}

/// One transaction larger than the default page (20,000 events) comes in one
/// answer, where the backend allows such a transaction (etcd: 128 ops).
pub fn feed_returns_a_huge_revision_whole(s: Box<dyn Store>) {
    let n = DEFAULT_FEED_PAGE + 5_000;
    if s.max_txn_ops() < n {
        return;
    }
    let start = s.revision().unwrap();
    let before = s.txn(&[], &[Op::put("huge/first", "v")]).unwrap().revision;
    let ops: Vec<Op> = (0..n)
        .map(|i| Op::put(format!("huge/{i:06}"), "v"))
        .collect();
    let out = s.txn(&[], &ops).unwrap();
    let after = s.txn(&[], &[Op::put("huge/last", "v")]).unwrap().revision;
    let sizes = [(before, 1), (out.revision, n), (after, 1)]
        .into_iter()
        .collect();
    read_whole(&*s, "huge/", start, &sizes, DEFAULT_FEED_PAGE);
    let all = s.changes("huge/", before, Duration::ZERO).unwrap();
    assert_eq!(all.len(), n, "the huge revision alone, whole");
}

pub fn compaction(s: Box<dyn Store>) {
    let start = s.revision().unwrap();
    for i in 0..5 {
        put(&*s, &format!("h/{i}"), "v");
    }
    let now = s.revision().unwrap();
    s.compact(now - 1).unwrap();
    match s.changes("h/", start, Duration::ZERO) {
        Err(StoreError::Compacted { .. }) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    let tail = s.changes("h/", now - 1, Duration::ZERO).unwrap();
    assert_eq!(tail.len(), 1, "history after the compaction point is kept");
}

pub fn leases(s: Box<dyn Store>) {
    let lease = s.lease_grant(Duration::from_secs(2)).unwrap();
    let start = s.revision().unwrap();
    s.txn(
        &[],
        &[Op::Put {
            key: "hosts/a".into(),
            value: b"x".to_vec(),
            lease: Some(lease),
        }],
    )
    .unwrap();
    assert_eq!(s.get("hosts/a").unwrap().unwrap().lease, lease);
    s.lease_keepalive(lease).unwrap();
    s.lease_revoke(lease).unwrap();
    assert_eq!(s.get("hosts/a").unwrap(), None, "revoking deletes the keys");
    let events = s.changes("hosts/", start, Duration::from_secs(1)).unwrap();
    assert!(matches!(events.last(), Some(Event::Delete { .. })));
    // Expiry without keepalive deletes the key and says so in the feed.
    let lease = s.lease_grant(Duration::from_secs(2)).unwrap();
    let out = s
        .txn(
            &[],
            &[Op::Put {
                key: "hosts/b".into(),
                value: b"x".to_vec(),
                lease: Some(lease),
            }],
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut gone = false;
    while Instant::now() < deadline && !gone {
        let evs = s
            .changes("hosts/", out.revision, Duration::from_millis(500))
            .unwrap();
        gone = evs
            .iter()
            .any(|e| matches!(e, Event::Delete { key, .. } if key == "hosts/b"));
    }
    assert!(gone, "an expired lease deletes its keys");
    assert_eq!(s.get("hosts/b").unwrap(), None);
    assert!(matches!(
        s.lease_keepalive(lease),
        Err(StoreError::LeaseNotFound(_))
    ));
    let bad = s.txn(
        &[],
        &[Op::Put {
            key: "x".into(),
            value: vec![],
            lease: Some(lease),
        }],
    );
    assert!(bad.is_err(), "a put on an expired lease fails");
}

/// Eight threads increment one counter through compare-and-swap: no lost update.
pub fn concurrent_increments(s: Arc<dyn Store>) {
    let per_thread = 50;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let s = s.clone();
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    retry_txn(
                        || {
                            let cur = s.get("counter")?;
                            let n: u64 = cur.as_ref().map_or(0, |kv| {
                                std::str::from_utf8(&kv.value).unwrap().parse().unwrap()
                            });
                            let out = s.txn(
                                &[Compare::as_read("counter", cur.as_ref())],
                                &[Op::put("counter", (n + 1).to_string())],
                            )?;
                            Ok(out.succeeded.then_some(()))
                        },
                        1000,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let kv = s.get("counter").unwrap().unwrap();
    assert_eq!(std::str::from_utf8(&kv.value).unwrap(), "400");
}
