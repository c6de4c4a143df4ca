//! Policies printed as YAML or JSON parse back to equal policies.

use netmod_calico::*;

const RICH: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: rich.policy-1
  labels: {team: net, "example.com/tier": gold}
  annotations: {note: "yes", other: "80:90"}
spec:
  order: 10.5
  selector: "!has(quarantine) && role in {'web', 'api'}"
  types: [Ingress, Egress]
  performanceHints: [AssumeNeededOnEveryNode]
  ingress:
    - action: Log
      metadata: {annotations: {why: audit}}
    - action: Allow
      protocol: TCP
      ipVersion: 4
      source:
        nets: [10.0.0.0/8, 192.168.1.7]
        notNets: [10.9.0.0/16]
        selector: "role == 'frontend'"
        notSelector: "env == \"test\""
        ports: ['1024:65535']
        notPorts: [2049]
      destination:
        ports: [80, 443, '8000:8080', 0]
    - action: Deny
      protocol: ICMP
      icmp: {type: 8, code: 0}
      notICMP: {type: 3}
    - action: Pass
      notProtocol: 17
      destination: {notNets: ['fd00::/8']}
  egress:
    - action: Allow
      protocol: 132
      destination: {ports: [36412]}
    - action: Deny
      protocol: ICMPv6
      ipVersion: 6
      icmp: {type: 128}
"#;

fn rich() -> GlobalNetworkPolicy {
    parse_policies(RICH).unwrap().pop().unwrap()
}

#[test]
fn yaml_round_trip() {
    let p = rich();
    let yaml = p.to_yaml();
    let back = parse_policies(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back, vec![p]);
}

#[test]
fn json_round_trip() {
    let p = rich();
    let json = p.to_json();
    assert_eq!(parse_policies(&json).unwrap(), vec![p.clone()]);
    assert_eq!(
        GlobalNetworkPolicy::from_json_value(&p.to_json_value()).unwrap(),
        p
    );
}

#[test]
fn calico_documentation_example_round_trips_and_prints_like_calico() {
    // examples/calico/allow-tcp-6379.yaml, deliberately in the layout
    // Calico prints (sequences not indented under their key): the text is
    // the expected output.
    let text = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: allow-tcp-6379
spec:
  selector: role == 'database'
  types:
  - Ingress
  - Egress
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend'
    destination:
      ports:
      - 6379
  egress:
  - action: Allow
";
    let p = parse_policies(text).unwrap().pop().unwrap();
    assert_eq!(p.to_yaml(), text);
}

#[test]
fn defaults_are_printed_explicitly() {
    let p = parse_policies(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec: {order: 5, egress: [{action: Deny}]}\n",
    )
    .unwrap()
    .pop()
    .unwrap();
    let yaml = p.to_yaml();
    assert!(yaml.contains("types:\n  - Egress\n"), "{yaml}");
    assert!(yaml.contains("order: 5\n"), "{yaml}");
    assert!(!yaml.contains("selector"), "{yaml}");
}

#[test]
fn lists_round_trip() {
    let a = rich();
    let mut b = rich();
    b.name = "other".into();
    b.order = None;
    let both = vec![a, b];
    let yaml = list_to_yaml(&both);
    assert!(yaml.contains("kind: GlobalNetworkPolicyList"), "{yaml}");
    assert_eq!(parse_policies(&yaml).unwrap(), both);
    assert_eq!(parse_policies(&list_to_json(&both)).unwrap(), both);
    assert_eq!(parse_policies(&list_to_yaml(&[])).unwrap(), vec![]);
    // Documents joined with `---` also read back.
    let docs: String = both
        .iter()
        .map(|p| format!("---\n{}", p.to_yaml()))
        .collect();
    assert_eq!(parse_policies(&docs).unwrap(), both);
}

mod generated {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const SELECTORS: [&str; 6] = [
        "",
        "all()",
        "role == 'db'",
        "!has(x) && a in {\"p\", 'q'}",
        "k != \"it's\" || (a == 'b' && has(c))",
        "name starts with 'prod'",
    ];
    const V4: [&str; 4] = ["10.0.0.0/8", "192.168.1.7/32", "172.16.5.4/12", "0.0.0.0/0"];
    const V6: [&str; 3] = ["fd00::/8", "::1/128", "::/0"];

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("yes".to_string()),
            Just("80:90".to_string()),
            Just("- item".to_string()),
            Just("a\nmulti-line\n".to_string()),
            Just("#hash".to_string()),
            Just("'quoted' \"both\"".to_string()),
            "\\PC{0,12}",
        ]
    }

    fn string_map() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map("[a-z]{1,3}(\\.io/[a-z]{1,3})?", text(), 0..3)
    }

    fn selector() -> impl Strategy<Value = Selector> {
        prop::sample::select(&SELECTORS[..]).prop_map(|s| Selector::parse(s).unwrap())
    }

    fn port_ranges() -> impl Strategy<Value = Vec<PortRange>> {
        prop::collection::vec(
            (any::<u16>(), any::<u16>()).prop_map(|(a, b)| PortRange {
                first: a.min(b),
                last: a.max(b),
            }),
            0..3,
        )
    }

    fn nets(v6: bool, allow_catch_all: bool) -> impl Strategy<Value = Vec<ipnet::IpNet>> {
        let pool: Vec<&'static str> = if v6 { V6.to_vec() } else { V4.to_vec() };
        prop::collection::vec(prop::sample::select(pool), 0..3).prop_map(move |v| {
            v.into_iter()
                .map(|s| s.parse::<ipnet::IpNet>().unwrap())
                .filter(|n| allow_catch_all || n.prefix_len() > 0)
                .collect()
        })
    }

    fn entity(v6: bool, ports: bool) -> impl Strategy<Value = EntityRule> {
        (
            nets(v6, true),
            nets(v6, false),
            prop::option::of(
                selector().prop_filter("rule selectors are non-empty", |s| !s.source().is_empty()),
            ),
            prop::option::of(
                selector().prop_filter("rule selectors are non-empty", |s| !s.source().is_empty()),
            ),
            port_ranges(),
            port_ranges(),
        )
            .prop_map(
                move |(nets, not_nets, selector, not_selector, p, np)| EntityRule {
                    nets,
                    not_nets,
                    selector,
                    not_selector,
                    ports: if ports { p } else { vec![] },
                    not_ports: if ports { np } else { vec![] },
                },
            )
    }

    fn protocol() -> impl Strategy<Value = Option<Protocol>> {
        prop::option::of(prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Icmp),
            Just(Protocol::IcmpV6),
            Just(Protocol::Sctp),
            Just(Protocol::UdpLite),
            (1u8..=255).prop_map(Protocol::Number),
        ])
    }

    fn icmp() -> impl Strategy<Value = Option<IcmpMatch>> {
        prop::option::of(
            (0u8..=254, prop::option::of(any::<u8>())).prop_map(|(t, c)| IcmpMatch {
                icmp_type: t,
                code: c,
            }),
        )
    }

    fn rule() -> impl Strategy<Value = Rule> {
        (
            prop::sample::select(vec![Action::Allow, Action::Deny, Action::Log, Action::Pass]),
            string_map(),
            any::<bool>(),
            protocol(),
            protocol(),
            icmp(),
            icmp(),
            prop::option::of(any::<bool>()),
        )
            .prop_flat_map(
                |(action, annotations, v6, protocol, not_protocol, icmp, not_icmp, pin)| {
                    let ports = protocol.is_some_and(Protocol::has_ports);
                    let is_icmp = protocol.is_some_and(Protocol::is_icmp);
                    // ICMP is IPv4's and ICMPv6 IPv6's: pin the version only when allowed.
                    let family = |p: Option<Protocol>| p.map(|p| p.number());
                    let v6 = match (family(protocol), family(not_protocol)) {
                        (Some(1), _) | (_, Some(1)) => false,
                        (Some(58), _) | (_, Some(58)) => true,
                        _ => v6,
                    };
                    let conflict = matches!(
                        (family(protocol), family(not_protocol)),
                        (Some(1), Some(58)) | (Some(58), Some(1))
                    );
                    let ip_version = match pin {
                        Some(true) if !conflict => {
                            Some(if v6 { IpVersion::V6 } else { IpVersion::V4 })
                        }
                        _ => None,
                    };
                    (entity(v6, ports), entity(v6, ports)).prop_map(move |(source, destination)| {
                        Rule {
                            action,
                            annotations: annotations.clone(),
                            ip_version,
                            protocol,
                            not_protocol,
                            icmp: if is_icmp { icmp } else { None },
                            not_icmp: if is_icmp { not_icmp } else { None },
                            source,
                            destination,
                        }
                    })
                },
            )
    }

    fn policy() -> impl Strategy<Value = GlobalNetworkPolicy> {
        (
            "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?".prop_filter("valid name", |n| valid_name(n)),
            string_map(),
            string_map(),
            prop::option::of(prop_oneof![
                (-1000i32..1000).prop_map(f64::from),
                -1e6f64..1e6
            ]),
            selector(),
            prop::collection::vec(rule(), 0..3),
            prop::collection::vec(rule(), 0..3),
            any::<(bool, bool)>(),
            any::<bool>(),
        )
            .prop_map(
                |(name, labels, annotations, order, selector, ingress, egress, extra, hint)| {
                    let defaulted = Types::default_for(!ingress.is_empty(), !egress.is_empty());
                    GlobalNetworkPolicy {
                        name,
                        labels,
                        annotations,
                        order,
                        selector,
                        types: Types {
                            ingress: defaulted.ingress || extra.0,
                            egress: defaulted.egress || extra.1,
                        },
                        ingress,
                        egress,
                        performance_hints: if hint {
                            vec!["AssumeNeededOnEveryNode".into()]
                        } else {
                            vec![]
                        },
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_policy_round_trips_through_yaml_and_json(p in policy()) {
            let yaml = p.to_yaml();
            let back = parse_policies(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
            prop_assert_eq!(&back, &vec![p.clone()], "{}", yaml);
            let json = p.to_json();
            let back = parse_policies(&json).map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
            prop_assert_eq!(&back, &vec![p.clone()]);
            prop_assert_eq!(GlobalNetworkPolicy::from_json_value(&p.to_json_value()).unwrap(), p);
        }

        #[test]
        fn parsing_never_panics(text in any::<String>()) {
            let _ = parse_policies(&text);
        }

        #[test]
        fn parsing_mangled_policies_never_panics(p in policy(), cut in any::<prop::sample::Index>(), junk in "\\PC{0,4}") {
            let yaml = p.to_yaml();
            let at = cut.index(yaml.len() + 1);
            if yaml.is_char_boundary(at) {
                let mangled = format!("{}{junk}{}", &yaml[..at], &yaml[at..]);
                let _ = parse_policies(&mangled);
            }
        }
    }
}
