//! plug / unplug / routes against the real kernel, inside test namespaces.

mod common;

use common::{make_host, prerequisites, TestNs};
use netmod_dataplane::{self as dp, Error, PlugSpec};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::Duration;

fn spec(host_iface: &str, cont: &TestNs, v4: &[&str], v6: &[&str]) -> PlugSpec {
    PlugSpec {
        host_iface: host_iface.into(),
        container_iface: "eth0".into(),
        netns: cont.path(),
        container_mac: netmod_model::container_mac(host_iface, "eth0"),
        ipv4: v4.iter().map(|a| a.parse().unwrap()).collect(),
        ipv6: v6.iter().map(|a| a.parse().unwrap()).collect(),
        mtu: None,
    }
}

/// (local/prefixlen) of every address of `family` on `dev`.
fn addrs(ns: &TestNs, dev: &str, family: &str) -> BTreeSet<String> {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == family)
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// Routes with netmod's protocol as "dst [via gw] dev d [onlink]".
fn our_routes(ns: &TestNs, family: &str) -> BTreeSet<String> {
    let v = ns.ip_json(&[family, "route", "show", "proto", "110"]);
    v.as_array().unwrap().iter().map(describe_route).collect()
}

fn describe_route(r: &Value) -> String {
    let mut s = r["dst"].as_str().unwrap().to_string();
    if let Some(gw) = r["gateway"].as_str() {
        s += &format!(" via {gw}");
    }
    s += &format!(" dev {}", r["dev"].as_str().unwrap());
    let flags = r["flags"].as_array().cloned().unwrap_or_default();
    if flags.iter().any(|f| f == "onlink") {
        s += " onlink";
    }
    s
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn is_up(ns: &TestNs, dev: &str) -> bool {
    let v = ns.ip_json(&["link", "show", "dev", dev]);
    v[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

#[test]
fn plug_v4_sets_up_both_sides_and_carries_traffic() {
    if !prerequisites() {
        return;
    }
    let (host, cont) = (TestNs::new(), TestNs::new());
    make_host(&host);
    let s = spec("nmt4a", &cont, &["10.251.0.5"], &[]);
    let plugged = host.run(|| dp::plug(&s)).expect("plug");
    assert_eq!(
        plugged.container_mac,
        netmod_model::format_mac(&s.container_mac)
    );

    // Container side: MAC, up, lo up, the /32 only, the two gateway routes.
    let eth0 = cont.ip_json(&["link", "show", "dev", "eth0"]);
    assert_eq!(eth0[0]["address"], plugged.container_mac.as_str());
    assert!(is_up(&cont, "eth0") && is_up(&cont, "lo"));
    assert_eq!(addrs(&cont, "eth0", "inet"), set(&["10.251.0.5/32"]));
    assert_eq!(
        our_routes(&cont, "-4"),
        set(&[
            "169.254.1.1 dev eth0",
            "default via 169.254.1.1 dev eth0 onlink"
        ])
    );
    let all = cont.ip_json(&["-4", "route", "show"]);
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "no other v4 routes: {all}"
    );

    // Host side: up, no address, proxy ARP + forwarding, one /32 route.
    let hl = host.ip_json(&["link", "show", "dev", "nmt4a"]);
    assert_eq!(hl[0]["ifindex"], plugged.host_ifindex);
    assert!(is_up(&host, "nmt4a"));
    assert!(addrs(&host, "nmt4a", "inet").is_empty());
    assert_eq!(host.sysctl("net/ipv4/conf/nmt4a/proxy_arp"), "1");
    assert_eq!(host.sysctl("net/ipv4/neigh/nmt4a/proxy_delay"), "0");
    assert_eq!(host.sysctl("net/ipv4/conf/nmt4a/forwarding"), "1");
    assert_eq!(host.sysctl("net/ipv4/ip_forward"), "1");
    assert_eq!(our_routes(&host, "-4"), set(&["10.251.0.5 dev nmt4a"]));
    assert!(our_routes(&host, "-6").is_empty());

    // Traffic host -> container, all inside the test namespaces.
    let listener = cont.listen("10.251.0.5:9000");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let echoed = host.run(|| {
        let addr = "10.251.0.5:9000".parse().unwrap();
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        c.write_all(b"hello")?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf)?;
        std::io::Result::Ok(buf)
    });
    assert_eq!(&echoed.expect("tcp echo"), b"hello");
    server.join().unwrap();

    // Unplug: nothing of ours is left on either side.
    assert!(host.run(|| dp::unplug("nmt4a")).unwrap());
    assert!(host.links("nm").is_empty());
    assert!(cont.links("eth").is_empty());
    assert!(our_routes(&host, "-4").is_empty());
    assert!(!host.run(|| dp::unplug("nmt4a")).unwrap(), "second unplug");
}

#[test]
fn plug_v6_uses_nodad_addresses_and_the_link_local_gateway() {
    if !prerequisites() {
        return;
    }
    let (host, cont) = (TestNs::new(), TestNs::new());
    make_host(&host);
    let s = spec("nmt6a", &cont, &["10.251.0.6"], &["fd4e:6d74::6"]);
    host.run(|| dp::plug(&s)).expect("plug");

    let v = cont.ip_json(&["addr", "show", "dev", "eth0"]);
    let global: Vec<&Value> = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet6" && a["scope"] == "global")
        .collect();
    assert_eq!(global.len(), 1, "{v}");
    assert_eq!(global[0]["local"], "fd4e:6d74::6");
    assert_eq!(global[0]["prefixlen"], 128);
    assert_eq!(global[0]["nodad"], true);
    assert_eq!(
        our_routes(&cont, "-6"),
        set(&["default via fe80::1 dev eth0"])
    );

    assert!(addrs(&host, "nmt6a", "inet6").contains("fe80::1/64"));
    assert_eq!(host.sysctl("net/ipv6/conf/nmt6a/proxy_ndp"), "1");
    assert_eq!(host.sysctl("net/ipv6/conf/nmt6a/forwarding"), "1");
    // Forwarding per interface: the host's other interfaces stay hosts
    // (their router advertisements keep working).
    assert_eq!(host.sysctl("net/ipv6/conf/nmt6a/force_forwarding"), "1");
    assert_eq!(host.sysctl("net/ipv6/conf/all/forwarding"), "0");
    assert_eq!(our_routes(&host, "-6"), set(&["fd4e:6d74::6 dev nmt6a"]));
    assert_eq!(our_routes(&host, "-4"), set(&["10.251.0.6 dev nmt6a"]));

    let _l6 = cont.listen("[fd4e:6d74::6]:9000");
    let _l4 = cont.listen("10.251.0.6:9000");
    assert!(
        host.can_connect("[fd4e:6d74::6]:9000"),
        "tcp6 host -> container"
    );
    assert!(host.can_connect("10.251.0.6:9000"), "tcp host -> container");

    assert!(host.run(|| dp::unplug("nmt6a")).unwrap());
    assert!(our_routes(&host, "-6").is_empty());
}

#[test]
fn plug_into_a_missing_namespace_changes_nothing() {
    if !prerequisites() {
        return;
    }
    let host = TestNs::new();
    let mut s = spec("nmtmiss", &host, &["10.251.0.7"], &[]);
    s.netns = "/run/netns/nmtest-dp-does-not-exist".into();
    let err = host.run(|| dp::plug(&s)).unwrap_err();
    assert!(err.to_string().contains("open container netns"), "{err}");
    assert!(host.links("nm").is_empty());
}

#[test]
fn failure_in_the_container_step_rolls_everything_back() {
    if !prerequisites() {
        return;
    }
    let (host, cont) = (TestNs::new(), TestNs::new());
    // The same address twice: the second RTM_NEWADDR fails with EEXIST.
    let s = spec("nmtdup", &cont, &["10.251.0.8", "10.251.0.8"], &[]);
    let err = host.run(|| dp::plug(&s)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("address 10.251.0.8/32 on eth0 in container"),
        "{msg}"
    );
    assert_eq!(err.os_error(), Some(libc::EEXIST));
    assert!(host.links("nm").is_empty());
    assert!(cont.links("eth").is_empty());
    assert!(our_routes(&host, "-4").is_empty());
}

#[test]
fn failure_in_the_last_host_step_rolls_everything_back() {
    if !prerequisites() {
        return;
    }
    let (host, cont) = (TestNs::new(), TestNs::new());
    make_host(&host);
    // Someone else's route to the container's address: the host route step fails.
    host.ip(&[
        "route",
        "add",
        "10.251.0.9/32",
        "dev",
        "uplink0",
        "proto",
        "110",
    ]);
    let s = spec("nmtlast", &cont, &["10.251.0.9"], &[]);
    let err = host.run(|| dp::plug(&s)).unwrap_err();
    assert!(
        err.to_string().contains("route 10.251.0.9/32 dev nmtlast"),
        "{err}"
    );
    assert!(host.links("nm").is_empty());
    assert!(cont.links("eth").is_empty());
    assert_eq!(our_routes(&host, "-4"), set(&["10.251.0.9 dev uplink0"]));
}

#[test]
fn existing_interfaces_are_refused_and_left_alone() {
    if !prerequisites() {
        return;
    }
    let (host, cont) = (TestNs::new(), TestNs::new());
    host.add_dummy("nmtexist");
    let err = host
        .run(|| dp::plug(&spec("nmtexist", &cont, &["10.251.0.10"], &[])))
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { what } if what.contains("host interface nmtexist")),
        "{err}"
    );
    assert_eq!(host.links("nm"), vec!["nmtexist"]);
    assert!(cont.links("eth").is_empty());

    cont.add_dummy("eth0");
    let err = host
        .run(|| dp::plug(&spec("nmtnew", &cont, &["10.251.0.11"], &[])))
        .unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { what } if what.contains("interface eth0")),
        "{err}"
    );
    assert_eq!(host.links("nm"), vec!["nmtexist"]);
}

#[test]
fn links_are_listed_by_prefix() {
    if !prerequisites() {
        return;
    }
    let (host, cont) = (TestNs::new(), TestNs::new());
    host.run(|| dp::plug(&spec("nmtlist", &cont, &["10.251.0.12"], &[])))
        .expect("plug");
    host.add_dummy("nmtdown");
    host.ip(&["link", "set", "nmtdown", "down"]);
    host.add_dummy("other0");
    let (links, exists, missing) = host.run(|| {
        (
            dp::list_links_with_prefix("nmt").unwrap(),
            dp::link_exists("other0").unwrap(),
            dp::link_exists("nmtgone").unwrap(),
        )
    });
    let summary: BTreeSet<(String, bool)> = links.iter().map(|l| (l.name.clone(), l.up)).collect();
    let expected = [
        ("nmtdown".to_string(), false),
        ("nmtlist".to_string(), true),
    ];
    assert_eq!(summary, expected.into_iter().collect());
    assert!(exists && !missing);
}

#[test]
fn routes_with_our_protocol_are_added_listed_and_removed() {
    if !prerequisites() {
        return;
    }
    let host = TestNs::new();
    host.add_dummy("fabric0");
    host.ip(&["addr", "add", "192.0.2.1/24", "dev", "fabric0"]);
    host.ip(&["addr", "add", "2001:db8::1/64", "dev", "fabric0", "nodad"]);
    host.ip(&["route", "add", "10.98.0.0/24", "via", "192.0.2.20"]);

    let block4: ipnet::IpNet = "10.99.0.0/26".parse().unwrap();
    let block6: ipnet::IpNet = "fd00:99::/122".parse().unwrap();
    let (listed, removed, del_again) = host.run(|| {
        let via4: IpAddr = "192.0.2.10".parse().unwrap();
        dp::add_route(block4, "192.0.2.11".parse().unwrap()).unwrap();
        dp::add_route(block4, via4).unwrap(); // replaces
        dp::add_route(block6, "2001:db8::10".parse().unwrap()).unwrap();
        let listed = dp::list_routes().unwrap();
        let removed = dp::del_routes_not_in(&[block4].into_iter().collect()).unwrap();
        assert!(dp::del_route(block4).unwrap());
        (listed, removed, dp::del_route(block4).unwrap())
    });
    let shown: Vec<String> = listed
        .iter()
        .map(|r| format!("{} {:?} {:?}", r.dst, r.via, r.dev))
        .collect();
    assert_eq!(
        shown,
        vec![
            "10.99.0.0/26 Some(192.0.2.10) Some(\"fabric0\")",
            "fd00:99::/122 Some(2001:db8::10) Some(\"fabric0\")",
        ]
    );
    assert_eq!(removed, vec![block6]);
    assert!(!del_again);
    assert!(our_routes(&host, "-4").is_empty() && our_routes(&host, "-6").is_empty());
    let other = host.ip_json(&["route", "show", "10.98.0.0/24"]);
    assert_eq!(
        other.as_array().unwrap().len(),
        1,
        "foreign route untouched"
    );
}

/// Forgetting an address's flows deletes exactly the conntrack entries to
/// and from it, in this namespace.
#[test]
fn conntrack_forget_deletes_exactly_the_flows_of_an_address() {
    if !prerequisites() {
        return;
    }
    let ns = TestNs::new();
    let (before, deleted, after) = ns.run(|| {
        let ct = |args: &[&str]| {
            let out = std::process::Command::new("conntrack")
                .args(args)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        };
        // Entries made by hand: two flows of 10.9.0.1, one that is not.
        for (src, dst, sport) in [
            ("10.9.0.1", "10.9.0.2", "1001"),
            ("10.9.0.3", "10.9.0.1", "1002"),
            ("10.9.0.3", "10.9.0.4", "1003"),
        ] {
            let out = ct(&[
                "-I", "-p", "udp", "-s", src, "-d", dst, "--sport", sport, "--dport", "53", "-t",
                "60",
            ]);
            assert!(out.contains("1 flow entries have been created"), "{out}");
        }
        let before = ct(&["-L"]);
        let deleted = dp::conntrack_forget(&["10.9.0.1".parse().unwrap()]).unwrap();
        (before, deleted, ct(&["-L"]))
    });
    assert_eq!(before.matches("udp").count(), 3, "{before}");
    assert_eq!(deleted, 2, "{after}");
    assert!(!after.contains("10.9.0.1"), "{after}");
    assert!(after.contains("src=10.9.0.3 dst=10.9.0.4"), "{after}");
}
