use super::*;

/// Calico's documentation example, unchanged (shared/reference/calico-policy.md):
/// `examples/calico/allow-tcp-6379.yaml`, a comment header naming its page and
/// then the example.
pub(crate) const DOC_EXAMPLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/calico/allow-tcp-6379.yaml"
));

fn parse_ok(text: &str) -> Vec<GlobalNetworkPolicy> {
    parse_policies(text).unwrap_or_else(|e| panic!("should parse: {e}\n---\n{text}"))
}

fn one(text: &str) -> GlobalNetworkPolicy {
    let mut all = parse_ok(text);
    assert_eq!(all.len(), 1);
    all.pop().unwrap()
}

fn fails(text: &str) -> Error {
    match parse_policies(text) {
        Ok(p) => panic!("should fail, parsed {p:?}\n---\n{text}"),
        Err(e) => e,
    }
}

/// A policy named `p` with this spec body (YAML, indented by the caller
/// as if under `spec:` with two spaces).
fn with_spec(spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\nspec:\n{spec}"
    )
}

/// A policy whose only ingress rule is this flow mapping.
fn with_rule(rule: &str) -> String {
    with_spec(&format!("  ingress:\n    - {rule}\n"))
}

fn rule_of(rule: &str) -> Rule {
    one(&with_rule(rule)).ingress.remove(0)
}

fn rule_error(rule: &str) -> String {
    fails(&with_rule(rule)).to_string()
}

fn assert_msg(err: String, expected: &str) {
    assert_eq!(err, expected);
}

fn assert_contains(err: String, part: &str) {
    assert!(err.contains(part), "{err:?} should contain {part:?}");
}

// --- Accepted input ---------------------------------------------------------

#[test]
fn calico_documentation_example() {
    let p = one(DOC_EXAMPLE);
    assert_eq!(p.name, "allow-tcp-6379");
    assert_eq!(p.order, None);
    assert_eq!(p.selector, Selector::parse("role == 'database'").unwrap());
    assert_eq!(p.selector.source(), "role == 'database'");
    assert_eq!(
        p.types,
        Types {
            ingress: true,
            egress: true
        }
    );
    assert_eq!(p.ingress.len(), 1);
    let r = &p.ingress[0];
    assert_eq!(r.action, Action::Allow);
    assert_eq!(r.protocol, Some(Protocol::Tcp));
    assert_eq!(
        r.source.selector,
        Some(Selector::parse("role == 'frontend'").unwrap())
    );
    assert_eq!(r.destination.ports, vec![PortRange::single(6379)]);
    assert_eq!(p.egress, vec![Rule::new(Action::Allow)]);
}

#[test]
fn current_calico_reference_sample_with_rule_metadata() {
    // docs.tigera.io, GlobalNetworkPolicy reference, "Sample YAML".
    let p = one(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/calico/allow-tcp-6379-rule-metadata.yaml"
    )));
    let a = &p.ingress[0].annotations;
    assert_eq!(a.get("from").map(String::as_str), Some("frontend"));
    assert_eq!(a.get("to").map(String::as_str), Some("database"));
}

#[test]
fn many_yaml_documents_with_empty_ones_and_comments() {
    let text = format!(
        "# policies\n---\n{DOC_EXAMPLE}---\n# nothing here\n---\n{}\n---\n",
        with_spec("  selector: has(x)\n").replace("name: p", "name: q")
    );
    let all = parse_ok(&text);
    assert_eq!(
        all.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        vec!["allow-tcp-6379", "q"]
    );
}

#[test]
fn empty_input_gives_no_policies() {
    for text in [
        "",
        "\n",
        "# just a comment\n",
        "---\n",
        "---\n---\n",
        "[]",
        "  ",
    ] {
        assert_eq!(parse_ok(text), vec![], "{text:?}");
    }
}

#[test]
fn json_object_array_and_concatenated_values() {
    let p = one(DOC_EXAMPLE);
    let json = p.to_json();
    assert_eq!(one(&json), p);
    let array = format!("[{json}, {}]", json.replace("allow-tcp-6379", "second"));
    let all = parse_ok(&array);
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].name, "second");
    let stream = format!("{json}\n{}", json.replace("allow-tcp-6379", "second"));
    assert_eq!(parse_ok(&stream).len(), 2);
    // YAML flow style at the top is YAML, not broken JSON.
    let flow = "{apiVersion: projectcalico.org/v3, kind: GlobalNetworkPolicy, metadata: {name: f}}";
    assert_eq!(one(flow).name, "f");
    // JSON with a leading byte-order mark and whitespace.
    assert_eq!(one(&format!("\u{feff}\n  {json}")), p);
}

#[test]
fn lists_of_policies() {
    let list = "\
apiVersion: v1
kind: List
items:
  - apiVersion: projectcalico.org/v3
    kind: GlobalNetworkPolicy
    metadata: {name: a}
  - apiVersion: projectcalico.org/v3
    kind: GlobalNetworkPolicy
    metadata: {name: b}
";
    assert_eq!(parse_ok(list).len(), 2);
    let calicoctl = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicyList
metadata:
  resourceVersion: \"1234\"
items:
  - apiVersion: projectcalico.org/v3
    kind: GlobalNetworkPolicy
    metadata: {name: a}
";
    assert_eq!(parse_ok(calicoctl)[0].name, "a");
    let sequence = "\
- apiVersion: projectcalico.org/v3
  kind: GlobalNetworkPolicy
  metadata: {name: a}
- apiVersion: projectcalico.org/v3
  kind: GlobalNetworkPolicy
  metadata: {name: b}
";
    assert_eq!(parse_ok(sequence).len(), 2);
    let empty = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicyList\nitems: []\n";
    assert_eq!(parse_ok(empty), vec![]);
}

#[test]
fn minimal_policy_defaults() {
    let p =
        one("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: p\n");
    assert!(p.selector.is_all());
    assert_eq!(p.selector.source(), "");
    assert_eq!(
        p.types,
        Types {
            ingress: true,
            egress: false
        }
    );
    assert!(p.ingress.is_empty() && p.egress.is_empty());
    assert!(p.labels.is_empty() && p.annotations.is_empty() && p.performance_hints.is_empty());
}

#[test]
fn types_default_as_calico_does() {
    let types = |spec: &str| one(&with_spec(spec)).types;
    let t = |ingress, egress| Types { ingress, egress };
    // Calico's table: no rules → Ingress; ingress only → Ingress;
    // egress only → Egress; both → Ingress, Egress.
    assert_eq!(types("  selector: all()\n"), t(true, false));
    assert_eq!(types("  ingress: [{action: Allow}]\n"), t(true, false));
    assert_eq!(types("  egress: [{action: Allow}]\n"), t(false, true));
    assert_eq!(
        types("  ingress: [{action: Allow}]\n  egress: [{action: Allow}]\n"),
        t(true, true)
    );
    // Empty lists count as absent rules; an empty types list as no types.
    assert_eq!(types("  ingress: []\n  egress: []\n"), t(true, false));
    assert_eq!(
        types("  types: []\n  egress: [{action: Deny}]\n"),
        t(false, true)
    );
    // Explicit types win.
    assert_eq!(types("  types: [Egress]\n"), t(false, true));
    assert_eq!(types("  types: [Egress, Ingress]\n"), t(true, true));
    assert_eq!(
        types("  types: [Ingress, Egress]\n  ingress: []\n"),
        t(true, true)
    );
}

#[test]
fn order_values() {
    let order = |o: &str| one(&with_spec(&format!("  order: {o}\n"))).order;
    assert_eq!(order("100"), Some(100.0));
    assert_eq!(order("10.5"), Some(10.5));
    assert_eq!(order("-3"), Some(-3.0));
    assert_eq!(order("1e3"), Some(1000.0));
    assert_eq!(order("~"), None);
}

#[test]
fn metadata_labels_annotations_and_hints_are_kept() {
    let p = one("\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: a.b-c
  labels: {team: net}
  annotations: {note: \"x: y\"}
spec:
  performanceHints: [AssumeNeededOnEveryNode]
");
    assert_eq!(p.name, "a.b-c");
    assert_eq!(p.labels.get("team").map(String::as_str), Some("net"));
    assert_eq!(p.annotations.get("note").map(String::as_str), Some("x: y"));
    assert_eq!(p.performance_hints, vec!["AssumeNeededOnEveryNode"]);
}

#[test]
fn calico_fields_with_their_no_effect_value_are_accepted() {
    // As `calicoctl get -o yaml` exports print them.
    let p = one(&with_spec(
        "  tier: default\n  doNotTrack: false\n  preDNAT: false\n  applyOnForward: false\n  namespaceSelector: ''\n  serviceAccountSelector: ''\n  ingress:\n    - action: Log\n      source: {namespaceSelector: ''}\n      destination: {}\n",
    ));
    assert_eq!(p.ingress, vec![Rule::new(Action::Log)]);
}

#[test]
fn null_fields_count_as_absent() {
    let p = one(&with_spec(
        "  order:\n  selector:\n  types:\n  ingress:\n  egress:\n    - action: Deny\n      source:\n      protocol: ~\n",
    ));
    assert_eq!(p.order, None);
    assert!(p.selector.is_all());
    assert_eq!(p.egress, vec![Rule::new(Action::Deny)]);
    assert_eq!(
        p.types,
        Types {
            ingress: false,
            egress: true
        }
    );
}

#[test]
fn every_action() {
    for (text, action) in [
        ("Allow", Action::Allow),
        ("Deny", Action::Deny),
        ("Log", Action::Log),
        ("Pass", Action::Pass),
    ] {
        assert_eq!(rule_of(&format!("{{action: {text}}}")).action, action);
    }
}

#[test]
fn protocols_by_name_and_number() {
    for (text, protocol, number) in [
        ("TCP", Protocol::Tcp, 6),
        ("UDP", Protocol::Udp, 17),
        ("ICMP", Protocol::Icmp, 1),
        ("ICMPv6", Protocol::IcmpV6, 58),
        ("SCTP", Protocol::Sctp, 132),
        ("UDPLite", Protocol::UdpLite, 136),
        ("1", Protocol::Number(1), 1),
        ("6", Protocol::Number(6), 6),
        ("255", Protocol::Number(255), 255),
    ] {
        let r = rule_of(&format!(
            "{{action: Allow, protocol: {text}, notProtocol: {text}}}"
        ));
        assert_eq!(r.protocol, Some(protocol));
        assert_eq!(r.not_protocol, Some(protocol));
        assert_eq!(protocol.number(), number);
    }
    // A number keeps the rights of its name: ports with protocol 6.
    let r = rule_of("{action: Allow, protocol: 6, destination: {ports: [22]}}");
    assert_eq!(r.destination.ports, vec![PortRange::single(22)]);
    let r = rule_of("{action: Allow, protocol: 58, icmp: {type: 128}}");
    assert!(r.icmp.is_some());
}

#[test]
fn icmp_and_not_icmp() {
    let r =
        rule_of("{action: Allow, protocol: ICMP, icmp: {type: 3, code: 1}, notICMP: {type: 8}}");
    assert_eq!(
        r.icmp,
        Some(IcmpMatch {
            icmp_type: 3,
            code: Some(1)
        })
    );
    assert_eq!(
        r.not_icmp,
        Some(IcmpMatch {
            icmp_type: 8,
            code: None
        })
    );
    let r = rule_of("{action: Allow, protocol: ICMP, icmp: {type: 254, code: 255}}");
    assert_eq!(r.icmp.unwrap().icmp_type, 254);
    let r = rule_of("{action: Allow, protocol: ICMP, icmp: {type: 0, code: 0}}");
    assert_eq!(r.icmp.unwrap().code, Some(0));
}

#[test]
fn ip_versions() {
    assert_eq!(
        rule_of("{action: Allow, ipVersion: 4}").ip_version,
        Some(IpVersion::V4)
    );
    assert_eq!(
        rule_of("{action: Allow, ipVersion: 6}").ip_version,
        Some(IpVersion::V6)
    );
    let r = rule_of("{action: Allow, ipVersion: 4, protocol: ICMP}");
    assert_eq!(r.protocol, Some(Protocol::Icmp));
    let r = rule_of("{action: Allow, ipVersion: 6, protocol: ICMPv6}");
    assert_eq!(r.protocol, Some(Protocol::IcmpV6));
}

#[test]
fn nets_and_not_nets() {
    let r = rule_of(
        "{action: Allow, source: {nets: [10.0.0.0/8, 192.168.1.7], notNets: [10.1.0.0/16]}, destination: {nets: ['172.16.0.5/12']}}",
    );
    let n = |s: &str| s.parse::<IpNet>().unwrap();
    assert_eq!(r.source.nets, vec![n("10.0.0.0/8"), n("192.168.1.7/32")]);
    assert_eq!(r.source.not_nets, vec![n("10.1.0.0/16")]);
    // Not strictly masked, like Calico's "cidr": kept as written.
    assert_eq!(r.destination.nets, vec![n("172.16.0.5/12")]);
    let r = rule_of("{action: Allow, ipVersion: 6, destination: {nets: ['fd00::/8', '::1'], notNets: ['fd00:1::/32']}}");
    assert_eq!(r.destination.nets, vec![n("fd00::/8"), n("::1/128")]);
}

#[test]
fn selectors_in_rules() {
    let r = rule_of("{action: Allow, source: {selector: \"has(a)\", notSelector: \"b == 'x'\"}}");
    assert_eq!(r.source.selector, Some(Selector::parse("has(a)").unwrap()));
    assert_eq!(
        r.source.not_selector,
        Some(Selector::parse("b == 'x'").unwrap())
    );
    // An empty selector in a rule is no restriction; all() is a restriction
    // (to cluster endpoints).
    let r = rule_of("{action: Allow, source: {selector: '', notSelector: '  '}}");
    assert_eq!(r.source, EntityRule::default());
    let r = rule_of("{action: Allow, source: {selector: all()}}");
    assert_eq!(r.source.selector, Some(Selector::all()));
    // A quoted selector starting with '!'.
    let r = rule_of("{action: Allow, destination: {selector: '!has(a)'}}");
    assert_eq!(
        r.destination.selector,
        Some(Selector::parse("!has(a)").unwrap())
    );
}

#[test]
fn ports_and_ranges() {
    let r = rule_of(
        "{action: Allow, protocol: UDP, source: {ports: [53, '1000:2000', \"80\", '7:7', 0, 65535]}, destination: {notPorts: [80:90]}}",
    );
    assert_eq!(
        r.source.ports,
        vec![
            PortRange::single(53),
            PortRange {
                first: 1000,
                last: 2000
            },
            PortRange::single(80),
            PortRange::single(7),
            PortRange::single(0),
            PortRange::single(65535),
        ]
    );
    // YAML 1.2: an unquoted 80:90 is a string, not a sexagesimal number.
    assert_eq!(
        r.destination.not_ports,
        vec![PortRange {
            first: 80,
            last: 90
        }]
    );
    let r = rule_of("{action: Allow, protocol: SCTP, destination: {ports: [9]}}");
    assert_eq!(r.destination.ports.len(), 1);
}

// --- Refused input: messages name the document and the field ---------------

#[test]
fn the_issue_example_message() {
    let text = format!(
        "{}---\n{}",
        with_spec("  selector: all()\n").replace("name: p", "name: first"),
        DOC_EXAMPLE.replace(
            "          - 6379\n",
            "          - 6379\n          - \"70000\"\n"
        )
    );
    assert_msg(
        fails(&text).to_string(),
        "document 2 (allow-tcp-6379): spec.ingress[0].destination.ports[1]: \"70000\" is not a port or a from:to range",
    );
    let e = fails(&text);
    assert_eq!(e.path(), "spec.ingress[0].destination.ports[1]");
    assert_eq!(e.document().unwrap().index, 2);
    assert_eq!(
        e.document().unwrap().name.as_deref(),
        Some("allow-tcp-6379")
    );
}

#[test]
fn syntax_errors() {
    let e = fails("apiVersion: [\n");
    assert!(
        matches!(e.kind(), ErrorKind::Syntax { format: "YAML", .. }),
        "{e}"
    );
    assert_contains(e.to_string(), "document 1: not valid YAML: ");
    assert_contains(e.to_string(), "line 2");
    let e = fails(&format!("{DOC_EXAMPLE}---\nkind: [\n"));
    assert_contains(e.to_string(), "document 2: not valid YAML");
    // A leading comment and `---` do not count as a document.
    let e = fails(&format!("# comment\n---\n{}", with_spec("  order: x\n")));
    assert_msg(
        e.to_string(),
        "document 1 (p): spec.order: expected a number, found the string \"x\"",
    );
    let e = fails("{\"apiVersion\": }");
    assert_contains(e.to_string(), "document 1: not valid JSON: ");
    assert_contains(e.to_string(), "column");
}

#[test]
fn duplicate_keys_are_refused() {
    let e = fails(&with_spec("  order: 1\n  order: 2\n"));
    assert_contains(e.to_string(), "duplicate entry with key \"order\"");
    let e = fails("{\"kind\": \"GlobalNetworkPolicy\", \"kind\": \"x\"}");
    assert_contains(
        e.to_string(),
        "not valid JSON: duplicate entry with key \"kind\"",
    );
}

#[test]
fn yaml_tags_explain_quoting() {
    let e = fails(&with_spec("  selector: !has(a)\n"));
    assert_contains(
        e.to_string(),
        "document 1: spec.selector: unexpected YAML tag !has(a)",
    );
    assert_contains(e.to_string(), "must be quoted");
}

#[test]
fn odd_yaml_values() {
    assert_msg(
        fails(&with_spec("  order: .nan\n")).to_string(),
        "document 1: spec.order: .nan is not a finite number",
    );
    assert_contains(
        fails(&with_spec("  order: .inf\n")).to_string(),
        "spec.order: ",
    );
    assert_contains(
        fails(&with_spec("  ingress:\n    - {1: x}\n")).to_string(),
        "spec.ingress[0]: keys must be strings, found `1`",
    );
    assert_msg(
        fails("just a string\n").to_string(),
        "document 1: expected a policy (a mapping) or a list of policies, found the string \"just a string\"",
    );
}

#[test]
fn api_version_and_kind() {
    let doc =
        |api: &str, kind: &str| format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: p\n");
    assert_msg(
        fails(&doc("projectcalico.org/v2", "GlobalNetworkPolicy")).to_string(),
        "document 1 (p): apiVersion: \"projectcalico.org/v2\" is not supported; expected \"projectcalico.org/v3\"",
    );
    assert_contains(
        fails(&doc("crd.projectcalico.org/v1", "GlobalNetworkPolicy")).to_string(),
        "that is the storage form inside Kubernetes",
    );
    assert_msg(
        fails(&doc("projectcalico.org/v3", "IPPool")).to_string(),
        "document 1 (p): kind: \"IPPool\" is not \"GlobalNetworkPolicy\"",
    );
    assert_msg(
        fails(&doc("projectcalico.org/v3", "NetworkPolicy")).to_string(),
        "document 1 (p): kind: not supported by netmod: NetworkPolicy: netmod implements GlobalNetworkPolicy only (it has no namespaces or staging)",
    );
    assert_msg(
        fails("kind: GlobalNetworkPolicy\nmetadata: {name: p}\n").to_string(),
        "document 1 (p): apiVersion: required but missing",
    );
    assert_msg(
        fails("apiVersion: projectcalico.org/v3\nmetadata: {name: p}\n").to_string(),
        "document 1 (p): kind: required but missing",
    );
    assert_msg(
        fails("apiVersion: projectcalico.org/v3\nkind: 5\n").to_string(),
        "document 1: kind: expected a string, found the number 5",
    );
}

#[test]
fn unknown_and_server_fields() {
    assert_msg(
        fails(&format!("{DOC_EXAMPLE}extra: 1\n")).to_string(),
        "document 1 (allow-tcp-6379): extra: unknown field; expected one of: apiVersion, kind, metadata, spec",
    );
    assert_contains(
        fails(&format!("{DOC_EXAMPLE}status: {{}}\n")).to_string(),
        "status: not supported by netmod: status is set by an API server",
    );
    assert_msg(
        fails(&DOC_EXAMPLE.replace("  name: allow-tcp-6379\n", "  name: allow-tcp-6379\n  namespace: prod\n")).to_string(),
        "document 1 (allow-tcp-6379): metadata.namespace: not supported by netmod: a GlobalNetworkPolicy is not namespaced; remove metadata.namespace",
    );
    assert_contains(
        fails(&DOC_EXAMPLE.replace(
            "  name: allow-tcp-6379\n",
            "  name: allow-tcp-6379\n  uid: abc\n",
        ))
        .to_string(),
        "metadata.uid: not supported by netmod: set by a Kubernetes or Calico API server",
    );
    assert_msg(
        fails(&DOC_EXAMPLE.replace("  name: allow-tcp-6379\n", "  name: allow-tcp-6379\n  nmae: x\n")).to_string(),
        "document 1 (allow-tcp-6379): metadata.nmae: unknown field; expected one of: name, labels, annotations",
    );
    assert_contains(
        fails(&with_spec("  selectr: all()\n")).to_string(),
        "document 1 (p): spec.selectr: unknown field; expected one of: order, selector, types, ingress, egress, performanceHints",
    );
}

#[test]
fn metadata_errors() {
    assert_msg(
        fails("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n").to_string(),
        "document 1: metadata: required but missing",
    );
    assert_msg(
        fails("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {}\n")
            .to_string(),
        "document 1: metadata.name: required but missing",
    );
    assert_msg(
        fails("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: []\n")
            .to_string(),
        "document 1: metadata: expected a mapping, found a list",
    );
    assert_contains(
        fails(&with_spec("").replace(
            "metadata:\n  name: p\n",
            "metadata:\n  name: p\n  labels: {a: 1}\n",
        ))
        .to_string(),
        "metadata.labels.a: expected a string, found the number 1",
    );
}

#[test]
fn names_are_dns_subdomains() {
    for good in [
        "a",
        "allow-tcp-6379",
        "a.b",
        "0",
        "x1.y-2.z",
        &"a".repeat(253),
    ] {
        assert!(valid_name(good), "{good}");
    }
    for bad in [
        "",
        "Allow",
        "a_b",
        "-a",
        "a-",
        "a..b",
        ".a",
        "a.",
        "a b",
        "ä",
        &"a".repeat(254),
    ] {
        assert!(!valid_name(bad), "{bad:?}");
    }
    let e = fails(&with_spec("").replace("name: p", "name: Allow_TCP"));
    assert_contains(
        e.to_string(),
        "document 1 (Allow_TCP): metadata.name: \"Allow_TCP\" is not a valid name",
    );
}

#[test]
fn duplicate_names_in_one_file() {
    let p = with_spec("  selector: all()\n");
    let q = p.replace("name: p", "name: q");
    assert_msg(
        fails(&format!("{p}---\n{q}---\n{p}")).to_string(),
        "document 3 (p): metadata.name: the name is already used by document 1 (p)",
    );
    let list = "\
apiVersion: v1
kind: List
items:
  - {apiVersion: projectcalico.org/v3, kind: GlobalNetworkPolicy, metadata: {name: a}}
  - {apiVersion: projectcalico.org/v3, kind: GlobalNetworkPolicy, metadata: {name: a}}
";
    assert_msg(
        fails(list).to_string(),
        "document 1 items[1] (a): metadata.name: the name is already used by document 1 items[0] (a)",
    );
}

#[test]
fn errors_inside_lists_name_the_entry() {
    let list = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicyList
items:
  - {apiVersion: projectcalico.org/v3, kind: GlobalNetworkPolicy, metadata: {name: a}}
  - {apiVersion: projectcalico.org/v3, kind: GlobalNetworkPolicy, metadata: {name: b}, spec: {order: x}}
";
    assert_msg(
        fails(list).to_string(),
        "document 1 items[1] (b): spec.order: expected a number, found the string \"x\"",
    );
    let array = "[{\"apiVersion\": \"projectcalico.org/v3\", \"kind\": \"GlobalNetworkPolicy\", \"metadata\": {\"name\": \"a\"}, \"spec\": {\"types\": [\"Both\"]}}]";
    assert_msg(
        fails(array).to_string(),
        "document 1 [0] (a): spec.types[0]: \"Both\" is not a policy type; expected \"Ingress\" or \"Egress\"",
    );
    assert_msg(
        fails("apiVersion: v2\nkind: List\nitems: []\n").to_string(),
        "document 1: apiVersion: \"v2\" is not supported for kind List; expected \"v1\" or \"projectcalico.org/v3\"",
    );
    assert_msg(
        fails("apiVersion: v1\nkind: List\n").to_string(),
        "document 1: items: required but missing",
    );
    assert_msg(
        fails("apiVersion: v1\nkind: List\nitems: {}\n").to_string(),
        "document 1: items: expected a list, found a mapping",
    );
    assert_msg(
        fails("apiVersion: v1\nkind: List\nmetadata: {name: x}\nitems: []\n").to_string(),
        "document 1: metadata.name: unknown field; expected one of: resourceVersion, continue",
    );
    assert_contains(
        fails("[1]").to_string(),
        "document 1 [0]: expected a mapping, found the number 1",
    );
}

#[test]
fn unsupported_spec_fields() {
    let cases = [
        ("  tier: security\n", "spec.tier: not supported by netmod: policy tiers"),
        ("  doNotTrack: true\n", "spec.doNotTrack: not supported by netmod: host-endpoint policy options"),
        ("  preDNAT: true\n", "spec.preDNAT: not supported by netmod"),
        ("  applyOnForward: true\n", "spec.applyOnForward: not supported by netmod"),
        ("  namespaceSelector: a == 'b'\n", "spec.namespaceSelector: not supported by netmod: namespace and service-account selection"),
        ("  serviceAccountSelector: all()\n", "spec.serviceAccountSelector: not supported by netmod"),
    ];
    for (spec, expected) in cases {
        assert_contains(
            fails(&with_spec(spec)).to_string(),
            &format!("document 1 (p): {expected}"),
        );
    }
}

#[test]
fn spec_value_errors() {
    let cases = [
        ("  order: '10'\n", "spec.order: expected a number, found the string \"10\""),
        ("  selector: 5\n", "spec.selector: expected a string, found the number 5"),
        ("  types: Ingress\n", "spec.types: expected a list, found the string \"Ingress\""),
        ("  types: [ingress]\n", "spec.types[0]: \"ingress\" is not a policy type"),
        ("  types: [Ingress, Ingress]\n", "spec.types[1]: listed twice"),
        (
            "  types: [Egress]\n  ingress: [{action: Allow}]\n",
            "spec.ingress: ingress rules are given but spec.types does not include Ingress, so they would never apply",
        ),
        (
            "  types: [Ingress]\n  egress: [{action: Allow}]\n",
            "spec.egress: egress rules are given but spec.types does not include Egress",
        ),
        ("  performanceHints: [Fast]\n", "spec.performanceHints[0]: \"Fast\" is not a performance hint"),
        ("  ingress: {action: Allow}\n", "spec.ingress: expected a list, found a mapping"),
        ("  ingress: [Allow]\n", "spec.ingress[0]: expected a mapping, found the string \"Allow\""),
        ("  egress: [{}]\n", "spec.egress[0].action: required but missing"),
    ];
    for (spec, expected) in cases {
        assert_contains(
            fails(&with_spec(spec)).to_string(),
            &format!("document 1 (p): {expected}"),
        );
    }
}

#[test]
fn bad_selectors_show_the_position() {
    let e = fails(&with_spec("  selector: role == database\n"));
    assert_msg(
        e.to_string(),
        "document 1 (p): spec.selector: bad selector: expected a quoted value after '==', found 'database' at byte 8\n  role == database\n          ^",
    );
    assert!(
        std::error::Error::source(&e).is_some(),
        "the selector error is the source"
    );
    match e.kind() {
        ErrorKind::Selector(s) => assert_eq!(s.offset, 8),
        k => panic!("{k:?}"),
    }
    assert_contains(
        rule_error("{action: Allow, destination: {notSelector: 'has(a'}}"),
        "spec.ingress[0].destination.notSelector: bad selector: expected ')' to close has(",
    );
    assert_contains(
        rule_error("{action: Allow, source: {selector: 'global()'}}"),
        "spec.ingress[0].source.selector: bad selector: global() is not supported",
    );
}

#[test]
fn rule_errors() {
    let cases = [
        ("{action: Allow, bogus: 1}", "spec.ingress[0].bogus: unknown field; expected one of: action, metadata, ipVersion, protocol, notProtocol, icmp, notICMP, source, destination"),
        ("{action: Allow, http: {methods: [GET]}}", "spec.ingress[0].http: not supported by netmod: HTTP matching needs Calico's application-layer policy"),
        ("{protocol: TCP}", "spec.ingress[0].action: required but missing"),
        ("{action: Accept}", "spec.ingress[0].action: \"Accept\" is not an action; expected \"Allow\", \"Deny\", \"Log\" or \"Pass\""),
        ("{action: allow}", "(did you mean \"Allow\"?)"),
        ("{action: Allow, metadata: {labels: {}}}", "spec.ingress[0].metadata.labels: unknown field; expected one of: annotations"),
        ("{action: Allow, metadata: {annotations: {a: [1]}}}", "spec.ingress[0].metadata.annotations.a: expected a string, found a list"),
        ("{action: Allow, ipVersion: 5}", "spec.ingress[0].ipVersion: the number 5 is not an IP version; expected 4 or 6"),
        ("{action: Allow, ipVersion: '4'}", "spec.ingress[0].ipVersion: the string \"4\" is not an IP version"),
        ("{action: Allow, protocol: tcp}", "spec.ingress[0].protocol: \"tcp\" is not a protocol; expected one of TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1–255 (did you mean \"TCP\"?)"),
        ("{action: Allow, protocol: '6'}", "(write a protocol number without quotes: 6)"),
        ("{action: Allow, protocol: 0}", "spec.ingress[0].protocol: 0 is not a protocol number (1–255)"),
        ("{action: Allow, notProtocol: 256}", "spec.ingress[0].notProtocol: 256 is not a protocol number (1–255)"),
        ("{action: Allow, protocol: true}", "spec.ingress[0].protocol: expected a protocol name or number, found true"),
        ("{action: Allow, protocol: 6.5}", "spec.ingress[0].protocol: 6.5 is not a protocol number (1–255)"),
    ];
    for (rule, expected) in cases {
        assert_contains(rule_error(rule), expected);
    }
}

#[test]
fn icmp_errors() {
    let cases = [
        (
            "{action: Allow, icmp: {type: 8}}",
            "spec.ingress[0].icmp: icmp needs protocol ICMP or ICMPv6",
        ),
        (
            "{action: Allow, protocol: TCP, icmp: {type: 8}}",
            "spec.ingress[0].icmp: icmp needs protocol ICMP or ICMPv6",
        ),
        (
            "{action: Allow, notProtocol: ICMP, notICMP: {type: 8}}",
            "spec.ingress[0].notICMP: notICMP needs protocol ICMP or ICMPv6",
        ),
        (
            "{action: Allow, protocol: ICMP, icmp: {type: 255}}",
            "spec.ingress[0].icmp.type: 255 is not an ICMP type (0–254)",
        ),
        (
            "{action: Allow, protocol: ICMP, icmp: {type: 3, code: 256}}",
            "spec.ingress[0].icmp.code: 256 is not an ICMP code (0–255)",
        ),
        (
            "{action: Allow, protocol: ICMP, icmp: {type: -1}}",
            "spec.ingress[0].icmp.type: -1 is not an ICMP type (0–254)",
        ),
        (
            "{action: Allow, protocol: ICMP, icmp: {code: 1}}",
            "spec.ingress[0].icmp.code: an ICMP code needs an ICMP type",
        ),
        (
            "{action: Allow, protocol: ICMP, icmp: {}}",
            "spec.ingress[0].icmp.type: required but missing",
        ),
        (
            "{action: Allow, protocol: ICMP, icmp: {type: 8, kind: 1}}",
            "spec.ingress[0].icmp.kind: unknown field; expected one of: type, code",
        ),
        (
            "{action: Allow, protocol: ICMP, icmp: {type: '8'}}",
            "spec.ingress[0].icmp.type: expected an integer, found the string \"8\"",
        ),
        (
            "{action: Allow, protocol: ICMP, ipVersion: 6}",
            "spec.ingress[0].ipVersion: protocol ICMP needs ipVersion 4, not 6",
        ),
        (
            "{action: Allow, protocol: ICMPv6, ipVersion: 4}",
            "spec.ingress[0].ipVersion: protocol ICMPv6 needs ipVersion 6, not 4",
        ),
        (
            "{action: Allow, notProtocol: 58, ipVersion: 4}",
            "spec.ingress[0].ipVersion: notProtocol 58 needs ipVersion 6, not 4",
        ),
    ];
    for (rule, expected) in cases {
        assert_contains(rule_error(rule), expected);
    }
}

#[test]
fn entity_errors() {
    let cases = [
        ("{action: Allow, source: {nmes: []}}", "spec.ingress[0].source.nmes: unknown field; expected one of: nets, notNets, selector, notSelector, ports, notPorts"),
        ("{action: Allow, source: {serviceAccounts: {names: [a]}}}", "spec.ingress[0].source.serviceAccounts: not supported by netmod: service-account matching"),
        ("{action: Allow, source: {services: {name: a}}}", "spec.ingress[0].source.services: not supported by netmod: Kubernetes service matching"),
        ("{action: Allow, source: {namespaceSelector: 'a == \"b\"'}}", "spec.ingress[0].source.namespaceSelector: not supported by netmod: namespace selection"),
        ("{action: Allow, source: []}", "spec.ingress[0].source: expected a mapping, found a list"),
        ("{action: Allow, source: {nets: 10.0.0.0/8}}", "spec.ingress[0].source.nets: expected a list, found the string \"10.0.0.0/8\""),
        ("{action: Allow, source: {nets: [10.0.0.0/33]}}", "spec.ingress[0].source.nets[0]: \"10.0.0.0/33\" is not a CIDR or an IP address"),
        ("{action: Allow, source: {nets: [10.0.0/8]}}", "spec.ingress[0].source.nets[0]: \"10.0.0/8\" is not a CIDR or an IP address"),
        ("{action: Allow, source: {nets: [8]}}", "spec.ingress[0].source.nets[0]: expected a string, found the number 8"),
        ("{action: Allow, ipVersion: 6, source: {nets: [10.0.0.0/8]}}", "spec.ingress[0].source.nets[0]: 10.0.0.0/8 is IPv4 but the rule's ipVersion is 6"),
        ("{action: Allow, ipVersion: 4, destination: {notNets: ['fd00::/8']}}", "spec.ingress[0].destination.notNets[0]: fd00::/8 is IPv6 but the rule's ipVersion is 4"),
        ("{action: Allow, source: {nets: [10.0.0.0/8]}, destination: {nets: ['fd00::/8']}}", "spec.ingress[0].destination.nets[0]: fd00::/8 is IPv6 but spec.ingress[0].source.nets[0] is IPv4: one rule cannot mix IPv4 and IPv6 networks"),
        ("{action: Allow, source: {nets: [10.0.0.0/8, '::/0']}}", "one rule cannot mix IPv4 and IPv6 networks"),
        ("{action: Allow, source: {notNets: [0.0.0.0/0]}}", "spec.ingress[0].source.notNets[0]: 0.0.0.0/0 in notNets excludes every address of its family, so the rule could never match"),
        ("{action: Allow, destination: {notNets: ['::/0']}}", "spec.ingress[0].destination.notNets[0]: ::/0 in notNets"),
    ];
    for (rule, expected) in cases {
        assert_contains(rule_error(rule), expected);
    }
}

#[test]
fn port_errors() {
    let cases = [
        ("{action: Allow, destination: {ports: [80]}}", "spec.ingress[0].destination.ports: ports need protocol TCP, UDP or SCTP"),
        ("{action: Allow, notProtocol: TCP, source: {notPorts: [80]}}", "spec.ingress[0].source.notPorts: notPorts need protocol TCP, UDP or SCTP"),
        ("{action: Allow, protocol: ICMP, destination: {ports: [80]}}", "spec.ingress[0].destination.ports: ports need protocol TCP, UDP or SCTP"),
        ("{action: Allow, protocol: UDPLite, destination: {ports: [80]}}", "ports need protocol TCP, UDP or SCTP"),
        ("{action: Allow, protocol: TCP, destination: {ports: [70000]}}", "spec.ingress[0].destination.ports[0]: 70000 is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: [-1]}}", "spec.ingress[0].destination.ports[0]: -1 is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: [1.5]}}", "spec.ingress[0].destination.ports[0]: 1.5 is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: ['90:80']}}", "spec.ingress[0].destination.ports[0]: \"90:80\" is not a from:to range: 90 is greater than 80"),
        ("{action: Allow, protocol: TCP, destination: {ports: ['1:70000']}}", "\"1:70000\" is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: ['a:b']}}", "\"a:b\" is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: ['1:2:3']}}", "\"1:2:3\" is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: [':80']}}", "\":80\" is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: ['+80']}}", "\"+80\" is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: ['http-alt']}}", "spec.ingress[0].destination.ports[0]: not supported by netmod: \"http-alt\" is a named port; netmod endpoints have no named ports, use numbers"),
        ("{action: Allow, protocol: TCP, destination: {ports: ['Not A Port']}}", "\"Not A Port\" is not a port or a from:to range"),
        ("{action: Allow, protocol: TCP, destination: {ports: [true]}}", "spec.ingress[0].destination.ports[0]: expected a port number or a \"from:to\" string, found true"),
        ("{action: Allow, protocol: TCP, destination: {ports: 80}}", "spec.ingress[0].destination.ports: expected a list, found the number 80"),
    ];
    for (rule, expected) in cases {
        assert_contains(rule_error(rule), expected);
    }
}

#[test]
fn from_json_value_checks_one_resource_without_a_document() {
    let p = one(DOC_EXAMPLE);
    assert_eq!(
        GlobalNetworkPolicy::from_json_value(&p.to_json_value()).unwrap(),
        p
    );
    let mut v = p.to_json_value();
    v["spec"]["ingress"][0]["destination"]["ports"][0] = Value::from(70000);
    let e = GlobalNetworkPolicy::from_json_value(&v).unwrap_err();
    assert_eq!(e.document(), None);
    assert_msg(
        e.to_string(),
        "spec.ingress[0].destination.ports[0]: 70000 is not a port or a from:to range",
    );
    // Through serde too.
    let back: GlobalNetworkPolicy = serde_json::from_value(p.to_json_value()).unwrap();
    assert_eq!(back, p);
    assert!(serde_json::from_value::<GlobalNetworkPolicy>(v).is_err());
}

#[test]
fn validate_checks_policies_built_in_code() {
    let mut p = one(DOC_EXAMPLE);
    assert_eq!(p.validate(), Ok(()));
    p.egress[0].destination.ports = vec![PortRange::single(80)];
    assert_msg(
        p.validate().unwrap_err().to_string(),
        "spec.egress[0].destination.ports: ports need protocol TCP, UDP or SCTP",
    );
    let mut p = one(DOC_EXAMPLE);
    p.name = "Bad Name".into();
    assert!(p.validate().is_err());
    let mut p = one(DOC_EXAMPLE);
    p.types = Types {
        ingress: false,
        egress: true,
    };
    assert_msg(
        p.validate().unwrap_err().to_string(),
        "spec.ingress: ingress rules are given but spec.types does not include Ingress, so they would never apply",
    );
    p.types.egress = false;
    assert_msg(
        p.validate().unwrap_err().to_string(),
        "spec.types: a policy must apply to at least one direction",
    );
}
