use super::*;
use netmod_store::SqliteStore;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
    (dir, s)
}

fn req(handle: &str, host: &str, v4: u32, v6: u32) -> AllocRequest {
    AllocRequest {
        handle: handle.into(),
        attrs: AllocAttrs {
            host: host.into(),
            ..Default::default()
        },
        num_ipv4: v4,
        num_ipv6: v6,
        static_addrs: vec![],
        pool: None,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn allocates_both_families_distinctly() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.1.0.0/16".parse().unwrap(), None, 60)
        .unwrap();
    ipam.add_pool("fd00:1::/64".parse().unwrap(), None, 60)
        .unwrap();
    let a = ipam.allocate(&req("a", "h1", 2, 1)).unwrap();
    let b = ipam.allocate(&req("b", "h1", 1, 2)).unwrap();
    assert_eq!(a.ipv4.len(), 2);
    assert_eq!(a.ipv6.len(), 1);
    assert_eq!(b.ipv6.len(), 2);
    let mut all: Vec<IpAddr> = a
        .ipv4
        .iter()
        .chain(&b.ipv4)
        .map(|x| IpAddr::V4(*x))
        .collect();
    all.extend(a.ipv6.iter().chain(&b.ipv6).map(|x| IpAddr::V6(*x)));
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "no address twice");
    assert_eq!(
        a.ipv4[0],
        "10.1.0.1".parse::<Ipv4Addr>().unwrap(),
        "network address skipped"
    );
    assert!(ipam.check_consistency().unwrap().is_empty());
    let rec = ipam.handle("a").unwrap().unwrap();
    assert_eq!(rec.addrs.len(), 3);
}

#[test]
fn host_fills_its_own_block_then_claims_then_borrows() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.2.0.0/27".parse().unwrap(), Some(28), 0)
        .unwrap();
    let a1 = ipam.allocate(&req("a1", "A", 1, 0)).unwrap().ipv4[0];
    let b1 = ipam.allocate(&req("b1", "B", 1, 0)).unwrap().ipv4[0];
    let block0: IpNet = "10.2.0.0/28".parse().unwrap();
    let block1: IpNet = "10.2.0.16/28".parse().unwrap();
    assert!(block0.contains(&IpAddr::V4(a1)));
    assert!(
        block1.contains(&IpAddr::V4(b1)),
        "B claims a block of its own"
    );
    // A fills its block (.1 to .15: .0 is the pool's network address).
    for i in 0..14 {
        let got = ipam
            .allocate(&req(&format!("a{}", i + 2), "A", 1, 0))
            .unwrap();
        assert!(block0.contains(&IpAddr::V4(got.ipv4[0])));
    }
    // No free block remains: now, and only now, A borrows from B's block.
    let borrowed = ipam.allocate(&req("a16", "A", 1, 0)).unwrap().ipv4[0];
    assert!(block1.contains(&IpAddr::V4(borrowed)));
    assert_eq!(ipam.host_blocks("A").unwrap(), vec![block0]);
    assert!(ipam.check_consistency().unwrap().is_empty());
}

#[test]
fn exhausted_pool_says_so_and_changes_nothing() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.3.0.0/30".parse().unwrap(), Some(30), 0)
        .unwrap();
    ipam.allocate(&req("x", "h", 2, 0)).unwrap();
    let rev = s.revision().unwrap();
    let err = ipam.allocate(&req("y", "h", 1, 0)).unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("no free IPv4 address in pool(s) 10.3.0.0/30"));
    assert_eq!(s.revision().unwrap(), rev, "nothing written");
    assert!(ipam.handle("y").unwrap().is_none());
    // Two addresses asked, one left: neither is held.
    ipam.release_handle("x").unwrap();
    let err = ipam.allocate(&req("z", "h", 3, 0)).unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }));
    assert!(ipam.handle("z").unwrap().is_none());
    assert!(matches!(
        ipam.allocate(&req("v6", "h", 0, 1)),
        Err(IpamError::NoPool("IPv6"))
    ));
}

#[test]
fn released_addresses_wait_out_their_quarantine() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.4.0.0/30".parse().unwrap(), Some(30), 1)
        .unwrap();
    let first = ipam.allocate(&req("a", "h", 1, 0)).unwrap().ipv4[0];
    ipam.release_handle("a").unwrap();
    // Not reissued within the window while another address is free.
    let second = ipam.allocate(&req("b", "h", 1, 0)).unwrap().ipv4[0];
    assert_ne!(first, second);
    // Only the quarantined address remains: the error says so.
    let err = ipam.allocate(&req("c", "h", 1, 0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 released address(es) are in quarantine"),
        "{err}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let third = ipam.allocate(&req("c", "h", 1, 0)).unwrap().ipv4[0];
    assert_eq!(third, first, "free again after the window");
}

#[test]
fn reserve_is_all_or_nothing_and_names_the_address_in_use() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("192.168.0.0/16".parse().unwrap(), None, 60)
        .unwrap();
    let attrs = AllocAttrs {
        host: "h".into(),
        ..Default::default()
    };
    ipam.reserve("one", &attrs, &[ip("192.168.255.253")])
        .unwrap();
    // A block opened for an address asked by value is no host's own block.
    let dynamic = ipam.allocate(&req("dyn", "h", 1, 0)).unwrap().ipv4[0];
    assert_eq!(dynamic, "192.168.0.1".parse::<Ipv4Addr>().unwrap());
    ipam.release_handle("dyn").unwrap();
    // Same handle again: fine, nothing changes.
    ipam.reserve("one", &attrs, &[ip("192.168.255.253")])
        .unwrap();
    let err = ipam
        .reserve(
            "two",
            &attrs,
            &[ip("192.168.255.252"), ip("192.168.255.253")],
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("192.168.255.253 is already in use"),
        "{err}"
    );
    assert!(ipam.handle("two").unwrap().is_none());
    let held: Vec<IpAddr> = ipam
        .handles()
        .unwrap()
        .iter()
        .flat_map(|h| h.addrs.clone())
        .collect();
    assert_eq!(held, vec![ip("192.168.255.253")]);
    assert!(matches!(
        ipam.reserve("x", &attrs, &[ip("10.0.0.1")]),
        Err(IpamError::OutsidePools(_))
    ));
    assert!(ipam.reserve("x", &attrs, &[ip("192.168.0.0")]).is_err());
    // A static address inside allocate counts toward num_ipv4.
    let mut r = req("three", "h", 2, 0);
    r.static_addrs = vec![ip("192.168.255.252")];
    let got = ipam.allocate(&r).unwrap();
    assert_eq!(got.ipv4.len(), 2);
    assert_eq!(got.ipv4[0], "192.168.255.252".parse::<Ipv4Addr>().unwrap());
    assert!(ipam.check_consistency().unwrap().is_empty());
}

#[test]
fn release_by_address_and_unknown_handles() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.5.0.0/24".parse().unwrap(), None, 60)
        .unwrap();
    let got = ipam.allocate(&req("a", "h", 2, 0)).unwrap();
    let first = IpAddr::V4(got.ipv4[0]);
    let released = ipam.release_addrs(&[first]).unwrap();
    assert_eq!(released, vec![(first, "a".to_string())]);
    assert_eq!(
        ipam.handle("a").unwrap().unwrap().addrs,
        vec![IpAddr::V4(got.ipv4[1])]
    );
    // Releasing a free address in a pool is not an error; outside every pool is.
    assert!(ipam.release_addrs(&[first]).unwrap().is_empty());
    assert!(matches!(
        ipam.release_addrs(&[ip("10.9.9.9")]),
        Err(IpamError::OutsidePools(_))
    ));
    assert!(matches!(
        ipam.release_handle("nobody"),
        Err(IpamError::UnknownHandle(_))
    ));
    ipam.release_handle("a").unwrap();
    assert!(ipam.handle("a").unwrap().is_none());
    assert!(ipam.check_consistency().unwrap().is_empty());
}

#[test]
fn pools_refuse_overlap_and_removal_while_in_use() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let p: IpNet = "10.6.0.0/16".parse().unwrap();
    ipam.add_pool(p, None, 60).unwrap();
    ipam.add_pool(p, None, 60).unwrap();
    assert!(matches!(
        ipam.add_pool("10.6.1.0/24".parse().unwrap(), None, 60),
        Err(IpamError::PoolOverlap(..))
    ));
    assert!(ipam
        .add_pool("10.7.0.1/16".parse().unwrap(), None, 60)
        .is_err());
    assert!(ipam
        .add_pool("10.8.0.0/16".parse().unwrap(), Some(8), 60)
        .is_err());
    ipam.allocate(&req("a", "h", 1, 0)).unwrap();
    assert!(matches!(
        ipam.remove_pool(p, false),
        Err(IpamError::PoolInUse { live: 1, .. })
    ));
    assert_eq!(ipam.remove_pool(p, true).unwrap(), 1);
    assert!(ipam.pools().unwrap().is_empty());
    assert!(ipam.handle("a").unwrap().is_none());
    assert!(ipam.blocks().unwrap().is_empty());
    assert!(matches!(
        ipam.remove_pool(p, false),
        Err(IpamError::NoSuchPool(_))
    ));
}

#[test]
fn concurrent_allocators_never_share_an_address() {
    let (d, s) = store();
    Ipam::new(&s)
        .add_pool("10.10.0.0/20".parse().unwrap(), None, 60)
        .unwrap();
    let path = d.path().join("t.db");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let s = SqliteStore::open(&path).unwrap();
                let ipam = Ipam::new(&s);
                (0..40)
                    .map(|i| {
                        ipam.allocate(&req(&format!("t{t}-{i}"), &format!("h{}", t % 4), 1, 0))
                            .unwrap()
                            .ipv4[0]
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<Ipv4Addr> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(n, 320);
    assert_eq!(all.len(), n);
    assert!(Ipam::new(&s).check_consistency().unwrap().is_empty());
}

#[test]
fn usage_counts_used_free_and_quarantined() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.11.0.0/24".parse().unwrap(), None, 60)
        .unwrap();
    ipam.allocate(&req("a", "h1", 3, 0)).unwrap();
    ipam.allocate(&req("b", "h2", 1, 0)).unwrap();
    ipam.release_handle("b").unwrap();
    let u = ipam.usage().unwrap();
    assert_eq!(u.pools[0].total, 254);
    assert_eq!(u.pools[0].used, 3);
    assert_eq!(u.pools[0].quarantined, 1);
    assert_eq!(u.pools[0].free, 250);
    assert_eq!(u.blocks.len(), 2);
    assert_eq!(
        u.hosts.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(),
        ["h1", "h2"]
    );
}

fn attrs(host: &str) -> AllocAttrs {
    AllocAttrs {
        host: host.into(),
        ..Default::default()
    }
}

fn put_host(s: &dyn Store, name: &str, applied: Option<i64>) {
    let mut v = serde_json::json!({"name": name, "ip": "10.255.0.1"});
    if let Some(a) = applied {
        v["applied_revision"] = a.into();
    }
    s.txn(&[], &[Op::put(format!("hosts/{name}"), v.to_string())])
        .unwrap();
}

#[test]
fn a_retried_allocate_gets_the_same_addresses() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.12.0.0/24".parse().unwrap(), None, 60)
        .unwrap();
    ipam.add_pool("fd00:12::/64".parse().unwrap(), None, 60)
        .unwrap();
    let first = ipam.allocate(&req("task-1", "h", 2, 1)).unwrap();
    let rev = s.revision().unwrap();
    let again = Ipam::new(&s).allocate(&req("task-1", "h", 2, 1)).unwrap();
    assert_eq!(again, first, "the reply that was lost, once more");
    assert_eq!(s.revision().unwrap(), rev, "a retry writes nothing");
    assert_eq!(ipam.handle("task-1").unwrap().unwrap().addrs.len(), 3);
    assert_eq!(
        ipam.usage()
            .unwrap()
            .pools
            .iter()
            .map(|p| p.used)
            .sum::<u64>(),
        3
    );
    // A different request under the same handle is an error naming both.
    for (v4, v6, host) in [(1, 1, "h"), (2, 0, "h"), (2, 1, "other")] {
        let err = ipam.allocate(&req("task-1", host, v4, v6)).unwrap_err();
        assert!(matches!(err, IpamError::HandleConflict { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("\"task-1\"") && msg.contains("10.12.0.1"),
            "{msg}"
        );
        assert!(msg.contains("2 IPv4 + 1 IPv6"), "{msg}");
        assert_eq!(s.revision().unwrap(), rev, "an error writes nothing");
    }
    // Static addresses are part of the request too.
    let mut r = req("st", "h", 1, 0);
    r.static_addrs = vec![ip("10.12.0.200")];
    assert_eq!(ipam.allocate(&r).unwrap().ipv4, [ip4("10.12.0.200")]);
    assert_eq!(ipam.allocate(&r).unwrap().ipv4, [ip4("10.12.0.200")]);
    r.static_addrs = vec![ip("10.12.0.201")];
    assert!(matches!(
        ipam.allocate(&r),
        Err(IpamError::HandleConflict { .. })
    ));
    // Part of it released by address: a retry is refused, not topped up.
    let held = ipam.handle("task-1").unwrap().unwrap().addrs;
    ipam.release_addrs(&held[..1]).unwrap();
    let err = ipam.allocate(&req("task-1", "h", 2, 1)).unwrap_err();
    assert!(err.to_string().contains("since partly released"), "{err}");
    // After a release the handle is new again.
    ipam.release_handle("task-1").unwrap();
    assert_eq!(
        ipam.allocate(&req("task-1", "h", 1, 0)).unwrap().ipv4.len(),
        1
    );
    assert!(ipam.check_consistency().unwrap().is_empty());
}

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn reserve_then_allocate_under_one_uid_is_not_a_retry() {
    // net-modules sends reserve for the addresses a task named and allocate
    // for the rest, both under the container's uid.
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.13.0.0/24".parse().unwrap(), None, 60)
        .unwrap();
    ipam.reserve("c1", &attrs("h"), &[ip("10.13.0.100")])
        .unwrap();
    let got = ipam.allocate(&req("c1", "h", 1, 0)).unwrap();
    assert_ne!(
        got.ipv4,
        [ip4("10.13.0.100")],
        "a new address, not the reserved one"
    );
    assert_eq!(
        ipam.allocate(&req("c1", "h", 1, 0)).unwrap(),
        got,
        "then retries repeat it"
    );
    let rec = ipam.handle("c1").unwrap().unwrap();
    assert_eq!(rec.addrs.len(), 2);
    assert!(rec.created_ms.is_some());
}

#[test]
fn quarantine_holds_for_addresses_asked_for_by_value() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.14.0.0/24".parse().unwrap(), None, 1)
        .unwrap();
    let a = ip("10.14.0.50");
    ipam.reserve("old", &attrs("h"), &[a]).unwrap();
    ipam.release_handle("old").unwrap();
    // The first to ask sees every live host past the release (there are
    // none) and records that; the quarantine counts from then.
    let err = ipam.reserve("new", &attrs("h"), &[a]).unwrap_err();
    assert!(matches!(err, IpamError::Quarantined { .. }), "{err}");
    let before = s.revision().unwrap();
    let err = ipam.reserve("new", &attrs("h"), &[a]).unwrap_err();
    assert!(matches!(err, IpamError::Quarantined { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("10.14.0.50") && msg.contains("quarantined until 20"),
        "{msg}"
    );
    assert!(
        msg.contains("UTC") && msg.contains("--ignore-quarantine"),
        "{msg}"
    );
    assert_eq!(s.revision().unwrap(), before, "refused: nothing written");
    assert!(ipam.handle("new").unwrap().is_none());
    // The ipv4_addrs label on allocate is by value too.
    let mut r = req("new", "h", 1, 0);
    r.static_addrs = vec![a];
    assert!(matches!(
        ipam.allocate(&r),
        Err(IpamError::Quarantined { .. })
    ));
    // An operator may force it.
    ipam.reserve_with("forced", &attrs("h"), &[a], true)
        .unwrap();
    assert_eq!(ipam.holder(&a).unwrap().as_deref(), Some("forced"));
    ipam.release_handle("forced").unwrap();
    // And once the quarantine has passed, anyone may have it.
    assert!(ipam.reserve("later", &attrs("h"), &[a]).is_err());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ipam.reserve("later", &attrs("h"), &[a]).unwrap();
    assert!(ipam.check_consistency().unwrap().is_empty());
}

#[test]
fn quarantine_counts_from_when_every_live_host_applied_the_release() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    // Two addresses per block: .1 and .2 (.0 and .3 are the pool's edges).
    ipam.add_pool("10.15.0.0/30".parse().unwrap(), Some(30), 1)
        .unwrap();
    let first = ipam.allocate(&req("a", "h1", 1, 0)).unwrap().ipv4[0];
    put_host(&s, "h1", Some(0));
    put_host(&s, "h2", None);
    ipam.release_handle("a").unwrap();
    let released_at = s
        .get(&block_key(&"10.15.0.0/30".parse().unwrap()))
        .unwrap()
        .unwrap()
        .mod_revision;
    let second = ipam.allocate(&req("b", "h1", 1, 0)).unwrap().ipv4[0];
    assert_ne!(second, first);
    // Long after the pool's quarantine, hosts h1 (behind) and h2 (an old
    // node, no revision) still hold it back.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let err = ipam.allocate(&req("c", "h1", 1, 0)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("wait for every live host"), "{msg}");
    assert!(
        msg.contains(&format!("h1 at revision 0 of {released_at}")),
        "{msg}"
    );
    assert!(msg.contains("h2 reports no applied revision"), "{msg}");
    let err = ipam
        .reserve("c", &attrs("h1"), &[IpAddr::V4(first)])
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("until every live host has applied"),
        "{err}"
    );
    // h1 catches up exactly to the release; h2's lease expires (its record goes).
    put_host(&s, "h1", Some(released_at));
    s.txn(&[], &[Op::delete("hosts/h2")]).unwrap();
    // The first allocation to see it confirms the release, even though it
    // fails (nothing else is free) ...
    let err = ipam.allocate(&req("c", "h1", 1, 0)).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 released address(es) are in quarantine"),
        "{err}"
    );
    let block: Block = decode(
        &s.get(&block_key(&"10.15.0.0/30".parse().unwrap()))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let rel = block.released.values().next().expect("still quarantined");
    assert_eq!(
        rel.revision,
        Some(released_at),
        "the release's revision is kept"
    );
    let confirmed = rel
        .confirmed_ms
        .expect("confirmed by the failed allocation");
    // ... and the quarantine counts from then, not from the release.
    assert!(matches!(
        ipam.allocate(&req("c", "h1", 1, 0)),
        Err(IpamError::Exhausted { .. })
    ));
    let wait = (confirmed + 1000 - netmod_now_ms()).max(0) as u64 + 50;
    std::thread::sleep(std::time::Duration::from_millis(wait));
    assert_eq!(ipam.allocate(&req("c", "h1", 1, 0)).unwrap().ipv4[0], first);
    assert!(ipam.check_consistency().unwrap().is_empty());
}

#[test]
fn a_host_ahead_of_the_release_does_not_hold_it_back() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.16.0.0/30".parse().unwrap(), Some(30), 1)
        .unwrap();
    ipam.allocate(&req("a", "h1", 1, 0)).unwrap();
    put_host(&s, "h1", Some(1_000_000));
    ipam.release_handle("a").unwrap();
    let u = ipam.usage().unwrap();
    assert_eq!(u.pools[0].quarantined, 1, "released, not yet confirmed");
    ipam.allocate(&req("b", "h1", 1, 0)).unwrap();
    let block: Block = decode(
        &s.get(&block_key(&"10.16.0.0/30".parse().unwrap()))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert!(block.released.values().all(|r| r.confirmed_ms.is_some()));
}

#[test]
fn a_removal_after_the_release_restarts_the_quarantine() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.17.0.0/24".parse().unwrap(), None, 30)
        .unwrap();
    let a = IpAddr::V4(ipam.allocate(&req("a", "h1", 1, 0)).unwrap().ipv4[0]);
    ipam.release_handle("a").unwrap();
    put_host(&s, "h1", Some(i64::MAX / 2));
    ipam.allocate(&req("b", "h1", 1, 0)).unwrap();
    let key = block_key(&"10.17.0.0/26".parse().unwrap());
    let before: Block = decode(&s.get(&key).unwrap().unwrap()).unwrap();
    assert!(before.released.values().all(|r| r.confirmed_ms.is_some()));
    assert_eq!(
        ipam.restart_quarantine(&[a, ip("10.17.0.9"), ip("10.99.0.1")])
            .unwrap(),
        1
    );
    let kv = s.get(&key).unwrap().unwrap();
    let after: Block = decode(&kv).unwrap();
    let rel = &after.released[&ordinal(&"10.17.0.0/26".parse().unwrap(), &a)];
    assert_eq!(rel.confirmed_ms, None, "hosts must apply the removal again");
    assert_eq!(rel.revision, None, "the revision of this write");
    assert_eq!(
        ipam.blocks().unwrap()[0]
            .released
            .values()
            .next()
            .unwrap()
            .revision,
        Some(kv.mod_revision),
        "read back as the block's revision"
    );
    // Held addresses are left alone.
    let held = IpAddr::V4(
        ipam.handle("b").unwrap().unwrap().addrs[0]
            .to_string()
            .parse()
            .unwrap(),
    );
    assert_eq!(ipam.restart_quarantine(&[held]).unwrap(), 0);
}

#[test]
fn records_this_version_cannot_read_are_skipped_not_fatal() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    ipam.add_pool("10.18.0.0/24".parse().unwrap(), None, 60)
        .unwrap();
    ipam.allocate(&req("a", "h1", 1, 0)).unwrap();
    // A newer version's records: a block of another host, a handle, a pool.
    s.txn(
        &[],
        &[
            Op::put("ipam/blocks/10.18.0.64-26", r#"{"format": 9}"#),
            Op::put("ipam/affinity/h2/10.18.0.64-26", ""),
            Op::put("ipam/handles/new", "not json"),
            Op::put("ipam/pools/10.19.0.0-16", r#"{"cidr": 7}"#),
        ],
    )
    .unwrap();
    let ipam = Ipam::new(&s);
    let got = ipam.allocate(&req("b", "h1", 1, 0)).unwrap().ipv4[0];
    assert!(got.to_string().starts_with("10.18.0."));
    // Another host claims a new block, never the unreadable one.
    let other = ipam.allocate(&req("c", "h3", 1, 0)).unwrap().ipv4[0];
    assert!(!"10.18.0.64/26"
        .parse::<IpNet>()
        .unwrap()
        .contains(&IpAddr::V4(other)));
    assert_eq!(ipam.handles().unwrap().len(), 3);
    let (_, bad) = ipam.handles_checked().unwrap();
    assert_eq!(bad[0].key, "ipam/handles/new");
    let u = ipam.usage().unwrap();
    assert_eq!(u.unreadable.len(), 2, "{:?}", u.unreadable);
    assert_eq!(u.pools.len(), 1);
    let problems = ipam.check_consistency().unwrap();
    assert!(
        problems.iter().any(|p| p.contains("ipam/handles/new")),
        "{problems:?}"
    );
    // What needs the unreadable record says so.
    let err = ipam
        .reserve("d", &attrs("h1"), &[ip("10.18.0.70")])
        .unwrap_err();
    assert!(matches!(err, IpamError::Unreadable(_)), "{err}");
    assert!(
        err.to_string().contains("ipam/blocks/10.18.0.64-26"),
        "{err}"
    );
    let err = ipam
        .reserve("d", &attrs("h1"), &[ip("10.19.0.5")])
        .unwrap_err();
    assert!(err.to_string().contains("ipam/pools/10.19.0.0-16"), "{err}");
    assert!(matches!(
        ipam.add_pool("10.19.128.0/17".parse().unwrap(), None, 60),
        Err(IpamError::Unreadable(_))
    ));
    ipam.add_pool("10.20.0.0/16".parse().unwrap(), None, 60)
        .unwrap();
}

#[test]
fn pools_refuse_reserved_ranges_and_the_callers_networks() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    for (cidr, what) in [
        ("127.0.0.0/8", "loopback"),
        ("127.1.0.0/16", "loopback"),
        ("224.0.0.0/4", "multicast"),
        ("232.0.0.0/8", "multicast"),
        ("169.254.0.0/16", "link-local"),
        ("0.0.0.0/8", "unspecified"),
        ("0.0.0.0/0", "unspecified"),
        ("255.255.255.0/24", "broadcast"),
        ("::1/128", "loopback"),
        ("fe80::/64", "link-local"),
        ("ff00::/8", "multicast"),
        ("::/0", "unspecified"),
    ] {
        let err = ipam
            .add_pool(cidr.parse().unwrap(), None, 60)
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, IpamError::PoolForbidden { .. }),
            "{cidr}: {err}"
        );
        assert!(err.to_string().contains(what), "{cidr}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("pool {cidr} overlaps")),
            "{err}"
        );
    }
    let host = [Forbidden {
        net: "10.1.0.0/16".parse().unwrap(),
        what: "this host's route 10.1.0.0/16 via eth0".into(),
    }];
    let err = ipam
        .add_pool_checked("10.0.0.0/8".parse().unwrap(), None, 60, &host)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool 10.0.0.0/8 overlaps this host's route 10.1.0.0/16 via eth0"
    );
    assert!(ipam.pools().unwrap().is_empty(), "nothing added");
    let p: IpNet = "10.2.0.0/16".parse().unwrap();
    assert_eq!(
        ipam.add_pool_checked(p, None, 60, &host).unwrap().1,
        PoolAdded::Added
    );
    let rev = s.revision().unwrap();
    assert_eq!(
        ipam.add_pool_checked(p, None, 60, &host).unwrap().1,
        PoolAdded::Unchanged
    );
    assert_eq!(s.revision().unwrap(), rev);
    let err = ipam.add_pool(p, Some(24), 60).unwrap_err().to_string();
    assert!(
        err.contains("already exists with blocks /26 and quarantine 60 s"),
        "{err}"
    );
    let err = ipam
        .add_pool("10.2.3.0/24".parse().unwrap(), None, 60)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool 10.2.3.0/24 overlaps pool 10.2.0.0/16"
    );
}

#[test]
fn utc_formats_unix_milliseconds() {
    assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    assert_eq!(utc(1_700_000_000_999), "2023-11-14 22:13:20 UTC");
}

#[test]
fn a_disabled_pool_hands_out_nothing_new_and_keeps_what_it_holds() {
    let (_d, s) = store();
    let ipam = Ipam::new(&s);
    let cidr: IpNet = "10.7.0.0/24".parse().unwrap();
    ipam.add_pool(cidr, Some(28), 0).unwrap();
    let a = ipam.allocate(&req("a", "h1", 1, 0)).unwrap();
    let before = ipam.handle("a").unwrap();
    let pool = ipam
        .set_pool(
            cidr,
            PoolChanges {
                disabled: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(pool.disabled);
    assert_eq!(ipam.pools().unwrap(), vec![pool.clone()], "stored");
    // Nothing new: neither the next free address nor one asked by value.
    assert!(matches!(
        ipam.allocate(&req("b", "h1", 1, 0)),
        Err(IpamError::PoolDisabled(c)) if c == cidr
    ));
    let mut by_value = req("c", "h1", 1, 0);
    by_value.static_addrs = vec![ip("10.7.0.9")];
    let err = ipam.allocate(&by_value).unwrap_err();
    assert!(matches!(err, IpamError::PoolDisabled(_)), "{err}");
    assert!(ipam.handle("b").unwrap().is_none() && ipam.handle("c").unwrap().is_none());
    // What it holds stays, and asking again for it is still answered.
    assert_eq!(ipam.handle("a").unwrap(), before);
    assert_eq!(ipam.allocate(&req("a", "h1", 1, 0)).unwrap(), a);
    // Another pool of the family still serves while this one is disabled.
    ipam.add_pool("10.8.0.0/24".parse().unwrap(), Some(28), 0)
        .unwrap();
    let d = ipam.allocate(&req("d", "h1", 1, 0)).unwrap();
    assert!(
        "10.8.0.0/24"
            .parse::<IpNet>()
            .unwrap()
            .contains(&IpAddr::V4(d.ipv4[0])),
        "{d:?}"
    );
    // Enabled again: it serves again. Other settings were kept.
    let pool = ipam
        .set_pool(
            cidr,
            PoolChanges {
                disabled: Some(false),
                vxlan_mode: Some(netmod_model::VxlanMode::CrossSubnet),
                nat_outgoing: Some(true),
            },
        )
        .unwrap();
    assert_eq!(
        (
            pool.block_prefix,
            pool.quarantine_secs,
            pool.vxlan_mode,
            pool.nat_outgoing
        ),
        (28, 0, netmod_model::VxlanMode::CrossSubnet, true)
    );
    ipam.allocate(&by_value).unwrap();
    assert!(matches!(
        ipam.set_pool("10.9.0.0/24".parse().unwrap(), PoolChanges::default()),
        Err(IpamError::NoSuchPool(_))
    ));
    assert!(ipam.check_consistency().unwrap().is_empty());
}

#[test]
fn pool_options_round_trip_and_old_records_read_as_defaults() {
    let old = r#"{"cidr":"10.1.0.0/16","block_prefix":26,"quarantine_secs":60}"#;
    let p: Pool = serde_json::from_str(old).unwrap();
    assert_eq!(
        (p.vxlan_mode, p.nat_outgoing, p.disabled),
        (netmod_model::VxlanMode::Never, false, false)
    );
    // Defaults are not written: an old netmod reads a new default pool.
    assert_eq!(serde_json::to_string(&p).unwrap(), old);
    let mut q = p.clone();
    q.vxlan_mode = netmod_model::VxlanMode::Always;
    q.nat_outgoing = true;
    let text = serde_json::to_string(&q).unwrap();
    assert_eq!(serde_json::from_str::<Pool>(&text).unwrap(), q);
    assert!(text.contains(r#""vxlan_mode":"Always""#), "{text}");
}
