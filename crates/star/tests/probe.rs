//! star-probe, run as a real process on loopback.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Two probe intervals (1 s each) plus slack for process start-up.
const TWO_INTERVALS: Duration = Duration::from_millis(2500);

fn targets(status: &Value) -> Vec<(String, bool)> {
    status["status"]["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("no status.targets in {status}"))
        .iter()
        .map(|t| {
            (
                t["url"].as_str().unwrap().to_string(),
                t["reachable"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn reachable_and_closed_targets() {
    let b = Server::probe(&["--urls="]);
    let closed = closed_port();
    let b_url = status_url(b.port);
    let closed_url = status_url(closed.port);
    let a = Server::probe(&[
        &format!("--urls={b_url},,{closed_url},"),
        "--http-probe-seconds=1",
    ]);
    let expected = json!({"status": {"targets": [
        {"url": b_url, "reachable": true},
        {"url": closed_url, "reachable": false},
    ]}});
    let got = wait_for(TWO_INTERVALS, || {
        let v = a.get_json("/status");
        (v == expected).then_some(v)
    });
    assert_eq!(
        got,
        Some(expected.clone()),
        "last: {}",
        a.get_json("/status")
    );

    let reply = a.get("/status");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    // Still true a while later: the state is kept between rounds.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(a.get_json("/status"), expected);

    // B answers too, with no targets.
    assert_eq!(b.get_json("/status"), json!({"status": {"targets": []}}));
}

#[test]
fn other_paths_are_404() {
    let a = Server::probe(&["--urls", "http://127.0.0.1:1/status"]);
    for path in ["/", "/statuses", "/status/x", "/resources"] {
        assert_eq!(a.get(path).status, 404, "{path}");
    }
    assert_eq!(a.get("/status?x=1").status, 200);
}

#[test]
fn blackholed_targets_do_not_stall_others() {
    let b = Server::probe(&[]);
    let silent = silent_listener();
    // Ten targets that accept the connection and never answer, before B.
    // Probed one after another with a 333 ms timeout they would take over
    // 3 s per round; B must still turn reachable within two intervals.
    let mut urls: Vec<String> = (0..10)
        .map(|i| format!("http://127.0.0.1:{silent}/status?{i}"))
        .collect();
    urls.push(status_url(b.port));
    let a = Server::probe(&["--urls", &urls.join(","), "--http-probe-seconds", "1"]);
    let reached = wait_for(TWO_INTERVALS, || {
        let t = targets(&a.get_json("/status"));
        t.last().unwrap().1.then_some(t)
    })
    .unwrap_or_else(|| panic!("B not reachable in time: {}", a.get_json("/status")));
    assert_eq!(reached.len(), 11);
    assert!(reached[..10].iter().all(|(_, r)| !r), "{reached:?}");

    // And the silent ones stay unreachable while B stays reachable.
    std::thread::sleep(Duration::from_millis(1500));
    let t = targets(&a.get_json("/status"));
    assert!(t[..10].iter().all(|(_, r)| !r), "{t:?}");
    assert!(t[10].1, "{t:?}");
}

#[test]
fn follows_a_target_going_down_and_up() {
    // B's socket stays ours for the whole test, so the port cannot change
    // hands: while no B runs, connections to it wait unanswered.
    let b_socket = listener();
    let b = Server::probe_on(&b_socket, &[]);
    let a = Server::probe(&[
        &format!("--urls={}", status_url(port_of(&b_socket))),
        "--http-probe-seconds=1",
    ]);
    let is = |want: bool| {
        wait_for(TWO_INTERVALS, || {
            (targets(&a.get_json("/status"))[0].1 == want).then_some(())
        })
    };
    assert!(is(true).is_some(), "B never reachable");
    drop(b);
    assert!(is(false).is_some(), "B still reachable after it stopped");
    let _b = Server::probe_on(&b_socket, &[]);
    assert!(is(true).is_some(), "B not reachable again after restart");
}

#[test]
fn resolves_host_names() {
    // "localhost" goes through the system resolver (and may yield ::1 first,
    // where nothing listens: the next address must be tried).
    let b = Server::probe(&[]);
    let url = format!("http://localhost:{}/status", b.port);
    let a = Server::probe(&["--urls", &url, "--http-probe-seconds", "1"]);
    let ok = wait_for(TWO_INTERVALS, || {
        (targets(&a.get_json("/status")) == vec![(url.clone(), true)]).then_some(())
    });
    assert!(ok.is_some(), "{}", a.get_json("/status"));
}

#[test]
fn logfile_is_written() {
    let dir = scratch_dir("probe-log");
    let log = dir.join("probe.log");
    let closed = closed_port();
    let a = Server::probe(&[
        &format!("--logfile={}", log.display()),
        &format!("--urls={}", status_url(closed.port)),
        "--http-probe-seconds=1",
    ]);
    let text = wait_for(TWO_INTERVALS, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("unreachable").then_some(text)
    })
    .unwrap_or_else(|| panic!("log: {:?}", std::fs::read_to_string(&log)));
    assert!(
        text.contains(&format!("star-probe listening on 127.0.0.1:{},", a.port)),
        "{text}"
    );
    assert!(text.contains("connect failed"), "{text}");
    assert!(a.stderr_text().is_empty(), "{}", a.stderr_text());
}

#[test]
fn command_line_errors_and_help() {
    let out = Command::new(PROBE).arg("--bogus=1").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown flag --bogus"), "{err}");
    assert!(err.contains("Usage: star-probe"), "{err}");

    let out = Command::new(PROBE)
        .arg("--urls=https://secure.example/status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only http://"));

    let out = Command::new(PROBE).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--http-probe-seconds"));
}

#[test]
fn bad_inherited_sockets_are_refused() {
    // Not open.
    let out = Command::new(PROBE)
        .arg("--http-listen-fd=1000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on inherited descriptor 1000"),
        "{err}"
    );

    // Bound but not listening.
    let closed = closed_port();
    let mut command = Command::new(PROBE);
    command.arg(format!("--http-listen-fd={}", closed.fd()));
    inherit_fd(&mut command, closed.fd());
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the socket is not listening"), "{err}");

    // With --http-port too.
    let out = Command::new(PROBE)
        .args(["--http-listen-fd=3", "--http-port=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http-listen-fd excludes"), "{err}");
}
