//! IPAM on the etcd backend, many allocators at once. Uses the etcd at
//! `NETMOD_TEST_ETCD`, or starts one on loopback (see `netmod_store::etcd_server`).

use netmod_ipam::{AllocRequest, Ipam, IpamError};
use netmod_model::AllocAttrs;
use netmod_store::etcd_server::TestEtcd;
use std::net::IpAddr;
use std::sync::{Arc, Barrier};

fn attrs(host: &str) -> AllocAttrs {
    AllocAttrs {
        host: host.into(),
        ..Default::default()
    }
}

#[test]
fn sixteen_allocators_on_four_hosts_never_share_an_address() {
    let Some(etcd) = TestEtcd::get("sixteen_allocators_on_four_hosts_never_share_an_address")
    else {
        return;
    };
    let addr = etcd.fresh_address();
    let admin = netmod_store::open(&addr).unwrap();
    Ipam::new(&*admin)
        .add_pool("10.20.0.0/16".parse().unwrap(), None, 60)
        .unwrap();
    let (threads, total) = (16, 2000);
    let start = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (addr, start) = (addr.clone(), start.clone());
            std::thread::spawn(move || {
                let store = netmod_store::open(&addr).unwrap();
                let ipam = Ipam::new(&*store);
                start.wait();
                (0..total / threads)
                    .map(|i| {
                        let req = AllocRequest {
                            handle: format!("t{t}-{i}"),
                            attrs: attrs(&format!("host{}", t % 4)),
                            num_ipv4: 1,
                            ..Default::default()
                        };
                        ipam.allocate(&req).unwrap().ipv4[0]
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<_> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(all.len(), total);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "no address twice");
    let ipam = Ipam::new(&*admin);
    assert_eq!(ipam.check_consistency().unwrap(), Vec::<String>::new());
    assert_eq!(ipam.handles().unwrap().len(), total);
    // Each host allocated from blocks of its own.
    for h in 0..4 {
        assert!(!ipam.host_blocks(&format!("host{h}")).unwrap().is_empty());
    }
}

#[test]
fn overlapping_reserves_have_exactly_one_winner() {
    let Some(etcd) = TestEtcd::get("overlapping_reserves_have_exactly_one_winner") else {
        return;
    };
    let addr = etcd.fresh_address();
    let admin = netmod_store::open(&addr).unwrap();
    Ipam::new(&*admin)
        .add_pool("10.21.0.0/24".parse().unwrap(), None, 60)
        .unwrap();
    let (threads, rounds) = (8, 20);
    let ip = |n: usize| -> IpAddr { format!("10.21.0.{}", 10 + n).parse().unwrap() };
    let barrier = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (addr, barrier) = (addr.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = netmod_store::open(&addr).unwrap();
                let ipam = Ipam::new(&*store);
                (0..rounds)
                    .map(|r| {
                        // Everyone wants the same pair this round; half also want
                        // the next round's first address.
                        let mut want = vec![ip(3 * r), ip(3 * r + 1)];
                        if t % 2 == 1 {
                            want.push(ip(3 * r + 2));
                        }
                        barrier.wait();
                        match ipam.reserve(
                            &format!("t{t}-r{r}"),
                            &attrs(&format!("host{}", t % 4)),
                            &want,
                        ) {
                            Ok(()) => true,
                            Err(IpamError::InUse { .. }) => false,
                            Err(e) => panic!("round {r}: {e}"),
                        }
                    })
                    .collect::<Vec<bool>>()
            })
        })
        .collect();
    let mut winners_of: Vec<Vec<usize>> = vec![Vec::new(); rounds];
    for (t, worker) in workers.into_iter().enumerate() {
        for (r, won) in worker.join().unwrap().into_iter().enumerate() {
            if won {
                winners_of[r].push(t);
            }
        }
    }
    let ipam = Ipam::new(&*admin);
    for (r, winners) in winners_of.iter().enumerate() {
        assert_eq!(winners.len(), 1, "round {r}: winners {winners:?}");
        let rec = ipam
            .handle(&format!("t{}-r{r}", winners[0]))
            .unwrap()
            .unwrap();
        assert!(rec.addrs.contains(&ip(3 * r)) && rec.addrs.contains(&ip(3 * r + 1)));
        for t in (0..threads).filter(|&t| t != winners[0]) {
            assert!(
                ipam.handle(&format!("t{t}-r{r}")).unwrap().is_none(),
                "a loser holds nothing"
            );
        }
    }
    let mut held: Vec<IpAddr> = ipam
        .handles()
        .unwrap()
        .into_iter()
        .flat_map(|h| h.addrs)
        .collect();
    let n = held.len();
    held.sort();
    held.dedup();
    assert_eq!(held.len(), n, "no address held twice");
    assert_eq!(ipam.check_consistency().unwrap(), Vec::<String>::new());
}
