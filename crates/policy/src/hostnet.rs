//! The nftables objects of routing between hosts, added to a host's table
//! when its pools ask for them:
//! - NAT outgoing: a `nat` chain on postrouting masquerades traffic from a
//!   pool with `natOutgoing` to destinations outside every pool (traffic
//!   between pools is never translated);
//! - VXLAN: the host accepts VXLAN datagrams only from known hosts, and
//!   only with an inner source in the sender's blocks (checked in the
//!   datagram, before decapsulation), and endpoints may not send VXLAN to
//!   any host (or they could inject frames into the overlay).

use netmod_model::nft::*;
use netmod_model::HOST_IFACE_PREFIX;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub const CHAIN_NAT_OUTGOING: &str = "nat_outgoing";
pub const CHAIN_VXLAN_IN: &str = "vxlan_in";

/// Every host's addresses (endpoints may send them no VXLAN).
pub fn hosts_set_name(f: Family) -> String {
    format!("hosts_{}", f.suffix())
}

/// What a host's table needs for routing between hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRouting {
    /// Every pool, and whether it masquerades traffic leaving the cluster.
    pub pools: Vec<(ipnet::IpNet, bool)>,
    /// The VXLAN port, when the host has a vxlan device.
    pub vxlan_port: Option<u16>,
    /// Per remote host (outer source address): the inner source networks
    /// it may send through the overlay.
    pub vxlan_sources: BTreeMap<IpAddr, BTreeSet<ipnet::IpNet>>,
    /// Every live host's addresses.
    pub host_addrs: BTreeSet<IpAddr>,
}

fn rule(matches: Vec<Match>, verdict: Verdict, comment: &str) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.to_string(),
    }
}

fn udp_dport(port: u16) -> Vec<Match> {
    vec![
        Match::L4Proto {
            proto: 17,
            negate: false,
        },
        Match::Port {
            source: false,
            first: port,
            last: port,
            negate: false,
        },
    ]
}

/// The first `len` bits of an address, left-aligned.
fn prefix_bits(net: &ipnet::IpNet) -> (u32, Vec<u8>) {
    let bytes = match net.network() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let len = u32::from(net.prefix_len());
    (len, bytes[..len.div_ceil(8) as usize].to_vec())
}

/// The rule accepting VXLAN from `outer` whose inner source lies in `inner`.
fn vxlan_source_rule(outer: IpAddr, inner: &ipnet::IpNet) -> Option<Rule> {
    let (ethertype, src_offset) = match inner {
        ipnet::IpNet::V4(_) => ([0x08, 0x00], 336),
        ipnet::IpNet::V6(_) => ([0x86, 0xdd], 304),
    };
    let mut matches = vec![Match::AddrInNet {
        source: true,
        net: ipnet::IpNet::from(outer),
        negate: false,
    }];
    matches.push(Match::TransportBits {
        offset: 224,
        len: 16,
        value: ethertype.to_vec(),
    });
    let (len, value) = prefix_bits(inner);
    if len > 0 {
        matches.push(Match::TransportBits {
            offset: src_offset,
            len,
            value,
        });
    }
    Some(rule(
        matches,
        Verdict::Accept,
        &format!("vxlan from {outer}: inner source in {inner}"),
    ))
}

/// Add the routing objects to a host's table.
pub fn add_host_routing(rs: &mut Ruleset, r: &HostRouting) {
    let nat: Vec<Rule> = r
        .pools
        .iter()
        .filter(|(_, masquerade)| *masquerade)
        .map(|(pool, _)| {
            let mut matches = vec![Match::AddrInNet {
                source: true,
                net: *pool,
                negate: false,
            }];
            for (other, _) in &r.pools {
                if other.network().is_ipv4() == pool.network().is_ipv4() {
                    matches.push(Match::AddrInNet {
                        source: false,
                        net: *other,
                        negate: true,
                    });
                }
            }
            rule(
                matches,
                Verdict::Masquerade,
                &format!("nat outgoing: pool {pool} leaving the cluster"),
            )
        })
        .collect();
    if !nat.is_empty() {
        rs.chains.push(ChainDef {
            name: CHAIN_NAT_OUTGOING.into(),
            hook: Some(BaseHook {
                kind: HookKind::Postrouting,
                priority: 100,
                accept_by_default: true,
            }),
            rules: nat,
        });
    }
    let Some(port) = r.vxlan_port else {
        return;
    };
    for f in Family::BOTH {
        rs.sets.insert(
            hosts_set_name(f),
            SetDef {
                name: hosts_set_name(f),
                family: f,
                elements: r
                    .host_addrs
                    .iter()
                    .filter(|a| Family::of(a) == f)
                    .copied()
                    .collect(),
            },
        );
    }
    let mut vxlan_in: Vec<Rule> = r
        .vxlan_sources
        .iter()
        .flat_map(|(outer, nets)| nets.iter().filter_map(|n| vxlan_source_rule(*outer, n)))
        .collect();
    vxlan_in.push(rule(
        vec![],
        Verdict::Drop,
        "vxlan from an unknown host, or an inner source not of the sender's blocks",
    ));
    rs.chains.push(ChainDef {
        name: CHAIN_VXLAN_IN.into(),
        hook: None,
        rules: vxlan_in,
    });
    let no_vxlan_from_endpoints = |f: Family| {
        let mut m = udp_dport(port);
        m.push(Match::DaddrIn {
            set: hosts_set_name(f),
            family: f,
        });
        rule(m, Verdict::Drop, "no VXLAN from an endpoint to any host")
    };
    for chain in rs.chains.iter_mut() {
        match chain.name.as_str() {
            CHAIN_INPUT => {
                // Endpoints' packets go to endpoint_to_host first (they
                // never reach vxlan_in with an endpoint's source).
                let at = chain
                    .rules
                    .iter()
                    .position(|r| r.matches == vec![Match::IifPrefix(HOST_IFACE_PREFIX.into())])
                    .map_or(0, |i| i + 1);
                chain.rules.insert(
                    at,
                    rule(
                        udp_dport(port),
                        Verdict::Jump(CHAIN_VXLAN_IN.into()),
                        "vxlan: only from known hosts, inner sources of their blocks",
                    ),
                );
            }
            // After the source check, before anything accepts.
            CHAIN_FROM_ENDPOINT | CHAIN_ENDPOINT_TO_HOST => {
                for (i, f) in Family::BOTH.into_iter().enumerate() {
                    chain.rules.insert(1 + i, no_vxlan_from_endpoints(f));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset;

    fn net(s: &str) -> ipnet::IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn nat_masquerades_a_pool_leaving_every_pool() {
        let mut rs = ruleset("h1", &[]);
        let before = rs.clone();
        add_host_routing(&mut rs, &HostRouting::default());
        assert_eq!(rs, before, "nothing asked, nothing added");
        add_host_routing(
            &mut rs,
            &HostRouting {
                pools: vec![
                    (net("10.1.0.0/16"), true),
                    (net("10.2.0.0/16"), false),
                    (net("fd00:1::/64"), true),
                ],
                ..Default::default()
            },
        );
        let nat = rs
            .chains
            .iter()
            .find(|c| c.name == CHAIN_NAT_OUTGOING)
            .unwrap();
        let text: Vec<String> = nat.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].starts_with(
                "ip saddr 10.1.0.0/16 ip daddr != 10.1.0.0/16 ip daddr != 10.2.0.0/16 masquerade"
            ),
            "{text:#?}"
        );
        assert!(
            text[1].starts_with("ip6 saddr fd00:1::/64 ip6 daddr != fd00:1::/64 masquerade"),
            "{text:#?}"
        );
        assert_eq!(nat.hook.as_ref().unwrap().kind, HookKind::Postrouting);
    }

    #[test]
    fn vxlan_accepts_known_senders_with_their_inner_sources_only() {
        let mut rs = ruleset("h1", &[]);
        let sources: BTreeMap<IpAddr, BTreeSet<ipnet::IpNet>> = [(
            "10.0.2.3".parse().unwrap(),
            [net("192.168.0.128/26"), net("fd10::80/122")].into(),
        )]
        .into();
        add_host_routing(
            &mut rs,
            &HostRouting {
                vxlan_port: Some(4789),
                vxlan_sources: sources,
                host_addrs: ["10.0.2.3".parse().unwrap(), "10.0.1.1".parse().unwrap()].into(),
                ..Default::default()
            },
        );
        let text = rs.to_string();
        assert!(
            text.contains("ip saddr 10.0.2.3/32 @th,224,16 0x800 @th,336,26 0x302a002 accept"),
            "{text}"
        );
        assert!(
            text.contains("ip saddr 10.0.2.3/32 @th,224,16 0x86dd @th,304,122 0x"),
            "{text}"
        );
        let input = rs.chains.iter().find(|c| c.name == CHAIN_INPUT).unwrap();
        assert_eq!(
            input.rules[1].verdict,
            Verdict::Jump(CHAIN_VXLAN_IN.into()),
            "after the endpoints' own chain"
        );
        for name in [CHAIN_FROM_ENDPOINT, CHAIN_ENDPOINT_TO_HOST] {
            let c = rs.chains.iter().find(|c| c.name == name).unwrap();
            assert_eq!(c.rules[0].matches, vec![Match::SourceNotRoutedViaIif]);
            assert!(c.rules[1]
                .matches
                .iter()
                .any(|m| matches!(m, Match::DaddrIn { set, .. } if set == "hosts_v4")));
            assert_eq!(c.rules[1].verdict, Verdict::Drop);
        }
        assert_eq!(rs.sets["hosts_v4"].elements.len(), 2);
        assert!(rs.sets["hosts_v6"].elements.is_empty());
    }
}
