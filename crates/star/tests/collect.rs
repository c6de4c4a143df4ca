//! star-collect, run as a real process on loopback against real probes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Two fetch intervals (1 s each) plus slack.
const TWO_INTERVALS: Duration = Duration::from_millis(2500);

#[test]
fn responses_from_two_probes() {
    // B and C probe each other, and the collector fetches its own page, so
    // their sockets are bound before any of them starts.
    let (b_socket, c_socket, collect_socket) = (listener(), listener(), listener());
    let closed = closed_port();
    let (b_url, c_url, closed_url) = (
        status_url(port_of(&b_socket)),
        status_url(port_of(&c_socket)),
        status_url(closed.port),
    );
    let b = Server::probe_on(
        &b_socket,
        &[
            &format!("--urls={c_url},{closed_url}"),
            "--http-probe-seconds=1",
        ],
    );
    let c = Server::probe_on(
        &c_socket,
        &[&format!("--urls={b_url}"), "--http-probe-seconds=1"],
    );

    let dir = scratch_dir("collect-two");
    // Besides the two probes: a dead URL, and a live one whose body is not
    // JSON (the collector's own HTML page). Both must come out as null.
    let html_url = format!("http://127.0.0.1:{}/", port_of(&collect_socket));
    let resources = json!([
        {"id": "probe-b", "url": b_url},
        {"id": "probe-c", "url": c_url},
        {"id": "dead", "url": closed_url},
        {"id": "html", "url": html_url},
    ]);
    let file = write_file(&dir, "resources.json", &resources.to_string());
    let collect = Server::collect_on(
        &collect_socket,
        &[
            "--resources-file",
            file.to_str().unwrap(),
            "--http-request-seconds",
            "1",
        ],
    );

    let b_json = json!({"status": {"targets": [
        {"url": c_url, "reachable": true},
        {"url": closed_url, "reachable": false},
    ]}});
    let c_json = json!({"status": {"targets": [{"url": b_url, "reachable": true}]}});
    let expected = json!({"responses": {
        "probe-b": {"url": b_url, "statusCode": 200, "json": b_json},
        "probe-c": {"url": c_url, "statusCode": 200, "json": c_json},
        "dead": null,
        "html": null,
    }});
    // The probes need up to two intervals to see each other, the collector
    // up to two more to fetch that.
    let got = wait_for(TWO_INTERVALS * 2, || {
        let v = collect.get_json("/responses");
        (v == expected).then_some(v)
    });
    assert_eq!(
        got,
        Some(expected.clone()),
        "last: {}",
        collect.get_json("/responses")
    );
    // The "json" member is the probe's whole body.
    assert_eq!(b.get_json("/status"), b_json);
    assert_eq!(c.get_json("/status"), c_json);

    // Ids appear in resource-file order.
    let raw = collect.get("/responses");
    assert_eq!(raw.header("content-type"), Some("application/json"));
    let pos = |id: &str| raw.body.find(&format!("\"{id}\":")).unwrap();
    assert!(
        pos("probe-b") < pos("probe-c")
            && pos("probe-c") < pos("dead")
            && pos("dead") < pos("html")
    );

    assert_eq!(
        collect.get_json("/responses/probe-c"),
        json!({"response": expected["responses"]["probe-c"]})
    );
    assert_eq!(
        collect.get_json("/responses/dead"),
        json!({"response": null})
    );
    assert_eq!(
        collect.get_json("/resources"),
        json!({"resources": resources})
    );

    // A probe that stops answering turns to null (its port is still ours:
    // connections to it wait unanswered).
    drop(c);
    let gone = wait_for(TWO_INTERVALS, || {
        collect.get_json("/responses")["responses"]["probe-c"]
            .is_null()
            .then_some(())
    });
    assert!(gone.is_some(), "{}", collect.get_json("/responses"));
}

#[test]
fn resources_api() {
    let collect = Server::collect(&["--http-request-seconds=1"]);
    assert_eq!(collect.get_json("/resources"), json!({"resources": []}));
    assert_eq!(collect.get_json("/responses"), json!({"responses": {}}));

    let b = Server::probe(&[]);
    let b_url = status_url(b.port);
    let body = json!({"id": "probe-b", "url": b_url});
    let reply = collect.post("/resources", &body.to_string());
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.json(), json!({"resource": body}));

    assert_eq!(
        collect.get_json("/resources/probe-b"),
        json!({"resource": body})
    );
    assert_eq!(collect.get_json("/resources"), json!({"resources": [body]}));

    // A POSTed resource is fetched from then on.
    let expected = json!({"response": {
        "url": b_url, "statusCode": 200, "json": {"status": {"targets": []}}
    }});
    let got = wait_for(TWO_INTERVALS, || {
        let v = collect.get_json("/responses/probe-b");
        (v == expected).then_some(v)
    });
    assert_eq!(got, Some(expected), "{}", collect.get_json("/responses"));

    // Errors.
    let dup = collect.post(
        "/resources",
        &json!({"id": "probe-b", "url": "http://127.0.0.1:1/"}).to_string(),
    );
    assert_eq!(dup.status, 409);
    assert!(dup.json()["error"].as_str().unwrap().contains("probe-b"));
    for bad in [
        "{not json",
        "[]",
        r#"{"id": "x"}"#,
        r#"{"url": "http://127.0.0.1:1/"}"#,
        r#"{"id": 7, "url": "http://127.0.0.1:1/"}"#,
        r#"{"id": "x", "url": "not a url"}"#,
    ] {
        let reply = collect.post("/resources", bad);
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.json()["error"].is_string(), "{bad}: {}", reply.body);
    }
    assert_eq!(
        collect.get_json("/resources")["resources"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    for path in [
        "/resources/nope",
        "/responses/nope",
        "/nope",
        "/responses/probe-b/x",
    ] {
        let reply = collect.get(path);
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.json()["error"].is_string());
    }
}

#[test]
fn web_view_and_example() {
    let collect = Server::collect(&[]);
    let page = collect.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.body.contains("<title>Star — reachability</title>"));
    assert!(page.body.contains("id=\"toggle-unreachable\""));
    assert_eq!(collect.get("/?example=true").body, page.body);

    let example = collect.get_json("/responses/example");
    let responses = example["responses"].as_object().unwrap();
    let (mut nodes, mut reachable, mut unreachable) = (0, 0, 0);
    for entry in responses.values().filter(|e| !e.is_null()) {
        nodes += 1;
        assert_eq!(entry["statusCode"], 200);
        assert!(entry["url"].is_string());
        for t in entry["json"]["status"]["targets"].as_array().unwrap() {
            if t["reachable"] == Value::Bool(true) {
                reachable += 1;
            } else {
                unreachable += 1;
            }
        }
    }
    assert_eq!(nodes, 4);
    assert!(responses.values().any(Value::is_null));
    assert!(reachable > 0 && unreachable > 0);
}

#[test]
fn bad_resources_file_is_refused() {
    let dir = scratch_dir("collect-bad");
    let file = write_file(&dir, "r.json", r#"[{"id": "a"}]"#);
    let out = Command::new(COLLECT)
        .arg(format!("--resources-file={}", file.display()))
        .args(["--http-address=127.0.0.1", "--http-port=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing field \"url\""), "{err}");

    let out = Command::new(COLLECT)
        .arg("--resources-file")
        .arg(dir.join("missing.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
