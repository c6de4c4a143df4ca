use super::*;

fn err(input: &str) -> String {
    match parse(input.as_bytes()) {
        Err(Invalid(msg)) => msg,
        Ok(r) => panic!("{input} parsed as {r:?}"),
    }
}

#[test]
fn envelope_errors() {
    assert!(err("").contains("empty request"));
    assert!(err("   \n").contains("empty request"));
    assert!(err("{not json").contains("not valid JSON"));
    assert!(err("[1,2]").contains("JSON object"));
    assert!(err(r#"{"args": {}}"#).contains("missing \"command\""));
    assert!(err(r#"{"command": 3, "args": {}}"#).contains("must be a string"));
    assert!(err(r#"{"command": "allocate"}"#).contains("missing \"args\""));
    assert!(
        err(r#"{"command": "allocate", "args": []}"#).contains("\"args\" must be a JSON object")
    );
    assert!(err(r#"{"command": "explode", "args": {}}"#).contains("unknown command \"explode\""));
    let garbage = vec![b'x'; MAX_REQUEST_BYTES + 1];
    assert!(matches!(parse(&garbage), Err(Invalid(m)) if m.contains("more than")));
}

#[test]
fn allocate_parses_both_label_forms_and_the_static_label() {
    let list = r#"{"command":"allocate","args":{"hostname":"slave-1","num_ipv4":1,"num_ipv6":0,
        "uid":"0cd47986-24ad-4c00-b9d3-5db31e9f5f13","netgroups":["star-1","public"],
        "labels":[{"key":"ipv4_addrs","value":"['192.168.255.253']"},{"key":"app","value":"collect"}],
        "unknown_field": {"ignored": true}}}"#;
    let Ok(Request::Allocate(a)) = parse(list.as_bytes()) else {
        panic!()
    };
    assert_eq!(
        a.static_ipv4,
        vec!["192.168.255.253".parse::<Ipv4Addr>().unwrap()]
    );
    assert_eq!(a.netgroups, ["star-1", "public"]);
    assert_eq!(a.labels["app"], "collect");
    let object = r#"{"command":"allocate","args":{"hostname":"h","num_ipv4":"2","num_ipv6":0,
        "uid":"u","labels":{"ipv4_addrs":"[\"10.0.0.1\", \"10.0.0.2\"]"}}}"#;
    let Ok(Request::Allocate(a)) = parse(object.as_bytes()) else {
        panic!()
    };
    assert_eq!(a.num_ipv4, 2, "numeric strings are accepted");
    assert_eq!(a.static_ipv4.len(), 2);
}

#[test]
fn allocate_errors() {
    let base = |args: &str| format!(r#"{{"command":"allocate","args":{{{args}}}}}"#);
    assert!(err(&base(r#""num_ipv4":1,"num_ipv6":0,"uid":"u""#)).contains("missing \"hostname\""));
    assert!(err(&base(r#""hostname":"h","num_ipv6":0,"uid":"u""#)).contains("missing \"num_ipv4\""));
    assert!(err(&base(r#""hostname":"h","num_ipv4":1,"uid":"u""#)).contains("missing \"num_ipv6\""));
    assert!(err(&base(r#""hostname":"h","num_ipv4":1,"num_ipv6":0"#)).contains("missing \"uid\""));
    assert!(err(&base(
        r#""hostname":"h","num_ipv4":1.5,"num_ipv6":0,"uid":"u""#
    ))
    .contains("non-negative integer"));
    assert!(err(&base(
        r#""hostname":"h","num_ipv4":-1,"num_ipv6":0,"uid":"u""#
    ))
    .contains("non-negative integer"));
    assert!(err(&base(
        r#""hostname":"h","num_ipv4":"two","num_ipv6":0,"uid":"u""#
    ))
    .contains("non-negative integer"));
    assert!(err(&base(
        r#""hostname":"h","num_ipv4":0,"num_ipv6":0,"uid":"u""#
    ))
    .contains("nothing to allocate"));
    assert!(
        err(&base(r#""hostname":"h","num_ipv4":1,"num_ipv6":0,"uid":7"#))
            .contains("\"uid\" must be a string")
    );
    assert!(err(&base(
        r#""hostname":"h","num_ipv4":1,"num_ipv6":0,"uid":"u","netgroups":["bad group"]"#
    ))
    .contains("netgroup"));
    assert!(err(&base(r#""hostname":"h","num_ipv4":1,"num_ipv6":0,"uid":"u","labels":{"ipv4_addrs":"['1.1.1.1.1']"}"#)).contains("not an IPv4 address"));
    assert!(err(&base(r#""hostname":"h","num_ipv4":1,"num_ipv6":0,"uid":"u","labels":{"ipv4_addrs":"__import__('os')"}"#)).contains("not an IPv4 address"));
    assert!(err(&base(r#""hostname":"h","num_ipv4":0,"num_ipv6":1,"uid":"u","labels":{"ipv4_addrs":"['1.1.1.1']"}"#)).contains("num_ipv4 is 0"));
}

#[test]
fn reserve_and_release_errors() {
    let reserve = |args: &str| format!(r#"{{"command":"reserve","args":{{{args}}}}}"#);
    assert!(
        err(&reserve(r#""uid":"u","ipv4_addrs":["10.0.0.1"]"#)).contains("missing \"hostname\"")
    );
    assert!(
        err(&reserve(r#""hostname":"h","ipv4_addrs":["10.0.0.1"]"#)).contains("missing \"uid\"")
    );
    assert!(err(&reserve(r#""hostname":"h","uid":"u""#)).contains("at least one address"));
    assert!(err(&reserve(
        r#""hostname":"h","uid":"u","ipv4_addrs":["fe80::1"]"#
    ))
    .contains("is an IPv6 address"));
    assert!(err(&reserve(
        r#""hostname":"h","uid":"u","ipv6_addrs":["10.0.0.1"]"#
    ))
    .contains("is an IPv4 address"));
    let release = |args: &str| format!(r#"{{"command":"release","args":{{{args}}}}}"#);
    assert!(err(&release("")).contains("needs \"uid\" or \"ips\""));
    assert!(err(&release(r#""uid":"u","ips":["10.0.0.1"]"#)).contains("not both"));
    assert!(err(&release(r#""ips":["1.1.1.1.1"]"#)).contains("not an IP address"));
    assert!(err(&release(r#""uid":42"#)).contains("must be a string"));
    let Ok(Request::Release(Release::Ips(ips))) =
        parse(release(r#""ips":["10.0.0.1","fd00::1"]"#).as_bytes())
    else {
        panic!()
    };
    assert_eq!(ips.len(), 2, "IPv4 and IPv6 mixed");
}

#[test]
fn isolate_and_cleanup() {
    let iso = |args: &str| format!(r#"{{"command":"isolate","args":{{{args}}}}}"#);
    assert!(
        err(&iso(r#""hostname":"h","pid":3,"ipv4_addrs":["10.0.0.1"]"#))
            .contains("missing \"container_id\"")
    );
    assert!(err(&iso(
        r#""container_id":"c","pid":3,"ipv4_addrs":["10.0.0.1"]"#
    ))
    .contains("missing \"hostname\""));
    assert!(err(&iso(
        r#""hostname":"h","container_id":"c","ipv4_addrs":["10.0.0.1"]"#
    ))
    .contains("missing \"pid\""));
    assert!(err(&iso(
        r#""hostname":"h","container_id":"c","pid":3,"ipv4_addrs":["1.1.1.1.1"]"#
    ))
    .contains("not an IP address"));
    assert!(err(&iso(
        r#""hostname":"h","container_id":"c","pid":3,"ipv6_addrs":["fe80::fe80::"]"#
    ))
    .contains("not an IP address"));
    assert!(err(&iso(
        r#""hostname":"h","container_id":"c","pid":3,"ipv4_addrs":["fd00::1"]"#
    ))
    .contains("is an IPv6 address"));
    assert!(
        err(&iso(r#""hostname":"h","container_id":"c","pid":3"#)).contains("at least one address")
    );
    assert!(err(&iso(
        r#""hostname":"h","container_id":"c","pid":-3,"ipv4_addrs":["10.0.0.1"]"#
    ))
    .contains("positive integer"));
    let Ok(Request::Isolate(i)) = parse(iso(r#""hostname":"h","container_id":"c","pid":42,"ipv4_addrs":["10.0.0.1"],"netgroups":["a"]"#).as_bytes()) else { panic!() };
    assert_eq!(i.netns.path(), "/proc/42/ns/net");
    let cleanup = r#"{"command":"cleanup","args":{"hostname":"h"}}"#;
    assert!(err(cleanup).contains("missing \"container_id\""));
}
