//! What goes wrong around a node, and must never leave a host open or cut
//! healthy containers off: its table deleted under it, the first endpoint
//! on a host without a node, a host without a default route, a node started
//! under the wrong name, records it cannot read, and state that outlived
//! what it described.

mod common;
use common::hostile::*;
use common::lab::*;
use common::{wait, NETMOD};
use netmod_store::Op;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The seed's isolated pair of netgroups across two hosts: a, c on h1; b, d
/// on h2; a, b in star-1; c, d in star-2.
fn two_groups_two_hosts(pool: &str, opts: FabricOptions) -> Fabric {
    require_lab();
    let mut f = Fabric::with_options(2, pool, opts);
    f.launch("h1", "a", &["star-1"]);
    f.launch("h1", "c", &["star-2"]);
    f.launch("h2", "b", &["star-1"]);
    f.launch("h2", "d", &["star-2"]);
    for (from, to) in [("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")] {
        wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
            f.connects(from, to, 0.5)
        });
    }
    f
}

fn restores(f: &Fabric, host: &str) -> f64 {
    f.metric(host, "netmod_table_restores_total").unwrap_or(0.0)
}

/// Someone deletes the netmod table (`nft delete table`, `nft flush
/// ruleset`): within a second the node has installed it again, exactly as
/// it was, and cross-group traffic is dropped again.
#[test]
fn a_deleted_table_is_back_within_a_second() {
    let f = two_groups_two_hosts("10.136.0.0/16", FabricOptions::default());
    let want = expected_set_elements(&f, "h1");
    wait_for(Duration::from_secs(10), "h1's sets", || {
        f.membership_elements("h1") == want
    });
    let before = table_shape(&f, "h1");
    for (round, how) in ["nft delete table inet netmod", "nft flush ruleset"]
        .into_iter()
        .enumerate()
    {
        let counted = restores(&f, "h1");
        in_host(&f, "h1", how);
        let deleted = Instant::now();
        let mut back = None;
        while deleted.elapsed() < Duration::from_secs(5) {
            if netmod_table_text(&f, "h1").is_some() && table_shape(&f, "h1") == before {
                back = Some(deleted.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let took = back.unwrap_or_else(|| {
            panic!(
                "after `{how}` the table is not back as it was within 5 s: {:#?}",
                table_shape(&f, "h1")
            )
        });
        assert!(
            took <= Duration::from_millis(1500),
            "after `{how}` the table took {took:?} to come back (at most 1.5 s)"
        );
        // Right after the restore: across netgroups, on one host and from
        // the other, nothing passes; within a netgroup it does.
        for (from, to) in [("c", "a"), ("a", "c"), ("d", "a"), ("b", "c")] {
            assert!(
                !f.connects(from, to, 0.7),
                "{from} -> {to} (another netgroup) right after the restore from `{how}`"
            );
        }
        for (from, to) in [("a", "b"), ("b", "a"), ("c", "d"), ("d", "c")] {
            assert!(
                f.connects(from, to, 2.0),
                "control: {from} -> {to} after the restore from `{how}`"
            );
        }
        assert_eq!(
            restores(&f, "h1"),
            counted + 1.0,
            "netmod_table_restores_total counts the restore after `{how}` once (round {round})"
        );
    }
    assert!(
        f.node_log("h1").contains("restoring"),
        "{}",
        f.node_log("h1")
    );
}

/// A new endpoint's policy is in the kernel before its interface exists: on
/// a host with no node and no table, the first isolate installs the table
/// with the endpoint's elements; when policy cannot be programmed, no
/// interface is ever created; when the interface cannot be created, nothing
/// is left.
#[test]
fn a_new_endpoints_policy_is_in_force_before_its_interface_exists() {
    require_lab();
    let mut f = Fabric::new(3, "10.137.0.0/16");
    f.launch("h1", "a", &["star-1"]);
    for (i, host) in [(1, "h2"), (2, "h3")] {
        f.kill_node(i);
        in_host(&f, host, "nft delete table inet netmod");
        assert!(netmod_table_text(&f, host).is_none());
    }

    // The first endpoint on a host without a node or a table.
    f.launch("h2", "x", &["star-1"]);
    assert_eq!(
        f.membership_elements("h2"),
        expected_set_elements(&f, "h2"),
        "the first isolate on h2 installs the table with x's elements (and a's, its netgroup's)"
    );
    assert!(
        !f.set_elements("h2").is_empty() && rule_comments(&f, "h2", "netgroups").len() == 2,
        "{:#?}",
        table_shape(&f, "h2")
    );

    // Policy cannot be programmed: a table named netmod without netmod's
    // chains (no netgroup set or rule can be added to it). The isolate must
    // fail without an interface ever having existed.
    in_host(&f, "h3", "nft add table inet netmod");
    let monitor = LinkMonitor::start(&f, "h3");
    let y = KillOnDrop(f.sandbox("h3"));
    let (y_uid, y_iface) = (f.uid("y"), host_iface(&f, "y"));
    let (code, reply) = f.mesos(
        "h3",
        &json!({"command":"allocate","args":{"hostname":"h3","num_ipv4":1,"num_ipv6":0,
            "uid":y_uid,"netgroups":["star-1"]}}),
    );
    assert_eq!(code, 0, "allocate: {reply}");
    let y_addr = reply["ipv4"][0].as_str().unwrap().to_string();
    let (code, reply) = f.mesos(
        "h3",
        &json!({"command":"isolate","args":{"hostname":"h3","container_id":y_uid,"pid":y.0.id(),
            "ipv4_addrs":[y_addr],"netgroups":["star-1"]}}),
    );
    assert_eq!(code, 1, "isolate into an unusable table must fail: {reply}");
    assert!(reply["error"].is_string(), "{reply}");
    let events = monitor.finish();
    let created: Vec<&String> = events.iter().filter(|l| l.contains(&y_iface)).collect();
    assert!(
        created.is_empty(),
        "the interface {y_iface} existed although its policy could not be programmed: {created:#?}"
    );
    assert_eq!(links_in_pid(y.0.id()), ["lo"]);
    assert!(
        !f.dump()
            .iter()
            .any(|(k, _)| k.starts_with("endpoints/") && k.contains(&y_uid)),
        "a failed isolate left a record"
    );
    drop(y);

    // The interface cannot be created (its name is taken): isolate fails,
    // the taken name is left alone, and no element, record or link of the
    // endpoint remains.
    in_host(&f, "h3", "nft delete table inet netmod");
    let z = KillOnDrop(f.sandbox("h3"));
    let (z_uid, z_iface) = (f.uid("z"), host_iface(&f, "z"));
    in_host(
        &f,
        "h3",
        &format!("ip link add {z_iface} type veth peer name nmtpeer0"),
    );
    let index = |f: &Fabric| {
        f.ns_json("h3", "link")
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == json!(z_iface))
            .map(|l| l["ifindex"].clone())
    };
    let taken = index(&f);
    let (code, reply) = f.mesos(
        "h3",
        &json!({"command":"allocate","args":{"hostname":"h3","num_ipv4":1,"num_ipv6":0,
            "uid":z_uid,"netgroups":["star-1"]}}),
    );
    assert_eq!(code, 0, "allocate: {reply}");
    let z_addr = reply["ipv4"][0].as_str().unwrap().to_string();
    let (code, reply) = f.mesos(
        "h3",
        &json!({"command":"isolate","args":{"hostname":"h3","container_id":z_uid,"pid":z.0.id(),
            "ipv4_addrs":[z_addr],"netgroups":["star-1"]}}),
    );
    assert_eq!(
        code, 1,
        "isolate onto a taken interface name must fail: {reply}"
    );
    assert!(
        reply["error"].as_str().unwrap_or("").contains(&z_iface),
        "the error names the interface: {reply}"
    );
    assert!(
        taken.is_some() && index(&f) == taken,
        "the taken interface was touched"
    );
    assert_eq!(links_in_pid(z.0.id()), ["lo"]);
    assert!(
        !f.set_elements("h3").iter().any(|(_, e)| *e == z_addr),
        "{z_addr} left in h3's sets: {:?}",
        f.set_elements("h3")
    );
    assert!(
        !f.dump()
            .iter()
            .any(|(k, _)| k.starts_with("endpoints/") && k.contains(&z_uid)),
        "a failed isolate left a record"
    );
    drop(z);
}

/// Every container reaches its host, a same-host peer and a peer on the
/// other host in its netgroup, and its host reaches it: on h1, a host with
/// no default route (only its fabric /24), and on h2, which has one.
#[test]
fn containers_on_a_host_without_a_default_route_reach_their_host_and_peers() {
    require_lab();
    let mut f = Fabric::new(2, "10.138.0.0/16");
    in_host(&f, "h1", "ip route del default");
    assert!(
        !f.ns_json("h1", "route")
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == json!("default")),
        "h1 still has a default route"
    );
    f.launch("h1", "a1", &["star-1"]);
    f.launch("h1", "a2", &["star-1"]);
    f.launch("h2", "b1", &["star-1"]);
    f.launch("h2", "b2", &["star-1"]);
    let servers: Vec<KillOnDrop> = ["h1", "h2"]
        .iter()
        .map(|h| serve_in_netns(&f.host(h).ns, &f.host(h).ip, 9100))
        .collect();

    let mut wrong = Vec::new();
    // The host with a default route first: once it passes, the nodes have
    // converged, and the other host's checks need no long wait.
    for (host, mine, peer, far) in [
        ("h2 (default route)", ["b1", "b2"], ["b2", "b1"], "a1"),
        ("h1 (no default route)", ["a1", "a2"], ["a2", "a1"], "b1"),
    ] {
        let hname = &host[..2];
        let limit = Duration::from_secs(if hname == "h2" { 15 } else { 5 });
        for (c, p) in mine.iter().zip(peer) {
            let from_c = format!("nsenter --net=/proc/{}/ns/net", f.container(c).pid);
            let mut check = |what: String, ok: &dyn Fn() -> bool| {
                if wait_until(limit, ok).is_none() {
                    wrong.push(format!("{host}: {what}"));
                }
            };
            check(format!("{c} -> its host {hname}"), &|| {
                connects_with(&from_c, &f.host(hname).ip, 9100, 0.5)
            });
            check(format!("{c} -> {p} (same host)"), &|| f.connects(c, p, 0.5));
            check(format!("{c} -> {far} (other host)"), &|| {
                f.connects(c, far, 0.5)
            });
            check(format!("{hname} -> {c}"), &|| f.connects(hname, c, 0.5));
        }
    }
    drop(servers);
    assert!(wrong.is_empty(), "no connection: {wrong:#?}");
}

/// A node started under another name than the one its containers were
/// plugged under refuses to start, naming the interfaces and the name they
/// belong to, and unplugs nothing; under the right name all is well.
#[test]
fn a_node_under_the_wrong_host_name_refuses_and_unplugs_nothing() {
    require_lab();
    let mut f = Fabric::new(2, "10.139.0.0/16");
    f.launch("h1", "a1", &["star-1"]);
    f.launch("h1", "a2", &["star-1"]);
    f.launch("h2", "b", &["star-1"]);
    for (from, to) in [("a1", "b"), ("b", "a1"), ("a1", "a2")] {
        wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
            f.connects(from, to, 0.5)
        });
    }
    let nmv = |f: &Fabric| {
        let mut l: Vec<String> = link_names(f, "h1")
            .into_iter()
            .filter(|l| l.starts_with("nmv"))
            .collect();
        l.sort();
        l
    };
    let links = nmv(&f);
    assert_eq!(links.len(), 2);
    let table = table_shape(&f, "h1");

    f.kill_node(0);
    let h1 = f.host("h1");
    let mut wrong = Command::new("ip")
        .args(["netns", "exec", &h1.ns, NETMOD, "--store", &f.addr, "node"])
        .args(["--hostname", "h1.example.com", "--host-ip", &h1.ip])
        .args(["--lease-ttl", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(20), || {
        wrong.try_wait().unwrap().is_some()
    });
    if exited.is_none() {
        kill_child(wrong);
        panic!("the node under the wrong name is still running after 20 s");
    }
    let out = wait(&mut wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must exit non-zero: {stderr}");
    for l in &links {
        assert!(stderr.contains(l.as_str()), "the error names {l}: {stderr}");
    }
    assert!(
        stderr.contains("\"h1\""),
        "the error names the host the interfaces belong to: {stderr}"
    );
    assert_eq!(nmv(&f), links, "interfaces after the refused start");
    assert_eq!(
        table_shape(&f, "h1"),
        table,
        "the table after the refused start"
    );
    for (from, to) in [("a1", "a2"), ("a2", "a1"), ("h1", "a1"), ("h1", "a2")] {
        assert!(
            f.connects(from, to, 2.0),
            "{from} -> {to} after the refused start"
        );
    }

    // Under its right name the node starts and everything works.
    f.start_node(0);
    for (from, to) in [("a1", "b"), ("b", "a1"), ("a2", "b"), ("a1", "a2")] {
        wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
            f.connects(from, to, 0.5)
        });
    }
    assert_eq!(nmv(&f), links);
    assert!(
        !f.node_log("h1").contains("removing leftover"),
        "{}",
        f.node_log("h1")
    );
}

/// A record that no version of netmod could read, under an endpoint key:
/// every node logs and counts it, skips it, and goes on applying the rest,
/// both from the change feed and in a first resync.
#[test]
fn an_undecodable_record_is_skipped_and_nothing_else_stops() {
    require_lab();
    let mut f = Fabric::new(3, "10.140.0.0/16");
    f.launch("h1", "a", &["star-1"]);
    const KEY: &str = "endpoints/h9/x/eth0";
    f.with_store(|s| {
        s.txn(&[], &[Op::put(KEY, b"\xff\x00{not json".to_vec())])
            .unwrap()
    });
    // A later launch on another host is applied everywhere.
    f.launch("h2", "b", &["star-1"]);
    for (from, to) in [("a", "b"), ("b", "a")] {
        wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
            f.connects(from, to, 0.5)
        });
    }
    for host in ["h1", "h2", "h3"] {
        wait_for(
            Duration::from_secs(10),
            &format!("{host} counts the undecodable record"),
            || {
                f.metric(host, "netmod_undecodable_records_total")
                    .unwrap_or(0.0)
                    > 0.0
            },
        );
        assert!(
            f.node_log(host).contains(&format!("skipping record {KEY}")),
            "{host}'s log: {}",
            f.node_log(host)
        );
        assert_eq!(
            f.membership_elements(host),
            expected_set_elements(&f, host),
            "{host}'s sets"
        );
    }
    // A node whose first resync finds the record starts and applies.
    f.kill_node(2);
    f.start_node(2);
    f.launch("h3", "c", &["star-1"]);
    for (from, to) in [("c", "a"), ("a", "c"), ("c", "b"), ("b", "c")] {
        wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
            f.connects(from, to, 0.5)
        });
    }
    let out = f.netmod(&["-o", "json", "endpoints"]);
    assert!(out.status.success(), "netmod endpoints: {out:?}");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
}

/// When the last member of a netgroup on a host goes, the netgroup's sets
/// and rules leave that host's kernel while the node runs, and the node's
/// set gauge follows the kernel. A new member brings them back complete.
#[test]
fn a_netgroup_that_leaves_a_host_leaves_its_kernel() {
    let mut f = two_groups_two_hosts("10.141.0.0/16", FabricOptions::default());
    // Every host's base sets: profiles, and the endpoints some policy selects.
    let base = [
        "grouped_v4",
        "grouped_v6",
        "public_v4",
        "public_v6",
        "selected_egress_v4",
        "selected_egress_v6",
        "selected_ingress_v4",
        "selected_ingress_v6",
    ];
    let with = |groups: &[&str]| {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        for g in groups {
            v.push(format!("{g}_v4"));
            v.push(format!("{g}_v6"));
        }
        v.sort();
        v
    };
    assert_eq!(set_names(&f, "h1"), with(&["g_star_2d1", "g_star_2d2"]));

    f.stop("c");
    let gone = wait_until(Duration::from_secs(10), || {
        set_names(&f, "h1") == with(&["g_star_2d1"])
    });
    assert!(
        gone.is_some(),
        "star-2's sets stay on h1 after its last member there left: {:?}",
        set_names(&f, "h1")
    );
    assert_eq!(
        rule_comments(&f, "h1", "netgroups"),
        ["netgroup star-1", "netgroup star-1"],
        "h1's netgroup rules"
    );
    assert_eq!(f.membership_elements("h1"), expected_set_elements(&f, "h1"));
    let sets_gauge = |f: &Fabric, host: &str| {
        wait_until(Duration::from_secs(10), || {
            f.metric(host, "netmod_nft_sets") == Some(set_names(f, host).len() as f64)
        })
        .is_some()
    };
    assert!(
        sets_gauge(&f, "h1"),
        "netmod_nft_sets is {:?}, the kernel holds {} sets",
        f.metric("h1", "netmod_nft_sets"),
        set_names(&f, "h1").len()
    );
    // h2 still has a star-2 member: its sets stay.
    assert_eq!(set_names(&f, "h2"), with(&["g_star_2d1", "g_star_2d2"]));

    // A star-2 member on h1 again: the sets come back with every member.
    f.launch("h1", "c2", &["star-2"]);
    for (from, to) in [("c2", "d"), ("d", "c2")] {
        wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
            f.connects(from, to, 0.5)
        });
    }
    assert_eq!(set_names(&f, "h1"), with(&["g_star_2d1", "g_star_2d2"]));
    assert_eq!(f.membership_elements("h1"), expected_set_elements(&f, "h1"));
    assert!(sets_gauge(&f, "h1"), "netmod_nft_sets after c2");
}

/// An endpoint record whose interface is gone (a cleanup that never came)
/// is removed by its host's node once the grace period is over: the record
/// goes, its addresses are released, and they leave every set on every
/// host. Records whose interfaces exist stay.
#[test]
fn a_record_whose_interface_is_gone_is_collected_after_its_grace() {
    require_lab();
    let mut f = Fabric::with_options(
        2,
        "10.142.0.0/16",
        FabricOptions {
            stale_record_grace: Some(2),
            resync_interval: 2,
            ..FabricOptions::default()
        },
    );
    f.launch("h1", "a", &["star-1"]);
    f.launch("h1", "a2", &["star-1"]);
    f.launch("h2", "b", &["star-1"]);
    for (from, to) in [("a", "b"), ("a2", "b")] {
        wait_for(Duration::from_secs(15), &format!("{from} -> {to}"), || {
            f.connects(from, to, 0.5)
        });
    }
    let (a_uid, a_addr) = (f.uid("a"), f.container("a").addr.clone());
    let a_iface = host_iface(&f, "a");
    in_host(&f, "h1", &format!("ip link del {a_iface}"));
    forget_container(&mut f, "a");

    let record = format!("endpoints/h1/{a_uid}/eth0");
    let held = |f: &Fabric| -> Vec<String> {
        f.dump()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| {
                *k == record
                    || *k == format!("ipam/handles/{a_uid}")
                    || *k == format!("addrs/{a_addr}")
                    || k.ends_with(&format!("/{a_addr}")) && k.starts_with("netgroups/")
            })
            .collect()
    };
    assert!(
        !held(&f).is_empty(),
        "control: a's records before the grace"
    );
    let in_sets = |f: &Fabric| -> Vec<(String, String, String)> {
        ["h1", "h2"]
            .iter()
            .flat_map(|h| {
                f.set_elements(h)
                    .into_iter()
                    .filter(|(_, e)| *e == a_addr)
                    .map(|(s, e)| (h.to_string(), s, e))
            })
            .collect()
    };
    let collected = wait_until(Duration::from_secs(30), || {
        held(&f).is_empty() && in_sets(&f).is_empty()
    });
    assert!(
        collected.is_some(),
        "a's record is not collected 30 s after its interface went: records {:?}, sets {:?}",
        held(&f),
        in_sets(&f)
    );
    assert!(
        f.metric("h1", "netmod_stale_records_removed_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    // The others are untouched.
    let keys: Vec<String> = f.dump().into_iter().map(|(k, _)| k).collect();
    for n in ["a2", "b"] {
        let host = f.container(n).host.clone();
        let key = format!("endpoints/{host}/{}/eth0", f.uid(n));
        assert!(keys.contains(&key), "{n}'s record was removed");
    }
    assert!(f.connects("a2", "b", 2.0), "a2 -> b after the collection");
    for host in ["h1", "h2"] {
        assert_eq!(
            f.membership_elements(host),
            expected_set_elements(&f, host),
            "{host}'s sets"
        );
    }
    // The address was released: a new task gets it once its quarantine is over.
    launch_reserved(
        &mut f,
        "h1",
        "a3",
        &["star-1"],
        &a_addr,
        Duration::from_secs(20),
        |_| {},
    );
    wait_for(Duration::from_secs(15), "a3 -> b", || {
        f.connects("a3", "b", 0.5)
    });
}
