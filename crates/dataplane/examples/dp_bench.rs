//! Times the dataplane's hot paths in throwaway namespaces (needs root and `ip`):
//! plug, unplug, and nft_apply of one set element next to a 5,000-element set.
//!
//! `cargo run --release -p netmod-dataplane --example dp_bench [-- ITERATIONS]`
//!
//! Prints one line per measurement and a last line of JSON (milliseconds).

use netmod_dataplane::{self as dp, PlugSpec};
use netmod_model::nft::{Change, Family, Ruleset, SetDef};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// A namespace named `nmtest-bench-<pid>-<tag>`, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("nmtest-bench-{}-{tag}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "ip netns add {name} (root needed)"
        );
        Ns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// (median, p90, p99) in milliseconds.
fn stats(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), at(0.99))
}

fn time(f: impl FnOnce()) -> f64 {
    let start = Instant::now();
    f();
    start.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .map_or(50, |n| n.parse().expect("a count"));
    let (host, cont) = (Ns::new("host"), Ns::new("cont"));
    let spec = PlugSpec {
        host_iface: "nmbench0".into(),
        container_iface: "eth0".into(),
        netns: cont.path(),
        container_mac: netmod_model::container_mac("bench", "eth0"),
        ipv4: vec![Ipv4Addr::new(10, 251, 7, 1)],
        ipv6: vec!["fd4e:6d74:7::1".parse().unwrap()],
        mtu: None,
    };
    let results = dp::in_netns(&host.path(), || {
        let (mut plug, mut unplug, mut add, mut del) = (vec![], vec![], vec![], vec![]);
        for _ in 0..iterations {
            plug.push(time(|| {
                dp::plug(&spec).expect("plug");
            }));
            unplug.push(time(|| {
                dp::unplug(&spec.host_iface).expect("unplug");
            }));
        }
        let big: SetDef = SetDef {
            name: "g_bench_v4".into(),
            family: Family::V4,
            elements: (0..5000u32)
                .map(|i| IpAddr::from((0x0afb_0000 + i).to_be_bytes()))
                .collect(),
        };
        let mut ruleset = Ruleset::default();
        ruleset.sets.insert(big.name.clone(), big);
        dp::nft_replace_all(&ruleset).expect("replace_all");
        let one = |i: usize| vec![IpAddr::from([10, 252, (i >> 8) as u8, i as u8])];
        for i in 0..iterations {
            let (set, family) = ("g_bench_v4".to_string(), Family::V4);
            let elements = one(i);
            add.push(time(|| {
                let change = Change::AddElements {
                    set: set.clone(),
                    family,
                    elements: elements.clone(),
                };
                dp::nft_apply(&[change]).expect("add element");
            }));
            del.push(time(|| {
                dp::nft_apply(&[Change::DeleteElements {
                    set,
                    family,
                    elements,
                }])
                .expect("delete element");
            }));
        }
        // Cold: a fresh thread opens its socket and closes it on exit, as a
        // short-lived plugin process does.
        let (mut add_cold, mut del_cold) = (vec![], vec![]);
        for i in 0..iterations {
            for delete in [false, true] {
                let (set, family, elements) = ("g_bench_v4".to_string(), Family::V4, one(i));
                let change = match delete {
                    false => Change::AddElements {
                        set,
                        family,
                        elements,
                    },
                    true => Change::DeleteElements {
                        set,
                        family,
                        elements,
                    },
                };
                let samples = if delete { &mut del_cold } else { &mut add_cold };
                samples.push(time(|| {
                    let t = std::thread::spawn(move || dp::nft_apply(&[change]).expect("apply"));
                    t.join().unwrap();
                }));
            }
        }
        dp::nft_delete_table().expect("delete table");
        [
            ("plug", plug),
            ("unplug", unplug),
            ("nft_add_element", add),
            ("nft_del_element", del),
            ("nft_add_element_cold", add_cold),
            ("nft_del_element_cold", del_cold),
        ]
    })
    .expect("enter bench namespace");

    let mut json = Vec::new();
    for (name, samples) in results {
        let (median, p90, p99) = stats(samples);
        println!(
            "{name:21} median {median:.3} ms  p90 {p90:.3} ms  p99 {p99:.3} ms  ({iterations} runs)"
        );
        json.push(format!(
            "\"{name}_ms\":{{\"median\":{median:.4},\"p90\":{p90:.4},\"p99\":{p99:.4}}}"
        ));
    }
    println!("{{{}}}", json.join(","));
}
