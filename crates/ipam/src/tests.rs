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
